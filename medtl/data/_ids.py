"""De-identified image ids: keyed (salted) hashes, the project salt, the id map, the dataset fingerprint.

File and folder names in hospital exports often carry names and record numbers, so outputs never name
an image by its path. An image's uid is ``HMAC-SHA256(salt, path relative to the dataset root)``
(16 hex digits); a manifest's patient id is stored as ``pid-`` + ``HMAC-SHA256(salt, id)``. Without
the salt nobody can test a guessed name against a uid.

The salt is a random secret per project, kept in ``<cache_dir>/salt`` (mode 0600, created on first use
by :func:`project_salt`), so uids are stable across runs of one project (resume, comparisons) and
differ between projects. A caller that passes no salt gets :func:`process_salt`: a random secret made
once per Python process, so uids are stable within the process only and can never be linked to
another run's outputs. The decoded-image and embedding caches are keyed by file content, never by uid,
so the salt never invalidates them.

Example:
    >>> salt = project_salt(".medtl_cache")
    >>> ds = load_dataset("exports/", salt=salt)
    >>> write_id_map(ds, "KEEP_PRIVATE_id_map.csv")       # only when the user asks for it
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from medtl.cachekeys import DEFAULT_CACHE_DIR as DEFAULT_CACHE_DIR  # re-exported
from medtl.errors import ConfigError

if TYPE_CHECKING:
    from medtl.data._types import Dataset

__all__ = [
    "dataset_fingerprint",
    "default_salt",
    "file_uid",
    "hash_patient_id",
    "keyed_uid",
    "process_salt",
    "project_salt",
    "salt_check",
    "write_id_map",
]

SALT_FILE = "salt"
_SALT_BYTES = 32
_UID_HEX = 16
_PROCESS_SALT = secrets.token_bytes(_SALT_BYTES)
PATIENT_PREFIX = "pid-"
#: First line of an id map: the file holds identifiers (paths) and must stay private.
ID_MAP_BANNER = (
    "# medtl id map: CONTAINS PATIENT IDENTIFIERS (file paths). Keep it private; never share it."
)


def process_salt() -> bytes:
    """The salt used when a caller gives none: random, made once per process, never written."""
    return _PROCESS_SALT


def _salt(salt: bytes | None) -> bytes:
    if salt is None:
        return _PROCESS_SALT
    if not isinstance(salt, bytes | bytearray) or len(salt) < 16:
        raise ConfigError(
            f"The 'salt' parameter must be at least 16 random bytes. Got {type(salt).__name__} "
            f"of length {len(salt) if hasattr(salt, '__len__') else '?'}; use "
            "medtl.data.project_salt(cache_dir)."
        )
    return bytes(salt)


def project_salt(cache_dir: str | os.PathLike) -> bytes:
    """The project's secret salt, from ``<cache_dir>/salt`` (created with mode 0600 on first use).

    Concurrent first calls agree: the file is created exclusively and a loser reads the winner's.

    Raises:
        ConfigError: the salt file exists but is not a salt (damaged or replaced); delete it (uids
            of earlier runs then no longer match) or restore it.
    """
    folder = Path(cache_dir).expanduser()
    path = folder / SALT_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{SALT_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(_SALT_BYTES) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and never overwrites: the first writer wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    from medtl._fileio import UnsafeFileError, read_regular_bytes

    try:
        text = read_regular_bytes(path, 1024).decode("ascii").strip()
        salt = bytes.fromhex(text)
    except (OSError, UnsafeFileError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"The salt file {str(path)!r} is damaged ({type(exc).__name__}). Restore it from a "
            "backup, or delete it to start a new salt (uids of earlier runs will then differ)."
        ) from None
    if len(salt) < 16:
        raise ConfigError(
            f"The salt file {str(path)!r} holds {len(salt)} bytes; a salt needs at least 16. "
            "Delete it to start a new salt."
        )
    return salt


def _hmac_hex(salt: bytes | None, domain: bytes, data: bytes) -> str:
    return hmac.new(_salt(salt), domain + b"\0" + data, hashlib.sha256).hexdigest()


def keyed_uid(relpath: str | os.PathLike | bytes, salt: bytes | None = None) -> str:
    """De-identified, stable id of a file: 16 hex digits of HMAC-SHA256(salt, relative path).

    Bytes-safe: a path that is not valid UTF-8 (e.g. a Latin-1 file name) is hashed as its bytes.

    Example:
        >>> len(keyed_uid("NORMAL/IM-0001.jpeg", b"0" * 32))
        16
    """
    return _hmac_hex(salt, b"medtl-uid", os.fsencode(relpath))[:_UID_HEX]


def file_uid(
    path: str | os.PathLike | bytes, root: str | os.PathLike | bytes, salt: bytes | None = None
) -> str:
    """The one id of a file in every output: :func:`keyed_uid` of its path relative to ``root``.

    ``root`` is the dataset root for a dataset's files (so ``data check``, ``data card``, the log,
    ``compare`` and ``--id-map`` agree, and moving the dataset keeps its ids) and the folder given for
    unlabelled files (``predict``, ``adapt``). Forward slashes on every system.

    Example:
        >>> file_uid("/data/cxr/NORMAL/a.png", "/data/cxr", salt) == keyed_uid("NORMAL/a.png", salt)
        True
    """
    p, r = os.fsdecode(path), os.fsdecode(root)
    try:
        rel = os.path.relpath(p, r)
    except ValueError:  # another drive on Windows
        rel = p
    return keyed_uid(rel.replace(os.sep, "/"), salt)


def default_salt(cache_dir: str | os.PathLike | None = None) -> bytes:
    """The salt every command uses unless told otherwise: :func:`project_salt` of ``cache_dir``
    (default :data:`DEFAULT_CACHE_DIR`), so one file has one id across ``data check``,
    ``data card``, ``compare``, ``evaluate``, ``predict`` and the log."""
    return project_salt(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR)


def hash_patient_id(patient_id: str | None, salt: bytes | None = None) -> str | None:
    """``pid-`` + 16 hex digits of HMAC-SHA256(salt, id); already hashed ids and None pass through.

    Equal ids give equal hashes, so patient-level splits work on the hashed values.
    """
    if patient_id is None or patient_id == "":
        return None
    if is_hashed_patient_id(patient_id):
        return patient_id
    raw = patient_id.encode("utf-8", "surrogateescape")
    return PATIENT_PREFIX + _hmac_hex(salt, b"medtl-patient", raw)[:_UID_HEX]


def is_hashed_patient_id(value: str) -> bool:
    """True for a value made by :func:`hash_patient_id`."""
    tail = value[len(PATIENT_PREFIX) :]
    return (
        value.startswith(PATIENT_PREFIX)
        and len(tail) == _UID_HEX
        and all(c in "0123456789abcdef" for c in tail)
    )


def salt_check(salt: bytes | None = None) -> str:
    """A short value that tells whether two salts are the same, without revealing either."""
    return _hmac_hex(salt, b"medtl-salt-check", b"")[:_UID_HEX]


def _rel_bytes(path: str, root: str) -> bytes:
    try:
        return os.fsencode(os.path.relpath(path, root))
    except ValueError:  # another drive on Windows
        return os.fsencode(path)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def dataset_fingerprint(ds: Dataset) -> str:
    """A hash of what a dataset is made of: relative file names, sizes, labels, splits, classes.

    Not of the file contents (cheap on large sets) and not of the salt, so the same data gives the
    same fingerprint on every run; a file added, removed, renamed, resized, relabelled or moved to
    another split changes it. Use it to refuse resuming a run on other data.

    Example:
        >>> dataset_fingerprint(ds)
        'ds-3f2a9c0e4b1d7a66c2e5f0a1b9d8c7e6'
    """
    h = hashlib.sha256(b"medtl-dataset-fingerprint-v1\0")
    h.update(repr((ds.source, list(ds.classes))).encode("utf-8", "surrogateescape"))
    rows = sorted(
        (
            _rel_bytes(s.path, ds.root),
            -1 if s.index is None else int(s.index),
            _size(s.path),
            int(s.label),
            (s.split or "").encode(),
        )
        for s in ds.samples
    )
    for rel, index, size, label, split in rows:
        h.update(b"%s\0%d\0%d\0%d\0%s\n" % (rel, index, size, label, split))
    # several findings per image: their targets too (single-label data keeps its fingerprint)
    multi = sorted(
        (_rel_bytes(s.path, ds.root), -1 if s.index is None else int(s.index), repr(s.targets))
        for s in ds.samples
        if s.targets is not None
    )
    for rel, index, targets in multi:
        h.update(b"t%s\0%d\0%s\n" % (rel, index, targets.encode()))
    h.update(b"skipped\n")
    for rel in sorted(_rel_bytes(k.path, ds.root) for k in ds.skipped):
        h.update(rel + b"\n")
    return "ds-" + h.hexdigest()[:32]


def write_id_map(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``uid -> path`` for every sample, skipped and ignored file: ONLY when the user asks.

    The file CONTAINS IDENTIFIERS (paths often carry names and record numbers): its first line says
    so, it is created with mode 0600 and it is never written by default. Columns: ``uid,kind,path``
    (kind: sample / skipped / ignored); paths that are not UTF-8 keep their original bytes.

    Example:
        >>> write_id_map(ds, "KEEP_PRIVATE_id_map.csv")   # e.g. for `medtl compare --id-map FILE`
    """
    from medtl._fileio import atomic_write, csv_row

    buf = io.StringIO()
    buf.write(ID_MAP_BANNER + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["uid", "kind", "path"])
    for s in ds.samples:
        file = s.path if s.index is None else f"{s.path}#{s.index}"
        w.writerow(csv_row([s.uid, "sample", file]))
    for kind, items in (("skipped", ds.skipped), ("ignored", getattr(ds, "ignored", []))):
        for k in items:
            w.writerow(csv_row([k.uid or "", kind, k.path]))
    data = buf.getvalue().encode("utf-8", "surrogateescape")

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _w, mode=0o600)  # identifiers: private to the user
