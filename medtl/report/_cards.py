"""Model card and reporting checklist (TRIPOD+AI / CLAIM), auto-filled from a run where possible.

What a run folder cannot know (intended use, eligibility, ethics, funding...) is written as a
"TO COMPLETE" placeholder so a draft can never be mistaken for a finished card.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from medtl.formatting import num
from medtl.report._content import fin, rule_text
from medtl.report._findings import counts_text as findings_counts_text
from medtl.runs import RunData, read_model_meta
from medtl.strategies import strategy_label

TODO = "TO COMPLETE"
AUTO = "filled automatically"
AUTHORS = "to complete by the authors"


def versions() -> dict[str, str]:
    """Versions of medtl and the libraries that shape its numbers (read without importing torch)."""
    import medtl

    out = {"medtl": getattr(medtl, "__version__", "unknown"), "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "numpy", "scikit-learn", "scipy", "matplotlib"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _ci(v: float, lo: float, hi: float) -> str:
    if not fin(v):
        return "n/a"
    if fin(lo) and fin(hi):
        return f"{v:.3f} (95% CI {lo:.3f} to {hi:.3f})"
    return f"{v:.3f}"


def _counts_text(counts: dict[str, Any]) -> str:
    parts = []
    for split, per in counts.items():
        if isinstance(per, dict):
            total = sum(int(v) for v in per.values() if isinstance(v, int | float))
            detail = ", ".join(f"{c} {v}" for c, v in per.items())
            parts.append(f"{split}: {total} ({detail})")
    return "; ".join(parts) or "n/a"


_WINDOW = {
    "header": "DICOM images were windowed with the window centre/width stored in each file",
    "full": "DICOM images were scaled over their full stored range",
    "percentile": "DICOM images were scaled between the {lo:g}th and {hi:g}th intensity percentiles",
}
_HEADS = {"logreg": "logistic-regression", "linear": "linear"}
_SCHEDULE = {
    "onecycle": "a one-cycle schedule (warm-up over the first {w:.0%} of steps, then cosine decay)",
    "cosine": "warm-up over the first {w:.0%} of steps, then cosine decay",
    "constant": "a constant learning rate",
}


def _sci(v: Any) -> str:
    return f"{float(v):.2g}"


def _meta_of(run: RunData, strat: dict[str, dict]) -> tuple[str | None, dict[str, Any] | None]:
    """(name, model.json) of the first finished strategy that saved a model."""
    for name, s in strat.items():
        if s["status"] == "done":
            meta = read_model_meta(run.run_dir, name)
            if meta:
                return name, meta
    return None, None


def preprocessing_text(run: RunData, strat: dict[str, dict]) -> str | None:
    """How images went from file to network input, in sentences (from model.json and config)."""
    _, meta = _meta_of(run, strat)
    pre = (meta or {}).get("preprocessing") or {}
    size = pre.get("image_size") or run.summary.get("image_size")
    if not size:
        return None
    ro = pre.get("read_options") or {}
    window = ro.get("window") or ((run.config or {}).get("data") or {}).get("window") or "header"
    lo, hi = (ro.get("percentiles") or (0.5, 99.5))[:2]
    parts = [
        _WINDOW.get(str(window), f"DICOM windowing: {window}").format(lo=lo, hi=hi)
        + ", after the modality rescale; MONOCHROME1 images were inverted so that bright means dense",
        "PNG, JPEG and TIFF images were scaled to [0, 1] by their bit depth (8-bit / 255, 16-bit / "
        "65535)",
    ]
    if ro.get("frame") is not None:
        parts.append(f"frame {ro['frame']} of multi-frame files was used")
    ch = pre.get("channels")
    chan = "one grey channel" if ch == 1 else (f"{ch} channels" if ch else "")
    parts.append(
        f"every image was resized to {size} × {size} pixels" + (f" with {chan}" if chan else "")
    )
    bb = (meta or {}).get("backbone") or {}
    if bb.get("mean") and bb.get("std"):
        parts.append(
            f"intensities were normalised with the backbone's mean {bb['mean'][0]:g} and standard "
            f"deviation {bb['std'][0]:g}"
        )
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _network_text(name: str, p: dict[str, Any], hist: list[dict] | None, epochs_run: Any) -> str:
    lr = p.get("lr")
    ratio = p.get("backbone_lr_ratio")
    lrs = [r.get("lr") for r in hist or [] if isinstance(r.get("lr"), list) and r.get("lr")]
    if lr is not None:
        rate = f"peak learning rate {_sci(lr)} for the new head"
        if ratio is not None:
            rate += f" and {_sci(float(lr) * float(ratio))} for the backbone (×{ratio:g})"
    else:
        rate = "the recipe's default learning rates (not recorded in the run folder)"
    if lrs:
        rate += (
            f"; at the end of epoch 1 the rates were {', '.join(_sci(v) for v in lrs[0])} "
            "(backbone groups first, head last)"
        )
    sched = _SCHEDULE.get(str(p.get("schedule")), str(p.get("schedule") or "n/a")).format(
        w=float(p.get("warmup_frac") or 0)
    )
    aug = (
        f"radiograph augmentation at strength {float(p.get('augment_strength', 1.0)):g} (small "
        "rotations, shifts and zoom, brightness/contrast/gamma jitter"
        + (", horizontal flips" if p.get("hflip") else ", no flips")
        + ")"
        if p.get("augment")
        else "no augmentation"
    )
    pat = p.get("patience")
    stop = (
        f"early stopping after {pat} epochs without a better validation AUROC, keeping the best "
        "epoch's weights"
        if pat
        else "no early stopping (the best epoch's weights were kept)"
    )
    ran = (
        f"{epochs_run} of at most {p.get('epochs')} epochs run"
        if epochs_run is not None
        else f"at most {p.get('epochs')} epochs"
    )
    head = (
        "initialised from the linear probe (LP-FT)"
        if p.get("head_init") == "probe"
        else "randomly initialised"
    )
    frozen = p.get("frozen_stages_run")
    if frozen is None:  # not recorded (model folders before 2026-12-07)
        layers = ""
    elif frozen:
        layers = (
            f"the first {len(frozen)} backbone stages ({', '.join(frozen)}) kept at their "
            "pretrained weights, the rest trained; "
        )
    else:
        layers = "every layer trained; "
    return (
        f"{strategy_label(name)}: {layers}AdamW (weight decay {p.get('weight_decay')}), {rate}, "
        f"{sched}; "
        f"batch size {p.get('batch_size')}; {aug}; {ran}, {stop}; classes weighted "
        f"{p.get('class_weighting')}; new head {head}."
    )


def _probe_text(name: str, p: dict[str, Any], setting: str) -> str:
    cs = p.get("Cs") or []
    grid = f"{len(cs)} values of C from {_sci(min(cs))} to {_sci(max(cs))}" if cs else "a grid of C"
    rule = {"log_loss_1se": "the smallest validation log-loss (one-standard-error rule)"}.get(
        str(p.get("select_by")), str(p.get("select_by") or "validation")
    )
    kept = f"; kept {setting}" if setting else ""
    refit = (
        "; the kept head was then refit on training + validation images (validation metrics and "
        "the operating point come from the head fitted on training images only)"
        if p.get("refit") and str(p.get("head") or "logreg") == "logreg"
        else ""
    )
    return (
        f"{strategy_label(name)}: backbone frozen, features extracted once; "
        f"{_HEADS.get(str(p.get('head')), str(p.get('head') or 'linear'))} classifier (classes weighted "
        f"{p.get('class_weighting')}) fitted for {grid}, chosen by {rule}{kept}{refit}; no epochs."
    )


def training_text(run: RunData, strat: dict[str, dict]) -> str | None:
    """Optimiser, learning rates, schedule, augmentation, epochs and early stopping per strategy."""
    out = []
    seed = ((run.config or {}).get("train") or {}).get("seed")
    for name, s in strat.items():
        if s["status"] == "failed":
            continue
        p = (run.strategies[name].info.get("params") or {}) or (
            (read_model_meta(run.run_dir, name) or {}).get("params") or {}
        )
        if not p:
            continue
        if s.get("epochless"):
            out.append(_probe_text(name, p, s["learning"].get("setting") or ""))
        else:
            # model.json records the recipe as it ran (default learning rates resolved)
            extra = (read_model_meta(run.run_dir, name) or {}).get("extra") or {}
            recipe = extra.get("recipe") or {}
            p = {**p, "frozen_stages_run": recipe.get("frozen_stages")}
            if recipe.get("head_lr") is not None and p.get("lr") is None:
                p = {
                    **p,
                    "lr": recipe["head_lr"],
                    "backbone_lr_ratio": recipe["backbone_lr"] / recipe["head_lr"],
                }
            out.append(_network_text(name, p, run.strategies[name].history, s.get("epochs_run")))
    if not out:
        return None
    return " ".join(out) + (f" Random seed {seed}." if seed is not None else "")


def _split_text(run: RunData, data: dict[str, Any]) -> str:
    d = (run.config or {}).get("data") or {}
    how = "patient-level (no patient in two splits)" if data.get("patient_ids") else (
        "image-level (no patient ids known: images of one patient may fall in different splits)"
    )  # fmt: skip
    extra = []
    if d.get("val") or d.get("test"):
        extra.append("validation/test images from separate folders given by the user")
    if d.get("val_fraction") is not None and not d.get("val"):
        extra.append(f"{float(d['val_fraction']):.0%} of images held out for validation")
    if d.get("test_fraction") is not None and not d.get("test"):
        extra.append(f"{float(d['test_fraction']):.0%} for testing")
    if d.get("split_seed") is not None:
        extra.append(f"split seed {d['split_seed']}")
    return how + (f"; {', '.join(extra)}" if extra else "")


def _calibration_text(b: dict[str, Any]) -> str:
    if not fin(b["brier"]):
        return "n/a"
    parts = []
    for k in ("slope", "intercept"):
        if fin(b.get(f"calibration_{k}")):
            v, lo, hi = (b[f"calibration_{k}{x}"] for x in ("", "_low", "_high"))
            parts.append(
                f"{k} {v:.2f} (95% CI {lo:.2f} to {hi:.2f})"
                if fin(lo) and fin(hi)
                else f"{k} {v:.2f}"
            )
    return ", ".join([*parts, f"Brier {b['brier']:.3f}", f"ECE {b['ece']:.3f}"])


def _split_counts(run: RunData, data: dict[str, Any]) -> str:
    """Images per class and split; for several findings per image, images and positives /
    negatives per finding and split (a class count would add up findings)."""
    if run.task.per_finding:
        text = findings_counts_text(run.summary)
        if text:
            return text
    return _counts_text(data.get("counts") or {})


def _reference_text(run: RunData) -> str:
    if run.task.per_finding:
        lab = ((run.summary.get("dataset") or {}).get("findings") or {}).get("labelling") or {}
        return (
            "finding labels from the manifest's finding columns (blank = not labelled, never "
            f"negative; uncertain labels: policy {lab.get('uncertain', 'ignore')}); how they were "
            "assigned: to complete"
        )
    return "class labels from the dataset folders/manifest (how they were assigned: to complete)"


def _findings_of(run: RunData, best: str | None) -> dict[str, Any] | None:
    """The micro AUROC and scored-finding count of strategy ``best`` (its metrics.json)."""
    st = run.strategies.get(best) if best else None
    ml = ((st.metrics or {}).get("test") or {}).get("multilabel") if st else None
    if not isinstance(ml, dict):
        return None
    return {**ml, "n_scorable": len(ml.get("scorable") or [])}


def model_card(
    run: RunData, strat: dict[str, dict], best: str | None, data: dict[str, Any]
) -> list[dict[str, Any]]:
    """Model card sections: list of {heading, fields: [{name, value, auto}]}."""
    s = run.summary
    b = strat.get(best) if best else None
    task = run.task.describe()
    f = _field
    details = [
        f(
            "Model",
            f"{b['display']} (the highest test AUROC of this run)"
            if b
            else "n/a (no strategy finished)",
        ),
        f("Architecture", f"{s.get('backbone') or 'n/a'}, ImageNet-pretrained unless from scratch"),
        f("Input", f"{s.get('image_size') or 'n/a'} px images"),
        f("Task", task),
        f("Trained on", f"{s.get('device') or 'n/a'}, precision {s.get('precision') or 'n/a'}"),
        f("Run", f"{s.get('name') or run.run_dir.name}, created {s.get('created') or 'n/a'}"),
    ]
    intended = [
        f(
            "Intended use",
            f"{TODO}: clinical question, setting, users, and the decision it supports.",
            False,
        ),
        f(
            "Out of scope",
            f"{TODO}: populations, devices and uses the model was not evaluated for.",
            False,
        ),
        f("Status", "Research prototype; not a medical device. Do not use for patient care."),
    ]
    datas = [
        f("Source", f"{data.get('source') or 'n/a'}"),
        f("Counts per split", _split_counts(run, data)),
        f("Split", _split_text(run, data)),
        f("Excluded files", f"{data.get('n_skipped') if data.get('n_skipped') is not None else 'n/a'} unreadable or unusable files"),
        f("Reference standard", f"labels from the dataset's folders/manifest; {TODO}: how they were established.", False),
    ]  # fmt: skip
    metrics = _card_metrics(run, b, best)
    limits = _card_limits(b, data)
    ethics = [f("Ethics, consent, data governance", f"{TODO}", False)]
    return [
        {"heading": "Model details", "fields": details},
        {"heading": "Intended use", "fields": intended},
        {"heading": "Data", "fields": datas},
        {"heading": "Metrics (test set, 95% CIs)", "fields": metrics},
        {"heading": "Limitations", "fields": limits},
        {"heading": "Ethical considerations", "fields": ethics},
    ]


def _field(name: str, value: Any, auto: bool = True) -> dict[str, Any]:
    """One model-card field; ``auto`` is False where the authors must fill it in."""
    return {"name": name, "value": str(value), "auto": auto}


def _card_metrics(run: RunData, b: dict | None, best: str | None) -> list[dict[str, Any]]:
    """The model card's metrics fields for the best strategy ``b`` (its row of numbers)."""
    f = _field
    metrics = []
    if b:
        metrics.append(
            f("Test AUROC", _ci(b["test_auroc"], b["test_auroc_low"], b["test_auroc_high"]))
        )
        ml = _findings_of(run, best) if run.task.per_finding else None
        if run.task.per_finding and ml:
            metrics[-1]["name"] = "Test macro AUROC"
            metrics += [
                f("Test micro AUROC", _ci(*(num(ml.get(k)) for k in ("micro", "micro_low", "micro_high")))),
                f("Findings scored", f"{ml['n_scorable']} of {len(run.classes)}; per-finding AUROC, sensitivity, specificity and calibration in the per-finding tables"),
            ]  # fmt: skip
        elif run.task.thresholded and not run.task.per_finding:
            metrics += [
                f("Sensitivity", _ci(b["sensitivity"], b["sensitivity_low"], b["sensitivity_high"])),
                f("Specificity", _ci(b["specificity"], b["specificity_low"], b["specificity_high"])),
                f("Threshold", f"{b['threshold']:.3f} ({rule_text(b['threshold_rule'], b.get('threshold_target'))}, chosen on {b['threshold_source'] or 'validation'})" if fin(b["threshold"]) else "n/a"),
                f("Calibration", _calibration_text(b)),
            ]  # fmt: skip
    else:
        metrics.append(f("Metrics", "n/a (no strategy finished)"))
    return metrics


def _card_limits(b: dict | None, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The model card's limitations fields: what the run itself shows, then what it cannot."""
    f = _field
    limits = []
    n_test = b.get("n_test") if b else None
    if isinstance(n_test, int) and n_test < 200:
        limits.append(f("Small test set", f"{n_test} test images: confidence intervals are wide."))
    if b and b["val_overstates"]:
        limits.append(
            f(
                "Optimistic validation",
                f"Validation AUROC exceeds test AUROC by {b['val_minus_test']:.2f}.",
            )
        )
    if not data.get("patient_ids"):
        limits.append(
            f(
                "Splits",
                "No patient ids: the test set may share patients with training, which flatters results.",
            )
        )
    if b and not fin(b.get("deployment_prevalence")):
        limits.append(
            f(
                "Prevalence",
                "PPV/NPV are at the test prevalence; the clinic's prevalence may differ.",
            )
        )
    limits.append(
        f("Single dataset", "Evaluated on one dataset's held-out split, not externally validated.")
    )
    limits.append(
        f(
            "Other limitations",
            f"{TODO}: known failure modes, subgroups (age, sex, device) not assessed.",
            False,
        )
    )
    return limits


def checklist(
    run: RunData, strat: dict[str, dict], paired: list[dict], data: dict[str, Any]
) -> list[dict[str, str]]:
    """TRIPOD+AI / CLAIM items: what medtl filled from the run, the rest left to the authors.

    Items are named by topic, not number, to stay valid across checklist revisions.
    """
    from medtl.report._subgroups import checklist_text as subgroup_checklist_text

    s = run.summary
    done = [v for v in strat.values() if v["status"] != "failed"]
    rule = s.get("threshold_rule") or next(
        (v["threshold_rule"] for v in done if v["threshold_rule"]), None
    )
    source = next((v["threshold_source"] for v in done if v.get("threshold_source")), None)
    v = versions()
    items: list[tuple[str, str, str | None]] = [
        ("Data source", "TRIPOD+AI, CLAIM", f"{data.get('source') or ''} {data.get('root') or ''}".strip() or None),
        ("Eligibility criteria and study dates", "TRIPOD+AI, CLAIM", None),
        ("Number of images per class and split", "TRIPOD+AI, CLAIM", _split_counts(run, data) if data.get("counts") else None),
        ("Excluded or unreadable data", "TRIPOD+AI, CLAIM", f"{data.get('n_skipped')} files skipped (listed in the Data section)" if data.get("n_skipped") is not None else None),
        ("Data partitioning (split method)", "TRIPOD+AI, CLAIM", _split_text(run, data)),
        ("Reference standard (ground truth)", "TRIPOD+AI, CLAIM", _reference_text(run)),
        ("Image preprocessing", "CLAIM", preprocessing_text(run, strat)),
        ("Model architecture and pretraining", "TRIPOD+AI, CLAIM", f"{s['backbone']} backbone, ImageNet-pretrained (except training from scratch); compared: {', '.join(v['display'] for v in strat.values())}" if s.get("backbone") else None),
        ("Training details (optimiser, learning rates, schedule, augmentation, epochs, early stopping)", "TRIPOD+AI, CLAIM", training_text(run, strat)),
        ("Model selection on validation data", "CLAIM", f"networks: the epoch with the best validation {run.task.curve_metric}; feature extraction: the regularisation C by validation log-loss{' (per finding)' if run.task.per_finding else ''}" if done else None),
        ("Performance metrics with confidence intervals", "TRIPOD+AI, CLAIM", run.task.metrics_text if done else None),
        ("Calibration", "TRIPOD+AI", "per finding: Brier score and expected calibration error on its labelled test images (calibration slope and intercept in metrics.json)" if run.task.per_finding and done else "calibration slope and intercept (logistic recalibration, 95% CI), reliability diagram with bins of equal counts (about 30 images each) and Wilson intervals, Brier score, ECE" if run.task.thresholded and done else None),
        ("Operating point selection", "TRIPOD+AI, CLAIM", (f"{rule_text(rule)} per finding; each finding's threshold chosen on its labelled validation images" if run.task.per_finding else f"{rule_text(rule)}; threshold chosen on {source or 'validation'}") if rule and run.task.thresholded else None),
        ("Statistical comparison of models", "CLAIM", f"{len(paired)} paired comparison(s): {run.task.paired_tests}" if paired else None),
        ("Clinical utility (decision curve)", "TRIPOD+AI", (f"decision curve analysis at the deployment prevalence {s['prevalence']:.1%}" if fin(s.get("prevalence")) else "decision curve analysis at the test set's prevalence (no deployment prevalence given)") if run.task.thresholded and not run.task.per_finding and done else None),
        ("Sample size justification", "TRIPOD+AI, CLAIM", None),
        ("External validation", "TRIPOD+AI, CLAIM", None),
        ("Subgroup / fairness analysis", "TRIPOD+AI, CLAIM", subgroup_checklist_text(s)),
        ("Failure / error analysis", "CLAIM", None),
        ("Software and versions", "TRIPOD+AI, CLAIM", ", ".join(f"{k} {val}" for k, val in v.items())),
        ("Code and data availability", "TRIPOD+AI, CLAIM", None),
        ("Ethics approval, funding, conflicts of interest", "TRIPOD+AI, CLAIM", None),
    ]  # fmt: skip
    return [
        {
            "item": item,
            "guideline": g,
            "status": AUTO if content else AUTHORS,
            "content": content or "",
        }
        for item, g, content in items
    ]
