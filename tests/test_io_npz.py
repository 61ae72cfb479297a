"""MedMNIST-format .npz reading."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.errors import ImageReadError
from medtl.io import npz_image, read_npz

RNG = np.random.default_rng(0)


def _medmnist(path, colour: bool = False, label_shape: str = "column"):
    shape = (28, 28, 3) if colour else (28, 28)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = RNG.integers(0, 2, n).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.mark.parametrize(("colour", "label_shape"), [(False, "column"), (True, "flat")])
def test_read_npz_round_trip(tmp_path, colour: bool, label_shape: str) -> None:
    arrays = _medmnist(tmp_path / "m.npz", colour, label_shape)
    splits = read_npz(tmp_path / "m.npz")
    assert list(splits) == ["train", "val", "test"]
    for split, (images, labels) in splits.items():
        assert images.dtype == np.uint8 and labels.dtype == np.int64 and labels.ndim == 1
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"].reshape(-1))


def test_read_npz_errors_name_the_key(tmp_path) -> None:
    imgs = np.zeros((3, 4, 4), np.uint8)
    np.savez(tmp_path / "a.npz", train_images=imgs)
    with pytest.raises(ImageReadError, match="'train_labels'"):
        read_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", train_images=imgs, train_labels=np.zeros(2, np.int64))
    with pytest.raises(ImageReadError, match="2 labels"):
        read_npz(tmp_path / "b.npz")
    # (N, K) labels are K findings per image (multi-label, issue 24); other values are refused
    big = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)  # >= 8 px a side
    np.savez(tmp_path / "c.npz", train_images=big, train_labels=np.zeros((3, 14), np.int64))
    assert read_npz(tmp_path / "c.npz")["train"][1].shape == (3, 14)
    np.savez(tmp_path / "c2.npz", train_images=big, train_labels=np.full((3, 14), 2))
    with pytest.raises(ImageReadError, match=r"row 0, column 0: value 2\.0"):
        read_npz(tmp_path / "c2.npz")
    np.savez(
        tmp_path / "d.npz", train_images=imgs.astype(np.float32) + 0.5, train_labels=np.zeros(3)
    )
    with pytest.raises(ImageReadError, match="uint8"):
        read_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=imgs)
    with pytest.raises(ImageReadError, match="no MedMNIST split"):
        read_npz(tmp_path / "e.npz")
    (tmp_path / "f.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageReadError, match=r"f\.npz"):
        read_npz(tmp_path / "f.npz")


def test_npz_image() -> None:
    arr = np.array([[0, 255], [51, 102]], np.uint8)
    image = npz_image(arr)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, arr / 255.0, atol=1e-7)
    assert npz_image(np.zeros((4, 4, 1), np.uint8)).shape == (4, 4)
    assert npz_image(np.zeros((4, 4, 3), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(ValueError):
        npz_image(np.zeros((4, 4), np.int32))
