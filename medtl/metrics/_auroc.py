"""AUROC with confidence intervals (DeLong, stratified bootstrap), AUPRC and one-vs-rest AUROC.

DeLong's method is hand-written here: neither scikit-learn nor scipy implements it, and the small
third-party packages that do are unmaintained. We use the fast O(n log n) midrank algorithm of
Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves", IEEE Signal Processing Letters 21(11).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from medtl._options import look_up_option
from medtl.metrics._validate import (
    MetricInputError,
    as_scores,
    check_alpha,
    check_pair,
    has_both_classes,
)

_NAN = float("nan")
# Bootstrap work is done in chunks of about this many scores (n_boot_chunk * n) to bound memory.
_CHUNK_SCORES = 2_000_000


def delong_placements(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values for one or more score vectors on the same labels.

    Args:
        y: (n,) 0/1 labels with both classes present.
        scores: (k, n) scores of k models (or (n,) for one model).

    Returns:
        ``(auc, v10, v01)``: ``auc`` has shape (k,); ``v10`` (k, m) holds, for each positive, the
        fraction of negatives it outranks (ties count half); ``v01`` (k, n_neg) holds, for each
        negative, the fraction of positives that outrank it. ``mean(v10) == mean(v01) == auc``.
    """
    scores = np.atleast_2d(scores)
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    # Midranks (average ranks for ties) within positives, within negatives and overall.
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance matrix (k, k) of k correlated AUCs from their placement values."""
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        k = v10.shape[0]
        return np.full((k, k), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return s10 / m + s01 / n


def _bootstrap_aucs(
    y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int | np.random.Generator
) -> np.ndarray:
    """AUCs of ``n_boot`` class-stratified bootstrap resamples, for k models resampled jointly.

    Vectorised over resamples with midranks (AUC = Mann-Whitney U / (m n)), which is ~100x faster
    than calling roc_auc_score in a loop. Returns shape (n_boot, k).
    """
    rng = np.random.default_rng(seed)
    scores = np.atleast_2d(scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    out = np.empty((n_boot, scores.shape[0]))
    chunk = max(1, _CHUNK_SCORES // ((m + n) * scores.shape[0]))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        ip = rng.integers(0, m, size=(b, m))
        ineg = rng.integers(0, n, size=(b, n))
        for j in range(scores.shape[0]):
            # Same indices for every model: a paired bootstrap when k > 1.
            z = np.concatenate([pos[j][ip], neg[j][ineg]], axis=1)
            r = stats.rankdata(z, axis=1)
            out[start : start + b, j] = (r[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return out


def _check_n_boot(n_boot: int) -> int:
    if int(n_boot) != n_boot or n_boot < 10:
        raise MetricInputError(
            f"The 'n_boot' parameter must be an integer >= 10; got {n_boot!r}. 2000 is a good default."
        )
    return int(n_boot)


def auroc_ci(
    y: Any,
    p: Any,
    *,
    method: str = "delong",
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC with a (1 - alpha) confidence interval.

    DeLong is the default: it is analytic (no resampling noise, reproducible without a seed), fast
    (O(n log n)), and the standard in diagnostic-accuracy papers. Its CI is computed on the logit
    scale and back-transformed, so it always lies inside [0, 1]. ``method="bootstrap"`` resamples
    positives and negatives separately (class-stratified, so every resample has the test
    prevalence) and reports the percentile interval.

    Args:
        y: 0/1 labels (positive class = 1).
        p: scores, P(positive), in [0, 1].
        method: ``"delong"`` or ``"bootstrap"``.
        alpha: 1 - confidence level (0.05 gives a 95% CI).
        n_boot: bootstrap resamples (bootstrap only).
        seed: bootstrap random seed.

    Returns:
        dict(auroc, low, high, se, method, n_pos, n_neg). With one class present all numbers are
        NaN and a warning says why.

    Example:
        >>> auroc_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auroc"]
        0.75
    """
    ya, pa = check_pair(y, p)
    method = look_up_option("method", method, ("delong", "bootstrap"))
    alpha = check_alpha(alpha)
    n_pos = int(ya.sum())
    res: dict[str, Any] = {
        "auroc": _NAN,
        "low": _NAN,
        "high": _NAN,
        "se": _NAN,
        "method": method,
        "alpha": alpha,
        "n_pos": n_pos,
        "n_neg": int(ya.size - n_pos),
    }
    if not has_both_classes(ya, "AUROC"):
        return res
    z = stats.norm.ppf(1 - alpha / 2)
    if method == "delong":
        auc_arr, v10, v01 = delong_placements(ya, pa)
        auc = float(auc_arr[0])
        var = float(delong_covariance(v10, v01)[0, 0])
        res.update(auroc=auc, se=float(np.sqrt(var)) if np.isfinite(var) else _NAN)
        if not np.isfinite(var):
            warnings.warn(
                f"DeLong CI needs at least 2 positives and 2 negatives (got {res['n_pos']} and "
                f"{res['n_neg']}); returning NaN bounds.",
                RuntimeWarning,
                stacklevel=2,
            )
        elif 0.0 < auc < 1.0 and var > 0:
            # Logit transform keeps the interval inside (0, 1) (delta method for the SE).
            lg = np.log(auc / (1 - auc))
            se_lg = np.sqrt(var) / (auc * (1 - auc))
            res.update(
                low=float(1 / (1 + np.exp(-(lg - z * se_lg)))),
                high=float(1 / (1 + np.exp(-(lg + z * se_lg)))),
            )
        else:
            # AUC of exactly 0 or 1 (or zero variance): the logit is infinite; clip instead.
            sd = np.sqrt(max(var, 0.0))
            res.update(low=float(max(0.0, auc - z * sd)), high=float(min(1.0, auc + z * sd)))
    else:
        n_boot = _check_n_boot(n_boot)
        res["auroc"] = float(roc_auc_score(ya, pa))
        boots = _bootstrap_aucs(ya, pa, n_boot, seed)[:, 0]
        res.update(
            low=float(np.quantile(boots, alpha / 2)),
            high=float(np.quantile(boots, 1 - alpha / 2)),
            se=float(np.std(boots, ddof=1)),
            n_boot=n_boot,
            seed=seed,
        )
    return res


def auroc(y: Any, p: Any) -> float:
    """AUROC point estimate (scikit-learn); NaN with a warning when only one class is present."""
    ya, pa = check_pair(y, p)
    if not has_both_classes(ya, "AUROC"):
        return _NAN
    return float(roc_auc_score(ya, pa))


def auprc(y: Any, p: Any) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn).

    More informative than AUROC when positives are rare; its chance level is the prevalence, not 0.5.
    NaN with a warning when only one class is present.
    """
    ya, pa = check_pair(y, p)
    if not has_both_classes(ya, "AUPRC"):
        return _NAN
    return float(average_precision_score(ya, pa))


def check_multiclass(
    y: Any, proba: Any, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (class indices, (n, K) probabilities[, K names]) and return them as arrays."""
    pr = as_scores(proba, "proba", ndim=2)
    ya = np.asarray(y)
    if ya.ndim != 1 or ya.shape[0] != pr.shape[0]:
        raise MetricInputError(
            f"'y' must be 1-D with one label per row of 'proba'; got shape {ya.shape} for 'y' and "
            f"{pr.shape} for 'proba'."
        )
    k = pr.shape[1]
    if ya.dtype.kind not in "iub" or (ya.size and (ya.min() < 0 or ya.max() >= k)):
        raise MetricInputError(
            f"'y' must hold integer class indices in 0..{k - 1} (one per column of 'proba'); got "
            f"dtype {ya.dtype} with values {np.unique(ya)[:10].tolist()}."
        )
    if class_names is not None and len(class_names) != k:
        raise MetricInputError(
            f"'class_names' must have one name per column of 'proba' ({k}); got {len(class_names)}."
        )
    return ya.astype(np.int64), pr


def multiclass_auroc(
    y: Any, proba: Any, *, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """One-vs-rest AUROC per class and their unweighted (macro) mean.

    Args:
        y: (n,) integer class indices 0..K-1.
        proba: (n, K) class probabilities (column k = P(class k)).
        class_names: optional K names used as the keys of ``per_class`` (default: the indices).

    Returns:
        dict(per_class={name: auroc}, macro=float). A class absent from ``y`` (or present in every
        row) gets NaN with a warning and is left out of the macro mean.
    """
    ya, pr = check_multiclass(y, proba, class_names)
    k = pr.shape[1]
    names: list[Any] = list(class_names) if class_names is not None else list(range(k))
    per_class: dict[Any, float] = {}
    for j, name in enumerate(names):
        yj = (ya == j).astype(np.int64)
        if has_both_classes(yj, f"one-vs-rest AUROC of class {name!r}", name="y"):
            per_class[name] = float(roc_auc_score(yj, pr[:, j]))
        else:
            per_class[name] = _NAN
    vals = np.array(list(per_class.values()))
    macro = float(np.nanmean(vals)) if np.isfinite(vals).any() else _NAN
    return {"per_class": per_class, "macro": macro}


def delong_test(y: Any, p_a: Any, p_b: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """DeLong's test for the difference of two correlated AUROCs (same images, two models).

    Returns:
        dict(auc_a, auc_b, diff (= a - b), se, z, p_value, low, high): the CI of the difference is
        the normal interval clipped to [-1, 1]. Two identical models give diff 0, p 1.
    """
    ya, pa = check_pair(y, p_a, "y", "p_a")
    _, pb = check_pair(ya, p_b, "y", "p_b")
    alpha = check_alpha(alpha)
    keys = ("auc_a", "auc_b", "diff", "se", "z", "p_value", "low", "high")
    res: dict[str, Any] = dict.fromkeys(keys, _NAN)
    if not has_both_classes(ya, "DeLong test"):
        return res
    aucs, v10, v01 = delong_placements(ya, np.vstack([pa, pb]))
    cov = delong_covariance(v10, v01)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res.update(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff)
    if not np.isfinite(var):
        return res
    var = max(var, 0.0)
    se = float(np.sqrt(var))
    if se <= 1e-15:
        # Identical placements: no evidence of a difference (or a deterministic one).
        z = 0.0 if abs(diff) <= 1e-15 else float(np.sign(diff) * np.inf)
        pval = 1.0 if z == 0.0 else 0.0
    else:
        z = diff / se
        pval = float(2 * stats.norm.sf(abs(z)))
    zc = stats.norm.ppf(1 - alpha / 2)
    res.update(
        se=se,
        z=float(z),
        p_value=min(1.0, pval),
        low=float(max(-1.0, diff - zc * se)),
        high=float(min(1.0, diff + zc * se)),
    )
    return res


def bootstrap_auc_diff(
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of AUROC(a) - AUROC(b) (inputs already validated).

    The p-value is two-sided: twice the smaller tail share of resampled differences at or beyond 0,
    with the usual +1 correction so it is never exactly 0.
    """
    n_boot = _check_n_boot(n_boot)
    boots = _bootstrap_aucs(y, np.vstack([p_a, p_b]), n_boot, seed)
    d = boots[:, 0] - boots[:, 1]
    le, ge = int(np.sum(d <= 0)), int(np.sum(d >= 0))
    pval = min(1.0, 2 * (min(le, ge) + 1) / (n_boot + 1))
    return {
        "low": float(np.quantile(d, alpha / 2)),
        "high": float(np.quantile(d, 1 - alpha / 2)),
        "se": float(np.std(d, ddof=1)),
        "p_value": float(pval),
        "n_boot": n_boot,
        "seed": seed,
    }
