"""Vanishing and exploding gradients, measured on the real training data (stages/gradients.py is the stage).

For every cell in `gradients.cells`, the lab's classifier at initialisation and after training is
split into its embedding and the rest. The gradient of a document's loss with respect to the
embedded token at step t says how much the prediction still depends on (and can learn from) that
token; its L2 norm, averaged over a fixed sample of training documents, is measured per step for
every length in `gradients.seq_lengths`, for two readouts of the same weights: the model as it is
(its pooling over every step's output, global max in the lab, gives every step a short path to the
loss) and the same head reading only the last hidden state, so that the gradient has to travel
back through the recurrence: the textbook setting of vanishing gradients. A plain RNN whose
recurrent kernel is multiplied by `gradients.recurrent_scale` shows the opposite failure, and a
short training run of it with and without Adam's clipnorm shows what clipping does to each step."""
from __future__ import annotations

import math
import os
import time
import zipfile
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # DVC runs this stage without a display
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lstm_vs_gru import artifacts, training
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.model import POOLING_NAMES, RECURRENT_CELLS, levers, load_model
from lstm_vs_gru.params import Params
from lstm_vs_gru.tokenizer import pad

if TYPE_CHECKING:  # annotations only; these import TensorFlow
    import keras

# Before any TensorFlow import below: keep its C++ info logs out of `dvc repro` output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# How the classifier's head reads the recurrent layer's outputs: as built (global max pooling over
# all steps), or from the last step only (the path through the recurrence alone).
READOUTS = ("max_pool", "last_state")
SCALED = "simple_rnn_scaled"  # the plain RNN with its recurrent kernel scaled up, at initialisation
# The clipping demonstration: a fixed, parameter-free size; long enough to see the first steps'
# spikes and the optimiser settling, short enough for CI.
CLIPPING_STEPS = 100
CLIPNORM = 1.0
# A gradient below this fraction of the last step's has, for practical purposes, vanished.
VANISH_FRACTION = 1e-3
DIGITS = 6
CELL_COLOURS = {"simple_rnn": "tab:green", "lstm": "tab:blue", "gru": "tab:orange", SCALED: "tab:red"}

Curves = dict[tuple[str, str, int, str], np.ndarray]  # (model, setting, L, readout) -> mean norm per step


@dataclass(frozen=True)
class Sample:
    """The training documents whose gradients are measured, padded once per sequence length."""
    indices: np.ndarray  # rows of data/tokens/train.npz, ascending
    labels: np.ndarray
    token_counts: np.ndarray
    tokens: dict[int, np.ndarray]  # L -> (samples, L) int32


# --- the sample (no TensorFlow) ---------------------------------------------------------

def choose_documents(offsets: np.ndarray, samples: int, min_tokens: int, seed: int) -> np.ndarray:
    """`samples` document indices drawn with `seed` among documents of at least `min_tokens` tokens,
    so every step of the longest sequence is a real token; if too few are that long, the longest
    remaining documents fill up the sample. Sorted ascending."""
    lengths = np.diff(offsets)
    eligible = np.flatnonzero(lengths >= min_tokens)
    rng = np.random.default_rng(seed)
    if len(eligible) >= samples:
        return np.sort(rng.choice(eligible, size=samples, replace=False))
    rest = np.flatnonzero(lengths < min_tokens)
    longest_first = rest[np.argsort(-lengths[rest], kind="stable")]
    return np.sort(np.concatenate([eligible, longest_first[:samples - len(eligible)]]))


def build_sample(tokens: Mapping[str, np.ndarray], p: Params) -> Sample:
    """One fixed sample of training documents (at least max(seq_lengths) tokens long where possible),
    padded and truncated to each length as `pad.padding` / `pad.truncating` say."""
    offsets = tokens["offsets"]
    indices = choose_documents(offsets, p.gradients.samples, max(p.gradients.seq_lengths), p.train.seed)
    starts, ends = offsets[indices], offsets[indices + 1]
    ids = np.concatenate([tokens["ids"][s:e] for s, e in zip(starts, ends)]) if len(indices) else tokens["ids"][:0]
    sub_offsets = np.concatenate(([0], np.cumsum(ends - starts))).astype(np.int64)
    padded = {length: pad(ids, sub_offsets, length, p.pad.padding, p.pad.truncating)
              for length in p.gradients.seq_lengths}
    return Sample(indices=indices, labels=tokens["labels"][indices].astype(np.int32),
                  token_counts=(ends - starts).astype(np.int64), tokens=padded)


def check_tokens(tokens: Mapping[str, np.ndarray], num_words: int, samples: int) -> None:
    """Token ids must fit the embedding, and there must be enough documents for the sample."""
    path = artifacts.tokens_path("train")
    ids = tokens["ids"]
    if ids.size and (ids.min() < 0 or ids.max() >= num_words):
        raise UserError(f"{path}: token ids span [{ids.min()}, {ids.max()}], outside [0, {num_words}) "
                        "from tokenize.num_words (rerun tokenize)")
    if len(tokens["labels"]) < samples:
        raise UserError(f"params.yaml: gradients.samples = {samples} is more than the "
                        f"{len(tokens['labels'])} documents in {path}")


def curve_summary(norms: np.ndarray) -> dict[str, Any]:
    """First and last step's norm, log10 of their ratio, and the last step (1-based) whose norm is
    below VANISH_FRACTION of the last step's (None if none is): how far back the signal reaches.
    Also how many steps overflowed float32 (not finite) or underflowed it (exactly 0), and the largest
    finite norm. A ratio that cannot be taken (a 0 or non-finite end) is None."""
    finite = np.isfinite(norms)
    first, last = float(norms[0]), float(norms[-1])
    below = np.flatnonzero(finite & (norms < VANISH_FRACTION * last))
    measurable = math.isfinite(first) and math.isfinite(last) and first > 0 and last > 0
    return {"first_norm": significant(first), "last_norm": significant(last),
            "max_norm": significant(float(norms[finite].max())) if finite.any() else None,
            "log10_first_to_last": round(math.log10(first / last), 4) if measurable else None,
            "vanish_step": int(below[-1]) + 1 if below.size else None,
            "nonfinite_steps": int((~finite).sum()), "zero_steps": int((norms == 0).sum())}


def significant(value: float, digits: int = DIGITS) -> float | None:
    """A float rounded to `digits` significant digits (norms span many orders of magnitude);
    None for NaN or infinity, which JSON cannot hold."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


# --- TensorFlow: models, gradients, training ---------------------------------------------

def _tf() -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    return tf, keras


def fresh_model(cell: str, p: Params, length: int, n_classes: int) -> "keras.Model":
    """The lab's classifier for `cell`, seeded as the train stages seed it: the same initial weights."""
    from lstm_vs_gru.model import build_model, seed_everything

    seed_everything(p.train.seed)
    return build_model(cell, p.tokenize.num_words, length, n_classes, p.model)


def at_length(cell: str, weights: Sequence[np.ndarray], p: Params, length: int, n_classes: int) -> "keras.Model":
    """The same classifier rebuilt for inputs of `length` tokens, with `weights` copied in
    (no weight depends on the sequence length)."""
    from lstm_vs_gru.model import build_model

    model = build_model(cell, p.tokenize.num_words, length, n_classes, p.model)
    model.set_weights(weights)
    return model


def split_model(model: "keras.Model", readout: str = "max_pool") -> tuple["keras.layers.Layer", "keras.Model"]:
    """The embedding layer, and a model of every layer after it taking the embedded sequence,
    sharing the original's weights. readout="last_state" pools the last step's output alone, so the
    head sees the final hidden state only ("max_pool" names the model's own pooling, max in the lab)."""
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}: expected one of {', '.join(READOUTS)}")
    _, keras = _tf()
    embedding = model.get_layer("embedding")
    pool = next(layer for layer in model.layers if layer.name.endswith("_pool"))  # model.pooling's layer
    embedded = keras.Input(shape=tuple(embedding.output.shape[1:]), dtype=embedding.compute_dtype)
    outputs = embedded
    for layer in model.layers[model.layers.index(embedding) + 1:]:
        # last_state: the pooling of the last step alone (for max pooling, the last state itself)
        outputs = layer(outputs[:, -1:, :] if layer is pool and readout == "last_state" else outputs)
    return embedding, keras.Model(embedded, outputs, name=f"{model.name}_{readout}_after_embedding")


def embedded_gradients(embedding: "keras.layers.Layer", rest: "keras.Model", tokens: np.ndarray,
                       labels: np.ndarray) -> np.ndarray:
    """d(loss of document i)/d(embedded token t of document i) for every i and t: (B, L, E).

    Dropout is off (training=False). The per-document losses are summed, not averaged: documents
    do not interact, so each row of the gradient is that document's own, unscaled by the batch size."""
    tf, keras = _tf()
    embedded = tf.convert_to_tensor(embedding(tf.constant(tokens)))
    targets = tf.constant(labels)

    @tf.function
    def gradient(inputs: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            probabilities = rest(inputs, training=False)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(targets, probabilities))
        return tape.gradient(loss, inputs)

    # Every measured model is a new function to trace, by design; TensorFlow would warn about it.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return gradient(embedded).numpy()
    finally:
        logger.setLevel(level)


def gradient_flow(model: "keras.Model", tokens: np.ndarray, labels: np.ndarray,
                  readout: str = "max_pool") -> np.ndarray:
    """Mean over documents of the L2 norm of d(loss)/d(embedded token t), for t = 1..L: (L,)."""
    embedding, rest = split_model(model, readout)
    grads = embedded_gradients(embedding, rest, tokens, labels).astype(np.float64)
    return np.linalg.norm(grads, axis=2).mean(axis=0)


def load_trained_weights(cell: str, p: Params, n_classes: int) -> list[np.ndarray]:
    """The weights of models/{cell}/seed{train.seed}.keras (written by the train_{cell} stage of that seed),
    checked to fit the classifier that params.yaml describes."""
    _, keras = _tf()
    path = artifacts.model_path(cell, p.train.seed)
    rerun = f"re-run `dvc repro train_{cell}@{p.train.seed}`"
    try:
        weights = load_model(path).get_weights()
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: not a readable Keras model ({' '.join(str(error).split())[:200]}): {rerun}") from None
    try:
        at_length(cell, weights, p, p.pad.maxlen, n_classes)
    except ValueError:
        raise UserError(f"{path}: its weights do not fit the {cell} classifier params.yaml describes "
                        f"(model.*, tokenize.num_words, {n_classes} groups): {rerun}") from None
    return weights


def train_simple_rnn(p: Params, padded: training.Split) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """A SimpleRNN classifier trained as the train stages train theirs (same params, seed, epochs, batch,
    validation split and data) but always by Keras's model.fit, which the fused trainer reproduces for
    LSTM and GRU only: its weights and one history row per epoch."""
    model = fresh_model("simple_rnn", p, padded.x.shape[1], len(padded.groups))
    keras_training = replace(p.train, trainer="keras")
    training.compile_model(model, keras_training, training.steps_per_epoch(len(padded.x), keras_training))
    history = training.fit(model, padded.x, padded.y, keras_training)
    return model.get_weights(), history


def scale_recurrent_kernel(weights: Sequence[np.ndarray], p: Params, n_classes: int, scale: float,
                           length: int) -> list[np.ndarray]:
    """The plain RNN's weights with its recurrent kernel (R in the report) multiplied by `scale`."""
    model = at_length("simple_rnn", weights, p, length, n_classes)
    layer = model.get_layer("simple_rnn")
    directions = (layer.forward_layer, layer.backward_layer) if hasattr(layer, "forward_layer") else (layer,)
    for direction in directions:  # model.bidirectional: both directions' kernels
        kernel = direction.cell.recurrent_kernel
        kernel.assign(np.asarray(kernel.numpy()) * scale)
    return model.get_weights()


def param_counts(p: Params, n_classes: int) -> dict[str, dict[str, int]]:
    """Keras's own parameter count of each cell's classifier and of its recurrent layer."""
    counts = {}
    for cell in RECURRENT_CELLS:
        model = fresh_model(cell, p, p.pad.maxlen, n_classes)
        counts[cell] = {"model": int(model.count_params()), "recurrent": int(model.get_layer(cell).count_params())}
    return counts


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """`steps` batches of row indices: a fresh seeded permutation per pass over the data."""
    rng = np.random.default_rng(seed)
    produced = 0
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            if produced == steps:
                return
            produced += 1
            yield order[start:start + batch_size]


def _train_step(model: "keras.Model", optimizer: Any, clipnorm: float | None) -> Any:
    """One compiled optimizer step that also returns the loss, the global gradient norm before and
    after clipping, the largest per-variable norm as Keras's clipnorm measures it, and the norm of
    the change of all weights."""
    tf, keras = _tf()
    variables = model.trainable_variables

    @tf.function
    def step(x: Any, y: Any) -> tuple[Any, Any, Any, Any, Any]:
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probabilities))
        grads = tape.gradient(loss, variables)
        # The embedding's gradient is an IndexedSlices with repeated rows: densify for the true norm.
        # clipnorm (tf.clip_by_norm) clips each variable separately, measuring an IndexedSlices' values.
        per_variable = tf.stack([tf.norm(g.values if isinstance(g, tf.IndexedSlices) else g) for g in grads])
        dense_norms = tf.stack([tf.norm(tf.convert_to_tensor(g)) for g in grads])
        # What the optimizer receives: each variable scaled by min(1, clipnorm / its norm).
        ones = tf.ones_like(per_variable)
        factors = ones if clipnorm is None else tf.minimum(ones, clipnorm / tf.maximum(per_variable, 1e-30))
        before = [tf.identity(v.value) for v in variables]
        optimizer.apply_gradients(zip(grads, variables))
        update = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v.value - b)) for v, b in zip(variables, before)]))
        return loss, tf.norm(dense_norms), tf.norm(dense_norms * factors), tf.reduce_max(per_variable), update

    return step


def clipping_run(weights: Sequence[np.ndarray], p: Params, x: np.ndarray, y: np.ndarray, n_classes: int,
                 clipnorm: float | None, steps: int = CLIPPING_STEPS) -> pd.DataFrame:
    """Train the SimpleRNN classifier from `weights` for `steps` batches with Adam (train.learning_rate,
    train.batch_size) and the given clipnorm. Same seed, so both runs see the same batches and dropout.
    One row per step: step, loss, grad_norm (before clipping), clipped_grad_norm (after), update_norm,
    clipped (whether clipnorm scaled any variable's gradient down)."""
    _, keras = _tf()
    model = fresh_model("simple_rnn", p, x.shape[1], n_classes)
    model.set_weights(weights)
    optimizer = keras.optimizers.Adam(learning_rate=p.train.learning_rate, clipnorm=clipnorm)
    optimizer.build(model.trainable_variables)
    step = _train_step(model, optimizer, clipnorm)
    rows = []
    for number, batch in enumerate(batch_order(len(x), p.train.batch_size, steps, p.train.seed), start=1):
        loss, grad_norm, clipped_norm, largest, update = (float(v) for v in step(x[batch], y[batch]))
        rows.append({"step": number, "loss": loss, "grad_norm": grad_norm, "clipped_grad_norm": clipped_norm,
                     "update_norm": update, "clipped": clipnorm is not None and largest > clipnorm})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Measurements:
    curves: Curves
    unclipped: pd.DataFrame
    clipped: pd.DataFrame
    simple_rnn_history: list[dict[str, Any]]
    params: dict[str, dict[str, int]]


Weights = dict[tuple[str, str], list[np.ndarray]]  # (model, setting) -> weights


def model_weights(p: Params, padded: training.Split) -> tuple[Weights, list[dict[str, Any]]]:
    """Initial and trained weights of every cell in gradients.cells, and the scaled plain RNN's;
    also the history of the SimpleRNN trained here (empty if it is not among the cells)."""
    n_classes = len(padded.groups)
    weights: Weights = {
        (cell, "init"): fresh_model(cell, p, p.pad.maxlen, n_classes).get_weights() for cell in p.gradients.cells}
    # Load (and check) the train stages' models before spending a minute training the SimpleRNN.
    trained = {cell: load_trained_weights(cell, p, n_classes) for cell in p.gradients.cells if cell != "simple_rnn"}
    history: list[dict[str, Any]] = []
    if "simple_rnn" in p.gradients.cells:
        trained["simple_rnn"], history = train_simple_rnn(p, padded)
    weights.update({(cell, "trained"): trained[cell] for cell in p.gradients.cells})
    simple_init = fresh_model("simple_rnn", p, p.pad.maxlen, n_classes).get_weights()
    weights[SCALED, "init"] = scale_recurrent_kernel(simple_init, p, n_classes, p.gradients.recurrent_scale,
                                                     p.pad.maxlen)
    return weights, history


def measure_curves(weights: Weights, p: Params, sample: Sample, n_classes: int) -> Curves:
    """The gradient flow of every weight set, at every length, through both readouts."""
    curves: Curves = {}
    for (name, setting), cell_weights in weights.items():
        cell = "simple_rnn" if name == SCALED else name
        for length in p.gradients.seq_lengths:
            model = at_length(cell, cell_weights, p, length, n_classes)
            for readout in READOUTS:
                curves[name, setting, length, readout] = gradient_flow(model, sample.tokens[length], sample.labels,
                                                                       readout)
    return curves


def measure(p: Params, sample: Sample, padded: training.Split) -> Measurements:
    """Every curve, the clipping runs and the parameter counts; prints the time each part took."""
    n_classes = len(padded.groups)
    clock = time.perf_counter()
    weights, history = model_weights(p, padded)
    print(f"gradients: models ready in {time.perf_counter() - clock:.1f} s", flush=True)

    clock = time.perf_counter()
    curves = measure_curves(weights, p, sample, n_classes)
    print(f"gradients: {len(curves)} curves in {time.perf_counter() - clock:.1f} s", flush=True)

    clock = time.perf_counter()
    split_at = math.floor(len(padded.x) * (1.0 - p.train.validation_split))  # fit's training part
    x, y = padded.x[:split_at], padded.y[:split_at]
    unclipped = clipping_run(weights[SCALED, "init"], p, x, y, n_classes, clipnorm=None, steps=CLIPPING_STEPS)
    clipped = clipping_run(weights[SCALED, "init"], p, x, y, n_classes, clipnorm=CLIPNORM, steps=CLIPPING_STEPS)
    print(f"gradients: clipping runs in {time.perf_counter() - clock:.1f} s", flush=True)
    return Measurements(curves, unclipped, clipped, history, param_counts(p, n_classes))


# --- outputs (no TensorFlow) ---------------------------------------------------------------

def curve_table(max_pool: np.ndarray, last_state: np.ndarray) -> pd.DataFrame:
    """One row per step t = 1..L: the mean gradient norm through the lab's model, and through the last state."""
    return pd.DataFrame({"step": np.arange(1, len(max_pool) + 1),
                         "grad_norm": [significant(v) for v in max_pool],
                         "grad_norm_last_state": [significant(v) for v in last_state]})


def clipping_table(unclipped: pd.DataFrame, clipped: pd.DataFrame) -> pd.DataFrame:
    """Both runs side by side, one row per step (so `dvc plots` can draw them as two lines)."""
    def rounded(frame: pd.DataFrame, column: str) -> list[float]:
        return [significant(v) for v in frame[column]]

    return pd.DataFrame({
        "step": unclipped["step"],
        "loss_unclipped": rounded(unclipped, "loss"), "grad_norm_unclipped": rounded(unclipped, "grad_norm"),
        "update_norm_unclipped": rounded(unclipped, "update_norm"),
        "loss_clipnorm": rounded(clipped, "loss"), "grad_norm_clipnorm": rounded(clipped, "grad_norm"),
        "clipped_grad_norm_clipnorm": rounded(clipped, "clipped_grad_norm"),
        "update_norm_clipnorm": rounded(clipped, "update_norm"), "clipped": clipped["clipped"].astype(bool),
    })


def run_summary(run: pd.DataFrame) -> dict[str, Any]:
    """A clipping run in a few figures: gradient and update norms, and the loss at the start and end."""
    tail = max(1, len(run) // 10)
    return {
        "median_grad_norm": significant(run["grad_norm"].median()),
        "max_grad_norm": significant(run["grad_norm"].max()),
        "median_clipped_grad_norm": significant(run["clipped_grad_norm"].median()),
        "median_update_norm": significant(run["update_norm"].median()),
        "max_update_norm": significant(run["update_norm"].max()),
        "first_loss": significant(run["loss"].iloc[0]),
        "last_loss": significant(run["loss"].iloc[-tail:].mean()),  # mean of the last 10% of steps
        "clipped_steps": int(run["clipped"].sum()),
    }


def gradient_metrics(p: Params, sample: Sample, m: Measurements, n_classes: int) -> dict[str, Any]:
    """metrics/gradients.json: the sizes, Keras's parameter counts, one summary per curve, the clipping runs."""
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for (name, setting, length, readout), norms in m.curves.items():
        by_length = curves.setdefault(name, {}).setdefault(setting, {}).setdefault(f"L{length}", {})
        by_length[readout] = curve_summary(norms)
    last = m.simple_rnn_history[-1] if m.simple_rnn_history else {}
    return {
        "sizes": {"num_words": p.tokenize.num_words, "embedding_dim": p.model.embedding_dim,
                  "units": p.model.units, "dense_units": p.model.dense_units, "n_classes": n_classes,
                  "gru_reset_after": p.model.gru_reset_after, **levers(p.model)},
        "params": m.params,
        "sample": {"documents": int(len(sample.indices)), "min_tokens": max(p.gradients.seq_lengths),
                   **{f"full_L{length}": int((sample.token_counts >= length).sum())
                      for length in p.gradients.seq_lengths}},
        "vanish_fraction": VANISH_FRACTION,
        "recurrent_scale": p.gradients.recurrent_scale,
        "curves": curves,
        "simple_rnn_training": {key: last.get(key) for key in ("epoch", "accuracy", "val_accuracy")},
        "clipping": {"steps": len(m.unclipped), "clipnorm": CLIPNORM,
                     "unclipped": run_summary(m.unclipped), "clipnorm_run": run_summary(m.clipped)},
    }


def readout_title(readout: str, pooling: str) -> str:
    """How a figure names a readout: the model as built (with its pooling's name), or the last state alone."""
    if readout == "last_state":
        return "read from the last state only"
    return f"the model as built ({POOLING_NAMES[pooling]})"
YLABEL = "mean ‖∂loss / ∂embedded token t‖"
XLABEL = "steps before the last token (L − t)"


def plot_gradient_flow(curves: Curves, cells: Sequence[str], lengths: Sequence[int], pooling: str = "max") -> Figure:
    """Gradient norm against distance from the last token, log scale: one row per readout, one
    column per length, one colour per cell, initialisation dashed and trained solid."""
    figure = Figure(figsize=(6 * len(lengths), 9), layout="constrained")
    panels = np.asarray(figure.subplots(len(READOUTS), len(lengths), squeeze=False))
    for row, readout in enumerate(READOUTS):
        for axes, length in zip(panels[row], lengths):
            distance = np.arange(length)[::-1]  # step t is L - t steps before the last token
            for cell in cells:
                for setting, style in (("init", "--"), ("trained", "-")):
                    if (cell, setting, length, readout) in curves:
                        axes.plot(distance, curves[cell, setting, length, readout], style, color=CELL_COLOURS[cell],
                                  label=f"{cell} ({'initial' if setting == 'init' else 'trained'})")
            axes.set(yscale="log", xlabel=XLABEL, ylabel=YLABEL, title=f"L = {length}: {readout_title(readout, pooling)}")
            axes.grid(alpha=0.3, which="both")
    panels[0, -1].legend(fontsize=8)
    return figure


def plot_exploding(curves: Curves, lengths: Sequence[int], unclipped: pd.DataFrame, clipped: pd.DataFrame,
                   scale: float, pooling: str = "max") -> Figure:
    """Top: the plain RNN's gradient flow at initialisation, as built and with R scaled up, per readout.
    Bottom: gradient and update norm per training step of the scaled RNN, with and without clipnorm.
    R is the recurrent kernel (the report's notation; Keras calls it recurrent_kernel)."""
    figure = Figure(figsize=(13, 9), layout="constrained")
    (*flows, grads, updates) = np.asarray(figure.subplots(2, 2)).ravel()
    styles = ["-", "--", ":", "-."]
    for axes, readout in zip(flows, READOUTS):
        for index, length in enumerate(lengths):
            distance = np.arange(length)[::-1]
            for name, label in (("simple_rnn", "SimpleRNN"), (SCALED, f"SimpleRNN, R × {scale:g}")):
                if (name, "init", length, readout) in curves:
                    axes.plot(distance, curves[name, "init", length, readout], styles[index % len(styles)],
                              color=CELL_COLOURS[name], label=f"{label}, L = {length}")
        axes.set(yscale="log", xlabel=XLABEL, ylabel=YLABEL, title=f"Initial plain RNN, {readout_title(readout, pooling)}")
    for axes, column, title in ((grads, "grad_norm", "Global gradient norm"),
                                (updates, "update_norm", "Norm of the weight change per step")):
        axes.plot(unclipped["step"], unclipped[column], color="tab:red", label="no clipping")
        axes.plot(clipped["step"], clipped[column], color="tab:purple", label=f"clipnorm = {CLIPNORM:g}")
        if column == "grad_norm":
            axes.plot(clipped["step"], clipped["clipped_grad_norm"], ":", color="tab:purple",
                      label=f"clipnorm = {CLIPNORM:g}, after clipping")
        axes.set(yscale="log", xlabel="training step (batch)", title=f"{title}, R × {scale:g}")
    grads.axhline(CLIPNORM, color="grey", linestyle="--", label="clipnorm threshold (per variable)")
    for axes in (*flows, grads, updates):
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    return figure
