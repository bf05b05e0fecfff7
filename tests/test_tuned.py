"""The tuned configuration (configs/tuned.yaml) as `dvc exp run` options and as the pipeline folder tuned/:
`lstm_vs_gru.cli.set_params`. tests/test_pipeline.py runs both through every stage."""
from __future__ import annotations

import re

import pytest
import yaml

from lstm_vs_gru import params
from lstm_vs_gru.cli import set_params
from lstm_vs_gru.errors import UserError
from tests.dvc_project import ROOT

TUNED = ROOT / "configs" / "tuned.yaml"
CLEANED = ROOT / "configs" / "cleaned.yaml"


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


@pytest.mark.parametrize("sets, folder", [([TUNED], "tuned"), ([TUNED, CLEANED], "tuned_cleaned")])
def test_the_committed_folders_are_what_set_params_writes_now(sets, folder):
    """tuned/ and tuned_cleaned/ follow params.yaml, dvc.yaml and their sets: a change to those regenerates them."""
    written = set_params.pipeline_folder(sets, ROOT / folder, ROOT)
    command = " ".join(["python -m lstm_vs_gru.cli.set_params", *(str(s.relative_to(ROOT)) for s in sets),
                        "--folder", folder])
    for path, text in written.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.relative_to(ROOT)} is stale: {command}"


def test_sets_apply_in_order_and_a_later_one_wins(tmp_path, capsys):
    later = tmp_path / "later.yaml"
    later.write_text("train: {seeds: [4]}\ndata: {remove: [quotes]}\n")
    merged = set_params.read_sets([TUNED, CLEANED, later])
    assert merged["train.seeds"] == [4] and merged["data.remove"] == ["quotes"] and merged["pad.maxlen"] == 400
    assert set_params.params_with([TUNED, CLEANED], ROOT / "params.yaml").data.remove == (
        "headers", "footers", "quotes")
    set_params.main([str(TUNED), str(later), "--params", str(ROOT / "params.yaml")])
    assert "-S train.seeds=[4] " in capsys.readouterr().out


def test_a_bad_value_in_a_layered_set_names_the_sets(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {remove: [signatures]}\n")
    with pytest.raises(SystemExit):
        set_params.main([str(TUNED), str(bad), "--params", str(ROOT / "params.yaml")])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {TUNED} + {bad}") and "signatures" in err and err.count("\n") == 1


def test_the_folder_holds_the_tuned_values_and_reads_the_corpus_and_code_from_the_root():
    tuned = yaml.safe_load((ROOT / "tuned" / "params.yaml").read_text())
    assert tuned["data"]["source"] == "../data/20news-bydate.tar.gz"
    assert (tuned["pad"]["maxlen"], tuned["model"]["pooling"], tuned["train"]["seeds"]) == (400, "max_mean", [0, 1, 2])
    assert params.parse(tuned, ROOT / "tuned" / "params.yaml").train.early_stopping == 3
    cleaned = yaml.safe_load((ROOT / "tuned_cleaned" / "params.yaml").read_text())
    assert cleaned == {**tuned, "data": {**tuned["data"], "remove": ["headers", "footers", "quotes"]}}
    lab, folder = (yaml.safe_load((root / "dvc.yaml").read_text()) for root in (ROOT, ROOT / "tuned"))
    assert list(folder["stages"]) == list(lab["stages"]) and folder["plots"] == lab["plots"]
    for name, stage in lab["stages"].items():
        assert folder["stages"][name]["cmd"] == f"PYTHONPATH=.. {stage['cmd']}"
        assert folder["stages"][name]["outs"] == stage["outs"]
        assert folder["stages"][name]["deps"] == [f"../{dep}" if set_params.is_source(dep) else dep
                                                   for dep in stage["deps"]]


def test_every_dependency_is_code_the_corpus_or_a_stage_output():
    """So re-rooting only stages/ and lstm_vs_gru/ is right: a new kind of dependency fails here first."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()

    def pattern(path: str) -> str:
        return re.sub(r"\$\{[^}]*\}", "*", path)

    outs = [pattern(next(iter(out)) if isinstance(out, dict) else out)
            for stage in stages for key in ("outs", "metrics") for out in stage.get(key, [])]
    for dep in (pattern(dep) for stage in stages for dep in stage["deps"]):
        produced = any(dep == out or dep.startswith(out + "/") or out.startswith(dep + "/") for out in outs)
        assert set_params.is_source(dep) or dep == "*" or produced, dep


@pytest.mark.parametrize("folder", [".", "..", "../elsewhere"])
def test_a_folder_outside_the_project_is_refused(folder):
    with pytest.raises(UserError, match=r"must be a folder inside the project"):
        set_params.pipeline_folder(TUNED, ROOT / folder, ROOT)
