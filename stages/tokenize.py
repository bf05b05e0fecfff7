"""Stage `tokenize`: fit a Keras 2 Tokenizer vocabulary on the training posts and turn both
splits into ragged token-id arrays (`data/tokens/{split}.npz`, `data/tokens/vocab.json`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.artifacts import read_corpus
from lstm_vs_gru.errors import UserError, exits_cleanly
from lstm_vs_gru.tokenizer import Vocabulary, fit


def group_names(frames: list[pd.DataFrame]) -> np.ndarray:
    """The sorted group names, index = label, checked against every (label, group) pair of the corpus."""
    pairs = pd.concat([frame[["label", "group"]] for frame in frames]).drop_duplicates().sort_values("label")
    labels, names = pairs["label"].tolist(), pairs["group"].tolist()
    # A label with two groups repeats in `labels`; a group with two labels repeats in `names`.
    if (not all(isinstance(name, str) for name in names) or labels != list(range(len(names)))
            or names != sorted(set(names))):
        raise UserError("corpus: labels must be 0..n-1, one per group, in sorted group-name order")
    return np.array(names, dtype=np.str_)


def split_metrics(ids: np.ndarray, offsets: np.ndarray, raw_lengths: np.ndarray) -> dict[str, Any]:
    """Documents, token counts, sequence-length percentiles (kept tokens) and the out-of-vocabulary
    share: tokens dropped because they were unseen in training or ranked at or beyond num_words."""
    lengths = np.diff(offsets)
    raw_tokens = int(raw_lengths.sum())
    return {
        "documents": int(len(lengths)),
        "tokens": raw_tokens,
        "kept_tokens": int(len(ids)),
        "oov_share": round(1.0 - len(ids) / raw_tokens, 6) if raw_tokens else 0.0,
        "empty_documents": int((lengths == 0).sum()),
        "median_length": float(np.median(lengths)) if len(lengths) else 0.0,
        "p90_length": round(float(np.percentile(lengths, 90)), 3) if len(lengths) else 0.0,
    }


def tokenize_split(vocabulary: Vocabulary, frame: pd.DataFrame, num_words: int,
                   groups: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The npz arrays of one split and its metrics."""
    ids, offsets, raw_lengths = vocabulary.encode_with_raw_lengths(frame["text"], num_words)
    arrays = {"ids": ids, "offsets": offsets, "labels": frame["label"].to_numpy(dtype=np.int32), "groups": groups}
    return arrays, split_metrics(ids, offsets, raw_lengths)


@exits_cleanly
def main() -> None:
    settings = params.load().tokenize
    frames = {split: read_corpus(split) for split in artifacts.SPLITS}
    groups = group_names(list(frames.values()))
    vocabulary = fit(frames["train"]["text"], lower=settings.lower, filters=settings.filters)
    metrics: dict[str, Any] = {
        "num_words": settings.num_words,
        "vocabulary_size": len(vocabulary),
        "kept_words": vocabulary.kept_words(settings.num_words),
    }
    # pad and train carry this fingerprint into the model, so predict can refuse another vocabulary.
    fingerprint = np.array(vocabulary.sha256())
    for split, frame in frames.items():
        arrays, metrics[split] = tokenize_split(vocabulary, frame, settings.num_words, groups)
        artifacts.write_npz(artifacts.tokens_path(split), **arrays, vocabulary_sha256=fingerprint)
    artifacts.write_text(artifacts.VOCAB, vocabulary.to_json())
    artifacts.write_json(artifacts.metrics_path("tokenize"), metrics)


if __name__ == "__main__":
    main()
