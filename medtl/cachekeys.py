"""One owner for what keys medtl's caches: the versions of the code and libraries a cached value depends on.

medtl keeps three caches under a project's cache folder: decoded images (``images/``), frozen-backbone
embeddings (``embeddings/``) and memoised pure results such as grouped splits and logistic heads
(``results/``). A cache may only serve a value that the current code would compute itself, so each key
covers everything that changes the value:

* a decoded image: :data:`IMAGE_KEY_VERSION` (the reading code: DICOM LUTs, grey-as-RGB detection,
  resizing, quantisation), the versions of the decoding libraries (:data:`DECODER_LIBRARIES`), the
  file's bytes, the read options and the size (see ``medtl.data.prepare_images``);
* an embedding: :data:`EMBEDDING_KEY_VERSION` (the extraction code: BatchNorm folding, channels-last,
  autocast), the backbone and its weights, the image size and channels, the precision and the device
  kind actually used, the pass size, torch and timm versions, and the image's own key (see
  :func:`embedding_key_parts`);
* a memoised result: :data:`RESULTS_KEY_VERSION`, the library versions it depends on and a digest of
  the source of the medtl helpers the memoised function calls (joblib itself hashes only the
  function's own source), see :func:`memo_versions`.

**Bump a version** when a change to the code it names changes a cached value. Forgetting is caught:
``tests/test_cache_keys.py`` decodes reference files and embeds reference images and compares their
digests with ``tests/cache_reference.json``, which is tied to these versions; regenerate it after a
deliberate bump with ``python tests/make_cache_reference.py``.

A run records what was served from cache and under which key versions (:func:`cache_record`, the
``cache`` block of each strategy in ``summary.json``).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: the image-reading code (medtl.io readers, medtl.data._prepare's conversion, resize and quantisation)
#: The project's cache folder (decoded images, embeddings, the phantom, the id salt). One owner:
#: every command and the API default to it (``medtl.data`` re-exports it), so ids agree across
#: compare, evaluate, predict, adapt and advise. Here, in a module without heavy imports, so that
#: the CLI's parser can name it without importing the data package.
DEFAULT_CACHE_DIR = ".medtl_cache"

IMAGE_KEY_VERSION = "medtl-prep-v2"
#: the extraction code (medtl.strategies._feature_extraction.extract_embeddings and what it calls)
EMBEDDING_KEY_VERSION = "medtl-embed-v2"
#: memoised pure results (grouped splits, logistic heads); their helpers' source is also digested
RESULTS_KEY_VERSION = "medtl-results-v1"

#: libraries that decode or resize pixels: a new version may give other pixels for the same file
DECODER_LIBRARIES = (
    "pydicom",
    "pillow",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-rle",
    "tifffile",
)
#: libraries whose version keys an embedding (kernels and model code)
EMBEDDING_LIBRARIES = ("torch", "timm")


def key_versions() -> dict[str, str]:
    """The three caches' code versions, as recorded in a run's ``cache`` block."""
    return {
        "images": IMAGE_KEY_VERSION,
        "embeddings": EMBEDDING_KEY_VERSION,
        "results": RESULTS_KEY_VERSION,
    }


@functools.cache
def installed_version(name: str) -> str:
    """``name``'s installed version, or ``"absent"`` (an optional plugin that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def library_versions(*names: str) -> tuple[str, ...]:
    """``name==version`` of libraries, as a key part (a new version recomputes)."""
    return tuple(f"{n}=={installed_version(n)}" for n in names)


@functools.lru_cache(maxsize=1)
def image_key_prefix() -> bytes:
    """What every decoded-image key starts with: the reader version, the decoders' versions and
    numpy's major version (its float rounding in the intensity pipeline)."""
    import numpy as np

    parts = [IMAGE_KEY_VERSION, *library_versions(*DECODER_LIBRARIES)]
    parts.append(f"numpy=={np.__version__.split('.')[0]}")
    return "|".join(parts).encode()


def embedding_key_parts(
    backbone_name: str,
    backbone_fingerprint: str,
    image_size: int,
    channels: int,
    precision: str,
    device_kind: str,
    pass_size: int,
) -> dict[str, Any]:
    """Everything that keys one embedding folder, as a JSON-able dict (written next to the folder's
    chunks as ``key.json``, so ``medtl cache info`` can say what a folder holds).

    Args:
        backbone_name: the registered name (already inside the fingerprint; kept readable).
        backbone_fingerprint: ``medtl.backbones.backbone_fingerprint`` (name, weights, preprocessing).
        image_size, channels: the pixels' shape.
        precision: the precision the forward pass actually used (``fp32``, ``bf16``, ``fp16``), not
            the requested ``auto``.
        device_kind: see :func:`device_kind`.
        pass_size: images per forward pass (kernels may differ with it).
    """
    return {
        "version": EMBEDDING_KEY_VERSION,
        "backbone_name": backbone_name,
        "backbone": backbone_fingerprint,
        "image_size": int(image_size),
        "channels": int(channels),
        "precision": precision,
        "device": device_kind,
        "pass_size": int(pass_size),
        "libraries": list(library_versions(*EMBEDDING_LIBRARIES)),
    }


def key_digest(parts: dict[str, Any]) -> str:
    """sha256 of a key's parts (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def device_kind(device: Any) -> str:
    """The kind of hardware a forward pass ran on: ``cpu-<machine>``, ``cuda:<GPU name>`` or the
    device type. Different kinds give embeddings that differ in their last bits."""
    import platform

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu-{platform.machine()}"
    return device.type


@functools.lru_cache(maxsize=64)
def code_digest(*objs: Any) -> str:
    """A short digest of the source of functions or modules (their code is part of a memo key)."""
    h = hashlib.sha256()
    for obj in objs:
        try:
            h.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):  # no source (a frozen install): its qualified name only
            h.update(
                f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}".encode()
            )
    return h.hexdigest()[:16]


def memo_versions(libraries: Iterable[str], helpers: Iterable[Any] = ()) -> tuple[str, ...]:
    """The ``versions`` argument of a memoised function: the results version, the libraries'
    versions and a digest of the medtl helpers it calls (joblib hashes only its own source)."""
    return (
        RESULTS_KEY_VERSION,
        *library_versions(*libraries),
        f"helpers={code_digest(*helpers)}",
    )


# -- what a run was served -------------------------------------------------------------------------


@dataclass
class CacheLedger:
    """Counts of values served from cache and computed, per cache, while a ledger is current."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    embedding_keys: list[dict[str, Any]] = field(default_factory=list)

    def note(self, cache: str, *, from_cache: int, computed: int) -> None:
        row = self.counts.setdefault(cache, {"from_cache": 0, "computed": 0})
        row["from_cache"] += int(from_cache)
        row["computed"] += int(computed)

    def note_embedding_key(self, parts: dict[str, Any]) -> None:
        short = {
            k: v for k, v in parts.items() if k not in ("backbone", "libraries", "fingerprint")
        }
        short["backbone"] = parts.get("backbone", "")[:16]
        if short not in self.embedding_keys:
            self.embedding_keys.append(short)


_LEDGER: contextvars.ContextVar[CacheLedger | None] = contextvars.ContextVar(
    "medtl_cache_ledger", default=None
)


def start_cache_record() -> CacheLedger:
    """Start counting cache use in this context (a strategy's run); replaces any earlier ledger."""
    ledger = CacheLedger()
    _LEDGER.set(ledger)
    return ledger


def note_cache_use(cache: str, *, from_cache: int, computed: int) -> None:
    """Called by each cache: ``from_cache`` values served, ``computed`` values computed (and stored)."""
    ledger = _LEDGER.get()
    if ledger is not None:
        ledger.note(cache, from_cache=from_cache, computed=computed)


def note_embedding_key(parts: dict[str, Any]) -> None:
    """Called by the embedding cache: the key parts it used (precision and device actually used)."""
    ledger = _LEDGER.get()
    if ledger is not None:
        ledger.note_embedding_key(parts)


def cache_record(*prepared: Any) -> dict[str, Any]:
    """The ``cache`` block of a strategy's summary row: key versions, what the current ledger counted
    (embeddings, memoised results) and the decoded-image cache's use by ``prepared`` (PreparedImages
    whose ``cache_info`` says how many were read from the cache)."""
    ledger = _LEDGER.get() or CacheLedger()
    images = {"from_cache": 0, "computed": 0}
    for p in prepared:
        info = getattr(p, "cache_info", None) or {}
        images["from_cache"] += int(info.get("from_cache", 0))
        images["computed"] += int(info.get("computed", 0))
    out: dict[str, Any] = {"versions": key_versions(), "images": images}
    for name, row in sorted(ledger.counts.items()):
        out[name] = dict(row)
    if ledger.embedding_keys:
        out["embedding_keys"] = list(ledger.embedding_keys)
    return out


__all__ = [
    "DECODER_LIBRARIES",
    "EMBEDDING_KEY_VERSION",
    "IMAGE_KEY_VERSION",
    "RESULTS_KEY_VERSION",
    "cache_record",
    "code_digest",
    "device_kind",
    "embedding_key_parts",
    "image_key_prefix",
    "key_versions",
    "library_versions",
    "memo_versions",
    "note_cache_use",
    "start_cache_record",
]
