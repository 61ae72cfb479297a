"""Input checks shared by the metric functions.

Every check raises :class:`MetricInputError` (a :class:`~medtl.errors.ConfigError`) that names the
argument, the offending length/value and a fix. Degenerate-but-valid input (one class only) is not an
error: the metrics warn and return NaN instead, so a report over many splits never crashes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from medtl._options import check_range
from medtl.errors import ConfigError


class MetricInputError(ConfigError):
    """Labels or scores passed to a metric are malformed (length, NaN, range, label values)."""


def as_labels(y: Any, name: str = "y") -> np.ndarray:
    """Return ``y`` as a 1-D int array of 0/1 labels (positive class = 1)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricInputError(
            f"{name!r} must be a 1-D array of 0/1 labels; got shape {arr.shape}. "
            "Pass one label per image (positive class = 1)."
        )
    if arr.size == 0:
        raise MetricInputError(f"{name!r} is empty; metrics need at least one labelled image.")
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(
            f"{name!r} must hold numeric 0/1 labels; got dtype {arr.dtype}. "
            "Encode the positive class as 1 and the negative class as 0."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{name!r} contains NaN/inf labels; drop those images first.")
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        shown = values[:10].tolist()
        raise MetricInputError(
            f"{name!r} must contain only 0 and 1 (positive class = 1); got values {shown}. "
            "For multi-class labels use multiclass_auroc, or binarise the labels first."
        )
    return arr.astype(np.int64)


def as_scores(p: Any, name: str = "p", *, probability: bool = True, ndim: int = 1) -> np.ndarray:
    """Return ``p`` as a float64 array, checking shape, finiteness and (optionally) the [0, 1] range."""
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(
            f"{name!r} must be numeric scores (one float per image); could not convert it: {exc}"
        ) from exc
    if arr.ndim != ndim:
        hint = (
            " For a (n, 2) probability matrix pass its positive-class column, proba[:, 1]."
            if ndim == 1 and arr.ndim == 2
            else ""
        )
        raise MetricInputError(
            f"{name!r} must be a {ndim}-D array of scores; got shape {arr.shape}.{hint}"
        )
    if arr.size == 0:
        raise MetricInputError(f"{name!r} is empty; metrics need at least one score.")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        raise MetricInputError(
            f"{name!r} contains {int(bad.sum())} NaN/inf value(s) (first at flat index {first}); "
            "remove those images or fix the model output before computing metrics."
        )
    if probability and (arr.min() < 0.0 or arr.max() > 1.0):
        raise MetricInputError(
            f"{name!r} must be probabilities in [0, 1]; got min {arr.min():.4g}, max {arr.max():.4g}. "
            "Apply a sigmoid/softmax to logits first (apply_temperature(logits, 1.0) does this)."
        )
    return arr


def check_pair(
    y: Any, p: Any, y_name: str = "y", p_name: str = "p", *, probability: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels, scores) pair for a binary metric and return them as arrays."""
    ya = as_labels(y, y_name)
    pa = as_scores(p, p_name, probability=probability)
    if ya.shape[0] != pa.shape[0]:
        raise MetricInputError(
            f"{y_name!r} and {p_name!r} must have the same length; got {ya.shape[0]} and "
            f"{pa.shape[0]}. Pass exactly one score per label, in the same order."
        )
    return ya, pa


def check_alpha(alpha: float) -> float:
    """Check a significance level (0 < alpha < 1)."""
    check_range("alpha", alpha, 1e-12, 1 - 1e-12)
    return float(alpha)


def has_both_classes(y: np.ndarray, what: str, name: str = "y") -> bool:
    """Return True when ``y`` holds both classes; otherwise warn that ``what`` is undefined."""
    n_pos = int(y.sum())
    if 0 < n_pos < y.size:
        return True
    cls = 1 if n_pos else 0
    warnings.warn(
        f"only one class present in {name} (all {cls}): {what} undefined; returning NaN.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def safe_div(num: float, den: float) -> float:
    """num / den, or NaN when den == 0 (e.g. sensitivity with no positives)."""
    return float(num) / float(den) if den else float("nan")
