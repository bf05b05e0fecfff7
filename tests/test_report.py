"""The report stage on fake-but-plausible train outputs: headline metrics, markdown, PNGs, errors."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import jinja2.meta
import matplotlib.image
from matplotlib.figure import Figure
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats
from sklearn.metrics import confusion_matrix, f1_score

from lstm_vs_gru import artifacts
from lstm_vs_gru import report
from stages import report as report_stage
from lstm_vs_gru.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUPS = sorted([
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware",
    "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey",
    "sci.crypt", "sci.electronics", "sci.med", "sci.space", "soc.religion.christian", "talk.politics.guns",
    "talk.politics.mideast", "talk.politics.misc", "talk.religion.misc",
])
SEEDS = (0, 1, 2)
# Each seed's accuracy scores move by these (their mean is 0, so the means are FAKE_METRICS' figures).
SEED_SHIFTS = {0: 0.0, 1: -0.01, 2: 0.01}
FAKE_METRICS = {
    "lstm": {"cell": "lstm", "params": 2_599_370, "epochs": 2, "seconds_per_epoch": 41.25,
             "train_loss": 1.8123, "train_accuracy": 0.4231, "val_loss": 1.5012, "val_accuracy": 0.5187,
             "test_loss": 1.6234, "test_accuracy": 0.4871, "test_macro_f1": 0.4712},
    "gru": {"cell": "gru", "params": 2_590_570, "epochs": 2, "seconds_per_epoch": 37.75,
            "train_loss": 1.7011, "train_accuracy": 0.4519, "val_loss": 1.4377, "val_accuracy": 0.5391,
            "test_loss": 1.5566, "test_accuracy": 0.5123, "test_macro_f1": 0.4988},
}

FAKE_FETCH = {"source": "data/20news-bydate.tar.gz", "kind": "archive", "classes": 20,
              "train": {"documents": 11314}, "test": {"documents": 7532}}
FAKE_BASELINE = {"model": "linear_svc", "name": "TF-IDF + LinearSVC", "test_accuracy": 0.861259,
                 "test_macro_f1": 0.854397, "fit_seconds": 6.31, "vocabulary_size": 129791, "train_documents": 11314,
                 "test_documents": 7532}


def fake_history(metrics: dict) -> pd.DataFrame:
    """Two epochs that end at the metrics' train/val figures; the first epoch is slower (graph building)."""
    return pd.DataFrame({
        "epoch": [1, 2],
        "loss": [metrics["train_loss"] + 0.9, metrics["train_loss"]],
        "accuracy": [metrics["train_accuracy"] - 0.25, metrics["train_accuracy"]],
        "val_loss": [metrics["val_loss"] + 0.6, metrics["val_loss"]],
        "val_accuracy": [metrics["val_accuracy"] - 0.2, metrics["val_accuracy"]],
        "seconds": [metrics["seconds_per_epoch"] + 3.0, metrics["seconds_per_epoch"] - 3.0],
    })


def seed_metrics(cell: str, seed: int, shift: float | None = None) -> dict:
    """FAKE_METRICS of a cell as one seed's run: accuracy scores moved by SEED_SHIFTS[seed] (or `shift`)."""
    moved = SEED_SHIFTS[seed] if shift is None else shift
    return {**FAKE_METRICS[cell], "seed": seed, "trained_with": "native",
            **{key: round(FAKE_METRICS[cell][key] + moved, 6) for key in report.SEED_METRICS}}


def write_dvclive_history(root: Path, cell: str, seed: int, history: pd.DataFrame) -> None:
    """`history` as DVCLive's Keras callback logs it: one TSV per series, a row per epoch from step 0."""
    for key in report.HISTORY_SERIES:
        if key in history:
            path = root / report.history_path(cell, seed, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": history["epoch"] - 1, path.stem: history[key]}).to_csv(path, sep="\t", index=False)


def fake_predictions(seed: int, posts: int = 600, hit_rate: float = 0.55) -> pd.DataFrame:
    """Test-split predictions: right with probability `hit_rate`, else a random (often neighbouring) group."""
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, len(GROUPS), posts)
    neighbour = np.clip(actual + rng.integers(-2, 3, posts), 0, len(GROUPS) - 1)
    predicted = np.where(rng.random(posts) < hit_rate, actual, neighbour)
    return pd.DataFrame({"actual": [GROUPS[i] for i in actual], "predicted": [GROUPS[i] for i in predicted]})


TEST_LABELS = np.random.default_rng(99).integers(0, len(GROUPS), 600)


def fake_probabilities(seed: int, hit_rate: float = 0.55) -> np.ndarray:
    """A run's test probabilities over TEST_LABELS: noise plus a bump on the true group for `hit_rate` of posts."""
    rng = np.random.default_rng(seed)
    scores = rng.random((len(TEST_LABELS), len(GROUPS)))
    hits = rng.random(len(TEST_LABELS)) < hit_rate
    scores[hits, TEST_LABELS[hits]] += 1.0
    return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


def write_fake_probabilities(root: Path, cell: str, seed: int, probabilities: np.ndarray) -> None:
    artifacts.write_npz(root / artifacts.probabilities_path(cell, seed), probabilities=probabilities,
                        labels=TEST_LABELS, groups=np.array(GROUPS))


# log10(first/last) through the last state at L = 400, shaped like a real run: the trained plain RNN
# forgets fastest, the trained LSTM least; untrained, the gated cells forget faster than the plain RNN.
FAKE_LAST_STATE_LOG10 = {("simple_rnn", "init"): -3.93, ("simple_rnn", "trained"): -20.64,
                         ("lstm", "init"): -29.56, ("lstm", "trained"): -4.81,
                         ("gru", "init"): -35.5, ("gru", "trained"): -16.82}


def fake_curve(log10_ratio: float | None, length: int, last: float = 0.5, nonfinite: int = 0) -> dict:
    """A curve summary as the gradients stage writes it, for a geometric decay of `log10_ratio` over `length`."""
    vanish = None
    if log10_ratio is not None and log10_ratio < -3:
        vanish = length - int(3 * (length - 1) / -log10_ratio)
    return {"first_norm": None if log10_ratio is None else last * 10 ** log10_ratio, "last_norm": last,
            "max_norm": last, "log10_first_to_last": log10_ratio, "vanish_step": vanish,
            "nonfinite_steps": nonfinite, "zero_steps": 0}


def fake_gradients() -> dict:
    """metrics/gradients.json as the gradients stage writes it for the lab's sizes."""
    curves: dict = {}
    for (cell, setting), log10_400 in FAKE_LAST_STATE_LOG10.items():
        for length in (100, 400):
            log10 = log10_400 * (length - 1) / 399
            curves.setdefault(cell, {}).setdefault(setting, {})[f"L{length}"] = {
                "max_pool": fake_curve(0.4 if setting == "trained" else 0.05, length),
                "last_state": fake_curve(round(log10, 4), length)}
    curves["simple_rnn_scaled"] = {"init": {
        "L100": {"max_pool": fake_curve(14.53, 100), "last_state": fake_curve(13.99, 100)},
        "L400": {"max_pool": fake_curve(None, 400, nonfinite=56), "last_state": fake_curve(None, 400, nonfinite=97)}}}
    run = {"median_grad_norm": 4.83e8, "max_grad_norm": 1.78e10, "median_clipped_grad_norm": 4.83e8,
           "median_update_norm": 0.272, "max_update_norm": 0.364, "first_loss": 4.29, "last_loss": 3.136,
           "clipped_steps": 0}
    return {
        "sizes": {"num_words": 20000, "embedding_dim": 128, "units": 50, "dense_units": 50, "n_classes": 20,
                  "gru_reset_after": True},
        "params": {"simple_rnn": {"model": 2_572_520, "recurrent": 8_950},
                   "lstm": {"model": 2_599_370, "recurrent": 35_800}, "gru": {"model": 2_590_570, "recurrent": 27_000}},
        "sample": {"documents": 64, "min_tokens": 400, "full_L100": 64, "full_L400": 64},
        "vanish_fraction": 0.001, "recurrent_scale": 3.0, "curves": curves,
        "simple_rnn_training": {"epoch": 2, "accuracy": 0.1088, "val_accuracy": 0.2200},
        "clipping": {"steps": 100, "clipnorm": 1.0, "unclipped": run,
                     "clipnorm_run": {**run, "median_clipped_grad_norm": 2.4, "median_update_norm": 0.138,
                                      "last_loss": 3.1, "clipped_steps": 100}},
    }


def write_fake_png(path: Path) -> None:
    figure = Figure(figsize=(8, 5))
    figure.subplots().semilogy([1, 2, 3], [1e-3, 1e-2, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})


def write_fake_run(root: Path, cell_in_params: str = "lstm", shifts: dict | None = None) -> None:
    """The train stages' outputs for every seed of SEEDS (`shifts`: {cell: {seed: shift}} instead of
    SEED_SHIFTS), the baseline's and the gradients stage's, plus params.yaml, under `root`."""
    for number, cell in enumerate(artifacts.CELLS):
        for seed in SEEDS:
            metrics = seed_metrics(cell, seed, None if shifts is None else shifts[cell][seed])
            artifacts.write_json(root / artifacts.run_metrics_path(cell, seed), metrics)
            write_dvclive_history(root, cell, seed, fake_history(metrics))
            artifacts.write_table(root / artifacts.predictions_path(cell, seed), fake_predictions(10 * seed + number))
            write_fake_probabilities(root, cell, seed, fake_probabilities(10 * seed + number))
    artifacts.write_json(root / artifacts.metrics_path("gradients"), fake_gradients())
    artifacts.write_json(root / artifacts.metrics_path("fetch"), FAKE_FETCH)
    artifacts.write_json(root / artifacts.BASELINE_METRICS, FAKE_BASELINE)
    for name in ("gradient_flow", "exploding"):
        write_fake_png(root / artifacts.gradient_figure_path(name))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["train"]["seeds"] = list(SEEDS)
    (root / "params.yaml").write_text(yaml.safe_dump({**raw, "cell": cell_in_params}), encoding="utf-8")


@pytest.fixture(scope="module", params=artifacts.CELLS)
def built(request, tmp_path_factory) -> tuple[str, Path]:
    """A report written once per selected cell, shared by the read-only checks below."""
    cell = request.param
    root = tmp_path_factory.mktemp(f"report_{cell}")
    write_fake_run(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        report_stage.write_report(cell, SEEDS)
    return cell, root


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    write_fake_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def comparison_row(markdown: str, label: str) -> str:
    """A row of the side-by-side table (the selection table above it has rows of the same names)."""
    section = markdown.split("## LSTM and GRU side by side", 1)[1].split("\n## ", 1)[0]
    return next(line for line in section.splitlines() if line.startswith(f"| {label} |"))


def image_links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_json_holds_the_selected_cells_means_then_the_aggregates(built):
    cell, root = built
    written = json.loads((root / artifacts.REPORT_METRICS).read_text(encoding="utf-8"))
    assert list(written)[:7] == ["cell", "seeds", "test_accuracy", "test_macro_f1", "val_accuracy",
                                 "seconds_per_epoch", "params"]
    assert written["seeds"] == len(SEEDS)
    assert {key: written[key] for key in list(written)[2:7]} == pytest.approx(
        {key: FAKE_METRICS[cell][key] for key in list(written)[2:7]}, abs=1e-6)
    assert list(written)[7:] == ["cells", "gru_minus_lstm", "verdict", "trained_with", "per_seed", "ensemble",
                                 "baseline"]
    assert written["trained_with"] == {"lstm": "native", "gru": "native"}


def test_the_aggregates_equal_a_direct_computation_from_the_per_seed_metrics(built):
    _, root = built
    written = json.loads((root / artifacts.REPORT_METRICS).read_text(encoding="utf-8"))
    per_seed = {cell: {key: [artifacts.read_json(root / artifacts.run_metrics_path(cell, seed))[key] for seed in SEEDS]
                       for key in report.SEED_METRICS} for cell in artifacts.CELLS}
    for key in report.SEED_METRICS:
        for cell in artifacts.CELLS:
            values = per_seed[cell][key]
            low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
            assert written["cells"][cell][key] == pytest.approx(
                {"n": 3, "mean": np.mean(values), "std": np.std(values, ddof=1), "ci_low": low, "ci_high": high},
                abs=1e-6)
            assert written["per_seed"][cell][key] == {str(seed): value for seed, value in zip(SEEDS, values)}
        difference = np.subtract(per_seed["gru"][key], per_seed["lstm"][key])
        assert written["gru_minus_lstm"][key]["mean"] == pytest.approx(difference.mean(), abs=1e-6)


def test_the_ensembles_average_the_runs_probabilities(built):
    _, root = built
    written = json.loads((root / artifacts.REPORT_METRICS).read_text(encoding="utf-8"))["ensemble"]
    runs = {cell: [fake_probabilities(10 * seed + number) for seed in SEEDS]
            for number, cell in enumerate(artifacts.CELLS)}

    def scores(members):
        predicted = np.mean(members, axis=0).argmax(axis=1)
        return {"runs": len(members), "test_accuracy": pytest.approx(np.mean(predicted == TEST_LABELS), abs=1e-6),
                "test_macro_f1": pytest.approx(f1_score(TEST_LABELS, predicted, average="macro"), abs=1e-6)}

    assert written == {"lstm": scores(runs["lstm"]), "gru": scores(runs["gru"]),
                       "lstm_and_gru": scores(runs["lstm"] + runs["gru"])}
    # independent noise averages out: six runs beat one by far
    single = np.mean(fake_probabilities(0).argmax(axis=1) == TEST_LABELS)
    assert written["lstm_and_gru"]["test_accuracy"] > single + 0.1
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    section = markdown.split("## Ensembles", 1)[1].split("\n## ", 1)[0]
    both = written["lstm_and_gru"]["test_accuracy"]
    assert (f"**Every run of both cells together: test accuracy {both:.4f}; TF-IDF + LinearSVC: 0.8613 "
            f"({both - 0.861259:.4f} higher).**") in section
    assert f"| LSTM and GRU, 6 runs averaged | {both:.4f} |" in section
    assert f"| GRU, 3 seeds averaged | {written['gru']['test_accuracy']:.4f} |" in section


def test_runs_scoring_other_test_posts_are_refused_in_one_line(run_dir):
    shuffled = np.random.default_rng(0).permutation(TEST_LABELS)
    artifacts.write_npz(artifacts.probabilities_path("gru", 1), probabilities=fake_probabilities(11),
                        labels=shuffled, groups=np.array(GROUPS))
    with pytest.raises(UserError, match=r"predictions/gru/seed1.npz: scores other test posts or groups than "
                                        r"predictions/lstm/seed0.npz: re-run `dvc repro`$"):
        report_stage.write_report("lstm", SEEDS)
    write_fake_probabilities(run_dir, "gru", 1, fake_probabilities(11)[:, :5])
    with pytest.raises(UserError, match=r"probabilities of shape \(600, 5\), expected finite values for \(600 test "
                                        r"posts, 20 groups\): re-run `dvc repro train_gru@1`"):
        report_stage.write_report("lstm", SEEDS)
    artifacts.probabilities_path("gru", 1).unlink()
    with pytest.raises(UserError, match=r"predictions/gru/seed1.npz"):
        report_stage.write_report("lstm", SEEDS)


@pytest.mark.parametrize("shifts, verdict", [
    # GRU ahead by 0.025 on every seed: the paired test finds it
    ({"lstm": SEED_SHIFTS, "gru": SEED_SHIFTS}, "GRU better than LSTM in test accuracy by 0.025 ± 0.000"),
    # the seeds disagree about which cell is ahead
    ({"lstm": {0: 0.0, 1: 0.03, 2: -0.03}, "gru": {0: -0.05, 1: -0.02, 2: 0.0}},
     "No difference in test accuracy detectable at this budget: GRU − LSTM = +0.002 ± "),
])
def test_the_verdict_follows_the_numbers(tmp_path, monkeypatch, shifts, verdict):
    write_fake_run(tmp_path, shifts=shifts)
    monkeypatch.chdir(tmp_path)
    report_stage.write_report("lstm", SEEDS)
    assert artifacts.read_json(artifacts.REPORT_METRICS)["verdict"].startswith(verdict)
    assert f"**{verdict}" in artifacts.REPORT_MD.read_text(encoding="utf-8")


def test_markdown_shows_both_cells_and_the_lab_reference(built):
    cell, root = built
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    for metrics in FAKE_METRICS.values():
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                    "test_macro_f1"):
            assert f"{metrics[key]:.4f}" in markdown, key
        assert f"{metrics['params']:,}" in markdown
        assert f"{metrics['seconds_per_epoch']:.1f}" in markdown
    comparison = next(line for line in markdown.splitlines() if line.startswith("| ") and "Lab LSTM" in line)
    assert comparison == f"|  | {'LSTM (selected)' if cell == 'lstm' else 'LSTM'} | " \
                         f"{'GRU (selected)' if cell == 'gru' else 'GRU'} | Lab LSTM | Lab GRU |"
    lstm, gru = FAKE_METRICS["lstm"], FAKE_METRICS["gru"]
    assert comparison_row(markdown, "Validation accuracy") == \
        f"| Validation accuracy | {lstm['val_accuracy']:.4f} | {gru['val_accuracy']:.4f} | 0.51 | 0.53 |"
    assert comparison_row(markdown, "Parameters") == "| Parameters | 2,599,370 | 2,590,570 | 2,599,370 | 2,590,420 |"
    assert comparison_row(markdown, "Seconds per epoch") == "| Seconds per epoch | 41.2 | 37.8 | ≈ 50 | ≈ 50 |"
    assert comparison_row(markdown, "Test loss") == \
        f"| Test loss | {lstm['test_loss']:.4f} | {gru['test_loss']:.4f} | — | — |"
    assert f"## Selected cell: {cell.upper()}" in markdown
    assert "≈ 50" in markdown


def test_the_baseline_stands_beside_the_cells(built):
    cell, root = built
    written = json.loads((root / artifacts.REPORT_METRICS).read_text(encoding="utf-8"))["baseline"]
    gap = {key: FAKE_METRICS[cell][key] - FAKE_BASELINE[key] for key in ("test_accuracy", "test_macro_f1")}
    assert written == {"model": "linear_svc", "name": "TF-IDF + LinearSVC", "test_accuracy": 0.861259,
                       "test_macro_f1": 0.854397, "selected_minus_baseline": pytest.approx(gap, abs=1e-6)}
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    section = markdown.split("## Against the classical baseline\n\n", 1)[1].split("\n## ", 1)[0].rstrip()
    assert section.startswith(f"**TF-IDF + LinearSVC: test accuracy 0.8613, macro-F1 0.8544; the selected "
                              f"{cell.upper()}'s mean over 3 seeds is {-gap['test_accuracy']:.4f} lower in test "
                              f"accuracy and {-gap['test_macro_f1']:.4f} lower in macro-F1.**\n\n")
    assert "TF-IDF of 129,791 terms from the 11,314 training documents), fitted in 6.3 s" in section
    lstm, gru = FAKE_METRICS["lstm"], FAKE_METRICS["gru"]
    assert section.endswith(
        "|  | Test accuracy | Test macro-F1 |\n| --- | ---: | ---: |\n"
        "| TF-IDF + LinearSVC | 0.8613 | 0.8544 |\n"
        f"| LSTM{' (selected)' if cell == 'lstm' else ''}, mean over 3 seeds | {lstm['test_accuracy']:.4f} | "
        f"{lstm['test_macro_f1']:.4f} |\n"
        f"| GRU{' (selected)' if cell == 'gru' else ''}, mean over 3 seeds | {gru['test_accuracy']:.4f} | "
        f"{gru['test_macro_f1']:.4f} |")
    # the section sits after the side-by-side table, before the training curves
    assert markdown.index("## LSTM and GRU side by side") < markdown.index("## Against the classical baseline") \
        < markdown.index("## Training")


def test_a_baseline_ahead_or_level_is_said_so(run_dir):
    artifacts.write_json(artifacts.BASELINE_METRICS, {**FAKE_BASELINE, "name": "TF-IDF + complement naive Bayes",
                                                      "model": "complement_nb", "test_accuracy": 0.4771,
                                                      "test_macro_f1": FAKE_METRICS["lstm"]["test_macro_f1"]})
    report_stage.write_report("lstm", SEEDS)
    markdown = artifacts.REPORT_MD.read_text(encoding="utf-8")
    assert ("**TF-IDF + complement naive Bayes: test accuracy 0.4771, macro-F1 0.4712; the selected LSTM's mean "
            "over 3 seeds is 0.0100 higher in test accuracy and level in macro-F1.**") in markdown


@pytest.mark.parametrize("changed, expected", [
    ({"test_accuracy": 1.5}, "test_accuracy = 1.5 is not a number in [0, 1]"),
    ({"test_macro_f1": None}, "test_macro_f1 = None is not a number in [0, 1]"),
    ({"fit_seconds": "fast"}, "fit_seconds = 'fast' is not a number of seconds"),
    ({"vocabulary_size": 12.5}, "vocabulary_size = 12.5 is not a whole number"),
    ({"name": None, "model": None, "test_accuracy": None, "test_macro_f1": None, "fit_seconds": None,
      "vocabulary_size": None, "train_documents": None}, "is not a number in [0, 1]"),
])
def test_corrupt_baseline_metrics_is_a_one_line_user_error(run_dir, changed, expected):
    artifacts.write_json(artifacts.BASELINE_METRICS, {**FAKE_BASELINE, **changed})
    with pytest.raises(UserError, match=re.escape(expected)) as error:
        report_stage.write_report("lstm", SEEDS)
    assert "\n" not in str(error.value) and "dvc repro baseline" in str(error.value)
    artifacts.write_json(artifacts.BASELINE_METRICS, {key: FAKE_BASELINE[key] for key in ("name", "test_accuracy")})
    with pytest.raises(UserError, match="missing keys model, test_macro_f1, fit_seconds"):
        report_stage.write_report("lstm", SEEDS)


def test_another_corpus_is_named_and_left_without_the_labs_figures(run_dir):
    artifacts.write_json(artifacts.metrics_path("fetch"), {**FAKE_FETCH, "source": "data/tickets.csv", "kind": "table"})
    report_stage.write_report("lstm", SEEDS)
    markdown = (run_dir / artifacts.REPORT_MD).read_text(encoding="utf-8")
    assert markdown.startswith("# LSTM vs GRU on tickets.csv\n\n") and "20-way softmax, trained on the train split " \
        "of `data/tickets.csv` (11,314 documents) and scored on its test split (7,532 documents)" in markdown
    assert "Lab LSTM" not in markdown and "≈ 50" not in markdown and "stars:" not in markdown
    assert comparison_row(markdown, "Parameters") == "| Parameters | 2,599,370 | 2,590,570 |"
    assert all(f"| {group} |" in markdown for group in GROUPS)


def test_markdown_links_to_valid_pngs(built):
    _, root = built
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    links = image_links(markdown)
    assert sorted(links) == sorted(p.name for p in (report.SEEDS_FIGURE, report.LEARNING_CURVES, report.SECONDS_PER_EPOCH,
                                                     report.CONFUSION_MATRIX, report.PER_GROUP_F1,
                                                     report.GRADIENT_FLOW, report.EXPLODING_GRADIENTS))
    for link in links:
        assert not Path(link).is_absolute()
        png = root / artifacts.REPORT_MD.parent / link
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, link
        height, width = matplotlib.image.imread(png).shape[:2]
        assert height >= 400 and width >= 500, (link, height, width)
    height, width = matplotlib.image.imread(root / report.CONFUSION_MATRIX).shape[:2]
    assert height >= 1000 and width >= 1000  # 20 x 20 with readable names and counts
    assert not list((root / artifacts.REPORT_DIR).glob(".*tmp*")), "temp files left behind"


def test_markdown_lists_per_group_scores_of_the_selected_cell(built):
    cell, root = built
    predictions = pd.read_csv(root / artifacts.predictions_path(cell, SEEDS[0]))
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    f1 = f1_score(predictions.actual, predictions.predicted, labels=GROUPS, average=None)
    for group, score in zip(GROUPS, f1):
        assert re.search(rf"^\| {re.escape(group)} \| [0-9.]+ \| [0-9.]+ \| {score:.4f} \| ", markdown, re.M), group


def test_confusion_and_scores_equal_sklearn():
    predictions = fake_predictions(seed=7)
    actual, predicted = predictions.actual.tolist(), predictions.predicted.tolist()
    labels = report.group_labels(actual, predicted)
    assert labels == GROUPS
    matrix = report.confusion(actual, predicted, labels)
    assert matrix.shape == (20, 20)
    np.testing.assert_array_equal(matrix, confusion_matrix(actual, predicted, labels=GROUPS))
    counted = pd.crosstab(predictions.actual, predictions.predicted).reindex(index=GROUPS, columns=GROUPS, fill_value=0)
    np.testing.assert_array_equal(matrix, counted.to_numpy())
    scores = report.per_group_scores(actual, predicted, labels)
    np.testing.assert_allclose(scores.f1, f1_score(actual, predicted, labels=GROUPS, average=None))
    assert scores.f1.mean() == pytest.approx(f1_score(actual, predicted, average="macro"))
    assert scores.support.tolist() == matrix.sum(axis=1).tolist()


def test_top_confusions_are_the_largest_off_diagonal_counts():
    matrix = np.array([[5, 3, 0], [1, 9, 3], [0, 4, 2]])
    assert report.top_confusions(matrix, ["a", "b", "c"], count=3) == [("c", "b", 4), ("a", "b", 3), ("b", "c", 3)]


def test_report_is_byte_for_byte_reproducible(run_dir):
    report_stage.write_report("gru", SEEDS)
    first = {p: p.read_bytes() for p in [artifacts.REPORT_METRICS, *artifacts.REPORT_DIR.iterdir()]}
    report_stage.write_report("gru", SEEDS)
    assert {p: p.read_bytes() for p in [artifacts.REPORT_METRICS, *artifacts.REPORT_DIR.iterdir()]} == first


def test_run_without_validation_figures_shows_dashes(run_dir):
    for seed in SEEDS:
        metrics = {**seed_metrics("lstm", seed), "val_loss": None, "val_accuracy": None}
        artifacts.write_json(artifacts.run_metrics_path("lstm", seed), metrics)
        for key in ("val_loss", "val_accuracy", "seconds"):
            report.history_path("lstm", seed, key).unlink()
    report_stage.write_report("lstm", SEEDS)
    assert artifacts.read_json(artifacts.REPORT_METRICS)["val_accuracy"] is None
    markdown = artifacts.REPORT_MD.read_text(encoding="utf-8")
    assert comparison_row(markdown, "Validation accuracy") == "| Validation accuracy | — | 0.5391 | 0.51 | 0.53 |"


@pytest.mark.parametrize("missing, stage", [
    (report.history_path("gru", 1, "loss"), "train_gru@1"),
    (artifacts.run_metrics_path("lstm", 2), "train_lstm@2"),
    (artifacts.predictions_path("gru", 0), "train_gru@0"),
    (artifacts.metrics_path("gradients"), "gradients"),
    (artifacts.gradient_figure_path("exploding"), "gradients"),
    (artifacts.metrics_path("fetch"), "fetch"),
    (artifacts.BASELINE_METRICS, "baseline"),
])
def test_missing_input_is_a_one_line_user_error(run_dir, missing, stage):
    missing.unlink()
    with pytest.raises(UserError) as error:
        report_stage.write_report("gru", SEEDS)
    message = str(error.value)
    assert "\n" not in message
    assert str(missing) in message and f"dvc repro {stage}" in message
    assert not artifacts.REPORT_METRICS.exists()


def test_missing_predictions_of_the_other_cell_is_fine(run_dir):
    artifacts.predictions_path("gru", 0).unlink()
    report_stage.write_report("lstm", SEEDS)
    assert artifacts.read_json(artifacts.REPORT_METRICS)["cell"] == "lstm"


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not readable JSON"),
    (json.dumps({k: v for k, v in seed_metrics("gru", 1).items() if k != "test_macro_f1"}), "missing keys test_macro_f1"),
    (json.dumps({**seed_metrics("gru", 1), "test_accuracy": "high"}), "test_accuracy = 'high' is not a number"),
    (json.dumps({**seed_metrics("gru", 1), "cell": "lstm"}), "expected 'gru' and 1"),
    (json.dumps(seed_metrics("gru", 2)), "seed 2, expected 'gru' and 1"),
])
def test_corrupt_metrics_is_a_one_line_user_error(run_dir, content, expected):
    artifacts.run_metrics_path("gru", 1).write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(expected)) as error:
        report_stage.write_report("lstm", SEEDS)
    assert "\n" not in str(error.value) and "dvc repro train_gru@1" in str(error.value)


def test_history_is_dvclives_rounded_as_the_metrics(run_dir):
    # a real run's values: DVCLive keeps every digit, metrics/lstm.json and the report 6 (seconds 3)
    report.history_path("lstm", 0, "val_accuracy").write_text("step\taccuracy\n0\t0.22703180212014135\n"
                                                           "1\t0.4876325088339223\n", encoding="utf-8")
    report.history_path("lstm", 0, "seconds").write_text("step\tseconds\n0\t3.6617968609989475\n1\t2.0554723580007703\n",
                                                      encoding="utf-8")
    history = report.read_history("lstm", 0)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert history["epoch"].tolist() == [1, 2]
    assert history["val_accuracy"].tolist() == [0.227032, 0.487633]
    assert history["seconds"].tolist() == [3.662, 2.055]


@pytest.mark.parametrize("content, expected", [
    ("step\tloss\n0\t2.5\n2\t1.7\n", "steps are not 0, 1, 2"),
    ("step\tloss\n0\thigh\n1\t1.7\n", "column loss is not numeric"),
    ("step\tvalue\n0\t2.5\n1\t1.7\n", "missing columns loss"),
    ("step\tloss\n", "has no rows"),
    ("step\tloss\n0\t2.5\n", "train/accuracy.tsv: 2 epochs, dvclive/gru/seed2/plots/metrics/train/loss.tsv has 1"),
])
def test_corrupt_history_is_a_one_line_user_error(run_dir, content, expected):
    report.history_path("gru", 2, "loss").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(expected)) as error:
        report_stage.write_report("lstm", SEEDS)
    assert "\n" not in str(error.value) and "dvc repro train_gru@2" in str(error.value)


def test_predictions_without_a_column_is_a_user_error(run_dir):
    artifacts.write_table(artifacts.predictions_path("lstm", 0), pd.DataFrame({"actual": GROUPS}))
    with pytest.raises(UserError, match="missing columns predicted"):
        report_stage.write_report("lstm", SEEDS)


def _run_main(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.report"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_main_reads_cell_from_params_and_exits_2_on_missing_input(tmp_path):
    write_fake_run(tmp_path, cell_in_params="gru")
    done = _run_main(tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / artifacts.REPORT_METRICS).read_text())["cell"] == "gru"
    (tmp_path / artifacts.run_metrics_path("lstm", 1)).unlink()
    failed = _run_main(tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: missing metrics/lstm/seed1.json")


def test_importing_the_stage_does_not_import_tensorflow():
    code = "import stages.report, sys; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- the gradients section ---

def fake_runs() -> dict[str, report.CellRun]:
    return {cell: report.CellRun(FAKE_METRICS[cell], fake_history(FAKE_METRICS[cell])) for cell in artifacts.CELLS}


def test_gradients_section_copies_the_figures_and_shows_the_measured_numbers(built):
    _, root = built
    markdown = (root / artifacts.REPORT_MD).read_text(encoding="utf-8")
    section = markdown.split("## Vanishing and exploding gradients", 1)[1]
    for name in ("gradient_flow", "exploding"):
        copied = root / {"gradient_flow": report.GRADIENT_FLOW, "exploding": report.EXPLODING_GRADIENTS}[name]
        assert copied.read_bytes() == (root / artifacts.gradient_figure_path(name)).read_bytes()
    for row in ("| SimpleRNN | 128·50 + 50·50 + 50 | 8,950 | 8,950 | 2,572,520 | 2,572,520 | ✓ |",
                "| LSTM | 4 × (128·50 + 50·50 + 50) | 35,800 | 35,800 | 2,599,370 | 2,599,370 | ✓ |",
                "| GRU | 3 × (128·50 + 50·50 + 100) | 27,000 | 27,000 | 2,590,570 | 2,590,570 | ✓ |"):
        assert row in section
    assert "| SimpleRNN | trained | 400 | +0.40 | > 399 | −20.64 | 57 |" in section
    assert "| LSTM | initial | 100 | +0.05 | > 99 | −7.33 | 40 |" in section
    assert "SimpleRNN 10<sup>−20.6</sup> at L = 400 (×0.888 per step)" in section
    assert "The plain RNN loses its gradient fastest" in section and "more than 57 steps back" in section
    assert "The LSTM keeps the longest reach" in section
    assert "Untrained, LSTM and GRU lose the gradient faster than the plain RNN" in section
    assert "SimpleRNN −16.71 at L = 400, LSTM +24.75 at L = 400, GRU +18.68 at L = 400" in section
    assert "L = 400: beyond float32 (97 steps overflowed)" in section
    assert "100 of 100 steps were clipped" in section and "(clipping made them 2.0 times smaller)" in section
    assert "validation accuracy of 0.2200 after 2 epochs (LSTM 0.5187, GRU 0.5391)" in section
    for equation in ("c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t", "ĥ_t = tanh(W_h x_t + R_h (r_t ⊙ h_{t−1}) + b_h)",
                     "ĥ_t = tanh(W_h x_t + b_h + r_t ⊙ (R_h h_{t−1} + b′_h))", "h_t = z_t ⊙ h_{t−1} + (1 − z_t) ⊙ ĥ_t"):
        assert equation in section


def test_gradients_section_follows_the_numbers_not_a_script():
    gradients = fake_gradients()
    # a run where the trained plain RNN keeps its gradient best and the trained LSTM loses it fastest
    for length, scale in (("L100", 99 / 399), ("L400", 1.0)):
        gradients["curves"]["simple_rnn"]["trained"][length]["last_state"]["log10_first_to_last"] = -1.0 * scale
        gradients["curves"]["lstm"]["trained"][length]["last_state"]["log10_first_to_last"] = -30.0 * scale
    gradients["params"]["gru"]["model"] = 2_590_420  # as if Keras counted a reset_after=False GRU
    section = report.gradients_section(gradients, fake_runs())
    assert "The plain RNN loses its gradient fastest" not in section
    assert "In this run the fastest loss per step is the LSTM's, not the plain RNN's." in section
    assert "The SimpleRNN keeps the longest reach" not in section  # the gate explanation is for gated cells only
    assert "| GRU | 3 × (128·50 + 50·50 + 100) | 27,000 | 27,000 | 2,590,570 | 2,590,420 | ✗ differs |" in section

    gradients["sizes"]["gru_reset_after"] = False
    gradients["sample"]["full_L400"] = 10
    section = report.gradients_section(gradients, fake_runs())
    assert "| GRU | 3 × (128·50 + 50·50 + 50) | 26,850 |" in section
    assert "the 64 longest training posts (10 of them at least 400 tokens long" in section


def test_gradients_section_with_the_gated_cells_only():
    gradients = fake_gradients()
    del gradients["curves"]["simple_rnn"]
    gradients["simple_rnn_training"] = {"epoch": None, "accuracy": None, "val_accuracy": None}
    section = report.gradients_section(gradients, fake_runs())
    assert "SimpleRNN 10<sup>" not in section and "plain RNN loses" not in section
    assert "LSTM 10<sup>−4.8</sup> at L = 400" in section and "validation accuracy of" not in section


def test_gradients_template_reads_exactly_the_facts_given():
    facts = report.gradients_facts(fake_gradients(), fake_runs())
    environment = report.templates()
    source, _, _ = environment.loader.get_source(environment, report.GRADIENTS_TEMPLATE)
    read = jinja2.meta.find_undeclared_variables(environment.parse(source)) - set(environment.globals)
    assert read == set(facts)


def test_gradients_template_fails_on_a_missing_fact():
    facts = report.gradients_facts(fake_gradients(), fake_runs())
    for key in facts:
        with pytest.raises(jinja2.UndefinedError):
            report.render_gradients({name: value for name, value in facts.items() if name != key})
    nested = copy.deepcopy(facts)
    del nested["clipping"]["clipnorm_run"]["median_clipped_grad_norm"]
    with pytest.raises(jinja2.UndefinedError, match="median_clipped_grad_norm"):
        report.render_gradients(nested)


def test_corrupt_gradients_metrics_is_a_one_line_user_error(run_dir):
    artifacts.write_json(artifacts.metrics_path("gradients"), {k: v for k, v in fake_gradients().items()
                                                              if k != "clipping"})
    with pytest.raises(UserError, match=re.escape("missing keys clipping")) as error:
        report_stage.write_report("lstm", SEEDS)
    assert "\n" not in str(error.value) and "dvc repro gradients" in str(error.value)


def test_gradients_section_names_the_pooling_the_model_was_built_with():
    gradients = fake_gradients()
    assert "whose global max pooling reads every step's output" in report.gradients_section(gradients, fake_runs())
    gradients["sizes"]["pooling"] = "attention"
    section = report.gradients_section(gradients, fake_runs())
    assert "whose attention pooling reads every step's output" in section
    assert "Top: the model as built (attention pooling)" in section and "global max" not in section


def test_gradients_section_says_when_the_clipping_runs_overflowed():
    """At maxlen 400 the scaled RNN's gradient exceeds float32: gradients.json holds None for its norms."""
    gradients = fake_gradients()
    overflowed = {key: None for key in ("median_grad_norm", "max_grad_norm", "median_clipped_grad_norm",
                                        "median_update_norm", "max_update_norm")}
    for run in ("unclipped", "clipnorm_run"):
        gradients["clipping"][run] = {**gradients["clipping"][run], **overflowed, "clipped_steps": 0}
    section = report.gradients_section(gradients, fake_runs())
    assert "its global gradient norm was not finite (beyond float32) in at least half of the steps" in section
    assert "a norm that is not finite cannot be clipped" in section and "steps were clipped" not in section
    assert "The loss went from 4.290 to 3.136 without clipping and to 3.100 with it" in " ".join(section.split())

    for run in ("unclipped", "clipnorm_run"):  # the loss itself overflowed before the last tenth of the steps
        gradients["clipping"][run]["last_loss"] = None
    section = " ".join(report.gradients_section(gradients, fake_runs()).split())
    assert ("The loss went from 4.290 to not finite (beyond float32) without clipping and to not finite "
            "(beyond float32) with it") in section

    gradients["clipping"]["unclipped"]["median_grad_norm"] = 8.1e30  # finite median, an overflowed largest
    section = report.gradients_section(gradients, fake_runs())
    assert "had a median of 8.1e+30 (largest not finite (beyond float32))" in section
