"""MedMNIST-format ``.npz`` reader: split -> (uint8 images, int64 1-D labels)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from medtl.errors import ImageReadError
from medtl.io._intensity import clip_to_unit

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
    if labels.ndim != 1:
        raise ImageReadError(
            path,
            f"key {key!r} must have shape (N,) or (N, 1); got {labels.shape} (multi-label sets "
            "such as ChestMNIST need one column chosen first, e.g. labels[:, k])",
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


def read_npz(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST-format ``.npz`` into ``{split: (images uint8, labels int64 1-D)}``.

    Keys ``{split}_images`` / ``{split}_labels`` for split in train, val, test. A split may be
    absent as a whole; half a split (images without labels or the reverse) is an error.

    Raises:
        ImageReadError: the file cannot be opened, holds no split, or a key is missing or odd.

    Example:
        >>> splits = read_npz("pneumoniamnist.npz")
        >>> images, labels = splits["train"]
    """
    path = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ImageReadError(path, "is a single .npy array, not an .npz archive")
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
                out[split] = (images, labels)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found; check the path") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ImageReadError(
            path, f"cannot read as a NumPy .npz archive ({type(exc).__name__}: {exc})"
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
