"""Synthetic phantom: real DICOM, PHI in headers but never in what medtl returns, profiles, lesions."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter, grey_opening
from sklearn.metrics import roc_auc_score

from medtl.data import data_card, load_dataset, prepare_images, summarise_dataset
from medtl.data.synth import PROFILES, default_demo_dataset, make_phantom
from medtl.errors import ConfigError
from medtl.io import detect_format, read_image


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom(tmp_path_factory.mktemp("ph"), n_per_class=12, size=96, seed=5)


def test_files_are_dicom_with_fake_phi(phantom: Path) -> None:
    files = sorted(phantom.rglob("*.dcm"))
    assert len(files) == 24
    assert {f.parent.name for f in files} == {"normal", "opacity"}
    assert all(detect_format(f) == "dicom" for f in files)
    ds = pydicom.dcmread(files[0])
    assert str(ds.PatientName).startswith("Phantom^Patient^")
    assert str(ds.PatientID).startswith("PHI-") and len(str(ds.PatientID)) == 10
    photometrics = {
        str(pydicom.dcmread(f, stop_before_pixels=True).PhotometricInterpretation) for f in files
    }
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    rows = list(csv.DictReader((phantom / "manifest.csv").read_text().splitlines()))
    assert len(rows) == 24
    assert all(r["patient_id"].startswith("P0") for r in rows)
    pids = [r["patient_id"] for r in rows]
    assert all(pids.count(p) == 2 for p in pids)  # two images per patient


def test_phi_never_leaks(phantom: Path) -> None:
    phi = set()
    for f in phantom.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        phi |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
        phi.add(str(ds.PatientName).replace("^", " "))
    for source in (phantom, phantom / "manifest.csv"):
        ds = load_dataset(source, progress=False)
        summary = summarise_dataset(ds)
        texts = [str(ds), data_card(ds), str(summary)]
        _, meta = read_image(ds.samples[0].path)
        texts.append(str(meta))
        for text in texts:
            for value in phi:
                assert value not in text
            assert "PHI-" not in text and "Phantom^" not in text


def test_profiles_read_the_same(tmp_path: Path) -> None:
    images = []
    for name in PROFILES:
        root = make_phantom(tmp_path / name, n_per_class=2, size=64, seed=3, profiles=(name,))
        images.append(read_image(root / "opacity" / "img_0001.dcm")[0])
    for img in images[1:]:
        assert np.abs(img - images[0]).max() < 0.01
    assert 0.2 < images[0].mean() < 0.6 and images[0].std() > 0.1


def test_deterministic(tmp_path: Path) -> None:
    def digest(root: Path) -> list[str]:
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*.*"))]

    a = make_phantom(tmp_path / "a", n_per_class=3, size=48, seed=9)
    b = make_phantom(tmp_path / "b", n_per_class=3, size=48, seed=9)
    c = make_phantom(tmp_path / "c", n_per_class=3, size=48, seed=10)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def _blob_score(img: np.ndarray) -> float:
    """Trivial lesion statistic: brightest small blob (top-hat) inside the dark lung areas."""
    opened = grey_opening(img, size=(3, 3))  # removes thin ribs
    background = grey_opening(opened, size=(25, 25))  # removes lesion-sized blobs
    tophat = opened - background
    lungs = binary_erosion(background < 0.42, iterations=3)
    lungs &= ~binary_dilation(gaussian_filter(img, 2) < 0.12, iterations=18)  # not the chest wall
    n = img.shape[1]
    lungs[:, int(n * 0.42) : int(n * 0.58)] = False  # not the spine
    return float(tophat[lungs].max()) if lungs.any() else 0.0


def test_lesions_separable_at_difficulty_zero(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "easy", n_per_class=30, size=128, difficulty=0.0, seed=1)
    ds = load_dataset(root, progress=False, verify=False)
    prep = prepare_images(ds.samples, ds.classes, size=128, progress=False)
    scores = [_blob_score(p[0].astype(np.float32) / 255) for p in prep.pixels]
    positive = prep.labels == ds.classes.index("opacity")
    assert roc_auc_score(positive, scores) > 0.85


def test_split_layout_and_patient_manifest(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "s", n_per_class=20, size=48, split=True)
    assert {p.name for p in root.iterdir() if p.is_dir()} == {"train", "val", "test"}
    ds = load_dataset(root, progress=False)
    assert ds.source == "folder_splits"
    by_csv = load_dataset(root / "manifest.csv", progress=False)
    where: dict[str, set] = {}
    for s in by_csv.samples:
        where.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in where.values())
    assert by_csv.counts() == ds.counts()


def test_default_demo_dataset_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medtl.data.synth as synth

    calls = []
    real = synth.make_phantom

    def small(out, **kw):
        calls.append(kw)
        return real(out, **{**kw, "n_per_class": 4, "size": 48})

    monkeypatch.setattr(synth, "make_phantom", small)
    root = default_demo_dataset(tmp_path)
    again = default_demo_dataset(tmp_path)
    assert root == again and len(calls) == 1
    assert (root / "phantom.json").exists() and len(list(root.rglob("*.dcm"))) == 8
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folder left


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="difficulty"):
        make_phantom(tmp_path, difficulty=2.0)
    with pytest.raises(ConfigError, match="Did you mean 'mono2_12bit'"):
        make_phantom(tmp_path, profiles=("mono2_12bits",))


@pytest.mark.slow
def test_full_size_phantom_is_fast(tmp_path: Path) -> None:
    import time

    t = time.perf_counter()
    make_phantom(tmp_path, n_per_class=40, size=256)
    assert time.perf_counter() - t < 10.0
