"""Content-keyed on-disk cache of frozen-backbone embeddings.

The key of one embedding is sha256(folder key + the image's content key). The folder key covers
everything about the extraction (``medtl.cachekeys.embedding_key_parts``: extraction-code version,
backbone and weights, image size, channels, the precision and device kind actually used, pass size,
torch/timm versions) and is written next to the chunks as ``key.json``; the content key covers the
file bytes, read options, size, channels and the reader's and decoders' versions (see
``medtl.data.prepare_images``). Each extraction appends one safetensors chunk per folder, so a second run
with another head costs seconds and concurrent writers never corrupt each other (each chunk is written
atomically under a unique name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medtl._fileio import atomic_write, atomic_write_json
from medtl.cachekeys import key_digest, note_cache_use, note_embedding_key

log = logging.getLogger(__name__)


EMBEDDINGS_DIR = "embeddings"  # the subfolder of a project's cache folder that holds embeddings
KEY_FILE = "key.json"  # what a folder's embeddings were computed with (its key's parts)


def embedding_row_key(fingerprint: str, content_key: str) -> str:
    """The key of one cached embedding: the folder's fingerprint and the image's content key."""
    return hashlib.sha256(f"{fingerprint}|{content_key}".encode()).hexdigest()[:40]


class EmbeddingCache:
    """Cache of float32 embeddings under ``root`` for one extraction key.

    Args:
        root: the project's cache folder.
        key: the key's parts (``medtl.cachekeys.embedding_key_parts``); its digest names the folder.
        write: False on the processes of a distributed job other than rank 0.
    """

    def __init__(self, root: str | Path, key: dict, *, write: bool = True) -> None:
        fingerprint = key_digest(key)
        self.key = dict(key)
        self.dir = Path(root) / EMBEDDINGS_DIR / fingerprint[:32]
        self.fingerprint = fingerprint
        self.write = write  # False on the processes of a distributed job other than rank 0
        self._index: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            from safetensors import safe_open
            from safetensors.numpy import load_file

            index: dict[str, np.ndarray] = {}
            for chunk in sorted(self.dir.glob("chunk-*.safetensors")):
                try:
                    with safe_open(str(chunk), framework="numpy") as fh:
                        keys = json.loads(fh.metadata()["keys"])
                    emb = load_file(str(chunk))["emb"]
                except Exception as exc:  # a damaged chunk is ignored, never fatal
                    log.warning("ignoring unreadable embedding cache chunk %s (%s)", chunk, exc)
                    continue
                for k, row in zip(keys, emb):
                    index[k] = row
            self._index = index
        return self._index

    def get_or_compute(
        self,
        keys: Sequence[str],
        compute: Callable[[np.ndarray], np.ndarray],
        *,
        collective: bool = True,
    ) -> tuple[np.ndarray, int]:
        """Embeddings for ``keys``; rows not cached are computed by ``compute(indices)`` and stored.

        In a distributed job with ``collective`` (every process asks for the same rows and ``compute``
        is a collective) the rows to compute are those missing from the cache of *any* process
        (caches may differ between machines). ``collective=False``: this process alone (e.g. one
        row of a sharded ``medtl evaluate``), no communication.

        Returns:
            (embeddings (N, D) float32, number of rows that had to be computed).
        """
        index = self._load()
        ckeys = [embedding_row_key(self.fingerprint, k) for k in keys]
        missing = np.array([i for i, k in enumerate(ckeys) if k not in index], dtype=np.int64)
        from medtl import distributed

        if collective and distributed.world_size() > 1:
            every = distributed.all_gather_object(missing.tolist())
            missing = np.array(sorted(set().union(*map(set, every))), dtype=np.int64)
        if len(missing):
            new = np.asarray(compute(missing), dtype=np.float32)
            if self.write:
                self._append([ckeys[i] for i in missing], new)
            for i, row in zip(missing, new):
                index[ckeys[i]] = row
        out = np.stack([index[k] for k in ckeys]) if ckeys else np.zeros((0, 0), np.float32)
        note_cache_use("embeddings", from_cache=len(ckeys) - len(missing), computed=len(missing))
        note_embedding_key(self.key)
        return out.astype(np.float32, copy=False), len(missing)

    def _append(self, keys: list[str], emb: np.ndarray) -> None:
        from safetensors.numpy import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / KEY_FILE).exists():
            atomic_write_json(self.dir / KEY_FILE, {"fingerprint": self.fingerprint, **self.key})
        path = self.dir / f"chunk-{uuid.uuid4().hex}.safetensors"
        data = {"emb": np.ascontiguousarray(emb, dtype=np.float32)}
        atomic_write(path, lambda tmp: save_file(data, tmp, metadata={"keys": json.dumps(keys)}))
