"""The numbers a report shows, computed once from a :class:`RunData` (they also go to report.json)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from sklearn.metrics import confusion_matrix

from medtl.errors import MedtlError
from medtl.formatting import finite as fin
from medtl.formatting import num
from medtl.metrics import clinical_report, format_p_value, multiclass_auroc_ci
from medtl.report._html import fpct
from medtl.report._plots import history_summary
from medtl.runs import (
    GAP_OVERSTATES,
    GAP_UNDERSTATES,
    STATUS_DONE,
    RunData,
    StrategyRun,
    gap_flag,
    paired_comparisons,
)

#: a difference below this prints as 0.000: call it a tie rather than "0.000 higher"
TIE = 5e-4

_OP_KEYS = (
    "sensitivity", "specificity", "ppv", "npv", "ppv_at_prevalence", "npv_at_prevalence",
    "lr_pos", "lr_neg", "f1", "accuracy", "tp", "fp", "tn", "fn",
)  # fmt: skip


def display_name(name: str) -> str:
    """Readable strategy name ("fine_tuning" -> "Fine-tuning"); unknown names are kept."""
    from medtl.strategies import strategy_label

    return strategy_label(name)


_RULES = {
    "youden": "Youden's J rule",
    "sensitivity": "target sensitivity",
    "specificity": "target specificity",
    "fixed": "fixed threshold",
}


def rule_text(rule: Any, target: Any = None) -> str:
    """A threshold rule in words ("youden" -> "Youden's J ..."), with its target when it has one."""
    text = _RULES.get(str(rule), str(rule or "unknown rule"))
    return (
        f"{text} {float(target):g}"
        if target is not None and rule in ("sensitivity", "specificity")
        else text
    )


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _recompute_metrics(run: RunData, st: StrategyRun, notes: list[str]) -> dict[str, Any] | None:
    """ClinicalReport dict from predictions.csv when metrics.json is missing (binary only)."""
    pr = st.predictions
    if pr is None or not run.task.thresholded or run.task.per_finding:
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
    out["per_class_auroc"] = None
    out["per_class_ci"] = None
    out["confusion"] = _get(test, "operating_point", "confusion")
    if not run.task.thresholded:
        _multiclass_numbers(run, st, test, out)
    diff = out["val_auroc"] - out["test_auroc"]
    out["val_minus_test"] = diff
    out["gap_flag"] = gap_flag(diff)
    out["val_overstates"] = out["gap_flag"] == GAP_OVERSTATES
    op = _get(test, "operating_point") or {}
    for k in _OP_KEYS:
        out[k] = num(op.get(k))
    for k in ("sensitivity", "specificity", "ppv", "npv"):
        out[f"{k}_low"], out[f"{k}_high"] = num(op.get(f"{k}_low")), num(op.get(f"{k}_high"))
    out.update(
        threshold=num(_get(test, "threshold") if test else _get(st.metrics, "threshold")),
        threshold_rule=_get(test, "threshold_rule") or run.summary.get("threshold_rule"),
        threshold_target=_get(test, "threshold_target"),
        threshold_source=_get(test, "threshold_source"),
        deployment_prevalence=_get(test, "deployment_prevalence") or run.summary.get("prevalence"),
        test_prevalence=num(_get(test, "prevalence")),
        n_test=_get(test, "n"),
        auprc=num(_get(test, "auprc")),
        brier=num(_get(test, "calibration", "brier")),
        ece=num(_get(test, "calibration", "ece")),
        ece_bins=_get(test, "calibration", "n_bins"),
        **{
            f"calibration_{k}": num(_get(test, "calibration", k))
            for k in (
                "slope",
                "slope_low",
                "slope_high",
                "intercept",
                "intercept_low",
                "intercept_high",
            )
        },
        calibration_note=_get(test, "calibration", "note"),
        decision_prevalence=num(_get(test, "decision_curve", "prevalence")),
        train_seconds=num(info.get("train_seconds")),
        epochs_run=info.get("epochs_run"),
        images_per_s=num(info.get("images_per_s")),
    )
    _learning_numbers(st, out)
    out["report_warnings"] = list(_get(test, "warnings") or [])
    return out


def _multiclass_numbers(run: RunData, st: StrategyRun, test: Any, out: dict[str, Any]) -> None:
    """Fill ``out`` with the per-class AUROCs, macro AUROC and confusion matrix of a task
    without a threshold (from metrics.json, else recomputed from the predictions)."""
    pr = st.predictions
    mc = _get(test, "multiclass")
    yt, pt = pr.subset("test") if pr is not None else (None, None)
    if mc is None and yt is not None and yt.size and pt.ndim == 2:
        seed = int(_get(run.config, "train", "seed") or 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mc = multiclass_auroc_ci(yt, pt, pr.class_names, seed=seed)
    if isinstance(mc, dict):
        per = mc.get("per_class") or {}
        # metrics.json written without class names keys the classes "0", "1", ...
        keys = {c: c if c in per else str(i) for i, c in enumerate(run.classes)}
        out["per_class_auroc"] = {c: num(_get(per, k, "auroc")) for c, k in keys.items()}
        out["per_class_ci"] = {
            c: [num(_get(per, k, "low")), num(_get(per, k, "high"))] for c, k in keys.items()
        }
        if fin(mc.get("macro")):
            out["test_auroc"] = num(mc["macro"])
            out["test_auroc_low"] = num(mc.get("macro_low"))
            out["test_auroc_high"] = num(mc.get("macro_high"))
    if yt is not None and yt.size and pt.ndim == 2:
        k = pt.shape[1]
        out["confusion"] = confusion_matrix(yt, pt.argmax(axis=1), labels=list(range(k))).tolist()


def _learning_numbers(st: StrategyRun, out: dict[str, Any]) -> None:
    """Fill ``out`` with the learning-curve signature and whether the strategy has epochs."""
    info = st.info
    # Learning-curve signature: from the history itself (the same numbers the legend shows), else
    # from summary.json. A strategy without epochs (feature extraction) has no start, slope or best
    # epoch, only the regularisation setting it kept.
    hs = history_summary(st.history or [])
    epochless = bool(hs.get("epochless")) or (not st.history and info.get("epochs_run") == 0)
    learn: dict[str, Any] = {"epochless": epochless, "setting": hs.get("setting") or ""}
    for k in ("start", "slope", "asymptote", "best_epoch"):
        v = hs.get(k) if st.history else info.get(k)
        learn[k] = None if epochless and k != "asymptote" else v
    if epochless:
        # the kept model's validation AUROC, as in the results table (not the best row's)
        learn["asymptote"] = out["val_auroc"] if fin(out["val_auroc"]) else hs.get("asymptote")
        out["epochs_run"] = None
    out["epochless"] = epochless
    out["learning"] = learn


def paired_numbers(run: RunData, strat: dict[str, dict[str, Any]], notes: list[str]) -> list[dict]:
    """Paired comparisons: from summary.json, else computed from the predictions the same way the
    run computes them (:func:`medtl.runs.paired_comparisons`)."""
    raw = [p for p in (run.summary.get("paired") or []) if isinstance(p, dict)]
    if not raw:
        shallow = {
            "strategies": {
                n: {
                    "status": s["status"],
                    "threshold": s["threshold"] if fin(s["threshold"]) else None,
                }
                for n, s in strat.items()
                if s["status"] == STATUS_DONE and fin(s["test_auroc"])
            }
        }
        seed = int(_get(run.config, "train", "seed") or 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = paired_comparisons(run.run_dir, shallow, seed=seed)
        if raw:
            notes.append("summary.json has no paired comparisons; computed from predictions.csv.")
    rows = []
    for p in raw:
        a, b = str(p.get("a", "A")), str(p.get("b", "B"))
        multiclass = isinstance(p.get("per_class"), dict)
        row = {
            "a": a,
            "b": b,
            "multiclass": multiclass,
            "per_finding": run.task.per_finding,
            "auc_a": num(p.get("auc_a")),
            "auc_b": num(p.get("auc_b")),
            "diff": num(p.get("diff")),
            "delong_low": num(_get(p, "delong", "low")),
            "delong_high": num(_get(p, "delong", "high")),
            "delong_p": num(_get(p, "delong", "p_value")),
            "boot_low": num(_get(p, "bootstrap", "low")),
            "boot_high": num(_get(p, "bootstrap", "high")),
            "boot_p": num(_get(p, "bootstrap", "p_value")),
            # what the paired bootstrap resampled ("patient" or "image"; older runs: unknown)
            "boot_unit": _get(p, "bootstrap", "unit"),
            "mcnemar_p": num(_get(p, "mcnemar", "p_value")),
            "alpha": num(p.get("alpha")) if fin(p.get("alpha")) else 0.05,
            "per_class": {
                str(c): {
                    k: num(v.get(k))
                    for k in ("auc_a", "auc_b", "diff", "low", "high", "p_value", "p_holm")
                }
                for c, v in (p.get("per_class") or {}).items()
                if isinstance(v, dict)
            },
        }
        # the main test: DeLong for two classes, the paired bootstrap of the macro for more
        key = "boot" if multiclass else "delong"
        row.update(
            test="paired bootstrap" if multiclass else "DeLong",
            metric="macro AUROC" if multiclass else "AUROC",
            low=row[f"{key}_low"], high=row[f"{key}_high"], p=row[f"{key}_p"],
        )  # fmt: skip
        row["reading"] = paired_reading(row)
        rows.append(row)
    return rows


def paired_reading(r: dict[str, Any]) -> str:
    """One plain-language sentence about a paired comparison row."""
    a, b = display_name(r["a"]), display_name(r["b"])
    diff, lo, hi, p = r["diff"], r["low"], r["high"], r["p"]
    metric, test = r["metric"], r["test"]
    if not math.isfinite(diff):
        return f"{a} and {b} could not be compared ({metric} undefined on this test set)."
    sig = math.isfinite(p) and p < r["alpha"]
    mc = r["mcnemar_p"]
    errors = "For the most probable class" if r["multiclass"] else "At their operating points"
    mcn = (
        f" {errors} McNemar {format_p_value(mc)}"
        + (": they get different images wrong." if math.isfinite(mc) and mc < r["alpha"] else ".")
    ) if math.isfinite(mc) else ""  # fmt: skip
    if abs(diff) < TIE:
        return (
            f"{a} and {b} tie on {metric} ({r['auc_a']:.3f}); {test} {format_p_value(p)}: on this "
            f"test set the two cannot be told apart.{mcn}"
        )
    if diff < 0:
        a, b, diff, lo, hi = b, a, -diff, -hi, -lo
    ci = f" (95% CI {lo:+.3f} to {hi:+.3f})" if math.isfinite(lo) and math.isfinite(hi) else ""
    verdict = (
        "a statistically significant difference" if sig
        else "not statistically significant: on this test set the two cannot be told apart"
    )  # fmt: skip
    return f"{a} is ahead of {b} by {diff:.3f} {metric}{ci}; {test} {format_p_value(p)}, {verdict}.{mcn}"


def _test_name(pair: dict[str, Any]) -> str:
    return pair["test"] if pair["test"].startswith("paired") else f"paired {pair['test']}"


def headline(run: RunData, strat: dict[str, dict], paired: list[dict]) -> list[str]:
    """The plain-words summary at the top of the report."""
    lines: list[str] = []
    done = sorted(
        (n for n, s in strat.items() if s["status"] != "failed" and fin(s["test_auroc"])),
        key=lambda n: -strat[n]["test_auroc"],
    )
    metric, ci_kind = f"test {run.task.metric_name}", run.task.ci_name
    if not done:
        lines.append(f"No strategy produced a {metric}; see the errors and notes below.")
    else:
        best = strat[done[0]]
        ci = ""
        if fin(best["test_auroc_low"]) and fin(best["test_auroc_high"]):
            ci = f" ({ci_kind} {best['test_auroc_low']:.3f} to {best['test_auroc_high']:.3f})"
        n = f" on {best['n_test']} test images" if best.get("n_test") else ""
        if len(done) == 1:
            lines.append(
                f"{best['display']} reached a {metric} of {best['test_auroc']:.3f}{ci}{n}."
            )
        else:
            second = strat[done[1]]
            gap = best["test_auroc"] - second["test_auroc"]
            if gap < TIE:
                lines.append(
                    f"{best['display']} and {second['display']} tie on {metric}: "
                    f"{best['test_auroc']:.3f}{ci}{n}."
                )
            else:
                lines.append(
                    f"{best['display']} had the highest {metric}: {best['test_auroc']:.3f}{ci}{n}, "
                    f"{gap:.3f} above {second['display']} ({second['test_auroc']:.3f})."
                )
            pair = next((p for p in paired if {p["a"], p["b"]} == {done[0], done[1]}), None)
            if pair is None or not fin(pair["p"]):
                lines.append(
                    "No paired test is available for these two, so whether the gap is more than "
                    "chance is not known."
                )
            elif pair["p"] < pair["alpha"]:
                lines.append(
                    f"The {_test_name(pair)} test finds the difference statistically "
                    f"significant ({format_p_value(pair['p'])}): it is unlikely to be chance on "
                    "this test set."
                )
            elif gap >= TIE:
                lines.append(
                    f"The {_test_name(pair)} test does not find the difference statistically "
                    f"significant ({format_p_value(pair['p'])}): on this test set the two cannot "
                    "be told apart."
                )
        if run.task.thresholded and fin(best["sensitivity"]):
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
    """The validation-vs-test flag of one strategy in words ("" when the two agree)."""
    gap = s["val_minus_test"]
    both = f"(validation {s['val_auroc']:.3f}, test {s['test_auroc']:.3f})"
    if s.get("gap_flag") == GAP_OVERSTATES:
        return f"validation overstates this model by {gap:.2f} AUROC on the test data {both}"
    if s.get("gap_flag") == GAP_UNDERSTATES:
        return (
            f"test AUROC is {-gap:.2f} above validation {both}: the validation split is small or "
            "unlike the test set, so the epoch and threshold chosen on it are uncertain"
        )
    return ""


def data_numbers(run: RunData) -> dict[str, Any]:
    """Dataset facts for the data section (from summary.json and skipped.csv)."""
    ds = run.summary.get("dataset") or {}
    skipped = run.skipped or []
    return {
        "source": ds.get("source"),
        # summaries no longer record the root (paths may name people); older ones still may
        "root": ds.get("root") or None,
        "classes": run.classes,
        "counts": ds.get("counts") or {},
        "n_skipped": ds.get("n_skipped", len(skipped) if run.skipped is not None else None),
        "patient_ids": ds.get("patient_ids"),
        "skipped_total": len(skipped) if run.skipped is not None else None,
        "skipped_first": [{"path": p, "reason": r} for p, r in skipped[:50]],
    }
