"""Classify new posts with the trained model, preprocessed exactly as its training text was.

    lstm-vs-gru-predict "NASA delayed the launch" "my SCSI drive will not boot"   # one document per argument
    lstm-vs-gru-predict --file posts.txt            # one document per line
    lstm-vs-gru-predict --file posts.jsonl --json   # JSON Lines in ({"text": ...}), JSON Lines out
    cat posts.txt | python -m lstm_vs_gru.cli.predict --cell gru --top-k 5

Input: the TEXT arguments, else `--file PATH` (`-` means standard input), else standard input.
Plain input is one document per line, so a post that spans lines must come as JSON Lines: one
JSON object per line with a string `text` field, and optionally an `id` that is copied to the
output. JSON Lines is chosen by `--jsonl` or by a file name ending in `.jsonl`, never guessed
from the content (a plain line that happens to look like JSON stays text). Blank lines and blank
arguments are skipped; no text at all is an error.

Output: a table for people, or with `--json` one JSON object per document, in input order:
    {"index": 0, "line": 1, "known_tokens": 37, "top": [{"group": "sci.space", "probability": 0.912}, ...]}
`index` counts documents from 0; `line` is the input line (file and standard input only);
`known_tokens` counts the words the model can see (in the vocabulary, rank < num_words): with 0
the ranking says nothing about the text.

Preprocessing is the pipeline's own: the vocabulary the tokenize stage saved
(data/tokens/vocab.json, with its lower/filters settings), `tokenize.num_words` and `pad.*`
from params.yaml, the tokenizer module's `encode` and `pad`. The model is models/{cell}/seed{N}.keras
(cell = params.yaml's `cell` unless `--cell`; N = the first of `train.seeds` unless `--seed`: the reference
run, whose models the gradients stage analyses too, rather than an average of the seeds' models, which would
be an ensemble and not the model the report describes); group names come from data/padded/train.npz.
Before TensorFlow is imported, the model file is checked against them: the vocabulary
fingerprint recorded at training time (when the model has one), the embedding size against
`tokenize.num_words`, the input length against `pad.maxlen`, the output size against the groups.
Every problem is one line, `error: ...`, exit status 2.

From Python, in the project root (or pass `root=`):

    from lstm_vs_gru.cli.predict import predict, load_predictor, classify
    predict(["NASA delayed the launch"])      # [[("sci.space", 0.91), ("sci.electronics", 0.03), ...]]
    predictor = load_predictor("gru")         # load once ...
    classify(predictor, texts, top_k=5)       # ... then classify any number of batches
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TextIO

import numpy as np

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly
from lstm_vs_gru.tokenizer import Vocabulary, pad

if TYPE_CHECKING:  # annotations only; importing Keras costs seconds and is done only to run a model
    import keras

DEFAULT_TOP_K = 3
DEFAULT_BATCH_SIZE = 256
PREVIEW_CHARS = 60
PROBABILITY_DIGITS = 6


@dataclass(frozen=True)
class Predictor:
    """Everything needed to classify text, loaded once: the model and the preprocessing that trained it."""
    cell: str
    model: "keras.Model"
    vocabulary: Vocabulary
    groups: tuple[str, ...]
    num_words: int
    pad: params.PadParams


@dataclass(frozen=True)
class ModelFacts:
    """What a .keras file says about its inputs and outputs, read without Keras (None: not found)."""
    num_words: int | None
    maxlen: int | None
    n_classes: int | None
    vocabulary_sha256: str | None


@dataclass(frozen=True)
class Document:
    """One text to classify, with where it came from."""
    text: str
    line: int | None = None  # 1-based input line, for file and standard-input input
    id: Any = None           # a JSON Lines record's "id"


# --- preprocessing and scoring ---------------------------------------------------------

def encode_texts(texts: Sequence[str], vocabulary: Vocabulary, num_words: int,
                 pad_params: params.PadParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (n, maxlen) int32, exactly as the tokenize and pad stages would make them, and
    each text's count of known tokens (in the vocabulary and below num_words, before padding)."""
    ids, offsets = vocabulary.encode(texts, num_words)
    x = pad(ids, offsets, pad_params.maxlen, pad_params.padding, pad_params.truncating)
    return x, np.diff(offsets)


def check_texts(texts: Sequence[str]) -> None:
    """A non-empty list of strings, or a clear error (a lone string would be read as characters)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: use [text]")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
    if len(texts) == 0:
        raise UserError("no text to classify")


def score(predictor: Predictor, texts: Sequence[str],
          batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Group probabilities (n, groups) float32 and known-token counts (n,) of the texts."""
    check_texts(texts)
    x, known = encode_texts(texts, predictor.vocabulary, predictor.num_words, predictor.pad)
    return predictor.model.predict(x, batch_size=batch_size, verbose=0), known


def top_groups(probabilities: np.ndarray, groups: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The top_k (group, probability) pairs of each row, most probable first (top_k above the
    number of groups means all of them; equal probabilities keep group order)."""
    if top_k < 1:
        raise UserError(f"top_k must be at least 1, not {top_k}")
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[(groups[j], float(row[j])) for j in ranks] for row, ranks in zip(probabilities, order)]


def classify(predictor: Predictor, texts: Sequence[str], top_k: int = DEFAULT_TOP_K,
             batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[tuple[str, float]]]:
    """The top_k groups of each text, with probabilities, using an already loaded predictor."""
    probabilities, _ = score(predictor, texts, batch_size)
    return top_groups(probabilities, predictor.groups, top_k)


def predict(texts: Sequence[str], cell: str | None = None, top_k: int = DEFAULT_TOP_K,
            root: str | os.PathLike = ".", seed: int | None = None) -> list[list[tuple[str, float]]]:
    """Load the model of `cell` (params.yaml's `cell` if None) and `seed` (the first of train.seeds if None)
    from the project at `root` and return the top_k groups of each text. To classify many batches, use
    load_predictor + classify."""
    check_texts(texts)
    return classify(load_predictor(cell, root, seed), texts, top_k)


# --- loading and checking the artifacts ------------------------------------------------

def load_predictor(cell: str | None = None, root: str | os.PathLike = ".", seed: int | None = None) -> Predictor:
    """The model of `cell` and `seed` with its vocabulary, group names and preprocessing params, checked
    to belong together before Keras is imported (see the module docstring)."""
    root = Path(root)
    settings = params.load(root / artifacts.PARAMS)
    cell = settings.cell if cell is None else cell
    if cell not in params.CELL_CHOICES:
        raise UserError(f"unknown cell {cell!r}: must be one of {', '.join(params.CELL_CHOICES)}")
    seed = settings.train.seeds[0] if seed is None else seed
    if seed not in settings.train.seeds:
        raise UserError(f"--seed {seed}: not one of train.seeds {list(settings.train.seeds)} in params.yaml")
    vocabulary = load_vocabulary(root / artifacts.VOCAB)
    groups = read_groups(root / artifacts.padded_path("train"))
    model_file = root / artifacts.model_path(cell, seed)
    check_model(read_model_facts(model_file, cell), model_file, cell, vocabulary=vocabulary,
                num_words=settings.tokenize.num_words, maxlen=settings.pad.maxlen, n_groups=len(groups))
    return Predictor(cell=cell, model=load_keras_model(model_file), vocabulary=vocabulary, groups=groups,
                     num_words=settings.tokenize.num_words, pad=settings.pad)


def load_vocabulary(path: Path) -> Vocabulary:
    """The saved vocabulary, or a one-line error naming the stage that writes it."""
    if not path.is_file():
        raise UserError(f"{path}: not found: no vocabulary yet (run `dvc repro tokenize`)")
    return Vocabulary.from_json(path.read_text(encoding="utf-8"), source=str(path))


def read_groups(path: Path) -> tuple[str, ...]:
    """The group names (index = label) from a padded split; only that array is read."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            groups = arrays["groups"]
    except FileNotFoundError:
        raise UserError(f"{path}: not found: no group names yet (run `dvc repro pad`)") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: no readable groups array ({error}); run `dvc repro pad`") from None
    if groups.ndim != 1 or groups.dtype.kind != "U" or groups.size < 2:
        raise UserError(f"{path}: groups must be a list of at least two group names (run `dvc repro pad`)")
    return tuple(str(group) for group in groups)


def read_model_facts(path: Path, cell: str) -> ModelFacts:
    """Input/output sizes from a .keras file's config.json, and the training-time vocabulary
    fingerprint stamped beside it (see artifacts.stamp_model), without importing Keras."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        stamp = artifacts.read_model_stamp(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found: no trained model yet (run `dvc repro train_{cell}`)") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: not a readable Keras model ({error}); run `dvc repro train_{cell}`") from None
    layers = config.get("config", {}).get("layers", []) if isinstance(config, dict) else []
    configs = [(layer.get("class_name"), layer.get("config", {})) for layer in layers if isinstance(layer, dict)]
    embedding = [c.get("input_dim") for kind, c in configs if kind == "Embedding"]
    inputs = [c.get("batch_shape") for kind, c in configs if kind == "InputLayer"]
    # Layers are listed in graph order, so the last one with units is the output layer.
    units = [c.get("units") for _, c in configs if "units" in c]
    sha = stamp.get("vocabulary_sha256")
    return ModelFacts(
        num_words=_int_or_none(embedding[0]) if len(embedding) == 1 else None,
        maxlen=_int_or_none(inputs[0][-1]) if len(inputs) == 1 and isinstance(inputs[0], list) else None,
        n_classes=_int_or_none(units[-1]) if units else None,
        vocabulary_sha256=sha if isinstance(sha, str) else None,
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_model(facts: ModelFacts, path: Path, cell: str, *, vocabulary: Vocabulary, num_words: int,
                maxlen: int, n_groups: int) -> None:
    """Refuse a model trained with other preprocessing than the one about to be applied."""
    retrain = f"retrain it: `dvc repro train_{cell}`"
    if facts.vocabulary_sha256 is not None and facts.vocabulary_sha256 != (found := vocabulary.sha256()):
        raise UserError(f"{path}: trained with another vocabulary than {artifacts.VOCAB} "
                        f"(sha256 {facts.vocabulary_sha256[:12]}... vs {found[:12]}...); {retrain}")
    if facts.num_words is not None and facts.num_words != num_words:
        raise UserError(f"{path}: its embedding has {facts.num_words} rows but tokenize.num_words is {num_words}: "
                        f"trained with other tokenize parameters; {retrain}")
    if facts.maxlen is not None and facts.maxlen != maxlen:
        raise UserError(f"{path}: it reads {facts.maxlen} tokens per text but pad.maxlen is {maxlen}: "
                        f"trained with other pad parameters; {retrain}")
    if facts.n_classes is not None and facts.n_classes != n_groups:
        raise UserError(f"{path}: it scores {facts.n_classes} groups but the padded data has {n_groups}; {retrain}")


def load_keras_model(path: Path) -> "keras.Model":
    """The saved model, uncompiled (prediction needs no optimizer)."""
    from lstm_vs_gru.model import load_model

    try:
        return load_model(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        import keras

        raise UserError(f"{path}: Keras {keras.__version__} cannot load it: {' '.join(str(error).split())}") from None


# --- the command -----------------------------------------------------------------------

def read_documents(lines: Iterable[str], jsonl: bool, source: str) -> list[Document]:
    """One document per non-blank line: the line itself, or a JSON object's `text` (and `id`)."""
    documents = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if not jsonl:
            documents.append(Document(line, line=number))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{source}, line {number}: not valid JSON ({error.msg}); "
                            "without --jsonl each line is read as text") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{source}, line {number}: expected a JSON object with a string "text" field')
        documents.append(Document(record["text"], line=number, id=record.get("id")))
    return documents


def gather_documents(args: argparse.Namespace, stdin: TextIO) -> list[Document]:
    """The documents from the arguments, the --file or standard input; an error if there are none."""
    if args.text and args.file is not None:
        raise UserError("give TEXT arguments or --file, not both")
    if args.text:
        documents, source = [Document(text) for text in args.text if text.strip()], "the arguments"
    elif args.file is not None and args.file != "-":
        path = Path(args.file)
        jsonl = args.jsonl or path.suffix == ".jsonl"
        try:
            with open(path, encoding=args.encoding) as handle:
                documents = read_documents(handle, jsonl, str(path))
        except FileNotFoundError:
            raise UserError(f"{path}: not found") from None
        except (UnicodeDecodeError, LookupError) as error:
            raise UserError(f"{path}: cannot be read as {args.encoding} text ({error}); try --encoding") from None
        source = str(path)
    else:
        if stdin.isatty():
            raise UserError("no input: give TEXT arguments, --file PATH, or pipe text into standard input")
        try:
            documents, source = read_documents(stdin, args.jsonl, "standard input"), "standard input"
        except UnicodeDecodeError as error:
            raise UserError(f"standard input: not readable text ({error})") from None
    if not documents:
        raise UserError(f"{source}: no text to classify (empty or only blank)")
    return documents


def json_lines(documents: Sequence[Document], ranked: list[list[tuple[str, float]]], known: np.ndarray) -> str:
    """One JSON object per document (see the module docstring)."""
    lines = []
    for index, (document, top, count) in enumerate(zip(documents, ranked, known)):
        record: dict[str, Any] = {"index": index}
        if document.line is not None:
            record["line"] = document.line
        if document.id is not None:
            record["id"] = document.id
        record["known_tokens"] = int(count)
        record["top"] = [{"group": group, "probability": round(p, PROBABILITY_DIGITS)} for group, p in top]
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def preview(text: str, width: int = PREVIEW_CHARS) -> str:
    """The text on one line, cut to `width` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(documents: Sequence[Document], ranked: list[list[tuple[str, float]]], known: np.ndarray) -> str:
    """A table for people: one row per (document, group), the document's number and text on its first row."""
    group_width = max(len("group"), *(len(group) for top in ranked for group, _ in top))
    number_width = max(1, len(str(len(documents))))
    rows = [f"{'#':>{number_width}}  {'group':<{group_width}}  probability  text"]
    for number, (document, top) in enumerate(zip(documents, ranked), start=1):
        for rank, (group, probability) in enumerate(top):
            label, text = (str(number), preview(document.text)) if rank == 0 else ("", "")
            rows.append(f"{label:>{number_width}}  {group:<{group_width}}  {probability:>11.3f}  {text}".rstrip())
    unseen = [str(number) for number, count in enumerate(known, start=1) if count == 0]
    if unseen:
        rows.append(f"no word the model knows in document {', '.join(unseen)}: its ranking says nothing")
    return "\n".join(rows) + "\n"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    # The module docstring up to its Python part is the command's manual: input and output formats.
    parser = OneLineParser(prog="lstm-vs-gru-predict", description=__doc__.split("\nFrom Python")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Run it in the project root (where params.yaml is).")
    parser.add_argument("text", nargs="*", help="texts to classify, one document each")
    parser.add_argument("--file", "-f", metavar="PATH", help="read documents from PATH (- for standard input)")
    parser.add_argument("--jsonl", action="store_true",
                        help='input is JSON Lines with a "text" field (automatic for *.jsonl files)')
    parser.add_argument("--encoding", default="utf-8", help="encoding of --file (default utf-8)")
    parser.add_argument("--cell", choices=params.CELL_CHOICES, help="the model to use (default: cell in params.yaml)")
    parser.add_argument("--seed", type=int, help="the run of this seed (default: the first of train.seeds)")
    parser.add_argument("--top-k", "-k", type=_positive, default=DEFAULT_TOP_K, metavar="K",
                        help=f"how many groups to show per document (default {DEFAULT_TOP_K})")
    parser.add_argument("--json", action="store_true", help="print JSON Lines instead of a table")
    parser.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"documents per model call (default {DEFAULT_BATCH_SIZE})")
    return parser.parse_args(argv)


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m lstm_vs_gru.cli.predict` and `lstm-vs-gru-predict`."""
    args = parse_args(argv)
    documents = gather_documents(args, sys.stdin)
    predictor = load_predictor(args.cell, seed=args.seed)
    probabilities, known = score(predictor, [document.text for document in documents], args.batch_size)
    ranked = top_groups(probabilities, predictor.groups, args.top_k)
    sys.stdout.write((json_lines if args.json else table)(documents, ranked, known))


if __name__ == "__main__":
    main()
