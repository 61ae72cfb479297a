"""Inputs of the clinician app: the work folder, uploads (zips, single images) and their safety checks.

Nothing is written outside the work folder; a zip with path-traversal entries, links or no class
folders is refused as a whole, with a message for the user.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medtl.errors import MedtlError

ENV_WORK = "MEDTL_APP_WORK"
DEFAULT_WORK = "medtl_app_work"
MAX_IMAGE_MB = 50  # per single uploaded image
MAX_ZIP_MB = 500  # per uploaded zip (also server.maxUploadSize in apps/.streamlit/config.toml)
MAX_UNZIPPED_MB = 2000  # total size after extraction (zip-bomb guard)
MAX_ZIP_FILES = 50_000
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", "")
# The only DICOM/technical metadata the app shows (read_image's meta is already PHI-free; this
# allow-list is a second, independent guard).
SAFE_META_KEYS = (
    "format",
    "modality",
    "photometric_interpretation",
    "inverted",
    "bits_stored",
    "rows",
    "columns",
    "n_frames",
    "frame_used",
    "window_used",
    "transfer_syntax",
    "pixel_spacing",
    "original_dtype",
)


class AppInputError(MedtlError):
    """A user input the app cannot use; the message says what to do instead."""


# -- work folder ------------------------------------------------------------------------------------


def work_dir(env: dict[str, str] | None = None) -> Path:
    """The app's single work folder (created); uploads, demo data, caches and runs all live here."""
    env = os.environ if env is None else env
    root = Path(env.get(ENV_WORK) or DEFAULT_WORK).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_size(name: str, nbytes: int, limit_mb: float) -> None:
    """Refuse an upload larger than ``limit_mb`` megabytes, naming the file and the limit."""
    if nbytes > limit_mb * 1024 * 1024:
        raise AppInputError(
            f"{name!r} is {nbytes / 1024 / 1024:.1f} MB; the limit is {limit_mb:g} MB. "
            "Use a smaller file, or put the dataset in a folder on the server and type its path."
        )


# -- data sources -----------------------------------------------------------------------------------


def demo_dataset(work: Path, *, n_per_class: int = 40, size: int = 128, seed: int = 0) -> Path:
    """The built-in synthetic phantom (DICOM, two classes) under ``work/data`` (made once, reused)."""
    from medtl.data import is_phantom, make_phantom

    dest = work / "data" / f"phantom_n{n_per_class}_s{size}_seed{seed}"
    if is_phantom(dest):  # its parameters file is written last
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".phantom.", dir=dest.parent))
    try:
        make_phantom(tmp, n_per_class=n_per_class, size=size, seed=seed)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def server_folder(text: str) -> Path:
    """A dataset path typed by the user: must exist (folder, CSV manifest or .npz)."""
    text = (text or "").strip()
    if not text:
        raise AppInputError("Type the path of a dataset folder on the server first.")
    path = Path(text).expanduser()
    if not path.exists():
        raise AppInputError(
            f"{text!r} does not exist on the server. Give the full path of a folder with one "
            "sub-folder per class (e.g. /data/cxr with NORMAL/ and PNEUMONIA/)."
        )
    return path.resolve()


def _bad_entry(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return (
        name.startswith(("/", "\\"))
        or (len(name) > 1 and name[1] == ":")  # C:\...
        or any(part == ".." for part in p.parts)
    )


MAX_NAME_BYTES = 255  # one file or folder name (most file systems)
MAX_ENTRY_PATH = 1024  # a whole entry path
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _shown(entry: str) -> str:
    return entry if len(entry) <= 80 else entry[:77] + "..."


def _check_entries(name: str, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries that cannot be extracted faithfully: encrypted, unknown compression, names
    that are too long or hold NUL bytes, duplicates, and a file and a folder of the same name."""
    seen: set[str] = set()
    files: set[str] = set()
    parents: set[str] = set()
    for info in infos:
        entry = info.filename
        if info.flag_bits & 0x1:
            raise AppInputError(
                f"{name!r} was refused: {_shown(entry)!r} is encrypted (password-protected). "
                "Zip the dataset again without a password."
            )
        if info.compress_type not in _METHODS:
            raise AppInputError(
                f"{name!r} was refused: {_shown(entry)!r} uses an unsupported compression method "
                f"({info.compress_type}). Re-create the zip with ordinary (deflate) compression."
            )
        if "\x00" in entry:
            raise AppInputError(f"{name!r} was refused: an entry name holds a NUL byte.")
        parts = [p for p in entry.replace("\\", "/").split("/") if p]
        too_long = [p for p in parts if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES]
        if too_long or len(entry) > MAX_ENTRY_PATH:
            raise AppInputError(
                f"{name!r} was refused: {_shown(entry)!r} has a name longer than this system "
                f"allows ({MAX_NAME_BYTES} bytes per name, {MAX_ENTRY_PATH} per path). Shorten it."
            )
        key = "/".join(parts)
        if key in seen and not info.is_dir():
            raise AppInputError(
                f"{name!r} was refused: it holds {_shown(entry)!r} twice. Re-create the zip."
            )
        seen.add(key)
        if not info.is_dir():
            files.add(key)
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(files & parents)
    if clash:
        raise AppInputError(
            f"{name!r} was refused: {_shown(clash[0])!r} is both a file and a folder in the zip. "
            "Rename one of them and zip again."
        )


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Extract one entry, never writing more than its declared size or the remaining ``budget``."""
    limit = min(info.file_size, budget)
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while True:
            chunk = src.read(min(1 << 20, limit - written + 1))
            if not chunk:
                break
            written += len(chunk)
            if written > limit:
                raise AppInputError(
                    f"{_shown(info.filename)!r} unpacks to more than the zip declares (a damaged "
                    "zip or a zip bomb). Re-create the zip."
                )
            out.write(chunk)
    if written != info.file_size:
        raise AppInputError(
            f"{_shown(info.filename)!r} unpacks to {written} bytes but the zip declares "
            f"{info.file_size}: the zip is damaged. Re-create it."
        )
    return written


def extract_zip(data: bytes, name: str, work: Path) -> Path:
    """Safely unpack an uploaded zip of class folders under ``work/uploads``; return the dataset root.

    Refused (nothing written): files over :data:`MAX_ZIP_MB`, not-a-zip, entries with absolute paths or
    ``..`` (path traversal), symbolic links, too many files or too much uncompressed data (counted
    while extracting, not trusted from the zip's declared sizes), encrypted entries, unknown
    compression methods, bad checksums (CRC), over-long names, duplicate entries, a file and a
    folder of the same name, and zips without at least two class folders holding files. The
    dataset root is the folder whose sub-folders are the classes (a single wrapping top folder is
    allowed).
    """
    check_size(name, len(data), MAX_ZIP_MB)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise AppInputError(
            f"{name!r} is not a readable zip file ({type(exc).__name__}: {str(exc)[:120]}). "
            "Upload a .zip with one folder per class."
        ) from exc
    with zf:
        infos = zf.infolist()
        bad = [i.filename for i in infos if _bad_entry(i.filename)]
        if bad:
            raise AppInputError(
                f"{name!r} was refused: it holds entries that point outside the zip ({bad[0]!r}). "
                "Re-create the zip from the dataset folder itself."
            )
        links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
        if links:
            raise AppInputError(f"{name!r} was refused: it holds symbolic links ({links[0]!r}).")
        _check_entries(name, infos)
        files = [
            i
            for i in infos
            if not i.is_dir()
            and not any(
                part.startswith(".") or part == "__MACOSX" for part in i.filename.split("/")
            )
        ]
        if len(files) > MAX_ZIP_FILES:
            raise AppInputError(f"{name!r} holds {len(files)} files; the limit is {MAX_ZIP_FILES}.")
        total = sum(i.file_size for i in files)
        if total > MAX_UNZIPPED_MB * 1024 * 1024:
            raise AppInputError(
                f"{name!r} unpacks to {total / 1024**2:.0f} MB; the limit is {MAX_UNZIPPED_MB} MB."
            )
        roots = _class_root([PurePosixPath(i.filename) for i in files])
        digest = hashlib.sha256(data).hexdigest()[:16]
        dest = work / "uploads" / f"zip_{digest}"
        if (dest / ".complete").exists():
            return dest / roots
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".zip.", dir=dest.parent))
        try:
            budget = MAX_UNZIPPED_MB * 1024 * 1024
            for info in files:
                target = (tmp / info.filename).resolve()
                if not _inside(target, tmp):  # belt and braces after _bad_entry
                    raise AppInputError(
                        f"{name!r} was refused: {info.filename!r} escapes the folder."
                    )
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    budget -= _copy_entry(zf, info, target, budget)
                except AppInputError as exc:
                    raise AppInputError(f"{name!r} was refused: {exc}") from None
                except (zipfile.BadZipFile, EOFError, zlib.error, OSError, RuntimeError,
                        NotImplementedError, ValueError) as exc:  # fmt: skip
                    problem = (
                        "its checksum (CRC) does not match: the zip is damaged"
                        if "CRC" in str(exc)
                        else f"it cannot be unpacked ({type(exc).__name__})"
                    )
                    raise AppInputError(
                        f"{name!r} was refused: {_shown(info.filename)!r}: {problem}. "
                        "Re-create the zip from the dataset folder."
                    ) from None
            (tmp / ".complete").write_text("ok")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / roots


def _class_root(paths: list[PurePosixPath]) -> str:
    """The folder (relative, posix) whose sub-folders are the classes; raises if there is none."""
    prefix: tuple[str, ...] = ()
    while True:
        under = [p.parts[len(prefix) :] for p in paths if p.parts[: len(prefix)] == prefix]
        tops = {u[0] for u in under if len(u) > 1}
        loose = [u for u in under if len(u) == 1]
        if len(tops) == 1 and not loose and len(prefix) < 3:
            prefix = (*prefix, next(iter(tops)))  # a wrapping folder: look inside it
            continue
        break
    classes = {u[0] for u in under if len(u) > 1}
    if len(classes) < 2:
        raise AppInputError(
            "The zip has no class folders: put the images in one folder per class (e.g. "
            "NORMAL/ and PNEUMONIA/, or train/ and test/ each with those folders), then zip them."
        )
    return "/".join(prefix) if prefix else "."


# -- single image


def safe_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Only allow-listed technical fields (never patient identifiers)."""
    return {k: meta[k] for k in SAFE_META_KEYS if k in meta and meta[k] is not None}


def save_single_upload(data: bytes, name: str, work: Path) -> Path:
    """Store one uploaded image under ``work/uploads/single`` (content-addressed name)."""
    check_size(name, len(data), MAX_IMAGE_MB)
    if not data:
        raise AppInputError(f"{name!r} is empty.")
    suffix = Path(name).suffix.lower()
    suffix = suffix if suffix in IMAGE_SUFFIXES else ""
    dest = work / "uploads" / "single" / (hashlib.sha256(data).hexdigest()[:16] + suffix)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        from medtl._fileio import atomic_write_bytes

        atomic_write_bytes(dest, data)
    return dest


def read_single(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an uploaded image with medtl's reader; unreadable files become AppInputError."""
    from medtl.errors import ImageReadError
    from medtl.io import read_image

    try:
        img, meta = read_image(path)
    except ImageReadError as exc:
        raise AppInputError(
            f"This file cannot be read as an image ({exc.reason if hasattr(exc, 'reason') else exc}). "
            "Upload a DICOM, PNG or JPEG file."
        ) from exc
    return img, safe_meta(meta)


def prepare_upload(estimator: Any, path: Path) -> Any:
    """One uploaded image prepared exactly as the model's training images were
    (``estimator.prepare``); AppInputError saying why when it cannot be."""
    from _app_text import plain_error

    from medtl.data import Sample

    prep = estimator.prepare([Sample(path=str(path), label=-1, uid="upload")])
    if len(prep) == 0:
        reason = prep.skipped[0].reason if prep.skipped else "unknown reason"
        raise AppInputError(f"The image could not be prepared for the model: {plain_error(reason)}")
    return prep
