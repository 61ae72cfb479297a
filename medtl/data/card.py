"""Data cards: the facts of a loaded dataset as a dict and as Markdown, with fields left for a person.

Facts come from the Dataset (counts, splits, skipped files) and from reading a sample of its files with
``medtl.io.read_image`` (sizes, formats, modalities, photometric interpretations), whose metadata carries
no patient identifiers.

Example:
    >>> ds = medtl.load_dataset("chest_xray/")
    >>> Path("data_card.md").write_text(data_card(ds, title="Paediatric CXR"))
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

from medtl.data._prepare import is_near_grey
from medtl.data._sources import source_info
from medtl.data._types import Dataset, Sample

__all__ = ["data_card", "summarise_dataset"]

logger = logging.getLogger(__name__)

PERSON_FIELDS = ("Source", "Licence", "Label definition", "Known biases", "Intended use")
_MAX_SKIPPED_LISTED = 50


def _stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def _sample_evenly(samples: list[Sample], k: int) -> list[Sample]:
    if len(samples) <= k:
        return samples
    idx = np.linspace(0, len(samples) - 1, k).round().astype(int)
    return [samples[i] for i in sorted(set(idx.tolist()))]


def _image_facts(dataset: Dataset, max_files: int) -> dict[str, Any]:
    heights: list[int] = []
    widths: list[int] = []
    formats: Counter[str] = Counter()
    modalities: Counter[str] = Counter()
    photometric: Counter[str] = Counter()
    bits: Counter[str] = Counter()
    notes: Counter[str] = Counter()  # reader notes: which frame was used, mostly padding, ...
    colour = 0
    unread = 0
    chosen = _sample_evenly(list(dataset.samples), max_files)
    if source_info(dataset.source).images_in_file:
        from medtl.io import read_npz

        by_file: dict[str, dict] = {}
        for s in chosen:
            arrays = by_file.setdefault(s.path, read_npz(s.path))
            for images, _ in arrays.values():
                if len(images):
                    heights.append(int(images.shape[1]))
                    widths.append(int(images.shape[2]))
                    colour += int(images.ndim == 4 and not is_near_grey(images[0]))
                    break
            formats["npz"] += 1
            bits["8"] += 1
    else:
        from medtl.io import read_image

        for s in chosen:
            try:
                image, meta = read_image(s.path)
            except Exception as exc:  # counted only: the message may carry the path
                logger.debug("data card: cannot read image %s (%s)", s.uid, type(exc).__name__)
                unread += 1
                continue
            heights.append(int(meta.get("rows", image.shape[0])))
            widths.append(int(meta.get("columns", image.shape[1])))
            formats[str(meta.get("format", "unknown"))] += 1
            if meta.get("modality"):
                modalities[str(meta["modality"])] += 1
            if meta.get("photometric_interpretation"):
                photometric[str(meta["photometric_interpretation"])] += 1
            b = meta.get("bits_stored") or meta.get("bits")
            if b:
                bits[str(b)] += 1
            for note in meta.get("notes") or []:
                notes[str(note).split(":")[0].split(";")[0]] += 1  # the kind, not the numbers
            colour += int(image.ndim == 3 and not is_near_grey(image))
    return {
        "sampled_files": len(chosen),
        "unreadable_in_sample": unread,
        "height": _stats(heights),
        "width": _stats(widths),
        "colour_in_sample": colour,
        "formats": dict(sorted(formats.items())),
        "modalities": dict(sorted(modalities.items())),
        "photometric_interpretations": dict(sorted(photometric.items())),
        "bits_stored": dict(sorted(bits.items())),
        "reading_notes": dict(notes.most_common()),
    }


def summarise_dataset(dataset: Dataset, *, max_files: int = 64) -> dict[str, Any]:
    """The facts of a data card as a plain dict (JSON-ready; no patient identifiers).

    Files are named by uid (keyed hash), never by path, and the dataset folder's name is not
    copied (both may carry names or record numbers); ``fingerprint`` identifies the data instead.

    Args:
        dataset: a loaded dataset.
        max_files: how many files (spread over the dataset) to read for sizes and formats.
    """
    totals = Counter(s.label for s in dataset.samples)
    class_totals = {name: int(totals.get(i, 0)) for i, name in enumerate(dataset.classes)}
    findings = multilabel_facts(dataset)
    if findings is not None:  # several findings per image: positives per finding
        class_totals = {f: c["pos"] for f, c in findings["totals"].items()}
    nonzero = [v for v in class_totals.values() if v > 0]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else float("nan")
    if len(nonzero) < len(class_totals):
        imbalance = float("inf")
    pids = {s.patient_id for s in dataset.samples if s.patient_id}
    with_pid = sum(1 for s in dataset.samples if s.patient_id)
    from medtl.data._splits import duplicate_groups

    dups: dict[int, set[str | None]] = {}
    for s, d in zip(dataset.samples, duplicate_groups(dataset.samples)):
        if d is not None:
            dups.setdefault(d, set()).add(s.split)
    from medtl.data._ids import dataset_fingerprint

    return {
        "fingerprint": dataset_fingerprint(dataset),
        "source": dataset.source,
        **({"task": dataset.task_kind} if dataset.task_kind else {}),
        **({"findings": findings} if findings is not None else {}),
        "n_images": len(dataset.samples),
        "n_classes": len(dataset.classes),
        "classes": list(dataset.classes),
        "class_totals": class_totals,
        "counts": dataset.counts(),
        "imbalance_ratio": float(imbalance),
        "majority_class": max(class_totals, key=class_totals.get) if class_totals else None,
        "minority_class": min(class_totals, key=class_totals.get) if class_totals else None,
        "patient_ids": bool(pids),
        "n_patients": len(pids) if pids else None,
        "images_with_patient_id": with_pid,
        "duplicate_groups": len(dups),
        "duplicate_groups_across_splits": sum(1 for v in dups.values() if len(v) > 1),
        "images": _image_facts(dataset, max_files),
        "n_skipped": len(dataset.skipped),
        "skipped": [{"uid": k.uid, "reason": k.reason} for k in dataset.skipped],
        "n_ignored": len(dataset.ignored),
        "ignored": [{"uid": k.uid, "reason": k.reason} for k in dataset.ignored],
        "subgroups": _composition(dataset),
    }


def _composition(dataset: Dataset) -> dict[str, dict[str, dict[str, int]]] | None:
    """Images per split and group of each subgroup attribute (who is represented), or None."""
    from medtl.subgroups import attribute_names, group_of

    names = attribute_names(s.attributes for s in dataset.samples)
    if not names:
        return None
    out: dict[str, dict[str, dict[str, int]]] = {}
    for n in names:
        table: dict[str, dict[str, int]] = {}
        for s in dataset.samples:
            row = table.setdefault(group_of(s.attributes, n), {})
            sp = s.split or "unassigned"
            row[sp] = row.get(sp, 0) + 1
        out[n] = dict(sorted(table.items(), key=lambda kv: (kv[0] == "unknown", kv[0])))
    return out


def _composition_lines(comp: dict[str, dict[str, dict[str, int]]], splits: list[str]) -> list[str]:
    """Markdown tables: per attribute, images per group and split (with the split's share)."""
    lines = ["", "## Composition by subgroup", ""]
    totals = {sp: 0 for sp in splits}
    first = next(iter(comp.values()))
    for row in first.values():
        for sp in splits:
            totals[sp] += row.get(sp, 0)
    for name, table in comp.items():
        lines += [f"### {name}", "", "| group | " + " | ".join(splits) + " |",
                  "|---|" + "---|" * len(splits)]  # fmt: skip
        for group, row in table.items():
            cells = [
                f"{row.get(sp, 0)} ({row.get(sp, 0) / totals[sp]:.0%})" if totals[sp] else "0"
                for sp in splits
            ]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Group names only (ages in bands, never an exact age above 89); `unknown`: no value in "
        "the manifest or the DICOM header."
    )
    return lines


def multilabel_facts(dataset: Dataset) -> dict[str, Any] | None:
    """Per-finding facts of a multi-label dataset (None for single-label data): positives,
    negatives and unlabelled images per split and in all, how the labels were read (finding and
    ignored columns, uncertain policy, No Finding use, excluded findings) and the findings too
    rare to score on the test split (fewer than ``MIN_SCORABLE`` positives or negatives)."""
    from medtl.data._multilabel import finding_counts, targets_of
    from medtl.metrics import MIN_SCORABLE

    if dataset.task_kind != "multilabel":
        return None
    per_split = dataset.finding_counts()
    totals = finding_counts(targets_of(dataset.samples, len(dataset.classes)), dataset.classes)
    test = per_split.get("test", {})
    rare = {f: c for f, c in test.items() if c["pos"] < MIN_SCORABLE or c["neg"] < MIN_SCORABLE}
    return {
        "per_split": per_split,
        "totals": totals,
        "labelling": dict(dataset.labelling or {}),
        "too_rare_to_score": rare,
        "min_scorable": MIN_SCORABLE,
    }


def _findings_section(f: dict[str, Any]) -> list[str]:
    """The data card's multi-label section (see :func:`multilabel_facts`)."""
    ml = f["findings"]
    lab = ml["labelling"]
    splits = [sp for sp in ("train", "val", "test") if sp in ml["per_split"]]
    lines = [
        "## Findings (several per image)",
        "",
        "Blank labels are *not labelled* (never negative) and count for nothing. "
        f"Uncertain labels (-1): policy `{lab.get('uncertain', 'ignore')}`"
        + (
            f" ({sum(lab['uncertain_counts'].values())} found)"
            if lab.get("uncertain_counts")
            else ""
        )
        + ".",
        "",
        f"- finding columns: {', '.join(lab.get('findings') or f['classes'])}",
        f"- columns ignored (not findings): {', '.join(lab.get('ignored_columns') or []) or 'none'}",
    ]
    if lab.get("no_finding_column"):
        lines.append(
            f"- `No Finding` column: the all-negative marker, not a finding; "
            f"{lab.get('no_finding_rows', 0)} row(s) marked it, {lab.get('no_finding_filled', 0)} "
            "blank label(s) became 0, "
            f"{lab.get('no_finding_conflicts', 0)} row(s) also had a positive finding (kept)"
        )
    for name, c in (lab.get("excluded") or {}).items():
        lines.append(
            f"- **excluded** {name}: {c['pos']} positive / {c['neg']} negative in training "
            "(cannot be learned)"
        )
    lines += [
        "",
        "| finding | " + " | ".join(f"{sp} pos / neg / blank" for sp in splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for name in f["classes"]:
        cells = []
        for sp in splits:
            c = ml["per_split"][sp][name]
            cells.append(f"{c['pos']} / {c['neg']} / {c['missing']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rare = ml["too_rare_to_score"]
    lines += [
        "",
        f"Too rare to score on test (fewer than {ml['min_scorable']} positives or negatives): "
        + (", ".join(f"{n} ({c['pos']} pos / {c['neg']} neg)" for n, c in rare.items()) or "none")
        + ".",
        "",
    ]
    return lines


def _fmt_counter(d: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in d.items()) if d else "none found"


def _fmt_stats(st: dict[str, float] | None) -> str:
    if st is None:
        return "unknown"
    return f"{st['min']} / {st['median']:g} / {st['max']}"


def data_card(dataset: Dataset, *, title: str | None = None, max_files: int = 64) -> str:
    """A Markdown data card: counts, image facts, skipped files and fields for a person to fill.

    Args:
        dataset: a loaded dataset.
        title: card title (default: "Data card" and the dataset's fingerprint; the folder's name
            is not used, it may carry identifiers).
        max_files: how many files to read for sizes and formats.
    """
    f = summarise_dataset(dataset, max_files=max_files)
    im = f["images"]
    title = title or f"Data card ({f['fingerprint']})"
    splits = [sp for sp in ("train", "val", "test", "unassigned") if sp in f["counts"]]
    lines = [
        f"# {title}",
        "",
        "*Generated by medtl from the files; the last section must be completed by a person.*",
        "",
        "## Summary",
        "",
        "| fact | value |",
        "|---|---|",
        f"| dataset fingerprint | `{f['fingerprint']}` |",
        f"| layout | {f['source']} |",
        f"| images used | {f['n_images']} |",
        f"| classes | {', '.join(f['classes'])} |",
        f"| imbalance ratio (largest / smallest class) | {f['imbalance_ratio']:.2f} |",
        "| patient ids | "
        + (
            f"yes: {f['n_patients']} patients, {f['images_with_patient_id']} of {f['n_images']} "
            "images (splits are patient-level)"
            if f["patient_ids"]
            else "no (splits are image-level; images of one patient may be in several splits)"
        )
        + " |",
        f"| byte-identical copies | {f['duplicate_groups']} group(s)"
        + (
            f", {f['duplicate_groups_across_splits']} of them across splits (remove those copies)"
            if f["duplicate_groups_across_splits"]
            else (" (each kept inside one split)" if f["duplicate_groups"] else "")
        )
        + " |",
        f"| files skipped | {f['n_skipped']} |",
        f"| files ignored (hidden, documentation) | {f['n_ignored']} |",
        "",
        "## Images per split and class",
        "",
        "| split | " + " | ".join(f["classes"]) + " | total |",
        "|---|" + "---|" * (len(f["classes"]) + 1),
    ]
    for sp in splits:
        row = f["counts"][sp]
        lines.append(
            f"| {sp} | "
            + " | ".join(str(row[c]) for c in f["classes"])
            + f" | {sum(row.values())} |"
        )
    lines.append(
        "| all | "
        + " | ".join(str(f["class_totals"][c]) for c in f["classes"])
        + f" | {f['n_images']} |"
    )
    if f["subgroups"]:
        lines += _composition_lines(f["subgroups"], splits)
    if "findings" in f:
        lines += ["", "*(several findings per image: positives per finding)*", ""]
        lines += _findings_section(f)
    lines += [
        "",
        f"## Image properties (from {im['sampled_files']} sampled files)",
        "",
        f"- height min / median / max: {_fmt_stats(im['height'])} px",
        f"- width min / median / max: {_fmt_stats(im['width'])} px",
        f"- formats: {_fmt_counter(im['formats'])}",
        f"- modalities (DICOM): {_fmt_counter(im['modalities'])}",
        f"- photometric interpretations (DICOM): {_fmt_counter(im['photometric_interpretations'])}",
        f"- bits stored: {_fmt_counter(im['bits_stored'])}",
        f"- genuinely colour images in sample: {im['colour_in_sample']} (grey content stored as RGB "
        "counts as grey)",
        "- flagged while reading (used; e.g. one frame of a multi-frame file, mostly padding): "
        + _fmt_counter(im.get("reading_notes") or {}),
        "",
        "## Skipped files",
        "",
    ]
    if f["skipped"]:
        lines += ["| file (uid) | reason |", "|---|---|"]
        for k in f["skipped"][:_MAX_SKIPPED_LISTED]:
            reason = k["reason"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{k['uid']}` | {reason} |")
        if f["n_skipped"] > _MAX_SKIPPED_LISTED:
            lines.append(f"| … | and {f['n_skipped'] - _MAX_SKIPPED_LISTED} more |")
    else:
        lines.append("None: every file listed was readable.")
    lines += ["", "## To be completed by a person", ""]
    lines += [f"- **{name}:** _to be completed_" for name in PERSON_FIELDS]
    return "\n".join(lines) + "\n"
