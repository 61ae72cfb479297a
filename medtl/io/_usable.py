"""Is a decoded image usable as data? Size, shape and content checks shared by every reader.

A file can decode cleanly and still carry nothing to learn from: a 1x1 image, a 1x60000 strip, a
blank export, or a DICOM whose pixels are all padding but a handful. The readers flag such images in
their metadata (``meta["unusable_reason"]``) instead of refusing them, so ``read_image`` still shows
them to a user who asks; the dataset loaders and ``predict`` skip them with that reason.

What is decided here (see the README's reliability section):

* skipped: a side under :data:`MIN_SIDE` pixels; a side more than :data:`MAX_ASPECT` times the other;
  every pixel one value (constant); fewer than :data:`MIN_INFORMATIVE_FRACTION` of the pixels differing
  from the dominant extreme value (all padding but a few pixels);
* noted (used, and counted in the data card): more than :data:`MOSTLY_PADDING_FRACTION` of the pixels
  at one extreme value (a wide blank border or padding around a usable image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "MAX_ASPECT",
    "MIN_INFORMATIVE_FRACTION",
    "MIN_SIDE",
    "MOSTLY_PADDING_FRACTION",
    "flag_unusable",
    "shape_problem",
]

#: Smallest image side (pixels) accepted as data; MedMNIST's 28 px is the smallest common size.
MIN_SIDE = 8
#: Largest ratio of the long side to the short one (a panoramic dental film is about 2.5:1).
MAX_ASPECT = 10.0
#: Images with fewer pixels than this share away from the dominant extreme value are skipped.
MIN_INFORMATIVE_FRACTION = 0.01
#: Images with more than this share of pixels at one extreme value get a note (still used).
MOSTLY_PADDING_FRACTION = 0.9


def shape_problem(rows: int, columns: int) -> str | None:
    """Why an image of ``rows`` x ``columns`` pixels is not usable as data, or None.

    Example:
        >>> shape_problem(1, 60000)
        'degenerate size: 60000x1 pixels (a side under 8 px); not an image to learn from'
    """
    small, large = min(rows, columns), max(rows, columns)
    if small < MIN_SIDE:
        return (
            f"degenerate size: {columns}x{rows} pixels (a side under {MIN_SIDE} px); not an image "
            "to learn from"
        )
    if large > MAX_ASPECT * small:
        return (
            f"extreme aspect ratio: {columns}x{rows} pixels (more than {MAX_ASPECT:g}:1); a strip, "
            "not an image to learn from; crop or re-export it"
        )
    return None


def flag_unusable(image: np.ndarray, meta: dict[str, Any]) -> None:
    """Mark in ``meta`` an image that is not usable as data, or note one that is mostly padding.

    Sets ``meta["unusable_reason"]`` (a short sentence) for a degenerate size, a constant image (also
    ``meta["constant"]`` and ``meta["constant_reason"]``) or one that is all padding but a few pixels;
    appends a note for an image that is mostly padding but usable.
    """
    if image.size == 0:
        return
    reason = shape_problem(int(image.shape[0]), int(image.shape[1]))
    lo, hi = float(image.min()), float(image.max())
    if reason is None and lo == hi:
        meta["constant"] = True
        where = "after the modality LUT and window " if meta.get("format") == "dicom" else ""
        reason = (
            f"constant image {where}(every pixel = {lo:.3g}): a blank export, or a header window "
            "that misses the pixel values (try window='full')"
        )
        meta["constant_reason"] = reason
        if "constant image" not in " ".join(meta.get("notes", [])):
            meta.setdefault("notes", []).append("constant image (no intensity range)")
    elif reason is None:
        n = image.size
        dominant = max(int(np.count_nonzero(image == lo)), int(np.count_nonzero(image == hi)))
        informative = n - dominant
        if informative < MIN_INFORMATIVE_FRACTION * n:
            reason = (
                f"nearly constant image: {100 * dominant / n:.2f}% of the pixels have one value "
                f"(padding or blank) and only {informative} differ; no image to learn from"
            )
        elif dominant > MOSTLY_PADDING_FRACTION * n:
            meta.setdefault("notes", []).append(
                f"mostly padding: {100 * dominant / n:.0f}% of the pixels have one value (a wide "
                "blank border or padding); used"
            )
    if reason is not None:
        meta["unusable_reason"] = reason
