"""The tuned configuration (configs/tuned.yaml) as `dvc exp run` options: `lstm_vs_gru.cli.set_params`.
tests/test_pipeline.py runs it through every stage."""
from __future__ import annotations

import pytest

from lstm_vs_gru.cli import set_params
from lstm_vs_gru.errors import UserError
from tests.dvc_project import ROOT

TUNED = ROOT / "configs" / "tuned.yaml"


def test_tuned_values_are_valid_params(capsys):
    set_params.main([str(TUNED), "--params", str(ROOT / "params.yaml")])
    options = capsys.readouterr().out.split()  # as the shell splits `$(...)`: on whitespace, quotes ignored
    overrides = set_params.read_overrides(TUNED)
    assert options == set_params.dvc_options(overrides) and len(options) == 2 * len(overrides)
    assert "train.seeds=[0,1,2]" in options
    assert overrides["model.pooling"] == "max_mean" and overrides["train.early_stopping"] == 3


@pytest.mark.parametrize("text, error", [
    ("model: {pooling: sum}", "model.pooling = sum: must be one of max, mean, max_mean, attention"),
    ("model: {pool: max}", "model.pool: not a parameter of params.yaml"),
    ("model: 3", "model: not a parameter of params.yaml"),
    ("[1, 2]", "must be a mapping of params.yaml sections"),
    ("train: {early_stopping: 2, validation_split: 0.0}", "train.early_stopping = 2: must be null while"),
])
def test_a_bad_parameter_set_fails_in_one_line(tmp_path, capsys, text, error):
    path = tmp_path / "set.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        set_params.main([str(path), "--params", str(ROOT / "params.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and error in err and err.count("\n") == 1


def test_a_value_the_shell_would_split_is_refused():
    assert set_params.dvc_options({"train.seeds": [0, 1], "data.remove": ["headers"]}) == [
        "-S", "train.seeds=[0,1]", "-S", "data.remove=[headers]"]
    with pytest.raises(UserError, match=r"data.source = my corpus: a value passed through \$\(...\) may not"):
        set_params.dvc_options({"data.source": "my corpus"})
