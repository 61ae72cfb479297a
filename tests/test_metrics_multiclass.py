"""Multi-class AUROC with confidence intervals and the paired comparison of two models."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.metrics import (
    MetricInputError,
    auroc_ci,
    compare_paired_multiclass,
    format_p_value,
    multiclass_auroc,
    multiclass_auroc_ci,
)

K = 3
NAMES = ["normal", "pneumonia", "covid"]


def _population(seed: int, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; a model whose softmax scores carry the class plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    z = 2.0 * (np.eye(K)[y] + rng.normal(0.0, noise, (n, K)))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return y, e / e.sum(axis=1, keepdims=True)


def test_macro_ci_covers_the_population_value_and_per_class_is_delong():
    truth = multiclass_auroc(*_population(99, 100_000, 0.9))["macro"]
    covered = 0
    for seed in range(10):
        y, p = _population(seed, 240, 0.9)
        r = multiclass_auroc_ci(y, p, NAMES, seed=seed, n_boot=500)
        covered += r["macro_low"] <= truth <= r["macro_high"]
        assert r["macro_low"] < r["macro"] < r["macro_high"]
        assert r["macro"] == pytest.approx(multiclass_auroc(y, p)["macro"])
        ref = auroc_ci((y == 1).astype(int), p[:, 1])
        assert r["per_class"]["pneumonia"]["low"] == pytest.approx(ref["low"])
    # 95% intervals: 10 of 10 expected, 8 would already be unlikely (p ~ 0.09)
    assert covered >= 9


def test_bootstrap_is_seeded_and_reproducible():
    y, p = _population(0, 150, 1.0)
    a = multiclass_auroc_ci(y, p, NAMES, seed=7, n_boot=300)
    b = multiclass_auroc_ci(y, p, NAMES, seed=7, n_boot=300)
    c = multiclass_auroc_ci(y, p, NAMES, seed=8, n_boot=300)
    assert (a["macro_low"], a["macro_high"]) == (b["macro_low"], b["macro_high"])
    assert (a["macro_low"], a["macro_high"]) != (c["macro_low"], c["macro_high"])


def test_paired_comparison_finds_the_clearly_better_model():
    rng = np.random.default_rng(5)
    y, good = _population(5, 300, 0.6)
    z = np.log(good) + rng.normal(0, 2.5, good.shape)  # the same images, a much noisier model
    bad = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    r = compare_paired_multiclass(y, good, bad, NAMES, seed=0, n_boot=500, name_a="FT", name_b="FE")
    assert r["diff"] > 0 and r["bootstrap"]["low"] > 0 and r["bootstrap"]["p_value"] < 0.01
    assert all(v["diff"] > 0 and v["low"] > 0 for v in r["per_class"].values())
    assert r["summary"].startswith("FT's macro AUROC is higher than FE's")
    swapped = compare_paired_multiclass(y, bad, good, NAMES, seed=0, n_boot=500)
    assert swapped["bootstrap"]["high"] < 0
    assert swapped["bootstrap"]["low"] == pytest.approx(-r["bootstrap"]["high"])


def test_identical_models_tie_and_shapes_are_checked():
    y, p = _population(1, 90, 1.0)
    r = compare_paired_multiclass(y, p, p, NAMES, n_boot=100, name_a="A", name_b="B")
    assert r["diff"] == 0 and "have the same macro AUROC" in r["summary"]
    with pytest.raises(MetricInputError, match="same shape"):
        compare_paired_multiclass(y, p, p[:, :2], None)


def test_a_missing_class_is_left_out_with_a_warning():
    y, p = _population(2, 120, 1.0)
    y = np.where(y == 2, 0, y)
    with pytest.warns(RuntimeWarning, match="'covid' is absent"):
        r = multiclass_auroc_ci(y, p, NAMES, n_boot=100)
    assert np.isnan(r["per_class"]["covid"]["auroc"]) and np.isfinite(r["macro_low"])


@pytest.mark.parametrize(
    ("p", "text", "bare"),
    [(0.0, "p < 0.001", "< 0.001"), (0.0004, "p < 0.001", "< 0.001"), (0.0421, "p = 0.042", "0.042"),
     (1.0, "p = 1.000", "1.000"), (None, "p n/a", "n/a"), (float("nan"), "p n/a", "n/a")],
)  # fmt: skip
def test_p_values_are_never_written_as_zero(p, text, bare):
    assert format_p_value(p) == text and format_p_value(p, prefix=False) == bare
