"""The numbers a report shows, computed once from a :class:`RunData` (they also go to report.json)."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from medtl.errors import MedtlError
from medtl.metrics import clinical_report, compare_paired, multiclass_auroc
from medtl.report._html import fpct
from medtl.report._plots import history_summary
from medtl.report._run import RunData, StrategyRun
from medtl.runs import OVERSTATE_MARGIN

_OP_KEYS = (
    "sensitivity", "specificity", "ppv", "npv", "ppv_at_prevalence", "npv_at_prevalence",
    "lr_pos", "lr_neg", "f1", "accuracy", "tp", "fp", "tn", "fn",
)  # fmt: skip


def display_name(name: str) -> str:
    """Readable strategy name ("fine_tuning" -> "Fine-tuning"); unknown names are kept."""
    from medtl.strategies import strategy_label

    return strategy_label(name)


def num(v: Any) -> float:
    """``v`` as a float; None, strings and other non-numbers become NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def fin(v: Any) -> bool:
    return math.isfinite(num(v))


def fmt_p(p: Any) -> str:
    p = num(p)
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _recompute_metrics(run: RunData, st: StrategyRun, notes: list[str]) -> dict[str, Any] | None:
    """ClinicalReport dict from predictions.csv when metrics.json is missing (binary only)."""
    pr = st.predictions
    if pr is None or not run.binary:
        return None
    yt, pt = pr.subset("test")
    yv, pv = pr.subset("val")
    if yt.size == 0:
        return None
    cfg_metrics = (run.config or {}).get("metrics") or {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = clinical_report(
                yt, pt,
                y_val=yv if yv.size else None, p_val=pv if yv.size else None,
                rule=run.summary.get("threshold_rule") or cfg_metrics.get("threshold_rule") or "youden",
                target=cfg_metrics.get("target"),
                prevalence=run.summary.get("prevalence"),
            )  # fmt: skip
    except (MedtlError, ValueError) as exc:
        notes.append(f"{st.name}: metrics could not be recomputed from predictions.csv ({exc}).")
        return None
    notes.append(f"{st.name}: metrics.json missing; metrics recomputed from predictions.csv.")
    return rep.to_dict()


def strategy_numbers(run: RunData, st: StrategyRun, notes: list[str]) -> dict[str, Any]:
    """Every number of one strategy's results table (NaN/None where unknown)."""
    info = st.info
    test = _get(st.metrics, "test")
    if test is None and st.status != "failed":
        test = _recompute_metrics(run, st, notes)
    out: dict[str, Any] = {
        "display": display_name(st.name),
        "status": st.status,
        "error": st.error,
        "test_auroc": num(_get(test, "auroc", "auroc")),
        "test_auroc_low": num(_get(test, "auroc", "low")),
        "test_auroc_high": num(_get(test, "auroc", "high")),
        "val_auroc": num(info.get("val_auroc")),
    }
    ci = info.get("test_auroc_ci")
    if not fin(out["test_auroc"]):
        out["test_auroc"] = num(info.get("test_auroc"))
    if not fin(out["test_auroc_low"]) and isinstance(ci, list | tuple) and len(ci) == 2:
        out["test_auroc_low"], out["test_auroc_high"] = num(ci[0]), num(ci[1])
    if not fin(out["val_auroc"]):
        out["val_auroc"] = num(_get(st.metrics, "val", "auroc", "auroc"))
    pr = st.predictions
    out["per_class_auroc"] = None
    out["confusion"] = _get(test, "operating_point", "confusion")
    if pr is not None and not run.binary:
        yt, pt = pr.subset("test")
        if yt.size and pt.ndim == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mc = multiclass_auroc(yt, pt, class_names=pr.class_names)
            out["per_class_auroc"] = mc["per_class"]
            if not fin(out["test_auroc"]):
                out["test_auroc"] = mc["macro"]
            k = pt.shape[1]
            out["confusion"] = confusion_matrix(
                yt, pt.argmax(axis=1), labels=list(range(k))
            ).tolist()
    diff = out["val_auroc"] - out["test_auroc"]
    out["val_minus_test"] = diff
    out["val_overstates"] = bool(math.isfinite(diff) and diff > OVERSTATE_MARGIN)
    op = _get(test, "operating_point") or {}
    for k in _OP_KEYS:
        out[k] = num(op.get(k))
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        out[f"{k}_low"], out[f"{k}_high"] = num(op.get(f"{k}_low")), num(op.get(f"{k}_high"))
    out.update(
        threshold=num(_get(test, "threshold") if test else _get(st.metrics, "threshold")),
        threshold_rule=_get(test, "threshold_rule") or run.summary.get("threshold_rule"),
        threshold_source=_get(test, "threshold_source"),
        deployment_prevalence=_get(test, "deployment_prevalence") or run.summary.get("prevalence"),
        test_prevalence=num(_get(test, "prevalence")),
        n_test=_get(test, "n"),
        auprc=num(_get(test, "auprc")),
        brier=num(_get(test, "calibration", "brier")),
        ece=num(_get(test, "calibration", "ece")),
        train_seconds=num(info.get("train_seconds")),
        epochs_run=info.get("epochs_run"),
        images_per_s=num(info.get("images_per_s")),
    )
    # Learning-curve signature: from summary.json, else from the history itself.
    hs = history_summary(st.history or [])
    learn = {}
    for k in ("start", "slope", "asymptote", "best_epoch"):
        v = info.get(k)
        learn[k] = v if v is not None else hs.get(k)
    out["learning"] = learn
    out["report_warnings"] = list(_get(test, "warnings") or [])
    return out


def _align(a: StrategyRun, b: StrategyRun) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Test labels and both models' scores on the images they share, matched by uid."""
    pa, pb = a.predictions, b.predictions
    if pa is None or pb is None:
        return None
    ya, sa = pa.subset("test")
    yb, sb = pb.subset("test")
    ua = [u for u, s in zip(pa.uid, pa.split) if s == "test"]
    ub = {u: i for i, (u) in enumerate(u for u, s in zip(pb.uid, pb.split) if s == "test")}
    if len(ua) != len(ub) or any(u not in ub for u in ua):
        return None
    idx = np.array([ub[u] for u in ua], dtype=np.int64)
    if not np.array_equal(ya, yb[idx]):
        return None
    return ya, sa, sb[idx]


def paired_numbers(run: RunData, strat: dict[str, dict[str, Any]], notes: list[str]) -> list[dict]:
    """Paired comparisons: from summary.json, else computed from the predictions (binary only)."""
    raw = [p for p in (run.summary.get("paired") or []) if isinstance(p, dict)]
    if not raw and run.binary:
        done = [n for n, s in strat.items() if s["status"] == "done" and fin(s["test_auroc"])]
        for a, b in itertools.combinations(done, 2):
            al = _align(run.strategies[a], run.strategies[b])
            if al is None:
                notes.append(f"{a} and {b} were not scored on the same test images; not compared.")
                continue
            ta, tb = num(strat[a]["threshold"]), num(strat[b]["threshold"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = compare_paired(
                    *al, threshold_a=ta if math.isfinite(ta) else 0.5,
                    threshold_b=tb if math.isfinite(tb) else 0.5, n_boot=1000, seed=0,
                )  # fmt: skip
            raw.append({"a": a, "b": b, **d})
        if raw:
            notes.append("summary.json has no paired comparisons; computed from predictions.csv.")
    rows = []
    for p in raw:
        a, b = str(p.get("a", "A")), str(p.get("b", "B"))
        row = {
            "a": a,
            "b": b,
            "auc_a": num(p.get("auc_a")),
            "auc_b": num(p.get("auc_b")),
            "diff": num(p.get("diff")),
            "delong_low": num(_get(p, "delong", "low")),
            "delong_high": num(_get(p, "delong", "high")),
            "delong_p": num(_get(p, "delong", "p_value")),
            "boot_low": num(_get(p, "bootstrap", "low")),
            "boot_high": num(_get(p, "bootstrap", "high")),
            "mcnemar_p": num(_get(p, "mcnemar", "p_value")),
            "alpha": num(p.get("alpha")) if fin(p.get("alpha")) else 0.05,
        }
        row["reading"] = paired_reading(row)
        rows.append(row)
    return rows


def paired_reading(r: dict[str, Any]) -> str:
    """One plain-language sentence about a paired comparison row."""
    a, b = display_name(r["a"]), display_name(r["b"])
    diff, lo, hi, p = r["diff"], r["delong_low"], r["delong_high"], r["delong_p"]
    if not math.isfinite(diff):
        return f"{a} and {b} could not be compared (AUROC undefined on this test set)."
    if diff < 0:
        a, b, diff, lo, hi = b, a, -diff, -hi, -lo
    ci = f" (95% CI {lo:+.3f} to {hi:+.3f})" if math.isfinite(lo) and math.isfinite(hi) else ""
    sig = math.isfinite(p) and p < r["alpha"]
    verdict = (
        "a statistically significant difference" if sig
        else "not statistically significant: on this test set the two cannot be told apart"
    )  # fmt: skip
    mc = r["mcnemar_p"]
    mcn = (
        f" At their operating points McNemar {fmt_p(mc)}"
        + (": they get different images wrong." if math.isfinite(mc) and mc < r["alpha"] else ".")
    ) if math.isfinite(mc) else ""  # fmt: skip
    return f"{a} is ahead of {b} by {diff:.3f} AUROC{ci}; DeLong {fmt_p(p)}, {verdict}.{mcn}"


def headline(run: RunData, strat: dict[str, dict], paired: list[dict]) -> list[str]:
    """The plain-words summary at the top of the report."""
    lines: list[str] = []
    done = sorted(
        (n for n, s in strat.items() if s["status"] != "failed" and fin(s["test_auroc"])),
        key=lambda n: -strat[n]["test_auroc"],
    )
    metric = "test AUROC" if run.binary else "test AUROC (macro one-vs-rest)"
    if not done:
        lines.append(f"No strategy produced a {metric}; see the errors and notes below.")
    else:
        best = strat[done[0]]
        ci = ""
        if fin(best["test_auroc_low"]) and fin(best["test_auroc_high"]):
            ci = f" (95% CI {best['test_auroc_low']:.3f} to {best['test_auroc_high']:.3f})"
        n = f" on {best['n_test']} test images" if best.get("n_test") else ""
        if len(done) == 1:
            lines.append(
                f"{best['display']} reached a {metric} of {best['test_auroc']:.3f}{ci}{n}."
            )
        else:
            second = strat[done[1]]
            gap = best["test_auroc"] - second["test_auroc"]
            lines.append(
                f"{best['display']} had the best {metric}: {best['test_auroc']:.3f}{ci}{n}, "
                f"{gap:.3f} higher than {second['display']} ({second['test_auroc']:.3f})."
            )
            pair = next((p for p in paired if {p["a"], p["b"]} == {done[0], done[1]}), None)
            if pair is None or not fin(pair["delong_p"]):
                lines.append(
                    "No paired test is available for these two, so whether the gap is more than "
                    "chance is not known."
                )
            elif pair["delong_p"] < pair["alpha"]:
                lines.append(
                    f"The paired DeLong test finds the difference statistically significant "
                    f"({fmt_p(pair['delong_p'])}): it is unlikely to be chance on this test set."
                )
            else:
                lines.append(
                    f"The paired DeLong test does not find the difference statistically significant "
                    f"({fmt_p(pair['delong_p'])}): on this test set the two cannot be told apart."
                )
        if run.binary and fin(best["sensitivity"]):
            lines.append(
                f"At the threshold chosen on validation, {best['display']} finds "
                f"{fpct(best['sensitivity'])} of positive images (sensitivity) and correctly clears "
                f"{fpct(best['specificity'])} of negative images (specificity)."
            )
    for s in strat.values():
        if s["status"] == "failed":
            lines.append(f"{s['display']} failed: {s['error'] or 'no error message recorded'}.")
    return lines


def overstate_text(s: dict[str, Any]) -> str:
    return (
        f"validation overstates this model by {s['val_minus_test']:.2f} AUROC on the test data "
        f"(validation {s['val_auroc']:.3f}, test {s['test_auroc']:.3f})"
    )


def data_numbers(run: RunData) -> dict[str, Any]:
    """Dataset facts for the data section (from summary.json and skipped.csv)."""
    ds = run.summary.get("dataset") or {}
    skipped = run.skipped or []
    return {
        "source": ds.get("source"),
        "root": ds.get("root"),
        "classes": run.classes,
        "counts": ds.get("counts") or {},
        "n_skipped": ds.get("n_skipped", len(skipped) if run.skipped is not None else None),
        "patient_ids": ds.get("patient_ids"),
        "skipped_total": len(skipped) if run.skipped is not None else None,
        "skipped_first": [{"path": p, "reason": r} for p, r in skipped[:50]],
    }
