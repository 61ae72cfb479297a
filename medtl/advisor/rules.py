"""The advisor's decision rule: measured, extrapolated comparisons in, an :class:`Advice` out. No I/O.

The rule (documented with its evidence in ``benchmarks/README_advisor.md``):

1. A strategy whose reference cost on the full data exceeds ``budget_minutes`` is excluded.
2. Let ``d`` be the fine-tuning minus feature-extraction AUROC measured in the pilot at its largest
   size (paired: the same held-out images) and ``D`` the difference predicted at the full training
   size, with a 90% interval ``[D_low, D_high]`` (paired bootstrap, widened for extrapolation).
   Fine-tune when the measured gain pays for its cost: ``d >= MIN_GAIN + GAIN_PER_HOUR x extra hours``
   (the extra reference minutes of fine-tuning over feature extraction); otherwise extract features.
   ``D`` is reported, with the predicted AUROCs, and sets the confidence, but does not pick: on the
   development grid's dev holdout (never the test folders) the measured difference picked the
   significant winner in 12 of 16 cells (regret 0.0057), the extrapolated one in 9 of 16 (0.0071), and
   requiring ``D_low > 0`` (the first version) in 5 of 16 (0.0141). See the README.
3. Confidence is "high" only when the measured paired difference at the largest pilot size is
   significant (95% bootstrap CI excludes 0) and points the same way as the pick; "medium" when the
   predicted interval of ``D`` lies on the pick's side of 0 (or the budget forced the pick, or a sure
   gain is too small for its cost); "low" otherwise.

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
    plan = p.pilot.get("plan") or {}
    if not plan:
        return False
    epochs = (plan.get("schedule") or {}).get("epochs", p.pilot.get("epochs"))
    top = max(plan.get("ft_sizes") or [0])
    pool = int(plan.get("n_pool", 0)) - int(plan.get("n_eval", 0))
    # (a subsampled profile has its own note saying the same)
    return bool((epochs is not None and epochs < p.epochs) or top < pool)


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
    gain = m.predicted_gain()
    minutes = dict(m.minutes)
    extra_h = max(minutes[FT] - minutes[FE], 0.0) / 60.0
    needed = MIN_GAIN + GAIN_PER_HOUR * extra_h
    fits = {s: budget_minutes is None or minutes[s] <= budget_minutes for s in STRATEGIES}
    paired = m.paired
    sig = bool(paired.get("significant"))
    d_meas = float(paired.get("diff", float("nan")))
    # the gain the rule weighs: the paired difference measured in the pilot (its largest size); the
    # extrapolated difference only where nothing was measured (see the module docstring for why)
    basis = d_meas if np.isfinite(d_meas) else gain["diff"]
    strategy, branch = _pick(fits[FT], basis, needed, sig)
    confidence, conflict = _confidence(strategy, branch, sig, d_meas, gain, needed)
    share = gain["share_positive"]
    score = share if strategy == FT else 1.0 - share
    notes, confidence = _caveats(p, m, confidence)

    fe, ft = m.curves[FE], m.curves[FT]
    rationale = _clinician_sentences(p, m, strategy, branch, gain, needed, budget_minutes)
    if conflict:
        rationale.insert(
            3,
            f"Note: the learning curves predict the other order at your full size (fine-tuning "
            f"{ft.at_full:.2f}, feature extraction {fe.at_full:.2f}). They extrapolate from a few small "
            "noisy trials; the direct comparison above is the better guide (on the development grid "
            "it picked the better strategy more often than the curves did), but the two are close: "
            "validate both if you can.",
        )
    details = _detail_sentences(p, m, gain)
    decision = {
        "rule": "fine-tune iff it fits the budget and the pilot's measured paired gain >= "
        "MIN_GAIN + GAIN_PER_HOUR x extra hours; significance and the predicted gain's 90% "
        "interval set the confidence",
        "gain_weighed": basis,
        "curves_disagree": conflict,
        "branch": branch,
        "predicted_gain": gain,
        "needed_gain": needed,
        "extra_hours": extra_h,
        "measured_paired": paired,
        "fits_budget": fits,
        "constants": {"MIN_GAIN": MIN_GAIN, "GAIN_PER_HOUR": GAIN_PER_HOUR},
    }
    if m.findings:  # several findings per image: which findings the compared macro AUROC covers
        decision["findings"] = m.findings
    return Advice(
        strategy=strategy,
        confidence=confidence,
        confidence_score=float(min(max(score, 0.0), 1.0)),
        expected_auroc={s: list(m.curves[s].interval) for s in STRATEGIES},
        predicted_auroc={FE: fe.at_full, FT: ft.at_full},
        gain_2x={s: [m.curves[s].gain_2x, *m.curves[s].gain_2x_interval] for s in STRATEGIES},
        estimated_minutes=minutes,
        rationale=rationale,
        details=details,
        decision=decision,
        profile=p,
        notes=notes,
        curves={s: m.curves[s].to_dict() for s in STRATEGIES},
    )


def _pick(ft_fits: bool, basis: float, needed: float, sig: bool) -> tuple[str, str]:
    """The written rule's pick and the branch that made it: (strategy, branch)."""
    if not ft_fits:
        return FE, "budget"
    if basis >= needed:
        return FT, "gain" if sig else "likely_gain"
    if basis > 0:
        return FE, "not_worth"
    return FE, "no_gain"


def _confidence(
    strategy: str, branch: str, sig: bool, d_meas: float, gain: dict[str, Any], needed: float
) -> tuple[str, bool]:
    """The pick's confidence and whether the curves disagree with it: (confidence, conflict)."""
    agrees = (strategy == FT and d_meas > 0) or (strategy == FE and d_meas < 0)
    side_ok = (strategy == FT and gain["low"] > 0) or (strategy == FE and gain["high"] < 0)
    # the measured trial and the extrapolated curves can point different ways: say so, never hide it
    # (a pick whose own predicted AUROC is below the other strategy's reads as a contradiction)
    conflict = branch != "budget" and (strategy == FT) != (gain["diff"] >= needed)
    if sig and agrees:
        confidence = "high"
    elif conflict:
        confidence = "low"
    elif side_ok or branch == "budget" or (branch == "not_worth" and sig):
        confidence = "medium"
    else:
        confidence = "low"
    return confidence, conflict


def _caveats(p: Profile, m: Measured, confidence: str) -> tuple[list[str], str]:
    """The advice's notes on how it was measured, and its confidence after them: (notes, conf)."""
    notes: list[str] = []
    if not p.pretrained:
        notes.append(
            f"Backbone {p.backbone!r} has random weights: this says nothing about ImageNet transfer."
        )
        confidence = "low"
    if not all(c.fitted for c in m.curves.values()):
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
    gain: dict[str, float],
    needed: float,
    budget: float | None,
) -> list[str]:
    fe, ft = m.curves[FE], m.curves[FT]
    mins = m.minutes
    metric = p.metric or "AUROC"
    out = [
        f"With your {p.n_images} labelled images we expect {SHORT[strategy]} to reach "
        f"{'an' if metric[0] in 'AEIOU' else 'a'} {metric} of "
        f"about {m.curves[strategy].at_full:.2f} (likely between "
        f"{m.curves[strategy].interval[0]:.2f} and {m.curves[strategy].interval[1]:.2f}).",
        f"Feature extraction: about {fe.at_full:.2f} ({fe.interval[0]:.2f}-{fe.interval[1]:.2f}), "
        f"{_fmt_min(mins['feature_extraction'])} of computing. Fine-tuning: about {ft.at_full:.2f} "
        f"({ft.interval[0]:.2f}-{ft.interval[1]:.2f}), {_fmt_min(mins['fine_tuning'])}.",
    ]
    pd = m.paired
    trial = (
        f"In a trial on {pd.get('size')} of your images"
        + (f", repeated {m.repeats} times" if m.repeats > 1 else "")
        + f", both scored on the same {m.n_eval} held-out images, fine-tuning minus feature "
        f"extraction was {pd['diff']:+.3f} {metric} (95% CI {pd['ci_low']:+.3f} to "
        f"{pd['ci_high']:+.3f})"
        if np.isfinite(pd.get("diff", float("nan")))
        else "No paired trial could be measured"
    )
    g = f"{_signed(gain['diff'])} (90% range {gain['low']:+.3f} to {gain['high']:+.3f})"
    extra = _fmt_min(mins[FT] - mins[FE])
    why = {
        "gain": f"{trial}: a significant gain, worth the extra time ({extra}; it needed at least "
        f"{needed:+.3f}). At your full size the gain is predicted to be {g}.",
        "likely_gain": f"{trial}: not significant, but the gain is worth the extra time ({extra}; "
        f"it needed at least {needed:+.3f}), so fine-tuning is the better bet; compare both on your "
        f"validation images before relying on it. At your full size: predicted {g}.",
        "not_worth": f"{trial}: too small for the {needed:+.3f} that fine-tuning's extra time "
        f"({extra}) should buy, so feature extraction is the better use of time. At your full size: "
        f"predicted {g}.",
        "no_gain": f"{trial}: no gain from fine-tuning, so the cheaper feature extraction is "
        f"recommended. At your full size: predicted {g}.",
        "budget": f"Fine-tuning would need {_fmt_min(mins['fine_tuning'])}, more than your "
        f"{budget if budget is not None else 0:g}-minute budget, so feature extraction "
        f"(predicted difference {g}).",
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


def _detail_sentences(p: Profile, m: Measured, gain: dict[str, float]) -> list[str]:
    _, gap_text = domain_gap(p)
    out = [f"Domain gap to ImageNet: {gap_text} (descriptive; the pick rests on the pilot)."]
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
        f"Predicted FT - FE at {p.n_images} images: {gain['diff']:+.3f} "
        f"(90% {gain['low']:+.3f} to {gain['high']:+.3f}; {gain['share_positive']:.0%} of bootstrap "
        "replicates favour fine-tuning)."
    )
    pl = p.pilot.get("plan") or {}
    if pl:
        held = (
            f"{pl.get('repeats')} disjoint held-out folds ({m.n_eval} images, each scored once)"
            if p.pilot.get("disjoint")
            else f"{pl.get('repeats')} holdout(s) of {pl.get('n_eval')} images"
        )
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
