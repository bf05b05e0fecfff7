"""The training stage on tiny random data: outputs, determinism, early one-line failures, atomicity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lstm_vs_gru import artifacts
from lstm_vs_gru.fused import native_ops
from lstm_vs_gru import report, training
from stages import train as train_stage
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.model import expected_param_count, load_model
from lstm_vs_gru.params import load

ROOT = Path(__file__).resolve().parents[1]
GROUPS = np.array(["alt.atheism", "comp.graphics", "sci.space"])
NUM_WORDS, MAXLEN, N_TRAIN, N_TEST = 50, 10, 60, 24
METRIC_KEYS = ["cell", "seed", "params", "epochs", "kept_epoch", "trained_with", "seconds_per_epoch", "train_loss", "train_accuracy", "val_loss",
               "val_accuracy", "test_loss", "test_accuracy", "test_macro_f1"]


def write_params(directory: Path, **overrides: dict) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tokenize"]["num_words"] = NUM_WORDS
    raw["pad"]["maxlen"] = MAXLEN
    raw["model"].update(embedding_dim=8, units=4, dense_units=6)
    raw["train"].update(epochs=1, batch_size=16)
    for section, values in overrides.items():
        raw[section].update(values)
    (directory / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


def write_padded(directory: Path, n_train: int = N_TRAIN, top_id: int = NUM_WORDS) -> None:
    rng = np.random.default_rng(7)
    for split, n in (("train", n_train), ("test", N_TEST)):
        artifacts.write_npz(directory / artifacts.padded_path(split),
                            x=rng.integers(0, top_id, size=(n, MAXLEN)).astype(np.int32),
                            y=rng.integers(0, len(GROUPS), size=n).astype(np.int32), groups=GROUPS,
                            vocabulary_sha256=np.array("0" * 64))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_params(tmp_path)
    write_padded(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def outputs(cell: str) -> list[Path]:
    return [artifacts.model_path(cell, 0), artifacts.run_metrics_path(cell, 0), artifacts.predictions_path(cell, 0)]


@pytest.mark.parametrize("trainer", ["fused", "keras"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_main_writes_checked_outputs(project: Path, cell: str, trainer: str) -> None:
    import keras

    write_params(project, train={"trainer": trainer})
    train_stage.main([cell])
    params = load()

    metrics = artifacts.read_json(artifacts.run_metrics_path(cell, 0))
    assert list(metrics) == METRIC_KEYS
    assert metrics["cell"] == cell and metrics["epochs"] == 1
    # the suite requires the native ops where a compiler is (tests/conftest.py)
    assert metrics["trained_with"] == ("keras" if trainer == "keras" else
                                       "native" if shutil.which(native_ops.compiler()) else "xla")
    assert metrics["params"] == expected_param_count(cell, NUM_WORDS, params.model, len(GROUPS))
    assert metrics["seconds_per_epoch"] > 0
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("train_loss", "val_loss", "test_loss"):
        # three classes, barely trained: close to ln 3
        assert 0.5 < metrics[key] < 2.0, key

    # the history is DVCLive's, as the report reads it: the figures the metrics summarise, to the digit
    history = report.read_history(cell, 0)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert history["epoch"].tolist() == [1]
    last = history.iloc[-1]
    assert (last["loss"], last["accuracy"], last["val_loss"], last["val_accuracy"], last["seconds"]) == (
        metrics["train_loss"], metrics["train_accuracy"], metrics["val_loss"], metrics["val_accuracy"],
        metrics["seconds_per_epoch"])

    predictions = pd.read_csv(artifacts.predictions_path(cell, 0))
    assert list(predictions.columns) == ["actual", "predicted"] and len(predictions) == N_TEST
    assert set(predictions["actual"]) | set(predictions["predicted"]) <= set(GROUPS)
    test = artifacts.read_npz(artifacts.padded_path("test"))
    assert predictions["actual"].tolist() == GROUPS[test["y"]].tolist()
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    model = keras.models.load_model(artifacts.model_path(cell, 0))
    reloaded = GROUPS[model.predict(test["x"], verbose=0).argmax(axis=1)]
    assert reloaded.tolist() == predictions["predicted"].tolist()

    # DVCLive logged every epoch, seconds included, at the same steps as the loss
    live = artifacts.dvclive_dir(cell, 0) / "plots" / "metrics"
    seconds = pd.read_csv(live / "train" / "seconds.tsv", sep="\t")
    loss = pd.read_csv(live / "train" / "loss.tsv", sep="\t")
    assert seconds["step"].tolist() == loss["step"].tolist() == [0]
    assert (live / "eval" / "accuracy.tsv").exists()
    assert not list(project.glob("**/.*.tmp*")), "temporary files left behind"


@pytest.mark.parametrize("trainer", ["fused", "keras"])
def test_early_stopping_stops_and_keeps_the_best_epoch(project: Path, trainer: str, capsys) -> None:
    """Random labels: val_accuracy stops improving within 8 epochs, and the saved model is the best epoch's."""
    import keras

    write_params(project, train={"trainer": trainer, "epochs": 8, "early_stopping": 1, "validation_split": 0.3})
    train_stage.main(["gru"])
    metrics = artifacts.read_json(artifacts.run_metrics_path("gru", 0))
    history = report.read_history("gru", 0)
    assert metrics["epochs"] == len(history) < 8
    kept = history.iloc[metrics["kept_epoch"] - 1]
    assert kept["val_accuracy"] == history["val_accuracy"].max() == metrics["val_accuracy"]
    assert (history["val_accuracy"].iloc[:metrics["kept_epoch"] - 1] < kept["val_accuracy"]).all()
    # the saved model is the kept epoch's, not the last one's: its validation loss, recomputed, is the kept one
    train = artifacts.read_npz(artifacts.padded_path("train"))
    held_out = slice(int(N_TRAIN * 0.7), None)
    model = keras.models.load_model(artifacts.model_path("gru", 0))
    probabilities = model.predict(train["x"][held_out], verbose=0)
    val_loss = float(np.mean(keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(train["y"][held_out], probabilities))))
    assert val_loss == pytest.approx(kept["val_loss"], abs=2e-6)
    assert val_loss != pytest.approx(history["val_loss"].iloc[-1], abs=2e-6)


def test_a_lever_the_fused_trainer_lacks_trains_with_model_fit(project: Path, capsys) -> None:
    write_params(project, model={"bidirectional": True, "pooling": "max_mean", "spatial_dropout": 0.1})
    train_stage.main(["lstm"])
    metrics = artifacts.read_json(artifacts.run_metrics_path("lstm", 0))
    assert metrics["trained_with"] == "keras"
    assert metrics["params"] == expected_param_count("lstm", NUM_WORDS, load().model, len(GROUPS))
    assert ("the fused trainer does not reproduce model.bidirectional = true, model.spatial_dropout = 0.1: "
            "training with Keras's model.fit") in capsys.readouterr().err


def test_the_plain_rnn_trains_with_model_fit_and_says_why(project: Path, capsys) -> None:
    import keras

    train_stage.main(["simple_rnn"])
    metrics = artifacts.read_json(artifacts.run_metrics_path("simple_rnn", 0))
    assert metrics["cell"] == "simple_rnn" and metrics["trained_with"] == "keras"
    assert metrics["params"] == expected_param_count("simple_rnn", NUM_WORDS, load().model, len(GROUPS))
    assert ("the fused trainer does not reproduce cell = simple_rnn: training with Keras's model.fit"
            in capsys.readouterr().err)
    model = load_model(artifacts.model_path("simple_rnn", 0))
    assert isinstance(model.get_layer("simple_rnn"), keras.layers.SimpleRNN)
    assert len(pd.read_csv(artifacts.predictions_path("simple_rnn", 0))) == N_TEST


def test_same_params_give_identical_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    for name in ("first", "second"):
        directory = tmp_path / name
        directory.mkdir()
        write_params(directory, train={"epochs": 2})
        write_padded(directory)
        monkeypatch.chdir(directory)
        train_stage.main(["gru"])
        metrics = artifacts.read_json(artifacts.run_metrics_path("gru", 0))
        history = report.read_history("gru", 0).drop(columns="seconds")
        runs.append((metrics, history, artifacts.predictions_path("gru", 0).read_text()))
    (first, first_history, first_predictions), (second, second_history, second_predictions) = runs
    first.pop("seconds_per_epoch"), second.pop("seconds_per_epoch")  # wall time is the one thing allowed to differ
    assert first == second
    pd.testing.assert_frame_equal(first_history, second_history)
    assert first_predictions == second_predictions


def test_lazy_adam_reaches_the_fused_trainer(project: Path) -> None:
    losses = {}
    for lazy in (False, True):
        write_params(project, train={"epochs": 2, "lazy_adam": lazy})
        train_stage.main(["lstm"])
        history = report.read_history("lstm", 0)
        losses[lazy] = history["loss"].tolist()
    # the first step starts from m = v = 0, where both update alike; later steps differ on the rows a batch lacks
    assert losses[True] != losses[False] and np.allclose(losses[True], losses[False], rtol=0.05)


def test_failure_after_training_leaves_no_outputs(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_evaluate(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(training, "evaluate", broken_evaluate)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train_stage.main(["lstm"])
    assert not any(path.exists() for path in outputs("lstm"))
    assert not (project / "models").exists() and not (project / "metrics").exists()


def test_failure_while_saving_leaves_no_model(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write_table(path, frame):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "write_table", broken_write_table)
    with pytest.raises(OSError, match="disk full"):
        train_stage.main(["lstm"])
    # the model was renamed into place, but metrics (written last) never appeared
    assert not artifacts.run_metrics_path("lstm", 0).exists()
    assert not list((project / "models").glob(".*")), "temporary model file left behind"


def run_stage(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom stages import train\n"
            "try:\n    train.main(sys.argv[1:])\n"
            "finally:\n    print('tensorflow' in sys.modules, file=sys.stdout)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_bad_cell_fails_in_one_line_before_tensorflow(project: Path) -> None:
    result = run_stage("rnn", cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown cell 'rnn': must be one of simple_rnn, lstm, gru"]
    assert result.stdout.strip() == "False"


def test_module_entry_point_refuses_bad_cell(project: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "stages.train", "rnn"], cwd=project, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: unknown cell 'rnn'")


def test_bad_params_fail_in_one_line_before_tensorflow(project: Path) -> None:
    write_params(project, train={"batch_size": 0})
    result = run_stage("lstm", cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: params.yaml: train.batch_size = 0: must be an integer >= 1"]
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [[], ["lstm", "gru"], ["lstm", "--seed", "x"]])
def test_bad_command_line_is_a_user_error(argv: list[str]) -> None:
    with pytest.raises(UserError, match="python -m stages.train"):
        train_stage.parse_args(argv)


def test_a_seed_outside_train_seeds_is_refused_before_training(project: Path) -> None:
    write_params(project, train={"seeds": [0, 1]})
    with pytest.raises(UserError, match=r"--seed 9: not one of train.seeds \[0, 1\]"):
        train_stage.for_seed(load(), 9)


def test_each_seed_trains_into_its_own_files(project: Path) -> None:
    write_params(project, train={"seeds": [0, 3]})
    train_stage.main(["gru", "--seed", "3"])
    metrics = artifacts.read_json(artifacts.run_metrics_path("gru", 3))
    assert metrics["seed"] == 3 and artifacts.model_path("gru", 3).is_file()
    assert not artifacts.run_metrics_path("gru", 0).exists()
    train_stage.main(["gru"])  # the first of train.seeds
    assert artifacts.read_json(artifacts.run_metrics_path("gru", 0))["seed"] == 0
    assert artifacts.read_json(artifacts.run_metrics_path("gru", 0)) != metrics


def test_missing_padded_arrays(project: Path) -> None:
    artifacts.padded_path("test").unlink()
    with pytest.raises(UserError, match=r"data/padded/test.npz: not found"):
        training.load_inputs(load())


def test_token_ids_beyond_num_words(project: Path) -> None:
    write_padded(project, top_id=NUM_WORDS + 5)
    with pytest.raises(UserError, match="tokenize.num_words"):
        training.load_inputs(load())


def test_maxlen_mismatch(project: Path) -> None:
    write_params(project, pad={"maxlen": MAXLEN + 1})
    with pytest.raises(UserError, match="pad.maxlen"):
        training.load_inputs(load())


def test_validation_split_leaving_nothing_to_train(project: Path) -> None:
    write_padded(project, n_train=3)
    write_params(project, train={"validation_split": 0.5})
    training.load_inputs(load())  # floor(3 * 0.5) = 1 to train on, 2 to validate: fine
    write_params(project, train={"validation_split": 0.7})
    with pytest.raises(UserError, match="validation_split = 0.7"):
        training.load_inputs(load())  # floor(3 * 0.3) = 0 to train on


def test_history_rows_without_validation() -> None:
    rows = training.history_rows({"loss": [1.23456789, 0.5], "accuracy": [0.25, 0.5], "seconds": [2.34567, 1.0]})
    assert rows == [
        {"epoch": 1, "loss": 1.234568, "accuracy": 0.25, "val_loss": None, "val_accuracy": None, "seconds": 2.346},
        {"epoch": 2, "loss": 0.5, "accuracy": 0.5, "val_loss": None, "val_accuracy": None, "seconds": 1.0},
    ]


def test_summarize_takes_the_last_epoch_and_mean_seconds() -> None:
    rows = training.history_rows({"loss": [2.0, 1.0], "accuracy": [0.1, 0.2], "val_loss": [2.5, 1.5],
                               "val_accuracy": [0.3, 0.4], "seconds": [10.0, 20.0]})
    scores = {"test_loss": 1.23456789, "test_accuracy": 0.5, "test_macro_f1": 0.4}
    metrics = training.summarize("gru", 0, 123, rows, scores, "xla")
    assert list(metrics) == METRIC_KEYS
    assert metrics == {"cell": "gru", "seed": 0, "params": 123, "epochs": 2, "kept_epoch": 2, "trained_with": "xla", "seconds_per_epoch": 15.0, "train_loss": 1.0,
                       "train_accuracy": 0.2, "val_loss": 1.5, "val_accuracy": 0.4, "test_loss": 1.234568,
                       "test_accuracy": 0.5, "test_macro_f1": 0.4}
    json.dumps(metrics, allow_nan=False)


def test_a_gpu_trains_with_keras_and_says_so(capsys) -> None:
    """Where TensorFlow sees a GPU, the fused trainer (CPU code) gives way to model.fit, whose LSTM and GRU
    run cuDNN's kernels; without one, train.trainer stands. (Checked here with a device count: this suite
    runs on CPUs.)"""
    fused = load()
    assert training.trainer_for_device(fused, 0) == "fused" and capsys.readouterr().err == ""
    assert training.trainer_for_device(fused, 1) == "keras"
    assert "1 GPU(s) found: training with Keras's model.fit (cuDNN)" in capsys.readouterr().err
    keras_trainer = replace(fused, train=replace(fused.train, trainer="keras"))
    assert training.trainer_for_device(keras_trainer, 2) == "keras" and capsys.readouterr().err == ""
    with pytest.raises(UserError, match="train.lazy_adam = true needs the fused trainer.*1 GPU"):
        training.trainer_for_device(replace(fused, train=replace(fused.train, lazy_adam=True)), 1)


def test_levers_the_fused_trainer_does_not_reproduce_fall_back_to_model_fit_in_one_line(capsys) -> None:
    lab = load()
    for model, train, shown in [({"bidirectional": True}, {}, "model.bidirectional = true"),
                                ({"spatial_dropout": 0.2}, {}, "model.spatial_dropout = 0.2"),
                                ({"embedding_dropout": 0.1}, {}, "model.embedding_dropout = 0.1"),
                                ({}, {"lr_schedule": "cosine"}, "train.lr_schedule = cosine")]:
        params = replace(lab, model=replace(lab.model, **model), train=replace(lab.train, **train))
        assert training.trainer_for_device(params, 0) == "keras"
        assert capsys.readouterr().err == (f"the fused trainer does not reproduce {shown}: training with Keras's "
                                           "model.fit instead of the fused trainer\n")
    reproduced = replace(lab, model=replace(lab.model, layers=2, pooling="attention"),
                         train=replace(lab.train, early_stopping=2))
    assert training.trainer_for_device(reproduced, 0) == "fused" and capsys.readouterr().err == ""
    lazy = replace(lab, model=replace(lab.model, bidirectional=True), train=replace(lab.train, lazy_adam=True))
    with pytest.raises(UserError, match="lazy_adam = true needs the fused trainer, and the fused trainer does not "
                                        "reproduce model.bidirectional = true: set it to false"):
        training.trainer_for_device(lazy, 0)


def test_cosine_schedule_decays_to_zero_over_every_step() -> None:
    lab = load().train
    assert training.learning_rate(lab, 10) == lab.learning_rate
    cosine = replace(lab, lr_schedule="cosine", epochs=3)
    schedule = training.learning_rate(cosine, 10)
    assert float(schedule(0)) == pytest.approx(lab.learning_rate)
    assert float(schedule(15)) == pytest.approx(lab.learning_rate / 2)
    assert float(schedule(30)) == pytest.approx(0.0, abs=1e-12)
    assert training.steps_per_epoch(100, replace(lab, validation_split=0.1, batch_size=32)) == 3  # 90 rows


def test_kept_epoch_is_the_first_best_with_early_stopping() -> None:
    rows = training.history_rows({"loss": [3.0, 2.0, 1.0, 0.5], "accuracy": [0.1, 0.2, 0.3, 0.4],
                                  "val_loss": [2.0, 1.0, 1.5, 1.6], "val_accuracy": [0.3, 0.5, 0.5, 0.4],
                                  "seconds": [1.0] * 4})
    lab = load().train
    assert training.kept_epoch(rows, lab) == 4
    assert training.kept_epoch(rows, replace(lab, early_stopping=2)) == 2
    metrics = training.summarize("lstm", 0, 1, rows, {}, "keras", kept=2)
    assert (metrics["epochs"], metrics["kept_epoch"], metrics["val_accuracy"], metrics["train_loss"]) == (4, 2, 0.5, 2.0)


def test_trained_with_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training.trained_with("keras") == "keras"
    monkeypatch.setattr(native_ops, "load", lambda: None)
    assert training.trained_with("fused") == "xla"
    monkeypatch.setattr(native_ops, "load", lambda: object())
    assert training.trained_with("fused") == "native"


def test_a_bad_native_mode_fails_before_training(project: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(native_ops.NATIVE_ENV, "sometimes")
    with pytest.raises(SystemExit) as exit_info:
        train_stage.main(["lstm"])
    assert exit_info.value.code == 2 and "LSTM_VS_GRU_NATIVE='sometimes'" in capsys.readouterr().err
    assert not artifacts.run_metrics_path("lstm", 0).exists()


def test_without_the_fused_package_training_uses_keras(project: Path) -> None:
    """lstm_vs_gru/fused is the one optional part: where it cannot be imported (here made unimportable, as a
    deleted folder would be), training uses model.fit, says so in one line, and records the path."""
    code = ("import sys\nsys.modules['lstm_vs_gru.fused'] = None  # import lstm_vs_gru.fused: ImportError\n"
            "from stages import train\ntrain.main(['lstm'])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lstm_vs_gru.fused is not installed: training with Keras's model.fit instead of the fused trainer" in done.stderr
    assert artifacts.read_json(project / artifacts.run_metrics_path("lstm", 0))["trained_with"] == "keras"
