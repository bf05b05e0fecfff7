"""Stage `fetch`: verify the 20news-bydate archive and write the corpus tables.

Reads `data.archive` (sha256-checked, never extracted or modified), cleans it per `data.remove`
exactly as scikit-learn's `fetch_20newsgroups` does, and writes `data/corpus/{train,test}.parquet`.
Run from the project root: `python -m stages.fetch`.
"""
from __future__ import annotations

import pandas as pd

from lstm_vs_gru import corpus, params
from lstm_vs_gru.artifacts import SPLITS, corpus_path, write_table
from lstm_vs_gru.errors import exits_cleanly


def build_corpus(archive: str, remove: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Split -> corpus table, for a verified archive."""
    posts = corpus.read_archive(archive)
    return {split: corpus.corpus_frame(posts[split], remove) for split in SPLITS}


def summary(split: str, frame: pd.DataFrame, remove: tuple[str, ...]) -> str:
    removed = ",".join(remove) or "nothing"
    return (f"fetch: {split}: {len(frame)} posts, {frame['group'].nunique()} groups, "
            f"removed {removed} -> {corpus_path(split)}")


@exits_cleanly
def main() -> None:
    p = params.load()
    # Build every table before writing any, so a bad archive leaves the old outputs untouched.
    frames = build_corpus(p.data.archive, p.data.remove)
    for split, frame in frames.items():
        write_table(corpus_path(split), frame)
        print(summary(split, frame, p.data.remove))


if __name__ == "__main__":
    main()
