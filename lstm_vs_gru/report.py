"""The report: headline metrics of the cell this project puts forward, and a human report on both cells, built
from both cells' metrics and histories, the selected cell's test predictions, the TF-IDF baseline's scores and
the gradients stage's measurements (stages/report.py is the stage). No TensorFlow here: the confusion matrix
and per-group scores come from scikit-learn. The gradients section's words are in templates/gradients.md.j2;
this module gives it the numbers."""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
import matplotlib

matplotlib.use("Agg")  # DVC runs this stage without a display
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from lstm_vs_gru import artifacts, params, stats, training
from lstm_vs_gru.artifacts import is_finite_number
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.model import POOLING_NAMES, describe, expected_param_count, recurrent_param_count
from lstm_vs_gru.params import MODEL_LEVERS, ModelParams

METRIC_KEYS = (
    "cell", "seed", "params", "epochs", "seconds_per_epoch", "train_loss", "train_accuracy",
    "val_loss", "val_accuracy", "test_loss", "test_accuracy", "test_macro_f1",
)
INTEGER_KEYS = ("seed", "params", "epochs")
# Keras's name of each per-epoch series <- DVCLive's, whose Keras callback logs val_* under eval/
HISTORY_SERIES = {"loss": "train/loss", "accuracy": "train/accuracy", "val_loss": "eval/loss",
                  "val_accuracy": "eval/accuracy", "seconds": "train/seconds"}
# The others are absent when training ran without a validation split or without timing; plotted when present.
REQUIRED_SERIES = ("loss", "accuracy")
PREDICTION_COLUMNS = ("actual", "predicted")

LEARNING_CURVES = artifacts.report_figure_path("learning_curves")
SECONDS_PER_EPOCH = artifacts.report_figure_path("seconds_per_epoch")
CONFUSION_MATRIX = artifacts.report_figure_path("confusion_matrix")
SEEDS_FIGURE = artifacts.report_figure_path("seeds")
PER_GROUP_F1 = artifacts.report_figure_path("per_group_f1")

CELL_COLOURS = {"lstm": "tab:blue", "gru": "tab:orange"}
# The lab's only published figures (Keras 2 notebook, 2 epochs); everything else it did not report.
LAB_REFERENCE: dict[str, dict[str, float]] = {
    "lstm": {"params": 2_599_370, "epochs": 2, "seconds_per_epoch": 50.0, "val_accuracy": 0.51},
    "gru": {"params": 2_590_420, "epochs": 2, "seconds_per_epoch": 50.0, "val_accuracy": 0.53},
}
MISSING = "—"
FETCH_METRICS = artifacts.metrics_path("fetch")
BASELINE_STAGE = "baseline"
BASELINE_SCORES = ("test_accuracy", "test_macro_f1")
BASELINE_KEYS = ("model", "name", *BASELINE_SCORES, "fit_seconds", "vocabulary_size", "train_documents")


@dataclass(frozen=True)
class CorpusInfo:
    """What the fetch stage read (metrics/fetch.json)."""
    source: str
    kind: str
    classes: int
    train: int
    test: int

    @property
    def is_lab(self) -> bool:
        """Whether this is the lab's corpus, the only one its published figures compare with."""
        return self.kind == "archive"


@dataclass(frozen=True)
class CellRun:
    """What one training run (a cell and a seed) produced."""
    metrics: dict[str, Any]
    history: pd.DataFrame


SeedRuns = dict[str, dict[int, CellRun]]  # cell -> seed -> run, seeds in train.seeds order


# --- inputs ---

def producer(cell: str, seed: int) -> str:
    """The dvc.yaml stage that writes a run's metrics, history and predictions."""
    return f"train_{cell}@{seed}"


def required_inputs(selected: str, seeds: Sequence[int]) -> list[tuple[Path, str]]:
    """Every file the report reads, with the stage that produces it: each seed's run of each cell, the first
    seed's test predictions of the selected cell, the baseline's metrics and the gradients stage's outputs."""
    runs = [(artifacts.run_metrics_path(cell, seed), producer(cell, seed)) for cell in artifacts.CELLS for seed in seeds]
    runs += [(history_path(cell, seed, key), producer(cell, seed))
             for cell in artifacts.CELLS for seed in seeds for key in REQUIRED_SERIES]
    runs += [(artifacts.probabilities_path(cell, seed), producer(cell, seed))
             for cell in artifacts.CELLS for seed in seeds]
    return ([(FETCH_METRICS, "fetch")] + runs + [(artifacts.predictions_path(selected, seeds[0]),
                                                   producer(selected, seeds[0])),
                                                  (artifacts.BASELINE_METRICS, BASELINE_STAGE)] + gradient_inputs())


def check_inputs_exist(inputs: Sequence[tuple[Path, str]]) -> None:
    """One line naming every missing input and the `dvc repro` targets that make them."""
    missing = [(path, stage) for path, stage in inputs if not Path(path).is_file()]
    if not missing:
        return
    files = ", ".join(str(path) for path, _ in missing)
    stages = " ".join(dict.fromkeys(stage for _, stage in missing))
    raise UserError(f"missing {files}: run `dvc repro {stages}` to produce {'it' if len(missing) == 1 else 'them'}")


def read_corpus_info(path: Path = FETCH_METRICS) -> CorpusInfo:
    """metrics/fetch.json: the corpus both cells were trained and tested on."""
    raw = artifacts.read_stage_json(path, ("source", "kind", "classes", "train", "test"), "fetch")
    try:
        return CorpusInfo(str(raw["source"]), str(raw["kind"]), int(raw["classes"]),
                          int(raw["train"]["documents"]), int(raw["test"]["documents"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: classes and document counts are not numbers: re-run `dvc repro fetch`") from None


def read_baseline(path: Path = artifacts.BASELINE_METRICS) -> dict[str, Any]:
    """metrics/baseline.json: the TF-IDF baseline's name, test scores, fit time and vocabulary."""
    rerun = f"re-run `dvc repro {BASELINE_STAGE}`"
    raw = artifacts.read_stage_json(path, BASELINE_KEYS, BASELINE_STAGE)
    for key in BASELINE_SCORES:
        if not is_finite_number(raw[key]) or not 0.0 <= raw[key] <= 1.0:
            raise UserError(f"{path}: {key} = {raw[key]!r} is not a number in [0, 1]: {rerun}")
    if not is_finite_number(raw["fit_seconds"]) or raw["fit_seconds"] < 0:
        raise UserError(f"{path}: fit_seconds = {raw['fit_seconds']!r} is not a number of seconds: {rerun}")
    for key in ("vocabulary_size", "train_documents"):
        if isinstance(raw[key], bool) or not isinstance(raw[key], int):
            raise UserError(f"{path}: {key} = {raw[key]!r} is not a whole number: {rerun}")
    return {key: raw[key] for key in BASELINE_KEYS}


def read_metrics(path: Path, cell: str, seed: int) -> dict[str, Any]:
    """A run's metrics/{cell}/seed{seed}.json, checked against the train stage's contract."""
    rerun = f"re-run `dvc repro {producer(cell, seed)}`"
    raw = artifacts.read_stage_json(path, METRIC_KEYS, producer(cell, seed))
    if (raw["cell"], raw["seed"]) != (cell, seed):
        raise UserError(f"{path}: cell {raw['cell']!r} and seed {raw['seed']!r}, expected {cell!r} and {seed}: {rerun}")
    for key in METRIC_KEYS[1:]:
        value = raw[key]
        # null is allowed: a run without a validation split has no val_* figures
        if value is not None and (not is_finite_number(value) or (key in INTEGER_KEYS and not isinstance(value, int))):
            raise UserError(f"{path}: {key} = {value!r} is not a {'whole ' if key in INTEGER_KEYS else ''}number: {rerun}")
    # metrics written before the trainer recorded its path say nothing of it
    return {**{key: raw[key] for key in METRIC_KEYS}, "trained_with": str(raw.get("trained_with", "unrecorded"))}


def read_table(path: Path, required: Sequence[str], stage: str, **read_csv: Any) -> pd.DataFrame:
    """A non-empty CSV or TSV (read_csv's `sep`) with the required columns, written by `stage`."""
    rerun = f"re-run `dvc repro {stage}`"
    try:
        frame = pd.read_csv(path, **read_csv)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable {path.suffix[1:].upper()} ({' '.join(str(error).split())}): "
                        f"{rerun}") from None
    absent = [column for column in required if column not in frame.columns]
    if absent:
        raise UserError(f"{path}: missing columns {', '.join(absent)}: {rerun}")
    if frame.empty:
        raise UserError(f"{path}: has no rows: {rerun}")
    return frame


def history_path(cell: str, seed: int, key: str) -> Path:
    """DVCLive's file of the per-epoch series Keras calls `key` (loss, val_accuracy, seconds...)."""
    return artifacts.dvclive_metric_path(cell, seed, HISTORY_SERIES[key])


def read_series(path: Path, stage: str) -> list[float]:
    """One DVCLive series: a numeric value per epoch, at steps 0, 1, 2..."""
    rerun = f"re-run `dvc repro {stage}`"
    frame = read_table(path, ("step", path.stem), stage, sep="\t")
    for column in ("step", path.stem):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise UserError(f"{path}: column {column} is not numeric: {rerun}")
    if frame["step"].tolist() != list(range(len(frame))):
        raise UserError(f"{path}: steps are not 0, 1, 2... (one per epoch): {rerun}")
    return frame[path.stem].tolist()


def read_history(cell: str, seed: int) -> pd.DataFrame:
    """A run's history from DVCLive's files, one row per epoch (DVCLive's step + 1), rounded by
    training.history_rows as metrics/{cell}/seed{seed}.json's figures are."""
    stage = producer(cell, seed)
    logs = {key: read_series(history_path(cell, seed, key), stage) for key in HISTORY_SERIES
            if key in REQUIRED_SERIES or history_path(cell, seed, key).is_file()}
    epochs = len(logs["loss"])
    for key, values in logs.items():
        if len(values) != epochs:
            raise UserError(f"{history_path(cell, seed, key)}: {len(values)} epochs, "
                            f"{history_path(cell, seed, 'loss')} has {epochs}: re-run `dvc repro {stage}`")
    return pd.DataFrame(training.history_rows(logs))[["epoch", *logs]]


def read_predictions(path: Path, stage: str) -> pd.DataFrame:
    """plots/{cell}/seed{seed}/predictions.csv: actual and predicted group names, read as text."""
    frame = read_table(path, PREDICTION_COLUMNS, stage, dtype=str, keep_default_na=False)
    return frame[list(PREDICTION_COLUMNS)]


def read_run(cell: str, seed: int) -> CellRun:
    return CellRun(read_metrics(artifacts.run_metrics_path(cell, seed), cell, seed), read_history(cell, seed))


def read_inputs(selected: str, seeds: Sequence[int]) -> tuple[SeedRuns, pd.DataFrame]:
    """Every seed's run of both cells, and the first seed's test predictions of the selected cell."""
    check_inputs_exist(required_inputs(selected, seeds))
    runs = {cell: {seed: read_run(cell, seed) for seed in seeds} for cell in artifacts.CELLS}
    reference = producer(selected, seeds[0])
    return runs, read_predictions(artifacts.predictions_path(selected, seeds[0]), reference)


PROBABILITY_ARRAYS = ("probabilities", "labels", "groups")


def read_probabilities(cell: str, seed: int) -> dict[str, np.ndarray]:
    """predictions/{cell}/seed{seed}.npz: a run's test probabilities (posts x groups), true labels and groups."""
    path, stage = artifacts.probabilities_path(cell, seed), producer(cell, seed)
    arrays = artifacts.read_stage_npz(path, PROBABILITY_ARRAYS, stage)
    shape = arrays["probabilities"].shape
    if shape != (len(arrays["labels"]), len(arrays["groups"])) or not np.isfinite(arrays["probabilities"]).all():
        raise UserError(f"{path}: probabilities of shape {shape}, expected finite values for "
                        f"({len(arrays['labels'])} test posts, {len(arrays['groups'])} groups): "
                        f"re-run `dvc repro {stage}`")
    return arrays


def read_ensemble_inputs(seeds: Sequence[int]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every run's probabilities by cell, checked to score the same test posts and groups."""
    members = {cell: [read_probabilities(cell, seed) for seed in seeds] for cell in artifacts.CELLS}
    first = members[artifacts.CELLS[0]][0]
    for cell, runs in members.items():
        for seed, run in zip(seeds, runs):
            if not (np.array_equal(run["labels"], first["labels"]) and np.array_equal(run["groups"], first["groups"])):
                raise UserError(f"{artifacts.probabilities_path(cell, seed)}: scores other test posts or groups than "
                                f"{artifacts.probabilities_path(artifacts.CELLS[0], seeds[0])}: re-run `dvc repro`")
    return members


def ensemble_scores(members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """The runs' probabilities averaged, the most probable group taken: test accuracy and macro-F1 (as the
    train stages score one run), and how many runs were averaged."""
    mean = np.mean([run["probabilities"] for run in members], axis=0)
    labels, predicted = members[0]["labels"], mean.argmax(axis=1)
    return {"runs": len(members),
            "test_accuracy": round(float(accuracy_score(labels, predicted)), training.DIGITS),
            "test_macro_f1": round(float(f1_score(labels, predicted, average="macro", zero_division=0)),
                                   training.DIGITS)}


def ensembles(members: Mapping[str, Sequence[Mapping[str, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """metrics/report.json's `ensemble`: each cell's seeds averaged, then every run of both cells."""
    scores = {cell: ensemble_scores(runs) for cell, runs in members.items()}
    scores["_and_".join(members)] = ensemble_scores([run for runs in members.values() for run in runs])
    return scores


def reference_runs(runs: SeedRuns) -> dict[str, CellRun]:
    """Each cell's run of the first seed: the models the gradients stage and predict use."""
    return {cell: next(iter(by_seed.values())) for cell, by_seed in runs.items()}


# --- figures computed from the inputs ---

SEED_METRICS = {"test_accuracy": "test accuracy", "test_macro_f1": "test macro-F1",
                "val_accuracy": "validation accuracy"}


def seed_values(runs: SeedRuns, cell: str, key: str) -> list[Any]:
    return [run.metrics.get(key) for run in runs[cell].values()]


def aggregates(runs: SeedRuns) -> dict[str, Any]:
    """Over seeds: each cell's summary (mean, sd, 95% interval) of SEED_METRICS, the paired difference of the
    second cell minus the first (same seeds) with its p-value, the verdict on test accuracy, and each seed's
    value (for the gate). A metric some run lacks (no validation split) is left out."""
    first, second = runs
    keys = [key for key in SEED_METRICS if all(None not in seed_values(runs, cell, key) for cell in runs)]
    differences = {key: stats.paired_difference(seed_values(runs, first, key), seed_values(runs, second, key))
                   for key in keys}
    return {
        "cells": {cell: {key: stats.summary(seed_values(runs, cell, key)) for key in keys} for cell in runs},
        f"{second}_minus_{first}": differences,
        "verdict": stats.verdict((first.upper(), second.upper()), differences["test_accuracy"], "test accuracy"),
        # the code path that trained (native, xla, keras): a change of path explains a shift of the figures
        "trained_with": {cell: ", ".join(sorted(set(seed_values(runs, cell, "trained_with")))) for cell in runs},
        "per_seed": {cell: {key: {str(seed): run.metrics[key] for seed, run in runs[cell].items()} for key in keys}
                     for cell in runs},
    }


def mean_seconds(runs: SeedRuns, cell: str) -> float:
    return round(float(np.mean(seed_values(runs, cell, "seconds_per_epoch"))), 3)


def headline(selected: str, runs: SeedRuns, summary: Mapping[str, Any], baseline: Mapping[str, Any],
             ensemble: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/report.json: the selected cell's means over seeds under the keys a single run has (so
    `dvc metrics diff` compares them), then the aggregates, the ensembles and the baseline's scores beside them."""
    cell_summary = summary["cells"][selected]
    means = {key: cell_summary[key]["mean"] if key in cell_summary else None for key in SEED_METRICS}
    return {"cell": selected, "seeds": len(runs[selected]), **means, "seconds_per_epoch": mean_seconds(runs, selected),
            "params": seed_values(runs, selected, "params")[0], **summary, "ensemble": dict(ensemble),
            "baseline": baseline_comparison(means, baseline)}


def baseline_comparison(means: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline's test scores and the selected cell's means over seeds minus them (negative: the cell is
    behind)."""
    return {"model": baseline["model"], "name": baseline["name"], **{key: baseline[key] for key in BASELINE_SCORES},
            "selected_minus_baseline": {key: None if means[key] is None else round(means[key] - baseline[key], 6)
                                        for key in BASELINE_SCORES}}


def group_labels(actual: Sequence[str], predicted: Sequence[str]) -> list[str]:
    """Every group seen, sorted, which is the label order of the corpus."""
    return sorted(set(actual) | set(predicted))


def confusion(actual: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts: row = actual group, column = predicted group, in `labels` order."""
    return confusion_matrix(actual, predicted, labels=list(labels))


def per_group_scores(actual: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per group, in `labels` order."""
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=list(labels), zero_division=0)
    return pd.DataFrame({"group": list(labels), "precision": precision, "recall": recall, "f1": f1, "support": support})


def top_confusions(matrix: np.ndarray, labels: Sequence[str], count: int = 5) -> list[tuple[str, str, int]]:
    """The largest off-diagonal cells as (actual, predicted, posts), ties in label order."""
    cells = [(int(matrix[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i, j]]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [(labels[i], labels[j], n) for n, i, j in cells[:count]]


# --- pictures: one function per figure ---

def _over_seeds(histories: Sequence[pd.DataFrame], column: str) -> pd.DataFrame | None:
    """Per epoch: the mean of `column` over the seeds' histories and its standard deviation (0 for one seed)."""
    frames = [history.set_index("epoch")[column] for history in histories if column in history]
    if not frames or all(frame.isna().all() for frame in frames):
        return None
    table = pd.concat(frames, axis=1)
    return pd.DataFrame({"mean": table.mean(axis=1), "std": table.std(axis=1, ddof=1).fillna(0.0)})


def plot_learning_curves(histories: Mapping[str, Sequence[pd.DataFrame]], lab: bool = True) -> Figure:
    """Loss and accuracy per epoch for every cell: the mean over seeds, train solid and validation dashed, with
    a band of one standard deviation over seeds (and the lab's stars on its corpus)."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for cell, runs in histories.items():
        for axes, column in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            for name, style, part in ((column, "o-", "train"), (f"val_{column}", "o--", "validation")):
                curve = _over_seeds(runs, name)
                if curve is None:
                    continue
                axes.plot(curve.index, curve["mean"], style, color=CELL_COLOURS[cell], label=f"{cell.upper()} {part}")
                axes.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                                  color=CELL_COLOURS[cell], alpha=0.15, linewidth=0)
    for cell, reference in (LAB_REFERENCE if lab else {}).items():
        accuracy_axes.plot(reference["epochs"], reference["val_accuracy"], "*", markersize=13, color=CELL_COLOURS[cell],
                           markeredgecolor="black", label=f"lab {cell.upper()} validation")
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set(xlabel="epoch", ylabel=name, title=f"{name.capitalize()} per epoch, mean ± sd over seeds")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def plot_seconds_per_epoch(seconds: Mapping[str, float], histories: Mapping[str, Sequence[pd.DataFrame]],
                           lab: bool = True) -> Figure:
    """Mean seconds per epoch per cell over its seeds (bars), each epoch of each seed (dots) and the lab's ~50 s."""
    figure = Figure(figsize=(5.5, 4.2), layout="constrained")
    axes = figure.subplots()
    cells = list(seconds)
    bars = axes.bar([cell.upper() for cell in cells], [seconds[cell] for cell in cells],
                    color=[CELL_COLOURS[cell] for cell in cells], width=0.55)
    axes.bar_label(bars, fmt="%.1f s", label_type="center", color="white", fontweight="bold")  # clear of the dots
    for position, cell in enumerate(cells):
        epochs = pd.concat([history["seconds"] for history in histories[cell] if "seconds" in history]
                           or [pd.Series(dtype=float)]).dropna()
        axes.plot([position] * len(epochs), epochs, "k.", label="single epochs" if position == 0 else None)
    if lab:
        lab_seconds = LAB_REFERENCE["lstm"]["seconds_per_epoch"]
        axes.axhline(lab_seconds, linestyle="--", color="grey", label=f"lab ≈ {lab_seconds:.0f} s")
    axes.set(ylabel="seconds per epoch", title="Training time per epoch")
    axes.margins(y=0.15)
    axes.legend(fontsize=8, loc="lower right")
    return figure


def plot_seeds(runs: SeedRuns, summary: Mapping[str, Any]) -> Figure:
    """Each seed's test accuracy and macro-F1 per cell, a grey line joining a seed's two cells (the pairing
    the paired test uses), and each cell's mean with its 95% interval."""
    keys = [key for key in ("test_accuracy", "test_macro_f1") if key in summary["cells"][next(iter(runs))]]
    figure = Figure(figsize=(5.2 * len(keys), 4.2), layout="constrained")
    for axes, key in zip(np.atleast_1d(figure.subplots(1, len(keys))), keys):
        cells = list(runs)
        values = np.array([seed_values(runs, cell, key) for cell in cells])
        axes.plot(np.arange(len(cells))[:, None].repeat(values.shape[1], 1), values, "-", color="grey", alpha=0.4)
        for position, cell in enumerate(cells):
            axes.plot([position] * values.shape[1], values[position], "o", color=CELL_COLOURS[cell], alpha=0.7)
            cell_summary = summary["cells"][cell][key]
            if cell_summary["ci_low"] is not None:
                axes.errorbar(position + 0.12, cell_summary["mean"], fmt="D", color="black", capsize=5,
                              yerr=[[cell_summary["mean"] - cell_summary["ci_low"]],
                                    [cell_summary["ci_high"] - cell_summary["mean"]]])
        axes.set_xticks(range(len(cells)), [cell.upper() for cell in cells])
        axes.set(xlim=(-0.5, len(cells) - 0.5), ylabel=SEED_METRICS[key],
                 title=f"{SEED_METRICS[key][0].upper() + SEED_METRICS[key][1:]}, {values.shape[1]} seeds "
                       "(◆ mean, 95% interval)")
        axes.grid(alpha=0.3, axis="y")
    return figure


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], cell: str) -> Figure:
    """The test-split confusion matrix: counts written in, colour = share of the actual group."""
    figure = Figure(figsize=(12, 10.5), layout="constrained")
    axes = figure.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    # colour by row share so small groups read as clearly as big ones
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if share[row, column] > 0.5 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set(xlabel="predicted group", ylabel="actual group",
             title=f"{cell.upper()}: confusion matrix on the test split ({int(matrix.sum()):,} posts)")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the actual group")
    return figure


def plot_per_group_f1(scores: pd.DataFrame, cell: str) -> Figure:
    """Horizontal F1 bars per group, best at the top, with the macro-F1 line."""
    ordered = scores.sort_values("f1", kind="stable")
    macro = float(scores["f1"].mean())
    figure = Figure(figsize=(8, 7), layout="constrained")
    axes = figure.subplots()
    axes.barh(ordered["group"], ordered["f1"], color=CELL_COLOURS[cell])
    for position, value in enumerate(ordered["f1"]):
        axes.text(value + 0.01, position, f"{value:.2f}", va="center", fontsize=8)
    axes.axvline(macro, linestyle="--", color="grey", label=f"macro-F1 {macro:.3f}")
    axes.set(xlim=(0, 1.08), xlabel="F1 on the test split", title=f"{cell.upper()}: F1 per group")
    axes.tick_params(axis="y", labelsize=8)
    axes.legend(fontsize=8, loc="lower right")
    return figure


# --- markdown: one function per section, joined by render_markdown ---

def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def fmt_count(value: Any) -> str:
    return MISSING if value is None else f"{int(value):,}"


def fmt_score(value: Any) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.4f}"


def fmt_seconds(value: Any) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.1f}"


def fmt_lab(key: str, value: Any) -> str:
    """The lab's figures as published: two decimals, 'about 50' seconds."""
    if value is None:
        return MISSING
    if key == "seconds_per_epoch":
        return f"≈ {value:.0f}"
    return fmt_count(value) if key in INTEGER_KEYS else f"{value:.2f}"


COMPARISON_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("Parameters", "params", fmt_count),
    ("Epochs", "epochs", fmt_count),
    ("Seconds per epoch", "seconds_per_epoch", fmt_seconds),
    ("Train loss", "train_loss", fmt_score),
    ("Train accuracy", "train_accuracy", fmt_score),
    ("Validation loss", "val_loss", fmt_score),
    ("Validation accuracy", "val_accuracy", fmt_score),
    ("Test loss", "test_loss", fmt_score),
    ("Test accuracy", "test_accuracy", fmt_score),
    ("Test macro-F1", "test_macro_f1", fmt_score),
)


def report_relative(path: Path) -> str:
    """A path relative to the report, so links resolve wherever reports/ is viewed."""
    return Path(os.path.relpath(path, artifacts.REPORT_MD.parent)).as_posix()


def figure_link(path: Path, caption: str) -> str:
    """A markdown image link to a PNG beside the report."""
    return f"![{caption}]({report_relative(path)})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table; `align` has one 'l' or 'r' per column."""
    rule = ["---" if side == "l" else "---:" for side in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def title_section(corpus: CorpusInfo, model_params: ModelParams | None = None) -> str:
    """The title and the classifier's layers (model_params: the lab's when None)."""
    model = describe(model_params, corpus.classes) + ", "
    if corpus.is_lab:
        return ("# LSTM vs GRU on 20 Newsgroups\n\n" + model
                + "trained on the 20news-bydate train split and scored on its test split.")
    return (f"# LSTM vs GRU on {Path(corpus.source).name}\n\n" + model
            + f"trained on the train split of `{corpus.source}` ({corpus.train:,} documents) and scored on its "
            f"test split ({corpus.test:,} documents); `{FETCH_METRICS.as_posix()}` says how they were read.")


def mean_metrics(runs: SeedRuns) -> dict[str, dict[str, Any]]:
    """Each cell's metrics averaged over its seeds (None where a run has no value)."""
    def mean(values: list[Any]) -> Any:
        return None if None in values else float(np.mean(values))
    return {cell: {key: mean(seed_values(runs, cell, key)) for _, key, _ in COMPARISON_ROWS} for cell in runs}


def _interval(summary: Mapping[str, Any]) -> str:
    if summary["ci_low"] is None:
        return fmt_score(summary["mean"])
    return f"{fmt_score(summary['mean'])} ± {(summary['ci_high'] - summary['ci_low']) / 2:.4f}"


def selection_section(selected: str, summary: Mapping[str, Any], head: Mapping[str, Any]) -> str:
    """Which cell the project puts forward and its headline figures: means over seeds with 95% intervals, and
    the paired difference from the other cell."""
    first, second = summary["cells"]
    other = second if selected == first else first
    difference, sign = summary[f"{second}_minus_{first}"], 1 if selected == second else -1
    rows = [(label[0].upper() + label[1:], _interval(summary["cells"][selected][key]),
             f"{sign * difference[key]['mean']:+.4f}") for key, label in SEED_METRICS.items()
            if key in summary["cells"][selected]]
    rows += [("Seconds per epoch", fmt_seconds(head["seconds_per_epoch"]), MISSING),
             ("Parameters", fmt_count(head["params"]), MISSING)]
    return (f"## Selected cell: {selected.upper()}\n\n"
            f"This project puts forward **{selected.upper()}** (`cell: {selected}` in params.yaml; "
            f"`dvc exp run -S cell={other}` selects the other one). Its headline figures, means over "
            f"{head['seeds']} seeds with their 95% intervals, also in `{artifacts.REPORT_METRICS.as_posix()}`:\n\n"
            + table(["", selected.upper(), f"vs {other.upper()}, same seeds"], rows, "lrr"))


def seeds_section(runs: SeedRuns, summary: Mapping[str, Any]) -> str:
    """The verdict over seeds: each cell's mean, spread and interval, the paired difference and its test."""
    first, second = runs
    difference = summary[f"{second}_minus_{first}"]
    rows = []
    for key, label in SEED_METRICS.items():
        if key not in difference:
            continue
        for cell in runs:
            cell_summary = summary["cells"][cell][key]
            rows.append((label, cell.upper(), fmt_score(cell_summary["mean"]), fmt_score(cell_summary["std"]),
                         _range(cell_summary), MISSING))
        rows.append((label, f"{second.upper()} − {first.upper()}", f"{difference[key]['mean']:+.4f}",
                     fmt_score(difference[key]["std"]), _range(difference[key]),
                     MISSING if difference[key]["p_value"] is None else f"{difference[key]['p_value']:.3g}"))
    seeds = ", ".join(str(seed) for seed in runs[first])
    return ("## LSTM against GRU over seeds\n\n"
            f"**{summary['verdict']}**\n\n"
            f"Each cell trained once per seed ({seeds}: `train.seeds`); a seed fixes the initial weights, the "
            "batches and the dropout masks, the same for both cells, so the difference is taken seed by seed and "
            "tested with a paired t-test (SciPy's `ttest_rel`); intervals are Student-t 95% intervals of the mean.\n\n"
            + table(["Metric", "Cell", "Mean", "SD", "95% interval", "p (paired)"], rows, "llrrrr") + "\n\n"
            + figure_link(SEEDS_FIGURE, "Each seed's test scores per cell"))


def _range(summary: Mapping[str, Any]) -> str:
    if summary["ci_low"] is None:
        return MISSING
    return f"{summary['ci_low']:.4f} – {summary['ci_high']:.4f}"


def comparison_section(selected: str, metrics: Mapping[str, Mapping[str, Any]], seeds: int, lab: bool = True) -> str:
    """Both cells side by side (means over seeds), with the lab's published figures as a reference on its corpus."""
    cells = list(metrics)
    if not lab:
        header = ["", *(f"{c.upper()} (selected)" if c == selected else c.upper() for c in cells)]
        rows = [[label, *(fmt(metrics[c][key]) for c in cells)] for label, key, fmt in COMPARISON_ROWS]
        return ("## LSTM and GRU side by side\n\n" + table(header, rows, "l" + "r" * len(cells))
                + f"\n\nMeans over {seeds} seeds.")
    header = ["", *(f"{c.upper()} (selected)" if c == selected else c.upper() for c in cells),
              *(f"Lab {c.upper()}" for c in cells)]
    rows = [[label, *(fmt(metrics[c][key]) for c in cells),
             *(fmt_lab(key, LAB_REFERENCE[c].get(key)) for c in cells)]
            for label, key, fmt in COMPARISON_ROWS]
    note = (f"Means over {seeds} seeds. Lab columns: the Keras 2 notebook this project reproduces published only "
            "these figures, from one run each "
            "(validation accuracy after 2 epochs, about 50 s per epoch on its machine, parameter counts). "
            "Its GRU is Keras 2's (`reset_after=False`); Keras 3's default `reset_after=True` adds a second "
            "recurrent bias, 3 × units more parameters (`model.gru_reset_after` in params.yaml).")
    return "## LSTM and GRU side by side\n\n" + table(header, rows, "l" + "r" * (2 * len(cells))) + "\n\n" + note


def _gap(difference: float | None) -> str:
    """A score difference in words: "0.4316 lower", "0.0100 higher" or "level"."""
    if difference is None:
        return MISSING
    if round(difference, 4) == 0:
        return "level"
    return f"{abs(difference):.4f} {'lower' if difference < 0 else 'higher'}"


def baseline_section(selected: str, summary: Mapping[str, Any], head: Mapping[str, Any],
                     baseline: Mapping[str, Any]) -> str:
    """The baseline's test scores beside each cell's means over seeds, and how far the selected cell is from it."""
    name, gap = baseline["name"], head["baseline"]["selected_minus_baseline"]
    rows = [(name, *(fmt_score(baseline[key]) for key in BASELINE_SCORES))]
    rows += [(f"{cell.upper()}{' (selected)' if cell == selected else ''}, mean over {head['seeds']} seeds",
              *(fmt_score(summary["cells"][cell].get(key, {}).get("mean")) for key in BASELINE_SCORES))
             for cell in summary["cells"]]
    return ("## Against the classical baseline\n\n"
            f"**{name}: test accuracy {fmt_score(baseline['test_accuracy'])}, macro-F1 "
            f"{fmt_score(baseline['test_macro_f1'])}; the selected {selected.upper()}'s mean over {head['seeds']} "
            f"seeds is {_gap(gap['test_accuracy'])} in test accuracy and {_gap(gap['test_macro_f1'])} in "
            "macro-F1.**\n\n"
            f"{name} (scikit-learn; TF-IDF of {fmt_count(baseline['vocabulary_size'])} terms from the "
            f"{fmt_count(baseline['train_documents'])} training documents), fitted in "
            f"{fmt_seconds(baseline['fit_seconds'])} s on the same train split and text as the recurrent cells and "
            f"scored on the same test split (stage `{BASELINE_STAGE}`, `baseline` in params.yaml, "
            f"`{artifacts.BASELINE_METRICS.as_posix()}`).\n\n"
            + table(["", "Test accuracy", "Test macro-F1"], rows, "lrr"))


def ensemble_section(ensemble: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any],
                     baseline: Mapping[str, Any]) -> str:
    """The ensembles' test scores beside the cells' means over seeds and the baseline."""
    cells = list(summary["cells"])
    both = ensemble["_and_".join(cells)]
    rows = [(f"{' and '.join(c.upper() for c in cells)}, {both['runs']} runs averaged",
             *(fmt_score(both[key]) for key in BASELINE_SCORES))]
    rows += [(f"{cell.upper()}, {ensemble[cell]['runs']} seeds averaged",
              *(fmt_score(ensemble[cell][key]) for key in BASELINE_SCORES)) for cell in cells]
    rows += [(f"{cell.upper()}, one run (mean over seeds)",
              *(fmt_score(summary["cells"][cell].get(key, {}).get("mean")) for key in BASELINE_SCORES))
             for cell in cells]
    rows.append((baseline["name"], *(fmt_score(baseline[key]) for key in BASELINE_SCORES)))
    gap = both["test_accuracy"] - baseline["test_accuracy"]
    return ("## Ensembles\n\n"
            f"**Every run of both cells together: test accuracy {fmt_score(both['test_accuracy'])}; "
            f"{baseline['name']}: {fmt_score(baseline['test_accuracy'])} ({_gap(gap)}).**\n\n"
            "An ensemble averages the runs' predicted probabilities on each test post and takes the most probable "
            f"group (`ensemble` in `{artifacts.REPORT_METRICS.as_posix()}`; the probabilities are "
            f"`{artifacts.PROBABILITIES_DIR.as_posix()}/{{cell}}/seed{{N}}.npz`).\n\n"
            + table(["", "Test accuracy", "Test macro-F1"], rows, "lrr"))


def training_section(lab: bool = True) -> str:
    """Learning curves and time per epoch of both cells."""
    stars = "; stars: the lab's validation accuracy" if lab else ""
    return ("## Training\n\n"
            "Loss and accuracy per epoch, mean over seeds with a band of one standard deviation (train solid, "
            f"validation dashed{stars}).\n\n"
            + figure_link(LEARNING_CURVES, "Learning curves of both cells") + "\n\n"
            "Seconds per epoch (bars: mean over seeds, dots: single epochs; the first epoch includes tracing and XLA "
            "compilation).\n\n"
            + figure_link(SECONDS_PER_EPOCH, "Seconds per epoch per cell"))


def selected_cell_section(selected: str, seed: int, scores: pd.DataFrame,
                          confusions: Sequence[tuple[str, str, int]]) -> str:
    """The selected cell's errors on the test split (the first seed's run): confusion matrix, most confused
    pairs, F1 per group."""
    pairs = [(actual, predicted, f"{posts:,}") for actual, predicted, posts in confusions]
    groups = [(row.group, fmt_score(row.precision), fmt_score(row.recall), fmt_score(row.f1), f"{int(row.support):,}")
              for row in scores.itertuples()]
    return (f"## {selected.upper()} on the test split (seed {seed})\n\n"
            + figure_link(CONFUSION_MATRIX, f"{selected.upper()} confusion matrix") + "\n\n"
            "Most frequent confusions:\n\n"
            + (table(["Actual group", "Predicted as", "Posts"], pairs, "llr") if pairs else "None.") + "\n\n"
            + figure_link(PER_GROUP_F1, f"{selected.upper()} F1 per group") + "\n\n"
            + table(["Group", "Precision", "Recall", "F1", "Posts"], groups, "lrrrr"))


# --- gradients section: reads metrics/gradients.json and the PNGs of the gradients stage ---

GRADIENTS_STAGE = "gradients"
GRADIENTS_METRICS = artifacts.metrics_path("gradients")
GRADIENT_FLOW = artifacts.report_figure_path("gradient_flow")
EXPLODING_GRADIENTS = artifacts.report_figure_path("exploding_gradients")
# report figure <- the gradients stage's figure it copies
GRADIENT_FIGURES = {GRADIENT_FLOW: artifacts.gradient_figure_path("gradient_flow"),
                    EXPLODING_GRADIENTS: artifacts.gradient_figure_path("exploding")}
GRADIENT_KEYS = ("sizes", "params", "sample", "vanish_fraction", "recurrent_scale", "curves",
                 "simple_rnn_training", "clipping")
GRADIENT_CELLS = ("simple_rnn", "lstm", "gru")
SCALED_RNN = "simple_rnn_scaled"
GRADIENTS_TEMPLATE = "gradients.md.j2"


def gradient_inputs() -> list[tuple[Path, str]]:
    """The gradients stage's outputs the report reads."""
    return [(GRADIENTS_METRICS, GRADIENTS_STAGE), *((source, GRADIENTS_STAGE) for source in GRADIENT_FIGURES.values())]


def read_gradients(path: Path = GRADIENTS_METRICS) -> dict[str, Any]:
    """metrics/gradients.json, checked to have every section the report reads."""
    rerun = f"re-run `dvc repro {GRADIENTS_STAGE}`"
    raw = artifacts.read_stage_json(path, GRADIENT_KEYS, GRADIENTS_STAGE)
    if not isinstance(raw["curves"], dict) or not any(cell in raw["curves"] for cell in GRADIENT_CELLS):
        raise UserError(f"{path}: no curves of {', '.join(GRADIENT_CELLS)}: {rerun}")
    return raw


def copy_gradient_figures() -> None:
    """The gradients stage's PNGs beside the report, so reports/ stands on its own."""
    for target, source in GRADIENT_FIGURES.items():
        with artifacts.atomic_path(target) as tmp:
            tmp.write_bytes(Path(source).read_bytes())


def _lengths(gradients: Mapping[str, Any]) -> list[int]:
    """The measured sequence lengths, ascending."""
    return sorted({int(key[1:]) for cell in gradients["curves"].values() for by_length in cell.values()
                   for key in by_length})


def _curve(gradients: Mapping[str, Any], name: str, setting: str, length: int, readout: str) -> dict[str, Any] | None:
    return gradients["curves"].get(name, {}).get(setting, {}).get(f"L{length}", {}).get(readout)


def _steps_back(summary: Mapping[str, Any], length: int) -> int | None:
    """Steps back from the last token at which the gradient fell below the vanish fraction; None: never."""
    return None if summary["vanish_step"] is None else length - summary["vanish_step"]


def _measured(gradients: Mapping[str, Any], setting: str, readout: str) -> dict[str, dict[str, Any]]:
    """Per cell: the longest length whose first-to-last ratio is measurable, that log10 ratio, the mean factor
    per step back and the reach."""
    found = {}
    for cell in GRADIENT_CELLS:
        for length in reversed(_lengths(gradients)):
            summary = _curve(gradients, cell, setting, length, readout)
            if summary is not None and summary["log10_first_to_last"] is not None:
                log10 = summary["log10_first_to_last"]
                found[cell] = {"length": length, "log10": log10, "per_step": 10 ** (log10 / (length - 1)),
                               "steps_back": _steps_back(summary, length)}
                break
    return found


def _log10_per_step(found: Mapping[str, Any]) -> float:
    return found["log10"] / (found["length"] - 1)


def _param_rows(gradients: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each cell's parameters from the formula (lstm_vs_gru.model), against Keras's own count."""
    sizes = gradients["sizes"]
    e, u, reset_after = sizes["embedding_dim"], sizes["units"], sizes["gru_reset_after"]
    levers = {key: sizes[key] for key in MODEL_LEVERS if key in sizes}
    model_params = ModelParams(embedding_dim=e, units=u, dense_units=sizes["dense_units"], dropout=0.0,
                               gru_reset_after=reset_after, **levers)
    directions = 2 if model_params.bidirectional else 1
    rows = []
    for cell in GRADIENT_CELLS:
        recurrent = directions * recurrent_param_count(cell, e, u, reset_after)  # the first recurrent layer
        whole = expected_param_count(cell, sizes["num_words"], model_params, sizes["n_classes"])
        keras = gradients["params"].get(cell, {})
        rows.append({"cell": cell, "biases": 2 * u if cell == "gru" and reset_after else u,
                     "recurrent": recurrent, "keras_recurrent": keras.get("recurrent"),
                     "model": whole, "keras_model": keras.get("model"),
                     "agree": keras.get("recurrent") == recurrent and keras.get("model") == whole})
    return rows


def _curve_rows(gradients: Mapping[str, Any]) -> list[dict[str, Any]]:
    """log10(first step / last step) of every curve measured through both readouts, and its reach."""
    rows = []
    for name in (*GRADIENT_CELLS, SCALED_RNN):
        for setting in ("init", "trained"):
            for length in _lengths(gradients):
                pooled = _curve(gradients, name, setting, length, "max_pool")
                last = _curve(gradients, name, setting, length, "last_state")
                if pooled is None or last is None:
                    continue
                rows.append({"cell": name, "setting": setting, "length": length, **{
                    readout: {"log10": summary["log10_first_to_last"], "steps_back": _steps_back(summary, length)}
                    for readout, summary in (("max_pool", pooled), ("last_state", last))}})
    return rows


def _recurrence_facts(gradients: Mapping[str, Any]) -> dict[str, Any]:
    """The last-state readout: each cell's measured ratio, trained and initial, and how the cells rank."""
    trained, initial = _measured(gradients, "trained", "last_state"), _measured(gradients, "init", "last_state")
    fastest = slowest = None
    if "simple_rnn" in trained and len(trained) > 1:
        ranked = sorted(trained, key=lambda cell: _log10_per_step(trained[cell]))
        fastest, slowest = ranked[0], ranked[-1]
    gated_faster = []
    if "simple_rnn" in initial:
        gated_faster = [cell for cell in initial if cell != "simple_rnn"
                        and _log10_per_step(initial[cell]) < _log10_per_step(initial["simple_rnn"])]
    changes = [{"cell": cell, "length": found["length"], "log10": found["log10"] - initial[cell]["log10"]}
               for cell, found in trained.items() if cell in initial and found["length"] == initial[cell]["length"]]
    return {"trained": trained, "initial": initial, "fastest": fastest, "slowest": slowest,
            "gated_faster": gated_faster, "changes": changes}


def _max_pool_facts(gradients: Mapping[str, Any]) -> dict[str, Any]:
    """The lab's readout: the span of its first-to-last ratios and how many curves vanish."""
    summaries = [s for c in GRADIENT_CELLS for setting in ("init", "trained") for n in _lengths(gradients)
                 if (s := _curve(gradients, c, setting, n, "max_pool")) is not None]
    ratios = [s["log10_first_to_last"] for s in summaries if s["log10_first_to_last"] is not None]
    return {"curves": len(summaries), "vanished": sum(s["vanish_step"] is not None for s in summaries),
            "lowest": min(ratios, default=None), "highest": max(ratios, default=None)}


def _exploding_facts(gradients: Mapping[str, Any]) -> dict[str, Any]:
    """The scaled plain RNN's ratios beside the unscaled one's, and what clipnorm did while training it."""
    scaled = [{"length": n, "scaled": curve, "unscaled": _curve(gradients, "simple_rnn", "init", n, "last_state")}
              for n in _lengths(gradients)
              if (curve := _curve(gradients, SCALED_RNN, "init", n, "last_state")) is not None]
    clipping = gradients["clipping"]
    clipped_update = clipping["clipnorm_run"]["median_update_norm"]
    return {
        "recurrent_scale": gradients["recurrent_scale"],
        "scaled": scaled,
        "exploded": any(s["scaled"]["nonfinite_steps"] or (s["scaled"]["log10_first_to_last"] or 0) > 0
                        for s in scaled),
        "clipping": clipping,
        # unclipped / clipped median weight change
        "update_ratio": clipping["unclipped"]["median_update_norm"] / clipped_update if clipped_update else None,
    }


def gradients_facts(gradients: Mapping[str, Any], runs: Mapping[str, CellRun]) -> dict[str, Any]:
    """Everything templates/gradients.md.j2 says, as numbers and the cases that hold."""
    sample, lengths = gradients["sample"], _lengths(gradients)
    longest = max(lengths)
    training = gradients["simple_rnn_training"]
    return {
        "figures": {"gradient_flow": report_relative(GRADIENT_FLOW),
                    "exploding": report_relative(EXPLODING_GRADIENTS)},
        "sample": {"documents": sample["documents"], "full": sample.get(f"full_L{longest}", sample["documents"]),
                   "longest": longest},
        "lengths": lengths,
        "sizes": gradients["sizes"],
        "param_rows": _param_rows(gradients),
        "vanish_fraction": gradients["vanish_fraction"],
        "curve_rows": _curve_rows(gradients),
        **_recurrence_facts(gradients),
        "max_pool": _max_pool_facts(gradients),
        # the pooling of the model the gradients stage measured (max: the lab's)
        "pooling_name": POOLING_NAMES[gradients["sizes"].get("pooling", "max")],
        "simple_rnn_training": {"epoch": training.get("epoch"), "val_accuracy": training.get("val_accuracy")},
        "val_accuracy": {cell: run.metrics["val_accuracy"] for cell, run in runs.items()},
        **_exploding_facts(gradients),
    }


def _format(value: Any, spec: str) -> str:
    """Template filter: format(value, spec), failing on an undefined value as the template does elsewhere."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return format(value, spec)


def _norm(value: Any, spec: str) -> str:
    """Template filter for a measured norm: gradients.json holds None where it overflowed float32."""
    return NOT_FINITE if value is None else _format(value, spec)


NOT_FINITE = "not finite (beyond float32)"


def _paragraph(text: str) -> str:
    """Template filter: a paragraph written over several source lines as one markdown line."""
    return re.sub(r"\n[ \t]*", " ", text)


@functools.cache
def templates() -> jinja2.Environment:
    """The package's markdown templates; a name the facts lack is an error, not an empty string."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lstm_vs_gru", "templates"), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    environment.filters.update(fmt=_format, norm=_norm, integer=fmt_count, score=fmt_score, paragraph=_paragraph)
    environment.globals["missing"] = MISSING
    return environment


def render_gradients(facts: Mapping[str, Any]) -> str:
    """templates/gradients.md.j2 filled in with `gradients_facts`."""
    return templates().get_template(GRADIENTS_TEMPLATE).render(facts)


def gradients_section(gradients: Mapping[str, Any], runs: Mapping[str, CellRun]) -> str:
    """Vanishing and exploding gradients, explained from the gradients stage's measurements."""
    return render_gradients(gradients_facts(gradients, runs))


def report_sections(selected: str, runs: SeedRuns, summary: Mapping[str, Any], head: Mapping[str, Any],
                    scores: pd.DataFrame, confusions: Sequence[tuple[str, str, int]],
                    gradients: Mapping[str, Any], corpus: CorpusInfo, baseline: Mapping[str, Any],
                    model_params: ModelParams | None = None) -> list[str]:
    """The report's sections in order."""
    return [
        title_section(corpus, model_params),
        selection_section(selected, summary, head),
        seeds_section(runs, summary),
        comparison_section(selected, mean_metrics(runs), head["seeds"], corpus.is_lab),
        baseline_section(selected, summary, head, baseline),
        ensemble_section(head["ensemble"], summary, baseline),
        training_section(corpus.is_lab),
        selected_cell_section(selected, next(iter(runs[selected])), scores, confusions),
        gradients_section(gradients, reference_runs(runs)),
    ]


def render_markdown(sections: Sequence[str]) -> str:
    return "\n\n".join(section.strip() for section in sections) + "\n"
