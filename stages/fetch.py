"""Stage `fetch`: read the labelled corpus `data.source` names and write the corpus tables.

The 20news-bydate archive is sha256-checked and cleaned per `data.remove` exactly as scikit-learn's
`fetch_20newsgroups` does; a folder of class folders or a table is read as lstm_vs_gru/sources.py describes.
Writes `data/corpus/{train,test}.parquet` and `metrics/fetch.json` (counts and the corpus fingerprint).
Run from the project root: `python -m stages.fetch`.
"""
from __future__ import annotations

import pandas as pd

from lstm_vs_gru import params, sources
from lstm_vs_gru.artifacts import corpus_path, metrics_path, write_json, write_table
from lstm_vs_gru.errors import exits_cleanly


def summary(split: str, frame: pd.DataFrame, remove: tuple[str, ...]) -> str:
    removed = ",".join(remove) or "nothing"
    return (f"fetch: {split}: {len(frame)} documents, {frame['group'].nunique()} classes, "
            f"removed {removed} -> {corpus_path(split)}")


def skipped_summary(metrics: dict) -> str:
    counts = {**metrics["skipped"], "empty": metrics["dropped_empty"]}
    listed = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in counts.items() if count)
    return f"fetch: skipped {listed or 'nothing'} -> {metrics_path('fetch')}"


@exits_cleanly
def main() -> None:
    p = params.load()
    # Build every table before writing any, so a bad source leaves the old outputs untouched.
    built = sources.build(p.data)
    metrics = sources.fetch_metrics(p.data, built)
    for split, frame in built.frames.items():
        write_table(corpus_path(split), frame)
        print(summary(split, frame, p.data.remove))
    write_json(metrics_path("fetch"), metrics)
    print(skipped_summary(metrics))


if __name__ == "__main__":
    main()
