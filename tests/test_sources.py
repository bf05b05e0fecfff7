"""lstm_vs_gru.sources: folders and tables read into the corpus tables, their mess counted, bad input refused in
one line; the archive still read exactly as lstm_vs_gru.corpus reads it."""
from __future__ import annotations

import codecs
import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lstm_vs_gru import corpus, params, sources
from lstm_vs_gru.sources import SourceError, decode
from tests.user_corpus import CLASSES, documents, frame, write_folder, write_table

ROOT = Path(__file__).resolve().parents[1]
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def data_params(source: Path | str, **changes: object) -> params.DataParams:
    """data.* as params.yaml ships them, with `source` and `changes`, validated like params.yaml."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["data"].update(source=str(source), **changes)
    return params.parse(raw).data


def texts_by_split(built: sources.Corpus) -> dict[str, list[tuple[str, str]]]:
    return {split: sorted(zip(table["group"], table["text"])) for split, table in built.frames.items()}


# --- decoding ---

@pytest.mark.parametrize("raw, text", [
    ("café\r\nline two\rthree".encode(), "café\nline two\nthree"),
    (codecs.BOM_UTF8 + "naïve".encode(), "naïve"),
    ("Fran\xe7ais".encode("latin-1"), "Français"),  # not UTF-8: Latin-1, as 20 Newsgroups needs
    (codecs.BOM_UTF16_LE + "wide\r\ntext".encode("utf-16-le"), "wide\ntext"),
    (b"", ""),
])
def test_decode_reads_utf8_latin1_boms_and_line_ends(raw, text):
    assert decode(raw) == text


@pytest.mark.parametrize("raw", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"%PDF" + bytes(range(1, 9)) * 50,
                                 codecs.BOM_UTF16_LE + b"\x00\xd8"])
def test_decode_refuses_what_is_not_text(raw):
    assert decode(raw) is None


# --- folders ---

def test_folder_without_split_is_split_stratified_and_seeded(tmp_path):
    write_folder(tmp_path / "docs", documents(per_class=8))
    built = sources.build(data_params(tmp_path / "docs"))
    assert built.test_split == "stratified"
    assert {split: table["group"].value_counts().to_dict() for split, table in built.frames.items()} == {
        "train": {name: 6 for name in CLASSES}, "test": {name: 2 for name in CLASSES}}
    for table in built.frames.values():
        assert list(table.columns) == list(corpus.COLUMNS) and table["label"].dtype == "int32"
        assert (table["label"] == table["group"].map(CLASSES.index)).all()
    again = sources.build(data_params(tmp_path / "docs"))
    assert all(again.frames[split].equals(built.frames[split]) for split in built.frames)
    other = sources.build(data_params(tmp_path / "docs", split_seed=1))
    assert not other.frames["test"]["id"].sort_values().equals(built.frames["test"]["id"].sort_values())


def test_folder_with_train_and_test_keeps_its_split_and_counts_what_it_skips(tmp_path):
    root = write_folder(tmp_path / "docs", documents(per_class=4), test_every=2)
    (root / ".git").mkdir()
    (root / "README.md").write_text("about these tickets")
    (root / "train/billing/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train/billing/photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    (root / "train/login/drafts").mkdir()
    (root / "test/delivery/empty.txt").write_text("\n \n")
    built = sources.build(data_params(root))
    assert built.test_split == "source" and built.dropped_empty == 1
    assert dict(built.skipped) == {"hidden": 2, "not_text": 1, "nested_folders": 1, "outside_class_folders": 1}
    assert set(built.frames["test"]["id"]) == {f"test/{name}/{n:03d}.txt" for name in CLASSES for n in (2, 4)}
    metrics = sources.fetch_metrics(data_params(root), built)
    assert metrics["skipped"]["not_text"] == 1 and metrics["dropped_empty"] == 1
    assert (metrics["train"], metrics["test"], metrics["classes"]) == ({"documents": 6}, {"documents": 6}, 3)


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "a.txt").write_text("x"), "no class sub-folders (expected {root}/<class>/<document file>)"),
    (lambda root: write_folder(root, [("only", "text one"), ("only", "text two")]),
     "one class only ('only'): a classifier needs at least two"),
    (lambda root: write_folder(root, documents(per_class=1)), "class 'billing' has 1 document; a stratified split"),
    (lambda root: (write_folder(root, documents(per_class=2), test_every=2), shutil.rmtree(root / "test/billing")),
     "class 'billing' has no test documents; every class needs documents in both train and test"),
    (lambda root: (write_folder(root, documents(per_class=2), test_every=2), (root / "extra").mkdir()),
     "holds train/ and test/ but also extra/: with a split, every class folder goes under both train/ and test/"),
    (lambda root: write_folder(root, documents(per_class=2), test_every=3), "holds train/ but no test/"),
    (lambda root: write_folder(root, [(name, " ") for name in CLASSES]), "no documents with text"),
])
def test_bad_folders_fail_in_one_line(tmp_path, make, expected):
    root = tmp_path / "docs"
    root.mkdir()
    make(root)
    with pytest.raises(SourceError) as caught:
        sources.build(data_params(root))
    assert "\n" not in str(caught.value) and expected.format(root=root) in str(caught.value)


def test_missing_source_and_a_file_with_another_suffix(tmp_path):
    with pytest.raises(SourceError, match=r"absent: not found$"):
        sources.build(data_params(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"notes\.txt: not a folder, and its name does not end in \.tar\.gz, \.tgz, \.csv"):
        sources.build(data_params(tmp_path / "notes.txt"))


# --- tables ---

@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_every_table_format_gives_the_same_corpus(tmp_path, suffix):
    pairs = documents(per_class=8)
    reference = sources.build(data_params(write_table(tmp_path / "reference.csv", frame(pairs))))
    built = sources.build(data_params(write_table(tmp_path / f"tickets{suffix}", frame(pairs))))
    assert texts_by_split(built) == texts_by_split(reference)
    assert built.frames["train"]["id"].tolist() == reference.frames["train"]["id"].tolist()


def test_table_columns_split_column_and_whole_number_labels(tmp_path):
    table = pd.DataFrame({"body": ["one\r\ntwo", "three", "four", "five", None, "six", "seven"],
                          "stars": [1, 2, 10, 2, 1, 10, 1],
                          "part": ["train", "Train", "train", "test", "test", " test ", "test"]})
    path = write_table(tmp_path / "reviews.parquet", table)
    built = sources.build(data_params(path, text_column="body", label_column="stars", split_column="part"))
    train, test = built.frames["train"], built.frames["test"]
    assert sorted(zip(train["group"], train["text"])) == [("1", "one\ntwo"), ("10", "four"), ("2", "three")]
    assert sorted(zip(test["group"], test["label"])) == [("1", 0), ("10", 1), ("2", 2)]  # "10" sorts before "2"
    assert built.dropped_empty == 1 and built.test_split == "source"


@pytest.mark.parametrize("content, changes, expected", [
    ("text,label\nhello,a\n", {"label_column": "topic"}, "no column 'topic' (data.label_column); its columns: text, label"),
    ("text,label\na,x\nb,x\nc,x\n", {}, "one class only ('x')"),
    ("text,label\na,x\nb,\n", {}, "row 2: label = missing: a label must be text or a whole number"),
    ("text,label,split\na,x,train\nb,y,valid\n", {"split_column": "split"}, "row 2: split = 'valid': must be train or test"),
    ("", {}, "not a readable table"),
])
def test_bad_csv_fails_in_one_line(tmp_path, content, changes, expected):
    path = tmp_path / "tickets.csv"
    path.write_text(content)
    with pytest.raises(SourceError) as caught:
        sources.build(data_params(path, **changes))
    assert "\n" not in str(caught.value) and expected in str(caught.value)


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "tickets.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n[1, 2]\n')
    with pytest.raises(SourceError, match=r"tickets\.jsonl: line 3: not a JSON object$"):
        sources.build(data_params(path))


def test_too_few_documents_for_the_split(tmp_path):
    path = write_table(tmp_path / "t.csv", frame(documents(per_class=2)))
    with pytest.raises(SourceError, match=r"cannot split 6 documents of 3 classes with data.test_size = 0.1: "):
        sources.build(data_params(path, test_size=0.1))


# --- the archive, and the fingerprint ---

def test_archive_is_read_as_scikit_learn_reads_it(small_archive, small_archive_sha256, monkeypatch):
    monkeypatch.setenv(corpus.EXTRA_SHA256_ENV, small_archive_sha256)
    built = sources.build(data_params(small_archive, remove=["headers"]))
    posts = corpus.read_archive(small_archive)
    for split in ("train", "test"):
        assert built.frames[split].equals(corpus.corpus_frame(posts[split], ("headers",)))
    assert built.test_split == "source" and not built.skipped and built.dropped_empty == 0


def test_fingerprint_changes_with_any_document(tmp_path):
    pairs = documents(per_class=8)
    first = sources.build(data_params(write_table(tmp_path / "a.csv", frame(pairs))))
    same = sources.build(data_params(write_table(tmp_path / "b.jsonl", frame(pairs))))
    pairs[5] = (pairs[5][0], pairs[5][1] + "!")
    changed = sources.build(data_params(write_table(tmp_path / "c.csv", frame(pairs))))
    assert sources.fingerprint(first.frames) == sources.fingerprint(same.frames)
    assert sources.fingerprint(first.frames) != sources.fingerprint(changed.frames)
