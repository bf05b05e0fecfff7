"""The fused trainer's C++ TensorFlow ops (lstm_vs_gru/fused/native_ops.cc), built on first use against the installed
TensorFlow with the machine's C++ compiler and kept in the user's cache folder.

`load()` returns the loaded op module (`tf.load_op_library`: `exact_sparse_adam`, `lstm_forward_loop`,
`lstm_backward_loop`), or None, in which case the trainer keeps its XLA code. $LSTM_VS_GRU_NATIVE says how
hard to try: "off" never builds; "on" (the default) falls back with a one-line notice on stderr when the
library cannot be built or loaded; "required" raises NativeOpsError instead wherever a compiler is present
(CI sets it, so a broken build fails there rather than hiding behind the fallback).

The library is compiled for the highest x86-64 level this CPU runs (x86-64-v2, -v3 = AVX2 and FMA, -v4 =
AVX-512), not -march=native: native also turns on extensions such as AVX512-FP16 that TensorFlow's bundled
Eigen headers do not compile with GCC 12. $LSTM_VS_GRU_NATIVE_TARGET names another -march value. Other
architectures (ARM64) keep the XLA code with a notice. The build takes about a minute (most of it parsing
TensorFlow's and XLA's headers), once per machine, compiler and TensorFlow: the library is keyed by the
source, compiler, flags, TensorFlow and the CPU's features and goes to $XDG_CACHE_HOME/lstm-vs-gru/native
(or ~/.cache/lstm-vs-gru/native), else to a temporary folder for the process; concurrent processes build it
once (a file lock). The LSTM's loops give XLA's results bit for bit on the CPUs tested; Adam's update sums in
another order, so metrics differ from the XLA path's in the last bits (and then chaotically, as training
amplifies them), never between two runs of one.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

from lstm_vs_gru.fused.compile_cache import DISABLED, cpu_features, tensorflow_version, user_cache_home
from lstm_vs_gru.errors import UserError

NATIVE_ENV = "LSTM_VS_GRU_NATIVE"
TARGET_ENV = "LSTM_VS_GRU_NATIVE_TARGET"
MODES = ("on", "required", "off")
SOURCE = Path(__file__).with_name("native_ops.cc")
LIBRARY = "native_ops.so"
# -fno-math-errno: sqrt may then be vectorised; no -ffast-math, which would change the arithmetic
FLAGS = ("-std=c++17", "-shared", "-fPIC", "-O3", "-fno-math-errno", "-w")
# The x86-64 psABI levels (GCC 11+ and Clang 12+ take them as -march), each with the /proc/cpuinfo flags it
# adds to the one before.
X86_64_LEVELS = (
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")),
    ("x86-64-v3", ("abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave")),
    ("x86-64-v4", ("avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl")),
)
X86_64_MACHINES = ("x86_64", "amd64")
BUILD_TIMEOUT_S = 300


class NativeOpsError(UserError):
    """The native ops are required ($LSTM_VS_GRU_NATIVE=required) and could not be built or loaded."""


def mode(environ: Mapping[str, str] = os.environ) -> str:
    """$LSTM_VS_GRU_NATIVE as one of MODES; UserError naming the variable for any other value."""
    value = environ.get(NATIVE_ENV, "on").strip().lower()
    if value in DISABLED:
        return "off"
    if value not in MODES:
        raise UserError(f"{NATIVE_ENV}={environ[NATIVE_ENV]!r}: must be one of {', '.join(MODES)}")
    return value


def compiler() -> str:
    return os.environ.get("CXX") or "c++"


def target_level(machine: str, cpu_flags: Collection[str]) -> str | None:
    """The highest x86-64 level a CPU with these /proc/cpuinfo flags runs, or None off x86-64."""
    if machine.lower() not in X86_64_MACHINES:
        return None
    level = "x86-64"
    for name, needed in X86_64_LEVELS:
        if not set(needed) <= set(cpu_flags):
            break
        level = name
    return level


def target(environ: Mapping[str, str] = os.environ) -> str | None:
    """The -march value to build for: $LSTM_VS_GRU_NATIVE_TARGET, else this CPU's x86-64 level (None off x86-64)."""
    return environ.get(TARGET_ENV) or target_level(platform.machine(), cpu_features().split())


def tensorflow_flags() -> list[str]:
    """The compile and link flags of the installed TensorFlow: its headers (with the two third-party folders
    XLA's headers need, which TensorFlow's own flags leave out), ABI, framework library and libtensorflow_cc
    (XLA's op and FFI registries)."""
    import tensorflow as tf

    include = Path(tf.sysconfig.get_include())
    third_party = [f"-I{include / 'external' / folder}" for folder in ("highwayhash", "farmhash_archive/src")]
    return [*tf.sysconfig.get_compile_flags(), *third_party, *tf.sysconfig.get_link_flags(),
            "-l:libtensorflow_cc.so.2"]


def compiler_version() -> str:
    try:
        done = subprocess.run([compiler(), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        raise NoCompiler(f"no C++ compiler ({compiler()!r}: {error})") from error
    return done.stdout.splitlines()[0] if done.stdout else ""


class NoCompiler(RuntimeError):
    """No C++ compiler to run: the native ops are optional then, even when required."""


def library_key(flags: Sequence[str]) -> str:
    """What the built library depends on: its source, the compiler, the flags, TensorFlow and the CPU."""
    identity = "\n".join([SOURCE.read_text(), compiler(), compiler_version(), *FLAGS, *flags, tensorflow_version(),
                          cpu_features()])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if need be) for the block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(directory: Path, flags: Sequence[str]) -> Path:
    """The library in `directory`, compiled there if it is not yet, saying so on stderr. One process builds
    while others wait (a file lock), under a temporary name, then renamed. RuntimeError with the compiler's
    message."""
    target_path = directory / LIBRARY
    if target_path.exists():
        return target_path
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory / "build.lock"):
        if target_path.exists():  # another process built it while this one waited
            return target_path
        print(f"native ops: building {target_path} with {compiler()} (once per machine and TensorFlow, "
              "about a minute)", file=sys.stderr, flush=True)
        started = time.perf_counter()
        _compile(target_path, flags)
        print(f"native ops: built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return target_path


def _compile(target_path: Path, flags: Sequence[str]) -> None:
    with tempfile.NamedTemporaryFile(dir=target_path.parent, suffix=".so.partial", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        done = subprocess.run([compiler(), *FLAGS, str(SOURCE), "-o", str(partial_path), *flags],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode:
            message = " ".join((done.stderr or done.stdout).split())
            raise RuntimeError(f"{compiler()} failed: {message[:400]}")
        os.replace(partial_path, target_path)
    except subprocess.SubprocessError as error:
        raise RuntimeError(f"{compiler()} did not finish: {error}") from error
    finally:
        partial_path.unlink(missing_ok=True)


def _load_library(path: Path) -> Any:
    import tensorflow as tf

    try:
        return tf.load_op_library(str(path))
    except (tf.errors.OpError, OSError) as error:
        raise RuntimeError(f"TensorFlow cannot load {path}: {error}") from error


def build_flags(march: str) -> list[str]:
    """Everything after the source on the compiler's command line: the target and TensorFlow's flags."""
    return [f"-march={march}", *tensorflow_flags()]


def build_and_load(flags: Sequence[str]) -> Any:
    """Build (or find) the library for `flags` in the user's cache, else a temporary folder, and load it."""
    home = user_cache_home(os.environ)
    if home is not None:
        try:
            return _load_library(build(home / "native" / library_key(flags), flags))
        except OSError:
            pass  # a cache folder that cannot be written: build in a temporary one instead
    build_dir = Path(tempfile.mkdtemp(prefix="lstm-vs-gru-native-"))
    try:
        return _load_library(build(build_dir, flags))  # a loaded library stays mapped once its file is gone
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


@lru_cache(maxsize=1)
def load() -> Any:
    """The op module, built if need be, or None (see the module's docstring); NativeOpsError where the ops
    are required and a compiler failed. The result is kept for the process."""
    wanted = mode()
    if wanted == "off":
        return None
    march = target()
    if march is None:
        print(f"native ops off: they are built for x86-64 CPUs only (this is {platform.machine()}); training "
              f"uses its XLA code (set {NATIVE_ENV}=off to silence this)", file=sys.stderr)
        return None
    try:
        return build_and_load(build_flags(march))
    except (OSError, RuntimeError) as error:
        if wanted == "required" and not isinstance(error, NoCompiler):
            raise NativeOpsError(f"native ops required ({NATIVE_ENV}=required) but not built: {error}") from error
        print(f"native ops off: {error}; training uses its XLA code (slower; set {NATIVE_ENV}=off to silence this)",
              file=sys.stderr)
        return None


def main() -> None:
    """Build the library now (as an install step) rather than in the first training stage: `python -m
    lstm_vs_gru.fused.native_ops`. Exit status 1 where it cannot be built, after the reason."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ[NATIVE_ENV] = "required"
    march = target()
    try:
        ops = load()
    except NativeOpsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if ops is None:
        raise SystemExit(1)
    print(f"native ops ready for {march}: {' '.join(sorted(name for name in dir(ops) if name.endswith('loop') or name.endswith('adam')))}")


if __name__ == "__main__":
    main()
