"""``prepare_images``: decode, convert channels, resize and quantise images, with an on-disk cache.

The cache holds one ``.npy`` per decoded-and-resized image, keyed by sha256 of (the reading code's
version and the decoding libraries' versions, see ``medtl.cachekeys.image_key_prefix``; file bytes;
read options; size). Its content is the image in its *native* channel count (grey or colour), so the same
entry serves ``channels=1``, ``3`` and ``None``; the key returned in ``PreparedImages.keys`` does include
the final channel count (embedding caches depend on it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl._fileio import MAX_FILE_BYTES, open_regular, read_regular_bytes, write_cache_entry
from medtl._options import check_range, look_up_option
from medtl.cachekeys import IMAGE_KEY_VERSION, image_key_prefix
from medtl.data._load import (
    failure_reason,
    log_skip,
    map_maybe_threaded,
    read_with_options,
    unusable_reason,
)
from medtl.data._multilabel import MULTILABEL, is_multilabel, targets_of
from medtl.data._sources import npz_image
from medtl.data._types import PreparedImages, Sample, SkippedFile
from medtl.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_CACHE_DIR = "images"  # the subfolder of a project's cache folder that holds decoded images
# A colour image whose channels differ by less than this (mean |difference|, in [0, 1] units) is
# treated as grey, e.g. a grey radiograph saved as RGB JPEG.
GREY_MEAN_TOL = 2.0 / 255.0
GREY_P99_TOL = 12.0 / 255.0


def is_near_grey(image: np.ndarray) -> bool:
    """True when an H×W×3 image has (near-)identical channels."""
    if image.ndim == 2:
        return True
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):  # fast path: grey saved as RGB
        return True
    step = max(1, int(np.sqrt(r.size / 65536)))  # a ~256×256 subsample is plenty
    img = image[::step, ::step].astype(np.float32, copy=False)
    for a, c in ((0, 1), (0, 2), (1, 2)):
        d = np.abs(img[..., a] - img[..., c])
        if float(d.mean()) > GREY_MEAN_TOL or float(np.percentile(d, 99)) > GREY_P99_TOL:
            return False
    return True


def _resize_unit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a float [0, 1] H×W or H×W×3 image to size×size (PIL bilinear, antialiased when shrinking)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image.astype(np.float32, copy=False)
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    out = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F").resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for p in planes
    ]
    return out[0] if image.ndim == 2 else np.stack(out, axis=-1)


def to_native_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Float [0, 1] image -> uint8 size×size (grey) or size×size×3 (genuine colour)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        if is_near_grey(img):
            img = img[..., 0] if np.array_equal(img[..., 0], img[..., 1]) else img.mean(axis=2)
    img = _resize_unit(img, size)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# Read options that only bound the work (not what the image looks like) stay out of the cache key.
_LIMIT_OPTIONS = ("max_bytes", "max_pixels")


def read_options_bytes(read_options: dict[str, Any] | None) -> bytes:
    opts = {k: v for k, v in (read_options or {}).items() if k not in _LIMIT_OPTIONS}
    return json.dumps(opts, sort_keys=True, default=str).encode("utf-8")


def image_cache_key(file_digest: bytes, options: bytes, size: int) -> str:
    """The decoded-image cache key of a file: sha256 of the reader and decoder versions
    (``medtl.cachekeys.image_key_prefix``), the file's sha256, its read options (as made by
    ``read_options_bytes``) and the size."""
    h = hashlib.sha256(image_key_prefix())
    h.update(file_digest)
    h.update(options)
    h.update(str(size).encode())
    return h.hexdigest()


def image_entry_path(images_dir: Path, file_digest_hex: str, key: str) -> Path:
    """Where the entry of ``key`` lives: ``<images>/<version>/<ab>/<file sha256>/<key>.npy``.

    One folder per reader version (``medtl cache clear --stale`` drops older ones whole) and one per
    source file, so every entry made from a file (any size or read options) is found from the file's
    bytes alone (``medtl cache clear --dataset``, ``verify --data``).
    """
    return images_dir / IMAGE_KEY_VERSION / file_digest_hex[:2] / file_digest_hex / f"{key}.npy"


class _Loader:
    """Decodes one sample to its native uint8 image, through the cache. Thread-safe."""

    def __init__(self, size: int, cache_dir: Path | None, read_options: dict[str, Any] | None):
        self.size = size
        self.cache_dir = cache_dir
        self.read_options = read_options
        self._opt = read_options_bytes(read_options)
        self._npz: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._folders: set[Path] = set()
        self._store_failed = False
        self.hits = 0

    def _npz_arrays(self, path: str) -> dict:
        with self._lock:
            if path not in self._npz:
                from medtl.io import read_npz

                self._npz[path] = read_npz(path)
            return self._npz[path]

    def __call__(self, s: Sample) -> tuple[np.ndarray, str] | SkippedFile:
        try:
            if s.index is not None and s.path.lower().endswith(".npz"):
                raw = npz_image(self._npz_arrays(s.path), s.index)
                h = hashlib.sha256(
                    image_key_prefix() + b"npz" + str(raw.shape).encode() + raw.tobytes()
                )
                h.update(str(self.size).encode())
                img = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw
                reason = unusable_reason(img)
                if reason is not None:
                    log_skip(s, reason)
                    return SkippedFile(s.path, reason, s.uid)
                return to_native_uint8(img, self.size), h.hexdigest()
            max_bytes = (self.read_options or {}).get("max_bytes", MAX_FILE_BYTES)
            data = read_regular_bytes(s.path, max_bytes)  # FIFOs, devices, loops: refused
            digest = hashlib.sha256(data).digest()
            key = image_cache_key(digest, self._opt, self.size)
            cpath = (
                None
                if self.cache_dir is None
                else image_entry_path(self.cache_dir, digest.hex(), key)
            )
            if cpath is not None and os.path.lexists(cpath):
                arr = self._cached(cpath)
                if arr is not None:
                    self.hits += 1
                    return arr, key
            image, meta = read_with_options(s.path, self.read_options)
            reason = unusable_reason(image, meta)
            if reason is not None:
                log_skip(s, reason)
                return SkippedFile(s.path, reason, s.uid)
            native = to_native_uint8(image, self.size)
            if cpath is not None:
                self._try_store(cpath, native)
            return native, key
        except ConfigError:
            raise
        except (Exception, MemoryError) as exc:
            reason = failure_reason(exc)
            log_skip(s, reason)
            return SkippedFile(s.path, reason, s.uid)

    def _store(self, cpath: Path, native: np.ndarray) -> None:
        folder = cpath.parent
        if folder not in self._folders:  # one mkdir per cache subfolder, not one per image
            folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._folders.add(folder)
        buf = io.BytesIO()
        np.save(buf, native, allow_pickle=False)
        write_cache_entry(cpath, buf.getbuffer())

    def _try_store(self, cpath: Path, native: np.ndarray) -> None:
        """Cache a decoded image; a cache that cannot be written (full disk, removed or read-only
        folder) is warned about once and the image is used anyway, not skipped."""
        try:
            self._store(cpath, native)
        except OSError as exc:
            with self._lock:
                warn, self._store_failed = not self._store_failed, True
            if warn:
                logger.warning(
                    "Cannot write the image cache in %s (%s); continuing without caching",
                    cpath.parent.parent,
                    exc.strerror or type(exc).__name__,
                )

    def _cached(self, cpath: Path) -> np.ndarray | None:
        """A cache entry if it is a uint8 S×S or S×S×3 array; a bad one is removed (recomputed)."""
        limit = self.size * self.size * 3 + 4096
        try:
            with open_regular(cpath, limit) as fh:
                arr = np.load(fh, allow_pickle=False)
            ok = (
                isinstance(arr, np.ndarray)
                and arr.dtype == np.uint8
                and arr.shape[:2] == (self.size, self.size)
                and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3))
            )
            if ok:
                return arr
            problem = f"holds {getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}"
        except (OSError, ValueError, EOFError) as exc:
            problem = f"unreadable ({type(exc).__name__})"
        logger.warning(
            "Image cache entry %s %s, not a %dpx image; recomputing it",
            cpath.name,
            problem,
            self.size,
        )
        try:
            if cpath.is_dir() and not cpath.is_symlink():
                import shutil

                shutil.rmtree(cpath)
            else:
                cpath.unlink()
        except OSError:
            pass
        return None


def image_cache_dir(cache_dir: str | Path | None) -> Path | None:
    """Where a project's cache folder keeps decoded images (``<cache_dir>/images``); None stays None."""
    return None if cache_dir is None else Path(cache_dir).expanduser() / IMAGE_CACHE_DIR


def prepare_images(
    samples: Sequence[Sample],
    classes: list[str],
    *,
    size: int,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    read_options: dict[str, Any] | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> PreparedImages:
    """Decode, resize and stack images into a uint8 (N, C, size, size) array for a model.

    Each image is read with ``medtl.io.read_image`` (or taken from its ``.npz``), converted to grey when
    ``channels == 1``, resized to size×size (direct resize, antialiased) and quantised to uint8. With
    ``channels=None`` the result is grey (C=1) unless some image is genuinely colour (C=3); colour
    images whose channels are (near-)identical count as grey.

    Args:
        samples: the images (e.g. ``dataset.split("train")``).
        classes: class names (copied into the result).
        size: output side length in pixels.
        channels: 1, 3 or None (decide from the images).
        cache_dir: folder of the decoded-image cache; a second call with the same files and options
            reads the cache instead of decoding (None: no cache).
        read_options: keyword arguments for ``medtl.io.read_image`` (part of the cache key).
        progress: show a progress bar.
        num_workers: decoding threads (0: in this thread).

    Returns:
        PreparedImages; files that fail to decode are left out and listed in ``skipped`` (labels and
        uids stay aligned with ``pixels``).

    Example:
        >>> prep = prepare_images(ds.split("train"), ds.classes, size=224, cache_dir="~/.cache/medtl")
        >>> prep.pixels.shape
        (4434, 1, 224, 224)
    """
    check_range("size", size, 8, 4096)
    if int(size) != size:
        raise ConfigError(f"The 'size' parameter must be an integer. Got {size!r} instead.")
    size = int(size)
    look_up_option("channels", channels, [None, 1, 3])
    check_range("num_workers", num_workers, 0)
    cdir = None if cache_dir is None else Path(cache_dir).expanduser()
    loader = _Loader(size, cdir, read_options)
    samples = list(samples)
    natives: list[np.ndarray] = []
    base_keys: list[str] = []
    kept: list[Sample] = []
    skipped: list[SkippedFile] = []
    results = map_maybe_threaded(
        loader, samples, num_workers, f"preparing {size}px images", progress
    )
    for s, res in zip(samples, results):
        if isinstance(res, SkippedFile):
            skipped.append(res)
        else:
            natives.append(res[0])
            base_keys.append(res[1])
            kept.append(s)
    if cdir is not None:
        logger.info(
            "Image cache %s: %d of %d image(s) served from cache", cdir, loader.hits, len(samples)
        )
    if channels is None:
        channels = 3 if any(a.ndim == 3 for a in natives) else 1
    pixels = np.empty((len(natives), channels, size, size), dtype=np.uint8)
    for i, a in enumerate(natives):
        pixels[i] = _to_channels(a, channels)
    keys = [prepared_key(k, channels) for k in base_keys]
    if skipped:
        logger.warning("%d image(s) could not be prepared and were left out", len(skipped))
    multilabel = is_multilabel(samples)
    return PreparedImages(
        pixels=pixels,
        # several findings per image: (N, K) floats, NaN where a finding is not labelled
        labels=targets_of(kept, len(classes))
        if multilabel
        else np.array([s.label for s in kept], dtype=np.int64),
        uids=[s.uid for s in kept],
        keys=keys,
        classes=list(classes),
        skipped=skipped,
        preprocessing={
            "image_size": size,
            "channels": int(pixels.shape[1]) if len(pixels) else (channels or 1),
            "read_options": dict(read_options or {}),
        },
        attributes=[dict(s.attributes) for s in kept] if any(s.attributes for s in kept) else None,
        cache_info={
            "version": IMAGE_KEY_VERSION,
            "from_cache": loader.hits,
            "computed": len(natives) - loader.hits,
        },
        task_kind=MULTILABEL if multilabel else None,
    )


def prepared_key(image_key: str, channels: int) -> str:
    """The content key of a prepared image (``PreparedImages.keys``): its image-cache key and the
    final channel count (embeddings depend on it; the image cache entry does not)."""
    return hashlib.sha256(f"{image_key}|c{channels}".encode()).hexdigest()


def _to_channels(native: np.ndarray, channels: int) -> np.ndarray:
    """uint8 S×S or S×S×3 -> (channels, S, S)."""
    if native.ndim == 2:
        return np.broadcast_to(native, (channels, *native.shape))
    if channels == 3:
        return native.transpose(2, 0, 1)
    from medtl.io import to_grey

    grey = to_grey(native.astype(np.float32) / 255.0)
    return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)[None]
