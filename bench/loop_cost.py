"""Cost of one iteration of the fused trainer's recurrent loops, on one core.

    python bench/loop_cost.py [--rows 16] [--steps 100] [--units 50] [--repeats 5] [--cpp]
                              [--out bench/results/loop_cost.json]

Each step of the fused trainer runs, per half batch (16 rows with the lab's batch of 32), a forward and a
backward loop of `steps` iterations; the two halves run at once, one per core. This times those loops with
one TensorFlow thread, next to what bounds them: an XLA loop doing almost nothing (the dispatch cost of an
iteration) and loops doing only the recurrent matmul of each direction (and the slice or tile that feeds its
result back); then each of the LSTM's loops alone, as XLA's loop and as the native op that the fused trainer
calls inside its XLA program (lstm_vs_gru/fused/native_ops.cc), and both native loops with the bulk work between them
(the native cases are skipped where the ops cannot be built). The other loops are XLA's, as the fallback runs
them. It prints microseconds per iteration (best of `repeats`) and writes them as JSON. No data needed: the
inputs are random.

`--cpp` adds, in the same run, the LSTM loops written as plain C++ with no dispatch at all (bench/lstm_loop.cc,
Eigen from TensorFlow's headers, built here with g++ -O3 for the CPU's x86-64 level): what a custom kernel could gain.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench_common import RESULTS, ROOT, run_cpp, write_results  # first: it makes the project importable

DEFAULT_OUT = RESULTS / "loop_cost.json"
CPP_SOURCE = ROOT / "bench" / "lstm_loop.cc"
CALLS = 50  # calls per timing


def best_seconds(function: Callable[..., Any], args: Sequence[Any], repeats: int) -> float:
    """The best over `repeats` of the mean wall time of CALLS calls (after two warm-up calls)."""
    import tensorflow as tf

    for _ in range(2):
        tf.nest.map_structure(lambda t: t.numpy(), function(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(CALLS):
            result = function(*args)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best


def scan_loop(body: Callable[[Any], Any], steps: int) -> Callable[[Any], Any]:
    """An XLA-compiled tf.scan of `steps` iterations of `body` on its carry."""
    import tensorflow as tf

    return tf.function(lambda carry: tf.scan(lambda c, _: body(c), tf.zeros(steps), initializer=carry),
                       jit_compile=True)


def recurrence_gradient(recurrence: Callable[[Any], Any], weights: Sequence[Any]) -> Callable[[Any], Any]:
    """Forward and backward loop: the gradients of a max-pooled sum of the states (what GlobalMaxPool1D sends)."""
    import tensorflow as tf

    def both(xw: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(xw)
            loss = tf.reduce_sum(tf.reduce_max(recurrence(xw), 0))
        return tape.gradient(loss, [xw, *weights])

    return tf.function(both, jit_compile=True)


def measure(rows: int, steps: int, units: int, repeats: int) -> list[dict[str, Any]]:
    """Per case, with one TensorFlow thread: milliseconds per call and microseconds per loop iteration."""
    import tensorflow as tf

    from bench.train_speed import configure_threads
    from lstm_vs_gru.fused import native_ops
    from lstm_vs_gru.fused.trainer import (
        gru_recurrence,
        lstm_backward_loop,
        lstm_forward_loop,
        lstm_recurrence,
    )

    configure_threads(1)
    rng = np.random.default_rng(0)

    def normal(*shape: int, scale: float = 0.1) -> Any:
        return tf.constant(rng.normal(scale=scale, size=shape).astype(np.float32))

    lstm_rk, lstm_bias = tf.Variable(normal(units, 4 * units)), tf.Variable(normal(4 * units))
    gru_rk, gru_bias = tf.Variable(normal(units, 3 * units)), tf.Variable(normal(2, 3 * units))
    backward_rk = normal(4 * units, units)
    cases = [
        ("XLA loop, 4-float add (dispatch cost)", scan_loop(lambda c: c + 1.0, steps), [normal(4)], steps),
        (f"matmul {rows}x{units} @ {units}x{4 * units} (LSTM forward)", scan_loop(
            lambda c: tf.tanh(tf.matmul(c, lstm_rk)[:, :units]), steps), [normal(rows, units)], steps),
        (f"matmul {rows}x{4 * units} @ {4 * units}x{units} (LSTM backward)", scan_loop(
            lambda c: tf.tile(tf.matmul(c, backward_rk), [1, 4]), steps), [normal(rows, 4 * units)], steps),
        ("LSTM forward loop", tf.function(lambda xw: lstm_recurrence(xw, lstm_rk, lstm_bias), jit_compile=True),
         [normal(steps, rows, 4 * units, scale=0.5)], steps),
        ("LSTM forward + backward loops", recurrence_gradient(
            lambda xw: lstm_recurrence(xw, lstm_rk, lstm_bias), [lstm_rk, lstm_bias]),
         [normal(steps, rows, 4 * units, scale=0.5)], 2 * steps),
        ("GRU forward + backward loops", recurrence_gradient(
            lambda xw: gru_recurrence(xw, gru_rk, gru_bias, True), [gru_rk, gru_bias]),
         [normal(steps, rows, 3 * units, scale=0.5)], 2 * steps),
    ]
    # each LSTM loop alone, on its inputs (forward: xw, kernel, bias; backward: dhs, cells, gates, kernel):
    # XLA's loop and the native op (lstm_vs_gru/fused/native_ops.cc) as the fused trainer calls it, inside an XLA program
    forward_inputs = [normal(steps, rows, 4 * units, scale=0.5), lstm_rk.value(), lstm_bias.value()]
    backward_inputs = [normal(steps, rows, units), normal(steps, rows, units, scale=1.0),
                       tf.sigmoid(normal(steps, rows, 4 * units, scale=1.0)), normal(units, 4 * units)]
    cases.append(("LSTM forward loop alone (XLA)", tf.function(lstm_forward_loop, jit_compile=True),
                  forward_inputs, steps))
    cases.append(("LSTM backward loop alone (XLA)", tf.function(lstm_backward_loop, jit_compile=True),
                  backward_inputs, steps))
    ops = native_ops.load()
    if ops is not None:
        cases.append(("LSTM forward loop alone (native op in XLA)",
                      tf.function(lambda *inputs: ops.lstm_forward_loop(*inputs), jit_compile=True),
                      forward_inputs, steps))
        cases.append(("LSTM backward loop alone (native op in XLA)",
                      tf.function(lambda *inputs: ops.lstm_backward_loop(*inputs), jit_compile=True),
                      backward_inputs, steps))
        cases.append(("LSTM forward + backward loops (native ops)", recurrence_gradient(
            lambda xw: lstm_recurrence(xw, lstm_rk, lstm_bias, ops), [lstm_rk, lstm_bias]),
            [normal(steps, rows, 4 * units, scale=0.5)], 2 * steps))
    results = []
    for name, function, args, iterations in cases:
        seconds = best_seconds(function, args, repeats)
        results.append({"case": name, "iterations": iterations, "call_ms": seconds * 1e3,
                        "us_per_iteration": seconds * 1e6 / iterations})
    return results


def measure_cpp(rows: int, steps: int, units: int, repeats: int) -> list[dict[str, Any]]:
    """Build bench/lstm_loop.cc against TensorFlow's Eigen and run it: one result per case, as `measure`."""
    import tensorflow as tf

    return run_cpp(CPP_SOURCE, ["-DEIGEN_MAX_ALIGN_BYTES=64", f"-I{tf.sysconfig.get_include()}"],
                   [rows, steps, units, repeats])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16, help="rows per loop (half of the batch)")
    parser.add_argument("--steps", type=int, default=100, help="time steps (maxlen)")
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpp", action="store_true", help="also time the LSTM loops as plain C++ (needs g++)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results = measure(args.rows, args.steps, args.units, args.repeats)
    if args.cpp:
        results += measure_cpp(args.rows, args.steps, args.units, args.repeats)
    print(f"one thread; {args.rows} rows, {args.steps} steps, {args.units} units; best of {args.repeats}")
    print(f"{'case':48s} {'ms/call':>8s} {'µs/iteration':>13s}")
    for row in results:
        print(f"{row['case']:48s} {row['call_ms']:8.3f} {row['us_per_iteration']:13.2f}")
    keys = ("rows", "steps", "units", "repeats", "cpp")
    write_results(args.out, {key: getattr(args, key) for key in keys}, results)


if __name__ == "__main__":
    main()
