"""Model card and reporting checklist (TRIPOD+AI / CLAIM), auto-filled from a run where possible.

What a run folder cannot know (intended use, eligibility, ethics, funding...) is written as a
"TO COMPLETE" placeholder so a draft can never be mistaken for a finished card.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from medtl.report._content import fin
from medtl.report._run import RunData

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


def _config_section(run: RunData, key: str) -> str:
    sec = (run.config or {}).get(key)
    if not isinstance(sec, dict) or not sec:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sec.items())


def _split_text(run: RunData, data: dict[str, Any]) -> str:
    d = (run.config or {}).get("data") or {}
    how = "patient-level (no patient in two splits)" if data.get("patient_ids") else (
        "image-level (no patient ids known: images of one patient may fall in different splits)"
    )  # fmt: skip
    extra = []
    for k in ("val_fraction", "test_fraction", "split_seed", "test", "val"):
        if d.get(k) is not None:
            extra.append(f"{k}={d[k]}")
    return how + (f"; {', '.join(extra)}" if extra else "")


def model_card(
    run: RunData, strat: dict[str, dict], best: str | None, data: dict[str, Any]
) -> list[dict[str, Any]]:
    """Model card sections: list of {heading, fields: [{name, value, auto}]}."""
    s = run.summary
    b = strat.get(best) if best else None
    task = f"{'binary' if run.binary else 'multi-class'} classification into {', '.join(run.classes) or 'n/a'}"

    def f(name: str, value: Any, auto: bool = True) -> dict[str, Any]:
        return {"name": name, "value": str(value), "auto": auto}

    details = [
        f("Model", f"{b['display']} ({best})" if b else "n/a (no strategy finished)"),
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
        f("Counts per split", _counts_text(data.get("counts") or {})),
        f("Split", _split_text(run, data)),
        f("Excluded files", f"{data.get('n_skipped') if data.get('n_skipped') is not None else 'n/a'} unreadable or unusable files"),
        f("Reference standard", f"labels from the dataset's folders/manifest; {TODO}: how they were established.", False),
    ]  # fmt: skip
    metrics = []
    if b:
        metrics.append(
            f("Test AUROC", _ci(b["test_auroc"], b["test_auroc_low"], b["test_auroc_high"]))
        )
        if run.binary:
            metrics += [
                f("Sensitivity", _ci(b["sensitivity"], b["sensitivity_low"], b["sensitivity_high"])),
                f("Specificity", _ci(b["specificity"], b["specificity_low"], b["specificity_high"])),
                f("Threshold", f"{b['threshold']:.3f} ({b['threshold_rule']} rule, chosen on {b['threshold_source'] or 'validation'})" if fin(b["threshold"]) else "n/a"),
                f("Calibration", f"Brier {b['brier']:.3f}, ECE {b['ece']:.3f}" if fin(b["brier"]) else "n/a"),
            ]  # fmt: skip
    else:
        metrics.append(f("Metrics", "n/a (no strategy finished)"))
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
    ethics = [f("Ethics, consent, data governance", f"{TODO}", False)]
    return [
        {"heading": "Model details", "fields": details},
        {"heading": "Intended use", "fields": intended},
        {"heading": "Data", "fields": datas},
        {"heading": "Metrics (test set, 95% CIs)", "fields": metrics},
        {"heading": "Limitations", "fields": limits},
        {"heading": "Ethical considerations", "fields": ethics},
    ]


def checklist(
    run: RunData, strat: dict[str, dict], paired: list[dict], data: dict[str, Any]
) -> list[dict[str, str]]:
    """TRIPOD+AI / CLAIM items: what medtl filled from the run, the rest left to the authors.

    Items are named by topic, not number, to stay valid across checklist revisions.
    """
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
        ("Number of images per class and split", "TRIPOD+AI, CLAIM", _counts_text(data.get("counts") or {}) if data.get("counts") else None),
        ("Excluded or unreadable data", "TRIPOD+AI, CLAIM", f"{data.get('n_skipped')} files skipped (listed in the Data section)" if data.get("n_skipped") is not None else None),
        ("Data partitioning (split method)", "TRIPOD+AI, CLAIM", _split_text(run, data)),
        ("Reference standard (ground truth)", "TRIPOD+AI, CLAIM", "class labels from the dataset folders/manifest (how they were assigned: to complete)"),
        ("Image preprocessing", "CLAIM", f"resized to {s['image_size']} px; {_config_section(run, 'data')}" if s.get("image_size") else None),
        ("Model architecture and pretraining", "TRIPOD+AI, CLAIM", f"{s['backbone']}; strategies: {', '.join(strat)}" if s.get("backbone") else None),
        ("Training details (optimiser settings, epochs, seed)", "TRIPOD+AI, CLAIM", _config_section(run, "train") or None),
        ("Model selection on validation data", "CLAIM", "best epoch / regularisation by validation AUROC" if done else None),
        ("Performance metrics with confidence intervals", "TRIPOD+AI, CLAIM", "AUROC (DeLong 95% CI), sensitivity/specificity/PPV/NPV (Wilson 95% CI)" if done else None),
        ("Calibration", "TRIPOD+AI", "reliability diagram, Brier score, ECE" if run.binary and done else None),
        ("Operating point selection", "TRIPOD+AI, CLAIM", f"{rule} rule, threshold chosen on {source or 'validation'}" if rule and run.binary else None),
        ("Statistical comparison of models", "CLAIM", f"{len(paired)} paired comparison(s): DeLong, paired bootstrap, McNemar" if paired else None),
        ("Clinical utility (decision curve)", "TRIPOD+AI", "decision curve analysis on the test set" if run.binary and done else None),
        ("Sample size justification", "TRIPOD+AI, CLAIM", None),
        ("External validation", "TRIPOD+AI, CLAIM", None),
        ("Subgroup / fairness analysis", "TRIPOD+AI, CLAIM", None),
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
