"""Read the 20news-bydate archive exactly as scikit-learn's `fetch_20newsgroups` would.

The archive is verified (sha256) and read in memory: nothing is extracted, and the input file is only
ever opened for reading. Parsing follows scikit-learn step by step:

1. `load_files` order: group folders sorted by name (label = index), files sorted by name (as strings);
2. latin-1 decoding;
3. `remove=...` cleaning with scikit-learn's own functions, always in its order: headers, footers, quotes;
4. two shuffles, as scikit-learn does: `load_files`' own (its default `random_state=0`, kept when
   `fetch_20newsgroups` builds its cache), then `fetch_20newsgroups(random_state=42)`'s.

Accepted checksums: `KNOWN_SHA256` (the project's embedded copy and scikit-learn's download), plus any
listed in the environment variable `LSTM_VS_GRU_EXTRA_SHA256` (comma-separated sha256 hex digests),
which lets end-to-end tests run the real `fetch` stage on a small stand-in archive.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np
import pandas as pd
from lstm_vs_gru.errors import UserError

KNOWN_SHA256 = {
    "53027b79f71f27034d8d89a5b453d614685f400af36370c9df8766299899ec78": "the copy embedded in this project",
    "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610": "scikit-learn's download",
}
EXTRA_SHA256_ENV = "LSTM_VS_GRU_EXTRA_SHA256"
SPLIT_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
# scikit-learn's fetch_20newsgroups(remove=...) cleaning, written out here: its functions live in a private
# module (sklearn.datasets._twenty_newsgroups) that may move in any release; tests/test_corpus.py holds these to
# them wherever that module still imports.
_QUOTE_RE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def strip_newsgroup_header(text: str) -> str:
    """Everything after the first blank line."""
    return text.partition("\n\n")[2]


def strip_newsgroup_quoting(text: str) -> str:
    """Without lines that quote (starting > or |) or introduce a quote ("writes:", "In article", ...)."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_RE.search(line))


def strip_newsgroup_footer(text: str) -> str:
    """Without the signature: what follows the last blank or all-hyphen line (trailing blank lines aside)."""
    lines = text.strip().split("\n")
    for line_num in range(len(lines) - 1, -1, -1):
        if lines[line_num].strip().strip("-") == "":
            break
    return "\n".join(lines[:line_num]) if line_num > 0 else text


# scikit-learn applies the filters in this order whatever order `remove` lists them in.
CLEANERS = (
    ("headers", strip_newsgroup_header),
    ("footers", strip_newsgroup_footer),
    ("quotes", strip_newsgroup_quoting),
)
# load_files shuffles with its default random_state=0, then fetch_20newsgroups with random_state=42.
SHUFFLE_SEEDS = (0, 42)
ENCODING = "latin-1"
COLUMNS = ("id", "group", "label", "text")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ArchiveError(UserError):
    """The archive is missing, is not the expected file, or is not laid out like 20news-bydate."""


@dataclass(frozen=True)
class Post:
    """One newsgroup post as stored in the archive (not yet cleaned)."""

    group: str
    label: int
    name: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


# --- checksum ---

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file (for tests and for `LSTM_VS_GRU_EXTRA_SHA256`)."""
    return sha256_bytes(Path(path).read_bytes())


def accepted_sha256() -> dict[str, str]:
    """Checksum -> description of every archive the stage accepts: the known ones plus the environment's."""
    accepted = dict(KNOWN_SHA256)
    for digest in os.environ.get(EXTRA_SHA256_ENV, "").split(","):
        digest = digest.strip().lower()
        if not digest:
            continue
        if not _SHA256_RE.fullmatch(digest):
            raise ArchiveError(f"{EXTRA_SHA256_ENV}: {digest!r} is not a sha256 hex digest (64 characters 0-9a-f)")
        accepted.setdefault(digest, f"listed in {EXTRA_SHA256_ENV}")
    return accepted


def read_verified(path: str | os.PathLike, accepted: Collection[str] | None = None) -> bytes:
    """The file's bytes, if their sha256 is accepted (default: `accepted_sha256()`); else ArchiveError."""
    path = Path(path)
    accepted = accepted_sha256() if accepted is None else {digest.lower() for digest in accepted}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArchiveError(f"{path}: not found") from None
    except OSError as error:
        raise ArchiveError(f"{path}: cannot read: {error.strerror or error}") from None
    actual = sha256_bytes(data)
    if actual not in accepted:
        expected = " or ".join(sorted(accepted)) or "(none accepted)"
        raise ArchiveError(f"{path}: sha256 mismatch: expected {expected}, got {actual}")
    return data


# --- parsing ---

def read_archive(path: str | os.PathLike, accepted: Collection[str] | None = None) -> dict[str, list[Post]]:
    """Verify and parse the archive: split -> posts in `load_files` order (label, then file name)."""
    return parse_archive(read_verified(path, accepted), source=str(path))


def parse_archive(data: bytes, source: str = "archive") -> dict[str, list[Post]]:
    """Parse the bytes of a 20news-bydate `.tar.gz` without touching the disk."""
    files, folders = _read_members(data, source)
    splits = {}
    for split, folder in SPLIT_FOLDERS.items():
        groups = sorted(group for top, group in folders if top == folder)
        if not groups:
            raise ArchiveError(f"{source}: no {folder}/<group>/ folders: not a 20news-bydate archive")
        labels = {group: label for label, group in enumerate(groups)}
        posts = sorted(
            (Post(group, labels[group], name, raw.decode(ENCODING))
             for (top, group, name), raw in files.items() if top == folder),
            key=lambda post: (post.label, post.name),
        )
        empty = sorted(set(groups) - {post.group for post in posts})
        if empty:
            raise ArchiveError(f"{source}: {folder}/{empty[0]}/ holds no posts")
        splits[split] = posts
    train_groups, test_groups = ({post.group for post in splits[s]} for s in SPLIT_FOLDERS)
    if train_groups != test_groups:
        odd = sorted(train_groups ^ test_groups)[0]
        raise ArchiveError(f"{source}: group {odd} is in one split only; train and test must have the same groups")
    return splits


def _read_members(data: bytes, source: str) -> tuple[dict[tuple[str, str, str], bytes], set[tuple[str, str]]]:
    """(split folder, group, file name) -> bytes, and the (split folder, group) folders."""
    files: dict[tuple[str, str, str], bytes] = {}
    folders: set[tuple[str, str]] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                parts = _member_parts(member, source)
                if not parts:
                    continue  # the archive's root folder ("./")
                if member.isdir():
                    if len(parts) == 2:
                        folders.add((parts[0], parts[1]))
                    continue
                if parts in files:
                    raise ArchiveError(f"{source}: member {member.name!r} appears twice")
                folders.add((parts[0], parts[1]))
                files[parts] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ArchiveError(f"{source}: not a readable .tar.gz archive: {error}") from None
    return files, folders


def _member_parts(member: tarfile.TarInfo, source: str) -> tuple[str, ...]:
    """The member's path parts, checked against the layout (() for the root folder).

    Links, devices, absolute paths, `..` and anything outside the layout are refused."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if member.isdir() and name in ("", "."):
        return ()
    parts = tuple(name.split("/"))
    if member.issym() or member.islnk():
        raise ArchiveError(f"{source}: member {member.name!r} is a link; only regular files and folders are allowed")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{source}: member {member.name!r} is not a regular file or folder")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ArchiveError(f"{source}: member {member.name!r} has an unsafe or irregular path")
    folder_depths = (1, 2) if member.isdir() else (3,)
    if parts[0] not in SPLIT_FOLDERS.values() or len(parts) not in folder_depths:
        raise ArchiveError(
            f"{source}: member {member.name!r} does not fit the layout 20news-bydate-{{train,test}}/<group>/<file>")
    return parts


# --- cleaning and ordering ---

def clean_text(text: str, remove: Iterable[str]) -> str:
    """Apply scikit-learn's `remove` filters (headers, footers, quotes) in scikit-learn's order."""
    remove = set(remove)
    unknown = remove - {name for name, _ in CLEANERS}
    if unknown:
        raise ValueError(f"unknown remove option(s): {sorted(unknown)}")
    for name, cleaner in CLEANERS:
        if name in remove:
            text = cleaner(text)
    return text


def shuffle_order(n: int) -> np.ndarray:
    """Positions, in `load_files` sorted order, of the posts fetch_20newsgroups returns first, second, ..."""
    order = np.arange(n)
    for seed in SHUFFLE_SEEDS:
        indices = np.arange(n)
        np.random.RandomState(seed).shuffle(indices)
        order = order[indices]
    return order


def corpus_frame(posts: Sequence[Post], remove: Iterable[str] = ()) -> pd.DataFrame:
    """Posts (in `read_archive` order) as the corpus table: id, group, label (int32), text; cleaned and shuffled."""
    remove = tuple(remove)
    order = shuffle_order(len(posts))
    chosen = [posts[i] for i in order]
    return pd.DataFrame({
        "id": [post.id for post in chosen],
        "group": [post.group for post in chosen],
        "label": np.array([post.label for post in chosen], dtype=np.int32),
        "text": [clean_text(post.text, remove) for post in chosen],
    }, columns=list(COLUMNS))
