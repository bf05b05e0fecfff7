"""Stage `gradients`: vanishing and exploding gradients, measured on the real training data
(lstm_vs_gru/gradient_flow.py says how).

Outputs: plots/gradients/<model>_<init|trained>_<L>.csv (step, grad_norm, grad_norm_last_state),
plots/gradients/clipping.csv, plots/gradients/{gradient_flow,exploding}.png and
metrics/gradients.json. TensorFlow is imported only once params and every input have been
checked, so a mistake fails in a second."""
from __future__ import annotations

import time

import numpy as np

from lstm_vs_gru import artifacts, training
from lstm_vs_gru.errors import UserError, exits_cleanly
from lstm_vs_gru.gradient_flow import (READOUTS, Measurements, Sample, build_sample, check_tokens, clipping_table,
                                       curve_table, gradient_metrics, measure, plot_exploding, plot_gradient_flow)
from lstm_vs_gru.params import Params, load
from lstm_vs_gru.tokenizer import read_tokens


def write_outputs(p: Params, sample: Sample, m: Measurements, n_classes: int) -> None:
    """Every CSV and PNG under plots/gradients/, then metrics/gradients.json last (the sign of a full run)."""
    for name, setting, length in dict.fromkeys(key[:3] for key in m.curves):
        artifacts.write_table(artifacts.gradient_curve_path(name, setting, length),
                              curve_table(*(m.curves[name, setting, length, readout] for readout in READOUTS)))
    artifacts.write_table(artifacts.GRADIENT_CLIPPING, clipping_table(m.unclipped, m.clipped))
    artifacts.write_png(plot_gradient_flow(m.curves, p.gradients.cells, p.gradients.seq_lengths, p.model.pooling),
                        artifacts.gradient_figure_path("gradient_flow"))
    artifacts.write_png(plot_exploding(m.curves, p.gradients.seq_lengths, m.unclipped, m.clipped,
                                       p.gradients.recurrent_scale, p.model.pooling),
                        artifacts.gradient_figure_path("exploding"))
    artifacts.write_json(artifacts.metrics_path("gradients"), gradient_metrics(p, sample, m, n_classes))


def load_inputs(p: Params) -> tuple[Sample, training.Split]:
    """The measured sample (from data/tokens/train.npz) and the padded training split, checked;
    also checks the trained models of the first seed exist, all before TensorFlow is imported."""
    tokens = read_tokens("train")
    check_tokens(tokens, p.tokenize.num_words, p.gradients.samples)
    padded = training.load_padded("train", p.tokenize.num_words, p.pad.maxlen)
    if not np.array_equal(padded.groups, tokens["groups"]):
        raise UserError(f"{artifacts.padded_path('train')} and {artifacts.tokens_path('train')} list different "
                        "groups (rerun the pad stage)")
    training.check_validation_split(len(padded.x), p.train.validation_split)
    for cell in p.gradients.cells:
        path = artifacts.model_path(cell, p.train.seed)
        if cell != "simple_rnn" and not path.is_file():
            raise UserError(f"{path}: not found (run `dvc repro train_{cell}@{p.train.seed}` first)")
    return build_sample(tokens, p), padded


@exits_cleanly
def main() -> None:
    """Entry point of the gradients stage."""
    started = time.perf_counter()
    p = load()
    sample, padded = load_inputs(p)
    measurements = measure(p, sample, padded)
    write_outputs(p, sample, measurements, len(padded.groups))
    print(f"gradients: done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
