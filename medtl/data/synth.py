"""Synthetic chest-radiograph phantom written as real DICOM files (the built-in demo and test dataset).

Two classes, ``normal`` and ``opacity`` (1-3 round-ish opacities in the lung fields). ``difficulty``
shrinks and fades the lesions. "Scanner profiles" store the same density image in different ways
(MONOCHROME1 vs MONOCHROME2, 12 vs 16 bits stored, rescale slope/intercept, window tags) so every
reader path runs, while ``medtl.io.read_image`` gives the same picture for all of them.

The headers carry fake patient identifiers on purpose (``PatientName="Phantom^Patient^<n>"``,
``PatientID="PHI-<6 digits>"``, a birth date) so tests can prove they never leak. They also carry
plausible subgroup attributes: ``PatientSex`` (F/M) and ``PatientAge`` (``"018Y"``-``"095Y"``, so
ages above 89 occur) per patient, ``ViewPosition`` (PA, about a quarter AP) per image and a
``Manufacturer``/``ManufacturerModelName`` per scanner profile. ``faint_group="sex=F"`` makes the
lesions of that group fainter (``faint_factor``), planting a subgroup gap that
``medtl.metrics.subgroup_report`` should find. ``manifest.csv``
(``path,label,patient_id``) uses de-identified codes ``P0001``... with two images per patient.

Example:
    >>> from medtl.data.synth import make_phantom
    >>> root = make_phantom("phantom/", n_per_class=40, difficulty=0.3)
    >>> ds = medtl.load_dataset(root / "manifest.csv")  # patient-level splits
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtl._fileio import atomic_write_json, atomic_write_text, csv_record
from medtl._options import check_range, look_up_option
from medtl.data._phantom_image import Anatomy, draw_anatomy, render_chest
from medtl.errors import ConfigError

__all__ = [
    "FINDING_ZONES",
    "PROFILES",
    "ScannerProfile",
    "default_demo_dataset",
    "make_multilabel_phantom",
    "make_phantom",
]

logger = logging.getLogger(__name__)

PHANTOM_VERSION = 2  # 2: subgroup attributes in the headers
#: the phantom folder's layout: its parameters (written last: present means complete) and its
#: manifest (patient ids, so no patient spans splits). The one owner of these names.
PHANTOM_INFO_FILE = "phantom.json"
PHANTOM_MANIFEST_FILE = "manifest.csv"
CLASSES = ("normal", "opacity")  # sorted order makes the positive class index 1
IMAGES_PER_PATIENT = 2
_SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))
#: Most phantom images per class, and most bytes of pixel data the whole phantom may write: a sane
#: demo or test set is hundreds of images; 1e9 per class would fill the disk and memory.
MAX_PHANTOM_PER_CLASS = 10_000
MAX_PHANTOM_BYTES = 4 * 1024**3


def check_phantom_size(n_per_class: int, size: int = 256, *, field: str = "n_per_class") -> None:
    """Refuse a phantom above :data:`MAX_PHANTOM_PER_CLASS` images per class or
    :data:`MAX_PHANTOM_BYTES` on disk, before anything is written (``field`` names the setting)."""
    check_range(field, n_per_class, 1)
    if n_per_class > MAX_PHANTOM_PER_CLASS:
        raise ConfigError(
            f"The {field!r} setting is {n_per_class}, above the limit of {MAX_PHANTOM_PER_CLASS} "
            "synthetic images per class (the phantom is for demos and tests). Use fewer, e.g. 40 "
            "to 1000."
        )
    total = n_per_class * len(CLASSES) * size * size * 2  # 16-bit pixels
    if total > MAX_PHANTOM_BYTES:
        raise ConfigError(
            f"The {field!r} setting is {n_per_class} at {size} px: {total / 1024**3:.1f} GiB of "
            f"DICOM files, above the {MAX_PHANTOM_BYTES / 1024**3:.0f} GiB limit. Use fewer or "
            "smaller images."
        )


@dataclass(frozen=True)
class ScannerProfile:
    """How a density image d in [0, 1] is stored.

    The modality value is ``slope * stored + intercept``; the window (centre, width) spans the
    modality values of d = 0 and d = 1; MONOCHROME1 stores ``1 - d`` (bright = low value).
    """

    photometric: str
    bits_stored: int
    slope: float = 1.0
    intercept: float = 0.0
    modality: str = "DX"
    manufacturer: str = "medtl phantom"
    model: str = "phantom"

    @property
    def max_stored(self) -> int:
        return (1 << self.bits_stored) - 1

    def encode(self, density: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Return (uint16 stored values, window centre, window width) for a density image."""
        d = 1.0 - density if self.photometric == "MONOCHROME1" else density
        stored = np.rint(d * self.max_stored).astype(np.uint16)
        lo = self.intercept
        hi = self.slope * self.max_stored + self.intercept
        # DICOM linear window: x = c - 0.5 - (w - 1) / 2 maps to 0, c - 0.5 + (w - 1) / 2 to 1
        width = hi - lo + 1.0
        centre = (lo + hi) / 2.0 + 0.5
        return stored, centre, width


PROFILES: dict[str, ScannerProfile] = {
    "mono2_12bit": ScannerProfile(
        "MONOCHROME2", 12, manufacturer="Acme Radiography", model="DR-12"
    ),
    "mono1_16bit": ScannerProfile(
        "MONOCHROME1", 16, modality="CR", manufacturer="Phantom CR Systems", model="CR-16"
    ),
    "mono2_rescale": ScannerProfile(
        "MONOCHROME2",
        12,
        slope=0.5,
        intercept=-1000.0,
        manufacturer="Acme Radiography",
        model="DR-R",
    ),
}
#: share of phantom images taken AP (the rest PA); ages drawn uniformly in this range (years)
AP_SHARE, AGE_RANGE = 0.25, (18, 95)


def _lesion_params(difficulty: float) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(contrast range, radius range, noise multiplier) for a difficulty in [0, 1]."""
    t = float(difficulty)
    # geometric interpolation: conspicuous at 0, faint and small at 1
    c_mid = 0.50 * (0.07 / 0.50) ** t
    r_mid = 0.12 * (0.05 / 0.12) ** t
    return (0.75 * c_mid, 1.25 * c_mid), (0.75 * r_mid, 1.25 * r_mid), 1.0 + 0.5 * t


def _dicom_bytes(
    stored: np.ndarray,
    profile: ScannerProfile,
    centre: float,
    width: float,
    *,
    uid_seed: str,
    patient_no: int,
    fake_patient_id: str,
    fake_birth_date: str,
    pixel_mm: float,
    sex: str = "O",
    age: str = "",
    view: str = "PA",
) -> bytes:
    """Serialise one uncompressed DICOM file (deterministic: UIDs derive from ``uid_seed``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dx_for_presentation = "1.2.840.10008.5.1.4.1.1.1.1"
    cr_image = "1.2.840.10008.5.1.4.1.1.1"
    sop_class = cr_image if profile.modality == "CR" else dx_for_presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.Modality = profile.modality
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientName = f"Phantom^Patient^{patient_no}"
    ds.PatientID = fake_patient_id
    ds.PatientBirthDate = fake_birth_date
    ds.PatientSex = sex
    if age:
        ds.PatientAge = age
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [round(pixel_mm, 4), round(pixel_mm, 4)]
    if profile.slope != 1.0 or profile.intercept != 0.0:
        ds.RescaleSlope = profile.slope
        ds.RescaleIntercept = profile.intercept
        ds.RescaleType = "US"
    ds.WindowCenter = round(centre, 3)
    ds.WindowWidth = round(width, 3)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def make_phantom(
    out_dir: str | Path,
    *,
    n_per_class: int = 40,
    size: int = 256,
    difficulty: float = 0.5,
    seed: int = 0,
    profiles: Sequence[str] = ("mono2_12bit", "mono1_16bit", "mono2_rescale"),
    split: bool = False,
    faint_group: str | None = None,
    faint_factor: float = 0.3,
    findings: int = 0,
    prevalence: float | Sequence[float] = 0.3,
) -> Path:
    """Write a synthetic two-class chest-radiograph DICOM dataset and return its folder.

    With ``findings=K > 0`` the phantom is multi-label instead: ``2 * n_per_class`` images, each
    with K independent findings (an opacity in one lung zone per finding, present with the
    finding's ``prevalence``), and a manifest ``path,patient_id,<finding>...`` of 1/0 columns
    (see :func:`make_multilabel_phantom`). Without it the two-class phantom is unchanged.

    Layout: ``out_dir/<class>/img_NNNN.dcm`` (or ``out_dir/<split>/<class>/...`` with ``split=True``,
    70/15/15 by patient), ``out_dir/manifest.csv`` (``path,label,patient_id`` [``,split``]) and
    ``out_dir/phantom.json`` (the parameters). Deterministic: the same arguments give the same bytes.

    Args:
        out_dir: destination folder (created; existing phantom files are overwritten).
        n_per_class: images per class (two per fake patient).
        size: image side in pixels.
        difficulty: 0 (large, high-contrast lesions) to 1 (small, faint lesions).
        seed: random seed.
        profiles: scanner profiles used in turn (names from ``PROFILES``).
        split: write train/val/test folders instead of class folders at the top.
        faint_group: ``"<attribute>=<group>"`` (``"sex=F"``, ``"age=80+"``, ``"view=AP"``,
            ``"manufacturer=Acme Radiography"``): lesions of the images in that group get their
            contrast multiplied by ``faint_factor``, so a model misses more of them there.
        faint_factor: contrast multiplier of the faint group's lesions, in (0, 1].

    Returns:
        ``Path(out_dir)``.
    """
    check_range("size", size, 32, 4096)
    check_phantom_size(n_per_class, size)
    check_range("difficulty", difficulty, 0.0, 1.0)
    if findings:
        return make_multilabel_phantom(
            out_dir, n_images=2 * n_per_class, findings=findings, prevalence=prevalence,
            size=size, difficulty=difficulty, seed=seed, profiles=profiles,
        )  # fmt: skip
    profiles = list(profiles)
    if not profiles:
        raise ConfigError(
            "The 'profiles' parameter must name at least one profile, e.g. ['mono2_12bit']."
        )
    for p in profiles:
        look_up_option("profiles", p, list(PROFILES))
    faint = _parse_faint_group(faint_group)
    check_range("faint_factor", faint_factor, 1e-3, 1.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contrast, radius, noise = _lesion_params(difficulty)
    n_patients = -(-n_per_class // IMAGES_PER_PATIENT)
    plan = _PhantomPlan(out=out, n_per_class=n_per_class, n_patients=n_patients, size=size,
                        seed=seed, profiles=profiles, split=split, faint=faint,
                        faint_factor=faint_factor, contrast=contrast, radius=radius,
                        noise=noise)  # fmt: skip
    streams = _phantom_streams(seed, len(CLASSES) * n_patients)
    rows: list[dict[str, str]] = []
    image_no = 0
    for ci, cls in enumerate(CLASSES):
        image_no = _write_class(plan, streams, ci, cls, image_no, rows)
    _write_manifest(out / PHANTOM_MANIFEST_FILE, rows)
    atomic_write_json(
        out / PHANTOM_INFO_FILE,
        {
            "generator": "medtl.data.synth.make_phantom",
            "version": PHANTOM_VERSION,
            "classes": list(CLASSES),
            "positive_class": "opacity",
            "n_per_class": n_per_class,
            "size": size,
            "difficulty": difficulty,
            "seed": seed,
            "profiles": profiles,
            "split": split,
            "faint_group": faint_group,
            "faint_factor": faint_factor if faint_group else None,
        },
    )
    logger.info("Wrote %d phantom DICOM file(s) to %s", len(rows), out)
    return out


@dataclass(frozen=True)
class _PhantomPlan:
    """What every image of a two-class phantom shares: where it goes and how it is drawn."""

    out: Path
    n_per_class: int
    n_patients: int  # per class
    size: int
    seed: int
    profiles: list[str]
    split: bool
    faint: tuple[str, str] | None
    faint_factor: float
    contrast: tuple[float, float]
    radius: tuple[float, float]
    noise: float


@dataclass
class _PhantomStreams:
    """A phantom's random streams: one per patient; identifiers and attributes from their own."""

    patient_seqs: list[np.random.SeedSequence]
    attr_rng: np.random.Generator  # also draws each image's view, in image order
    sexes: np.ndarray
    ages: np.ndarray
    fake_ids: np.ndarray


def _phantom_streams(seed: int, n_all: int) -> _PhantomStreams:
    """The streams of ``n_all`` patients, with each patient's sex, age and fake id drawn."""
    root_seq = np.random.SeedSequence(seed)
    # one child stream per patient; identifiers and subgroup attributes come from separate
    # streams so they never change images (children are fixed by index: the first ones are as in v1)
    seqs = root_seq.spawn(n_all + 2)
    patient_seqs = seqs[:n_all]
    id_rng = np.random.default_rng(seqs[n_all])
    attr_rng = np.random.default_rng(seqs[n_all + 1])
    sexes = attr_rng.choice(["F", "M"], size=n_all)
    ages = attr_rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1, size=n_all)
    fake_ids = id_rng.choice(900_000, size=n_all, replace=False) + 100_000
    return _PhantomStreams(patient_seqs, attr_rng, sexes, ages, fake_ids)


def _write_class(
    plan: _PhantomPlan,
    streams: _PhantomStreams,
    ci: int,
    cls: str,
    image_no: int,
    rows: list[dict[str, str]],
) -> int:
    """Write class ``cls``'s images and append their manifest rows; the next image number."""
    split_of = (
        _patient_splits(plan.n_patients, np.random.default_rng([plan.seed, ci, 99]))
        if plan.split
        else None
    )
    k = 0
    for p in range(plan.n_patients):
        gp = ci * plan.n_patients + p  # global patient number
        rng = np.random.default_rng(streams.patient_seqs[gp])
        anatomy = draw_anatomy(rng)
        birth = f"19{rng.integers(40, 99):02d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        for _ in range(IMAGES_PER_PATIENT):
            if k >= plan.n_per_class:
                break
            prof = PROFILES[plan.profiles[image_no % len(plan.profiles)]]
            view = "AP" if streams.attr_rng.random() < AP_SHARE else "PA"
            sex, age = str(streams.sexes[gp]), f"{int(streams.ages[gp]):03d}Y"
            header = {"sex": sex, "age": age, "view": view}
            density = _draw_density(plan, rng, anatomy, cls, _in_group(plan.faint, header, prof))
            stored, centre, width = prof.encode(density)
            data = _dicom_bytes(
                stored,
                prof,
                centre,
                width,
                uid_seed=f"medtl-phantom-{plan.seed}-{cls}-{k}",
                patient_no=gp + 1,
                fake_patient_id=f"PHI-{int(streams.fake_ids[gp]):06d}",
                fake_birth_date=birth,
                pixel_mm=430.0 / plan.size,
                **header,
            )
            sub = f"{split_of[p]}/{cls}" if split_of else cls
            rel = f"{sub}/img_{k:04d}.dcm"
            dest = plan.out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            row = {"path": rel, "label": cls, "patient_id": f"P{gp + 1:04d}"}
            if split_of:
                row["split"] = split_of[p]
            rows.append(row)
            k += 1
            image_no += 1
    return image_no


def _draw_density(
    plan: _PhantomPlan, rng: np.random.Generator, anatomy: Anatomy, cls: str, faint: bool
) -> np.ndarray:
    """One image's density: the anatomy, 1-3 lesions for ``opacity`` (fainter in the faint group)."""
    factor = plan.faint_factor if faint else 1.0
    n_les = int(rng.integers(1, 4)) if cls == "opacity" else 0
    return render_chest(
        anatomy,
        plan.size,
        rng,
        n_lesions=n_les,
        lesion_contrast=(plan.contrast[0] * factor, plan.contrast[1] * factor),
        lesion_radius=plan.radius,
        noise=plan.noise,
    )


def _parse_faint_group(spec: str | None) -> tuple[str, str] | None:
    """("sex", "F") from "sex=F" (attribute name and group as medtl.subgroups writes them)."""
    from medtl.subgroups import DICOM_ATTRIBUTES, canonical_name, normalise_value

    if spec is None:
        return None
    name, sep, value = str(spec).partition("=")
    name = canonical_name(name)
    if not sep or name not in DICOM_ATTRIBUTES or not value.strip():
        raise ConfigError(
            f"The 'faint_group' parameter must be '<attribute>=<group>' with an attribute among "
            f"{list(DICOM_ATTRIBUTES)}, e.g. 'sex=F' or 'age=80+'. Got {spec!r}."
        )
    group = value.strip() if name == "age" else normalise_value(name, value)
    return name, str(group)


def _in_group(faint: tuple[str, str] | None, header: dict[str, str], prof: ScannerProfile) -> bool:
    """Whether an image with these header values is in the faint group."""
    from medtl.subgroups import normalise_value

    if faint is None:
        return False
    name, group = faint
    raw = {
        **header,
        "manufacturer": prof.manufacturer,
        "model": prof.model,
        "modality": prof.modality,
        "body_part": "CHEST",
    }
    return normalise_value(name, raw.get(name)) == group


#: the multi-label phantom's findings: an opacity centred in one zone of the lung fields each
#: ((x, y) in units of half the image width, y downwards)
FINDING_ZONES: dict[str, tuple[float, float]] = {
    "right_upper_opacity": (-0.38, -0.32),
    "left_upper_opacity": (0.38, -0.32),
    "right_lower_opacity": (-0.40, 0.22),
    "left_lower_opacity": (0.40, 0.22),
    "right_mid_opacity": (-0.42, -0.05),
    "left_mid_opacity": (0.42, -0.05),
}


def _add_zone_opacity(
    density: np.ndarray,
    centre: tuple[float, float],
    rng: np.random.Generator,
    contrast: tuple[float, float],
    radius: tuple[float, float],
) -> None:
    """Add one round-ish opacity near ``centre`` (jittered) to a density image, in place."""
    size = density.shape[0]
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    cx = centre[0] + float(rng.uniform(-0.05, 0.05))
    cy = centre[1] + float(rng.uniform(-0.05, 0.05))
    r = float(rng.uniform(*radius))
    rho = np.sqrt(((xx - cx) / r) ** 2 + ((yy - cy) / r) ** 2)
    density += float(rng.uniform(*contrast)) / (1.0 + np.exp(np.clip((rho - 1.0) / 0.18, -60, 60)))
    np.clip(density, 0.0, 1.0, out=density)


def make_multilabel_phantom(
    out_dir: str | Path,
    *,
    n_images: int = 80,
    findings: int = 3,
    prevalence: float | Sequence[float] = 0.3,
    size: int = 256,
    difficulty: float = 0.5,
    seed: int = 0,
    profiles: Sequence[str] = ("mono2_12bit", "mono1_16bit", "mono2_rescale"),
) -> Path:
    """Write a multi-label phantom: ``n_images`` DICOM files (two per fake patient), each with
    ``findings`` independent findings drawn at their ``prevalence`` (one number for all, or one
    per finding); finding k is an opacity in lung zone k (:data:`FINDING_ZONES`).

    Layout: ``out_dir/images/img_NNNN.dcm``, ``out_dir/manifest.csv``
    (``path,patient_id,<finding>...`` with 1/0 values) and ``out_dir/phantom.json``.
    Deterministic: the same arguments give the same bytes.

    Example:
        >>> root = make_multilabel_phantom("ml/", n_images=60, findings=3)
        >>> ds = medtl.load_dataset(root / "manifest.csv")  # three findings per image
    """
    check_range("n_images", n_images, 2)
    check_range("findings", findings, 1, len(FINDING_ZONES))
    check_range("size", size, 32, 4096)
    check_range("difficulty", difficulty, 0.0, 1.0)
    prev = [float(prevalence)] * findings if np.isscalar(prevalence) else list(prevalence)  # type: ignore[arg-type]
    if len(prev) != findings:
        raise ConfigError(
            f"The 'prevalence' parameter needs one value per finding ({findings}); got {prev}."
        )
    for p in prev:
        check_range("prevalence", p, 0.0, 1.0)
    profiles = list(profiles)
    for p in profiles:
        look_up_option("profiles", p, list(PROFILES))
    names = list(FINDING_ZONES)[:findings]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contrast, radius, noise = _lesion_params(difficulty)
    n_patients = -(-n_images // IMAGES_PER_PATIENT)
    seqs = np.random.SeedSequence([seed, 24]).spawn(n_patients + 1)
    id_rng = np.random.default_rng(seqs[-1])
    fake_ids = id_rng.choice(900_000, size=n_patients, replace=False) + 100_000
    rows: list[dict[str, str]] = []
    k = 0
    for p in range(n_patients):
        rng = np.random.default_rng(seqs[p])
        anatomy = draw_anatomy(rng)
        for _ in range(IMAGES_PER_PATIENT):
            if k >= n_images:
                break
            present = rng.random(findings) < np.asarray(prev)
            density = render_chest(anatomy, size, rng, n_lesions=0, noise=noise)
            for j in np.flatnonzero(present):
                _add_zone_opacity(density, FINDING_ZONES[names[j]], rng, contrast, radius)
            prof = PROFILES[profiles[k % len(profiles)]]
            stored, centre, width = prof.encode(density)
            data = _dicom_bytes(
                stored, prof, centre, width, uid_seed=f"medtl-ml-phantom-{seed}-{k}",
                patient_no=p + 1, fake_patient_id=f"PHI-{int(fake_ids[p]):06d}",
                fake_birth_date="19700101", pixel_mm=430.0 / size,
            )  # fmt: skip
            rel = f"images/img_{k:04d}.dcm"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
            rows.append(
                {"path": rel, "patient_id": f"P{p + 1:04d}"}
                | {n: str(int(v)) for n, v in zip(names, present)}
            )
            k += 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "patient_id", *names], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / PHANTOM_MANIFEST_FILE, buf.getvalue())
    atomic_write_json(
        out / PHANTOM_INFO_FILE,
        {
            "generator": "medtl.data.synth.make_multilabel_phantom",
            "version": PHANTOM_VERSION,
            "task": "multilabel",
            "findings": names,
            "prevalence": prev,
            "n_images": n_images,
            "size": size,
            "difficulty": difficulty,
            "seed": seed,
            "profiles": profiles,
        },
    )
    logger.info("Wrote %d multi-label phantom DICOM file(s) to %s", len(rows), out)
    return out


def _patient_splits(n_patients: int, rng: np.random.Generator) -> list[str]:
    """train/val/test per patient (70/15/15, at least one patient each when there are 3 or more)."""
    n_test = max(1, round(n_patients * 0.15)) if n_patients >= 3 else 0
    n_val = max(1, round(n_patients * 0.15)) if n_patients >= 3 else 0
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (n_patients - n_test - n_val)
    return [labels[i] for i in rng.permutation(n_patients)]


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    fields = ["path", "label", "patient_id"] + (["split"] if rows and "split" in rows[0] else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_record(r) for r in rows)
    atomic_write_text(path, buf.getvalue())


def is_phantom(path: str | Path, *, current: bool = False) -> bool:
    """True when ``path`` is a complete phantom folder written by :func:`make_phantom`
    (``current=True``: written by this version of the phantom, :data:`PHANTOM_VERSION`)."""
    p = Path(path)
    info = p / PHANTOM_INFO_FILE
    if not (p.is_dir() and info.is_file() and (p / PHANTOM_MANIFEST_FILE).is_file()):
        return False
    if not current:
        return True
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("version") == PHANTOM_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def phantom_manifest(path: str | Path) -> str:
    """The path to read a dataset from: a phantom folder through its manifest, which knows each
    image's patient (two images per fake patient, so no patient spans splits); any other path
    unchanged."""
    return str(Path(path) / PHANTOM_MANIFEST_FILE) if is_phantom(path) else str(path)


def default_demo_dataset(cache_root: str | Path) -> Path:
    """The built-in demo phantom under ``cache_root`` (made on first use, reused afterwards).

    Example:
        >>> root = default_demo_dataset(Path.home() / ".cache" / "medtl")
    """
    params = {"n_per_class": 40, "size": 256, "difficulty": 0.5, "seed": 0}
    name = f"phantom_v{PHANTOM_VERSION}_n40_s256_d0.5_seed0"
    dest = Path(cache_root).expanduser() / name
    if (dest / PHANTOM_INFO_FILE).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    try:
        make_phantom(tmp, **params)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first (dest exists and is not empty)
            if not (dest / PHANTOM_INFO_FILE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
