"""PNG / JPEG / TIFF / BMP reader (Pillow, and tifffile for TIFF) onto the intensity contract.

Scaling by bit depth, not by image content: 8-bit / 255, 16-bit / 65535, so that a dark image
stays dark. Colour stays colour (RGBA drops alpha, palettes expand to RGB); the data layer decides
about grey conversion (:func:`medtl.io.to_grey`). Text chunks and EXIF are never copied to the
metadata (they may hold identifiers).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

from medtl.errors import ImageReadError
from medtl.io._guard import MAX_PIXELS, check_pixels, note_frame, scrub
from medtl.io._intensity import clip_to_unit, minmax_to_unit, percentile_to_unit

logger = logging.getLogger(__name__)

_TO_RGB_MODES = ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La")


def _pick_frame(path: str, n_frames: int, frame: int | None) -> int:
    if frame is None:
        return n_frames // 2
    if -n_frames <= frame < n_frames:
        return frame % n_frames
    raise ImageReadError(
        path, f"frame={frame} is out of range: the file has {n_frames} frame(s) (0..{n_frames - 1})"
    )


def scale_by_dtype(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Scale an integer/float/bool array to [0, 1] by its bit depth (see module docstring).

    uint8 / 255; uint16 / 65535; other integers that fit 0..65535 (Pillow's 32-bit "I" mode for
    16-bit files) / 65535; anything else (negative or wider integers, floats outside [0, 1]) is
    min-max scaled and ``meta["notes"]`` says so.
    """
    a = np.asarray(arr)
    meta["original_dtype"] = str(a.dtype.newbyteorder("="))
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return clip_to_unit(a.astype(np.float32) / 255.0)
    if a.dtype == np.uint16:
        return clip_to_unit(a.astype(np.float32) / 65535.0)
    if a.size and np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 65535:
            meta.setdefault("notes", []).append(f"{a.dtype} values read as 16-bit (/65535)")
            return clip_to_unit(a.astype(np.float32) / 65535.0)
    if a.size and np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a).all()
        if finite and float(a.min()) >= 0.0 and float(a.max()) <= 1.0:
            return clip_to_unit(a)
    meta.setdefault("notes", []).append(f"{a.dtype} values outside a known range; min-max scaled")
    return minmax_to_unit(a, meta)  # colour is scaled jointly so channels keep their balance


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _png_layout(ihdr: bytes) -> tuple[int, int, int, bool]:
    """(width, height, bytes of filtered image data the IDAT stream must inflate to, interlaced)."""
    import struct

    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    bits = depth * _PNG_CHANNELS.get(ctype, 4)

    def size(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * (1 + (w * bits + 7) // 8)

    if interlace:
        total = sum(
            size(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7
        )
    else:
        total = size(width, height)
    return width, height, total, bool(interlace)


def _check_png_chunks(path: str, max_pixels: int | None = MAX_PIXELS) -> None:
    """Walk a PNG's chunks (lengths and CRCs) up to IEND; refuse a truncated or damaged file.

    Pillow decodes a PNG cut inside its last IDAT or missing IEND without complaint in some cases,
    turning the missing rows into black; a damaged CRC means flipped bytes somewhere. The image data
    (IDAT) is inflated, output discarded, up to the size the header declares: a stream that ends
    early (a PNG whose data covers 10 of its 64 rows) is refused too, since Pillow (even without
    ``LOAD_TRUNCATED_IMAGES``) fills the missing rows with black.
    """
    import struct
    import zlib

    from medtl._fileio import open_regular

    layout: tuple[int, int, int, bool] | None = None
    inflater = zlib.decompressobj()
    inflated = 0
    with open_regular(path, None) as fh:
        fh.seek(8)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise ImageReadError(
                    path,
                    "truncated PNG: the file ends before its IEND chunk (an interrupted copy or "
                    "download); re-copy or re-export it",
                )
            length, ctype = struct.unpack(">I4s", head)
            if length > 2**31 - 1:
                raise ImageReadError(path, "damaged PNG: a chunk declares an impossible length")
            data = fh.read(length)
            crc = fh.read(4)
            if len(data) < length or len(crc) < 4:
                raise ImageReadError(
                    path,
                    "truncated PNG: the file ends inside a chunk (an interrupted copy or "
                    "download); re-copy or re-export it",
                )
            if zlib.crc32(ctype + data) != struct.unpack(">I", crc)[0]:
                name = ctype.decode("latin-1") if ctype.isalpha() else "?"
                raise ImageReadError(
                    path, f"damaged PNG: the checksum (CRC) of a {name} chunk does not match"
                )
            if ctype == b"IHDR" and layout is None and length >= 13:
                layout = _png_layout(data)
                check_pixels(path, layout[1], layout[0], max_pixels, "the PNG header")
            elif ctype == b"IDAT" and layout is not None and inflated < layout[2]:
                try:
                    while data and inflated < layout[2]:
                        inflated += len(inflater.decompress(data, 1 << 20))
                        data = inflater.unconsumed_tail
                except zlib.error:
                    raise ImageReadError(
                        path, "damaged PNG: its image data (IDAT) does not decompress"
                    ) from None
            if ctype == b"IEND":
                break
    if layout is None:
        return  # no IHDR: Pillow refuses the file with its own reason
    _, height, expected, interlaced = layout
    if inflated < expected:
        inflated += len(inflater.flush())
    if inflated < expected:
        if interlaced:
            covered = f"{100 * inflated / expected:.0f}% of its interlaced image data"
        else:
            covered = f"{inflated // (expected // height)} of its {height} rows"
        raise ImageReadError(
            path,
            f"truncated PNG: its image data covers only {covered} (the rest would come out "
            "black); re-export or re-copy the file",
        )


def _png_is_16bit_colour(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(26)
    # IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _read_pillow(
    path: str, fmt: str, frame: int | None, meta: dict[str, Any], max_pixels: int | None
) -> np.ndarray:
    from PIL import Image, ImageOps

    if fmt == "png":
        _check_png_chunks(path, max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning: the size is checked against max_pixels just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            check_pixels(path, int(height), int(width), max_pixels, f"the {fmt.upper()} header")
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            frame_used = _pick_frame(path, n_frames, frame)
            if frame_used:
                im.seek(frame_used)
            im.load()
            meta.update(n_frames=n_frames, frame_used=frame_used, mode=im.mode)
            what = {"png": "animated PNG", "tiff": "multi-page TIFF"}.get(fmt, f"multi-frame {fmt}")
            note_frame(meta, what, "page" if fmt == "tiff" else "frame", frame_used, n_frames)
            orientation = im.getexif().get(0x0112, 1) if fmt in ("jpeg", "tiff") else 1
            if orientation not in (1, None):
                im = ImageOps.exif_transpose(im)
                meta["exif_orientation_applied"] = int(orientation)
            mode = im.mode
            if mode in _TO_RGB_MODES:
                im = im.convert("RGB")
            elif mode == "LA":
                im = im.getchannel("L")
            elif mode not in ("1", "L", "RGB", "I", "F") and not mode.startswith("I;16"):
                im = im.convert("RGB")
            arr = np.array(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path,
            f"the {fmt.upper()} header declares an image too large to decode safely "
            f"({scrub(exc, path)}); not decoded (over max_pixels; a decompression bomb)",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            path,
            f"cannot decode the {fmt.upper()} data ({type(exc).__name__}: {scrub(exc, path)}); "
            "the file is corrupt or truncated",
        ) from exc
    meta["decoder"] = "pillow"
    if fmt == "png" and arr.ndim == 3 and _png_is_16bit_colour(path):
        msg = "16-bit colour PNG: Pillow decodes it at 8-bit precision"
        warnings.warn(f"{msg}; save as 16-bit TIFF to keep full precision.", stacklevel=4)
        meta.setdefault("notes", []).append(msg)
    return arr


# A TIFF with more pages than this is not a 2D image (e.g. a broken IFD chain); refused.
_MAX_TIFF_PAGES = 10_000


def _read_tifffile(
    path: str, frame: int | None, meta: dict[str, Any], max_pixels: int | None
) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        n_frames = len(tf.pages)
        if n_frames > _MAX_TIFF_PAGES:
            raise ImageReadError(path, f"TIFF with {n_frames} pages; not a 2D image")
        frame_used = _pick_frame(path, n_frames, frame)
        page = tf.pages[frame_used]
        shape = tuple(int(d) for d in getattr(page, "shape", ()) or ())
        if len(shape) < 2:
            raise ImageReadError(path, f"TIFF page of unsupported shape {shape}")
        spatial = shape[1:3] if int(page.planarconfig or 1) == 2 and len(shape) == 3 else shape[:2]
        check_pixels(path, spatial[0], spatial[1], max_pixels, "the TIFF page")
        if n_frames > 1:
            shapes = {tuple(getattr(p, "shape", ())) for p in tf.pages[:64]}
            if frame is None and len(shapes) > 1:
                raise ImageReadError(
                    path,
                    f"multi-page TIFF whose {n_frames} pages differ in size (a pyramid, thumbnail "
                    "or mixed stack): which page is the image is unclear; save the image as a "
                    "single-page file, or read it with frame=k",
                )
            note_frame(meta, "multi-page TIFF", "page", frame_used, n_frames)
        arr = page.asarray()
        try:
            photometric = tifffile.PHOTOMETRIC(int(page.photometric)).name
        except (TypeError, ValueError):
            photometric = "MINISBLACK"
        separate = int(page.planarconfig or 1) == int(tifffile.PLANARCONFIG.SEPARATE)
        colormap = page.colormap if photometric == "PALETTE" else None
    if separate and arr.ndim == 3 and arr.shape[0] in (2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    meta.update(n_frames=n_frames, frame_used=frame_used, decoder="tifffile")
    meta["tiff_photometric"] = photometric
    if colormap is not None:
        # colormap is (3, 2**bits) uint16: expand the palette to RGB.
        arr = np.moveaxis(np.asarray(colormap)[:, arr], 0, -1).astype(np.uint16)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey+alpha or RGBA: drop alpha
        arr = arr[..., 0] if arr.shape[-1] == 2 else arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if photometric == "MINISWHITE":
        meta["tiff_min_is_white"] = True
    return arr


def read_raster(
    path: str | os.PathLike,
    fmt: str,
    *,
    window: str = "header",
    percentiles: tuple[float, float] = (0.5, 99.5),
    frame: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG/JPEG/TIFF/BMP file; options are validated by :func:`medtl.io.read_image`.

    ``window="header"`` scales by bit depth; ``"full"`` / ``"percentile"`` rescale grey images by
    their own range (ignored for colour images, with a note).
    """
    path = str(path)
    meta: dict[str, Any] = {"format": fmt, "inverted": False, "notes": []}
    arr = None
    if fmt == "tiff":
        try:
            arr = _read_tifffile(path, frame, meta, max_pixels)
        except (ImageReadError, MemoryError):
            raise
        except Exception as exc:
            logger.debug("tifffile failed (%s); trying Pillow", type(exc).__name__)
    if arr is None:
        arr = _read_pillow(path, fmt, frame, meta, max_pixels)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or arr.size == 0:
        raise ImageReadError(path, f"unsupported image layout: decoded array of shape {arr.shape}")
    meta["source_shape"] = tuple(int(s) for s in arr.shape)
    meta["rows"], meta["columns"] = int(arr.shape[0]), int(arr.shape[1])
    meta["colour"] = arr.ndim == 3
    meta["bits"] = int(arr.dtype.itemsize * 8) if arr.dtype != np.bool_ else 1

    if arr.ndim == 2 and window in ("full", "percentile"):
        meta["original_dtype"] = str(arr.dtype.newbyteorder("="))
        if window == "full":
            image = minmax_to_unit(arr, meta)
        else:
            image = percentile_to_unit(arr, percentiles, meta)
        meta["window_used"] = window
    else:
        if window != "header":
            meta["notes"].append(f"window={window!r} ignored for a colour image")
        image = scale_by_dtype(arr, meta)
        meta["window_used"] = "bit_depth"
    if meta.pop("tiff_min_is_white", False):
        image = 1.0 - image
        meta["inverted"] = True
    return clip_to_unit(image), meta
