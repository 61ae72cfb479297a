"""The advisor's decision rule: measured, extrapolated comparisons in, an :class:`Advice` out. No I/O.

The rule (documented with its evidence in ``benchmarks/README_advisor.md``):

1. A strategy whose reference cost on the full data exceeds ``budget_minutes`` is excluded.
2. Let ``d`` be the fine-tuning minus feature-extraction AUROC measured in the pilot at its largest
   size ``n_p`` (paired: the same held-out images). The decision is about the user's full size ``N``:
   the learning curves say how much the difference grows from ``n_p`` to ``N`` (fine-tuning's curve is
   usually steeper), so ``d + growth`` is the data's estimate there, and it is combined with a prior
   ``N(PRIOR_GAIN, PRIOR_SD^2)`` (published evidence: fine-tuning usually gains a little) by precision
   weighting: the expected gain ``G`` with its spread (:func:`full_size_gain`). Fine-tune when ``G``
   pays for its cost: ``G >= MIN_GAIN + GAIN_PER_HOUR x extra hours`` (the extra reference minutes of
   fine-tuning over feature extraction); otherwise extract features. Why not ``d`` alone (the previous
   rule, chosen on a 64 px grid): at 224 px the pilot measures a fraction of the pool with a short
   schedule, and a comparison at a quarter of the pool is biased toward feature extraction exactly
   where fine-tuning's steeper curve matters. The constants were chosen leave one dataset out on the
   224 px grid (``benchmarks/README_advisor.md``).
   For small data sets, where running both strategies in full on K folds costs no more than the pilot,
   ``d`` is that cross-validated comparison near the full size (``Measured.method``).
3. Confidence: the probability, under ``G``'s normal spread, that the gain lies on the pick's side of
   what fine-tuning's extra time needs: "high" from 0.9, "medium" from 0.7 (or when the budget
   forced the pick), "low" below. Fine-tuning's predicted AUROC is feature extraction's plus ``G``, so
   the numbers shown agree with the pick.

Domain-gap signals (BatchNorm KL, ImageNet entropy, k-NN) are reported, never voted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtl.advisor._curve import INTERVAL, MODEL_ERROR, CurvePrediction, paired_difference
from medtl.advisor._profile import Profile
from medtl.formatting import json_safe
from medtl.strategies import FeatureExtraction, FineTuning, strategy_description, strategy_label

#: the strategies the advisor compares, named by their classes (the registry owns the names)
FE = FeatureExtraction.name
FT = FineTuning.name

STRATEGIES = (FE, FT)
# human names from their one owner, medtl.strategies
LABELS = {s: f"{strategy_label(s).lower()} ({strategy_description(s)})" for s in STRATEGIES}
SHORT = {s: strategy_label(s).lower() for s in STRATEGIES}

# A gain below half a point of AUROC is not visible in a clinical validation of a few hundred cases.
MIN_GAIN = 0.005
# What an hour of extra training must buy: 0.01 AUROC per hour (a value judgement: a day of a 2-core
# CPU for +0.24 AUROC would be worth it, a day for +0.05 would not). Applied to reference minutes.
GAIN_PER_HOUR = 0.01
# The prior on fine-tuning minus feature extraction at the user's full size (AUROC): fine-tuning usually
# gains a little in medical transfer (Kornblith et al. 2019: fine-tuning beat fixed features on all 12
# natural-image sets; Doerrich et al. 2025, MedMNIST+: end-to-end training beat linear probing in most
# medical settings, more so at larger images and sizes), with a spread that covers the cases where it
# loses. The pilot's measurement is shrunk towards it by their precisions.
PRIOR_GAIN = 0.01
PRIOR_SD = 0.02
# A fine-tuning pilot that trains less than the real run (a short schedule, part of the pool) measures a
# weaker fine-tuning than the user will get; this is added to its measured difference. The three
# constants were chosen on the 224 px development grid's 9 cells (Kermany, brain MRI, NIH; truth: seed
# means) from (0, .005, .01, .02, .03) x (.01, .02, .04, none) x (0, .005, .01); scored leave one dataset
# out (each dataset's cells judged by constants chosen without it): benchmarks/README_advisor.md.
PILOT_BIAS = 0.01
Z90 = 1.6449  # two-sided 90% normal quantile: the advice's intervals are 90%
Z95 = 1.96

# Domain-gap thresholds on the BatchNorm KL, for the profile's description only (see the README).
KL_SMALL = 0.2
KL_LARGE = 0.33
TINY_IMAGE_PX = 32


@dataclass
class Measured:
    """What the pilot measured and what the curves predict (the rule's only inputs besides the profile).

    Attributes:
        curves: {FE, FT} -> :class:`CurvePrediction` at the full size.
        paired: measured fine-tuning minus feature extraction at ``paired["size"]`` (the largest pilot
            size both ran), from :func:`paired_difference` over the same held-out images.
        minutes: reference minutes of each strategy's full run (deterministic: see ``CostModel``).
        n_eval: distinct held-out images scored (all repeats' when their folds are disjoint, else one
            repeat's); repeats: number of holdouts.
        findings: several findings per image: ``scored`` (the findings the macro AUROC averages),
            ``unscored`` ({finding: fewest held-out positives / negatives}), ``min_scored`` (the
            rule's count); empty for single-label data.
    """

    curves: dict[str, CurvePrediction]
    paired: dict[str, Any]
    minutes: dict[str, float]
    n_eval: int = 0
    repeats: int = 1
    findings: dict[str, Any] = field(default_factory=dict)
    method: str = "pilot"  # or "cross_validation": both strategies in full on K folds (small data)

    def predicted_gain(self) -> dict[str, float]:
        """Predicted FT - FE AUROC at the full size: point, 90% interval and share of replicates > 0."""
        fe, ft = self.curves[FE], self.curves[FT]
        d_b = np.asarray(ft.boot_full, dtype=float) - np.asarray(fe.boot_full, dtype=float)
        d = float(ft.at_full - fe.at_full)
        reps = d_b[1:][np.isfinite(d_b[1:])] if len(d_b) > 1 else np.zeros(0)
        if len(reps):
            lo, hi = np.quantile(reps, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
            share = float(np.mean(reps > 0))
        else:  # no replicates: only the measured difference's spread is known
            half = max(abs(self.paired.get("ci_high", d) - self.paired.get("ci_low", d)) / 2, 0.02)
            lo, hi, share = d - half, d + half, 0.5
        widen = MODEL_ERROR * abs(d - float(self.paired.get("diff", d)))
        return {
            "diff": d,
            "low": float(min(lo, d) - widen),
            "high": float(max(hi, d) + widen),
            "share_positive": share,
        }


def curve_gain_growth(params: dict[str, list[float] | None], n_from: float, n_to: float) -> float:
    """How much the learning curves say fine-tuning's lead over feature extraction grows from
    ``n_from`` to ``n_to`` images (0 when either curve was not fitted)."""
    from medtl.advisor._curve import power_law

    pf, pt = params.get(FE), params.get(FT)
    if not pf or not pt or not (n_from > 0 and n_to > 0):
        return 0.0
    n = np.array([n_from, n_to], dtype=np.float64)
    gain = power_law(n, *pt) - power_law(n, *pf)
    return float(gain[1] - gain[0])


def full_size_gain(
    measured: dict[str, Any],
    params: dict[str, list[float] | None],
    n_full: int,
    extrapolated: dict[str, float] | None = None,
    *,
    prior_gain: float = PRIOR_GAIN,
    prior_sd: float = PRIOR_SD,
    shortened: bool = False,
    pilot_bias: float = PILOT_BIAS,
) -> dict[str, Any]:
    """The gain of fine-tuning over feature extraction expected at the user's full size.

    The pilot's paired difference ``d`` (95% CI) was measured at ``measured["size"]`` images; the
    learning curves say how much the difference grows from there to ``n_full`` (fine-tuning's curve is
    usually steeper). ``d + growth`` is the data's estimate (its spread: the measurement's plus
    ``MODEL_ERROR`` x the growth, for the extrapolation), combined with the prior ``N(prior_gain,
    prior_sd^2)`` by precision weighting. Without a measured difference, the curves' own extrapolated
    difference (``extrapolated``: diff, low, high at 90%) is the data's estimate. ``prior_sd=inf``
    ignores the prior. ``shortened``: the fine-tuning pilot trained less than the real run (fewer
    epochs, or part of the pool): ``pilot_bias`` is added to the measured difference, the amount by
    which such a pilot has understated fine-tuning's gain.

    Returns:
        ``{"diff", "sd", "low", "high"}`` (90%) and the parts: ``data_estimate``, ``data_sd``,
        ``growth``, ``measured_at``, ``prior``.
    """
    d = float(measured.get("diff", float("nan")))
    size = measured.get("size")
    growth = 0.0
    if np.isfinite(d):
        growth = curve_gain_growth(params, float(size or 0), float(n_full))
        lo, hi = measured.get("ci_low"), measured.get("ci_high")
        ok = lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi)
        sd_m = (float(hi) - float(lo)) / (2 * Z95) if ok else 0.02
        bias = pilot_bias if shortened else 0.0
        x, sd_x = d + growth + bias, math.hypot(max(sd_m, 0.005), MODEL_ERROR * growth)
    elif extrapolated is not None and np.isfinite(extrapolated.get("diff", float("nan"))):
        x = float(extrapolated["diff"])
        sd_x = max((float(extrapolated["high"]) - float(extrapolated["low"])) / (2 * Z90), 0.005)
    else:
        x, sd_x = float("nan"), float("inf")
    w_x = 0.0 if not np.isfinite(x) else 1.0 / sd_x**2
    w_0 = 0.0 if not np.isfinite(prior_sd) or prior_sd <= 0 else 1.0 / prior_sd**2
    if w_x + w_0 == 0:
        mean, sd = float("nan"), float("inf")
    else:
        mean = ((w_x * x if w_x else 0.0) + w_0 * prior_gain) / (w_x + w_0)
        sd = 1.0 / math.sqrt(w_x + w_0)
    return {
        "diff": float(mean),
        "sd": float(sd),
        "low": float(mean - Z90 * sd),
        "high": float(mean + Z90 * sd),
        "data_estimate": float(x),
        "data_sd": float(sd_x),
        "growth": float(growth),
        "pilot_bias": float(pilot_bias if shortened and np.isfinite(d) else 0.0),
        "measured_at": None if size is None else int(size),
        "prior": {"gain": float(prior_gain), "sd": float(prior_sd)},
    }


def needed_gain(minutes: dict[str, float]) -> float:
    """What fine-tuning must gain to be worth its extra reference minutes over feature extraction."""
    return MIN_GAIN + GAIN_PER_HOUR * max(minutes[FT] - minutes[FE], 0.0) / 60.0


def _gain_of(m: Measured, shortened: bool) -> dict[str, Any]:
    """:func:`full_size_gain` of these measurements at the curves' full size."""
    params = {s: (m.curves[s].params if m.curves[s].fitted else None) for s in STRATEGIES}
    return full_size_gain(
        m.paired, params, m.curves[FT].n_full, m.predicted_gain(), shortened=shortened
    )


@dataclass
class Advice:
    """The recommendation, why, and what each strategy is expected to give and cost.

    Attributes:
        strategy: FE or FT.
        confidence: "high", "medium" or "low"; confidence_score: in [0, 1] (share of bootstrap replicates
            in which the picked strategy is not predicted worse).
        expected_auroc: {strategy: [low, high]} predicted AUROC interval at the full training size.
        predicted_auroc: {strategy: AUROC} the point prediction at the full size.
        gain_2x: {strategy: [gain, low, high]} predicted AUROC gain of twice as many labelled images.
        estimated_minutes: {strategy: minutes} reference cost of the full run (deterministic).
        rationale: plain-language sentences for a clinician, most important first.
        details: technical sentences (domain gap, probes, pilot, curves, budget used).
        decision: the rule's inputs and branch (JSON-safe).
        budget: {part: seconds} the advisor's measured time per part, with the budget.
        profile: the measurements (see :class:`Profile`); notes: caveats.
    """

    strategy: str
    confidence: str
    confidence_score: float
    expected_auroc: dict[str, list[float]]
    predicted_auroc: dict[str, float]
    gain_2x: dict[str, list[float]]
    estimated_minutes: dict[str, float]
    rationale: list[str]
    details: list[str]
    decision: dict[str, Any]
    profile: Profile
    budget: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    curves: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/inf become None)."""
        return json_safe(
            {
                "strategy": self.strategy,
                "confidence": self.confidence,
                "confidence_score": round(self.confidence_score, 3),
                "expected_auroc": {
                    k: [round(v, 3) for v in r] for k, r in self.expected_auroc.items()
                },
                "predicted_auroc": {k: round(v, 3) for k, v in self.predicted_auroc.items()},
                "gain_2x": {k: [round(v, 3) for v in r] for k, r in self.gain_2x.items()},
                "estimated_minutes": {k: round(v, 2) for k, v in self.estimated_minutes.items()},
                "rationale": list(self.rationale),
                "details": list(self.details),
                "decision": self.decision,
                "curves": self.curves,
                "budget": self.budget,
                "notes": list(self.notes),
                "profile": self.profile.to_dict(),
            }
        )

    def explain(self) -> str:
        """Multi-line text for the terminal: the clinician's summary first, details after."""
        lines = [
            f"Recommendation: {LABELS[self.strategy]}",
            # the label only: the score (a bootstrap share) read "low (1.00)" on a tie
            f"Confidence: {self.confidence}",
            "",
            *[f"  - {s}" for s in self.rationale],
            "",
            f"Predicted at the full training size ({self.profile.n_images} images):",
            f"  {'strategy':<20}{'AUROC':>7}{'interval':>13}{'2x data':>9}{'minutes':>9}",
        ]
        for s in STRATEGIES:
            if s not in self.expected_auroc:
                continue
            lo, hi = self.expected_auroc[s]
            mark = " <-" if s == self.strategy else ""
            lines.append(
                f"  {SHORT[s]:<20}{self.predicted_auroc[s]:>7.3f}{f'{lo:.2f}-{hi:.2f}':>13}"
                f"{self.gain_2x[s][0]:>+9.3f}{self.estimated_minutes[s]:>9.1f}{mark}"
            )
        lines += ["", "Details:", *[f"  - {d}" for d in self.details]]
        if self.notes:
            lines += ["", "Notes:", *[f"  - {n}" for n in self.notes]]
        return "\n".join(lines)


# -- building blocks ----------------------------------------------------------------------------------


def domain_gap(p: Profile) -> tuple[int, str]:
    """Gap level 0 (small), 1 (medium) or 2 (large) and the phrase that explains it (descriptive only)."""
    mods = {m.upper(): n for m, n in p.modalities.items()}
    if mods and max(mods, key=mods.get) == "US":
        return 2, "large domain gap (ultrasound vs photographs)"
    if p.native_size is not None and p.native_size <= TINY_IMAGE_PX:
        return 2, f"large domain gap (tiny {p.native_size:g} px images vs photographs)"
    if p.bn_kl is None:
        return 1, "domain gap unknown (the backbone has no BatchNorm statistics)"
    what = f"activation statistics differ from ImageNet by KL {p.bn_kl:.2f}"
    if p.bn_kl >= KL_LARGE:
        return 2, f"large domain gap ({what})"
    if p.bn_kl >= KL_SMALL:
        return 1, f"moderate domain gap ({what})"
    return 0, f"small domain gap ({what})"


def _pilot_was_shortened(p: Profile) -> bool:
    """True when the fine-tuning pilot trained on part of the pool or with fewer epochs than the real
    run: the budget, not the data, limited the measurement."""
    return pilot_shortened(p.pilot, p.epochs)


def pilot_shortened(pilot: dict[str, Any], epochs: int) -> bool:
    """:func:`_pilot_was_shortened` from the pilot's record (``Profile.pilot``, as ``Advice.to_dict``
    stores it) and the real run's epochs: the benchmark re-scores stored advice with it."""
    plan = pilot.get("plan") or {}
    if not plan or plan.get("kind") == "cross_validation":  # the real recipe near the full size
        return False
    sch_epochs = (plan.get("schedule") or {}).get("epochs", pilot.get("epochs"))
    top = max(plan.get("ft_sizes") or [0])
    pool = int(plan.get("n_pool", 0)) - int(plan.get("n_eval", 0))
    # (a subsampled profile has its own note saying the same)
    return bool((sch_epochs is not None and sch_epochs < epochs) or top < pool)


def _schedule_words(pilot: dict[str, Any]) -> str:
    """'8 epochs of batches of 32, at least 10 steps each; LP-FT (...), its own schedule' from the
    profile's pilot entry (the epochs and recipe alone when the plan has no schedule)."""
    sch = (pilot.get("plan") or {}).get("schedule") or {}
    what = f"{pilot.get('epochs')} epochs"
    if sch.get("batch") and sch.get("min_steps"):
        what += f" of batches of {sch['batch']}, at least {sch['min_steps']} steps each"
    return f"{what}; {pilot.get('recipe', 'LP-FT recipe')}"


def _fmt_min(m: float) -> str:
    if not math.isfinite(m):
        return "unknown time"
    if m >= 90:
        return f"about {m / 60:.1f} hours"
    if m >= 1.5:
        return f"about {m:.0f} minutes"
    sec = max(round(m * 60), 1)
    return f"about {sec} second{'s' if sec > 1 else ''}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


# -- the decision -------------------------------------------------------------------------------------


def decide(p: Profile, m: Measured, *, budget_minutes: float | None = None) -> Advice:
    """Apply the written rule (module docstring) to the measurements.

    Args:
        p: the dataset profile (sizes, domain-gap signals, probes).
        m: the pilot's measurements and the curves' predictions.
        budget_minutes: training budget; a strategy whose reference cost exceeds it is excluded.

    Example:
        >>> advice = decide(profile, measured, budget_minutes=10)
        >>> advice.strategy
        'feature_extraction'
    """
    gain = m.predicted_gain()  # the curves' own extrapolation (reported)
    full = _gain_of(m, _pilot_was_shortened(p))  # what the rule weighs: the gain at the full size
    minutes = dict(m.minutes)
    extra_h = max(minutes[FT] - minutes[FE], 0.0) / 60.0
    needed = needed_gain(minutes)
    fits = {s: budget_minutes is None or minutes[s] <= budget_minutes for s in STRATEGIES}
    strategy, branch = _pick(fits[FT], full, needed)
    confidence, score = _confidence(strategy, branch, full, needed)
    notes, confidence = _caveats(p, m, confidence)
    predicted, expected = _predictions(m, full)
    rationale = _clinician_sentences(
        p, m, strategy, branch, full, needed, budget_minutes, predicted, expected
    )
    details = _detail_sentences(p, m, gain, full)
    decision = {
        "rule": "fine-tune iff it fits the budget and the gain expected at the full size (the "
        "pilot's paired difference carried along the learning curves, combined with the prior) "
        ">= MIN_GAIN + GAIN_PER_HOUR x extra hours; its probability of being on the pick's side "
        "sets the confidence",
        "method": m.method,
        "gain_weighed": full["diff"],
        "full_size_gain": full,
        "branch": branch,
        "predicted_gain": gain,
        "needed_gain": needed,
        "extra_hours": extra_h,
        "measured_paired": m.paired,
        "fits_budget": fits,
        "constants": {
            "MIN_GAIN": MIN_GAIN,
            "GAIN_PER_HOUR": GAIN_PER_HOUR,
            "PRIOR_GAIN": PRIOR_GAIN,
            "PRIOR_SD": PRIOR_SD,
            "PILOT_BIAS": PILOT_BIAS,
        },
    }
    if m.findings:  # several findings per image: which findings the compared macro AUROC covers
        decision["findings"] = m.findings
    return Advice(
        strategy=strategy,
        confidence=confidence,
        confidence_score=float(min(max(score, 0.0), 1.0)),
        expected_auroc=expected,
        predicted_auroc=predicted,
        gain_2x={s: [m.curves[s].gain_2x, *m.curves[s].gain_2x_interval] for s in STRATEGIES},
        estimated_minutes=minutes,
        rationale=rationale,
        details=details,
        decision=decision,
        profile=p,
        notes=notes,
        curves={s: m.curves[s].to_dict() for s in STRATEGIES},
    )


def predictions_from_gain(
    fe_at_full: float, fe_interval: list[float], full: dict[str, Any]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Predicted AUROC and 90% interval of each strategy at the full size: feature extraction's from its
    curve (measured at up to the whole pool), fine-tuning's as feature extraction's plus the expected
    gain (its half-width: feature extraction's and the gain's, in quadrature), so the numbers the advice
    shows agree with the gain it weighs."""
    ft = fe_at_full + full["diff"]
    half_fe = (fe_interval[1] - fe_interval[0]) / 2
    half = math.hypot(half_fe, Z90 * full["sd"]) if np.isfinite(full["sd"]) else 0.5
    return (
        {FE: float(fe_at_full), FT: float(ft)},
        {
            FE: [float(fe_interval[0]), float(fe_interval[1])],
            FT: [float(max(ft - half, 0.0)), float(min(ft + half, 1.0))],
        },
    )


def _predictions(
    m: Measured, full: dict[str, Any]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    fe = m.curves[FE]
    if not np.isfinite(full["diff"]):  # nothing measured: each curve as it is
        return (
            {s: m.curves[s].at_full for s in STRATEGIES},
            {s: list(m.curves[s].interval) for s in STRATEGIES},
        )
    return predictions_from_gain(fe.at_full, list(fe.interval), full)


def _pick(ft_fits: bool, full: dict[str, Any], needed: float) -> tuple[str, str]:
    """The written rule's pick and the branch that made it: (strategy, branch)."""
    basis = full["diff"]
    if not ft_fits:
        return FE, "budget"
    if np.isfinite(basis) and basis >= needed:
        return FT, "gain" if full["low"] > 0 else "likely_gain"
    if np.isfinite(basis) and basis > 0:
        return FE, "not_worth"
    return FE, "no_gain"


def _confidence(
    strategy: str, branch: str, full: dict[str, Any], needed: float
) -> tuple[str, float]:
    """The pick's confidence and its score: the probability (normal, from the expected gain's spread)
    that the gain is on the pick's side of what fine-tuning's extra time needs."""
    from scipy.stats import norm

    mean, sd = full["diff"], full["sd"]
    if not (np.isfinite(mean) and np.isfinite(sd) and sd > 0):
        return "low", 0.5
    p_ft = float(norm.sf((needed - mean) / sd))
    score = p_ft if strategy == FT else 1.0 - p_ft
    if branch == "budget":
        return "medium", score
    if score >= 0.9:
        return "high", score
    return ("medium" if score >= 0.7 else "low"), score


def _caveats(p: Profile, m: Measured, confidence: str) -> tuple[list[str], str]:
    """The advice's notes on how it was measured, and its confidence after them: (notes, conf)."""
    notes: list[str] = []
    if not p.pretrained:
        notes.append(
            f"Backbone {p.backbone!r} has random weights: this says nothing about ImageNet transfer."
        )
        confidence = "low"
    if m.method != "cross_validation" and not all(c.fitted for c in m.curves.values()):
        notes.append(
            "A learning curve could not be fitted (too few sizes or no trend): its prediction is the "
            "measured AUROC with a wide upper margin."
        )
    if p.subsampled:
        notes.append(
            f"Measured on a stratified {p.n_profiled} of {p.n_images} images to fit the time budget "
            "(raise --pilot-minutes to measure more)."
        )
    if confidence == "low" and _pilot_was_shortened(p):
        notes.append(
            "The fine-tuning trial was shortened to fit the advisor's time budget (fewer images or "
            "epochs than your real run): a longer pilot measures the difference more precisely. "
            "Raise --pilot-minutes (e.g. 5) if the choice matters."
        )
    if p.pilot.get("guard_hit"):
        notes.append(
            "The machine was much slower than the reference: a pilot run was cut short, so this advice "
            "may not repeat exactly. Re-run when the machine is idle."
        )
    return notes, confidence


def _clinician_sentences(
    p: Profile,
    m: Measured,
    strategy: str,
    branch: str,
    full: dict[str, Any],
    needed: float,
    budget: float | None,
    predicted: dict[str, float],
    expected: dict[str, list[float]],
) -> list[str]:
    mins = m.minutes
    metric = p.metric or "AUROC"
    lo, hi = expected[strategy]
    out = [
        f"With your {p.n_images} labelled images we expect {SHORT[strategy]} to reach "
        f"{'an' if metric[0] in 'AEIOU' else 'a'} {metric} of "
        f"about {predicted[strategy]:.2f} (likely between {lo:.2f} and {hi:.2f}).",
        f"Feature extraction: about {predicted[FE]:.2f} ({expected[FE][0]:.2f}-"
        f"{expected[FE][1]:.2f}), {_fmt_min(mins[FE])} of computing. Fine-tuning: about "
        f"{predicted[FT]:.2f} ({expected[FT][0]:.2f}-{expected[FT][1]:.2f}), "
        f"{_fmt_min(mins[FT])} if it runs all its epochs (early stopping often ends it sooner).",
    ]
    pd = m.paired
    if not np.isfinite(pd.get("diff", float("nan"))):
        trial = "No paired trial could be measured"
    else:
        how = (
            f"Your data set is small enough to run both strategies in full: in {m.repeats}-fold "
            f"cross-validation on your training and validation images (each trained on "
            f"{pd.get('size')} images, {m.n_eval} images scored once)"
            if m.method == "cross_validation"
            else f"In a trial on {pd.get('size')} of your images"
            + (f", repeated {m.repeats} times" if m.repeats > 1 else "")
            + f", both scored on the same {m.n_eval} held-out images"
        )
        trial = (
            f"{how}, fine-tuning minus feature extraction was {pd['diff']:+.3f} {metric} (95% CI "
            f"{pd['ci_low']:+.3f} to {pd['ci_high']:+.3f})"
        )
    grow = (
        f"; the learning curves add {full['growth']:+.3f} from {full['measured_at']} to "
        f"{p.n_images} images"
        if abs(full.get("growth", 0.0)) >= 0.0005 and full.get("measured_at")
        else ""
    )
    if full.get("pilot_bias"):
        grow += (
            f"; a trial shorter than your real run understates fine-tuning, by "
            f"{full['pilot_bias']:+.3f} on the development grid"
        )
    g = (
        f"{_signed(full['diff'])} (90% range {full['low']:+.3f} to {full['high']:+.3f}{grow}; "
        f"combined with published evidence that fine-tuning usually gains a little, "
        f"{full['prior']['gain']:+.2f} +- {full['prior']['sd']:.2f})"
    )
    extra = _fmt_min(mins[FT] - mins[FE])
    why = {
        "gain": f"{trial}. At your full size fine-tuning is expected to gain {g}: worth the extra "
        f"time ({extra}; it needed at least {needed:+.3f}).",
        "likely_gain": f"{trial}. At your full size the expected gain is {g}: not certain, but "
        f"worth the extra time ({extra}; it needed at least {needed:+.3f}), so fine-tuning is the "
        "better bet; compare both on your validation images before relying on it.",
        "not_worth": f"{trial}. At your full size the expected gain is {g}: too small for the "
        f"{needed:+.3f} that fine-tuning's extra time ({extra}) should buy, so feature extraction "
        "is the better use of time.",
        "no_gain": f"{trial}. At your full size no gain is expected ({g}), so the cheaper feature "
        "extraction is recommended.",
        "budget": f"Fine-tuning would need {_fmt_min(mins[FT])}, more than your "
        f"{budget if budget is not None else 0:g}-minute budget, so feature extraction "
        f"(expected difference {g}).",
    }[branch]
    out.append(why)
    pick = m.curves[strategy]
    if p.findings:  # several findings per image: those too rare to learn or to score
        from medtl.advisor._findings import rare_sentence

        f = m.findings
        rare = rare_sentence(
            p.findings, p.n_images, f.get("scored", []), f.get("unscored", {}),
            int(f.get("min_scored", 0)),
        )  # fmt: skip
        if rare:
            out.append(rare)
    out.append(
        f"Twice as many labelled images ({2 * p.n_images}) would change the expected {metric} by about "
        f"{pick.gain_2x:+.3f} (range {pick.gain_2x_interval[0]:+.3f} to "
        f"{pick.gain_2x_interval[1]:+.3f}) with {SHORT[strategy]}."
    )
    return out


def _detail_sentences(
    p: Profile, m: Measured, gain: dict[str, float], full: dict[str, Any]
) -> list[str]:
    _, gap_text = domain_gap(p)
    out = [f"Domain gap to ImageNet: {gap_text} (descriptive; the pick rests on the measurements)."]
    if p.imagenet_entropy is not None:
        out.append(f"ImageNet-classifier normalised entropy {p.imagenet_entropy:.2f}.")
    if p.grad_early_share is not None:
        out.append(
            f"Adaptability: {p.grad_early_share:.0%} of the task's relative gradient falls in the "
            "first half of the backbone (higher: the task pulls on low-level features that only "
            "fine-tuning can change; descriptive: on the development grid it did not predict which "
            "strategy won)."
        )
    if p.probe_auroc is not None:
        knn = p.knn_auroc
        out.append(
            f"Frozen-feature probe: {p.probe.get('n_splits')}-fold CV AUROC {p.probe_auroc:.3f} "
            f"(+-{p.probe_std:.3f})" + (f", k-NN {knn:.3f}." if knn is not None else ".")
        )
        per = p.probe.get("per_finding") or {}
        if per:  # several findings per image: one probe per finding, the line above their mean
            out[-1] = out[-1][:-1] + (
                f" (mean over {p.probe.get('findings_probed')} findings: "
                + ", ".join(
                    f"{f} {r['probe_auroc']:.2f}" if r.get("probe_auroc") is not None
                    else f"{f} not probed"
                    for f, r in per.items()
                )
                + ")."
            )  # fmt: skip
    for s in STRATEGIES:
        c = m.curves[s]
        pts = ", ".join(f"n={n}: {a:.3f}" for n, a in zip(c.sizes, c.observed))
        fit = (
            f"power law a - b n^-c with a={c.params[0]:.3f}, b={c.params[1]:.3f}, c={c.params[2]:.2f}"
            if c.fitted and c.params
            else "no fit (fallback)"
        )
        out.append(f"{SHORT[s].capitalize()} pilot: {pts}; {fit}.")
    out.append(
        f"The curves alone predict FT - FE at {p.n_images} images: {gain['diff']:+.3f} "
        f"(90% {gain['low']:+.3f} to {gain['high']:+.3f}; {gain['share_positive']:.0%} of bootstrap "
        "replicates favour fine-tuning). The rule weighs the measured difference carried to the "
        f"full size ({full['data_estimate']:+.3f} +- {full['data_sd']:.3f}) combined with the prior: "
        f"{full['diff']:+.3f} +- {full['sd']:.3f}."
    )
    pl = p.pilot.get("plan") or {}
    if pl:
        held = (
            f"{pl.get('repeats')} disjoint held-out folds ({m.n_eval} images, each scored once)"
            if p.pilot.get("disjoint")
            else f"{pl.get('repeats')} holdout(s) of {pl.get('n_eval')} images"
        )
        if pl.get("kind") == "cross_validation":
            out.append(
                f"Cross-validation: {pl.get('repeats')} folds; both strategies with the default "
                f"recipe on {pl.get('ft_sizes', [0])[-1]} images of each fold's training part, each "
                f"fold's held-out images scored once ({m.n_eval} images; "
                f"{_schedule_words(p.pilot)})."
            )
        else:
            out.append(
                f"Pilot: {held}; fine-tuning at "
                f"{pl.get('ft_sizes')} images, feature extraction at {pl.get('fe_sizes')} "
                f"({_schedule_words(p.pilot)})."
            )
    t = p.timings
    if t:
        total = t.get("total", 0.0)
        parts = ", ".join(
            f"{k} {v:.0f} s" for k, v in t.items() if k not in ("total", "budget") and v >= 0.5
        )
        out.append(
            f"Advisor time {total:.0f} s of a {t.get('budget', 0):.0f} s budget ({parts}); minutes "
            "shown for the strategies are reference estimates, not this machine's timings."
        )
    return out


def measured_from_pilot(
    pilot: dict[str, Any],
    *,
    n_full: int,
    minutes: dict[str, float],
    seed: int,
    n_boot: int = 200,
) -> Measured:
    """Bootstrap the pilot's held-out scores (paired across strategies and sizes) and fit the curves."""
    import warnings

    from medtl.advisor._curve import bootstrap_weights, predict_curve

    rng = np.random.default_rng(seed)
    reps = pilot["repeats"]
    weights = [bootstrap_weights(len(r["y_eval"]), n_boot, rng) for r in reps]
    curves: dict[str, CurvePrediction] = {}
    at: dict[str, dict[int, np.ndarray]] = {}
    # held-out images per class behind the averaged AUROCs: every repeat's when they are different
    # images (disjoint folds), else one repeat's (overlapping random holdouts share many images)
    scored = reps if pilot.get("disjoint") else reps[:1]
    task = pilot.get("task")
    y_scored = np.concatenate([np.asarray(r["y_eval"]) for r in scored])
    questions, findings = _scored_questions(reps, y_scored, task)
    if questions is None:
        counts: list[Any] = np.bincount(y_scored).tolist()
    else:  # one (negatives, positives) pair per averaged finding
        k = [task.classes.index(f) for f in questions]
        counts = [(int(np.sum(y_scored[:, j] == 0)), int(np.sum(y_scored[:, j] == 1))) for j in k]
    for key, name in (("fe", FE), ("ft", FT)):
        # sizes every repeat ran (the pilot skips a size whose subset lost a class)
        sizes = sorted(set.intersection(*(set(r[key]) for r in reps)))
        if not sizes:
            from medtl.errors import ConfigError

            raise ConfigError(
                "The advisor's pilot could not train at any size: a class has fewer than 2 images in "
                "every pilot subset. Add labelled images of the rarest class (the pilot needs about "
                "6 per class after holding out its evaluation images)."
            )
        with warnings.catch_warnings():  # a replicate that lost a class is NaN in every repeat
            warnings.simplefilter("ignore", RuntimeWarning)
            table = _table(reps, key, sizes, weights, task, questions)
        at[name] = {s: table[:, i] for i, s in enumerate(sizes)}
        curves[name] = predict_curve(sizes, table, n_full, eval_counts=counts)
    common = sorted(set(at[FE]) & set(at[FT]))
    top = common[-1]
    paired = paired_difference(at[FT][top], at[FE][top])
    paired["size"] = int(top)
    return Measured(
        curves=curves,
        paired=paired,
        minutes=minutes,
        n_eval=sum(len(r["y_eval"]) for r in scored),
        repeats=len(reps),
        findings=findings,
        method=str(pilot.get("method", "pilot")),
    )


def _scored_questions(
    reps: list[dict[str, Any]], y_scored: np.ndarray, task: Any
) -> tuple[list[str] | None, dict[str, Any]]:
    """Several findings per image: the findings the macro AUROC averages over (scorable in every
    repeat's held-out images) and the record of those left out; (None, {}) for single-label data."""
    from medtl.advisor import _findings

    if task is None or not _findings.is_multilabel_labels(y_scored):
        return None, {}
    scored, unscored, minimum = _findings.scored_findings(
        [np.asarray(r["y_eval"]) for r in reps], task.classes
    )
    if not scored:
        from medtl.errors import ConfigError

        raise ConfigError(
            "The advisor's held-out images hold no finding with both a positive and a negative "
            "label, so no AUROC can be measured. Add labelled images of the rarer findings."
        )
    return scored, {"scored": scored, "unscored": unscored, "min_scored": minimum}


def _table(
    reps: list[dict[str, Any]],
    key: str,
    sizes: list[int],
    weights: list[np.ndarray],
    task: Any = None,
    questions: list[str] | None = None,
) -> np.ndarray:
    """(B + 1, len(sizes)) AUROCs averaged over the repeats, one column per training size (the
    task's headline AUROC, over ``questions`` only when given)."""
    from medtl.advisor._curve import weighted_auroc

    return np.stack(
        [
            np.nanmean(
                [
                    weighted_auroc(r["y_eval"], r[key][s], w, task, questions)
                    for r, w in zip(reps, weights)
                ],
                axis=0,
            )
            for s in sizes
        ],
        axis=1,
    )
