"""End to end: the real `dvc` commands in a temporary git repository on a small archive in the 20news-bydate layout."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.dvc_project import ROOT, SMALL_PARAMS, Project, make_project, small, stages_run
from tests.small_archive import build_archive

DATA_STAGES = ("fetch", "tokenize", "pad")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return build_archive(tmp_path_factory.mktemp("archive") / "20news-bydate.tar.gz",
                         posts_per_group=20, test_posts_per_group=5)


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
CELL_KEYS = {"cell", "params", "epochs", "trained_with", "seconds_per_epoch", "train_loss", "train_accuracy", "val_loss",
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
        assert metrics["trained_with"] in ("native", "xla")  # the fused trainer; native wherever a compiler is
        for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1"):
            assert 0.0 <= metrics[key] <= 1.0, key
        for key in ("train_loss", "val_loss", "test_loss"):
            assert 0.0 < metrics[key] < 10.0, key
        # The small archive puts group words first: a working model beats chance (0.05) by far.
        assert metrics["test_accuracy"] > 0.5, metrics
        live = clean.path / f"dvclive/{cell}/plots/metrics"  # the per-epoch history: step 0 is epoch 1
        for series in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "train/seconds"):
            assert list(pd.read_csv(live / f"{series}.tsv", sep="\t")["step"]) == [0, 1, 2, 3], series
        assert (pd.read_csv(live / "train/seconds.tsv", sep="\t")["seconds"] > 0).all()
        assert not (clean.path / f"plots/{cell}/history.csv").exists()
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
    assert "lstm/plots/metrics/eval/accuracy.tsv" in html  # the data itself is embedded, not only the titles


def test_gate_fails_when_a_change_really_hurts_the_model(clean):
    gate = [sys.executable, "-m", "lstm_vs_gru.cli.gate", "--rev", "HEAD"]
    assert clean.run(*gate).returncode == 0

    clean.set_params(**{"pad.maxlen": 5})  # the small archive's last tokens carry no group
    assert "pad" in clean.repro()
    failed = clean.run(*gate, check=False)
    assert failed.returncode == 1, failed.stdout
    assert re.search(r"metrics/report\.json\s+test_accuracy\b.*(REGRESSION|BELOW FLOOR)", failed.stdout), failed.stdout
