"""Stage `pad`: cut or zero-pad every token sequence to `pad.maxlen` (Keras 2 `pad_sequences`),
writing `data/padded/{split}.npz`. Reads only the token arrays and `pad.*`, so a new maxlen
re-runs this stage and training, not tokenization."""
from __future__ import annotations

from typing import Any

import numpy as np

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.errors import exits_cleanly
from lstm_vs_gru.tokenizer import pad, read_tokens

def pad_metrics(offsets: np.ndarray, maxlen: int) -> dict[str, Any]:
    """Shares of documents cut to maxlen, padded with zeros, and empty (all zeros)."""
    lengths = np.diff(offsets)
    documents = len(lengths)

    def share(mask: np.ndarray) -> float:
        return round(float(mask.sum()) / documents, 6) if documents else 0.0

    return {
        "documents": documents,
        "truncated_share": share(lengths > maxlen),
        "padded_share": share(lengths < maxlen),
        "empty_share": share(lengths == 0),
    }


def pad_split(tokens: dict[str, np.ndarray], settings: params.PadParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The padded arrays of one split (x, y, groups, the vocabulary fingerprint) and its metrics."""
    x = pad(tokens["ids"], tokens["offsets"], settings.maxlen, settings.padding, settings.truncating)
    # tokenize's vocabulary fingerprint travels on into the model, so predict can refuse another vocabulary
    arrays = {"x": x, "y": tokens["labels"].astype(np.int32), "groups": tokens["groups"],
              "vocabulary_sha256": tokens["vocabulary_sha256"]}
    return arrays, pad_metrics(tokens["offsets"], settings.maxlen)


@exits_cleanly
def main() -> None:
    settings = params.load().pad
    metrics: dict[str, Any] = params.as_dict(settings)
    for split in artifacts.SPLITS:
        arrays, metrics[split] = pad_split(read_tokens(split), settings)
        artifacts.write_npz(artifacts.padded_path(split), **arrays)
    artifacts.write_json(artifacts.metrics_path("pad"), metrics)


if __name__ == "__main__":
    main()
