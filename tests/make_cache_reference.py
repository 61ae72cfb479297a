"""Regenerate ``tests/cache_reference.json`` after a deliberate cache key version bump.

Run from the repository root (so that this checkout's ``medtl`` is imported):

    python -m tests.make_cache_reference

Bump ``IMAGE_KEY_VERSION`` / ``EMBEDDING_KEY_VERSION`` in ``medtl/_cachekeys.py`` first: the reference
records the versions it was made with, and ``tests/test_cache_keys.py`` fails while they differ.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests._cache_reference import REFERENCE_FILE, build_reference


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference(Path(tmp))
    text = json.dumps(ref, indent=1, sort_keys=True)
    # one line per image's projections: a readable diff when the reference is regenerated
    for rows in ref["embeddings"].values():
        for row in rows:
            text = text.replace(json.dumps(row, indent=1).replace("\n", "\n   "), json.dumps(row))
    REFERENCE_FILE.write_text(text + "\n")
    print(
        f"wrote {REFERENCE_FILE} ({len(ref['images'])} decodings, {len(ref['embeddings'])} "
        f"embedding sets) for {ref['image_key_version']} / {ref['embedding_key_version']}"
    )


if __name__ == "__main__":
    main()
