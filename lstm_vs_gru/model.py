"""The lab's text classifier, its parameter count from the formula, and the seed setup.

Keras and TensorFlow are imported inside the functions that need them, never at module
level: the report and other non-training stages import `expected_param_count` from here,
and importing TensorFlow would cost them seconds and pull the training stack into stages
that must not depend on it."""
from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from lstm_vs_gru.params import ModelParams

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

    Embedding V*E + recurrent layer + Dense(dense_units) + Dense(n_classes); pooling and
    dropout have no weights, and maxlen does not change the count."""
    embedding = num_words * model_params.embedding_dim
    recurrent = recurrent_param_count(cell, model_params.embedding_dim, model_params.units,
                                      model_params.gru_reset_after)
    hidden = _dense_count(model_params.units, model_params.dense_units)
    output = _dense_count(model_params.dense_units, n_classes)
    return embedding + recurrent + hidden + output


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
    """The lab's classifier: Embedding -> RNN(return_sequences) -> GlobalMaxPool1D ->
    Dropout -> Dense(relu) -> Dropout -> Dense(n_classes, softmax). Not compiled."""
    _check_cell(cell)
    keras = _keras()  # lazy: see the module docstring
    tokens = keras.Input(shape=(maxlen,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(num_words, model_params.embedding_dim, name="embedding")(tokens)
    x = recurrent_layer(cell, model_params.units, reset_after=model_params.gru_reset_after)(x)
    x = keras.layers.GlobalMaxPooling1D(name="max_pool")(x)
    x = keras.layers.Dropout(model_params.dropout, name="dropout_pooled")(x)
    x = keras.layers.Dense(model_params.dense_units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(model_params.dropout, name="dropout_hidden")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="output")(x)
    return keras.Model(tokens, probabilities, name=f"{cell}_classifier")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic,
    so the same params give the same weights, batches, dropout masks and metrics."""
    keras = _keras()
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
