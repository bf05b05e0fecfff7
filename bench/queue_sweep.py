"""Wall time of a parameter sweep on DVC's experiment queue, with 1 and with 2 workers.

    python bench/queue_sweep.py                                  # model.units=32,64,128; 1 then 2 workers
    python bench/queue_sweep.py --units 16 32 64 128 --workers 1 2 --rounds 2
    python bench/queue_sweep.py --out bench/results/queue_sweep.json

In a temporary copy of the project (tests/dvc_project.py) on a small archive in the 20news-bydate layout
(tests/small_archive.py, 20 train / 5 test posts per group by default) with the tests' small parameters:
`dvc repro` once (the baseline; it also builds the native ops if this machine has not), then per round and
worker count `dvc exp run --queue -S model.units=A,B,...` (the whole pipeline from train_lstm on, per value)
and `dvc queue start -j N`, timed from the start to the last experiment collected into the repository
(read from the queue's task records, so no `dvc` polling competes for the cores); the workers are stopped
and the experiments removed before the next sweep. The worker counts alternate within a round, so that the
load of other processes falls on both alike; the 1-minute load average before each sweep is recorded.
XLA's compilation cache is off (LSTM_VS_GRU_XLA_CACHE=off): no sweep starts with programs another compiled.

Prints a table and writes every sweep to bench/results/queue_sweep.json (git-ignored; `--out` to change).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench_common import RESULTS, write_results  # first: see bench_common
from tests.dvc_project import make_project, small
from tests.dvc_queue import DONE_STATUSES, done_tasks, end_workers, experiments, metric, queue, run_queue
from tests.small_archive import build_archive

DEFAULT_OUT = RESULTS / "queue_sweep.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[32, 64, 128], help="model.units values swept")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="`dvc queue start -j` values")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps per worker count")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the tests' small value)")
    parser.add_argument("--posts", type=int, default=20, help="train posts per group of the archive (test: a quarter)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per sweep")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def sweep(project, units: Sequence[int], workers: int, timeout: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    names = queue(project, "model.units=" + ",".join(map(str, units)))
    ran = run_queue(project, jobs=workers, expected=len(names), timeout=timeout)
    seconds = ran["seconds"]
    failed = [info["name"] for info in done_tasks(project)
              if info["name"] in names and info["status"] != DONE_STATUSES["FINISHED"]]
    if failed:
        raise SystemExit(f"experiments failed: {failed}; see `dvc queue logs NAME` in {project.path}")
    shown = experiments(project)
    results = {name: {"units": shown[name]["params"]["params.yaml"]["data"]["model"]["units"],
                      "lstm_test_accuracy": metric(shown[name], "metrics/lstm.json", "test_accuracy"),
                      "gru_test_accuracy": metric(shown[name], "metrics/gru.json", "test_accuracy")}
               for name in names}
    project.dvc("exp", "remove", "--all-commits")
    return {"workers": workers, "experiments": len(names), "wall_s": round(seconds, 2),
            "s_per_experiment": round(seconds / len(names), 2), "load1_before": round(load, 2),
            "worker_restarts": ran["restarts"],
            "results": results}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    extra = {} if args.epochs is None else {"train.epochs": args.epochs}
    settings = {"units": args.units, "workers": args.workers, "rounds": args.rounds, "posts_per_group": args.posts,
                "params": {key.replace("__", "."): value for key, value in small(**extra).items()},
                "xla_cache": "off"}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="queue_sweep_") as tmp:
        archive = build_archive(Path(tmp) / "20news-bydate.tar.gz", posts_per_group=args.posts,
                                test_posts_per_group=max(1, args.posts // 4))
        project = make_project(Path(tmp) / "project", archive, **small(**extra))
        project.env["LSTM_VS_GRU_XLA_CACHE"] = "off"
        try:
            start = time.monotonic()
            project.repro()
            project.commit("baseline run")
            settings["baseline_repro_s"] = round(time.monotonic() - start, 2)
            print(f"baseline dvc repro: {settings['baseline_repro_s']:.1f} s", flush=True)
            for round_ in range(args.rounds):
                order = args.workers if round_ % 2 == 0 else list(reversed(args.workers))
                for workers in order:
                    run = {"round": round_, **sweep(project, args.units, workers, args.timeout)}
                    runs.append(run)
                    print(f"round {round_}, {workers} worker(s): {run['wall_s']:.1f} s", flush=True)
        finally:
            end_workers(project)
    summary = summarize(runs)
    print_table(runs, summary)
    write_results(args.out, settings, {"runs": runs, "summary": summary})


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_workers = {}
    for workers in sorted({run["workers"] for run in runs}):
        walls = [run["wall_s"] for run in runs if run["workers"] == workers]
        by_workers[str(workers)] = {"median_wall_s": round(statistics.median(walls), 2), "sweeps": len(walls)}
    one = by_workers.get("1", {}).get("median_wall_s")
    for entry in by_workers.values():
        entry["speed_up_vs_1"] = round(one / entry["median_wall_s"], 2) if one else None
    return by_workers


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'round':>5} {'workers':>7} {'experiments':>11} {'wall s':>8} {'s/experiment':>12} {'load1 before':>12}")
    for run in runs:
        print(f"{run['round']:>5} {run['workers']:>7} {run['experiments']:>11} {run['wall_s']:>8.1f} "
              f"{run['s_per_experiment']:>12.1f} {run['load1_before']:>12.2f}")
    print(f"\n{'workers':>7} {'median wall s':>13} {'speed-up':>8}  (on {os.cpu_count()} cores)")
    for workers, entry in summary.items():
        speed_up = "" if entry["speed_up_vs_1"] is None else f"{entry['speed_up_vs_1']:.2f}x"
        print(f"{workers:>7} {entry['median_wall_s']:>13.1f} {speed_up:>8}")


if __name__ == "__main__":
    main(sys.argv[1:])
