"""Make missing train/val/test splits (stratified, patient-grouped), and save/load them as JSON.

Splitting uses scikit-learn: ``StratifiedShuffleSplit`` (via ``train_test_split``) when no patient ids
are known, ``StratifiedGroupKFold`` when they are (so no patient ends up in two splits). Byte-identical
files (the same image saved twice, common in public datasets: Kermany has 30 such groups) are grouped
too, so a carve never puts one copy in training and the other in validation or test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl._fileio import atomic_write_json
from medtl.data._sources import relative_posix
from medtl.data._types import SPLITS, Dataset, Sample, SkippedFile
from medtl.errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS_FORMAT = "medtl-splits"
SPLITS_VERSION = 1


_PREFIX_BYTES = 1 << 16


def _digest(path: str, limit: int | None) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit)
    except OSError:
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


def duplicate_groups(samples: Sequence[Sample]) -> list[int | None]:
    """For each sample, a group number shared with its byte-identical files (None when unique).

    Cheap on large datasets: only files of equal size are read, first their first 64 KiB, and whole
    only when those match too (DICOM files differ in their header's UIDs, so they stop at the prefix).
    Images inside a container (``.npz``) and unreadable files are never grouped.
    """
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        if s.index is not None:
            continue
        try:
            by_size.setdefault(os.stat(s.path).st_size, []).append(i)
        except OSError:
            continue
    out: list[int | None] = [None] * len(samples)
    n_groups = 0
    for size, same_size in by_size.items():
        if len(same_size) < 2:
            continue
        candidates = [same_size]
        for limit in (_PREFIX_BYTES, None):
            refined = []
            for idx in candidates:
                by_digest: dict[bytes, list[int]] = {}
                for i in idx:
                    d = _digest(samples[i].path, limit)
                    if d is not None:
                        by_digest.setdefault(d, []).append(i)
                refined.extend(g for g in by_digest.values() if len(g) > 1)
            candidates = refined
            if not candidates or size <= _PREFIX_BYTES:
                break  # files no longer than the prefix were read whole already
        for idx in candidates:
            for i in idx:
                out[i] = n_groups
            n_groups += 1
    return out


def _group_keys(samples: Sequence[Sample], dups: Sequence[int | None]) -> list[str] | None:
    """One key per sample joining patients and duplicate copies (union-find); None if nothing groups."""
    if not any(s.patient_id for s in samples) and all(d is None for d in dups):
        return None
    parent = {i: i for i in range(len(samples))}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, Any], int] = {}
    for i, (s, d) in enumerate(zip(samples, dups)):
        for key in (("p", s.patient_id), ("d", d)):
            if key[1] is None or key[1] == "":
                continue
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return [f"g{find(i)}" for i in range(len(samples))]


def _carve(
    samples: Sequence[Sample],
    fraction: float,
    seed: int,
    dups: Sequence[int | None] | None = None,
) -> tuple[list[int], list[int]]:
    """Split positions of ``samples`` into (keep, carved) with about ``fraction`` carved.

    Stratified by label; grouped by patient when samples have patient ids (samples without one count
    as their own patient) and by duplicate group (``dups``, from :func:`duplicate_groups`).
    """
    n = len(samples)
    if fraction <= 0 or n == 0:
        return list(range(n)), []
    labels = np.array([s.label for s in samples])
    positions = np.arange(n)
    keys = _group_keys(samples, dups if dups is not None else [None] * n)
    if keys is not None:
        return _carve_grouped(positions, labels, np.array(keys), fraction, seed)
    from sklearn.model_selection import train_test_split

    n_carve = max(1, round(n * fraction))
    if n_carve >= n:
        raise DatasetError(
            f"Cannot carve {fraction:.0%} of {n} images into a new split and keep any for training. "
            "Add images or lower val_fraction/test_fraction."
        )
    try:
        keep, carved = train_test_split(
            positions, test_size=n_carve, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:  # a class with a single image, or fewer carved images than classes
        warnings.warn(
            f"Could not stratify the split by class ({exc}); splitting at random instead. "
            "Add images to the smallest class for a stratified split.",
            stacklevel=3,
        )
        keep, carved = train_test_split(positions, test_size=n_carve, random_state=seed)
    return sorted(keep.tolist()), sorted(carved.tolist())


def _carve_grouped(
    positions: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise DatasetError(
            f"All {len(positions)} images belong to one patient, so no patient-level split is "
            "possible. Check the manifest's patient_id column."
        )
    # k folds, one of them carved: a fraction of about 1/k (StratifiedGroupKFold has no test_size).
    k = int(min(max(2, round(1.0 / fraction)), n_groups))
    if len(set(labels.tolist())) > 1:
        with warnings.catch_warnings():
            # "The least populated class in y has only n members": expected on small data.
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            keep, carved = next(iter(cv.split(positions, labels, groups)))
    else:
        cv2 = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, carved = next(iter(cv2.split(positions, labels, groups)))
    return sorted(positions[keep].tolist()), sorted(positions[carved].tolist())


def assign_splits(
    samples: Sequence[Sample],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> list[Sample]:
    """Fill in missing splits.

    * No sample has a split: ``test_fraction`` of all images go to test and ``val_fraction`` of all to
      val (both stratified, grouped by patient when known); the rest is train.
    * Some splits exist (e.g. ``train/`` and ``test/`` folders): the official ones are kept untouched,
      a missing ``test`` is carved from train (``test_fraction`` of train) and a missing ``val`` is
      carved from train (``val_fraction`` of train). Samples without a split join train.

    Returns:
        New samples (same order) with ``split`` set.
    """
    samples = list(samples)
    given = {s.split for s in samples if s.split}
    splits = [s.split or "train" for s in samples]
    needs_carve = not given or (
        ("test" not in given and test_fraction > 0) or ("val" not in given and val_fraction > 0)
    )
    dups = duplicate_groups(samples) if needs_carve or len(given) > 1 else [None] * len(samples)

    def carve(pool: list[int], fraction: float, carve_seed: int) -> tuple[list[int], list[int]]:
        return _carve([samples[i] for i in pool], fraction, carve_seed, [dups[i] for i in pool])

    if not given:
        # fractions relative to the whole set: carve test, then val from the rest
        pool, test = carve(list(range(len(samples))), test_fraction, seed)
        for i in test:
            splits[i] = "test"
        rel_val = val_fraction / max(1e-9, 1.0 - test_fraction) if test else val_fraction
        _, val_pos = carve(pool, rel_val, seed + 1)
        for j in val_pos:
            splits[pool[j]] = "val"
    else:
        if "test" not in given and test_fraction > 0:
            pool = [i for i, sp in enumerate(splits) if sp == "train"]
            _, carved = carve(pool, test_fraction, seed)
            for j in carved:
                splits[pool[j]] = "test"
        if "val" not in given and val_fraction > 0:
            pool = [i for i, sp in enumerate(splits) if sp == "train"]
            _, carved = carve(pool, val_fraction, seed + 1)
            for j in carved:
                splits[pool[j]] = "val"
    out = [dataclasses.replace(s, split=sp) for s, sp in zip(samples, splits)]
    _warn_patient_overlap(out)
    _warn_duplicates(out, dups)
    return out


def _warn_duplicates(samples: Sequence[Sample], dups: Sequence[int | None]) -> None:
    """Warn (counts only, no file names) about copies across given splits or with different labels."""
    members: dict[int, list[Sample]] = {}
    for s, d in zip(samples, dups):
        if d is not None:
            members.setdefault(d, []).append(s)
    if not members:
        return
    logger.info(
        "%d group(s) of byte-identical files (%d files) kept on one side of every carved split",
        len(members),
        sum(len(m) for m in members.values()),
    )
    across = sum(1 for m in members.values() if len({s.split for s in m}) > 1)
    conflicting = sum(1 for m in members.values() if len({s.label for s in m}) > 1)
    if across:
        warnings.warn(
            f"{across} group(s) of byte-identical image files sit in more than one of the given "
            "splits (the dataset's split folders or the manifest's split column). Metrics on val/test "
            "will be optimistic; remove the copies from one split.",
            stacklevel=3,
        )
    if conflicting:
        warnings.warn(
            f"{conflicting} group(s) of byte-identical image files carry different labels. Check "
            "those labels: the same image cannot be both classes.",
            stacklevel=3,
        )


def _warn_patient_overlap(samples: Sequence[Sample]) -> None:
    where: dict[str, set[str]] = {}
    for s in samples:
        if s.patient_id and s.split:
            where.setdefault(s.patient_id, set()).add(s.split)
    shared = sum(1 for v in where.values() if len(v) > 1)
    if shared:
        # counts only: patient ids are never logged
        warnings.warn(
            f"{shared} patient id(s) appear in more than one of the given splits (the dataset's split "
            "folders or the manifest's split column). If they are the same people, metrics on val/test "
            "will be optimistic; fix the split assignment.",
            stacklevel=3,
        )


def save_splits(dataset: Dataset, path: str | Path) -> Path:
    """Write the dataset's classes, samples (relative path, label, split, uid) and skipped files as JSON.

    Written atomically, so :func:`load_splits` can repeat a run exactly.

    Example:
        >>> save_splits(ds, "runs/x/splits.json"); ds2 = load_splits("runs/x/splits.json", ds.root)
    """
    root = dataset.root
    obj = {
        "format": SPLITS_FORMAT,
        "version": SPLITS_VERSION,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "samples": [
            {
                "path": relative_posix(s.path, root),
                "label": s.label,
                "split": s.split,
                "uid": s.uid,
                **({"patient_id": s.patient_id} if s.patient_id else {}),
                **({"index": s.index} if s.index is not None else {}),
            }
            for s in dataset.samples
        ],
        "skipped": [_skipped_rel(k, root) for k in dataset.skipped],
    }
    return atomic_write_json(path, obj)


def _skipped_rel(k: SkippedFile, root: str) -> dict:
    p = k.path
    try:
        if Path(p).is_absolute():
            p = relative_posix(p, root)
    except ValueError:  # other drive on Windows
        pass
    return {"path": p, "reason": k.reason}


def load_splits(path: str | Path, dataset_root: str | Path) -> Dataset:
    """Rebuild a :class:`Dataset` saved by :func:`save_splits`, with paths under ``dataset_root``.

    Raises:
        DatasetError: the file is not a splits file, or listed images are missing under the root.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read splits file {str(path)!r}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != SPLITS_FORMAT:
        raise DatasetError(
            f"{str(path)!r} is not a medtl splits file (written by medtl.data.save_splits)."
        )
    if obj.get("version", 0) > SPLITS_VERSION:
        raise DatasetError(
            f"Splits file {str(path)!r} has version {obj.get('version')}, newer than this medtl "
            f"understands ({SPLITS_VERSION}). Upgrade medtl."
        )
    root = Path(dataset_root).expanduser().resolve()
    samples = []
    missing = []
    for rec in obj["samples"]:
        f = (root / rec["path"]).resolve()
        if not f.exists():
            missing.append(rec["path"])
        sp = rec.get("split")
        if sp is not None and sp not in SPLITS:
            raise DatasetError(f"Splits file {str(path)!r}: unknown split {sp!r}.")
        samples.append(
            Sample(
                path=str(f),
                label=int(rec["label"]),
                uid=str(rec["uid"]),
                split=sp,
                patient_id=rec.get("patient_id"),
                index=rec.get("index"),
            )
        )
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) listed in {str(path)!r} are missing under {str(root)!r}, "
            f"e.g. {missing[:3]}. Pass the dataset_root the splits were made from."
        )
    skipped = [
        SkippedFile(
            str(root / k["path"]) if not Path(k["path"]).is_absolute() else k["path"], k["reason"]
        )
        for k in obj.get("skipped", [])
    ]
    return Dataset(
        root=str(root),
        source=str(obj.get("source", "unknown")),
        classes=list(obj["classes"]),
        samples=samples,
        skipped=skipped,
    )
