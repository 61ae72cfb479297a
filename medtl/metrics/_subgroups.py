"""Performance by subgroup: who does the model fail?

For ONE binary question at a time (labels 0/1, P(positive), an operating threshold), per group of
an attribute (see :mod:`medtl.subgroups`): n images and patients, prevalence, AUROC with its DeLong
CI, sensitivity, specificity and the false-negative rate (FNR, the under-diagnosis of
Seyyed-Kalantari et al., Nature Medicine 2021) with Wilson CIs, and calibration in the large
(observed prevalence minus mean predicted probability, normal CI). Each group is compared with the
rest of the images (all other groups of the attribute together):

* AUROC gap (group - rest): the groups hold different images, so the two AUROCs are independent and
  the gap's variance is the sum of the two DeLong variances (the unpaired DeLong comparison); a
  two-sided z test. (Images of one patient in two groups, e.g. a PA and an AP view, make this
  approximate.)
* FNR gap (group - rest): Newcombe's hybrid score interval from the two Wilson intervals, and
  Fisher's exact test on the 2x2 table of missed / found positives.
* Multiplicity: with k groups per attribute there are k tests per metric; the p-values are
  Holm-adjusted across the judged groups of each attribute (``*_p_holm``), which controls the
  family-wise error at ``alpha`` per attribute and metric.

A group with fewer than ``min_positives`` positives or ``min_negatives`` negatives is marked
``too_small`` (its numbers are still given, with their wide intervals) and is not tested (nor is a
group whose rest is that small): it is shown as "too small to judge", never dropped. Images without a value form the group ``unknown``.

:func:`subgroup_paired` asks whether strategy A's AUROC gain over B holds in every group (paired
DeLong within each group, :func:`~medtl.metrics.delong_test`). :func:`subgroup_report_multiclass`
is the one-vs-rest form (per class, plus a macro AUROC per group); :func:`subgroup_report_multilabel`
the form of several findings per image (per finding on its labelled images at its threshold, plus
a macro AUROC per group).

Grouping is plain numpy: Fairlearn's ``MetricFrame`` is not installed here and would add a
dependency only to split arrays by group; the numbers (DeLong, Wilson) are medtl's own.

Example:
    >>> rep = subgroup_report(y, p, {"sex": sexes}, threshold=0.4)
    >>> [(r["group"], r["auroc"]) for r in rep["attributes"]["sex"]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from medtl.formatting import format_p_value
from medtl.metrics._auroc import auroc_ci, delong_test
from medtl.metrics._paired import holm
from medtl.metrics._threshold import wilson_ci
from medtl.metrics._validate import MetricInputError, check_alpha

_NAN = float("nan")
#: fewest positives and negatives a group needs to be judged (tested, and named in the words)
MIN_POSITIVES = MIN_NEGATIVES = 10
UNKNOWN = "unknown"
TESTS = {
    "auroc_gap": "unpaired DeLong z test (group vs the rest: independent images; variances added)",
    "fnr_gap": "Fisher's exact test; Newcombe hybrid score CI from the two Wilson intervals",
    "multiplicity": "Holm-adjusted p-values across the judged groups of each attribute, per metric",
    "paired": "paired DeLong test within each group (same images, two models)",
}


def _groups(values: Sequence[Any], n: int, name: str) -> np.ndarray:
    g = np.asarray([UNKNOWN if v in (None, "") else str(v) for v in values], dtype=object)
    if g.shape != (n,):
        raise MetricInputError(
            f"The subgroup attribute {name!r} must give one value per image ({n}); got {g.shape[0]}."
        )
    return g


def _labelled(y: Any, *arrays: Any) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(0/1 labels, arrays, kept mask): images whose label is blank (NaN or -1) are unlabelled for
    this question and left out, never counted as negatives."""
    ya = np.asarray(y, dtype=np.float64)
    if ya.ndim != 1:
        raise MetricInputError(f"'y' must be 1-D (one label per image); got shape {ya.shape}.")
    keep = np.isin(ya, (0.0, 1.0))
    bad = ~keep & np.isfinite(ya) & (ya != -1)
    if bad.any():
        raise MetricInputError(
            f"'y' must hold 0/1 labels (NaN or -1 for unlabelled); got {np.unique(ya[bad])[:5]}."
        )
    outs = [np.asarray(a)[keep] if a is not None else None for a in arrays]
    return ya[keep].astype(np.int64), outs, keep


def _ci_mean(d: np.ndarray, alpha: float) -> tuple[float, float, float]:
    if d.size == 0:
        return _NAN, _NAN, _NAN
    m = float(d.mean())
    if d.size < 2:
        return m, _NAN, _NAN
    half = float(stats.norm.ppf(1 - alpha / 2) * d.std(ddof=1) / math.sqrt(d.size))
    return m, m - half, m + half


def _rate(k: int, n: int, alpha: float) -> tuple[float, float, float]:
    lo, hi = wilson_ci(k, n, alpha)
    return (k / n if n else _NAN), lo, hi


def _row(
    y: np.ndarray,
    p: np.ndarray,
    pred: np.ndarray | None,
    pids: np.ndarray | None,
    alpha: float,
    min_pos: int,
    min_neg: int,
) -> dict[str, Any]:
    """The numbers of one group (or the rest, or everyone)."""
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    if pids is None:
        n_pat = None
    else:
        known = {q for q in pids if q not in (None, "")}
        n_pat = len(known) + sum(1 for q in pids if q in (None, ""))
    r: dict[str, Any] = {
        "n": n,
        "n_patients": n_pat,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "prevalence": n_pos / n if n else _NAN,
        "too_small": n_pos < min_pos or n_neg < min_neg,
    }
    with warnings.catch_warnings():  # one-class or tiny groups: NaN, said by too_small
        warnings.simplefilter("ignore", RuntimeWarning)
        a = (
            auroc_ci(y, p, alpha=alpha)
            if n_pos and n_neg
            else {"auroc": _NAN, "low": _NAN, "high": _NAN, "se": _NAN}
        )
    r.update(auroc=a["auroc"], auroc_low=a["low"], auroc_high=a["high"], auroc_se=a["se"])
    if pred is not None:
        tp = int(np.sum(pred & (y == 1)))
        tn = int(np.sum(~pred & (y == 0)))
        fn, fp = n_pos - tp, n_neg - tn
        for key, k, m in (
            ("sensitivity", tp, n_pos),
            ("specificity", tn, n_neg),
            ("fnr", fn, n_pos),
        ):
            r[key], r[f"{key}_low"], r[f"{key}_high"] = _rate(k, m, alpha)
        r.update(tp=tp, fn=fn, tn=tn, fp=fp)
    citl = _ci_mean(y - p, alpha) if n else (_NAN, _NAN, _NAN)
    r.update(
        mean_predicted=float(p.mean()) if n else _NAN,
        calibration_in_the_large=citl[0],
        citl_low=citl[1],
        citl_high=citl[2],
    )
    return r


def _auroc_gap(g: dict[str, Any], rest: dict[str, Any], alpha: float) -> dict[str, float]:
    diff = g["auroc"] - rest["auroc"]
    se = math.sqrt(g["auroc_se"] ** 2 + rest["auroc_se"] ** 2)
    if not (math.isfinite(diff) and math.isfinite(se)):
        return {
            "auroc_gap": diff,
            "auroc_gap_low": _NAN,
            "auroc_gap_high": _NAN,
            "auroc_gap_p": _NAN,
        }
    z = stats.norm.ppf(1 - alpha / 2)
    p = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return {
        "auroc_gap": diff,
        "auroc_gap_low": max(-1.0, diff - z * se),
        "auroc_gap_high": min(1.0, diff + z * se),
        "auroc_gap_p": p,
    }


def _fnr_gap(g: dict[str, Any], rest: dict[str, Any]) -> dict[str, float]:
    if not (g.get("n_pos") and rest.get("n_pos")) or "fnr" not in g:
        return {"fnr_gap": _NAN, "fnr_gap_low": _NAN, "fnr_gap_high": _NAN, "fnr_gap_p": _NAN}
    p1, l1, u1 = g["fnr"], g["fnr_low"], g["fnr_high"]
    p2, l2, u2 = rest["fnr"], rest["fnr_low"], rest["fnr_high"]
    d = p1 - p2
    table = [[g["fn"], g["tp"]], [rest["fn"], rest["tp"]]]
    return {
        "fnr_gap": d,
        "fnr_gap_low": d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        "fnr_gap_high": d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
        "fnr_gap_p": float(stats.fisher_exact(table).pvalue),
    }


def subgroup_table(
    y: Any,
    p: Any,
    groups: Sequence[Any],
    *,
    threshold: float | None,
    predicted: Any = None,
    patient_ids: Sequence[Any] | None = None,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
    name: str = "attribute",
) -> list[dict[str, Any]]:
    """One row per group of one attribute, each with its gaps to the rest (see the module).

    Args:
        y: 0/1 labels (NaN or -1: unlabelled for this question, left out).
        p: P(positive) per image.
        groups: the group of each image (None or "" -> ``unknown``).
        threshold: operating threshold (positive when ``p >= threshold``); None with ``predicted``
            None leaves out the threshold metrics.
        predicted: the calls (bool per image) instead of a threshold, e.g. argmax == k.
        patient_ids: de-identified patient id per image, to count patients.
        alpha: 1 - confidence level.
        min_positives: fewest positives of a judged group.
        min_negatives: fewest negatives of a judged group.
        name: the attribute's name, for messages.

    Returns:
        Rows sorted by group name; each has ``group`` and the numbers of the module docstring.
    """
    alpha = check_alpha(alpha)
    pa = np.asarray(p, dtype=np.float64)
    gs = _groups(groups, pa.shape[0], name)
    if predicted is None and threshold is not None:
        predicted = pa >= float(threshold)
    ids = None if patient_ids is None else np.asarray(list(patient_ids), dtype=object)
    ya, (pa, gs, pred, ids), _ = _labelled(y, pa, gs, predicted, ids)
    pred = None if pred is None else pred.astype(bool)
    rows = []
    for g in sorted(set(gs.tolist()), key=lambda v: (v == UNKNOWN, v)):
        m = gs == g

        def part(mask: np.ndarray) -> dict[str, Any]:
            return _row(
                ya[mask],
                pa[mask],
                None if pred is None else pred[mask],
                None if ids is None else ids[mask],
                alpha,
                min_positives,
                min_negatives,
            )

        row = {"group": g, **part(m)}
        rest = part(~m) if (~m).any() else None
        if not row["too_small"] and rest is not None and not rest["too_small"]:
            row.update(
                _auroc_gap(row, rest, alpha), **_fnr_gap(row, rest), rest_auroc=rest["auroc"]
            )
            if "fnr" in rest:
                row["rest_fnr"] = rest["fnr"]
        rows.append(row)
    for key in ("auroc_gap_p", "fnr_gap_p"):
        adj = holm([r.get(key, _NAN) for r in rows])
        for r, v in zip(rows, adj):
            if key in r:
                r[f"{key}_holm"] = v
    return rows


def subgroup_report(
    y: Any,
    p: Any,
    attributes: Mapping[str, Sequence[Any]],
    *,
    threshold: float | None,
    predicted: Any = None,
    patient_ids: Sequence[Any] | None = None,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
) -> dict[str, Any]:
    """Subgroup tables for every attribute of one binary question, plus the overall row.

    Args:
        attributes: attribute name -> the group of each image (same order as ``y``).
        (the others as :func:`subgroup_table`)

    Returns:
        dict(threshold, alpha, min_positives, min_negatives, tests (what each test is),
        overall (the row of every image), attributes {name: rows}).
    """
    kw = {
        "threshold": threshold,
        "predicted": predicted,
        "patient_ids": patient_ids,
        "alpha": alpha,
        "min_positives": min_positives,
        "min_negatives": min_negatives,
    }
    everyone = [""] * len(np.asarray(p))
    overall = subgroup_table(y, p, everyone, **kw, name="all")[0]
    overall["group"] = "all"
    return {
        "threshold": None if threshold is None else float(threshold),
        "alpha": float(alpha),
        "min_positives": int(min_positives),
        "min_negatives": int(min_negatives),
        "tests": {k: v for k, v in TESTS.items() if k != "paired"},
        "overall": overall,
        "attributes": {a: subgroup_table(y, p, g, **kw, name=a) for a, g in attributes.items()},
    }


def subgroup_report_multiclass(
    y: Any,
    proba: Any,
    attributes: Mapping[str, Sequence[Any]],
    class_names: Sequence[str],
    *,
    patient_ids: Sequence[Any] | None = None,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
) -> dict[str, Any]:
    """One-vs-rest subgroup reports per class (the call is the most probable class) and a macro
    AUROC per group (unweighted mean of the per-class AUROCs defined in that group; no interval:
    the per-class DeLong intervals are given per class).

    Returns:
        dict(per_class {name: subgroup_report}, macro {attribute: [{group, n, auroc, too_small}]}).
    """
    ya = np.asarray(y)
    pr = np.asarray(proba, dtype=np.float64)
    if pr.ndim != 2 or pr.shape[1] != len(class_names) or ya.shape != (pr.shape[0],):
        raise MetricInputError(
            f"'proba' must be (n, {len(class_names)}) with one row per label; got {pr.shape} for "
            f"{ya.shape[0]} labels."
        )
    calls = pr.argmax(axis=1)
    per_class = {
        c: subgroup_report(
            (ya == k).astype(np.int64),
            pr[:, k],
            attributes,
            threshold=None,
            predicted=calls == k,
            patient_ids=patient_ids,
            alpha=alpha,
            min_positives=min_positives,
            min_negatives=min_negatives,
        )
        for k, c in enumerate(class_names)
    }
    macro: dict[str, list[dict[str, Any]]] = {}
    for a in attributes:
        tables = [per_class[c]["attributes"][a] for c in class_names]
        rows = []
        for i, first in enumerate(tables[0]):
            aucs = np.array([t[i]["auroc"] for t in tables], dtype=np.float64)
            rows.append(
                {
                    "group": first["group"],
                    "n": first["n"],
                    "auroc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else _NAN,
                    "too_small": any(t[i]["too_small"] for t in tables),
                }
            )
        macro[a] = rows
    return {"per_class": per_class, "macro": macro, "alpha": float(alpha)}


def subgroup_report_multilabel(
    y: Any,
    proba: Any,
    attributes: Mapping[str, Sequence[Any]],
    finding_names: Sequence[str],
    *,
    thresholds: Sequence[float],
    patient_ids: Sequence[Any] | None = None,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
) -> dict[str, Any]:
    """Several findings per image: :func:`subgroup_report` per finding on the images labelled for
    it (NaN labels left out, never negative), at that finding's operating threshold, and a macro
    AUROC per group.

    The macro of a group is the unweighted mean of its AUROCs over the findings judged on every
    image (not ``too_small`` overall), so that each group averages the same findings as the
    overall row; it is ``too_small`` when any of them is too small in that group. No interval:
    the per-finding DeLong intervals are given per finding.

    Args:
        y: (n, K) labels 1 / 0 / NaN (not labelled).
        proba: (n, K) P(finding present).
        thresholds: one operating threshold per finding.
        (the others as :func:`subgroup_report`)

    Returns:
        dict(per_finding {name: subgroup_report}, macro {attribute: [{group, n, auroc,
        n_findings, too_small}]}, macro_findings [the averaged findings], alpha).
    """
    ya = np.asarray(y, dtype=np.float64)
    pr = np.asarray(proba, dtype=np.float64)
    k = len(finding_names)
    if pr.ndim != 2 or pr.shape != ya.shape or pr.shape[1] != k or len(thresholds) != k:
        raise MetricInputError(
            f"'y' and 'proba' must both be (n, {k}) with one threshold per finding; got "
            f"{ya.shape}, {pr.shape} and {len(thresholds)} threshold(s)."
        )
    kw = {
        "patient_ids": patient_ids,
        "alpha": alpha,
        "min_positives": min_positives,
        "min_negatives": min_negatives,
    }
    per = {
        f: subgroup_report(ya[:, j], pr[:, j], attributes, threshold=float(thresholds[j]), **kw)
        for j, f in enumerate(finding_names)
    }
    judged = [f for f in finding_names if not per[f]["overall"]["too_small"]]
    macro: dict[str, list[dict[str, Any]]] = {}
    for a in attributes:
        by_group: dict[str, dict[str, Any]] = {}
        for f in finding_names:
            for r in per[f]["attributes"][a]:
                row = by_group.setdefault(r["group"], {"aucs": [], "small": False, "n": 0})
                row["n"] = max(row["n"], r["n"])  # images labelled for some finding
                if f in judged:
                    row["aucs"].append(r["auroc"])
                    row["small"] |= bool(r["too_small"])
        rows = []
        for g in sorted(by_group, key=lambda v: (v == UNKNOWN, v)):
            aucs = np.asarray(by_group[g]["aucs"], dtype=np.float64)
            rows.append(
                {
                    "group": g,
                    "n": by_group[g]["n"],
                    "auroc": float(np.mean(aucs))
                    if aucs.size and np.isfinite(aucs).all()
                    else _NAN,
                    "n_findings": int(aucs.size),
                    "too_small": by_group[g]["small"] or not judged,
                }
            )
        macro[a] = rows
    return {"per_finding": per, "macro": macro, "macro_findings": judged, "alpha": float(alpha)}


def subgroup_paired(
    y: Any,
    p_a: Any,
    p_b: Any,
    attributes: Mapping[str, Sequence[Any]],
    *,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
    min_negatives: int = MIN_NEGATIVES,
) -> dict[str, Any]:
    """Does A's AUROC gain over B hold in every group? Paired DeLong within each group.

    Returns:
        dict(overall {diff, low, high, p_value}, attributes {name: [{group, n, n_pos, too_small,
        diff, low, high, p_value, p_holm}]}, holds {name: True / False / None}: True when the
        difference has the overall sign in every judged group (None: no group judged),
        reversed {name: [groups whose difference has the other sign with Holm p < alpha]}).
    """
    alpha = check_alpha(alpha)
    pa = np.asarray(p_a, dtype=np.float64)
    ya, (pa, pb), keep = _labelled(y, pa, np.asarray(p_b, dtype=np.float64))

    def test(m: np.ndarray) -> dict[str, float]:
        d = delong_test(ya[m], pa[m], pb[m], alpha=alpha)
        return {k: d[k] for k in ("diff", "low", "high", "p_value")}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = test(np.ones(ya.size, dtype=bool))
        sign = np.sign(overall["diff"]) if math.isfinite(overall["diff"]) else 0.0
        out: dict[str, Any] = {"overall": overall, "attributes": {}, "holds": {}, "reversed": {}}
        for name, values in attributes.items():
            gs = _groups(values, keep.size, name)[keep]
            rows = []
            for g in sorted(set(gs.tolist()), key=lambda v: (v == UNKNOWN, v)):
                m = gs == g
                n_pos = int(ya[m].sum())
                small = n_pos < min_positives or int(m.sum()) - n_pos < min_negatives
                row = {"group": g, "n": int(m.sum()), "n_pos": n_pos, "too_small": small}
                row.update(
                    test(m)
                    if n_pos and n_pos < m.sum()
                    else dict.fromkeys(("diff", "low", "high", "p_value"), _NAN)
                )
                rows.append(row)
            judged = [r for r in rows if not r["too_small"]]
            adj = holm([r["p_value"] for r in judged])
            for r, v in zip(judged, adj):
                r["p_holm"] = v
            out["attributes"][name] = rows
            out["holds"][name] = (
                None
                if not judged or sign == 0
                else all(np.sign(r["diff"]) == sign for r in judged if math.isfinite(r["diff"]))
            )
            out["reversed"][name] = [
                r["group"]
                for r in judged
                if sign and np.sign(r["diff"]) == -sign and r.get("p_holm", 1.0) < alpha
            ]
    return out


def gap_sentences(
    report: Mapping[str, Any], label: str = "The model", *, limit: int = 3
) -> list[str]:
    """The largest AUROC and FNR gaps of a :func:`subgroup_report`, in plain words.

    Judged groups where the model is worse than for the rest (lower AUROC, more missed
    positives); those that survive the Holm adjustment first, then by size; then the groups too
    small to judge.
    """
    alpha = float(report.get("alpha") or 0.05)
    found = []
    small = []
    for attr, rows in (report.get("attributes") or {}).items():
        for r in rows:
            if r.get("too_small"):
                small.append(f"{attr}={r['group']}")
                continue
            for key, what, worse in (
                ("auroc_gap", "AUROC", -1),
                ("fnr_gap", "false-negative rate", 1),
            ):
                gap = r.get(key)
                # the groups the model fails: a two-group attribute would otherwise say it twice
                p_holm = r.get(f"{key}_p_holm")
                if gap is None or not math.isfinite(gap) or np.sign(gap) != worse:
                    continue
                if p_holm is None or not math.isfinite(p_holm):
                    continue
                rank = p_holm if p_holm is not None and math.isfinite(p_holm) else 1.0
                found.append(((rank, -abs(gap)), attr, r, key, what, worse))
    found.sort(key=lambda t: t[0])  # the most convincing gaps first, then the largest
    out = []
    for _, attr, r, key, what, _worse in found[:limit]:
        gap = r[key]
        p_holm = r.get(f"{key}_p_holm")
        signif = p_holm is not None and math.isfinite(p_holm) and p_holm < alpha
        lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
        ci = (
            f"{100 * (1 - alpha):g}% CI {lo:+.3f} to {hi:+.3f}, "
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
            else ""
        )
        out.append(
            f"{label} is worse for {attr} = {r['group']} than for the rest: {what} "
            f"{gap:+.3f} ({ci}Holm-adjusted {format_p_value(p_holm)}), "
            + ("a gap unlikely to be chance." if signif else "not distinguishable from chance.")
        )
    if small:
        out.append(
            f"Too small to judge (fewer than {report.get('min_positives')} positives or "
            f"{report.get('min_negatives')} negatives): {', '.join(small)}."
        )
    return out
