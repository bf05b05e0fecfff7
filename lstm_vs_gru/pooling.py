"""The pooling layers Keras lacks, as single layers so a classifier stays one chain of layers (which the fused
trainer and the gradients stage walk): max and mean pooling side by side, and attention pooling.

Importing this module imports Keras; lstm_vs_gru.model imports it only when a model is built or loaded.
Both layers are registered with Keras, so a saved .keras file that holds them loads wherever this module
has been imported (lstm_vs_gru.model.load_model does it)."""
from __future__ import annotations

from typing import Any

import keras

PACKAGE = "lstm_vs_gru"


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalMaxMeanPooling1D(keras.layers.Layer):
    """[max over time, mean over time] of a (batch, steps, features) sequence: (batch, 2 * features)."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.concatenate([keras.ops.max(inputs, axis=1), keras.ops.mean(inputs, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], None if input_shape[-1] is None else 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling1D(keras.layers.Layer):
    """A learnt weighted mean over time: score_t = h_t . w, weights = softmax over t, output sum_t weight_t h_t
    (Yang et al. 2016's word attention without its hidden layer): `features` weights. No bias: the softmax
    would cancel it (its gradient is 0)."""

    def build(self, input_shape: tuple) -> None:
        features = int(input_shape[-1])
        self.score_kernel = self.add_weight(name="score_kernel", shape=(features, 1), initializer="glorot_uniform")

    def call(self, inputs: Any) -> Any:
        scores = keras.ops.matmul(inputs, self.score_kernel)  # (batch, steps, 1)
        weights = keras.ops.softmax(scores, axis=1)
        return keras.ops.sum(inputs * weights, axis=1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[-1])
