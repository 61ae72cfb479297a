"""Make missing train/val/test splits (stratified, patient-grouped), and save/load them as JSON.

Splitting uses scikit-learn: ``StratifiedShuffleSplit`` (via ``train_test_split``) when no patient ids
are known, ``StratifiedGroupKFold`` when they are (so no patient ends up in two splits). Several
findings per image are split by iterative stratification of patient groups over every finding
(:func:`medtl.data._multilabel.iterative_carve`). Byte-identical
files (the same image saved twice, common in public datasets: Kermany has 30 such groups) are grouped
too, so a carve never puts one copy in training and the other in validation or test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl._fileio import atomic_write_json
from medtl._memo import memoized
from medtl.cachekeys import memo_versions
from medtl.data._multilabel import is_multilabel, iterative_carve, targets_of
from medtl.data._types import SPLITS, Dataset, Sample, SkippedFile
from medtl.errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS_FORMAT = "medtl-splits"
SPLITS_VERSION = 2  # 2: no paths; uids, hashed patient ids, salt check


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
    cache_dir: str | Path | None = None,
) -> tuple[list[int], list[int]]:
    """Split positions of ``samples`` into (keep, carved) with about ``fraction`` carved.

    Stratified by label; grouped by patient when samples have patient ids (samples without one count
    as their own patient) and by duplicate group (``dups``, from :func:`duplicate_groups`). The grouped
    split is memoised under ``cache_dir`` (seconds for thousands of groups; identical when read back).
    """
    n = len(samples)
    if fraction <= 0 or n == 0:
        return list(range(n)), []
    labels = np.array([s.label for s in samples])
    positions = np.arange(n)
    keys = _group_keys(samples, dups if dups is not None else [None] * n)
    if is_multilabel(samples):
        # several findings per image: iterative stratification over every finding, by patient
        if keys is not None and len(set(keys)) < 2:
            raise DatasetError(
                f"All {n} images belong to one patient, so no patient-level split is possible. "
                "Check the manifest's patient_id column."
            )
        carved = iterative_carve(
            targets_of(samples), None if keys is None else np.array(keys), fraction, seed
        )
        return positions[~carved].tolist(), positions[carved].tolist()
    if keys is not None:
        return _carve_grouped(positions, labels, np.array(keys), fraction, seed, cache_dir)
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
    positions: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    fraction: float,
    seed: int,
    cache_dir: str | Path | None = None,
) -> tuple[list[int], list[int]]:
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise DatasetError(
            f"All {len(positions)} images belong to one patient, so no patient-level split is "
            "possible. Check the manifest's patient_id column."
        )
    # the memo key holds only numbers: group names become their rank in sorted order, the order
    # scikit-learn's own np.unique gives them, so the folds are those of the names themselves
    codes = np.unique(groups, return_inverse=True)[1].reshape(-1)
    keep, carved = memoized(_grouped_fold, cache_dir)(
        labels.astype(np.int64), codes.astype(np.int64), float(fraction), int(seed),
        memo_versions(["scikit-learn", "numpy"]),
    )  # fmt: skip
    return sorted(positions[keep].tolist()), sorted(positions[carved].tolist())


def _grouped_fold(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, versions: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(keep, carved) indices: one of k stratified group folds (k ~ 1/fraction). Pure (memoised)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    positions = np.arange(len(labels))
    # k folds, one of them carved: a fraction of about 1/k (StratifiedGroupKFold has no test_size).
    k = int(min(max(2, round(1.0 / fraction)), n_groups))
    stratified = None
    if len(set(labels.tolist())) > 1:
        with warnings.catch_warnings():
            # "The least populated class in y has only n members": expected on small data.
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            try:
                stratified = next(iter(cv.split(positions, labels, groups)))
            except ValueError:  # more folds than members of some class (tiny data)
                stratified = None
    if stratified is not None:
        return stratified
    cv2 = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return next(iter(cv2.split(positions, labels, groups)))


def assign_splits(
    samples: Sequence[Sample],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[Sample]:
    """Fill in missing splits (a grouped split is memoised under ``cache_dir`` when given).

    * No sample has a split: ``test_fraction`` of all images go to test and ``val_fraction`` of all to
      val (both stratified, grouped by patient when known); the rest is train.
    * Some splits exist (e.g. ``train/`` and ``test/`` folders): the official ones are kept untouched,
      a missing ``test`` is carved from train (``test_fraction`` of train) and a missing ``val`` is
      carved from train (``val_fraction`` of train). Samples without a split join train.

    The split depends on the files, labels, patients and settings, never on the order the samples
    are listed in (a manifest's row order, a copy of the folder elsewhere): samples are carved in
    path order.

    Returns:
        New samples (same order) with ``split`` set.
    """
    listed = list(samples)
    order = sorted(range(len(listed)), key=lambda i: listing_key(listed[i]))
    samples = [listed[i] for i in order]
    given = {s.split for s in samples if s.split}
    splits = [s.split or "train" for s in samples]
    needs_carve = not given or (
        ("test" not in given and test_fraction > 0) or ("val" not in given and val_fraction > 0)
    )
    dups = duplicate_groups(samples) if needs_carve or len(given) > 1 else [None] * len(samples)

    def carve(pool: list[int], fraction: float, carve_seed: int) -> tuple[list[int], list[int]]:
        return _carve(
            [samples[i] for i in pool], fraction, carve_seed, [dups[i] for i in pool], cache_dir
        )

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
    back: list[Sample] = [None] * len(out)  # type: ignore[list-item]
    for pos, i in enumerate(order):
        back[i] = out[pos]
    return back


def stratified_subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """At most ``n`` of ``samples`` (all when fewer), in their order: stratified by class, or over
    every finding for several findings per image (iterative stratification, see
    :func:`~medtl.data.iterative_carve`). The one subsample of ``data.max_train`` and the advisor's
    cap.
    """
    if n <= 0 or n >= len(samples):
        return samples
    if is_multilabel(samples):
        keep = iterative_carve(targets_of(samples), None, n / len(samples), seed)
        return [s for s, k in zip(samples, keep) if k]
    from sklearn.model_selection import train_test_split

    labels = [s.label for s in samples]
    idx, _ = train_test_split(
        np.arange(len(samples)), train_size=n, stratify=labels, random_state=seed
    )
    return [samples[i] for i in sorted(idx)]


def listing_key(s: Sample) -> tuple[str, int]:
    """The canonical order of samples for carving: their path, then their index in a container."""
    return (s.path, -1 if s.index is None else int(s.index))


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


def save_splits(dataset: Dataset, path: str | Path, *, salt: bytes | None = None) -> Path:
    """Write the dataset's classes and, per image, uid, label, split (and hashed patient id) as JSON.

    No file path and no name of the dataset folder is written: images are named by their uids (keyed
    hashes; see :func:`medtl.data.keyed_uid`), patient ids by their keyed hashes, skipped and ignored
    files by uid and reason. :func:`load_splits` finds the files again by re-scanning the dataset
    with the same salt. Written atomically.

    Args:
        dataset: a loaded dataset.
        path: the JSON file to write.
        salt: the salt the dataset was loaded with (recorded as a check value only, never in clear;
            default: the one ``load_dataset`` recorded in ``dataset.salt_check``).

    Example:
        >>> save_splits(ds, "runs/x/splits.json"); ds2 = load_splits("runs/x/splits.json", "data/")
    """
    from medtl.data._ids import dataset_fingerprint, hash_patient_id, salt_check

    check = dataset.salt_check if salt is None and dataset.salt_check else salt_check(salt)
    obj = {
        "format": SPLITS_FORMAT,
        "version": SPLITS_VERSION,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "salt_check": check,
        "fingerprint": dataset_fingerprint(dataset),
        "samples": [
            {
                "uid": s.uid,
                "label": s.label,
                "split": s.split,
                **({"patient_id": hash_patient_id(s.patient_id, salt)} if s.patient_id else {}),
                **({"index": s.index} if s.index is not None else {}),
                **({"targets": _json_targets(s.targets)} if s.targets is not None else {}),
            }
            for s in dataset.samples
        ],
        "skipped": [{"uid": k.uid, "reason": k.reason} for k in dataset.skipped],
        "ignored": [{"uid": k.uid, "reason": k.reason} for k in dataset.ignored],
    }
    if dataset.task_kind:
        obj["task"] = dataset.task_kind
        obj["labelling"] = dataset.labelling
    return atomic_write_json(path, obj)


def _json_targets(targets: Sequence[float]) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in targets]


def _rescan(dataset_root: Path, source: str, classes: list[str], salt: bytes | None) -> Any:
    """Scan ``dataset_root`` again; for a manifest or .npz source a folder may hold the file."""
    from medtl.data._sources import scan_source, source_info

    candidates = [dataset_root]
    patterns = source_info(source).file_patterns
    if dataset_root.is_dir() and patterns:
        candidates = sorted(f for pat in patterns for f in dataset_root.glob(pat))
    scans = []
    for cand in candidates:
        try:
            scans.append(scan_source(cand, classes if patterns else None, salt))
        except DatasetError:
            if len(candidates) == 1:
                raise
    return scans


def load_splits(
    path: str | Path, dataset_root: str | Path, *, salt: bytes | None = None
) -> Dataset:
    """Rebuild a :class:`Dataset` saved by :func:`save_splits` from the data at ``dataset_root``.

    The dataset is scanned again (no decoding) with ``salt`` and every uid of the splits file is
    matched to its file; a moved or copied dataset therefore loads too.

    Args:
        path: the splits file.
        dataset_root: the dataset as given to ``load_dataset`` (folder, manifest or ``.npz``; for
            a manifest or ``.npz``, its folder works too).
        salt: the salt the splits were made with (``project_salt(cache_dir)`` of that project).

    Raises:
        DatasetError: not a splits file, another salt, or listed images missing under the root.
    """
    from medtl._fileio import UnsafeFileError, display_path, json_loads, read_regular_bytes
    from medtl.data._ids import salt_check

    path = Path(path)
    where = display_path(path)
    try:
        obj = json_loads(read_regular_bytes(path, 512 * 1024**2))
    except (OSError, UnsafeFileError, ValueError) as exc:
        raise DatasetError(f"Cannot read splits file {where!r}: {type(exc).__name__}") from exc
    if not isinstance(obj, dict) or obj.get("format") != SPLITS_FORMAT:
        raise DatasetError(
            f"{where!r} is not a medtl splits file (written by medtl.data.save_splits)."
        )
    version = obj.get("version", 0)
    if not isinstance(version, int) or version > SPLITS_VERSION:
        raise DatasetError(
            f"Splits file {where!r} has version {version!r}, newer than this medtl understands "
            f"({SPLITS_VERSION}). Upgrade medtl."
        )
    root = Path(dataset_root).expanduser().absolute()
    try:
        if version < 2:
            return _load_splits_v1(obj, where, root)
        return _load_splits_v2(obj, where, root, salt, salt_check(salt))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(
            f"Splits file {where!r} is damaged ({type(exc).__name__}); delete it and load the "
            "dataset again."
        ) from None


def _load_splits_v2(obj: dict, where: str, root: Path, salt: bytes | None, check: str) -> Dataset:
    from medtl._fileio import display_path

    if obj.get("salt_check") != check:
        raise DatasetError(
            f"Splits file {where!r} was written with another salt, so its image ids cannot be "
            "matched. Pass salt=medtl.data.project_salt(cache_dir) of the project that wrote it."
        )
    classes = [str(c) for c in obj["classes"]]
    source = str(obj.get("source", "unknown"))
    scans = _rescan(root, source, classes, salt)
    by_uid: dict[str, Sample] = {}
    files: dict[str, str] = {}
    for scan in scans:
        for s in scan.samples:
            by_uid.setdefault(s.uid, s)
        for k in [*scan.skipped, *scan.ignored]:
            if k.uid:
                files.setdefault(k.uid, k.path)
    samples, missing = [], 0
    for rec in obj["samples"]:
        uid = str(rec["uid"])
        sp = rec.get("split")
        if sp is not None and sp not in SPLITS:
            raise DatasetError(f"Splits file {where!r}: unknown split {sp!r}.")
        found = by_uid.get(uid)
        if found is None:
            missing += 1
            continue
        targets = rec.get("targets")
        samples.append(
            dataclasses.replace(
                found,
                label=int(rec["label"]),
                split=sp,
                patient_id=rec.get("patient_id"),
                index=rec.get("index"),
                targets=None
                if targets is None
                else tuple(float("nan") if v is None else float(v) for v in targets),
            )
        )
    if missing:
        raise DatasetError(
            f"{missing} image(s) listed in {where!r} are missing under {display_path(root)!r} "
            "(or were renamed). Pass the dataset the splits were made from."
        )
    for s in samples:
        files.setdefault(s.uid, s.path)
    paths_by_uid = {**{s.uid: s.path for s in by_uid.values()}, **files}

    def entries(key: str) -> list[SkippedFile]:
        return [
            SkippedFile(paths_by_uid.get(k.get("uid"), ""), str(k["reason"]), k.get("uid"))
            for k in obj.get(key, [])
        ]

    return Dataset(
        root=scans[0].root if scans else str(root),
        source=source,
        classes=classes,
        samples=samples,
        skipped=entries("skipped"),
        ignored=entries("ignored"),
        salt_check=check,
        task_kind=obj.get("task"),
        labelling=obj.get("labelling"),
    )


def _load_splits_v1(obj: dict, where: str, root: Path) -> Dataset:
    """Splits files of version 1 (relative paths in clear), still readable."""
    from medtl._fileio import display_path

    samples, missing = [], []
    for rec in obj["samples"]:
        f = (root / rec["path"]).resolve()
        if not f.exists():
            missing.append(rec["path"])
        sp = rec.get("split")
        if sp is not None and sp not in SPLITS:
            raise DatasetError(f"Splits file {where!r}: unknown split {sp!r}.")
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
            f"{len(missing)} image(s) listed in {where!r} are missing under "
            f"{display_path(root)!r}. Pass the dataset_root the splits were made from."
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
