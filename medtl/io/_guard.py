"""Limits and hygiene shared by the readers: decoded-size guard, quiet third-party loggers, scrubbed
messages and a type name for files that are not images.

Every reader checks the *declared* size of an image (header, page shape, codestream) against
``max_pixels`` before it decodes anything, so a small file that would expand to gigabytes is refused
with a reason instead of exhausting memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from medtl.errors import ImageReadError

#: Default ceiling on pixels per decoded image (frame): 2**26, e.g. 8192 x 8192. Mammograms
#: (about 4096 x 5120) are well inside; raise it with ``read_image(..., max_pixels=...)``.
MAX_PIXELS = 2**26

logger = logging.getLogger("medtl.io")

# Loggers of the libraries medtl reads with. Their records about a file medtl already reports (with
# a reason) would repeat it, sometimes with a traceback, a path or header values. A logger's filter
# is not consulted for records its children propagate, so every logger under these prefixes gets the
# filter (pydicom's decoders log each failing plugin's traceback on "pydicom.pixels.decoders.base").
_LIBRARY_PREFIXES = (
    "pydicom",
    "pylibjpeg",
    "openjpeg",
    "libjpeg",
    "rle",
    "gdcm",
    "tifffile",
    "PIL",
)
_LIBRARY_LOGGERS = (
    "pydicom",
    "pydicom.pixels.decoders.base",
    "pylibjpeg.utils",
    "openjpeg.utils",
    "tifffile",
    "PIL",
    "PIL.Image",
    "PIL.ImageFile",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.TiffImagePlugin",
    "PIL.BmpImagePlugin",
    "PIL.TiffTags",
)
_state = threading.local()
_install_lock = threading.Lock()
_installed = False
_filter: logging.Filter | None = None
_known_loggers = 0


class _DropWhileReading(logging.Filter):
    """Drops library log records emitted by the thread that is inside a medtl read; counts them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_state, "depth", 0) > 0:
            _state.dropped = getattr(_state, "dropped", 0) + 1
            return False
        return True


def _is_library(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _LIBRARY_PREFIXES)


def _install() -> None:
    """Attach the filter to the library loggers, and to any created since the last call."""
    global _installed, _filter, _known_loggers
    registry = logging.Logger.manager.loggerDict
    if _installed and len(registry) == _known_loggers:
        return
    with _install_lock:
        if _filter is None:
            _filter = _DropWhileReading()
            for name in _LIBRARY_LOGGERS:
                logging.getLogger(name)
        for name, lg in list(registry.items()):
            if isinstance(lg, logging.Logger) and _is_library(name) and _filter not in lg.filters:
                lg.addFilter(_filter)
        _known_loggers = len(registry)
        _installed = True


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within this block (this thread only), pydicom/tifffile/Pillow log records are dropped.

    medtl reports the file itself (path + reason); the count of dropped records goes to medtl's
    debug log, never their text (it may quote header values).
    """
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and getattr(_state, "dropped", 0):
            logger.debug("%d log record(s) of the image libraries suppressed", _state.dropped)
            _state.dropped = 0


def check_pixels(
    path: str, rows: int, columns: int, max_pixels: int | None, what: str = "the image"
) -> None:
    """Refuse, before decoding, an image whose declared size is empty or over ``max_pixels``."""
    if rows <= 0 or columns <= 0:
        raise ImageReadError(path, f"{what} declares an empty size ({rows}x{columns} pixels)")
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageReadError(
            path,
            f"{what} declares {columns}x{rows} pixels ({rows * columns / 1e6:.0f} megapixels), "
            f"over the max_pixels limit of {max_pixels / 1e6:.0f} megapixels; not decoded (a "
            "decompression bomb, or a genuine giant image: then raise max_pixels)",
        )


def note_frame(meta: dict, what: str, unit: str, used: int, n_frames: int) -> None:
    """Say in ``meta["notes"]`` which frame of a multi-frame file was read (one wording for all
    readers: multi-page TIFF, multi-frame DICOM, animated PNG), when there is more than one."""
    if n_frames > 1:
        meta.setdefault("notes", []).append(
            f"{what}: {unit} {used} of {n_frames} (0-based) used; choose another with frame=k"
        )


def scrub(message: str, path: str | os.PathLike, limit: int = 200) -> str:
    """``message`` (from a library exception) without the file's path or name, cut to ``limit``."""
    text = str(message).splitlines()[0] if str(message) else ""
    p = os.fspath(path)
    for s in sorted({p, os.path.abspath(p), os.path.basename(p)} - {""}, key=len, reverse=True):
        text = text.replace(s, "<file>")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Signatures of common non-image (or unsupported image) files, for the "not an image" reason: the
# user learns what the file is, and no raw bytes of it are echoed.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x93NUMPY", 0, "a NumPy .npy array"),
    (b"%PDF", 0, "a PDF document"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"BZh", 0, "a bzip2 archive"),
    (b"\xfd7zXZ\x00", 0, "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"Rar!", 0, "a RAR archive"),
    (b"GIF8", 0, "a GIF image (unsupported: convert to PNG)"),
    (b"RIFF", 0, "a RIFF file (WebP/AVI/WAV; unsupported)"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 file (unsupported standalone: convert to PNG/TIFF)"),
    (b"\xffO\xffQ", 0, "a JPEG 2000 codestream (unsupported standalone: convert to PNG/TIFF)"),
    (b"ftyp", 4, "an ISO media file (HEIC/MP4; unsupported)"),
    (b"NRRD", 0, "an NRRD volume (unsupported)"),
    (b"\x89HDF", 0, "an HDF5 file (unsupported)"),
    (b"SQLite format 3", 0, "an SQLite database"),
    (b"\x7fELF", 0, "an executable program"),
    (b"MZ", 0, "a Windows executable"),
    (b"<!DOCTYPE html", 0, "an HTML page"),
    (b"<html", 0, "an HTML page"),
    (b"<?xml", 0, "an XML document"),
    (b"{\\rtf", 0, "an RTF document"),
    (b"\xd0\xcf\x11\xe0", 0, "an old Microsoft Office file (or Thumbs.db)"),
)


def describe_content(head: bytes) -> str:
    """A short description of what ``head`` (a file's first bytes) looks like; never the bytes."""
    for magic, offset, what in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return what
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI volume (unsupported: export 2D slices as PNG/DICOM)"
    sample = head[:128]
    if sample and not sample.count(b"\x00"):
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(
            text
        ):
            return "a text file"
    if sample and all(b == 0 for b in sample):
        return "all zero bytes at the start (an unfinished copy or a blank file)"
    return "unrecognised binary data"
