"""Where every artifact lives, and how it is written: atomically, so a failed or
interrupted stage never leaves a half-written file that a later stage could read as good."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lstm_vs_gru.errors import UserError

SPLITS = ("train", "test")
CELLS = ("lstm", "gru")

PARAMS = Path("params.yaml")
CORPUS_DIR = Path("data/corpus")
TOKENS_DIR = Path("data/tokens")
VOCAB = TOKENS_DIR / "vocab.json"
PADDED_DIR = Path("data/padded")
# the embed stage's word vectors (lstm_vs_gru.embedding), read by training under model.embedding_init: lsa
VECTORS = Path("data/vectors.npz")
METRICS_DIR = Path("metrics")
MODELS_DIR = Path("models")
PLOTS_DIR = Path("plots")
PROBABILITIES_DIR = Path("predictions")
DVCLIVE_DIR = Path("dvclive")
REPORT_DIR = Path("reports")


def corpus_path(split: str) -> Path:
    return CORPUS_DIR / f"{split}.parquet"


CORPUS_COLUMNS = ("id", "group", "label", "text")


def tokens_path(split: str) -> Path:
    return TOKENS_DIR / f"{split}.npz"


def padded_path(split: str) -> Path:
    return PADDED_DIR / f"{split}.npz"


def metrics_path(name: str) -> Path:
    return METRICS_DIR / f"{name}.json"


def run_folder(cell: str, seed: int) -> str:
    """Where one training run's files go under models/, metrics/, plots/ and dvclive/: {cell}/seed{seed}."""
    return f"{cell}/seed{seed}"


def model_path(cell: str, seed: int) -> Path:
    return MODELS_DIR / f"{run_folder(cell, seed)}.keras"


def run_metrics_path(cell: str, seed: int) -> Path:
    return METRICS_DIR / f"{run_folder(cell, seed)}.json"


# Our own member inside a .keras file (a zip): Keras ignores members it does not know.
MODEL_STAMP = "lstm_vs_gru.json"


def stamp_model(path: str | os.PathLike, stamp: dict[str, Any]) -> None:
    """Add a small JSON record to a saved .keras file, e.g. the fingerprint of the vocabulary it was trained with."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(MODEL_STAMP, json.dumps(stamp))


def read_model_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """The record `stamp_model` added to a .keras file; {} for a model saved without one."""
    with zipfile.ZipFile(path) as archive:
        if MODEL_STAMP not in archive.namelist():
            return {}
        stamp = json.loads(archive.read(MODEL_STAMP))
    return stamp if isinstance(stamp, dict) else {}


def predictions_path(cell: str, seed: int) -> Path:
    return PLOTS_DIR / run_folder(cell, seed) / "predictions.csv"


def probabilities_path(cell: str, seed: int) -> Path:
    """A run's predicted probabilities on the test split (.npz: probabilities, labels, groups), for ensembles."""
    return PROBABILITIES_DIR / f"{run_folder(cell, seed)}.npz"


BASELINE_METRICS = METRICS_DIR / "baseline.json"
# the baseline's test predictions, as the train stages' predictions.csv (actual, predicted group names)
BASELINE_PREDICTIONS = PLOTS_DIR / "baseline" / "predictions.csv"


def dvclive_dir(cell: str, seed: int) -> Path:
    return DVCLIVE_DIR / run_folder(cell, seed)


def dvclive_metric_path(cell: str, seed: int, metric: str) -> Path:
    """A per-epoch series as DVCLive writes it (step, value), e.g. metric "train/loss" or "eval/accuracy"."""
    return dvclive_dir(cell, seed) / "plots" / "metrics" / f"{metric}.tsv"


REPORT_METRICS = METRICS_DIR / "report.json"
REPORT_MD = REPORT_DIR / "report.md"


def report_figure_path(name: str) -> Path:
    """A PNG beside reports/report.md (fixed names, so the report stage's outs do not depend on `cell`)."""
    return REPORT_DIR / f"{name}.png"


GRADIENTS_DIR = PLOTS_DIR / "gradients"
GRADIENT_CLIPPING = GRADIENTS_DIR / "clipping.csv"


def gradient_curve_path(model: str, setting: str, length: int) -> Path:
    """Gradient norm per time step of one model (simple_rnn, lstm, gru, simple_rnn_scaled),
    setting (init, trained) and sequence length."""
    return GRADIENTS_DIR / f"{model}_{setting}_{length}.csv"


def gradient_figure_path(name: str) -> Path:
    """A PNG written by the gradients stage (gradient_flow, exploding)."""
    return GRADIENTS_DIR / f"{name}.png"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file owner-only; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_stage_json(path: str | os.PathLike, required: Sequence[str], stage: str) -> dict[str, Any]:
    """A JSON object written by `stage` with the `required` keys; anything else is one UserError
    that names the file and the `dvc repro` target that writes it."""
    rerun = f"run `dvc repro {stage}`"
    raw = _read_stage_file(path, read_json, "not readable JSON", (OSError, ValueError), rerun)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object; {rerun}")
    _require(path, "keys", [key for key in required if key not in raw], rerun)
    return raw


def read_stage_npz(path: str | os.PathLike, required: Sequence[str], stage: str) -> dict[str, np.ndarray]:
    """An .npz file written by `stage` with the `required` arrays; anything else is one UserError
    that names the file and the `dvc repro` target that writes it."""
    rerun = f"run `dvc repro {stage}`"
    arrays = _read_stage_file(path, read_npz, "not a readable .npz file",
                              (OSError, ValueError, EOFError, zipfile.BadZipFile), rerun)
    _require(path, "arrays", [name for name in required if name not in arrays], rerun)
    return arrays


def _read_stage_file(path: str | os.PathLike, read: Callable[[str | os.PathLike], Any], unreadable: str,
                     errors: tuple[type[BaseException], ...], rerun: str) -> Any:
    """read(path), with a missing or unreadable file turned into one UserError line."""
    try:
        return read(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found ({rerun})") from None
    except errors as error:
        raise UserError(f"{path}: {unreadable} ({' '.join(str(error).split())}); {rerun}") from None


def _require(path: str | os.PathLike, what: str, missing: list[str], rerun: str) -> None:
    if missing:
        raise UserError(f"{path}: missing {what} {', '.join(missing)}; {rerun}")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def is_number(value: object) -> bool:
    """Whether a value read from JSON is a number (int or float, not bool; NaN and infinities included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    return is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def write_png(figure: "matplotlib.figure.Figure", path: str | os.PathLike) -> None:  # noqa: F821
    """Write a figure as PNG atomically; no Software metadata, so the bytes do not change with matplotlib's version."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def read_corpus(split: str) -> "pandas.DataFrame":  # noqa: F821
    """The corpus table of one split as fetch wrote it, checked for its columns, integer labels and text strings."""
    import pandas as pd

    path = corpus_path(split)
    try:
        frame = pd.read_parquet(path, columns=list(CORPUS_COLUMNS))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the fetch stage first)") from None
    except (ValueError, KeyError, OSError) as error:
        raise UserError(f"{path}: not a corpus table with columns {', '.join(CORPUS_COLUMNS)}: {error}") from None
    if not pd.api.types.is_integer_dtype(frame["label"]):
        raise UserError(f"{path}: column label must hold integers, not {frame['label'].dtype}")
    if not all(isinstance(text, str) for text in frame["text"]):
        raise UserError(f"{path}: column text must hold strings only")
    return frame


def write_table(path: str | os.PathLike, frame: "pandas.DataFrame") -> None:  # noqa: F821
    """Write a DataFrame as Parquet (`.parquet`) or CSV (anything else), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
