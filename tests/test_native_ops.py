"""lstm_vs_gru/fused/native_ops: the C++ ops compute what the XLA code computes (ExactSparseAdam: ExactAdam's update;
LstmBackwardLoop: the LSTM's backward loop, also inside XLA), reject bad input, and the library is built
once per cache folder and falls back to XLA, with a notice, when it cannot be built."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru.fused import trainer as fused_trainer
from lstm_vs_gru.fused import native_ops
from lstm_vs_gru.fused.compile_cache import cpu_features
from lstm_vs_gru.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HAS_COMPILER = shutil.which(native_ops.compiler()) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason=f"no C++ compiler ({native_ops.compiler()})")


@pytest.fixture
def fresh_load(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """native_ops.load() as in a new process with the default mode (on) and an empty cache folder (for cases
    that load no library)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(native_ops.NATIVE_ENV, "on")
    native_ops.load.cache_clear()
    yield native_ops.load
    native_ops.load.cache_clear()


def run_in_a_new_process(code: str, **environ: str) -> subprocess.CompletedProcess:
    """`code` in a fresh Python (a process loads the library once: TensorFlow registers an op's kernel once)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **environ})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@needs_compiler
def test_the_library_is_built_once_into_the_user_cache_and_reused() -> None:
    """One build per machine, compiler and TensorFlow, in the user's cache folder (shared by test runs and
    stages); a new process loads it without building again, and says nothing about building."""
    assert native_ops.load() is not None
    flags = native_ops.build_flags(native_ops.target())
    built = native_ops.user_cache_home(os.environ) / "native" / native_ops.library_key(flags) / native_ops.LIBRARY
    assert built.is_file()
    stamp = built.stat().st_mtime_ns
    done = run_in_a_new_process("from lstm_vs_gru.fused import native_ops; ops = native_ops.load(); "
                                "print(hasattr(ops, 'exact_sparse_adam') and hasattr(ops, 'lstm_backward_loop'))")
    assert done.stdout.strip() == "True" and "building" not in done.stderr
    assert built.stat().st_mtime_ns == stamp and not list(built.parent.glob("*.partial"))


def test_no_compiler_means_xla_and_one_notice(fresh_load, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert fresh_load() is None
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("native ops off: no C++ compiler ('/nonexistent/c++'")
    assert native_ops.NATIVE_ENV in notice[0]


def test_no_compiler_is_no_error_even_where_the_ops_are_required(fresh_load, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv(native_ops.NATIVE_ENV, "required")
    assert fresh_load() is None and capsys.readouterr().err.startswith("native ops off: no C++ compiler")


def broken_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native_ops, "SOURCE", broken)


@needs_compiler
def test_a_failed_build_means_xla_and_names_the_compiler_error(fresh_load, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path, capsys) -> None:
    broken_source(monkeypatch, tmp_path)
    assert fresh_load() is None
    notice = capsys.readouterr().err
    assert "native ops off:" in notice and "failed" in notice and "training uses its XLA code" in notice
    assert not list((tmp_path / "cache").rglob("*.so")) and not list((tmp_path / "cache").rglob("*.partial"))


@needs_compiler
def test_a_failed_build_is_an_error_where_the_ops_are_required(fresh_load, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path) -> None:
    """What .ci/run sets: a compiler that fails must fail CI, not hide behind the XLA fallback."""
    broken_source(monkeypatch, tmp_path)
    monkeypatch.setenv(native_ops.NATIVE_ENV, "required")
    with pytest.raises(native_ops.NativeOpsError, match="native ops required .* failed: "):
        fresh_load()


@pytest.mark.parametrize("setting", ["off", "0", "false", "no", ""])
def test_the_environment_variable_turns_it_off_silently(fresh_load, monkeypatch: pytest.MonkeyPatch, capsys,
                                                        setting: str) -> None:
    monkeypatch.setenv(native_ops.NATIVE_ENV, setting)
    assert fresh_load() is None and capsys.readouterr().err == ""


def test_a_bad_mode_names_the_variable_and_the_choices(fresh_load, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native_ops.NATIVE_ENV, "always")
    with pytest.raises(UserError, match=r"LSTM_VS_GRU_NATIVE='always': must be one of on, required, off"):
        fresh_load()


# /proc/cpuinfo flags of CPUs at each level (abridged to what matters, plus what -march=native would add)
SAPPHIRE_RAPIDS = ("sse4_1 sse4_2 ssse3 popcnt cx16 lahf_lm avx avx2 fma bmi1 bmi2 f16c movbe xsave abm "
                   "avx512f avx512bw avx512cd avx512dq avx512vl avx512_fp16 amx_tile amx_bf16 avx512_bf16").split()
HASWELL = "sse4_1 sse4_2 ssse3 popcnt cx16 lahf_lm avx avx2 fma bmi1 bmi2 f16c movbe xsave abm".split()
NEHALEM = "sse4_1 sse4_2 ssse3 popcnt cx16 lahf_lm".split()


@pytest.mark.parametrize("machine, flags, level", [
    ("x86_64", SAPPHIRE_RAPIDS, "x86-64-v4"),
    ("x86_64", HASWELL, "x86-64-v3"),
    ("x86_64", [flag for flag in HASWELL if flag != "fma"], "x86-64-v2"),
    ("AMD64", NEHALEM, "x86-64-v2"),
    ("x86_64", ["sse2"], "x86-64"),
    ("aarch64", ["fp", "asimd"], None),
    ("arm64", [], None),
])
def test_the_target_is_the_highest_level_the_cpu_runs(machine: str, flags: list[str], level: str | None) -> None:
    """A fixed x86-64 level, never -march=native: on Sapphire Rapids native turns on AVX512-FP16, which
    TensorFlow's Eigen headers do not compile with GCC 12."""
    assert native_ops.target_level(machine, flags) == level


def test_the_build_targets_a_level_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native_ops.TARGET_ENV, raising=False)
    flags = native_ops.FLAGS + tuple(native_ops.build_flags(native_ops.target() or "x86-64"))
    assert not [flag for flag in flags if "native" in flag]
    assert [flag for flag in flags if flag.startswith("-march=")] in (
        [f"-march={level}"] for level in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"))
    monkeypatch.setenv(native_ops.TARGET_ENV, "x86-64-v3")
    assert native_ops.target() == "x86-64-v3"


def test_another_architecture_keeps_xla_with_one_notice(fresh_load, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(native_ops.platform, "machine", lambda: "aarch64")
    monkeypatch.delenv(native_ops.TARGET_ENV, raising=False)
    monkeypatch.setenv(native_ops.NATIVE_ENV, "required")  # nothing to require where the ops are not built at all
    assert fresh_load() is None
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("native ops off: they are built for x86-64 CPUs only (this is aarch64)")


FAKE_COMPILER = """#!/bin/sh
# a stand-in compiler: counts its runs, takes a while, writes its -o file
echo run >> "$(dirname "$0")/runs"
sleep 1
while [ "$#" -gt 0 ]; do [ "$1" = -o ] && echo library > "$2"; shift; done
"""


def test_concurrent_builds_compile_once_and_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Two processes wanting the library at once (train_lstm and train_gru on a queue): one compiles, the
    other waits for it; the one that compiles says so, with the time it took."""
    compiler = tmp_path / "bin" / "c++"
    compiler.parent.mkdir()
    compiler.write_text(FAKE_COMPILER)
    compiler.chmod(0o755)
    code = ("import sys; from pathlib import Path; from lstm_vs_gru.fused import native_ops; "
            f"print(native_ops.build(Path({str(tmp_path / 'lib')!r}), []))")
    env = {**os.environ, "CXX": str(compiler)}
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert (tmp_path / "bin" / "runs").read_text().splitlines() == ["run"]
    assert (tmp_path / "lib" / native_ops.LIBRARY).read_text() == "library\n"
    messages = "".join(err for _, err in outputs)
    assert messages.count("native ops: building ") == 1
    assert re.search(r"native ops: built in \d+ s", messages)


@needs_compiler
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(native_ops.TARGET_ENV) is not None, reason="runs inside the check of one level")
@pytest.mark.parametrize("level", ["x86-64-v2", "x86-64-v3", "x86-64-v4"])
def test_each_level_this_cpu_runs_builds_and_computes_xla_s_results(level: str) -> None:
    """The library built for each x86-64 level below this CPU's (whose build the other tests use) passes the
    op tests of this file (the XLA code's values) in a process of its own; each build is cached like the
    default one."""
    here = native_ops.target_level(platform.machine(), cpu_features().split())
    order = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    if here is None or order.index(level) > order.index(here):
        pytest.skip(f"this CPU does not run {level} code")
    if level == native_ops.target():
        pytest.skip(f"{level} is this machine's own build, which the other tests check")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "is_xla_s_loop or exact_sparse_adam or reads_xla"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, native_ops.TARGET_ENV: level, native_ops.NATIVE_ENV: "required"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]


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
    return tables, [fused_trainer.ExactAdam([table], learning_rate=0.01) for table in tables]


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
    values of the fused trainer's XLA loop (here its bits too)."""
    import tensorflow as tf

    ops = native_ops.load()
    inputs = loop_inputs(np.random.default_rng(steps), steps, rows, units)
    assert (np.abs(inputs[1].numpy()) > 8.0).any()  # cells past tanh's clamp (7.9988): that branch runs too
    eager = ops.lstm_backward_loop(*inputs).numpy()
    compiled = tf.function(lambda *arrays: ops.lstm_backward_loop(*arrays), jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert "lstm_vs_gru_lstm_backward" in hlo and "while" not in hlo  # one call, not XLA's loop
    np.testing.assert_array_equal(compiled(*inputs).numpy(), eager)
    expected = tf.function(fused_trainer.lstm_backward_loop, jit_compile=True)(*inputs).numpy()
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
    count: eagerly and inside XLA the op gives the same bits, and the fused trainer's XLA loop's values (here, its
    bits: the op computes XLA's sigmoid and tanh, operation for operation; another CPU's XLA may sum its
    matmul in another order)."""
    import tensorflow as tf

    ops = native_ops.load()
    inputs = forward_inputs(np.random.default_rng(steps), steps, rows, units)
    eager = [x.numpy() for x in ops.lstm_forward_loop(*inputs)]
    compiled = tf.function(lambda *arrays: ops.lstm_forward_loop(*arrays), jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert "lstm_vs_gru_lstm_forward" in hlo and "while" not in hlo
    expected = tf.function(fused_trainer.lstm_forward_loop, jit_compile=True)(*inputs)
    assert [x.shape for x in eager] == [x.shape for x in expected]
    cell_gate = expected[2].numpy()[:, :, 2 * units:3 * units]
    assert (np.abs(cell_gate) == 1.0).any()  # XLA's tanh gives exactly 1 only past its clamp: inputs reach it
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
