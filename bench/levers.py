"""What moves the needle: test accuracy of the tuned configuration (configs/tuned.yaml) and of variants that
take one lever away or add one, each run through the pipeline's own stages on the embedded corpus.

    python bench/levers.py [--variants tuned pooling_max ...] [--cells gru] [--seed 0] [--remove]
                           [--out bench/results/levers.json]

Each variant is params.yaml with configs/tuned.yaml applied, then the variant's own values. For each one the
script runs `python -m stages.fetch`, `tokenize`, `pad`, `embed` and `train CELL --seed N` in a scratch folder
with that params.yaml (the data stages once per distinct corpus, vocabulary, padding and embedding size), so
what it measures is what `dvc exp run` would produce. `--remove` measures on the posts without headers,
footers and quotes. The table shows test accuracy, macro-F1, epochs run and kept, seconds per epoch and the
trainer's path; the JSON keeps every run's metrics.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from bench_common import RESULTS, ROOT, write_results  # first: see bench_common
from lstm_vs_gru.artifacts import read_json, run_metrics_path
from lstm_vs_gru.cli.set_params import apply, read_overrides
from lstm_vs_gru.params import TRAINABLE_CELLS, read_yaml

TUNED = ROOT / "configs" / "tuned.yaml"
DEFAULT_OUT = RESULTS / "levers.json"
# Each variant: the values it sets on top of the tuned configuration ("lab": params.yaml as committed).
VARIANTS: dict[str, dict[str, Any]] = {
    "lab": {},
    "tuned": {},
    "pooling_max": {"model.pooling": "max"},
    "pooling_attention": {"model.pooling": "attention"},
    "maxlen_100": {"pad.maxlen": 100},
    "truncating_pre": {"pad.padding": "pre", "pad.truncating": "pre"},
    "no_early_stopping": {"train.early_stopping": None, "train.epochs": 8},
    "bidirectional": {"model.bidirectional": True},
    "embedding_dropout": {"model.embedding_dropout": 0.2},
    "spatial_dropout": {"model.spatial_dropout": 0.2},
    "two_layers": {"model.layers": 2},
    "cosine": {"train.lr_schedule": "cosine"},
    "units_128": {"model.units": 128, "model.dense_units": 128},
    "num_words_50k": {"tokenize.num_words": 50000},
    "batch_64": {"train.batch_size": 64},
    # the tuned set without the corpus's word vectors: what starting from them gains
    "embedding_uniform": {"model.embedding_init": "uniform"},
}


def variant_params(name: str, seed: int, remove: bool) -> dict[str, Any]:
    """params.yaml as the variant trains it (one seed)."""
    base = read_yaml(ROOT / "params.yaml")
    overrides = {} if name == "lab" else {**read_overrides(TUNED), **VARIANTS[name]}
    overrides.update({"train.seeds": [seed], "data.source": str(ROOT / "data" / "20news-bydate.tar.gz")})
    if remove:
        overrides["data.remove"] = ["headers", "footers", "quotes"]
    return apply(base, overrides, TUNED)


def run_stage(folder: Path, *module: str) -> float:
    """`python -m stages.MODULE ...` in `folder` with the project on the import path; its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *module], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise RuntimeError(f"{' '.join(module)} failed in {folder}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def measure(name: str, cells: Sequence[str], seed: int, remove: bool, scratch: Path,
            prepared: dict[str, Path]) -> list[dict[str, Any]]:
    """Train each cell for one variant; the corpus, tokens, padded arrays and word vectors are made once per
    distinct data/tokenize/pad parameters and embedding size, and copied in."""
    params = variant_params(name, seed, remove)
    folder = scratch / name
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    key = yaml.safe_dump({**{section: params[section] for section in ("data", "tokenize", "pad")},
                          "embedding_dim": params["model"]["embedding_dim"]})
    data_seconds = {}
    if key in prepared:
        shutil.copytree(prepared[key] / "data", folder / "data")
    else:
        for stage in ("fetch", "tokenize", "pad", "embed"):
            data_seconds[stage] = run_stage(folder, f"stages.{stage}")
        prepared[key] = folder
    rows = []
    for cell in cells:
        seconds = {**data_seconds, f"train_{cell}": run_stage(folder, "stages.train", cell, "--seed", str(seed))}
        metrics = read_json(folder / run_metrics_path(cell, seed))
        rows.append({"variant": name, "cell": cell, "seed": seed, "remove": remove, "metrics": metrics,
                     "stage_seconds": {stage: round(value, 1) for stage, value in seconds.items()}})
        print_row(rows[-1])
    return rows


def print_row(row: dict[str, Any]) -> None:
    m = row["metrics"]
    print(f"{row['variant']:<18} {row['cell']:<5} {m['test_accuracy']:>8.4f} {m['test_macro_f1']:>8.4f} "
          f"{m['epochs']:>3}/{m['kept_epoch']:<3} {m['seconds_per_epoch']:>7.1f} {m['trained_with']:>7} "
          f"{row['stage_seconds'][f'train_' + row['cell']]:>8.0f}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=TRAINABLE_CELLS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remove", action="store_true", help="posts without headers, footers and quotes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(f"{'variant':<18} {'cell':<5} {'test_acc':>8} {'macro_f1':>8} {'ep/kept':<7} {'s/epoch':>7} "
          f"{'path':>7} {'train_s':>8}")
    rows: list[dict[str, Any]] = []
    prepared: dict[str, Path] = {}
    settings = {"variants": {name: VARIANTS[name] for name in args.variants}, "tuned": read_overrides(TUNED),
                "cells": args.cells, "seed": args.seed, "remove": args.remove}
    with tempfile.TemporaryDirectory(prefix="levers-") as scratch:
        for name in args.variants:
            rows += measure(name, args.cells, args.seed, args.remove, Path(scratch), prepared)
            # after each variant, so a long run that is stopped keeps what it measured
            write_results(args.out, settings, rows)


if __name__ == "__main__":
    main()
