"""Plain data types shared by dataset sources, the image cache and the strategies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled image of a dataset.

    Attributes:
        path: absolute path of the file (for a MedMNIST ``.npz``: the ``.npz`` file).
        label: class index into ``Dataset.classes`` (0 for a multi-label sample: see ``targets``).
        uid: de-identified id, stable across runs of a project: a keyed hash (HMAC with the project's
            salt) of the path relative to the dataset root; ``"<split>/<i>"`` inside a ``.npz``.
        split: ``"train"``, ``"val"``, ``"test"`` or None (not yet assigned).
        patient_id: keyed hash (``pid-...``) of the id given by the user's manifest or found by
            ``patient_id_pattern`` (never taken from DICOM headers, never stored in clear).
        index: position inside a container file (``.npz``), else None.
        attributes: subgroup attributes (``{"sex": "F", "age": "40-59", ...}``, see
            :mod:`medtl.subgroups`): group names only, never identifiers or exact ages. Empty unless
            subgroups were asked for. Not part of the sample's identity (hash, equality).
        targets: several findings per image: 1.0 / 0.0 / NaN (not labelled) per finding of
            ``Dataset.classes``; None for single-label data (see :mod:`medtl.data._multilabel`).
    """

    path: str
    label: int
    uid: str
    split: str | None = None
    patient_id: str | None = None
    index: int | None = None
    attributes: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    targets: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why (shown to the user and counted in reports).

    Attributes:
        path: the file (identifying: keep it out of outputs; use ``uid`` there).
        reason: why, in a short sentence that never contains the path or header values.
        uid: de-identified id of the file (keyed hash, like ``Sample.uid``); None if unknown.
    """

    path: str
    reason: str
    uid: str | None = None


@dataclass
class Dataset:
    """A scanned dataset: class names, samples (with splits once assigned) and the files not used.

    Every file under the dataset's folder is a sample, a ``skipped`` file (meant as data but
    unusable: undecodable, not a regular file, outside a class folder, label out of range) or an
    ``ignored`` one (clutter not used on purpose: hidden files, documentation at the root), each
    with a reason.
    """

    root: str
    source: str  # "folder_splits" | "folder_classes" | "csv" | "npz" | "synthetic"
    classes: list[str]
    samples: list[Sample]
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: list[SkippedFile] = field(default_factory=list)
    salt_check: str | None = None  # which salt keyed the uids (a check value, not the salt)
    #: "multilabel" when every image carries several findings (``Sample.targets``), else None
    task_kind: str | None = None
    #: how multi-label targets were read: finding and ignored columns, uncertain policy, counts
    labelling: dict | None = None

    def split(self, name: str) -> list[Sample]:
        """Samples assigned to split ``name`` (``train``/``val``/``test``)."""
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Counts per split and class name, e.g. ``{"train": {"NORMAL": 10, ...}, ...}``; for
        several findings per image, the positives of each finding (see :meth:`finding_counts`)."""
        out: dict[str, dict[str, int]] = {}
        if self.task_kind == "multilabel":
            return {
                sp: {f: c["pos"] for f, c in per.items()}
                for sp, per in self.finding_counts().items()
            }
        for sp in sorted({s.split or "unassigned" for s in self.samples}):
            c = Counter(s.label for s in self.samples if (s.split or "unassigned") == sp)
            out[sp] = {name: int(c.get(i, 0)) for i, name in enumerate(self.classes)}
        return out

    def finding_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per split and finding: positives, negatives and unlabelled images (multi-label data)."""
        from medtl.data._multilabel import finding_counts, targets_of

        out = {}
        for sp in sorted({s.split or "unassigned" for s in self.samples}):
            part = [s for s in self.samples if (s.split or "unassigned") == sp]
            out[sp] = finding_counts(targets_of(part, len(self.classes)), self.classes)
        return out


@dataclass
class PreparedImages:
    """Decoded, resized images ready for a model.

    Attributes:
        pixels: uint8 array (N, C, S, S), C = 1 (grey) or 3 (colour); 0..255 maps the [0, 1] intensity
            contract linearly.
        labels: int64 array (N,) of class indices (-1 when unknown, e.g. for prediction); for
            several findings per image a float array (N, K) of 1 / 0 / NaN (not labelled).
        uids: de-identified id per image.
        keys: content key per image (hash of file bytes + read options + size), used by embedding caches.
        classes: class names.
        skipped: files that could not be decoded.
        preprocessing: how the images were made (image_size, channels, read_options); a fitted model
            records it so that it is served images prepared the same way. None when built by hand.
        attributes: subgroup attributes per image (see ``Sample.attributes``); None when no
            subgroups were asked for.
        cache_info: how many images the decoded-image cache served (``from_cache``) and how many
            were decoded (``computed``), under which key ``version``; None when built by hand.
        task_kind: ``"multilabel"`` for several findings per image (``classes`` are then the
            findings); None for single-label images (the kind follows from the classes).
    """

    pixels: np.ndarray
    labels: np.ndarray
    uids: list[str]
    keys: list[str]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    preprocessing: dict | None = None
    attributes: list[dict[str, str]] | None = None
    cache_info: dict | None = None
    task_kind: str | None = None
    #: several findings per image: how the labels were read (uncertain policy; see Dataset)
    labelling: dict | None = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def subset(self, idx: np.ndarray | list[int]) -> PreparedImages:
        """A new PreparedImages with only the rows in ``idx`` (no copy of skipped list semantics)."""
        idx = np.asarray(idx, dtype=np.int64)
        return PreparedImages(
            pixels=self.pixels[idx],
            labels=self.labels[idx],
            uids=[self.uids[i] for i in idx],
            keys=[self.keys[i] for i in idx],
            classes=list(self.classes),
            skipped=list(self.skipped),
            preprocessing=self.preprocessing,
            attributes=None if self.attributes is None else [self.attributes[i] for i in idx],
            task_kind=self.task_kind,
            labelling=self.labelling,
        )
