"""The advisor's rules: a :class:`Profile` in, an :class:`Advice` out. Pure functions, no I/O.

The rules encode what the literature and our own measurements say:

* little data and a small domain gap: feature extraction is competitive and far cheaper;
* a large gap (ultrasound, tiny images) with frozen features that stay low: fine-tune
  (on BreastMNIST a frozen ImageNet network collapses while fine-tuning reaches ~0.90 AUROC);
* frozen features already near the ceiling (CV AUROC >= 0.97): feature extraction (cheap, and safer
  under dataset shift: on the Kermany chest X-rays it beat plain fine-tuning at 50 to 4695 images);
* in between: partial fine-tuning (last stages only);
* the time budget overrides everything: a strategy that does not fit is not recommended.

Each rule casts a signed vote (negative = towards feature extraction, positive = towards fine-tuning)
and writes the sentence that explains it, so the rationale is exactly the reasoning used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medtl.advisor._profile import Profile, _json_safe

STRATEGIES = ("feature_extraction", "partial_fine_tuning", "fine_tuning")
LABELS = {
    "feature_extraction": "feature extraction (frozen backbone + linear head)",
    "partial_fine_tuning": "partial fine-tuning (last stages + head)",
    "fine_tuning": "fine-tuning (every layer)",
}

# Domain-gap thresholds on the BatchNorm KL (mean over layers of the median channel KL). Calibrated
# with efficientnet_lite0.in1k: see benchmarks/README_advisor.md for the measurements behind them.
KL_SMALL = 0.2
KL_LARGE = 0.33
TINY_IMAGE_PX = 32
CEILING_AUROC = 0.97
LOW_PROBE = 0.80
HIGH_PROBE = 0.90
FLAT_SLOPE = 0.01  # AUROC gained per doubling of the training data below which the curve is "flat"
RISING_SLOPE = 0.03
# Fine-tuning in medtl is LP-FT (probe head, frozen BatchNorm statistics, gentle rates). It beat the
# frozen-feature probe on the shifted Kermany test set at every measured size (benchmarks/shift_eval.py,
# 128 px: 0.954 vs 0.915 at 50 images, 0.942 vs 0.912 at 200, 0.966 vs 0.946 at 1000; DeLong p < 0.05).
# So when frozen features are "competitive", LP-FT is still recommended while it is cheap; above this
# estimated cost, feature extraction is recommended and the possible gain is stated.
CHEAP_FT_MINUTES = 15.0
# The vote's notion of "cheap" must not depend on the machine's momentary load (the same data and
# seed must give the same advice), so it uses a reference cost, not the measured time: training
# image-passes scaled by pixels, at the rate measured for the default recipe (LP-FT, Lite0, 224 px,
# batch 32) on the project's 2-core CPU: 5 epochs x 4,470 images in 31 min = 720 passes/min
# (README, "What to expect"). The measured minutes still inform the estimate shown and
# --budget-minutes.
REFERENCE_PASSES_PER_MINUTE_224 = 720.0


def reference_ft_minutes(p: Profile) -> float:
    """Fine-tuning cost in reference minutes: deterministic for given data and options."""
    scale = (p.profile_size / 224.0) ** 2
    return p.epochs * (p.n_train + p.n_val / 3.0) * scale / REFERENCE_PASSES_PER_MINUTE_224


LPFT_EVIDENCE = (
    "on shifted chest X-ray test data it added 0.02-0.04 AUROC over the frozen-feature probe at 50, 200 "
    "and 1000 training images"
)


@dataclass
class Advice:
    """The recommendation, why, and what each strategy is expected to give and cost.

    Attributes:
        strategy: "feature_extraction", "partial_fine_tuning" or "fine_tuning".
        confidence: "high", "medium" or "low"; confidence_score: the same in [0, 1].
        expected_auroc: {strategy: [low, high]} estimated AUROC range for each strategy.
        estimated_minutes: {strategy: minutes} estimated wall time on this machine.
        rationale: plain-language sentences, most important first.
        profile: the measurements (see :class:`Profile`).
        votes: {signal: vote} the rules' signed votes (negative favours feature extraction).
        notes: caveats (subsampling, random backbone, ...).
    """

    strategy: str
    confidence: str
    confidence_score: float
    expected_auroc: dict[str, list[float]]
    estimated_minutes: dict[str, float]
    rationale: list[str]
    profile: Profile
    votes: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/inf become None)."""
        return _json_safe(
            {
                "strategy": self.strategy,
                "confidence": self.confidence,
                "confidence_score": round(self.confidence_score, 3),
                "expected_auroc": {
                    k: [round(v, 3) for v in r] for k, r in self.expected_auroc.items()
                },
                "estimated_minutes": {k: round(v, 2) for k, v in self.estimated_minutes.items()},
                "rationale": list(self.rationale),
                "votes": dict(self.votes),
                "notes": list(self.notes),
                "profile": self.profile.to_dict(),
            }
        )

    def explain(self) -> str:
        """Multi-line text for the terminal."""
        lines = [
            f"Recommendation: {LABELS[self.strategy]}",
            f"Confidence: {self.confidence} ({self.confidence_score:.2f})",
            "",
            "Why:",
            *[f"  - {s}" for s in self.rationale],
            "",
            "Estimates for this dataset on this machine (estimates, not measurements):",
            f"  {'strategy':<22}{'AUROC range':>14}{'minutes':>10}",
        ]
        for s in STRATEGIES:
            lo, hi = self.expected_auroc[s]
            mark = " <-" if s == self.strategy else ""
            lines.append(
                f"  {s:<22}{f'{lo:.2f}-{hi:.2f}':>14}{self.estimated_minutes[s]:>10.1f}{mark}"
            )
        if self.notes:
            lines += ["", "Notes:", *[f"  - {n}" for n in self.notes]]
        return "\n".join(lines)


# -- building blocks ----------------------------------------------------------------------------------


def estimate_minutes(p: Profile) -> dict[str, float]:
    """Wall time of each strategy on the full dataset, from the measured seconds per image.

    Feature extraction: every train + val image once through the frozen network, plus the head fits.
    Fine-tuning (full or partial): ``epochs`` x (train images x step time + val images x forward time).
    """
    spi = p.seconds_per_image
    ext = spi.get("extract", float("nan"))
    head = float(p.probe.get("head_seconds", 0.0) or 0.0)
    out = {"feature_extraction": (p.n_images * ext + head) / 60.0}
    for s in ("partial_fine_tuning", "fine_tuning"):
        out[s] = p.epochs * (p.n_train * spi.get(s, float("nan")) + p.n_val * ext) / 60.0
    return out


def domain_gap(p: Profile) -> tuple[int, str]:
    """Gap level 0 (small), 1 (medium) or 2 (large) and the phrase that explains it."""
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


def expected_auroc(p: Profile, gap: int) -> dict[str, list[float]]:
    """AUROC ranges from the CV probe (mean +- fold spread) plus documented adjustments.

    * feature extraction: probe mean +- 1 SD across folds; the top end adds the learning-curve slope
      for the 25% more data the final head sees (log2(1.25) doublings).
    * fine-tuning: the probe range shifted by a data/gap term: +0.02 per gap level, -0.04 below 50
      images in the smallest class, -0.02 below 200, +0.02 from 1000; widened by +-0.04 (training
      variance). A low probe (< 0.80) with a large gap gets +0.05 headroom (features, not data, limit it).
    * partial fine-tuning: half-way between the two, widened by +-0.03.

    These are heuristics for ordering expectations, not predictions with coverage guarantees.
    """
    mean = p.probe_auroc if p.probe_auroc is not None else 0.75
    sd = p.probe_std
    slope = max(p.probe_slope or 0.0, 0.0)
    fe = [mean - sd, mean + sd + slope * math.log2(1.25)]
    delta = 0.02 * gap
    delta += -0.04 if p.min_class < 50 else -0.02 if p.min_class < 200 else 0.0
    delta += 0.02 if p.min_class >= 1000 else 0.0
    if mean < LOW_PROBE and gap == 2:
        delta += 0.05
    ft = [fe[0] + delta - 0.04, fe[1] + delta + 0.04]
    pft = [fe[0] + delta / 2 - 0.03, fe[1] + delta / 2 + 0.03]

    def clip(r: list[float]) -> list[float]:
        return [min(max(r[0], 0.5), 0.995), min(max(r[1], 0.5), 0.995)]

    return {
        "feature_extraction": clip(fe),
        "partial_fine_tuning": clip(pft),
        "fine_tuning": clip(ft),
    }


def _fmt_min(m: float) -> str:
    if not math.isfinite(m):
        return "unknown time"
    return f"~{m:.0f} min" if m >= 1.5 else f"~{max(m * 60, 1):.0f} s"


# -- the decision -------------------------------------------------------------------------------------


def decide(p: Profile, *, budget_minutes: float | None = None) -> Advice:
    """Apply the rules to a profile.

    Args:
        p: the measurements.
        budget_minutes: wall-time budget; strategies estimated to take longer are not recommended.

    Example:
        >>> advice = decide(profile, budget_minutes=10)
        >>> advice.strategy
        'feature_extraction'
    """
    gap, gap_text = domain_gap(p)
    minutes = estimate_minutes(p)
    ranges = expected_auroc(p, gap)
    probe, slope, knn = p.probe_auroc, p.probe_slope, p.knn_auroc
    votes: dict[str, float] = {}
    notes: list[str] = []

    # 1. domain gap
    votes["domain_gap"] = {0: -1.0, 1: 0.5, 2: 2.0}[gap]
    # 2. data size (smallest class decides how much a whole network can learn without overfitting)
    if p.min_class < 50:
        votes["data_size"] = -2.0
    elif p.min_class < 200:
        votes["data_size"] = -1.0
    elif p.min_class >= 1000:
        votes["data_size"] = 1.0
    else:
        votes["data_size"] = 0.0
    # 3. what frozen features already achieve
    if probe is None:
        votes["frozen_features"] = 0.0
    elif probe < LOW_PROBE and (slope is None or slope < FLAT_SLOPE):
        votes["frozen_features"] = 1.5  # low and flat: the features, not the data, are the limit
    elif probe < LOW_PROBE:
        votes["frozen_features"] = 1.0
    elif probe >= HIGH_PROBE:
        votes["frozen_features"] = -1.0
    else:
        votes["frozen_features"] = 0.0

    score = sum(votes.values())
    ceiling = probe is not None and probe >= CEILING_AUROC
    cheap = reference_ft_minutes(p) <= CHEAP_FT_MINUTES  # not the measured time: see its comment
    if score >= 2.0 and not ceiling:
        strategy, why = "fine_tuning", "the signals point clearly to fine-tuning"
    elif score >= 0.5 and not ceiling:
        strategy, why = "partial_fine_tuning", "the signals are mixed: adapt only the last stages"
    else:
        competitive = (
            f"frozen features already reach {probe:.2f} AUROC in cross-validation (near the ceiling)"
            if ceiling
            else "with this little data and gap, frozen features are competitive"
        )
        if cheap:
            votes["lpft_cheap"] = 3.0
            strategy = "fine_tuning"
            why = (
                f"{competitive}, but fine-tuning here is LP-FT (it starts from those frozen features) "
                f"and costs only about {_fmt_min(reference_ft_minutes(p))} on a 2-core CPU; "
                f"{LPFT_EVIDENCE}"
            )
        else:
            strategy = "feature_extraction"
            why = (
                f"{competitive}: feature extraction is cheap; fine-tuning (LP-FT) would take about "
                f"{_fmt_min(reference_ft_minutes(p))} on a 2-core CPU and {LPFT_EVIDENCE}, so run "
                "it when that "
                "gain is worth the time"
            )

    # the headline sentence, in the style "312 images, large gap; frozen features reach 0.71 -> fine-tune"
    probe_part = ""
    if probe is not None:
        trend = (
            "still rising with more data"
            if slope is not None and slope >= RISING_SLOPE
            else "flat with more data"
            if slope is not None and slope < FLAT_SLOPE
            else "rising slowly with more data"
        )
        probe_part = (
            f"; frozen features reach {probe:.2f} AUROC in cross-validation "
            f"(k-NN {knn:.2f}) and are {trend}"
            if knn is not None
            else f"; frozen features reach {probe:.2f} AUROC in cross-validation and are {trend}"
        )

    # budget
    if budget_minutes is not None:
        fits = [s for s in STRATEGIES if minutes[s] <= budget_minutes]
        if strategy not in fits:
            fallback = (
                "partial_fine_tuning" if "partial_fine_tuning" in fits else "feature_extraction"
            )
            if strategy == "partial_fine_tuning":
                fallback = "feature_extraction"
            why = (
                f"{LABELS[strategy]} would take {_fmt_min(minutes[strategy])}, more than the "
                f"{budget_minutes:g}-minute budget, so {LABELS[fallback]} instead"
            )
            if fallback not in fits:
                why += f" (even that needs {_fmt_min(minutes[fallback])})"
            votes["budget"] = -10.0
            strategy = fallback

    short = {
        "feature_extraction": "use feature extraction",
        "partial_fine_tuning": "partially fine-tune",
        "fine_tuning": "fine-tune",
    }[strategy]
    headline = (
        f"{p.n_images} images ({p.min_class} in the smallest class), {gap_text}{probe_part} -> "
        f"{short}."
    )
    rationale = [headline, why[0].upper() + why[1:] + "."]
    # measured minutes stay out of the rationale (they vary with the machine's load); they are shown
    # in the estimates table and used by --budget-minutes
    rationale += _detail_sentences(p, votes)
    rationale.append(
        "Expected AUROC ranges are estimates from the cross-validated frozen-feature probe plus simple "
        "adjustments for the trained strategies; confirm with `medtl compare`."
    )

    # confidence: agreement of the votes, how far the score is from a boundary, stability of the probe
    active = [v for k, v in votes.items() if k not in ("budget", "lpft_cheap")]
    total = sum(abs(v) for v in active) or 1.0
    agreement = abs(sum(active)) / total
    conf = 0.25 + 0.5 * agreement + 0.25 * max(0.0, 1.0 - p.probe_std / 0.1)
    if "budget" in votes or (ceiling and strategy == "feature_extraction"):
        conf = max(conf, 0.75)
    if "lpft_cheap" in votes:  # the signals favour FE, the measured evidence favours LP-FT
        conf = 0.4 + 0.29 * conf
    if p.subsampled:
        notes.append(
            f"Profiled a stratified subsample of {p.n_profiled} of {p.n_images} images "
            "(raise max_images to profile more)."
        )
    if not p.pretrained:
        notes.append(
            f"Backbone {p.backbone!r} has random weights: the domain gap and probe say little about "
            "ImageNet transfer."
        )
        conf = min(conf, 0.3)
    if p.probe.get("n_splits", 0) == 0:
        notes.append("Too few images per class for cross-validation: no probe measurement.")
        conf = min(conf, 0.3)
    conf = float(min(max(conf, 0.0), 1.0))
    label = "high" if conf >= 0.7 else "medium" if conf >= 0.45 else "low"
    return Advice(
        strategy=strategy,
        confidence=label,
        confidence_score=conf,
        expected_auroc=ranges,
        estimated_minutes=minutes,
        rationale=rationale,
        profile=p,
        votes=votes,
        notes=notes,
    )


def _detail_sentences(p: Profile, votes: dict[str, float]) -> list[str]:
    out = []
    if p.imbalance >= 3:
        out.append(
            f"Classes are imbalanced ({p.imbalance:.1f}:1); AUROC is unaffected but choose the "
            "operating threshold on validation data."
        )
    if p.imagenet_entropy is not None:
        out.append(
            f"The ImageNet classifier is {'unsure' if p.imagenet_entropy > 0.6 else 'fairly sure'} "
            f"what these images show (normalised entropy {p.imagenet_entropy:.2f})."
        )
    return out
