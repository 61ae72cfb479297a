"""``write_report``: run folder -> plots/*.png, report.html and report.json (all written atomically)."""

from __future__ import annotations

import datetime
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from medtl._fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from medtl.metrics import json_safe
from medtl.report._cards import checklist, model_card, versions
from medtl.report._content import (
    data_numbers,
    fin,
    headline,
    num,
    paired_numbers,
    strategy_numbers,
)
from medtl.report._findings import findings_headline, findings_numbers, findings_roc_figure
from medtl.report._plots import (
    figure_to_png,
    plot_calibration,
    plot_confusion,
    plot_decision_curve,
    plot_learning_curves,
    plot_roc,
)
from medtl.report._render import render_html
from medtl.report._subgroups import FIGURE_KEY, forest_figure, subgroup_numbers
from medtl.runs import NOTE_GAP, RunData, load_run, note_records

logger = logging.getLogger(__name__)


def _curves(run: RunData, strat: dict[str, dict]) -> dict[str, Any]:
    """Test (labels, P(positive)) per finished binary strategy, keyed by display name."""
    out = {}
    for name, st in run.strategies.items():
        if st.predictions is None or strat[name]["status"] == "failed":
            continue
        y, p = st.predictions.subset("test")
        if y.size and p.ndim == 1:
            out[strat[name]["display"]] = (y, p)
    return out


def _figures(
    run: RunData,
    strat: dict[str, dict],
    notes: list[str],
    findings: dict[str, Any] | None = None,
) -> dict[str, tuple[bytes, str]]:
    """Draw every figure the run supports; a figure that fails becomes a note, not a crash.
    ``findings``: the per-finding numbers of a run with several findings per image."""
    jobs: dict[str, tuple[Any, str]] = {}
    hist = {
        strat[n]["display"]: st.history
        for n, st in run.strategies.items()
        if st.history and strat[n]["status"] != "failed"
    }
    # the epochless lines show the kept model's validation AUROC and training time, as the table does
    kept = {s["display"]: (s["val_auroc"], s["train_seconds"]) for s in strat.values()}
    metric = run.task.curve_metric
    if hist:
        jobs["learning_epoch"] = (
            lambda: plot_learning_curves(hist, "epoch", kept=kept, metric_label=metric),
            f"Validation {metric} after each epoch; stars mark the best epoch (asymptote).",
        )
        jobs["learning_time"] = (
            lambda: plot_learning_curves(hist, "elapsed", kept=kept, metric_label=metric),
            "The same curves against wall-clock training time: what each strategy costs.",
        )
    curves = _curves(run, strat) if run.task.thresholded else {}
    if curves:
        ops = {
            s["display"]: (1 - s["specificity"], s["sensitivity"])
            for s in strat.values()
            if fin(s["specificity"]) and fin(s["sensitivity"])
        }
        cis = {
            s["display"]: (s["test_auroc_low"], s["test_auroc_high"])
            for s in strat.values()
            if fin(s["test_auroc_low"]) and fin(s["test_auroc_high"])
        }
        jobs["roc"] = (
            lambda: plot_roc(curves, ops, cis=cis),
            "ROC curves on the test set; dots are the operating points chosen on validation.",
        )
        jobs["calibration"] = (
            lambda: plot_calibration(curves),
            "Reliability diagram: points on the diagonal mean a predicted 30% risk comes true about "
            "30% of the time. Each point is a bin holding about the same number of test images "
            "(n beside it; about 30 per bin, so small test sets get few bins), with a 95% Wilson "
            "interval. Slope below 1: predictions too extreme; intercept below 0: risks "
            "over-estimated. Below: how the predicted probabilities are spread.",
        )
        dep = num(run.summary.get("prevalence"))
        prev = dep if math.isfinite(dep) else None
        where = (
            f"at the deployment prevalence ({prev:.1%}) given in the config"
            if prev is not None
            else "at the test set's prevalence (set metrics.prevalence for the clinic's)"
        )
        jobs["decision_curve"] = (
            lambda: plot_decision_curve(curves, prevalence=prev),
            f"Net benefit across threshold probabilities, {where}; a model helps where its curve "
            "lies above both 'treat all' and 'treat none'.",
        )
    if findings and findings["strategies"]:
        jobs["roc"] = (
            lambda: findings_roc_figure(run, findings),
            "ROC curves per finding on the test images labelled for it, most prevalent first; "
            "legends give each strategy's AUROC, dots the operating point chosen on validation.",
        )
    mats = {
        s["display"]: s["confusion"]
        for s in strat.values()
        if s["status"] != "failed" and s["confusion"]
    }
    if mats:
        jobs["confusion"] = (
            lambda: plot_confusion(mats, class_names=run.classes or None),
            "Rows are the true class, columns the prediction at the operating threshold.",
        )
    sg = subgroup_numbers(run.summary)
    if sg and sg["strategies"]:
        jobs[FIGURE_KEY] = (
            lambda: forest_figure(sg),
            "Test AUROC per subgroup with 95% DeLong CIs; hollow: too small to judge.",
        )
    figs: dict[str, tuple[bytes, str]] = {}
    for key, (draw, caption) in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figs[key] = (figure_to_png(draw()), caption)
        except Exception as exc:  # a broken input must not sink the whole report
            logger.warning("report: could not draw %s: %s", key, exc)
            notes.append(f"The {key.replace('_', ' ')} figure could not be drawn ({exc}).")
    return figs


def build_report(run: RunData, *, title: str | None = None) -> dict[str, Any]:
    """The report's numbers and texts as a JSON-safe dict (what report.json holds)."""
    notes = list(run.notes)
    strat = {n: strategy_numbers(run, st, notes) for n, st in run.strategies.items()}
    paired = paired_numbers(run, strat, notes)
    findings = findings_numbers(run, paired, notes)
    data = data_numbers(run)
    ranked = sorted(
        (n for n, s in strat.items() if s["status"] != "failed" and fin(s["test_auroc"])),
        key=lambda n: -strat[n]["test_auroc"],
    )
    best = ranked[0] if ranked else None
    s = run.summary
    name = s.get("name") or run.run_dir.name
    return {
        "title": title or f"medtl report: {name}",
        "run": {
            k: s.get(k)
            for k in ("name", "created", "backbone", "image_size", "device", "precision")
        },
        "task": run.task.kind,
        "task_title": run.task.title,
        "curve_metric": run.task.curve_metric,
        "paired_tests": run.task.paired_tests,
        "classes": run.classes,
        "threshold_rule": s.get("threshold_rule"),
        "deployment_prevalence": s.get("prevalence"),
        "best_strategy": best,
        "headline": headline(run, strat, paired)
        + (findings_headline(findings) if findings else []),
        "strategies": strat,
        "paired": paired,
        "findings": findings,
        "subgroups": subgroup_numbers(s),
        "data": data,
        "model_card": model_card(run, strat, best, data),
        "checklist": checklist(run, strat, paired, data),
        "run_notes": [str(r["text"]) for r in note_records(s) if r["kind"] != NOTE_GAP],
        "notes": notes,
        "versions": versions(),
    }


def write_report(run_dir: str | os.PathLike, *, title: str | None = None) -> Path:
    """Render a run folder as ``plots/*.png``, ``report.html`` and ``report.json``.

    Reads only the run folder's files (no DICOM headers, no network), so a report can be
    re-rendered at any time. Missing files skip their section with a note; failed strategies show
    their error; multi-class runs get per-class AUROCs instead of the binary-only sections.

    Args:
        run_dir: the run folder written by ``medtl compare`` / ``medtl train``.
        title: page title (default "medtl report: <run name>").

    Returns:
        The path of ``report.html``.

    Example:
        >>> write_report("runs/latest")
        PosixPath('runs/latest/report.html')
    """
    run = load_run(run_dir)
    rep = build_report(run, title=title)
    notes: list[str] = rep["notes"]
    figs = _figures(run, rep["strategies"], notes, rep.get("findings"))
    # the validation-vs-test gap has its own flag per strategy: run_notes leaves those notes out
    notes.extend(f"Run note: {n}" for n in rep["run_notes"])
    rep["plots"] = [f"plots/{k}.png" for k in figs]
    rep["rendered"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for key, (png, _) in figs.items():
        atomic_write_bytes(run.run_dir / "plots" / f"{key}.png", png)
    # Render from the raw numbers (keeps inf, e.g. LR+ with no false positives); JSON gets nulls.
    html_text = render_html(rep, figs, run.data_card)
    atomic_write_json(run.run_dir / "report.json", json_safe(rep))
    out = atomic_write_text(run.run_dir / "report.html", html_text)
    logger.info("report written to %s (%d figures)", out, len(figs))
    return out
