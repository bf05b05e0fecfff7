"""The tokenize and pad stage mains, run in a temporary project on a tiny hand-made corpus."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lstm_vs_gru import artifacts
from stages import pad, tokenize
from lstm_vs_gru.tokenizer import Vocabulary

PROJECT = Path(__file__).resolve().parents[1]

TRAIN = [
    ("alt.atheism/1", "alt.atheism", 0, "God is; god IS.\nGood"),  # god is god is good
    ("sci.space/2", "sci.space", 1, "Space is big, space!"),      # space is big space
    ("alt.atheism/3", "alt.atheism", 0, ""),
]
TEST = [
    ("sci.space/4", "sci.space", 1, "Is space good? Mars!"),       # is space good mars
    ("alt.atheism/5", "alt.atheism", 0, "god god god god god"),
]
# Training counts in first-seen order: god 2, is 3, good 1, space 2, big 1
# -> ranks: is 1, god 2, space 3 (tie with god, seen later), good 4, big 5 (tie with good, seen later).
# num_words 4 keeps ranks 1..3.
TRAIN_SEQUENCES = [[2, 1, 2, 1], [3, 1, 3], []]
TEST_SEQUENCES = [[1, 3], [2, 2, 2, 2, 2]]


def write_corpus(rows: list[tuple], split: str) -> None:
    frame = pd.DataFrame(rows, columns=["id", "group", "label", "text"]).astype({"label": "int32"})
    artifacts.write_table(artifacts.corpus_path(split), frame)


def write_params(**changes: dict) -> None:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in changes.items():
        raw[section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_params(tokenize={"num_words": 4}, pad={"maxlen": 3, "padding": "pre", "truncating": "pre"})
    write_corpus(TRAIN, "train")
    write_corpus(TEST, "test")
    return tmp_path


def ragged(arrays: dict[str, np.ndarray]) -> list[list[int]]:
    ids, offsets = arrays["ids"], arrays["offsets"]
    return [ids[start:end].tolist() for start, end in zip(offsets[:-1], offsets[1:])]


def test_tokenize_writes_tokens_vocabulary_and_metrics(project):
    tokenize.main()
    train, test = (artifacts.read_npz(artifacts.tokens_path(split)) for split in ("train", "test"))
    assert ragged(train) == TRAIN_SEQUENCES and ragged(test) == TEST_SEQUENCES
    for arrays, labels in ((train, [0, 1, 0]), (test, [1, 0])):
        assert arrays["ids"].dtype == np.int32 and arrays["offsets"].dtype == np.int64
        assert arrays["labels"].dtype == np.int32 and arrays["labels"].tolist() == labels
        assert arrays["groups"].dtype.kind == "U" and arrays["groups"].tolist() == ["alt.atheism", "sci.space"]

    vocabulary = Vocabulary.from_json(artifacts.VOCAB.read_text(encoding="utf-8"))
    assert vocabulary.words == ("is", "god", "space", "good", "big")
    assert vocabulary.counts == (3, 2, 2, 1, 1)
    assert vocabulary.document_count == 3 and vocabulary.lower is True

    metrics = json.loads(artifacts.metrics_path("tokenize").read_text())
    assert metrics["num_words"] == 4 and metrics["vocabulary_size"] == 5 and metrics["kept_words"] == 3
    assert metrics["train"] == {
        "documents": 3, "tokens": 9, "kept_tokens": 7, "oov_share": 0.222222, "empty_documents": 1,
        "median_length": 3.0, "p90_length": pytest.approx(3.8),  # lengths 4, 3, 0
    }
    assert metrics["test"] == {
        "documents": 2, "tokens": 9, "kept_tokens": 7, "oov_share": 0.222222, "empty_documents": 0,
        "median_length": 3.5, "p90_length": pytest.approx(4.7),  # lengths 2, 5
    }


def test_pad_writes_padded_arrays_and_metrics_without_vocabulary_or_corpus(project):
    tokenize.main()
    # pad depends on the token arrays only: the vocabulary and the corpus may be gone.
    artifacts.VOCAB.unlink()
    shutil.rmtree(artifacts.CORPUS_DIR)
    pad.main()
    train, test = (artifacts.read_npz(artifacts.padded_path(split)) for split in ("train", "test"))
    assert train["x"].dtype == np.int32 and train["y"].dtype == np.int32
    assert train["x"].tolist() == [[1, 2, 1], [3, 1, 3], [0, 0, 0]]  # truncated pre, exact, empty
    assert test["x"].tolist() == [[0, 1, 3], [2, 2, 2]]               # padded pre, truncated pre
    assert train["y"].tolist() == [0, 1, 0] and test["y"].tolist() == [1, 0]
    assert test["groups"].tolist() == ["alt.atheism", "sci.space"]

    metrics = json.loads(artifacts.metrics_path("pad").read_text())
    assert metrics["maxlen"] == 3 and metrics["padding"] == "pre" and metrics["truncating"] == "pre"
    assert metrics["train"] == {"documents": 3, "truncated_share": 0.333333, "padded_share": 0.333333,
                                "empty_share": 0.333333}
    assert metrics["test"] == {"documents": 2, "truncated_share": 0.5, "padded_share": 0.5, "empty_share": 0.0}


def test_pad_post_and_longer_maxlen(project):
    tokenize.main()
    write_params(tokenize={"num_words": 4}, pad={"maxlen": 4, "padding": "post", "truncating": "post"})
    pad.main()
    train, test = (artifacts.read_npz(artifacts.padded_path(split))["x"] for split in ("train", "test"))
    assert train.tolist() == [[2, 1, 2, 1], [3, 1, 3, 0], [0, 0, 0, 0]]
    assert test.tolist() == [[1, 3, 0, 0], [2, 2, 2, 2]]


def test_tokenize_without_corpus_fails_cleanly(project, capsys):
    artifacts.corpus_path("train").unlink()
    with pytest.raises(SystemExit) as exit_info:
        tokenize.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/corpus/train.parquet: not found (run the fetch stage first)\n"


@pytest.mark.parametrize("rows", [
    [("a/1", "b.group", 0, "x"), ("a/2", "a.group", 1, "y")],  # labels not in sorted name order
    [("a/1", "a.group", 0, "x"), ("a/2", "b.group", 0, "y")],  # two groups share a label
    [("a/1", "a.group", 0, "x"), ("a/2", "b.group", 2, "y")],  # label 1 missing
])
def test_tokenize_rejects_inconsistent_labels(project, capsys, rows):
    write_corpus(rows, "train")
    write_corpus(rows[:1], "test")
    with pytest.raises(SystemExit):
        tokenize.main()
    assert capsys.readouterr().err.startswith("error: corpus: labels must be 0..n-1")


def test_tokenize_rejects_a_table_without_text(project, capsys):
    artifacts.write_table(artifacts.corpus_path("test"), pd.DataFrame({"id": ["a/1"], "group": ["a"], "label": [0]}))
    with pytest.raises(SystemExit):
        tokenize.main()
    assert capsys.readouterr().err.startswith("error: data/corpus/test.parquet: not a corpus table")


def test_pad_without_tokens_fails_cleanly(project, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pad.main()
    assert exit_info.value.code == 2
    assert "data/tokens/train.npz: not found (run `dvc repro tokenize`)" in capsys.readouterr().err


def test_pad_rejects_inconsistent_offsets(project, capsys):
    tokenize.main()
    arrays = artifacts.read_npz(artifacts.tokens_path("train"))
    artifacts.write_npz(artifacts.tokens_path("train"), **{**arrays, "offsets": arrays["offsets"][:-1]})
    with pytest.raises(SystemExit):
        pad.main()
    assert "offsets do not match" in capsys.readouterr().err


def test_stages_do_not_import_tensorflow_or_keras():
    code = ("import sys, stages.tokenize, stages.pad, lstm_vs_gru.tokenizer; "
            "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True)
