"""PNG / JPEG / TIFF / BMP reading, detection by content, bad input, to_grey and options."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from medtl.errors import ConfigError, ImageReadError
from medtl.io import detect_format, is_dicom, read_image, to_grey, write_test_dicom

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (16, 12), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (16, 12), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (16, 12, 3), dtype=np.uint8)


def _ok(image: np.ndarray) -> None:
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_grey8_round_trip(tmp_path, ext: str) -> None:
    path = tmp_path / f"g.{ext}"
    Image.fromarray(GREY8).save(path)
    image, meta = read_image(path)
    _ok(image)
    assert meta["format"] == {"tif": "tiff"}.get(ext, ext)
    np.testing.assert_allclose(image, GREY8 / 255.0, atol=1e-7)


def test_png16_round_trip(tmp_path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(GREY16).save(path)
    image, meta = read_image(path)
    assert meta["original_dtype"] == "uint16"
    np.testing.assert_allclose(image, GREY16 / 65535.0, atol=1e-7)


def test_rgb_png_stays_rgb_even_when_grey(tmp_path) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(RGB8).save(path)
    image, meta = read_image(path)
    assert meta["colour"] is True
    np.testing.assert_allclose(image, RGB8 / 255.0, atol=1e-7)
    grey_rgb = np.repeat(GREY8[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(path)
    image, _ = read_image(path)
    assert image.shape == (16, 12, 3)
    np.testing.assert_allclose(to_grey(image), GREY8 / 255.0, atol=1e-6)


def test_rgba_drops_alpha_and_palette_expands(tmp_path) -> None:
    rgba = np.concatenate([RGB8, np.full((16, 12, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image, _ = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(image, RGB8 / 255.0, atol=1e-7)

    pal = Image.fromarray(RGB8).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB")) / 255.0
    image, meta = read_image(tmp_path / "p.png")
    assert meta["mode"] == "P" and image.shape == (16, 12, 3)
    np.testing.assert_allclose(image, expected, atol=1e-7)


def test_jpeg_round_trip_close(tmp_path) -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=100)
    image, meta = read_image(tmp_path / "g.jpg")
    assert meta["format"] == "jpeg" and image.shape == (32, 32)
    assert np.abs(image - smooth / 255.0).max() < 3 / 255


def test_jpeg_exif_orientation_is_applied(tmp_path) -> None:
    arr = np.zeros((8, 16), np.uint8)
    arr[:, :8] = 255  # left half bright
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    image, meta = read_image(tmp_path / "o.jpg")
    assert meta["exif_orientation_applied"] == 6
    assert image.shape == (16, 8)
    assert image[:4].mean() > 0.9 and image[-4:].mean() < 0.1  # bright half now on top


def test_tiff_16bit_float_and_rgb16(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "g16.tif", GREY16)
    image, meta = read_image(tmp_path / "g16.tif")
    assert meta["decoder"] == "tifffile"
    np.testing.assert_allclose(image, GREY16 / 65535.0, atol=1e-7)

    rgb16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    image, _ = read_image(tmp_path / "rgb16.tif")
    np.testing.assert_allclose(image, rgb16 / 65535.0, atol=1e-7)

    floats = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    tifffile.imwrite(tmp_path / "f.tif", floats)
    image, _ = read_image(tmp_path / "f.tif")
    np.testing.assert_allclose(image, floats, atol=1e-7)

    hu = np.linspace(-1000, 1000, 20, dtype=np.float32).reshape(4, 5)
    tifffile.imwrite(tmp_path / "hu.tif", hu)
    image, meta = read_image(tmp_path / "hu.tif")
    np.testing.assert_allclose(image, (hu + 1000) / 2000, atol=1e-6)
    assert any("min-max" in n for n in meta["notes"])


def test_tiff_multipage_and_min_is_white(tmp_path) -> None:
    pages = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 40)])
    tifffile.imwrite(tmp_path / "mp.tif", pages, photometric="minisblack")
    image, meta = read_image(tmp_path / "mp.tif")
    assert (meta["n_frames"], meta["frame_used"]) == (4, 2)
    assert image.shape == (4, 4) and image[0, 0] == pytest.approx(30 / 255)
    image, meta = read_image(tmp_path / "mp.tif", frame=0)
    assert image[0, 0] == pytest.approx(10 / 255)

    tifffile.imwrite(tmp_path / "w.tif", GREY8, photometric="miniswhite")
    image, meta = read_image(tmp_path / "w.tif")
    assert meta["inverted"] is True
    np.testing.assert_allclose(image, 1 - GREY8 / 255.0, atol=1e-6)


def test_full_and_percentile_windows_on_grey_raster(tmp_path) -> None:
    dim = np.arange(100, 200, dtype=np.uint8).reshape(10, 10)
    Image.fromarray(dim).save(tmp_path / "d.png")
    image, meta = read_image(tmp_path / "d.png")
    assert meta["window_used"] == "bit_depth" and image.max() == pytest.approx(199 / 255)
    image, meta = read_image(tmp_path / "d.png", window="full")
    assert image.min() == 0 and image.max() == 1 and meta["window_used"] == "full"
    image, _ = read_image(tmp_path / "d.png", window="percentile", percentiles=(0, 100))
    assert image.min() == 0 and image.max() == 1


# --- detection by content ---------------------------------------------------------------------


def test_png_named_dcm_and_dicom_named_png(tmp_path) -> None:
    Image.fromarray(GREY8).save(tmp_path / "tmp.png")
    misnamed = tmp_path / "x.dcm"
    misnamed.write_bytes((tmp_path / "tmp.png").read_bytes())
    image, meta = read_image(misnamed)
    assert meta["format"] == "png" and not is_dicom(misnamed)
    np.testing.assert_allclose(image, GREY8 / 255.0, atol=1e-7)

    dcm = write_test_dicom(tmp_path / "real.dcm", GREY8)
    as_png = tmp_path / "x.png"
    as_png.write_bytes(dcm.read_bytes())
    image, meta = read_image(as_png)
    assert meta["format"] == "dicom" and is_dicom(as_png)
    np.testing.assert_allclose(image, (GREY8 - GREY8.min()) / np.ptp(GREY8), atol=1e-6)


def test_dicom_without_preamble_is_detected(tmp_path) -> None:
    path = write_test_dicom(tmp_path / "bare", GREY8, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert detect_format(path) == "dicom"
    image, _ = read_image(path)
    assert image.shape == GREY8.shape


def test_detect_format_names(tmp_path) -> None:
    Image.fromarray(GREY8).save(tmp_path / "a", format="JPEG")
    Image.fromarray(GREY8).save(tmp_path / "b", format="BMP")
    Image.fromarray(GREY8).save(tmp_path / "c", format="TIFF")
    np.savez(tmp_path / "d.npz", train_images=np.zeros((1, 2, 2), np.uint8))
    found = [detect_format(tmp_path / n) for n in ("a", "b", "c", "d.npz")]
    assert found == ["jpeg", "bmp", "tiff", "npz"]
    with pytest.raises(ImageReadError, match="read_npz"):
        read_image(tmp_path / "d.npz")


# --- bad input --------------------------------------------------------------------------------


def _bad_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(b"\x13\x37" + np.random.default_rng(1).bytes(2000))
    text = tmp_path / "notes.jpg"
    text.write_text("Patient notes: this is not an image\n" * 20)
    Image.fromarray(RGB8).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    trunc_jpeg = tmp_path / "trunc.jpg"
    trunc_jpeg.write_bytes(data[: len(data) // 2])
    corrupt_jpeg = tmp_path / "corrupt.jpg"
    corrupt_jpeg.write_bytes(data[:4] + b"\x00" * (len(data) - 4))
    Image.fromarray(GREY8).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    trunc_png = tmp_path / "trunc.png"
    trunc_png.write_bytes(data[:60])
    return [empty, noise, text, trunc_jpeg, corrupt_jpeg, trunc_png, tmp_path / "missing.png"]


def test_bad_files_raise_image_read_error_naming_the_path(tmp_path) -> None:
    for path in _bad_files(tmp_path):
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert info.value.path == str(path), path
        assert str(path) in str(info.value)
        assert not is_dicom(path)


def test_bad_file_reasons(tmp_path) -> None:
    empty, noise, text, *_ = _bad_files(tmp_path)
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(noise)
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(text)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


# --- options and helpers ----------------------------------------------------------------------


def test_options_are_validated(tmp_path) -> None:
    Image.fromarray(GREY8).save(tmp_path / "g.png")
    with pytest.raises(ConfigError, match="Did you mean 'header'"):
        read_image(tmp_path / "g.png", window="haeder")
    with pytest.raises(ConfigError, match="low < high"):
        read_image(tmp_path / "g.png", percentiles=(99, 1))
    with pytest.raises(ConfigError, match="percentiles"):
        read_image(tmp_path / "g.png", percentiles=(-1, 50))
    with pytest.raises(ConfigError, match="frame"):
        read_image(tmp_path / "g.png", frame=1.5)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(tmp_path / "g.png", frame=1)


def test_to_grey() -> None:
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = (1, 0, 0)
    rgb[0, 1] = (0, 1, 0)
    rgb[1, 0] = (0, 0, 1)
    rgb[1, 1] = (1, 1, 1)
    grey = to_grey(rgb)
    assert grey.dtype == np.float32 and grey.shape == (2, 2)
    np.testing.assert_allclose(grey, [[0.299, 0.587], [0.114, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(to_grey(grey), grey)
    with pytest.raises(ConfigError):
        to_grey(np.zeros((2, 2, 4), np.float32))
