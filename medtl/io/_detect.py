"""Format detection from file content (magic bytes), never from the file name."""

from __future__ import annotations

import logging
import os
import warnings

from medtl._fileio import MAX_FILE_BYTES, UnsafeFileError, open_regular
from medtl.errors import ImageReadError
from medtl.io._guard import describe_content

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


def _head(path: str | os.PathLike, n: int = 400, max_bytes: int | None = MAX_FILE_BYTES) -> bytes:
    """The first ``n`` bytes of a regular file within ``max_bytes``; anything else is refused unopened."""
    try:
        with open_regular(path, max_bytes) as fh:
            return fh.read(n)
    except UnsafeFileError as exc:
        raise ImageReadError(str(path), exc.reason) from None
    except FileNotFoundError:
        raise ImageReadError(str(path), "file not found; check the path") from None
    except OSError as exc:
        raise ImageReadError(
            str(path), f"cannot open the file ({exc.strerror or type(exc).__name__})"
        ) from None


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
    except Exception as exc:  # the message may quote header values: log the type only
        logger.debug("not a bare DICOM data set (%s)", type(exc).__name__)
        return False
    return n_elements > 0 and group_ok


def detect_format(path: str | os.PathLike, *, max_bytes: int | None = MAX_FILE_BYTES) -> str:
    """Return the image format of ``path`` judged from its bytes.

    Returns one of ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"``, ``"npz"``. A DICOM
    file is recognised by its 128-byte preamble followed by ``b"DICM"``, or, without preamble, by
    a first tag in group 0x0002/0x0008 that pydicom can parse.

    Only regular files are opened: FIFOs, sockets, devices, link loops and files over
    ``max_bytes`` are refused with a reason.

    Raises:
        ImageReadError: the file is missing, empty, not a regular file, too large, or not one of
            these formats (the reason says what it looks like instead).

    Example:
        >>> detect_format("scan.png")  # a DICOM misnamed .png still gives "dicom"
        'dicom'
    """
    head = _head(path, max_bytes=max_bytes)
    if not head:
        raise ImageReadError(str(path), "the file is empty (0 bytes)")
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if _looks_like_bare_dicom(path, head):
        return "dicom"
    raise ImageReadError(
        str(path),
        f"not a recognised image format: the content looks like {describe_content(head)} "
        "(expected DICOM, PNG, JPEG, TIFF, BMP or MedMNIST .npz)",
    )


def is_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a DICOM file (by content); False otherwise, including unreadable files."""
    try:
        return detect_format(path) == "dicom"
    except ImageReadError:
        return False
