"""The app for several findings per image (logic first, then the Streamlit parts).

Data: positives / negatives / blank labels per finding and split. Compare: macro and micro AUROC,
the per-finding tables and the small-multiple ROC curves (the report's, from
:mod:`medtl.report`). Operating point: the two-class view of one chosen finding
(``medtl.report.finding_run``), shown by the page's own binary view. Single image: every finding's
probability and call at the model's per-finding thresholds, and the heatmap of one finding.

Every decision asks the task (``Task.per_finding``); nothing here counts classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _app_inputs import prepare_upload
from _app_text import threshold_source

_SPLITS = {"train": "Training", "val": "Validation", "test": "Test", "unassigned": "Not yet split"}


def summary_per_finding(summary: dict[str, Any]) -> bool:
    """True when a data summary (``summarise_dataset``) is of several findings per image."""
    from medtl.tasks import task_for

    classes = list(summary.get("classes") or [])
    return bool(classes) and task_for(classes, summary.get("task")).per_finding


# -- data ------------------------------------------------------------------------------------------
def finding_count_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows 'Finding, Training, Validation, Test (positive / negative / blank), Prevalence' of a
    multi-label data summary, the most prevalent finding first."""
    facts = summary.get("findings") or {}
    per_split, totals = facts.get("per_split") or {}, facts.get("totals") or {}

    def prevalence(f: str) -> float:
        t = totals.get(f) or {}
        n = (t.get("pos") or 0) + (t.get("neg") or 0)
        return (t.get("pos") or 0) / n if n else float("nan")

    order = sorted(
        summary.get("classes") or [], key=lambda f: -np.nan_to_num(prevalence(f), nan=-1)
    )
    rows = []
    for f in order:
        row: dict[str, Any] = {"Finding": f}
        for sp, label in _SPLITS.items():
            if sp in per_split:
                c = (per_split[sp] or {}).get(f) or {}
                row[f"{label} (pos / neg / blank)"] = (
                    f"{c.get('pos', 0)} / {c.get('neg', 0)} / {c.get('missing', 0)}"
                )
        p = prevalence(f)
        row["Prevalence (labelled images)"] = "n/a" if math.isnan(p) else f"{p:.1%}"
        rows.append(row)
    return rows


def data_sentence(summary: dict[str, Any]) -> str:
    """The first line of the Data page for a multi-label set."""
    return (
        f"**{summary['n_images']} images** with **{summary['n_classes']} findings** each "
        "(several findings per image; a blank label means *not labelled*, never *absent*). "
        f"{summary['n_skipped']} file(s) could not be used."
    )


def rare_sentence(summary: dict[str, Any]) -> str | None:
    """Which findings are too rare to score on the test split, with their counts (None if none)."""
    facts = summary.get("findings") or {}
    rare = facts.get("too_rare_to_score") or {}
    if not rare:
        return None
    items = ", ".join(f"{f} ({c.get('pos', 0)} positive / {c.get('neg', 0)} negative)"
                      for f, c in rare.items())  # fmt: skip
    return (
        f"Too rare to score on the test images (fewer than {facts.get('min_scorable', '?')} "
        f"positives or negatives): {items}. They are trained but left out of the macro AUROC."
    )


def example_samples(dataset: Any, n: int = 6) -> list[tuple[str, Any]]:
    """(caption, sample) of the first ``n`` images of a multi-label dataset, each captioned with
    the findings it is labelled positive for ("no finding" when none)."""
    out = []
    for s in dataset.samples[:n]:
        t = np.asarray(s.targets if s.targets is not None else [], dtype=np.float64)
        present = [f for f, v in zip(dataset.classes, t) if v == 1]
        out.append((", ".join(present) or "no finding", s))
    return out


# -- compare ---------------------------------------------------------------------------------------
def findings_block(run: Any) -> dict[str, Any] | None:
    """The report's per-finding numbers of a run (``medtl.report.findings_numbers``), with the
    paired comparisons stored in its summary; None for a single-label run."""
    from medtl.report import findings_numbers

    pairs = [p for p in run.summary.get("paired") or [] if isinstance(p, dict)]
    return findings_numbers(run, pairs)


def summary_rows(block: dict[str, Any]) -> list[dict[str, str]]:
    """'Strategy, Macro AUROC, Micro AUROC, Findings scored' per strategy."""
    from medtl.report import fci

    return [
        {
            "Strategy": s["display"],
            "Macro AUROC (95% CI)": fci(s["macro"], s["macro_low"], s["macro_high"]),
            "Micro AUROC (95% CI)": fci(s["micro"], s["micro_low"], s["micro_high"]),
            "Findings scored": f"{s['n_scorable']} of {s['n_findings']}",
        }
        for s in block["strategies"].values()
    ]


def finding_table(strategy: dict[str, Any]) -> list[dict[str, str]]:
    """One strategy's per-finding table (the report's columns), most prevalent finding first."""
    from medtl.report import FINDING_COLUMNS, finding_cells

    return [dict(zip(FINDING_COLUMNS, finding_cells(r))) for r in strategy["rows"]]


def finding_choices(run: Any) -> list[str]:
    """The run's findings, most prevalent on the test images first."""
    block = findings_block(run)
    return list(block["order"]) if block else list(run.classes)


def finding_label(run: Any, finding: str) -> str:
    """'effusion (7 positive / 17 negative test images)' from the run's data summary."""
    c = (
        (((run.summary.get("dataset") or {}).get("findings") or {}).get("per_split") or {})
        .get("test", {})
        .get(finding)
    )
    return f"{finding} ({c['pos']} positive / {c['neg']} negative test images)" if c else finding


# -- single image ----------------------------------------------------------------------------------
@dataclass
class FindingsPrediction:
    """One multi-label model's answer for one image."""

    findings: list[str]
    proba: np.ndarray  # (K,) P(finding present)
    calls: np.ndarray  # (K,) 1 = present at the finding's threshold
    thresholds: np.ndarray  # (K,)
    threshold_source: str
    finding: str  # the finding the heatmap explains
    heat: np.ndarray


def predict_findings(estimator: Any, path: Path, finding: str | None) -> FindingsPrediction:
    """Every finding's probability and call at the model's per-finding thresholds, and the
    Grad-CAM heatmap of ``finding`` (its output column; the most probable one when None)."""
    from medtl.explain import grad_cam

    prep = prepare_upload(estimator, path)
    proba = np.asarray(estimator.predict_proba(prep), dtype=np.float64)[0]
    thr, source = estimator.threshold_for(None)
    classes = list(estimator.classes_)
    k = classes.index(finding) if finding in classes else int(proba.argmax())
    return FindingsPrediction(
        findings=classes,
        proba=proba,
        calls=np.asarray(estimator.decide(proba[None, :], None))[0],
        thresholds=estimator.task_.thresholds(thr),
        threshold_source=source,
        finding=classes[k],
        heat=grad_cam(estimator, prep.pixels[0], class_index=k),
    )


def single_rows(res: FindingsPrediction) -> list[dict[str, str]]:
    """'Finding, Probability, Threshold, Call' per finding, most probable first."""
    order = np.argsort(-res.proba, kind="stable")
    return [
        {
            "Finding": res.findings[k],
            "Probability": f"{100 * res.proba[k]:.1f}%",
            "Threshold": f"{100 * res.thresholds[k]:.1f}%",
            "Call": "present" if res.calls[k] else "absent",
        }
        for k in order
    ]


# -- Streamlit parts -------------------------------------------------------------------------------
def show_data(summary: dict[str, Any]) -> None:
    """The Data page's card for a multi-label set: findings per split and the rare ones."""
    import streamlit as st

    st.write(data_sentence(summary))
    st.table(finding_count_rows(summary), hide_index=True, width="content")
    rare = rare_sentence(summary)
    if rare:
        st.warning(rare)
    lab = (summary.get("findings") or {}).get("labelling") or {}
    ignored = ", ".join(lab.get("ignored_columns") or []) or "none"
    st.caption(
        f"Uncertain labels: policy **{lab.get('uncertain', 'ignore')}**. Columns ignored (not "
        f"findings): {ignored}."
    )


def show_compare(run: Any, figures: Any) -> None:
    """The Compare page's results for several findings per image. ``figures``: the page's
    learning-curve drawer, ``figures(run) -> Figure | None``."""
    import streamlit as st

    from medtl.report import findings_roc_figure

    block = findings_block(run)
    if not block or not block["strategies"]:
        st.info("No per-finding results in this run yet (no strategy finished).")
        return
    st.subheader("Per finding")
    st.caption(
        "Several findings per image: the AUROC in the table above is the **macro AUROC**, the "
        "mean over the findings that have enough test images to be scored. The micro AUROC "
        "pools every labelled (image, finding) pair of those findings."
    )
    st.table(summary_rows(block), hide_index=True)
    if block.get("rule"):
        st.caption(f"Scored: {block['rule']}.")
    if block["unscorable"]:
        from medtl.report import unscorable_text

        st.warning(f"Not scored (never averaged in): {unscorable_text(block)}.")
    for pair in block["paired"]:
        for sentence in pair["sentences"]:
            st.info(sentence)
    strategies = list(block["strategies"].values())
    for tab, s in zip(st.tabs([s["display"] for s in strategies]), strategies):
        tab.table(finding_table(s), hide_index=True)
    st.caption(
        "Each finding is scored on the test images labelled for it, at its own threshold chosen "
        "on the validation images. AUPRC is shown beside the finding's prevalence (what guessing "
        "gets). Brier / ECE: calibration, lower is better."
    )
    st.pyplot(findings_roc_figure(run, block))
    st.caption(
        "ROC curve per finding (most prevalent first); dots: the operating point chosen on the "
        "validation images. Open the Operating point section to move it for one finding."
    )
    fig = figures(run)
    if fig is not None:
        st.pyplot(fig)
        st.caption(
            "Learning curves: validation macro AUROC after each epoch (the star marks the best "
            "epoch); feature extraction has no epochs (dotted line)."
        )


def finding_run_for(run: Any, finding: str) -> Any:
    """The run as a two-class run about ``finding`` (``medtl.report.finding_run``)."""
    from medtl.report import finding_run

    return finding_run(run, finding)


def pick_finding(run: Any) -> str:
    """The Operating point page's finding selector; returns the chosen finding."""
    import streamlit as st

    choices = finding_choices(run)
    return st.selectbox(
        "Finding",
        choices,
        key="op_finding",
        format_func=lambda f: finding_label(run, f),
        help="Each finding has its own threshold; the numbers below are for this finding, on "
        "the images labelled for it.",
    )


def show_single(col: Any, res: FindingsPrediction, label: str, heatmap: Any, image: Any) -> None:
    """One model's column on the Single image page: every finding's probability and call, and
    the heatmap of the chosen finding. ``heatmap``: the page's ``heatmap_figure``."""
    present = [f for f, c in zip(res.findings, res.calls) if c]
    col.metric(f"{label}: findings present", ", ".join(present) or "none", border=True)
    col.table(single_rows(res), hide_index=True)
    col.caption(
        "Called present at or above each finding's threshold: the "
        f"{threshold_source(res.threshold_source)}."
    )
    col.pyplot(heatmap(image, res.heat, f"{label}: regions pointing to {res.finding}"))
