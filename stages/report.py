"""Report stage: headline metrics of the cell this project puts forward, and a human report on both cells.

Reads both cells' metrics and histories and the selected cell's test predictions (written by train_lstm and
train_gru); writes metrics/report.json, reports/report.md and the PNGs the markdown links. No TensorFlow here:
the confusion matrix and per-group scores come from scikit-learn."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # DVC runs this stage without a display
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from stages import artifacts, params
from stages.errors import UserError, exits_cleanly

METRIC_KEYS = (
    "cell", "params", "epochs", "seconds_per_epoch", "train_loss", "train_accuracy",
    "val_loss", "val_accuracy", "test_loss", "test_accuracy", "test_macro_f1",
)
HEADLINE_KEYS = ("cell", "test_accuracy", "test_macro_f1", "val_accuracy", "seconds_per_epoch", "params")
INTEGER_KEYS = ("params", "epochs")
HISTORY_COLUMNS = ("epoch", "loss", "accuracy")
# Absent when training ran without a validation split or without timing; plotted when present.
OPTIONAL_HISTORY_COLUMNS = ("val_loss", "val_accuracy", "seconds")
PREDICTION_COLUMNS = ("actual", "predicted")

LEARNING_CURVES = artifacts.report_figure_path("learning_curves")
SECONDS_PER_EPOCH = artifacts.report_figure_path("seconds_per_epoch")
CONFUSION_MATRIX = artifacts.report_figure_path("confusion_matrix")
PER_GROUP_F1 = artifacts.report_figure_path("per_group_f1")

CELL_COLOURS = {"lstm": "tab:blue", "gru": "tab:orange"}
# The lab's only published figures (Keras 2 notebook, 2 epochs); everything else it did not report.
LAB_REFERENCE: dict[str, dict[str, float]] = {
    "lstm": {"params": 2_599_370, "epochs": 2, "seconds_per_epoch": 50.0, "val_accuracy": 0.51},
    "gru": {"params": 2_590_420, "epochs": 2, "seconds_per_epoch": 50.0, "val_accuracy": 0.53},
}
MISSING = "—"


@dataclass(frozen=True)
class CellRun:
    """What one cell's train stage produced."""
    metrics: dict[str, Any]
    history: pd.DataFrame


# --- inputs ---

def producer(cell: str) -> str:
    """The dvc.yaml stage that writes a cell's metrics, history and predictions."""
    return f"train_{cell}"


def required_inputs(selected: str) -> list[tuple[Path, str]]:
    """Every file the report reads, with the stage that produces it."""
    per_cell = [(artifacts.metrics_path(c), producer(c)) for c in artifacts.CELLS]
    per_cell += [(artifacts.history_path(c), producer(c)) for c in artifacts.CELLS]
    return per_cell + [(artifacts.predictions_path(selected), producer(selected))]


def check_inputs_exist(inputs: Sequence[tuple[Path, str]]) -> None:
    """One line naming every missing input and the `dvc repro` targets that make them."""
    missing = [(path, stage) for path, stage in inputs if not Path(path).is_file()]
    if not missing:
        return
    files = ", ".join(str(path) for path, _ in missing)
    stages = " ".join(dict.fromkeys(stage for _, stage in missing))
    raise UserError(f"missing {files}: run `dvc repro {stages}` to produce {'it' if len(missing) == 1 else 'them'}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: Path, cell: str) -> dict[str, Any]:
    """A cell's metrics/{cell}.json, checked against the train stage's contract."""
    rerun = f"re-run `dvc repro {producer(cell)}`"
    try:
        raw = artifacts.read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not readable JSON ({' '.join(str(error).split())}): {rerun}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object: {rerun}")
    absent = [key for key in METRIC_KEYS if key not in raw]
    if absent:
        raise UserError(f"{path}: missing keys {', '.join(absent)}: {rerun}")
    if raw["cell"] != cell:
        raise UserError(f"{path}: cell is {raw['cell']!r}, expected {cell!r}: {rerun}")
    for key in METRIC_KEYS[1:]:
        value = raw[key]
        # null is allowed: a run without a validation split has no val_* figures
        if value is not None and (not _is_number(value) or (key in INTEGER_KEYS and not isinstance(value, int))):
            raise UserError(f"{path}: {key} = {value!r} is not a {'whole ' if key in INTEGER_KEYS else ''}number: {rerun}")
    return {key: raw[key] for key in METRIC_KEYS}


def read_table(path: Path, required: Sequence[str], cell: str, **read_csv: Any) -> pd.DataFrame:
    """A non-empty CSV with the required columns."""
    rerun = f"re-run `dvc repro {producer(cell)}`"
    try:
        frame = pd.read_csv(path, **read_csv)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable CSV ({' '.join(str(error).split())}): {rerun}") from None
    absent = [column for column in required if column not in frame.columns]
    if absent:
        raise UserError(f"{path}: missing columns {', '.join(absent)}: {rerun}")
    if frame.empty:
        raise UserError(f"{path}: has no rows: {rerun}")
    return frame


def read_history(path: Path, cell: str) -> pd.DataFrame:
    """plots/{cell}/history.csv: one row per epoch, numeric columns."""
    history = read_table(path, HISTORY_COLUMNS, cell)
    for column in HISTORY_COLUMNS + OPTIONAL_HISTORY_COLUMNS:
        if column in history and not pd.api.types.is_numeric_dtype(history[column]):
            raise UserError(f"{path}: column {column} is not numeric: re-run `dvc repro {producer(cell)}`")
    return history.sort_values("epoch", kind="stable").reset_index(drop=True)


def read_predictions(path: Path, cell: str) -> pd.DataFrame:
    """plots/{cell}/predictions.csv: actual and predicted group names, read as text."""
    frame = read_table(path, PREDICTION_COLUMNS, cell, dtype=str, keep_default_na=False)
    return frame[list(PREDICTION_COLUMNS)]


def read_inputs(selected: str) -> tuple[dict[str, CellRun], pd.DataFrame]:
    """Both cells' runs and the selected cell's test predictions."""
    check_inputs_exist(required_inputs(selected))
    runs = {
        cell: CellRun(read_metrics(artifacts.metrics_path(cell), cell), read_history(artifacts.history_path(cell), cell))
        for cell in artifacts.CELLS
    }
    return runs, read_predictions(artifacts.predictions_path(selected), selected)


# --- figures computed from the inputs ---

def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The selected cell's figures for metrics/report.json (flat, so `dvc metrics diff` compares them)."""
    return {key: metrics[key] for key in HEADLINE_KEYS}


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

def plot_learning_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Loss and accuracy per epoch for every cell, train solid and validation dashed."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for cell, history in histories.items():
        for axes, column in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            axes.plot(history["epoch"], history[column], "o-", color=CELL_COLOURS[cell], label=f"{cell.upper()} train")
            validation = f"val_{column}"
            if validation in history and history[validation].notna().any():
                axes.plot(history["epoch"], history[validation], "o--", color=CELL_COLOURS[cell],
                          label=f"{cell.upper()} validation")
    for cell, reference in LAB_REFERENCE.items():
        accuracy_axes.plot(reference["epochs"], reference["val_accuracy"], "*", markersize=13, color=CELL_COLOURS[cell],
                           markeredgecolor="black", label=f"lab {cell.upper()} validation")
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set(xlabel="epoch", ylabel=name, title=f"{name.capitalize()} per epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def plot_seconds_per_epoch(metrics: Mapping[str, Mapping[str, Any]], histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Mean seconds per epoch per cell (bars), each epoch (dots) and the lab's ~50 s (dashed)."""
    figure = Figure(figsize=(5.5, 4.2), layout="constrained")
    axes = figure.subplots()
    cells = list(metrics)
    means = [_float_or_nan(metrics[cell]["seconds_per_epoch"]) for cell in cells]
    bars = axes.bar([cell.upper() for cell in cells], means, color=[CELL_COLOURS[cell] for cell in cells], width=0.55)
    axes.bar_label(bars, fmt="%.1f s", label_type="center", color="white", fontweight="bold")  # clear of the dots
    for position, cell in enumerate(cells):
        if "seconds" in histories[cell]:
            seconds = histories[cell]["seconds"].dropna()
            axes.plot([position] * len(seconds), seconds, "k.", label="single epochs" if position == 0 else None)
    lab_seconds = LAB_REFERENCE["lstm"]["seconds_per_epoch"]
    axes.axhline(lab_seconds, linestyle="--", color="grey", label=f"lab ≈ {lab_seconds:.0f} s")
    axes.set(ylabel="seconds per epoch", title="Training time per epoch")
    axes.margins(y=0.15)
    axes.legend(fontsize=8, loc="lower right")
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


def save_figure(figure: Figure, path: Path) -> None:
    """Write a PNG atomically; no Software metadata, so the bytes do not change with the matplotlib version."""
    with artifacts.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


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


def figure_link(path: Path, caption: str) -> str:
    """A markdown image link relative to the report, so it renders wherever reports/ is viewed."""
    relative = Path(os.path.relpath(path, artifacts.REPORT_MD.parent)).as_posix()
    return f"![{caption}]({relative})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table; `align` has one 'l' or 'r' per column."""
    rule = ["---" if side == "l" else "---:" for side in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def title_section() -> str:
    return ("# LSTM vs GRU on 20 Newsgroups\n\n"
            "Embedding → LSTM/GRU → global max pooling → dropout → dense → dropout → 20-way softmax, "
            "trained on the 20news-bydate train split and scored on its test split.")


def _difference(selected: Mapping[str, Any], other: Mapping[str, Any], key: str) -> str:
    if selected[key] is None or other[key] is None:
        return MISSING
    return f"{selected[key] - other[key]:+.4f}"


def selection_section(selected: str, runs: Mapping[str, CellRun]) -> str:
    """Which cell the project puts forward, its headline figures and how it compares with the other cell."""
    other = next(cell for cell in runs if cell != selected)
    mine, theirs = runs[selected].metrics, runs[other].metrics
    rows = [
        ("Test accuracy", fmt_score(mine["test_accuracy"]), _difference(mine, theirs, "test_accuracy")),
        ("Test macro-F1", fmt_score(mine["test_macro_f1"]), _difference(mine, theirs, "test_macro_f1")),
        ("Validation accuracy", fmt_score(mine["val_accuracy"]), _difference(mine, theirs, "val_accuracy")),
        ("Seconds per epoch", fmt_seconds(mine["seconds_per_epoch"]), MISSING),
        ("Parameters", fmt_count(mine["params"]), MISSING),
    ]
    return (f"## Selected cell: {selected.upper()}\n\n"
            f"This project puts forward **{selected.upper()}** (`cell: {selected}` in params.yaml; "
            f"`dvc exp run -S cell={other}` selects the other one). Its headline figures, also in "
            f"`{artifacts.REPORT_METRICS.as_posix()}`:\n\n"
            + table(["", selected.upper(), f"vs {other.upper()}"], rows, "lrr"))


def comparison_section(selected: str, runs: Mapping[str, CellRun]) -> str:
    """Both cells side by side, with the lab's published figures as a reference."""
    cells = list(runs)
    header = ["", *(f"{c.upper()} (selected)" if c == selected else c.upper() for c in cells),
              *(f"Lab {c.upper()}" for c in cells)]
    rows = [[label, *(fmt(runs[c].metrics[key]) for c in cells),
             *(fmt_lab(key, LAB_REFERENCE[c].get(key)) for c in cells)]
            for label, key, fmt in COMPARISON_ROWS]
    note = ("Lab columns: the Keras 2 notebook this project reproduces published only these figures "
            "(validation accuracy after 2 epochs, about 50 s per epoch on its machine, parameter counts). "
            "Its GRU is Keras 2's (`reset_after=False`); Keras 3's default `reset_after=True` adds a second "
            "recurrent bias, 3 × units more parameters (`model.gru_reset_after` in params.yaml).")
    return "## LSTM and GRU side by side\n\n" + table(header, rows, "l" + "r" * (2 * len(cells))) + "\n\n" + note


def training_section() -> str:
    """Learning curves and time per epoch of both cells."""
    return ("## Training\n\n"
            "Loss and accuracy per epoch (train solid, validation dashed; stars: the lab's validation accuracy).\n\n"
            + figure_link(LEARNING_CURVES, "Learning curves of both cells") + "\n\n"
            "Seconds per epoch (bars: mean, dots: single epochs; the first epoch includes graph building).\n\n"
            + figure_link(SECONDS_PER_EPOCH, "Seconds per epoch per cell"))


def selected_cell_section(selected: str, scores: pd.DataFrame, confusions: Sequence[tuple[str, str, int]]) -> str:
    """The selected cell's errors on the test split: confusion matrix, most confused pairs, F1 per group."""
    pairs = [(actual, predicted, f"{posts:,}") for actual, predicted, posts in confusions]
    groups = [(row.group, fmt_score(row.precision), fmt_score(row.recall), fmt_score(row.f1), f"{int(row.support):,}")
              for row in scores.itertuples()]
    return (f"## {selected.upper()} on the test split\n\n"
            + figure_link(CONFUSION_MATRIX, f"{selected.upper()} confusion matrix") + "\n\n"
            "Most frequent confusions:\n\n"
            + (table(["Actual group", "Predicted as", "Posts"], pairs, "llr") if pairs else "None.") + "\n\n"
            + figure_link(PER_GROUP_F1, f"{selected.upper()} F1 per group") + "\n\n"
            + table(["Group", "Precision", "Recall", "F1", "Posts"], groups, "lrrrr"))


def report_sections(selected: str, runs: Mapping[str, CellRun], scores: pd.DataFrame,
                    confusions: Sequence[tuple[str, str, int]]) -> list[str]:
    """The report's sections in order; later stages' sections (e.g. gradients) are appended to this list."""
    return [
        title_section(),
        selection_section(selected, runs),
        comparison_section(selected, runs),
        training_section(),
        selected_cell_section(selected, scores, confusions),
    ]


def render_markdown(sections: Sequence[str]) -> str:
    return "\n\n".join(section.strip() for section in sections) + "\n"


# --- stage ---

def write_report(selected: str) -> None:
    """Read the train stages' outputs and write metrics/report.json, reports/report.md and its PNGs."""
    runs, predictions = read_inputs(selected)
    actual, predicted = predictions["actual"].tolist(), predictions["predicted"].tolist()
    labels = group_labels(actual, predicted)
    matrix = confusion(actual, predicted, labels)
    scores = per_group_scores(actual, predicted, labels)
    artifacts.write_json(artifacts.REPORT_METRICS, headline(runs[selected].metrics))
    save_figure(plot_learning_curves({cell: run.history for cell, run in runs.items()}), LEARNING_CURVES)
    save_figure(plot_seconds_per_epoch({cell: run.metrics for cell, run in runs.items()},
                                       {cell: run.history for cell, run in runs.items()}), SECONDS_PER_EPOCH)
    save_figure(plot_confusion(matrix, labels, selected), CONFUSION_MATRIX)
    save_figure(plot_per_group_f1(scores, selected), PER_GROUP_F1)
    sections = report_sections(selected, runs, scores, top_confusions(matrix, labels))
    artifacts.write_text(artifacts.REPORT_MD, render_markdown(sections))


@exits_cleanly
def main() -> None:
    write_report(params.load().cell)


if __name__ == "__main__":
    main()
