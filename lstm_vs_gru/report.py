"""The report: headline metrics of the cell this project puts forward, and a human report on both cells, built
from both cells' metrics and histories, the selected cell's test predictions and the gradients stage's
measurements (stages/report.py is the stage). No TensorFlow here: the confusion matrix and per-group scores
come from scikit-learn."""
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

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.artifacts import is_finite_number
from lstm_vs_gru.errors import UserError

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
FETCH_METRICS = artifacts.metrics_path("fetch")


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
    return ([(FETCH_METRICS, "fetch")] + per_cell + [(artifacts.predictions_path(selected), producer(selected))]
            + gradient_inputs())


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


def read_metrics(path: Path, cell: str) -> dict[str, Any]:
    """A cell's metrics/{cell}.json, checked against the train stage's contract."""
    rerun = f"re-run `dvc repro {producer(cell)}`"
    raw = artifacts.read_stage_json(path, METRIC_KEYS, producer(cell))
    if raw["cell"] != cell:
        raise UserError(f"{path}: cell is {raw['cell']!r}, expected {cell!r}: {rerun}")
    for key in METRIC_KEYS[1:]:
        value = raw[key]
        # null is allowed: a run without a validation split has no val_* figures
        if value is not None and (not is_finite_number(value) or (key in INTEGER_KEYS and not isinstance(value, int))):
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

def plot_learning_curves(histories: Mapping[str, pd.DataFrame], lab: bool = True) -> Figure:
    """Loss and accuracy per epoch for every cell, train solid and validation dashed (and the lab's stars)."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for cell, history in histories.items():
        for axes, column in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            axes.plot(history["epoch"], history[column], "o-", color=CELL_COLOURS[cell], label=f"{cell.upper()} train")
            validation = f"val_{column}"
            if validation in history and history[validation].notna().any():
                axes.plot(history["epoch"], history[validation], "o--", color=CELL_COLOURS[cell],
                          label=f"{cell.upper()} validation")
    for cell, reference in (LAB_REFERENCE if lab else {}).items():
        accuracy_axes.plot(reference["epochs"], reference["val_accuracy"], "*", markersize=13, color=CELL_COLOURS[cell],
                           markeredgecolor="black", label=f"lab {cell.upper()} validation")
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set(xlabel="epoch", ylabel=name, title=f"{name.capitalize()} per epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def plot_seconds_per_epoch(metrics: Mapping[str, Mapping[str, Any]], histories: Mapping[str, pd.DataFrame],
                           lab: bool = True) -> Figure:
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
    if lab:
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


def title_section(corpus: CorpusInfo) -> str:
    model = ("Embedding → LSTM/GRU → global max pooling → dropout → dense → dropout → "
             f"{corpus.classes}-way softmax, ")
    if corpus.is_lab:
        return ("# LSTM vs GRU on 20 Newsgroups\n\n" + model
                + "trained on the 20news-bydate train split and scored on its test split.")
    return (f"# LSTM vs GRU on {Path(corpus.source).name}\n\n" + model
            + f"trained on the train split of `{corpus.source}` ({corpus.train:,} documents) and scored on its "
            f"test split ({corpus.test:,} documents); `{FETCH_METRICS.as_posix()}` says how they were read.")


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


def comparison_section(selected: str, runs: Mapping[str, CellRun], lab: bool = True) -> str:
    """Both cells side by side, with the lab's published figures as a reference on the lab's corpus."""
    cells = list(runs)
    if not lab:
        header = ["", *(f"{c.upper()} (selected)" if c == selected else c.upper() for c in cells)]
        rows = [[label, *(fmt(runs[c].metrics[key]) for c in cells)] for label, key, fmt in COMPARISON_ROWS]
        return "## LSTM and GRU side by side\n\n" + table(header, rows, "l" + "r" * len(cells))
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


def training_section(lab: bool = True) -> str:
    """Learning curves and time per epoch of both cells."""
    stars = "; stars: the lab's validation accuracy" if lab else ""
    return ("## Training\n\n"
            f"Loss and accuracy per epoch (train solid, validation dashed{stars}).\n\n"
            + figure_link(LEARNING_CURVES, "Learning curves of both cells") + "\n\n"
            "Seconds per epoch (bars: mean, dots: single epochs; the first epoch includes tracing and XLA compilation).\n\n"
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
CELL_NAMES = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU", SCALED_RNN: "SimpleRNN, R scaled"}
SETTING_NAMES = {"init": "initial", "trained": "trained"}


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


def _log10(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.2f}".replace("-", "−")


def _power(value: float) -> str:
    return f"10<sup>{value:.1f}</sup>".replace("-", "−")


def _reach(summary: Mapping[str, Any], length: int) -> str:
    """Steps back from the last token at which the gradient fell below the vanish fraction."""
    return f"> {length - 1}" if summary["vanish_step"] is None else str(length - summary["vanish_step"])


def _per_step(log10: float, length: int) -> str:
    """The mean factor by which each step back multiplied the gradient."""
    return f"×{10 ** (log10 / (length - 1)):.3f}"


def _ratio_phrase(summary: Mapping[str, Any] | None) -> str:
    """'10^x' for a measurable ratio; otherwise why it is not."""
    if summary is None:
        return "not measured"
    if summary["log10_first_to_last"] is not None:
        return _power(summary["log10_first_to_last"])
    if summary["nonfinite_steps"]:
        return f"beyond float32 ({summary['nonfinite_steps']} steps overflowed)"
    return f"0 in float32 ({summary['zero_steps']} steps underflowed)"


def _measured(gradients: Mapping[str, Any], setting: str, readout: str) -> dict[str, tuple[int, float]]:
    """Per cell: the longest length whose first-to-last ratio is measurable, and that log10 ratio."""
    found = {}
    for cell in GRADIENT_CELLS:
        for length in reversed(_lengths(gradients)):
            summary = _curve(gradients, cell, setting, length, readout)
            if summary is not None and summary["log10_first_to_last"] is not None:
                found[cell] = (length, summary["log10_first_to_last"])
                break
    return found


CELL_EQUATIONS = """```
SimpleRNN   h_t = tanh(W x_t + R h_{t−1} + b)

LSTM        i_t = σ(W_i x_t + R_i h_{t−1} + b_i)        input gate
            f_t = σ(W_f x_t + R_f h_{t−1} + b_f)        forget gate
            o_t = σ(W_o x_t + R_o h_{t−1} + b_o)        output gate
            g_t = tanh(W_g x_t + R_g h_{t−1} + b_g)     candidate
            c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t             cell state: an additive update
            h_t = o_t ⊙ tanh(c_t)

GRU         z_t = σ(W_z x_t + R_z h_{t−1} + b_z)        update gate
            r_t = σ(W_r x_t + R_r h_{t−1} + b_r)        reset gate
  reset_after=False (Keras 2, the lab):
            ĥ_t = tanh(W_h x_t + R_h (r_t ⊙ h_{t−1}) + b_h)
  reset_after=True (Keras 3 default, cuDNN layout; every gate also has a recurrent bias b′):
            ĥ_t = tanh(W_h x_t + b_h + r_t ⊙ (R_h h_{t−1} + b′_h))
            h_t = z_t ⊙ h_{t−1} + (1 − z_t) ⊙ ĥ_t
```

x_t is the embedded token (E values), h_t the hidden state (U units), the W are E × U input kernels, the R
are U × U recurrent kernels, ⊙ is element-wise. Back-propagation reaches token t through one Jacobian per
step between t and the end:

- SimpleRNN: ∂h_t/∂h_{t−1} = diag(1 − h_t²) R. The product of L − t such factors shrinks geometrically when
  they are below 1 in norm (vanishing) and grows geometrically above 1 (exploding); tanh′ ≤ 1 can only
  shrink it, so only a large R explodes.
- LSTM: ∂c_t/∂c_{t−1} = diag(f_t) plus terms through h_{t−1}: while the forget gate stays near 1 the cell
  state carries the gradient back unchanged, and the gate is learned from the data.
- GRU: ∂h_t/∂h_{t−1} = diag(z_t) plus terms through ĥ_t: an update gate near 1 copies the state, and its
  gradient, from step to step."""


def _param_table(gradients: Mapping[str, Any]) -> str:
    """Each cell's parameters from the formula (lstm_vs_gru.model), against Keras's own count."""
    from lstm_vs_gru.model import expected_param_count, recurrent_param_count

    sizes = gradients["sizes"]
    e, u, reset_after = sizes["embedding_dim"], sizes["units"], sizes["gru_reset_after"]
    model_params = params.ModelParams(embedding_dim=e, units=u, dense_units=sizes["dense_units"], dropout=0.0,
                                      gru_reset_after=reset_after)
    formulas = {"simple_rnn": f"{e}·{u} + {u}·{u} + {u}", "lstm": f"4 × ({e}·{u} + {u}·{u} + {u})",
                "gru": f"3 × ({e}·{u} + {u}·{u} + {2 * u if reset_after else u})"}
    rows = []
    for cell in GRADIENT_CELLS:
        recurrent = recurrent_param_count(cell, e, u, reset_after)
        whole = expected_param_count(cell, sizes["num_words"], model_params, sizes["n_classes"])
        keras = gradients["params"].get(cell, {})
        agree = keras.get("recurrent") == recurrent and keras.get("model") == whole
        rows.append((CELL_NAMES[cell], formulas[cell], f"{recurrent:,}", fmt_count(keras.get("recurrent")),
                     f"{whole:,}", fmt_count(keras.get("model")), "✓" if agree else "✗ differs"))
    gru_biases = ("2U biases per gate block (input and recurrent)" if reset_after
                  else "U biases per gate block")
    return (f"With E = {e}, U = {u}, V = {sizes['num_words']:,} words, D = {sizes['dense_units']} dense units and "
            f"C = {sizes['n_classes']} groups, a recurrent layer has one block of input weights (E·U), recurrent "
            f"weights (U·U) and biases per gate: 1 block for the SimpleRNN, 4 for the LSTM (i, f, o, g), 3 for the GRU "
            f"(z, r, ĥ; `gru_reset_after: {str(reset_after).lower()}`, so {gru_biases}). The whole model adds the "
            f"embedding V·E, the hidden layer U·D + D and the output layer D·C + C. Keras's counts are recorded by "
            f"the gradients stage.\n\n"
            + table(["Cell", "Recurrent formula", "Recurrent", "Keras", "Whole model", "Keras", "Formula = Keras"],
                    rows, "llrrrrl"))


def _curve_table(gradients: Mapping[str, Any]) -> str:
    """log10(first step / last step) of every curve, and how far back the last-state gradient reaches."""
    fraction = gradients["vanish_fraction"]
    rows = []
    for name in (*GRADIENT_CELLS, SCALED_RNN):
        for setting in ("init", "trained"):
            for length in _lengths(gradients):
                pooled = _curve(gradients, name, setting, length, "max_pool")
                last = _curve(gradients, name, setting, length, "last_state")
                if pooled is None or last is None:
                    continue
                rows.append((CELL_NAMES[name], SETTING_NAMES[setting], str(length),
                             _log10(pooled["log10_first_to_last"]), _reach(pooled, length),
                             _log10(last["log10_first_to_last"]), _reach(last, length)))
    return ("log10 of (gradient norm at the first token ÷ at the last token), and how many steps back the gradient "
            f"first falls below {fraction:g} of the last token's (\"> L − 1\": never within the post; "
            "— : the ratio overflowed or underflowed float32):\n\n"
            + table(["Cell", "Weights", "L", "Lab model: log10 ratio", "steps back", "Last state: log10 ratio",
                     "steps back"], rows, "lllrrrr"))


def _recurrence_paragraph(gradients: Mapping[str, Any]) -> str:
    """What the last-state readout shows, trained and initial, in the measured numbers."""
    trained, initial = _measured(gradients, "trained", "last_state"), _measured(gradients, "init", "last_state")
    if not trained:
        return ""
    def listing(found: Mapping[str, tuple[int, float]]) -> str:
        return "; ".join(f"{CELL_NAMES[c]} {_power(v)} at L = {n} ({_per_step(v, n)} per step)"
                         for c, (n, v) in found.items())

    def per_step(found: Mapping[str, tuple[int, float]], cell: str) -> float:
        length, value = found[cell]
        return value / (length - 1)

    text = ("**Through the recurrence** (the head reading h_L only), the first token's gradient relative to the "
            f"last token's is, after training: {listing(trained)}. ")
    ranked = sorted(trained, key=lambda c: per_step(trained, c))
    if "simple_rnn" in trained and len(trained) > 1:
        if ranked[0] == "simple_rnn":
            length = trained["simple_rnn"][0]
            reach = _reach(_curve(gradients, "simple_rnn", "trained", length, "last_state"), length)
            text += ("The plain RNN loses its gradient fastest: every step back multiplies it by diag(1 − h²) R, "
                     f"on average by less than 1, so a token more than {reach} steps back gets less than "
                     f"{gradients['vanish_fraction']:g} of the last token's gradient; training barely reaches it, "
                     "and the plain RNN forgets early tokens. ")
        else:
            text += (f"In this run the fastest loss per step is the {CELL_NAMES[ranked[0]]}'s, not the plain RNN's. ")
        best = ranked[-1]
        if best != "simple_rnn":
            text += (f"The {CELL_NAMES[best]} keeps the longest reach: its gates let the gradient pass along "
                     "the additive path (f_t or z_t near 1) instead of through a squashing non-linearity. ")
    if initial:
        text += f"At initialisation: {listing(initial)}. "
        gated_faster = [c for c in initial if c != "simple_rnn" and "simple_rnn" in initial
                        and per_step(initial, c) < per_step(initial, "simple_rnn")]
        if gated_faster:
            text += ("Untrained, " + " and ".join(CELL_NAMES[c] for c in gated_faster)
                     + " lose the gradient faster than the plain RNN: Keras starts the LSTM's forget gate at "
                     "σ(1) ≈ 0.73 (bias 1) and the GRU's update gate at σ(0) = 0.5, so the state, and its gradient, "
                     "decays by about that factor per step, while the plain RNN's orthogonal R preserves norms. "
                     "The gates have to learn to stay open. ")
        changes = [f"{CELL_NAMES[c]} {_log10(trained[c][1] - initial[c][1])} at L = {trained[c][0]}"
                   for c in trained if c in initial and trained[c][0] == initial[c][0]]
        if changes:
            text += ("Training changed the first token's gradient relative to the last token's by, in orders of "
                     "magnitude: " + ", ".join(changes) + ".")
    return text


def _max_pool_paragraph(gradients: Mapping[str, Any], runs: Mapping[str, CellRun]) -> str:
    """What the lab's own model shows: max pooling gives every step a short path to the loss."""
    summaries = [s for c in GRADIENT_CELLS for setting in ("init", "trained") for n in _lengths(gradients)
                 if (s := _curve(gradients, c, setting, n, "max_pool")) is not None]
    ratios = [s["log10_first_to_last"] for s in summaries if s["log10_first_to_last"] is not None]
    vanished = sum(s["vanish_step"] is not None for s in summaries)
    if not ratios:
        return ""
    text = (f"**Through the lab's model** (global max pooling over every step's output), the first-to-last ratios "
            f"lie between {_power(min(ratios))} and {_power(max(ratios))}, and ")
    if not vanished:
        text += ("no curve falls below the vanishing threshold. Max pooling hands each step's output straight to "
                 "the classifier, so every token has a path of length one to the loss, and the recurrence need not "
                 "carry the gradient far: in this architecture vanishing gradients limit what each step's state can "
                 "summarise, not whether an early token is seen. ")
    else:
        text += (f"{vanished} of {len(summaries)} curves fall below the vanishing threshold. Max pooling gives a step "
                 "a path of length one to the loss only where its output is some unit's maximum; steps that never "
                 "are (zero padding, say) are reached only through the recurrence. ")
    training = gradients["simple_rnn_training"]
    if training.get("val_accuracy") is not None:
        others = ", ".join(f"{c.upper()} {fmt_score(runs[c].metrics['val_accuracy'])}" for c in runs)
        text += (f"The SimpleRNN trained by the gradients stage with the train stages' settings reached a validation "
                 f"accuracy of {fmt_score(training['val_accuracy'])} after {training['epoch']} epochs ({others}).")
    return text


def _exploding_paragraph(gradients: Mapping[str, Any]) -> str:
    """The scaled plain RNN's curves and what clipnorm did while training it."""
    scale, lengths = gradients["recurrent_scale"], _lengths(gradients)
    parts = []
    for length in lengths:
        scaled = _curve(gradients, SCALED_RNN, "init", length, "last_state")
        plain = _curve(gradients, "simple_rnn", "init", length, "last_state")
        if scaled is not None:
            parts.append(f"L = {length}: {_ratio_phrase(scaled)}"
                         + (f" (unscaled: {_ratio_phrase(plain)})" if plain is not None else ""))
    clipping = gradients["clipping"]
    free, clipped = clipping["unclipped"], clipping["clipnorm_run"]
    steps, clipnorm = clipping["steps"], clipping["clipnorm"]
    update_ratio = free["median_update_norm"] / clipped["median_update_norm"] if clipped["median_update_norm"] else None
    scaled_curves = [c for n in lengths if (c := _curve(gradients, SCALED_RNN, "init", n, "last_state")) is not None]
    exploded = any(c["nonfinite_steps"] or (c["log10_first_to_last"] or 0) > 0 for c in scaled_curves)
    text = (f"**Exploding gradients.** Multiplying the initial plain RNN's recurrent kernel R by {scale:g} "
            + ("pushes the per-step factor above 1" if exploded else "does not, here, push the per-step factor "
               "above 1") + ": the first token's gradient relative to the last token's, read from the "
            "last state, becomes " + "; ".join(parts) + ". "
            f"Training this RNN for {steps} batches (Adam, the train stages' learning rate and batch size), the "
            f"global gradient norm had a median of {free['median_grad_norm']:.3g} "
            f"(largest {free['max_grad_norm']:.3g}). "
            f"With `clipnorm: {clipnorm:g}` (`train.clipnorm` in params.yaml; Keras clips each weight tensor's "
            f"gradient to that norm separately) {clipped['clipped_steps']} of {steps} steps were clipped, to a "
            f"median global norm of {clipped['median_clipped_grad_norm']:.3g}. Adam divides each gradient by a "
            "running estimate of its own size, so even unclipped its steps stay bounded: the weights moved by a "
            f"median norm of {free['median_update_norm']:.3g} per step without clipping and "
            f"{clipped['median_update_norm']:.3g} with it"
            + (_update_change(update_ratio) if update_ratio else "")
            + f", and the loss went from {free['first_loss']:.3f} to {free['last_loss']:.3f} without clipping and "
            f"to {clipped['last_loss']:.3f} with it (mean of the last tenth of the steps). Clipping matters most "
            "for plain SGD, whose step is proportional to the gradient; with Adam it evens out the occasional spike.")
    return text


def _update_change(ratio: float) -> str:
    """How clipping changed the median weight change: ratio = unclipped / clipped."""
    return (f" (clipping made them {ratio:.1f} times smaller)" if ratio >= 1
            else f" (clipping made them {1 / ratio:.1f} times larger)")


def gradients_section(gradients: Mapping[str, Any], runs: Mapping[str, CellRun]) -> str:
    """Vanishing and exploding gradients, explained from the gradients stage's measurements."""
    sample, lengths = gradients["sample"], _lengths(gradients)
    longest = max(lengths)
    full = sample.get(f"full_L{longest}", sample["documents"])
    documents = sample["documents"]
    if full == documents:
        chosen = f"{documents} training posts drawn with the seed among those at least {longest} tokens long"
    else:
        chosen = (f"the {documents} longest training posts ({full} of them at least {longest} tokens long, the "
                  "others start with zero padding)")
    intro = ("## Vanishing and exploding gradients\n\n"
             "How much can the loss still learn from a token far back in a post? The `gradients` stage measures "
             "‖∂loss/∂x_t‖, the gradient of a post's loss with respect to its embedded token x_t at step "
             f"t = 1 … L, averaged over {chosen}; L = {', '.join(map(str, lengths))}, each post cut to its last "
             "L tokens. "
             "It does so at initialisation and after "
             "training (LSTM and GRU: the train stages' models, rebuilt for longer inputs with the same weights; "
             "SimpleRNN: trained by the stage with the same settings), and through two readouts of the same "
             "weights: the lab's model as it is, whose global max pooling reads every step's output, and the same "
             "head reading only the last hidden state h_L, so that the gradient has to cross every step of the "
             "recurrence: the setting in which gradients vanish or explode.")
    return "\n\n".join(part for part in (
        intro,
        "### The cells\n\n" + CELL_EQUATIONS,
        "### Parameters\n\n" + _param_table(gradients),
        "### Measured gradients\n\n"
        + figure_link(GRADIENT_FLOW, "Gradient norm per step, all cells") + "\n\n"
        "Top: the lab's model; bottom: read from the last state. Dashed: initial weights; solid: trained.",
        _curve_table(gradients),
        _recurrence_paragraph(gradients),
        _max_pool_paragraph(gradients, runs),
        figure_link(EXPLODING_GRADIENTS, "Exploding gradients and clipping"),
        _exploding_paragraph(gradients),
    ) if part)


def report_sections(selected: str, runs: Mapping[str, CellRun], scores: pd.DataFrame,
                    confusions: Sequence[tuple[str, str, int]], gradients: Mapping[str, Any],
                    corpus: CorpusInfo) -> list[str]:
    """The report's sections in order; later stages' sections (e.g. gradients) are appended to this list."""
    return [
        title_section(corpus),
        selection_section(selected, runs),
        comparison_section(selected, runs, corpus.is_lab),
        training_section(corpus.is_lab),
        selected_cell_section(selected, scores, confusions),
        gradients_section(gradients, runs),
    ]


def render_markdown(sections: Sequence[str]) -> str:
    return "\n\n".join(section.strip() for section in sections) + "\n"
