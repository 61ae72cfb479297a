"""Reference decodings and embeddings whose digests are tied to the cache key versions (issue 28).

``tests/cache_reference.json`` stores, for the current ``IMAGE_KEY_VERSION`` and
``EMBEDDING_KEY_VERSION`` (``medtl/_cachekeys.py``), a digest of the pixels ``prepare_images`` makes
from a set of reference files (the values the decoded-image cache holds) and a rounded summary of the
embeddings of a few reference images. ``tests/test_cache_keys.py`` recomputes them: a reader or
extraction change that changes a value without a version bump fails, so a cache can never serve the
old value under the old key. After a deliberate bump, regenerate (from the repository root):

    python -m tests.make_cache_reference

Pixels are digested exactly (uint8, as cached). Embeddings are computed in fp32 and summarised by 8
fixed projections per image (6 significant digits), compared within ``EMBEDDING_RTOL`` of the largest
reference value: float results differ in their last bits between CPUs (bf16 far more, so it is not
used here), and an exact digest would fail on another machine; a relative 1e-3 survives that (fp32
noise is ~1e-6) and still catches any change to preprocessing, pooling or the layers used, though
not a change as small as folding BatchNorm in fp32 (~1e-6, immaterial to any result).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medtl import cachekeys

REFERENCE_FILE = Path(__file__).with_name("cache_reference.json")
EMBEDDING_RTOL = 1e-3

# pydicom / pydicom-data files: MONOCHROME1 radiographs (uncompressed and lossy JPEG 2000), modality
# and VOI LUTs, RLE (grey and colour), JPEG 2000 lossless, JPEG lossless, JPEG-LS, JPEG baseline in
# YBR, big endian, a rescaled CT.
DICOM_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("RG1_UNCI.dcm", {"window": "header"}, 64),
    ("RG1_UNCI.dcm", {"window": "full"}, 64),
    ("RG1_UNCI.dcm", {"window": "percentile"}, 64),
    ("RG3_J2KI.dcm", {"window": "header"}, 64),
    ("mlut_18.dcm", {"window": "full"}, 64),
    ("vlut_04.dcm", {"window": "header"}, 64),
    ("MR_small_RLE.dcm", {"window": "header"}, 64),
    ("SC_rgb_rle.dcm", {"window": "header"}, 48),
    ("MR_small_jp2klossless.dcm", {"window": "header"}, 32),
    ("JPEG-LL.dcm", {"window": "header"}, 64),
    ("JPEGLSNearLossless_16.dcm", {"window": "full"}, 16),
    ("SC_rgb_jpeg_dcmtk.dcm", {"window": "header"}, 48),
    ("MR_small_bigendian.dcm", {"window": "header"}, 64),
    ("CT_small.dcm", {"window": "header"}, 64),
]


def _pattern(h: int, w: int, k: int = 0) -> np.ndarray:
    """A deterministic non-constant 0..65535 pattern from integer arithmetic only."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    return ((x * 1031 + y * 2053 + (x * y) % 97 * 131 + k * 7919) % 65536).astype(np.int64)


def _grey8(h: int = 40, w: int = 36) -> np.ndarray:
    return (_pattern(h, w) >> 8).astype(np.uint8)


def generated_files(folder: Path, stored: dict[str, str] | None) -> dict[str, Path]:
    """PNG 8/16-bit and 16-bit TIFF written here (lossless: their decoding is exact whatever the
    encoder), and JPEGs decoded from ``stored`` bytes (the JPEG encoder's output differs between
    libjpeg versions, so the bytes are made once, by the generator, and kept in the reference)."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    g8 = _grey8()
    Image.fromarray(g8).save(files.setdefault("grey8.png", folder / "grey8.png"))
    g16 = _pattern(40, 36).astype(np.uint16)
    Image.fromarray(g16).save(files.setdefault("grey16.png", folder / "grey16.png"))
    tifffile.imwrite(files.setdefault("grey16.tif", folder / "grey16.tif"), g16)
    rgb = np.stack([g8, np.flipud(g8), np.fliplr(g8)], axis=-1)
    Image.fromarray(rgb).save(files.setdefault("rgb8.png", folder / "rgb8.png"))
    jpegs = stored if stored is not None else _make_jpegs(g8)
    for name, b64 in jpegs.items():
        files[name] = folder / name
        files[name].write_bytes(base64.b64decode(b64))
    return files


def _make_jpegs(g8: np.ndarray) -> dict[str, str]:
    """Grey JPEG, grey content saved as RGB JPEG (the brain MRI case) and a colour JPEG."""
    from PIL import Image

    out = {}
    grey_rgb = np.stack([g8] * 3, axis=-1)
    colour = np.stack([g8, 255 - g8, np.roll(g8, 5, axis=1)], axis=-1)
    for name, arr in (("grey.jpg", g8), ("grey_as_rgb.jpg", grey_rgb), ("colour.jpg", colour)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out[name] = base64.b64encode(buf.getvalue()).decode()
    return out


def pixel_digest(path: str | Path, read_options: dict[str, Any], size: int) -> str:
    """sha256 of what the decoded-image cache holds for a file: ``prepare_images``' uint8 pixels."""
    from medtl.data import prepare_images
    from medtl.data._types import Sample

    prep = prepare_images(
        [Sample(path=str(path), label=0, uid="ref")], ["x"], size=size, channels=None,
        read_options=read_options, progress=False,
    )  # fmt: skip
    assert not prep.skipped, prep.skipped
    px = np.ascontiguousarray(prep.pixels)
    return hashlib.sha256(str(px.shape).encode() + px.tobytes()).hexdigest()[:24]


def image_cases(folder: Path, stored_jpegs: dict[str, str] | None) -> dict[str, tuple]:
    """name -> (path, read options, size) of every reference decoding; DICOMs that are not
    installed are left out (the test then says which)."""
    from pydicom.data import get_testdata_file

    cases: dict[str, tuple] = {}
    for name, opts, size in DICOM_CASES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            cases[f"{name}|{json.dumps(opts, sort_keys=True)}|{size}"] = (path, opts, size)
    for name, path in generated_files(folder, stored_jpegs).items():
        for size in (32, 24):
            cases[f"{name}|{{}}|{size}"] = (path, {}, size)
    return cases


# -- embeddings ------------------------------------------------------------------------------------

EMBEDDING_CASES: list[tuple[str, int, int]] = [
    ("tiny_test", 32, 1),
    ("tiny_test", 32, 3),
    ("efficientnet_lite0.in1k", 64, 1),
]


def reference_pixels(size: int, channels: int, n: int = 4) -> np.ndarray:
    """Deterministic uint8 images (n, channels, size, size) with structure (not noise)."""
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        for c in range(channels):
            out[i, c] = (_pattern(size, size, k=3 * i + c) >> 8).astype(np.uint8)
    return out


def _projections(dim: int, k: int = 8) -> np.ndarray:
    d = np.arange(dim)[None, :]
    j = np.arange(k)[:, None]
    return (((d * 37 + j * 11) % 17) - 8).astype(np.float64) / 8.0 / np.sqrt(dim)


def embedding_summary(backbone: str, size: int, channels: int) -> list[list[float]]:
    """8 fixed projections (6 significant digits) of the fp32 embeddings of the reference images,
    extracted by the code the embedding cache serves (``extract_embeddings``)."""
    import torch

    from medtl.strategies._base import _build_network
    from medtl.strategies._feature_extraction import extract_embeddings

    torch.manual_seed(0)  # tiny_test's random weights
    model, cfg = _build_network(backbone, 2, pretrained=True)
    emb = extract_embeddings(
        model, cfg, reference_pixels(size, channels), precision="fp32", progress=False
    ).astype(np.float64)
    return [[float(f"{v:.6g}") for v in row] for row in emb @ _projections(emb.shape[1]).T]


def library_snapshot(names: tuple[str, ...]) -> dict[str, str]:
    from medtl.cachekeys import installed_version

    return {n: installed_version(n) for n in names}


# the libraries the cache keys name (medtl.cachekeys owns the lists), plus numpy
IMAGE_LIBRARIES = (*cachekeys.DECODER_LIBRARIES, "numpy")
EMBEDDING_LIBRARIES = (*cachekeys.EMBEDDING_LIBRARIES, "numpy")


def build_reference(folder: Path) -> dict[str, Any]:
    """The whole reference document, computed with the installed code and libraries."""
    from medtl.cachekeys import EMBEDDING_KEY_VERSION, IMAGE_KEY_VERSION

    jpegs = _make_jpegs(_grey8())
    images = {k: pixel_digest(*v) for k, v in image_cases(folder, jpegs).items()}
    embeddings = {f"{b}|{s}|c{c}": embedding_summary(b, s, c) for b, s, c in EMBEDDING_CASES}
    return {
        "note": "made by `python -m tests.make_cache_reference`; see tests/_cache_reference.py",
        "image_key_version": IMAGE_KEY_VERSION,
        "image_libraries": library_snapshot(IMAGE_LIBRARIES),
        "jpeg_bytes": jpegs,
        "images": images,
        "embedding_key_version": EMBEDDING_KEY_VERSION,
        "embedding_libraries": library_snapshot(EMBEDDING_LIBRARIES),
        "embedding_rtol": EMBEDDING_RTOL,
        "embeddings": embeddings,
    }
