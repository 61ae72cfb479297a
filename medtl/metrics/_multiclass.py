"""Multi-class (K > 2) AUROC with confidence intervals, and the paired comparison of two models.

What two-class runs have, for K classes: each class one-vs-rest with its DeLong interval; the
unweighted (macro) mean with a seeded bootstrap interval (DeLong has no closed form for a mean of
one-vs-rest AUROCs whose positives and negatives overlap); and, for two models scored on the same
images, a paired bootstrap of the macro difference plus a DeLong test per class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from medtl.metrics._auroc import (
    _CHUNK_SCORES,
    _check_n_boot,
    auroc_ci,
    check_multiclass,
    delong_test,
)
from medtl.metrics._paired import mcnemar_test, summary_sentence
from medtl.metrics._validate import MetricInputError, check_alpha

_NAN = float("nan")


def _names(class_names: Sequence[str] | None, k: int) -> list[Any]:
    return list(class_names) if class_names is not None else list(range(k))


def _bootstrap_macro(
    y: np.ndarray, probas: np.ndarray, n_boot: int, seed: int | np.random.Generator
) -> np.ndarray:
    """Macro one-vs-rest AUROCs of ``n_boot`` class-stratified resamples, for m models jointly.

    ``probas`` is (m, n, K). Rows are resampled within each class, so every resample keeps the test
    set's class counts (every class present) and, with m > 1, the same rows for every model (a
    paired bootstrap). Vectorised with midranks like the binary bootstrap. Returns (n_boot, m).
    """
    rng = np.random.default_rng(seed)
    m_models, n, k = probas.shape
    groups = [np.flatnonzero(y == c) for c in range(k)]
    present = [c for c in range(k) if 0 < groups[c].size < n]
    sizes = [g.size for g in groups]
    starts = np.cumsum([0, *sizes])
    out = np.empty((n_boot, m_models))
    chunk = max(1, _CHUNK_SCORES // (n * max(1, len(present)) * m_models))
    for s0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s0)
        # rows of class c occupy the same columns starts[c]:starts[c+1] in every resample
        idx = np.concatenate(
            [g[rng.integers(0, g.size, size=(b, g.size))] for g in groups if g.size], axis=1
        )
        for mi in range(m_models):
            aucs = np.empty((b, len(present)))
            for jj, c in enumerate(present):
                r = stats.rankdata(probas[mi][idx, c], axis=1)
                npos = sizes[c]
                pos_rank = r[:, starts[c] : starts[c + 1]].sum(axis=1)
                aucs[:, jj] = (pos_rank - npos * (npos + 1) / 2.0) / (npos * (n - npos))
            out[s0 : s0 + b, mi] = aucs.mean(axis=1) if present else _NAN
    return out


def multiclass_auroc_ci(
    y: Any,
    proba: Any,
    class_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Per-class one-vs-rest AUROC with DeLong CIs and the macro AUROC with a bootstrap CI.

    Args:
        y: (n,) integer class indices 0..K-1.
        proba: (n, K) class probabilities (column k = P(class k)).
        class_names: K names, the keys of ``per_class`` (default: the indices).
        seed: bootstrap seed (the same seed gives the same interval).
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level.

    Returns:
        dict(per_class={name: dict(auroc, low, high, se, n_pos, n_neg)}, macro, macro_low,
        macro_high, macro_se, n, n_boot, seed, alpha, method). A class absent from ``y`` gets NaN
        (with a warning) and is left out of the macro mean.

    Example:
        >>> import numpy as np
        >>> y = np.repeat([0, 1, 2], 20)
        >>> res = multiclass_auroc_ci(y, np.eye(3)[y] * 0.8 + 0.2 / 3, ["a", "b", "c"], n_boot=200)
        >>> res["macro"]
        1.0
    """
    ya, pr = check_multiclass(y, proba, class_names)
    alpha = check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    names = _names(class_names, pr.shape[1])
    per_class: dict[Any, dict[str, Any]] = {}
    for j, name in enumerate(names):
        yj = (ya == j).astype(np.int64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="only one class present")
            r = auroc_ci(yj, pr[:, j], method="delong", alpha=alpha)
        if not np.isfinite(r["auroc"]):
            warnings.warn(
                f"class {name!r} is absent from y (or is every row): its one-vs-rest AUROC is "
                "undefined and left out of the macro mean.",
                RuntimeWarning,
                stacklevel=2,
            )
        per_class[name] = {k: r[k] for k in ("auroc", "low", "high", "se", "n_pos", "n_neg")}
    vals = np.array([v["auroc"] for v in per_class.values()])
    out: dict[str, Any] = {
        "per_class": per_class,
        "macro": float(np.nanmean(vals)) if np.isfinite(vals).any() else _NAN,
        "macro_low": _NAN,
        "macro_high": _NAN,
        "macro_se": _NAN,
        "n": int(ya.size),
        "n_boot": n_boot,
        "seed": seed,
        "alpha": alpha,
        "method": "per class: DeLong; macro: class-stratified bootstrap (percentile)",
    }
    if np.isfinite(vals).any():
        boots = _bootstrap_macro(ya, pr[None], n_boot, seed)[:, 0]
        out.update(
            macro_low=float(np.quantile(boots, alpha / 2)),
            macro_high=float(np.quantile(boots, 1 - alpha / 2)),
            macro_se=float(np.std(boots, ddof=1)),
        )
    return out


def compare_paired_multiclass(
    y: Any,
    pa: Any,
    pb: Any,
    class_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    name_a: str = "Model A",
    name_b: str = "Model B",
) -> dict[str, Any]:
    """Compare two multi-class models scored on the same test images.

    Args:
        y: (n,) class indices.
        pa: (n, K) probabilities of model A, rows in the same order as ``y``.
        pb: (n, K) probabilities of model B.
        class_names: K class names (keys of ``per_class``).
        seed: bootstrap seed.
        n_boot: paired bootstrap resamples.
        alpha: 1 - confidence level.
        name_a: A's name in the summary sentence.
        name_b: B's name in the summary sentence.

    Returns:
        dict with ``auc_a``, ``auc_b`` (macro AUROCs), ``diff`` (A - B); ``bootstrap`` (paired,
        class-stratified: low, high, se, p_value of the macro difference); ``per_class``
        ({name: DeLong test of that class's one-vs-rest AUROCs: auc_a, auc_b, diff, low, high,
        p_value}); ``mcnemar`` on the most-probable-class errors; ``summary``: one sentence.
    """
    if np.shape(pa) != np.shape(pb):
        raise MetricInputError(
            f"'pa' and 'pb' must have the same shape (same images, same classes); got "
            f"{np.shape(pa)} and {np.shape(pb)}."
        )
    ya, ra = check_multiclass(y, pa, class_names)
    _, rb = check_multiclass(ya, pb, class_names)
    alpha = check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    names = _names(class_names, ra.shape[1])
    per_class: dict[Any, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only one class present")
        for j, name in enumerate(names):
            yj = (ya == j).astype(np.int64)
            d = delong_test(yj, ra[:, j], rb[:, j], alpha=alpha)
            per_class[name] = {
                k: d[k] for k in ("auc_a", "auc_b", "diff", "se", "low", "high", "p_value")
            }
    aa = np.array([v["auc_a"] for v in per_class.values()])
    ab = np.array([v["auc_b"] for v in per_class.values()])
    ma = float(np.nanmean(aa)) if np.isfinite(aa).any() else _NAN
    mb = float(np.nanmean(ab)) if np.isfinite(ab).any() else _NAN
    boot: dict[str, Any] = dict.fromkeys(("low", "high", "se", "p_value"), _NAN)
    boot.update(n_boot=n_boot, seed=seed)
    if np.isfinite(ma) and np.isfinite(mb):
        b = _bootstrap_macro(ya, np.stack([ra, rb]), n_boot, seed)
        d = b[:, 0] - b[:, 1]
        le, ge = int(np.sum(d <= 0)), int(np.sum(d >= 0))
        boot.update(
            low=float(np.quantile(d, alpha / 2)),
            high=float(np.quantile(d, 1 - alpha / 2)),
            se=float(np.std(d, ddof=1)),
            p_value=float(min(1.0, 2 * (min(le, ge) + 1) / (n_boot + 1))),
        )
    mc = mcnemar_test(ra.argmax(axis=1) == ya, rb.argmax(axis=1) == ya)
    mc.update(
        accuracy_a=float(np.mean(ra.argmax(axis=1) == ya)),
        accuracy_b=float(np.mean(rb.argmax(axis=1) == ya)),
    )
    diff = float(ma - mb)
    return {
        "auc_a": float(ma),
        "auc_b": float(mb),
        "diff": diff,
        "alpha": alpha,
        "n": int(ya.size),
        "metric": "macro AUROC (one-vs-rest)",
        "bootstrap": boot,
        "per_class": per_class,
        "mcnemar": mc,
        "summary": summary_sentence(
            name_a,
            name_b,
            {"diff": diff, "low": boot["low"], "high": boot["high"], "p_value": boot["p_value"]},
            alpha,
            auc=float(ma),
            metric="macro AUROC",
            test="paired bootstrap",
        ),
    }
