"""DVC's experiment queue, driven for tests and benchmarks: queue a sweep, run it with N workers, wait for
it without polling DVC, read the results, and end every worker process a run leaves behind."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import psutil

from tests.dvc_project import Project

# dvc/repo/experiments/executor/base.py: TaskStatus. Each started task writes its status to
# .dvc/tmp/exps/run/<task>/<task>.run; FINISHED means its results are collected into the repository.
DONE_STATUSES = {"FAILED": 4, "CANCELED": 5, "FINISHED": 6}
INFOFILES = ".dvc/tmp/exps/run/*/*.run"
WORKERLESS_S = 3  # tasks left and no worker for this long: start the workers again


def queue(project: Project, *set_params: str, targets: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run --queue -S ...`: one experiment per combination; returns their names."""
    args = [part for value in set_params for part in ("-S", value)]
    out = project.dvc("exp", "run", "--queue", *args, *targets).stdout
    return re.findall(r"Queued experiment '([^']+)'", out)


def run_queue(project: Project, jobs: int, expected: int, timeout: float = 600) -> dict:
    """`dvc queue start -j JOBS`, then wait until `expected` tasks are done (their results collected, or
    failed); returns the wall seconds from the start to the last task done and how often the workers had to
    be started again. DVC's workers sometimes all exit with tasks still queued (treeverse/dvc#10562, still
    in DVC 3.67; `dvc queue start` again resumes the queue), so when none is left, they are started again.
    The workers are then stopped (`dvc queue stop`); on a timeout they are ended and the error shows
    `dvc queue status`."""
    already = len(done_tasks(project))
    start = time.monotonic()
    project.dvc("queue", "start", "-j", str(jobs))
    restarts, idle_since = 0, None
    while len(done_tasks(project)) - already < expected:
        now = time.monotonic()
        if now - start > timeout:
            status = project.dvc("queue", "status", check=False).stdout
            end_workers(project)
            raise AssertionError(f"the queue did not finish {expected} tasks in {timeout:.0f} s:\n{status}")
        if any("queue-worker" in " ".join(_cmdline(proc)) for proc in workers(project)):
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since > WORKERLESS_S:
            project.dvc("queue", "start", "-j", str(jobs))
            restarts, idle_since = restarts + 1, None
        time.sleep(0.5)
    seconds = time.monotonic() - start
    stop_workers(project)
    return {"seconds": seconds, "restarts": restarts}


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def done_tasks(project: Project) -> list[dict]:
    """The executor records of the tasks that are done (collected, failed or cancelled)."""
    done = []
    for path in project.path.glob(INFOFILES):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):  # being written
            continue
        if info.get("status") in DONE_STATUSES.values():
            done.append(info)
    return done


def stop_workers(project: Project, timeout: float = 30) -> None:
    """`dvc queue stop` (the workers end once idle), then wait for them; whatever is left is ended."""
    project.dvc("queue", "stop", check=False)
    psutil.wait_procs(workers(project), timeout=timeout)
    end_workers(project)


def end_workers(project: Project) -> None:
    """End, by process id, every DVC process working in this project: queue workers, their experiment
    runs and stages (in the project or in its .dvc/tmp/exps copies). For finalizers."""
    procs = workers(project)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def workers(project: Project) -> list[psutil.Process]:
    """Processes whose working folder is in the project, other than this one: DVC's queue workers,
    the experiments they run, and those experiments' stages."""
    root = project.path.resolve()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid():
                continue
            cwd = Path(proc.cwd())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if cwd == root or root in cwd.parents:
            found.append(proc)
    return found


def experiments(project: Project, *args: str) -> dict[str, dict]:
    """`dvc exp show --json` (with ARGS), flattened: experiment name -> its data (`params`, `metrics`, ...)."""
    shown = json.loads(project.dvc("exp", "show", "--json", *args).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def metric(data: dict, path: str, key: str) -> object:
    """One metric of an experiment's data from `experiments`."""
    return data["metrics"][path]["data"][key]
