"""Calibration (Brier, ECE, reliability curve, temperature scaling) and decision curves."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import optimize, special, stats
from sklearn.metrics import brier_score_loss

from medtl._options import check_range, look_up_option
from medtl.metrics._validate import (
    MetricInputError,
    as_labels,
    as_scores,
    check_pair,
)

_NAN = float("nan")
_EPS = 1e-12  # probabilities are clipped to [eps, 1 - eps] before taking logits
_KINDS = ("auto", "logits", "probabilities")


def brier(y: Any, p: Any) -> float:
    """Brier score: mean squared difference between P(positive) and the 0/1 outcome (lower is better).

    Defined for one-class input too (it is a per-image loss).
    """
    ya, pa = check_pair(y, p)
    return float(brier_score_loss(ya, pa, labels=[0, 1]))


#: reliability-diagram bins when chosen from n: about one bin per this many images, within limits
IMAGES_PER_BIN, MIN_BINS, MAX_BINS = 30, 3, 10
_STRATEGIES = ("uniform", "quantile")


def reliability_bins(n: int) -> int:
    """Number of reliability bins for ``n`` images: about n / 30, at least 3 and at most 10.

    Ten bins on 30 images hold three images each, and a bin's observed rate is then noise
    (a Wilson interval of 0-56% for 1 of 3); ~30 images per bin keeps it to about +-0.17.
    """
    return int(min(MAX_BINS, max(MIN_BINS, round(int(n) / IMAGES_PER_BIN))))


def _check_bins(n_bins: int | str, n: int) -> int:
    if n_bins == "auto":
        return reliability_bins(n)
    if isinstance(n_bins, str) or int(n_bins) != n_bins or n_bins < 1:
        raise MetricInputError(
            f"The 'n_bins' parameter must be a positive integer or 'auto'; got {n_bins!r}."
        )
    return int(n_bins)


def _bin_index(p: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per score, bin edges) for equal-width or equal-count (quantile) bins."""
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return np.minimum((p * n_bins).astype(np.int64), n_bins - 1), edges
    # Quantile edges as scikit-learn's calibration_curve(strategy="quantile") draws them; tied
    # scores can merge edges, so a bin may be empty.
    edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = min(edges[0], 0.0), max(edges[-1], 1.0)
    return np.searchsorted(edges[1:-1], p), edges


def reliability_curve(
    y: Any, p: Any, n_bins: int | str = 10, *, strategy: str = "uniform", alpha: float = 0.05
) -> dict[str, Any]:
    """Observed frequency of positives against mean predicted probability, per bin.

    ``strategy="uniform"``: bins ``[0, 1/n_bins), ..., [1 - 1/n_bins, 1]``. ``"quantile"``: bins
    holding about the same number of images (edges as scikit-learn's ``calibration_curve`` draws
    them), which suits scores crowded in one corner. ``n_bins="auto"`` picks
    :func:`reliability_bins` from the number of images. Every bin is returned so the lists have a
    fixed length; empty bins have ``count`` 0 and NaN rates. (scikit-learn's ``calibration_curve``
    drops empty bins and returns no counts or intervals, which the ECE and the plots need.)

    Returns:
        dict(bin_mid, bin_low, bin_high, frac_pos, frac_low, frac_high (Wilson interval of the
        observed rate), mean_pred, count, strategy), each list ``n_bins`` long.
    """
    from medtl.metrics._threshold import wilson_ci

    ya, pa = check_pair(y, p)
    strategy = look_up_option("strategy", strategy, _STRATEGIES)
    n_bins = _check_bins(n_bins, ya.size)
    idx, edges = _bin_index(pa, n_bins, strategy)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pa, minlength=n_bins)
    sum_y = np.bincount(idx, weights=ya.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
        mean = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
    ci = [wilson_ci(int(k), int(m), alpha) for k, m in zip(sum_y.round(), count)]
    return {
        "bin_mid": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "bin_low": edges[:-1].tolist(),
        "bin_high": edges[1:].tolist(),
        "frac_pos": frac.tolist(),
        "frac_low": [c[0] for c in ci],
        "frac_high": [c[1] for c in ci],
        "mean_pred": mean.tolist(),
        "count": count.astype(int).tolist(),
        "strategy": strategy,
    }


def expected_calibration_error(
    y: Any, p: Any, n_bins: int | str = 10, *, strategy: str = "uniform"
) -> float:
    """Expected calibration error over the bins of :func:`reliability_curve`.

    ECE = sum over bins of (bin count / n) * |observed positive rate - mean predicted probability|.
    This is the binary (positive-class) form. Values near 0 mean the probabilities can be read at
    face value; with few images per bin it is biased upwards, so read it with its bin count.
    """
    curve = reliability_curve(y, p, n_bins, strategy=strategy)
    count = np.asarray(curve["count"], dtype=np.float64)
    gap = np.abs(np.asarray(curve["frac_pos"]) - np.asarray(curve["mean_pred"]))
    return float(np.sum(np.where(count > 0, count * np.nan_to_num(gap), 0.0)) / count.sum())


def calibration_slope_intercept(y: Any, p: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """Calibration slope and intercept by logistic recalibration (Cox 1958; Van Calster 2016).

    The slope ``b`` comes from fitting ``logit P(y=1) = a + b * logit(p)`` (scikit-learn's
    ``LogisticRegression`` without a penalty): 1 is ideal, below 1 the predictions are too extreme
    (overfitting), above 1 too timid. The intercept is calibration-in-the-large: ``a`` with the
    slope fixed at 1 (``logit(p)`` as an offset, fitted with scipy since scikit-learn has no
    offsets): 0 is ideal, above 0 the model under-predicts the risk, below 0 it over-predicts.
    Wald intervals come from the observed information.

    Returns:
        dict(slope, slope_low, slope_high, intercept, intercept_low, intercept_high, n). NaN with a
        warning when one class only is present; a NaN slope and a ``note`` when the scores
        separate the classes perfectly (the slope is then unbounded).
    """
    import warnings as _w

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    ya, pa = check_pair(y, p)
    keys = ("slope", "slope_low", "slope_high", "intercept", "intercept_low", "intercept_high")
    out: dict[str, Any] = {**dict.fromkeys(keys, _NAN), "n": int(ya.size)}
    if np.unique(ya).size < 2:
        warnings.warn(
            "only one class present in y: the calibration slope and intercept are undefined; "
            "returning NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        return out
    lp = special.logit(np.clip(pa, _EPS, 1 - _EPS))
    z = stats.norm.ppf(1 - alpha / 2)
    # intercept with the slope fixed at 1: a one-parameter NLL, convex, solved by a bounded search
    res = optimize.minimize_scalar(lambda a: _nll(ya, a + lp), bounds=(-30, 30), method="bounded")
    a = float(res.x)
    mu = special.expit(a + lp)
    se_a = 1.0 / np.sqrt(max(float(np.sum(mu * (1 - mu))), 1e-300))
    out.update(intercept=a, intercept_low=float(a - z * se_a), intercept_high=float(a + z * se_a))
    if pa[ya == 0].max() < pa[ya == 1].min() or pa[ya == 1].max() < pa[ya == 0].min():
        # not a warning: a perfect ranking on a small test set is common and nothing is wrong
        out["note"] = "the scores separate the two classes perfectly, so the slope is unbounded"
        return out
    with _w.catch_warnings():
        _w.simplefilter("ignore", ConvergenceWarning)
        fit = LogisticRegression(C=np.inf, max_iter=1000).fit(lp[:, None], ya)
    b0, b1 = float(fit.intercept_[0]), float(fit.coef_[0, 0])
    mu = special.expit(b0 + b1 * lp)
    x = np.column_stack([np.ones_like(lp), lp])
    info = x.T @ (x * (mu * (1 - mu))[:, None])
    try:
        se_b = float(np.sqrt(np.linalg.inv(info)[1, 1]))
    except np.linalg.LinAlgError:
        se_b = _NAN
    out.update(slope=b1, slope_low=float(b1 - z * se_b), slope_high=float(b1 + z * se_b))
    return out


def _to_logits(x: np.ndarray, kind: str) -> np.ndarray:
    """Logits from logits or probabilities (binary (n,) or multi-class (n, K))."""
    if kind == "auto":
        kind = "probabilities" if (x.min() >= 0.0 and x.max() <= 1.0) else "logits"
    if kind == "logits":
        return x
    if x.min() < 0.0 or x.max() > 1.0:
        raise MetricInputError(
            f"kind='probabilities' but the values span [{x.min():.4g}, {x.max():.4g}]; pass "
            "kind='logits' for raw model outputs."
        )
    xc = np.clip(x, _EPS, 1 - _EPS)
    return special.logit(xc) if x.ndim == 1 else np.log(xc)


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    """Mean negative log-likelihood of labels under logits z (sigmoid if 1-D, softmax if 2-D)."""
    if z.ndim == 1:
        return float(np.mean(np.logaddexp(0.0, z) - y * z))
    return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(z.shape[0]), y]))


def _check_scores_any(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    return as_scores(arr, name, probability=False, ndim=arr.ndim if arr.ndim in (1, 2) else 1)


def fit_temperature(y_val: Any, logits_or_p_val: Any, *, kind: str = "auto") -> float:
    """Fit a temperature T on VALIDATION data so that sigmoid(logit / T) is calibrated.

    Temperature scaling (Guo et al. 2017) divides the logits by one scalar: it fixes over- or
    under-confidence without changing the ranking (AUROC, and the classifications at a mapped
    threshold, are unchanged). T is found by minimising the validation negative log-likelihood
    over log T with ``scipy.optimize.minimize_scalar`` (bounded, T in about [0.007, 150]).

    Args:
        y_val: 0/1 labels for (n,) binary scores, or class indices for (n, K) multi-class scores.
        logits_or_p_val: logits, or probabilities (converted to logits).
        kind: ``"auto"`` (probabilities if every value is in [0, 1]), ``"logits"`` or
            ``"probabilities"``.

    Returns:
        T > 0 (T > 1 means the model was overconfident). With one class only in ``y_val`` the NLL
        has no finite minimiser: a warning is raised and 1.0 returned.
    """
    kind = look_up_option("kind", kind, _KINDS)
    x = _check_scores_any(logits_or_p_val, "logits_or_p_val")
    if x.ndim == 1:
        y = as_labels(y_val, "y_val")
    else:
        y = np.asarray(y_val)
        if y.ndim != 1 or y.dtype.kind not in "iub" or y.min() < 0 or y.max() >= x.shape[1]:
            raise MetricInputError(
                f"'y_val' must hold integer class indices in 0..{x.shape[1] - 1} for (n, K) scores; "
                f"got shape {y.shape}, dtype {y.dtype}."
            )
        y = y.astype(np.int64)
    if y.shape[0] != x.shape[0]:
        raise MetricInputError(
            f"'y_val' and 'logits_or_p_val' must have the same length; got {y.shape[0]} and "
            f"{x.shape[0]}. Pass exactly one score per label."
        )
    if np.unique(y).size < 2:
        warnings.warn(
            f"only one class present in y_val (all {int(y[0])}): the temperature is undefined; "
            "returning T = 1.0 (no scaling).",
            RuntimeWarning,
            stacklevel=2,
        )
        return 1.0
    z = _to_logits(x, kind)
    res = optimize.minimize_scalar(
        lambda log_t: _nll(y, z / np.exp(log_t)),
        bounds=(-5.0, 5.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def apply_temperature(p: Any, temperature: float, *, kind: str = "auto") -> np.ndarray:
    """Rescale logits (or probabilities) by a temperature and return calibrated probabilities.

    Args:
        p: (n,) binary or (n, K) multi-class logits or probabilities.
        temperature: T from :func:`fit_temperature` (T = 1 only applies the sigmoid/softmax).
        kind: ``"auto"``, ``"logits"`` or ``"probabilities"`` (see :func:`fit_temperature`).

    Returns:
        sigmoid(z / T) for 1-D input, softmax(z / T) along the last axis for 2-D input.
    """
    kind = look_up_option("kind", kind, _KINDS)
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise MetricInputError(
            f"'temperature' must be a finite number > 0; got {temperature!r}. Fit it with fit_temperature."
        )
    z = _to_logits(_check_scores_any(p, "p"), kind) / t
    return special.expit(z) if z.ndim == 1 else special.softmax(z, axis=1)


def decision_curve(
    y: Any, p: Any, thresholds: Any = None, *, prevalence: float | None = None
) -> dict[str, Any]:
    """Net benefit of acting on the model's predictions across threshold probabilities.

    Decision curve analysis (Vickers & Elkin 2006): at threshold probability t (the risk at which a
    clinician would act), net benefit = TP/n - FP/n * t / (1 - t). It is compared with treating
    everyone (prev - (1 - prev) * t / (1 - t)) and treating no one (0). A model is useful over the
    range of t where its curve lies above both.

    Net benefit depends on the prevalence. With ``prevalence`` (the deployment prevalence) it is
    computed from the test sensitivity and specificity at each t as
    sens * prev - (1 - spec) * (1 - prev) * t / (1 - t), i.e. for a population with that
    prevalence rather than the test set's.

    Args:
        y: 0/1 labels.
        p: scores in [0, 1]; positive when ``p >= t``.
        thresholds: threshold probabilities in (0, 1); default ``np.linspace(0.01, 0.99, 99)``.
        prevalence: deployment prevalence in (0, 1); None uses the test set's.

    Returns:
        dict(threshold, net_benefit, treat_all, treat_none, each a list; prevalence, and
        prevalence_source "test" or "deployment").
    """
    ya, pa = check_pair(y, p)
    t = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, float)
    t = np.atleast_1d(t)
    if t.ndim != 1 or t.size == 0 or not np.all((t > 0) & (t < 1)):
        raise MetricInputError(
            f"'thresholds' must be a non-empty 1-D array of values strictly between 0 and 1; got "
            f"{t.size} value(s) in [{np.nanmin(t) if t.size else 'nan'}, "
            f"{np.nanmax(t) if t.size else 'nan'}]."
        )
    if prevalence is not None:
        check_range("prevalence", float(prevalence), 1e-9, 1 - 1e-9)
    n = ya.size
    odds = t / (1 - t)
    pred = pa[None, :] >= t[:, None]
    tp = np.sum(pred & (ya[None, :] == 1), axis=1)
    fp = np.sum(pred & (ya[None, :] == 0), axis=1)
    if prevalence is None:
        prev = float(ya.mean())
        nb = tp / n - fp / n * odds
    else:
        prev = float(prevalence)
        n_pos, n_neg = int(ya.sum()), int(n - ya.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = tp / n_pos if n_pos else np.full(t.shape, np.nan)
            fpr = fp / n_neg if n_neg else np.full(t.shape, np.nan)
        nb = sens * prev - fpr * (1 - prev) * odds
    return {
        "threshold": t.tolist(),
        "net_benefit": np.asarray(nb, dtype=np.float64).tolist(),
        "treat_all": (prev - (1 - prev) * odds).tolist(),
        "treat_none": np.zeros_like(t).tolist(),
        "prevalence": prev,
        "prevalence_source": "test" if prevalence is None else "deployment",
    }
