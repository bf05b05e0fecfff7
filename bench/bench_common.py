"""What the benchmark scripts share. Imported first by each (`python bench/NAME.py` puts bench/ on the
import path): it makes the project's packages importable from anywhere and keeps TensorFlow's C++ log quiet.
Also: running a measurement in a fresh child process, writing the results, building the C++ programs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # git-ignored
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULT_PREFIX = "RESULT "  # marks a child's result line among TensorFlow's output


def print_result(value: Any) -> None:
    """In a child process: hand `value` to the parent's `child_result`."""
    print(RESULT_PREFIX + json.dumps(value), flush=True)


def child_result(command: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
    """Run `command` (a benchmark script in child mode) from the project root; return what it printed with
    `print_result`, or raise with the end of its stderr."""
    done = subprocess.run(list(command), capture_output=True, text=True, cwd=ROOT, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"benchmark run failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def write_results(out: Path, settings: Mapping[str, Any], results: Any) -> None:
    """The results as JSON at `out` (atomically), with the settings and this machine's core count."""
    from lstm_vs_gru.artifacts import write_json

    write_json(out, {"settings": dict(settings), "cpu_count": os.cpu_count(), "results": results})
    print(f"wrote {out}")


def run_cpp(source: Path, compile_flags: Sequence[str], arguments: Sequence[Any]) -> list[dict[str, Any]]:
    """Build a one-file C++ benchmark with g++ -O3 for the x86-64 level the native ops use (not -march=native:
    see lstm_vs_gru/fused/native_ops.py) in a temporary folder, run it with `arguments`, and return the JSON
    object it prints on each line."""
    from lstm_vs_gru.fused.native_ops import target

    march = [f"-march={target()}"] if target() else []
    with tempfile.TemporaryDirectory() as build:
        binary = Path(build) / source.stem
        subprocess.run(["g++", "-O3", *march, "-std=c++17", *compile_flags, str(source), "-o", str(binary)],
                       check=True)
        output = subprocess.run([str(binary), *map(str, arguments)], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in output.splitlines()]
