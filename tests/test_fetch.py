"""stages.fetch: the stage's main() on the small archive, in a throw-away project directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lstm_vs_gru import corpus
from stages import fetch
from lstm_vs_gru.artifacts import corpus_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch, small_archive) -> Path:
    """A directory with params.yaml and the small archive at data/20news-bydate.tar.gz, as the cwd."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "20news-bydate.tar.gz").write_bytes(small_archive.read_bytes())
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(corpus.EXTRA_SHA256_ENV, raising=False)
    return tmp_path


def set_remove(project: Path, remove: list[str]) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"]["remove"] = remove
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_writes_the_corpus_tables(project, monkeypatch, capsys, small_archive_sha256):
    monkeypatch.setenv(corpus.EXTRA_SHA256_ENV, small_archive_sha256)
    set_remove(project, ["headers", "quotes"])
    fetch.main()
    posts = corpus.read_archive("data/20news-bydate.tar.gz", accepted={small_archive_sha256})
    for split, size in (("train", 120), ("test", 60)):
        written = pd.read_parquet(project / corpus_path(split))
        expected = corpus.corpus_frame(posts[split], ("headers", "quotes"))
        assert len(written) == size and written["label"].dtype == "int32"
        assert written.astype(object).equals(expected.astype(object))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "fetch: train: 120 documents, 20 classes, removed headers,quotes -> data/corpus/train.parquet",
        "fetch: test: 60 documents, 20 classes, removed headers,quotes -> data/corpus/test.parquet",
        "fetch: skipped nothing -> metrics/fetch.json",
    ]
    assert sorted(path.name for path in (project / "data" / "corpus").iterdir()) == ["test.parquet", "train.parquet"]
    metrics = json.loads((project / "metrics" / "fetch.json").read_text())
    assert metrics["kind"] == "archive" and metrics["classes"] == 20 and metrics["test_split"] == "source"
    assert (metrics["train"], metrics["test"]) == ({"documents": 120}, {"documents": 60})


def test_wrong_checksum_fails_in_one_line_and_writes_nothing(project, capsys, small_archive_sha256):
    old = {split: project / corpus_path(split) for split in ("train", "test")}
    old["train"].parent.mkdir(parents=True)
    old["train"].write_bytes(b"previous output")
    with pytest.raises(SystemExit) as exited:
        fetch.main()
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: data/20news-bydate.tar.gz: sha256 mismatch: expected ")
    assert small_archive_sha256 in error and all(known in error for known in corpus.KNOWN_SHA256)
    assert old["train"].read_bytes() == b"previous output" and not old["test"].exists()
    assert [path.name for path in old["train"].parent.iterdir()] == ["train.parquet"]


def test_missing_archive_fails_cleanly(project, capsys):
    (project / "data" / "20news-bydate.tar.gz").unlink()
    with pytest.raises(SystemExit) as exited:
        fetch.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: data/20news-bydate.tar.gz: not found\n"
    assert not (project / "data" / "corpus").exists()


def test_runs_as_a_module_without_tensorflow(project, small_archive_sha256):
    # runpy.run_module(..., run_name="__main__") is what `python -m stages.fetch` does.
    script = ("import runpy, sys; runpy.run_module('stages.fetch', run_name='__main__', alter_sys=True); "
              "print('ML frameworks:', sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True,
                            env={**_env(), corpus.EXTRA_SHA256_ENV: small_archive_sha256})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ML frameworks: []"
    assert (project / "data" / "corpus" / "test.parquet").is_file()


def _env() -> dict[str, str]:
    """This environment with the project on PYTHONPATH: DVC runs `stages` from the project root, and it is not
    installed."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}
