"""The report's "Performance by subgroup" section: a forest plot, a table and the gaps in words.

Everything comes from ``summary.json["subgroups"]`` (computed once when the run finished, see
:mod:`medtl.subgroup_results`); nothing here reads images or headers. The Streamlit app draws the
same forest plot with :func:`plot_subgroup_forest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from medtl.metrics import format_p_value
from medtl.report._content import display_name
from medtl.report._html import Raw, fci, join, section, table, tag

SECTION = ("subgroups", "Performance by subgroup")
FIGURE_KEY = "subgroups"

Tables = Mapping[str, Mapping[str, list[Mapping[str, Any]]]]  # strategy -> attribute -> rows


def _fin(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _task_of(summary: Mapping[str, Any]) -> Any:
    """The run's task (:mod:`medtl.tasks`) from its summary; None when the summary names no
    classes (an older or damaged run: its strategies are shown by the form of their blocks)."""
    from medtl.tasks import task_for

    ds = summary.get("dataset") or {}
    try:
        return task_for(list(ds["classes"]), ds.get("task")) if ds.get("classes") else None
    except (KeyError, TypeError, ValueError):
        return None


def subgroup_numbers(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The section's numbers, keyed by display name (None when the run has no subgroups).

    ``strategies``: the binary tables (forest plot); ``macro``: the macro AUROC per group of the
    other kinds; ``findings``: for a task asked per finding (several findings per image), each
    strategy's per-finding tables (``per_finding`` is then True and ``macro`` is the macro over
    the findings, not one-vs-rest over classes)."""
    sg = summary.get("subgroups")
    if not sg or not sg.get("strategies"):
        return None
    task = _task_of(summary)
    per_finding = bool(task is not None and task.per_finding)
    binary = {n: s for n, s in sg["strategies"].items() if s.get("kind") == "binary"}
    return {
        "strategies": {display_name(n): s for n, s in binary.items()},
        "macro": {
            display_name(n): s.get("macro")
            for n, s in sg["strategies"].items()
            if s.get("kind") != "binary"
        },
        "per_finding": per_finding,
        "findings": {
            display_name(n): {
                "per_finding": s.get("per_finding") or {},
                "macro_findings": s.get("macro_findings") or [],
                "thresholds": s.get("thresholds") or {},
            }
            for n, s in sg["strategies"].items()
            if per_finding and s.get("per_finding")
        },
        "words": {display_name(n): w for n, w in (sg.get("words") or {}).items()},
        "paired": [
            {"a": display_name(p["a"]), "b": display_name(p["b"]), "words": p.get("words") or []}
            for p in sg.get("paired") or []
        ],
    }


def plot_subgroup_forest(tables: Tables, overall: Mapping[str, float] | None = None) -> Figure:
    """AUROC and its 95% CI per subgroup (rows) for each strategy (colours).

    Args:
        tables: strategy -> attribute -> rows with ``group``, ``auroc``, ``auroc_low``,
            ``auroc_high``, ``too_small``, ``n``.
        overall: strategy -> its AUROC on every test image (a dashed line each).

    Groups too small to judge are drawn hollow and labelled so; none is left out.
    """
    from medtl.report._plots import _color, _figure, _legend_below

    labels: list[str] = []
    for rows_by_attr in tables.values():
        for attr, rows in rows_by_attr.items():
            for r in rows:
                key = f"{attr} = {r['group']}"
                if key not in labels:
                    labels.append(key)
    fig = _figure(max(2.5, 0.32 * len(labels) * max(1, len(tables)) ** 0.5 + 1.2))
    ax = fig.add_subplot()
    if not labels:
        ax.text(0.5, 0.5, "Nothing to plot: no subgroup", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    k = len(tables)
    small_rows: set[str] = set()
    for j, (name, rows_by_attr) in enumerate(tables.items()):
        off = (j - (k - 1) / 2) * (0.6 / max(k, 1))
        colour = _color(j)
        first = True
        for attr, rows in rows_by_attr.items():
            for r in rows:
                key = f"{attr} = {r['group']}"
                y = labels.index(key) + off
                a, lo, hi = r.get("auroc"), r.get("auroc_low"), r.get("auroc_high")
                if not _fin(a):
                    continue
                small = bool(r.get("too_small"))
                if small:
                    small_rows.add(key)
                if _fin(lo) and _fin(hi):
                    ax.plot([lo, hi], [y, y], color=colour, lw=1.5, alpha=0.5 if small else 1)
                ax.plot(
                    [a],
                    [y],
                    "o",
                    color=colour,
                    mfc="white" if small else colour,
                    label=name if first else None,
                )
                first = False
        if overall and _fin(overall.get(name)):
            ax.axvline(float(overall[name]), color=colour, ls="--", lw=1, alpha=0.7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(
        [f"{lab} (too small to judge)" if lab in small_rows else lab for lab in labels], fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Test AUROC with 95% DeLong CI (dashed: all test images)")
    ax.grid(axis="x", alpha=0.3)
    _legend_below(fig, ax, ncols=min(4, max(1, k)))
    return fig


def forest_figure(sg: Mapping[str, Any] | None) -> Figure | None:
    """The report's forest plot from :func:`subgroup_numbers` (None when there is nothing)."""
    if not sg or not sg["strategies"]:
        return None
    tables = {n: s["attributes"] for n, s in sg["strategies"].items()}
    overall = {n: (s.get("overall") or {}).get("auroc") for n, s in sg["strategies"].items()}
    return plot_subgroup_forest(tables, overall)


def _gap(r: Mapping[str, Any], key: str) -> str:
    g = r.get(key)
    if not _fin(g):
        return "n/a"
    return f"{g:+.3f} ({format_p_value(r.get(f'{key}_p_holm'), prefix=False)})"


def subgroup_rows(rows_by_attr: Mapping[str, list[Mapping[str, Any]]]) -> list[list[Any]]:
    """Table rows (attribute, group, n, positives, AUROC (CI), sensitivity, specificity, FNR (CI),
    calibration in the large, AUROC gap (Holm p), FNR gap (Holm p)) for one strategy."""
    out = []
    for attr, rows in rows_by_attr.items():
        for r in rows:
            small = r.get("too_small")
            out.append(
                [
                    attr,
                    r["group"] + (" (too small to judge)" if small else ""),
                    r.get("n"),
                    r.get("n_pos"),
                    fci(r.get("auroc"), r.get("auroc_low"), r.get("auroc_high")),
                    "n/a" if not _fin(r.get("sensitivity")) else f"{r['sensitivity']:.3f}",
                    "n/a" if not _fin(r.get("specificity")) else f"{r['specificity']:.3f}",
                    fci(r.get("fnr"), r.get("fnr_low"), r.get("fnr_high")),
                    "n/a"
                    if not _fin(r.get("calibration_in_the_large"))
                    else f"{r['calibration_in_the_large']:+.3f}",
                    "—" if small else _gap(r, "auroc_gap"),
                    "—" if small else _gap(r, "fnr_gap"),
                ]
            )
    return out


def subgroup_section(rep: Mapping[str, Any], figs: Mapping[str, tuple[bytes, str]]) -> Raw:
    """The HTML section (a note when the run has no subgroups)."""
    from medtl.report._html import img

    sid, title = SECTION
    sg = rep.get("subgroups")
    if not sg:
        return section(
            sid,
            title,
            tag(
                "p",
                "No subgroups were asked for. Name attributes with --subgroups sex,age,view (or "
                "data.subgroups in the config): manifest columns or DICOM header attributes.",
                cls="note",
            ),
        )
    parts: list[Any] = []
    if FIGURE_KEY in figs:
        png, caption = figs[FIGURE_KEY]
        parts += [img(png, caption), tag("p", caption, cls="note")]
    words = list(dict.fromkeys(w for ws in sg["words"].values() for w in ws))  # said once each
    if words:
        parts += [tag("h3", "Largest gaps"), tag("ul", join(tag("li", w) for w in words))]
    for p in sg["paired"]:
        if p["words"]:
            parts += [
                tag("h3", f"Does {p['a']} vs {p['b']} hold in every subgroup?"),
                tag("ul", join(tag("li", w) for w in p["words"])),
            ]
    head = ["Attribute", "Group", "n", "Positives", "AUROC (95% CI)", "Sensitivity",
            "Specificity", "FNR (95% CI)", "Obs − pred", "AUROC gap (Holm p)",
            "FNR gap (Holm p)"]  # fmt: skip
    for name, s in sg["strategies"].items():
        parts += [
            tag("h3", f"{name} (threshold {s.get('threshold', float('nan')):.3f})"),
            table(head, subgroup_rows(s["attributes"]), num_cols=range(2, 11)),
        ]
    for name, macro in (sg.get("macro") or {}).items():
        parts += _macro_parts(name, macro, sg.get("per_finding"), sg.get("findings", {}).get(name))
    first = next(iter(sg["strategies"].values()), {})
    parts.append(
        tag(
            "p",
            "Test images only, at each strategy's operating threshold"
            + (" for each finding" if sg.get("per_finding") else "")
            + " (chosen on validation). "
            "Gaps are each group minus the rest of the test images: AUROC by "
            f"{(first.get('tests') or {}).get('auroc_gap', 'an unpaired DeLong z test')}; FNR "
            "(false-negative rate, missed positives) by Fisher's exact test with a Newcombe CI. "
            "p-values are Holm-adjusted across the groups of each attribute. Groups with fewer "
            f"than {first.get('min_positives', 10)} positives or {first.get('min_negatives', 10)} "
            "negatives are too small to judge: shown, not tested. Obs − pred: observed prevalence "
            "minus mean predicted probability (calibration in the large).",
            cls="note",
        )
    )
    return section(sid, title, *parts)


def _group_label(r: Mapping[str, Any]) -> str:
    return str(r["group"]) + (" (too small to judge)" if r.get("too_small") else "")


def _macro_parts(
    name: str, macro: Mapping[str, Any] | None, per_finding: bool | None, fin: Any
) -> list[Any]:
    """One strategy's macro AUROC per group and, for a task asked per finding, the per-finding
    table (each group's AUROC per finding, with its DeLong CI)."""
    if not per_finding:
        rows = [
            [a, _group_label(r), r["n"], "n/a" if not _fin(r.get("auroc")) else f"{r['auroc']:.3f}"]
            for a, rs in (macro or {}).items()
            for r in rs
        ]
        return [
            tag("h3", f"{name}: macro one-vs-rest AUROC per group"),
            table(["Attribute", "Group", "n", "Macro AUROC"], rows, num_cols=(2, 3)),
        ]
    fin = fin or {}
    averaged = list(fin.get("macro_findings") or [])
    rows = [
        [a, _group_label(r), r["n"], r.get("n_findings", "n/a"),
         "n/a" if not _fin(r.get("auroc")) else f"{r['auroc']:.3f}"]
        for a, rs in (macro or {}).items() for r in rs
    ]  # fmt: skip
    parts: list[Any] = [
        tag("h3", f"{name}: macro AUROC over the findings, per group"),
        table(
            ["Attribute", "Group", "n", "Findings averaged", "Macro AUROC"],
            rows,
            num_cols=(2, 3, 4),
        ),
        tag(
            "p",
            "Unweighted mean of the group's per-finding AUROCs over the findings judged on all "
            f"test images ({', '.join(averaged) or 'none'}), each on the images labelled for it; "
            "no interval (see the per-finding intervals below). A group is too small to judge "
            "when any averaged finding is.",
            cls="note",
        ),
    ]
    per = fin.get("per_finding") or {}
    if per:
        parts += [
            tag("h3", f"{name}: AUROC (95% DeLong CI) per finding and group"),
            table(["Attribute", "Group", *per], finding_group_rows(per), num_cols=()),
        ]
        thr = fin.get("thresholds") or {}
        if thr:
            parts.append(
                tag(
                    "p",
                    "Operating thresholds per finding (chosen on validation): "
                    + ", ".join(f"{f} {t:.3f}" for f, t in thr.items() if _fin(t))
                    + ". Blank (not labelled) images are left out of each finding's numbers.",
                    cls="note",
                )
            )
    return parts


def finding_group_rows(per_finding: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Rows (attribute, group, then one AUROC (CI) cell per finding) of the compact per-finding
    subgroup table; a group too small to judge for a finding is marked so in that cell."""
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], str] = {}
    for f, rep in per_finding.items():
        for attr, rs in (rep.get("attributes") or {}).items():
            for r in rs:
                key = (attr, str(r["group"]))
                if key not in keys:
                    keys.append(key)
                cell = fci(r.get("auroc"), r.get("auroc_low"), r.get("auroc_high"))
                cells[(*key, f)] = cell + (" (too small)" if r.get("too_small") else "")
    return [[a, g, *(cells.get((a, g, f), "—") for f in per_finding)] for a, g in keys]


def checklist_text(summary: Mapping[str, Any]) -> str | None:
    """The reporting checklist's subgroup item, or None when no subgroup was analysed."""
    sg = summary.get("subgroups")
    if not sg or not sg.get("strategies"):
        return None
    attrs: list[str] = []
    for s in sg["strategies"].values():
        for a in s.get("attributes") or s.get("macro") or {}:
            if a not in attrs:
                attrs.append(a)
    return (
        f"test-set performance by {', '.join(attrs)}: AUROC (DeLong 95% CI), sensitivity, "
        "specificity and false-negative rate (Wilson 95% CI), calibration in the large per group; "
        "each group vs the rest (unpaired DeLong, Fisher's exact; Holm-adjusted); small groups "
        "flagged; paired DeLong per group between strategies"
    )
