"""Operating points: choosing a threshold on validation data and describing it on test data.

Convention everywhere in medtl: an image is called positive when ``p >= threshold``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_curve

from medtl._options import check_range, look_up_option
from medtl.metrics._validate import (
    MetricInputError,
    check_alpha,
    check_pair,
    safe_div,
)

_NAN = float("nan")
RULES = ("youden", "sensitivity", "specificity", "fixed")


def choose_threshold(
    y_val: Any, p_val: Any, *, rule: str = "youden", target: float | None = None
) -> float:
    """Choose a decision threshold on VALIDATION scores, to be applied unchanged to test scores.

    Choosing it on the test set would make the test sensitivity/specificity optimistic.

    Args:
        y_val: validation 0/1 labels.
        p_val: validation scores in [0, 1].
        rule: ``"youden"`` maximises sensitivity + specificity - 1; ``"sensitivity"`` gives the
            highest threshold whose validation sensitivity is >= ``target`` (e.g. a screening test
            that must miss few cases); ``"specificity"`` gives the lowest threshold whose validation
            specificity is >= ``target``; ``"fixed"`` returns ``target`` itself.
        target: the required sensitivity/specificity, or the fixed threshold, in [0, 1].

    Returns:
        The threshold (positive when ``p >= threshold``). If ``y_val`` holds one class only, the
        data-driven rules are undefined: a warning is raised and 0.5 returned.

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], rule="sensitivity", target=1.0)
        0.35
    """
    rule = look_up_option("rule", rule, RULES)
    if rule != "youden":
        if target is None:
            raise MetricInputError(
                f"rule={rule!r} needs a 'target' in [0, 1] (e.g. target=0.9); got None."
            )
        check_range("target", float(target), 0.0, 1.0)
    ya, pa = check_pair(y_val, p_val, "y_val", "p_val")
    if rule == "fixed":
        return float(target)  # type: ignore[arg-type]
    n_pos = int(ya.sum())
    if n_pos in (0, ya.size):
        warnings.warn(
            f"only one class present in y_val (all {int(n_pos > 0)}): the {rule!r} threshold is "
            "undefined; falling back to 0.5.",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0.5
    fpr, tpr, thr = roc_curve(ya, pa, drop_intermediate=False)
    # thr[0] is +inf (nobody positive); replace it by a finite value just above the top score.
    thr = thr.astype(np.float64)
    thr[0] = float(np.nextafter(pa.max(), np.inf))
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))  # first = highest threshold among ties
    elif rule == "sensitivity":
        i = int(np.flatnonzero(tpr >= float(target) - 1e-12)[0])  # type: ignore[arg-type]
    else:  # specificity: the last (lowest) threshold whose false-positive rate is small enough
        i = int(np.flatnonzero(1.0 - fpr >= float(target) - 1e-12)[-1])  # type: ignore[arg-type]
    return float(thr[i])


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n (scipy's ``binomtest``).

    Unlike the Wald interval it behaves well near 0 and 1 (e.g. sensitivity 10/10). Returns
    (NaN, NaN) when n == 0.
    """
    if n <= 0:
        return (_NAN, _NAN)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return (float(ci.low), float(ci.high))


def ppv_npv_at_prevalence(
    sensitivity: float, specificity: float, prevalence: float
) -> tuple[float, float]:
    """PPV and NPV at a given prevalence by Bayes' rule (NaN where undefined)."""
    tp = sensitivity * prevalence
    fp = (1 - specificity) * (1 - prevalence)
    tn = specificity * (1 - prevalence)
    fn = (1 - sensitivity) * prevalence
    return safe_div(tp, tp + fp), safe_div(tn, tn + fn)


def operating_point(
    y: Any,
    p: Any,
    threshold: float,
    *,
    prevalence: float | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Describe a classifier at one threshold in clinical terms.

    Args:
        y: 0/1 labels (usually TEST labels).
        p: scores in [0, 1]; an image is positive when ``p >= threshold``.
        threshold: the operating threshold (choose it on validation with :func:`choose_threshold`).
        prevalence: the expected prevalence where the model will be deployed, in (0, 1). PPV and NPV
            depend on it; the test set's prevalence is often not the clinic's.
        alpha: 1 - confidence level for the Wilson intervals.

    Returns:
        dict with ``threshold``; ``tp, fp, tn, fn``; ``sensitivity``, ``specificity``, ``ppv``,
        ``npv`` (at the test prevalence), each with ``*_low`` / ``*_high`` Wilson bounds;
        ``ppv_at_prevalence`` / ``npv_at_prevalence`` (Bayes' rule at ``prevalence``; NaN when it
        is not given); ``lr_pos``, ``lr_neg`` (likelihood ratios; ``lr_pos`` is inf when there are
        no false positives); ``f1``, ``accuracy``; ``test_prevalence``,
        ``deployment_prevalence``; ``confusion`` as [[tn, fp], [fn, tp]] (rows = truth).
        Undefined ratios (e.g. sensitivity with no positives) are NaN, never an error.
    """
    ya, pa = check_pair(y, p)
    alpha = check_alpha(alpha)
    thr = float(threshold)
    if not np.isfinite(thr):
        raise MetricInputError(f"'threshold' must be a finite number; got {threshold!r}.")
    if prevalence is not None:
        check_range("prevalence", float(prevalence), 1e-9, 1 - 1e-9)
    pred = (pa >= thr).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(ya, pred, labels=[0, 1]).ravel())
    n = tn + fp + fn + tp
    sens, spec = safe_div(tp, tp + fn), safe_div(tn, tn + fp)
    out: dict[str, Any] = {"threshold": thr, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, k, m in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        lo, hi = wilson_ci(k, m, alpha)
        out[name], out[f"{name}_low"], out[f"{name}_high"] = safe_div(k, m), lo, hi
    if prevalence is not None and np.isfinite(sens) and np.isfinite(spec):
        ppv_d, npv_d = ppv_npv_at_prevalence(sens, spec, float(prevalence))
    else:
        ppv_d, npv_d = _NAN, _NAN
    # LR+ = sens / (1 - spec): infinite when there are no false positives (spec == 1, sens > 0).
    lr_pos = safe_div(sens, 1 - spec) if not (spec == 1 and sens > 0) else float("inf")
    lr_neg = safe_div(1 - sens, spec)
    out.update(
        ppv_at_prevalence=ppv_d,
        npv_at_prevalence=npv_d,
        lr_pos=lr_pos,
        lr_neg=lr_neg,
        f1=safe_div(2 * tp, 2 * tp + fp + fn),
        accuracy=safe_div(tp + tn, n),
        test_prevalence=safe_div(tp + fn, n),
        deployment_prevalence=None if prevalence is None else float(prevalence),
        alpha=alpha,
        confusion=[[tn, fp], [fn, tp]],
    )
    return out
