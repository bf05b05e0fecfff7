"""Small labelled corpora in every layout `data.source` accepts: a folder of class folders (with or without
train/ and test/), CSV, TSV, JSON Lines and Parquet, built from the same deterministic documents.

Each document starts with words of its class and ends with words every class shares, so a model can learn
the classes in an epoch or two."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import pandas as pd

from tests.small_archive import GENERIC_WORDS

CLASS_WORDS = {
    "billing": "invoice refund charged payment receipt overcharge subscription card",
    "delivery": "parcel courier tracking shipped arrived warehouse package postage",
    "login": "password locked reset account twofactor username signin credentials",
}
CLASSES = tuple(sorted(CLASS_WORDS))


def documents(per_class: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    """(class, text) pairs, per_class of each class, classes interleaved."""
    rng = random.Random(seed)
    pairs = []
    for number in range(per_class):
        for name in CLASSES:
            words = rng.sample(CLASS_WORDS[name].split(), 4) + rng.sample(GENERIC_WORDS, 8)
            pairs.append((name, f"Ticket {number}: " + " ".join(words) + "."))
    return pairs


def write_folder(root: Path, pairs: Sequence[tuple[str, str]], test_every: int = 0) -> Path:
    """<root>/<class>/<n>.txt, or with test_every > 0 <root>/{train,test}/<class>/<n>.txt (every
    test_every-th document of a class in test)."""
    counts: dict[str, int] = {}
    for name, text in pairs:
        number = counts[name] = counts.get(name, 0) + 1
        split = ("test" if number % test_every == 0 else "train") if test_every else ""
        path = root / split / name / f"{number:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def frame(pairs: Sequence[tuple[str, str]], text: str = "text", label: str = "label") -> pd.DataFrame:
    return pd.DataFrame({text: [t for _, t in pairs], label: [name for name, _ in pairs]})


def write_table(path: Path, table: pd.DataFrame) -> Path:
    """The table as CSV, TSV, JSON Lines or Parquet, by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        records = table.to_dict(orient="records")
        path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    else:
        table.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    return path
