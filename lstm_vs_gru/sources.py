"""Any labelled corpus as the corpus tables: the 20news-bydate archive (lstm_vs_gru.corpus), a folder with one
sub-folder per class (optionally under train/ and test/), or a table (CSV, TSV, JSON Lines, Parquet).

Everything is read and checked before anything is written: a bad source is one SourceError line. Sources without
a test split get a seeded, stratified one; both splits are shuffled with the same seed, because training holds out
the last rows of train for validation. The archive keeps scikit-learn's order and cleaning, bit for bit.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from lstm_vs_gru import corpus, params
from lstm_vs_gru.artifacts import SPLITS
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import DataParams

SPLIT_FOLDERS = ("train", "test")
# Skipped while reading a folder, counted in metrics/fetch.json.
SKIP_REASONS = ("hidden", "not_text", "nested_folders", "outside_class_folders")
# A file is not text if it holds a NUL, or if more than this share of its characters are control characters.
CONTROL_SHARE = 0.1
_WHITESPACE_CONTROLS = frozenset("\t\n\r\f\v")
_UTF16_BOMS = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


class SourceError(UserError):
    """The source named by data.source is missing, empty or not laid out as its kind requires."""


@dataclass(frozen=True)
class Document:
    """One labelled document; split is train or test where the source says, else None."""

    group: str
    id: str
    text: str
    split: str | None = None


@dataclass
class Corpus:
    """The corpus tables of both splits and what fetch counted on the way."""

    frames: dict[str, pd.DataFrame]
    test_split: str  # "source" (the source's own) or "stratified" (drawn with data.test_size)
    skipped: Counter = field(default_factory=Counter)
    dropped_empty: int = 0


# --- text ---

def decode(raw: bytes) -> str | None:
    """The text of a file's bytes (UTF-8, else Latin-1; UTF-16 with a BOM), \\n line ends; None if not text."""
    for bom, encoding in _UTF16_BOMS:
        if raw.startswith(bom):
            try:
                return _as_text(raw[len(bom):].decode(encoding))
            except UnicodeDecodeError:
                return None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return _as_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _as_text(raw.decode("latin-1"))


def _as_text(text: str) -> str | None:
    sample = text[:4096]
    controls = sum(char < " " and char not in _WHITESPACE_CONTROLS for char in sample)
    if "\x00" in text or controls > CONTROL_SHARE * len(sample):
        return None
    return normalise_line_ends(text)


def normalise_line_ends(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror or error}") from None


# --- folders ---

def read_folder(root: Path) -> tuple[list[Document], Counter]:
    """Documents of <root>/<class>/<file>, or of <root>/{train,test}/<class>/<file>, and what was skipped.

    A train/ or test/ folder means the second layout, so no class can be called train or test."""
    skipped: Counter = Counter()
    if not root.is_dir():
        named = ", ".join(params.ARCHIVE_SUFFIXES + params.TABLE_SUFFIXES)
        raise SourceError(f"{root}: not a folder, and its name does not end in {named}")
    entries = _visible(root, skipped)
    names = {entry.name for entry in entries if entry.is_dir()}
    if not names & set(SPLIT_FOLDERS):
        return _read_classes(root, root, None, skipped), skipped
    odd = sorted(names ^ set(SPLIT_FOLDERS))
    if odd:
        problem = f"no {odd[0]}/" if odd[0] in SPLIT_FOLDERS else f"also {odd[0]}/"
        held = " and ".join(f"{split}/" for split in SPLIT_FOLDERS if split in names)
        raise SourceError(f"{root}: holds {held} but {problem}: "
                          "with a split, every class folder goes under both train/ and test/")
    skipped["outside_class_folders"] += sum(not entry.is_dir() for entry in entries)
    documents = [doc for split in SPLIT_FOLDERS for doc in _read_classes(root / split, root, split, skipped)]
    return documents, skipped


def _visible(folder: Path, skipped: Counter) -> list[Path]:
    """The folder's entries by name, without hidden ones (counted)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.name)
    except OSError as error:
        raise SourceError(f"{folder}: cannot read: {error.strerror or error}") from None
    visible = [entry for entry in entries if not entry.name.startswith(".")]
    skipped["hidden"] += len(entries) - len(visible)
    return visible


def _read_classes(folder: Path, root: Path, split: str | None, skipped: Counter) -> list[Document]:
    entries = _visible(folder, skipped)
    classes = [entry for entry in entries if entry.is_dir()]
    if not classes:
        raise SourceError(f"{folder}: no class sub-folders (expected {folder}/<class>/<document file>)")
    skipped["outside_class_folders"] += len(entries) - len(classes)
    documents = []
    for class_folder in classes:
        for entry in _visible(class_folder, skipped):
            if entry.is_dir():
                skipped["nested_folders"] += 1
                continue
            text = decode(_read_bytes(entry))
            if text is None:
                skipped["not_text"] += 1
                continue
            documents.append(Document(class_folder.name, entry.relative_to(root).as_posix(), text, split))
    return documents


# --- tables ---

def read_table(path: Path, data: DataParams) -> list[Document]:
    """One document per row: the text, label and (optional) split columns data.* names."""
    if not path.is_file():
        raise SourceError(f"{path}: not found" if not path.exists() else f"{path}: a folder, not a table file")
    columns = TABLE_READERS[_table_format(path)](path)
    wanted = {"text_column": data.text_column, "label_column": data.label_column, "split_column": data.split_column}
    for key, name in wanted.items():
        if name is not None and name not in columns:
            known = ", ".join(map(str, columns)) or "none"
            raise SourceError(f"{path}: no column {name!r} (data.{key}); its columns: {known}")
    splits = columns[data.split_column] if data.split_column else [None] * len(columns[data.text_column])
    rows = zip(columns[data.text_column], columns[data.label_column], splits)
    return [Document(_label(label, path, row, data.label_column), str(row), _text(text, path, row, data.text_column),
                     _split(split, path, row, data.split_column))
            for row, (text, label, split) in enumerate(rows, start=1)]


def _table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return ".jsonl" if suffix == ".ndjson" else suffix


def _read_delimited(path: Path, separator: str) -> dict[str, list[Any]]:
    text = decode(_read_bytes(path))
    if text is None:
        raise SourceError(f"{path}: not a text file")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise SourceError(f"{path}: not a readable table: {' '.join(str(error).split())}") from None
    return {str(name): frame[name].tolist() for name in frame.columns}


def _read_jsonl(path: Path) -> dict[str, list[Any]]:
    text = decode(_read_bytes(path))
    if text is None:
        raise SourceError(f"{path}: not a text file")
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise SourceError(f"{path}: line {number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{path}: line {number}: not a JSON object")
        records.append(record)
    names = dict.fromkeys(name for record in records for name in record)
    return {name: [record.get(name) for record in records] for name in names}


def _read_parquet(path: Path) -> dict[str, list[Any]]:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: not a readable Parquet file: {' '.join(str(error).split())}") from None
    return {str(name): frame[name].tolist() for name in frame.columns}


TABLE_READERS: dict[str, Callable[[Path], dict[str, list[Any]]]] = {
    ".csv": lambda path: _read_delimited(path, ","),
    ".tsv": lambda path: _read_delimited(path, "\t"),
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any, path: Path, row: int, column: str) -> str:
    if _is_missing(value):
        return ""  # dropped as an empty document
    if not isinstance(value, str):
        raise SourceError(f"{path}: row {row}: {column} = {value!r}: must be text")
    return normalise_line_ends(value)


def _label(value: Any, path: Path, row: int, column: str) -> str:
    """The class name: text as written (trimmed), or a whole number."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    shown = "missing" if _is_missing(value) or value == "" else repr(value)
    raise SourceError(f"{path}: row {row}: {column} = {shown}: a label must be text or a whole number")


def _split(value: Any, path: Path, row: int, column: str | None) -> str | None:
    if column is None:
        return None
    split = value.strip().lower() if isinstance(value, str) else None
    if split not in SPLITS:
        raise SourceError(f"{path}: row {row}: {column} = {value!r}: must be train or test")
    return split


# --- from documents to the corpus tables ---

def drop_empty(documents: Sequence[Document]) -> tuple[list[Document], int]:
    """The documents with some text, and how many had none."""
    kept = [doc for doc in documents if doc.text.strip()]
    return kept, len(documents) - len(kept)


def class_names(documents: Sequence[Document], source: str) -> list[str]:
    """The sorted class names (index = label); at least two."""
    names = sorted({doc.group for doc in documents})
    if not names:
        raise SourceError(f"{source}: no documents with text")
    if len(names) < 2:
        raise SourceError(f"{source}: one class only ({names[0]!r}): a classifier needs at least two")
    return names


def split_documents(documents: Sequence[Document], data: DataParams) -> tuple[dict[str, list[Document]], str]:
    """Split -> documents: the source's own split if it has one, else a seeded stratified one."""
    if documents[0].split is not None:
        return _source_split(documents, data.source), "source"
    return _stratified_split(documents, data), "stratified"


def _source_split(documents: Sequence[Document], source: str) -> dict[str, list[Document]]:
    splits = {split: [doc for doc in documents if doc.split == split] for split in SPLITS}
    for split, docs in splits.items():
        for name in sorted({doc.group for doc in documents} - {doc.group for doc in docs}):
            raise SourceError(f"{source}: class {name!r} has no {split} documents; "
                              "every class needs documents in both train and test")
    return splits


def _stratified_split(documents: Sequence[Document], data: DataParams) -> dict[str, list[Document]]:
    from sklearn.model_selection import train_test_split  # only sources without a split need scikit-learn

    counts = Counter(doc.group for doc in documents)
    name, fewest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if fewest < 2:
        raise SourceError(f"{data.source}: class {name!r} has {fewest} document; a stratified split "
                          f"(data.test_size = {data.test_size:g}) needs at least 2 per class")
    groups = [doc.group for doc in documents]
    try:
        train, test = train_test_split(np.arange(len(documents)), test_size=data.test_size,
                                       random_state=data.split_seed, stratify=groups)
    except ValueError as error:
        raise SourceError(f"{data.source}: cannot split {len(documents)} documents of {len(counts)} classes "
                          f"with data.test_size = {data.test_size:g}: {error}") from None
    return {"train": [documents[i] for i in train], "test": [documents[i] for i in test]}


def corpus_table(documents: Sequence[Document], names: Sequence[str], seed: int) -> pd.DataFrame:
    """The corpus table (id, group, label, text) of one split, rows in a seeded random order."""
    labels = {name: label for label, name in enumerate(names)}
    chosen = [documents[i] for i in np.random.RandomState(seed).permutation(len(documents))]
    return pd.DataFrame({
        "id": [doc.id for doc in chosen],
        "group": [doc.group for doc in chosen],
        "label": np.array([labels[doc.group] for doc in chosen], dtype=np.int32),
        "text": [doc.text for doc in chosen],
    }, columns=list(corpus.COLUMNS))


# --- the whole source ---

def read_archive(data: DataParams) -> Corpus:
    """The 20news-bydate archive, exactly as scikit-learn reads and cleans it."""
    posts = corpus.read_archive(data.source)
    return Corpus({split: corpus.corpus_frame(posts[split], data.remove) for split in SPLITS}, "source")


def read_documents(data: DataParams) -> Corpus:
    """A folder or table source as the corpus tables."""
    path = Path(data.source)
    if not path.exists():
        raise SourceError(f"{data.source}: not found")
    skipped: Counter = Counter()
    if data.kind == "table":
        documents = read_table(path, data)
    else:
        documents, skipped = read_folder(path)
    documents, dropped = drop_empty(documents)
    names = class_names(documents, data.source)
    splits, test_split = split_documents(documents, data)
    frames = {split: corpus_table(splits[split], names, data.split_seed) for split in SPLITS}
    return Corpus(frames, test_split, skipped, dropped)


def build(data: DataParams) -> Corpus:
    """The corpus tables of whatever data.source names; nothing is written."""
    return read_archive(data) if data.kind == "archive" else read_documents(data)


def fingerprint(frames: Mapping[str, pd.DataFrame]) -> str:
    """sha256 of both tables' rows (split, id, group, label, text): equal exactly when the corpora are."""
    digest = hashlib.sha256()
    for split, frame in frames.items():
        for row in zip(frame["id"], frame["group"], frame["label"].tolist(), frame["text"]):
            digest.update(json.dumps([split, *row], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def fetch_metrics(data: DataParams, built: Corpus) -> dict[str, Any]:
    """metrics/fetch.json: what was read, its fingerprint (the gate compares it), the counts."""
    return {
        "source": data.source,
        "kind": data.kind,
        "fingerprint": fingerprint(built.frames),
        "classes": int(built.frames["train"]["group"].nunique()),
        "test_split": built.test_split,
        **{split: {"documents": len(frame)} for split, frame in built.frames.items()},
        "skipped": {reason: built.skipped[reason] for reason in SKIP_REASONS},
        "dropped_empty": built.dropped_empty,
    }
