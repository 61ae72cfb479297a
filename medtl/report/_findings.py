"""Several findings per image in the report and the app: the per-finding numbers (one table per
strategy, sorted by prevalence), the macro / micro summaries and the scorable rule, the paired
comparison per finding in words, small-multiple ROC curves, and the two-class view of one finding.

Everything here asks the run's task (``run.task.per_finding``) and reads the run folder's own files
(``metrics.json``'s ``per_finding`` and ``multilabel`` blocks, ``predictions.csv``, ``summary.json``);
nothing is re-chosen: each finding's threshold is the one its validation images chose.

Example:
    >>> from medtl.report import findings_numbers, load_run
    >>> block = findings_numbers(load_run("runs/latest"))   # None for a single-label run
    >>> block["order"]                                       # findings, most prevalent first
    ['effusion', 'atelectasis', 'cardiomegaly']
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtl.formatting import finite as fin
from medtl.formatting import format_interval, num
from medtl.metrics import format_p_value
from medtl.report._content import _get, display_name
from medtl.runs import STATUS_DONE, Predictions, RunData, StrategyRun
from medtl.tasks import task_for

#: panels per row of the small-multiple ROC figure
PANEL_COLUMNS = 3

_OP = ("sensitivity", "specificity", "ppv", "npv")


# -- the two-class view of one finding -------------------------------------------------------------
def negative_name(finding: str) -> str:
    """The name of the other class of one finding's yes/no question ("no effusion")."""
    return f"no {finding}"


def finding_predictions(pred: Predictions, finding: str) -> Predictions:
    """The two-class predictions of one finding on the images labelled for it (blank rows are
    dropped, never read as negative): label 0/1, proba (n, 2) = (1 - p, p).

    Raises:
        KeyError: ``finding`` is not one of the predictions' findings.
    """
    if finding not in pred.class_names:
        raise KeyError(
            f"The finding {finding!r} is not in these predictions ({', '.join(pred.class_names)})."
        )
    k = pred.class_names.index(finding)
    y = np.asarray(pred.label, dtype=np.float64)[:, k]
    keep = ~np.isnan(y)
    p = np.asarray(pred.proba, dtype=np.float64)[keep, k]
    names = [negative_name(finding), finding]
    return Predictions(
        uid=[u for u, m in zip(pred.uid, keep) if m],
        split=np.asarray(pred.split)[keep],
        label=y[keep].astype(np.int64),
        proba=np.column_stack([1.0 - p, p]),
        class_names=names,
        task=task_for(names, "binary"),
    )


def finding_run(run: RunData, finding: str) -> RunData:
    """The run seen as a two-class run about one finding: each finished strategy's predictions on
    the images labelled for it, its threshold chosen on validation, and its per-finding
    ``metrics.json`` block as the metrics. The binary views (the app's operating point) work on it
    unchanged; the run folder is not touched."""
    if finding not in run.classes:
        raise KeyError(f"The finding {finding!r} is not in this run ({', '.join(run.classes)}).")
    summary = dict(run.summary)
    ds = dict(summary.get("dataset") or {})
    ds.update(task="binary", classes=[negative_name(finding), finding])
    summary["dataset"] = ds
    infos: dict[str, Any] = {}
    strategies: dict[str, StrategyRun] = {}
    for name, st in run.strategies.items():
        info = dict(st.info)
        thr = info.get("threshold")
        info["threshold"] = thr.get(finding) if isinstance(thr, dict) else None
        infos[name] = info
        metrics = None
        if isinstance(st.metrics, dict):
            metrics = {
                "test": _get(st.metrics, "test", "per_finding", finding),
                "val": _get(st.metrics, "val", "per_finding", finding),
                "threshold": _get(st.metrics, "threshold", finding),
            }
        pred = st.predictions
        strategies[name] = StrategyRun(
            name=name,
            info=info,
            history=st.history,
            predictions=finding_predictions(pred, finding) if pred is not None else None,
            metrics=metrics,
        )
    summary["strategies"] = infos
    return dataclasses.replace(
        run,
        summary=summary,
        strategies=strategies,
        classes=[negative_name(finding), finding],
    )


# -- numbers ----------------------------------------------------------------------------------------
def _row(finding: str, rep: Any, summ: Any) -> dict[str, Any]:
    """One finding of one strategy: counts, AUROC (DeLong CI), AUPRC, the operating point's
    numbers (Wilson CIs) and calibration, from ``metrics.json``'s test blocks."""
    rep = rep if isinstance(rep, dict) else {}
    summ = summ if isinstance(summ, dict) else {}
    n_pos = summ.get("n_pos", rep.get("n_pos"))
    n_neg = summ.get("n_neg", rep.get("n_neg"))
    n_lab = (int(n_pos) + int(n_neg)) if fin(n_pos) and fin(n_neg) else None
    prev = rep.get("prevalence")
    if not fin(prev) and n_lab:
        prev = int(n_pos) / n_lab
    op = rep.get("operating_point") or {}
    auc = rep.get("auroc") if isinstance(rep.get("auroc"), dict) else {}
    row: dict[str, Any] = {
        "finding": finding,
        "n_pos": None if n_pos is None else int(n_pos),
        "n_neg": None if n_neg is None else int(n_neg),
        "n_missing": summ.get("n_missing"),
        "prevalence": num(prev),
        "scorable": bool(summ.get("scorable")),
        "auroc": num(auc.get("auroc", summ.get("auroc"))),
        "auroc_low": num(auc.get("low", summ.get("low"))),
        "auroc_high": num(auc.get("high", summ.get("high"))),
        "auprc": num(rep.get("auprc")),
        "threshold": num(rep.get("threshold")),
        "threshold_source": rep.get("threshold_source"),
        "brier": num(_get(rep, "calibration", "brier")),
        "ece": num(_get(rep, "calibration", "ece")),
        "error": rep.get("error"),
    }
    for k in _OP:
        row[k] = num(op.get(k))
        row[f"{k}_low"], row[f"{k}_high"] = num(op.get(f"{k}_low")), num(op.get(f"{k}_high"))
    return row


def _order(run: RunData, per: dict[str, dict[str, Any]]) -> list[str]:
    """The findings, most prevalent on the test images first (ties: more positives, then the
    run's own order); the dataset's counts when no strategy has metrics."""
    test = _get(run.summary, "dataset", "findings", "per_split", "test") or {}

    def prevalence(f: str) -> tuple[float, float]:
        row = next((r[f] for r in per.values() if f in r and fin(r[f]["prevalence"])), None)
        if row is not None:
            return row["prevalence"], num(row["n_pos"])
        c = test.get(f) or {}
        n = num(c.get("pos")) + num(c.get("neg"))
        return (num(c.get("pos")) / n if n > 0 else -1.0), num(c.get("pos"))

    keyed = {f: prevalence(f) for f in run.classes}
    return sorted(
        run.classes,
        key=lambda f: (-np.nan_to_num(keyed[f][0], nan=-1.0), -np.nan_to_num(keyed[f][1])),
    )


def findings_numbers(
    run: RunData, paired: list[dict[str, Any]] | None = None, notes: list[str] | None = None
) -> dict[str, Any] | None:
    """Every per-finding number of a run with several findings per image (None for the other
    kinds): per strategy the rows of its table and its macro / micro AUROC with their bootstrap
    intervals; the findings in prevalence order; the scorable rule and the findings it leaves
    out with their counts; the data's positives / negatives / blanks per split; and, per paired
    comparison (:func:`medtl.report._content.paired_numbers` rows), the per-finding result in
    words.
    """
    if not run.task.per_finding:
        return None
    per: dict[str, dict[str, dict[str, Any]]] = {}
    strategies: dict[str, dict[str, Any]] = {}
    rule, unit, unscorable, n_test = None, None, None, None
    for name, st in run.strategies.items():
        test = _get(st.metrics, "test")
        ml = _get(test, "multilabel")
        if st.status != STATUS_DONE or not isinstance(ml, dict):
            if st.status == STATUS_DONE and notes is not None:
                notes.append(
                    f"{name}: metrics.json has no per-finding block; its per-finding table is "
                    "skipped."
                )
            continue
        rows = {
            f: _row(f, _get(test, "per_finding", f), _get(ml, "per_finding", f))
            for f in run.classes
        }
        per[name] = rows
        strategies[name] = {
            "display": display_name(name),
            **{
                k: num(ml.get(k))
                for k in ("macro", "macro_low", "macro_high", "micro", "micro_low", "micro_high")
            },
            "n_scorable": len(ml.get("scorable") or []),
            "n_findings": len(run.classes),
            "bootstrap_unit": ml.get("bootstrap_unit"),
        }
        rule = rule or ml.get("rule")
        unit = unit or ml.get("bootstrap_unit")
        n_test = n_test or test.get("n") or ml.get("n")
        if unscorable is None and isinstance(ml.get("unscorable"), dict):
            unscorable = ml["unscorable"]
    order = _order(run, per)
    for name, rows in per.items():
        strategies[name]["rows"] = [rows[f] for f in order]
    facts = _get(run.summary, "dataset", "findings") or {}
    block: dict[str, Any] = {
        "order": order,
        "strategies": strategies,
        "rule": rule,
        "bootstrap_unit": unit,
        "n_test": n_test,
        "unscorable": dict(unscorable or {}),
        "data": {
            "per_split": facts.get("per_split") or {},
            "totals": facts.get("totals") or {},
            "too_rare_to_score": facts.get("too_rare_to_score") or {},
            "labelling": facts.get("labelling") or {},
            "min_scorable": facts.get("min_scorable"),
        },
        "paired": [
            {"a": p["a"], "b": p["b"], "sentences": paired_finding_sentences(p, order)}
            for p in paired or []
            if p.get("per_class")
        ],
    }
    return block


def paired_finding_sentences(pair: dict[str, Any], order: list[str]) -> list[str]:
    """The per-finding half of a paired comparison in words: which findings differ after the
    Holm adjustment (DeLong on each finding's labelled test images), and which were not tested."""
    a, b = display_name(pair["a"]), display_name(pair["b"])
    per = pair.get("per_class") or {}
    alpha = num(pair.get("alpha")) if fin(pair.get("alpha")) else 0.05
    tested = [f for f in order if f in per and fin(per[f].get("p_holm"))]
    untested = [f for f in order if f in per and f not in tested]
    out: list[str] = []
    if tested:
        sig = [f for f in tested if per[f]["p_holm"] < alpha]
        lead = (
            f"Per finding (DeLong on each finding's labelled test images, p-values Holm-adjusted "
            f"over the {len(tested)} scorable findings): "
        )
        if not sig:
            best = min(tested, key=lambda f: per[f]["p_holm"])
            out.append(
                lead + f"no finding's AUROC differs significantly between {a} and {b} (smallest "
                f"adjusted {format_p_value(per[best]['p_holm'])}, {best})."
            )
        else:
            parts = []
            for f in sig:
                v = per[f]
                ahead, d, lo, hi = (a, v["diff"], v["low"], v["high"])
                if d < 0:
                    ahead, d, lo, hi = b, -d, -v["high"], -v["low"]
                ci = f", 95% CI {lo:+.3f} to {hi:+.3f}" if fin(lo) and fin(hi) else ""
                parts.append(
                    f"{f}: {ahead} ahead by {d:.3f} AUROC{ci}, adjusted "
                    f"{format_p_value(v['p_holm'])}"
                )
            out.append(lead + "; ".join(parts) + ".")
    if untested:
        out.append(
            "Not tested (too few labelled test images to score): " + ", ".join(untested) + "."
        )
    return out


def findings_headline(block: dict[str, Any]) -> list[str]:
    """Sentences for the report's summary: the micro AUROC beside the macro, the scorable rule,
    and the findings it leaves out with their counts."""
    lines = []
    done = [s for s in block["strategies"].values() if fin(s["macro"])]
    if done:
        best = max(done, key=lambda s: s["macro"])
        micro = format_interval(
            best["micro"], best["micro_low"], best["micro_high"], label="95% CI ", sep=" to "
        )
        lines.append(
            f"{best['display']}: the macro AUROC averages {best['n_scorable']} of "
            f"{best['n_findings']} findings; its micro AUROC (every labelled image-finding pair of "
            f"the scored findings pooled) is {micro}; intervals from a bootstrap over "
            f"{block['bootstrap_unit'] or 'image'}s."
        )
    if block.get("rule"):
        lines.append(f"Scored findings: {block['rule']}.")
    if block["unscorable"]:
        lines.append(
            "Not scored, and not in the macro or micro AUROC: " + unscorable_text(block) + "."
        )
    return lines


def unscorable_text(block: dict[str, Any]) -> str:
    """'atelectasis (3 positive / 21 negative test images), ...'."""
    return ", ".join(
        f"{f} ({c.get('n_pos', '?')} positive / {c.get('n_neg', '?')} negative test images)"
        for f, c in block["unscorable"].items()
    )


def counts_text(summary: dict[str, Any]) -> str | None:
    """Images and positives per finding per split, in one line (None without finding counts)."""
    per_split = _get(summary, "dataset", "findings", "per_split") or {}
    if not per_split:
        return None
    ds = summary.get("dataset") or {}
    parts = []
    known = [sp for sp in ("train", "val", "test") if sp in per_split]
    for split in known + [sp for sp in per_split if sp not in known]:
        per = per_split[split] or {}
        n = ds.get(f"n_{split}")
        pos = ", ".join(
            f"{f} {c.get('pos', 0)}/{c.get('neg', 0)}"
            + (f" (+{c['missing']} blank)" if c.get("missing") else "")
            for f, c in per.items()
        )
        parts.append(f"{split}: {n if n is not None else '?'} images; positive/negative {pos}")
    return "; ".join(parts)


# -- figures ----------------------------------------------------------------------------------------
def finding_curves(run: RunData, split: str = "test") -> dict[str, dict[str, tuple[Any, Any]]]:
    """finding -> strategy display name -> (0/1 labels, P(finding)) on the images of ``split``
    labelled for that finding, for every finished strategy."""
    out: dict[str, dict[str, tuple[Any, Any]]] = {f: {} for f in run.classes}
    for name, st in run.strategies.items():
        if st.status != STATUS_DONE or st.predictions is None:
            continue
        for f in run.classes:
            if f not in st.predictions.class_names:
                continue
            y, p = finding_predictions(st.predictions, f).subset(split)
            if len(y):
                out[f][display_name(name)] = (y, p)
    return {f: c for f, c in out.items() if c}


def plot_roc_findings(
    curves: Mapping[str, Mapping[str, tuple[Any, Any]]],
    operating_points: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    *,
    order: list[str] | None = None,
    notes: Mapping[str, str] | None = None,
    columns: int | None = None,
    title: str = "ROC curves per finding on the test set",
) -> Figure:
    """Small multiples: one ROC panel per finding, one line per strategy (same colour in every
    panel), the operating point chosen on validation as a dot.

    Args:
        curves: finding -> strategy -> (0/1 labels, P(finding)) on the images labelled for it.
        operating_points: finding -> strategy -> (false-positive rate, true-positive rate).
        order: panel order (default: ``curves``' order).
        notes: finding -> a short note under its title (e.g. "not scored: 3 positives").
        columns: panels per row (default 3; 4 beyond 9 findings, so 14 fit in 4 rows).
        title: figure title.
    """
    from matplotlib.lines import Line2D
    from sklearn.metrics import roc_auc_score, roc_curve

    from medtl.report._plots import DPI, WIDTH_IN, _color

    names = [f for f in (order or list(curves)) if f in curves]
    strategies = list(dict.fromkeys(s for f in names for s in curves[f]))
    if columns is None:
        columns = PANEL_COLUMNS if len(names) <= 9 else PANEL_COLUMNS + 1
    ncols = max(1, min(columns, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = Figure(figsize=(WIDTH_IN, 0.6 + 2.7 * nrows), dpi=DPI, layout="constrained")
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "Nothing to plot: no test predictions", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for i, f in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        for s, (y, p) in curves[f].items():
            ya, pa = np.asarray(y), np.asarray(p, dtype=np.float64)
            color = _color(strategies.index(s))
            if not (0 < int(ya.sum()) < ya.size):
                ax.plot([], [], color=color, label=f"{s}: n/a")
                continue
            fpr, tpr, _ = roc_curve(ya, pa)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auc = float(roc_auc_score(ya, pa))
            ax.plot(fpr, tpr, lw=1.6, color=color, label=f"{auc:.3f}")
            o = (operating_points or {}).get(f, {}).get(s)
            if o is not None and all(v is not None and math.isfinite(v) for v in o):
                ax.plot(*o, "o", ms=6, mfc=color, mec="black", mew=1, zorder=5)
        n_pos = int(sum(int(np.sum(np.asarray(y))) for y, _ in list(curves[f].values())[:1]))
        n_all = int(sum(np.asarray(y).size for y, _ in list(curves[f].values())[:1]))
        head = f"{f}\n{n_pos} pos / {n_all - n_pos} neg"
        if notes and notes.get(f):
            head += f" · {notes[f]}"
        ax.set_title(head, fontsize=8.5)
        ax.legend(title="AUROC", fontsize=7, title_fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    for r in range(nrows):
        axes[r][0].set_ylabel("Sensitivity", fontsize=8)
    for c in range(ncols):
        axes[nrows - 1][c].set_xlabel("1 − specificity", fontsize=8)
    handles = [Line2D([], [], color=_color(k), lw=2) for k in range(len(strategies))]
    fig.legend(handles, strategies, loc="outside lower center", ncols=min(4, len(strategies)),
               fontsize=8.5)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    return fig


def findings_roc_figure(run: RunData, block: dict[str, Any]) -> Figure:
    """The report's small-multiple ROC figure of a run with several findings per image: dots at
    each finding's validation-chosen operating point, unscored findings marked."""
    curves = finding_curves(run, "test")
    ops: dict[str, dict[str, tuple[float, float]]] = {}
    for s in block["strategies"].values():
        for r in s["rows"]:
            if fin(r["sensitivity"]) and fin(r["specificity"]):
                ops.setdefault(r["finding"], {})[s["display"]] = (
                    1 - r["specificity"],
                    r["sensitivity"],
                )
    notes = {f: "not scored" for f in block["unscorable"]}
    return plot_roc_findings(curves, ops, order=block["order"], notes=notes)
