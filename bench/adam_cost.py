"""Cost of one Adam update of the embedding table: the fused trainer's native op, its XLA fallback, one C++ pass.

    python bench/adam_cost.py [--rows 20000] [--width 128] [--occurrences 3200] [--updates 50] [--repeats 7]
                              [--threads 1 2] [--out bench/results/adam_cost.json]

Every step of the fused trainer ends with Keras' Adam over the whole embedding table (the lab's 20000 x 128,
from the 3,200 per-occurrence gradient rows of a batch of 32 x 100 tokens). This times, in one run and on
random inputs of that shape, each called from a graph loop as in an epoch:

- the update as the fused trainer runs it: the ExactSparseAdam op (lstm_vs_gru/fused/native_ops.cc, built on first use),
  one pass over the table on TensorFlow's threads;
- the update as it runs where the op cannot be built (`ExactAdam.apply_sparse` compiled by XLA): three
  passes (m, v, then the weights);
- the same with `lazy=True` (`train.lazy_adam`): only the batch's rows, not Keras' Adam;
- the same arithmetic as one pass in a plain C++ program (bench/adam_pass.cc, built here with g++ -O3
  -march=<the CPU's x86-64 level> -fopenmp -fno-math-errno; without the last, sqrt is not vectorised and one thread takes
  6 ms) on 1 and 2 threads: the floor the op is measured against.

It prints milliseconds per update (best of `repeats` timings of `updates` updates each) and writes JSON.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench_common import RESULTS, ROOT, run_cpp, write_results  # first: it makes the project importable

DEFAULT_OUT = RESULTS / "adam_cost.json"
CPP_SOURCE = ROOT / "bench" / "adam_pass.cc"


def update_ms(rows: int, width: int, occurrences: int, updates: int, repeats: int, how: str) -> float:
    """Best milliseconds per update of ExactAdam's table update as FastTrainer runs it: `how` = "xla"
    (compiled by XLA), "lazy" (the same, lazy=True) or "native" (the C++ op of lstm_vs_gru/fused/native_ops.cc, the
    gradient rows in two parts as the trainer's two halves give them)."""
    import tensorflow as tf

    from lstm_vs_gru.fused import native_ops
    from lstm_vs_gru.fused.trainer import ExactAdam

    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(0.0, 0.01, (rows, width)).astype(np.float32))
    optimizer = ExactAdam([table], 1e-3, lazy=how == "lazy")
    ids = tf.constant(rng.integers(0, rows, occurrences).astype(np.int32))
    values = tf.constant(rng.normal(0.0, 0.01, (occurrences, width)).astype(np.float32))
    shape = tf.constant((rows, width), tf.int32)
    ops = native_ops.load() if how == "native" else None
    if how == "native" and ops is None:
        raise SystemExit("the native ops did not build here (see the notice above)")

    @tf.function(jit_compile=True, autograph=False)
    def xla_update() -> Any:
        with tf.control_dependencies(optimizer.apply_sparse([(0, tf.IndexedSlices(values, ids, shape))])):
            return tf.constant(True)

    def update() -> Any:
        if ops is None:
            return xla_update()
        half = occurrences // 2
        return optimizer.apply_sparse_native(ops, 0, ids, [values[:half], values[half:]])

    @tf.function(autograph=False)
    def run(count: Any) -> Any:
        def body(i: Any) -> Any:
            with tf.control_dependencies([update()]):
                with tf.control_dependencies([optimizer.count_step()]):
                    return i + 1

        return tf.while_loop(lambda i: i < count, body, [tf.constant(0)], parallel_iterations=1)

    run(tf.constant(2))  # compile
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(tf.constant(updates))
        best = min(best, (time.perf_counter() - started) / updates)
    return best * 1e3


def cpp_results(rows: int, width: int, occurrences: int, updates: int, repeats: int,
                threads: Sequence[int]) -> list[dict[str, Any]]:
    """Build bench/adam_pass.cc and run it: one result per thread count."""
    return run_cpp(CPP_SOURCE, ["-fopenmp", "-fno-math-errno"], [rows, width, occurrences, updates, repeats, *threads])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of the table (tokenize.num_words)")
    parser.add_argument("--width", type=int, default=128, help="model.embedding_dim")
    parser.add_argument("--occurrences", type=int, default=3200, help="gradient rows a step (batch x maxlen)")
    parser.add_argument("--updates", type=int, default=50, help="updates per timing")
    parser.add_argument("--repeats", type=int, default=7, help="timings; the best one counts")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="C++ thread counts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    shape = (args.rows, args.width, args.occurrences, args.updates, args.repeats)
    results = [{"case": "native op, the fused trainer's update (1 pass)", "ms_per_update": update_ms(*shape, "native")},
               {"case": "XLA, the update without the native op (3 passes)", "ms_per_update": update_ms(*shape, "xla")},
               {"case": "XLA, lazy Adam (the batch's rows only; not Keras' Adam)",
                "ms_per_update": update_ms(*shape, "lazy")},
               *cpp_results(*shape, args.threads)]
    table_mb = 3 * args.rows * args.width * 4 / 1e6
    print(f"{args.rows} x {args.width} table, {args.occurrences} gradient rows; weights, m and v: {table_mb:.0f} MB "
          f"read and written per update at best; best of {args.repeats} x {args.updates} updates")
    print(f"{'case':58s} {'ms/update':>10s}")
    for row in results:
        print(f"{row['case']:58s} {row['ms_per_update']:10.3f}")
    keys = ("rows", "width", "occurrences", "updates", "repeats", "threads")
    write_results(args.out, {key: getattr(args, key) for key in keys}, results)


if __name__ == "__main__":
    main()
