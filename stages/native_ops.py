"""The fused trainer's C++ TensorFlow ops (stages/native_ops.cc), built on first use against the installed
TensorFlow with the machine's C++ compiler and kept in the user's cache folder.

`load()` returns the loaded op module (`tf.load_op_library`: `exact_sparse_adam`, `lstm_forward_loop`,
`lstm_backward_loop`), or None, in which case the trainer keeps its XLA code: when $LSTM_VS_GRU_NATIVE is
"off", or, with a one-line notice on stderr, when no compiler can build the library (about 50 s, once per
machine and TensorFlow: most of it is parsing TensorFlow's and XLA's headers) or TensorFlow cannot load it.
The library is built for this CPU (-march=native) and keyed by the source, the compiler, its flags, TensorFlow and the CPU's
features; it goes to $XDG_CACHE_HOME/lstm-vs-gru/native (or ~/.cache/lstm-vs-gru/native), else to a
temporary folder for the process. The LSTM's loops gave XLA's results bit for bit here; Adam's update
sums in another order, so metrics differ from the XLA path's in the last bits (and then chaotically, as
training amplifies them), never between two runs of one.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from stages.compile_cache import DISABLED, cpu_features, tensorflow_version, user_cache_home

NATIVE_ENV = "LSTM_VS_GRU_NATIVE"
SOURCE = Path(__file__).with_name("native_ops.cc")
LIBRARY = "native_ops.so"
# -fno-math-errno: sqrt may then be vectorised; no -ffast-math, which would change the arithmetic
FLAGS = ("-std=c++17", "-shared", "-fPIC", "-O3", "-march=native", "-fno-math-errno", "-w")
BUILD_TIMEOUT_S = 300


def compiler() -> str:
    return os.environ.get("CXX") or "c++"


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
        raise RuntimeError(f"no C++ compiler ({compiler()!r}: {error})") from error
    return done.stdout.splitlines()[0] if done.stdout else ""


def library_key(flags: Sequence[str]) -> str:
    """What the built library depends on: its source, the compiler, the flags, TensorFlow and the CPU."""
    identity = "\n".join([SOURCE.read_text(), compiler(), compiler_version(), *FLAGS, *flags, tensorflow_version(),
                          cpu_features()])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def build(directory: Path, flags: Sequence[str]) -> Path:
    """The library in `directory`, compiled there if it is not yet (under a temporary name, then renamed:
    two processes building at once each load a whole file). RuntimeError with the compiler's message."""
    target = directory / LIBRARY
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".so.partial", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        done = subprocess.run([compiler(), *FLAGS, str(SOURCE), "-o", str(partial_path), *flags],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode:
            message = " ".join((done.stderr or done.stdout).split())
            raise RuntimeError(f"{compiler()} failed: {message[:400]}")
        os.replace(partial_path, target)
    except subprocess.SubprocessError as error:
        raise RuntimeError(f"{compiler()} did not finish: {error}") from error
    finally:
        partial_path.unlink(missing_ok=True)
    return target


def _load_library(path: Path) -> Any:
    import tensorflow as tf

    try:
        return tf.load_op_library(str(path))
    except (tf.errors.OpError, OSError) as error:
        raise RuntimeError(f"TensorFlow cannot load {path}: {error}") from error


@lru_cache(maxsize=1)
def load() -> Any:
    """The op module, built if need be, or None (see the module's docstring). The
    result is kept for the process."""
    if os.environ.get(NATIVE_ENV, "on").strip().lower() in DISABLED:
        return None
    try:
        flags = tensorflow_flags()
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
    except (OSError, RuntimeError) as error:
        print(f"native ops off: {error}; training uses its XLA code (slower; set {NATIVE_ENV}=off to silence this)",
              file=sys.stderr)
        return None
