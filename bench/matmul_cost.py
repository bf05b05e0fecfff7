"""The fused trainer's matmuls, compiled by XLA, against NumPy's BLAS on the same shapes, on one core.

    python bench/matmul_cost.py [--rows 16] [--steps 100] [--embedding 128] [--units 50] [--distinct 896]
                                [--repeats 7] [--no-flag-variants] [--out bench/results/matmul_cost.json]

XLA's CPU backend hands each dot to Eigen, as compiled into TensorFlow's wheel; NumPy's OpenBLAS picks its
kernels for this CPU when it starts. The gap between the two is what a matmul written for this CPU could
gain. Each side runs in its own child process with one thread (XLA reads XLA_FLAGS once per process, and
OpenBLAS reads OPENBLAS_NUM_THREADS when NumPy loads), and XLA also runs under the XLA_FLAGS that ask for
other dot libraries (oneDNN, XNNPACK, the LLVM IR GEMM), to show whether any of them changes XLA's choice
(XLA's default runs before and after them, and counts its better time). It prints microseconds and GFLOP/s
per matmul (best of `repeats`) and writes them as JSON. The inputs are random; no data is needed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from bench_common import RESULTS, child_result, print_result, write_results  # first: see bench_common

DEFAULT_OUT = RESULTS / "matmul_cost.json"
FLOP_PER_CALL = 2e7  # calls per timing: enough for ~10 ms of work per timing at the shapes' speeds
FLAG_VARIANTS = (
    "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_backend_extra_options=xla_force_enable_experimental_llvm_ir_gemm",
    "--xla_cpu_prefer_vector_width=512",
)


def step_shapes(rows: int, steps: int, embedding: int, units: int, distinct: int) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of one half batch's matmuls in an LSTM step of the fused trainer."""
    gates = 4 * units
    return [
        ("forward loop: h @ recurrent kernel", rows, units, gates),
        ("backward loop: dz @ recurrent kernel^T", rows, gates, units),
        ("distinct tokens' input projection", distinct, embedding, gates),
        ("input kernel's gradient", embedding, distinct, gates),
        ("recurrent kernel's gradient", units, steps * rows, gates),
        ("per-occurrence table gradient", steps * rows, gates, embedding),
    ]


def calls_for(m: int, k: int, n: int) -> int:
    return max(10, int(FLOP_PER_CALL / (2 * m * k * n)))


def time_numpy(shapes: Sequence[tuple[str, int, int, int]], repeats: int) -> list[float]:
    """Seconds per `a @ b` for each shape: the best over `repeats` of the mean of a timing's calls."""
    import numpy as np

    rng = np.random.default_rng(0)
    seconds = []
    for _, m, k, n in shapes:
        a, b = (rng.normal(size=shape).astype(np.float32) for shape in ((m, k), (k, n)))
        calls, best = calls_for(m, k, n), float("inf")
        for _ in range(repeats + 1):  # the first timing warms up
            start = time.perf_counter()
            for _ in range(calls):
                a @ b
            best = min(best, (time.perf_counter() - start) / calls)
        seconds.append(best)
    return seconds


def time_xla(shapes: Sequence[tuple[str, int, int, int]], repeats: int) -> list[float]:
    """Seconds per matmul for each shape, as XLA runs it inside one compiled loop of `calls` matmuls (each
    depends on the last, as in the recurrent loops, so none can be skipped or run at once)."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    seconds = []
    for _, m, k, n in shapes:
        a, b = (tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in ((m, k), (k, n)))
        calls = calls_for(m, k, n)
        loop = tf.function(lambda a, b: tf.scan(lambda c, _: tf.matmul(a + c[0, 0] * 0.0, b), tf.zeros(calls),
                                                initializer=tf.zeros((m, n)))[-1], jit_compile=True)
        best = float("inf")
        for _ in range(repeats + 1):  # the first call compiles
            start = time.perf_counter()
            loop(a, b).numpy()
            best = min(best, (time.perf_counter() - start) / calls)
        seconds.append(best)
    return seconds


def run_child(args: argparse.Namespace, side: str, xla_flags: str) -> list[float]:
    """One side's timings in a fresh process with one thread (and `xla_flags` as XLA_FLAGS)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run", side, *shape_arguments(args),
               "--repeats", str(args.repeats)]
    env = {**os.environ, "XLA_FLAGS": xla_flags, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return child_result(command, env)


def shape_arguments(args: argparse.Namespace) -> list[str]:
    return [f"--{key}={getattr(args, key)}" for key in ("rows", "steps", "embedding", "units", "distinct")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16, help="rows per part (half of the lab's batch of 32)")
    parser.add_argument("--steps", type=int, default=100, help="time steps (maxlen)")
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--distinct", type=int, default=896,
                        help="padded distinct tokens per part (896 on the lab's data, seeds 0-3)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-flag-variants", action="store_true", help="XLA with default flags only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--run", choices=("numpy", "xla"), help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    shapes = step_shapes(args.rows, args.steps, args.embedding, args.units, args.distinct)
    if args.run:
        print_result((time_numpy if args.run == "numpy" else time_xla)(shapes, args.repeats))
        return
    variants = {"NumPy (OpenBLAS)": ("numpy", ""), "XLA": ("xla", "")}
    if not args.no_flag_variants:
        variants.update({f"XLA {flags}": ("xla", flags) for flags in FLAG_VARIANTS})
    seconds = {name: run_child(args, side, flags) for name, (side, flags) in variants.items()}
    if len(variants) > 2:  # XLA's default again after the variants, best of both: one child's noise is not a gap
        seconds["XLA"] = [min(pair) for pair in zip(seconds["XLA"], run_child(args, "xla", ""))]
    results = [{"matmul": name, "m": m, "k": k, "n": n,
                **{side: {"us": times[i] * 1e6, "gflops": 2 * m * k * n / times[i] / 1e9}
                   for side, times in seconds.items()}}
               for i, (name, m, k, n) in enumerate(shapes)]
    print(f"one thread; µs per matmul (GFLOP/s), best of {args.repeats}")
    print(f"{'matmul':40s} {'m x k @ k x n':>18s} {'NumPy (OpenBLAS)':>18s} {'XLA':>18s}")
    for row in results:
        cells = [f"{row[side]['us']:8.1f} ({row[side]['gflops']:5.1f})" for side in ("NumPy (OpenBLAS)", "XLA")]
        shape = f"{row['m']}x{row['k']}@{row['k']}x{row['n']}"
        print(f"{row['matmul']:40s} {shape:>18s} {cells[0]:>18s} {cells[1]:>18s}")
    for name in list(seconds)[2:]:
        ratios = [row[name]["us"] / row["XLA"]["us"] for row in results]
        print(f"{name}: {min(ratios):.2f}-{max(ratios):.2f} x XLA's default time")
    keys = ("rows", "steps", "embedding", "units", "distinct", "repeats")
    write_results(args.out, {key: getattr(args, key) for key in keys}, results)


if __name__ == "__main__":
    main()
