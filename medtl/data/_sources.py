"""Dataset sources: detect the on-disk layout and list labelled files (no decoding here).

Four layouts are understood, each registered with :func:`register_source`:

* ``folder_splits``: ``root/train/<class>/...`` with optional ``val/`` (or ``valid/``,
  ``validation/``) and ``test/``;
* ``folder_classes``: ``root/<class>/...`` (no splits);
* ``csv``: a manifest with columns ``path,label`` and optional ``patient_id``, ``split``;
* ``npz``: a MedMNIST ``.npz`` (``train_images``/``train_labels``, ...).

A source returns a :class:`ScanResult`: class names and samples (split assigned only where the layout says
so). Splits are completed and files verified by :func:`medtl.data.load_dataset`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medtl.data._types import SPLITS, Sample, SkippedFile
from medtl.errors import DatasetError

logger = logging.getLogger(__name__)

# folder name (lower case) -> split name
SPLIT_DIR_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# accepted values of a manifest's ``split`` column (lower case) -> split name
SPLIT_VALUES = {**SPLIT_DIR_NAMES, "": None}


@dataclass
class ScanResult:
    """What a source found: classes, samples (maybe with splits) and files rejected while scanning."""

    root: str
    source: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[SkippedFile] = field(default_factory=list)


SourceFn = Callable[[Path, "Sequence[str] | None"], ScanResult]
_SOURCES: dict[str, SourceFn] = {}


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """Register a dataset source under ``name`` (used by :func:`scan_source`)."""

    def deco(fn: SourceFn) -> SourceFn:
        _SOURCES[name] = fn
        return fn

    return deco


def make_uid(relpath: str) -> str:
    """De-identified, stable id: first 16 hex digits of sha1 of a path relative to the dataset root."""
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:16]


def relative_posix(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` with forward slashes (may start with ``..``)."""
    return Path(os.path.relpath(path, root)).as_posix()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _files_under(folder: Path) -> list[Path]:
    """All non-hidden files under ``folder`` (recursive, hidden folders pruned), sorted."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)


def detect_source(path: Path) -> str:
    """Name of the source kind for ``path`` (see module docstring); DatasetError when none fits."""
    if not path.exists():
        raise DatasetError(
            f"Dataset path {str(path)!r} does not exist. Give a folder of class folders, a folder with "
            "train/ (and optional val/, test/), a CSV manifest or a MedMNIST .npz file."
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return "csv"
        if suffix == ".npz":
            return "npz"
        raise DatasetError(
            f"Dataset file {str(path)!r} is neither a CSV manifest (.csv) nor a MedMNIST .npz. "
            "Give a folder, a .csv with columns path,label or a .npz file."
        )
    subdirs = _visible_dirs(path)
    if any(d.name.lower() == "train" or d.name.lower() == "training" for d in subdirs):
        return "folder_splits"
    if subdirs:
        return "folder_classes"
    manifests = sorted(path.glob("*.csv"))
    npzs = sorted(path.glob("*.npz"))
    hint = ""
    if len(manifests) == 1:
        hint = f" Did you mean the manifest {str(manifests[0])!r}?"
    elif len(npzs) == 1:
        hint = f" Did you mean {str(npzs[0])!r}?"
    raise DatasetError(
        f"Dataset folder {str(path)!r} has no class folders (and no train/ folder).{hint} "
        "Expected root/<class>/<image files>, root/train/<class>/..., a CSV manifest or a .npz."
    )


def scan_source(path: str | Path, class_names: Sequence[str] | None = None) -> ScanResult:
    """Detect the layout of ``path`` and list its labelled files."""
    p = Path(path).expanduser().resolve()
    kind = detect_source(p)
    return _SOURCES[kind](p, class_names)


def _class_folder_samples(
    split_dir: Path, root: Path, classes: list[str], split: str | None
) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        cdir = split_dir / name
        if not cdir.is_dir():
            continue
        for f in _files_under(cdir):
            rel = relative_posix(f, root)
            samples.append(Sample(path=str(f), label=label, uid=make_uid(rel), split=split))
    return samples


def _check_class_names(classes: list[str], class_names: Sequence[str] | None, where: str) -> None:
    if class_names is not None and list(class_names) != classes:
        raise DatasetError(
            f"'class_names' {list(class_names)} do not match the class folders found in {where}: "
            f"{classes}. Leave class_names out for folder datasets (names come from the folders)."
        )


@register_source("folder_classes")
def _scan_folder_classes(root: Path, class_names: Sequence[str] | None) -> ScanResult:
    classes = [d.name for d in _visible_dirs(root)]
    _check_class_names(classes, class_names, str(root))
    stray = [f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")]
    if stray:
        logger.debug(
            "Ignoring %d file(s) at the top of %s (not inside a class folder)", len(stray), root
        )
    return ScanResult(
        str(root), "folder_classes", classes, _class_folder_samples(root, root, classes, None)
    )


@register_source("folder_splits")
def _scan_folder_splits(root: Path, class_names: Sequence[str] | None) -> ScanResult:
    split_dirs: dict[str, Path] = {}
    for d in _visible_dirs(root):
        sp = SPLIT_DIR_NAMES.get(d.name.lower())
        if sp is None:
            logger.warning("Ignoring folder %s: not a split name (train/val/valid/test)", d)
            continue
        if sp in split_dirs:
            raise DatasetError(
                f"Dataset {str(root)!r} has two folders for the {sp!r} split: "
                f"{split_dirs[sp].name!r} and {d.name!r}. Keep one of them."
            )
        split_dirs[sp] = d
    per_split = {sp: {c.name for c in _visible_dirs(d)} for sp, d in split_dirs.items()}
    classes = sorted(set().union(*per_split.values()))
    _check_class_names(classes, class_names, str(root))
    for sp, names in per_split.items():
        missing = sorted(set(classes) - names)
        if missing:
            logger.warning("Split %r of %s has no folder for class(es) %s", sp, root, missing)
    samples: list[Sample] = []
    for sp in SPLITS:
        if sp in split_dirs:
            samples.extend(_class_folder_samples(split_dirs[sp], root, classes, sp))
    return ScanResult(str(root), "folder_splits", classes, samples)


@register_source("csv")
def _scan_csv(csv_path: Path, class_names: Sequence[str] | None) -> ScanResult:
    root = csv_path.parent
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        for needed in ("path", "label"):
            if needed not in fields:
                raise DatasetError(
                    f"Manifest {str(csv_path)!r} has no {needed!r} column (columns found: "
                    f"{list(reader.fieldnames or [])}). Required: path,label; optional: "
                    "patient_id,split."
                )
        rows = list(reader)
    if not rows:
        raise DatasetError(f"Manifest {str(csv_path)!r} has no rows. Add one row per image.")

    def col(row: dict, name: str) -> str:
        key = fields.get(name)
        return (row.get(key) or "").strip() if key else ""

    labels = sorted({col(r, "label") for r in rows} - {""})
    if class_names is not None:
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise DatasetError(
                f"Manifest {str(csv_path)!r} has labels {unknown} that are not in 'class_names' "
                f"{list(class_names)}. Add them to class_names or fix the manifest."
            )
        classes = list(class_names)
    else:
        classes = labels
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows, start=2):
        raw_path, label = col(row, "path"), col(row, "label")
        if not raw_path or not label:
            skipped.append(
                SkippedFile(f"{csv_path}:{lineno}", "manifest row without a path or a label")
            )
            continue
        f = Path(raw_path).expanduser()
        f = (f if f.is_absolute() else root / f).resolve()
        if str(f) in seen:
            skipped.append(SkippedFile(str(f), f"listed twice in the manifest (line {lineno})"))
            continue
        seen.add(str(f))
        split_raw = col(row, "split").lower()
        if split_raw not in SPLIT_VALUES:
            raise DatasetError(
                f"Manifest {str(csv_path)!r} line {lineno}: split {split_raw!r} is not one of "
                "train/val/valid/test (or empty). Fix the split column."
            )
        pid = col(row, "patient_id") or None
        rel = relative_posix(f, root)
        samples.append(
            Sample(
                path=str(f),
                label=index[label],
                uid=make_uid(rel),
                split=SPLIT_VALUES[split_raw],
                patient_id=pid,
            )
        )
    return ScanResult(str(root), "csv", classes, samples, skipped)


@register_source("npz")
def _scan_npz(npz_path: Path, class_names: Sequence[str] | None) -> ScanResult:
    from medtl.errors import ImageReadError
    from medtl.io import read_npz

    try:
        arrays = read_npz(npz_path)
    except ImageReadError as exc:
        raise DatasetError(f"Cannot read {str(npz_path)!r}: {exc.reason}") from exc
    n_classes = 0
    for _, labels in arrays.values():
        if len(labels):
            n_classes = max(n_classes, int(labels.max()) + 1)
    if class_names is not None:
        if len(class_names) < n_classes:
            raise DatasetError(
                f"'class_names' has {len(class_names)} names but {str(npz_path)!r} has labels up to "
                f"{n_classes - 1}. Give one name per label 0..{n_classes - 1}."
            )
        classes = list(class_names)
    else:
        classes = [str(i) for i in range(n_classes)]
    samples: list[Sample] = []
    offset = 0
    # Sample.index is the position in the concatenation of the file's splits in SPLITS order, so one
    # integer finds the image again (see npz_image_index).
    for sp in npz_split_order(arrays):
        _, labels = arrays[sp]
        for i, lab in enumerate(labels.tolist()):
            samples.append(
                Sample(
                    path=str(npz_path),
                    label=int(lab),
                    uid=f"{sp}/{i}",
                    split=sp,
                    index=offset + i,
                )
            )
        offset += len(labels)
    return ScanResult(str(npz_path.parent), "npz", classes, samples)


def npz_split_order(arrays: dict) -> list[str]:
    """The order in which a ``read_npz`` result's splits are concatenated for ``Sample.index``."""
    return [sp for sp in SPLITS if sp in arrays] + sorted(k for k in arrays if k not in SPLITS)


def npz_image(arrays: dict, index: int):
    """The image at global ``index`` (see :func:`npz_split_order`) of a ``read_npz`` result."""
    for sp in npz_split_order(arrays):
        images, _ = arrays[sp]
        if index < len(images):
            return images[index]
        index -= len(images)
    raise IndexError(index)
