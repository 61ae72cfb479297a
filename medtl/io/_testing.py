"""Write small, valid DICOM files for tests and the synthetic phantom.

``write_test_dicom`` builds an uncompressed Explicit VR Little Endian file with pydicom's own
``Dataset``/``FileMetaDataset``/``dcmwrite``, so other engineers' tests can make DICOM inputs in
``tmp_path`` without knowing DICOM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medtl.errors import ConfigError

__all__ = ["write_test_dicom"]

_ALLOWED_DTYPES = (np.uint8, np.uint16, np.int16)


def write_test_dicom(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    photometric_interpretation: str | None = None,
    bits_stored: int | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    window_center: float | list[float] | None = None,
    window_width: float | list[float] | None = None,
    modality: str = "OT",
    pixel_spacing: tuple[float, float] | None = None,
    preamble: bool = True,
    **tags: Any,
) -> Path:
    """Write ``array`` as an uncompressed Explicit VR Little Endian DICOM file.

    Args:
        path: destination file (any name; parent folders are created).
        array: pixel data, dtype uint8, uint16 or int16. Shapes: (H, W) grey, (F, H, W) grey
            multi-frame, (H, W, 3) uint8 RGB, (F, H, W, 3) uint8 RGB multi-frame.
        photometric_interpretation: default "MONOCHROME2" for grey, "RGB" for colour.
        bits_stored: default the dtype's full width (8 or 16).
        rescale_slope: RescaleSlope tag (written with RescaleIntercept, default 1 / 0).
        rescale_intercept: RescaleIntercept tag.
        window_center: WindowCenter tag (with ``window_width``).
        window_width: WindowWidth tag.
        modality: Modality tag (e.g. "CR", "DX", "OT").
        pixel_spacing: PixelSpacing (row, column) in mm.
        preamble: write the 128-byte preamble and "DICM" prefix (False gives a bare dataset file,
            as some old archives hold).
        **tags: any other DICOM keywords to set, e.g. ``PatientName="Fake^Patient"``,
            ``PatientID="PHI-1"``, ``PatientBirthDate="19700101"``.

    Returns:
        The path written.

    Example:
        >>> write_test_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint16), bits_stored=12)
    """
    arr = np.asarray(array)
    colour, n_frames, rows, cols = _frame_layout(arr)
    bits_allocated = arr.dtype.itemsize * 8
    if bits_stored is None:
        bits_stored = bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise ConfigError(
            f"write_test_dicom: 'bits_stored' must be in [1, {bits_allocated}] for {arr.dtype}. "
            f"Got {bits_stored}."
        )
    if photometric_interpretation is None:
        photometric_interpretation = "RGB" if colour else "MONOCHROME2"
    ds = _image_dataset(
        arr, colour, n_frames, rows, cols, photometric_interpretation, bits_stored, modality
    )
    _set_optional_tags(
        ds, rescale_slope, rescale_intercept, window_center, window_width, pixel_spacing, tags
    )
    ds.PixelData = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return out


def _frame_layout(arr: np.ndarray) -> tuple[bool, int, int, int]:
    """Whether ``arr`` is colour, its frame count, rows and columns (a ConfigError if unusable)."""
    if arr.dtype.type not in _ALLOWED_DTYPES:
        raise ConfigError(
            f"write_test_dicom: 'array' dtype must be uint8, uint16 or int16. Got {arr.dtype}; "
            "cast it first (e.g. array.astype(np.uint16))."
        )
    colour = arr.ndim >= 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8
    if colour:
        n_frames = arr.shape[0] if arr.ndim == 4 else 1
        rows, cols = arr.shape[-3], arr.shape[-2]
    elif arr.ndim in (2, 3):
        n_frames = arr.shape[0] if arr.ndim == 3 else 1
        rows, cols = arr.shape[-2], arr.shape[-1]
    else:
        raise ConfigError(
            f"write_test_dicom: 'array' must be (H, W), (F, H, W) or uint8 (…, H, W, 3). "
            f"Got shape {arr.shape}."
        )
    return colour, n_frames, rows, cols


def _image_dataset(
    arr: np.ndarray,
    colour: bool,
    n_frames: int,
    rows: int,
    cols: int,
    photometric_interpretation: str,
    bits_stored: int,
    modality: str,
) -> Dataset:
    """A Secondary Capture dataset with fresh UIDs and the image pixel tags of ``arr``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Rows = int(rows)
    ds.Columns = int(cols)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric_interpretation
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    if n_frames > 1 or arr.ndim == (4 if colour else 3):
        ds.NumberOfFrames = int(n_frames)
    return ds


def _set_optional_tags(
    ds: Dataset,
    rescale_slope: float | None,
    rescale_intercept: float | None,
    window_center: float | list[float] | None,
    window_width: float | list[float] | None,
    pixel_spacing: tuple[float, float] | None,
    tags: dict[str, Any],
) -> None:
    """Set the rescale, window and spacing tags given, then any other DICOM keywords in ``tags``."""
    if rescale_slope is not None or rescale_intercept is not None:
        ds.RescaleSlope = float(1.0 if rescale_slope is None else rescale_slope)
        ds.RescaleIntercept = float(0.0 if rescale_intercept is None else rescale_intercept)
        ds.RescaleType = "US"
    if window_center is not None or window_width is not None:
        if window_center is None or window_width is None:
            raise ConfigError(
                "write_test_dicom: give both 'window_center' and 'window_width' (or neither)."
            )
        ds.WindowCenter = window_center
        ds.WindowWidth = window_width
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    for keyword, value in tags.items():
        if tag_for_keyword(keyword) is None:
            raise ConfigError(
                f"write_test_dicom: {keyword!r} is not a DICOM keyword (e.g. 'PatientName')."
            )
        try:
            setattr(ds, keyword, value)
        except Exception as exc:
            raise ConfigError(f"write_test_dicom: cannot set tag {keyword!r}: {exc}") from exc
