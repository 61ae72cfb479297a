"""Calibration (Brier, ECE, reliability curve, temperature scaling) and decision curves."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import optimize, special
from sklearn.metrics import brier_score_loss

from medtl._options import look_up_option
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


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise MetricInputError(
            f"The 'n_bins' parameter must be a positive integer; got {n_bins!r}."
        )
    return int(n_bins)


def reliability_curve(y: Any, p: Any, n_bins: int = 10) -> dict[str, list[float] | list[int]]:
    """Observed frequency of positives against mean predicted probability, per equal-width bin.

    Bins are ``[0, 1/n_bins), [1/n_bins, 2/n_bins), ..., [1 - 1/n_bins, 1]`` (p = 1 goes in the last
    bin). Every bin is returned so the lists have a fixed length; empty bins have ``count`` 0 and
    NaN ``frac_pos`` / ``mean_pred``. (scikit-learn's ``calibration_curve`` drops empty bins and
    does not return counts, which the ECE and the plots need.)

    Returns:
        dict(bin_mid, frac_pos, mean_pred, count), each a list of ``n_bins`` values.
    """
    ya, pa = check_pair(y, p)
    n_bins = _check_bins(n_bins)
    idx = np.minimum((pa * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pa, minlength=n_bins)
    sum_y = np.bincount(idx, weights=ya.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
        mean = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
    mids = (np.arange(n_bins) + 0.5) / n_bins
    return {
        "bin_mid": mids.tolist(),
        "frac_pos": frac.tolist(),
        "mean_pred": mean.tolist(),
        "count": count.astype(int).tolist(),
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of P(positive).

    ECE = sum over bins of (bin count / n) * |observed positive rate - mean predicted probability|.
    This is the binary (positive-class) form, with the same equal-width bins as
    :func:`reliability_curve`. Values near 0 mean the probabilities can be read at face value.
    """
    curve = reliability_curve(y, p, n_bins)
    count = np.asarray(curve["count"], dtype=np.float64)
    gap = np.abs(np.asarray(curve["frac_pos"]) - np.asarray(curve["mean_pred"]))
    return float(np.sum(np.where(count > 0, count * np.nan_to_num(gap), 0.0)) / count.sum())


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


def decision_curve(y: Any, p: Any, thresholds: Any = None) -> dict[str, list[float]]:
    """Net benefit of acting on the model's predictions across threshold probabilities.

    Decision curve analysis (Vickers & Elkin 2006): at threshold probability t (the risk at which a
    clinician would act), net benefit = TP/n - FP/n * t / (1 - t). It is compared with treating
    everyone (prev - (1 - prev) * t / (1 - t)) and treating no one (0). A model is useful over the
    range of t where its curve lies above both.

    Args:
        y: 0/1 labels.
        p: scores in [0, 1]; positive when ``p >= t``.
        thresholds: threshold probabilities in (0, 1); default ``np.linspace(0.01, 0.99, 99)``.

    Returns:
        dict(threshold, net_benefit, treat_all, treat_none), each a list.
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
    n = ya.size
    prev = ya.mean()
    odds = t / (1 - t)
    pred = pa[None, :] >= t[:, None]
    tp = np.sum(pred & (ya[None, :] == 1), axis=1)
    fp = np.sum(pred & (ya[None, :] == 0), axis=1)
    return {
        "threshold": t.tolist(),
        "net_benefit": (tp / n - fp / n * odds).tolist(),
        "treat_all": (prev - (1 - prev) * odds).tolist(),
        "treat_none": np.zeros_like(t).tolist(),
    }
