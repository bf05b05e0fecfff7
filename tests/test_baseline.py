"""The TF-IDF baseline: the library on a tiny corpus (deterministic, scores in range, every model), and the stage
as DVC runs it, in a subprocess that must not import TensorFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lstm_vs_gru import artifacts, baseline, params
from lstm_vs_gru.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# Each group's posts draw most words from its own list, the rest from a list all groups share (with two English
# stop words).
GROUP_WORDS = {
    "rec.autos": "engine car brakes dealer tires clutch sedan mileage",
    "sci.space": "orbit launch shuttle nasa rocket lunar satellite payload",
    "talk.politics.guns": "rifle firearms ammunition handgun permit militia holster caliber",
}
SHARED_WORDS = "the and question answer people think really good know time".split()


def tiny_corpus(posts_per_group: int, seed: int) -> pd.DataFrame:
    """A corpus table (id, group, label, text) of short posts, shuffled as fetch shuffles them."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, (group, words) in enumerate(GROUP_WORDS.items()):
        for number in range(posts_per_group):
            # "subject" is in every post: max_df drops it
            text = ["subject", *rng.choice(words.split(), 5), *rng.choice(SHARED_WORDS, 4)]
            rows.append((f"{group}/{seed}{number}", group, label, " ".join(rng.permutation(text))))
    frame = pd.DataFrame(rows, columns=list(artifacts.CORPUS_COLUMNS)).astype({"label": np.int32})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


TRAIN, TEST = tiny_corpus(12, seed=1), tiny_corpus(4, seed=2)


def kept_terms(frame: pd.DataFrame, max_df: float) -> set[str]:
    """The words of the posts that are no English stop words and are in at most max_df of the posts."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    posts = [set(text.split()) for text in frame["text"]]
    words = set().union(*posts) - ENGLISH_STOP_WORDS
    return {word for word in words if sum(word in post for post in posts) <= max_df * len(posts)}
SHIPPED = params.load(ROOT / "params.yaml").baseline


@pytest.mark.parametrize("model", params.BASELINE_MODEL_CHOICES)
def test_every_model_learns_the_tiny_corpus(model):
    result = baseline.fit_and_score(replace(SHIPPED, model=model), TRAIN, TEST)
    metrics = result.metrics
    assert list(metrics) == ["model", "name", "test_accuracy", "test_macro_f1", "fit_seconds", "vocabulary_size",
                             "train_documents", "test_documents"]
    assert metrics["model"] == model and metrics["name"] == baseline.display_name(model)
    assert 0.9 <= metrics["test_accuracy"] <= 1.0 and 0.9 <= metrics["test_macro_f1"] <= 1.0
    assert metrics["fit_seconds"] >= 0
    assert metrics["vocabulary_size"] == len(kept_terms(TRAIN, SHIPPED.max_df))
    assert (metrics["train_documents"], metrics["test_documents"]) == (36, 12)
    predictions = result.predictions
    assert list(predictions) == ["actual", "predicted"] and predictions["actual"].tolist() == TEST["group"].tolist()
    assert set(predictions["predicted"]) <= set(GROUP_WORDS)
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["test_accuracy"])


@pytest.mark.parametrize("model", params.BASELINE_MODEL_CHOICES)
def test_the_same_params_give_the_same_scores(model):
    first, second = (baseline.fit_and_score(replace(SHIPPED, model=model), TRAIN, TEST) for _ in range(2))
    first.metrics.pop("fit_seconds"), second.metrics.pop("fit_seconds")
    assert first.metrics == second.metrics
    pd.testing.assert_frame_equal(first.predictions, second.predictions)


def test_the_pipeline_follows_the_params():
    settings = replace(SHIPPED, sublinear_tf=False, max_df=0.9, stop_words=None, max_features=7, C=0.25, seed=3)
    pipeline = baseline.build_pipeline(settings)
    tfidf, classifier = pipeline.named_steps["tfidf"], pipeline.named_steps["classifier"]
    assert (tfidf.sublinear_tf, tfidf.max_df, tfidf.stop_words, tfidf.max_features) == (False, 0.9, None, 7)
    assert (type(classifier).__name__, classifier.C, classifier.random_state) == ("LinearSVC", 0.25, 3)
    assert baseline.fit_and_score(settings, TRAIN, TEST).metrics["vocabulary_size"] == 7
    regression = baseline.build_pipeline(replace(settings, model="logistic_regression")).named_steps["classifier"]
    assert (type(regression).__name__, regression.C, regression.random_state) == ("LogisticRegression", 0.25, 3)


def test_a_corpus_of_stop_words_is_a_one_line_user_error():
    empty = TRAIN.assign(text="the and of it is")
    with pytest.raises(UserError) as caught:
        baseline.fit_and_score(SHIPPED, empty, TEST)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("baseline: ") and "baseline.*" in message


# --- the stage, in a subprocess as DVC runs it ---

def stage_project(path: Path, **changed: object) -> Path:
    """params.yaml (the shipped one, with `changed` baseline keys) and the tiny corpus tables under `path`."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["baseline"].update(changed)
    (path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    for split, frame in (("train", TRAIN), ("test", TEST)):
        artifacts.write_table(path / artifacts.corpus_path(split), frame)
    return path


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    """`python -m stages.baseline`, then a check that TensorFlow and Keras were never imported."""
    code = ("import runpy, sys\n"
            "runpy.run_module('stages.baseline', run_name='__main__')\n"
            "imported = sorted({'tensorflow', 'keras'} & set(sys.modules))\n"
            "assert not imported, imported\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_stage_writes_metrics_and_predictions_without_tensorflow(tmp_path):
    done = run_stage(stage_project(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("baseline: TF-IDF + LinearSVC: test_accuracy ")
    metrics = json.loads((tmp_path / artifacts.BASELINE_METRICS).read_text(encoding="utf-8"))
    assert metrics["model"] == "linear_svc" and metrics["test_documents"] == len(TEST)
    predictions = pd.read_csv(tmp_path / artifacts.BASELINE_PREDICTIONS)
    assert predictions["actual"].tolist() == TEST["group"].tolist()
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["test_accuracy"])


@pytest.mark.parametrize("changed, expected", [
    ({"model": "random_forest"},
     "params.yaml: baseline.model = random_forest: must be one of linear_svc, logistic_regression, complement_nb"),
    ({"stop_words": "french"}, "params.yaml: baseline.stop_words = french: must be null or one of english"),
])
def test_the_stage_refuses_bad_params_in_one_line(tmp_path, changed, expected):
    done = run_stage(stage_project(tmp_path, **changed))
    assert done.returncode == 2 and done.stderr == f"error: {expected}\n"
    assert not (tmp_path / artifacts.BASELINE_METRICS).exists()


def test_the_stage_without_a_corpus_fails_in_one_line(tmp_path):
    stage_project(tmp_path)
    (tmp_path / artifacts.corpus_path("test")).unlink()
    done = run_stage(tmp_path)
    assert done.returncode == 2
    assert done.stderr == "error: data/corpus/test.parquet: not found (run the fetch stage first)\n"
