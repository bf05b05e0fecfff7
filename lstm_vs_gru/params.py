"""Load params.yaml once and validate every key before any work starts.

A bad value fails with one line naming the key, the value and what is allowed."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import yaml

from lstm_vs_gru.artifacts import (CORPUS_DIR, DVCLIVE_DIR, METRICS_DIR, MODELS_DIR, PADDED_DIR, PARAMS, PLOTS_DIR,
                                   REPORT_DIR, TOKENS_DIR, VECTORS)
from lstm_vs_gru.errors import UserError

REMOVE_CHOICES = ("headers", "footers", "quotes")
SIDE_CHOICES = ("pre", "post")
CELL_CHOICES = ("lstm", "gru")
# What stages/train.py trains: the compared cells, and the plain RNN as the lever table's third cell.
TRAINABLE_CELLS = ("simple_rnn", *CELL_CHOICES)
GRADIENT_CELL_CHOICES = ("simple_rnn", "lstm", "gru")
POOLING_CHOICES = ("max", "mean", "max_mean", "attention")  # lstm_vs_gru.model.pooling_layer
# uniform: Keras's random start; lsa: the embed stage's corpus vectors (lstm_vs_gru.training.initial_embedding)
EMBEDDING_INIT_CHOICES = ("uniform", "lsa")
LR_SCHEDULE_CHOICES = ("constant", "cosine")  # lstm_vs_gru.training.learning_rate
TRAINER_CHOICES = ("fused", "keras")  # lstm_vs_gru.fused.trainer.fast_fit, or Keras's own model.fit
BASELINE_MODEL_CHOICES = ("linear_svc", "logistic_regression", "complement_nb")  # lstm_vs_gru.baseline.CLASSIFIERS
STOP_WORDS_CHOICES = ("english",)  # scikit-learn's built-in list
KERAS2_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class ParamError(UserError):
    """A parameter that is missing, unknown or out of range."""


# How `data.source` is read, by its name: a 20news-bydate archive, a table, or else a folder of class folders.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
# A source inside (or holding) a stage's output would make DVC refuse the pipeline as overlapping.
OUTPUT_FOLDERS = (CORPUS_DIR, TOKENS_DIR, PADDED_DIR, MODELS_DIR, METRICS_DIR, PLOTS_DIR, REPORT_DIR, DVCLIVE_DIR,
                  VECTORS)


def source_kind(source: str) -> str:
    """archive, table or folder, from the path's name alone (nothing is read)."""
    name = source.lower().rstrip("/")
    if name.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    return "folder"


@dataclass(frozen=True)
class DataParams:
    source: str
    remove: tuple[str, ...]
    text_column: str
    label_column: str
    split_column: str | None
    test_size: float
    split_seed: int

    @property
    def kind(self) -> str:
        return source_kind(self.source)


@dataclass(frozen=True)
class TokenizeParams:
    num_words: int
    lower: bool
    filters: str


@dataclass(frozen=True)
class PadParams:
    maxlen: int
    padding: str
    truncating: str


# ModelParams' fields beyond the lab's layers; their defaults are the lab's model
MODEL_LEVERS = ("bidirectional", "layers", "pooling", "embedding_dropout", "spatial_dropout", "embedding_init")


@dataclass(frozen=True)
class ModelParams:
    embedding_dim: int
    units: int
    dense_units: int
    dropout: float
    gru_reset_after: bool
    # the levers beyond the lab (params.yaml documents each); these defaults are the lab's model
    bidirectional: bool = False
    layers: int = 1
    pooling: str = "max"
    embedding_dropout: float = 0.0
    spatial_dropout: float = 0.0
    embedding_init: str = "uniform"


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    learning_rate: float
    validation_split: float
    seeds: tuple[int, ...]
    clipnorm: float | None
    trainer: str
    lazy_adam: bool
    lr_schedule: str = "constant"
    early_stopping: int | None = None  # patience in epochs; None: train every epoch
    # The seed one training run uses: the first of `seeds` unless a stage trains another (`with_seed`).
    seed: int = 0

    def with_seed(self, seed: int) -> "TrainParams":
        return replace(self, seed=seed)


@dataclass(frozen=True)
class GradientsParams:
    cells: tuple[str, ...]
    seq_lengths: tuple[int, ...]
    samples: int
    recurrent_scale: float


@dataclass(frozen=True)
class BaselineParams:
    model: str
    sublinear_tf: bool
    max_df: float
    stop_words: str | None
    max_features: int | None
    C: float
    seed: int


@dataclass(frozen=True)
class Params:
    cell: str
    data: DataParams
    tokenize: TokenizeParams
    pad: PadParams
    model: ModelParams
    train: TrainParams
    gradients: GradientsParams
    baseline: BaselineParams


# --- checks: each returns the clean value or raises ValueError(<what is allowed>) ---

def _int(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"an integer >= {low}")
        return value
    return check


def _float(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[Any], float]:
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    allowed = f"a number in {left}{low}, {high}{right}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(allowed)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise ValueError(allowed)
        return float(value)
    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as error:
            raise ValueError(f"null or {error}") from None
    return optional


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value
    return check


def _subset(choices: tuple[str, ...], *, nonempty: bool = False) -> Callable[[Any], tuple[str, ...]]:
    allowed = ("a non-empty" if nonempty else "a") + " list of distinct items from " + ", ".join(choices)

    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or any(item not in choices for item in value):
            raise ValueError(allowed)
        if len(set(value)) != len(value) or (nonempty and not value):
            raise ValueError(allowed)
        return tuple(value)
    return check


def _int_list(low: int, *, distinct: bool = False) -> Callable[[Any], tuple[int, ...]]:
    item = _int(low)
    allowed = f"a non-empty list of {'distinct ' if distinct else ''}integers >= {low}"

    def check(value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or (distinct and len(set(map(repr, value))) != len(value)):
            raise ValueError(allowed)
        try:
            return tuple(item(v) for v in value)
        except ValueError:
            raise ValueError(allowed) from None
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


SCHEMA: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "data": (DataParams, {
        "source": _nonempty_str, "remove": _subset(REMOVE_CHOICES),
        "text_column": _nonempty_str, "label_column": _nonempty_str, "split_column": _optional(_nonempty_str),
        "test_size": _float(0.0, 1.0, low_open=True, high_open=True), "split_seed": _int(0),
    }),
    "tokenize": (TokenizeParams, {"num_words": _int(2), "lower": _bool, "filters": _str}),
    "pad": (PadParams, {"maxlen": _int(1), "padding": _choice(SIDE_CHOICES), "truncating": _choice(SIDE_CHOICES)}),
    "model": (ModelParams, {
        "embedding_dim": _int(1), "units": _int(1), "dense_units": _int(1),
        "dropout": _float(0.0, 1.0, high_open=True), "gru_reset_after": _bool,
        "bidirectional": _bool, "layers": _int(1), "pooling": _choice(POOLING_CHOICES),
        "embedding_dropout": _float(0.0, 1.0, high_open=True), "spatial_dropout": _float(0.0, 1.0, high_open=True),
        "embedding_init": _choice(EMBEDDING_INIT_CHOICES),
    }),
    "train": (TrainParams, {
        "epochs": _int(1), "batch_size": _int(1),
        "learning_rate": _float(0.0, 10.0, low_open=True),
        "validation_split": _float(0.0, 1.0, high_open=True),
        "seeds": _int_list(0, distinct=True),
        "clipnorm": _optional(_float(0.0, math.inf, low_open=True, high_open=True)),
        "trainer": _choice(TRAINER_CHOICES),
        "lazy_adam": _bool,
        "lr_schedule": _choice(LR_SCHEDULE_CHOICES),
        "early_stopping": _optional(_int(1)),
    }),
    "gradients": (GradientsParams, {
        "cells": _subset(GRADIENT_CELL_CHOICES, nonempty=True), "seq_lengths": _int_list(2),
        "samples": _int(1), "recurrent_scale": _float(0.0, 100.0, low_open=True),
    }),
    "baseline": (BaselineParams, {
        "model": _choice(BASELINE_MODEL_CHOICES), "sublinear_tf": _bool,
        "max_df": _float(0.0, 1.0, low_open=True), "stop_words": _optional(_choice(STOP_WORDS_CHOICES)),
        "max_features": _optional(_int(1)), "C": _float(0.0, math.inf, low_open=True, high_open=True),
        "seed": _int(0),
    }),
}
TOP_LEVEL = {"cell": _choice(CELL_CHOICES)}


def flow_yaml(value: Any) -> str:
    """A value as one line of YAML (flow style), as params.yaml or a `dvc exp run -S` option would hold it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _fail(path: Path, key: str, value: Any, allowed: str) -> ParamError:
    shown = "missing" if value is _MISSING else flow_yaml(value)
    return ParamError(f"{path}: {key} = {shown}: must be {allowed}")


_MISSING = object()


def _section(path: Path, name: str, raw: Any, cls: type, checks: dict[str, Callable[[Any], Any]]) -> Any:
    if not isinstance(raw, dict):
        raise _fail(path, name, raw if raw is not None else _MISSING, "a mapping with keys " + ", ".join(checks))
    for key in raw:
        if key not in checks:
            raise _fail(path, f"{name}.{key}", raw[key], "absent: unknown key (known: " + ", ".join(checks) + ")")
    return cls(**{key: _checked(path, f"{name}.{key}", raw.get(key, _MISSING), check)
                  for key, check in checks.items()})


def _checked(path: Path, key: str, value: Any, check: Callable[[Any], Any]) -> Any:
    """check(value), or a ParamError naming the key, the value (or its absence) and what is allowed."""
    try:
        if value is _MISSING:
            raise ValueError(_allowed_hint(check))
        return check(value)
    except ValueError as error:
        raise _fail(path, key, value, str(error)) from None


def _allowed_hint(check: Callable[[Any], Any]) -> str:
    """What a check allows, found by feeding it a value no check accepts."""
    try:
        check(object())
    except ValueError as error:
        return str(error)
    return "set"


def parse(raw: Any, path: Path = PARAMS) -> Params:
    """Validate an already-loaded params mapping."""
    if not isinstance(raw, dict):
        raise ParamError(f"{path}: must be a YAML mapping of parameter sections")
    known = set(SCHEMA) | set(TOP_LEVEL)
    for key in raw:
        if key not in known:
            raise _fail(path, str(key), raw[key], "absent: unknown key (known: " + ", ".join(sorted(known)) + ")")
    top = {key: _checked(path, key, raw.get(key, _MISSING), check) for key, check in TOP_LEVEL.items()}
    sections = {name: _section(path, name, raw.get(name), cls, checks) for name, (cls, checks) in SCHEMA.items()}
    _check_data(path, sections["data"])
    train = sections["train"]
    if train.clipnorm is not None and train.trainer != "keras":
        # the fused trainer implements Adam without Keras's clipping (whose sparse-gradient norm is its own)
        raise _fail(path, "train.clipnorm", train.clipnorm, f"null while train.trainer is {train.trainer} "
                    "(gradient clipping needs train.trainer: keras)")
    if train.lazy_adam and train.trainer != "fused":
        raise _fail(path, "train.lazy_adam", train.lazy_adam, f"false while train.trainer is {train.trainer} "
                    "(Keras has no lazy Adam; it needs train.trainer: fused)")
    if train.early_stopping is not None and train.validation_split == 0:
        raise _fail(path, "train.early_stopping", train.early_stopping, "null while train.validation_split is 0 "
                    "(early stopping watches val_accuracy)")
    sections["train"] = train.with_seed(train.seeds[0])
    return Params(**top, **sections)


def _check_data(path: Path, data: DataParams) -> None:
    """The rules between data.* keys, and the source's place in the project."""
    if data.remove and data.kind != "archive":
        # The filters cut a Usenet post's layout; on other text they would silently delete paragraphs.
        raise _fail(path, "data.remove", list(data.remove), f"[] while data.source is a {data.kind} "
                    "(only a 20news-bydate archive has newsgroup headers, footers and quotes to remove)")
    seen: dict[str, str] = {}
    for key in ("text_column", "label_column", "split_column"):
        column = getattr(data, key)
        if column in seen:
            raise _fail(path, f"data.{key}", column, f"a column other than data.{seen[column]}'s")
        if column is not None:
            seen[column] = key
    source = PurePosixPath(Path(data.source).as_posix())
    for folder in (PurePosixPath(folder.as_posix()) for folder in OUTPUT_FOLDERS):
        if source == folder or folder in source.parents or source in folder.parents:
            shown = f"{folder}{'' if folder.suffix else '/'}"  # a folder, or a file such as data/vectors.npz
            raise _fail(path, "data.source", data.source, f"a path apart from the pipeline's output {shown}")


def read_yaml(path: Path, missing: str = "not found") -> Any:
    """A YAML file's contents; ParamError in one line where it is missing (`missing` says so) or not YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: {missing}") from None
    except yaml.YAMLError as error:
        raise ParamError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None


def load(path: str | Path = PARAMS) -> Params:
    """Read and validate params.yaml; raises ParamError with a one-line message."""
    path = Path(path)
    return parse(read_yaml(path, "not found (run from the project root)"), path)


def as_dict(params: Any) -> dict[str, Any]:
    """A dataclass section as a plain dict (tuples become lists), for metrics and logs."""
    return {f.name: (list(v) if isinstance(v := getattr(params, f.name), tuple) else v) for f in fields(params)}
