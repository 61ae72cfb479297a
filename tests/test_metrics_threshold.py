"""Thresholds, operating points, Wilson intervals and Bayes-rule PPV/NPV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix

from medtl.errors import ConfigError
from medtl.metrics import MetricInputError, choose_threshold, operating_point, wilson_ci


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (47, 120), (1, 1)])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_wilson_matches_scipy(k, n, alpha):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
    lo, hi = wilson_ci(k, n, alpha)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_empty_is_nan():
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_operating_point_counts_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    op = operating_point(y, p, 0.5)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5).ravel()
    assert (op["tn"], op["fp"], op["fn"], op["tp"]) == (tn, fp, fn, tp)
    assert op["confusion"] == [[tn, fp], [fn, tp]]
    assert op["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert op["specificity"] == pytest.approx(tn / (tn + fp))
    assert op["sensitivity_low"] < op["sensitivity"] < op["sensitivity_high"]
    assert op["lr_pos"] == pytest.approx(op["sensitivity"] / (1 - op["specificity"]))
    assert op["lr_neg"] == pytest.approx((1 - op["sensitivity"]) / op["specificity"])
    assert op["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert op["accuracy"] == pytest.approx((tp + tn) / 200)


def test_bayes_ppv_equals_empirical_at_test_prevalence():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random(300), 0, 1)
    prev = y.mean()
    op = operating_point(y, p, 0.45, prevalence=prev)
    assert op["ppv_at_prevalence"] == pytest.approx(op["ppv"])
    assert op["npv_at_prevalence"] == pytest.approx(op["npv"])
    # A rarer disease in deployment lowers PPV and raises NPV.
    rare = operating_point(y, p, 0.45, prevalence=0.02)
    assert rare["ppv_at_prevalence"] < op["ppv"]
    assert rare["npv_at_prevalence"] > op["npv"]
    assert math.isnan(operating_point(y, p, 0.45)["ppv_at_prevalence"])


def test_operating_point_threshold_is_inclusive_and_one_class_is_nan():
    op = operating_point([0, 1], [0.5, 0.5], 0.5)
    assert op["tp"] == 1 and op["fp"] == 1
    one = operating_point([0, 0, 0], [0.1, 0.6, 0.7], 0.5)
    assert math.isnan(one["sensitivity"]) and one["specificity"] == pytest.approx(1 / 3)
    perfect = operating_point([0, 1], [0.1, 0.9], 0.5)
    assert perfect["lr_pos"] == math.inf and perfect["lr_neg"] == 0.0


def test_choose_threshold_rules():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    t = choose_threshold(y, p, rule="youden")
    op = operating_point(y, p, t)
    best = max(
        operating_point(y, p, c)["sensitivity"] + operating_point(y, p, c)["specificity"] for c in p
    )
    assert op["sensitivity"] + op["specificity"] == pytest.approx(best)
    # Highest threshold with sensitivity >= 0.75 is 0.7 (3 of 4 positives at >= 0.7).
    assert choose_threshold(y, p, rule="sensitivity", target=0.75) == pytest.approx(0.7)
    assert choose_threshold(y, p, rule="sensitivity", target=1.0) == pytest.approx(0.4)
    # Lowest threshold with specificity >= 1.0 is 0.7 (0.6 is a negative).
    assert choose_threshold(y, p, rule="specificity", target=1.0) == pytest.approx(0.7)
    assert choose_threshold(y, p, rule="specificity", target=0.75) == pytest.approx(0.4)
    assert choose_threshold(y, p, rule="fixed", target=0.33) == 0.33


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sensitivity_rule_meets_target_on_validation(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=120)
    y[:2] = [0, 1]
    p = np.clip(0.25 * y + 0.75 * rng.random(120), 0, 1)
    t = choose_threshold(y, p, rule="sensitivity", target=0.9)
    assert operating_point(y, p, t)["sensitivity"] >= 0.9
    # Any higher score as threshold misses the target.
    higher = p[p > t]
    if higher.size:
        assert operating_point(y, p, higher.min())["sensitivity"] < 0.9
    ts = choose_threshold(y, p, rule="specificity", target=0.9)
    assert operating_point(y, p, ts)["specificity"] >= 0.9


def test_specificity_rule_when_top_score_is_negative():
    y = np.array([1, 0])
    p = np.array([0.3, 0.9])
    t = choose_threshold(y, p, rule="specificity", target=1.0)
    assert t > 0.9 and math.isfinite(t)
    assert operating_point(y, p, t)["specificity"] == 1.0


def test_choose_threshold_errors_and_one_class():
    with pytest.raises(MetricInputError, match="needs a 'target'"):
        choose_threshold([0, 1], [0.2, 0.8], rule="sensitivity")
    with pytest.raises(ConfigError, match="Did you mean 'youden'"):
        choose_threshold([0, 1], [0.2, 0.8], rule="youdon")
    with pytest.raises(ConfigError, match="'target'"):
        choose_threshold([0, 1], [0.2, 0.8], rule="sensitivity", target=1.5)
    with pytest.warns(RuntimeWarning, match="only one class present in y_val"):
        assert choose_threshold([1, 1], [0.2, 0.8]) == 0.5


def test_operating_point_bad_prevalence():
    with pytest.raises(ConfigError, match="'prevalence'"):
        operating_point([0, 1], [0.2, 0.8], 0.5, prevalence=1.2)
