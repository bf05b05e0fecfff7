"""What the benchmark scripts share. Imported first by each (`python bench/NAME.py` puts bench/ on the
import path): it makes the project's `stages` importable from anywhere and keeps TensorFlow's C++ log quiet."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # git-ignored
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_cpp(source: Path, compile_flags: Sequence[str], arguments: Sequence[Any]) -> list[dict[str, Any]]:
    """Build a one-file C++ benchmark with g++ -O3 -march=native in a temporary folder, run it with
    `arguments`, and return the JSON object it prints on each line."""
    with tempfile.TemporaryDirectory() as build:
        binary = Path(build) / source.stem
        subprocess.run(["g++", "-O3", "-march=native", "-std=c++17", *compile_flags, str(source), "-o", str(binary)],
                       check=True)
        output = subprocess.run([str(binary), *map(str, arguments)], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in output.splitlines()]
