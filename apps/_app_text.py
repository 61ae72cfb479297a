"""The app's words: the advice in plain language, one-line meanings of metrics and jargon, and
strategy ids replaced by human names in library sentences.

The advisor is being rewritten, so the advice is read defensively from ``advice.to_dict()`` (or the
object's attributes): any field may be missing.
"""

from __future__ import annotations

import re
from typing import Any

from medtl.formatting import finite_or_none, format_duration

#: One line per metric, shown where the metric appears.
METRIC_HELP: dict[str, str] = {
    "AUROC": "AUROC: how well the model ranks a diseased image above a normal one "
    "(0.5 = guessing, 1.0 = perfect), independent of any threshold.",
    "CI": "95% CI (confidence interval): the range the true value plausibly lies in, given how "
    "few test images there are; wide = uncertain.",
    "gap": "Validation − test: how much better the model looked on the validation images than on "
    "the untouched test images; above +0.03 the validation numbers are optimistic.",
    "curve": "Start / slope / best: validation AUROC after the first epoch, the gain per epoch, "
    "and the best value reached (the learning-curve signature of transfer).",
    "sensitivity": "Sensitivity: of the images with the finding, the share the model calls "
    "positive (cases caught).",
    "specificity": "Specificity: of the normal images, the share the model calls negative "
    "(normals cleared).",
    "ppv_npv": "PPV / NPV: when the model says positive (negative), how often it is right; "
    "both depend on how common the finding is, so they are also given at your prevalence.",
    "calibration": "Calibration: whether a predicted 70% really means the finding is present about "
    "70% of the time (points on the diagonal = well calibrated).",
    "decision": "Decision curve: the net benefit of acting on the model at each threshold, "
    "compared with treating everyone or no one.",
    "roc": "ROC curve: sensitivity against false-alarm rate over all thresholds; the area under "
    "it is the AUROC.",
}

#: Advisor jargon -> one-line meaning (shown in an expander on the Advice page).
JARGON: dict[str, str] = {
    "KL (BatchNorm divergence)": "How different your images' internal statistics are from "
    "the everyday photographs the network was trained on (0 = alike; larger = bigger domain gap).",
    "Entropy (ImageNet classifier)": "How unsure the original photo classifier is about your "
    "images (near 1 = they look like nothing it knows, another sign of a domain gap).",
    "Adaptability (gradient)": "Share of the training signal that lands in the first half of "
    "the network (higher = the task pulls on low-level features only fine-tuning can change); "
    "descriptive, it did not predict the winner on our test datasets.",
    "k-NN probe": "A nearest-neighbour classifier on the frozen features: a quick check of how "
    "well the features already separate your classes.",
    "Logistic probe": "A simple linear classifier on the frozen features, cross-validated: "
    "roughly what feature extraction will reach.",
    "LP-FT": "Linear probing then fine-tuning: train the classifier on frozen features first, "
    "then fine-tune the whole network from there (more stable on small data).",
    "Learning-curve slope": "AUROC gained each time the number of training images doubles, "
    "measured on subsets of your data.",
    "Cross-validation": "The images are split into folds; each fold is predicted by a model "
    "trained on the others, so every number comes from images the model did not see.",
}


def humanise(text: str) -> str:
    """Replace registered strategy ids (``partial_fine_tuning``) in a library sentence by their
    human names, longest first so that ``partial_fine_tuning`` is not read as ``fine_tuning``."""
    from medtl.strategies import list_strategies, strategy_label

    keys = sorted(list_strategies(), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    out = pattern.sub(lambda m: strategy_label(m.group(0)), text)
    return out[:1].upper() + out[1:] if out else out


def minutes_text(m: Any) -> str:
    """'~40 s', '~2 min', or 'n/a' for a number of minutes."""
    f = finite_or_none(m)
    return "n/a" if f is None else format_duration(60 * f, "rough")


def advice_dict(advice: Any) -> dict[str, Any]:
    """The advice as a plain dict: ``to_dict()`` when it has one, else its public attributes."""
    if hasattr(advice, "to_dict"):
        try:
            d = advice.to_dict()
            if isinstance(d, dict):
                return d
        except Exception:  # a half-built object from another version: fall back to attributes
            pass
    return {k: v for k, v in vars(advice).items() if not k.startswith("_")}


def advice_view(advice: Any, *, data_images: int | None = None) -> dict[str, Any]:
    """What the Advice page shows, in plain language first.

    Returns a dict with ``headline`` (recommended strategy in words), ``lines`` (one per strategy:
    expected AUROC and time), ``more_data`` (what more images would buy, or None), ``why``
    (rationale sentences with human names), ``profiled`` (how many images were measured and why this
    may differ from the Data page), ``notes`` and ``measurements`` (jargon rows for the expander).
    """
    from medtl.strategies import strategy_label

    d = advice_dict(advice)
    prof = d.get("profile") or {}
    exp = d.get("expected_auroc") or {}
    mins = d.get("estimated_minutes") or {}
    rec = str(d.get("strategy") or "")
    conf = d.get("confidence")
    headline = f"Recommended: **{strategy_label(rec)}**" if rec else "No recommendation"
    if conf:
        headline += f" (confidence: {conf})"
    lines = []
    for name in sorted(set(exp) | set(mins), key=lambda n: (n != rec, n)):
        rng = exp.get(name) or []
        lo, hi = (finite_or_none(rng[0]), finite_or_none(rng[1])) if len(rng) == 2 else (None, None)
        auc = (
            f"expected AUROC about {(lo + hi) / 2:.2f} (likely {lo:.2f}–{hi:.2f})"
            if lo is not None and hi is not None
            else "expected AUROC not estimated"
        )
        star = " ← recommended" if name == rec else ""
        lines.append(f"**{strategy_label(name)}**: {auc}, {minutes_text(mins.get(name))}{star}")
    probe = prof.get("probe") or {}
    slope = finite_or_none(probe.get("slope_per_doubling"))
    more = None
    if slope is not None:
        if slope < 0.01:
            more = "More images of the same kind would change little (the curve is flat)."
        else:
            more = (
                f"Twice as many training images would add about {slope:+.2f} AUROC to feature "
                "extraction (measured on subsets of your data)."
            )
    n_prof, n_img = prof.get("n_profiled"), prof.get("n_images")
    profiled = None
    if n_prof is not None:
        profiled = f"Profiled {n_prof} images: the training and validation images"
        if prof.get("subsampled"):
            profiled += f" (a sample of the {n_img})"
        profiled += "; the test images are kept aside for the final comparison."
        if data_images and int(data_images) != int(n_prof):
            profiled += f" The Data page counts all {data_images} usable images, test included."
    # (label, value, format): one row per measurement the profile has
    rows = (
        ("KL (BatchNorm divergence)", prof.get("bn_kl"), "{:.2f}"),
        ("Entropy (ImageNet classifier)", prof.get("imagenet_entropy"), "{:.2f}"),
        ("Adaptability (gradient)", prof.get("grad_early_share"), "{:.0%} in the first half"),
        ("k-NN probe", probe.get("knn_auroc"), "AUROC {:.2f}"),
        ("Logistic probe", probe.get("probe_auroc"), "AUROC {:.2f} (cross-validation)"),
        ("Learning-curve slope", slope, "{:+.3f} AUROC per doubling"),
    )
    measurements = [
        (k, fmt.format(v)) for k, raw, fmt in rows if (v := finite_or_none(raw)) is not None
    ]
    return {
        "headline": headline,
        "lines": lines,
        "more_data": more,
        "why": [humanise(str(s)) for s in d.get("rationale") or []],
        "profiled": profiled,
        "notes": [humanise(str(s)) for s in d.get("notes") or []],
        "measurements": [
            {"measure": k, "value": v, "meaning": JARGON.get(k, "")} for k, v in measurements
        ],
    }


_HEX = re.compile(r"b'(?:\\x[0-9a-fA-F]{2}|[^'])*'|(?:\\x[0-9a-fA-F]{2}){2,}")


def plain_error(message: str) -> str:
    """An error message without byte dumps (``b'\\x89PN...'``): a clinician cannot read hex."""
    return _HEX.sub("(unreadable binary content)", message)


def threshold_source(text: str) -> str:
    """The library's "model's operating point (youden, chosen on val)" in clinical words."""
    words = {  # the rule's own words first: the Youden sentence names sensitivity too
        "sensitivity ": "target sensitivity ",
        "specificity ": "target specificity ",
        "chosen on val": "chosen on the validation images",
        "chosen on test": "chosen on the TEST images",
        "youden": "best balance of sensitivity and specificity",
    }
    for k, v in words.items():
        text = text.replace(k, v)
    return text
