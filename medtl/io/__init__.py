"""Image readers with one intensity contract: float32 in [0, 1] (H×W or H×W×3) plus metadata
that carries no patient identifiers.

Example:
    >>> from medtl.io import read_image
    >>> image, meta = read_image("chest.dcm")  # DICOM, PNG, JPEG, TIFF or BMP, by content
"""

from __future__ import annotations

from medtl.io._detect import detect_format, is_dicom
from medtl.io._dicom import read_dicom_attributes
from medtl.io._guard import MAX_PIXELS
from medtl.io._intensity import to_grey
from medtl.io._npz import NPZ_SPLITS, npz_image, read_npz
from medtl.io._read import WINDOWS, read_image
from medtl.io._testing import write_test_dicom
from medtl.io._usable import flag_unusable, shape_problem

__all__ = [
    "MAX_PIXELS",
    "NPZ_SPLITS",
    "WINDOWS",
    "detect_format",
    "flag_unusable",
    "is_dicom",
    "npz_image",
    "read_dicom_attributes",
    "read_image",
    "read_npz",
    "shape_problem",
    "to_grey",
    "write_test_dicom",
]
