"""DICOM reader: pydicom's own pixel pipeline mapped onto medtl's intensity contract.

Order (DICOM PS3.4 grayscale pipeline): decode (any transfer syntax pydicom has a decoder for) ->
modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (VOI LUT Sequence or window
centre/width, or full range / percentiles on request) -> scale to [0, 1] -> invert MONOCHROME1 so
that bright = dense. Colour: PALETTE COLOR through the palette, YBR_* to RGB (pydicom's decoders
already convert YBR to RGB when they can; we convert only what is still YBR afterwards).

The metadata dict is built from an allow-list of technical tags; nothing else from the header is
copied, so patient identifiers never leave this module. Its ``attributes`` entry holds the subgroup
attributes (sex, age band from PatientAge, view, manufacturer, model, modality, body part) as
normalised by :mod:`medtl.subgroups`, which owns that allow-list; never a date, name or id.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np

from medtl.errors import ImageReadError
from medtl.io._guard import MAX_PIXELS, check_pixels, note_frame
from medtl.io._intensity import (
    clip_to_unit,
    linear_to_unit,
    minmax_to_unit,
    percentile_to_unit,
)
from medtl.subgroups import DICOM_ATTRIBUTES, dicom_attributes

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# A probe covering every possible stored value, used to ask pydicom for a VOI LUT's output range.
_LUT_PROBE = np.arange(-(2**16), 2**17, dtype=np.int64)
# Install hint per missing decoder dependency (as named by pydicom's Decoder.missing_dependencies).
_PLUGIN_HINT = (
    "install a decoder plugin: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
    "pylibjpeg-rle` (JPEG, JPEG-LS, JPEG 2000, RLE) or `pip install python-gdcm`"
)


def _plain(value: Any) -> Any:
    """Turn a pydicom value into plain Python (str/int/float/tuple) so no pydicom objects leak."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(_plain(v) for v in value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _load(path: str) -> tuple[Any, bool]:
    """Parse the file; also say whether pydicom hit the end of the file mid-element."""
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=True)
            _ = len(ds)  # make sure the header parses
        except Exception as exc:
            # The message of a header parse error may quote element values; keep only its type.
            raise ImageReadError(
                path, f"cannot parse the DICOM header ({type(exc).__name__}); the file is damaged"
            ) from exc
    if caught:
        # Header warnings may quote element values (possible identifiers): count them only.
        logger.debug("%d warning(s) while parsing a DICOM header", len(caught))
    hit_eof = any("end of file" in str(w.message).lower() for w in caught)
    return ds, hit_eof


def _transfer_syntax(ds: Any) -> Any:
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        return UID(ts)
    # A bare data set without file meta: use the encoding pydicom detected while parsing it.
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _decode(path: str, ds: Any, ts: Any, frame: int) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise ImageReadError(
            path,
            f"unsupported transfer syntax {ts.name} ({ts}); no pixel decoder exists for it in "
            "pydicom; convert the file to an uncompressed syntax (e.g. dcmtk `dcmdjpeg`)",
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(
            f"{plugin}: {', '.join(deps)}" for plugin, deps in decoder.missing_dependencies.items()
        )
        raise ImageReadError(
            path,
            f"no decoder installed for transfer syntax {ts.name} ({ts}); missing: {missing}. "
            f"Fix: {_PLUGIN_HINT}",
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr, info = decoder.as_array(ds, index=frame)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        if len(lines) > 1 and "all available plugins" in lines[0]:
            # one line per plugin that failed ("pylibjpeg: ..."), their tracebacks already dropped
            tried = "; ".join(ln[:150] for ln in lines[1:4])
            raise ImageReadError(
                path,
                f"the compressed pixel data ({ts.name}) is corrupt: every installed decoder failed "
                f"({tried}); re-export or re-copy the file",
            ) from exc
        msg = lines[0][:300] if lines else type(exc).__name__
        hint = ""
        if "less than expected" in msg or "truncat" in msg.lower():
            hint = " (the pixel data is truncated: the file was cut short, re-export or re-copy it)"
        elif "plugin" in msg.lower() or "decoder" in msg.lower():
            hint = f". Fix: {_PLUGIN_HINT}"
        raise ImageReadError(
            path, f"cannot decode the pixel data ({ts.name}): {msg}{hint}"
        ) from exc
    if caught:  # decoder warnings (e.g. a header/codestream mismatch) become notes, not stderr
        first = str(caught[0].message).splitlines()[0][:200] if str(caught[0].message) else ""
        info = {
            **info,
            "decoder_warnings": [f"the pixel decoder warned {len(caught)} time(s): {first}"],
        }
    return arr, info


# Modality-LUT and window values beyond these are not physical (CT is about -1e3..3e4 HU; PET/MR
# rescales stay far inside): such headers are damaged, and would turn the image blank or scrambled.
_MAX_ABS_SLOPE = 1e6
_MAX_ABS_VALUE = 1e9
_NATIVE_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
)


def _header_int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else default
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _header_float(ds: Any, keyword: str) -> float | None:
    """First value of a numeric header field as float (None if absent; NaN if unparseable)."""
    if keyword not in ds:
        return None
    value = ds.get(keyword)
    if type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _check_geometry(path: str, ds: Any, ts: Any, n_frames: int, max_pixels: int | None) -> None:
    """Refuse, before decoding, pixel data whose declared size is absurd or disagrees with itself."""
    if "PixelData" not in ds:
        return
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    bits = _header_int(ds, "BitsAllocated")
    samples = _header_int(ds, "SamplesPerPixel", 1)
    if rows is None or cols is None or bits is None:
        missing = [
            k for k, v in (("Rows", rows), ("Columns", cols), ("BitsAllocated", bits)) if v is None
        ]
        raise ImageReadError(
            path, f"the DICOM header lacks a usable {'/'.join(missing)}; the file is damaged"
        )
    if bits not in (1, 8, 16, 32, 64) or samples not in (1, 3) or n_frames < 1:
        raise ImageReadError(
            path,
            f"the DICOM header declares an impossible pixel layout (BitsAllocated {bits}, "
            f"SamplesPerPixel {samples}, NumberOfFrames {n_frames}); the file is damaged",
        )
    check_pixels(path, rows, cols, max_pixels, "the DICOM header")
    if str(ts) in _NATIVE_SYNTAXES:
        from pydicom.pixels.utils import get_expected_length

        expected = int(get_expected_length(ds, unit="bytes"))
        data = ds.PixelData
        actual = len(data)
        # Trailing padding (one byte to an even length, or a block of one repeated value, as in
        # pydicom's MR_small_padded) is harmless; a short file is reported as truncated by the
        # decoder; extra bytes holding image data mean Rows/Columns/BitsAllocated/frames do not
        # describe the pixel data, and the image would come out scrambled.
        if actual > expected + 1 and len(set(data[expected : expected + 65536])) > 1:
            raise ImageReadError(
                path,
                f"the pixel data holds {actual} bytes but Rows x Columns x SamplesPerPixel x "
                f"BitsAllocated x frames declare {expected}: the header disagrees with the pixel "
                "data (the image would come out scrambled); fix or re-export the file",
            )
        return
    _check_codestream(path, ds, rows, cols, max_pixels)


def _codestream_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the start of a JPEG (SOFn) or JPEG 2000 (SIZ) codestream, if found."""
    if data[:2] == b"\xff\xd8":  # JPEG: walk the markers up to the first start-of-frame
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
                return (
                    int.from_bytes(data[i + 5 : i + 7], "big"),
                    int.from_bytes(data[i + 7 : i + 9], "big"),
                )
            i += 2 + length
        return None
    j = data.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (inside a JP2 box or bare)
    if j >= 0 and j + 24 <= len(data):
        xsiz, ysiz, xo, yo = (
            int.from_bytes(data[j + 8 + 4 * k : j + 12 + 4 * k], "big") for k in range(4)
        )
        return ysiz - yo, xsiz - xo
    return None


def _check_codestream(path: str, ds: Any, rows: int, cols: int, max_pixels: int | None) -> None:
    """The compressed image inside must have the size the header declares (checked undecoded)."""
    from pydicom.encaps import generate_fragments

    size = None
    try:  # the first item is the basic offset table (often empty), then the fragments
        for k, item in enumerate(generate_fragments(ds.PixelData)):
            size = _codestream_size(bytes(item[:65536]))
            if size is not None or k >= 2:
                break
    except Exception:  # a malformed encapsulation is reported by the decoder
        return
    if size is None:
        return
    h, w = size
    if (h, w) != (rows, cols):
        raise ImageReadError(
            path,
            f"the compressed image inside is {w}x{h} pixels but the header declares Columns x "
            f"Rows = {cols}x{rows}: the header disagrees with the pixel data (damaged, or a "
            "decompression bomb); not decoded",
        )
    check_pixels(path, h, w, max_pixels, "the compressed image inside the DICOM file")


def _check_modality_values(path: str, ds: Any) -> None:
    """Refuse rescale slope/intercept that are missing numbers, zero or absurd."""
    slope, intercept = _header_float(ds, "RescaleSlope"), _header_float(ds, "RescaleIntercept")
    problems = []
    if slope is not None and (not np.isfinite(slope) or slope == 0 or abs(slope) > _MAX_ABS_SLOPE):
        problems.append(f"RescaleSlope {slope:g}")
    if intercept is not None and (not np.isfinite(intercept) or abs(intercept) > _MAX_ABS_VALUE):
        problems.append(f"RescaleIntercept {intercept:g}")
    if problems:
        raise ImageReadError(
            path,
            f"unusable modality LUT in the DICOM header ({', '.join(problems)}): pixel values "
            "cannot be turned into physical units; fix the header or re-export the file",
        )


def _check_window_values(path: str, ds: Any) -> None:
    """Refuse a header window (centre/width) that is not finite or absurdly large."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return
    center, width = _header_float(ds, "WindowCenter"), _header_float(ds, "WindowWidth")
    if center is None or width is None:
        return
    if (
        not np.isfinite(center)
        or not np.isfinite(width)
        or abs(center) > _MAX_ABS_VALUE
        or abs(width) > 2 * _MAX_ABS_VALUE
    ):  # a width below 1 is handled later (pydicom refuses it; the full range is used, with a note)
        raise ImageReadError(
            path,
            f"unusable window in the DICOM header (centre {center:g}, width {width:g}); "
            "read with window='full' or 'percentile' to ignore it, or fix the header",
        )


def _lut_problem(item: Any) -> str | None:
    """What is wrong with one Modality or VOI LUT item (its descriptor and data), or None.

    The messages name the DICOM elements, never their values beyond counts (no header text leaks).
    """
    if "LUTDescriptor" not in item:
        return "the item has no LUT Descriptor (0028,3002)"
    desc = item.LUTDescriptor
    values = (
        list(desc)
        if isinstance(desc, list | tuple) or type(desc).__name__ == "MultiValue"
        else [desc]
    )
    if len(values) != 3:
        return f"LUT Descriptor (0028,3002) has {len(values)} value(s), expected 3"
    try:
        n_entries, _, bits = (int(v) for v in values)
    except (TypeError, ValueError):
        return "LUT Descriptor (0028,3002) holds values that are not integers"
    n_entries = n_entries or 65536  # 0 means 2**16 entries
    if not 8 <= bits <= 16:
        return f"LUT Descriptor (0028,3002) declares {bits} bits per entry, expected 8 to 16"
    data = item.get("LUTData")
    if data is None or (hasattr(data, "__len__") and len(data) == 0):
        return "the item has no LUT Data (0028,3006)"
    count = (
        len(data) // 2
        if isinstance(data, bytes | bytearray)
        else len(data)
        if hasattr(data, "__len__")
        else 1
    )
    if count < n_entries:
        return (
            f"LUT Data (0028,3006) holds {count} entries but the LUT Descriptor (0028,3002) "
            f"declares {n_entries}"
        )
    return None


def _apply_modality_lut(path: str, arr: np.ndarray, ds: Any) -> np.ndarray:
    """pydicom's modality LUT; a malformed LUT or rescale is refused naming the DICOM element."""
    from pydicom.pixels import apply_modality_lut

    fix = (
        "the stored values cannot be turned into physical units; fix or remove the element in the "
        "header (e.g. with dcmtk's dcmodify) or re-export the file"
    )
    element = "(0028,1052)/(0028,1053) Rescale Intercept/Slope"
    if "ModalityLUTSequence" in ds:
        element = "(0028,3000) Modality LUT Sequence"
        seq = ds.ModalityLUTSequence
        problem = "the sequence is empty" if len(seq) == 0 else _lut_problem(seq[0])
        if problem is not None:
            raise ImageReadError(path, f"{element}: {problem}; {fix}")
    try:
        return apply_modality_lut(arr, ds)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ImageReadError(
            path, f"{element} cannot be applied ({type(exc).__name__}); {fix}"
        ) from None


_VOI_FALLBACK = (
    "ignored, using the window centre/width or the full range instead (fix the header, or read "
    "with window='full' to skip it)"
)


def _header_voi(values: np.ndarray, ds: Any, meta: dict[str, Any]) -> np.ndarray | None:
    """Apply the header's VOI LUT Sequence or window centre/width; None when it has neither."""
    from pydicom.pixels import apply_voi, apply_windowing

    problem = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        problem = _lut_problem(ds.VOILUTSequence[0])
    if problem is not None:
        warnings.warn(f"(0028,3010) VOI LUT Sequence: {problem}; {_VOI_FALLBACK}.", stacklevel=4)
        meta.setdefault("notes", []).append(f"malformed VOI LUT ignored: {problem}")
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        try:
            item = ds.VOILUTSequence[0]
            out = apply_voi(values, ds, index=0)
            # Output range of the LUT: 2**bits - 1 per its descriptor; many files declare 16
            # bits but store 12-bit entries, so (like dcmtk) use the bits the entries need.
            desc_bits = int(item.LUTDescriptor[2])
            lut_max = float(np.max(apply_voi(_LUT_PROBE, ds, index=0)))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            warnings.warn(
                f"(0028,3010) VOI LUT Sequence cannot be applied ({type(exc).__name__}); "
                f"{_VOI_FALLBACK}.",
                stacklevel=4,
            )
            meta.setdefault("notes", []).append("malformed VOI LUT ignored")
        else:
            bits = min(desc_bits, max(1, int(lut_max).bit_length()))
            meta["window_used"] = "voi_lut"
            return linear_to_unit(out, 0.0, float(2**bits - 1), meta)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = ds.WindowCenter
        width = ds.WindowWidth
        center = float(center[0] if type(center).__name__ == "MultiValue" else center)
        width = float(width[0] if type(width).__name__ == "MultiValue" else width)
        try:
            out = apply_windowing(values, ds, index=0)
            # pydicom maps the window onto the stored value range [y_min, y_max]; ask it for
            # those limits by windowing two values far outside the window.
            big = abs(width) * 100.0 + 1e6
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                y_min, y_max = apply_windowing(np.array([center - big, center + big]), ds, 0)
        except ValueError as exc:
            warnings.warn(
                f"Ignoring an invalid window in the DICOM header (centre {center}, width {width}): "
                f"{exc}. Using the full range instead.",
                stacklevel=4,
            )
            meta.setdefault("notes", []).append("invalid header window ignored; used full range")
            return None
        meta["window_used"] = (center, width)
        meta["voi_function"] = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return linear_to_unit(out, float(y_min), float(y_max), meta)
    return None


def _grey(
    path: str,
    arr: np.ndarray,
    ds: Any,
    meta: dict[str, Any],
    window: str,
    percentiles: tuple[float, float],
) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        meta["modality_lut"] = "lut"
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        meta["modality_lut"] = "rescale"
        meta["rescale_slope"] = float(ds.get("RescaleSlope", 1.0) or 1.0)
        meta["rescale_intercept"] = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    else:
        meta["modality_lut"] = "none"
    values = _apply_modality_lut(path, arr, ds)
    if values.size and not (
        np.isfinite(values).all() and float(np.max(np.abs(values))) <= _MAX_ABS_VALUE
    ):
        raise ImageReadError(
            path,
            "the modality LUT (rescale or LUT sequence) gives non-finite or absurd values "
            f"(beyond ±{_MAX_ABS_VALUE:g}); fix the header or re-export the file",
        )

    image = None
    if window == "header":
        image = _header_voi(values, ds, meta)
        if image is None:
            meta.setdefault("notes", []).append("no window in the header; used the full range")
            window = "full"
    if window == "full":
        image = minmax_to_unit(values, meta)
        meta["window_used"] = "full"
    elif window == "percentile":
        image = percentile_to_unit(values, percentiles, meta)
        meta["window_used"] = "percentile"
    assert image is not None  # every branch above sets it

    meta["inverted"] = meta["photometric_interpretation"] == "MONOCHROME1"
    if meta["inverted"]:
        image = 1.0 - image
    return clip_to_unit(image)


def _colour(arr: np.ndarray, ds: Any, info: dict[str, Any], meta: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, convert_color_space

    decoded_pi = str(info.get("photometric_interpretation", meta["photometric_interpretation"]))
    if decoded_pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        meta["palette_applied"] = True
        return clip_to_unit(rgb.astype(np.float64) / np.iinfo(rgb.dtype).max)
    if decoded_pi in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, decoded_pi, "RGB")
        decoded_pi = "RGB"
    elif decoded_pi != "RGB":
        meta.setdefault("notes", []).append(f"colour space {decoded_pi} kept as decoded")
    meta["decoded_photometric_interpretation"] = decoded_pi
    bits = int(info.get("bits_stored", ds.get("BitsStored", 8)))
    return linear_to_unit(arr, 0.0, float(2**bits - 1), meta)


def read_dicom_attributes(path: str | os.PathLike) -> dict[str, str]:
    """The subgroup attributes of a DICOM file, from its header only (no pixel data decoded).

    Only the keywords of :data:`medtl.subgroups.DICOM_ATTRIBUTES` are parsed.

    Raises:
        ImageReadError: the header cannot be parsed.
    """
    import pydicom

    path = str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header warnings may quote values: not shown
        try:
            ds = pydicom.dcmread(
                path,
                force=True,
                stop_before_pixels=True,
                specific_tags=list(DICOM_ATTRIBUTES.values()),
            )
        except Exception as exc:
            raise ImageReadError(
                path, f"cannot parse the DICOM header ({type(exc).__name__}); the file is damaged"
            ) from None
    return dicom_attributes(ds)


def read_dicom(
    path: str | os.PathLike,
    *,
    window: str = "header",
    percentiles: tuple[float, float] = (0.5, 99.5),
    frame: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one frame of a DICOM image into float32 [0, 1] plus de-identified metadata.

    Options are validated by :func:`medtl.io.read_image`, which is the public entry point.
    """
    path = str(path)
    ds, hit_eof = _load(path)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        if hit_eof or len(ds) == 0 or ("Rows" in ds and "Columns" in ds):
            raise ImageReadError(
                path,
                "the DICOM file is truncated: it ends before its pixel data is complete "
                "(re-export or re-copy the file)",
            )
        raise ImageReadError(
            path,
            "the DICOM file has no pixel data (e.g. a report, structured document or "
            "presentation state); only image objects can be read",
        )
    ts = _transfer_syntax(ds)
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n_frames = 1
    if frame is None:
        frame_used = n_frames // 2
    elif -n_frames <= frame < n_frames:
        frame_used = frame % n_frames
    else:
        raise ImageReadError(
            path,
            f"frame={frame} is out of range: the file has {n_frames} frame(s) (0..{n_frames - 1})",
        )

    try:
        _check_geometry(path, ds, ts, n_frames, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # an unparseable image field (the message may quote it: type only)
        raise ImageReadError(
            path,
            f"the DICOM header's image fields cannot be parsed ({type(exc).__name__}); the file "
            "is damaged",
        ) from None
    _check_modality_values(path, ds)
    if window == "header":
        _check_window_values(path, ds)
    arr, info = _decode(path, ds, ts, frame_used)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": _plain(ds.get("Modality")),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        "samples_per_pixel": int(info.get("samples_per_pixel", 1)),
        "bits_stored": int(info.get("bits_stored", 0)),
        "bits_allocated": int(info.get("bits_allocated", 0)),
        "pixel_representation": int(info.get("pixel_representation", 0)),
        "rows": int(info.get("rows", arr.shape[0])),
        "columns": int(info.get("columns", arr.shape[1])),
        "n_frames": n_frames,
        "frame_used": frame_used,
        "transfer_syntax": str(ts.name),
        "transfer_syntax_uid": str(ts),
        "pixel_spacing": _plain(spacing) if spacing else None,
        "view_position": _plain(ds.get("ViewPosition")) or None,
        "attributes": dicom_attributes(ds),
        "original_dtype": str(arr.dtype.newbyteorder("=")),
        "source_shape": tuple(int(s) for s in arr.shape),
        "inverted": False,
        "notes": list(info.get("decoder_warnings", [])),
    }
    note_frame(meta, "multi-frame DICOM", "frame", frame_used, n_frames)
    with warnings.catch_warnings():
        # Integer-overflow warnings on degenerate LUTs are handled by the range guards.
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if arr.ndim == 3 or meta["photometric_interpretation"] == "PALETTE COLOR":
            if window != "header":
                meta["notes"].append(f"window={window!r} ignored for a colour image")
            meta["window_used"] = "none (colour)"
            image = _colour(arr, ds, info, meta)
        else:
            image = _grey(path, arr, ds, meta, window, percentiles)
    if meta["inverted"]:
        logger.debug("MONOCHROME1 inverted so that bright = dense")
    return image, meta
