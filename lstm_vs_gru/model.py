"""The text classifier (the lab's by default; model.* params add the levers beyond it), its parameter count
from the formula, and the seed setup.

Keras and TensorFlow are imported inside the functions that need them, never at module
level: the report and other non-training stages import `expected_param_count` from here,
and importing TensorFlow would cost them seconds and pull the training stack into stages
that must not depend on it."""
from __future__ import annotations

import os
from dataclasses import fields
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lstm_vs_gru.params import MODEL_LEVERS, POOLING_CHOICES, ModelParams

if TYPE_CHECKING:  # only for annotations; never imported at run time
    import keras

# The recurrent cells this module can build: the two compared by training, and the plain
# RNN the gradients stage needs as the baseline that explodes or vanishes.
RECURRENT_CELLS = ("simple_rnn", "lstm", "gru")
# Gates per cell: each gate has an input kernel, a recurrent kernel and a bias.
_GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}


def _check_cell(cell: str) -> None:
    if cell not in RECURRENT_CELLS:
        raise ValueError(f"unknown cell {cell!r}: expected one of {', '.join(RECURRENT_CELLS)}")


def recurrent_param_count(cell: str, input_dim: int, units: int, reset_after: bool = True) -> int:
    """Trainable weights of one recurrent layer, from the textbook formula."""
    _check_cell(cell)
    # GRU with reset_after=True (Keras 3 default, cuDNN layout) keeps separate input and
    # recurrent biases, hence 2U biases per gate instead of U.
    biases = 2 * units if cell == "gru" and reset_after else units
    return _GATES[cell] * (input_dim * units + units * units + biases)


def _dense_count(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


def expected_param_count(cell: str, num_words: int, model_params: ModelParams, n_classes: int) -> int:
    """Parameters of `build_model(cell, num_words, _, n_classes, model_params)`, without Keras.

    Embedding V*E + the recurrent layers (twice each when bidirectional) + the pooling's (attention: a
    score vector) + Dense(dense_units) + Dense(n_classes); dropout has no weights, and maxlen
    does not change the count."""
    m = model_params
    directions = 2 if m.bidirectional else 1
    features = directions * m.units
    recurrent = sum(directions * recurrent_param_count(cell, m.embedding_dim if layer == 0 else features, m.units,
                                                       m.gru_reset_after)
                    for layer in range(m.layers))
    pooled = 2 * features if m.pooling == "max_mean" else features
    pooling = features if m.pooling == "attention" else 0
    hidden = _dense_count(pooled, m.dense_units)
    output = _dense_count(m.dense_units, n_classes)
    return num_words * m.embedding_dim + recurrent + pooling + hidden + output


POOLING_NAMES = {"max": "global max pooling", "mean": "global mean pooling", "max_mean": "global max + mean pooling",
                 "attention": "attention pooling"}


def levers(model_params: ModelParams | None) -> dict[str, Any]:
    """The MODEL_LEVERS values of model_params; None: the lab's (ModelParams' defaults)."""
    defaults = {f.name: f.default for f in fields(ModelParams)}
    return {key: defaults[key] if model_params is None else getattr(model_params, key) for key in MODEL_LEVERS}


def is_lab_architecture(model_params: ModelParams) -> bool:
    """Whether model_params build the lab's chain of layers (sizes aside)."""
    return levers(model_params) == levers(None)


def describe(model_params: ModelParams | None, n_classes: int) -> str:
    """The classifier's chain of layers in words; None or the defaults give the lab's: "Embedding → LSTM/GRU →
    global max pooling → dropout → dense → dropout → 20-way softmax"."""
    bidirectional, layers, pooling, embedding_dropout, spatial_dropout, embedding_init = (
        levers(model_params)[key] for key in MODEL_LEVERS)
    recurrent = ("bidirectional " if bidirectional else "") + "LSTM/GRU"
    embedding = "Embedding (from the corpus's LSA vectors)" if embedding_init == "lsa" else "Embedding"
    chain = [embedding, *(["dropout"] if embedding_dropout else []), *(["spatial dropout"] if spatial_dropout else []),
             f"{layers} × {recurrent}" if layers > 1 else recurrent,
             POOLING_NAMES[pooling], "dropout", "dense", "dropout", f"{n_classes}-way softmax"]
    return " → ".join(chain)


def _keras() -> ModuleType:
    """Import Keras (and TensorFlow under it) on first use, quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def recurrent_layer(cell: str, units: int, *, reset_after: bool = True, return_sequences: bool = True,
                    name: str | None = None, **kwargs) -> "keras.layers.Layer":
    """A Keras SimpleRNN, LSTM or GRU layer; `reset_after` only applies to GRU."""
    _check_cell(cell)
    keras = _keras()  # lazy: see the module docstring
    common = {"return_sequences": return_sequences, "name": name or cell, **kwargs}
    if cell == "lstm":
        return keras.layers.LSTM(units, **common)
    if cell == "gru":
        return keras.layers.GRU(units, reset_after=reset_after, **common)
    return keras.layers.SimpleRNN(units, **common)


def build_model(cell: str, num_words: int, maxlen: int, n_classes: int,
                model_params: ModelParams) -> "keras.Model":
    """The classifier, one chain of layers: Embedding -> [Dropout] -> [SpatialDropout1D] -> RNN(return_sequences),
    `layers` deep, each [Bidirectional] -> pooling over time -> Dropout -> Dense(relu) -> Dropout ->
    Dense(n_classes, softmax). The defaults (1 layer, one direction, max pooling, no dropout before the RNN) are
    the lab's model, layer for layer and name for name. Not compiled."""
    _check_cell(cell)
    keras = _keras()  # lazy: see the module docstring
    m = model_params
    tokens = keras.Input(shape=(maxlen,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(num_words, m.embedding_dim, name="embedding")(tokens)
    if m.embedding_dropout:
        x = keras.layers.Dropout(m.embedding_dropout, name="embedding_dropout")(x)
    if m.spatial_dropout:
        x = keras.layers.SpatialDropout1D(m.spatial_dropout, name="spatial_dropout")(x)
    for layer in range(m.layers):
        name = cell if layer == 0 else f"{cell}_{layer + 1}"
        recurrent = recurrent_layer(cell, m.units, reset_after=m.gru_reset_after,
                                    name=f"{name}_forward" if m.bidirectional else name)
        x = (keras.layers.Bidirectional(recurrent, name=name) if m.bidirectional else recurrent)(x)
    x = pooling_layer(m.pooling)(x)
    x = keras.layers.Dropout(m.dropout, name="dropout_pooled")(x)
    x = keras.layers.Dense(m.dense_units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(m.dropout, name="dropout_hidden")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="output")(x)
    return keras.Model(tokens, probabilities, name=f"{cell}_classifier")


def pooling_layer(pooling: str) -> "keras.layers.Layer":
    """The layer that turns the recurrent sequence into one vector, named `{pooling}_pool`."""
    keras = _keras()
    from lstm_vs_gru import pooling as custom  # imports Keras: only here, when a model is built

    kinds = {"max": keras.layers.GlobalMaxPooling1D, "mean": keras.layers.GlobalAveragePooling1D,
             "max_mean": custom.GlobalMaxMeanPooling1D, "attention": custom.AttentionPooling1D}
    if pooling not in kinds:
        raise ValueError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLING_CHOICES)}")
    return kinds[pooling](name=f"{pooling}_pool")


def load_model(path: "str | os.PathLike[str]") -> "keras.Model":
    """A saved classifier, uncompiled, whichever pooling layer it holds."""
    keras = _keras()
    import lstm_vs_gru.pooling  # noqa: F401  registers the custom pooling layers with Keras

    return keras.saving.load_model(path, compile=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic,
    so the same params give the same weights, batches, dropout masks and metrics."""
    keras = _keras()
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
