"""Several findings per image: per-finding AUROCs, macro and micro summaries with bootstrap
intervals, and the paired comparison of two models.

Labels are (n, K) floats: 1, 0 or NaN (not labelled). Every number for a finding uses only the
images labelled for it, so a blank label changes no metric. A finding is *scorable* when its
labelled test images hold at least ``min_count`` positives and ``min_count`` negatives (default
5: below that a DeLong interval is meaningless); the macro AUROC is the unweighted mean over the
scorable findings, and the others are listed with their counts, never averaged in silently. The
micro AUROC pools every labelled (image, finding) pair of the scorable findings.

Intervals of the macro and micro AUROC come from a bootstrap over patients (whole groups resampled
with replacement; over images when no groups are given): a resample is a vector of multiplicities,
and each AUROC is the weighted Mann-Whitney statistic under them, so 2,000 resamples cost a few
vectorised passes instead of 2,000 x K calls to a ROC routine.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medtl.metrics._auroc import auroc_ci, delong_test
from medtl.metrics._paired import holm, summary_sentence
from medtl.metrics._validate import MetricInputError, check_alpha

_NAN = float("nan")
MIN_SCORABLE = 5


def check_multilabel(
    y: Any, proba: Any, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(y, proba) as float64 (n, K) arrays; MetricInputError naming what does not fit."""
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(proba, dtype=np.float64)
    if ya.ndim != 2 or pa.shape != ya.shape:
        raise MetricInputError(
            f"Multi-label 'y' and 'proba' must both be (n, K); got {ya.shape} and {pa.shape}."
        )
    if names is not None and len(names) != ya.shape[1]:
        raise MetricInputError(f"{len(names)} finding names for {ya.shape[1]} columns.")
    bad = ~(np.isnan(ya) | (ya == 0) | (ya == 1))
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        raise MetricInputError(f"'y' row {i}, column {k} is {ya[i, k]!r}; use 1, 0 or NaN.")
    if not np.isfinite(pa).all():
        raise MetricInputError("'proba' holds NaN or infinite values.")
    return ya, pa


def resample_weights(
    n: int, groups: Any, n_boot: int, seed: int | np.random.Generator
) -> np.ndarray:
    """(n_boot, n) multiplicities of a bootstrap over ``groups`` (whole groups drawn with
    replacement; each image weighs as often as its group was drawn), or over images."""
    rng = np.random.default_rng(seed)
    if groups is None:
        gid = np.arange(n)
    else:
        gid = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
    n_groups = int(gid.max()) + 1 if n else 0
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / max(1, n_groups)), size=n_boot)
    return counts[:, gid].astype(np.float64)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` (m,) against 0/1 ``positive`` under each row of multiplicities ``w``
    (b, m): the weighted Mann-Whitney statistic, ties counted half. NaN where a class is absent.

    The one implementation: the advisor's bootstrap AUROC (:func:`medtl.advisor._curve.weighted_auroc`)
    calls it too. Hand-written because scikit-learn's ``roc_auc_score`` takes one weight vector at
    a time; this scores every bootstrap replicate in one pass.
    """
    pos = np.asarray(positive, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    s = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, np.diff(s) > 0])  # one block per score level
    wp = np.add.reduceat(w[:, order] * pos[order], starts, axis=1)
    wn = np.add.reduceat(w[:, order] * (1.0 - pos[order]), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each level
    num = (wp * (below + 0.5 * wn)).sum(1)
    den = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _scorable(y: np.ndarray, min_count: int) -> list[int]:
    return [
        k
        for k in range(y.shape[1])
        if min(int(np.sum(y[:, k] == 1)), int(np.sum(y[:, k] == 0))) >= min_count
    ]


def _macro_micro_boot(
    y: np.ndarray, probas: list[np.ndarray], cols: list[int], w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(b, m) macro and micro AUROCs of m models under bootstrap multiplicities ``w``."""
    b, m = w.shape[0], len(probas)
    macro, micro = np.full((b, m), np.nan), np.full((b, m), np.nan)
    if not cols:
        return macro, micro
    rows_k = [np.flatnonzero(~np.isnan(y[:, k])) for k in cols]
    for mi, p in enumerate(probas):
        per = np.column_stack(
            [weighted_auc(p[r, k], y[r, k], w[:, r]) for k, r in zip(cols, rows_k)]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro[:, mi] = np.nanmean(per, axis=1)
        s = np.concatenate([p[r, k] for k, r in zip(cols, rows_k)])
        t = np.concatenate([y[r, k] for k, r in zip(cols, rows_k)])
        micro[:, mi] = weighted_auc(s, t, np.concatenate([w[:, r] for r in rows_k], axis=1))
    return macro, micro


def _micro(y: np.ndarray, p: np.ndarray, cols: list[int]) -> float:
    if not cols:
        return _NAN
    t = np.concatenate([y[~np.isnan(y[:, k]), k] for k in cols])
    s = np.concatenate([p[~np.isnan(y[:, k]), k] for k in cols])
    return float(weighted_auc(s, t, np.ones((1, len(s))))[0])


def multilabel_auroc_ci(
    y: Any,
    proba: Any,
    names: Sequence[str] | None = None,
    *,
    groups: Any = None,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    min_count: int = MIN_SCORABLE,
) -> dict[str, Any]:
    """Per-finding AUROC (DeLong CI, on each finding's labelled images) and the macro / micro
    AUROC over the scorable findings with bootstrap CIs (over ``groups``, e.g. patients).

    Returns:
        dict(per_finding={name: dict(auroc, low, high, se, n_pos, n_neg, n_missing, scorable)},
        macro, macro_low, macro_high, micro, micro_low, micro_high, scorable [names],
        unscorable {name: {n_pos, n_neg}}, rule, n, n_boot, seed, alpha, bootstrap_unit, method).

    Example:
        >>> y = np.array([[1, 0], [0, 1], [1, np.nan], [0, 0]] * 5, dtype=float)
        >>> multilabel_auroc_ci(y, np.nan_to_num(y) * 0.8 + 0.1, ["a", "b"], n_boot=100)["macro"]
        1.0
    """
    ya, pa = check_multilabel(y, proba, names)
    alpha = check_alpha(alpha)
    names = list(names) if names is not None else [str(k) for k in range(ya.shape[1])]
    cols = _scorable(ya, min_count)
    per: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        lab = ~np.isnan(ya[:, k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = auroc_ci(ya[lab, k].astype(np.int64), pa[lab, k], method="delong", alpha=alpha)
        per[name] = {
            **{key: r.get(key) for key in ("auroc", "low", "high", "se")},
            "n_pos": int(np.sum(ya[lab, k] == 1)),
            "n_neg": int(np.sum(ya[lab, k] == 0)),
            "n_missing": int(np.sum(~lab)),
            "scorable": k in cols,
        }
    vals = np.array([per[names[k]]["auroc"] for k in cols], dtype=np.float64)
    out: dict[str, Any] = {
        "per_finding": per,
        "macro": float(np.nanmean(vals)) if np.isfinite(vals).any() else _NAN,
        "micro": _micro(ya, pa, cols),
        "macro_low": _NAN,
        "macro_high": _NAN,
        "micro_low": _NAN,
        "micro_high": _NAN,
        "scorable": [names[k] for k in cols],
        "unscorable": {
            n: {"n_pos": per[n]["n_pos"], "n_neg": per[n]["n_neg"]}
            for k, n in enumerate(names)
            if k not in cols
        },
        "rule": f"a finding is scored when its labelled test images hold at least {min_count} "
        f"positives and {min_count} negatives",
        "n": int(ya.shape[0]),
        "n_boot": int(n_boot),
        "seed": seed,
        "alpha": alpha,
        "bootstrap_unit": "image" if groups is None else "patient",
        "method": "per finding: DeLong on its labelled images; macro and micro: bootstrap "
        "(percentile) over " + ("images" if groups is None else "patients"),
    }
    if cols:
        w = resample_weights(ya.shape[0], groups, n_boot, seed)
        macro, micro = _macro_micro_boot(ya, [pa], cols, w)
        for key, arr in (("macro", macro[:, 0]), ("micro", micro[:, 0])):
            arr = arr[np.isfinite(arr)]
            if len(arr):
                out[f"{key}_low"] = float(np.quantile(arr, alpha / 2))
                out[f"{key}_high"] = float(np.quantile(arr, 1 - alpha / 2))
    return out


def compare_paired_multilabel(
    y: Any,
    pa: Any,
    pb: Any,
    names: Sequence[str] | None = None,
    *,
    groups: Any = None,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    name_a: str = "Model A",
    name_b: str = "Model B",
    min_count: int = MIN_SCORABLE,
) -> dict[str, Any]:
    """Compare two multi-label models on the same test images: DeLong per finding (on its labelled
    images) with Holm-adjusted p-values, and a paired bootstrap of the macro AUROC difference.

    Returns:
        dict(auc_a, auc_b (macro AUROCs over the scorable findings), diff, alpha, n, metric,
        bootstrap (low, high, se, p_value of the macro difference), per_class ({finding: auc_a,
        auc_b, diff, se, low, high, p_value, p_holm, scorable}; the key the report reads),
        scorable, unscorable, summary).
    """
    if np.shape(pa) != np.shape(pb):
        raise MetricInputError(
            f"'pa' and 'pb' must have the same shape (same images, same findings); got "
            f"{np.shape(pa)} and {np.shape(pb)}."
        )
    ya, ra = check_multilabel(y, pa, names)
    _, rb = check_multilabel(ya, pb, names)
    alpha = check_alpha(alpha)
    names = list(names) if names is not None else [str(k) for k in range(ya.shape[1])]
    cols = _scorable(ya, min_count)
    per: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, name in enumerate(names):
            lab = ~np.isnan(ya[:, k])
            d = delong_test(ya[lab, k].astype(np.int64), ra[lab, k], rb[lab, k], alpha=alpha)
            per[name] = {
                **{
                    key: d[key]
                    for key in ("auc_a", "auc_b", "diff", "se", "low", "high", "p_value")
                },
                "scorable": k in cols,
            }
    adjusted = holm([per[names[k]]["p_value"] for k in cols])
    for k, name in enumerate(names):
        per[name]["p_holm"] = adjusted[cols.index(k)] if k in cols else _NAN
    aa = np.array([per[names[k]]["auc_a"] for k in cols], dtype=np.float64)
    ab = np.array([per[names[k]]["auc_b"] for k in cols], dtype=np.float64)
    ma = float(np.nanmean(aa)) if np.isfinite(aa).any() else _NAN
    mb = float(np.nanmean(ab)) if np.isfinite(ab).any() else _NAN
    boot: dict[str, Any] = dict.fromkeys(("low", "high", "se", "p_value"), _NAN)
    boot.update(n_boot=int(n_boot), seed=seed, unit="image" if groups is None else "patient")
    if cols and np.isfinite(ma) and np.isfinite(mb):
        w = resample_weights(ya.shape[0], groups, n_boot, seed)
        macro, _ = _macro_micro_boot(ya, [ra, rb], cols, w)
        d = macro[:, 0] - macro[:, 1]
        d = d[np.isfinite(d)]
        if len(d) > 1:
            le, ge = int(np.sum(d <= 0)), int(np.sum(d >= 0))
            boot.update(
                low=float(np.quantile(d, alpha / 2)),
                high=float(np.quantile(d, 1 - alpha / 2)),
                se=float(np.std(d, ddof=1)),
                p_value=float(min(1.0, 2 * (min(le, ge) + 1) / (len(d) + 1))),
            )
    diff = float(ma - mb)
    sentence = summary_sentence(
        name_a,
        name_b,
        {"diff": diff, "low": boot["low"], "high": boot["high"], "p_value": boot["p_value"]},
        alpha,
        auc=ma,
        metric="macro AUROC",
        test="paired bootstrap",
    )
    if not cols:
        sentence = (
            f"The macro AUROCs of {name_a} and {name_b} cannot be compared on this test set: no "
            f"finding has at least {min_count} positive and {min_count} negative labelled images."
        )
    return {
        "auc_a": ma,
        "auc_b": mb,
        "diff": diff,
        "alpha": alpha,
        "n": int(ya.shape[0]),
        "metric": "macro AUROC over the scorable findings",
        "bootstrap": boot,
        "per_class": per,
        "multiplicity": "Holm (per-finding DeLong p-values over the scorable findings)",
        "scorable": [names[k] for k in cols],
        "unscorable": [n for k, n in enumerate(names) if k not in cols],
        "summary": sentence,
    }
