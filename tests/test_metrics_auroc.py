"""AUROC, DeLong, bootstrap, AUPRC and one-vs-rest AUROC against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medtl.errors import ConfigError
from medtl.metrics import (
    MetricInputError,
    auprc,
    auroc_ci,
    delong_placements,
    delong_test,
    multiclass_auroc,
)


def _scores(rng: np.random.Generator, n: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 0, 1  # both classes, always
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * y)))
    return y, p


def test_delong_hand_computed_small_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # Placement values by hand: positives .35 beats {.1} of {.1,.4} -> 0.5, .8 beats both -> 1.
    v10 = np.array([0.5, 1.0])
    # Negatives: .1 is beaten by both positives -> 1, .4 only by .8 -> 0.5.
    v01 = np.array([1.0, 0.5])
    var = np.var(v10, ddof=1) / 2 + np.var(v01, ddof=1) / 2
    assert var == pytest.approx(0.125)
    auc, pv10, pv01 = delong_placements(y, p)
    np.testing.assert_allclose(auc, [0.75])
    np.testing.assert_allclose(pv10[0], v10)
    np.testing.assert_allclose(pv01[0], v01)
    res = auroc_ci(y, p)
    assert res["auroc"] == pytest.approx(0.75)
    assert res["se"] == pytest.approx(math.sqrt(var))
    assert 0.0 <= res["low"] < 0.75 < res["high"] <= 1.0
    assert (res["n_pos"], res["n_neg"], res["method"]) == (2, 2, "delong")


def test_delong_placements_handle_ties():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.5, 0.5, 0.2, 0.9, 0.2])
    auc, v10, v01 = delong_placements(y, p)
    assert auc[0] == pytest.approx(roc_auc_score(y, p))
    assert v10.mean() == pytest.approx(auc[0])
    assert v01.mean() == pytest.approx(auc[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_point_matches_sklearn(seed):
    y, p = _scores(np.random.default_rng(seed), 150)
    ref = roc_auc_score(y, p)
    assert auroc_ci(y, p)["auroc"] == pytest.approx(ref)
    assert auroc_ci(y, p, method="bootstrap", n_boot=200)["auroc"] == pytest.approx(ref)
    assert auprc(y, p) == pytest.approx(average_precision_score(y, p))


def test_delong_se_agrees_with_large_bootstrap():
    y, p = _scores(np.random.default_rng(7), 400, shift=1.2)
    d = auroc_ci(y, p)
    b = auroc_ci(y, p, method="bootstrap", n_boot=4000, seed=3)
    assert b["se"] == pytest.approx(d["se"], rel=0.10)
    assert b["low"] == pytest.approx(d["low"], abs=0.02)
    assert b["high"] == pytest.approx(d["high"], abs=0.02)
    assert b["low"] < b["auroc"] < b["high"]


def test_bootstrap_is_reproducible_with_seed():
    y, p = _scores(np.random.default_rng(0), 80)
    a = auroc_ci(y, p, method="bootstrap", n_boot=300, seed=5)
    b = auroc_ci(y, p, method="bootstrap", n_boot=300, seed=5)
    assert (a["low"], a["high"]) == (b["low"], b["high"])


def test_perfect_separation_ci_stays_in_unit_interval():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    res = auroc_ci(y, p)
    assert res["auroc"] == 1.0
    assert 0.0 <= res["low"] <= res["high"] <= 1.0


def test_ci_narrows_with_more_data():
    rng = np.random.default_rng(11)
    small = auroc_ci(*_scores(rng, 60))
    large = auroc_ci(*_scores(rng, 2000))
    assert (large["high"] - large["low"]) < (small["high"] - small["low"])


@pytest.mark.parametrize("method", ["delong", "bootstrap"])
def test_one_class_gives_nan_and_warning(method):
    with pytest.warns(
        RuntimeWarning, match=r"only one class present in y \(all 0\): AUROC undefined"
    ):
        res = auroc_ci([0, 0, 0], [0.1, 0.5, 0.9], method=method)
    assert math.isnan(res["auroc"]) and math.isnan(res["low"])
    with pytest.warns(RuntimeWarning, match="all 1"):
        assert math.isnan(auprc([1, 1], [0.2, 0.3]))


def test_bad_input_raises_clear_errors():
    with pytest.raises(MetricInputError, match=r"same length; got 3 and 2"):
        auroc_ci([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ConfigError, match=r"'p' contains 1 NaN"):
        auroc_ci([0, 1], [0.1, float("nan")])
    with pytest.raises(MetricInputError, match=r"probabilities in \[0, 1\].*max 1.5"):
        auroc_ci([0, 1], [0.1, 1.5])
    with pytest.raises(MetricInputError, match=r"only 0 and 1.*\[0, 1, 2\]"):
        auroc_ci([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(MetricInputError, match=r"proba\[:, 1\]"):
        auroc_ci([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ConfigError, match="Did you mean 'delong'"):
        auroc_ci([0, 1], [0.1, 0.9], method="delon")


def test_multiclass_auroc_matches_sklearn_ovr():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    res = multiclass_auroc(y, proba, class_names=["a", "b", "c"])
    for j, name in enumerate("abc"):
        assert res["per_class"][name] == pytest.approx(roc_auc_score(y == j, proba[:, j]))
    ref = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert res["macro"] == pytest.approx(ref)


def test_multiclass_auroc_absent_class_is_nan():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    with pytest.warns(RuntimeWarning, match="class 2"):
        res = multiclass_auroc(y, proba)
    assert math.isnan(res["per_class"][2])
    assert res["macro"] == pytest.approx(1.0)


def test_delong_test_same_model_and_better_model():
    rng = np.random.default_rng(9)
    y, p = _scores(rng, 300, shift=2.0)
    same = delong_test(y, p, p)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    noise = rng.random(y.size)
    better = delong_test(y, p, noise)
    assert better["diff"] > 0.2 and better["p_value"] < 1e-4
    assert better["low"] < better["diff"] < better["high"]
