"""Dataset sources: detect the on-disk layout and list labelled files (no decoding here).

Four layouts are understood, each registered with :func:`register_source`:

* ``folder_splits``: ``root/train/<class>/...`` with optional ``val/`` (or ``valid/``,
  ``validation/``) and ``test/``;
* ``folder_classes``: ``root/<class>/...`` (no splits);
* ``csv``: a manifest with columns ``path,label`` and optional ``patient_id``, ``split``; or, for
  several findings per image, ``path`` plus one column per finding (no ``label`` column and two or
  more finding columns, or the findings named by ``data.findings`` / ``--findings``);
* ``npz``: a MedMNIST ``.npz`` (``train_images``/``train_labels``, ...); labels (N, K) are K findings.

A source returns a :class:`ScanResult`: class names and samples (split assigned only where the layout says
so). Splits are completed and files verified by :func:`medtl.data.load_dataset`.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtl._fileio import (
    MAX_FILE_BYTES,
    UnsafeFileError,
    check_regular_file,
    display_path,
    read_regular_bytes,
)
from medtl.data._ids import hash_patient_id, keyed_uid
from medtl.data._multilabel import (
    MULTILABEL,
    FindingColumns,
    LabelOptions,
    LabelTally,
    finding_columns,
    labelling_record,
    read_targets,
    uncertain_value,
)
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
    ignored: list[SkippedFile] = field(default_factory=list)
    #: "multilabel" when the samples carry several findings (``Sample.targets``)
    task_kind: str | None = None
    #: how multi-label targets were read (see :func:`medtl.data._multilabel.labelling_record`)
    labelling: dict | None = None


SourceFn = Callable[[Path, "Sequence[str] | None", "bytes | None"], ScanResult]


@dataclass(frozen=True)
class SourceInfo:
    """A registered dataset source: how it claims a path, how it scans, and what it is.

    Attributes:
        name: the source's name (``Dataset.source``).
        scan: ``fn(path, class_names, salt) -> ScanResult``.
        claims: ``fn(path) -> bool``: True when this source reads ``path``; asked in ``priority``
            order (highest first) by :func:`detect_source`.
        file_patterns: the dataset is one file of these kinds (a manifest, an archive); a folder
            holding such files is searched for them when a run is re-scanned.
        images_in_file: the pixels live inside the dataset file (no image files to verify, no file
            names to read patient ids from).
        splits_given: the layout names its own splits (folders train/val/test).
        reads_findings: the source can read several findings per image; its scan function takes a
            ``labels`` keyword (:class:`medtl.data._multilabel.LabelOptions`).
    """

    name: str
    scan: SourceFn
    claims: Callable[[Path], bool]
    file_patterns: tuple[str, ...] = ()
    images_in_file: bool = False
    splits_given: bool = False
    priority: int = 0
    reads_findings: bool = False


_SOURCES: dict[str, SourceInfo] = {}


def register_source(
    name: str,
    *,
    claims: Callable[[Path], bool] | None = None,
    file_patterns: Sequence[str] = (),
    images_in_file: bool = False,
    splits_given: bool = False,
    priority: int = 0,
    reads_findings: bool = False,
) -> Callable[[SourceFn], SourceFn]:
    """Register a dataset source under ``name`` (used by :func:`detect_source` and
    :func:`scan_source`); a name already taken is refused.

    A source is ``fn(path, class_names, salt) -> ScanResult``; it names samples and skipped files
    with :func:`make_uid` and the salt it is given. ``claims(path)`` says whether it reads ``path``
    (default: a file matching ``file_patterns``). See :class:`SourceInfo` for the rest.
    """
    if name in _SOURCES:
        raise ValueError(f"A dataset source named {name!r} is already registered.")
    pats = tuple(file_patterns)

    suffixes = {Path(p).suffix.lower() for p in pats}

    def by_pattern(path: Path) -> bool:  # a file with one of the patterns' suffixes, any case
        return path.is_file() and path.suffix.lower() in suffixes

    def deco(fn: SourceFn) -> SourceFn:
        _SOURCES[name] = SourceInfo(
            name=name,
            scan=fn,
            claims=claims or by_pattern,
            file_patterns=pats,
            images_in_file=images_in_file,
            splits_given=splits_given,
            priority=priority,
            reads_findings=reads_findings,
        )
        return fn

    return deco


def source_info(name: str) -> SourceInfo:
    """What the registered source ``name`` is (see :class:`SourceInfo`)."""
    from medtl._options import look_up_option

    look_up_option("source", name, sorted(_SOURCES))
    return _SOURCES[name]


def _has_split_folders(path: Path) -> bool:
    return path.is_dir() and any(
        d.name.lower() in ("train", "training") for d in _visible_dirs(path)
    )


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and bool(_visible_dirs(path))


def make_uid(relpath: str | os.PathLike | bytes, salt: bytes | None = None) -> str:
    """De-identified, stable id of a file: keyed hash of its path relative to the dataset root.

    See :func:`medtl.data.keyed_uid` (HMAC-SHA256 with the project's salt; bytes-safe).
    """
    return keyed_uid(relpath, salt)


def relative_posix(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` with forward slashes (may start with ``..``)."""
    return Path(os.path.relpath(path, root)).as_posix()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


# Files at a dataset's top level that document the data rather than being data.
_DOC_SUFFIXES = {".md", ".txt", ".rst", ".json", ".yaml", ".yml", ".csv", ".tsv", ".pdf", ".html"}
_DOC_STEMS = ("readme", "license", "licence", "citation", "changelog", "notice")
_MAX_DEPTH = 64


def _is_doc(name: str) -> bool:
    return Path(name).suffix.lower() in _DOC_SUFFIXES or name.lower().startswith(_DOC_STEMS)


def _is_dir(path: str | Path) -> bool:
    """``os.path.isdir`` that never raises (link loops, over-long names: False)."""
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _is_hidden(p.name) and _is_dir(p))


@dataclass
class _Walk:
    """Files found under a folder, and the entries that cannot be used (with reasons)."""

    root: Path
    salt: bytes | None
    scope: str = "dataset folder"  # what ``root`` is, in the reasons ("folder given" for predict)
    files: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: list[SkippedFile] = field(default_factory=list)
    file_ids: dict[Path, tuple[int, int]] = field(default_factory=dict)  # (device, inode) per file
    _seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    _root_real: str | None = None

    def _contains(self, outer: str, path: Path) -> bool:
        real = os.path.realpath(path)
        return real == outer or real.startswith(outer.rstrip(os.sep) + os.sep)

    def _leaves_root(self, path: Path) -> str | None:
        """Why ``path`` (a link, or reached through one) is not followed: it leads out of the root."""
        if self._root_real is None:
            self._root_real = os.path.realpath(self.root)
        if self._contains(self._root_real, path):
            return None
        return (
            f"symbolic link to a place outside the {self.scope}; not followed (nothing outside "
            f"the {self.scope} is read)"
        )

    def _leaves(self, path: Path, boundary: str) -> str | None:
        """Why the link ``path`` is not followed (it leads out of the root or of ``boundary``)."""
        outside = self._leaves_root(path)
        if outside is not None:
            return outside
        if not self._contains(boundary, path):
            return (
                "symbolic link leading out of its class folder (to another class or elsewhere "
                "in the dataset); not followed, so no file is read under another label"
            )
        return None

    def _entry(self, path: Path, reason: str) -> SkippedFile:
        return SkippedFile(str(path), reason, make_uid(relative_posix(path, self.root), self.salt))

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(self._entry(path, reason))

    def ignore(self, path: Path, reason: str) -> None:
        self.ignored.append(self._entry(path, reason))

    def kind(self, path: Path) -> tuple[str, os.stat_result | None]:
        """``"dir"``, ``"file"`` or ``"bad"`` (already recorded as skipped) for one entry."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            reason = "broken symbolic link (its target does not exist)"
            self.skip(path, reason if os.path.islink(path) else "vanished while scanning")
            return "bad", None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.skip(path, "symbolic link loop (the link points back to itself)")
            elif exc.errno == errno.ENAMETOOLONG:
                self.skip(path, "file name too long for this system")
            else:
                self.skip(path, f"cannot be examined ({exc.strerror or type(exc).__name__})")
            return "bad", None
        if stat.S_ISDIR(st.st_mode):
            return "dir", st
        if stat.S_ISREG(st.st_mode):
            return "file", st
        try:
            check_regular_file(path, None)
        except UnsafeFileError as exc:
            self.skip(path, exc.reason)
        except OSError as exc:
            self.skip(path, f"cannot be examined ({exc.strerror or type(exc).__name__})")
        return "bad", None

    def entries(self, folder: Path) -> list[Path]:
        try:
            with os.scandir(folder) as it:
                return sorted(Path(e.path) for e in it)
        except OSError as exc:
            self.skip(folder, f"cannot list this folder ({exc.strerror or type(exc).__name__})")
            return []

    def walk(
        self, folder: Path, depth: int = 0, why: str | None = None, boundary: str = ""
    ) -> None:
        """Record every entry under ``folder``: files go to ``files`` (or, with ``why``, to
        ``skipped`` with that reason); hidden ones to ``ignored``; links are followed once when they
        stay inside ``folder`` (and the root); loops, links leading out and special files are
        skipped with a reason. Each call at depth 0 is one class folder: folders seen in another
        class folder are walked again (a file reached from two labels is then caught by its inode)."""
        if depth == 0:
            self._seen_dirs = set()
            outside = self._leaves_root(folder)
            if outside is not None:  # a class or split folder that is a link out of the root
                self.skip(folder, outside)
                return
            boundary = os.path.realpath(folder)
        try:
            st = os.stat(folder)
        except OSError:
            self.kind(folder)
            return
        key = (st.st_dev, st.st_ino)
        if key in self._seen_dirs:
            self.skip(
                folder,
                "folder already scanned through another path (a symbolic link to it, or a loop); "
                "not read twice",
            )
            return
        if depth > _MAX_DEPTH:
            self.skip(folder, f"folders nested deeper than {_MAX_DEPTH} levels; not scanned")
            return
        self._seen_dirs.add(key)
        for p in self.entries(folder):
            name = p.name
            if _is_hidden(name):
                if _is_dir(p):
                    self.ignore(p, "hidden folder (name starts with '.' or '__'); not scanned")
                else:
                    self.ignore(p, "hidden file (name starts with '.'); not used")
                continue
            kind, st = self.kind(p)
            if kind != "bad" and os.path.islink(p):
                leaves = self._leaves(p, boundary)
                if leaves is not None:
                    self.skip(p, leaves)
                    continue
            if kind == "dir":
                self.walk(p, depth + 1, why, boundary)
            elif kind == "file" and st is not None:
                if why is None:
                    self.files.append(p)
                    self.file_ids[p] = (st.st_dev, st.st_ino)
                else:
                    self.skip(p, why)

    def top_level(self, folder: Path, what: str) -> None:
        """Loose files directly in ``folder`` (a dataset root or a split folder)."""
        for p in self.entries(folder):
            if _is_hidden(p.name):
                if _is_dir(p):
                    self.ignore(p, "hidden folder (name starts with '.' or '__'); not scanned")
                else:
                    self.ignore(p, "hidden file (name starts with '.'); not used")
                continue
            kind, _ = self.kind(p)
            if kind != "file":
                continue
            if what == "root" and _is_doc(p.name):
                self.ignore(p, "documentation or metadata file at the dataset root; not an image")
            else:
                where = "at the dataset root" if what == "root" else "directly in a split folder"
                self.skip(p, f"{where}, not inside a class folder; move it into its class folder")


def detect_source(path: Path) -> str:
    """Name of the source kind for ``path`` (see module docstring); DatasetError when none fits."""
    if not path.exists():
        raise DatasetError(
            f"Dataset path {display_path(path)!r} does not exist. Give a folder of class folders, a folder with "
            "train/ (and optional val/, test/), a CSV manifest or a MedMNIST .npz file."
        )
    for info in sorted(_SOURCES.values(), key=lambda i: -i.priority):
        if info.claims(path):
            return info.name
    if path.is_file():
        raise DatasetError(
            f"Dataset file {display_path(path)!r} is neither a CSV manifest (.csv) nor a MedMNIST .npz. "
            "Give a folder, a .csv with columns path,label or a .npz file."
        )
    manifests = sorted(path.glob("*.csv"))
    npzs = sorted(path.glob("*.npz"))
    hint = ""
    if len(manifests) == 1:
        hint = f" Did you mean the manifest {display_path(manifests[0])!r}?"
    elif len(npzs) == 1:
        hint = f" Did you mean {display_path(npzs[0])!r}?"
    raise DatasetError(
        f"Dataset folder {display_path(path)!r} has no class folders (and no train/ folder).{hint} "
        "Expected root/<class>/<image files>, root/train/<class>/..., a CSV manifest or a .npz."
    )


def scan_source(
    path: str | Path,
    class_names: Sequence[str] | None = None,
    salt: bytes | None = None,
    *,
    labels: LabelOptions | None = None,
) -> ScanResult:
    """Detect the layout of ``path`` and list its labelled files (uids keyed with ``salt``).

    ``labels`` says how a source that reads several findings per image takes them (which findings,
    the uncertain-label policy); a source that cannot read findings refuses explicit findings.
    """
    from medtl.errors import ConfigError

    p = Path(path).expanduser().resolve()
    kind = detect_source(p)
    info = _SOURCES[kind]
    if info.reads_findings:
        return info.scan(p, class_names, salt, labels=labels)  # type: ignore[call-arg]
    if labels is not None and labels.findings:
        raise ConfigError(
            f"'findings' {list(labels.findings)} name manifest columns, but {display_path(p)!r} is "
            f"a {kind} dataset. Give a CSV manifest with one column per finding (or a .npz with "
            "labels of shape (N, K)), or remove findings."
        )
    return info.scan(p, class_names, salt)


def _class_folder_samples(
    walk: _Walk, split_dir: Path, classes: list[str], split: str | None
) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        cdir = split_dir / name
        if not _is_dir(cdir):
            continue
        walk.files = []
        walk.walk(cdir)
        for f in sorted(walk.files):
            rel = relative_posix(f, walk.root)
            samples.append(
                Sample(path=str(f), label=label, uid=make_uid(rel, walk.salt), split=split)
            )
    walk.files = []
    return samples


def _one_file_one_label(walk: _Walk, samples: list[Sample], classes: list[str]) -> list[Sample]:
    """Samples without a file reached twice (same device and inode: a symbolic or hard link).

    Reached from two class folders (or two splits), the file is refused under every label (it is
    never read under another one's); reached twice inside one class folder, it is listed once.
    """
    by_file: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        fid = walk.file_ids.get(Path(s.path))
        if fid is not None:
            by_file.setdefault(fid, []).append(i)
    drop: set[int] = set()
    for idx in by_file.values():
        if len(idx) < 2:
            continue
        slots = sorted({(samples[i].split or "", classes[samples[i].label]) for i in idx})
        if len(slots) > 1:
            where = ", ".join(f"{sp + '/' if sp else ''}{c}" for sp, c in slots)
            reason = (
                f"the same file is reached through {len(slots)} class folders ({where}), by a "
                "symbolic or hard link; not used under any of their labels"
            )
            for i in idx:
                walk.skip(Path(samples[i].path), reason)
            drop.update(idx)
        else:  # keep the file itself rather than a link to it
            keep = next((i for i in idx if not os.path.islink(samples[i].path)), idx[0])
            for i in idx:
                if i != keep:
                    walk.skip(
                        Path(samples[i].path),
                        "the same file as another one in this class folder (a link to it); "
                        "used once",
                    )
                    drop.add(i)
    return [s for i, s in enumerate(samples) if i not in drop]


def _label_key(name: str) -> str:
    """What two spellings of one class share: case, surrounding spaces and number format removed."""
    text = name.strip().casefold()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"number:{number!r}" if math.isfinite(number) else text


def check_label_variants(names: Sequence[str], where: str) -> None:
    """Refuse class names that differ only in case, surrounding spaces or number format.

    ``normal``, ``normal `` and ``Normal`` (or ``0`` and ``0.0``) would silently become separate
    classes. medtl refuses rather than merges: which spelling is right, and whether they are one
    class, is the user's call.

    Raises:
        DatasetError: listing every group of variants and the fix.
    """
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_label_key(n), []).append(n)
    clashes = [sorted(set(g)) for g in groups.values() if len(set(g)) > 1]
    if clashes:
        listed = "; ".join(" vs ".join(repr(v) for v in g) for g in clashes[:10])
        raise DatasetError(
            f"{where} has class names that differ only in case, surrounding spaces or number "
            f"format: {listed}. medtl does not guess whether they are one class: give each class "
            "one spelling (rename the folders or fix the labels)."
        )


def _check_class_names(classes: list[str], class_names: Sequence[str] | None, where: str) -> None:
    if class_names is not None and list(class_names) != classes:
        raise DatasetError(
            f"'class_names' {list(class_names)} do not match the class folders found in {where}: "
            f"{classes}. Leave class_names out for folder datasets (names come from the folders)."
        )


@register_source("folder_classes", claims=_has_class_folders)
def _scan_folder_classes(
    root: Path, class_names: Sequence[str] | None, salt: bytes | None = None
) -> ScanResult:
    classes = [d.name for d in _visible_dirs(root)]
    _check_class_names(classes, class_names, display_path(root))
    check_label_variants(classes, f"Dataset {display_path(root)!r}")
    walk = _Walk(root, salt)
    walk.top_level(root, "root")
    samples = _one_file_one_label(walk, _class_folder_samples(walk, root, classes, None), classes)
    return ScanResult(str(root), "folder_classes", classes, samples, walk.skipped, walk.ignored)


@register_source("folder_splits", claims=_has_split_folders, splits_given=True, priority=1)
def _scan_folder_splits(
    root: Path, class_names: Sequence[str] | None, salt: bytes | None = None
) -> ScanResult:
    walk = _Walk(root, salt)
    walk.top_level(root, "root")
    split_dirs: dict[str, Path] = {}
    for d in _visible_dirs(root):
        sp = SPLIT_DIR_NAMES.get(d.name.lower())
        if sp is None:
            # the folder's name is not logged: folder names may carry identifiers
            walk.walk(
                d,
                why="in a folder that is not a split folder (train/, val/, test/); move it into one",
            )
            continue
        if sp in split_dirs:
            raise DatasetError(
                f"Dataset {display_path(root)!r} has two folders for the {sp!r} split: "
                f"{split_dirs[sp].name!r} and {d.name!r}. Keep one of them."
            )
        split_dirs[sp] = d
    per_split = {sp: {c.name for c in _visible_dirs(d)} for sp, d in split_dirs.items()}
    classes = sorted(set().union(*per_split.values()))
    _check_class_names(classes, class_names, display_path(root))
    check_label_variants(classes, f"Dataset {display_path(root)!r}")
    for sp, names in per_split.items():
        missing = sorted(set(classes) - names)
        if missing:
            logger.warning("Split %r has no folder for class(es) %s", sp, missing)
    samples: list[Sample] = []
    for sp in SPLITS:
        if sp in split_dirs:
            walk.top_level(split_dirs[sp], "split")
            samples.extend(_class_folder_samples(walk, split_dirs[sp], classes, sp))
    samples = _one_file_one_label(walk, samples, classes)
    return ScanResult(str(root), "folder_splits", classes, samples, walk.skipped, walk.ignored)


def _read_manifest_rows(csv_path: Path, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a manifest; any encoding (non-UTF-8 bytes kept, as file names keep them)."""
    where = display_path(csv_path)
    try:
        raw = read_regular_bytes(csv_path, MAX_FILE_BYTES)
    except UnsafeFileError as exc:
        raise DatasetError(f"Manifest {where!r} {exc.reason}.") from None
    except OSError as exc:
        raise DatasetError(
            f"Cannot read manifest {where!r} ({exc.strerror or type(exc).__name__})."
        ) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Latin-1 / cp1252 manifests are common in hospital exports: undecodable bytes are kept as
    # surrogate escapes, which is exactly how the file system gives such names, so paths still match.
    text = raw.decode("utf-8", "surrogateescape")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DatasetError(
            f"Manifest {where!r} line {line}: the file holds NUL bytes, so it is not a plain-text "
            "CSV; re-save it as CSV (UTF-8)."
        )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        rows = list(reader)
    except csv.Error as exc:
        problem = str(exc)
        if "NUL" in problem:
            fix = (
                "the file holds NUL bytes, so it is not a plain-text CSV; re-save it as CSV (UTF-8)"
            )
        elif "field larger" in problem:
            fix = (
                f"a field is longer than {csv.field_size_limit()} characters (a missing closing "
                "quote?); fix the quoting"
            )
        else:
            fix = f"{problem}; fix that line"
        raise DatasetError(f"Manifest {where!r} line {reader.line_num}: {fix}.") from None
    return header or [], rows


def manifest_row_path(raw_path: str, root: Path) -> Path:
    """The absolute path a manifest's ``path`` cell names (relative cells are under ``root``)."""
    f = Path(raw_path).expanduser()
    return Path(os.path.abspath(f if f.is_absolute() else root / f))


@register_source("csv", file_patterns=("*.csv", "*.tsv"), reads_findings=True)
def _scan_csv(
    csv_path: Path,
    class_names: Sequence[str] | None,
    salt: bytes | None = None,
    *,
    labels: LabelOptions | None = None,
) -> ScanResult:
    """A manifest: ``path,label[,patient_id][,split]``, or a path and one column per finding."""
    opts = labels or LabelOptions()
    rows, col, multi = _manifest_table(csv_path, class_names, opts)
    if multi is not None:
        return _manifest_findings(csv_path, rows, multi, opts.uncertain, col, salt)
    classes = _manifest_classes(rows, col, class_names, display_path(csv_path))
    samples, skipped = _manifest_samples(csv_path, rows, col, classes, salt)
    return ScanResult(str(csv_path.parent), "csv", classes, samples, skipped)


def _manifest_table(
    csv_path: Path, class_names: Sequence[str] | None, opts: LabelOptions
) -> tuple[list[list[str]], Callable[[list[str], str], str], FindingColumns | None]:
    """A manifest's non-blank rows, a reader of a row's named column, and its finding columns."""
    where = display_path(csv_path)
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    header, raw_rows = _read_manifest_rows(csv_path, delimiter)
    fields = {(f or "").strip().lower(): i for i, f in enumerate(header)}
    rows = [r for r in raw_rows if any(c.strip() for c in r)]
    multi = None
    if "path" in fields and (opts.findings or "label" not in fields):
        # several findings per image: the findings named, else (no label column) those found;
        # a re-scan of a saved run names them through class_names
        named = opts.findings or (tuple(class_names) if class_names is not None else None)
        multi = finding_columns(header, rows, named, where)
        if len(multi.findings) < (1 if named else 2):
            multi = None
    for needed in ("path", "label"):
        if needed not in fields and not (needed == "label" and multi is not None):
            raise DatasetError(
                f"Manifest {where!r} has no {needed!r} column (columns found: "
                f"{[h[:40] for h in header[:20]]}). Required: path,label (or path plus one "
                "column per finding, values 1/0/-1/blank, for several findings per image); "
                "optional: patient_id,split."
            )
    if not rows:
        raise DatasetError(f"Manifest {where!r} has no rows. Add one row per image.")

    def col(row: list[str], name: str) -> str:
        i = fields.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    return rows, col, multi


def _manifest_classes(
    rows: list[list[str]],
    col: Callable[[list[str], str], str],
    class_names: Sequence[str] | None,
    where: str,
) -> list[str]:
    """The classes of a single-label manifest: its labels sorted, or ``class_names`` checked."""
    labels_found = sorted({col(r, "label") for r in rows} - {""})
    if class_names is None:
        check_label_variants(labels_found, f"Manifest {where!r}")
        return labels_found
    unknown = sorted(set(labels_found) - set(class_names))
    if unknown:
        raise DatasetError(
            f"Manifest {where!r} has labels {unknown[:10]} that are not in 'class_names' "
            f"{list(class_names)}. Add them to class_names or fix the manifest."
        )
    return list(class_names)


def _manifest_samples(
    csv_path: Path,
    rows: list[list[str]],
    col: Callable[[list[str], str], str],
    classes: list[str],
    salt: bytes | None,
) -> tuple[list[Sample], list[SkippedFile]]:
    """One sample per usable row; no path or label, repeats and two-label files are skipped."""
    root = csv_path.parent
    where = display_path(csv_path)
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    # real path (links and ./ spellings resolved) -> (line, label, sample position) of its first row
    seen: dict[str, tuple[int, str, int]] = {}
    two_labels: set[int] = set()  # sample positions of files listed with another label too
    for lineno, row in enumerate(rows, start=2):
        raw_path, label = col(row, "path"), col(row, "label")
        line_uid = make_uid(f"{csv_path.name}:{lineno}", salt)
        if not raw_path or not label:
            skipped.append(
                SkippedFile(
                    f"{csv_path}:{lineno}", "manifest row without a path or a label", line_uid
                )
            )
            continue
        try:
            f = manifest_row_path(raw_path, root)
            rel = relative_posix(f, root)
            real = os.path.realpath(f)
        except (OSError, ValueError) as exc:
            skipped.append(
                SkippedFile(
                    f"{csv_path}:{lineno}",
                    f"manifest line {lineno}: unusable path ({type(exc).__name__})",
                    line_uid,
                )
            )
            continue
        uid = make_uid(rel, salt)
        if real in seen:
            first_line, first_label, pos = seen[real]
            if first_label == label:
                reason = f"listed twice in the manifest (line {lineno}, first on line {first_line})"
            else:
                reason = (
                    f"the same file is listed with two labels (line {first_line}: {first_label!r}, "
                    f"line {lineno}: {label!r}); not used under either"
                )
                two_labels.add(pos)
            skipped.append(SkippedFile(f"{csv_path}:{lineno}", reason, line_uid))
            continue
        seen[real] = (lineno, label, len(samples))
        split = _manifest_split(col(row, "split"), where, lineno)
        samples.append(
            Sample(
                path=str(f),
                label=index[label],
                uid=uid,
                split=split,
                patient_id=hash_patient_id(col(row, "patient_id") or None, salt),
            )
        )
    for pos in sorted(two_labels):
        s = samples[pos]
        skipped.append(
            SkippedFile(
                s.path, "the same file is listed with two labels in the manifest; not used", s.uid
            )
        )
    samples = [s for i, s in enumerate(samples) if i not in two_labels]
    return samples, skipped


def _manifest_split(raw: str, where: str, lineno: int) -> str | None:
    """The split a manifest row's ``split`` cell names (None when empty); DatasetError otherwise."""
    key = raw.lower()
    if key not in SPLIT_VALUES:
        raise DatasetError(
            f"Manifest {where!r} line {lineno}: split {key[:40]!r} is not one of "
            "train/val/valid/test (or empty). Fix the split column."
        )
    return SPLIT_VALUES[key]


def _manifest_paths(
    csv_path: Path, rows: list[list[str]], col: Callable[[list[str], str], str], salt: bytes | None
) -> tuple[list[tuple[int, list[str], Path, str]], list[SkippedFile]]:
    """(line number, row, absolute path, uid) of every usable manifest row, and the rows skipped
    (no path, an unusable path, listed twice)."""
    root = csv_path.parent
    out, skipped, seen = [], [], set()
    for lineno, row in enumerate(rows, start=2):
        raw_path = col(row, "path")
        line_uid = make_uid(f"{csv_path.name}:{lineno}", salt)
        where = f"{csv_path}:{lineno}"
        if not raw_path:
            skipped.append(SkippedFile(where, "manifest row without a path", line_uid))
            continue
        try:
            f = manifest_row_path(raw_path, root)
            rel = relative_posix(f, root)
        except (OSError, ValueError) as exc:
            reason = f"manifest line {lineno}: unusable path ({type(exc).__name__})"
            skipped.append(SkippedFile(where, reason, line_uid))
            continue
        if str(f) in seen:
            reason = f"listed twice in the manifest (line {lineno})"
            skipped.append(SkippedFile(where, reason, line_uid))
            continue
        seen.add(str(f))
        out.append((lineno, row, f, make_uid(rel, salt)))
    return out, skipped


def _manifest_findings(
    csv_path: Path,
    rows: list[list[str]],
    cols: FindingColumns,
    uncertain: str,
    col: Callable[[list[str], str], str],
    salt: bytes | None,
) -> ScanResult:
    """The samples of a manifest with one column per finding (see :mod:`medtl.data._multilabel`)."""
    where = display_path(csv_path)
    findings = [name for name, _ in cols.findings]
    tally = LabelTally()
    usable, skipped = _manifest_paths(csv_path, rows, col, salt)
    samples: list[Sample] = []
    for lineno, row, f, uid in usable:
        split = _manifest_split(col(row, "split"), where, lineno)
        samples.append(
            Sample(
                path=str(f),
                label=0,
                uid=uid,
                split=split,
                patient_id=hash_patient_id(col(row, "patient_id") or None, salt),
                targets=read_targets(row, lineno, cols, uncertain, where, tally),
            )
        )
    if cols.ignored:
        logger.info("Manifest %s: columns not used as findings: %s", where, cols.ignored)
    return ScanResult(
        str(csv_path.parent), "csv", findings, samples, skipped, task_kind=MULTILABEL,
        labelling=labelling_record(cols, findings, uncertain, tally),
    )  # fmt: skip


# Labels of a .npz above this are not class indices (a MedMNIST file has at most a few dozen).
MAX_NPZ_CLASSES = 1000


@register_source("npz", file_patterns=("*.npz",), images_in_file=True, reads_findings=True)
def _scan_npz(
    npz_path: Path,
    class_names: Sequence[str] | None,
    salt: bytes | None = None,
    *,
    labels: LabelOptions | None = None,
) -> ScanResult:
    from medtl.errors import ImageReadError
    from medtl.io import read_npz

    where = display_path(npz_path)
    try:
        arrays = read_npz(npz_path)
    except ImageReadError as exc:
        raise DatasetError(f"Cannot read {where!r}: {exc.reason}") from exc
    if any(lab.ndim == 2 for _, lab in arrays.values()):
        return _npz_findings(npz_path, arrays, class_names, labels or LabelOptions())
    limit = len(class_names) if class_names is not None else MAX_NPZ_CLASSES
    n_classes = 0
    for _, labels in arrays.values():
        ok = labels[(labels >= 0) & (labels < limit)]
        if len(ok):
            n_classes = max(n_classes, int(ok.max()) + 1)
    classes = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    offset = 0
    # Sample.index is the position in the concatenation of the file's splits in SPLITS order, so one
    # integer finds the image again (see npz_image_index).
    for sp in npz_split_order(arrays):
        _, labels = arrays[sp]
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        bad_set = set(bad.tolist())
        for i, lab in enumerate(labels.tolist()):
            if i in bad_set:
                skipped.append(
                    SkippedFile(
                        str(npz_path),
                        f"{sp}_labels[{i}] = {lab} is not a class index "
                        f"(0..{len(classes) - 1}); image {sp}/{i} not used"
                        + ("" if class_names is not None or lab < 0 else "; give class_names"),
                        f"{sp}/{i}",
                    )
                )
                continue
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
    if skipped:
        logger.warning(
            "%d image(s) of the .npz have labels outside the class range; see Dataset.skipped",
            len(skipped),
        )
    return ScanResult(str(npz_path.parent), "npz", classes, samples, skipped)


def _npz_names(npz_path: Path) -> list[str] | None:
    """Finding names stored in the ``.npz`` itself (a ``findings`` or ``label_names`` key)."""
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            for key in ("findings", "label_names"):
                if key in z.files and z[key].ndim == 1 and z[key].dtype.kind in "US":
                    return [str(v) for v in z[key].tolist()]
    except (OSError, ValueError):
        return None
    return None


def _npz_findings(
    npz_path: Path, arrays: dict, class_names: Sequence[str] | None, opts: LabelOptions
) -> ScanResult:
    """The samples of a ``.npz`` whose labels are (N, K): K findings per image."""
    where = display_path(npz_path)
    widths = {lab.shape[1] if lab.ndim == 2 else 1 for _, lab in arrays.values()}
    if len(widths) != 1:
        raise DatasetError(
            f"{where!r}: the splits' labels have different widths {sorted(widths)}; every split "
            "needs the same K finding columns."
        )
    k = widths.pop()
    names = list(opts.findings or class_names or _npz_names(npz_path) or [])
    names = names or [f"finding_{j}" for j in range(k)]
    if len(names) != k:
        raise DatasetError(
            f"{where!r} has {k} finding columns but {len(names)} finding names were given "
            f"({names[:20]}). Give one name per column (data.findings / --findings)."
        )
    u = uncertain_value(opts.uncertain)
    samples: list[Sample] = []
    uncertain: dict[str, int] = {}
    offset = 0
    for sp in npz_split_order(arrays):
        _, lab = arrays[sp]
        y = np.where(lab == -1.0, u, lab)
        for j, name in enumerate(names):
            c = int(np.sum(lab[:, j] == -1.0))
            if c:
                uncertain[name] = uncertain.get(name, 0) + c
        for i in range(len(y)):
            samples.append(
                Sample(
                    path=str(npz_path),
                    label=0,
                    uid=f"{sp}/{i}",
                    split=sp,
                    index=offset + i,
                    targets=tuple(float(v) for v in y[i]),
                )
            )
        offset += len(lab)
    tally = LabelTally(uncertain=uncertain)
    return ScanResult(
        str(npz_path.parent), "npz", names, samples, task_kind=MULTILABEL,
        labelling=labelling_record(None, names, opts.uncertain, tally),
    )  # fmt: skip


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
