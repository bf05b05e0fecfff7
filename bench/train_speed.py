"""Training speed: the lab's plain Keras code against the pipeline's fast trainer, on the same padded arrays.

    python bench/train_speed.py [--epochs 2] [--seeds 0 1 2] [--cells lstm gru] [--data data/padded]
                                [--threads N] [--check] [--out bench/results/train_speed.json]

Every training run is a fresh Python process (clean TensorFlow state, its own peak RSS), and the runs
alternate reference, ours, reference, ours for each cell and seed, so that the load of other processes on
the machine falls on both sides alike. The table shows medians over seeds; the JSON keeps every run.

The reference is a self-contained copy of the lab's code path: `model.compile(loss="categorical_crossentropy",
optimizer=Adam(lr), metrics=["accuracy"])` then `model.fit(x, one_hot(y), batch_size, epochs,
validation_split)`. "Ours" is `fast_fit` below (to be replaced by an import from stages.train): the same
model, data, batch size, epochs, learning rate and Adam (every embedding row's m and v decay and every row
moves, every step), computed differently:

- the recurrent layer runs as one fused loop per direction: the input projection of all time steps is one
  matmul before the loop (done once per distinct token of the batch), and the backward pass is written by
  hand (each reverse step one fused multiply and one small matmul, the weight gradients single matmuls
  after the loop), the layout cuDNN uses;
- the whole training step (forward, backward, Adam) is one XLA computation, compiled once (the last,
  partial batch is filled up with weight-0 rows instead of getting a shape of its own);
- Adam's embedding update never materialises the dense 20000 x 128 gradient: the per-row sums are gathered
  inside the fused update passes (Keras' own arithmetic, in Keras' order; see `ExactAdam`).

`--check` runs a few steps of both from identical weights on identical batches and prints how far the
weights drift apart (same math => float rounding only), then trains ours twice to show determinism.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: make `stages` importable
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_OUT = ROOT / "bench" / "results" / "train_speed.json"
RESULT_PREFIX = "RESULT "
EVAL_BATCH = 512  # batch size of validation/test prediction: speed only, results do not depend on it


# --- the fast recurrences --------------------------------------------------------------------------
# Each recurrence takes the input projection of all time steps at once (one big matmul, time-major), runs one
# loop forward that also saves the local derivative factors of each step, and one loop backward in which a step
# is a single fused multiply and one small matmul; the weight gradients are then single large matmuls. The
# arithmetic of the forward pass is Keras' own; the backward pass is the same derivative, summed in another
# order (float rounding differs, the math does not).

def _time_major_projection(x: Any, kernel: Any, bias: Any = None) -> Any:
    """x (B, T, D) @ kernel for all steps at once -> (T, B, G) (+ bias, where Keras adds it to x @ K)."""
    import tensorflow as tf

    steps, depth = x.shape[1], x.shape[2]
    projected = tf.matmul(tf.reshape(tf.transpose(x, (1, 0, 2)), (-1, depth)), kernel)
    if bias is not None:
        projected = projected + bias
    return tf.reshape(projected, (steps, -1, kernel.shape[1]))


def embedding_projection(table: Any, ids: Any, rows: Any, slots: Any, kernel: Any, bias: Any = None) -> Any:
    """gather(table, ids) @ kernel (+ bias) for ids (B, T) -> (T, B, G), the matmul done once per distinct
    token of the batch: `rows` (S,) lists them (padded with any valid row), `slots` (T*B,) maps each
    time-major position to its row's slot (see plan_epochs). The table's gradient stays one row per
    occurrence (what Keras' sparse Adam squares); the kernel's gradient sums per distinct token first (same
    sum, fewer flops)."""
    import tensorflow as tf

    steps, batch = ids.shape[1], tf.shape(ids)[0]
    positions = tf.reshape(tf.transpose(ids), [-1])  # time-major, like the projection's rows

    @tf.custom_gradient
    def project(table, kernel):
        distinct = tf.gather(table, rows)
        projected = tf.gather(tf.matmul(distinct, kernel), slots)

        def grad(d_projected):
            d_table = tf.IndexedSlices(tf.matmul(d_projected, kernel, transpose_b=True), positions,
                                       tf.shape(table, out_type=positions.dtype))
            per_slot = tf.math.unsorted_segment_sum(d_projected, slots, rows.shape[0])
            return d_table, tf.matmul(distinct, per_slot, transpose_a=True)

        return projected, grad

    projected = project(table, kernel)
    if bias is not None:
        projected = projected + bias
    return tf.reshape(projected, (steps, batch, kernel.shape[1]))


def _previous(states: Any) -> Any:
    """(T, B, U) states -> the state before each step (zeros first)."""
    import tensorflow as tf

    return tf.concat([tf.zeros_like(states[:1]), states[:-1]], 0)


def _weight_gradient(inputs: Any, grads: Any) -> Any:
    """sum over steps and batch of inputs_t^T @ grads_t, as one matmul."""
    import tensorflow as tf

    return tf.matmul(tf.reshape(inputs, (-1, inputs.shape[-1])), tf.reshape(grads, (-1, grads.shape[-1])),
                     transpose_a=True)


def lstm_sequence(x: Any, kernel: Any, recurrent_kernel: Any, bias: Any) -> Any:
    """keras.layers.LSTM(return_sequences=True)(x) for x (B, T, D) -> (B, T, U)."""
    import tensorflow as tf

    return tf.transpose(lstm_recurrence(_time_major_projection(x, kernel), recurrent_kernel, bias), (1, 0, 2))


def lstm_recurrence(xw: Any, recurrent_kernel: Any, bias: Any) -> Any:
    """The LSTM loop on the input projection xw = x @ K (T, B, 4U) -> hs (T, B, U); per step, as Keras:
    z = (x@K + h@R) + b, gates i, f, c, o = sigmoid, sigmoid, tanh, sigmoid, c' = f*c + i*g, h' = o*tanh(c')."""
    import tensorflow as tf

    units = recurrent_kernel.shape[0]

    @tf.custom_gradient
    def recur(xw, rk, b):
        zeros = tf.zeros((tf.shape(xw)[1], units), xw.dtype)

        def step(carry, xw_t):
            h, c = carry[0], carry[1]
            z = xw_t + tf.matmul(h, rk)
            z = z + b
            s = tf.sigmoid(z)  # gates i, f, o (the c column's sigmoid is computed and not used: one fused op)
            i, f, o = s[:, :units], s[:, units:2 * units], s[:, 3 * units:]
            g = tf.tanh(z[:, 2 * units:3 * units])
            c_new = f * c + i * g
            tc = tf.tanh(c_new)
            # dz/dc for gates i, f, c; dz/dh for gate o; dc/dh; dc_prev/dc
            factors = tf.concat([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tc * o * (1 - o),
                                 o * (1 - tc * tc), f], 1)
            return o * tc, c_new, factors

        hs, _, factors = tf.scan(step, xw, initializer=(zeros, zeros, tf.zeros((tf.shape(xw)[1], 6 * units), xw.dtype)))

        def grad(dhs):
            def back(carry, inputs):
                dh_out, k = inputs
                dh = dh_out + carry[0]
                dc = dh * k[:, 4 * units:5 * units] + carry[1]
                dz = tf.concat([dc, dc, dc, dh], 1) * k[:, :4 * units]
                return tf.matmul(dz, rk, transpose_b=True), dc * k[:, 5 * units:], dz

            _, _, dzs = tf.scan(back, (dhs, factors), initializer=(zeros, zeros, tf.zeros_like(xw[0])), reverse=True)
            return dzs, _weight_gradient(_previous(hs), dzs), tf.reduce_sum(dzs, (0, 1))

        return hs, grad

    return recur(xw, recurrent_kernel, bias)


def gru_sequence(x: Any, kernel: Any, recurrent_kernel: Any, bias: Any, reset_after: bool = True) -> Any:
    """keras.layers.GRU(return_sequences=True, reset_after=...)(x) for x (B, T, D) -> (B, T, U), with Keras'
    implementation-2 arithmetic per step (gates z, r, h; h' = z*h + (1-z)*hh)."""
    import tensorflow as tf

    xw = _time_major_projection(x, kernel, gru_biases(bias, reset_after)[0])
    return tf.transpose(gru_recurrence(xw, recurrent_kernel, bias, reset_after), (1, 0, 2))


def gru_biases(bias: Any, reset_after: bool) -> tuple[Any, Any]:
    """(input bias, recurrent bias or None): Keras adds the input bias to x @ K before the gates."""
    return (bias[0], bias[1]) if reset_after else (bias, None)


def gru_recurrence(xw: Any, recurrent_kernel: Any, bias: Any, reset_after: bool) -> Any:
    """The GRU loop on xw = x @ K + input bias (T, B, 3U) -> hs (T, B, U)."""
    units = recurrent_kernel.shape[0]
    if reset_after:
        return _gru_reset_after(xw, recurrent_kernel, gru_biases(bias, True)[1], units)
    return _gru_reset_before(xw, recurrent_kernel, units)


def _gru_reset_after(xw: Any, recurrent_kernel: Any, recurrent_bias: Any, units: int) -> Any:
    """hh = tanh(x_h + r * (h@R_h + b_h)) (Keras 3 default, cuDNN-compatible)."""
    import tensorflow as tf

    @tf.custom_gradient
    def recur(xw, rk, rb):
        zeros = tf.zeros((tf.shape(xw)[1], units), xw.dtype)

        def step(carry, xw_t):
            h = carry[0]
            inner = tf.matmul(h, rk) + rb
            x_z, x_r, x_h = tf.split(xw_t, 3, axis=1)
            a_z, a_r, a_h = tf.split(inner, 3, axis=1)
            z = tf.sigmoid(x_z + a_z)
            r = tf.sigmoid(x_r + a_r)
            hh = tf.tanh(x_h + r * a_h)
            d_hh = (1 - z) * (1 - hh * hh)
            # d pre-activation / dh for z, r, h; then r (reset gate on the recurrent part) and z (dh_prev/dh)
            factors = tf.concat([(h - hh) * z * (1 - z), d_hh * a_h * r * (1 - r), d_hh, r, z], 1)
            return z * h + (1 - z) * hh, factors

        hs, factors = tf.scan(step, xw, initializer=(zeros, tf.zeros((tf.shape(xw)[1], 5 * units), xw.dtype)))

        def grad(dhs):
            ones = tf.ones_like(factors[..., :units])
            recurrent_share = tf.concat([ones, ones, factors[..., 3 * units:4 * units]], -1)  # d inner / d pre

            def back(carry, inputs):
                dh_out, k, share = inputs
                dh = dh_out + carry[0]
                dx = tf.concat([dh, dh, dh], 1) * k[:, :3 * units]
                return dh * k[:, 4 * units:] + tf.matmul(dx * share, rk, transpose_b=True), dx

            _, dxs = tf.scan(back, (dhs, factors, recurrent_share), initializer=(zeros, tf.zeros_like(xw[0])),
                             reverse=True)
            das = dxs * recurrent_share
            return dxs, _weight_gradient(_previous(hs), das), tf.reduce_sum(das, (0, 1))

        return hs, grad

    return recur(xw, recurrent_kernel, recurrent_bias)


def _gru_reset_before(xw: Any, recurrent_kernel: Any, units: int) -> Any:
    """hh = tanh(x_h + (r*h)@R_h) (the lab's Keras 2 GRU)."""
    import tensorflow as tf

    @tf.custom_gradient
    def recur(xw, rk):
        zeros = tf.zeros((tf.shape(xw)[1], units), xw.dtype)
        rk_zr, rk_h = rk[:, :2 * units], rk[:, 2 * units:]

        def step(carry, xw_t):
            h = carry[0]
            x_z, x_r, x_h = tf.split(xw_t, 3, axis=1)
            a_z, a_r = tf.split(tf.matmul(h, rk_zr), 2, axis=1)
            z = tf.sigmoid(x_z + a_z)
            r = tf.sigmoid(x_r + a_r)
            rh = r * h
            hh = tf.tanh(x_h + tf.matmul(rh, rk_h))
            factors = tf.concat([(h - hh) * z * (1 - z), (1 - z) * (1 - hh * hh), h * r * (1 - r), r, z], 1)
            return z * h + (1 - z) * hh, factors, rh

        hs, factors, rhs = tf.scan(step, xw, initializer=(zeros, tf.zeros((tf.shape(xw)[1], 5 * units), xw.dtype),
                                                          zeros))

        def grad(dhs):
            def back(carry, inputs):
                dh_out, k = inputs
                dh = dh_out + carry[0]
                d_z, d_h = dh * k[:, :units], dh * k[:, units:2 * units]
                d_rh = tf.matmul(d_h, rk_h, transpose_b=True)
                d_zr = tf.concat([d_z, d_rh * k[:, 2 * units:3 * units]], 1)
                dh_prev = (dh * k[:, 4 * units:] + d_rh * k[:, 3 * units:4 * units]
                           + tf.matmul(d_zr, rk_zr, transpose_b=True))
                return dh_prev, tf.concat([d_zr, d_h], 1)

            _, dxs = tf.scan(back, (dhs, factors), initializer=(zeros, tf.zeros_like(xw[0])), reverse=True)
            d_rk = tf.concat([_weight_gradient(_previous(hs), dxs[..., :2 * units]),
                              _weight_gradient(rhs, dxs[..., 2 * units:])], 1)
            return dxs, d_rk

        return hs, grad

    return recur(xw, recurrent_kernel)


# --- the model as a function -------------------------------------------------------------------------

def has_fast_path(layer: Any) -> bool:
    """A Keras LSTM/GRU whose call the fused loops reproduce: tanh/sigmoid, bias, full sequences, no dropout."""
    import keras

    cell = getattr(layer, "cell", None)
    return (isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)) and layer.return_sequences
            and not (layer.go_backwards or layer.stateful or layer.return_state)
            and cell.use_bias and cell.dropout == 0 and cell.recurrent_dropout == 0
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid)


def chain_layers(model: Any) -> list[Any]:
    """The model's layers after the input, checked to form one chain (each feeds only the next one)."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    linked = all(len(layer._inbound_nodes) == 1 for layer in layers) and all(
        after.input is before.output for before, after in zip(layers, layers[1:]))
    if not layers or not linked or len(model.outputs) != 1 or model.outputs[0] is not layers[-1].output:
        raise ValueError("fast training needs a model whose layers form one chain")
    return layers


def make_forward(model: Any) -> Callable[..., Any]:
    """`forward(ids, training, distinct=None) -> outputs` for a chain model that starts with an Embedding:
    the same layers and weights; the embedding as a gather; plain LSTM/GRU layers through the fused loops
    (fused with the embedding into embedding_projection when `distinct` = (rows, slots) from plan_epochs is
    given and the recurrent layer comes first); every other layer called as itself."""
    import keras
    import tensorflow as tf

    layers = chain_layers(model)
    embedding = layers[0]
    if not isinstance(embedding, keras.layers.Embedding) or embedding.mask_zero:
        raise ValueError("fast training needs a model that starts with an Embedding without mask_zero")

    def recurrent(layer: Any, x: Any, ids: Any, distinct: Any) -> Any:
        cell = layer.cell
        kernel, recurrent_kernel, bias = cell.kernel.value, cell.recurrent_kernel.value, cell.bias.value
        is_lstm = isinstance(layer, keras.layers.LSTM)
        if distinct is None:
            if is_lstm:
                return lstm_sequence(x, kernel, recurrent_kernel, bias)
            return gru_sequence(x, kernel, recurrent_kernel, bias, cell.reset_after)
        table = embedding.embeddings.value
        if is_lstm:
            hs = lstm_recurrence(embedding_projection(table, ids, *distinct, kernel), recurrent_kernel, bias)
        else:
            xw = embedding_projection(table, ids, *distinct, kernel, gru_biases(bias, cell.reset_after)[0])
            hs = gru_recurrence(xw, recurrent_kernel, bias, cell.reset_after)
        return tf.transpose(hs, (1, 0, 2))

    def forward(ids: Any, training: bool, distinct: Any = None) -> Any:
        rest = layers[1:]
        if distinct is not None and rest and has_fast_path(rest[0]):
            x, rest = recurrent(rest[0], None, ids, distinct), rest[1:]
        else:
            x = tf.gather(embedding.embeddings.value, ids)
        for layer in rest:
            x = recurrent(layer, x, ids, None) if has_fast_path(layer) else layer(x, training=training)
        return x

    return forward


# --- Adam -------------------------------------------------------------------------------------------

class ExactAdam:
    """keras.optimizers.Adam's update (TensorFlow backend), variable by variable, in Keras' order:

        m += (g - m) * (1 - beta_1);  v += (g*g - v) * (1 - beta_2);  w -= m * alpha / (sqrt(v) + epsilon)

    over every element, every step. For an embedding's IndexedSlices gradient Keras squares each
    occurrence's row before summing repeated rows (its `ops.square` keeps the slices), so v gets the sum of
    squares, not the square of the sum; this keeps that. The dense gradient of the table is never stored:
    per-row sums live in a compact array and are gathered inside XLA's fused update passes."""

    def __init__(self, variables: Sequence[Any], learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7) -> None:
        import tensorflow as tf

        self.variables = list(variables)
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float32, trainable=False)  # Keras keeps it float32
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables]
        self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables]

    def apply(self, grads: Sequence[Any]) -> None:
        import tensorflow as tf

        local_step = tf.cast(self.iterations + 1, tf.float32)
        beta_1_power = tf.pow(tf.cast(self.beta_1, tf.float32), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, tf.float32), local_step)
        alpha = self.learning_rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        for variable, m, v, grad in zip(self.variables, self.m, self.v, grads):
            if isinstance(grad, tf.IndexedSlices):
                grad, grad_squared = row_sums(grad, variable.shape[0])
            else:
                grad_squared = tf.square(grad)
            m.assign_add((grad - m) * (1 - self.beta_1))
            v.assign_add((grad_squared - v) * (1 - self.beta_2))
            variable.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon))
        self.iterations.assign_add(1)


def row_sums(grad: Any, n_rows: int) -> tuple[Any, Any]:
    """The dense view of an IndexedSlices gradient and of its per-occurrence squares, each as a gather
    (row -> slot) from compact per-slot sums (summed in the slices' order, as tf.convert_to_tensor would)."""
    import tensorflow as tf

    ids = tf.reshape(grad.indices, [-1])
    values = tf.reshape(grad.values, [-1, grad.values.shape[-1]])
    n = values.shape[0]
    # a row's slot is its first occurrence; untouched rows point at slot n, which stays zero
    first = tf.minimum(tf.math.unsorted_segment_min(tf.range(n, dtype=ids.dtype), ids, n_rows), n)
    slots = tf.gather(first, ids)
    sums = tf.math.unsorted_segment_sum(values, slots, n + 1)
    squares = tf.math.unsorted_segment_sum(tf.square(values), slots, n + 1)
    return tf.gather(sums, first), tf.gather(squares, first)


# --- the fast trainer -------------------------------------------------------------------------------

def padded_batches(x: np.ndarray, y: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Consecutive batches of `size`; the last one is filled up with weight-0 rows so that every batch has
    one shape (one XLA compilation). A weight-0 row adds exact zeros to every gradient and sum."""
    n = len(x)
    total = -(-n // size) * size
    weights = np.zeros(total, np.float32)
    weights[:n] = 1.0
    x = np.concatenate([x, np.zeros((total - n,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(total - n, y.dtype)])
    return [(x[i:i + size], y[i:i + size], weights[i:i + size]) for i in range(0, total, size)]


class FastTrainer:
    """`train_step(ids, labels, sample_weight, rows, slots)`: one XLA computation for the forward pass, the
    backward pass and ExactAdam; `eval_step(ids, labels, sample_weight)`: the forward pass in a plain graph
    (a few large batches per epoch run about as fast, without a second compilation). Both return the
    weighted sums of the per-sample losses and hits."""

    def __init__(self, model: Any, learning_rate: float) -> None:
        import tensorflow as tf

        self.forward = make_forward(model)
        self.weights = model.trainable_variables
        self.optimizer = ExactAdam(self.weights, learning_rate)
        # autograph off: nothing here branches on tensors, and tracing Keras layers through it costs a second
        self.train_step = tf.function(self._train_step, jit_compile=True, autograph=False)
        self.eval_step = tf.function(self._eval_step, autograph=False)

    @staticmethod
    def _sums(probabilities: Any, labels: Any, sample_weight: Any) -> tuple[Any, Any]:
        """Weighted sums of Keras' sparse cross-entropy and of the hits (Keras' accuracy: argmax == label)."""
        import keras
        import tensorflow as tf

        losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        hits = tf.cast(tf.equal(tf.argmax(probabilities, 1, output_type=labels.dtype), labels), losses.dtype)
        return tf.reduce_sum(losses * sample_weight), tf.reduce_sum(hits * sample_weight)

    def _train_step(self, ids, labels, sample_weight, rows, slots):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.forward(ids, True, (rows, slots))
            loss_sum, hit_sum = self._sums(probabilities, labels, sample_weight)
            # Keras' mean over the batch; padding rows have weight 0 and are not counted
            loss = loss_sum / tf.reduce_sum(sample_weight)
        self.optimizer.apply(tape.gradient(loss, self.weights))
        return loss_sum, hit_sum

    def _eval_step(self, ids, labels, sample_weight):
        return self._sums(self.forward(ids, False), labels, sample_weight)


def fast_fit(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
             validation_split: float, seed: int,
             on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train `model` like model.compile(Adam(learning_rate), sparse cross-entropy, accuracy) + model.fit(x, y,
    batch_size, epochs, validation_split, shuffle=True) would, and return Keras-style history rows
    (epoch, loss, accuracy, val_loss, val_accuracy, seconds). The caller seeds and enables op determinism."""
    split_at = math.floor(len(x) * (1.0 - validation_split)) if validation_split else len(x)
    x_train, y_train, x_val, y_val = x[:split_at], y[:split_at], x[split_at:], y[split_at:]
    trainer = FastTrainer(model, learning_rate)
    started = time.perf_counter()  # the batch plan below is part of the first epoch's time
    plans = plan_epochs(x_train, y_train, batch_size, epochs, seed)
    val_batches = padded_batches(x_val, y_val, EVAL_BATCH) if len(x_val) else []
    history = []
    for epoch in range(1, epochs + 1):
        loss_sum = hit_sum = 0.0
        for batch in plans[epoch - 1]:
            loss, hits = trainer.train_step(*batch)
            loss_sum, hit_sum = loss_sum + loss, hit_sum + hits
        row = {"epoch": epoch, "loss": float(loss_sum) / len(x_train), "accuracy": float(hit_sum) / len(x_train),
               "val_loss": None, "val_accuracy": None}
        if val_batches:
            results = [trainer.eval_step(*batch) for batch in val_batches]
            row["val_loss"] = float(sum(loss for loss, _ in results)) / len(x_val)
            row["val_accuracy"] = float(sum(hits for _, hits in results)) / len(x_val)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(row)
        started = time.perf_counter()
    return history


def plan_epochs(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, seed: int, shuffle: bool = True
                ) -> list[list[tuple[np.ndarray, ...]]]:
    """Every epoch's batches (ids, labels, weights, rows, slots), shuffled like Keras shuffles (a fresh
    permutation per epoch, here from numpy's seeded generator). `rows` lists a batch's distinct tokens and
    has one size for the whole run (the largest count, rounded up), so the step compiles once."""
    rng = np.random.default_rng(seed)
    epoch_batches = []
    for _ in range(epochs):
        order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
        epoch_batches.append(padded_batches(x[order], y[order], batch_size))
    distinct = [[np.unique(batch[0].T.reshape(-1), return_inverse=True) for batch in batches]
                for batches in epoch_batches]
    size = max(len(rows) for epoch in distinct for rows, _ in epoch)
    size = min(-(-size // 128) * 128, batch_size * x.shape[1])
    return [[batch + (np.pad(rows, (0, size - len(rows))).astype(np.int32), slots.astype(np.int32))
             for batch, (rows, slots) in zip(batches, epoch)] for batches, epoch in zip(epoch_batches, distinct)]


# --- one benchmark run (child process) ---------------------------------------------------------------

def load_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        with np.load(data_dir / f"{split}.npz", allow_pickle=False) as arrays:
            out[f"x_{split}"] = arrays["x"].astype(np.int32)
            out[f"y_{split}"] = arrays["y"].astype(np.int32)
            out["n_classes"] = len(arrays["groups"])
    return out


def lab_model(cell: str, num_words: int, maxlen: int, n_classes: int, model_params: Any) -> Any:
    """The lab's model, written out plainly (the reference must not depend on the pipeline's code)."""
    import keras

    recurrent = (keras.layers.LSTM(model_params.units, return_sequences=True) if cell == "lstm" else
                 keras.layers.GRU(model_params.units, return_sequences=True, reset_after=model_params.gru_reset_after))
    return keras.Sequential([
        keras.Input(shape=(maxlen,)),
        keras.layers.Embedding(num_words, model_params.embedding_dim),
        recurrent,
        keras.layers.GlobalMaxPool1D(),
        keras.layers.Dropout(model_params.dropout),
        keras.layers.Dense(model_params.dense_units, activation="relu"),
        keras.layers.Dropout(model_params.dropout),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])


def train_reference(cell: str, seed: int, data: dict[str, Any], params: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The lab's code path: stock compile, plain model.fit on one-hot labels."""
    import keras

    keras.utils.set_random_seed(seed)
    model = lab_model(cell, params.tokenize.num_words, data["x_train"].shape[1], data["n_classes"], params.model)
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(params.train.learning_rate),
                  metrics=["accuracy"])
    history: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    def begin(epoch: int, logs: Any = None) -> None:
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def end(epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        history.append({"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                        "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                        "seconds": time.perf_counter() - clock["wall"],
                        "cpu_seconds": time.process_time() - clock["cpu"]})

    model.fit(data["x_train"], keras.utils.to_categorical(data["y_train"], data["n_classes"]),
              batch_size=params.train.batch_size, epochs=params.train.epochs,
              validation_split=params.train.validation_split, verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)])
    return model, history


def train_ours(cell: str, seed: int, data: dict[str, Any], params: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The pipeline's model and seeding, trained by fast_fit."""
    from stages.model import build_model, seed_everything

    seed_everything(seed)
    model = build_model(cell, params.tokenize.num_words, data["x_train"].shape[1], data["n_classes"], params.model)
    cpu = {"start": time.process_time()}

    def add_cpu(row: dict[str, Any]) -> None:
        now = time.process_time()
        row["cpu_seconds"], cpu["start"] = now - cpu["start"], now

    history = fast_fit(model, data["x_train"], data["y_train"], epochs=params.train.epochs,
                       batch_size=params.train.batch_size, learning_rate=params.train.learning_rate,
                       validation_split=params.train.validation_split, seed=seed, on_epoch_end=add_cpu)
    return model, history


def test_scores(model: Any, data: dict[str, Any]) -> dict[str, float]:
    """Test loss and accuracy through the trained Keras model itself (model.predict), for both sides alike."""
    probabilities = model.predict(data["x_test"], batch_size=EVAL_BATCH, verbose=0)
    picked = np.clip(probabilities[np.arange(len(data["y_test"])), data["y_test"]], 1e-7, 1.0)
    return {"test_loss": float(-np.mean(np.log(picked))),
            "test_accuracy": float(np.mean(probabilities.argmax(axis=1) == data["y_test"]))}


def configure_threads(threads: int | None) -> None:
    """Before TensorFlow starts: `threads` for both of its thread pools, or TensorFlow's defaults."""
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_one(kind: str, cell: str, seed: int, data_dir: Path, epochs: int | None, threads: int | None) -> dict[str, Any]:
    """Train one model in this process and return its figures."""
    from dataclasses import replace

    from stages.params import load

    params = load(ROOT / "params.yaml")
    if epochs is not None:
        params = replace(params, train=replace(params.train, epochs=epochs))
    configure_threads(threads)
    data = load_arrays(data_dir)
    started = time.perf_counter()
    model, history = (train_reference if kind == "reference" else train_ours)(cell, seed, data, params)
    fit_seconds = time.perf_counter() - started
    return {"kind": kind, "cell": cell, "seed": seed, "epochs": len(history), "fit_seconds": fit_seconds,
            "history": history, **test_scores(model, data),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- exactness check ---------------------------------------------------------------------------------

def check_exactness(cell: str, data_dir: Path, steps: int, threads: int | None) -> dict[str, Any]:
    """Weights after `steps` steps of the plain Keras path (model.fit, graph mode) and of fast_fit's step
    (XLA), from the same initial weights and batches, dropout off. Same math => rounding-level gaps."""
    import keras
    import tensorflow as tf

    from dataclasses import replace

    from stages.model import build_model, seed_everything
    from stages.params import load

    configure_threads(threads)
    params = load(ROOT / "params.yaml")
    # Dropout off on both sides: XLA draws its stateless random bits with another algorithm than the graph
    # kernels do ("auto_select"), so the masks would differ although the Dropout layer is the same.
    params = replace(params, model=replace(params.model, dropout=0.0))
    data = load_arrays(data_dir)
    x, y = data["x_train"][:steps * params.train.batch_size], data["y_train"][:steps * params.train.batch_size]

    def fresh() -> Any:
        seed_everything(params.train.seed)
        return build_model(cell, params.tokenize.num_words, x.shape[1], data["n_classes"], params.model)

    initial = [w.numpy() for w in fresh().trainable_variables]
    plain = fresh()
    plain.compile(optimizer=keras.optimizers.Adam(params.train.learning_rate), loss="sparse_categorical_crossentropy")
    plain.fit(x, y, batch_size=params.train.batch_size, epochs=1, shuffle=False, verbose=0)

    size = params.train.batch_size
    ours = fresh()
    trainer = FastTrainer(ours, params.train.learning_rate)
    for batch in plan_epochs(x, y, size, 1, seed=0, shuffle=False)[0]:
        trainer.train_step(*batch)
    ours_weights = [w.numpy() for w in ours.trainable_variables]
    # control: the plain Keras model and Keras' Adam, only compiled by XLA (Keras refuses jit_compile=True
    # under op determinism, hence the hand-written step): how much do rounding changes alone move things?
    control = fresh()
    keras_adam = keras.optimizers.Adam(params.train.learning_rate)
    keras_adam.build(control.trainable_variables)

    @tf.function(jit_compile=True)
    def control_step(ids, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, control(ids, training=True)))
        keras_adam.apply_gradients(zip(tape.gradient(loss, control.trainable_variables), control.trainable_variables))

    for start in range(0, len(x), size):
        control_step(x[start:start + size], y[start:start + size])
    control_weights = [w.numpy() for w in control.trainable_variables]
    report = []
    for w0, variable, a, c in zip(initial, plain.trainable_variables, ours_weights, control_weights):
        b = variable.numpy()
        row = {"weight": variable.path, "max_abs_update": float(np.abs(b - w0).max()),
               "ours_gap": float(np.abs(a - b).max()), "plain_xla_gap": float(np.abs(c - b).max())}
        if b.ndim == 2 and b.shape[0] == params.tokenize.num_words:
            # Row 0 is the padding token, hundreds of occurrences per batch. Keras' sparse Adam adds the squares
            # of the per-occurrence gradients to v, and max-pooling splits a gradient over exactly tied time
            # steps (converged states in the padding), so the last bit of a state can move v there visibly.
            row["ours_gap_without_row_0"] = float(np.abs(a - b)[1:].max())
            row["plain_xla_gap_without_row_0"] = float(np.abs(c - b)[1:].max())
        report.append(row)
    return {"cell": cell, "steps": steps, "weights": report}


# --- parent: schedule, summarise, print ---------------------------------------------------------------

def child_command(args: argparse.Namespace, kind: str, cell: str, seed: int) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run", kind, "--cells", cell, "--seeds", str(seed),
               "--data", str(args.data)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def run_child(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"benchmark run failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def epoch_seconds(run: dict[str, Any]) -> dict[str, float]:
    """Wall seconds of the first epoch, mean over all epochs, median of epochs 2+; CPU seconds of epochs 2+."""
    seconds = [row["seconds"] for row in run["history"]]
    cpu = [row["cpu_seconds"] for row in run["history"]]
    return {"first_epoch": seconds[0], "mean_epoch": statistics.mean(seconds),
            "later_epochs": statistics.median(seconds[1:] or seconds), "later_cpu": statistics.median(cpu[1:] or cpu)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: medians over seeds of each side's seconds per epoch, their ratio, accuracy spread, memory."""
    rows = []
    for cell in dict.fromkeys(run["cell"] for run in runs):
        row: dict[str, Any] = {"cell": cell}
        for kind in ("reference", "ours"):
            mine = [run for run in runs if run["cell"] == cell and run["kind"] == kind]
            times = [epoch_seconds(run) for run in mine]
            for key in ("mean_epoch", "later_epochs", "first_epoch", "later_cpu"):
                row[f"{kind}_{key}_s"] = statistics.median(t[key] for t in times)
            for key, values in (("val_accuracy", [run["history"][-1]["val_accuracy"] for run in mine]),
                                ("test_accuracy", [run["test_accuracy"] for run in mine])):
                row[f"{kind}_{key}"] = statistics.mean(values)
                row[f"{kind}_{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{kind}_peak_rss_mb"] = max(run["peak_rss_mb"] for run in mine)
        row["speedup_mean_epoch"] = row["reference_mean_epoch_s"] / row["ours_mean_epoch_s"]
        row["speedup_later_epochs"] = row["reference_later_epochs_s"] / row["ours_later_epochs_s"]
        row["cpu_ratio_later_epochs"] = row["reference_later_cpu_s"] / row["ours_later_cpu_s"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], n_seeds: int) -> None:
    print(f"\nmedians over {n_seeds} seed(s); s/epoch = wall seconds, mean over all epochs (the first includes "
          "tracing and XLA compilation); later = median of epochs 2+; cpu = CPU seconds of epochs 2+")
    print(f"{'cell':5s} {'ref s/ep':>8s} {'ours s/ep':>9s} {'ratio':>6s} {'ref later':>9s} {'ours later':>10s} "
          f"{'ratio':>6s} {'cpu ratio':>9s}  {'val acc ref / ours':>23s}  {'test acc ref / ours':>23s}  "
          f"{'peak RSS MB ref / ours':>22s}")
    for r in rows:
        print(f"{r['cell']:5s} {r['reference_mean_epoch_s']:8.2f} {r['ours_mean_epoch_s']:9.2f} "
              f"{r['speedup_mean_epoch']:6.2f} {r['reference_later_epochs_s']:9.2f} {r['ours_later_epochs_s']:10.2f} "
              f"{r['speedup_later_epochs']:6.2f} {r['cpu_ratio_later_epochs']:9.2f}  "
              f"{r['reference_val_accuracy']:.3f}±{r['reference_val_accuracy_sd']:.3f} / "
              f"{r['ours_val_accuracy']:.3f}±{r['ours_val_accuracy_sd']:.3f}  "
              f"{r['reference_test_accuracy']:.3f}±{r['reference_test_accuracy_sd']:.3f} / "
              f"{r['ours_test_accuracy']:.3f}±{r['ours_test_accuracy_sd']:.3f}  "
              f"{r['reference_peak_rss_mb']:10.0f} / {r['ours_peak_rss_mb']:.0f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: params.yaml train.epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "padded", help="folder with train.npz, test.npz")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra/inter-op threads (default: TF's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exactness and determinism checks instead of timing")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--run", choices=("reference", "ours"), help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run:
        result = run_one(args.run, args.cells[0], args.seeds[0], args.data, args.epochs, args.threads)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    if args.check:
        for cell in args.cells:
            for steps in sorted({1, args.check_steps}):
                result = check_exactness(cell, args.data, steps, args.threads)
                print(f"\n{cell}, {steps} step(s) from the same weights and batches, dropout off: max |w - w_plain|")
                print(f"{'weight':34s} {'update':>9s} {'ours':>9s} {'plain+XLA':>9s}")
                for row in result["weights"]:
                    print(f"{row['weight']:34s} {row['max_abs_update']:9.2e} {row['ours_gap']:9.2e} "
                          f"{row['plain_xla_gap']:9.2e}")
                    if "ours_gap_without_row_0" in row:
                        print(f"{'  (rows 1+)':34s} {'':9s} {row['ours_gap_without_row_0']:9.2e} "
                              f"{row['plain_xla_gap_without_row_0']:9.2e}")
            twice = [run_child(child_command(args, "ours", cell, args.seeds[0])) for _ in range(2)]
            same = [run["history"][i][k] for run in twice for i in range(len(run["history"]))
                    for k in ("loss", "accuracy", "val_loss", "val_accuracy")]
            half = len(same) // 2
            print(f"{cell}: two runs of ours, seed {args.seeds[0]}: identical metrics: {same[:half] == same[half:]} "
                  f"(test accuracy {twice[0]['test_accuracy']} / {twice[1]['test_accuracy']})")
        return
    runs = []
    for seed in args.seeds:
        for cell in args.cells:
            for kind in ("reference", "ours"):
                run = run_child(child_command(args, kind, cell, seed))
                times = epoch_seconds(run)
                print(f"{cell} seed {seed} {kind:9s}: epochs {[round(r['seconds'], 2) for r in run['history']]} s, "
                      f"cpu {[round(r['cpu_seconds'], 2) for r in run['history']]} s, "
                      f"val_acc {run['history'][-1]['val_accuracy']:.4f}, test_acc {run['test_accuracy']:.4f}, "
                      f"peak {run['peak_rss_mb']:.0f} MB (mean {times['mean_epoch']:.2f} s/epoch)", flush=True)
                runs.append(run)
    rows = summarise(runs)
    print_table(rows, len(args.seeds))
    from stages.artifacts import write_json

    write_json(args.out, {"argv": sys.argv[1:], "threads": args.threads, "cpu_count": os.cpu_count(),
                          "load_average_at_end": os.getloadavg(), "summary": rows, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
