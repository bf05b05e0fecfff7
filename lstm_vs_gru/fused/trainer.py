"""Exact fast training of the lab's model shape: Embedding -> LSTM/GRU -> any further layers.

`fast_fit` trains a Keras model like `compile(Adam(lr), sparse cross-entropy, accuracy)` followed by
`fit(x, y, batch_size, epochs, validation_split, shuffle=True)` would: the same model, batches of the same
size, the same loss and the same Adam over every weight and every embedding row, every step. Only the
computation differs (float rounding and the dropout masks' random bits do too):

- the recurrent layer runs as one fused loop per direction: the input projection of all time steps is one
  matmul before the loop, done once per distinct token of the batch, and the backward pass is written by
  hand (each reverse step one fused multiply and one small matmul, the weight gradients single matmuls
  after the loop), the layout cuDNN uses;
- a batch's gradient is computed as two halves in two XLA computations that TensorFlow runs at once (one
  per core), then summed. Adam's update of the embedding table is one pass of a C++ op on both cores
  (lstm_vs_gru/fused/native_ops.cc, built on first use, which also holds the LSTM's two loops as calls inside XLA's
  computation), or, where it cannot be built, a third XLA computation; the small weights go through
  TensorFlow's fused Adam kernel. Each XLA computation is compiled once: the last, partial batch is filled
  up with weight-0 rows instead of getting a shape of its own. A whole epoch runs as one graph loop over
  the steps, not one Python call per step;
- Adam's embedding update never materialises the dense gradient of the table: the per-row sums are
  gathered inside the update, in Keras' arithmetic (see ExactAdam);
- dropout masks are drawn per sample from a NumPy generator seeded by train.seed and the epoch, so they do
  not depend on how a batch is split.

TensorFlow is imported inside the functions: importing this module costs nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# most rows per call of the validation pass, which splits its rows evenly (results do not depend on it): the
# lab's 1,132 rows as 2 calls of 566 take 0.15-0.19 s, as 3 of 512 (the last filled up) 0.21-0.26 s, and as
# one call 0.13 s but 140 MB more memory
EVAL_BATCH = 600
DISTINCT_ROUNDING = 128  # distinct-token lists are padded to a multiple of this (one compiled shape per run)


# --- the fast recurrences ------------------------------------------------------------------------
# Each recurrence takes the input projection of all time steps at once (one big matmul, time-major), runs one
# loop forward that keeps only what the backward pass needs (gates, cells), and one loop backward in which a
# step is a single fused multiply and one small matmul; the derivative factors are computed in bulk between the
# two and the weight gradients are single large matmuls after them. The arithmetic of the forward pass is
# Keras' own; the backward pass is the same derivative, summed in another order (float rounding differs, the
# math does not).

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
    time-major position to its row's slot (see epoch_plan). The table's gradient stays one row per
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


def lstm_sequence(x: Any, kernel: Any, recurrent_kernel: Any, bias: Any, native_ops: Any = None) -> Any:
    """keras.layers.LSTM(return_sequences=True)(x) for x (B, T, D) -> (B, T, U)."""
    import tensorflow as tf

    hs = lstm_recurrence(_time_major_projection(x, kernel), recurrent_kernel, bias, native_ops)
    return tf.transpose(hs, (1, 0, 2))


def lstm_recurrence(xw: Any, recurrent_kernel: Any, bias: Any, native_ops: Any = None) -> Any:
    """The LSTM loop on the input projection xw = x @ K (T, B, 4U) -> hs (T, B, U); per step, as Keras:
    z = (x@K + h@R) + b, gates i, f, c, o = sigmoid, sigmoid, tanh, sigmoid, c' = f*c + i*g, h' = o*tanh(c').
    The forward loop keeps only the gates and cells; the backward loop derives its factors from them. With
    `native_ops` (native_ops.load()) both loops are its C++ ops: the same arithmetic, faster
    (bench/README.md)."""
    import tensorflow as tf

    @tf.custom_gradient
    def recur(xw, rk, b):
        loop = lstm_forward_loop if native_ops is None else native_ops.lstm_forward_loop
        hs, cs, gates = loop(xw, rk, b)

        def grad(dhs):
            back = lstm_backward_loop if native_ops is None else native_ops.lstm_backward_loop
            dzs = back(dhs, cs, gates, rk)
            return dzs, _weight_gradient(_previous(hs), dzs), tf.reduce_sum(dzs, (0, 1))

        return hs, grad

    return recur(xw, recurrent_kernel, bias)


def lstm_forward_loop(xw: Any, recurrent_kernel: Any, bias: Any) -> tuple[Any, Any, Any]:
    """lstm_recurrence's forward loop (XLA): the states hs and cells cs (T, B, U) and the gates [i, f, g, o]
    (T, B, 4U) from the input projection xw (T, B, 4U); lstm_vs_gru/fused/native_ops.cc has the same loop in C++."""
    import tensorflow as tf

    units = recurrent_kernel.shape[0]
    zeros = tf.zeros((tf.shape(xw)[1], units), xw.dtype)

    def step(carry, xw_t):
        h, c = carry[0], carry[1]
        z = xw_t + tf.matmul(h, recurrent_kernel)
        z = z + bias
        s = tf.sigmoid(z)  # gates i, f, o (the c column's sigmoid is computed and not used: one fused op)
        i, f, o = s[:, :units], s[:, units:2 * units], s[:, 3 * units:]
        g = tf.tanh(z[:, 2 * units:3 * units])
        c_new = f * c + i * g
        return o * tf.tanh(c_new), c_new, tf.concat([i, f, g, o], 1)

    return tf.scan(step, xw, initializer=(zeros, zeros, tf.zeros_like(xw[0])))


def lstm_backward_loop(dhs: Any, cs: Any, gates: Any, recurrent_kernel: Any) -> Any:
    """lstm_recurrence's backward loop (XLA): the gate pre-activations' gradients dzs (T, B, 4U) from the
    states' gradients dhs and the forward loop's cells cs (T, B, U) and gates (T, B, 4U). The derivative
    factors are computed for all steps before the loop (each operation in a loop body costs a few
    microseconds of dispatch); lstm_vs_gru/fused/native_ops.cc computes the same per step, inside its loop."""
    import tensorflow as tf

    i, f, g, o = tf.split(gates, 4, axis=2)
    tc = tf.tanh(cs)
    dc_dh = o * (1 - tc * tc)
    # d z / d c for gates i, f, c and d z / d h for gate o, per step
    dz_d = tf.concat([g * i * (1 - i), _previous(cs) * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], 2)
    rk_t = tf.transpose(recurrent_kernel)  # once, not per step: a transposed operand makes the small matmul slower

    def back(carry, inputs):
        dh_out, dc_dh_t, dz_d_t, f_t = inputs
        dh = dh_out + carry[0]
        dc = dh * dc_dh_t + carry[1]
        dz = tf.concat([dc, dc, dc, dh], 1) * dz_d_t
        return tf.matmul(dz, rk_t), dc * f_t, dz

    zeros = tf.zeros_like(dhs[0])
    _, _, dzs = tf.scan(back, (dhs, dc_dh, dz_d, f), initializer=(zeros, zeros, tf.zeros_like(dz_d[0])),
                        reverse=True)
    return dzs


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
    """hh = tanh(x_h + r * (h@R_h + b_h)) (Keras 3 default, cuDNN-compatible). As in lstm_recurrence, the
    loop keeps only the gates; the derivative factors are computed after it."""
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
            return z * h + (1 - z) * hh, tf.concat([z, r, hh, a_h], 1)

        hs, gates = tf.scan(step, xw, initializer=(zeros, tf.zeros((tf.shape(xw)[1], 4 * units), xw.dtype)))

        def grad(dhs):
            z, r, hh, a_h = tf.split(gates, 4, axis=2)
            d_hh = (1 - z) * (1 - hh * hh)
            # d pre-activation / dh for z, r, h, and d inner / d pre-activation (r on the recurrent h part)
            dx_dh = tf.concat([(_previous(hs) - hh) * z * (1 - z), d_hh * a_h * r * (1 - r), d_hh], 2)
            ones = tf.ones_like(r)
            recurrent_share = tf.concat([ones, ones, r], 2)
            rk_t = tf.transpose(rk)

            def back(carry, inputs):
                dh_out, dx_dh_t, share, z_t = inputs
                dh = dh_out + carry[0]
                dx = tf.concat([dh, dh, dh], 1) * dx_dh_t
                return dh * z_t + tf.matmul(dx * share, rk_t), dx

            _, dxs = tf.scan(back, (dhs, dx_dh, recurrent_share, z), initializer=(zeros, tf.zeros_like(xw[0])),
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


def dropout_layers(model: Any) -> list[Any]:
    """The model's Dropout layers after the recurrent one, in call order (one keep mask each per batch)."""
    import keras

    return [layer for layer in chain_layers(model)[2:] if isinstance(layer, keras.layers.Dropout)]


def supports(model: Any) -> bool:
    """Whether fast_fit can train `model`: a chain Embedding (no mask_zero) -> plain LSTM/GRU -> layers
    without weights updated outside the gradient (no BatchNormalization and the like)."""
    import keras

    try:
        layers = chain_layers(model)
    except ValueError:
        return False
    weights = [w for layer in layers for w in layer.trainable_variables]
    return (len(layers) >= 2 and isinstance(layers[0], keras.layers.Embedding) and not layers[0].mask_zero
            and has_fast_path(layers[1]) and not any(layer.non_trainable_weights for layer in layers)
            and len(weights) == len(model.trainable_variables) and weights[0] is layers[0].embeddings)


def make_forward(model: Any, native_ops: Any = None) -> Callable[..., Any]:
    """`forward(ids, training, distinct=None, keep=None) -> outputs` for a model that `supports` accepts:
    the same layers and weights; the embedding as a gather; plain LSTM/GRU layers through the fused loops
    (fused with the embedding into embedding_projection when `distinct` = (rows, slots) is given; the
    LSTM's loops through `native_ops` if given); Dropout from the boolean `keep` masks when given
    (training); every other layer called as itself."""
    import keras
    import tensorflow as tf

    layers = chain_layers(model)
    embedding = layers[0]

    def recurrent(layer: Any, x: Any, ids: Any, distinct: Any) -> Any:
        cell = layer.cell
        kernel, recurrent_kernel, bias = cell.kernel.value, cell.recurrent_kernel.value, cell.bias.value
        is_lstm = isinstance(layer, keras.layers.LSTM)
        if distinct is None:
            if is_lstm:
                return lstm_sequence(x, kernel, recurrent_kernel, bias, native_ops)
            return gru_sequence(x, kernel, recurrent_kernel, bias, cell.reset_after)
        table = embedding.embeddings.value
        if is_lstm:
            hs = lstm_recurrence(embedding_projection(table, ids, *distinct, kernel), recurrent_kernel, bias,
                                 native_ops)
        else:
            xw = embedding_projection(table, ids, *distinct, kernel, gru_biases(bias, cell.reset_after)[0])
            hs = gru_recurrence(xw, recurrent_kernel, bias, cell.reset_after)
        return tf.transpose(hs, (1, 0, 2))

    def forward(ids: Any, training: bool, distinct: Any = None, keep: Sequence[Any] | None = None) -> Any:
        rest = layers[1:]
        if distinct is not None and has_fast_path(rest[0]):
            x, rest = recurrent(rest[0], None, ids, distinct), rest[1:]
        else:
            x = tf.gather(embedding.embeddings.value, ids)
        masks = iter(keep or ())
        for layer in rest:
            if has_fast_path(layer):
                x = recurrent(layer, x, ids, None)
            elif training and keep is not None and isinstance(layer, keras.layers.Dropout):
                x = tf.where(next(masks), x / (1.0 - layer.rate), tf.zeros_like(x))
            else:
                x = layer(x, training=training)
        return x

    return forward


# --- Adam -------------------------------------------------------------------------------------------

class ExactAdam:
    """keras.optimizers.Adam's update (TensorFlow backend), variable by variable, in Keras' order:

        m += (g - m) * (1 - beta_1);  v += (g*g - v) * (1 - beta_2);  w -= m * alpha / (sqrt(v) + epsilon)

    over every element, every step. For an embedding's IndexedSlices gradient Keras squares each
    occurrence's row before summing repeated rows (its `ops.square` keeps the slices), so v gets the sum of
    squares, not the square of the sum; this keeps that. The dense gradient of the table is never stored:
    per-row sums live in a compact array and are gathered inside XLA's fused update passes. Dense gradients
    go through TensorFlow's fused Adam kernel, which computes the same three lines.

    `apply` updates every variable and counts the step. FastTrainer splits it: `apply_sparse_native` (or
    `apply_sparse` inside XLA), `apply_dense` beside it, `count_step` after both. For the lab's model XLA
    took 0.44 s to compile all the updates and takes 0.19 s for the table's alone; the fused kernel needs
    no compilation.

    `lazy=True` is not Keras' Adam: an IndexedSlices variable's rows outside the gradient keep their weights
    and moments that step (the rows-touched-only Adam of TensorFlow Addons' LazyAdam and PyTorch's
    SparseAdam; the bias correction still counts every step). An opt-in that trades the exact semantics for
    speed: the update then reads and writes only the batch's rows, not the whole table."""

    def __init__(self, variables: Sequence[Any], learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, lazy: bool = False) -> None:
        import tensorflow as tf

        self.lazy = lazy
        self.variables = list(variables)
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float32, trainable=False)  # Keras keeps it float32
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables]
        self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self.variables]

    def apply(self, grads: Sequence[Any]) -> None:
        """One step over every variable (grads in the variables' order)."""
        import tensorflow as tf

        sparse = [(i, g) for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)]
        dense = [(i, g) for i, g in enumerate(grads) if not isinstance(g, tf.IndexedSlices)]
        with tf.control_dependencies(self.apply_sparse(sparse) + self.apply_dense(dense)):
            self.count_step()

    def _powers(self) -> tuple[Any, Any]:
        """beta_1 ** t and beta_2 ** t for this step t, in float32 as Keras computes them."""
        import tensorflow as tf

        local_step = tf.cast(self.iterations + 1, tf.float32)
        return tuple(tf.pow(tf.cast(beta, tf.float32), local_step) for beta in (self.beta_1, self.beta_2))

    def _alpha(self) -> Any:
        """The step size of this step, bias corrections included, as Keras computes it."""
        import tensorflow as tf

        beta_1_power, beta_2_power = self._powers()
        return self.learning_rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    def apply_sparse(self, grads: Sequence[tuple[int, Any]]) -> list[Any]:
        """Update the variables at the given indices from IndexedSlices gradients; returns the update ops."""
        import tensorflow as tf

        alpha = self._alpha()
        updates = []
        for index, grad in grads:
            variable, m, v = self.variables[index], self.m[index], self.v[index]
            if self.lazy:
                updates += self._apply_to_rows(variable, m, v, grad, alpha)
                continue
            grad, grad_squared = row_sums(grad, variable.shape[0])
            m.assign_add((grad - m) * (1 - self.beta_1))
            v.assign_add((grad_squared - v) * (1 - self.beta_2))
            updates.append(variable.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon)))
        return updates

    def _apply_to_rows(self, variable: Any, m: Any, v: Any, grad: Any, alpha: Any) -> list[Any]:
        """The lazy update: the same three lines on the gradient's rows only. A row listed twice is computed
        twice from the same sums and written twice with the same values."""
        import tensorflow as tf

        ids, row_grad, row_grad_squared = occurrence_sums(grad, variable.shape[0])
        m_rows = tf.gather(m, ids)
        m_rows = m_rows + (row_grad - m_rows) * (1 - self.beta_1)
        v_rows = tf.gather(v, ids)
        v_rows = v_rows + (row_grad_squared - v_rows) * (1 - self.beta_2)
        w_rows = tf.gather(variable, ids) - (m_rows * alpha) / (tf.sqrt(v_rows) + self.epsilon)
        return [tf.raw_ops.ResourceScatterUpdate(resource=target.handle, indices=ids, updates=rows)
                for target, rows in ((m, m_rows), (v, v_rows), (variable, w_rows))]

    def apply_sparse_native(self, ops: Any, index: int, indices: Any, parts: Sequence[Any]) -> Any:
        """apply_sparse's exact update of the variable at `index` through the native ExactSparseAdam op
        (lstm_vs_gru/fused/native_ops.cc: one pass on all threads) from gradient rows `parts` (concatenated) at
        `indices`; returns the op."""
        variable, m, v = self.variables[index], self.m[index], self.v[index]
        return ops.exact_sparse_adam(variable.handle, m.handle, v.handle, self._alpha(), indices, list(parts),
                                     one_minus_beta_1=1 - self.beta_1, one_minus_beta_2=1 - self.beta_2,
                                     epsilon=self.epsilon)

    def apply_dense(self, grads: Sequence[tuple[int, Any]]) -> list[Any]:
        """Update the variables at the given indices from dense gradients; returns the update ops."""
        import tensorflow as tf

        beta_1_power, beta_2_power = self._powers()
        constants = {name: tf.constant(value, tf.float32)
                     for name, value in (("beta1", self.beta_1), ("beta2", self.beta_2), ("epsilon", self.epsilon))}
        return [tf.raw_ops.ResourceApplyAdam(
            var=self.variables[index].handle, m=self.m[index].handle, v=self.v[index].handle,
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=self.learning_rate, grad=grad, **constants)
            for index, grad in grads]

    def count_step(self) -> Any:
        """Advance Keras' `iterations`, once every variable of the step is updated."""
        return self.iterations.assign_add(1)


def row_sums(grad: Any, n_rows: int) -> tuple[Any, Any]:
    """The dense view of an IndexedSlices gradient and of its per-occurrence squares, each as a gather
    (row -> slot) from compact per-slot sums (summed in the slices' order, as tf.convert_to_tensor would)."""
    import tensorflow as tf

    _, first, _, sums, squares = _slot_sums(grad, n_rows)
    return tf.gather(sums, first), tf.gather(squares, first)


def occurrence_sums(grad: Any, n_rows: int) -> tuple[Any, Any, Any]:
    """An IndexedSlices gradient's row ids, one per occurrence, and for each its row's sum of gradients and
    sum of per-occurrence squares (the rows of row_sums' dense views, without them)."""
    import tensorflow as tf

    ids, _, slots, sums, squares = _slot_sums(grad, n_rows)
    return ids, tf.gather(sums, slots), tf.gather(squares, slots)


def _slot_sums(grad: Any, n_rows: int) -> tuple[Any, Any, Any, Any, Any]:
    """(ids, first, slots, sums, squares): a row's slot is its first occurrence (`first`, per row; untouched
    rows point at slot n, which stays zero), `slots` is each occurrence's, and the sums are per slot."""
    import tensorflow as tf

    ids = tf.reshape(grad.indices, [-1])
    values = tf.reshape(grad.values, [-1, grad.values.shape[-1]])
    n = values.shape[0]
    first = tf.minimum(tf.math.unsorted_segment_min(tf.range(n, dtype=ids.dtype), ids, n_rows), n)
    slots = tf.gather(first, ids)
    sums = tf.math.unsorted_segment_sum(values, slots, n + 1)
    squares = tf.math.unsorted_segment_sum(tf.square(values), slots, n + 1)
    return ids, first, slots, sums, squares




# --- batches ----------------------------------------------------------------------------------------

def split_count(batch_size: int) -> int:
    """Two halves (one per core) when the batch divides evenly, else one. A fixed rule, not the machine's
    core count: the split changes the order of float sums, and results must not depend on the machine."""
    return 2 if batch_size % 2 == 0 else 1


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches, stacked: axis 0 is the step, axis 1 the part of the batch (split_count), then
    the part's rows. `weights` is 0 for the rows that fill up the last batch; `rows` lists each part's
    distinct tokens (unpadded; see padded_rows) and `slots` maps each time-major position (t * b + i) to
    its row's index there; `keep` holds one boolean dropout mask per Dropout layer."""
    ids: np.ndarray  # (steps, parts, b, T) int32
    labels: np.ndarray  # (steps, parts, b) int32
    weights: np.ndarray  # (steps, parts, b) float32
    rows: list[list[np.ndarray]]  # [step][part] -> (distinct,) int32
    slots: np.ndarray  # (steps, parts, T * b) int32
    keep: tuple[np.ndarray, ...]  # per Dropout layer: (steps, parts, b, width) bool

    def padded_rows(self, size: int) -> np.ndarray:
        """`rows` as one (steps, parts, size) array, padded with row 0 (never referenced by a slot)."""
        return np.array([[np.pad(rows, (0, size - len(rows))) for rows in step] for step in self.rows], np.int32)


def epoch_plan(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
               dropout: Sequence[tuple[float, int]], shuffle: bool = True) -> EpochPlan:
    """One epoch's batches in Keras' way (a fresh permutation per epoch; consecutive batches; the last one
    filled up with weight-0 rows). `dropout` = (rate, width) per Dropout layer, whose masks are drawn per
    sample. Same (seed, epoch) => same batches and masks."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    total = -(-len(x) // batch_size) * batch_size
    filler = total - len(x)
    parts = split_count(batch_size)
    shape = (total // batch_size, parts, batch_size // parts)

    def stacked(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        padding = np.full((filler,) + values.shape[1:], fill, values.dtype)
        return np.concatenate([values, padding]).astype(dtype).reshape(shape + values.shape[1:])

    ids = stacked(x[order], 0, np.int32)
    time_major = ids.transpose(0, 1, 3, 2).reshape(shape[:2] + (-1,))
    distinct = [[np.unique(positions, return_inverse=True) for positions in step] for step in time_major]
    return EpochPlan(
        ids=ids, labels=stacked(y[order], 0, np.int32),
        weights=stacked(np.ones(len(x), np.float32), 0.0, np.float32),
        rows=[[rows.astype(np.int32) for rows, _ in step] for step in distinct],
        slots=np.array([[slots for _, slots in step] for step in distinct], np.int32),
        keep=tuple((rng.random((total, width)) >= rate).reshape(shape + (width,)) for rate, width in dropout))


def distinct_size(plans: Sequence[EpochPlan], limit: int) -> int:
    """The padded length of every part's distinct-token list: the largest count, rounded up (one compiled
    shape for the run), at most `limit` (a part's positions)."""
    largest = max(len(rows) for plan in plans for step in plan.rows for rows in step)
    return min(-(-largest // DISTINCT_ROUNDING) * DISTINCT_ROUNDING, limit)


# --- the trainer ------------------------------------------------------------------------------------

class FastTrainer:
    """`run_epoch(plan, size)`: every step of a plan inside one TensorFlow graph loop (a Python call per
    step would cost about a millisecond); per step, the gradients of each part in its own XLA computation
    (TensorFlow runs them at once), summed, then ExactAdam: the table's update through the native op
    (`native=True` and the ops build; not with `lazy_adam`) or as one more XLA computation, the other
    weights' beside it. With `native=True` the LSTM's loops are native ops too, inside the gradients' XLA
    computation and in `eval_step(ids, labels, weights)`, the forward pass in a plain graph. Both return the
    weighted sums of the per-sample losses and hits."""

    def __init__(self, model: Any, learning_rate: float, lazy_adam: bool = False, native: bool = True) -> None:
        import tensorflow as tf

        from lstm_vs_gru.fused import native_ops

        if not supports(model):
            raise ValueError("fast training needs Embedding -> plain LSTM/GRU -> layers without other state")
        self.native_ops = native_ops.load() if native else None
        self.forward = make_forward(model, self.native_ops)
        self.weights = model.trainable_variables
        self.table_shape = tuple(self.weights[0].shape)
        self.optimizer = ExactAdam(self.weights, learning_rate, lazy=lazy_adam)
        # autograph off: nothing here branches on tensors, and tracing Keras layers through it costs a second
        self.gradients = tf.function(self._gradients, jit_compile=True, autograph=False)
        if self.native_ops is not None and not lazy_adam:
            self.update_table = self._update_table_natively
        else:
            self.update_table = tf.function(self._update_table, jit_compile=True, autograph=False)
        self.epoch = tf.function(self._epoch, autograph=False)
        self.eval_step = tf.function(self._eval_step, autograph=False)

    def run_epoch(self, plan: EpochPlan, size: int) -> tuple[float, float]:
        loss_sum, hit_sum = self.epoch(plan.ids, plan.labels, plan.weights, plan.padded_rows(size), plan.slots,
                                       plan.keep)
        return float(loss_sum), float(hit_sum)

    @staticmethod
    def _sums(probabilities: Any, labels: Any, sample_weight: Any) -> tuple[Any, Any]:
        """Weighted sums of Keras' sparse cross-entropy and of the hits (Keras' accuracy: argmax == label)."""
        import keras
        import tensorflow as tf

        losses = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        hits = tf.cast(tf.equal(tf.argmax(probabilities, 1, output_type=labels.dtype), labels), losses.dtype)
        return tf.reduce_sum(losses * sample_weight), tf.reduce_sum(hits * sample_weight)

    def _gradients(self, ids, labels, sample_weight, rows, slots, keep, batch_weight):
        """One part's loss and hit sums and its share of the batch-mean loss's gradients: the table's as
        per-occurrence rows (time-major positions), the other weights' dense."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.forward(ids, True, (rows, slots), keep)
            loss_sum, hit_sum = self._sums(probabilities, labels, sample_weight)
            loss = loss_sum / batch_weight  # Keras' mean over the batch; filler rows have weight 0
        grads = tape.gradient(loss, self.weights)
        return loss_sum, hit_sum, grads[0].values, grads[1:]

    def _update_table(self, positions, *part_rows):
        import tensorflow as tf

        # the parts' rows are joined here, inside XLA: joined before, the 1.6 MB copy delayed the update
        table = tf.IndexedSlices(tf.concat(part_rows, 0), positions, tf.constant(self.table_shape, positions.dtype))
        with tf.control_dependencies(self.optimizer.apply_sparse([(0, table)])):
            return tf.constant(True)  # an output for the step to wait on: the update is done when it exists

    def _update_table_natively(self, positions, *part_rows):
        return self.optimizer.apply_sparse_native(self.native_ops, 0, positions, part_rows)

    def _step(self, parts):
        """One batch: returns its loss and hit sums once the weights are updated."""
        import tensorflow as tf

        batch_weight = tf.add_n([tf.reduce_sum(part[2]) for part in parts])
        results = [self.gradients(*part, batch_weight) for part in parts]
        positions = tf.concat([tf.reshape(tf.transpose(part[0]), [-1]) for part in parts], 0)
        dense = [tf.add_n(list(grads)) for grads in zip(*(result[3] for result in results))]
        updates = [self.update_table(positions, *(result[2] for result in results)),
                   *self.optimizer.apply_dense(list(enumerate(dense, 1)))]
        with tf.control_dependencies(updates):
            counted = self.optimizer.count_step()
        with tf.control_dependencies([counted]):
            return [tf.identity(tf.add_n([result[k] for result in results])) for k in (0, 1)]

    def _epoch(self, ids, labels, weights, rows, slots, keep):
        import tensorflow as tf

        n_parts = ids.shape[1]

        def body(step, loss_sum, hit_sum):
            parts = [(ids[step, j], labels[step, j], weights[step, j], rows[step, j], slots[step, j],
                      tuple(mask[step, j] for mask in keep)) for j in range(n_parts)]
            loss, hits = self._step(parts)
            return step + 1, loss_sum + tf.cast(loss, tf.float64), hit_sum + tf.cast(hits, tf.float64)

        zero = tf.constant(0.0, tf.float64)
        # one step at a time: a step must see the weights the previous one updated
        _, loss_sum, hit_sum = tf.while_loop(lambda step, *_: step < tf.shape(ids)[0], body,
                                             (tf.constant(0), zero, zero), parallel_iterations=1)
        return loss_sum, hit_sum

    def _eval_step(self, ids, labels, sample_weight):
        return self._sums(self.forward(ids, False), labels, sample_weight)


def fast_fit(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
             validation_split: float, seed: int, callbacks: Sequence[Any] = (),
             lazy_adam: bool = False) -> dict[str, list[float]]:
    """Train `model` as compile(Adam(learning_rate), sparse cross-entropy, accuracy) + fit(x, y, batch_size,
    epochs, validation_split, shuffle=True) would, calling Keras `callbacks` at epoch level with the same
    logs (loss, accuracy, val_loss, val_accuracy); returns the history dict as model.fit's History has it.
    The caller seeds the weights. `lazy_adam`: the embedding's Adam on the batch's rows only (see
    ExactAdam): faster, and not the same mathematics."""
    split_at = math.floor(len(x) * (1.0 - validation_split)) if validation_split else len(x)
    x_train, y_train, x_val, y_val = x[:split_at], y[:split_at], x[split_at:], y[split_at:]
    trainer = FastTrainer(model, learning_rate, lazy_adam)
    dropout = [(layer.rate, int(layer.input.shape[-1])) for layer in dropout_layers(model)]

    def plan(epoch: int) -> EpochPlan:
        return epoch_plan(x_train, y_train, batch_size, seed, epoch, dropout)

    # every epoch's plan once for the common size (cheap: ~0.1 s an epoch), then each again when it runs,
    # so that only one epoch's arrays are held at a time
    size = max(distinct_size([plan(epoch)], x.shape[1] * batch_size // split_count(batch_size))
               for epoch in range(epochs))
    for callback in callbacks:
        callback.set_model(model)
    model.stop_training = False  # a callback sets it (EarlyStopping), as in model.fit
    history: dict[str, list[float]] = {}
    for callback in callbacks:
        callback.on_train_begin()
    for epoch in range(epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        loss_sum, hit_sum = trainer.run_epoch(plan(epoch), size)
        logs = {"loss": loss_sum / len(x_train), "accuracy": hit_sum / len(x_train)}
        if len(x_val):
            logs.update(evaluate_split(trainer, x_val, y_val))
        for callback in callbacks:  # one logs dict for all, as in model.fit: what one adds, the next sees
            callback.on_epoch_end(epoch, logs)
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end()
    return history


def evaluate_split(trainer: FastTrainer, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """val_loss and val_accuracy: the mean loss and accuracy of the model in inference mode."""
    loss_sum = hit_sum = 0.0
    batch = math.ceil(len(x) / math.ceil(len(x) / EVAL_BATCH))  # rows per call, the calls as even as can be
    for start in range(0, len(x), batch):
        ids, labels = x[start:start + batch], y[start:start + batch]
        filler = batch - len(ids)  # one shape for every call: one trace
        weights = np.concatenate([np.ones(len(ids), np.float32), np.zeros(filler, np.float32)])
        loss, hits = trainer.eval_step(np.pad(ids, ((0, filler), (0, 0))), np.pad(labels, (0, filler)), weights)
        loss_sum, hit_sum = loss_sum + loss, hit_sum + hits
    return {"val_loss": float(loss_sum) / len(x), "val_accuracy": float(hit_sum) / len(x)}
