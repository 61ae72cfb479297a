"""Calibration metrics, temperature scaling and decision curves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from medtl.metrics import (
    MetricInputError,
    apply_temperature,
    brier,
    calibration_slope_intercept,
    decision_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_curve,
)


def _calibrated(seed: int, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)
    return y, p


def test_brier_matches_sklearn_and_handles_one_class():
    y, p = _calibrated(0, 500)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))
    assert brier([0, 0], [0.2, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_ece_small_when_calibrated_large_when_overconfident(seed):
    y, p = _calibrated(seed)
    assert expected_calibration_error(y, p) < 0.03
    over = special.expit(4 * special.logit(p))
    assert expected_calibration_error(y, over) > 0.1


def test_ece_hand_computed():
    # Bin [0.2,0.3): preds .25,.25, outcomes 0,1 -> gap 0.25; bin [0.9,1]: pred 1.0, outcome 1 -> 0.
    y = np.array([0, 1, 1])
    p = np.array([0.25, 0.25, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx(2 / 3 * 0.25)


def test_reliability_curve_matches_sklearn_on_nonempty_bins():
    y, p = _calibrated(2, 3000)
    p = p**2  # leave the top bins sparse
    curve = reliability_curve(y, p, n_bins=10)
    assert len(curve["bin_mid"]) == 10 and sum(curve["count"]) == 3000
    frac_ref, mean_ref = calibration_curve(y, p, n_bins=10, strategy="uniform")
    nonempty = np.array(curve["count"]) > 0
    np.testing.assert_allclose(np.array(curve["frac_pos"])[nonempty], frac_ref)
    np.testing.assert_allclose(np.array(curve["mean_pred"])[nonempty], mean_ref)
    assert curve["bin_mid"][0] == pytest.approx(0.05)


def test_reliability_curve_empty_bins_are_nan():
    curve = reliability_curve([0, 1], [0.05, 0.95], n_bins=5)
    assert curve["count"] == [1, 0, 0, 0, 1]
    assert np.isnan(curve["frac_pos"][2])


def _overconfident_logits(seed: int, t_true: float, n: int = 20000):
    rng = np.random.default_rng(seed)
    s = rng.normal(scale=1.5, size=n)
    y = (rng.random(n) < special.expit(s)).astype(int)
    return y, t_true * s


@pytest.mark.parametrize("t_true", [0.5, 3.0])
def test_temperature_recovers_true_temperature(t_true):
    y, z = _overconfident_logits(3, t_true)
    t = fit_temperature(y, z)
    assert t == pytest.approx(t_true, rel=0.1)
    # Same answer from probabilities instead of logits.
    assert fit_temperature(y, special.expit(z)) == pytest.approx(t, rel=1e-3)


def test_temperature_reduces_nll_and_keeps_ranking():
    y, z = _overconfident_logits(4, 3.0, n=4000)
    p_raw = special.expit(z)
    t = fit_temperature(y, z, kind="logits")
    p_cal = apply_temperature(z, t, kind="logits")
    assert log_loss(y, p_cal) < log_loss(y, p_raw)
    assert expected_calibration_error(y, p_cal) < expected_calibration_error(y, p_raw)
    assert np.array_equal(np.argsort(p_cal), np.argsort(p_raw))
    np.testing.assert_allclose(apply_temperature(p_raw, t), p_cal, rtol=1e-6)


def test_temperature_multiclass():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(6000, 3)) * 1.5
    prob = special.softmax(s, axis=1)
    y = np.array([rng.choice(3, p=row) for row in prob])
    t = fit_temperature(y, 2.0 * s)
    assert t == pytest.approx(2.0, rel=0.15)
    out = apply_temperature(2.0 * s, t)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_temperature_edge_cases():
    with pytest.warns(RuntimeWarning, match="only one class present in y_val"):
        assert fit_temperature([1, 1, 1], [0.2, 0.9, 0.6]) == 1.0
    with pytest.raises(MetricInputError, match="'temperature' must be a finite number > 0"):
        apply_temperature([0.2, 0.4], 0.0)
    with pytest.raises(MetricInputError, match="same length; got 2 and 3"):
        fit_temperature([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match="kind='logits'"):
        fit_temperature([0, 1], [-2.0, 3.0], kind="probabilities")


def test_decision_curve_treat_all_formula_and_net_benefit():
    y, p = _calibrated(6, 1000)
    dc = decision_curve(y, p)
    t = np.asarray(dc["threshold"])
    prev = y.mean()
    np.testing.assert_allclose(dc["treat_all"], prev - (1 - prev) * t / (1 - t))
    assert dc["treat_none"] == [0.0] * 99
    i = int(np.argmin(np.abs(t - 0.3)))
    pred = p >= t[i]
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    assert dc["net_benefit"][i] == pytest.approx(tp / 1000 - fp / 1000 * t[i] / (1 - t[i]))
    # A calibrated model beats both default strategies at moderate thresholds.
    assert dc["net_benefit"][i] > max(dc["treat_all"][i], 0.0)
    # A model that calls everyone positive is the treat-all strategy.
    everyone = decision_curve(y, np.ones_like(p), thresholds=[0.2, 0.5])
    np.testing.assert_allclose(everyone["net_benefit"], everyone["treat_all"])


def test_decision_curve_bad_thresholds():
    with pytest.raises(MetricInputError, match="strictly between 0 and 1"):
        decision_curve([0, 1], [0.2, 0.8], thresholds=[0.0, 0.5])


# -- calibration slope / intercept, bins chosen from n, decision curve at a deployment prevalence ----
def _logistic(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from true risks expit(lp): the true slope is 1 and the intercept 0."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(0.0, 1.5, n)
    return (rng.random(n) < special.expit(lp)).astype(int), lp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_slope_and_intercept_recover_known_miscalibration(seed):
    y, lp = _logistic(seed, 3000)
    ok = calibration_slope_intercept(y, special.expit(lp))
    assert ok["slope_low"] < 1.0 < ok["slope_high"]
    assert ok["intercept_low"] < 0.0 < ok["intercept_high"]
    # overconfident (logits doubled): slope 1/2, and the interval excludes 1
    over = calibration_slope_intercept(y, special.expit(2 * lp))
    assert over["slope"] == pytest.approx(0.5, abs=0.06)
    assert over["slope_high"] < 1.0
    # risks shifted up by 1 logit: the model over-predicts, intercept about -1
    high = calibration_slope_intercept(y, special.expit(lp + 1))
    assert high["intercept"] == pytest.approx(-1.0, abs=0.15)
    assert high["intercept_high"] < 0


def test_calibration_slope_undefined_cases_are_nan_with_a_warning():
    r = calibration_slope_intercept([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isnan(r["slope"]) and np.isfinite(r["intercept"]) and "separate" in r["note"]
    with pytest.warns(RuntimeWarning, match="one class"):
        assert np.isnan(calibration_slope_intercept([1, 1], [0.2, 0.7])["intercept"])


@pytest.mark.parametrize(("n", "bins"), [(10, 3), (30, 3), (150, 5), (299, 10), (5000, 10)])
def test_reliability_bins_follow_n(n, bins):
    assert reliability_bins(n) == bins
    y, p = _calibrated(0, n)
    assert len(reliability_curve(y, p, "auto", strategy="quantile")["count"]) == bins


def test_quantile_reliability_matches_sklearn_and_counts_add_up():
    y, p = _calibrated(3, 400)
    curve = reliability_curve(y, p, 5, strategy="quantile")
    frac_ref, mean_ref = calibration_curve(y, p, n_bins=5, strategy="quantile")
    np.testing.assert_allclose(curve["frac_pos"], frac_ref)
    np.testing.assert_allclose(curve["mean_pred"], mean_ref)
    assert sum(curve["count"]) == 400 and max(curve["count"]) - min(curve["count"]) <= 1
    assert all(
        lo <= f <= hi for lo, f, hi in zip(curve["frac_low"], curve["frac_pos"], curve["frac_high"])
    )


def test_decision_curve_at_deployment_prevalence():
    y, p = _calibrated(4, 2000)
    own = decision_curve(y, p)
    same = decision_curve(y, p, prevalence=float(np.mean(y)))
    np.testing.assert_allclose(same["net_benefit"], own["net_benefit"], atol=1e-12)
    rare = decision_curve(y, p, thresholds=[0.1, 0.3], prevalence=0.05)
    assert rare["prevalence_source"] == "deployment" and rare["prevalence"] == 0.05
    assert rare["treat_all"][0] == pytest.approx(0.05 - 0.95 * 0.1 / 0.9)
    # rarer disease: less to gain from acting on anyone
    assert rare["net_benefit"][0] < own["net_benefit"][9]
