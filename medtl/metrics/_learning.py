"""Summaries of learning curves: the start / slope / asymptote signature of transfer learning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtl.metrics._validate import MetricInputError

_NAN = float("nan")


def _slope(x: np.ndarray, v: np.ndarray) -> float:
    """Least-squares slope of v on x over finite points (NaN with fewer than two: no slope to
    measure, which a table must show as n/a rather than as a flat 0)."""
    ok = np.isfinite(v) & np.isfinite(x)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return _NAN
    return float(np.polyfit(x[ok], v[ok], 1)[0])


def learning_curve_summary(
    values_per_epoch: Sequence[float],
    seconds: Sequence[float] | None = None,
    k: int = 3,
) -> dict[str, Any]:
    """Summarise a per-epoch validation curve (e.g. AUROC) as start, slope and asymptote.

    Transfer learning is expected to show a higher start, a steeper early slope and a higher
    asymptote than training from scratch; these three numbers make that comparison concrete.

    Args:
        values_per_epoch: the metric after each epoch (epoch 1 first). NaN entries (e.g. a
            one-class validation split) are ignored by the slope and the maximum.
        seconds: optional wall-clock seconds spent in each epoch (same length).
        k: number of early epochs used for the slope.

    Returns:
        dict(start, slope, asymptote, best_epoch, n_epochs): ``start`` is the value after epoch 1;
        ``slope`` the least-squares gain per epoch over the first min(k, n) epochs (NaN for one
        epoch); ``asymptote`` the best value; ``best_epoch`` its 1-based epoch (None if all NaN).
        With ``seconds`` also ``slope_per_second`` (same fit against cumulative time),
        ``seconds_to_best`` and ``total_seconds``.

    Example:
        >>> learning_curve_summary([0.6, 0.7, 0.8, 0.82])["slope"]
        0.1
    """
    v = np.asarray(values_per_epoch, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise MetricInputError(
            f"'values_per_epoch' must be a non-empty list of numbers (one per epoch); got shape {v.shape}."
        )
    if int(k) != k or k < 1:
        raise MetricInputError(f"The 'k' parameter must be a positive integer; got {k!r}.")
    n_early = min(int(k), v.size)
    epochs = np.arange(1, v.size + 1, dtype=np.float64)
    finite = np.isfinite(v)
    best = int(np.nanargmax(v)) if finite.any() else None
    out: dict[str, Any] = {
        "start": float(v[0]),
        "slope": round(_slope(epochs[:n_early], v[:n_early]), 12),
        "asymptote": float(v[best]) if best is not None else _NAN,
        "best_epoch": None if best is None else best + 1,
        "n_epochs": int(v.size),
    }
    if seconds is not None:
        s = np.asarray(seconds, dtype=np.float64)
        if s.shape != v.shape or not np.all(np.isfinite(s)) or np.any(s < 0):
            raise MetricInputError(
                f"'seconds' must hold one non-negative duration per epoch ({v.size}); got shape "
                f"{s.shape}. Pass None if epoch times are unknown."
            )
        cum = np.cumsum(s)
        out.update(
            slope_per_second=_slope(cum[:n_early], v[:n_early]),
            seconds_to_best=float(cum[best]) if best is not None else _NAN,
            total_seconds=float(cum[-1]),
        )
    return out
