"""Stage `embed`: word vectors learnt from the training posts (LSA of their TF-IDF matrix, lstm_vs_gru/embedding.py),
written to `data/vectors.npz` with the vocabulary's fingerprint. Training starts its embedding from them under
`model.embedding_init: lsa`; under `uniform` (the lab) they are written but not read, a few seconds' work."""
from __future__ import annotations

import time
from typing import Any

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.embedding import lsa_vectors
from lstm_vs_gru.errors import exits_cleanly
from lstm_vs_gru.tokenizer import read_tokens


@exits_cleanly
def main() -> None:
    started = time.perf_counter()
    p = params.load()
    tokens = read_tokens("train")
    vectors, explained = lsa_vectors(tokens["ids"], tokens["offsets"], p.tokenize.num_words, p.model.embedding_dim)
    artifacts.write_npz(artifacts.VECTORS, vectors=vectors, vocabulary_sha256=tokens["vocabulary_sha256"])
    metrics: dict[str, Any] = {"words": vectors.shape[0], "dim": vectors.shape[1],
                               "explained_variance": round(explained, 6),
                               "seconds": round(time.perf_counter() - started, 3)}
    artifacts.write_json(artifacts.metrics_path("embed"), metrics)
    print(f"embed: {vectors.shape[0]:,} words × {vectors.shape[1]} from {len(tokens['labels']):,} training posts, "
          f"{explained:.1%} of the TF-IDF variance -> {artifacts.VECTORS}")


if __name__ == "__main__":
    main()
