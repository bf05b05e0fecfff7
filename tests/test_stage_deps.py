"""dvc.yaml declares each stage's code honestly: every project module a stage's entry point loads is one of the
stage's deps, so editing it re-runs the stage. Checked by importing each entry point in a fresh interpreter."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.dvc_project import ROOT

# Modules that read and check params.yaml, name and write artifacts, and raise one-line errors: they do not shape
# what a stage computes, so no stage lists them (a change that did would need `dvc repro --force`).
PLUMBING = {
    "lstm_vs_gru/__init__.py", "stages/__init__.py",
    "lstm_vs_gru/params.py", "lstm_vs_gru/artifacts.py", "lstm_vs_gru/errors.py",
}
# lstm_vs_gru.training imports the fused trainer's boundary module to offer it to the train stages; gradients
# trains with model.fit and report only reads histories, so neither runs a line of it.
LOADED_NOT_RUN = {stage: {"lstm_vs_gru/fused/__init__.py"} for stage in ("gradients", "report")}

LOADED_FILES = """
import importlib, json, pathlib, sys
importlib.import_module(sys.argv[1])
root = pathlib.Path.cwd().resolve()
files = set()
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and name.split(".")[0] in ("stages", "lstm_vs_gru"):
        files.add(pathlib.Path(path).resolve().relative_to(root).as_posix())
print(json.dumps(sorted(files)))
"""


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def loaded_project_files(module: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", LOADED_FILES, module], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_the_entry_point_loads_is_a_dep(name):
    stage = stages()[name]
    module = re.search(r"python -m (\S+)", stage["cmd"]).group(1)
    declared = {str(dep) for dep in stage["deps"]}
    loaded = loaded_project_files(module)
    assert f"{module.replace('.', '/')}.py" in loaded  # the check sees the entry point itself
    assert loaded - PLUMBING - LOADED_NOT_RUN.get(name, set()) - declared == set()


def test_the_check_would_catch_an_undeclared_module():
    # embed reads its token arrays through the tokenizer module: without that dep the stage would not re-run
    assert "lstm_vs_gru/tokenizer.py" in loaded_project_files("stages.embed") - PLUMBING
