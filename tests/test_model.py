"""The model builder: parameter counts (formula and Keras), layer order, lazy TF import, seeding."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru.model import (RECURRENT_CELLS, build_model, describe, expected_param_count, load_model,
                               recurrent_param_count, seed_everything)
from lstm_vs_gru.params import CELL_CHOICES, GRADIENT_CELL_CHOICES, ModelParams

ROOT = Path(__file__).resolve().parents[1]
LAB = ModelParams(embedding_dim=128, units=50, dense_units=50, dropout=0.5, gru_reset_after=True)
LAB_WORDS, LAB_MAXLEN, LAB_CLASSES = 20000, 100, 20
SMALL = ModelParams(embedding_dim=7, units=5, dense_units=3, dropout=0.25, gru_reset_after=True)


@pytest.mark.parametrize(("cell", "reset_after", "count"), [
    ("lstm", True, 2_599_370),
    ("gru", True, 2_590_570),
    ("gru", False, 2_590_420),
])
def test_expected_param_count_matches_the_lab_figures(cell: str, reset_after: bool, count: int) -> None:
    params = replace(LAB, gru_reset_after=reset_after)
    assert expected_param_count(cell, LAB_WORDS, params, LAB_CLASSES) == count


def test_recurrent_param_count_formulas() -> None:
    e, u = 128, 50
    assert recurrent_param_count("lstm", e, u) == 4 * (e * u + u * u + u) == 35_800
    assert recurrent_param_count("gru", e, u, reset_after=True) == 3 * (e * u + u * u + 2 * u) == 27_000
    assert recurrent_param_count("gru", e, u, reset_after=False) == 3 * (e * u + u * u + u) == 26_850
    assert recurrent_param_count("simple_rnn", e, u) == e * u + u * u + u == 8_950
    # reset_after only changes the GRU
    assert recurrent_param_count("lstm", e, u, reset_after=False) == 35_800


def test_cells_cover_training_and_gradients() -> None:
    assert set(CELL_CHOICES) | set(GRADIENT_CELL_CHOICES) <= set(RECURRENT_CELLS)


def test_unknown_cell_is_refused() -> None:
    with pytest.raises(ValueError, match="rnn"):
        expected_param_count("rnn", 10, SMALL, 2)
    with pytest.raises(ValueError, match="rnn"):
        build_model("rnn", 10, 5, 2, SMALL)


@pytest.mark.parametrize(("cell", "reset_after"), [
    ("lstm", True), ("gru", True), ("gru", False), ("simple_rnn", True),
])
@pytest.mark.parametrize("sizes", ["lab", "small"])
def test_keras_count_equals_formula(cell: str, reset_after: bool, sizes: str) -> None:
    if sizes == "lab":
        params, words, maxlen, classes = LAB, LAB_WORDS, LAB_MAXLEN, LAB_CLASSES
    else:
        params, words, maxlen, classes = SMALL, 31, 9, 4
    params = replace(params, gru_reset_after=reset_after)
    model = build_model(cell, words, maxlen, classes, params)
    assert model.count_params() == expected_param_count(cell, words, params, classes)


def test_layer_sequence_is_the_labs() -> None:
    import keras

    model = build_model("gru", 40, 12, 6, replace(SMALL, gru_reset_after=False))
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [keras.layers.InputLayer, keras.layers.Embedding, keras.layers.GRU,
                     keras.layers.GlobalMaxPooling1D, keras.layers.Dropout, keras.layers.Dense,
                     keras.layers.Dropout, keras.layers.Dense]
    _, embedding, gru, _, drop1, hidden, drop2, output = model.layers
    assert (embedding.input_dim, embedding.output_dim) == (40, SMALL.embedding_dim)
    assert gru.units == SMALL.units and gru.return_sequences and gru.reset_after is False
    assert drop1.rate == drop2.rate == SMALL.dropout
    assert hidden.units == SMALL.dense_units and hidden.activation.__name__ == "relu"
    assert output.units == 6 and output.activation.__name__ == "softmax"
    assert tuple(model.input.shape) == (None, 12)
    assert tuple(model.output.shape) == (None, 6)


LEVERS = [{"bidirectional": True}, {"layers": 3}, {"pooling": "mean"}, {"pooling": "max_mean"},
          {"pooling": "attention"}, {"spatial_dropout": 0.2}, {"embedding_dropout": 0.3},
          {"bidirectional": True, "layers": 2, "pooling": "max_mean", "embedding_dropout": 0.2, "spatial_dropout": 0.1}]


@pytest.mark.parametrize("cell", RECURRENT_CELLS)
@pytest.mark.parametrize("levers", LEVERS, ids=lambda levers: "+".join(f"{k}={v}" for k, v in levers.items()))
def test_keras_count_equals_formula_with_the_levers(cell: str, levers: dict) -> None:
    params = replace(SMALL, **levers)
    assert build_model(cell, 31, 9, 4, params).count_params() == expected_param_count(cell, 31, params, 4)


def test_levers_build_the_chain_they_name() -> None:
    import keras

    params = replace(SMALL, bidirectional=True, layers=2, pooling="attention", embedding_dropout=0.3,
                     spatial_dropout=0.2)
    model = build_model("lstm", 40, 12, 6, params)
    assert [layer.name for layer in model.layers] == ["tokens", "embedding", "embedding_dropout", "spatial_dropout",
                                                      "lstm", "lstm_2", "attention_pool", "dropout_pooled", "hidden",
                                                      "dropout_hidden", "output"]
    first = model.get_layer("lstm")
    assert isinstance(first, keras.layers.Bidirectional) and first.forward_layer.return_sequences
    assert model.get_layer("spatial_dropout").rate == 0.2
    assert type(model.get_layer("embedding_dropout")) is keras.layers.Dropout
    assert model.get_layer("embedding_dropout").rate == 0.3
    assert tuple(model.get_layer("attention_pool").output.shape) == (None, 2 * SMALL.units)
    assert describe(params, 6) == ("Embedding → dropout → spatial dropout → 2 × bidirectional LSTM/GRU → attention pooling → "
                                   "dropout → dense → dropout → 6-way softmax")
    assert describe(None, 20) == describe(SMALL, 20) == ("Embedding → LSTM/GRU → global max pooling → dropout → "
                                                         "dense → dropout → 20-way softmax")


@pytest.mark.parametrize("pooling", ["max_mean", "attention"])
def test_a_saved_model_with_custom_pooling_loads_and_predicts_the_same(tmp_path: Path, pooling: str) -> None:
    model = build_model("gru", 40, 12, 6, replace(SMALL, pooling=pooling))
    x = np.random.default_rng(1).integers(0, 40, size=(4, 12)).astype(np.int32)
    model.save(tmp_path / "model.keras")
    again = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_max_mean_pooling_is_max_then_mean() -> None:
    from lstm_vs_gru.pooling import GlobalMaxMeanPooling1D

    sequence = np.arange(24, dtype=np.float32).reshape(2, 3, 4) * np.array([1, -1, 1, -1], np.float32)
    pooled = np.asarray(GlobalMaxMeanPooling1D()(sequence))
    np.testing.assert_array_equal(pooled, np.concatenate([sequence.max(axis=1), sequence.mean(axis=1)], axis=1))


def test_lstm_and_simple_rnn_layers() -> None:
    import keras

    lstm = build_model("lstm", 40, 12, 6, SMALL).get_layer("lstm")
    rnn = build_model("simple_rnn", 40, 12, 6, SMALL).get_layer("simple_rnn")
    assert isinstance(lstm, keras.layers.LSTM) and lstm.return_sequences and lstm.units == SMALL.units
    assert isinstance(rnn, keras.layers.SimpleRNN) and rnn.return_sequences


def test_outputs_are_probabilities() -> None:
    model = build_model("lstm", 40, 12, 6, SMALL)
    x = np.random.default_rng(0).integers(0, 40, size=(5, 12)).astype(np.int32)
    probabilities = model.predict(x, verbose=0)
    assert probabilities.shape == (5, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_initial_weights() -> None:
    def weights(seed: int) -> list[np.ndarray]:
        seed_everything(seed)
        return build_model("gru", 40, 12, 6, SMALL).get_weights()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_import_does_not_load_tensorflow() -> None:
    code = ("import sys, lstm_vs_gru.model; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
