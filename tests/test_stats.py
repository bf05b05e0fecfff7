"""lstm_vs_gru.stats: the intervals and tests are SciPy's, and the verdict sentence follows the numbers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lstm_vs_gru import stats

LSTM = [0.4614, 0.4495, 0.4712, 0.4388, 0.4561]


def test_summary_is_the_t_interval_of_the_mean():
    result = stats.summary(LSTM)
    mean, sem = np.mean(LSTM), scipy_stats.sem(LSTM)
    low, high = scipy_stats.t.interval(0.95, len(LSTM) - 1, loc=mean, scale=sem)
    assert result["n"] == 5 and result["mean"] == pytest.approx(mean, abs=1e-6)
    assert result["std"] == pytest.approx(np.std(LSTM, ddof=1), abs=1e-6)
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_one_seed_has_no_spread():
    assert stats.summary([0.5]) == {"n": 1, "mean": 0.5, "std": None, "ci_low": None, "ci_high": None}
    difference = stats.paired_difference([0.4], [0.5])
    assert difference["p_value"] is None
    assert "from one seed: no uncertainty" in stats.verdict(("LSTM", "GRU"), difference, "test accuracy")


def test_paired_difference_is_scipy_s_paired_test():
    gru = [0.5137, 0.5259, 0.5021, 0.4987, 0.5302]
    result = stats.paired_difference(LSTM, gru)
    assert result["p_value"] == pytest.approx(scipy_stats.ttest_rel(gru, LSTM).pvalue, abs=1e-6)
    assert result["mean"] == pytest.approx(np.mean(np.subtract(gru, LSTM)), abs=1e-6)


def test_the_verdict_names_the_better_cell_when_the_interval_excludes_zero():
    gru = [value + delta for value, delta in zip(LSTM, [0.05, 0.04, 0.06, 0.05, 0.045])]
    sentence = stats.verdict(("LSTM", "GRU"), stats.paired_difference(LSTM, gru), "test accuracy")
    assert sentence.startswith("GRU better than LSTM in test accuracy by 0.049 ± 0.")
    assert "p < 0.001, 5 seeds." in sentence
    worse = [value - 0.05 for value in LSTM]
    assert stats.verdict(("LSTM", "GRU"), stats.paired_difference(LSTM, worse), "test accuracy").startswith(
        "LSTM better than GRU")


def test_the_verdict_says_no_difference_when_the_seeds_disagree():
    gru = [value + delta for value, delta in zip(LSTM, [0.03, -0.02, 0.01, -0.03, 0.015])]
    difference = stats.paired_difference(LSTM, gru)
    assert difference["p_value"] >= 0.05 and difference["ci_low"] < 0 < difference["ci_high"]
    assert stats.verdict(("LSTM", "GRU"), difference, "test accuracy").startswith(
        "No difference in test accuracy detectable at this budget: GRU − LSTM = +0.001 ± ")


def test_drop_p_value_is_one_sided_and_paired():
    assert stats.drop_p_value(LSTM, [v - 0.05 for v in LSTM], "higher") < 0.001
    assert stats.drop_p_value(LSTM, [v + 0.05 for v in LSTM], "higher") > 0.999
    assert stats.drop_p_value(LSTM, LSTM, "higher") == 1.0
    assert stats.drop_p_value([1.0, 1.1], [1.2, 1.3], "lower") == 0.0  # every seed's loss up by the same 0.2
