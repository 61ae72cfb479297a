"""Conformance of the DICOM reader on real files from pydicom's test data (offline only)."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.io import read_image

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402


def _testdata(name: str) -> str:
    """Path of a pydicom / pydicom-data test file, never downloading; skip when absent."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return path


def _check_contract(image: np.ndarray) -> None:
    assert image.dtype == np.float32
    assert image.ndim in (2, 3)
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


# pydicom-data pairs each JPEG 2000 file with its uncompressed twin by the last letter:
# *_J2KR (reversible) decodes to *_UNCR, *_J2KI (irreversible) to *_UNCI (the decoded lossy image).
@pytest.mark.parametrize("stem", ["RG1", "RG3"])
@pytest.mark.parametrize("kind", ["R", "I"])
def test_uncompressed_and_jpeg2000_decode_identically(stem: str, kind: str) -> None:
    unc, meta_unc = read_image(_testdata(f"{stem}_UNC{kind}.dcm"))
    j2k, meta_j2k = read_image(_testdata(f"{stem}_J2K{kind}.dcm"))
    _check_contract(unc)
    assert meta_unc["transfer_syntax"] != meta_j2k["transfer_syntax"]
    assert "2000" in meta_j2k["transfer_syntax"]
    assert np.array_equal(unc, j2k)


def test_lossy_jpeg2000_differs_from_lossless() -> None:
    """Guards the pairing above: the lossless and lossy sources are really different images."""
    lossless, _ = read_image(_testdata("RG3_UNCR.dcm"))
    lossy, _ = read_image(_testdata("RG3_UNCI.dcm"))
    assert not np.array_equal(lossless, lossy)
    assert np.abs(lossless - lossy).mean() < 0.01


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
def test_monochrome1_radiograph_is_inverted(name: str) -> None:
    path = _testdata(name)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    image, meta = read_image(path)
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    assert meta["inverted"] is True
    assert isinstance(meta["window_used"], tuple)  # the header window was used
    corr = np.corrcoef(raw.ravel()[::7], image.astype(np.float64).ravel()[::7])[0, 1]
    assert corr < -0.8, corr


def test_modality_lut_sequence_matches_pydicom() -> None:
    path = _testdata("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    ref = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    image, meta = read_image(path, window="full")
    assert meta["modality_lut"] == "lut"
    np.testing.assert_allclose(image, ref, atol=1e-6)
    # No window in this header: "header" falls back to the full range and says so.
    header_image, header_meta = read_image(path)
    assert header_meta["window_used"] == "full"
    assert any("no window" in n for n in header_meta["notes"])
    np.testing.assert_array_equal(header_image, image)


def test_voi_lut_sequence_matches_pydicom() -> None:
    path = _testdata("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
    image, meta = read_image(path)
    _check_contract(image)
    assert meta["window_used"] == "voi_lut"
    # Same values up to the [0, 1] scaling by the LUT's output range: an exact linear relation
    # through zero.
    scale = float(ref.max()) / float(image.max())
    np.testing.assert_allclose(image.astype(np.float64) * scale, ref, atol=scale * 1e-6)
    assert image.max() <= 1.0 and scale >= 255


@pytest.mark.parametrize(
    ("name", "syntax_word"),
    [
        ("MR_small_RLE.dcm", "RLE"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS"),
        ("JPEGLSNearLossless_16.dcm", "JPEG-LS"),
        ("MR_small_bigendian.dcm", "Big Endian"),
        ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline"),
    ],
)
def test_compressed_and_big_endian_files_read(name: str, syntax_word: str) -> None:
    image, meta = read_image(_testdata(name))
    _check_contract(image)
    assert syntax_word in meta["transfer_syntax"]
    assert image.shape[:2] == (meta["rows"], meta["columns"])
    assert image.std() > 0.01  # real content, not a blank


def test_mr_small_variants_agree() -> None:
    """Little endian (RLE, JPEG-LS lossless) and big endian give the same image."""
    images = [
        read_image(_testdata(n))[0]
        for n in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm")
    ]
    for other in images[1:]:
        np.testing.assert_allclose(images[0], other, atol=1e-6)


def test_jpeg_baseline_ycbcr_becomes_rgb_once() -> None:
    jpeg, meta = read_image(_testdata("SC_rgb_jpeg_dcmtk.dcm"))
    assert jpeg.shape == (100, 100, 3)
    assert meta["decoded_photometric_interpretation"] == "RGB"
    # The uncompressed reference image of the same test pattern: a lossy copy stays close only
    # if the colour conversion happened exactly once.
    ref, _ = read_image(_testdata("SC_rgb.dcm"))
    assert np.abs(jpeg - ref).mean() < 0.05


def test_ybr_full_uncompressed_matches_rgb() -> None:
    ybr, _ = read_image(_testdata("SC_ybr_full_uncompressed.dcm"))
    rgb, _ = read_image(_testdata("SC_rgb.dcm"))
    assert ybr.shape == rgb.shape == (100, 100, 3)
    assert np.abs(ybr - rgb).max() < 0.03


def test_multiframe_default_middle_and_frame_option() -> None:
    path = _testdata("emri_small.dcm")
    raw = pydicom.dcmread(path).pixel_array
    image, meta = read_image(path)
    assert meta["n_frames"] == 10 and meta["frame_used"] == 5
    assert image.shape == (64, 64)
    for index in (0, 3, -1):
        frame, fmeta = read_image(path, frame=index, window="full")
        expected = raw[index].astype(np.float64)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        assert fmeta["frame_used"] == index % 10
        np.testing.assert_allclose(frame, expected, atol=1e-6)
    assert not np.array_equal(read_image(path, frame=0)[0], read_image(path, frame=9)[0])


def test_multiframe_frame_out_of_range() -> None:
    from medtl.errors import ImageReadError

    with pytest.raises(ImageReadError, match="out of range"):
        read_image(_testdata("emri_small.dcm"), frame=10)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "OT-PAL-8-face.dcm"])
def test_palette_color_reads_as_rgb(name: str) -> None:
    path = _testdata(name)
    image, meta = read_image(path)
    _check_contract(image)
    assert meta["photometric_interpretation"] == "PALETTE COLOR"
    assert image.ndim == 3 and image.shape[-1] == 3
    assert meta["palette_applied"] is True
    # A real palette image has colour somewhere, not only grey.
    assert np.abs(image[..., 0] - image[..., 2]).max() > 0.05


def test_jpeg2000_colour_ultrasound() -> None:
    j2k, _ = read_image(_testdata("US1_J2KR.dcm"))
    unc, _ = read_image(_testdata("US1_UNCR.dcm"))
    assert j2k.shape == unc.shape == (480, 640, 3)
    assert np.array_equal(j2k, unc)


def test_bare_dicom_without_preamble_reads() -> None:
    image, meta = read_image(_testdata("OT-PAL-8-face.dcm"))  # no preamble, no file meta
    assert meta["format"] == "dicom"
    assert image.shape == (480, 640, 3)


def test_real_truncated_file_is_an_image_read_error() -> None:
    from medtl.errors import ImageReadError

    path = _testdata("MR_truncated.dcm")
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(path)
    assert info.value.path == str(path)
