"""The app's Subgroups view: who does the model fail? (logic first, then the Streamlit page).

The table and forest plot are the report's (``medtl.report._subgroups``); here they are recomputed
from the run's ``predictions.csv`` and ``subgroups.csv`` at the operating point chosen in the
Operating point section, so the user sees sensitivity and the false-negative rate per subgroup at
the threshold they picked. For a task asked per finding (several findings per image) the page
first shows the macro AUROC over the findings per group (from ``summary.json``), then the same
binary view for the finding the user picks, on the images labelled for it. Nothing here reads
images or DICOM headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the session keys of the Operating point section (its mode and slider values)
_MODE_KEY, _THRESHOLD_KEY, _TARGET_KEY = "op_mode", "thr", "tgt"


def subgroup_reports(run: Any, thresholds: dict[str, tuple[float, str]]) -> dict[str, Any]:
    """strategy -> :func:`medtl.metrics.subgroup_report` of its test images at its threshold
    (empty when the run has no ``subgroups.csv``)."""
    from medtl import runs
    from medtl.metrics import subgroup_report
    from medtl.subgroup_results import attribute_columns
    from medtl.subgroups import read_attributes_csv

    path = Path(run.run_dir) / runs.SUBGROUPS_FILE
    if not path.is_file():
        return {}
    attrs = read_attributes_csv(path)
    out = {}
    for name, (t, _) in thresholds.items():
        pr = run.strategies[name].predictions
        m = pr.split == "test"
        uids = [u for u, k in zip(pr.uid, m) if k]
        cols = attribute_columns([attrs.get(u) for u in uids])
        if cols:
            out[name] = subgroup_report(pr.label[m], pr.proba[m][:, 1], cols, threshold=t)
    return out


def macro_rows(run: Any, strategy_label: Any) -> dict[str, list[dict[str, str]]]:
    """strategy label -> the macro AUROC per group over the findings (``summary.json``'s
    multi-label subgroup block; empty when the run has none)."""
    strategies = ((run.summary.get("subgroups") or {}).get("strategies")) or {}
    out = {}
    for n, s in strategies.items():
        if not s.get("macro"):
            continue
        out[strategy_label(n)] = [
            {
                "Attribute": a,
                "Group": r["group"] + (" (too small to judge)" if r.get("too_small") else ""),
                "n": str(r.get("n")),
                "Findings averaged": str(r.get("n_findings", "n/a")),
                "Macro AUROC": "n/a" if r.get("auroc") is None else f"{r['auroc']:.3f}",
            }
            for a, rows in s["macro"].items()
            for r in rows
        ]
    return out


def _show_macro(run: Any, strategy_label: Any) -> None:
    """The macro AUROC over the findings per group, for a run asked per finding."""
    import streamlit as st

    tables = macro_rows(run, strategy_label)
    if not tables:
        return
    st.subheader("Macro AUROC over the findings, per group")
    for label, rows in tables.items():
        st.markdown(f"**{label}**")
        st.table(rows, hide_index=True)
    st.caption(
        "Unweighted mean of each group's per-finding AUROCs over the findings judged on all test "
        "images, each on the images labelled for it; a group is too small to judge when any "
        "averaged finding is. Pick a finding below for its table, forest plot and operating point."
    )


def _finding_run(run: Any) -> Any:
    """The run as a two-class run about the finding the user picks (the Subgroups selectbox)."""
    import streamlit as st
    from _app_findings import finding_choices, finding_label, finding_run_for

    st.subheader("One finding by subgroup")
    finding = st.selectbox(
        "Finding",
        finding_choices(run),
        key="sg_finding",
        format_func=lambda f: finding_label(run, f),
        help="Each finding has its own threshold; the numbers below are for this finding, on "
        "the images labelled for it.",
    )
    return finding_run_for(run, finding)


def page_subgroups(run: Any, strategy_label: Any, thresholds_for: Any) -> None:
    """Draw the Subgroups view for ``run`` (None: a hint to open a run first)."""
    import streamlit as st

    from medtl.metrics import gap_sentences
    from medtl.report import plot_subgroup_forest, subgroup_rows

    st.header("Subgroups: who does the model miss?")
    if run is None:
        st.info("Run or open a comparison in the Compare section first.")
        return
    if run.task.per_finding:  # the macro per group, then one finding at a time as two-class
        _show_macro(run, strategy_label)
        run = _finding_run(run)
    mode = st.session_state.get(_MODE_KEY)
    value = st.session_state.get(_THRESHOLD_KEY if mode == "threshold" else _TARGET_KEY)
    try:
        thresholds = thresholds_for(run, mode or "saved", value)
    except Exception:  # an unknown mode from an older session: the models' own points
        thresholds = thresholds_for(run, "saved", None)
    reports = subgroup_reports(run, thresholds)
    if not reports:
        st.info(
            "This run has no subgroups. Start a comparison with --subgroups sex,age,view (manifest "
            "columns or DICOM header attributes) to see performance per group."
        )
        return
    how = {strategy_label(n): why for n, (_, why) in thresholds.items()}
    st.markdown(
        "Held-out test images, at the operating point chosen in the **Operating point** section: "
        + "; ".join(f"{k}: {v}" for k, v in how.items())
        + ". FNR is the share of positives missed (under-diagnosis)."
    )
    tables = {strategy_label(n): r["attributes"] for n, r in reports.items()}
    overall = {strategy_label(n): r["overall"]["auroc"] for n, r in reports.items()}
    st.pyplot(plot_subgroup_forest(tables, overall))
    for n, r in reports.items():
        for w in gap_sentences(r, strategy_label(n)):
            if "unlikely to be chance" in w:
                st.warning(w)
            else:
                st.caption(w)
    head = ["Attribute", "Group", "n", "Positives", "AUROC (95% CI)", "Sensitivity",
            "Specificity", "FNR (95% CI)", "Obs − pred", "AUROC gap (Holm p)",
            "FNR gap (Holm p)"]  # fmt: skip
    for n, r in reports.items():
        st.subheader(f"{strategy_label(n)} (threshold {thresholds[n][0]:.3f})")
        rows = [dict(zip(head, map(str, row))) for row in subgroup_rows(r["attributes"])]
        st.table(rows, hide_index=True)
    first = next(iter(reports.values()))
    st.caption(
        f"Groups with fewer than {first['min_positives']} positives or {first['min_negatives']} "
        "negatives are too small to judge: shown, not tested. Gaps: group minus the rest of the "
        "test images (AUROC: unpaired DeLong; FNR: Fisher's exact), Holm-adjusted per attribute."
    )
