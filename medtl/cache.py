"""What a project's cache folder holds, whether its entries are sound, and clearing all or part of it.

The logic behind ``medtl cache info | verify | clear``. Layout (see ``medtl.cachekeys`` for the keys):

    <cache>/images/<reader version>/<ab>/<file sha256>/<key>.npy   decoded images
    <cache>/embeddings/<key digest>/key.json + chunk-*.safetensors  embeddings of one extraction key
    <cache>/results/                                                memoised splits and heads (joblib)
    <cache>/salt, phantom_*/                                        the project's id salt, phantoms

Entries made before key versions existed (``images/<ab>/<key>.npy``, embedding folders without
``key.json``) or under other versions can never be served again: they are *stale*. Only sizes,
counts and key parts are shown, never file names of the user's data (the cache holds none).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medtl.cachekeys import (
    EMBEDDING_KEY_VERSION,
    IMAGE_KEY_VERSION,
    key_versions,
    library_versions,
)

IMAGES, EMBEDDINGS, RESULTS = "images", "embeddings", "results"


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (a file counts as one)."""
    if path.is_file():
        return 1, path.stat().st_size
    files = total = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                continue
    return files, total


def _embedding_key(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "key.json").read_text())
    except (OSError, ValueError):
        return None


def _embedding_is_current(key: dict[str, Any] | None) -> bool:
    from medtl.cachekeys import EMBEDDING_LIBRARIES

    return (
        key is not None
        and key.get("version") == EMBEDDING_KEY_VERSION
        and key.get("libraries") == list(library_versions(*EMBEDDING_LIBRARIES))
    )


def _chunk_rows(chunk: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(chunk), framework="numpy") as fh:
        return len(json.loads(fh.metadata()["keys"]))


def cache_inventory(cache_dir: str | Path) -> dict[str, Any]:
    """What the cache folder holds: per cache, entries and bytes, split into current and stale.

    Example:
        >>> cache_inventory(".medtl_cache")["images"]["current"]
        {'version': 'medtl-prep-v2', 'entries': 5856, 'bytes': 243187456}
    """
    root = Path(cache_dir).expanduser()
    out: dict[str, Any] = {"cache_dir": str(root), "versions": key_versions()}
    img = root / IMAGES
    current = img / IMAGE_KEY_VERSION
    n, b = _size(current) if current.is_dir() else (0, 0)
    stale_n = stale_b = 0
    if img.is_dir():
        for p in img.iterdir():
            if p != current:
                sn, sb = _size(p)
                stale_n, stale_b = stale_n + sn, stale_b + sb
    out[IMAGES] = {
        "current": {"version": IMAGE_KEY_VERSION, "entries": n, "bytes": b},
        "stale": {"entries": stale_n, "bytes": stale_b},
    }
    folders = []
    emb = root / EMBEDDINGS
    for folder in sorted(emb.iterdir()) if emb.is_dir() else []:
        if not folder.is_dir():
            continue
        key = _embedding_key(folder)
        rows = 0
        for chunk in folder.glob("chunk-*.safetensors"):
            try:
                rows += _chunk_rows(chunk)
            except Exception:  # counted by verify as damaged
                continue
        _, size = _size(folder)
        row = {k: (key or {}).get(k) for k in
               ("backbone_name", "image_size", "channels", "precision", "device", "version")}  # fmt: skip
        row.update(folder=folder.name, rows=rows, bytes=size, current=_embedding_is_current(key))
        folders.append(row)
    out[EMBEDDINGS] = folders
    n, b = _size(root / RESULTS) if (root / RESULTS).is_dir() else (0, 0)
    out[RESULTS] = {"files": n, "bytes": b}
    return out


# -- verify ----------------------------------------------------------------------------------------


def _check_image_entry(path: Path) -> str | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or arr.shape[0] != arr.shape[1]:
        return f"holds {arr.dtype} {arr.shape}, not a square uint8 image"
    if arr.ndim == 3 and arr.shape[2] != 3:
        return f"holds {arr.shape[2]} channels"
    return None


def verify_cache(
    cache_dir: str | Path,
    *,
    fix: bool = False,
    data: str | Path | None = None,
    image_size: int | None = None,
    read_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Re-read every current entry; with ``data``, also re-decode that dataset's files and compare
    them with their cached pixels (a mismatch is a stale entry: a reader change without a key bump).

    Args:
        cache_dir: the project's cache folder.
        fix: remove the entries found bad (they are recomputed by the next run).
        data: a dataset folder, manifest or files whose cached decodings to re-check.
        image_size, read_options: the size and read options those decodings were made with.

    Returns:
        ``checked`` counts per cache and ``problems``: (cache, entry, reason) rows, entries named by
        their cache key (never a data file's name).
    """
    root = Path(cache_dir).expanduser()
    problems: list[dict[str, str]] = []
    checked = {IMAGES: 0, EMBEDDINGS: 0, RESULTS: 0, "recomputed": 0}

    def bad(cache: str, entry: Path, reason: str) -> None:
        problems.append({"cache": cache, "entry": entry.name, "reason": reason})
        if fix:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)

    for entry in sorted((root / IMAGES / IMAGE_KEY_VERSION).rglob("*.npy")):
        checked[IMAGES] += 1
        reason = _check_image_entry(entry)
        if reason:
            bad(IMAGES, entry, reason)
    if data is not None:
        checked["recomputed"] = _recompute_images(root, data, image_size, read_options, bad)
    emb = root / EMBEDDINGS
    for folder in sorted(emb.iterdir()) if emb.is_dir() else []:
        key = _embedding_key(folder)
        if not _embedding_is_current(key):
            continue  # stale folders are never read; `clear --stale` removes them
        for chunk in sorted(folder.glob("chunk-*.safetensors")):
            checked[EMBEDDINGS] += 1
            reason = _check_chunk(chunk)
            if reason:
                bad(EMBEDDINGS, chunk, reason)
    for entry in sorted((root / RESULTS).rglob("output.pkl")) if (root / RESULTS).is_dir() else []:
        checked[RESULTS] += 1
        try:
            import joblib

            joblib.load(entry)
        except Exception as exc:
            bad(RESULTS, entry.parent, f"unreadable ({type(exc).__name__})")
    return {"cache_dir": str(root), "checked": checked, "problems": problems, "fixed": fix}


def _check_chunk(chunk: Path) -> str | None:
    from safetensors.numpy import load_file

    try:
        emb = load_file(str(chunk))["emb"]
        rows = _chunk_rows(chunk)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    if emb.ndim != 2 or emb.shape[0] != rows:
        return f"holds {emb.shape} for {rows} keys"
    if not np.isfinite(emb).all():
        return "holds non-finite values"
    return None


def _data_files(data: str | Path) -> list[str]:
    """Paths of a dataset's image files (folder, manifest or files); used only to hash their bytes."""
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        from medtl.data import load_dataset

        ds = load_dataset(str(path), val_fraction=0, test_fraction=0, min_per_class=1,
                          progress=False, verify=False)  # fmt: skip
        return [s.path for s in ds.samples if s.index is None]
    from medtl.data import unlabelled_files

    return [s.path for s in unlabelled_files(path)[0]]


def _file_digest(path: str) -> str | None:
    import hashlib

    from medtl._fileio import MAX_FILE_BYTES, read_regular_bytes

    try:
        return hashlib.sha256(read_regular_bytes(path, MAX_FILE_BYTES)).hexdigest()
    except (OSError, ValueError):
        return None


def _recompute_images(root, data, image_size, read_options, bad) -> int:
    """Decode each file of ``data`` whose entry for (size, options) exists and compare (exact)."""
    from medtl.data import (
        image_cache_key,
        image_entry_path,
        read_options_bytes,
        read_with_options,
        to_native_uint8,
    )

    if image_size is None:
        from medtl.errors import ConfigError

        raise ConfigError("verify --data needs --image-size: the size the images were cached at.")
    opts = read_options_bytes(read_options)
    n = 0
    for path in _data_files(data):
        digest = _file_digest(path)
        if digest is None:
            continue
        key = image_cache_key(bytes.fromhex(digest), opts, image_size)
        entry = image_entry_path(root / IMAGES, digest, key)
        if not entry.is_file():
            continue
        n += 1
        try:
            fresh = to_native_uint8(read_with_options(path, read_options)[0], image_size)
            cached = np.load(entry, allow_pickle=False)
        except Exception as exc:
            bad(IMAGES, entry, f"cannot be re-checked ({type(exc).__name__})")
            continue
        if cached.shape != fresh.shape or not np.array_equal(cached, fresh):
            diff = "shape" if cached.shape != fresh.shape else "pixels"
            bad(IMAGES, entry, f"stale: its {diff} differ from a fresh decoding with this code")
    return n


# -- clear -----------------------------------------------------------------------------------------


def clear_cache(
    cache_dir: str | Path,
    *,
    everything: bool = False,
    stale: bool = False,
    backbone: str | None = None,
    dataset: str | Path | None = None,
    results: bool = False,
) -> dict[str, Any]:
    """Remove all or part of the caches; the project's salt and phantoms are always kept.

    Args:
        everything: every decoded image, embedding and memoised result.
        stale: entries no current key can reach (older versions, other torch/timm versions).
        backbone: every embedding folder of this registered backbone name.
        dataset: a dataset folder, manifest or files: their decoded images (any size, options or
            version) and their embeddings (any backbone), found from the files' bytes.
        results: the memoised splits and heads.

    Returns:
        ``removed``: files and bytes removed per cache.
    """
    root = Path(cache_dir).expanduser()
    removed = {IMAGES: [0, 0], EMBEDDINGS: [0, 0], RESULTS: [0, 0]}

    def drop(cache: str, path: Path) -> None:
        if not path.exists():
            return
        n, b = _size(path)
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed[cache][0] += n
        removed[cache][1] += b

    img, emb = root / IMAGES, root / EMBEDDINGS
    emb_folders = [f for f in sorted(emb.iterdir()) if f.is_dir()] if emb.is_dir() else []
    if everything:
        drop(IMAGES, img)
        drop(EMBEDDINGS, emb)
        drop(RESULTS, root / RESULTS)
    if results:
        drop(RESULTS, root / RESULTS)
    if stale:
        for p in list(img.iterdir()) if img.is_dir() else []:
            if p.name != IMAGE_KEY_VERSION:
                drop(IMAGES, p)
        for f in emb_folders:
            if not _embedding_is_current(_embedding_key(f)):
                drop(EMBEDDINGS, f)
    if backbone is not None:
        for f in emb_folders:
            if (_embedding_key(f) or {}).get("backbone_name") == backbone:
                drop(EMBEDDINGS, f)
    if dataset is not None:
        _clear_dataset(root, dataset, drop, removed)
    return {"cache_dir": str(root), "removed": {k: {"files": v[0], "bytes": v[1]}
                                                 for k, v in removed.items()}}  # fmt: skip


def _clear_dataset(root: Path, dataset: str | Path, drop, removed) -> None:
    from medtl.data import prepared_key
    from medtl.strategies import embedding_row_key

    digests = {d for d in map(_file_digest, _data_files(dataset)) if d}
    image_keys: set[str] = set()
    img = root / IMAGES
    for version in [p for p in img.iterdir() if p.is_dir()] if img.is_dir() else []:
        for d in digests:
            folder = version / d[:2] / d
            if folder.is_dir():
                image_keys.update(p.stem for p in folder.glob("*.npy"))
                drop(IMAGES, folder)
    content = {prepared_key(k, c) for k in image_keys for c in (1, 3)}
    emb = root / EMBEDDINGS
    for folder in [f for f in emb.iterdir() if f.is_dir()] if emb.is_dir() else []:
        key = _embedding_key(folder)
        if key is None:
            continue
        rows = {embedding_row_key(key["fingerprint"], k) for k in content}
        for chunk in folder.glob("chunk-*.safetensors"):
            n = _drop_rows(chunk, rows)
            removed[EMBEDDINGS][0] += n  # rows, counted as entries


def _drop_rows(chunk: Path, rows: Iterable[str]) -> int:
    """Rewrite a chunk without the embeddings of ``rows``; returns how many were dropped."""
    from safetensors.numpy import load_file, save_file

    from medtl._fileio import atomic_write

    try:
        from safetensors import safe_open

        with safe_open(str(chunk), framework="numpy") as fh:
            keys = json.loads(fh.metadata()["keys"])
        emb = load_file(str(chunk))["emb"]
    except Exception:
        return 0
    rows = set(rows)
    keep = [i for i, k in enumerate(keys) if k not in rows]
    if len(keep) == len(keys):
        return 0
    if not keep:
        chunk.unlink()
        return len(keys)
    data = {"emb": np.ascontiguousarray(emb[keep])}
    meta = {"keys": json.dumps([keys[i] for i in keep])}
    atomic_write(chunk, lambda tmp: save_file(data, tmp, metadata=meta))
    return len(keys) - len(keep)


__all__ = ["cache_inventory", "clear_cache", "verify_cache"]
