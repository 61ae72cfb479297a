"""Paired comparison of two models scored on the SAME test images.

Pairing matters: both models see the same (easy and hard) images, so their errors are correlated and
an unpaired comparison of two confidence intervals is far too conservative. We use DeLong's test for
correlated AUROCs, a paired class-stratified bootstrap, and McNemar's test at the operating points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from medtl.formatting import format_p_value
from medtl.metrics._auroc import bootstrap_auc_diff, delong_test
from medtl.metrics._validate import check_alpha, check_pair

_NAN = float("nan")
# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
_MCNEMAR_EXACT_BELOW = 25


def mcnemar_test(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """McNemar's test on paired correct/incorrect outcomes of two classifiers.

    Only discordant images count: ``b`` = A right and B wrong, ``c`` = A wrong and B right. With
    fewer than 25 discordant pairs the exact two-sided binomial test (scipy's ``binomtest``) is
    used, otherwise the chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c).

    Returns:
        dict(b, c, n_discordant, statistic, p_value, method). No discordant pairs gives p = 1.
    """
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    nd = b + c
    if nd == 0:
        return {
            "b": 0,
            "c": 0,
            "n_discordant": 0,
            "statistic": 0.0,
            "p_value": 1.0,
            "method": "none",
        }
    if nd < _MCNEMAR_EXACT_BELOW:
        res = stats.binomtest(b, nd, 0.5, alternative="two-sided")
        return {
            "b": b,
            "c": c,
            "n_discordant": nd,
            "statistic": float(min(b, c)),
            "p_value": float(min(1.0, res.pvalue)),
            "method": "exact binomial",
        }
    stat = (abs(b - c) - 1) ** 2 / nd
    return {
        "b": b,
        "c": c,
        "n_discordant": nd,
        "statistic": float(stat),
        "p_value": float(stats.chi2.sf(stat, df=1)),
        "method": "chi-square with continuity correction",
    }


def summary_sentence(
    name_a: str,
    name_b: str,
    d: dict[str, Any],
    alpha: float,
    *,
    auc: float,
    metric: str = "AUROC",
    test: str = "DeLong",
) -> str:
    """One plain-language sentence about a paired difference ``d`` (diff = A - B, low, high,
    p_value); ``auc`` is A's value, quoted when the two are the same."""
    diff, lo, hi, p = d["diff"], d["low"], d["high"], d["p_value"]
    level = f"{100 * (1 - alpha):g}%"
    if not np.isfinite(diff):
        return (
            f"The {metric}s of {name_a} and {name_b} cannot be compared on this test set (a class "
            "is missing from the test labels)."
        )
    if abs(diff) < 5e-4:
        return (
            f"{name_a} and {name_b} have the same {metric} ({auc:.3f}; {test} "
            f"{format_p_value(p)}), so neither is better on this test set."
        )
    if diff < 0:
        name_a, name_b, diff, lo, hi = name_b, name_a, -diff, -hi, -lo
    signif = p < alpha if np.isfinite(p) else False
    verdict = "a statistically significant" if signif else "not a statistically significant"
    ci = f"{level} CI {lo:.3f} to {hi:.3f}, " if np.isfinite(lo) and np.isfinite(hi) else ""
    return (
        f"{name_a}'s {metric} is higher than {name_b}'s by {diff:.3f} ({ci}{test} "
        f"{format_p_value(p)}), {verdict} difference at the {100 * alpha:g}% level."
    )


def compare_paired(
    y: Any,
    p_a: Any,
    p_b: Any,
    *,
    threshold_a: float = 0.5,
    threshold_b: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    name_a: str = "Model A",
    name_b: str = "Model B",
) -> dict[str, Any]:
    """Compare two models' scores on the same test images.

    Args:
        y: 0/1 test labels.
        p_a: scores of model A, one per image, same order as ``y``.
        p_b: scores of model B.
        threshold_a: A's operating threshold (chosen on validation) for McNemar's test.
        threshold_b: B's operating threshold.
        n_boot: paired bootstrap resamples.
        seed: bootstrap seed.
        alpha: 1 - confidence level.
        name_a: A's name in the summary sentence (e.g. "Fine-tuning").
        name_b: B's name in the summary sentence.

    Returns:
        dict with ``auc_a``, ``auc_b``, ``diff`` (A - B); ``delong`` (z, p_value, se, low, high of
        the difference); ``bootstrap`` (paired class-stratified: low, high, se, p_value);
        ``mcnemar`` (b, c, statistic, p_value, method, plus both accuracies and thresholds);
        ``summary``: one sentence such as "Model A's AUROC is higher than Model B's by 0.031
        (95% CI 0.010 to 0.052, DeLong p = 0.004), a statistically significant difference at the
        5% level."
    """
    ya, pa = check_pair(y, p_a, "y", "p_a")
    _, pb = check_pair(ya, p_b, "y", "p_b")
    alpha = check_alpha(alpha)
    dl = delong_test(ya, pa, pb, alpha=alpha)
    if np.isfinite(dl["auc_a"]):
        boot = bootstrap_auc_diff(ya, pa, pb, n_boot=n_boot, seed=seed, alpha=alpha)
    else:
        boot = {
            "low": _NAN,
            "high": _NAN,
            "se": _NAN,
            "p_value": _NAN,
            "n_boot": n_boot,
            "seed": seed,
        }
    correct_a = (pa >= float(threshold_a)).astype(np.int64) == ya
    correct_b = (pb >= float(threshold_b)).astype(np.int64) == ya
    mc = mcnemar_test(correct_a, correct_b)
    mc.update(
        threshold_a=float(threshold_a),
        threshold_b=float(threshold_b),
        accuracy_a=float(correct_a.mean()),
        accuracy_b=float(correct_b.mean()),
    )
    return {
        "auc_a": dl["auc_a"],
        "auc_b": dl["auc_b"],
        "diff": dl["diff"],
        "alpha": alpha,
        "n": int(ya.size),
        "delong": {k: dl[k] for k in ("z", "p_value", "se", "low", "high")},
        "bootstrap": boot,
        "mcnemar": mc,
        "summary": summary_sentence(name_a, name_b, dl, alpha, auc=dl["auc_a"]),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN entries are left NaN and not counted).

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
