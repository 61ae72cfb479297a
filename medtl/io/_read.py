"""``read_image``: detect the format by content and dispatch to the DICOM or raster reader."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medtl._fileio import MAX_FILE_BYTES
from medtl._options import check_range, look_up_option
from medtl.errors import ConfigError, ImageReadError, MedtlError
from medtl.io._detect import detect_format
from medtl.io._guard import MAX_PIXELS, quiet_libraries, scrub
from medtl.io._usable import flag_unusable

__all__ = ["WINDOWS", "read_image"]

WINDOWS = ("header", "full", "percentile")


def _check_options(
    window: str, percentiles: tuple[float, float], frame: int | None
) -> tuple[float, float]:
    look_up_option("window", window, WINDOWS)
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"The 'percentiles' parameter must be two numbers (low, high). Got {percentiles!r}."
        ) from exc
    check_range("percentiles[0]", lo, 0.0, 100.0)
    check_range("percentiles[1]", hi, 0.0, 100.0)
    if lo >= hi:
        raise ConfigError(
            f"The 'percentiles' parameter must have low < high. Got {percentiles!r}; e.g. (0.5, 99.5)."
        )
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, (int, np.integer))):
        raise ConfigError(f"The 'frame' parameter must be an int or None. Got {frame!r}.")
    return lo, hi


def read_image(
    path: str | os.PathLike,
    *,
    window: str = "header",
    percentiles: tuple[float, float] = (0.5, 99.5),
    frame: int | None = None,
    max_bytes: int | None = MAX_FILE_BYTES,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM, PNG, JPEG, TIFF or BMP file into float32 [0, 1] plus safe metadata.

    The format is detected from the bytes, not the name. The image is H×W (grey) or H×W×3
    (colour); for DICOM, MONOCHROME1 is inverted so that bright = dense (``meta["inverted"]``).

    Args:
        path: the image file.
        window: ``"header"`` (DICOM VOI LUT or window centre/width, falling back to ``"full"``
            with a note; for other formats: scale by bit depth), ``"full"`` (min..max of the
            modality-LUT values) or ``"percentile"`` (clip at ``percentiles``).
        percentiles: (low, high) in [0, 100] for ``window="percentile"``.
        frame: frame of a multi-frame file (negative counts from the end); default the middle
            one. ``meta["frame_used"]`` and ``meta["n_frames"]`` say which.
        max_bytes: largest file read (default 2 GiB); only regular files are ever opened (FIFOs,
            sockets, devices and link loops are refused unopened).
        max_pixels: largest image (pixels per frame, default 2**26 = 8192x8192) decoded; checked on
            the declared size before decoding, so decompression bombs are refused cheaply.

    Returns:
        ``(image, meta)``; ``meta`` holds only allow-listed technical fields (format, modality,
        photometric_interpretation, bits_stored, rows, columns, n_frames, frame_used,
        window_used, transfer_syntax, inverted, pixel_spacing, original_dtype, source_shape,
        notes, ...), never patient identifiers. ``meta["constant"]`` is True (with
        ``meta["constant_reason"]``) when every pixel has the same value after the LUTs/window: a
        blank export or a window that misses the data. ``meta["unusable_reason"]`` is set for every
        image that is no data to learn from (constant, all padding but a few pixels, a side under
        8 px, an aspect ratio over 10:1; see ``medtl.io._usable``): the dataset loaders and
        ``predict`` skip such images with that reason.

    Raises:
        ImageReadError: any unreadable, truncated, unsupported or non-image file (path + reason).
        ConfigError: an invalid option.

    Example:
        >>> image, meta = read_image("chest.dcm", window="percentile", percentiles=(1, 99))
    """
    lo_hi = _check_options(window, percentiles, frame)
    for name, value in (("max_bytes", max_bytes), ("max_pixels", max_pixels)):
        if value is not None:
            check_range(name, value, 1)
    frame = None if frame is None else int(frame)
    with quiet_libraries():
        fmt = detect_format(path, max_bytes=max_bytes)
        try:
            if fmt == "dicom":
                from medtl.io._dicom import read_dicom

                image, meta = read_dicom(
                    path, window=window, percentiles=lo_hi, frame=frame, max_pixels=max_pixels
                )
            elif fmt == "npz":
                raise ImageReadError(
                    str(path),
                    "is a NumPy .npz archive (MedMNIST format), not a single image; "
                    "read it with medtl.io.read_npz",
                )
            else:
                from medtl.io._raster import read_raster

                image, meta = read_raster(
                    path, fmt, window=window, percentiles=lo_hi, frame=frame, max_pixels=max_pixels
                )
        except (MedtlError, KeyboardInterrupt):
            raise
        except MemoryError:
            raise ImageReadError(
                str(path),
                f"not enough memory to decode this {fmt} image; free memory, lower max_pixels "
                "or leave the file out",
            ) from None
        except Exception as exc:
            # For DICOM the message may quote header values, so only the exception type is kept;
            # other messages lose the path (file names may carry identifiers).
            detail = type(exc).__name__
            if fmt != "dicom":
                detail += f": {scrub(exc, path)}"
            raise ImageReadError(
                str(path), f"unexpected error reading the {fmt} file ({detail})"
            ) from exc
    flag_unusable(image, meta)
    return image, meta
