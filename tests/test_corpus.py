"""lstm_vs_gru.corpus: same corpus as scikit-learn's fetch_20newsgroups, read safely from the archive."""
from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets._twenty_newsgroups as twenty

from lstm_vs_gru import corpus
from lstm_vs_gru.corpus import ArchiveError
from lstm_vs_gru.errors import UserError
from tests.small_archive import GROUPS, GROUP_WORDS, build_archive

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = ROOT / "data" / "20news-bydate.tar.gz"
ALL_FILTERS = ("headers", "footers", "quotes")


def sklearn_fetch(archive: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch, **kwargs):
    """fetch_20newsgroups on a local archive: its download is replaced by a copy (sklearn deletes the file)."""
    def copy_instead_of_download(remote, dirname=None, n_retries=3, delay=1):
        target = Path(dirname) / remote.filename
        shutil.copyfile(archive, target)
        return target

    monkeypatch.setattr(twenty, "_fetch_remote", copy_instead_of_download)
    return twenty.fetch_20newsgroups(data_home=str(data_home), download_if_missing=True, **kwargs)


def assert_same_as_sklearn(frame, bunch) -> None:
    assert frame["text"].tolist() == bunch.data
    np.testing.assert_array_equal(frame["label"].to_numpy(), bunch.target)
    assert frame["id"].tolist() == ["/".join(Path(name).parts[-2:]) for name in bunch.filenames]
    assert frame["group"].tolist() == [bunch.target_names[label] for label in bunch.target]
    assert sorted(frame["group"].unique()) == list(bunch.target_names)


@pytest.fixture
def posts(small_archive, small_archive_sha256):
    return corpus.read_archive(small_archive, accepted={small_archive_sha256})


@pytest.fixture
def no_extra_checksums(monkeypatch):
    monkeypatch.delenv(corpus.EXTRA_SHA256_ENV, raising=False)


# --- parity with scikit-learn ---

@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("remove", [(), ("headers",), ("footers",), ("quotes",), ALL_FILTERS, ("quotes", "headers")])
def test_same_corpus_as_sklearn(small_archive, posts, tmp_path, monkeypatch, split, remove):
    bunch = sklearn_fetch(small_archive, tmp_path / "sklearn", monkeypatch, subset=split, remove=remove)
    frame = corpus.corpus_frame(posts[split], remove)
    assert len(frame) == len(bunch.data) == {"train": 120, "test": 60}[split]
    assert_same_as_sklearn(frame, bunch)


def test_corpus_table_columns_and_types(posts):
    frame = corpus.corpus_frame(posts["train"], ())
    assert list(frame.columns) == ["id", "group", "label", "text"]
    assert frame["label"].dtype == np.int32
    assert all(isinstance(value, str) for column in ("id", "group", "text") for value in frame[column])
    assert frame["id"].is_unique
    assert sorted(frame["group"].unique()) == list(GROUPS)
    assert (frame["group"].map(GROUPS.index) == frame["label"]).all()


def test_small_archive_exercises_every_filter_and_latin1(posts):
    raw = corpus.corpus_frame(posts["train"], ())["text"]
    assert any("\xe9" in text for text in raw)  # a latin-1 byte 0xe9, decoded
    for name in ALL_FILTERS:
        cleaned = corpus.corpus_frame(posts["train"], (name,))["text"]
        changed = sum(a != b for a, b in zip(raw, cleaned))
        assert changed >= len(raw) // 4, f"{name} changes only {changed} posts: parity would prove little"


def test_files_sorted_as_strings_like_load_files(posts):
    names = [post.name for post in posts["train"] if post.group == "alt.atheism"]
    assert names == sorted(names)
    assert names != sorted(names, key=int)  # e.g. "10..." before "9"
    labels = [post.label for post in posts["train"]]
    assert labels == sorted(labels)


def test_group_words_at_the_start_and_generic_words_at_the_end(posts):
    for post in posts["train"]:
        body_words = corpus.clean_text(post.text, ALL_FILTERS).lower().split()
        assert set(body_words[:3]) <= set(GROUP_WORDS[post.group].split())
        tail = post.text.lower().replace("\n", " ").split()[-5:]
        assert not any(word in GROUP_WORDS[group].split() for word in tail for group in GROUPS)


def test_small_archive_is_deterministic(tmp_path, small_archive):
    again = build_archive(tmp_path / "again.tar.gz")
    other = build_archive(tmp_path / "other.tar.gz", seed=1)
    assert again.read_bytes() == small_archive.read_bytes()
    assert other.read_bytes() != small_archive.read_bytes()


def test_clean_text_applies_sklearn_order_and_rejects_unknown_filters():
    text = "From: a\n\nbody\n> quoted\n\nsig\n"
    assert corpus.clean_text(text, ("quotes", "headers")) == "body\n\nsig\n"
    assert corpus.clean_text(text, ALL_FILTERS) == "body"
    with pytest.raises(ValueError, match="signature"):
        corpus.clean_text(text, ("signature",))


EDGE_TEXTS = ["", "\n\n", "no blank line at all", "From: a\nSubject: b\n\nbody\n\nmore\n",
              "body\n--\nsig", "body\n\n----\n\n", "a\n   \nb\n\n\n", "x wrote:\n> q\n| r\nIn article <1>\nkept",
              "-- \nonly a signature", "says: it\nQuoted from y\n writes in z"]


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_own_cleaners_are_sklearn_s(text):
    """corpus.py's copies of scikit-learn's private cleaning functions give their results."""
    for name in ("strip_newsgroup_header", "strip_newsgroup_footer", "strip_newsgroup_quoting"):
        assert getattr(corpus, name)(text) == getattr(twenty, name)(text), name


# --- the input is only read ---

def test_archive_untouched_and_nothing_extracted(small_archive, small_archive_sha256, tmp_path):
    archive = shutil.copy2(small_archive, tmp_path / "copy.tar.gz")
    before, stat_before = Path(archive).read_bytes(), os.stat(archive)
    posts = corpus.read_archive(archive, accepted={small_archive_sha256})
    corpus.corpus_frame(posts["train"], ALL_FILTERS)
    assert Path(archive).read_bytes() == before
    assert os.stat(archive).st_mtime_ns == stat_before.st_mtime_ns
    assert sorted(path.name for path in tmp_path.iterdir()) == ["copy.tar.gz"]


# --- checksums ---

def test_wrong_checksum_names_file_expected_and_actual(small_archive, small_archive_sha256, no_extra_checksums):
    with pytest.raises(ArchiveError) as caught:
        corpus.read_archive(small_archive)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert str(small_archive) in message and small_archive_sha256 in message
    assert all(known in message for known in corpus.KNOWN_SHA256)


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveError, match=re.escape(f"{tmp_path / 'nope.tar.gz'}: not found")):
        corpus.read_archive(tmp_path / "nope.tar.gz")


def test_extra_checksums_from_the_environment(small_archive, small_archive_sha256, monkeypatch):
    monkeypatch.setenv(corpus.EXTRA_SHA256_ENV, f" {'0' * 64}, {small_archive_sha256.upper()} ,")
    assert len(corpus.read_archive(small_archive)["train"]) == 120
    monkeypatch.setenv(corpus.EXTRA_SHA256_ENV, "not-a-digest")
    with pytest.raises(ArchiveError, match=f"{corpus.EXTRA_SHA256_ENV}: 'not-a-digest'"):
        corpus.read_archive(small_archive)


def test_embedded_archive_is_a_known_one():
    assert corpus.sha256_file(REAL_ARCHIVE) in corpus.KNOWN_SHA256


# --- unsafe or malformed archives ---

def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None], base: bool = True) -> bytes:
    """A .tar.gz holding one valid post per split (if `base`) and then the given members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if base:
            for folder in corpus.SPLIT_FOLDERS.values():
                info, data = _file(f"{folder}/alt.atheism/1", b"From: a\n\nbody\n")
                tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


TRAIN = "20news-bydate-train"


@pytest.mark.parametrize("member, message", [
    (_special(f"{TRAIN}/alt.atheism/2", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_special(f"{TRAIN}/alt.atheism/2", tarfile.LNKTYPE, f"{TRAIN}/alt.atheism/1"), "is a link"),
    (_special(f"{TRAIN}/alt.atheism/2", tarfile.CHRTYPE), "not a regular file or folder"),
    (_special(f"{TRAIN}/alt.atheism/2", tarfile.FIFOTYPE), "not a regular file or folder"),
    (_file("../evil"), "unsafe"),
    (_file(f"{TRAIN}/../../evil"), "unsafe"),
    (_file(f"{TRAIN}/alt.atheism/../../../evil"), "unsafe"),
    (_file("/tmp/evil"), "unsafe"),
    (_file("README"), "does not fit the layout"),
    (_file(f"{TRAIN}/stray"), "does not fit the layout"),
    (_file(f"{TRAIN}/alt.atheism/deeper/3"), "does not fit the layout"),
    (_special(f"{TRAIN}/alt.atheism/sub", tarfile.DIRTYPE), "does not fit the layout"),
    (_file(f"{TRAIN}/alt.atheism/1"), "appears twice"),
])
def test_unsafe_or_irregular_members_are_refused(member, message):
    data = tar_gz(member)
    with pytest.raises(ArchiveError, match=message) as caught:
        corpus.parse_archive(data, source="bad.tar.gz")
    assert str(caught.value).startswith("bad.tar.gz: member ") and repr(member[0].name) in str(caught.value)


def test_refused_through_read_archive_too(tmp_path):
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(tar_gz(_special(f"{TRAIN}/alt.atheism/2", tarfile.SYMTYPE, "/etc/passwd")))
    with pytest.raises(ArchiveError, match=re.escape(f"{path}: member ") + ".* is a link"):
        corpus.read_archive(path, accepted={corpus.sha256_file(path)})
    assert not (tmp_path / TRAIN).exists()


@pytest.mark.parametrize("data, message", [
    (b"not an archive at all", "not a readable .tar.gz archive"),
    (tar_gz()[:60], "not a readable .tar.gz archive"),
    (tar_gz(base=False), "no 20news-bydate-train/<group>/ folders"),
    (tar_gz(_file(f"{TRAIN}/comp.graphics/5")), "group comp.graphics is in one split only"),
    (tar_gz(_special(f"{TRAIN}/sci.med", tarfile.DIRTYPE)), "20news-bydate-train/sci.med/ holds no posts"),
# names, not the bytes: gzip stamps the time, and pytest-xdist refuses workers whose collected ids differ
], ids=["not_gzip", "truncated", "no_train_folders", "group_in_one_split", "empty_group"])
def test_malformed_archives_are_refused(data, message):
    with pytest.raises(ArchiveError, match=message):
        corpus.parse_archive(data, source="bad.tar.gz")


def test_dot_slash_prefixed_members_are_read_like_plain_ones(small_archive):
    """An archive made with `tar -C dir -czf x.tar.gz .` lists "./" and "./20news-bydate-train/...": same corpus."""
    buffer = io.BytesIO()
    with tarfile.open(small_archive, "r:gz") as source, tarfile.open(fileobj=buffer, mode="w:gz") as target:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        target.addfile(root)
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            member.name = "./" + member.name
            target.addfile(member, data)
    assert corpus.parse_archive(buffer.getvalue()) == corpus.parse_archive(small_archive.read_bytes())


# --- the real data, once ---

def test_real_archive_counts_and_groups():
    posts = corpus.read_archive(REAL_ARCHIVE)
    assert {split: len(items) for split, items in posts.items()} == {"train": 11_314, "test": 7_532}
    frames = {split: corpus.corpus_frame(posts[split], ()) for split in posts}
    for frame in frames.values():
        assert sorted(frame["group"].unique()) == list(GROUPS)
        assert (frame["group"].map(GROUPS.index) == frame["label"]).all() and frame["id"].is_unique
    # fetch_20newsgroups(subset="train").data[0], familiar from scikit-learn's tutorials: the two shuffles are right.
    first = frames["train"].iloc[0]
    assert first["id"] == "rec.autos/102994" and first["text"].startswith("From: lerxst@wam.umd.edu")


@pytest.mark.slow  # scikit-learn extracts 18,846 files to disk: ~20 s on an idle machine, minutes on a busy one
def test_real_archive_matches_sklearn(tmp_path, monkeypatch):
    posts = corpus.read_archive(REAL_ARCHIVE)
    for split in ("train", "test"):
        # One data_home for both subsets: sklearn extracts once and caches, as it would for a user.
        bunch = sklearn_fetch(REAL_ARCHIVE, tmp_path / "sklearn", monkeypatch, subset=split)
        assert_same_as_sklearn(corpus.corpus_frame(posts[split], ()), bunch)
    assert REAL_ARCHIVE.exists()
