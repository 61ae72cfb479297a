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
    decision_curve,
    expected_calibration_error,
    fit_temperature,
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
