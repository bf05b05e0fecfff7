"""XLA's persistent compilation cache for the training stages, with the guards TensorFlow leaves out.

With `--tf_xla_persistent_cache_directory` in TF_XLA_FLAGS, TensorFlow saves each program XLA compiles
and loads it in later processes instead of compiling again: the fused trainer's first epoch then skips
most of its compilation (measured in bench/README.md; the results are the same, the machine code being
the same). Three things about that cache make it unsafe as it comes, in TensorFlow 2.21:

- a directory it cannot write, or a disk too full to save an entry, fails the training op itself;
- an entry's key is the program and the device type only, not TensorFlow's version, the CPU the machine
  code was compiled for, or XLA_FLAGS;
- a user's own TF_XLA_FLAGS may already name a cache.

So `enable` points the cache at a folder named for this TensorFlow, CPU and XLA_FLAGS, checks that it can
be written and has room, and otherwise leaves the flags alone (training then just compiles). The folder:
$LSTM_VS_GRU_XLA_CACHE if set ("off" disables the cache), else $XDG_CACHE_HOME/lstm-vs-gru/xla, else
~/.cache/lstm-vs-gru/xla. TensorFlow reads the flag when it first compiles, so call `enable` before that.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Mapping, MutableMapping

CACHE_ENV = "LSTM_VS_GRU_XLA_CACHE"
DISABLED = ("off", "0", "false", "no", "")
FLAG = "--tf_xla_persistent_cache_directory"
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "tf-nightly",
                            "tf-nightly-cpu")
MIN_FREE_BYTES = 512 * 2**20  # an entry of the lab's model is ~0.3 MB; below this, a save could fail the op


def tensorflow_version() -> str:
    """The installed TensorFlow's distribution, version and location, read without importing it (milliseconds:
    a scan of every installed distribution would take a third of a second)."""
    found = []
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    spec = importlib.util.find_spec("tensorflow")
    return " ".join(found + [str(spec.origin if spec else None)])


def cpu_features() -> str:
    """This CPU's instruction-set flags (Linux), else what the platform module knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def machine_key(environ: MutableMapping[str, str]) -> str:
    """A short name for what XLA's compiled code depends on beyond the program: TensorFlow, CPU, XLA_FLAGS."""
    identity = "\n".join([tensorflow_version(), cpu_features(), environ.get("XLA_FLAGS", "")])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def user_cache_home(environ: Mapping[str, str]) -> Path | None:
    """This project's folder in the user's cache ($XDG_CACHE_HOME/lstm-vs-gru, else ~/.cache/lstm-vs-gru),
    or None where there is no home folder to hold it."""
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "lstm-vs-gru"
    try:
        home = Path(environ.get("HOME") or Path.home())
    except (RuntimeError, KeyError):  # no HOME and no password entry (some containers)
        return None
    return home / ".cache" / "lstm-vs-gru"


def cache_root(environ: MutableMapping[str, str]) -> Path | None:
    """The cache's base folder, or None when the user turned it off or there is no home folder to hold it."""
    chosen = environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in DISABLED else Path(chosen).expanduser()
    home = user_cache_home(environ)
    return None if home is None else home / "xla"


def unusable_reason(directory: Path) -> str | None:
    """Why XLA could not save entries in `directory` (creating it if need be), or None if it can."""
    if '"' in str(directory):
        return "its name has a double quote, which TF_XLA_FLAGS cannot carry"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create it ({error.strerror or error})"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "it is not writable"
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        return f"only {free // 2**20} MiB free, below {MIN_FREE_BYTES // 2**20} MiB"
    return None


def enable(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Add this machine's cache folder to TF_XLA_FLAGS in `environ`; return it, or None if the cache is off,
    already configured by the user, or unusable (then a one-line notice goes to stderr)."""
    root = cache_root(environ)
    if root is None or FLAG in environ.get("TF_XLA_FLAGS", ""):
        return None
    directory = root / machine_key(environ)
    reason = unusable_reason(directory)
    if reason:
        print(f"XLA compilation cache off: {directory}: {reason} (set {CACHE_ENV} to another folder, or to off)",
              file=sys.stderr)
        return None
    environ["TF_XLA_FLAGS"] = f'{environ.get("TF_XLA_FLAGS", "")} {FLAG}="{directory}"'.strip()
    return directory
