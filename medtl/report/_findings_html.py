"""The HTML of a run with several findings per image (numbers from :mod:`medtl.report._findings`):
per-finding tables, the macro / micro summaries, the paired comparison per finding, data counts."""

from __future__ import annotations

from typing import Any

from medtl.formatting import finite as fin
from medtl.metrics import format_p_value
from medtl.report._content import display_name
from medtl.report._findings import unscorable_text
from medtl.report._html import Raw, fci, fnum, fpct, join, table, tag

#: the per-finding table's columns (the report's and the app's)
FINDING_COLUMNS = (
    "Finding",
    "Test positives / negatives (prevalence)",
    "AUROC (95% DeLong CI)",
    "AUPRC (prevalence)",
    "Threshold (chosen on validation)",
    "Sensitivity (95% Wilson CI)",
    "Specificity (95% Wilson CI)",
    "PPV",
    "NPV",
    "Brier / ECE",
)


def _note(text: str) -> Raw:
    return tag("p", text, cls="note")


def finding_cells(r: dict[str, Any]) -> list[str]:
    """One row of the per-finding table as text (the report's and the app's)."""
    if r["n_pos"] is None:
        counts = "n/a"
    else:
        prev = f" ({r['prevalence']:.1%})" if fin(r["prevalence"]) else ""
        blank = f", {r['n_missing']} blank" if r.get("n_missing") else ""
        counts = f"{r['n_pos']} / {r['n_neg']}{prev}{blank}"
    scored = "" if r["scorable"] else " (not scored)"
    auprc = fnum(r["auprc"])
    if auprc != "n/a" and fin(r["prevalence"]):
        auprc += f" (vs {r['prevalence']:.3f})"
    thr = fnum(r["threshold"])
    if thr != "n/a" and r.get("threshold_source") not in (None, "validation"):
        thr += f" ({r['threshold_source']})"
    cal = "n/a" if not fin(r["brier"]) else f"{fnum(r['brier'])} / {fnum(r['ece'])}"
    return [
        r["finding"] + scored,
        counts,
        fci(r["auroc"], r["auroc_low"], r["auroc_high"]),
        auprc,
        thr,
        *(fpct(r[k], r[f"{k}_low"], r[f"{k}_high"]) for k in ("sensitivity", "specificity", "ppv", "npv")),
        cal,
    ]  # fmt: skip


def _summary_rows(block: dict[str, Any]) -> list[list[str]]:
    return [
        [
            s["display"],
            fci(s["macro"], s["macro_low"], s["macro_high"]),
            fci(s["micro"], s["micro_low"], s["micro_high"]),
            f"{s['n_scorable']} of {s['n_findings']}",
        ]
        for s in block["strategies"].values()
    ]


def results_html(block: dict[str, Any]) -> Raw:
    """Macro / micro AUROC per strategy, the scorable rule and the findings it leaves out, then one
    per-finding table per strategy (most prevalent finding first)."""
    unit = block.get("bootstrap_unit") or "image"
    parts: list[Any] = [
        tag("h3", "Macro and micro AUROC over the scored findings (test set)"),
        table(
            [
                "Strategy",
                "Macro AUROC (95% bootstrap CI)",
                "Micro AUROC (95% bootstrap CI)",
                "Findings scored",
            ],
            _summary_rows(block),
            num_cols=(1, 2, 3),
        ),
        _note(
            "Macro AUROC: the unweighted mean of the scored findings' AUROCs (each finding counts "
            "the same however common). Micro AUROC: one AUROC over every labelled (image, finding) "
            f"pair of the scored findings pooled. Intervals: percentile bootstrap over {unit}s. "
            + (f"Rule: {block['rule']}." if block.get("rule") else "")
        ),
    ]
    if block["unscorable"]:
        parts.append(
            tag(
                "p",
                "Findings not scored (listed, never averaged in): " + unscorable_text(block) + ".",
                cls="flag",
            )
        )
    for s in block["strategies"].values():
        parts += [
            tag("h3", f"Per finding: {s['display']} (test set, most prevalent first)"),
            table(
                list(FINDING_COLUMNS),
                [finding_cells(r) for r in s["rows"]],
                num_cols=range(1, len(FINDING_COLUMNS)),
            ),
        ]
    parts.append(
        _note(
            "Each finding is its own yes/no question, scored on the test images labelled for it "
            "(a blank label is not labelled, never negative). Its threshold was chosen on its "
            "labelled validation images and applied unchanged to the test images. AUPRC is shown "
            "beside the finding's prevalence, the AUPRC of a model that guesses. PPV/NPV are at "
            "the test prevalence. Brier score and ECE: calibration (lower is better)."
        )
    )
    return join(parts)


def paired_html(block: dict[str, Any], rows: list[dict[str, Any]]) -> Raw:
    """Per paired comparison: the macro difference (paired bootstrap) and every finding's DeLong
    difference with its raw and Holm-adjusted p, then the per-finding result in words."""
    p = lambda v: format_p_value(v, prefix=False)  # noqa: E731
    words = {(w["a"], w["b"]): w["sentences"] for w in block.get("paired") or []}
    order = block["order"]
    parts: list[Any] = []
    for r in rows:
        a, b = display_name(r["a"]), display_name(r["b"])
        diff = lambda v: "n/a" if not fin(v) else f"{v:+.3f}"  # noqa: E731
        ci = lambda lo, hi: f"{lo:+.3f} to {hi:+.3f}" if fin(lo) and fin(hi) else "n/a"  # noqa: E731
        unit = r.get("boot_unit")
        label = "Macro AUROC (paired bootstrap" + (f" over {unit}s)" if unit else ")")
        body: list[list[Any]] = [[
            tag("b", label), fnum(r["auc_a"]), fnum(r["auc_b"]),
            diff(r["diff"]), ci(r["boot_low"], r["boot_high"]), p(r["boot_p"]), "—",
        ]]  # fmt: skip
        for f in [f for f in order if f in r["per_class"]]:
            v = r["per_class"][f]
            scored = fin(v.get("p_holm"))
            body.append([
                f"{f} (DeLong)" if scored else f"{f} (DeLong; not scored)", fnum(v["auc_a"]),
                fnum(v["auc_b"]), diff(v["diff"]), ci(v["low"], v["high"]), p(v["p_value"]),
                p(v["p_holm"]) if scored else "not tested",
            ])  # fmt: skip
        parts += [
            tag("h3", f"A = {a}, B = {b}"),
            table(
                ["", f"AUROC {a}", f"AUROC {b}", "A − B", "95% CI", "p", "Holm-adjusted p"],
                body,
                num_cols=range(1, 7),
            ),
            tag("ul", join(tag("li", t) for t in [r["reading"], *words.get((r["a"], r["b"]), [])])),
        ]
    return join(parts)


def data_html(block: dict[str, Any]) -> Raw:
    """Positives / negatives / blank labels per finding and split, and the findings too rare to
    score on the test split."""
    d = block["data"]
    per_split = d["per_split"]
    splits = [s for s in ("train", "val", "test") if s in per_split] + [
        s for s in per_split if s not in ("train", "val", "test")
    ]
    if not per_split:
        return _note("No per-finding counts in summary.json.")
    body = []
    for f in block["order"]:
        cells = []
        for s in splits:
            c = (per_split.get(s) or {}).get(f) or {}
            cells.append(f"{c.get('pos', 0)} / {c.get('neg', 0)} / {c.get('missing', 0)}")
        t = d["totals"].get(f) or {}
        n = (t.get("pos") or 0) + (t.get("neg") or 0)
        prev = f"{(t.get('pos') or 0) / n:.1%}" if n else "n/a"
        body.append([f, *cells, prev])
    parts: list[Any] = [
        tag("h3", "Labelled images per finding and split (positive / negative / blank)"),
        table(
            ["Finding", *splits, "Prevalence (labelled images)"],
            body,
            num_cols=range(1, len(splits) + 2),
        ),
    ]
    lab = d.get("labelling") or {}
    facts = []
    if lab:
        facts.append(
            f"Uncertain labels: policy {lab.get('uncertain', 'ignore')}; columns ignored (not "
            f"findings): {', '.join(lab.get('ignored_columns') or []) or 'none'}."
        )
    if d["too_rare_to_score"]:
        facts.append(
            "Too rare to score on the test split (fewer than "
            f"{d.get('min_scorable') or '?'} positives or negatives): "
            + ", ".join(
                f"{f} ({c.get('pos', 0)} positive / {c.get('neg', 0)} negative)"
                for f, c in d["too_rare_to_score"].items()
            )
            + "."
        )
    parts += [_note(t) for t in facts]
    return join(parts)
