"""Subgroup results where they are made: a run's strategies (``metrics.json`` and ``summary.json``)
and ``medtl evaluate --by``. Attributes come from :mod:`medtl.subgroups`, numbers from
:mod:`medtl.metrics._subgroups`; this module only joins them to images and run folders.

The task (:mod:`medtl.tasks`) chooses the form: one binary question at the operating threshold
(kind ``binary``: P(positive) = column 1); one-vs-rest per class with a macro AUROC per group
(``one-vs-rest``, calls = the most probable class); or, for several findings per image, the binary
report per finding on its labelled images at that finding's threshold with a macro AUROC per
group (``multilabel``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl.subgroups import attribute_names, group_of, read_attributes_csv
from medtl.tasks import BinaryTask, MultiClassTask, Task, task_for

logger = logging.getLogger(__name__)


def attribute_columns(
    attributes: Sequence[Mapping[str, str] | None], names: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """{attribute: group per image} from per-image attribute dicts (missing -> ``unknown``)."""
    names = list(names) if names is not None else attribute_names(attributes)
    return {n: [group_of(a, n) for a in attributes] for n in names}


def subgroup_block(
    attributes: Sequence[Mapping[str, str] | None] | None,
    labels: np.ndarray,
    proba: np.ndarray,
    *,
    threshold: Any,
    class_names: Sequence[str],
    patient_ids: Sequence[str | None] | None = None,
    alpha: float = 0.05,
    task: Task | None = None,
) -> dict[str, Any] | None:
    """The ``subgroups`` block of ``metrics.json`` for one strategy on one split (None: no
    attributes), in the form the task asks for (module docstring). ``task`` defaults to the
    single-label task of ``class_names`` (with a threshold binary, without one-vs-rest, as before
    the task owner existed); ``threshold`` is a number, or per finding (dict or sequence) for
    several findings."""
    from medtl.metrics import (
        json_safe,
        subgroup_report,
        subgroup_report_multiclass,
        subgroup_report_multilabel,
    )

    if not attributes or not any(attributes):
        return None
    cols = attribute_columns(attributes)
    if task is None:  # older callers: a threshold means one binary question, none one-vs-rest
        kind = BinaryTask.kind if threshold is not None else MultiClassTask.kind
        task = task_for(class_names, kind)
    if task.thresholded and task.positive_class is not None:  # one binary question
        rep = subgroup_report(
            labels, proba[:, 1], cols, threshold=threshold, patient_ids=patient_ids, alpha=alpha
        )
        rep["kind"] = "binary"
        rep["positive_class"] = str(task.positive_class)
    elif task.thresholded:  # several findings: one binary question per finding, its threshold
        thresholds = task.check_threshold(threshold)
        rep = subgroup_report_multilabel(
            labels, proba, cols, task.classes, thresholds=[thresholds[c] for c in task.classes],
            patient_ids=patient_ids, alpha=alpha,
        )  # fmt: skip
        rep["kind"] = "multilabel"
        rep["thresholds"] = thresholds
    else:
        rep = subgroup_report_multiclass(
            labels, proba, cols, list(class_names), patient_ids=patient_ids, alpha=alpha
        )
        rep["kind"] = "one-vs-rest"
    return json_safe(rep)


def test_block(data: Any, p_test: np.ndarray, threshold: float | None) -> dict[str, Any] | None:
    """The subgroup block of one strategy's ``metrics.json``: its test images (``data`` is the
    run's PreparedData) at the threshold chosen on validation."""
    test = data.test
    ds = data.dataset
    return subgroup_block(
        test.attributes,
        test.labels,
        p_test,
        threshold=threshold,
        class_names=ds.classes,
        patient_ids=patient_ids_of(ds.samples, test.uids),
        task=task_for(ds.classes, ds.task_kind),
    )


def write_attributes(run_dir: str | Path, data: Any) -> None:
    """Write the run's ``subgroups.csv`` (uid, split, group per attribute; no identifiers)."""
    from medtl import runs
    from medtl._fileio import atomic_write_text
    from medtl.subgroups import attributes_csv

    parts = [("train", data.train), ("val", data.val), ("test", data.test)]
    names = attribute_names(a for _, im in parts for a in (im.attributes or []))
    atomic_write_text(Path(run_dir) / runs.SUBGROUPS_FILE, attributes_csv(parts, names))


#: numbers of a subgroup row copied into ``medtl evaluate``'s table under the same names
_EVAL_KEYS = (
    "auroc", "auroc_low", "auroc_high", "sensitivity", "specificity", "too_small", "fnr",
    "fnr_low", "fnr_high", "auroc_gap", "auroc_gap_low", "auroc_gap_high", "auroc_gap_p_holm",
    "fnr_gap", "fnr_gap_p_holm",
)  # fmt: skip


def evaluation_rows(
    images: Any,
    proba: np.ndarray,
    threshold: Any,
    class_names: Sequence[str],
    common: Mapping[str, Any],
    samples: Sequence[Any],
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """``medtl evaluate --by`` rows: one per group of each attribute, with the evaluation table's
    columns (binary; several classes: the macro one-vs-rest AUROC; several findings: the macro
    AUROC with the finding's numbers under ``per_finding``) and the gap to the rest."""
    block = subgroup_block(
        images.attributes,
        images.labels,
        proba,
        threshold=threshold,
        class_names=class_names,
        patient_ids=patient_ids_of(samples, images.uids),
        task=task,
    )
    if block is None:
        return []
    out = []
    if block["kind"] == "multilabel":
        for attr, rows in block["macro"].items():
            for r in rows:
                per = {
                    f: _finding_cells(rep, attr, r["group"])
                    for f, rep in block["per_finding"].items()
                }
                out.append({**common, "subgroup": f"{attr}={r['group']}", "n": r["n"],
                            "auroc": r["auroc"], "too_small": r["too_small"],
                            "threshold": block.get("thresholds"), "per_finding": per})  # fmt: skip
        return out
    if block["kind"] != "binary":
        for attr, rows in block["macro"].items():
            for r in rows:
                out.append({**common, "subgroup": f"{attr}={r['group']}", "n": r["n"],
                            "auroc": r["auroc"], "too_small": r["too_small"]})  # fmt: skip
        return out
    for attr, rows in block["attributes"].items():
        for r in rows:
            out.append(
                {
                    **common,
                    "subgroup": f"{attr}={r['group']}",
                    "n": r["n"],
                    "n_pos": r["n_pos"],
                    "prevalence": r["prevalence"],
                    "threshold": threshold,
                    "sens_low": r.get("sensitivity_low"),
                    "sens_high": r.get("sensitivity_high"),
                    "spec_low": r.get("specificity_low"),
                    "spec_high": r.get("specificity_high"),
                    **{k: r.get(k) for k in _EVAL_KEYS},
                }
            )
    return out


def _finding_cells(report: Mapping[str, Any], attr: str, group: str) -> dict[str, Any]:
    """One finding's numbers in one group, under ``evaluation_findings.csv``'s names."""
    r = next((x for x in report["attributes"][attr] if x["group"] == group), None) or {}
    return {
        "n_pos": r.get("n_pos"),
        "n_neg": r.get("n_neg"),
        "auroc": r.get("auroc"),
        "low": r.get("auroc_low"),
        "high": r.get("auroc_high"),
        "scorable": None if not r else not r.get("too_small"),
        "threshold": report.get("threshold"),
        "sensitivity": r.get("sensitivity"),
        "specificity": r.get("specificity"),
        "fnr": r.get("fnr"),
        "auroc_gap": r.get("auroc_gap"),
        "auroc_gap_p_holm": r.get("auroc_gap_p_holm"),
    }


def patient_ids_of(samples: Sequence[Any], uids: Sequence[str]) -> list[str | None]:
    """The (hashed) patient id of each uid, from the samples that hold them (None if unknown)."""
    by_uid = {s.uid: s.patient_id for s in samples}
    return [by_uid.get(u) for u in uids]


def _compact(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = (
        "group", "n", "n_pos", "too_small", "auroc", "auroc_low", "auroc_high", "sensitivity",
        "specificity", "fnr", "fnr_low", "fnr_high", "calibration_in_the_large", "auroc_gap",
        "auroc_gap_low", "auroc_gap_high", "auroc_gap_p_holm", "fnr_gap", "fnr_gap_p_holm",
    )  # fmt: skip
    return [{k: r.get(k) for k in keep if k in r} for r in rows]


def run_subgroups(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """``summary.json["subgroups"]``: per finished strategy the test-set tables (compact, from its
    ``metrics.json``) and the gaps in words; per pair of strategies whether A's AUROC gain over B
    holds in every subgroup (paired DeLong per group, test images). None when the run has no
    ``subgroups.csv``. Computed once when the run finishes; report, app and CLI read it."""
    import json

    from medtl import runs
    from medtl.errors import DatasetError
    from medtl.metrics import gap_sentences, json_safe, subgroup_paired
    from medtl.strategies import strategy_label

    run_dir = Path(run_dir)
    path = run_dir / runs.SUBGROUPS_FILE
    if not path.is_file():
        return None
    attrs = read_attributes_csv(path)
    done = runs.finished_strategies(summary)
    out: dict[str, Any] = {"split": "test", "strategies": {}, "words": {}, "paired": []}
    preds = {}
    for n in done:
        try:
            metrics = json.loads((run_dir / n / runs.METRICS_FILE).read_text(encoding="utf-8"))
            preds[n] = runs.read_predictions(run_dir / n / runs.PREDICTIONS_FILE)
        except (OSError, ValueError, DatasetError) as exc:
            logger.warning("subgroups: %s", exc)
            continue
        block = metrics.get("subgroups")
        if not block:
            continue
        if block.get("kind") == "binary":
            out["strategies"][n] = {
                "kind": "binary",
                "threshold": block.get("threshold"),
                "min_positives": block.get("min_positives"),
                "min_negatives": block.get("min_negatives"),
                "tests": block.get("tests"),
                "overall": _compact([block["overall"]])[0],
                "attributes": {a: _compact(rows) for a, rows in block["attributes"].items()},
            }
            out["words"][n] = gap_sentences(block, strategy_label(n))
        elif block.get("kind") == "multilabel":
            out["strategies"][n] = _multilabel_summary(block)
            out["words"][n] = _finding_words(block, strategy_label(n))
        else:
            out["strategies"][n] = {"kind": block.get("kind"), "macro": block.get("macro")}
    for pair in runs.comparable_pairs(preds):
        a, b, ma, mb = pair.a, pair.b, pair.mask_a, pair.mask_b
        pa, pb = pair.pa, pair.pb
        cols = attribute_columns([attrs.get(u) for u in pair.uids])
        kind = out["strategies"].get(a, {}).get("kind")
        if kind == "multilabel":  # per finding averaged in the macro, each on its labels
            res = _paired_per_finding(
                pa.label[ma], pa.proba[ma], pb.proba[mb], cols, pa.task.classes,
                out["strategies"][a].get("macro_findings") or [],
                strategy_label(a), strategy_label(b),
            )  # fmt: skip
            res.update(a=a, b=b)
            out["paired"].append(json_safe(res))
            continue
        if kind != "binary":
            continue  # one-vs-rest per class would multiply the tests; macro is not paired
        res = subgroup_paired(pa.label[ma], pa.proba[ma][:, 1], pb.proba[mb][:, 1], cols)
        res.update(a=a, b=b, words=paired_words(res, strategy_label(a), strategy_label(b)))
        out["paired"].append(json_safe(res))
    return json_safe(out)


def _multilabel_summary(block: Mapping[str, Any]) -> dict[str, Any]:
    """``summary.json``'s entry of a multi-label strategy: the macro per group and, per finding,
    its threshold and compact tables."""
    return {
        "kind": "multilabel",
        "macro": block.get("macro"),
        "macro_findings": block.get("macro_findings"),
        "thresholds": block.get("thresholds"),
        "per_finding": {
            f: {
                "threshold": r.get("threshold"),
                "overall": _compact([r["overall"]])[0],
                "attributes": {a: _compact(rows) for a, rows in r["attributes"].items()},
            }
            for f, r in (block.get("per_finding") or {}).items()
        },
    }


def _finding_words(block: Mapping[str, Any], label: str) -> list[str]:
    """The largest gap of each finding, in words (the groups too small to judge said once)."""
    from medtl.metrics import gap_sentences

    out, small = [], []
    for f, rep in (block.get("per_finding") or {}).items():
        for line in gap_sentences(rep, f"{label} on {f}", limit=1):
            (small if line.startswith("Too small") else out).append(line)
    if small:
        out.append(
            "Some groups are too small to judge for some findings (see the per-finding tables)."
        )
    return out


def _paired_per_finding(
    y: np.ndarray,
    pa: np.ndarray,
    pb: np.ndarray,
    cols: Mapping[str, list[str]],
    findings: Sequence[str],
    averaged: Sequence[str],
    name_a: str,
    name_b: str,
) -> dict[str, Any]:
    """Whether A's AUROC gain over B holds in every subgroup, per finding ``averaged`` in the
    macro (paired DeLong within each group on the finding's labelled images); ``findings``: the
    columns of ``y`` / ``pa`` / ``pb``."""
    from medtl.metrics import subgroup_paired

    per, words = {}, []
    for f in averaged:
        k = list(findings).index(f)
        res = subgroup_paired(y[:, k], pa[:, k], pb[:, k], cols)
        per[f] = res
        words += [f"{f}: {w}" for w in paired_words(res, name_a, name_b)]
    return {"per_finding": per, "words": words}


def paired_words(res: Mapping[str, Any], name_a: str, name_b: str) -> list[str]:
    """Per attribute, whether A's AUROC gain over B (or loss) holds in every judged subgroup."""
    from medtl.metrics import format_p_value

    diff = (res.get("overall") or {}).get("diff")
    if diff is None or not np.isfinite(diff) or diff == 0:
        return []
    if diff < 0:
        name_a, name_b = name_b, name_a
    out = []
    for attr, rows in (res.get("attributes") or {}).items():
        holds = (res.get("holds") or {}).get(attr)
        judged = [r for r in rows if not r.get("too_small")]
        if holds is None:
            out.append(f"{attr}: no subgroup is large enough to check {name_a}'s gain.")
        elif holds:
            out.append(
                f"{attr}: {name_a}'s AUROC gain over {name_b} has the same direction in "
                + (
                    "the one judged subgroup"
                    if len(judged) == 1
                    else f"all {len(judged)} judged subgroups"
                )
                + (
                    f" ({len(rows) - len(judged)} too small to judge)."
                    if len(rows) > len(judged)
                    else "."
                )
            )
        else:
            sign = 1 if (res["overall"]["diff"] > 0) else -1
            other = [r for r in judged if r.get("diff") is not None and np.sign(r["diff"]) == -sign]
            parts = [
                f"{r['group']} ({sign * r['diff']:+.3f}, Holm {format_p_value(r.get('p_holm'))})"
                for r in other
            ]
            rev = (res.get("reversed") or {}).get(attr) or []
            out.append(
                f"{attr}: {name_a}'s gain over {name_b} does not hold in "
                + ", ".join(parts)
                + (
                    f"; significantly reversed in {', '.join(rev)}."
                    if rev
                    else " (not significant)."
                )
            )
    return out
