"""Statistics over seeds, from SciPy: a metric's mean with its 95% interval, the paired difference between
two cells trained with the same seeds (the same initial draws, batches and dropout masks), the verdict
sentence, and the gate's one-sided paired test of a baseline against a new run."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SIGNIFICANCE = 1.0 - CONFIDENCE  # the verdict's two-sided level, matching the interval it prints
DIGITS = 6


def _rounded(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), DIGITS)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, standard deviation (n - 1) and the t interval of the mean; no spread from one value."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return {"n": len(data), "mean": _rounded(mean), "std": None, "ci_low": None, "ci_high": None}
    std = float(data.std(ddof=1))
    low, high = stats.t.interval(CONFIDENCE, len(data) - 1, loc=mean, scale=std / math.sqrt(len(data))) \
        if std > 0 else (mean, mean)
    return {"n": len(data), "mean": _rounded(mean), "std": _rounded(std), "ci_low": _rounded(low),
            "ci_high": _rounded(high)}


def paired_difference(first: Sequence[float], second: Sequence[float]) -> dict[str, float | int | None]:
    """second - first per seed: summary() of the differences and the two-sided paired t-test's p-value."""
    difference = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)
    result = summary(difference)
    result["p_value"] = _rounded(_paired_p(difference, "two-sided")) if len(difference) >= 2 else None
    return result


def _paired_p(difference: np.ndarray, alternative: str) -> float:
    """ttest_rel's p-value from the differences; where they are all equal (no spread beyond float rounding of
    6-digit metrics), the limit SciPy leaves undefined: 0 where they point the tested way, else 1."""
    if np.allclose(difference, difference[0], rtol=0.0, atol=1e-9):
        toward = {"two-sided": difference[0] != 0, "less": difference[0] < 0, "greater": difference[0] > 0}
        return 0.0 if toward[alternative] else 1.0
    return float(stats.ttest_1samp(difference, 0.0, alternative=alternative).pvalue)


def drop_p_value(baseline: Sequence[float], current: Sequence[float], better: str) -> float:
    """One-sided paired test, seed by seed, that `current` is worse than `baseline` (lower where higher is
    better): small when every seed moved the bad way by more than the seeds' spread explains."""
    difference = np.asarray(current, dtype=float) - np.asarray(baseline, dtype=float)
    return _paired_p(difference, "less" if better == "higher" else "greater")


def verdict(names: tuple[str, str], difference: Mapping[str, float | int | None], metric: str) -> str:
    """One sentence from the paired difference names[1] - names[0] of `metric` over seeds."""
    n, mean = difference["n"], difference["mean"]
    if n is None or n < 2 or difference["p_value"] is None:
        return f"{names[1]} − {names[0]} {metric}: {mean:+.3f} from one seed: no uncertainty to judge it by."
    half_width = (difference["ci_high"] - difference["ci_low"]) / 2
    shown = f"{abs(mean):.3f} ± {half_width:.3f} (95% interval), {_p_text(difference['p_value'])}, {n} seeds"
    if difference["p_value"] >= SIGNIFICANCE:
        return (f"No difference in {metric} detectable at this budget: {names[1]} − {names[0]} = {mean:+.3f} "
                f"± {half_width:.3f} (95% interval), {_p_text(difference['p_value'])}, {n} seeds.")
    better, worse = (names[1], names[0]) if mean > 0 else (names[0], names[1])
    return f"{better} better than {worse} in {metric} by {shown}."


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
