"""DICOM reader on hand-made files: exact intensities, PHI never in metadata, bad input."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medtl.errors import ConfigError, ImageReadError
from medtl.io import read_image, write_test_dicom

PHI = {
    "PatientName": "Fake^Patient",
    "PatientID": "PHI-12345",
    "PatientBirthDate": "19700101",
    "InstitutionName": "Secret General Hospital",
    "AccessionNumber": "ACC-98765",
}
PHI_STRINGS = ["Fake", "Patient", "PHI-12345", "19700101", "Secret General", "ACC-98765"]


def _assert_no_phi(text: str) -> None:
    for s in PHI_STRINGS:
        assert s not in text, f"identifier {s!r} leaked into: {text[:300]}"


# --- write_test_dicom -------------------------------------------------------------------------


def test_write_test_dicom_round_trips_through_pydicom(tmp_path) -> None:
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    path = write_test_dicom(
        tmp_path / "a.dcm",
        arr,
        bits_stored=12,
        rescale_slope=2,
        rescale_intercept=-5,
        window_center=100,
        window_width=50,
        pixel_spacing=(0.2, 0.3),
        modality="DX",
        **PHI,
    )
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(ds.pixel_array, arr)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.BitsStored, ds.HighBit, ds.Modality) == (12, 11, "DX")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (2.0, -5.0)
    assert ds.PatientID == "PHI-12345"
    assert path.read_bytes()[128:132] == b"DICM"


def test_write_test_dicom_multiframe_signed_and_rgb(tmp_path) -> None:
    frames = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30
    ds = pydicom.dcmread(write_test_dicom(tmp_path / "mf.dcm", frames))
    assert int(ds.NumberOfFrames) == 3 and ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, frames)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    ds = pydicom.dcmread(write_test_dicom(tmp_path / "rgb.dcm", rgb))
    assert ds.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(ds.pixel_array, rgb)


def test_write_test_dicom_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        write_test_dicom(tmp_path / "f.dcm", np.zeros((2, 2), np.float32))
    with pytest.raises(ConfigError, match="not a DICOM keyword"):
        write_test_dicom(tmp_path / "k.dcm", np.zeros((2, 2), np.uint8), NotAKeyword="x")


# --- exact intensities ------------------------------------------------------------------------


def test_monochrome1_inversion_exact(tmp_path) -> None:
    stored = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    path = write_test_dicom(tmp_path / "m1.dcm", stored, photometric_interpretation="MONOCHROME1")
    image, meta = read_image(path)
    assert meta["inverted"] is True and meta["window_used"] == "full"
    np.testing.assert_allclose(image, 1.0 - stored / 255.0, atol=1e-7)
    # The same values as MONOCHROME2 are not inverted.
    path2 = write_test_dicom(tmp_path / "m2.dcm", stored)
    image2, meta2 = read_image(path2)
    assert meta2["inverted"] is False
    np.testing.assert_allclose(image2, stored / 255.0, atol=1e-7)


def test_monochrome2_rescale_and_window_hand_computed(tmp_path) -> None:
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = write_test_dicom(
        tmp_path / "w.dcm",
        stored,
        bits_stored=12,
        rescale_slope=2.0,
        rescale_intercept=-100.0,
        window_center=200.0,
        window_width=401.0,
    )
    # Modality LUT: 2 * stored - 100 = [-100, 100, 300, 500].
    # DICOM linear window: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1].
    expected = np.array([[0.0, 0.25125], [0.75125, 1.0]])
    image, meta = read_image(path)
    assert meta["window_used"] == (200.0, 401.0)
    assert meta["modality_lut"] == "rescale"
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # "full" ignores the window: min..max of the rescaled values.
    full, meta_full = read_image(path, window="full")
    np.testing.assert_allclose(full, [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)
    assert meta_full["window_used"] == "full"


def test_monochrome1_with_window_inverts_after_windowing(tmp_path) -> None:
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = write_test_dicom(
        tmp_path / "w1.dcm",
        stored,
        bits_stored=12,
        photometric_interpretation="MONOCHROME1",
        window_center=150.0,
        window_width=201.0,
    )
    image, _ = read_image(path)
    linear = np.clip((stored - 149.5) / 200.0 + 0.5, 0, 1)
    np.testing.assert_allclose(image, 1.0 - linear, atol=1e-6)


def test_percentile_window(tmp_path) -> None:
    stored = np.arange(101, dtype=np.uint16).reshape(1, 101) * 10
    path = write_test_dicom(tmp_path / "p.dcm", stored)
    image, meta = read_image(path, window="percentile", percentiles=(10, 90))
    assert meta["window_used"] == "percentile"
    assert image[0, 10] == pytest.approx(0.0, abs=1e-6)
    assert image[0, 90] == pytest.approx(1.0, abs=1e-6)
    assert image[0, 50] == pytest.approx(0.5, abs=1e-6)
    assert (image[0, :10] == 0).all() and (image[0, 91:] == 1).all()


def test_constant_image_gives_zeros_with_note(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "c.dcm", np.full((4, 4), 77, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no division by zero
        image, meta = read_image(path)
    assert image.dtype == np.float32 and (image == 0).all()
    assert meta["constant"] is True


def test_invalid_header_window_falls_back_to_full(tmp_path) -> None:
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = write_test_dicom(tmp_path / "bad.dcm", stored, window_center=10.0, window_width=0.0)
    with pytest.warns(UserWarning, match="invalid window"):
        image, meta = read_image(path)
    assert meta["window_used"] == "full"
    np.testing.assert_allclose(image, stored / 30.0, atol=1e-6)


def test_signed_pixels_and_multiframe_choice(tmp_path) -> None:
    frames = np.stack([np.full((3, 3), v, np.int16) for v in (-50, 0, 50)])
    frames[:, 0, 0] = -100
    frames[:, 2, 2] = 100
    path = write_test_dicom(tmp_path / "mf.dcm", frames)
    image, meta = read_image(path)
    assert (meta["n_frames"], meta["frame_used"]) == (3, 1)
    assert image[1, 1] == pytest.approx(0.5)
    last, meta_last = read_image(path, frame=-1)
    assert meta_last["frame_used"] == 2 and last[1, 1] == pytest.approx(0.75)


def test_rgb_dicom(tmp_path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 51)
    image, meta = read_image(write_test_dicom(tmp_path / "rgb.dcm", rgb))
    assert image.shape == (2, 2, 3) and meta["samples_per_pixel"] == 3
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-7)


# --- PHI --------------------------------------------------------------------------------------


def test_metadata_carries_no_patient_identifiers(tmp_path, caplog) -> None:
    path = write_test_dicom(
        tmp_path / "phi.dcm",
        np.arange(16, dtype=np.uint16).reshape(4, 4),
        window_center=8.0,
        window_width=16.0,
        ReferringPhysicianName="Dr^Who",
        **PHI,
    )
    caplog.set_level(logging.DEBUG)
    image, meta = read_image(path)
    assert image.shape == (4, 4)
    _assert_no_phi(str(meta))
    _assert_no_phi(repr(meta))
    assert "Dr^Who" not in repr(meta)
    _assert_no_phi(caplog.text)
    # Every value is a plain Python type, not a pydicom object that could drag the header along.
    allowed = (str, int, float, bool, tuple, list, type(None))
    assert all(isinstance(v, allowed) for k, v in meta.items() if k != "attributes")
    # subgroup attributes: a plain dict of group names (no identifier among them)
    assert all(isinstance(v, str) for v in meta["attributes"].values())


def test_error_messages_carry_no_patient_identifiers(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "phi.dcm", np.zeros((64, 64), np.uint16), **PHI)
    data = path.read_bytes()
    cut = tmp_path / "phi_cut.dcm"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    _assert_no_phi(str(info.value))


# --- bad DICOM input --------------------------------------------------------------------------


def test_truncated_pixel_data(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "full.dcm", np.ones((64, 64), np.uint16))
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 64 * 64])  # half the 8192 bytes of pixel data
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(cut)
    assert info.value.path == str(cut)


def test_truncated_inside_header(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "full.dcm", np.ones((8, 8), np.uint16))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    assert info.value.path == str(cut)


def test_dicom_without_pixel_data(tmp_path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        read_image(path)
    assert info.value.path == str(path)


def test_transfer_syntax_without_decoder(tmp_path) -> None:
    from pydicom.encaps import encapsulate

    path = write_test_dicom(tmp_path / "mpeg.dcm", np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 12])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="unsupported transfer syntax"):
        read_image(path)


def test_missing_decoder_plugin_names_the_fix(tmp_path, monkeypatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    path = write_test_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8))
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    monkeypatch.setattr(
        Decoder, "missing_dependencies", property(lambda self: {"pylibjpeg": ["openjpeg"]})
    )
    with pytest.raises(ImageReadError, match="pip install pylibjpeg"):
        read_image(path)
