"""The gradients stage: the sample, the gradient against finite differences, the readouts, clipping,
and the whole stage on tiny data."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru import artifacts
from lstm_vs_gru import gradient_flow
from stages import gradients as gradients_stage
from lstm_vs_gru.model import build_model, expected_param_count, recurrent_param_count
from lstm_vs_gru.params import ModelParams, load, parse
from lstm_vs_gru.tokenizer import offsets_from_lengths, pad

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelParams(embedding_dim=3, units=4, dense_units=5, dropout=0.5, gru_reset_after=True)
GROUPS = np.array(["alt.atheism", "comp.graphics", "sci.space"])
NUM_WORDS, MAXLEN, LENGTHS, SAMPLES = 30, 8, [6, 12], 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_raw_params(**sections: dict) -> dict:
    """params.yaml as a mapping, with tiny sizes and any overrides."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tokenize"]["num_words"] = NUM_WORDS
    raw["pad"]["maxlen"] = MAXLEN
    raw["model"].update(embedding_dim=4, units=3, dense_units=5)
    raw["train"].update(epochs=1, batch_size=16)
    raw["gradients"].update(seq_lengths=LENGTHS, samples=SAMPLES)
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def tiny_params(**sections: dict) -> "gradient_flow.Params":
    """params.yaml with tiny sizes (and any overrides), validated like the real file."""
    return parse(tiny_raw_params(**sections))


# --- the sample -----------------------------------------------------------------------------

def test_choose_documents_draws_long_documents_with_the_seed():
    lengths = np.array([3, 50, 7, 60, 45, 2, 80, 41, 39, 100])
    offsets = offsets_from_lengths(lengths)
    chosen = gradient_flow.choose_documents(offsets, samples=4, min_tokens=40, seed=0)
    assert len(chosen) == 4 and len(set(chosen)) == 4 and list(chosen) == sorted(chosen)
    assert set(chosen) <= {1, 3, 4, 6, 7, 9}
    np.testing.assert_array_equal(chosen, gradient_flow.choose_documents(offsets, 4, 40, seed=0))
    draws = {tuple(gradient_flow.choose_documents(offsets, 4, 40, seed=s)) for s in range(10)}
    assert len(draws) > 1, "the seed does not change the draw"


def test_choose_documents_fills_up_with_the_longest_when_too_few_are_long():
    lengths = np.array([3, 50, 7, 60, 45, 2, 80, 41, 39, 100])
    chosen = gradient_flow.choose_documents(offsets_from_lengths(lengths), samples=5, min_tokens=70, seed=3)
    # 6 and 9 are long enough; then the longest others: 3 (60), 1 (50), 4 (45)
    assert list(chosen) == [1, 3, 4, 6, 9]


def test_build_sample_pads_every_length_from_the_same_documents():
    lengths = np.array([2, 15, 20, 13, 4, 30, 12, 25])
    # document d holds the tokens 100*d + 1, 100*d + 2, ...: every token says where it came from
    ids = np.concatenate([100 * d + np.arange(1, n + 1) for d, n in enumerate(lengths)]).astype(np.int32)
    tokens = {"ids": ids, "offsets": offsets_from_lengths(lengths), "labels": np.arange(8, dtype=np.int32) % 3}
    p = tiny_params(gradients={"samples": 3, "seq_lengths": [5, 14]})
    sample = gradient_flow.build_sample(tokens, p)
    assert set(sample.indices) <= {1, 2, 5, 7}  # at least max(seq_lengths) = 14 tokens
    np.testing.assert_array_equal(sample.labels, tokens["labels"][sample.indices])
    np.testing.assert_array_equal(sample.token_counts, lengths[sample.indices])
    for row, doc in enumerate(sample.indices):
        for length in (5, 14):
            # pre truncation keeps the last `length` tokens
            expected = 100 * doc + np.arange(lengths[doc] - length + 1, lengths[doc] + 1)
            np.testing.assert_array_equal(sample.tokens[length][row], expected)
    post = gradient_flow.build_sample(tokens, tiny_params(gradients={"samples": 3, "seq_lengths": [5, 14]},
                                                       pad={"truncating": "post"}))
    np.testing.assert_array_equal(post.tokens[5][0], 100 * post.indices[0] + np.arange(1, 6))


def test_short_documents_are_padded_as_params_say():
    lengths = np.array([3, 4])
    tokens = {"ids": np.arange(1, 8, dtype=np.int32), "offsets": offsets_from_lengths(lengths),
              "labels": np.array([0, 1], dtype=np.int32)}
    sample = gradient_flow.build_sample(tokens, tiny_params(gradients={"samples": 2, "seq_lengths": [6]}))
    np.testing.assert_array_equal(sample.tokens[6], [[0, 0, 0, 1, 2, 3], [0, 0, 4, 5, 6, 7]])
    np.testing.assert_array_equal(sample.tokens[6], pad(tokens["ids"], tokens["offsets"], 6))


# --- the curve summary -------------------------------------------------------------------------

def test_curve_summary_of_a_geometric_decay():
    # the gradient shrinks 10x per step back from the end: step t of 6 has norm 10^(t - 6)
    norms = 10.0 ** (np.arange(1, 7) - 6.0)
    summary = gradient_flow.curve_summary(norms)
    assert summary["log10_first_to_last"] == pytest.approx(-5.0)
    assert summary["first_norm"] == pytest.approx(1e-5) and summary["last_norm"] == 1.0
    # below 1e-3 of the last step: steps 1, 2 (1e-5, 1e-4); the nearest to the end is step 2
    assert summary["vanish_step"] == 2
    assert summary["nonfinite_steps"] == summary["zero_steps"] == 0


def test_curve_summary_of_flat_overflowing_and_underflowing_curves():
    flat = gradient_flow.curve_summary(np.array([0.5, 0.4, 0.5]))
    assert flat["vanish_step"] is None and flat["log10_first_to_last"] == pytest.approx(0.0)
    overflow = gradient_flow.curve_summary(np.array([np.nan, np.inf, 1e30, 2.0]))
    assert overflow["first_norm"] is None and overflow["log10_first_to_last"] is None
    assert overflow["nonfinite_steps"] == 2 and overflow["max_norm"] == 1e30 and overflow["vanish_step"] is None
    underflow = gradient_flow.curve_summary(np.array([0.0, 0.0, 1e-9, 1.0]))
    assert underflow["zero_steps"] == 2 and underflow["vanish_step"] == 3 and underflow["log10_first_to_last"] is None


# --- gradients against finite differences ------------------------------------------------------

@pytest.fixture
def float64():
    import keras

    # Keras caches its default dtype policy from floatx on first use: set and restore both.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def loss_per_document(rest, embedded: np.ndarray, labels: np.ndarray) -> np.ndarray:
    import keras

    probabilities = rest(embedded, training=False)
    return keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(labels, probabilities))


@pytest.mark.parametrize("cell, reset_after", [("simple_rnn", True), ("lstm", True), ("gru", True), ("gru", False)])
@pytest.mark.parametrize("readout", gradient_flow.READOUTS)
def test_embedded_gradients_match_central_differences(float64, cell, reset_after, readout):
    from lstm_vs_gru.model import seed_everything

    seed_everything(1)
    length, classes = 5, 3
    model = build_model(cell, 11, length, classes, replace(TINY, gru_reset_after=reset_after))
    # larger recurrent weights than at initialisation, so the path through the recurrence matters
    rnn = model.get_layer(cell).cell
    rnn.recurrent_kernel.assign(rnn.recurrent_kernel.numpy() * 2.0)
    tokens = np.array([[3, 1, 4, 1, 5], [0, 9, 2, 6, 5]], dtype=np.int32)
    labels = np.array([2, 0], dtype=np.int32)
    embedding, rest = gradient_flow.split_model(model, readout)
    analytic = gradient_flow.embedded_gradients(embedding, rest, tokens, labels)
    assert analytic.dtype == np.float64 and analytic.shape == (2, length, TINY.embedding_dim)

    embedded = np.asarray(embedding(tokens))
    numeric = np.zeros_like(embedded)
    step = 1e-6
    for index in np.ndindex(embedded.shape):
        plus, minus = embedded.copy(), embedded.copy()
        plus[index] += step
        minus[index] -= step
        change = (loss_per_document(rest, plus, labels) - loss_per_document(rest, minus, labels)) / (2 * step)
        other = 1 - index[0]
        assert change[other] == 0.0, "one document's input changed another document's loss"
        numeric[index] = change[index[0]]
    assert np.abs(numeric).max() > 1e-4, "a gradient this small checks nothing"
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_max_pool_readout_is_the_model_and_last_state_reads_the_last_step():
    model = build_model("gru", 11, 6, 3, TINY)
    tokens = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]], dtype=np.int32)
    embedding, rest = gradient_flow.split_model(model, "max_pool")
    np.testing.assert_allclose(rest(embedding(tokens)), model(tokens, training=False), rtol=1e-6)
    _, last = gradient_flow.split_model(model, "last_state")
    states = model.get_layer("gru")(embedding(tokens))[:, -1, :]
    head = model.get_layer("output")(model.get_layer("hidden")(states))
    np.testing.assert_allclose(last(embedding(tokens)), head, rtol=1e-6)
    assert last(embedding(tokens)).shape == (2, 3)
    with pytest.raises(ValueError, match="readout"):
        gradient_flow.split_model(model, "mean")


def test_gradient_flow_is_the_mean_norm_per_step_with_dropout_off():
    from lstm_vs_gru.model import seed_everything

    seed_everything(0)  # unseeded, all five ReLU units could start dead and every gradient be 0
    model = build_model("lstm", 11, 6, 3, replace(TINY, dropout=0.9))
    tokens = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 1, 2]], dtype=np.int32)
    labels = np.array([0, 2], dtype=np.int32)
    flow = gradient_flow.gradient_flow(model, tokens, labels)
    again = gradient_flow.gradient_flow(model, tokens, labels)
    np.testing.assert_array_equal(flow, again)  # dropout at 0.9 would make these differ
    embedding, rest = gradient_flow.split_model(model)
    grads = gradient_flow.embedded_gradients(embedding, rest, tokens, labels)
    np.testing.assert_allclose(flow, np.sqrt((grads.astype(np.float64) ** 2).sum(axis=2)).mean(axis=0), rtol=1e-6)
    # with max pooling a step reaches the loss only where some unit peaks: 0 is possible, all 0 is not
    assert flow.shape == (6,) and flow.min() >= 0 and flow.max() > 0


def test_weights_move_to_another_length_and_the_recurrent_kernel_scales_alone():
    p = tiny_params()
    source = gradient_flow.fresh_model("simple_rnn", p, MAXLEN, 3)
    longer = gradient_flow.at_length("simple_rnn", source.get_weights(), p, 20, 3)
    assert tuple(longer.inputs[0].shape) == (None, 20)
    for a, b in zip(source.get_weights(), longer.get_weights()):
        np.testing.assert_array_equal(a, b)
    scaled = gradient_flow.scale_recurrent_kernel(source.get_weights(), p, 3, 3.0, MAXLEN)
    recurrent = source.get_layer("simple_rnn").cell.recurrent_kernel.path
    names = [w.path for w in source.weights]
    for name, before, after in zip(names, source.get_weights(), scaled):
        np.testing.assert_allclose(after, before * 3.0 if name == recurrent else before, rtol=1e-6)
    # the same seed gives the same initial weights, as in the train stages
    for a, b in zip(source.get_weights(), gradient_flow.fresh_model("simple_rnn", p, MAXLEN, 3).get_weights()):
        np.testing.assert_array_equal(a, b)


# --- clipping ------------------------------------------------------------------------------------

def test_batch_order_covers_each_pass_once():
    batches = list(gradient_flow.batch_order(10, 4, 5, seed=0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4]
    assert sorted(np.concatenate(batches[:3])) == list(range(10))
    assert [list(b) for b in batches] == [list(b) for b in gradient_flow.batch_order(10, 4, 5, seed=0)]


def test_clipping_run_records_norms_before_and_after_clipping():
    import keras
    import tensorflow as tf

    p = tiny_params(model={"dropout": 0.0})
    rng = np.random.default_rng(0)
    x = rng.integers(0, NUM_WORDS, size=(40, MAXLEN)).astype(np.int32)
    y = rng.integers(0, 3, size=40).astype(np.int32)
    weights = gradient_flow.fresh_model("simple_rnn", p, MAXLEN, 3).get_weights()
    free = gradient_flow.clipping_run(weights, p, x, y, 3, clipnorm=None, steps=6)
    tight = gradient_flow.clipping_run(weights, p, x, y, 3, clipnorm=1e-4, steps=6)
    assert list(free.columns) == ["step", "loss", "grad_norm", "clipped_grad_norm", "update_norm", "clipped"]
    assert free["step"].tolist() == list(range(1, 7))
    assert not free["clipped"].any() and tight["clipped"].all()
    np.testing.assert_allclose(free["clipped_grad_norm"], free["grad_norm"], rtol=1e-6)
    # Each of the 7 dense variables is clipped to norm 1e-4 exactly; the embedding's IndexedSlices is clipped
    # on its values, and summing a token's repeated rows can change its norm by up to sqrt(repeats).
    repeats = p.train.batch_size * MAXLEN
    assert (tight["clipped_grad_norm"] >= math.sqrt(7) * 1e-4 * 0.999).all()
    assert (tight["clipped_grad_norm"] <= math.sqrt(7 + repeats) * 1e-4).all()
    assert (tight["clipped_grad_norm"] < 1e-2 * tight["grad_norm"]).all()
    assert (free["update_norm"] > 0).all() and (tight["update_norm"] > 0).all()

    # step 1: same weights and batch in both runs, and the same gradient as computed here
    assert free["loss"][0] == pytest.approx(tight["loss"][0]) and free["grad_norm"][0] == pytest.approx(
        tight["grad_norm"][0], rel=1e-5)
    model = gradient_flow.at_length("simple_rnn", weights, p, MAXLEN, 3)
    first = next(gradient_flow.batch_order(len(x), p.train.batch_size, 1, p.train.seed))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y[first], model(x[first], training=True)))
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
    assert free["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    assert free["grad_norm"][0] == pytest.approx(float(tf.linalg.global_norm(grads)), rel=1e-4)
    # Adam's first step moves every weight with a non-zero gradient by about the learning rate
    moved = sum(int(np.count_nonzero(g.numpy())) for g in grads)
    assert free["update_norm"][0] == pytest.approx(p.train.learning_rate * math.sqrt(moved), rel=0.05)


# --- the stage ---------------------------------------------------------------------------------

def write_project(root: Path) -> None:
    """Tiny params, token and padded arrays, and two 'trained' models (weights from another seed)."""
    raw = tiny_raw_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 20, size=36)
    ids = rng.integers(1, NUM_WORDS, size=int(lengths.sum())).astype(np.int32)
    offsets = offsets_from_lengths(lengths)
    labels = rng.integers(0, len(GROUPS), size=len(lengths)).astype(np.int32)
    fingerprint = np.array("0" * 64)
    artifacts.write_npz(root / artifacts.tokens_path("train"), ids=ids, offsets=offsets, labels=labels, groups=GROUPS,
                        vocabulary_sha256=fingerprint)
    artifacts.write_npz(root / artifacts.padded_path("train"), x=pad(ids, offsets, MAXLEN), y=labels, groups=GROUPS,
                        vocabulary_sha256=fingerprint)
    p = parse(raw)
    from lstm_vs_gru.model import seed_everything

    for cell in ("lstm", "gru"):
        seed_everything(99)
        model = build_model(cell, NUM_WORDS, MAXLEN, len(GROUPS), p.model)
        path = root / artifacts.model_path(cell, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gradients_stage")
    write_project(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(gradient_flow, "CLIPPING_STEPS", 12)  # a short demonstration is enough to check the outputs
        gradients_stage.main()
    return root


@pytest.mark.slow
def test_stage_writes_one_curve_per_model_setting_and_length(stage_run):
    written = sorted(p.name for p in (stage_run / artifacts.GRADIENTS_DIR).glob("*.csv"))
    expected = [f"{name}_{setting}_{length}.csv" for name in ("gru", "lstm", "simple_rnn") for setting in
                ("init", "trained") for length in LENGTHS] + [f"simple_rnn_scaled_init_{n}.csv" for n in LENGTHS]
    assert written == sorted(expected + ["clipping.csv"])
    for length in LENGTHS:
        curve = pd.read_csv(stage_run / artifacts.gradient_curve_path("lstm", "trained", length))
        assert list(curve.columns) == ["step", "grad_norm", "grad_norm_last_state"]
        assert curve["step"].tolist() == list(range(1, length + 1))
        assert (curve["grad_norm"] > 0).all() and (curve["grad_norm_last_state"] > 0).all()
    init = pd.read_csv(stage_run / artifacts.gradient_curve_path("lstm", "init", 12))
    trained = pd.read_csv(stage_run / artifacts.gradient_curve_path("lstm", "trained", 12))
    assert not np.allclose(init["grad_norm"], trained["grad_norm"]), "trained weights were not loaded"
    assert not list((stage_run / artifacts.GRADIENTS_DIR).glob(".*tmp*")), "temp files left behind"


@pytest.mark.slow
def test_stage_metrics_summarise_the_curves_and_count_parameters(stage_run):
    metrics = artifacts.read_json(stage_run / artifacts.metrics_path("gradients"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(stage_run)
        p = load()
    assert metrics["sizes"] == {"num_words": NUM_WORDS, "embedding_dim": 4, "units": 3, "dense_units": 5,
                                "n_classes": 3, "gru_reset_after": True, "bidirectional": False, "layers": 1,
                                "pooling": "max", "embedding_dropout": 0.0, "spatial_dropout": 0.0,
                                "embedding_init": "uniform"}
    for cell in ("simple_rnn", "lstm", "gru"):
        assert metrics["params"][cell] == {
            "model": expected_param_count(cell, NUM_WORDS, p.model, 3),
            "recurrent": recurrent_param_count(cell, 4, 3, True)}
    assert metrics["sample"]["documents"] == SAMPLES and metrics["sample"]["min_tokens"] == 12
    assert set(metrics["curves"]) == {"simple_rnn", "lstm", "gru", "simple_rnn_scaled"}
    assert set(metrics["curves"]["simple_rnn_scaled"]) == {"init"}
    for length in LENGTHS:
        curve = pd.read_csv(stage_run / artifacts.gradient_curve_path("gru", "init", length))
        summary = metrics["curves"]["gru"]["init"][f"L{length}"]
        for readout, column in (("max_pool", "grad_norm"), ("last_state", "grad_norm_last_state")):
            norms = curve[column].to_numpy()
            assert summary[readout]["log10_first_to_last"] == pytest.approx(math.log10(norms[0] / norms[-1]), abs=1e-3)
    assert metrics["simple_rnn_training"]["epoch"] == 1
    clipping = metrics["clipping"]
    assert clipping["steps"] == 12 and clipping["clipnorm"] == gradient_flow.CLIPNORM
    table = pd.read_csv(stage_run / artifacts.GRADIENT_CLIPPING)
    assert len(table) == 12 and table["clipped"].dtype == bool
    assert clipping["clipnorm_run"]["clipped_steps"] == int(table["clipped"].sum())
    assert clipping["unclipped"]["clipped_steps"] == 0
    assert clipping["unclipped"]["median_grad_norm"] == pytest.approx(table["grad_norm_unclipped"].median(), rel=1e-5)


@pytest.mark.slow
def test_stage_draws_both_figures(stage_run):
    for name in ("gradient_flow", "exploding"):
        png = stage_run / artifacts.gradient_figure_path(name)
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        height, width = matplotlib.image.imread(png).shape[:2]
        assert height >= 400 and width >= 500, (name, height, width)


def _run_main(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "import sys, stages.gradients as g\n"
                           "try:\n    g.main()\nfinally:\n    print('tf' if 'tensorflow' in sys.modules else 'no tf')"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_missing_model_fails_in_one_line_before_tensorflow(tmp_path):
    write_project(tmp_path)
    (tmp_path / artifacts.model_path("gru", 0)).unlink()
    done = _run_main(tmp_path)
    assert done.returncode == 2
    assert done.stderr == "error: models/gru/seed0.keras: not found (run `dvc repro train_gru@0` first)\n"
    assert done.stdout.strip() == "no tf"


def test_bad_sample_size_is_a_user_error(tmp_path):
    write_project(tmp_path)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
    raw["gradients"]["samples"] = 1000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = _run_main(tmp_path)
    assert done.returncode == 2 and "gradients.samples = 1000" in done.stderr and done.stderr.count("\n") == 1


def test_importing_the_stage_does_not_import_tensorflow():
    code = "import stages.gradients, sys; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_figures_name_the_pooling_of_the_model_they_read():
    curves = {("lstm", "init", 4, readout): np.ones(4) for readout in gradient_flow.READOUTS}
    figure = gradient_flow.plot_gradient_flow(curves, ["lstm"], [4], "max_mean")
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["L = 4: the model as built (global max + mean pooling)", "L = 4: read from the last state only"]
    assert gradient_flow.readout_title("max_pool", "max") == "the model as built (global max pooling)"
