"""Paired comparisons, McNemar, learning-curve summaries and the clinical report."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from medtl.metrics import (
    ClinicalReport,
    MetricInputError,
    choose_threshold,
    clinical_report,
    compare_paired,
    learning_curve_summary,
    mcnemar_test,
)


def _data(seed: int, n: int, shift: float = 1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2], y[2:4] = 0, 1
    p = special.expit(rng.normal(size=n) + shift * y - 0.5)
    return rng, y, p


# --- McNemar -------------------------------------------------------------------------------


def test_mcnemar_exact_matches_hand_count_and_binomtest():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
    res = mcnemar_test(a, b)
    # Hand count: A right & B wrong at indices 1, 2, 3, 9 -> 4; A wrong & B right at 5 -> 1.
    assert (res["b"], res["c"], res["n_discordant"]) == (4, 1, 5)
    assert res["method"] == "exact binomial"
    assert res["p_value"] == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)
    assert res["p_value"] == pytest.approx(0.375)  # 2 * (1 + 5) / 32


def test_mcnemar_chi_square_with_continuity_correction():
    a = np.array([True] * 30 + [False] * 10 + [True] * 50)
    b = np.array([False] * 30 + [True] * 10 + [True] * 50)
    res = mcnemar_test(a, b)
    assert (res["b"], res["c"]) == (30, 10)
    assert res["method"].startswith("chi-square")
    assert res["statistic"] == pytest.approx((20 - 1) ** 2 / 40)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(9.025, 1))


def test_mcnemar_no_discordant_pairs():
    assert mcnemar_test([1, 0, 1], [1, 0, 1])["p_value"] == 1.0


# --- compare_paired ------------------------------------------------------------------------


def test_compare_same_model_twice():
    _, y, p = _data(0, 200)
    res = compare_paired(y, p, p, n_boot=200)
    assert res["diff"] == 0.0
    assert res["delong"]["p_value"] == 1.0
    assert res["bootstrap"]["p_value"] == 1.0
    assert res["mcnemar"]["p_value"] == 1.0
    assert "same AUROC" in res["summary"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compare_clearly_better_model(seed):
    rng, y, p = _data(seed, 300, shift=2.5)
    noise = rng.random(y.size)
    res = compare_paired(y, p, noise, n_boot=500, seed=seed)
    assert res["diff"] > 0.2
    assert res["delong"]["p_value"] < 1e-4
    assert res["bootstrap"]["p_value"] < 0.01
    assert 0 < res["bootstrap"]["low"] < res["diff"] < res["bootstrap"]["high"]
    assert res["delong"]["low"] > 0
    assert res["mcnemar"]["accuracy_a"] > res["mcnemar"]["accuracy_b"]
    assert res["summary"].startswith("Model A's AUROC is higher than Model B's by ")
    assert "95% CI" in res["summary"] and "DeLong p" in res["summary"]
    # Swapping the models flips the sign and the sentence, not the evidence.
    swapped = compare_paired(y, noise, p, n_boot=200, name_a="Scratch", name_b="Fine-tuning")
    assert swapped["diff"] == pytest.approx(-res["diff"])
    assert swapped["summary"].startswith("Fine-tuning's AUROC is higher than Scratch's")


def test_compare_mcnemar_counts_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0])
    pa = np.array([0.1, 0.6, 0.7, 0.8, 0.4, 0.2])
    pb = np.array([0.7, 0.3, 0.2, 0.9, 0.6, 0.1])
    res = compare_paired(y, pa, pb, threshold_a=0.5, threshold_b=0.5, n_boot=50)
    # A correct: T F T T F T; B correct: F T F T T T -> b (A only) = 2, c (B only) = 2.
    assert (res["mcnemar"]["b"], res["mcnemar"]["c"]) == (2, 2)


def test_compare_one_class_and_bad_input():
    with pytest.warns(RuntimeWarning, match="only one class"):
        res = compare_paired([1, 1, 1], [0.2, 0.5, 0.9], [0.3, 0.4, 0.8], n_boot=50)
    assert math.isnan(res["diff"]) and "cannot be compared" in res["summary"]
    with pytest.raises(MetricInputError, match="'p_b'"):
        compare_paired([0, 1], [0.2, 0.8], [0.5])


# --- learning curves -----------------------------------------------------------------------


def test_learning_curve_summary():
    s = learning_curve_summary([0.6, 0.7, 0.8, 0.85, 0.84], seconds=[10, 10, 10, 10, 10])
    assert s["start"] == 0.6
    assert s["slope"] == pytest.approx(0.1)
    assert s["asymptote"] == 0.85 and s["best_epoch"] == 4
    assert s["slope_per_second"] == pytest.approx(0.01)
    assert s["seconds_to_best"] == 40 and s["total_seconds"] == 50
    one = learning_curve_summary([0.7])
    assert np.isnan(one["slope"]) and one["asymptote"] == 0.7 and one["best_epoch"] == 1
    assert learning_curve_summary([0.5, 0.9], k=5)["slope"] == pytest.approx(0.4)
    with pytest.raises(MetricInputError, match="values_per_epoch"):
        learning_curve_summary([])
    with pytest.raises(MetricInputError, match="'seconds'"):
        learning_curve_summary([0.5, 0.6], seconds=[1.0])


# --- clinical report -----------------------------------------------------------------------


def test_clinical_report_uses_validation_threshold_and_is_json_safe():
    _, y, p = _data(3, 400)
    yv, pv, yt, pt = y[:200], p[:200], y[200:], p[200:]
    rep = clinical_report(
        yt, pt, y_val=yv, p_val=pv, rule="sensitivity", target=0.9, prevalence=0.05
    )
    assert isinstance(rep, ClinicalReport)
    assert rep.threshold == choose_threshold(yv, pv, rule="sensitivity", target=0.9)
    assert rep.threshold_source == "validation"
    assert rep.n == 200 and rep.n_pos == int(yt.sum())
    assert rep.operating_point["deployment_prevalence"] == 0.05
    assert rep.auroc["low"] < rep.auroc["auroc"] < rep.auroc["high"]
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert (
        json.loads(text)["calibration"]["reliability"]["count"]
        == rep.calibration["reliability"]["count"]
    )
    assert "AUROC" in rep.summary() and "deployment prevalence" in rep.summary()


def test_clinical_report_without_validation_warns_and_records_source():
    _, y, p = _data(4, 120)
    with pytest.warns(UserWarning, match="optimistic"):
        rep = clinical_report(y, p)
    assert rep.threshold_source == "test (no validation split given; optimistic)"
    assert any("optimistic" in w for w in rep.warnings)


def test_clinical_report_one_class_test_never_crashes():
    _, y, p = _data(5, 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = clinical_report(np.zeros(30, int), p[:30], y_val=y, p_val=p)
    assert any("AUROC undefined" in str(w.message) for w in caught)
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["auroc"]["auroc"] is None
    assert d["operating_point"]["sensitivity"] is None
    assert d["calibration"]["brier"] is not None


def test_clinical_report_temperature_scaling():
    rng = np.random.default_rng(6)
    s = rng.normal(scale=1.5, size=3000)
    y = (rng.random(3000) < special.expit(s)).astype(int)
    p = special.expit(3.0 * s)  # overconfident
    rep = clinical_report(
        y[1000:],
        p[1000:],
        y_val=y[:1000],
        p_val=p[:1000],
        temperature=True,
        ci_method="bootstrap",
        n_boot=200,
    )
    assert rep.temperature == pytest.approx(3.0, rel=0.25)
    assert rep.calibrated is not None
    assert rep.calibrated["ece"] < rep.calibration["ece"]
    assert rep.auroc["method"] == "bootstrap"
    with pytest.warns(UserWarning, match="temperature=True needs a validation split"):
        rep2 = clinical_report(y, p, rule="fixed", target=0.5, temperature=True)
    assert rep2.temperature is None and rep2.threshold_source == "fixed"


def test_clinical_report_bad_arguments():
    with pytest.raises(MetricInputError, match="'y_val' and 'p_val'"):
        clinical_report([0, 1], [0.2, 0.8], y_val=[0, 1])
    with pytest.raises(MetricInputError, match="'y_test' and 'p_test' must have the same length"):
        clinical_report([0, 1, 1], [0.2, 0.8])
