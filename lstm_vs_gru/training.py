"""Training and evaluating one classifier: the padded inputs checked, the model fitted by the fused trainer
(lstm_vs_gru.fused) or Keras's model.fit, scored on the test split, and its outputs written (stages/train.py
is the stage). TensorFlow is imported only when training starts."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lstm_vs_gru import artifacts
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import Params, TrainParams

try:
    from lstm_vs_gru import fused
except ImportError:  # the fused trainer is optional: without it, training uses model.fit (trainer_for_device)
    fused = None

if TYPE_CHECKING:  # annotations only; these import TensorFlow
    import keras
    import pandas as pd

# Before any TensorFlow import below: keep its C++ info logs out of `dvc repro` output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIGITS = 6  # metrics are float32 underneath: more digits would only be noise
SECONDS_DIGITS = 3


@dataclass(frozen=True)
class Split:
    """One padded split: token ids (n, maxlen), labels (n,), group names (index = label)."""
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    vocabulary_sha256: str  # tokenize's fingerprint, carried by pad


@dataclass(frozen=True)
class TrainingResult:
    model: "keras.Model"
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    predictions: "pd.DataFrame"
    probabilities: np.ndarray  # (test posts, groups), float32: what the report's ensemble averages
    test: Split


# --- inputs ---------------------------------------------------------------------------

def load_padded(split: str, num_words: int, maxlen: int) -> Split:
    """Read data/padded/{split}.npz and check it fits the model about to be built."""
    path = artifacts.padded_path(split)
    arrays = artifacts.read_stage_npz(path, ("x", "y", "groups", "vocabulary_sha256"), "pad")
    x, y, groups = arrays["x"], arrays["y"], arrays["groups"]
    if x.ndim != 2 or x.shape[1] != maxlen or not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"{path}: x has shape {x.shape} and dtype {x.dtype}, expected integer (n, {maxlen}) "
                        "as pad.maxlen says (rerun the pad stage)")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: y has shape {y.shape}, expected one integer label per row of x ({len(x)})")
    if groups.ndim != 1 or groups.size < 2 or groups.dtype.kind != "U":
        raise UserError(f"{path}: groups must be a list of at least two group names")
    if len(x) == 0:
        raise UserError(f"{path}: no documents")
    # An id >= num_words would silently read a random embedding row on GPU and crash on CPU.
    if x.min() < 0 or x.max() >= num_words:
        raise UserError(f"{path}: token ids span [{x.min()}, {x.max()}], outside [0, {num_words}) "
                        "from tokenize.num_words (rerun tokenize and pad)")
    if y.min() < 0 or y.max() >= len(groups):
        raise UserError(f"{path}: labels span [{y.min()}, {y.max()}], outside the {len(groups)} groups")
    return Split(x=x.astype(np.int32, copy=False), y=y.astype(np.int32, copy=False), groups=groups,
                 vocabulary_sha256=str(arrays["vocabulary_sha256"]))


def load_inputs(params: Params) -> tuple[Split, Split]:
    """The train and test splits, checked against each other and against params."""
    train, test = (load_padded(split, params.tokenize.num_words, params.pad.maxlen) for split in artifacts.SPLITS)
    if not np.array_equal(train.groups, test.groups):
        raise UserError("data/padded: train and test list different groups (rerun the pad stage)")
    check_validation_split(len(train.x), params.train.validation_split)
    return train, test


def initial_embedding(params: Params, train: Split) -> np.ndarray | None:
    """The embed stage's word vectors where model.embedding_init is lsa (None: Keras's random start), checked
    against the embedding about to be built and the vocabulary of the padded arrays."""
    if params.model.embedding_init != "lsa":
        return None
    path = artifacts.VECTORS
    arrays = artifacts.read_stage_npz(path, ("vectors", "vocabulary_sha256"), "embed")
    vectors = arrays["vectors"]
    expected = (params.tokenize.num_words, params.model.embedding_dim)
    if vectors.shape != expected or vectors.dtype != np.float32:
        raise UserError(f"{path}: vectors have shape {vectors.shape} and dtype {vectors.dtype}, expected float32 "
                        f"{expected} from tokenize.num_words and model.embedding_dim (rerun `dvc repro embed`)")
    if str(arrays["vocabulary_sha256"]) != train.vocabulary_sha256:
        raise UserError(f"{path}: made from another vocabulary than {artifacts.padded_path('train')} "
                        "(rerun `dvc repro embed`)")
    return vectors


def check_validation_split(n_train: int, validation_split: float) -> None:
    """Fail early where Keras would fail after building the model: an empty train or val part."""
    if validation_split == 0:
        return
    split_at = math.floor(n_train * (1.0 - validation_split))
    if split_at in (0, n_train):
        raise UserError(f"params.yaml: train.validation_split = {validation_split} leaves an empty "
                        f"training or validation part of {n_train} training documents")


# --- training -------------------------------------------------------------------------

def compile_model(model: "keras.Model", train_params: TrainParams, steps: int) -> None:
    """Adam (its learning rate shaped over `steps` per epoch) + cross-entropy + accuracy. Sparse cross-entropy
    on integer labels is the same math as categorical cross-entropy on one-hot labels, without the one-hot copy."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=learning_rate(train_params, steps), clipnorm=train_params.clipnorm)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def learning_rate(train_params: TrainParams, steps: int) -> "float | keras.optimizers.schedules.LearningRateSchedule":
    """train.learning_rate as train.lr_schedule shapes it over epochs x `steps` per epoch."""
    import keras

    if train_params.lr_schedule == "constant":
        return train_params.learning_rate
    return keras.optimizers.schedules.CosineDecay(train_params.learning_rate, train_params.epochs * steps)


def steps_per_epoch(n_train: int, train_params: TrainParams) -> int:
    """Batches per epoch in the part of n_train that is not held out for validation, as model.fit counts them."""
    kept = math.floor(n_train * (1.0 - train_params.validation_split)) if train_params.validation_split else n_train
    return math.ceil(kept / train_params.batch_size)


def early_stopping(train_params: TrainParams) -> list["keras.callbacks.Callback"]:
    """Keras's EarlyStopping on val_accuracy with the best epoch's weights restored, if train.early_stopping
    asks for it: placed after the loggers, so the epoch it stops at is logged too."""
    import keras

    if train_params.early_stopping is None:
        return []
    return [keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=train_params.early_stopping,
                                          restore_best_weights=True)]


def epoch_timer() -> "keras.callbacks.Callback":
    """A callback that adds `seconds` (wall time of the epoch, validation included) to the epoch logs.

    Keras hands one logs dict to every callback in list order, so a timer placed first makes
    `seconds` visible to the callbacks after it: DVCLive logs it at the same step (before its
    own on_epoch_end advances the step), History records it, and verbose=2 prints it."""
    import keras

    started: dict[int, float] = {}

    def begin(epoch: int, logs: dict | None = None) -> None:
        started[epoch] = time.perf_counter()

    def end(epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["seconds"] = time.perf_counter() - started.pop(epoch)

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def history_rows(history: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Keras's History dict as one row per epoch (1-based); val_* are None without validation."""
    def value(key: str, epoch: int, digits: int = DIGITS) -> float | None:
        values = history.get(key)
        return None if values is None else round(float(values[epoch]), digits)

    return [
        {"epoch": epoch + 1, "loss": value("loss", epoch), "accuracy": value("accuracy", epoch),
         "val_loss": value("val_loss", epoch), "val_accuracy": value("val_accuracy", epoch),
         "seconds": value("seconds", epoch, SECONDS_DIGITS)}
        for epoch in range(len(history["loss"]))
    ]


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def fused_gaps(params: Params, cell: str = "lstm") -> list[str]:
    """The cell and levers set in params that the fused trainer does not reproduce (it needs Embedding followed by
    plain LSTM/GRU layers, and a constant learning rate), as `key = value` for the one-line notice."""
    m, t = params.model, params.train
    return [shown for shown, is_set in (("cell = simple_rnn", cell == "simple_rnn"),
                                        ("model.bidirectional = true", m.bidirectional),
                                        (f"model.embedding_dropout = {m.embedding_dropout}", m.embedding_dropout > 0),
                                        (f"model.spatial_dropout = {m.spatial_dropout}", m.spatial_dropout > 0),
                                        (f"train.lr_schedule = {t.lr_schedule}", t.lr_schedule != "constant"))
            if is_set]


def trainer_for_device(params: Params, gpus: int, cell: str = "lstm") -> str:
    """train.trainer as it runs here; one line on stderr where that is not the fused trainer asked for: on a GPU
    Keras's model.fit runs (cuDNN's LSTM and GRU), the fused trainer and its native ops being CPU code; without
    the lstm_vs_gru.fused package; and for a model or schedule it does not reproduce (fused_gaps)."""
    train_params = params.train
    gaps = fused_gaps(params, cell)
    if train_params.trainer != "fused" or (not gpus and fused is not None and not gaps):
        return train_params.trainer
    if gpus:
        where = f"{gpus} GPU(s) found"
    elif fused is None:
        where = "lstm_vs_gru.fused is not installed"
    else:
        where = f"the fused trainer does not reproduce {', '.join(gaps)}"
    if train_params.lazy_adam:
        raise UserError(f"params.yaml: train.lazy_adam = true needs the fused trainer, and {where}: set it to false"
                        + (", or hide the GPUs (CUDA_VISIBLE_DEVICES=)" if gpus else ""))
    print(f"{where}: training with Keras's model.fit" + (" (cuDNN)" if gpus else "") + " instead of the fused trainer",
          file=sys.stderr)
    return "keras"


def trained_with(trainer: str) -> str:
    """The path that trained, as metrics record it: keras, or the fused trainer's native or xla code."""
    return "keras" if trainer == "keras" else fused.trained_with()


def fit(model: "keras.Model", x: np.ndarray, y: np.ndarray, train_params: TrainParams,
        callbacks: Sequence["keras.callbacks.Callback"] = ()) -> list[dict[str, Any]]:
    """Fit the model with train.trainer (keras: compiled beforehand) and return one row per epoch
    (history_rows).

    Both trainers hold out the last validation_split of x before shuffling, as Keras does."""
    if train_params.trainer == "fused":
        return fit_fused(model, x, y, train_params, callbacks)
    history = model.fit(
        x, y,
        epochs=train_params.epochs,
        batch_size=train_params.batch_size,
        validation_split=train_params.validation_split,
        shuffle=True,
        verbose=2,
        callbacks=[epoch_timer(), *callbacks],
    )
    return history_rows(history.history)


def fit_fused(model: "keras.Model", x: np.ndarray, y: np.ndarray, train_params: TrainParams,
              callbacks: Sequence["keras.callbacks.Callback"] = ()) -> list[dict[str, Any]]:
    """lstm_vs_gru.fused.fit with the same callbacks, printing a line per epoch as verbose=2 does."""
    if not fused.supports(model):
        raise UserError(f"train.trainer = fused cannot train {model.name} (it needs Embedding -> LSTM/GRU -> "
                        "stateless layers); use train.trainer: keras")
    history = fused.fit(model, x, y, epochs=train_params.epochs, batch_size=train_params.batch_size,
                        learning_rate=train_params.learning_rate, validation_split=train_params.validation_split,
                        seed=train_params.seed, callbacks=[epoch_timer(), *callbacks, epoch_printer(train_params.epochs)],
                        lazy_adam=train_params.lazy_adam)
    return history_rows(history)


def epoch_printer(epochs: int) -> "keras.callbacks.Callback":
    """A callback that prints each epoch's logs on one line, like model.fit(verbose=2)."""
    import keras

    def end(epoch: int, logs: dict | None = None) -> None:
        shown = " - ".join(f"{key}: {value:.4f}" for key, value in (logs or {}).items() if key != "seconds")
        print(f"Epoch {epoch + 1}/{epochs} - {(logs or {}).get('seconds', 0.0):.1f}s - {shown}", flush=True)

    return keras.callbacks.LambdaCallback(on_epoch_end=end)


def dvclive_callbacks(cell: str, seed: int) -> list["keras.callbacks.Callback"]:
    """DVCLive's Keras callback writing to dvclive/{cell}/seed{seed}/, with no dvc.yaml, experiment or report:
    the per-epoch history that the report and dvc.yaml's plots read (artifacts.dvclive_metric_path)."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    live = Live(dir=str(artifacts.dvclive_dir(cell, seed)), dvcyaml=False, save_dvc_exp=False, report=None)
    return [DVCLiveCallback(live=live)]


# --- evaluation -----------------------------------------------------------------------

def evaluate(model: "keras.Model", test: Split,
             batch_size: int) -> tuple[dict[str, float], "pd.DataFrame", np.ndarray]:
    """Test loss, accuracy and macro-F1 from one prediction pass, the predictions by group name and the
    probabilities.

    The loss is Keras's sparse cross-entropy on the predicted probabilities: what
    model.evaluate would report, without a second pass over the test set."""
    import keras
    import pandas as pd
    from sklearn.metrics import f1_score

    probabilities = model.predict(test.x, batch_size=batch_size, verbose=0)
    losses = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(test.y, probabilities))
    predicted = probabilities.argmax(axis=1)
    scores = {
        "test_loss": float(np.mean(losses)),
        "test_accuracy": float(np.mean(predicted == test.y)),
        "test_macro_f1": float(f1_score(test.y, predicted, average="macro", zero_division=0)),
    }
    predictions = pd.DataFrame({"actual": test.groups[test.y], "predicted": test.groups[predicted]})
    return scores, predictions, probabilities


def kept_epoch(history: list[dict[str, Any]], train_params: TrainParams) -> int:
    """The epoch (1-based) whose weights the model keeps: the last, or with early stopping the first with the
    best val_accuracy (EarlyStopping counts only a strict improvement)."""
    if train_params.early_stopping is None:
        return len(history)
    scores = [row["val_accuracy"] for row in history]
    return scores.index(max(scores)) + 1


def summarize(cell: str, seed: int, param_count: int, history: list[dict[str, Any]], scores: dict[str, float],
              path: str, kept: int | None = None) -> dict[str, Any]:
    """The flat metrics/{cell}/seed{seed}.json record: the train/val figures of the kept epoch (default: the
    last), the test scores and the path that trained (`trained_with`: native, xla or keras; another path
    rounds differently, so a metric diff beside a change of path is explained by it)."""
    kept = kept or len(history)
    row = history[kept - 1]
    seconds = [entry["seconds"] for entry in history]
    return {
        "cell": cell,
        "seed": seed,
        "params": int(param_count),
        "epochs": len(history),
        "kept_epoch": kept,
        "trained_with": path,
        "seconds_per_epoch": round(float(np.mean(seconds)), SECONDS_DIGITS),
        "train_loss": row["loss"],
        "train_accuracy": row["accuracy"],
        "val_loss": row["val_loss"],
        "val_accuracy": row["val_accuracy"],
        **{key: round(value, DIGITS) for key, value in scores.items()},
    }


def train_and_evaluate(cell: str, params: Params, train: Split, test: Split,
                       embedding: np.ndarray | None = None) -> TrainingResult:
    """Seed (with params.train.seed), build (the embedding starting from `embedding` where given:
    initial_embedding), fit (compiling first for the keras trainer) and evaluate one classifier; writes only
    dvclive/{cell}/seed{seed}/."""
    from lstm_vs_gru.model import build_model, seed_everything

    seed_everything(params.train.seed)
    model = build_model(cell, params.tokenize.num_words, train.x.shape[1], len(train.groups), params.model)
    if embedding is not None:
        model.get_layer("embedding").set_weights([embedding])
    train_params = replace(params.train, trainer=trainer_for_device(params, gpu_count(), cell))
    if train_params.trainer == "keras":  # the fused trainer has its own Adam: a compiled, unused one would be saved
        compile_model(model, train_params, steps_per_epoch(len(train.x), train_params))
    callbacks = [*dvclive_callbacks(cell, train_params.seed), *early_stopping(train_params)]
    history = fit(model, train.x, train.y, train_params, callbacks)
    scores, predictions, probabilities = evaluate(model, test, train_params.batch_size)
    metrics = summarize(cell, train_params.seed, model.count_params(), history, scores,
                        trained_with(train_params.trainer), kept_epoch(history, train_params))
    return TrainingResult(model=model, history=history, metrics=metrics, predictions=predictions,
                          probabilities=probabilities, test=test)


# --- outputs --------------------------------------------------------------------------

def write_outputs(cell: str, seed: int, result: TrainingResult) -> None:
    """Write the model, test predictions and probabilities and metrics, each atomically; metrics last, as the sign
    of a complete run (DVCLive wrote the history while training)."""
    with artifacts.atomic_path(artifacts.model_path(cell, seed)) as tmp:
        result.model.save(tmp)  # the temporary name ends in .keras, which Keras requires
        # for lstm_vs_gru.cli.predict: refuse to run this model on text encoded with another vocabulary
        artifacts.stamp_model(tmp, {"vocabulary_sha256": result.test.vocabulary_sha256})
    artifacts.write_table(artifacts.predictions_path(cell, seed), result.predictions)
    artifacts.write_npz(artifacts.probabilities_path(cell, seed), probabilities=result.probabilities.astype(np.float32),
                        labels=result.test.y, groups=result.test.groups)
    artifacts.write_json(artifacts.run_metrics_path(cell, seed), result.metrics)


