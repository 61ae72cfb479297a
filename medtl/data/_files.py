"""Unlabelled image files given as files and folders (prediction, test-time adaptation)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from medtl.data._types import Sample
from medtl.errors import ConfigError

NOT_IMAGES = {".csv", ".json", ".txt", ".md", ".yaml", ".yml", ".npz"}


def unlabelled_samples(paths: str | Path | Iterable[str | Path]) -> list[Sample]:
    """Samples (label -1) for every file given or found recursively in the folders given.

    Hidden files and obvious non-image files (CSV, JSON, text, YAML) are left out; anything else that
    fails to decode is reported later by ``prepare_images`` as a skipped file.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            files.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            )
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"Image path {str(p)!r} does not exist.")
    return [
        Sample(path=str(f.resolve()), label=-1, uid=hashlib.sha1(str(f).encode()).hexdigest()[:16])
        for f in files
        if f.suffix.lower() not in NOT_IMAGES
    ]
