"""The prediction command and functions, on a tiny project built by the real tokenize, pad and train stages."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru import artifacts
from lstm_vs_gru.cli import predict
from stages import pad, tokenize, train
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import PadParams
from lstm_vs_gru.tokenizer import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["rec.autos", "sci.space", "talk.politics.misc"]
WORDS = {
    "rec.autos": "car engine brake wheel tire drive dealer oil",
    "sci.space": "orbit launch nasa shuttle moon rocket planet satellite",
    "talk.politics.misc": "vote senate law tax president congress policy government",
}
COMMON = "the a of and is it to in"
NUM_WORDS, MAXLEN = 20, 6  # small enough that rare words are dropped and long texts truncated


def posts(n_per_group: int, seed: int) -> pd.DataFrame:
    """Posts of 3-12 words mixing a group's words with common ones; some upper case and punctuation."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, group in enumerate(GROUPS):
        pool = WORDS[group].split() + COMMON.split()
        for i in range(n_per_group):
            words = rng.choice(pool, size=rng.integers(3, 13)).tolist()
            text = " ".join(words).capitalize() + ("!" if i % 2 else ".\nBye")
            rows.append((f"{group}/{seed}{i}", group, label, text))
    return pd.DataFrame(rows, columns=["id", "group", "label", "text"]).astype({"label": "int32"})


def write_params(directory: Path, **changes: dict) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tokenize"]["num_words"] = NUM_WORDS
    raw["pad"].update(maxlen=MAXLEN, padding="pre", truncating="post")
    raw["model"].update(embedding_dim=4, units=3, dense_units=5)
    raw["train"].update(epochs=1, batch_size=8)
    for section, values in changes.items():
        raw[section].update(values)
    (directory / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with corpus, tokens, vocabulary, padded arrays and a 1-epoch LSTM. Do not modify it."""
    directory = tmp_path_factory.mktemp("predict_project")
    write_params(directory)
    before = Path.cwd()
    os.chdir(directory)
    try:
        artifacts.write_table(artifacts.corpus_path("train"), posts(8, seed=1))
        extra = pd.DataFrame([("rec.autos/x", "rec.autos", 0, "Car oil."), ("sci.space/y", "sci.space", 1, "zzz qq")],
                             columns=["id", "group", "label", "text"]).astype({"label": "int32"})
        artifacts.write_table(artifacts.corpus_path("test"), pd.concat([posts(3, seed=2), extra], ignore_index=True))
        tokenize.main()
        pad.main()
        train.main(["lstm"])
    finally:
        os.chdir(before)
    return directory


@pytest.fixture
def project(built: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The built project as the current directory, read-only by convention."""
    monkeypatch.chdir(built)
    return built


@pytest.fixture
def scratch(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the built project that a test may break, as the current directory."""
    copy = tmp_path / "project"
    shutil.copytree(built, copy)
    monkeypatch.chdir(copy)
    return copy


@pytest.fixture(scope="module")
def predictor(built: Path) -> predict.Predictor:
    return predict.load_predictor(root=built)


def test_texts_get_exactly_the_ids_of_the_tokenize_and_pad_stages(project: Path) -> None:
    texts = pd.read_parquet(artifacts.corpus_path("test"))["text"].tolist()
    vocabulary = Vocabulary.from_json(artifacts.VOCAB.read_text(encoding="utf-8"))
    settings = PadParams(maxlen=MAXLEN, padding="pre", truncating="post")
    x, known = predict.encode_texts(texts, vocabulary, NUM_WORDS, settings)
    padded = artifacts.read_npz(artifacts.padded_path("test"))
    tokens = artifacts.read_npz(artifacts.tokens_path("test"))
    assert x.dtype == np.int32 and x.shape == (len(texts), MAXLEN)
    np.testing.assert_array_equal(x, padded["x"])
    np.testing.assert_array_equal(known, np.diff(tokens["offsets"]))
    assert 0 < x.max() < NUM_WORDS and (known > MAXLEN).any() and (known < MAXLEN).any()  # both cut and padded
    assert known[-1] == 0 and not x[-1].any()  # no known word: all padding


def test_predictions_equal_the_models_own_on_the_padded_arrays(project: Path, predictor: predict.Predictor) -> None:
    texts = pd.read_parquet(artifacts.corpus_path("test"))["text"].tolist()
    padded = artifacts.read_npz(artifacts.padded_path("test"))
    expected = predictor.model.predict(padded["x"], verbose=0)
    probabilities, _ = predict.score(predictor, texts, batch_size=4)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)

    ranked = predict.classify(predictor, texts, top_k=2)
    assert len(ranked) == len(texts)
    for top, row in zip(ranked, expected):
        best = np.argsort(-row, kind="stable")[:2]
        assert [group for group, _ in top] == [GROUPS[j] for j in best]
        assert [p for _, p in top] == pytest.approx(row[best].tolist(), rel=1e-5)


def test_predict_loads_by_cell_from_root(built: Path, predictor: predict.Predictor) -> None:
    text = "NASA launch of the shuttle to the moon"
    top = predict.predict([text], cell="lstm", top_k=5, root=built)
    assert len(top) == 1 and sorted(group for group, _ in top[0]) == GROUPS  # top_k above 3 gives all 3
    probabilities = [p for _, p in top[0]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert top == predict.classify(predictor, [text], top_k=5)
    assert predictor.cell == "lstm" and predictor.groups == tuple(GROUPS)


def test_model_records_the_vocabulary_fingerprint(project: Path) -> None:
    fingerprint = Vocabulary.from_json(artifacts.VOCAB.read_text(encoding="utf-8")).sha256()
    assert str(artifacts.read_npz(artifacts.tokens_path("train"))["vocabulary_sha256"]) == fingerprint
    assert str(artifacts.read_npz(artifacts.padded_path("train"))["vocabulary_sha256"]) == fingerprint
    facts = predict.read_model_facts(artifacts.model_path("lstm", 0), "lstm")
    assert facts == predict.ModelFacts(num_words=NUM_WORDS, maxlen=MAXLEN, n_classes=3, vocabulary_sha256=fingerprint)


def test_bad_texts_argument() -> None:
    with pytest.raises(TypeError, match="not one string"):
        predict.check_texts("a post")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        predict.check_texts(["a post", 3])
    with pytest.raises(UserError, match="no text to classify"):
        predict.check_texts([])


# --- the command, in-process --------------------------------------------------------------

def run_main(capsys: pytest.CaptureFixture, *argv: str, stdin: str | None = None,
             monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    predict.main(list(argv))
    return capsys.readouterr().out


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_json_output_from_arguments(project: Path, predictor: predict.Predictor, capsys) -> None:
    texts = ["the engine and the brake of my car", "vote on the tax law", "zzz unknown words only"]
    out = records(run_main(capsys, "--json", *texts))
    assert [record["index"] for record in out] == [0, 1, 2]
    assert all(set(record) == {"index", "known_tokens", "top"} for record in out)
    _, known = predict.score(predictor, texts)
    assert [record["known_tokens"] for record in out] == known.tolist() and known[2] == 0
    for record, top in zip(out, predict.classify(predictor, texts)):
        assert [(item["group"], item["probability"]) for item in record["top"]] == \
            [(group, round(p, 6)) for group, p in top]


def test_table_shows_top_k_rows_per_document(project: Path, predictor: predict.Predictor, capsys) -> None:
    texts = ["orbit of the moon", "zzz"]
    lines = run_main(capsys, "--top-k", "2", *texts).splitlines()
    header, rows, note = lines[0], lines[1:5], lines[5:]
    assert header.split() == ["#", "group", "probability", "text"]
    expected = predict.classify(predictor, texts, top_k=2)
    for row, (number, rank) in zip(rows, [(1, 0), (1, 1), (2, 0), (2, 1)]):
        group, probability = expected[number - 1][rank]
        cells = row.split()
        if rank == 0:
            assert cells[:3] == [str(number), group, f"{probability:.3f}"] and " ".join(cells[3:]) == texts[number - 1]
        else:
            assert cells == [group, f"{probability:.3f}"]
    assert note == ["no word the model knows in document 2: its ranking says nothing"]


def test_plain_lines_from_standard_input_skip_blank_lines(project: Path, capsys, monkeypatch) -> None:
    out = records(run_main(capsys, "--json", "-k", "1", stdin="car engine\n\n   \nnasa orbit\r\n",
                           monkeypatch=monkeypatch))
    assert [(r["index"], r["line"], len(r["top"])) for r in out] == [(0, 1, 1), (1, 4, 1)]


def test_file_and_json_lines(project: Path, tmp_path: Path, predictor: predict.Predictor, capsys, monkeypatch) -> None:
    texts = ["car engine\nand brakes", "nasa orbit"]  # a line break inside a post needs JSON Lines
    lines = [json.dumps({"id": "a", "text": texts[0]}), "", json.dumps({"text": texts[1], "other": 1})]
    expected = predict.classify(predictor, texts, top_k=1)

    def check(out: list[dict]) -> None:
        assert [(r["index"], r["line"], r.get("id")) for r in out] == [(0, 1, "a"), (1, 3, None)]
        assert [[(t["group"], t["probability"]) for t in r["top"]] for r in out] == \
            [[(g, round(p, 6)) for g, p in top] for top in expected]

    (tmp_path / "posts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    check(records(run_main(capsys, "--json", "-k", "1", "--file", str(tmp_path / "posts.jsonl"))))
    check(records(run_main(capsys, "--json", "-k", "1", "--jsonl", stdin="\n".join(lines), monkeypatch=monkeypatch)))
    check(records(run_main(capsys, "--json", "-k", "1", "--jsonl", "--file", "-", stdin="\n".join(lines),
                           monkeypatch=monkeypatch)))

    (tmp_path / "posts.txt").write_text("car engine\nnasa orbit\n", encoding="latin-1")
    out = records(run_main(capsys, "--json", "--file", str(tmp_path / "posts.txt"), "--encoding", "latin-1"))
    assert [r["line"] for r in out] == [1, 2]


def test_cell_option_overrides_params(project: Path, capsys) -> None:
    # only the LSTM was trained, so asking for the GRU names the stage that would train it
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--cell", "gru", "some text"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == \
        "error: models/gru/seed0.keras: not found: no trained model yet (run `dvc repro train_gru`)\n"


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("stdin, argv, message", [
    ("", ["--json"], "standard input: no text to classify"),
    ("\n  \n", [], "standard input: no text to classify"),
    (None, ["", "  "], "the arguments: no text to classify"),
    ('{"text": "ok"}\nnot json\n', ["--jsonl"], "standard input, line 2: not valid JSON"),
    ('{"id": 1}\n', ["--jsonl"], 'standard input, line 1: expected a JSON object with a string "text" field'),
    (None, ["--top-k", "0", "text"], "argument --top-k/-k: invalid _positive value: '0'"),
    (None, ["--cell", "rnn", "text"], "argument --cell: invalid choice: 'rnn'"),
    (None, ["--file", "missing.txt"], "missing.txt: not found"),
    (None, ["--file", "params.yaml", "text"], "give TEXT arguments or --file, not both"),
])
def test_input_errors(project: Path, capsys, monkeypatch, stdin, argv, message) -> None:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert message in one_line_error(capsys, argv)


def test_terminal_without_input_is_refused(project: Path, capsys, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert "no input: give TEXT arguments, --file PATH, or pipe text" in one_line_error(capsys, [])


def test_missing_artifacts(scratch: Path, capsys) -> None:
    artifacts.model_path("lstm", 0).unlink()
    assert one_line_error(capsys, ["text"]) == \
        "error: models/lstm/seed0.keras: not found: no trained model yet (run `dvc repro train_lstm`)\n"
    artifacts.VOCAB.unlink()
    assert one_line_error(capsys, ["text"]) == \
        "error: data/tokens/vocab.json: not found: no vocabulary yet (run `dvc repro tokenize`)\n"


@pytest.mark.parametrize("changes, message", [
    ({"tokenize": {"num_words": NUM_WORDS + 1}},
     f"its embedding has {NUM_WORDS} rows but tokenize.num_words is {NUM_WORDS + 1}: "
     "trained with other tokenize parameters; retrain it: `dvc repro train_lstm`"),
    ({"pad": {"maxlen": MAXLEN * 2}}, f"it reads {MAXLEN} tokens per text but pad.maxlen is {MAXLEN * 2}"),
])
def test_params_that_do_not_match_the_model(scratch: Path, capsys, changes, message) -> None:
    write_params(scratch, **changes)
    assert message in one_line_error(capsys, ["text"])


def test_another_vocabulary_is_refused(scratch: Path, capsys) -> None:
    # Same size and settings, so only the fingerprint can tell: tokenize re-run with other text.
    vocabulary = Vocabulary.from_json(artifacts.VOCAB.read_text(encoding="utf-8"))
    swapped = Vocabulary(words=vocabulary.words[::-1], counts=vocabulary.counts, lower=vocabulary.lower,
                         filters=vocabulary.filters, document_count=vocabulary.document_count)
    artifacts.write_text(artifacts.VOCAB, swapped.to_json())
    err = one_line_error(capsys, ["text"])
    assert err.startswith("error: models/lstm/seed0.keras: trained with another vocabulary than data/tokens/vocab.json")
    assert err.rstrip().endswith("retrain it: `dvc repro train_lstm`")


def test_a_model_without_fingerprint_is_checked_by_its_sizes(project: Path) -> None:
    facts = predict.read_model_facts(artifacts.model_path("lstm", 0), "lstm")
    unstamped = predict.ModelFacts(facts.num_words, facts.maxlen, facts.n_classes, vocabulary_sha256=None)
    vocabulary = Vocabulary(words=("other",), counts=(1,))
    predict.check_model(unstamped, Path("m.keras"), "lstm", vocabulary=vocabulary, num_words=NUM_WORDS,
                        maxlen=MAXLEN, n_groups=3)  # no fingerprint: the other vocabulary goes unnoticed
    with pytest.raises(UserError, match="it scores 3 groups but the padded data has 4"):
        predict.check_model(unstamped, Path("m.keras"), "lstm", vocabulary=vocabulary, num_words=NUM_WORDS,
                            maxlen=MAXLEN, n_groups=4)


def test_a_file_that_is_not_a_model(scratch: Path, capsys) -> None:
    artifacts.model_path("lstm", 0).write_text("not a zip")
    assert "models/lstm/seed0.keras: not a readable Keras model" in one_line_error(capsys, ["text"])


# --- the command as a process -------------------------------------------------------------

def run_module(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    code = ("import sys\nfrom lstm_vs_gru.cli import predict\n"
            "try:\n    predict.main(sys.argv[1:])\n"
            "finally:\n    print('tensorflow' in sys.modules, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True)


def test_errors_come_before_tensorflow(scratch: Path) -> None:
    write_params(scratch, tokenize={"num_words": NUM_WORDS + 1})
    result = run_module("text", cwd=scratch)
    assert result.returncode == 2
    error, imported = result.stderr.splitlines()
    assert error.startswith("error: models/lstm/seed0.keras: its embedding has") and imported == "False"


def test_module_entry_point_prints_json_lines(built: Path, predictor: predict.Predictor) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "lstm_vs_gru.cli.predict", "--json", "-k", "2"], cwd=built, env=env,
                            input="nasa moon orbit\ncar oil\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = records(result.stdout)
    expected = predict.classify(predictor, ["nasa moon orbit", "car oil"], top_k=2)
    assert [[t["group"] for t in r["top"]] for r in out] == [[g for g, _ in top] for top in expected]


def test_importing_the_module_does_not_import_tensorflow() -> None:
    code = "import sys, lstm_vs_gru.cli.predict; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_seed_option_picks_another_run(scratch: Path, capsys) -> None:
    write_params(scratch, train={"seeds": [0, 4]})
    assert one_line_error(capsys, ["--seed", "4", "text"]) == \
        "error: models/lstm/seed4.keras: not found: no trained model yet (run `dvc repro train_lstm`)\n"
    assert "--seed 5: not one of train.seeds [0, 4]" in one_line_error(capsys, ["--seed", "5", "text"])
