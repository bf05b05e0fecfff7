"""The fused trainer computes what Keras computes: recurrences, the embedding projection, Adam, whole steps."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru.fused import trainer as fused_trainer
from lstm_vs_gru.model import build_model, seed_everything
from lstm_vs_gru.params import ModelParams

NUM_WORDS, MAXLEN, N_CLASSES = 40, 9, 3
TINY = ModelParams(embedding_dim=5, units=6, dense_units=4, dropout=0.0, gru_reset_after=True)


def keras_recurrent(cell: str, reset_after: bool):
    import keras

    if cell == "lstm":
        return keras.layers.LSTM(6, return_sequences=True)
    return keras.layers.GRU(6, return_sequences=True, reset_after=reset_after)


def fused_sequence(cell: str, reset_after: bool, x, layer):
    weights = [w.value for w in (layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias)]
    if cell == "lstm":
        return fused_trainer.lstm_sequence(x, *weights)
    return fused_trainer.gru_sequence(x, *weights, reset_after=reset_after)


@pytest.mark.parametrize("cell, reset_after", [("lstm", True), ("gru", True), ("gru", False)])
def test_fused_recurrence_matches_keras_outputs_and_gradients(cell: str, reset_after: bool) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(3, 7, 5)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(3, 7, 6)).astype(np.float32))
    layer = keras_recurrent(cell, reset_after)
    layer.build(x.shape)
    for variable in layer.weights:  # away from Keras's zero biases, so that every bias path is exercised
        variable.assign(rng.normal(size=variable.shape).astype(np.float32) * 0.5)
    results = []
    for run in (lambda v: layer(v), lambda v: fused_sequence(cell, reset_after, v, layer)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = run(x)
            loss = tf.reduce_sum(outputs * upstream)
        results.append([outputs, *tape.gradient(loss, [x, *layer.trainable_variables])])
    for name, keras_value, fused_value in zip(["outputs", "d_x", "d_kernel", "d_recurrent", "d_bias"], *results):
        np.testing.assert_allclose(fused_value.numpy(), keras_value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_embedding_projection_is_gather_then_matmul_with_per_occurrence_table_gradient() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(2)
    table = tf.Variable(rng.normal(size=(NUM_WORDS, 5)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(5, 8)).astype(np.float32))
    ids = rng.integers(0, 6, size=(4, MAXLEN)).astype(np.int32)  # few distinct tokens: many repeats
    rows, slots = np.unique(ids.T.reshape(-1), return_inverse=True)
    rows = np.pad(rows, (0, 3)).astype(np.int32)  # padded like a plan pads them
    upstream = tf.constant(rng.normal(size=(MAXLEN, 4, 8)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        fused = fused_trainer.embedding_projection(table, ids, rows, slots.astype(np.int32), kernel)
        plain = tf.transpose(tf.matmul(tf.gather(table, ids), kernel), (1, 0, 2))
        fused_loss, plain_loss = tf.reduce_sum(fused * upstream), tf.reduce_sum(plain * upstream)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)
    fused_table, fused_kernel = tape.gradient(fused_loss, [table, kernel])
    plain_table, plain_kernel = tape.gradient(plain_loss, [table, kernel])
    np.testing.assert_allclose(fused_kernel.numpy(), plain_kernel.numpy(), rtol=1e-5, atol=1e-5)
    # one gradient row per occurrence, as tf.gather gives (what Keras's Adam squares), time-major here
    assert isinstance(fused_table, tf.IndexedSlices) and fused_table.values.shape == (4 * MAXLEN, 5)
    assert fused_table.indices.numpy().tolist() == ids.T.reshape(-1).tolist()
    plain_rows = plain_table.values.numpy().reshape(4, MAXLEN, 5).transpose(1, 0, 2).reshape(-1, 5)
    np.testing.assert_allclose(fused_table.values.numpy(), plain_rows, rtol=1e-5, atol=1e-5)


def test_exact_adam_matches_keras_adam_on_repeated_sparse_rows() -> None:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(3)
    start = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    ours = [tf.Variable(value) for value in start]
    theirs = [keras.Variable(value) for value in start]
    keras_adam = keras.optimizers.Adam(learning_rate=0.01)
    exact_adam = fused_trainer.ExactAdam(ours, learning_rate=0.01)
    after_first = None
    for step in range(4):
        indices = tf.constant([2, 2, 5] if step == 0 else [1, 4, 1, 1, 0])  # repeated rows
        values = tf.constant(rng.normal(size=(len(indices), 4)).astype(np.float32))
        dense = tf.constant(rng.normal(size=(3,)).astype(np.float32))
        sparse = tf.IndexedSlices(values, indices, tf.constant([6, 4]))
        keras_adam.apply_gradients([(sparse, theirs[0]), (dense, theirs[1])])
        exact_adam.apply([sparse, dense])
        after_first = ours[0].numpy()[5] if after_first is None else after_first
    for mine, keras_variable in zip(ours, theirs):
        np.testing.assert_allclose(mine.numpy(), keras_variable.numpy(), rtol=1e-6, atol=1e-7)
    # Adam's semantics over every row: row 5, touched only in the first step, keeps moving on its momentum
    assert np.abs(ours[0].numpy()[5] - after_first).min() > 1e-3
    np.testing.assert_array_equal(ours[0].numpy()[3], start[0][3])  # never touched: m = 0, no move


def test_lazy_adam_updates_only_the_gradient_rows_as_lazy_adam_does() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(5)
    start = rng.normal(size=(6, 4)).astype(np.float32)
    table = tf.Variable(start)
    lazy_adam = fused_trainer.ExactAdam([table], learning_rate=0.01, lazy=True)

    @tf.function(jit_compile=True)  # as FastTrainer runs it
    def step(update: tf.IndexedSlices) -> None:
        with tf.control_dependencies(lazy_adam.apply_sparse([(0, update)])):
            lazy_adam.count_step()

    w, m, v = start.astype(np.float64), np.zeros((6, 4)), np.zeros((6, 4))
    for t, indices in enumerate(([2, 2, 5], [1, 4, 1, 1, 0], [5, 3]), start=1):
        values = rng.normal(size=(len(indices), 4)).astype(np.float32)
        step(tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([6, 4])))
        alpha = 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)  # bias correction by the global step
        for row in sorted(set(indices)):
            mine = values[np.array(indices) == row].astype(np.float64)
            m[row] += (mine.sum(0) - m[row]) * 0.1
            v[row] += ((mine ** 2).sum(0) - v[row]) * 0.001  # per-occurrence squares, as Keras' Adam
            w[row] -= m[row] * alpha / (np.sqrt(v[row]) + 1e-7)
        np.testing.assert_allclose(table.numpy(), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lazy_adam.m[0].numpy(), m, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(lazy_adam.v[0].numpy(), v, rtol=1e-5, atol=1e-9)
    # row 2, touched only in the first step, stopped there (Keras' Adam moves it on its momentum)
    assert not np.allclose(w[2], start[2]) and lazy_adam.iterations.numpy() == 3


def test_fused_trainer_with_lazy_adam_leaves_rows_outside_the_batch_alone() -> None:
    x, y = tiny_data(8)
    x[:4] = np.clip(x[:4], 1, 19)  # first batch: tokens 1-19; second: tokens 20-39
    x[4:] = np.clip(x[4:], 20, NUM_WORDS - 1)
    tables = {}
    for lazy in (False, True):
        model = tiny_model("lstm")
        trainer = fused_trainer.FastTrainer(model, 0.01, lazy_adam=lazy)
        dropout = [(layer.rate, int(layer.input.shape[-1])) for layer in fused_trainer.dropout_layers(model)]
        after = [trainer.weights[0].numpy().copy()]
        for batch in (slice(0, 4), slice(4, 8)):  # one step each, in this order
            plan = fused_trainer.epoch_plan(x[batch], y[batch], 4, seed=0, epoch=0, dropout=dropout, shuffle=False)
            trainer.run_epoch(plan, fused_trainer.distinct_size([plan], 4 * MAXLEN // 2))
            after.append(trainer.weights[0].numpy().copy())  # the embedding table
        tables[lazy] = after
    np.testing.assert_allclose(tables[True][1], tables[False][1], rtol=1e-6, atol=1e-7)  # from m = v = 0: alike
    first_batch_rows = np.unique(x[:4])
    # rows step 1 moved (not all: a token that is never a max-pooled step gets no gradient)
    moved = np.abs(tables[False][1] - tables[False][0]).max(axis=1) > 1e-4
    assert moved[first_batch_rows].sum() > len(first_batch_rows) // 2 and not moved[np.unique(x[4:])].any()
    # step 2 does not touch the first batch's rows: Keras' Adam moves them on their momentum, lazy Adam does not
    np.testing.assert_array_equal(tables[True][2][first_batch_rows], tables[True][1][first_batch_rows])
    exact_steps = np.abs(tables[False][2] - tables[False][1]).max(axis=1)
    assert (exact_steps[first_batch_rows][moved[first_batch_rows]] > 1e-4).all()
    second_batch_rows = np.unique(x[4:])
    assert (np.abs(tables[True][2] - tables[True][1]).max(axis=1)[second_batch_rows] > 1e-4).all()


def native_ops_built() -> bool:
    """Whether the native ops load here; with a C++ compiler they must (tests/test_native_ops.py)."""
    from lstm_vs_gru.fused import native_ops

    return native_ops.load() is not None


def tiny_data(n: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # no token 0: long runs of one token give exactly tied max-pool states, whose gradient split is arbitrary
    return rng.integers(1, NUM_WORDS, size=(n, MAXLEN)).astype(np.int32), rng.integers(0, N_CLASSES, n).astype(np.int32)


def tiny_model(cell: str, model_params: ModelParams = TINY):
    seed_everything(0)
    return build_model(cell, NUM_WORDS, MAXLEN, N_CLASSES, model_params)


@pytest.mark.parametrize("native", [True, False], ids=["native_adam", "xla_adam"])
@pytest.mark.parametrize("cell, batch_size", [("lstm", 4), ("gru", 4), ("lstm", 5)])
def test_fused_epoch_matches_model_fit(cell: str, batch_size: int, native: bool) -> None:
    """Same start, same batches (no shuffle, dropout 0): model.fit and the fused trainer end at the same
    weights, up to float rounding. batch_size 5 runs unsplit and fills up its last batch with weight-0 rows.
    Both ways of updating the table: the native op (lstm_vs_gru/fused/native_ops.cc) and XLA."""
    check_epoch_matches_model_fit(cell, batch_size, native, TINY)


# the levers the fused trainer reproduces (training.fused_gaps names those it does not)
LEVERS = {"stacked": {"layers": 2}, "mean": {"pooling": "mean"}, "max_mean": {"pooling": "max_mean"},
          "attention": {"pooling": "attention"}}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("lever", LEVERS)
def test_fused_epoch_matches_model_fit_with_each_lever(cell: str, lever: str) -> None:
    check_epoch_matches_model_fit(cell, 4, True, replace(TINY, **LEVERS[lever]))


def check_epoch_matches_model_fit(cell: str, batch_size: int, native: bool, model_params: ModelParams) -> None:
    import keras

    x, y = tiny_data(13)
    plain = tiny_model(cell, model_params)
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    plain.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    fused = tiny_model(cell, model_params)
    trainer = fused_trainer.FastTrainer(fused, 0.01, native=native)
    assert (trainer.native_ops is not None) == (native and native_ops_built())
    dropout = [(layer.rate, int(layer.input.shape[-1])) for layer in fused_trainer.dropout_layers(fused)]
    plan = fused_trainer.epoch_plan(x, y, batch_size, seed=0, epoch=0, dropout=dropout, shuffle=False)
    assert plan.ids.shape[:2] == (-(-13 // batch_size), fused_trainer.split_count(batch_size))
    loss_sum, _ = trainer.run_epoch(plan, fused_trainer.distinct_size([plan], MAXLEN * batch_size))
    assert np.isfinite(loss_sum) and loss_sum > 0
    start = tiny_model(cell, model_params).trainable_variables
    for initial, expected, got in zip(start, plain.trainable_variables, fused.trainable_variables):
        moved = np.abs(expected.numpy() - initial.numpy()).max()
        assert moved > 1e-3, expected.path  # every weight trained
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=expected.path)


def test_fast_fit_is_deterministic_and_its_validation_figures_are_the_model_s() -> None:
    import keras

    x, y = tiny_data(40, seed=5)
    params = ModelParams(embedding_dim=5, units=6, dense_units=4, dropout=0.5, gru_reset_after=True)
    runs = []
    for _ in range(2):
        model = tiny_model("lstm", params)
        history = fused_trainer.fast_fit(model, x, y, epochs=2, batch_size=8, learning_rate=0.01,
                                         validation_split=0.25, seed=3)
        runs.append((history, [w.numpy() for w in model.trainable_variables]))
    (first, first_weights), (second, second_weights) = runs
    assert first == second and all(np.array_equal(a, b) for a, b in zip(first_weights, second_weights))
    assert list(first) == ["loss", "accuracy", "val_loss", "val_accuracy"] and len(first["loss"]) == 2
    # the last quarter is validation, as in Keras; its figures are what the trained model itself predicts
    probabilities = model.predict(x[30:], verbose=0)
    losses = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y[30:], probabilities))
    assert first["val_loss"][-1] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert first["val_accuracy"][-1] == pytest.approx(float((probabilities.argmax(1) == y[30:]).mean()))


def test_validation_in_several_calls_gives_the_figures_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """More validation rows than EVAL_BATCH: several calls, the last one filled up with weight-0 rows."""
    x, y = tiny_data(11, seed=6)
    trainer = fused_trainer.FastTrainer(tiny_model("lstm"), 0.01)
    whole = fused_trainer.evaluate_split(trainer, x, y)
    monkeypatch.setattr(fused_trainer, "EVAL_BATCH", 3)  # 4 calls of 3 rows, the last one with 1 filler row
    split = fused_trainer.evaluate_split(trainer, x, y)
    assert split["val_accuracy"] == whole["val_accuracy"] and 0 < whole["val_loss"] < 10
    assert split["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-6)


def test_fast_fit_calls_callbacks_with_one_shared_logs_dict() -> None:
    import keras

    x, y = tiny_data(12)
    seen: list[tuple[int, dict]] = []
    add = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(extra=epoch * 10))
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, dict(logs))))
    history = fused_trainer.fast_fit(tiny_model("gru"), x, y, epochs=2, batch_size=4, learning_rate=0.01,
                                     validation_split=0.0, seed=0, callbacks=[add, record])
    assert [epoch for epoch, _ in seen] == [0, 1] and seen[1][1]["extra"] == 10
    assert history["extra"] == [0, 10] and "val_loss" not in history


def test_epoch_plan_batches_every_sample_once_with_consistent_slots_and_masks() -> None:
    x, y = tiny_data(23)
    plan = fused_trainer.epoch_plan(x, y, 6, seed=1, epoch=0, dropout=[(0.5, 7), (0.25, 3)])
    steps, parts, size = plan.ids.shape[:3]
    assert (steps, parts, size) == (4, 2, 3)
    real = plan.weights.reshape(-1) == 1.0
    assert real.sum() == 23 and not real[23:].any()  # the filler rows come last
    ids, labels = plan.ids.reshape(-1, MAXLEN)[real], plan.labels.reshape(-1)[real]
    order = np.lexsort(ids.T[::-1])
    assert np.array_equal(ids[order], x[np.lexsort(x.T[::-1])])  # a permutation of the samples...
    assert not np.array_equal(ids, x)  # ...shuffled
    match = [np.flatnonzero((x == row).all(1))[0] for row in ids]
    assert np.array_equal(labels, y[match])
    for step in range(steps):
        for part in range(parts):
            time_major = plan.ids[step, part].T.reshape(-1)
            assert np.array_equal(plan.rows[step][part][plan.slots[step, part]], time_major)
    width = fused_trainer.distinct_size([plan], MAXLEN * size)  # at most a part's positions
    assert width == MAXLEN * size
    padded = plan.padded_rows(width)
    n_distinct = len(plan.rows[0][0])
    assert padded.shape == (steps, parts, width) and padded[0, 0, n_distinct:].tolist() == [0] * (width - n_distinct)
    assert [mask.shape for mask in plan.keep] == [(4, 2, 3, 7), (4, 2, 3, 3)]
    assert all(mask.dtype == bool for mask in plan.keep)
    again = fused_trainer.epoch_plan(x, y, 6, seed=1, epoch=0, dropout=[(0.5, 7), (0.25, 3)])
    assert np.array_equal(again.ids, plan.ids) and all(np.array_equal(a, b) for a, b in zip(again.keep, plan.keep))
    other = fused_trainer.epoch_plan(x, y, 6, seed=1, epoch=1, dropout=[(0.5, 7), (0.25, 3)])
    assert not np.array_equal(other.ids, plan.ids)


def test_dropout_masks_keep_the_expected_share() -> None:
    x, y = tiny_data(2000)
    plan = fused_trainer.epoch_plan(x, y, 32, seed=0, epoch=0, dropout=[(0.5, 50), (0.2, 50)])
    real = plan.weights == 1.0
    assert plan.keep[0][real].mean() == pytest.approx(0.5, abs=0.01)
    assert plan.keep[1][real].mean() == pytest.approx(0.8, abs=0.01)


def test_supports_only_the_chains_it_reproduces() -> None:
    import keras

    assert fused_trainer.supports(tiny_model("lstm")) and fused_trainer.supports(tiny_model("gru"))
    tokens = keras.Input(shape=(MAXLEN,), dtype="int32")

    def chain(*layers):
        x = tokens
        for layer in layers:
            x = layer(x)
        return keras.Model(tokens, x)

    assert not fused_trainer.supports(chain(keras.layers.Embedding(NUM_WORDS, 4), keras.layers.SimpleRNN(3)))
    assert not fused_trainer.supports(chain(keras.layers.Embedding(NUM_WORDS, 4, mask_zero=True),
                                            keras.layers.LSTM(3, return_sequences=True)))
    assert not fused_trainer.supports(chain(keras.layers.Embedding(NUM_WORDS, 4),
                                            keras.layers.LSTM(3, return_sequences=True, recurrent_dropout=0.1)))
    assert not fused_trainer.supports(chain(keras.layers.Embedding(NUM_WORDS, 4),
                                            keras.layers.GRU(3, return_sequences=True),
                                            keras.layers.BatchNormalization()))
    with pytest.raises(ValueError, match="fast training needs"):
        fused_trainer.FastTrainer(chain(keras.layers.Embedding(NUM_WORDS, 4), keras.layers.SimpleRNN(3)), 0.01)


def test_split_count_is_a_fixed_rule() -> None:
    assert [fused_trainer.split_count(n) for n in (1, 2, 3, 32, 33)] == [1, 2, 1, 2, 1]
