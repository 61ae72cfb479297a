"""Render the report dict (see :mod:`medtl.report._write`) and its figures as one HTML page."""

from __future__ import annotations

from typing import Any

from medtl.metrics import format_p_value
from medtl.report._content import display_name, fin, overstate_text, rule_text
from medtl.report._findings_html import data_html as findings_data_html
from medtl.report._findings_html import paired_html as findings_paired_html
from medtl.report._findings_html import results_html as findings_results_html
from medtl.report._html import (
    Raw,
    fci,
    fnum,
    fseconds,
    img,
    join,
    page,
    paragraphs,
    section,
    table,
    tag,
)
from medtl.report._subgroups import SECTION as SUBGROUP_SECTION
from medtl.report._subgroups import subgroup_section
from medtl.runs import OVERSTATE_MARGIN

#: (anchor, title) of every section, in order.
SECTIONS = (
    ("summary", "Summary"),
    ("results", "Results per strategy"),
    ("learning", "Learning curves"),
    ("roc", "ROC curves and operating points"),
    ("calibration", "Calibration"),
    ("decision", "Decision curve"),
    ("confusion", "Confusion matrices"),
    ("paired", "Paired comparison"),
    SUBGROUP_SECTION,
    ("data", "Data"),
    ("model-card", "Model card"),
    ("checklist", "Reporting checklist (TRIPOD+AI / CLAIM)"),
)
SECTION_TITLES = tuple(t for _, t in SECTIONS)
_TITLE = dict(SECTIONS)

Figures = dict[str, tuple[bytes, str]]  # key -> (png, caption)


def _note(text: str) -> Raw:
    return tag("p", text, cls="note")


def _figure(figs: Figures, key: str, missing: str) -> Raw:
    if key not in figs:
        return _note(missing)
    png, caption = figs[key]
    return join([img(png, caption), tag("p", caption, cls="note")])


def _summary(rep: dict[str, Any]) -> Raw:
    parts: list[Any] = [tag("div", paragraphs(rep["headline"]), cls="headline")]
    for s in rep["strategies"].values():
        if s.get("gap_flag"):
            parts.append(tag("p", f"{s['display']}: {overstate_text(s)}.", cls="flag"))
        if s["status"] == "failed":
            parts.append(
                tag("p", f"{s['display']} failed: {s['error'] or 'no error recorded'}", cls="error")
            )
        for w in s.get("report_warnings") or []:
            parts.append(tag("p", f"{s['display']}: {w}", cls="flag"))
    if rep["notes"]:
        parts.append(tag("p", "Notes on the run folder:"))
        parts.append(tag("ul", join(tag("li", n) for n in rep["notes"])))
    return section("summary", _TITLE["summary"], *parts)


def _results(rep: dict[str, Any]) -> Raw:
    strat = rep["strategies"]
    if not strat:
        return section(
            "results", _TITLE["results"], _note("No strategies found in the run folder.")
        )
    names = list(strat)
    cols = [strat[n] for n in names]
    header = ["Metric", *(s["display"] for s in cols)]

    def row(label: str, fn: Any) -> list[Any]:
        return [label, *(fn(s) for s in cols)]

    dep = next((s["deployment_prevalence"] for s in cols if fin(s["deployment_prevalence"])), None)
    tprev = next((s["test_prevalence"] for s in cols if fin(s["test_prevalence"])), None)
    tp_txt = f" ({tprev:.1%})" if tprev is not None else ""
    auroc_label = (
        "Test AUROC (95% CI)" if rep["task"] == "binary" else "Test macro AUROC (95% bootstrap CI)"
    )
    rows = [
        row("Status", _status_cell),
        row(auroc_label, lambda s: fci(s["test_auroc"], s["test_auroc_low"], s["test_auroc_high"])),
        row(f"Validation {rep.get('curve_metric') or 'AUROC'}", lambda s: fnum(s["val_auroc"])),
        row("Validation − test AUROC", _gap_cell),
    ]  # fmt: skip
    if rep["task"] == "binary":
        rows += _binary_rows(cols, row, tp_txt, dep)
    rows += [
        row("Training time", lambda s: fseconds(s["train_seconds"])),
        row("Epochs run", _epochs_cell),
        row("Throughput (images/s)", lambda s: fnum(s["images_per_s"], 1)),
    ]
    parts: list[Any] = [table(header, rows, num_cols=range(1, len(header)))]
    if rep["task"] == "binary":
        parts.append(_note(
            "The threshold is chosen on the validation split and applied unchanged to the test set. "
            "CIs: DeLong for AUROC, Wilson for proportions. PPV/NPV depend on prevalence."
        ))  # fmt: skip
    elif rep.get("findings"):  # several findings per image: one table per strategy
        parts.append(findings_results_html(rep["findings"]))
    else:
        parts += _per_class_parts(rep["classes"], cols)
    return section("results", _TITLE["results"], *parts)


def _status_cell(s: dict) -> Any:
    """A strategy's run status, with its error when it failed."""
    if s["status"] == "failed":
        return tag("span", f"failed: {s['error'] or 'no error recorded'}", cls="todo")
    return s["status"]


def _gap_cell(s: dict) -> Any:
    """Validation minus test AUROC, flagged when it is outside the margin either way."""
    if not fin(s["val_minus_test"]):
        return "n/a"
    if s.get("gap_flag") == "overstates":
        return tag("span", f"⚠ {s['val_minus_test']:+.3f}: validation overstates test", cls="todo")
    if s.get("gap_flag"):
        return tag(
            "span",
            f"⚠ {s['val_minus_test']:+.3f}: test above validation (see summary)",
            cls="todo",
        )
    return f"{s['val_minus_test']:+.3f} (within ±{OVERSTATE_MARGIN:.2f}: consistent)"


def _epochs_cell(s: dict) -> str:
    """Epochs run, or what an epochless strategy did instead."""
    if s.get("epochless"):
        return "none: features extracted once, then a classifier fitted"
    return "n/a" if s["epochs_run"] is None else str(s["epochs_run"])


def _calibration_cell(s: dict, k: str) -> str:
    """Calibration ``k`` (slope or intercept) with its CI, or why it is not available."""
    if k == "slope" and s.get("calibration_note") and not fin(s["calibration_slope"]):
        return f"n/a ({s['calibration_note']})"
    return fci(
        s[f"calibration_{k}"],
        s[f"calibration_{k}_low"],
        s[f"calibration_{k}_high"],
        2,
        sep=" to ",
    )


def _threshold_cell(s: dict) -> str:
    """The operating threshold, its rule and the split it was chosen on."""
    if not fin(s["threshold"]):
        return "n/a"
    return f"{s['threshold']:.3f} ({rule_text(s['threshold_rule'], s.get('threshold_target'))}, chosen on {s['threshold_source'] or 'validation'})"


def _binary_rows(cols: list[dict], row: Any, tp_txt: str, dep: float | None) -> list[list[Any]]:
    """The results table's rows that need one positive class: threshold, PPV/NPV, calibration."""
    rows = [
        row("Operating threshold", _threshold_cell),
        row("Sensitivity (95% Wilson CI)", lambda s: fci(s["sensitivity"], s["sensitivity_low"], s["sensitivity_high"])),
        row("Specificity (95% Wilson CI)", lambda s: fci(s["specificity"], s["specificity_low"], s["specificity_high"])),
        row(f"PPV at test prevalence{tp_txt}", lambda s: fci(s["ppv"], s["ppv_low"], s["ppv_high"])),
        row(f"NPV at test prevalence{tp_txt}", lambda s: fci(s["npv"], s["npv_low"], s["npv_high"])),
    ]  # fmt: skip
    if dep is not None:
        rows += [
            row(
                f"PPV at deployment prevalence ({dep:.1%})",
                lambda s: fnum(s["ppv_at_prevalence"]),
            ),
            row(
                f"NPV at deployment prevalence ({dep:.1%})",
                lambda s: fnum(s["npv_at_prevalence"]),
            ),
        ]
    else:
        rows.append(
            [
                "PPV/NPV at deployment prevalence",
                *("not given (set metrics.prevalence)" for _ in cols),
            ]
        )
    rows += [
        row("LR+ / LR−", lambda s: f"{fnum(s['lr_pos'], 2)} / {fnum(s['lr_neg'], 2)}"),
        row("F1", lambda s: fnum(s["f1"])),
        row("AUPRC", lambda s: fnum(s["auprc"])),
        row("Calibration slope (95% CI; 1 is ideal, < 1 too extreme)", lambda s: _calibration_cell(s, "slope")),
        row("Calibration intercept (95% CI; 0 is ideal, < 0 over-predicts)", lambda s: _calibration_cell(s, "intercept")),
        row("Brier score (lower is better)", lambda s: fnum(s["brier"])),
        row("ECE (lower is better)", lambda s: fnum(s["ece"]) + (f" ({s['ece_bins']} bins)" if s.get("ece_bins") else "")),
    ]  # fmt: skip
    return rows


def _per_class_parts(classes: list[str], cols: list[dict]) -> list[Any]:
    """The multi-class per-class AUROC table and its note."""

    def per_class(s: dict, c: str) -> str:
        lo, hi = ((s["per_class_ci"] or {}).get(c) or (None, None))[:2]
        return fci((s["per_class_auroc"] or {}).get(c), lo, hi)

    pc_rows = [[c, *(per_class(s, c) for s in cols)] for c in classes]
    return [
        tag("h3", "Per-class AUROC (one-vs-rest, test set, 95% DeLong CI)"),
        table(["Class", *(s["display"] for s in cols)], pc_rows, num_cols=range(1, len(cols) + 1)),
        _note(
            f"Multi-class run ({len(classes)} classes): each class's AUROC treats that class as "
            "positive and all others as negative; the macro AUROC is their unweighted mean, "
            "with a class-stratified bootstrap CI. Sensitivity, specificity and calibration "
            "need one positive class and are not shown."
        ),
    ]


def _learning(rep: dict[str, Any], figs: Figures) -> Raw:
    strat = rep["strategies"]
    rows = []
    for s in strat.values():
        lc = s["learning"]
        slope = lc.get("slope")
        if lc.get("epochless"):
            kept = f"no epochs; kept {lc['setting']}" if lc.get("setting") else "no epochs"
            rows.append(
                [
                    s["display"],
                    "n/a (no epochs)",
                    "n/a (no epochs)",
                    fnum(lc.get("asymptote")),
                    kept,
                ]
            )
            continue
        rows.append([
            s["display"], fnum(lc.get("start")),
            "n/a (one epoch)" if s["epochs_run"] == 1 else ("n/a" if not fin(slope) else f"{float(slope):+.3f} per epoch"),
            fnum(lc.get("asymptote")),
            f"{lc['best_epoch']} of {s['epochs_run']}" if lc.get("best_epoch") is not None and s["epochs_run"] else (
                "n/a" if lc.get("best_epoch") is None else str(lc["best_epoch"])),
        ])  # fmt: skip
    return section(
        "learning", _TITLE["learning"],
        _figure(figs, "learning_epoch", "No training histories found; learning curves skipped."),
        _figure(figs, "learning_time", "No timing recorded; the time axis is skipped."),
        table(["Strategy", "Start (after epoch 1)", "Early slope", f"Asymptote (best validation {rep.get('curve_metric') or 'AUROC'})", "Best epoch"], rows, num_cols=(1, 2, 3)),
        _note("Transfer learning is expected to start higher, climb faster and end higher than training from scratch. "
              "Feature extraction has no epochs: it fits a classifier on frozen features for several regularisation "
              "strengths C and keeps one; its line is the validation AUROC of the kept model."),
        *([_note(_CURVE_NOTE_PER_FINDING)] if rep.get("findings") else []),
    )  # fmt: skip


#: what a multi-label run's learning curves show
_CURVE_NOTE_PER_FINDING = (
    "Several findings per image: each point is the validation macro AUROC over the findings the "
    "scoring rule keeps (at least 5 labelled positives and 5 negatives; every finding with both "
    "classes when none qualifies), the number that chooses the epoch."
)


#: where a run with several findings per image shows what a binary-only section would
_PER_FINDING_INSTEAD = {
    "calibration": " Each finding's Brier score and ECE are in its per-finding table (Results per "
    "strategy).",
}


def _binary_fig(rep: dict[str, Any], figs: Figures, sid: str, key: str) -> Raw:
    if rep["task"] != "binary":
        if rep.get("findings") and key in figs:  # drawn per finding (small multiples)
            return section(sid, _TITLE[sid], _figure(figs, key, ""))
        extra = _PER_FINDING_INSTEAD.get(sid, "") if rep.get("findings") else ""
        title = rep.get("task_title") or "multi-class"
        return section(
            sid, _TITLE[sid], _note(f"Binary-only section; skipped for this {title} run.{extra}")
        )
    return section(
        sid, _TITLE[sid], _figure(figs, key, "No test predictions found; section skipped.")
    )


def _ci_text(lo: float, hi: float) -> str:
    return f"{lo:+.3f} to {hi:+.3f}" if fin(lo) and fin(hi) else "n/a"


def _paired(rep: dict[str, Any]) -> Raw:
    rows = rep["paired"]
    if not rows:
        return section("paired", _TITLE["paired"], _note("No paired comparison available (needs two finished strategies scored on the same test images)."))  # fmt: skip
    p = lambda v: format_p_value(v, prefix=False)  # noqa: E731
    parts: list[Any] = []
    binary = [r for r in rows if not r["multiclass"]]
    multi = [r for r in rows if r["multiclass"] and not r.get("per_finding")]
    per_finding = [r for r in rows if r.get("per_finding")] if rep.get("findings") else []
    if binary:
        header = ["A", "B", "AUROC A", "AUROC B", "A − B", "DeLong 95% CI", "DeLong p", "Bootstrap 95% CI", "McNemar p"]  # fmt: skip
        body = [
            [display_name(r["a"]), display_name(r["b"]), fnum(r["auc_a"]), fnum(r["auc_b"]),
             "n/a" if not fin(r["diff"]) else f"{r['diff']:+.3f}", _ci_text(r["delong_low"], r["delong_high"]),
             p(r["delong_p"]), _ci_text(r["boot_low"], r["boot_high"]), p(r["mcnemar_p"])]
            for r in binary
        ]  # fmt: skip
        parts.append(table(header, body, num_cols=range(2, 9)))
    for r in multi:
        a, b = display_name(r["a"]), display_name(r["b"])
        head = ["", f"AUROC {a}", f"AUROC {b}", "A − B", "95% CI", "p"]
        body = [[tag("b", "Macro (paired bootstrap)"), fnum(r["auc_a"]), fnum(r["auc_b"]),
                 "n/a" if not fin(r["diff"]) else f"{r['diff']:+.3f}", _ci_text(r["boot_low"], r["boot_high"]), p(r["boot_p"])]]  # fmt: skip
        body += [
            [f"{c} (DeLong)", fnum(v["auc_a"]), fnum(v["auc_b"]), "n/a" if not fin(v["diff"]) else f"{v['diff']:+.3f}",
             _ci_text(v["low"], v["high"]), p(v["p_value"])]
            for c, v in r["per_class"].items()
        ]  # fmt: skip
        parts += [tag("h3", f"A = {a}, B = {b}"), table(head, body, num_cols=range(1, 6))]
    if per_finding:  # their readings, macro and per finding, come with their tables
        parts.append(findings_paired_html(rep["findings"], per_finding))
    others = [r for r in rows if r not in per_finding]
    if others:
        parts.append(tag("ul", join(tag("li", r["reading"]) for r in others)))
    how = []
    if binary:
        how.append(
            "DeLong for correlated AUROCs, a paired class-stratified bootstrap, McNemar on the errors at each operating point"
        )
    if multi:
        how.append(
            "for more than two classes, a paired class-stratified bootstrap of the macro AUROC difference, DeLong per class (one-vs-rest), McNemar on the most-probable-class errors"
        )
    if per_finding:
        how.append(f"for several findings per image: {rep.get('paired_tests') or 'n/a'}")
    parts.append(_note("Both models are scored on the same test images, so paired tests are used: " + "; ".join(how) + "."))  # fmt: skip
    return section("paired", _TITLE["paired"], *parts)


def _data(rep: dict[str, Any], data_card: str | None) -> Raw:
    d = rep["data"]
    parts: list[Any] = []
    facts = [
        ["Source", d.get("source") or "n/a"],
        *([["Location", d["root"]]] if d.get("root") else []),
        ["Findings (several per image)" if rep.get("findings") else "Classes", ", ".join(d["classes"]) or "n/a"],
        ["Split", "patient-level (patient ids known)" if d.get("patient_ids") else "image-level (no patient ids)"],
        ["Files not used", "n/a" if d.get("n_skipped") is None else str(d["n_skipped"])],
    ]  # fmt: skip
    parts.append(table(["Item", "Value"], facts))
    counts = d.get("counts") or {}
    if rep.get("findings"):
        parts.append(findings_data_html(rep["findings"]))
    elif counts:
        splits = list(counts)
        classes = list(d["classes"]) or sorted({c for v in counts.values() for c in (v or {})})
        body = []
        for c in classes:
            vals = [(counts[s] or {}).get(c, 0) for s in splits]
            body.append([c, *map(str, vals), str(sum(int(v) for v in vals))])
        totals = [sum(int(v) for v in (counts[s] or {}).values()) for s in splits]
        body.append([tag("b", "Total"), *map(str, totals), str(sum(totals))])
        parts += [tag("h3", "Images per class and split"), table(["Class", *splits, "Total"], body, num_cols=range(1, len(splits) + 2))]  # fmt: skip
    else:
        parts.append(_note("No per-split counts in summary.json."))
    total = d.get("skipped_total")
    if total is None:
        parts.append(_note("skipped.csv missing: the list of unused files is not available."))
    elif total == 0:
        parts.append(tag("p", "No files were skipped."))
    else:
        shown = d["skipped_first"]
        parts += [
            tag("h3", f"Skipped files ({len(shown)} shown of {total})"),
            table(
                ["Image (de-identified id)", "Reason"], [[r["path"], r["reason"]] for r in shown]
            ),
        ]
    if data_card:
        parts.append(
            tag(
                "details",
                join([tag("summary", "Data card draft (data_card.md)"), tag("pre", data_card)]),
            )
        )
    return section("data", _TITLE["data"], *parts)


def _model_card(rep: dict[str, Any]) -> Raw:
    parts: list[Any] = []
    for sec in rep["model_card"]:
        rows = [
            [f["name"], f["value"] if f["auto"] else tag("span", f["value"], cls="todo")]
            for f in sec["fields"]
        ]
        parts += [tag("h3", sec["heading"]), table(["Field", "Value"], rows)]
    parts.append(
        _note("Auto-filled from the run folder; items marked TO COMPLETE need the authors.")
    )
    return section("model-card", _TITLE["model-card"], *parts)


def _checklist(rep: dict[str, Any]) -> Raw:
    rows = [
        [c["item"], c["guideline"],
         tag("span", c["status"], cls="ok" if c["status"].startswith("filled") else "todo"), c["content"]]
        for c in rep["checklist"]
    ]  # fmt: skip
    n_auto = sum(c["status"].startswith("filled") for c in rep["checklist"])
    return section(
        "checklist", _TITLE["checklist"],
        tag("p", f"{n_auto} of {len(rows)} items filled automatically from the run; the rest are to complete by the authors."),
        table(["Item", "Guideline", "Status", "What medtl recorded"], rows),
    )  # fmt: skip


def render_html(rep: dict[str, Any], figs: Figures, data_card: str | None) -> str:
    """The self-contained HTML page for a report dict and its figures."""
    run = rep["run"]
    meta = " · ".join(
        f"{k} {v}" for k, v in (
            ("run", run.get("name")), ("created", run.get("created")), ("backbone", run.get("backbone")),
            ("image size", run.get("image_size")), ("device", run.get("device")),
            ("precision", run.get("precision")),
        ) if v not in (None, "")
    )  # fmt: skip
    nav = tag("nav", join(tag("a", t, href=f"#{sid}") for sid, t in SECTIONS))
    body = join([
        tag("h1", rep["title"]), tag("p", meta, cls="meta"), nav,
        _summary(rep), _results(rep), _learning(rep, figs),
        _binary_fig(rep, figs, "roc", "roc"), _binary_fig(rep, figs, "calibration", "calibration"),
        _binary_fig(rep, figs, "decision", "decision_curve"),
        section("confusion", _TITLE["confusion"], _figure(figs, "confusion", "No confusion matrices available.")),
        _paired(rep), subgroup_section(rep, figs), _data(rep, data_card), _model_card(rep), _checklist(rep),
    ])  # fmt: skip
    v = rep["versions"]
    footer = join([
        "Generated by medtl ", v.get("medtl", "?"), " (torch ", v.get("torch", "?"), ", scikit-learn ",
        v.get("scikit-learn", "?"), ", Python ", v.get("python", "?"), ") on ",
        tag("span", rep["rendered"], cls="rendered"), " from the run folder's files only. Run created ",
        run.get("created") or "n/a", ". Research use only; not a medical device.",
    ])  # fmt: skip
    return page(rep["title"], body, footer)
