"""Hostile input probe (issue 16): hostile files, file names, manifests, archives and machines.

Every input is generated here, in ``tmp_path``, by code (no committed binaries). Bombs only *declare*
huge sizes (a few hundred bytes on disk), so the whole probe runs in seconds and under a memory cap.
For each input the probe asserts: no traceback, the file is named in the output with a reason, nothing
is dropped (every file is a sample, a skipped or an ignored entry), and nothing leaks (the marker
``DOE^JOHN_MRN12345`` carried by file and folder names appears in no uid, splits.json, reason or data
card).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.data import (
    ID_MAP_BANNER,
    Sample,
    data_card,
    dataset_fingerprint,
    load_dataset,
    prepare_images,
    project_salt,
    save_splits,
    summarise_dataset,
    write_id_map,
)
from medtl.data._files import unlabelled_files
from medtl.errors import DatasetError, ImageReadError
from medtl.io import read_image, read_npz, write_test_dicom

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file types and names")

MARK = "DOE^JOHN_MRN12345"
LEAK = ("DOE^JOHN", "MRN12345")
ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(16)


# -- generators -------------------------------------------------------------------------------------


def _noise(h: int = 24, w: int = 24) -> np.ndarray:
    return RNG.integers(0, 255, (h, w), dtype=np.uint8)


def png_bytes(h: int = 24, w: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 24, w: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG (correct CRCs) whose IHDR declares width x height; tiny on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(jpeg_bytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_declaring(path: Path, width: int, height: int) -> None:
    """A 16x16 TIFF whose ImageWidth/ImageLength tags are patched to width x height."""
    import tifffile

    tifffile.imwrite(path, _noise(16, 16))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        spots = [(tags["ImageWidth"], width), (tags["ImageLength"], height)]
        for tag, value in spots:
            fmt = "<H" if tag.dtype == 3 else "<I"
            data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def dicom(path: Path, arr: np.ndarray | None = None, **kw) -> Path:
    arr = (_noise().astype(np.uint16) * 16) if arr is None else arr
    return write_test_dicom(path, arr, **kw)


def dicom_edit(path: Path, edit, arr: np.ndarray | None = None) -> Path:
    """A test DICOM whose data set is changed by ``edit(ds)`` before it is written again."""
    import pydicom

    dicom(path, arr)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def encapsulated(path: Path, frame: bytes, syntax: str, rows: int, cols: int) -> Path:
    from pydicom.encaps import encapsulate

    def edit(ds) -> None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        for k in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            if k in ds:
                delattr(ds, k)

    return dicom_edit(path, edit, _noise().astype(np.uint8))


def j2k_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(16, 16)).save(buf, format="JPEG2000", no_jp2=True)
    data = bytearray(buf.getvalue())
    j = data.index(b"\xff\x4f\xff\x51")
    data[j + 8 : j + 16] = struct.pack(">II", width, height)
    return bytes(data)


def npz_with_header(path: Path, members: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """A .npz whose members only *declare* shapes (header without data): a memory bomb on load."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, (shape, dtype) in members.items():
            buf = io.BytesIO()
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(buf, header)
            zf.writestr(f"{key}.npy", buf.getvalue())


# -- the hostile folder dataset ---------------------------------------------------------------------

# (relative path, expected outcome, reason pattern); each entry is made by BUILDERS[relative path].
SAMPLE, SKIP, IGNORE = "sample", "skipped", "ignored"


def _build_folder(root: Path) -> dict[str, tuple[str, str]]:
    """Build the hostile dataset under ``root``; return {relative path: (outcome, reason regex)}."""
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    n, a = root / "normal", root / "abnormal"
    outside = root.parent / f"outside_{MARK}"
    expect: dict[str, tuple[str, str]] = {}

    def put(rel: str, data: bytes | None, outcome: str, reason: str = "") -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)
        expect[rel] = (outcome, reason)

    # good images, some with hostile names (used)
    for i in range(6):
        put(f"normal/good{i}_{MARK}.png", png_bytes(), SAMPLE)
        put(f"abnormal/good{i}_{MARK}.jpg", jpeg_bytes(), SAMPLE)
    latin1 = os.fsdecode(b"Fran\xe7ois_" + MARK.encode() + b".png")
    put(f"normal/{latin1}", png_bytes(), SAMPLE)
    put(f"abnormal/new\nline_{MARK}.png", png_bytes(), SAMPLE)
    put(f"abnormal/pipe|back`tick_{MARK}.png", png_bytes(), SAMPLE)
    put("abnormal/" + "L" * 200 + f"_{MARK}.png", png_bytes(), SAMPLE)
    put(f"abnormal/-dash_{MARK}.png", png_bytes(), SAMPLE)
    put(f"normal/dicom_named_{MARK}.txt", None, SAMPLE)
    dicom(n / f"dicom_named_{MARK}.txt")
    put(f"normal/sub/{MARK}/deep.png", png_bytes(), SAMPLE)
    put(f"normal/multipage_same_{MARK}.tif", None, SAMPLE)
    import tifffile

    with tifffile.TiffWriter(n / f"multipage_same_{MARK}.tif") as tw:
        tw.write(_noise(16, 16))
        tw.write(_noise(16, 16))

    # hidden files, documentation, strays (reported, never silently dropped)
    put(f"normal/.DS_Store_{MARK}", b"\0\1junk", IGNORE, "hidden file")
    put(f"abnormal/._good0_{MARK}.jpg", b"AppleDouble", IGNORE, "hidden file")
    for folder in (f".hidden_{MARK}", "__MACOSX"):
        (root / folder).mkdir()
        (root / folder / "x.png").write_bytes(png_bytes())
        expect[folder] = (IGNORE, "hidden folder")
    put("README.md", b"docs", IGNORE, "documentation")
    put(f"stray_{MARK}.png", png_bytes(), SKIP, "dataset root, not inside a class folder")

    # links and special files (never opened)
    outside.mkdir(exist_ok=True)
    (outside / f"linked_{MARK}.png").write_bytes(png_bytes())
    os.symlink(outside, a / f"linked_dir_{MARK}")
    expect[f"abnormal/linked_dir_{MARK}"] = (SKIP, "outside the dataset folder; not followed")
    os.symlink("/dev/zero", n / f"zero_{MARK}.png")
    expect[f"normal/zero_{MARK}.png"] = (SKIP, "character device")
    os.symlink(n / "missing.png", n / f"dangling_{MARK}.png")
    expect[f"normal/dangling_{MARK}.png"] = (SKIP, "broken symbolic link")
    os.symlink(n / f"loop_{MARK}.png", n / f"loop_{MARK}.png")
    expect[f"normal/loop_{MARK}.png"] = (SKIP, "symbolic link loop")
    os.symlink(n, n / f"self_{MARK}")
    expect[f"normal/self_{MARK}"] = (SKIP, "already scanned")
    os.mkfifo(n / f"fifo_{MARK}.dcm")
    expect[f"normal/fifo_{MARK}.dcm"] = (SKIP, "FIFO")
    sock_dir = Path("/tmp") / f"medtl-sock-{os.getpid()}"
    sock_dir.mkdir(exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_dir / "s"))
        os.symlink(sock_dir / "s", n / f"socket_{MARK}")
        expect[f"normal/socket_{MARK}"] = (SKIP, "socket")
    except OSError:
        pass
    finally:
        s.close()

    # bombs: declared sizes only
    put(f"abnormal/png_bomb_{MARK}.png", png_declaring(20000, 20000), SKIP, "max_pixels")
    put(f"abnormal/jpeg_bomb_{MARK}.jpg", jpeg_declaring(16000, 16000), SKIP, "max_pixels")
    tiff_declaring(a / f"tiff_bomb_{MARK}.tif", 20000, 20000)
    expect[f"abnormal/tiff_bomb_{MARK}.tif"] = (SKIP, "max_pixels")
    encapsulated(a / f"dcm_jpeg_bomb_{MARK}.dcm", jpeg_bytes(), JPEGBaseline8Bit, 16000, 16000)
    expect[f"abnormal/dcm_jpeg_bomb_{MARK}.dcm"] = (SKIP, "max_pixels")
    encapsulated(
        a / f"dcm_jpeg_inner_bomb_{MARK}.dcm",
        jpeg_declaring(16000, 16000),
        JPEGBaseline8Bit,
        24,
        24,
    )
    expect[f"abnormal/dcm_jpeg_inner_bomb_{MARK}.dcm"] = (SKIP, "header disagrees")
    encapsulated(
        a / f"dcm_j2k_bomb_{MARK}.dcm", j2k_declaring(16000, 16000), JPEG2000Lossless, 16000, 16000
    )
    expect[f"abnormal/dcm_j2k_bomb_{MARK}.dcm"] = (SKIP, "max_pixels")

    # silent garbage: damaged headers, truncation, blank images
    def rows_off(ds) -> None:
        ds.Rows = ds.Rows - 4  # the data holds 4 more rows than declared

    def bits8(ds) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7

    dicom_edit(n / f"rows_disagree_{MARK}.dcm", rows_off)
    expect[f"normal/rows_disagree_{MARK}.dcm"] = (SKIP, "disagrees with the pixel data")
    dicom_edit(n / f"bits_disagree_{MARK}.dcm", bits8)
    expect[f"normal/bits_disagree_{MARK}.dcm"] = (SKIP, "disagrees with the pixel data")

    def cols_more(ds) -> None:
        ds.Columns = ds.Columns + 4  # the data is too short for this width

    dicom_edit(n / f"cols_disagree_{MARK}.dcm", cols_more)
    expect[f"normal/cols_disagree_{MARK}.dcm"] = (SKIP, "truncat|less than expected")
    for tag, kw in (
        ("slope_nan", {"rescale_slope": float("nan")}),
        ("slope_inf", {"rescale_slope": float("inf")}),
        ("slope_1e308", {"rescale_slope": 1e308}),
        ("slope_zero", {"rescale_slope": 0.0}),
        ("intercept_1e308", {"rescale_slope": 1.0, "rescale_intercept": 1e308}),
    ):
        put(f"normal/{tag}_{MARK}.dcm", None, SKIP, "modality LUT")
        dicom(n / f"{tag}_{MARK}.dcm", **kw)
    for tag, kw in (
        ("centre_1e12", {"window_center": 1e12, "window_width": 400.0}),
        ("width_nan", {"window_center": 40.0, "window_width": float("nan")}),
        ("centre_inf", {"window_center": float("inf"), "window_width": 400.0}),
    ):
        put(f"normal/{tag}_{MARK}.dcm", None, SKIP, "unusable window")
        dicom(n / f"{tag}_{MARK}.dcm", **kw)
    put(f"normal/window_misses_{MARK}.dcm", None, SKIP, "constant image")
    dicom(n / f"window_misses_{MARK}.dcm", window_center=60000.0, window_width=10.0)
    put(f"normal/constant_{MARK}.dcm", None, SKIP, "constant image")
    dicom(n / f"constant_{MARK}.dcm", np.full((24, 24), 700, np.uint16))
    put(f"normal/constant_{MARK}.png", None, SKIP, "constant image")
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(n / f"constant_{MARK}.png")
    good_png = png_bytes(64, 64)
    put(f"abnormal/truncated_half_{MARK}.png", good_png[: len(good_png) // 2], SKIP, "truncated")
    put(f"abnormal/truncated_iend_{MARK}.png", good_png[:-12], SKIP, "truncated PNG")
    bad_crc = bytearray(good_png)
    bad_crc[40] ^= 0xFF
    put(f"abnormal/bad_crc_{MARK}.png", bytes(bad_crc), SKIP, "damaged PNG|CRC")
    good_jpg = jpeg_bytes(64, 64)
    put(f"abnormal/truncated_{MARK}.jpg", good_jpg[: len(good_jpg) // 2], SKIP, "truncated|corrupt")
    with tifffile.TiffWriter(a / f"pyramid_{MARK}.tif") as tw:
        tw.write(_noise(32, 32))
        tw.write(_noise(8, 8))
    expect[f"abnormal/pyramid_{MARK}.tif"] = (SKIP, "multi-page TIFF")
    full = (n / f"dicom_named_{MARK}.txt").read_bytes()
    put(f"normal/dcm_truncated_{MARK}.dcm", full[: len(full) - 300], SKIP, "truncat")
    put(f"normal/dcm_header_cut_{MARK}.dcm", full[:200], SKIP, "DICOM|damaged|truncat|not a rec")

    # not images at all (the reason names the detected type, never raw bytes)
    put(f"normal/empty_{MARK}.png", b"", SKIP, "empty")
    put(f"normal/random_{MARK}.jpg", RNG.bytes(300), SKIP, "unrecognised binary")
    put(f"normal/text_{MARK}.png", f"hello {MARK}\n".encode(), SKIP, "text file")
    put(f"normal/pdf_{MARK}.dcm", b"%PDF-1.4\n" + MARK.encode(), SKIP, "PDF")
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    put(f"normal/npy_{MARK}.png", buf.getvalue(), SKIP, "NumPy .npy")
    put(
        f"normal/gzip_{MARK}.dcm", zlib.compress(b"x") and b"\x1f\x8b" + RNG.bytes(40), SKIP, "gzip"
    )
    put(f"normal/zeros_{MARK}.dcm", b"\0" * 2048, SKIP, "zero bytes")
    put(f"normal/npz_in_class_{MARK}.png", b"PK\x03\x04" + RNG.bytes(40), SKIP, "npz")
    return expect


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / f"export_{MARK}"
    root.mkdir()
    expect = _build_folder(root)
    salt = project_salt(root.parent / "cache")
    ds = load_dataset(root, progress=False, min_per_class=1, salt=salt)
    return root, expect, ds, salt


def _outcomes(root: Path, ds) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for s in ds.samples:
        out[os.path.relpath(s.path, root)] = (SAMPLE, "")
    for kind, items in ((SKIP, ds.skipped), (IGNORE, ds.ignored)):
        for k in items:
            out[os.path.relpath(k.path, root)] = (kind, k.reason)
    return out


def test_every_hostile_file_is_used_or_reported_with_its_reason(hostile) -> None:
    import re

    root, expect, ds, _ = hostile
    got = _outcomes(root, ds)
    wrong = {
        rel: (want, got.get(rel))
        for rel, want in expect.items()
        if got.get(rel, ("missing",))[0] != want[0]
        or not re.search(want[1], got.get(rel, ("", ""))[1])
    }
    assert not wrong, "\n".join(f"{k!r}: want {w}, got {g}" for k, (w, g) in wrong.items())
    assert len(expect) >= 60
    # nothing dropped: every entry on disk is a sample, skipped or ignored (or inside a reported
    # hidden folder)
    reported_dirs = [r for r, (k, _) in got.items() if k == IGNORE and "folder" in got[r][1]]
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if any(rel.startswith(d + os.sep) for d in reported_dirs):
                continue
            assert rel in got, f"dropped without a word: {rel!r}"
    assert all(r for _, r in got.values() if _ != SAMPLE)


def test_nothing_leaks_into_ids_splits_reasons_or_the_card(hostile, tmp_path) -> None:
    root, _, ds, salt = hostile
    splits = save_splits(ds, tmp_path / "splits.json", salt=salt).read_text()
    card = data_card(ds)
    summary = json.dumps(summarise_dataset(ds))
    texts = {
        "uids": " ".join(s.uid for s in ds.samples),
        "skipped uids": " ".join(str(k.uid) for k in [*ds.skipped, *ds.ignored]),
        "reasons": " ".join(k.reason for k in [*ds.skipped, *ds.ignored]),
        "splits.json": splits,
        "data card": card,
        "summary": summary,
    }
    for where, text in texts.items():
        for marker in LEAK:
            assert marker not in text, f"{marker!r} leaks into {where}"
        assert str(root.parent) not in text
    assert all(k.uid for k in [*ds.skipped, *ds.ignored])
    assert "first bytes" not in texts["reasons"]


def test_uids_are_keyed_hashes_stable_per_project(hostile) -> None:
    import hashlib

    root, _, ds, salt = hostile
    again = load_dataset(root, progress=False, min_per_class=1, salt=salt, verify=False)
    assert {s.uid for s in ds.samples} <= {s.uid for s in again.samples}
    assert {k.uid for k in ds.ignored} == {k.uid for k in again.ignored}
    other = load_dataset(root, progress=False, min_per_class=1, salt=b"y" * 32, verify=False)
    assert not {s.uid for s in other.samples} & {s.uid for s in ds.samples}
    rel = os.path.relpath(ds.samples[0].path, root)
    assert (
        ds.samples[0].uid != hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    )
    assert dataset_fingerprint(again) == dataset_fingerprint(other)  # salt-independent


def test_library_loggers_stay_quiet_and_no_header_values_logged(hostile, caplog) -> None:
    root, _, _, salt = hostile
    with caplog.at_level(logging.DEBUG):
        load_dataset(root, progress=False, min_per_class=1, salt=salt)
    lib = [r for r in caplog.records if r.name.split(".")[0] in ("pydicom", "PIL", "tifffile")]
    assert not [r for r in lib if r.exc_info or r.levelno >= logging.WARNING]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned and not any(m in w for w in warned for m in LEAK)


def test_id_map_only_on_request_and_marked(hostile, tmp_path) -> None:
    _root, _, ds, _ = hostile
    path = write_id_map(ds, tmp_path / "ids.csv")
    raw = path.read_bytes()
    assert raw.decode("utf-8", "surrogateescape").splitlines()[0] == ID_MAP_BANNER
    assert (path.stat().st_mode & 0o777) == 0o600
    assert b"Fran\xe7ois_" in raw  # the original bytes of the Latin-1 name, not mangled
    assert ds.samples[0].uid in raw.decode("utf-8", "surrogateescape")


def test_fingerprint_follows_the_file_list(tmp_path) -> None:
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for i in range(4):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{i}.png").write_bytes(png_bytes())
    fp = dataset_fingerprint(load_dataset(root, progress=False, min_per_class=1))
    assert fp == dataset_fingerprint(load_dataset(root, progress=False, min_per_class=1))
    (root / "a" / "new.png").write_bytes(png_bytes())
    assert fp != dataset_fingerprint(load_dataset(root, progress=False, min_per_class=1))


def test_salt_file_is_private_and_shared(tmp_path) -> None:
    s1 = project_salt(tmp_path / "cache")
    assert (tmp_path / "cache" / "salt").stat().st_mode & 0o777 == 0o600
    assert project_salt(tmp_path / "cache") == s1 and len(s1) >= 16
    (tmp_path / "cache" / "salt").write_text("not hex")
    with pytest.raises(Exception, match="damaged"):
        project_salt(tmp_path / "cache")


# -- single files: read_image --------------------------------------------------------------------------


def test_read_image_refuses_special_files_and_bounds_reads(tmp_path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(64, 64))
    with pytest.raises(ImageReadError, match="over the"):
        read_image(big, max_bytes=100)
    image, _ = read_image(big, max_bytes=10**6)
    assert image.shape == (64, 64)
    with pytest.raises(ImageReadError, match="character device"):
        read_image("/dev/zero")
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(big, max_pixels=100)
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(ImageReadError, match="FIFO"):
        read_image(tmp_path / "f.png")


def test_memory_error_becomes_a_reason(tmp_path, monkeypatch) -> None:
    import medtl.io._raster as raster

    p = tmp_path / "a.png"
    p.write_bytes(png_bytes())

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(raster, "_read_pillow", boom)
    with pytest.raises(ImageReadError, match="not enough memory"):
        read_image(p)


def test_multipage_tiff_says_which_page(tmp_path) -> None:
    import tifffile

    p = tmp_path / "stack.tif"
    with tifffile.TiffWriter(p) as tw:
        for _ in range(3):
            tw.write(_noise(16, 16))
    _, meta = read_image(p)
    assert meta["n_frames"] == 3 and meta["frame_used"] == 1
    assert any("page 1 of 3" in n for n in meta["notes"])


# -- manifests ----------------------------------------------------------------------------------------


def _manifest_folder(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    root.mkdir()
    for i in range(4):
        (root / f"a{i}.png").write_bytes(png_bytes())
        (root / f"b{i}.png").write_bytes(png_bytes())
    return root


def test_latin1_manifest_matches_latin1_file_names(tmp_path) -> None:
    root = _manifest_folder(tmp_path)
    name = b"Fran\xe7ois_" + MARK.encode() + b".png"
    (root / os.fsdecode(name)).write_bytes(png_bytes())
    rows = [b"path,label,patient_id"] + [f"a{i}.png,a,{MARK}_{i}".encode() for i in range(4)]
    rows += [f"b{i}.png,b,p{i}".encode() for i in range(4)]
    rows += [name + b",b,Ren\xe9e"]
    (root / "m.csv").write_bytes(b"\n".join(rows) + b"\n")
    ds = load_dataset(root / "m.csv", progress=False, min_per_class=1)
    assert len(ds.samples) == 9 and not ds.skipped
    splits = save_splits(ds, tmp_path / "s.json").read_text()
    assert not any(m in splits for m in LEAK) and "Ren" not in splits
    assert all(s.patient_id.startswith("pid-") for s in ds.samples)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"path,label\na0.png,a\x00\n", "NUL"),
        (b'path,label\n"' + b"x" * 200_000 + b'",a\n', "longer than"),
        (b"file,klass\na0.png,a\n", "no 'path' column"),
        (b"path,label\na0.png,a\nb0.png,b\na0.png,a\n,b\n", None),
    ],
)
def test_bad_manifests_give_one_clear_line(tmp_path, content, match) -> None:
    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_bytes(content)
    if match is None:  # duplicates and empty rows: skipped with a reason, never fatal
        ds = load_dataset(
            root / "m.csv", progress=False, min_per_class=1, val_fraction=0, test_fraction=0
        )
        reasons = sorted(k.reason for k in ds.skipped)
        assert any("twice" in r for r in reasons) and any("without a path" in r for r in reasons)
        return
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(root / "m.csv", progress=False, min_per_class=1)
    assert "\n" not in str(info.value) and "m.csv" in str(info.value)


def test_manifest_rows_pointing_at_devices_are_skipped(tmp_path) -> None:
    root = _manifest_folder(tmp_path)
    lines = ["path,label"] + [f"a{i}.png,a" for i in range(4)] + [f"b{i}.png,b" for i in range(4)]
    lines += ["/dev/zero,a", "missing.png,b"]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(root / "m.csv", progress=False, min_per_class=1)
    reasons = {Path(k.path).name: k.reason for k in ds.skipped}
    assert "character device" in reasons["zero"] and "not found" in reasons["missing.png"]


# -- npz ------------------------------------------------------------------------------------------------


def test_npz_hostile_files(tmp_path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "renamed.npz").write_bytes(buf.getvalue())
    npz_with_header(
        tmp_path / "huge_labels.npz",
        {"train_images": ((10, 28, 28), "|u1"), "train_labels": ((10**10,), "<i8")},
    )
    npz_with_header(
        tmp_path / "huge_images.npz",
        {"train_images": ((10**7, 512, 512), "|u1"), "train_labels": ((10**7,), "<i8")},
    )
    np.savez(
        tmp_path / "zero.npz", train_images=np.zeros((5, 0, 0), np.uint8), train_labels=np.zeros(5)
    )
    (tmp_path / "notzip.npz").write_bytes(b"PK\x03\x04" + b"\0" * 50)
    for name, match in (
        ("renamed.npz", r"single NumPy \.npy"),
        ("huge_labels.npz", "labels"),
        ("huge_images.npz", "GiB"),
        ("zero.npz", "0x0"),
        ("notzip.npz", "cannot read"),
    ):
        with pytest.raises(ImageReadError, match=match):
            read_npz(tmp_path / name)
        with pytest.raises(DatasetError, match=match):
            load_dataset(tmp_path / name, progress=False)


def test_npz_labels_outside_the_classes_are_reported_and_counted(tmp_path) -> None:
    imgs = RNG.integers(0, 255, (12, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1] * 5 + [-1, 10**9])
    path = tmp_path / "l.npz"
    np.savez(path, train_images=imgs, train_labels=labels)
    ds = load_dataset(path, progress=False, min_per_class=1)
    assert ds.classes == ["0", "1"] and len(ds.samples) == 10
    reasons = sorted(k.reason for k in ds.skipped)
    assert len(reasons) == 2 and all("not a class index" in r for r in reasons)
    out = _cli("data", "check", str(path))
    assert out.returncode == 1 and "2 file(s) cannot be used" in out.stdout
    assert "Traceback" not in out.stderr


# -- image cache -----------------------------------------------------------------------------------------


def test_wrong_shape_cache_entry_is_recomputed(tmp_path) -> None:
    p = tmp_path / "a.png"
    p.write_bytes(png_bytes())
    s = [Sample(path=str(p), label=0, uid="u")]
    first = prepare_images(s, ["x"], size=16, cache_dir=tmp_path / "c", progress=False)
    entry = next((tmp_path / "c").rglob("*.npy"))
    np.save(entry, np.zeros((3, 5), np.float64))  # wrong shape and dtype
    second = prepare_images(s, ["x"], size=16, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(first.pixels, second.pixels) and not second.skipped
    third = prepare_images(s, ["x"], size=16, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(first.pixels, third.pixels)
    entry.write_bytes(b"garbage")
    fourth = prepare_images(s, ["x"], size=16, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(first.pixels, fourth.pixels)


# -- unlabelled files (predict) --------------------------------------------------------------------------


def test_unlabelled_files_report_what_they_do_not_use(tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes())
    dicom(d / "scan.txt")  # a DICOM with a .txt suffix inside a folder: not an image suffix
    (d / ".hidden.png").write_bytes(png_bytes())
    os.symlink(d / "nope", d / "dangling.png")
    os.mkfifo(d / "fifo.png")
    samples, skipped = unlabelled_files(d)
    assert [Path(s.path).name for s in samples] == ["a.png"]
    names = {Path(k.path).name: k.reason for k in skipped}
    assert set(names) == {"scan.txt", ".hidden.png", "dangling.png", "fifo.png"}
    explicit, _ = unlabelled_files(d / "scan.txt")  # named explicitly: read by content
    assert len(explicit) == 1
    _image, meta = read_image(explicit[0].path)
    assert meta["format"] == "dicom"


# -- zip uploads (app) -----------------------------------------------------------------------------------


def _zip(entries: list[tuple[str, bytes]], **info_kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _patch_central(data: bytes, name: bytes, field: str, value: int) -> bytes:
    """Patch one field of ``name``'s local and central headers (flags, method or size)."""
    data = bytearray(data)
    offsets = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "size": (22, 24, "<I")}
    local_off, central_off, fmt = offsets[field]
    i = 0
    while (i := data.find(b"PK\x03\x04", i)) >= 0:
        if data[i + 30 : i + 30 + len(name)] == name:
            struct.pack_into(fmt, data, i + local_off, value)
        i += 4
    i = 0
    while (i := data.find(b"PK\x01\x02", i)) >= 0:
        if data[i + 46 : i + 46 + len(name)] == name:
            struct.pack_into(fmt, data, i + central_off, value)
        i += 4
    return bytes(data)


def test_hostile_zip_uploads_are_refused_with_one_line(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "apps"))
    import _app_inputs as app_inputs

    good = [("NORMAL/a.png", png_bytes()), ("PNEU/b.png", png_bytes())]
    crc = bytearray(_zip(good))
    i = crc.index(b"PK\x01\x02")
    crc[i + 16] ^= 0xFF  # central directory CRC of the first entry
    lying = _patch_central(_zip(good), b"NORMAL/a.png", "size", 10)
    cases = {
        "bad_crc.zip": (bytes(crc), "CRC"),
        "lying_size.zip": (lying, "declares|damaged"),
        "encrypted.zip": (_patch_central(_zip(good), b"NORMAL/a.png", "flags", 1), "encrypted"),
        "method.zip": (_patch_central(_zip(good), b"NORMAL/a.png", "method", 99), "compression"),
        "clash.zip": (
            _zip([*good, ("NORMAL/x", b"f"), ("NORMAL/x/y.png", png_bytes())]),
            "both a file",
        ),
        "long.zip": (_zip([*good, ("NORMAL/" + "n" * 300 + ".png", png_bytes())]), "longer"),
        "dup.zip": (_zip([*good, ("NORMAL/a.png", png_bytes())]), "twice"),
        "truncated.zip": (_zip(good)[:100], "not a readable zip"),
    }
    import warnings

    for name, (data, match) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is given
            with pytest.raises(app_inputs.AppInputError, match=match) as info:
                app_inputs.extract_zip(data, name, tmp_path / "work")
        assert "\n" not in str(info.value)
    assert not list((tmp_path / "work").rglob("*.png"))  # nothing half-extracted


# -- the command line, under a memory cap -------------------------------------------------------------


def _cli(*args: str, mem_gb: float = 2.0, env: dict | None = None) -> subprocess.CompletedProcess:
    def cap() -> None:
        import resource

        limit = int(mem_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "medtl", *args, "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        preexec_fn=cap,
        env={**os.environ, **(env or {})},
    )


def test_data_check_on_the_hostile_folder_under_a_memory_cap(hostile, tmp_path) -> None:
    root, _expect, _ds, _ = hostile
    # the CLI prints paths: a copy without the non-UTF-8 name (see test below)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(
        root,
        copy,
        symlinks=True,
        ignore=lambda d, names: [n for n in names if "\udce7" in n or n.startswith("fifo")],
    )
    out = _cli("data", "check", str(copy))
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert "file(s) cannot be used" in out.stdout
    assert not any(m in out.stderr for m in LEAK)  # warnings name images by uid


def test_data_check_prints_non_utf8_names(tmp_path) -> None:
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            (root / cls / f"ok{i}.png").write_bytes(png_bytes())
    (root / "a" / os.fsdecode(b"Fran\xe7ois.png")).write_bytes(b"")
    out = _cli("data", "check", str(root), env={"PYTHONIOENCODING": "utf-8:strict"})  # a terminal
    assert "Traceback" not in out.stderr
