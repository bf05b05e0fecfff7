"""Keras 2 text preprocessing without TensorFlow: `Tokenizer(num_words=N)` fitted with
`fit_on_texts`, applied with `texts_to_sequences`, then `pad_sequences(maxlen, padding, truncating)`.

The semantics follow keras-preprocessing 1.1.2 (`keras_preprocessing/text.py`, `sequence.py`),
which Keras 2 re-exported as `keras.preprocessing.text` / `keras.preprocessing.sequence`:

- a text is lower-cased first (if `lower`), then every filter character becomes a space
  (`str.translate`), then it is split on " " and empty strings are dropped;
- words are counted in first-seen order and ranked by descending count; `list.sort` is stable,
  so ties keep first-seen order; rank 1 is the most frequent word and 0 is never a word;
- when converting, a word is kept only if it was seen in fitting and its rank is below
  `num_words` (Keras 2 with `oov_token=None` silently drops the rest);
- padding and truncation put the zeros / cut the tokens at the "pre" (start) or "post" (end).

Sequences are ragged: one flat int32 array of ids plus int64 offsets (n_docs + 1), so the
token ids of document i are `ids[offsets[i]:offsets[i + 1]]`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np

from lstm_vs_gru import artifacts
from lstm_vs_gru.artifacts import VOCAB
from lstm_vs_gru.errors import UserError

DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
SPLIT = " "
SIDES = ("pre", "post")
JSON_FORMAT = "keras2-tokenizer-vocabulary"
JSON_VERSION = 1


def text_to_words(text: str, lower: bool = True, filters: str = DEFAULT_FILTERS) -> list[str]:
    """Keras 2 `text_to_word_sequence(text, filters, lower, split=" ")`."""
    return _splitter(lower, filters)(text)


def _splitter(lower: bool, filters: str):
    """A fast text -> words function for one setting (the translation table is built once)."""
    table = str.maketrans(dict.fromkeys(filters, SPLIT))

    def split(text: str) -> list[str]:
        if lower:
            # Keras 2 lower-cases before translating, so an upper-case filter char is not filtered
            # (its lower-case form is) and lower() may create filter chars.
            text = text.lower()
        return [word for word in text.translate(table).split(SPLIT) if word]

    return split


@dataclass(frozen=True)
class Vocabulary:
    """A fitted Keras 2 Tokenizer: words in rank order (rank = position + 1) with their counts."""

    words: tuple[str, ...]
    counts: tuple[int, ...]
    lower: bool = True
    filters: str = DEFAULT_FILTERS
    document_count: int = 0

    def __post_init__(self) -> None:
        if len(self.words) != len(self.counts):
            raise ValueError(f"{len(self.words)} words but {len(self.counts)} counts")

    def __len__(self) -> int:
        return len(self.words)

    @cached_property
    def index(self) -> dict[str, int]:
        """Keras' `word_index`: word -> rank, from 1."""
        return {word: rank for rank, word in enumerate(self.words, start=1)}

    def kept_words(self, num_words: int | None) -> int:
        """How many ranks (1..num_words-1) exist, i.e. how many distinct words `encode` can emit."""
        return len(self.words) if num_words is None else max(0, min(num_words - 1, len(self.words)))

    def encode(self, texts: Iterable[str], num_words: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Keras 2 `texts_to_sequences` as ragged arrays: (ids int32, offsets int64 of n_docs + 1)."""
        ids, offsets, _ = self.encode_with_raw_lengths(texts, num_words)
        return ids, offsets

    def encode_with_raw_lengths(
        self, texts: Iterable[str], num_words: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`encode`, plus each document's word count before unknown / rare words were dropped."""
        split, get = _splitter(self.lower, self.filters), self.index.get
        raw_lengths: list[int] = []
        ranks: list[int] = []
        for text in texts:
            words = split(text)
            raw_lengths.append(len(words))
            ranks.extend([get(word, 0) for word in words])
        all_ids = np.asarray(ranks, dtype=np.int64)
        keep = all_ids > 0
        if num_words is not None:
            keep &= all_ids < num_words
        raw_offsets = offsets_from_lengths(raw_lengths)
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        return all_ids[keep].astype(np.int32), kept_before[raw_offsets], np.diff(raw_offsets)

    def to_json(self) -> str:
        """A readable JSON document: settings, then one `[word, count]` per line in rank order."""
        head = {
            "format": JSON_FORMAT, "version": JSON_VERSION,
            "lower": self.lower, "filters": self.filters, "split": SPLIT,
            "document_count": self.document_count, "size": len(self.words),
        }
        lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}," for key, value in head.items()]
        entries = ",\n".join(
            f"    {json.dumps([word, count], ensure_ascii=False)}" for word, count in zip(self.words, self.counts)
        )
        words = '  "words": [\n' + entries + "\n  ]" if entries else '  "words": []'
        return "{\n" + "\n".join(lines) + "\n" + words + "\n}\n"

    def sha256(self) -> str:
        """The sha256 of `to_json()`: the fingerprint a model records of the vocabulary that trained it."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str, source: str = "vocabulary") -> Vocabulary:
        """Read `to_json` output; a malformed document raises UserError naming `source`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{source}: not valid JSON: {error}") from None
        return cls(**_checked_fields(data, source))


def read_vocabulary(path: str | os.PathLike = VOCAB) -> Vocabulary:
    """The vocabulary the tokenize stage wrote (for encoding new text the way training text was)."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the tokenize stage first)") from None
    return Vocabulary.from_json(text, source=str(path))


def _checked_fields(data: Any, source: str) -> dict[str, Any]:
    def bad(what: str) -> UserError:
        return UserError(f"{source}: {what} (expected a {JSON_FORMAT} file written by the tokenize stage)")

    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT or data.get("version") != JSON_VERSION:
        raise bad(f"not a {JSON_FORMAT} version {JSON_VERSION} document")
    if data.get("split") != SPLIT:
        raise bad(f"split must be {SPLIT!r}")
    lower, filters, document_count, entries = (data.get(k) for k in ("lower", "filters", "document_count", "words"))
    if not isinstance(lower, bool) or not isinstance(filters, str):
        raise bad("lower must be true/false and filters a string")
    if isinstance(document_count, bool) or not isinstance(document_count, int) or document_count < 0:
        raise bad("document_count must be a non-negative integer")
    if not isinstance(entries, list) or not all(_is_entry(entry) for entry in entries):
        raise bad("words must be a list of [word, count] pairs with count >= 1")
    words = tuple(word for word, _ in entries)
    if len(set(words)) != len(words):
        raise bad("words repeat")
    if data.get("size", len(words)) != len(words):
        raise bad(f"size says {data.get('size')} but {len(words)} words are listed")
    return {"words": words, "counts": tuple(count for _, count in entries), "lower": lower,
            "filters": filters, "document_count": document_count}


def _is_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and entry[0] != ""
            and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 1)


def fit(texts: Iterable[str], lower: bool = True, filters: str = DEFAULT_FILTERS) -> Vocabulary:
    """Keras 2 `Tokenizer(lower=lower, filters=filters).fit_on_texts(texts)`."""
    split = _splitter(lower, filters)
    counts: Counter[str] = Counter()  # a dict: keeps first-seen order
    documents = 0
    for text in texts:
        counts.update(split(text))
        documents += 1
    # sorted() is stable, and stays stable with reverse=True: equal counts keep first-seen order.
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    return Vocabulary(
        words=tuple(word for word, _ in ranked), counts=tuple(count for _, count in ranked),
        lower=lower, filters=filters, document_count=documents,
    )


def offsets_from_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Offsets (int64, n + 1) of ragged sequences with these lengths."""
    return np.concatenate(([0], np.cumsum(np.asarray(lengths, dtype=np.int64)))).astype(np.int64)


def pad(ids: np.ndarray, offsets: np.ndarray, maxlen: int, padding: str = "pre", truncating: str = "pre") -> np.ndarray:
    """Keras 2 `pad_sequences(seqs, maxlen, dtype="int32", padding, truncating, value=0)` on ragged arrays.

    Returns an int32 array (n_docs, maxlen). Vectorised: every cell looks up its source token at once.
    """
    if padding not in SIDES or truncating not in SIDES:
        raise ValueError(f"padding and truncating must be one of {SIDES}, got {padding!r}, {truncating!r}")
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"maxlen must be an integer >= 1, got {maxlen!r}")
    ids, offsets = np.asarray(ids), np.asarray(offsets, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    kept = np.minimum(ends - starts, maxlen)
    # "pre" truncation keeps the last maxlen tokens, "post" the first ones.
    source_start = ends - kept if truncating == "pre" else starts
    # "pre" padding right-aligns the kept tokens, "post" left-aligns them.
    first_column = maxlen - kept if padding == "pre" else np.zeros_like(kept)
    columns = np.arange(maxlen, dtype=np.int64)
    step = columns[None, :] - first_column[:, None]
    filled = (step >= 0) & (step < kept[:, None])
    out = np.zeros((len(kept), maxlen), dtype=np.int32)
    out[filled] = ids[(source_start[:, None] + step)[filled]]
    return out


TOKEN_ARRAYS = ("ids", "offsets", "labels", "groups", "vocabulary_sha256")


def read_tokens(split: str) -> dict[str, np.ndarray]:
    """The ragged token arrays of one split, checked to be consistent."""
    path = artifacts.tokens_path(split)
    arrays = artifacts.read_stage_npz(path, TOKEN_ARRAYS, "tokenize")
    ids, offsets, labels = arrays["ids"], arrays["offsets"], arrays["labels"]
    if (offsets.ndim != 1 or len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != len(ids)
            or np.any(np.diff(offsets) < 0)):
        raise UserError(f"{path}: offsets do not match ids and labels (re-run the tokenize stage)")
    return arrays
