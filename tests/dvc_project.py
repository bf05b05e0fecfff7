"""A throw-away copy of the project in its own git repository, driven by the real `dvc` commands."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("stages", "lstm_vs_gru", "configs", "dvc.yaml", "params.yaml", "gate.yaml", ".dvcignore")
# Small enough for minutes on 2 cores, large enough that the model learns the groups.
SMALL_PARAMS = {
    "tokenize.num_words": 400,
    "pad.maxlen": 40,
    "train.epochs": 4,
    "train.seeds": [0, 1],
    "train.batch_size": 16,
    "train.learning_rate": 0.02,
    "model.embedding_dim": 32,
    "model.units": 16,
    "model.dense_units": 32,
    "model.dropout": 0.1,
    "gradients.seq_lengths": [20, 40],
    "gradients.samples": 8,
}


class Project:
    """A throw-away copy of the project in its own git repository."""

    def __init__(self, path: Path):
        self.path = path
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
        self.env.pop("PYTHONPATH", None)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def repro(self, *args: str) -> set[str]:
        """Run `dvc repro` and return the names of the stages that ran."""
        return stages_run(self.dvc("repro", *args).stdout)

    def set_params(self, **dotted: object) -> None:
        path = self.path / "params.yaml"
        raw = yaml.safe_load(path.read_text())
        for key, value in dotted.items():
            *parents, leaf = key.split(".")
            node = raw
            for part in parents:
                node = node[part]
            node[leaf] = value
        path.write_text(yaml.safe_dump(raw, sort_keys=False))

    def json(self, relative: str) -> dict:
        return json.loads((self.path / relative).read_text())

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


def project_stages(seeds: Sequence[int] = SMALL_PARAMS["train.seeds"]) -> list[str]:
    """dvc.yaml's stages, each training stage once per seed (its matrix)."""
    names = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        names += [f"{name}@{seed}" for seed in seeds] if "matrix" in stage else [name]
    return names


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_project(path: Path, archive: Path, **params: object) -> Project:
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, path / name)
    (path / "data").mkdir()
    shutil.copy2(archive, path / "data" / "20news-bydate.tar.gz")
    project = Project(path)
    project.env["LSTM_VS_GRU_EXTRA_SHA256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    project.set_params(**{key.replace("__", "."): value for key, value in params.items()})
    project.run("git", "init", "-q", "-b", "main")
    project.run("git", "config", "user.email", "ci@example.com")
    project.run("git", "config", "user.name", "CI")
    project.dvc("init", "-q")
    project.dvc("config", "core.autostage", "true")
    project.commit("small project")
    return project


def small(**extra: object) -> dict:
    return {key.replace(".", "__"): value for key, value in {**SMALL_PARAMS, **extra}.items()}
