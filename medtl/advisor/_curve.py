"""Statistics behind the measured advice: bootstrap AUROC on shared images and power-law learning curves.

Pure numpy/scipy; no models. ``bootstrap_auroc`` scores many replicates of one evaluation set at once
(weighted Mann-Whitney statistic, ties counted half), so that every strategy and training size is scored
on the *same* resampled images and differences between them are paired.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtl.metrics import weighted_auc
from medtl.tasks import Task, task_for

# 90% two-sided intervals: their lower bound is a one-sided 95% bound, which is what the rule reads.
INTERVAL = 0.90
# Extrapolation beyond the measured sizes is a model assumption, not a measurement: intervals are widened
# on each side by this fraction of the extrapolated change (pred(N) - observed at the largest size).
MODEL_ERROR = 0.5
# Least half-width of a predicted interval: one training run per size leaves training noise unmeasured.
MIN_HALF_WIDTH = 0.01
# Fallback when the curve cannot be fitted: the observed AUROC, and an upper end allowing this much gain per
# doubling of the data (a generous value for ImageNet transfer on medical images; a prior, not fitted).
FALLBACK_GAIN_PER_DOUBLING = 0.03


def auroc_standard_error(auc: float, counts: Sequence[int] | Sequence[tuple[int, int]]) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC measured on images with these class counts.

    Two classes: ``counts = [negatives, positives]``. More classes (macro one-vs-rest): the root mean
    square of the per-class errors. Several findings (a macro over yes/no questions): ``counts`` is
    one ``(negatives, positives)`` pair per averaged finding. The percentile bootstrap of a nearly separable set of a few
    images collapses (every replicate scores ~1.0); this analytic error does not. With the AUROC
    capped at ``1 - 1/(2 n_min)`` (``n_min``: the smaller side) - an AUROC of 1.0 on four positives
    does not show a perfect test - it stays positive. A floor for the predicted intervals; not fitted.
    """
    if counts and isinstance(counts[0], tuple | list):
        sides = [(int(a), int(b)) for a, b in counts]  # type: ignore[misc]
    else:
        counts = [int(c) for c in counts]  # type: ignore[arg-type]
        total = sum(counts)
        sides = [(total - c, c) for c in counts] if len(counts) > 2 else [tuple(counts)]
    var = []
    for n_neg, n_pos in sides:
        if n_neg < 1 or n_pos < 1:
            continue
        a = float(np.clip(auc, 0.5, 1.0 - 0.5 / min(n_neg, n_pos)))
        q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
        v = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (
            n_pos * n_neg
        )
        var.append(max(v, 0.0))
    return float(math.sqrt(np.mean(var))) if var else float("nan")


def weighted_auroc(
    y: np.ndarray,
    proba: np.ndarray,
    weights: np.ndarray,
    task: Task | None = None,
    questions: Sequence[str] | None = None,
) -> np.ndarray:
    """The task's headline AUROC (binary: the positive class; several classes or findings: the
    macro over :meth:`medtl.tasks.Task.questions`) for each row of ``weights``.

    Args:
        y: labels as the task keeps them ((n,) class indices; (n, K) for several findings).
        proba: (n, K) probabilities.
        weights: (B, n) non-negative multiplicities (a bootstrap replicate per row; ones = the plain AUROC).
        task: default: the single-label task of ``proba``'s columns.
        questions: average over these questions only (e.g. the findings that can be scored on
            these images); default: all.

    Returns:
        (B,) AUROCs; NaN where a class is absent from a replicate.
    """
    proba = np.asarray(proba, dtype=np.float64)
    w_all = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    task = task or task_for([str(k) for k in range(proba.shape[1])])
    out = []
    for name, pos_all, score in task.questions(y, proba):
        if questions is not None and name not in questions:
            continue
        known = ~np.isnan(pos_all)  # an unlabelled image weighs nothing for this question
        out.append(weighted_auc(score, np.nan_to_num(pos_all), np.where(known, w_all, 0.0)))
    return np.mean(out, axis=0)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot + 1, n) multiplicities: row 0 is the plain sample (ones), the rest are bootstrap draws."""
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    return np.vstack([np.ones((1, n)), draws])


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a - b * n**(-c)``: AUROC rising towards ``a`` as the training size ``n`` grows."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


_BOUNDS = ([0.5, 0.0, 0.05], [1.0, 50.0, 1.5])


def fit_power_law(
    n: Any, auc: Any, sigma: Any | None = None, p0: Any | None = None
) -> tuple[np.ndarray, bool]:
    """Fit :func:`power_law` with ``scipy.optimize.curve_fit`` (bounded: asymptote in [0.5, 1]).

    Returns:
        (params (a, b, c), ok). ``ok`` is False when the fit is ill-posed (fewer than 3 distinct sizes,
        non-finite points, or the optimiser failed); the params are then NaN.
    """
    from scipy.optimize import curve_fit

    n = np.asarray(n, dtype=np.float64)
    auc = np.asarray(auc, dtype=np.float64)
    ok = np.isfinite(auc) & (n > 0)
    if len(np.unique(n[ok])) < 3:
        return np.full(3, np.nan), False
    sig = None if sigma is None else np.maximum(np.asarray(sigma, dtype=np.float64)[ok], 1e-3)
    top = float(np.max(auc[ok]))
    if p0 is None:
        p0 = [min(max(top + 0.02, 0.51), 0.999), 1.0, 0.5]
    else:  # a start inside the bounds (e.g. the point fit, to refit bootstrap replicates quickly)
        p0 = np.clip(np.asarray(p0, dtype=np.float64), _BOUNDS[0], _BOUNDS[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(
                power_law, n[ok], auc[ok], p0=p0, sigma=sig, bounds=_BOUNDS, maxfev=2000
            )
    except (RuntimeError, ValueError):
        return np.full(3, np.nan), False
    if not np.all(np.isfinite(params)):
        return np.full(3, np.nan), False
    return params, True


@dataclass
class CurvePrediction:
    """A strategy's learning curve extrapolated to the full training size.

    Attributes:
        sizes, observed: the measured training sizes and AUROCs (point estimates).
        at_full: predicted AUROC at ``n_full`` with its interval ``[low, high]``.
        at_double: predicted AUROC at ``2 * n_full``; gain_2x: at_double - at_full with its interval.
        fitted: False when the power law was ill-posed and the honest fallback was used.
        params: (a, b, c) of the point fit (None when not fitted).
        boot_full, boot_double: per-replicate predictions (paired across strategies; not serialised).
    """

    sizes: list[int]
    observed: list[float]
    n_full: int
    at_full: float
    interval: list[float]
    at_double: float
    gain_2x: float
    gain_2x_interval: list[float]
    fitted: bool
    params: list[float] | None = None
    boot_full: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    boot_double: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "observed": [round(v, 4) for v in self.observed],
            "n_full": self.n_full,
            "predicted_auroc": round(self.at_full, 4),
            "interval": [round(v, 4) for v in self.interval],
            "predicted_auroc_2x": round(self.at_double, 4),
            "gain_2x": round(self.gain_2x, 4),
            "gain_2x_interval": [round(v, 4) for v in self.gain_2x_interval],
            "fitted": self.fitted,
            "params": None if self.params is None else [round(v, 4) for v in self.params],
        }


def _quantiles(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(x, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
    return float(lo), float(hi)


def predict_curve(
    sizes: list[int], boot: np.ndarray, n_full: int, eval_counts: Sequence[Any] | None = None
) -> CurvePrediction:
    """Fit the point curve and one curve per bootstrap replicate; predict at ``n_full`` and twice that.

    Args:
        sizes: training sizes (ascending).
        boot: (B + 1, len(sizes)) AUROCs; row 0 the plain estimate, the rest bootstrap replicates of the
            same evaluation images (shared with the other strategy, so differences stay paired).
        n_full: the training size the user has.
        eval_counts: images per class in the evaluation set (or one (negatives, positives) pair
            per averaged finding); the interval is then at least +- z x
            :func:`auroc_standard_error` wide (the bootstrap understates a small set's error).
    """
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    point = boot[0]
    sigma = np.nanstd(boot[1:], axis=0) if len(boot) > 1 else None
    params, ok = fit_power_law(sizes_arr, point, sigma)
    top_n = float(sizes_arr[-1])
    last = float(point[-1]) if np.isfinite(point[-1]) else float(np.nanmean(point))
    n_full = int(max(n_full, top_n))
    if ok:
        full_b = np.empty(len(boot))
        dbl_b = np.empty(len(boot))
        for i, row in enumerate(boot):
            p, good = (params, True) if i == 0 else fit_power_law(sizes_arr, row, sigma, params)
            if not good:
                full_b[i] = dbl_b[i] = np.nan
                continue
            full_b[i], dbl_b[i] = power_law(np.array([n_full, 2 * n_full]), *p)
        full, dbl = float(full_b[0]), float(dbl_b[0])
        lo, hi = _quantiles(full_b[1:]) if len(boot) > 1 else (full, full)
        widen = MODEL_ERROR * abs(full - last)
        interval = [min(lo, full) - widen, max(hi, full) + widen]
        g_lo, g_hi = _quantiles(dbl_b[1:] - full_b[1:]) if len(boot) > 1 else (dbl - full,) * 2
        gain = dbl - full
        g_interval = [min(g_lo, gain) - MODEL_ERROR * gain, max(g_hi, gain) + MODEL_ERROR * gain]
    else:
        doublings = math.log2(max(n_full / top_n, 1.0))
        last_b = boot[:, -1]
        full_b = last_b.copy()
        dbl_b = last_b.copy()
        full = dbl = last
        lo, hi = _quantiles(last_b[1:]) if len(boot) > 1 else (last, last)
        interval = [lo, hi + FALLBACK_GAIN_PER_DOUBLING * doublings]
        gain = 0.0
        g_interval = [0.0, FALLBACK_GAIN_PER_DOUBLING]
        params = None
    floor = MIN_HALF_WIDTH
    if eval_counts is not None and np.isfinite(full):
        from scipy.stats import norm

        se = auroc_standard_error(full, eval_counts)
        if np.isfinite(se):
            floor = max(floor, float(norm.ppf((1 + INTERVAL) / 2)) * se)
    half = max((interval[1] - interval[0]) / 2, floor)
    mid = (interval[0] + interval[1]) / 2
    interval = [max(mid - half, 0.0), min(mid + half, 1.0)]
    interval = [min(interval[0], full), max(interval[1], full)]
    return CurvePrediction(
        sizes=[int(s) for s in sizes],
        observed=[float(v) for v in point],
        n_full=n_full,
        at_full=full,
        interval=interval,
        at_double=dbl,
        gain_2x=gain,
        gain_2x_interval=[max(g_interval[0], -1.0), min(g_interval[1], 1.0)],
        fitted=ok,
        params=None if params is None else [float(v) for v in params],
        boot_full=full_b,
        boot_double=dbl_b,
    )


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired bootstrap summary of ``a - b`` (row 0 the point estimate, the rest replicates).

    Returns:
        ``{"diff", "ci_low", "ci_high", "p_value", "significant"}`` with a 95% percentile interval and a
        two-sided bootstrap p-value (twice the smaller tail beyond 0).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    reps = d[1:][np.isfinite(d[1:])]
    if len(reps) == 0:
        return {
            "diff": float(d[0]),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": float("nan"),
            "significant": False,
        }
    lo, hi = np.quantile(reps, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0)) + 1.0 / (len(reps) + 1))
    return {
        "diff": float(d[0]),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(p),
        "significant": bool(lo > 0 or hi < 0),
    }
