"""Atomic file writes: write to a temporary file in the same folder, then rename.

An interrupted run therefore never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from medtl.formatting import json_safe

_UMASK: int | None = None


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 less the user's umask.

    ``tempfile.mkstemp`` creates files 0600; without this, every run file would be private to its
    writer whatever the user's umask says (a shared group folder could not read its own reports).
    """
    global _UMASK
    if _UMASK is None:  # reading the umask means setting it; do it once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def atomic_write(
    path: str | os.PathLike, writer: Callable[[str], None], *, mode: int | None = None
) -> Path:
    """Call ``writer(tmp_path)`` to produce a file, then atomically move it to ``path``.

    The file gets ``mode`` when given (0o600 for files holding identifiers), else the mode a plain
    write would give it (the user's umask), not mkstemp's 0600.
    """
    path = Path(path)
    if path.is_dir():  # name the path given, not the temporary file the rename would fail on
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", display_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_output_file(name: str, path: str | os.PathLike | None) -> None:
    """Refuse, before any work, an output file path that is an existing folder (or lies in a path
    that is a file): the later atomic rename would fail naming a temporary file the user never gave."""
    from medtl.errors import ConfigError

    if not path:
        return
    p = Path(path)
    shown = display_path(p)
    if p.is_dir():
        raise ConfigError(
            f"The {name!r} path {shown!r} is an existing folder, but a file is written there. Give "
            f"a file name, e.g. {display_path(p / (name + '.csv'))!r}."
        )
    parent = next((a for a in p.parents if os.path.lexists(a)), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(
            f"The {name!r} path {shown!r} cannot be created: {display_path(parent)!r} is a file, "
            "not a folder. Give a path in a folder."
        )


def write_cache_entry(path: Path, data: bytes | memoryview) -> None:
    """Atomically write one small cache file: a unique temporary name, one write, one rename.

    For caches of many small files (one decoded image each), where :func:`atomic_write`'s mkstemp,
    reopen and chmod cost about as much as the decoding (measured: 0.20 ms -> 0.07 ms a file). No
    fsync: a cache entry lost or truncated by a crash is validated and recomputed when read. The
    parent folder must exist. The mode is what a plain write gives (``os.open`` applies the umask).
    """
    # random, not pid-based: processes on different machines sharing the cache may have equal pids
    tmp = path.parent / f".{path.name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars/arrays allowed; NaN written as null)."""
    text = json.dumps(json_safe(obj), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


# -- reading untrusted files -----------------------------------------------------------------------

#: Default ceiling on the size of one input file that medtl reads (images, manifests, archives).
#: Callers raise it with the ``max_bytes`` parameter of the function that reads (never an env var).
MAX_FILE_BYTES = 2 * 1024**3

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsafeFileError(OSError):
    """A path that must not be opened for reading (not a regular file, a link loop, too large).

    ``reason`` is a short sentence without the path (the path travels separately).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{display_path(self.path)}: {reason}")


def display_path(path: str | os.PathLike | bytes) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (e.g. a Latin-1 ``Fran\\xe7ois.dcm``)
    are shown as ``\\xe7`` escapes instead of crashing ``print``/``write`` with UnicodeEncodeError.

    Example:
        >>> display_path(os.fsdecode(b"Fran\\xe7ois.dcm"))
        'Fran\\\\xe7ois.dcm'
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def check_regular_file(path: str | os.PathLike, max_bytes: int | None = MAX_FILE_BYTES) -> int:
    """Return the size of ``path`` when it is a regular file no larger than ``max_bytes``.

    Nothing is opened: FIFOs, sockets, devices (and links to them, e.g. to ``/dev/zero``), link
    loops, broken links and folders raise :class:`UnsafeFileError` (or FileNotFoundError) with the
    reason, so a read can never block or run without bound.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnsafeFileError(
                path, "broken symbolic link (its target does not exist)"
            ) from None
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(
                path, "symbolic link loop (the link points back to itself)"
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise UnsafeFileError(path, "file name too long for this system") from None
        raise
    return _check_stat(path, st, max_bytes)


def _check_stat(path: str | os.PathLike, st: os.stat_result, max_bytes: int | None) -> int:
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise UnsafeFileError(path, f"is {kind}, not a regular file; not opened")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeFileError(
            path,
            f"is {st.st_size / 1024**2:.0f} MB, over the {max_bytes / 1024**2:.0f} MB limit; "
            "raise max_bytes if the file is genuine",
        )
    return int(st.st_size)


def open_regular(path: str | os.PathLike, max_bytes: int | None = MAX_FILE_BYTES) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file within ``max_bytes``.

    The file is opened non-blocking and checked on the open descriptor (``fstat``), so a FIFO swapped
    in after a check can still not block the read.
    """
    check_regular_file(path, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        _check_stat(path, os.fstat(fd), max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, max_bytes: int | None = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`), never more than ``max_bytes``."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # it grew while we read it
        raise UnsafeFileError(path, f"grew past the {max_bytes / 1024**2:.0f} MB limit while read")
    return data


# -- CSV cells safe to open in a spreadsheet ------------------------------------------------------

#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` made safe for a CSV cell that a spreadsheet may open (OWASP CSV injection).

    Text starting with ``= + - @``, a tab or a carriage return gets a leading apostrophe, so Excel,
    LibreOffice and Google Sheets show it as text instead of running it as a formula (a class named
    ``=HYPERLINK("http://x")`` would otherwise become a link). Numbers, and text that is a plain
    number (``-0.5``, ``-3``), are left as they are, so medtl's own CSVs still read back as numbers.
    Every CSV medtl writes passes its cells through here.

    Example:
        >>> csv_cell('=HYPERLINK("http://x")')
        '\\'=HYPERLINK("http://x")'
        >>> csv_cell("-0.5"), csv_cell(0.25)
        ('-0.5', 0.25)
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_TRIGGERS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """Every cell of one CSV row through :func:`csv_cell`."""
    return [csv_cell(v) for v in values]


def csv_record(row: dict[str, Any]) -> dict[str, Any]:
    """Every value of one ``csv.DictWriter`` row through :func:`csv_cell`."""
    return {k: csv_cell(v) for k, v in row.items()}


# -- JSON read back from disk -----------------------------------------------------------------------

#: Deepest nesting accepted in a JSON file medtl reads (its own files nest fewer than 10 levels).
MAX_JSON_DEPTH = 100


class JSONDepthError(ValueError):
    """A JSON text nested deeper than :data:`MAX_JSON_DEPTH` (refused before parsing)."""


def json_loads(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses text nested deeper than ``max_depth`` before parsing it.

    Python's parser recurses once per level, so ``[[[[...]]]]`` 200,000 deep raises RecursionError (not a
    ValueError) from deep inside the interpreter; here it is a :class:`JSONDepthError` (a ValueError,
    so callers that report invalid JSON report this too).
    """
    import re

    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    if text.count("[") + text.count("{") > max_depth:  # cheap test first: most files are shallow
        brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)  # strings may hold brackets
        depth = deepest = 0
        for ch in re.findall(r"[\[\]{}]", brackets):
            depth += 1 if ch in "[{" else -1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise JSONDepthError(
                    f"JSON nested deeper than {max_depth} levels; not parsed (not a file medtl "
                    "wrote, or a damaged one)"
                )
    return json.loads(text)
