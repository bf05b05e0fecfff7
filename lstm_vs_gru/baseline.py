"""The classical baseline: TF-IDF features and a linear model (scikit-learn), fitted on the train split of the
corpus tables and scored on the test split, the same posts and cleaning the recurrent models see. No
TensorFlow here: the stage runs in seconds and says where the recurrent models stand against it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.naive_bayes import ComplementNB
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import BaselineParams

DIGITS = 6  # as the train stages' metrics
SECONDS_DIGITS = 3
# params.BASELINE_MODEL_CHOICES -> the classifier and the name the report shows
CLASSIFIERS: dict[str, tuple[str, Callable[[BaselineParams], ClassifierMixin]]] = {
    "linear_svc": ("LinearSVC", lambda p: LinearSVC(C=p.C, random_state=p.seed)),
    # lbfgs stops at 100 iterations by default, short of convergence on 20 newsgroups
    "logistic_regression": ("logistic regression",
                            lambda p: LogisticRegression(C=p.C, max_iter=1000, random_state=p.seed)),
    "complement_nb": ("complement naive Bayes", lambda p: ComplementNB()),
}


@dataclass(frozen=True)
class BaselineResult:
    """The metrics/baseline.json record and the test predictions (actual, predicted group names)."""
    metrics: dict[str, Any]
    predictions: pd.DataFrame


def display_name(model: str) -> str:
    """How the report names a baseline model, e.g. "TF-IDF + LinearSVC"."""
    return f"TF-IDF + {CLASSIFIERS[model][0]}"


def build_pipeline(p: BaselineParams) -> Pipeline:
    """TF-IDF (fitted on the posts given to fit) followed by the classifier `p.model` names."""
    vectorizer = TfidfVectorizer(sublinear_tf=p.sublinear_tf, max_df=p.max_df, stop_words=p.stop_words,
                                 max_features=p.max_features)
    return Pipeline([("tfidf", vectorizer), ("classifier", CLASSIFIERS[p.model][1](p))])


def fit_and_score(p: BaselineParams, train: pd.DataFrame, test: pd.DataFrame) -> BaselineResult:
    """Fit on train's text and group, score on test's: accuracy, macro-F1 (as the train stages compute it), the
    seconds the fit took and the size of the TF-IDF vocabulary."""
    pipeline = build_pipeline(p)
    start = time.perf_counter()
    try:
        pipeline.fit(train["text"].tolist(), train["group"].to_numpy())
    except ValueError as error:
        # e.g. no term left once stop words and max_df have pruned the vocabulary of a small corpus
        raise UserError(f"baseline: {' '.join(str(error).split())} (params.yaml baseline.*)") from None
    seconds = time.perf_counter() - start
    actual = test["group"].to_numpy()
    predicted = pipeline.predict(test["text"].tolist())
    metrics = {
        "model": p.model,
        "name": display_name(p.model),
        "test_accuracy": round(float(accuracy_score(actual, predicted)), DIGITS),
        "test_macro_f1": round(float(f1_score(actual, predicted, average="macro", zero_division=0)), DIGITS),
        "fit_seconds": round(seconds, SECONDS_DIGITS),
        "vocabulary_size": len(pipeline.named_steps["tfidf"].vocabulary_),
        "train_documents": len(train),
        "test_documents": len(test),
    }
    return BaselineResult(metrics, pd.DataFrame({"actual": actual, "predicted": np.asarray(predicted)}))
