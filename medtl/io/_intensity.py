"""Intensity helpers shared by the readers: map arrays to float32 [0, 1] and colour to grey."""

from __future__ import annotations

from typing import Any

import numpy as np

from medtl.errors import ConfigError

__all__ = ["clip_to_unit", "linear_to_unit", "minmax_to_unit", "percentile_to_unit", "to_grey"]

# ITU-R BT.601 luma weights (the same as Pillow's "L" conversion).
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def clip_to_unit(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as contiguous float32 clipped to [0, 1] (guards against rounding overshoot)."""
    return np.ascontiguousarray(np.clip(np.asarray(arr, dtype=np.float32), 0.0, 1.0))


def linear_to_unit(arr: np.ndarray, low: float, high: float, meta: dict[str, Any]) -> np.ndarray:
    """Map ``low -> 0`` and ``high -> 1`` linearly, clipping outside; constant range gives zeros.

    When ``high <= low`` (a constant image or degenerate window) the result is all zeros and
    ``meta["notes"]`` says so, instead of dividing by zero.
    """
    low, high = float(low), float(high)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        meta.setdefault("notes", []).append("constant image (no intensity range); returned zeros")
        meta["constant"] = True
        return np.zeros(np.shape(arr), dtype=np.float32)
    out = (np.asarray(arr, dtype=np.float64) - low) / (high - low)
    return clip_to_unit(out)


def minmax_to_unit(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Min-max scaling over the finite values of ``arr`` (non-finite values become 0)."""
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        meta.setdefault("notes", []).append("non-finite pixel values set to the minimum")
        a = np.where(finite, a, np.nan)
    if not finite.any():
        return linear_to_unit(np.zeros(a.shape), 0.0, 0.0, meta)
    low, high = float(np.nanmin(a)), float(np.nanmax(a))
    return linear_to_unit(np.nan_to_num(a, nan=low), low, high, meta)


def percentile_to_unit(
    arr: np.ndarray, percentiles: tuple[float, float], meta: dict[str, Any]
) -> np.ndarray:
    """Clip at the given lower/upper percentiles, then scale that range to [0, 1]."""
    a = np.asarray(arr, dtype=np.float64)
    low, high = np.percentile(a, [float(percentiles[0]), float(percentiles[1])])
    meta["percentile_values"] = (float(low), float(high))
    return linear_to_unit(a, low, high, meta)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Convert an H×W×3 image in [0, 1] to H×W grey with ITU-R BT.601 luma; H×W passes through.

    Example:
        >>> to_grey(np.ones((4, 4, 3), np.float32)).shape
        (4, 4)
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return clip_to_unit(arr.astype(np.float32, copy=False) @ _LUMA_601)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0].astype(np.float32, copy=False)
    raise ConfigError(
        f"to_grey: 'image' must be H×W or H×W×3. Got shape {arr.shape}; "
        "drop an alpha channel first (image[..., :3])."
    )
