"""Cost of one Adam update of the embedding table: the fused trainer's XLA update against one C++ pass.

    python bench/adam_cost.py [--rows 20000] [--width 128] [--occurrences 3200] [--updates 50] [--repeats 7]
                              [--threads 1 2] [--out bench/results/adam_cost.json]

Every step of the fused trainer ends with Keras' Adam over the whole embedding table (the lab's 20000 x 128,
from the 3,200 per-occurrence gradient rows of a batch of 32 x 100 tokens). This times, in one run and on
random inputs of that shape:

- the update as the fused trainer runs it (`ExactAdam.apply_sparse` compiled by XLA, called from a graph
  loop as in an epoch): XLA makes three passes of it (m, v, then the weights), on one thread;
- the same with `lazy=True` (`train.lazy_adam`): only the batch's rows, not Keras' Adam;
- the same arithmetic as one pass in plain C++ (bench/adam_pass.cc, built here with g++ -O3 -march=native
  -fopenmp -fno-math-errno; without the last, sqrt is not vectorised and one thread takes 6 ms) on 1 and 2
  threads: what a custom kernel could gain.

It prints milliseconds per update (best of `repeats` timings of `updates` updates each) and writes JSON.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench_common import RESULTS, ROOT, run_cpp, write_results  # first: it makes `stages` importable

DEFAULT_OUT = RESULTS / "adam_cost.json"
CPP_SOURCE = ROOT / "bench" / "adam_pass.cc"


def xla_update_ms(rows: int, width: int, occurrences: int, updates: int, repeats: int, lazy: bool) -> float:
    """Best milliseconds per update of ExactAdam's table update, compiled as FastTrainer compiles it."""
    import tensorflow as tf

    from stages.fast_training import ExactAdam

    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(0.0, 0.01, (rows, width)).astype(np.float32))
    optimizer = ExactAdam([table], 1e-3, lazy=lazy)
    ids = tf.constant(rng.integers(0, rows, occurrences).astype(np.int32))
    values = tf.constant(rng.normal(0.0, 0.01, (occurrences, width)).astype(np.float32))
    shape = tf.constant((rows, width), tf.int32)

    @tf.function(jit_compile=True, autograph=False)
    def update() -> Any:
        with tf.control_dependencies(optimizer.apply_sparse([(0, tf.IndexedSlices(values, ids, shape))])):
            return tf.constant(True)

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
    results = [{"case": "XLA, the fused trainer's update (3 passes, 1 thread)",
                "ms_per_update": xla_update_ms(*shape, lazy=False)},
               {"case": "XLA, lazy Adam (the batch's rows only; not Keras' Adam)",
                "ms_per_update": xla_update_ms(*shape, lazy=True)},
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
