"""stages/native_ops: the C++ ops compute what the XLA code computes (ExactSparseAdam: ExactAdam's update;
LstmBackwardLoop: the LSTM's backward loop, also inside XLA), reject bad input, and the library is built
once per cache folder and falls back to XLA, with a notice, when it cannot be built."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stages import fast_training, native_ops

ROOT = Path(__file__).resolve().parents[1]
HAS_COMPILER = shutil.which(native_ops.compiler()) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason=f"no C++ compiler ({native_ops.compiler()})")


@pytest.fixture
def fresh_load(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """native_ops.load() as in a new process, with an empty cache folder (for cases that load no library)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    native_ops.load.cache_clear()
    yield native_ops.load
    native_ops.load.cache_clear()


def load_in_a_new_process(cache: Path) -> str:
    """What native_ops.load() gives in a fresh process whose cache folder is `cache` (a process must load the
    library once: TensorFlow registers an op's kernel once per process)."""
    code = ("from stages import native_ops; ops = native_ops.load(); "
            "print(hasattr(ops, 'exact_sparse_adam') and hasattr(ops, 'lstm_backward_loop'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@needs_compiler
def test_the_library_is_built_once_into_the_cache_folder_and_reused() -> None:
    """This session's build (tests/conftest.py gives the session its own XDG_CACHE_HOME) is in the cache
    folder, and a new process loads it without building again."""
    assert native_ops.load() is not None
    cache = Path(os.environ["XDG_CACHE_HOME"])
    built = list((cache / "lstm-vs-gru" / "native").glob("*/native_ops.so"))
    assert len(built) == 1, built
    stamp = built[0].stat().st_mtime_ns
    assert load_in_a_new_process(cache) == "True"
    assert built[0].stat().st_mtime_ns == stamp and not list(built[0].parent.glob("*.partial"))


def test_no_compiler_means_xla_and_one_notice(fresh_load, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert fresh_load() is None
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("native ops off: no C++ compiler ('/nonexistent/c++'")
    assert native_ops.NATIVE_ENV in notice[0]


def test_a_failed_build_means_xla_and_names_the_compiler_error(fresh_load, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path, capsys) -> None:
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native_ops, "SOURCE", broken)
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler")
    assert fresh_load() is None
    notice = capsys.readouterr().err
    assert "native ops off:" in notice and "failed" in notice and "training uses its XLA code" in notice
    assert not list((tmp_path / "cache").rglob("*.so")) and not list((tmp_path / "cache").rglob("*.partial"))


@pytest.mark.parametrize("setting", ["off", "0", "false", "no", ""])
def test_the_environment_variable_turns_it_off_silently(fresh_load, monkeypatch: pytest.MonkeyPatch, capsys,
                                                        setting: str) -> None:
    monkeypatch.setenv(native_ops.NATIVE_ENV, setting)
    assert fresh_load() is None and capsys.readouterr().err == ""


def test_the_key_follows_source_flags_and_tensorflow(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if not HAS_COMPILER:
        pytest.skip("no C++ compiler")
    flags = ["-I/include"]
    key = native_ops.library_key(flags)
    assert native_ops.library_key(flags) == key and len(key) == 16
    assert native_ops.library_key(["-I/elsewhere"]) != key
    changed = tmp_path / "changed.cc"
    changed.write_text(native_ops.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native_ops, "SOURCE", changed)
    assert native_ops.library_key(flags) != key
    monkeypatch.undo()
    monkeypatch.setattr(native_ops, "tensorflow_version", lambda: "tensorflow-cpu==9.9")
    assert native_ops.library_key(flags) != key


def adam_pair(rng: np.random.Generator, rows: int, depth: int):
    """The same table, twice, each with its own ExactAdam."""
    import tensorflow as tf

    start = rng.normal(size=(rows, depth)).astype(np.float32)
    tables = [tf.Variable(start) for _ in range(2)]
    return tables, [fast_training.ExactAdam([table], learning_rate=0.01) for table in tables]


@needs_compiler
def test_exact_sparse_adam_is_exact_adam_over_every_row() -> None:
    """Repeated rows, rows touched once and then never, rows never touched, two parts of gradient rows: the op
    and ExactAdam.apply_sparse (XLA's path, itself checked against Keras' Adam) agree to float rounding."""
    import tensorflow as tf

    ops = native_ops.load()
    rng = np.random.default_rng(7)
    rows, depth = 9, 21  # a depth that fills no vector
    (ours, theirs), (native_adam, xla_adam) = adam_pair(rng, rows, depth)
    start = ours.numpy()
    for step in range(5):
        indices = np.array([2, 2, 5, 0] if step == 0 else [1, 4, 1, 1, 0, 7], np.int32)
        values = rng.normal(size=(len(indices), depth)).astype(np.float32)
        first, second = values[:3], values[3:]
        native_adam.apply_sparse_native(ops, 0, tf.constant(indices), [tf.constant(first), tf.constant(second)])
        native_adam.count_step()
        xla_adam.apply([tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([rows, depth]))])
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7)
        for mine, reference in ((native_adam.m[0], xla_adam.m[0]), (native_adam.v[0], xla_adam.v[0])):
            np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-5, atol=1e-9)  # FMA rounding
    moved = np.abs(ours.numpy() - start).max(axis=1)
    assert moved[5] > 1e-3  # touched in the first step only: keeps moving on its momentum, as in Keras
    assert moved[3] == 0 and moved[6] == 0 and moved[8] == 0  # never touched: m = 0, no move


@needs_compiler
def test_exact_sparse_adam_updates_in_place_what_later_reads_see() -> None:
    """The op updates the variable in copy-on-read mode: a value read before the update keeps its values, a
    read after it sees the new ones, inside one graph as between calls."""
    import tensorflow as tf

    ops = native_ops.load()
    rng = np.random.default_rng(8)
    (table, _), (adam, _) = adam_pair(rng, 5, 4)
    before = table.numpy()

    @tf.function
    def step(indices, values):
        old = tf.identity(table.read_value())
        with tf.control_dependencies([old]):
            update = adam.apply_sparse_native(ops, 0, indices, [values])
        with tf.control_dependencies([update]):
            return old, tf.gather(table, indices), table.read_value()

    old, gathered, new = step(tf.constant([1, 3], tf.int32), tf.constant(rng.normal(size=(2, 4)), tf.float32))
    np.testing.assert_array_equal(old.numpy(), before)
    assert not np.array_equal(new.numpy(), before)
    np.testing.assert_array_equal(new.numpy(), table.numpy())
    np.testing.assert_array_equal(gathered.numpy(), table.numpy()[[1, 3]])


@needs_compiler
@pytest.mark.parametrize("indices, values, message", [
    ([0, 5], [[1.0, 2.0], [3.0, 4.0]], "index 5 is outside [0, 5)"),
    ([0, -1], [[1.0, 2.0], [3.0, 4.0]], "index -1 is outside [0, 5)"),
    ([0, 1, 2], [[1.0, 2.0], [3.0, 4.0]], "3 indices for 2 gradient rows"),
    ([0], [[1.0, 2.0, 3.0]], "values must be (n, 2) matrices"),
])
def test_exact_sparse_adam_rejects_bad_input_and_changes_nothing(indices, values, message: str) -> None:
    import tensorflow as tf

    ops = native_ops.load()
    (table, _), (adam, _) = adam_pair(np.random.default_rng(9), 5, 2)
    before = table.numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        adam.apply_sparse_native(ops, 0, tf.constant(indices, tf.int32), [tf.constant(values, tf.float32)])
    np.testing.assert_array_equal(table.numpy(), before)
    np.testing.assert_array_equal(adam.m[0].numpy(), np.zeros_like(before))


def loop_inputs(rng: np.random.Generator, steps: int, rows: int, units: int) -> list:
    """The backward loop's d_hs, cells (some past tanh's clamp), gates (i, f, o in (0, 1), g in (-1, 1)) and
    recurrent kernel."""
    import tensorflow as tf

    gates = rng.uniform(0, 1, size=(steps, rows, 4, units))
    gates[:, :, 2] = 2 * gates[:, :, 2] - 1
    arrays = [rng.normal(scale=0.3, size=(steps, rows, units)), rng.normal(scale=4.0, size=(steps, rows, units)),
              gates.reshape(steps, rows, 4 * units), rng.normal(scale=0.3, size=(units, 4 * units))]
    return [tf.constant(array.astype(np.float32)) for array in arrays]


@needs_compiler
@pytest.mark.parametrize("steps, rows, units", [(100, 16, 50), (5, 21, 13), (3, 3, 7), (6, 7, 37)])
def test_lstm_backward_loop_is_xla_s_loop(steps: int, rows: int, units: int) -> None:
    """The lab's half batch (16 rows, 50 units) and sizes that fill no vector or block, or fewer than 16
    units: eagerly (the CPU kernel) and inside XLA (the custom call) the op gives the same bits, and the
    values of fast_training's XLA loop (here its bits too)."""
    import tensorflow as tf

    ops = native_ops.load()
    inputs = loop_inputs(np.random.default_rng(steps), steps, rows, units)
    assert (np.abs(inputs[1].numpy()) > 8.0).any()  # cells past tanh's clamp (7.9988): that branch runs too
    eager = ops.lstm_backward_loop(*inputs).numpy()
    compiled = tf.function(lambda *arrays: ops.lstm_backward_loop(*arrays), jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert "lstm_vs_gru_lstm_backward" in hlo and "while" not in hlo  # one call, not XLA's loop
    np.testing.assert_array_equal(compiled(*inputs).numpy(), eager)
    expected = tf.function(fast_training.lstm_backward_loop, jit_compile=True)(*inputs).numpy()
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_lstm_backward_loop_reads_xla_s_buffers_in_their_layout() -> None:
    """Operands that XLA produces by transposing other arrays still arrive row-major."""
    import tensorflow as tf

    ops = native_ops.load()
    inputs = loop_inputs(np.random.default_rng(1), 6, 17, 9)
    flipped = [tf.transpose(x, (1, 0, 2)) for x in inputs[:3]] + [tf.transpose(inputs[3])]

    @tf.function(jit_compile=True)
    def from_transposes(*arrays):
        return ops.lstm_backward_loop(*(tf.transpose(x, (1, 0, 2)) for x in arrays[:3]), tf.transpose(arrays[3]))

    np.testing.assert_array_equal(from_transposes(*flipped).numpy(), ops.lstm_backward_loop(*inputs).numpy())


@needs_compiler
def test_lstm_backward_loop_rejects_inconsistent_shapes() -> None:
    import tensorflow as tf

    ops = native_ops.load()
    inputs = loop_inputs(np.random.default_rng(2), 4, 5, 3)
    wrong = inputs[:3] + [tf.zeros((3, 8))]  # 8 gate columns for 3 units
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="LstmBackwardLoop|shape"):
        ops.lstm_backward_loop(*wrong)
    with pytest.raises(tf.errors.InvalidArgumentError, match="LstmBackwardLoop: inconsistent shapes"):
        compiled = tf.function(lambda *arrays: ops.lstm_backward_loop(*arrays), jit_compile=True)
        compiled(*inputs[:2], inputs[2][:, :, :8], *inputs[3:])


def forward_inputs(rng: np.random.Generator, steps: int, rows: int, units: int) -> list:
    """xw, recurrent kernel and bias: gates that saturate, and some cell-gate inputs past tanh's clamp."""
    import tensorflow as tf

    shapes_and_scales = [((steps, rows, 4 * units), 5.0), ((units, 4 * units), 0.5), ((4 * units,), 0.5)]
    return [tf.constant(rng.normal(scale=scale, size=shape).astype(np.float32)) for shape, scale in shapes_and_scales]


@needs_compiler
@pytest.mark.parametrize("steps, rows, units", [(100, 16, 50), (5, 21, 13), (3, 3, 7), (4, 5, 16), (6, 7, 37)])
def test_lstm_forward_loop_is_xla_s_loop(steps: int, rows: int, units: int) -> None:
    """The lab's half batch and sizes that fill no vector, fewer than 16 units, exactly 16, and an odd row
    count: eagerly and inside XLA the op gives the same bits, and fast_training's XLA loop's values (here, its
    bits: the op computes XLA's sigmoid and tanh, operation for operation; another CPU's XLA may sum its
    matmul in another order)."""
    import tensorflow as tf

    ops = native_ops.load()
    inputs = forward_inputs(np.random.default_rng(steps), steps, rows, units)
    eager = [x.numpy() for x in ops.lstm_forward_loop(*inputs)]
    compiled = tf.function(lambda *arrays: ops.lstm_forward_loop(*arrays), jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert "lstm_vs_gru_lstm_forward" in hlo and "while" not in hlo
    expected = tf.function(fast_training.lstm_forward_loop, jit_compile=True)(*inputs)
    assert [x.shape for x in eager] == [x.shape for x in expected]
    cell_gate = eager[2][:, :, 2 * units:3 * units]
    assert (np.abs(cell_gate) == 1.0).any()  # XLA's tanh gives exactly 1 only past its clamp: that branch ran
    for got, compiled_got, want in zip(eager, compiled(*inputs), expected):
        np.testing.assert_array_equal(compiled_got.numpy(), got)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@needs_compiler
def test_lstm_forward_loop_reads_xla_s_buffers_in_their_layout() -> None:
    import tensorflow as tf

    ops = native_ops.load()
    xw, kernel, bias = forward_inputs(np.random.default_rng(3), 6, 17, 20)

    @tf.function(jit_compile=True)
    def from_transposes(xw_flipped, kernel_flipped):
        return ops.lstm_forward_loop(tf.transpose(xw_flipped, (1, 0, 2)), tf.transpose(kernel_flipped), bias)

    flipped = from_transposes(tf.transpose(xw, (1, 0, 2)), tf.transpose(kernel))
    for got, want in zip(flipped, ops.lstm_forward_loop(xw, kernel, bias)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@needs_compiler
def test_lstm_forward_loop_rejects_inconsistent_shapes() -> None:
    import tensorflow as tf

    ops = native_ops.load()
    xw, kernel, bias = forward_inputs(np.random.default_rng(4), 4, 5, 3)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="LstmForwardLoop|shape"):
        ops.lstm_forward_loop(xw, kernel, bias[:8])
    with pytest.raises(tf.errors.InvalidArgumentError, match="LstmForwardLoop: inconsistent shapes"):
        tf.function(lambda *arrays: ops.lstm_forward_loop(*arrays), jit_compile=True)(xw[:, :, :8], kernel, bias)
