"""Training speed: the lab's plain Keras code against the pipeline's fused trainer, on the same padded arrays.

    python bench/train_speed.py [--epochs 2] [--seeds 0 1 2] [--cells lstm gru] [--data data/padded]
                                [--threads N] [--lazy-adam] [--compile-cache off|warm] [--check]
                                [--params-set configs/tuned.yaml] [--out bench/results/train_speed.json]

Every training run is a fresh Python process (clean TensorFlow state, its own peak RSS), and the runs
alternate reference, ours, reference, ours for each cell and seed, so that the load of other processes on
the machine falls on both sides alike. The table shows medians over seeds; the JSON keeps every run.

The reference is a self-contained copy of the lab's code path: `model.compile(loss="categorical_crossentropy",
optimizer=Adam(lr), metrics=["accuracy"])` then `model.fit(x, one_hot(y), batch_size, epochs,
validation_split)`. "Ours" is what `dvc repro` runs with `train.trainer: fused`: `lstm_vs_gru.fused.trainer.fast_fit`
on the pipeline's model (see that module for how it computes the same thing faster).

`--check` runs a few steps of both from identical weights on identical batches and prints how far the
weights drift apart (same math => float rounding only), then trains ours twice to show determinism.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench_common import RESULTS, ROOT, child_result, print_result  # first: see bench_common
from lstm_vs_gru.fused import compile_cache

DEFAULT_OUT = RESULTS / "train_speed.json"
EVAL_BATCH = 512  # batch size of validation/test prediction: speed only, results do not depend on it


# --- one benchmark run (child process) ---------------------------------------------------------------

def load_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        with np.load(data_dir / f"{split}.npz", allow_pickle=False) as arrays:
            out[f"x_{split}"] = arrays["x"].astype(np.int32)
            out[f"y_{split}"] = arrays["y"].astype(np.int32)
            out["n_classes"] = len(arrays["groups"])
    return out


def lab_model(cell: str, num_words: int, maxlen: int, n_classes: int, model_params: Any) -> Any:
    """The lab's model, written out plainly (the reference must not depend on the pipeline's code)."""
    import keras

    recurrent = (keras.layers.LSTM(model_params.units, return_sequences=True) if cell == "lstm" else
                 keras.layers.GRU(model_params.units, return_sequences=True, reset_after=model_params.gru_reset_after))
    return keras.Sequential([
        keras.Input(shape=(maxlen,)),
        keras.layers.Embedding(num_words, model_params.embedding_dim),
        recurrent,
        keras.layers.GlobalMaxPool1D(),
        keras.layers.Dropout(model_params.dropout),
        keras.layers.Dense(model_params.dense_units, activation="relu"),
        keras.layers.Dropout(model_params.dropout),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])


def train_reference(cell: str, seed: int, data: dict[str, Any], params: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The lab's code path: stock compile, plain model.fit on one-hot labels. With levers beyond the lab
    (`--params-set`), the pipeline's model is built, then compiled and fitted the same plain way."""
    import keras

    from lstm_vs_gru.model import build_model, is_lab_architecture

    keras.utils.set_random_seed(seed)
    build = lab_model if is_lab_architecture(params.model) else build_model
    model = build(cell, params.tokenize.num_words, data["x_train"].shape[1], data["n_classes"], params.model)
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(params.train.learning_rate),
                  metrics=["accuracy"])
    history: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    def begin(epoch: int, logs: Any = None) -> None:
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def end(epoch: int, logs: Any = None) -> None:
        logs = logs or {}
        history.append({"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                        "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                        "seconds": time.perf_counter() - clock["wall"],
                        "cpu_seconds": time.process_time() - clock["cpu"]})

    model.fit(data["x_train"], keras.utils.to_categorical(data["y_train"], data["n_classes"]),
              batch_size=params.train.batch_size, epochs=params.train.epochs,
              validation_split=params.train.validation_split, verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)])
    return model, history


def train_ours(cell: str, seed: int, data: dict[str, Any], params: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The pipeline's model and seeding, trained by the pipeline's fused trainer."""
    import keras

    from lstm_vs_gru.fused.trainer import fast_fit
    from lstm_vs_gru.model import build_model, seed_everything

    seed_everything(seed)
    model = build_model(cell, params.tokenize.num_words, data["x_train"].shape[1], data["n_classes"], params.model)
    history: list[dict[str, Any]] = []
    clock: dict[str, float] = {}

    def begin(epoch: int, logs: Any = None) -> None:
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def end(epoch: int, logs: Any = None) -> None:
        history.append({"epoch": epoch + 1, **(logs or {}), "seconds": time.perf_counter() - clock["wall"],
                        "cpu_seconds": time.process_time() - clock["cpu"]})

    fast_fit(model, data["x_train"], data["y_train"], epochs=params.train.epochs, batch_size=params.train.batch_size,
             learning_rate=params.train.learning_rate, validation_split=params.train.validation_split, seed=seed,
             callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)],
             lazy_adam=params.train.lazy_adam)
    return model, history


def test_scores(model: Any, data: dict[str, Any]) -> dict[str, float]:
    """Test loss and accuracy through the trained Keras model itself (model.predict), for both sides alike."""
    probabilities = model.predict(data["x_test"], batch_size=EVAL_BATCH, verbose=0)
    picked = np.clip(probabilities[np.arange(len(data["y_test"])), data["y_test"]], 1e-7, 1.0)
    return {"test_loss": float(-np.mean(np.log(picked))),
            "test_accuracy": float(np.mean(probabilities.argmax(axis=1) == data["y_test"]))}


def configure_threads(threads: int | None) -> None:
    """Before TensorFlow starts: `threads` for both of its thread pools, or TensorFlow's defaults."""
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def bench_params(params_set: Path | None) -> Any:
    """params.yaml, with a parameter-set file (configs/tuned.yaml) applied if given."""
    from lstm_vs_gru.cli.set_params import params_with
    from lstm_vs_gru.params import load

    return load(ROOT / "params.yaml") if params_set is None else params_with(params_set, ROOT / "params.yaml")


def padded_from_tokens(tokens_dir: Path, params: Any) -> dict[str, np.ndarray]:
    """The arrays of load_arrays, padded here from the tokenize stage's output as params.pad says."""
    from lstm_vs_gru.tokenizer import pad

    out = {}
    for split in ("train", "test"):
        with np.load(tokens_dir / f"{split}.npz", allow_pickle=False) as arrays:
            out[f"x_{split}"] = pad(arrays["ids"], arrays["offsets"], params.pad.maxlen, params.pad.padding,
                                    params.pad.truncating).astype(np.int32)
            out[f"y_{split}"] = arrays["labels"].astype(np.int32)
            out["n_classes"] = len(arrays["groups"])
    return out


def run_one(kind: str, cell: str, seed: int, data_dir: Path, epochs: int | None, threads: int | None,
            lazy_adam: bool = False, params_set: Path | None = None) -> dict[str, Any]:
    """Train one model in this process and return its figures."""
    from dataclasses import replace

    params = bench_params(params_set)
    params = replace(params, train=replace(params.train, lazy_adam=lazy_adam,  # the flag, not params.yaml, decides
                                           **({} if epochs is None else {"epochs": epochs})))
    configure_threads(threads)
    data = load_arrays(data_dir) if params_set is None else padded_from_tokens(ROOT / "data" / "tokens", params)
    started = time.perf_counter()
    model, history = (train_reference if kind == "reference" else train_ours)(cell, seed, data, params)
    fit_seconds = time.perf_counter() - started
    return {"kind": kind, "cell": cell, "seed": seed, "epochs": len(history), "fit_seconds": fit_seconds,
            "history": history, **test_scores(model, data),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- exactness check ---------------------------------------------------------------------------------

def check_exactness(cell: str, data_dir: Path, steps: int, threads: int | None) -> dict[str, Any]:
    """Weights after `steps` steps of the plain Keras path (model.fit, graph mode) and of the fused trainer,
    from the same initial weights and batches, dropout off. Same math => rounding-level gaps."""
    import keras
    import tensorflow as tf

    from dataclasses import replace

    from lstm_vs_gru.fused.trainer import FastTrainer, distinct_size, dropout_layers, epoch_plan
    from lstm_vs_gru.model import build_model, seed_everything
    from lstm_vs_gru.params import load

    configure_threads(threads)
    params = load(ROOT / "params.yaml")
    # Dropout off on both sides: ours draws its masks from NumPy, Keras from its own generator.
    params = replace(params, model=replace(params.model, dropout=0.0))
    data = load_arrays(data_dir)
    x, y = data["x_train"][:steps * params.train.batch_size], data["y_train"][:steps * params.train.batch_size]

    def fresh() -> Any:
        seed_everything(params.train.seed)
        return build_model(cell, params.tokenize.num_words, x.shape[1], data["n_classes"], params.model)

    initial = [w.numpy() for w in fresh().trainable_variables]
    plain = fresh()
    plain.compile(optimizer=keras.optimizers.Adam(params.train.learning_rate), loss="sparse_categorical_crossentropy")
    plain.fit(x, y, batch_size=params.train.batch_size, epochs=1, shuffle=False, verbose=0)

    size = params.train.batch_size
    ours = fresh()
    trainer = FastTrainer(ours, params.train.learning_rate)
    dropout = [(layer.rate, int(layer.input.shape[-1])) for layer in dropout_layers(ours)]
    plan = epoch_plan(x, y, size, seed=0, epoch=0, dropout=dropout, shuffle=False)
    trainer.run_epoch(plan, distinct_size([plan], x.shape[1] * size))
    ours_weights = [w.numpy() for w in ours.trainable_variables]
    # control: the plain Keras model and Keras' Adam, only compiled by XLA (Keras refuses jit_compile=True
    # under op determinism, hence the hand-written step): how much do rounding changes alone move things?
    control = fresh()
    keras_adam = keras.optimizers.Adam(params.train.learning_rate)
    keras_adam.build(control.trainable_variables)

    @tf.function(jit_compile=True)
    def control_step(ids, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, control(ids, training=True)))
        keras_adam.apply_gradients(zip(tape.gradient(loss, control.trainable_variables), control.trainable_variables))

    for start in range(0, len(x), size):
        control_step(x[start:start + size], y[start:start + size])
    control_weights = [w.numpy() for w in control.trainable_variables]
    report = []
    for w0, variable, a, c in zip(initial, plain.trainable_variables, ours_weights, control_weights):
        b = variable.numpy()
        row = {"weight": variable.path, "max_abs_update": float(np.abs(b - w0).max()),
               "ours_gap": float(np.abs(a - b).max()), "plain_xla_gap": float(np.abs(c - b).max())}
        if b.ndim == 2 and b.shape[0] == params.tokenize.num_words:
            # Row 0 is the padding token, hundreds of occurrences per batch. Keras' sparse Adam adds the squares
            # of the per-occurrence gradients to v, and max-pooling splits a gradient over exactly tied time
            # steps (converged states in the padding), so the last bit of a state can move v there visibly.
            row["ours_gap_without_row_0"] = float(np.abs(a - b)[1:].max())
            row["plain_xla_gap_without_row_0"] = float(np.abs(c - b)[1:].max())
        report.append(row)
    return {"cell": cell, "steps": steps, "weights": report}


# --- parent: schedule, summarise, print ---------------------------------------------------------------

def child_command(args: argparse.Namespace, kind: str, cell: str, seed: int) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run", kind, "--cells", cell, "--seeds", str(seed),
               "--data", str(args.data)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.lazy_adam:
        command += ["--lazy-adam"]
    if args.params_set is not None:
        command += ["--params-set", str(args.params_set)]
    if kind == "ours" and args.compile_cache == "warm":
        command += ["--compile-cache", "warm"]
    return command


def prime_compile_cache(args: argparse.Namespace, folder: Path) -> None:
    """`folder` as the cache of this run's children (LSTM_VS_GRU_XLA_CACHE), filled by one untimed epoch of
    ours per cell: the programs depend on the shapes, not on the number of epochs."""
    os.environ[compile_cache.CACHE_ENV] = str(folder)
    for cell in args.cells:
        child_result(child_command(argparse.Namespace(**{**vars(args), "epochs": 1}), "ours", cell, args.seeds[0]))
    print(f"compile cache primed: {os.environ[compile_cache.CACHE_ENV]}", flush=True)


def time_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every seed and cell, reference then ours, each in a fresh process; prints a line per run."""
    runs = []
    for seed in args.seeds:
        for cell in args.cells:
            for kind in ("reference", "ours"):
                run = child_result(child_command(args, kind, cell, seed))
                times = epoch_seconds(run)
                print(f"{cell} seed {seed} {kind:9s}: epochs {[round(r['seconds'], 2) for r in run['history']]} s, "
                      f"cpu {[round(r['cpu_seconds'], 2) for r in run['history']]} s, "
                      f"val_acc {run['history'][-1]['val_accuracy']:.4f}, test_acc {run['test_accuracy']:.4f}, "
                      f"peak {run['peak_rss_mb']:.0f} MB (mean {times['mean_epoch']:.2f} s/epoch)", flush=True)
                runs.append(run)
    return runs


def epoch_seconds(run: dict[str, Any]) -> dict[str, float]:
    """Wall seconds of the first epoch, mean over all epochs, median of epochs 2+; CPU seconds of epochs 2+."""
    seconds = [row["seconds"] for row in run["history"]]
    cpu = [row["cpu_seconds"] for row in run["history"]]
    return {"first_epoch": seconds[0], "mean_epoch": statistics.mean(seconds),
            "later_epochs": statistics.median(seconds[1:] or seconds), "later_cpu": statistics.median(cpu[1:] or cpu)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: medians over seeds of each side's seconds per epoch, their ratio, accuracy spread, memory."""
    rows = []
    for cell in dict.fromkeys(run["cell"] for run in runs):
        row: dict[str, Any] = {"cell": cell}
        for kind in ("reference", "ours"):
            mine = [run for run in runs if run["cell"] == cell and run["kind"] == kind]
            times = [epoch_seconds(run) for run in mine]
            for key in ("mean_epoch", "later_epochs", "first_epoch", "later_cpu"):
                row[f"{kind}_{key}_s"] = statistics.median(t[key] for t in times)
            for key, values in (("val_accuracy", [run["history"][-1]["val_accuracy"] for run in mine]),
                                ("test_accuracy", [run["test_accuracy"] for run in mine])):
                row[f"{kind}_{key}"] = statistics.mean(values)
                row[f"{kind}_{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{kind}_peak_rss_mb"] = max(run["peak_rss_mb"] for run in mine)
        row["speedup_mean_epoch"] = row["reference_mean_epoch_s"] / row["ours_mean_epoch_s"]
        row["speedup_later_epochs"] = row["reference_later_epochs_s"] / row["ours_later_epochs_s"]
        row["cpu_ratio_later_epochs"] = row["reference_later_cpu_s"] / row["ours_later_cpu_s"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], n_seeds: int) -> None:
    print(f"\nmedians over {n_seeds} seed(s); s/epoch = wall seconds, mean over all epochs (the first includes "
          "tracing and XLA compilation); later = median of epochs 2+; cpu = CPU seconds of epochs 2+")
    print(f"{'cell':5s} {'ref s/ep':>8s} {'ours s/ep':>9s} {'ratio':>6s} {'ref later':>9s} {'ours later':>10s} "
          f"{'ratio':>6s} {'cpu ratio':>9s}  {'val acc ref / ours':>23s}  {'test acc ref / ours':>23s}  "
          f"{'peak RSS MB ref / ours':>22s}")
    for r in rows:
        print(f"{r['cell']:5s} {r['reference_mean_epoch_s']:8.2f} {r['ours_mean_epoch_s']:9.2f} "
              f"{r['speedup_mean_epoch']:6.2f} {r['reference_later_epochs_s']:9.2f} {r['ours_later_epochs_s']:10.2f} "
              f"{r['speedup_later_epochs']:6.2f} {r['cpu_ratio_later_epochs']:9.2f}  "
              f"{r['reference_val_accuracy']:.3f}±{r['reference_val_accuracy_sd']:.3f} / "
              f"{r['ours_val_accuracy']:.3f}±{r['ours_val_accuracy_sd']:.3f}  "
              f"{r['reference_test_accuracy']:.3f}±{r['reference_test_accuracy_sd']:.3f} / "
              f"{r['ours_test_accuracy']:.3f}±{r['ours_test_accuracy_sd']:.3f}  "
              f"{r['reference_peak_rss_mb']:10.0f} / {r['ours_peak_rss_mb']:.0f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: params.yaml train.epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "padded", help="folder with train.npz, test.npz")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra/inter-op threads (default: TF's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exactness and determinism checks instead of timing")
    parser.add_argument("--lazy-adam", action="store_true",
                        help="ours with train.lazy_adam: true (not the lab's mathematics; the reference is unchanged)")
    parser.add_argument("--compile-cache", choices=("off", "warm"), default="off",
                        help="warm: ours loads XLA's compiled programs from a cache primed by an untimed run, as "
                             "`dvc repro` does after its first run (lstm_vs_gru.fused.compile_cache); off: ours compiles")
    parser.add_argument("--params-set", type=Path, default=None,
                        help="a parameter-set file applied to params.yaml (configs/tuned.yaml); the arrays are then "
                             "padded from data/tokens as it says, and the reference fits the same model by model.fit")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--run", choices=("reference", "ours"), help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run:
        if args.compile_cache == "warm" and compile_cache.enable() is None:  # its folder: from the parent
            raise SystemExit(f"the compile cache in {compile_cache.CACHE_ENV} is not usable")
        result = run_one(args.run, args.cells[0], args.seeds[0], args.data, args.epochs, args.threads, args.lazy_adam,
                         args.params_set)
        print_result(result)
        return
    if args.check:
        for cell in args.cells:
            for steps in sorted({1, args.check_steps}):
                result = check_exactness(cell, args.data, steps, args.threads)
                print(f"\n{cell}, {steps} step(s) from the same weights and batches, dropout off: max |w - w_plain|")
                print(f"{'weight':34s} {'update':>9s} {'ours':>9s} {'plain+XLA':>9s}")
                for row in result["weights"]:
                    print(f"{row['weight']:34s} {row['max_abs_update']:9.2e} {row['ours_gap']:9.2e} "
                          f"{row['plain_xla_gap']:9.2e}")
                    if "ours_gap_without_row_0" in row:
                        print(f"{'  (rows 1+)':34s} {'':9s} {row['ours_gap_without_row_0']:9.2e} "
                              f"{row['plain_xla_gap_without_row_0']:9.2e}")
            twice = [child_result(child_command(args, "ours", cell, args.seeds[0])) for _ in range(2)]
            same = [run["history"][i][k] for run in twice for i in range(len(run["history"]))
                    for k in ("loss", "accuracy", "val_loss", "val_accuracy")]
            half = len(same) // 2
            print(f"{cell}: two runs of ours, seed {args.seeds[0]}: identical metrics: {same[:half] == same[half:]} "
                  f"(test accuracy {twice[0]['test_accuracy']} / {twice[1]['test_accuracy']})")
        return
    with tempfile.TemporaryDirectory(prefix="xla-cache-") as cache:
        if args.compile_cache == "warm":
            prime_compile_cache(args, Path(cache))
        runs = time_runs(args)
    rows = summarise(runs)
    print_table(rows, len(args.seeds))
    from lstm_vs_gru.artifacts import write_json

    write_json(args.out, {"argv": sys.argv[1:], "threads": args.threads, "compile_cache": args.compile_cache,
                          "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "summary": rows,
                          "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
