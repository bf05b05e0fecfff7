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

from tests.dvc_project import SMALL_PARAMS, Project, make_project, project_stages, small, stages_run
from tests.dvc_queue import experiments, metric
from tests.small_archive import GROUPS, build_archive

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


HEADLINE_KEYS = ["cell", "seeds", "test_accuracy", "test_macro_f1", "val_accuracy", "seconds_per_epoch", "params"]
CELL_KEYS = {"cell", "seed", "params", "epochs", "kept_epoch", "trained_with", "seconds_per_epoch", "train_loss", "train_accuracy", "val_loss",
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


def test_second_repro_runs_nothing(clean):
    assert clean.repro() == set()


def test_metrics_hold_every_key_in_range(clean):
    seeds = SMALL_PARAMS["train.seeds"]
    for cell in ("lstm", "gru"):
        for seed in seeds:
            metrics = clean.json(f"metrics/{cell}/seed{seed}.json")
            assert set(metrics) == CELL_KEYS and (metrics["cell"], metrics["seed"]) == (cell, seed)
            assert metrics["epochs"] == SMALL_PARAMS["train.epochs"] and metrics["seconds_per_epoch"] > 0
            assert metrics["trained_with"] in ("native", "xla")  # the fused trainer; native wherever a compiler is
            for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1"):
                assert 0.0 <= metrics[key] <= 1.0, key
            for key in ("train_loss", "val_loss", "test_loss"):
                assert 0.0 < metrics[key] < 10.0, key
            # The small archive puts group words first: a working model beats chance (0.05) by far.
            assert metrics["test_accuracy"] > 0.5, metrics
            live = clean.path / f"dvclive/{cell}/seed{seed}/plots/metrics"  # the per-epoch history: step 0 is epoch 1
            for series in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "train/seconds"):
                assert list(pd.read_csv(live / f"{series}.tsv", sep="\t")["step"]) == [0, 1, 2, 3], series
            predictions = pd.read_csv(clean.path / f"plots/{cell}/seed{seed}/predictions.csv")
            assert len(predictions) == 100
            assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["test_accuracy"])
        # seeds draw different weights, batches and dropout: their runs differ
        assert clean.json(f"metrics/{cell}/seed0.json") != clean.json(f"metrics/{cell}/seed1.json")
    report = clean.json("metrics/report.json")
    assert list(report)[:len(HEADLINE_KEYS)] == HEADLINE_KEYS and report["seeds"] == len(seeds)
    lstm = [clean.json(f"metrics/lstm/seed{seed}.json") for seed in seeds]
    assert report["test_accuracy"] == pytest.approx(np.mean([run["test_accuracy"] for run in lstm]), abs=1e-6)
    assert report["per_seed"]["lstm"]["test_accuracy"] == {str(run["seed"]): run["test_accuracy"] for run in lstm}


def test_adding_a_seed_trains_only_that_seed(clean):
    clean.set_params(**{"train.seeds": [0, 1, 2]})
    assert clean.repro() == {"train_lstm@2", "train_gru@2", "report"}
    assert clean.json("metrics/report.json")["seeds"] == 3
    # an experiment back to two seeds finds every run in the cache
    ran = stages_run(clean.dvc("exp", "run", "-S", "train.seeds=[0,1]").stdout)
    assert ran <= {"report"}


def test_switching_cell_reruns_only_report_and_shows_in_diffs(clean):
    result = clean.dvc("exp", "run", "-S", "cell=gru")
    assert stages_run(result.stdout) == {"report"}
    gru = clean.json("metrics/gru/seed0.json")
    assert clean.json("metrics/report.json")["params"] == gru["params"]

    diff = json.loads(clean.dvc("metrics", "diff", "--json").stdout)
    params_change = diff["metrics/report.json"]["params"]
    assert (params_change["old"], params_change["new"]) == (clean.json("metrics/lstm/seed0.json")["params"],
                                                            gru["params"])

    shown = json.dumps(json.loads(clean.dvc("exp", "show", "--json").stdout))
    assert '"cell": "gru"' in shown and '"cell": "lstm"' in shown


def test_more_epochs_rerun_training_and_report_but_not_data(clean):
    ran = stages_run(clean.dvc("exp", "run", "-S", "train.epochs=2").stdout)
    assert ran & set(DATA_STAGES) == set()
    assert {"train_lstm@0", "train_lstm@1", "train_gru@0", "train_gru@1", "report"} <= ran
    assert clean.json("metrics/lstm/seed1.json")["epochs"] == 2


def test_the_lsa_start_retrains_from_the_cached_vectors(clean):
    """model.embedding_init: lsa re-runs training (and what reads the models), not the data stages or `embed`,
    whose vectors every run already made; the report names the embedding's start."""
    before = clean.json("metrics/gru/seed0.json")
    ran = stages_run(clean.dvc("exp", "run", "-S", "model.embedding_init=lsa").stdout)
    seeds = SMALL_PARAMS["train.seeds"]
    assert ran == {f"train_{cell}@{seed}" for cell in ("lstm", "gru") for seed in seeds} | {"gradients", "report"}
    after = clean.json("metrics/gru/seed0.json")
    assert after["test_loss"] != before["test_loss"] and after["params"] == before["params"]
    title = (clean.path / "reports/report.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert title.startswith("Embedding (from the corpus's LSA vectors) → LSTM/GRU"), title


def test_same_params_give_the_same_metrics(clean):
    files = [f"metrics/{cell}/seed{seed}.json" for cell in ("lstm", "gru") for seed in SMALL_PARAMS["train.seeds"]]
    before = {file: clean.json(file) for file in files}
    assert {"train_lstm@0", "train_gru@1"} <= clean.repro("--force", "train_lstm", "train_gru")
    for file, metrics in before.items():
        again = clean.json(file)
        metrics.pop("seconds_per_epoch"), again.pop("seconds_per_epoch")
        assert again == metrics


def test_plots_show_renders_html(clean, tmp_path):
    clean.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Accuracy per epoch", "Loss per epoch", "Confusion matrix, LSTM"):
        assert title in html
    assert "lstm/seed0/plots/metrics/eval/accuracy.tsv" in html  # the data itself is embedded, not only the titles


def test_gate_fails_when_a_change_really_hurts_the_model(clean):
    gate = [sys.executable, "-m", "lstm_vs_gru.cli.gate", "--rev", "HEAD"]
    assert clean.run(*gate).returncode == 0

    clean.set_params(**{"pad.maxlen": 5})  # the small archive's last tokens carry no group
    assert "pad" in clean.repro()
    failed = clean.run(*gate, check=False)
    assert failed.returncode == 1, failed.stdout
    assert re.search(r"metrics/report\.json\s+per_seed\.lstm\.test_accuracy\.\*.*(REGRESSION|BELOW FLOOR)",
                     failed.stdout), failed.stdout


def test_tuned_experiment_runs_every_stage_and_predicts(clean):
    """configs/tuned.yaml as the README runs it, on the small archive with shorter posts, fewer epochs and one
    seed (the tuned values of every other lever as committed)."""
    project = clean
    options = project.run(sys.executable, "-m", "lstm_vs_gru.cli.set_params", "configs/tuned.yaml").stdout
    ran = project.dvc("exp", "run", "-n", "tuned", *options.split(),
                      "-S", "pad.maxlen=40", "-S", "train.epochs=2", "-S", "train.seeds=[0]")
    assert "Running stage 'report'" in ran.stdout and "Running stage 'gradients'" in ran.stdout

    tuned = experiments(project)["tuned"]
    shown = tuned["params"]["params.yaml"]["data"]
    assert (shown["model"]["pooling"], shown["pad"]["truncating"], shown["train"]["early_stopping"]) == (
        "max_mean", "post", 3)
    applied = yaml.safe_load((project.path / "params.yaml").read_text())
    assert applied["model"]["pooling"] == "max_mean" and applied["pad"]["maxlen"] == 40
    for cell in ("lstm", "gru"):
        run = metric(tuned, f"metrics/{cell}/seed0.json", "trained_with")
        assert run in ("native", "xla")  # max_mean pooling and early stopping stay on the fused trainer
        kept = metric(tuned, f"metrics/{cell}/seed0.json", "kept_epoch")
        assert 1 <= kept <= metric(tuned, f"metrics/{cell}/seed0.json", "epochs") <= 2
    report = project.json("metrics/report.json")
    assert report["seeds"] == 1 and list(report["cells"]) == ["lstm", "gru"]

    predicted = project.run(sys.executable, "-m", "lstm_vs_gru.cli.predict", "--json",
                            "the goalie stopped the puck in the playoffs")
    top = json.loads(predicted.stdout.strip().splitlines()[-1])["top"]
    assert top[0]["group"] in GROUPS
    assert project.repro() == set()  # the experiment's outputs are the workspace's: nothing left to run


def test_tuned_folder_runs_every_stage_beside_the_lab_and_predicts(clean):
    """tuned/ as the README runs it (`dvc repro tuned/dvc.yaml`), here with shorter posts, fewer epochs and one
    seed: its own outputs and dvc.lock under tuned/, the lab's untouched."""
    project = clean
    lab_report = project.json("metrics/report.json")
    project.run(sys.executable, "-m", "lstm_vs_gru.cli.set_params", "configs/tuned.yaml", "--folder", "tuned")
    folder_params = project.path / "tuned" / "params.yaml"
    settings = yaml.safe_load(folder_params.read_text())
    settings["pad"]["maxlen"], settings["train"]["epochs"], settings["train"]["seeds"] = 40, 2, [0]
    folder_params.write_text(yaml.safe_dump(settings, sort_keys=False))

    ran = project.repro("tuned/dvc.yaml")
    assert ran == {f"tuned/dvc.yaml:{stage}" for stage in project_stages([0])}
    for cell in ("lstm", "gru"):
        metrics = project.json(f"tuned/metrics/{cell}/seed0.json")
        assert metrics["trained_with"] in ("native", "xla") and 1 <= metrics["kept_epoch"] <= metrics["epochs"] <= 2
        assert metrics["params"] > project.json(f"metrics/{cell}/seed0.json")["params"]  # 64 units, max_mean
    report = project.json("tuned/metrics/report.json")
    assert (report["seeds"], report["cell"]) == (1, "gru")  # configs/tuned.yaml puts GRU forward
    baselines = [{key: value for key, value in project.json(f"{folder}metrics/baseline.json").items()
                  if key != "fit_seconds"} for folder in ("", "tuned/")]
    assert baselines[0] == baselines[1]  # the same posts, split and baseline params
    assert project.json("metrics/report.json") == lab_report and project.repro() == set()
    assert project.repro("tuned/dvc.yaml") == set()
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    assert json.dumps(shown).count("tuned/metrics/report.json") == 1

    in_folder = Project(project.path / "tuned")
    in_folder.env = project.env
    predicted = in_folder.run(sys.executable, "-m", "lstm_vs_gru.cli.predict", "--json", "--cell", "gru",
                              "the goalie stopped the puck in the playoffs")
    top = json.loads(predicted.stdout.strip().splitlines()[-1])["top"]
    assert top[0]["group"] in GROUPS
