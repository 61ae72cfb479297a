"""Subgroup results where they are made: a run's strategies (``metrics.json`` and ``summary.json``)
and ``medtl evaluate --by``. Attributes come from :mod:`medtl.subgroups`, numbers from
:mod:`medtl.metrics._subgroups`; this module only joins them to images and run folders.

The question asked is one binary question per call when an operating threshold is known (labels
0/1, P(positive) = column 1); without a threshold (several classes) it is the one-vs-rest / macro
form. (The task-kind owner will choose the form once it exists.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl.subgroups import attribute_names, group_of, read_attributes_csv

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
    threshold: float | None,
    class_names: Sequence[str],
    patient_ids: Sequence[str | None] | None = None,
    alpha: float = 0.05,
) -> dict[str, Any] | None:
    """The ``subgroups`` block of ``metrics.json`` for one strategy on one split (None: no
    attributes). With a threshold: :func:`~medtl.metrics.subgroup_report` of P(class 1); without:
    :func:`~medtl.metrics.subgroup_report_multiclass`."""
    from medtl.metrics import json_safe, subgroup_report, subgroup_report_multiclass

    if not attributes or not any(attributes):
        return None
    cols = attribute_columns(attributes)
    if threshold is not None:
        rep = subgroup_report(
            labels, proba[:, 1], cols, threshold=threshold, patient_ids=patient_ids, alpha=alpha
        )
        rep["kind"] = "binary"
        rep["positive_class"] = str(class_names[1])
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
    return subgroup_block(
        test.attributes,
        test.labels,
        p_test,
        threshold=threshold,
        class_names=data.dataset.classes,
        patient_ids=patient_ids_of(data.dataset.samples, test.uids),
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
    threshold: float | None,
    class_names: Sequence[str],
    common: Mapping[str, Any],
    samples: Sequence[Any],
) -> list[dict[str, Any]]:
    """``medtl evaluate --by`` rows: one per group of each attribute, with the evaluation table's
    columns (binary; several classes: the macro one-vs-rest AUROC) and the gap to the rest."""
    block = subgroup_block(
        images.attributes,
        images.labels,
        proba,
        threshold=threshold,
        class_names=class_names,
        patient_ids=patient_ids_of(samples, images.uids),
    )
    if block is None:
        return []
    out = []
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
    done = [n for n, r in summary["strategies"].items() if r.get("status") == runs.STATUS_DONE]
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
        else:
            out["strategies"][n] = {"kind": block.get("kind"), "macro": block.get("macro")}
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            if a not in preds or b not in preds:
                continue
            pa, pb = preds[a], preds[b]
            ma, mb = pa.split == "test", pb.split == "test"
            uids = [u for u, k in zip(pa.uid, ma) if k]
            if uids != [u for u, k in zip(pb.uid, mb) if k]:
                continue
            cols = attribute_columns([attrs.get(u) for u in uids])
            if out["strategies"].get(a, {}).get("kind") != "binary":
                continue  # one-vs-rest per class would multiply the tests; macro is not paired
            res = subgroup_paired(pa.label[ma], pa.proba[ma][:, 1], pb.proba[mb][:, 1], cols)
            res.update(a=a, b=b, words=paired_words(res, strategy_label(a), strategy_label(b)))
            out["paired"].append(json_safe(res))
    return json_safe(out)


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
