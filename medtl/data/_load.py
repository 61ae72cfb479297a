"""``load_dataset``: scan a source, verify every file decodes, check class counts, complete the splits."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from medtl._options import check_range
from medtl.data._ids import hash_patient_id, salt_check
from medtl.data._multilabel import (
    MULTILABEL,
    LabelOptions,
    check_finding_counts,
    drop_findings,
    is_multilabel,
    targets_of,
    training_exclusions,
)
from medtl.data._sources import ScanResult, scan_source, source_info
from medtl.data._splits import assign_splits, listing_key
from medtl.data._types import Dataset, Sample, SkippedFile
from medtl.errors import ConfigError, DatasetError, ImageReadError
from medtl.tasks import task_for

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def read_with_options(path: str, read_options: dict[str, Any] | None) -> tuple[Any, dict]:
    """Call ``medtl.io.read_image(path, **read_options)``; bad options become a ConfigError."""
    from medtl.io import read_image

    try:
        return read_image(path, **(read_options or {}))
    except TypeError as exc:
        if read_options and "argument" in str(exc):
            raise ConfigError(
                f"'read_options' {read_options} are not all arguments of medtl.io.read_image "
                f"({exc}). Use e.g. {{'window': 'header', 'percentiles': (0.5, 99.5)}}."
            ) from exc
        raise


def failure_reason(exc: BaseException) -> str:
    """Short reason for a file that could not be read (never the path or header contents)."""
    from medtl._fileio import UnsafeFileError

    if isinstance(exc, ImageReadError | UnsafeFileError):
        return exc.reason
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image; free memory or leave the file out"
    if isinstance(exc, OSError):
        return f"cannot read the file ({exc.strerror or type(exc).__name__})"
    # the message of an unexpected error may quote the path or header values: keep its type only
    return f"unexpected {type(exc).__name__} while reading"


def map_maybe_threaded(
    fn: Callable[[T], R], items: Sequence[T], num_workers: int, desc: str, progress: bool
) -> Iterator[R]:
    """``map(fn, items)`` in order, on a thread pool when ``num_workers > 0``, with a tqdm bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="img", leave=False)
    try:
        if num_workers > 0:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                for r in pool.map(fn, items):
                    bar.update(1)
                    yield r
        else:
            for item in items:
                r = fn(item)
                bar.update(1)
                yield r
    finally:
        bar.close()


def _verify(
    samples: list[Sample],
    read_options: dict[str, Any] | None,
    progress: bool,
    num_workers: int,
) -> tuple[list[Sample], list[SkippedFile]]:
    def check(s: Sample) -> str | None:
        try:
            image, meta = read_with_options(s.path, read_options)
        except ConfigError:
            raise
        except (Exception, MemoryError) as exc:
            return failure_reason(exc)
        return unusable_reason(image, meta)

    kept: list[Sample] = []
    skipped: list[SkippedFile] = []
    reasons = map_maybe_threaded(check, samples, num_workers, "verifying images", progress)
    for s, reason in zip(samples, reasons):
        if reason is None:
            kept.append(s)
        else:
            log_skip(s, reason)
            skipped.append(SkippedFile(s.path, reason, s.uid))
    return kept, skipped


def log_skip(s: Sample, reason: str) -> None:
    """Warn about a skipped image by its uid, at every verbosity: paths may carry names and record
    numbers, so the log never holds one (``--id-map FILE`` maps uids back to paths, on request)."""
    logger.warning("Skipping image %s: %s", s.uid, reason)


def unusable_reason(image: Any, meta: dict[str, Any] | None = None) -> str | None:
    """A reason when a decoded image is no data to learn from, else None.

    Constant (blank after its LUTs/window: a wrong window or an empty export), all padding but a
    few pixels, a side under 8 px or an extreme aspect ratio (see ``medtl.io.flag_unusable``).
    ``meta`` is what ``read_image`` returned; None: the image is checked here (a .npz image).
    """
    if meta is None:
        from medtl.io import flag_unusable

        meta = {}
        flag_unusable(image, meta)
    if meta.get("unusable_reason"):
        return str(meta["unusable_reason"])
    if meta.get("constant"):
        return str(meta.get("constant_reason") or "constant image (every pixel the same value)")
    return None


def check_class_counts(classes: list[str], samples: Sequence[Sample], min_per_class: int) -> None:
    """Raise DatasetError when there are fewer than 2 classes or a class has too few images (for
    several findings per image: :func:`medtl.data._multilabel.check_finding_counts`)."""
    if is_multilabel(samples):
        check_finding_counts(classes, samples, min_per_class)
        return
    counts = Counter(s.label for s in samples)
    if len(classes) < 2:
        raise DatasetError(
            f"Found {len(classes)} class(es): {classes}. Classification needs at least 2 classes: "
            "add a folder (or manifest label) per class, e.g. normal/ and abnormal/."
        )
    low = [
        (name, counts.get(i, 0))
        for i, name in enumerate(classes)
        if counts.get(i, 0) < min_per_class
    ]
    if low:
        detail = ", ".join(f"class {name!r} has {n}" for name, n in low)
        raise DatasetError(
            f"Too few readable images: {detail} (at least min_per_class={min_per_class} needed per "
            "class). Add images to these classes, merge or drop them, or lower min_per_class."
        )


def _put_positive_last(
    classes: list[str], samples: list[Sample], positive: str
) -> tuple[list[str], list[Sample]]:
    """Reorder two classes so that ``positive`` is index 1 (metrics take index 1 as the finding)."""
    if positive not in classes:
        raise DatasetError(
            f"The 'positive_class' parameter is {positive!r}, but the dataset's classes are "
            f"{classes}. Use one of those names."
        )
    if task_for(classes).positive_class is None:
        raise ConfigError(
            f"The 'positive_class' parameter applies to two-class data; this dataset has "
            f"{len(classes)} classes ({classes}). Remove positive_class."
        )
    if classes[1] == positive:
        return classes, samples
    return [classes[1], classes[0]], [replace(s, label=1 - s.label) for s in samples]


def compile_patient_id_pattern(
    pattern: str, field: str = "'patient_id_pattern' parameter", hint: str = ""
) -> re.Pattern[str]:
    """``pattern`` compiled; a ConfigError naming ``field`` when it is not a regular expression."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"The {field} is not a valid regular expression ({exc}). Got {pattern!r}.{hint}"
        ) from None


def patient_ids_from_names(
    samples: Sequence[Sample], pattern: str, salt: bytes | None = None
) -> list[Sample]:
    """Set ``patient_id`` from each file name with the regular expression ``pattern``.

    The first non-empty group of the match (or the whole match) becomes the id, stored as a keyed
    hash (see :func:`medtl.data.hash_patient_id`). Samples that already have one (from a manifest)
    keep it. Names that do not match stay without an id and count as their own patient; how many is
    logged (the names are not: they may carry identifiers).
    """
    rx = compile_patient_id_pattern(pattern)
    out, unmatched = [], 0
    for s in samples:
        if s.patient_id:
            out.append(s)
            continue
        m = rx.search(Path(s.path).name)
        pid = None
        if m:
            pid = next((g for g in m.groups() if g), None) or m.group(0) or None
        unmatched += pid is None
        out.append(replace(s, patient_id=hash_patient_id(pid, salt)) if pid else s)
    n_ids = len({s.patient_id for s in out if s.patient_id})
    logger.info("patient_id_pattern: %d patient(s) found in %d file name(s)", n_ids, len(out))
    if unmatched:
        logger.warning(
            "patient_id_pattern matched no patient id in %d of %d file name(s); those images count "
            "as one patient each. Check the pattern against your file names.",
            unmatched,
            len(out),
        )
    return out


def load_dataset(
    path: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    min_per_class: int = 5,
    read_options: dict[str, Any] | None = None,
    verify: bool = True,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
    num_workers: int = 0,
    patient_id_pattern: str | None = None,
    positive_class: str | None = None,
    salt: bytes | None = None,
    cache_dir: str | Path | None = None,
    subgroups: Sequence[str] | str | None = None,
    findings: Sequence[str] | None = None,
    uncertain: str = "ignore",
) -> Dataset:
    """Load a labelled image dataset and give every image a train/val/test split.

    The layout is detected: a folder with ``train/`` (optional ``val/``/``valid/``, ``test/``), a
    folder of class folders, a CSV manifest (``path,label[,patient_id][,split]``) or a MedMNIST
    ``.npz``. Formats inside are detected by content (DICOM, PNG, JPEG, TIFF). Missing splits are
    carved seeded, stratified by class and grouped by patient when the manifest gives patient ids.

    Args:
        path: dataset folder, ``.csv`` manifest or ``.npz`` file.
        val_fraction: share carved for validation when there is no val split.
        test_fraction: share carved for testing when there is no test split.
        seed: random seed of the carving (same seed, same split).
        min_per_class: fewest readable images a class may have.
        read_options: keyword arguments for ``medtl.io.read_image`` used by the verification.
        verify: decode every file once; files that fail are listed in ``Dataset.skipped``.
        progress: show a progress bar while verifying.
        class_names: names for a ``.npz``'s integer labels (default "0", "1", ...), or the full
            label list (and order) of a CSV manifest.
        num_workers: threads used to verify files (0: in this thread).
        patient_id_pattern: regular expression searched in each file's name; its first non-empty
            group (or the whole match) is the patient id, so carved splits keep a patient's images
            together. Only for samples without a manifest ``patient_id``. Example for Kermany's
            ``person23_bacteria_87.jpeg`` / ``IM-0115-0001.jpeg``:
            ``^(person\\d+)_|^((?:NORMAL2-)?IM-\\d+)-`` (see configs/kermany_*.yaml).
        positive_class: for two classes, the class that is the finding (the "positive" of AUROC,
            sensitivity, PPV, Grad-CAM). It becomes class index 1. By default the second class in
            sorted order is positive (``NORMAL``/``PNEUMONIA`` needs nothing; BreastMNIST's
            ``malignant``/``benign`` needs ``positive_class="malignant"``).
        salt: the project's secret (``medtl.data.project_salt(cache_dir)``) keying the
            de-identified uids and patient-id hashes, so they are stable across the project's runs.
            None: a random per-process salt (uids then hold only within this process).
        cache_dir: the project's cache folder; a patient- or duplicate-grouped split (seconds for
            thousands of groups) is memoised there and read back by the next run (None: computed).
        subgroups: attribute names (``"sex,age,view"``) set on every sample's ``attributes`` from
            the manifest's columns of those names or the DICOM headers (see
            :func:`medtl.subgroups.attach_subgroups`); ``site`` is ``development`` unless a
            manifest column gives it.
        findings: several findings per image: the manifest columns to read as findings (default:
            with no ``label`` column, every column of 1/0/-1/blank values that is not metadata).
            Splits are then stratified over every finding (iterative stratification), and a
            finding with no positive or no negative in the training split is excluded with a
            warning (listed in ``Dataset.labelling["excluded"]`` with its counts).
        uncertain: what an uncertain label (``-1``) becomes: ``ignore`` (not labelled, the
            default), ``positive`` or ``negative`` (recorded in ``Dataset.labelling``).

    Returns:
        The Dataset, with ``split`` set on every sample. Every file under the dataset is a sample,
        a ``skipped`` file or an ``ignored`` one, each with a reason (see :class:`Dataset`).

    Raises:
        DatasetError: unknown layout, fewer than 2 classes or a class under ``min_per_class``.

    Example:
        >>> ds = load_dataset("chest_xray/", seed=1)
        >>> ds.counts()["train"]
        {'NORMAL': 1140, 'PNEUMONIA': 3294}
    """
    _check_load_args(val_fraction, test_fraction, min_per_class)
    scan = _scan(
        path, class_names, salt, LabelOptions(tuple(findings) if findings else None, uncertain)
    )
    samples, skipped = _listed_samples(scan, path, subgroups), list(scan.skipped)
    classes = list(scan.classes)
    _check_positive_class(classes, positive_class, multilabel=scan.task_kind == MULTILABEL)
    samples, bad = _readable_samples(
        samples, scan, patient_id_pattern, salt, verify, read_options, progress, num_workers
    )
    skipped.extend(bad)
    if skipped:
        logger.warning("%d file(s) skipped (see Dataset.skipped)", len(skipped))
    check_class_counts(classes, samples, min_per_class)
    samples = assign_splits(
        samples,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        cache_dir=cache_dir,
    )
    return _finished_dataset(scan, classes, samples, skipped, positive_class, salt)


def _check_load_args(val_fraction: float, test_fraction: float, min_per_class: int) -> None:
    """Refuse split fractions or a class minimum that cannot work, before anything is read."""
    check_range("val_fraction", val_fraction, 0.0, 0.9)
    check_range("test_fraction", test_fraction, 0.0, 0.9)
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1. Got {val_fraction} + {test_fraction}."
        )
    check_range("min_per_class", min_per_class, 1)


def _scan(
    path: str | Path, class_names: Sequence[str] | None, salt: bytes | None, opts: LabelOptions
) -> ScanResult:
    """The source's scan of ``path``, with what it found logged."""
    scan = scan_source(path, class_names, salt, labels=opts)
    noun = task_for(scan.classes, scan.task_kind).label_noun
    logger.info(
        "Found %d image(s) with %d %s (%s layout)",
        len(scan.samples),
        len(scan.classes),
        noun + ("(es)" if noun.endswith("s") else "(s)"),
        scan.source,
    )
    if scan.ignored:
        logger.info("%d file(s) ignored (hidden or documentation; see Dataset.ignored)",
                    len(scan.ignored))  # fmt: skip
    return scan


def _listed_samples(
    scan: ScanResult, path: str | Path, subgroups: Sequence[str] | str | None
) -> list[Sample]:
    """The scanned samples in path order, with their subgroup attributes when asked for."""
    # path order, whatever order the source listed them in (a manifest's rows, a copied folder):
    # the same files give the same split and the same numbers
    samples = sorted(scan.samples, key=listing_key)
    if subgroups:
        from medtl.data._attributes import attach_subgroups
        from medtl.subgroups import parse_subgroups

        manifest = Path(path).expanduser() if scan.source == "csv" else None
        samples = attach_subgroups(samples, parse_subgroups(subgroups), manifest=manifest)
    return samples


def _check_positive_class(
    classes: list[str], positive_class: str | None, *, multilabel: bool
) -> None:
    """Refuse a positive class that is not one of two classes, before any decoding."""
    if positive_class is not None and multilabel:
        raise ConfigError(
            f"The 'positive_class' parameter applies to two-class data; this dataset has several "
            f"findings per image ({classes[:14]}). Remove positive_class."
        )
    if positive_class is not None:
        _put_positive_last(classes, [], positive_class)  # a wrong name fails before any decoding


def _readable_samples(
    samples: list[Sample],
    scan: ScanResult,
    patient_id_pattern: str | None,
    salt: bytes | None,
    verify: bool,
    read_options: dict[str, Any] | None,
    progress: bool,
    num_workers: int,
) -> tuple[list[Sample], list[SkippedFile]]:
    """Samples with their patient ids from file names, and (when verifying) those that decode."""
    if patient_id_pattern:
        if source_info(scan.source).images_in_file:
            raise ConfigError(
                "The 'patient_id_pattern' parameter reads patient ids from file names, but a .npz "
                "holds every image in one file. Remove patient_id_pattern for this dataset."
            )
        samples = patient_ids_from_names(samples, patient_id_pattern, salt)
    if verify and not source_info(scan.source).images_in_file:
        return _verify(samples, read_options, progress, num_workers)
    return samples, []


def _finished_dataset(
    scan: ScanResult,
    classes: list[str],
    samples: list[Sample],
    skipped: list[SkippedFile],
    positive_class: str | None,
    salt: bytes | None,
) -> Dataset:
    """The Dataset once split: the positive class made index 1, unlearnable findings dropped."""
    # after splitting: the choice never moves an image between splits
    if positive_class is not None:
        classes, samples = _put_positive_last(classes, samples, positive_class)
    labelling = dict(scan.labelling) if scan.labelling else None
    if (
        scan.task_kind == MULTILABEL
        and labelling is not None
        and any(s.split != "train" for s in samples)
    ):
        # only when a training split is carved or given: a dataset read whole (evaluation, an
        # external test set) keeps every finding named
        classes, samples = _exclude_unlearnable(classes, samples, labelling)
    ds = Dataset(
        root=scan.root,
        source=scan.source,
        classes=classes,
        samples=samples,
        skipped=skipped,
        ignored=list(scan.ignored),
        salt_check=salt_check(salt),
        task_kind=scan.task_kind,
        labelling=labelling,
    )
    logger.info("Split counts: %s", ds.counts())
    return ds


def _exclude_unlearnable(
    classes: list[str], samples: list[Sample], labelling: dict[str, Any]
) -> tuple[list[str], list[Sample]]:
    """Findings with no positive or no negative in the training split cannot be learned: they are
    excluded (not refused, so that one rare finding does not stop the other thirteen) with a
    warning naming each with its counts, recorded in ``labelling["excluded"]``."""
    import warnings

    train = [s for s in samples if s.split == "train"]
    excluded = training_exclusions(targets_of(train, len(classes)), classes)
    labelling["excluded"] = excluded
    if not excluded:
        return classes, samples
    if len(excluded) == len(classes):
        raise DatasetError(
            f"No finding has both positive and negative images in the training split "
            f"({excluded}). Add labelled images."
        )
    detail = ", ".join(f"{f!r} ({c['pos']} pos / {c['neg']} neg)" for f, c in excluded.items())
    warnings.warn(
        f"{len(excluded)} finding(s) excluded: no positive or no negative image in the training "
        f"split: {detail}.",
        UserWarning,
        stacklevel=4,
    )
    classes, samples = drop_findings(classes, samples, list(excluded))
    labelling["findings"] = list(classes)
    return classes, samples
