"""Metric-regression gate: fail when the workspace metrics got worse than a baseline.

`dvc metrics diff` only reports; this turns the same numbers into an exit status.

    python -m lstm_vs_gru.cli.gate                      # workspace vs HEAD, rules from gate.yaml
    python -m lstm_vs_gru.cli.gate --rev main           # vs any Git revision or DVC experiment name
    python -m lstm_vs_gru.cli.gate --baseline saved.json
    python -m lstm_vs_gru.cli.gate --baseline metrics/lstm.json=old/lstm.json

Current values are read from the metrics files in the working tree (paths relative to the
current directory, normally the project root). The baseline is one of:

* `--rev REV` (default HEAD): read through DVC's own machinery (`Repo.metrics.show`), so
  metrics that DVC caches instead of Git are found too.
* `--baseline FILE`: a JSON file holding either the output of `dvc metrics show --json`
  (one revision; if it also has `workspace`, the other revision is used) or a plain mapping
  `{"metrics/lstm.json": {"test_accuracy": 0.52, ...}, ...}`.
* `--baseline TARGET=FILE`: FILE is a plain metrics JSON (for instance an old copy of
  TARGET) that is the baseline for TARGET alone. `--baseline` may be repeated.

Rules (`gate.yaml`) map each metrics file to its metric keys (nested keys joined by "."):

    metrics/report.json:
      test_accuracy: {better: higher, abs_tol: 0.01, min: 0.40}

* `better`: higher | lower | equal (required). `equal` also compares text values.
* `abs_tol`, `rel_tol` (>= 0, default 0): the bad-direction change allowed,
  max(abs_tol, rel_tol * |baseline|). A change beyond it is a REGRESSION.
* `min`, `max`: absolute floor / ceiling on the current value (BELOW FLOOR / ABOVE CEILING).
* `gate: false`: report-only; the value must still exist and must not be NaN.

A key ending in `.*` names one value per seed (`per_seed.lstm.test_accuracy.*` matches
`per_seed.lstm.test_accuracy.0`, `...1`, ...) and is judged over the seeds, against their noise:
* `alpha` (default 0.05): a REGRESSION needs a one-sided paired t-test, seed against the same seed,
  to find the current values worse with p < alpha, and the mean to move the bad way beyond the
  tolerance; a change the seeds' spread explains passes, whatever its size.
* `min` / `max` apply to the mean; a seed of the baseline missing from the current run is MISSING SEED.

Corpus: the fetch stage records a fingerprint of the corpus in metrics/fetch.json. Where the baseline's and
the workspace's differ, their metrics come from different corpora and the gate refuses (exit 2) unless
`--other-corpus` is given; where one side has no fingerprint it says it cannot tell.

Verdicts: ok, report-only, new (baseline lacks it; only with --allow-new), REGRESSION,
MISSING (file or key), MISSING SEED, UNREADABLE, NaN (NaN or infinite), NOT NUMERIC, BELOW FLOOR,
ABOVE CEILING. Exit status: 0 all hold, 1 any failing verdict, 2 bad rules file, bad
arguments, unknown revision or an unreadable --baseline file (one line, `error: ...`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from lstm_vs_gru.artifacts import is_number, metrics_path
from lstm_vs_gru.errors import OneLineParser, UserError, exits_cleanly

RULES = Path("gate.yaml")
SCRIPT = "lstm-vs-gru-gate"
DIRECTIONS = ("higher", "lower", "equal")
RULE_FIELDS = ("better", "abs_tol", "rel_tol", "min", "max", "gate", "alpha")
SEEDS_SUFFIX = ".*"

OK, REPORT_ONLY, NEW = "ok", "report-only", "new"
REGRESSION, MISSING, UNREADABLE = "REGRESSION", "MISSING", "UNREADABLE"
NAN, NOT_NUMERIC, BELOW_FLOOR, ABOVE_CEILING = "NaN", "NOT NUMERIC", "BELOW FLOOR", "ABOVE CEILING"
MISSING_SEED = "MISSING SEED"
PASSING = frozenset({OK, REPORT_ONLY, NEW})
CORPUS_METRICS = metrics_path("fetch").as_posix()
CORPUS_KEY = "fingerprint"


class RulesError(UserError):
    """gate.yaml is not a valid rules file."""


@dataclass(frozen=True)
class Rule:
    """How one metric key of one metrics file is judged."""
    file: str
    key: str
    better: str
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    min: float | None = None
    max: float | None = None
    gate: bool = True
    alpha: float = 0.05

    @property
    def over_seeds(self) -> bool:
        return self.key.endswith(SEEDS_SUFFIX)


@dataclass(frozen=True)
class Absent:
    """Why a metric has no value: verdict MISSING or UNREADABLE, and a readable reason."""
    verdict: str
    reason: str


@dataclass(frozen=True)
class Row:
    """One line of the gate's table; baseline/current are the values, or Absent."""
    file: str
    key: str
    baseline: Any
    current: Any
    change: str
    tolerance: str
    verdict: str
    note: str = ""


# A metrics file's flat {key: scalar}, or why it could not be had.
FileMetrics = dict[str, Any] | Absent
Snapshot = dict[str, FileMetrics]


# --- rules -------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which would silently replace a rule."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _number(value: Any, *, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError("a number >= 0" if low == 0 else "a finite number")
    return float(value)


def parse_rule(file: str, key: str, raw: Any) -> Rule:
    """Validate one rule mapping; raises ValueError('<field> = <value>: must be ...')."""
    if not isinstance(raw, dict):
        raise ValueError(f"must be a mapping of fields ({', '.join(RULE_FIELDS)}), not {raw!r}")
    unknown = [name for name in raw if name not in RULE_FIELDS]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (known: " + ", ".join(RULE_FIELDS) + ")")
    if raw.get("better") not in DIRECTIONS:
        shown = "missing" if "better" not in raw else repr(raw["better"])
        raise ValueError(f"better = {shown}: must be one of " + ", ".join(DIRECTIONS))
    values: dict[str, Any] = {"better": raw["better"]}
    for name, low in (("abs_tol", 0.0), ("rel_tol", 0.0), ("min", -math.inf), ("max", -math.inf)):
        if name in raw:
            try:
                values[name] = _number(raw[name], low=low)
            except ValueError as error:
                raise ValueError(f"{name} = {raw[name]!r}: must be {error}") from None
    if "gate" in raw:
        if not isinstance(raw["gate"], bool):
            raise ValueError(f"gate = {raw['gate']!r}: must be true or false")
        values["gate"] = raw["gate"]
    if values.get("min", -math.inf) > values.get("max", math.inf):
        raise ValueError(f"min = {values['min']:g} is above max = {values['max']:g}")
    if "alpha" in raw:
        if not key.endswith(SEEDS_SUFFIX):
            raise ValueError(f"alpha: only for a key over seeds (ending in {SEEDS_SUFFIX})")
        if not (is_number(raw["alpha"]) and 0 < raw["alpha"] < 1):
            raise ValueError(f"alpha = {raw['alpha']!r}: must be a number between 0 and 1")
        values["alpha"] = float(raw["alpha"])
    if key.endswith(SEEDS_SUFFIX) and values["better"] == "equal":
        raise ValueError("better = 'equal': a key over seeds must be higher or lower")
    return Rule(file=file, key=key, **values)


def parse_rules(raw: Any, source: str = str(RULES)) -> tuple[Rule, ...]:
    """Validate loaded rules {metrics file: {key: rule}}; raises RulesError naming the place."""
    if not isinstance(raw, dict) or not raw:
        raise RulesError(f"{source}: must be a mapping of metrics files to {{metric key: rule}}")
    rules = []
    for file, keys in raw.items():
        if not isinstance(file, str) or not file:
            raise RulesError(f"{source}: {file!r}: a metrics file must be a non-empty path")
        if not isinstance(keys, dict) or not keys:
            raise RulesError(f"{source}: {file}: must map at least one metric key to a rule")
        for key, rule in keys.items():
            if not isinstance(key, str) or not key:
                raise RulesError(f"{source}: {file}: {key!r}: a metric key must be a non-empty string")
            try:
                rules.append(parse_rule(file, key, rule))
            except ValueError as error:
                raise RulesError(f"{source}: {file}: {key}: {error}") from None
    return tuple(rules)


def load_rules(path: str | os.PathLike = RULES) -> tuple[Rule, ...]:
    """Read and validate a rules file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (safe subclass)
    except FileNotFoundError:
        raise RulesError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RulesError(f"{path}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        raise RulesError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    return parse_rules(raw, str(path))


def rule_files(rules: Sequence[Rule]) -> list[str]:
    """The metrics files the rules name, in rules order."""
    return list(dict.fromkeys(rule.file for rule in rules))


# --- reading metrics ---------------------------------------------------------------------

def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics as {"a.b": scalar}; like DVC, keeps only numbers, text and booleans."""
    if not isinstance(data, dict):
        return {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str)):
            flat[name] = value
    return flat


def _parse_text(text: str, suffix: str) -> Any:
    if suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    return json.loads(text)  # also reads NaN and Infinity, which must reach the NaN verdict


def read_metrics_file(path: str | os.PathLike) -> FileMetrics:
    """One metrics file (JSON, or YAML by suffix) as flat metrics, or Absent with the reason."""
    path = Path(path)
    try:
        raw = _parse_text(path.read_text(encoding="utf-8"), path.suffix)
    except FileNotFoundError:
        return Absent(MISSING, f"{path}: no such file")
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        return Absent(UNREADABLE, f"{path}: {' '.join(str(error).split())}")
    if not isinstance(raw, dict):
        return Absent(UNREADABLE, f"{path}: not a mapping of metrics")
    return flatten(raw)


def read_workspace(files: Sequence[str]) -> Snapshot:
    """The current metrics files in the working tree."""
    return {file: read_metrics_file(file) for file in files}


def _from_dvc_result(file: str, result: Mapping[str, Any]) -> FileMetrics:
    """One file's entry of DVC's metrics show result (live exceptions or --json dicts)."""
    if "error" in result:
        error = result["error"]
        kind = error.get("type", "") if isinstance(error, dict) else type(error).__name__
        text = error.get("msg", kind) if isinstance(error, dict) else str(error) or kind
        verdict = MISSING if kind == "FileNotFoundError" else UNREADABLE
        return Absent(verdict, f"{file}: {' '.join(str(text).split())}")
    return flatten(result.get("data"))


def files_from_dvc(revision: Mapping[str, Any], label: str) -> Snapshot | Absent:
    """Every file of one revision of `metrics show` output, or Absent when the whole revision failed."""
    if "error" in revision and "data" not in revision:
        error = revision["error"]
        text = error.get("msg", error) if isinstance(error, dict) else error
        return Absent(UNREADABLE, f"{label}: {' '.join(str(text).split())}")
    return {name: _from_dvc_result(name, result) for name, result in (revision.get("data") or {}).items()}


def select(found: Snapshot | Absent, files: Sequence[str], where: str) -> Snapshot:
    """The rule files out of what a baseline holds (paths compared normalised)."""
    if isinstance(found, Absent):
        return {file: found for file in files}
    by_path = {os.path.normpath(name): metrics for name, metrics in found.items()}
    return {file: by_path.get(os.path.normpath(file), Absent(MISSING, f"{file}: not in {where}")) for file in files}


def read_revision(rev: str, files: Sequence[str]) -> Snapshot:
    """The rule files at a Git revision (or DVC experiment), through DVC's metrics machinery."""
    from dvc.exceptions import DvcException  # imported here: only this mode needs DVC
    from dvc.repo import Repo
    from dvc.scm import resolve_rev
    from scmrepo.exceptions import SCMError

    try:
        with Repo() as repo:
            sha = resolve_rev(repo.scm, rev)
            targets = [os.path.abspath(file) for file in files]
            shown = repo.metrics.show(targets=targets, revs=[sha], hide_workspace=False, on_error="return")
            root = repo.root_dir
    except (DvcException, SCMError) as error:
        raise UserError(f"--rev {rev}: {' '.join(str(error).split())}") from None
    label = f"revision {rev}"
    found = files_from_dvc(shown.get(sha, {}), label)
    if not isinstance(found, Absent):
        # DVC names files relative to the repository root; the rules name them relative to here.
        found = {os.path.relpath(os.path.join(root, name)): metrics for name, metrics in found.items()}
    return select(found, files, label)


def _read_json_argument(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--baseline {path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"--baseline {path}: not readable JSON: {' '.join(str(error).split())}") from None


def _is_dvc_show(raw: Mapping[str, Any]) -> bool:
    return bool(raw) and all(isinstance(v, dict) and v and set(v) <= {"data", "error"} for v in raw.values())


def _pick_revision(raw: Mapping[str, Any], path: str) -> tuple[str, Mapping[str, Any]]:
    revisions = list(raw) if len(raw) == 1 else [rev for rev in raw if rev != "workspace"]
    if len(revisions) != 1:
        raise UserError(f"--baseline {path}: holds revisions {', '.join(map(repr, raw))}; save just one")
    return revisions[0], raw[revisions[0]]


def baseline_file(path: str) -> Snapshot | Absent:
    """Everything a --baseline FILE holds: `dvc metrics show --json` output or {metrics file: {key: value}}."""
    raw = _read_json_argument(path)
    if not isinstance(raw, dict):
        raise UserError(f"--baseline {path}: expected a JSON object")
    if _is_dvc_show(raw):
        rev, revision = _pick_revision(raw, path)
        return files_from_dvc(revision, f"{path} revision {rev or 'workspace'}")
    if not all(isinstance(metrics, dict) for metrics in raw.values()):
        raise UserError(f"--baseline {path}: expected `dvc metrics show --json` output or "
                        "{metrics file: {key: value}}; for one plain metrics file use TARGET=FILE")
    return {name: flatten(metrics) for name, metrics in raw.items()}


def baseline_target(spec: str) -> Snapshot:
    """A --baseline TARGET=FILE: FILE is a plain metrics JSON, the baseline of TARGET."""
    target, _, path = spec.partition("=")
    if not target or not path:
        raise UserError(f"--baseline {spec}: expected FILE or TARGET=FILE")
    metrics = _read_json_argument(path)
    if not isinstance(metrics, dict):
        raise UserError(f"--baseline {spec}: {path} is not a JSON object of metrics")
    return {target: flatten(metrics)}


def baseline_from_arguments(specs: Sequence[str], files: Sequence[str]) -> Snapshot:
    """Merge every --baseline argument (FILE or TARGET=FILE) and pick the rule files."""
    merged: Snapshot = {}
    failed: Absent | None = None
    for spec in specs:
        found = baseline_target(spec) if "=" in spec and not Path(spec).exists() else baseline_file(spec)
        if isinstance(found, Absent):
            failed = found
            continue
        for name, metrics in found.items():
            if os.path.normpath(name) in merged:
                raise UserError(f"--baseline {spec}: {name} has a baseline already")
            merged[os.path.normpath(name)] = metrics
    picked = select(merged, files, "the --baseline files")
    if failed:  # a saved revision DVC could not read stands for whatever no other file covers
        picked = {file: failed if isinstance(m, Absent) else m for file, m in picked.items()}
    return picked


# --- comparing ---------------------------------------------------------------------------

def _is_nan(value: Any) -> bool:
    return is_number(value) and not math.isfinite(value)


def tolerance(rule: Rule, baseline: Any) -> float:
    """The bad-direction change a rule allows from this baseline value."""
    relative = rule.rel_tol * abs(baseline) if is_number(baseline) and math.isfinite(baseline) else 0.0
    return max(rule.abs_tol, relative)


def _beyond(bad_change: float, allowed: float) -> bool:
    # A change exactly at the tolerance holds, even when float subtraction lands a hair above it.
    return bad_change > allowed and not math.isclose(bad_change, allowed, rel_tol=1e-9, abs_tol=1e-12)


def is_regression(rule: Rule, baseline: Any, current: Any) -> bool:
    """Whether current moved in the bad direction, beyond the tolerance, from baseline."""
    if rule.better == "equal" and not (is_number(baseline) and is_number(current)):
        return baseline != current
    change = current - baseline
    bad_change = {"higher": -change, "lower": change, "equal": abs(change)}[rule.better]
    return _beyond(bad_change, tolerance(rule, baseline))


def _value(metrics: FileMetrics, file: str, key: str) -> Any:
    if isinstance(metrics, Absent):
        return metrics
    if key not in metrics:
        return Absent(MISSING, f"{file}: no key {key!r}")
    return metrics[key]


def verdict(rule: Rule, baseline: Any, current: Any, allow_new: bool = False) -> str:
    """Judge one metric; baseline/current are values or Absent. The first failing check wins."""
    if isinstance(current, Absent):
        return current.verdict
    if _is_nan(current):
        return NAN
    if not rule.gate:
        return REPORT_ONLY
    needs_number = rule.better != "equal" or rule.min is not None or rule.max is not None
    if needs_number and not is_number(current):
        return NOT_NUMERIC
    if rule.min is not None and current < rule.min:
        return BELOW_FLOOR
    if rule.max is not None and current > rule.max:
        return ABOVE_CEILING
    if isinstance(baseline, Absent):
        return NEW if allow_new and baseline.verdict == MISSING else baseline.verdict
    if _is_nan(baseline):
        return NAN
    if needs_number and not is_number(baseline):
        return NOT_NUMERIC
    return REGRESSION if is_regression(rule, baseline, current) else OK


def _fmt(value: Any) -> str:
    if isinstance(value, Absent):
        return value.verdict.lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def describe_change(baseline: Any, current: Any) -> str:
    """current - baseline (and in percent), or 'same'/'changed' for text."""
    if isinstance(baseline, Absent) or isinstance(current, Absent):
        return ""
    if is_number(baseline) and is_number(current):
        change = current - baseline
        if not math.isfinite(change):
            return "nan" if math.isnan(change) else f"{change}"
        if change == 0:
            return "0"
        percent = f" ({change / abs(baseline):+.1%})" if baseline and math.isfinite(baseline) else ""
        return f"{change:+.4g}{percent}"
    return "same" if baseline == current else "changed"


def describe_tolerance(rule: Rule, baseline: Any) -> str:
    """The rule as it applies here: direction, effective tolerance, floor and ceiling."""
    if not rule.gate:
        return "-"
    parts = [rule.better]
    allowed = tolerance(rule, baseline)
    if allowed:
        parts[0] += f" within {allowed:.4g}" if rule.better == "equal" else f" by {allowed:.4g}"
    if rule.min is not None:
        parts.append(f"min {rule.min:g}")
    if rule.max is not None:
        parts.append(f"max {rule.max:g}")
    return ", ".join(parts)


def _seed_values(metrics: FileMetrics, file: str, key: str) -> dict[str, Any] | Absent:
    """{seed: value} of a key over seeds, or Absent."""
    if isinstance(metrics, Absent):
        return metrics
    prefix = key[:-1]
    found = {name[len(prefix):]: value for name, value in metrics.items() if name.startswith(prefix)}
    return found or Absent(MISSING, f"{file}: no key {key!r}")


def seeds_verdict(rule: Rule, baseline: dict[str, Any] | Absent, current: dict[str, Any] | Absent,
                  allow_new: bool = False) -> tuple[str, str]:
    """Judge a key over seeds (see the module's docstring): the verdict and a note (the test's p-value)."""
    from lstm_vs_gru.stats import drop_p_value

    if isinstance(current, Absent):
        return current.verdict, ""
    if any(_is_nan(value) for value in current.values()):
        return NAN, ""
    if not all(is_number(value) for value in current.values()):
        return NOT_NUMERIC, ""
    mean = _mean(current)
    if isinstance(baseline, Absent):
        return verdict(rule, baseline, mean, allow_new), ""
    alone = verdict(rule, Absent(MISSING, ""), mean, allow_new=True)  # report-only, floor and ceiling
    if alone != NEW:
        return alone, ""
    if not all(is_number(value) and not _is_nan(value) for value in baseline.values()):
        return NOT_NUMERIC, "in the baseline"
    missing = [seed for seed in baseline if seed not in current]
    if missing:
        return MISSING_SEED, f"seed {', '.join(missing)} not in the current run"
    seeds = list(baseline)
    p_value = drop_p_value([baseline[s] for s in seeds], [current[s] for s in seeds], rule.better)
    beyond = is_regression(rule, _mean(baseline), _mean(current))
    note = f"p = {p_value:.3g} over {len(seeds)} seeds"
    return (REGRESSION if beyond and p_value < rule.alpha else OK), note


def _mean(values: dict[str, Any]) -> float:
    return float(sum(values.values()) / len(values))


def check_over_seeds(rule: Rule, baseline: Snapshot, current: Snapshot, allow_new: bool = False) -> Row:
    """The table row for a key over seeds: the means, and the verdict of seeds_verdict."""
    old = _seed_values(baseline.get(rule.file, Absent(MISSING, f"{rule.file}: not in the baseline")), rule.file,
                       rule.key)
    new = _seed_values(current.get(rule.file, Absent(MISSING, f"{rule.file}: no such file")), rule.file, rule.key)
    judged, note = seeds_verdict(rule, old, new, allow_new)
    old_mean, new_mean = (value if isinstance(value, Absent) else _mean(value) for value in (old, new))
    notes = [note] * bool(note) + [f"{side} {value.reason}" for side, value in (("baseline", old), ("current", new))
                                   if isinstance(value, Absent) and judged not in PASSING]
    tolerance_text = describe_tolerance(rule, old_mean).replace(rule.better, f"{rule.better} (p < {rule.alpha:g})", 1)
    return Row(rule.file, rule.key, old_mean, new_mean, describe_change(old_mean, new_mean), tolerance_text, judged,
               "; ".join(notes))


def check(rule: Rule, baseline: Snapshot, current: Snapshot, allow_new: bool = False) -> Row:
    """The table row for one rule."""
    if rule.over_seeds:
        return check_over_seeds(rule, baseline, current, allow_new)
    old = _value(baseline.get(rule.file, Absent(MISSING, f"{rule.file}: not in the baseline")), rule.file, rule.key)
    new = _value(current.get(rule.file, Absent(MISSING, f"{rule.file}: no such file")), rule.file, rule.key)
    judged = verdict(rule, old, new, allow_new)
    notes = [f"{side} {value.reason}" for side, value in (("baseline", old), ("current", new))
             if isinstance(value, Absent) and judged not in PASSING]
    return Row(rule.file, rule.key, old, new, describe_change(old, new),
               describe_tolerance(rule, old), judged, "; ".join(notes))


def compare(rules: Sequence[Rule], baseline: Snapshot, current: Snapshot, allow_new: bool = False) -> list[Row]:
    """One row per rule, in rules order."""
    return [check(rule, baseline, current, allow_new) for rule in rules]


def failures(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row.verdict not in PASSING]


def _fingerprint(metrics: FileMetrics | None) -> str | None:
    if metrics is None or isinstance(metrics, Absent):
        return None
    value = metrics.get(CORPUS_KEY)
    return value if isinstance(value, str) else None


def check_corpus(baseline: FileMetrics | None, current: FileMetrics | None, baseline_label: str,
                 other_corpus: bool = False) -> str | None:
    """None when both sides ran on one corpus (or neither says); else a warning line. Two different
    corpora raise UserError unless other_corpus."""
    old, new = _fingerprint(baseline), _fingerprint(current)
    if old == new:
        return None
    if old is None or new is None:
        side = baseline_label if old is None else "the workspace"
        return (f"gate: warning: {side} has no corpus fingerprint ({CORPUS_METRICS} {CORPUS_KEY}): "
                "cannot tell whether both ran on the same corpus")
    message = (f"{CORPUS_METRICS}: the workspace's corpus ({new[:12]}) is not {baseline_label}'s ({old[:12]}): "
               "metrics of different corpora")
    if not other_corpus:
        raise UserError(f"{message}; pass --other-corpus to compare them anyway")
    return f"gate: warning: {message}, compared anyway (--other-corpus)"


# --- output ------------------------------------------------------------------------------

COLUMNS = ("file", "key", "baseline", "current", "change", "tolerance", "verdict")


def render_table(rows: Sequence[Row], baseline_label: str) -> str:
    """A plain-text table, the notes of failing rows, and a one-line summary."""
    cells = [COLUMNS] + [tuple(_fmt(getattr(row, column)) for column in COLUMNS) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    # A missing file fails every key it should hold: say why once.
    lines += [f"  {note}" for note in dict.fromkeys(row.note for row in rows if row.note)]
    lines.append(summary(rows, baseline_label))
    return "\n".join(lines)


def summary(rows: Sequence[Row], baseline_label: str) -> str:
    failed = failures(rows)
    if not failed:
        return f"gate: passed, {len(rows)} metrics hold against {baseline_label}"
    counts = {v: sum(row.verdict == v for row in failed) for v in dict.fromkeys(row.verdict for row in failed)}
    detail = ", ".join(f"{n} {v}" for v, n in counts.items())
    return f"gate: FAILED, {len(failed)} of {len(rows)} metrics against {baseline_label} ({detail})"


def _json_value(value: Any) -> Any:
    if isinstance(value, Absent):
        return None  # the row's verdict and note say why
    return str(value) if _is_nan(value) else value  # strict JSON has no NaN


def render_json(rows: Sequence[Row], baseline_label: str) -> str:
    """The rows for machines: {"baseline", "passed", "rows": [{file, key, baseline, current, ...}]}."""
    listed = [dict(asdict(row), baseline=_json_value(row.baseline), current=_json_value(row.current)) for row in rows]
    return json.dumps({"baseline": baseline_label, "passed": not failures(rows), "rows": listed}, indent=2)


# --- command line ------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    prog = SCRIPT if Path(sys.argv[0]).name == SCRIPT else "python -m lstm_vs_gru.cli.gate"
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--rev", default=None, help="Git revision or DVC experiment to compare with (default HEAD)")
    source.add_argument("--baseline", action="append", metavar="FILE|TARGET=FILE",
                        help="baseline from `dvc metrics show --json` output, a {file: {key: value}} JSON, "
                             "or a plain metrics JSON for one TARGET; repeatable")
    parser.add_argument("--rules", default=str(RULES), help="rules file (default gate.yaml)")
    parser.add_argument("--allow-new", action="store_true", help="a metric absent from the baseline passes as 'new'")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--other-corpus", action="store_true",
                        help=f"compare even when {CORPUS_METRICS} says the corpora differ (a warning, not an error)")
    return parser


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> int:
    """Compare, print, and return 0 (all hold) or 1 (any failure); bad input exits 2."""
    args = _parser().parse_args(argv)
    rules = load_rules(args.rules)
    files = rule_files(rules)
    wanted = [*files, CORPUS_METRICS] if CORPUS_METRICS not in files else files
    if args.baseline:
        baseline, label = baseline_from_arguments(args.baseline, wanted), " ".join(args.baseline)
    else:
        rev = args.rev or "HEAD"
        baseline, label = read_revision(rev, wanted), rev
    current = read_workspace(wanted)
    warning = check_corpus(baseline.get(CORPUS_METRICS), current.get(CORPUS_METRICS), label, args.other_corpus)
    if warning:
        print(warning, file=sys.stderr)
    rows = compare(rules, baseline, current, args.allow_new)
    print(render_json(rows, label) if args.json else render_table(rows, label))
    return 1 if failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
