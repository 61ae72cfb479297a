"""data_card / summarise_dataset, and (real_data) the Kermany folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.data import data_card, load_dataset, summarise_dataset
from medtl.data.synth import make_phantom

KERMANY = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray_pneumonia_224"
)


def test_card_facts(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "ph", n_per_class=10, size=64, seed=2)
    rng = np.random.default_rng(0)
    for i in range(5):  # a few PNGs of another size in one class: imbalance and mixed formats
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(
            root / "opacity" / f"x{i}.png"
        )
    (root / "normal" / "broken.png").write_bytes(b"")
    (root / "opacity" / "x4_again.png").write_bytes((root / "opacity" / "x4.png").read_bytes())
    ds = load_dataset(root, progress=False)
    f = summarise_dataset(ds)
    assert f["class_totals"] == {"opacity": 16, "normal": 10}
    assert f["imbalance_ratio"] == pytest.approx(1.6)
    assert f["duplicate_groups"] == 1 and f["duplicate_groups_across_splits"] == 0
    assert f["patient_ids"] is False and f["n_patients"] is None
    assert f["images"]["formats"] == {"dicom": 20, "png": 6}
    assert f["images"]["photometric_interpretations"].keys() == {"MONOCHROME1", "MONOCHROME2"}
    assert f["images"]["height"] == {"min": 40, "median": 64.0, "max": 64}
    broken = next(k for k in ds.skipped if k.path.endswith("broken.png"))
    assert f["skipped"] == [{"uid": broken.uid, "reason": "the file is empty (0 bytes)"}]
    assert f["n_ignored"] == 2  # manifest.csv and phantom.json at the root: reported, not used
    json.dumps(f)  # JSON-ready
    card = data_card(ds, title="Phantom test")
    assert card.startswith("# Phantom test\n")
    assert "| train |" in card and "| all | 10 | 16 | 26 |" in card
    assert "| byte-identical copies | 1 group(s) (each kept inside one split) |" in card
    assert f"`{broken.uid}`" in card and "broken.png" not in card and str(tmp_path) not in card
    assert "## To be completed by a person" in card
    for field in ("Source", "Licence", "Label definition", "Known biases", "Intended use"):
        assert f"**{field}:**" in card


def test_card_with_patients(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "ph", n_per_class=10, size=48, seed=2)
    ds = load_dataset(root / "manifest.csv", progress=False)
    f = summarise_dataset(ds, max_files=5)
    assert f["patient_ids"] is True and f["n_patients"] == 10
    assert f["images"]["sampled_files"] == 5
    assert "10 patients" in data_card(ds)


@pytest.mark.real_data
@pytest.mark.skipif(not KERMANY.is_dir(), reason="Kermany chest X-ray folder not present")
def test_kermany_folder_counts() -> None:
    ds = load_dataset(KERMANY, val_fraction=0.15, seed=0, progress=False, num_workers=2)
    assert ds.source == "folder_splits" and ds.classes == ["NORMAL", "PNEUMONIA"]
    assert ds.skipped == []
    c = ds.counts()
    assert c["test"] == {"NORMAL": 234, "PNEUMONIA": 390}
    assert c["train"]["NORMAL"] + c["val"]["NORMAL"] == 1341
    assert c["train"]["PNEUMONIA"] + c["val"]["PNEUMONIA"] == 3875
    # the carve is grouped (30 groups of byte-identical copies), one of round(1 / 0.15) = 7 folds
    assert abs(sum(c["val"].values()) - 5216 / 7) < 5
    assert abs(c["val"]["NORMAL"] / sum(c["val"].values()) - 1341 / 5216) < 0.01  # stratified
    f = summarise_dataset(ds, max_files=4)
    assert f["duplicate_groups"] == 30 and f["duplicate_groups_across_splits"] == 0  # as documented


@pytest.mark.real_data
@pytest.mark.skipif(not KERMANY.is_dir(), reason="Kermany chest X-ray folder not present")
def test_kermany_patient_pattern_gives_patient_disjoint_splits() -> None:
    import warnings
    from collections import defaultdict

    from medtl.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "kermany_fine_tuning.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old pattern warned: 170 ids "in both" train and test
        ds = load_dataset(
            KERMANY,
            val_fraction=0.15,
            progress=False,
            verify=False,
            patient_id_pattern=cfg.data.patient_id_pattern,
        )
    where = defaultdict(set)
    for s in ds.samples:
        assert s.patient_id, "every Kermany file name carries a patient id"
        where[s.patient_id].add(s.split)
    assert len(where) == 2443 + 1211 + 428  # train+val PNEUMONIA, NORMAL patients; test patients
    assert all(len(v) == 1 for v in where.values())
