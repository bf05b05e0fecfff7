"""End to end: the real `dvc` commands on a user's own corpus (a folder of class folders, a CSV, JSON Lines,
Parquet) in a temporary repository: the whole pipeline follows the corpus, a changed document re-runs fetch
onward, and bad input fails in one line leaving the previous outputs as they were."""
from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.dvc_project import Project, make_project, project_stages, small
from tests.user_corpus import CLASSES, documents, frame, write_folder, write_table

pytestmark = pytest.mark.slow  # two full `dvc repro` runs, about a minute each on 2 cores

# One epoch of a tiny model, one seed and the smallest gradient measurements: these tests check where data
# goes, not how well the model learns.
TINY = small(**{"train.epochs": 1, "train.seeds": [0], "tokenize.num_words": 200, "pad.maxlen": 20,
                "gradients.cells": ["lstm"], "gradients.seq_lengths": [5, 10], "gradients.samples": 4})
ALL_STAGES = set(project_stages([0]))
DATA_STAGES = {"fetch", "tokenize", "pad"}
CORPUS_OUTPUTS = ("data/corpus/train.parquet", "data/corpus/test.parquet", "metrics/fetch.json")


def user_project(path: Path, archive: Path, source: str, **params: object) -> Project:
    """A project whose params point at `source` (written by the caller under `path` before or after)."""
    project = make_project(path, archive, **TINY)
    project.set_params(**{"data.source": source, **params})
    return project


def reproduce_all(project: Project) -> None:
    project.commit("the user's corpus")
    assert project.repro() == ALL_STAGES
    project.commit("reproduced")


def restore(project: Project) -> Project:
    """The last commit, whatever a test left in the workspace."""
    project.run("git", "reset", "-q", "--hard")
    project.run("git", "clean", "-qfd")
    project.dvc("checkout", "-q", "--force")
    return project


def predicted_classes(project: Project, text: str) -> list[str]:
    result = project.run(sys.executable, "-m", "lstm_vs_gru.cli.predict", "--json", "--top-k", "9", text)
    return [entry["group"] for entry in json.loads(result.stdout)["top"]]


def fetched_and_followed(project: Project) -> dict:
    """metrics/fetch.json of the reproduced project, once report, model and predict are checked to know the
    corpus's classes, and nothing of the 20 newsgroups."""
    restore(project)
    report = (project.path / "reports/report.md").read_text()
    for name in CLASSES:
        assert f"| {name} |" in report, name
    assert "3-way softmax" in report and "Lab LSTM" not in report and "20 Newsgroups" not in report
    assert sorted(predicted_classes(project, "my invoice was charged twice")) == sorted(CLASSES)
    fetched = project.json("metrics/fetch.json")
    assert fetched["classes"] == len(CLASSES)
    return fetched


def output_bytes(project: Project) -> dict[str, bytes]:
    return {name: (project.path / name).read_bytes() for name in CORPUS_OUTPUTS}


# --- a folder with train/ and test/, and the mess real folders hold ---

@pytest.fixture(scope="module")
def folder_project(tmp_path_factory, small_archive) -> Project:
    project = user_project(tmp_path_factory.mktemp("folder"), small_archive, "tickets")
    root = write_folder(project.path / "tickets", documents(per_class=16), test_every=4)
    (root / "train/billing/.DS_Store").write_bytes(b"\x00\x01Bud1")
    (root / "train/login/scan.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "train/delivery/blank.txt").write_text(" \r\n\r\n")
    (root / "train/billing/bom.txt").write_bytes(codecs.BOM_UTF8 + "Refund for my café order\r\ninvoice".encode())
    (root / "train/billing/latin1.txt").write_bytes("Facture payée, refund please".encode("latin-1"))
    reproduce_all(project)
    return project


def test_folder_source_runs_the_whole_pipeline(folder_project):
    fetched = fetched_and_followed(folder_project)
    assert fetched["kind"] == "folder" and fetched["test_split"] == "source"
    assert fetched["skipped"] == {"hidden": 1, "not_text": 1, "nested_folders": 0, "outside_class_folders": 0}
    assert fetched["dropped_empty"] == 1
    train = pd.read_parquet(folder_project.path / "data/corpus/train.parquet").set_index("id")
    assert train.loc["train/billing/bom.txt", "text"] == "Refund for my café order\ninvoice"
    assert train.loc["train/billing/latin1.txt", "text"] == "Facture payée, refund please"
    assert (fetched["train"]["documents"], fetched["test"]["documents"]) == (len(train), 12)


def test_changing_one_document_reruns_fetch_onward_and_a_skipped_file_nothing_more(folder_project):
    project = restore(folder_project)
    document = project.path / "tickets/train/billing/001.txt"
    document.write_text(document.read_text() + " refund refund")
    assert project.repro("pad") == DATA_STAGES
    stale = json.loads(project.dvc("status", "--json").stdout)
    assert set(stale) == ALL_STAGES - DATA_STAGES
    # The trained metrics are still HEAD's, but the corpus is not: the gate will not compare across corpora.
    refused = project.run(sys.executable, "-m", "lstm_vs_gru.cli.gate", check=False)
    assert refused.returncode == 2 and "metrics of different corpora" in refused.stderr, refused.stderr
    # DVC hashes the whole folder, so fetch re-runs; the corpus it writes is the same, so nothing follows.
    (project.path / "tickets/train/login/.hidden.txt").write_text("not a document")
    assert project.repro("pad") == {"fetch"}


# --- tables ---

@pytest.fixture(scope="module")
def csv_project(tmp_path_factory, small_archive) -> Project:
    """A CSV without a split column: fetch draws a stratified split."""
    project = user_project(tmp_path_factory.mktemp("csv"), small_archive, "data/tickets.csv",
                           **{"data.text_column": "body", "data.label_column": "topic"})
    table = frame(documents(per_class=16), text="body", label="topic")
    table.loc[3, "body"] = ""
    write_table(project.path / "data/tickets.csv", table)
    reproduce_all(project)
    return project


def test_csv_source_runs_the_whole_pipeline_on_a_stratified_split(csv_project):
    fetched = fetched_and_followed(csv_project)
    assert (fetched["kind"], fetched["test_split"], fetched["dropped_empty"]) == ("table", "stratified", 1)
    test = pd.read_parquet(csv_project.path / "data/corpus/test.parquet")
    assert len(test) == 12 and test["group"].value_counts().to_dict() == {name: 4 for name in CLASSES}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_other_table_formats_with_a_split_column(tmp_path, small_archive, suffix):
    """Past their parsing (tests/test_sources.py), all tables take the CSV's path: fetch is enough here."""
    project = user_project(tmp_path, small_archive, f"data/tickets{suffix}", **{"data.split_column": "split"})
    table = frame(documents(per_class=16))
    table["split"] = ["test" if row % 4 == 0 else "train" for row in range(len(table))]
    write_table(project.path / f"data/tickets{suffix}", table)
    project.commit("the user's corpus")
    assert project.repro("fetch") == {"fetch"}
    fetched = project.json("metrics/fetch.json")
    assert (fetched["kind"], fetched["test_split"], fetched["classes"]) == ("table", "source", 3)
    test = pd.read_parquet(project.path / "data/corpus/test.parquet")
    assert sorted(test["text"]) == sorted(table["text"][table["split"] == "test"])
    assert project.repro("fetch") == set()


# --- bad input: one line, nothing written ---

def fails_leaving_outputs(project: Project, expected: str) -> None:
    before = output_bytes(project)
    result = project.dvc("repro", "fetch", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert output_bytes(project) == before


@pytest.mark.parametrize("params, expected", [
    ({"data.text_column": "text"}, "data/tickets.csv: no column 'text' (data.text_column); its columns: body, topic"),
    ({"data.remove": ["headers"]}, "data.remove = [headers]: must be [] while data.source is a table"),
    ({"data.test_size": 0.03}, "cannot split 47 documents of 3 classes with data.test_size = 0.03: "),
])
def test_bad_params_fail_in_one_line(csv_project, params, expected):
    project = restore(csv_project)
    project.set_params(**params)
    fails_leaving_outputs(project, expected)


@pytest.mark.parametrize("labels, expected", [
    pytest.param(lambda table: ["billing"] * len(table), "one class only ('billing'): a classifier needs at least two",
                 id="one-class"),
    pytest.param(lambda table: ["rare"] + list(table["topic"][1:]), "class 'rare' has 1 document; a stratified split",
                 id="class-too-small"),
])
def test_bad_labels_fail_in_one_line(csv_project, labels, expected):
    project = restore(csv_project)
    table = pd.read_csv(project.path / "data/tickets.csv", keep_default_na=False)
    table["topic"] = labels(table)
    write_table(project.path / "data/tickets.csv", table)
    fails_leaving_outputs(project, expected)


def test_a_folder_without_class_folders_fails_in_one_line(folder_project):
    project = restore(folder_project)
    (project.path / "flat").mkdir()
    (project.path / "flat/one.txt").write_text("a document outside any class folder")
    project.set_params(**{"data.source": "flat"})
    fails_leaving_outputs(project, "flat: no class sub-folders (expected flat/<class>/<document file>)")


def test_a_missing_source_is_named(folder_project):
    project = restore(folder_project)
    project.set_params(**{"data.source": "absent.csv"})
    before = output_bytes(project)
    result = project.dvc("repro", "fetch", check=False)
    assert result.returncode != 0 and "No such file or directory" in result.stderr and "absent.csv" in result.stderr
    assert output_bytes(project) == before
