"""Format detection from file content (magic bytes), never from the file name."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from medtl.errors import ImageReadError

__all__ = ["detect_format", "is_dicom"]

logger = logging.getLogger(__name__)

FORMATS = ("dicom", "png", "jpeg", "tiff", "bmp", "npz")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"PK\x03\x04", "npz"),  # zip container; numpy's .npz is a zip of .npy files
    (b"BM", "bmp"),
)

# First two bytes of a DICOM data set written without the 128-byte preamble: the group number of
# its first tag, 0x0002 (file meta) or 0x0008 (identifying group), little or big endian.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _head(path: str | os.PathLike, n: int = 136) -> bytes:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(str(path), "file not found; check the path")
    if p.is_dir():
        raise ImageReadError(str(path), "is a folder, not an image file")
    try:
        with open(p, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot open the file ({exc.strerror or exc})") from exc


def _looks_like_bare_dicom(path: str | os.PathLike, head: bytes) -> bool:
    """A DICOM data set without preamble: try pydicom with ``force=True`` on its header only."""
    if head[:2] not in _BARE_DICOM_STARTS:
        return False
    import pydicom  # imported lazily: detection of PNG/JPEG should not need it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            # Parsing is lazy: touching the elements makes sure the bytes really are DICOM.
            n_elements = len(ds)
            group_ok = all(elem.tag.group in (0x0002, 0x0008) for elem in list(ds)[:1])
    except Exception as exc:
        logger.debug("%s: not a bare DICOM data set (%s)", path, exc)
        return False
    return n_elements > 0 and group_ok


def detect_format(path: str | os.PathLike) -> str:
    """Return the image format of ``path`` judged from its bytes.

    Returns one of ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"``, ``"npz"``. A DICOM
    file is recognised by its 128-byte preamble followed by ``b"DICM"``, or, without preamble, by
    a first tag in group 0x0002/0x0008 that pydicom can parse.

    Raises:
        ImageReadError: the file is missing, empty, or not one of these formats.

    Example:
        >>> detect_format("scan.png")  # a DICOM misnamed .png still gives "dicom"
        'dicom'
    """
    head = _head(path)
    if not head:
        raise ImageReadError(str(path), "the file is empty (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if _looks_like_bare_dicom(path, head):
        return "dicom"
    preview = head[:8].hex(" ")
    raise ImageReadError(
        str(path),
        "not a recognised image format (expected DICOM, PNG, JPEG, TIFF, BMP or MedMNIST .npz; "
        f"first bytes: {preview})",
    )


def is_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a DICOM file (by content); False otherwise, including unreadable files."""
    try:
        return detect_format(path) == "dicom"
    except ImageReadError:
        return False
