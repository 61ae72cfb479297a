"""Unlabelled image files given as files and folders (prediction, test-time adaptation)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medtl._fileio import display_path
from medtl.data._ids import file_uid, keyed_uid
from medtl.data._types import Sample, SkippedFile
from medtl.errors import ConfigError

NOT_IMAGES = {".csv", ".json", ".txt", ".md", ".yaml", ".yml", ".npz"}


def unlabelled_files(
    paths: str | Path | Iterable[str | Path], *, salt: bytes | None = None
) -> tuple[list[Sample], list[SkippedFile]]:
    """Samples (label -1) for every file given or found in the folders given, and what was not used.

    A file named explicitly is always a sample, whatever its suffix (a DICOM named ``.txt`` is read
    by content; an unreadable one is reported later by ``prepare_images``). In folders, hidden files
    and obvious non-image files (CSV, JSON, text, YAML, .npz) are not used; they, broken or looping
    links, FIFOs, sockets and devices are returned as skipped with a reason, never opened.

    Uids are :func:`medtl.data.file_uid` of the path relative to the folder given (a file named
    explicitly: relative to its own folder), as for a dataset's files, so ``predict scans/`` and
    ``data check scans/`` name a file alike. Two inputs holding the same relative name (``a/x.dcm``
    and ``b/x.dcm`` named together) cannot share an id: the later one is keyed by its absolute path.
    """
    from medtl.data._sources import _Walk  # the same walker as dataset folders

    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    owner: dict[str, str] = {}  # uid -> the file it names, so two inputs never share an id
    for p in map(Path, items):
        if not os.path.lexists(p):
            raise ConfigError(f"Image path {display_path(p)!r} does not exist.")
        base = p if p.is_dir() else p.parent
        walk = _Walk(base.absolute(), salt, scope="folder given")
        if p.is_dir():
            walk.walk(p.absolute())
            found = []
            for f in sorted(walk.files):
                if f.suffix.lower() in NOT_IMAGES:
                    walk.ignore(f, f"a {f.suffix.lower()} file, not an image; not used")
                else:
                    found.append(f)
        else:
            kind, _ = walk.kind(p.absolute())
            found = [p.absolute()] if kind == "file" else []
        for f in found:
            uid = file_uid(f, walk.root, salt)
            if owner.setdefault(uid, str(f)) != str(f):  # same relative name in another input
                uid = keyed_uid(os.fspath(f), salt)
                owner.setdefault(uid, str(f))
            samples.append(Sample(path=str(f), label=-1, uid=uid))
        skipped.extend(walk.skipped)
        skipped.extend(walk.ignored)
    return samples, skipped


def unlabelled_samples(
    paths: str | Path | Iterable[str | Path], *, salt: bytes | None = None
) -> list[Sample]:
    """The samples of :func:`unlabelled_files` (use that to also report the files not used)."""
    return unlabelled_files(paths, salt=salt)[0]
