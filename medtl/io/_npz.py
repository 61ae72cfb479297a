"""MedMNIST-format ``.npz`` reader: split -> (uint8 images, int64 1-D labels), or float (N, K)
labels for a multi-label set such as ChestMNIST (1 / 0, -1 uncertain, NaN not labelled)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from medtl._fileio import MAX_FILE_BYTES, UnsafeFileError, open_regular
from medtl.errors import ImageReadError
from medtl.io._guard import MAX_PIXELS
from medtl.io._intensity import clip_to_unit
from medtl.io._usable import shape_problem

__all__ = ["NPZ_SPLITS", "npz_image", "read_npz"]

NPZ_SPLITS = ("train", "val", "test")


def _check_images(path: str, key: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ImageReadError(
            path, f"key {key!r} must have shape (N, H, W) or (N, H, W, 3); got {images.shape}"
        )
    if images.dtype != np.uint8:
        if (
            np.issubdtype(images.dtype, np.integer)
            and images.size
            and (images.min() >= 0 and images.max() <= 255)
        ):
            images = images.astype(np.uint8)
        else:
            raise ImageReadError(
                path,
                f"key {key!r} must hold uint8 images (MedMNIST format); got dtype {images.dtype}. "
                "Convert with (images * 255).round().astype(np.uint8) if they are in [0, 1].",
            )
    return images


def _check_labels(path: str, key: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2 and labels.shape[0] == n and labels.shape[1] > 1:
        return _multilabel(path, key, labels)
    if labels.ndim != 1:
        raise ImageReadError(
            path,
            f"key {key!r} must have shape (N,) for one label per image or (N, K) for K findings "
            f"per image; got {labels.shape}",
        )
    if labels.shape[0] != n:
        raise ImageReadError(
            path, f"key {key!r} has {labels.shape[0]} labels but the images key has {n} images"
        )
    integral_floats = np.issubdtype(labels.dtype, np.floating) and bool(
        np.all(labels == np.round(labels))
    )
    if not (np.issubdtype(labels.dtype, np.integer) or integral_floats):
        raise ImageReadError(
            path, f"key {key!r} must hold integer class labels; got dtype {labels.dtype}"
        )
    return labels.astype(np.int64)


def _multilabel(path: str, key: str, labels: np.ndarray) -> np.ndarray:
    """(N, K) finding labels as float64: 1, 0, -1 (uncertain) or NaN (not labelled)."""
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ImageReadError(path, f"key {key!r} must hold numbers; got dtype {labels.dtype}")
    y = labels.astype(np.float64)
    bad = ~(np.isnan(y) | np.isin(y, (0.0, 1.0, -1.0)))
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        raise ImageReadError(
            path,
            f"key {key!r} row {i}, column {k}: value {float(y[i, k])!r} is not a finding label (1, 0, "
            "-1 uncertain, NaN not labelled)",
        )
    return y


#: Default ceiling on the decoded size of all arrays of one .npz (MedMNIST's largest 224-px sets
#: stay under it; raise it with ``read_npz(..., max_bytes=...)``).
MAX_NPZ_BYTES = 8 * 1024**3


def _member_headers(path: str, zf: zipfile.ZipFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member, read from their headers (no array is loaded)."""
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[:-4]
        if info.flag_bits & 0x1:
            raise ImageReadError(path, f"member {key!r} is encrypted; save the arrays unencrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ImageReadError(
                path,
                f"member {key!r} uses zip compression method {info.compress_type}, which NumPy "
                "cannot read; re-save with numpy.savez or savez_compressed",
            )
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        if dtype.hasobject:
            raise ImageReadError(path, f"member {key!r} holds Python objects; not loaded")
        out[key] = (tuple(int(d) for d in shape), dtype)
    return out


def _check_headers(
    path: str,
    headers: dict[str, tuple[tuple[int, ...], np.dtype]],
    max_bytes: int | None,
    max_pixels: int | None,
) -> None:
    """Refuse, before loading, arrays whose declared shapes are inconsistent, empty or too large."""
    total = 0
    for split in NPZ_SPLITS:
        ik, lk = f"{split}_images", f"{split}_labels"
        if ik not in headers or lk not in headers:
            continue
        ishape, lshape = headers[ik][0], headers[lk][0]
        if len(ishape) not in (3, 4) or (len(ishape) == 4 and ishape[-1] not in (1, 3)):
            raise ImageReadError(
                path, f"key {ik!r} must have shape (N, H, W) or (N, H, W, 3); got {ishape}"
            )
        if ishape[0] and (ishape[1] == 0 or ishape[2] == 0):
            raise ImageReadError(
                path, f"key {ik!r} holds images of size {ishape[1]}x{ishape[2]} (empty images)"
            )
        if max_pixels is not None and ishape[1] * ishape[2] > max_pixels:
            raise ImageReadError(
                path,
                f"key {ik!r} declares images of {ishape[1]}x{ishape[2]} pixels, over the "
                f"max_pixels limit ({max_pixels}); raise max_pixels if genuine",
            )
        if not lshape or lshape[0] != ishape[0] or (len(lshape) == 2 and lshape[1] != 1):
            if len(lshape) == 2 and lshape[0] == ishape[0]:
                continue  # multi-label: reported with its own message when loaded
            raise ImageReadError(
                path,
                f"key {lk!r} has {lshape[0] if lshape else 0} labels (shape {lshape}) but "
                f"{ik!r} holds {ishape[0]} images; give one label per image",
            )
    for _key, (shape, dtype) in headers.items():
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if max_bytes is not None and total > max_bytes:
        raise ImageReadError(
            path,
            f"the arrays would need {total / 1024**3:.1f} GiB of memory, over the "
            f"{max_bytes / 1024**3:.1f} GiB limit; raise max_bytes if the file is genuine",
        )


def _file_limit(max_bytes: int | None) -> int | None:
    return None if max_bytes is None else max(max_bytes, MAX_FILE_BYTES)


def read_npz(
    path: str | os.PathLike,
    *,
    max_bytes: int | None = MAX_NPZ_BYTES,
    max_pixels: int | None = MAX_PIXELS,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST-format ``.npz`` into ``{split: (images uint8, labels int64 1-D)}``.

    Keys ``{split}_images`` / ``{split}_labels`` for split in train, val, test. A split may be
    absent as a whole; half a split (images without labels or the reverse) is an error.

    Shapes and sizes are checked from the arrays' headers before anything is loaded: empty (0x0)
    images, label counts that differ from image counts, and arrays that would need more than
    ``max_bytes`` of memory are refused with a reason.

    Raises:
        ImageReadError: the file cannot be opened, holds no split, or a key is missing or odd.

    Example:
        >>> splits = read_npz("pneumoniamnist.npz")
        >>> images, labels = splits["train"]
    """
    path = os.fspath(path)
    try:
        with open_regular(path, _file_limit(max_bytes)) as fh:
            magic = fh.read(6)
            if magic == b"\x93NUMPY":
                raise ImageReadError(
                    path,
                    "is a single NumPy .npy array (renamed .npz?), not a MedMNIST .npz archive; "
                    "save the splits with numpy.savez(train_images=..., train_labels=..., ...)",
                )
            if magic[:4] != b"PK\x03\x04":
                raise ImageReadError(path, "is not a .npz (zip) archive")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                _check_headers(path, _member_headers(path, zf), max_bytes, max_pixels)
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for split in NPZ_SPLITS:
                ik, lk = f"{split}_images", f"{split}_labels"
                if ik not in keys and lk not in keys:
                    continue
                for need, other in ((ik, lk), (lk, ik)):
                    if need not in keys:
                        raise ImageReadError(
                            path,
                            f"missing key {need!r} (the file has {other!r}); keys: {sorted(keys)}",
                        )
                images = _check_images(path, ik, z[ik])
                labels = _check_labels(path, lk, z[lk], images.shape[0])
                problem = shape_problem(int(images.shape[1]), int(images.shape[2]))
                if problem is not None and len(images):
                    raise ImageReadError(path, f"key {ik!r} holds images of {problem}")
                out[split] = (images, labels)
    except ImageReadError:
        raise
    except UnsafeFileError as exc:
        raise ImageReadError(path, exc.reason) from None
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found; check the path") from exc
    except MemoryError:
        raise ImageReadError(
            path, "not enough memory to load the arrays; free memory or use a smaller file"
        ) from None
    except (
        OSError,
        ValueError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        from medtl.io._guard import scrub

        raise ImageReadError(
            path, f"cannot read as a NumPy .npz archive ({type(exc).__name__}: {scrub(exc, path)})"
        ) from exc
    if not out:
        raise ImageReadError(
            path,
            "no MedMNIST split found: expected keys like 'train_images' and 'train_labels' "
            f"(also val_/test_); the file has {sorted(keys)}",
        )
    return out


def npz_image(arr: np.ndarray) -> np.ndarray:
    """One MedMNIST image (uint8 H×W or H×W×3) as float32 [0, 1]; H×W×1 becomes H×W.

    Example:
        >>> npz_image(np.full((28, 28), 255, np.uint8)).max()
        1.0
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ValueError(f"npz_image: 'arr' must be H×W or H×W×3; got shape {a.shape}")
    if a.dtype == np.uint8:
        return clip_to_unit(a.astype(np.float32) / 255.0)
    if a.dtype == np.uint16:
        return clip_to_unit(a.astype(np.float32) / 65535.0)
    if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        return clip_to_unit(a)
    raise ValueError(
        f"npz_image: 'arr' must be uint8 (or uint16, or float in [0, 1]); got {a.dtype}"
    )
