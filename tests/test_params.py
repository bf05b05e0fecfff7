"""params.yaml loading: the shipped file is valid, and each bad value fails in one line naming key, value, rule."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lstm_vs_gru import params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_the_lab_defaults():
    p = params.load(ROOT / "params.yaml")
    assert p.cell == "lstm"
    assert (p.data.source, p.data.kind, p.data.remove) == ("data/20news-bydate.tar.gz", "archive", ())
    assert p.tokenize.num_words == 20000 and p.tokenize.lower is True
    assert p.tokenize.filters == params.KERAS2_FILTERS
    assert (p.pad.maxlen, p.pad.padding, p.pad.truncating) == (100, "pre", "pre")
    assert (p.model.embedding_dim, p.model.units, p.model.dense_units, p.model.dropout) == (128, 50, 50, 0.5)
    assert (p.train.epochs, p.train.batch_size, p.train.validation_split, p.train.seed) == (2, 32, 0.1, 0)
    assert p.train.learning_rate == 0.001 and p.train.clipnorm is None and p.train.trainer == "fused"
    assert p.train.lazy_adam is False  # Keras' Adam over every embedding row, as the lab
    assert (p.model.bidirectional, p.model.layers, p.model.pooling) == (False, 1, "max")
    assert p.model.embedding_dropout == p.model.spatial_dropout == 0.0
    assert (p.train.lr_schedule, p.train.early_stopping) == ("constant", None)
    assert p.baseline == params.BaselineParams(model="linear_svc", sublinear_tf=True, max_df=0.5, stop_words="english",
                                               max_features=None, C=1.0, seed=0)


def _with(raw: dict, dotted: str, value) -> dict:
    changed = copy.deepcopy(raw)
    *parents, leaf = dotted.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[leaf] = value
    return changed


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("pad.maxlen", 0, "an integer >= 1"),
        ("pad.maxlen", 2.5, "an integer >= 1"),
        ("pad.padding", "middle", "one of pre, post"),
        ("pad.truncating", None, "one of pre, post"),
        ("data.remove", ["headers", "sigs"], "headers, footers, quotes"),
        ("data.remove", "headers", "a list of distinct items"),
        ("cell", "rnn", "one of lstm, gru"),
        ("model.dropout", -0.1, "a number in [0.0, 1.0)"),
        ("model.dropout", 1.0, "a number in [0.0, 1.0)"),
        ("train.validation_split", 1.5, "a number in [0.0, 1.0)"),
        ("train.epochs", 0, "an integer >= 1"),
        ("train.epochs", True, "an integer >= 1"),
        ("train.learning_rate", 0, "a number in (0.0, 10.0]"),
        ("train.clipnorm", -1, "null or a number in (0.0, inf)"),
        ("train.trainer", "jax", "one of fused, keras"),
        ("train.lazy_adam", "yes", "true or false"),
        ("model.gru_reset_after", "yes", "true or false"),
        ("model.bidirectional", 1, "true or false"),
        ("model.layers", 0, "an integer >= 1"),
        ("model.pooling", "sum", "one of max, mean, max_mean, attention"),
        ("model.spatial_dropout", 1.0, "a number in [0.0, 1.0)"),
        ("model.embedding_dropout", -0.1, "a number in [0.0, 1.0)"),
        ("model.embedding_init", "glove", "one of uniform, lsa"),
        ("data.source", "data/vectors.npz", "a path apart from the pipeline's output data/vectors.npz"),
        ("train.lr_schedule", "step", "one of constant, cosine"),
        ("train.early_stopping", 0, "null or an integer >= 1"),
        ("tokenize.num_words", 1, "an integer >= 2"),
        ("gradients.cells", ["lstm", "transformer"], "simple_rnn, lstm, gru"),
        ("gradients.seq_lengths", [], "a non-empty list of integers >= 2"),
        ("data.source", "", "a non-empty string"),
        ("data.test_size", 1.0, "a number in (0.0, 1.0)"),
        ("data.split_seed", -1, "an integer >= 0"),
        ("data.split_column", "", "null or a non-empty string"),
        ("data.label_column", "text", "a column other than data.text_column's"),
        ("data.source", "data", "a path apart from the pipeline's output data/corpus/"),
        ("data.source", "./metrics/old.csv", "a path apart from the pipeline's output metrics/"),
        ("baseline.model", "svm", "one of linear_svc, logistic_regression, complement_nb"),
        ("baseline.sublinear_tf", 1, "true or false"),
        ("baseline.max_df", 0, "a number in (0.0, 1.0]"),
        ("baseline.max_df", 2, "a number in (0.0, 1.0]"),
        ("baseline.stop_words", "french", "null or one of english"),
        ("baseline.max_features", 0, "null or an integer >= 1"),
        ("baseline.C", 0, "a number in (0.0, inf)"),
        ("baseline.C", ".5", "a number in (0.0, inf)"),
        ("baseline.seed", -1, "an integer >= 0"),
    ],
)
def test_bad_value_names_key_value_and_rule(raw, key, value, allowed):
    with pytest.raises(params.ParamError) as caught:
        params.parse(_with(raw, key, value))
    message = str(caught.value)
    assert "\n" not in message
    assert f"{key} = " in message
    assert allowed in message
    shown = message.split(f"{key} = ", 1)[1]
    assert shown.startswith(yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip())


def test_clipnorm_needs_the_keras_trainer(raw):
    clipped = _with(raw, "train.clipnorm", 1.0)
    with pytest.raises(params.ParamError) as caught:
        params.parse(clipped)
    assert str(caught.value).endswith("train.clipnorm = 1.0: must be null while train.trainer is fused "
                                      "(gradient clipping needs train.trainer: keras)")
    assert params.parse(_with(clipped, "train.trainer", "keras")).train.clipnorm == 1.0


def test_early_stopping_needs_a_validation_split(raw):
    stopping = _with(raw, "train.early_stopping", 3)
    assert params.parse(stopping).train.early_stopping == 3
    with pytest.raises(params.ParamError) as caught:
        params.parse(_with(stopping, "train.validation_split", 0.0))
    assert str(caught.value).endswith("train.early_stopping = 3: must be null while train.validation_split is 0 "
                                      "(early stopping watches val_accuracy)")


def test_lazy_adam_needs_the_fused_trainer(raw):
    lazy = _with(raw, "train.lazy_adam", True)
    assert params.parse(lazy).train.lazy_adam is True
    with pytest.raises(params.ParamError) as caught:
        params.parse(_with(lazy, "train.trainer", "keras"))
    assert str(caught.value).endswith("train.lazy_adam = true: must be false while train.trainer is keras "
                                      "(Keras has no lazy Adam; it needs train.trainer: fused)")


def test_baseline_takes_no_stop_words_and_every_term_too(raw):
    changed = _with(_with(_with(raw, "baseline.stop_words", None), "baseline.max_df", 1), "baseline.max_features", 500)
    parsed = params.parse(changed).baseline
    assert (parsed.stop_words, parsed.max_df, parsed.max_features) == (None, 1.0, 500)


def test_missing_key_is_named(raw):
    changed = copy.deepcopy(raw)
    del changed["pad"]["maxlen"]
    with pytest.raises(params.ParamError, match=r"pad\.maxlen = missing: must be an integer >= 1"):
        params.parse(changed)


def test_missing_section_is_named(raw):
    changed = copy.deepcopy(raw)
    del changed["train"]
    with pytest.raises(params.ParamError, match=r"train = missing: must be a mapping with keys epochs"):
        params.parse(changed)


def test_unknown_key_is_refused(raw):
    with pytest.raises(params.ParamError, match=r"pad\.maxln = 50: must be absent: unknown key"):
        params.parse(_with(raw, "pad.maxln", 50))


def test_unreadable_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("pad: [unclosed\n")
    with pytest.raises(params.ParamError, match="not valid YAML"):
        params.load(bad)
    with pytest.raises(params.ParamError, match="not found"):
        params.load(tmp_path / "absent.yaml")


@pytest.mark.parametrize("source, kind", [
    ("data/20news-bydate.tar.gz", "archive"), ("copy.TGZ", "archive"), ("tickets.csv", "table"),
    ("a/b.tsv", "table"), ("r.jsonl", "table"), ("r.ndjson", "table"), ("r.parquet", "table"),
    ("tickets", "folder"), ("tickets/", "folder"), ("reviews.v2", "folder"),
])
def test_the_source_kind_follows_the_name(source, kind):
    assert params.source_kind(source) == kind


@pytest.mark.parametrize("source, kind", [("tickets.csv", "table"), ("tickets", "folder")])
def test_remove_is_refused_on_sources_without_newsgroup_headers(raw, source, kind):
    changed = _with(_with(raw, "data.source", source), "data.remove", ["headers"])
    with pytest.raises(params.ParamError) as caught:
        params.parse(changed)
    assert str(caught.value).endswith(f"data.remove = [headers]: must be [] while data.source is a {kind} (only a "
                                      "20news-bydate archive has newsgroup headers, footers and quotes to remove)")
    assert params.parse(_with(changed, "data.remove", [])).data.kind == kind
