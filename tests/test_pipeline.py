"""End to end: the real `dvc` commands in a temporary git repository on a small archive in the 20news-bydate layout."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.small_archive import build_archive

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("stages", "dvc.yaml", "params.yaml", "gate.yaml", ".dvcignore")
DATA_STAGES = ("fetch", "tokenize", "pad")
# Small enough for minutes on 2 cores, large enough that the model learns the groups.
SMALL_PARAMS = {
    "tokenize.num_words": 400,
    "pad.maxlen": 40,
    "train.epochs": 4,
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


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return build_archive(tmp_path_factory.mktemp("archive") / "20news-bydate.tar.gz",
                         posts_per_group=20, test_posts_per_group=5)


def small(**extra: object) -> dict:
    return {key.replace(".", "__"): value for key, value in {**SMALL_PARAMS, **extra}.items()}


def test_data_stages_cache_and_rerun_only_what_changed(tmp_path, archive):
    project = make_project(tmp_path, archive, **small())
    assert project.repro("pad") == set(DATA_STAGES)

    train = pd.read_parquet(tmp_path / "data/corpus/train.parquet")
    assert len(train) == 400 and train["label"].between(0, 19).all() and train["group"].nunique() == 20
    padded = np.load(tmp_path / "data/padded/train.npz")
    assert padded["x"].shape == (400, 40) and padded["x"].dtype == np.int32
    assert padded["x"].max() < 400 and padded["x"].min() >= 0
    np.testing.assert_array_equal(padded["y"], train["label"].to_numpy())
    assert np.load(tmp_path / "data/padded/test.npz")["x"].shape == (100, 40)
    assert project.json("metrics/tokenize.json")["train"]["documents"] == 400

    assert project.repro("pad") == set()

    project.set_params(**{"pad.maxlen": 30})
    assert project.repro("pad") == {"pad"}
    assert np.load(tmp_path / "data/padded/train.npz")["x"].shape == (400, 30)

    project.set_params(**{"tokenize.num_words": 300})
    assert project.repro("pad") == {"tokenize", "pad"}
    assert np.load(tmp_path / "data/padded/train.npz")["x"].max() < 300


HEADLINE_KEYS = {"cell", "test_accuracy", "test_macro_f1", "val_accuracy", "seconds_per_epoch", "params"}
CELL_KEYS = {"cell", "params", "epochs", "seconds_per_epoch", "train_loss", "train_accuracy", "val_loss",
             "val_accuracy", "test_loss", "test_accuracy", "test_macro_f1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, archive) -> Project:
    """The whole pipeline reproduced once and committed: the baseline of the tests below."""
    project = make_project(tmp_path_factory.mktemp("trained"), archive, **small())
    assert project.repro() == set(project_stages())
    project.commit("baseline run")
    yield project


@pytest.fixture
def clean(trained) -> Project:
    """The committed baseline, whatever the previous test left in the workspace."""
    trained.run("git", "reset", "-q", "--hard")
    trained.run("git", "clean", "-qfd")
    trained.dvc("checkout", "-q", "--force")
    return trained


def project_stages() -> list[str]:
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def test_second_repro_runs_nothing(clean):
    assert clean.repro() == set()


def test_metrics_hold_every_key_in_range(clean):
    for cell in ("lstm", "gru"):
        metrics = clean.json(f"metrics/{cell}.json")
        assert set(metrics) == CELL_KEYS and metrics["cell"] == cell
        assert metrics["epochs"] == SMALL_PARAMS["train.epochs"] and metrics["seconds_per_epoch"] > 0
        for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1"):
            assert 0.0 <= metrics[key] <= 1.0, key
        for key in ("train_loss", "val_loss", "test_loss"):
            assert 0.0 < metrics[key] < 10.0, key
        # The small archive puts group words first: a working model beats chance (0.05) by far.
        assert metrics["test_accuracy"] > 0.5, metrics
        history = pd.read_csv(clean.path / f"plots/{cell}/history.csv")
        assert list(history["epoch"]) == [1, 2, 3, 4] and (history["seconds"] > 0).all()
        predictions = pd.read_csv(clean.path / f"plots/{cell}/predictions.csv")
        assert len(predictions) == 100
        assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["test_accuracy"])
    report = clean.json("metrics/report.json")
    assert set(report) == HEADLINE_KEYS
    lstm = clean.json("metrics/lstm.json")
    assert {key: report[key] for key in HEADLINE_KEYS} == {key: lstm[key] for key in HEADLINE_KEYS}


def test_switching_cell_reruns_only_report_and_shows_in_diffs(clean):
    result = clean.dvc("exp", "run", "-S", "cell=gru")
    assert stages_run(result.stdout) == {"report"}
    gru = clean.json("metrics/gru.json")
    assert clean.json("metrics/report.json")["params"] == gru["params"]

    diff = json.loads(clean.dvc("metrics", "diff", "--json").stdout)
    params_change = diff["metrics/report.json"]["params"]
    assert (params_change["old"], params_change["new"]) == (clean.json("metrics/lstm.json")["params"], gru["params"])

    shown = json.dumps(json.loads(clean.dvc("exp", "show", "--json").stdout))
    assert '"cell": "gru"' in shown and '"cell": "lstm"' in shown


def test_more_epochs_rerun_training_and_report_but_not_data(clean):
    ran = stages_run(clean.dvc("exp", "run", "-S", "train.epochs=2").stdout)
    assert ran & set(DATA_STAGES) == set()
    assert {"train_lstm", "train_gru", "report"} <= ran
    assert clean.json("metrics/lstm.json")["epochs"] == 2


def test_same_params_give_the_same_metrics(clean):
    before = {cell: clean.json(f"metrics/{cell}.json") for cell in ("lstm", "gru")}
    assert {"train_lstm", "train_gru"} <= clean.repro("--force", "train_lstm", "train_gru")
    for cell, metrics in before.items():
        again = clean.json(f"metrics/{cell}.json")
        metrics.pop("seconds_per_epoch"), again.pop("seconds_per_epoch")
        assert again == metrics


def test_plots_show_renders_html(clean, tmp_path):
    clean.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Accuracy per epoch", "Loss per epoch", "Confusion matrix, LSTM"):
        assert title in html
    assert '"val_accuracy"' in html  # the data itself is embedded, not only the titles


def test_gate_fails_when_a_change_really_hurts_the_model(clean):
    gate = [sys.executable, "-m", "stages.gate", "--rev", "HEAD"]
    assert clean.run(*gate).returncode == 0

    clean.set_params(**{"pad.maxlen": 5})  # the small archive's last tokens carry no group
    assert "pad" in clean.repro()
    failed = clean.run(*gate, check=False)
    assert failed.returncode == 1, failed.stdout
    assert re.search(r"metrics/report\.json\s+test_accuracy\b.*(REGRESSION|BELOW FLOOR)", failed.stdout), failed.stdout
