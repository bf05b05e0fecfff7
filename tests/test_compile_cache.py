"""XLA's persistent compilation cache (lstm_vs_gru.fused.compile_cache): where it goes, when it stays off, and that the
training stage gives the same model and metrics with it cold, warm or off."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from lstm_vs_gru import artifacts
from lstm_vs_gru.fused import compile_cache
from tests.test_train import write_padded, write_params

ROOT = Path(__file__).resolve().parents[1]
FLAG = compile_cache.FLAG


def test_default_folder_is_under_xdg_cache_home_and_named_for_the_machine(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "HOME": "/nonexistent"}
    folder = compile_cache.enable(env)
    assert folder == tmp_path / "lstm-vs-gru" / "xla" / compile_cache.machine_key(env)
    assert folder.is_dir()
    assert env["TF_XLA_FLAGS"] == f'{FLAG}="{folder}"'


def test_without_xdg_cache_home_the_folder_is_under_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert compile_cache.enable(env).parent == tmp_path / ".cache" / "lstm-vs-gru" / "xla"


def test_without_any_home_folder_the_cache_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(compile_cache.Path, "home", staticmethod(no_home))
    env: dict[str, str] = {}
    assert compile_cache.enable(env) is None and env == {}


def test_the_environment_variable_chooses_the_folder_and_keeps_other_flags(tmp_path: Path) -> None:
    env = {compile_cache.CACHE_ENV: str(tmp_path / "my cache"), "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    folder = compile_cache.enable(env)
    assert folder.parent == tmp_path / "my cache"
    assert env["TF_XLA_FLAGS"] == f'--tf_xla_auto_jit=0 {FLAG}="{folder}"'  # quoted: the name has a space


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", ""])
def test_off_leaves_the_flags_alone(value: str) -> None:
    env = {compile_cache.CACHE_ENV: value, "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    assert compile_cache.enable(env) is None
    assert env["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=0"


def test_a_cache_the_user_configured_wins(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "TF_XLA_FLAGS": f"{FLAG}=/somewhere/else"}
    assert compile_cache.enable(env) is None
    assert env["TF_XLA_FLAGS"] == f"{FLAG}=/somewhere/else"
    assert not (tmp_path / "lstm-vs-gru").exists()


def unusable(env: dict[str, str], capsys: pytest.CaptureFixture, reason: str) -> None:
    """enable(env) returns None, leaves TF_XLA_FLAGS unset and prints one notice naming `reason`."""
    assert compile_cache.enable(env) is None
    assert "TF_XLA_FLAGS" not in env
    notice = capsys.readouterr().err
    assert notice.startswith("XLA compilation cache off: ") and reason in notice
    assert compile_cache.CACHE_ENV in notice and len(notice.splitlines()) == 1


def test_a_folder_that_cannot_be_created_turns_the_cache_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a file").write_text("not a folder")
    unusable({compile_cache.CACHE_ENV: str(tmp_path / "a file" / "cache")}, capsys, "cannot create it")


def test_a_nearly_full_disk_turns_the_cache_off(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(compile_cache.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    unusable({compile_cache.CACHE_ENV: str(tmp_path)}, capsys, "only 1 MiB free, below 512 MiB")


def test_a_double_quote_in_the_name_turns_the_cache_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    unusable({compile_cache.CACHE_ENV: str(tmp_path / 'say "cheese"')}, capsys, "double quote")


def test_the_key_changes_with_tensorflow_cpu_and_xla_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    base = compile_cache.machine_key({})
    assert compile_cache.machine_key({}) == base and len(base) == 16
    assert compile_cache.machine_key({"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}) != base
    monkeypatch.setattr(compile_cache, "cpu_features", lambda: "avx2 fma")
    without_avx512 = compile_cache.machine_key({})
    assert without_avx512 != base
    monkeypatch.setattr(compile_cache, "tensorflow_version", lambda: "tensorflow==9.9.9")
    assert compile_cache.machine_key({}) not in (base, without_avx512)


def test_the_key_reads_the_installed_tensorflow_without_importing_it() -> None:
    code = ("import sys\nfrom lstm_vs_gru.fused import compile_cache\nprint(compile_cache.tensorflow_version())\n"
            "print('tensorflow' in sys.modules)\nimport tensorflow\nprint(tensorflow.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout.splitlines()
    described, imported, version = out[-3:]
    assert imported == "False"
    assert f"=={version} " in described and described.endswith(os.path.join("tensorflow", "__init__.py"))


def run_training(project: Path, cache: str) -> subprocess.CompletedProcess:
    """`python -m stages.train lstm` with the cache in `cache` (or off), logging the cache's loads and saves."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), compile_cache.CACHE_ENV: cache, "TF_CPP_MIN_LOG_LEVEL": "0",
           "TF_CPP_VMODULE": "device_executable_persistor=1"}
    env.pop("TF_XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "stages.train", "lstm"], cwd=project, env=env, capture_output=True,
                          text=True, check=True)


def trained(project: Path) -> tuple[dict, list[np.ndarray]]:
    import keras

    metrics = artifacts.read_json(project / artifacts.run_metrics_path("lstm", 0))
    metrics.pop("seconds_per_epoch")
    return metrics, keras.models.load_model(project / artifacts.model_path("lstm", 0)).get_weights()


def test_the_training_stage_gives_the_same_model_cold_warm_and_off(tmp_path: Path) -> None:
    project, cache = tmp_path / "project", tmp_path / "cache"
    project.mkdir()
    write_params(project)
    write_padded(project)

    run_training(project, "off")
    off = trained(project)
    assert not cache.exists()

    cold = run_training(project, str(cache))
    entries = sorted(cache.glob("*/*.pb"))
    assert entries, "the cold run saved nothing"
    assert "Loading cached entry" not in cold.stderr and "saving cache entry" in cold.stderr
    saved = {path: path.stat().st_mtime_ns for path in entries}
    from_cold = trained(project)

    warm = run_training(project, str(cache))
    assert "Loading cached entry" in warm.stderr and "saving cache entry" not in warm.stderr
    assert {path: path.stat().st_mtime_ns for path in sorted(cache.glob("*/*.pb"))} == saved
    for metrics, weights in (from_cold, trained(project)):
        assert metrics == off[0]
        assert all(np.array_equal(a, b) for a, b in zip(weights, off[1], strict=True))


def test_the_training_stage_trains_without_a_usable_cache(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_params(project)
    write_padded(project)
    (tmp_path / "a file").write_text("not a folder")
    done = run_training(project, str(tmp_path / "a file" / "cache"))
    notices = [line for line in done.stderr.splitlines() if line.startswith("XLA compilation cache off: ")]
    assert len(notices) == 1 and "cannot create it" in notices[0]
    assert "saving cache entry" not in done.stderr
    assert artifacts.read_json(project / artifacts.run_metrics_path("lstm", 0))["epochs"] == 1
