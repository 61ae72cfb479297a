"""The clinical report: every headline metric of one model on one test set, in one object."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from medtl._options import check_range, look_up_option
from medtl.formatting import json_safe
from medtl.metrics._auroc import auprc, auroc_ci
from medtl.metrics._calibration import (
    apply_temperature,
    brier,
    calibration_slope_intercept,
    decision_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from medtl.metrics._threshold import RULES, choose_threshold, operating_point
from medtl.metrics._validate import MetricInputError, check_pair

TEST_FALLBACK_SOURCE = "test (no validation split given; optimistic)"


def _calibration(
    y: np.ndarray, p: np.ndarray, n_bins: int | str, strategy: str, alpha: float
) -> dict[str, Any]:
    rel = reliability_curve(y, p, n_bins, strategy=strategy, alpha=alpha)
    return {
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p, len(rel["count"]), strategy=strategy),
        "n_bins": len(rel["count"]),
        "bin_strategy": strategy,
        **calibration_slope_intercept(y, p, alpha=alpha),
        "reliability": rel,
    }


@dataclasses.dataclass
class ClinicalReport:
    """Clinical metrics of one model on one test set (see :func:`clinical_report`).

    Attributes:
        n, n_pos, n_neg, prevalence: test-set size and positive share.
        auroc: dict(auroc, low, high, se, method, ...) from :func:`auroc_ci`.
        auprc: average precision.
        threshold_rule, threshold_target, threshold: how the operating threshold was chosen.
        threshold_source: ``"validation"``, or a note that it was chosen on test (optimistic).
        operating_point: :func:`operating_point` on test at ``threshold``.
        calibration: dict(brier, ece, n_bins, bin_strategy, slope, intercept (each with
            ``_low``/``_high``), reliability); see :func:`calibration_slope_intercept`.
        decision_curve: :func:`decision_curve` on test, at the deployment prevalence when given.
        deployment_prevalence: the prevalence used for the deployment PPV/NPV (None if not given).
        temperature: fitted temperature (None unless requested and a validation split was given).
        calibrated: calibration of the temperature-scaled test probabilities, plus the threshold
            mapped onto the scaled scale (same classifications), or None.
        warnings: caveats raised while building the report, in plain words.
    """

    n: int
    n_pos: int
    n_neg: int
    prevalence: float
    auroc: dict[str, Any]
    auprc: float
    threshold_rule: str
    threshold_target: float | None
    threshold: float
    threshold_source: str
    operating_point: dict[str, Any]
    calibration: dict[str, Any]
    decision_curve: dict[str, list[float]]
    deployment_prevalence: float | None = None
    temperature: float | None = None
    calibrated: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (numpy -> Python, NaN/inf -> None), e.g. for ``metrics.json``."""
        return json_safe(dataclasses.asdict(self))

    def summary(self) -> str:
        """A few plain-language lines for a report or the app."""
        a, op = self.auroc, self.operating_point
        level = f"{100 * (1 - a.get('alpha', 0.05)):g}%"

        def f(x: Any) -> str:
            return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"

        lines = [
            f"Test set: {self.n} images, {self.n_pos} positive (prevalence {f(self.prevalence)}).",
            f"AUROC {f(a['auroc'])} ({level} CI {f(a['low'])} to {f(a['high'])}, {a['method']}); "
            f"AUPRC {f(self.auprc)}.",
            f"At threshold {f(self.threshold)} ({self.threshold_rule}, chosen on "
            f"{self.threshold_source}): sensitivity {f(op['sensitivity'])} "
            f"({f(op['sensitivity_low'])}-{f(op['sensitivity_high'])}), specificity "
            f"{f(op['specificity'])} ({f(op['specificity_low'])}-{f(op['specificity_high'])}).",
        ]
        if self.deployment_prevalence is not None:
            lines.append(
                f"At a deployment prevalence of {f(self.deployment_prevalence)}: PPV "
                f"{f(op['ppv_at_prevalence'])}, NPV {f(op['npv_at_prevalence'])}."
            )
        c = self.calibration
        lines.append(
            f"Calibration: slope {f(c.get('slope'))} (1 is ideal), intercept "
            f"{f(c.get('intercept'))} (0 is ideal), Brier {f(c['brier'])}, ECE {f(c['ece'])} "
            f"({c['n_bins']} bins)."
        )
        return "\n".join(lines)


def clinical_report(
    y_test: Any,
    p_test: Any,
    *,
    y_val: Any = None,
    p_val: Any = None,
    rule: str = "youden",
    target: float | None = None,
    prevalence: float | None = None,
    ci_method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
    temperature: bool = False,
    alpha: float = 0.05,
    n_bins: int | str = "auto",
    bin_strategy: str = "quantile",
) -> ClinicalReport:
    """Build a :class:`ClinicalReport` for one model's test-set probabilities.

    The operating threshold is chosen on the validation split (``y_val``, ``p_val``) with ``rule``
    and ``target`` (see :func:`choose_threshold`) and then applied to test. Without a validation
    split the rule is applied to the test set itself, which flatters the operating point: the
    report records ``threshold_source = "test (no validation split given; optimistic)"`` and warns.

    Args:
        y_test: test 0/1 labels.
        p_test: test P(positive) in [0, 1].
        y_val: validation labels (for the threshold and the temperature).
        p_val: validation P(positive).
        rule: threshold rule: "youden", "sensitivity", "specificity" or "fixed".
        target: the rule's target (see :func:`choose_threshold`).
        prevalence: deployment prevalence for PPV/NPV by Bayes' rule.
        ci_method: "delong" or "bootstrap" for the AUROC CI.
        n_boot: bootstrap resamples (ci_method="bootstrap").
        seed: bootstrap seed.
        temperature: also fit temperature scaling on validation and report calibrated metrics.
        alpha: 1 - confidence level.
        n_bins: calibration bins, or "auto" (about one per 30 test images, 3 to 10; see
            :func:`reliability_bins`).
        bin_strategy: "quantile" (bins of equal counts) or "uniform" (equal widths).

    Example:
        >>> rep = clinical_report([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], y_val=[0, 1], p_val=[0.2, 0.7])
        >>> rep.to_dict()["threshold_source"]
        'validation'
    """
    yt, pt = check_pair(y_test, p_test, "y_test", "p_test")
    rule = look_up_option("rule", rule, RULES)
    if (y_val is None) != (p_val is None):
        raise MetricInputError(
            "Pass both 'y_val' and 'p_val' (validation labels and scores) or neither; got only "
            f"{'y_val' if p_val is None else 'p_val'}."
        )
    if prevalence is not None:
        check_range("prevalence", float(prevalence), 1e-9, 1 - 1e-9)
    notes: list[str] = []
    has_val = y_val is not None
    yv, pv, source = _threshold_data(yt, pt, y_val, p_val, rule, notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thr = choose_threshold(yv, pv, rule=rule, target=target)
        auc = auroc_ci(yt, pt, method=ci_method, alpha=alpha, n_boot=n_boot, seed=seed)
        ap = auprc(yt, pt)
        op = operating_point(yt, pt, thr, prevalence=prevalence, alpha=alpha)
        calib = _calibration(yt, pt, n_bins, bin_strategy, alpha)
        dc = decision_curve(yt, pt, prevalence=prevalence)
        t_fit: float | None = None
        calibrated: dict[str, Any] | None = None
        if temperature and has_val:
            t_fit, calibrated = _temperature_scaled(yt, pt, yv, pv, thr, calib["n_bins"],
                                                    bin_strategy, alpha)  # fmt: skip
        elif temperature:
            warnings.warn(
                "temperature=True needs a validation split (y_val, p_val) to fit T without "
                "touching the test set; temperature scaling skipped.",
                UserWarning,
                stacklevel=2,
            )
    _reemit_once(caught, notes)
    n_pos = int(yt.sum())
    return ClinicalReport(
        n=int(yt.size),
        n_pos=n_pos,
        n_neg=int(yt.size - n_pos),
        prevalence=float(n_pos / yt.size),
        auroc=auc,
        auprc=ap,
        threshold_rule=rule,
        threshold_target=None if target is None else float(target),
        threshold=float(thr),
        threshold_source=source,
        operating_point=op,
        calibration=calib,
        decision_curve=dc,
        deployment_prevalence=None if prevalence is None else float(prevalence),
        temperature=t_fit,
        calibrated=calibrated,
        warnings=notes,
    )


def _threshold_data(
    yt: np.ndarray, pt: np.ndarray, y_val: Any, p_val: Any, rule: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels and scores the threshold is chosen on, and where they come from (warns on test)."""
    if y_val is not None:
        yv, pv = check_pair(y_val, p_val, "y_val", "p_val")
        return yv, pv, "validation"
    if rule == "fixed":
        return yt, pt, "fixed"
    msg = (
        f"no validation split given: the {rule!r} threshold is chosen on the test set, so "
        "the test operating point is optimistic. Pass y_val/p_val."
    )
    warnings.warn(msg, UserWarning, stacklevel=3)
    notes.append(msg)
    return yt, pt, TEST_FALLBACK_SOURCE


def _temperature_scaled(
    yt: np.ndarray,
    pt: np.ndarray,
    yv: np.ndarray,
    pv: np.ndarray,
    thr: float,
    n_bins: int,
    bin_strategy: str,
    alpha: float,
) -> tuple[float, dict[str, Any]]:
    """The temperature fitted on validation, and the test calibration and threshold it gives."""
    t_fit = fit_temperature(yv, pv, kind="probabilities")
    pt_cal = apply_temperature(pt, t_fit, kind="probabilities")
    calibrated = _calibration(yt, pt_cal, n_bins, bin_strategy, alpha)
    # Temperature scaling is monotone: mapping the threshold keeps every classification.
    calibrated["threshold"] = float(
        apply_temperature(np.array([min(max(thr, 0.0), 1.0)]), t_fit, kind="probabilities")[0]
    )
    return t_fit, calibrated


def _reemit_once(caught: list[warnings.WarningMessage], notes: list[str]) -> None:
    """Re-emit the caught caveats once each (at clinical_report's caller) and keep them in notes."""
    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.add(text)
            notes.append(text)
            warnings.warn(text, w.category, stacklevel=3)
