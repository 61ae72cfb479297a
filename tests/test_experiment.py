"""End to end: `compare` on a tiny synthetic DICOM phantom with the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtl.config import config_from_dict
from medtl.experiment import compare

STRATS = ["feature_extraction", "fine_tuning", "from_scratch"]


def tiny_cfg(tmp: Path, **extra) -> object:
    d = {
        "name": "tiny",
        "data": {
            "path": "synthetic",
            "synthetic_per_class": 24,
            "synthetic_difficulty": 0.0,
            "min_per_class": 2,
        },
        "model": {"backbone": "tiny_test", "image_size": 48},
        "strategies": STRATS,
        "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
        "train": {"epochs": 2, "batch_size": 8},
        "output": {"out": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
    }
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(d)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    summary = compare(tiny_cfg(tmp), progress=False)
    return tmp, summary


def test_run_folder_is_complete(run):
    tmp, summary = run
    out = tmp / "run"
    for f in ["config.yaml", "splits.json", "data_card.md", "skipped.csv", "summary.json"]:
        assert (out / f).exists(), f
    for s in STRATS:
        assert summary["strategies"][s]["status"] == "done", summary["strategies"][s]
        for f in [
            "history.json",
            "predictions.csv",
            "metrics.json",
            "summary.json",
            "model/model.safetensors",
        ]:
            assert (out / s / f).exists(), (s, f)
        row = summary["strategies"][s]
        assert 0 <= row["test_auroc"] <= 1 and 0 <= row["val_auroc"] <= 1
        assert row["train_seconds"] > 0 and row["images_per_s"] > 0
        for k in ("start", "slope", "asymptote"):
            assert k in row
    saved = json.loads((out / "summary.json").read_text())
    assert saved["strategies"].keys() == summary["strategies"].keys()
    assert len(saved["paired"]) == 3  # every pair of strategies


def test_no_patient_identifier_in_any_output(run):
    tmp, _ = run
    phantom = next((tmp / "cache").glob("phantom_*"))
    import pydicom

    names, ids = set(), set()
    for f in phantom.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        names.add(str(ds.PatientName))
        ids.add(str(ds.PatientID))
    assert names and ids  # the phantom does carry fake PHI
    for f in (tmp / "run").rglob("*"):
        if f.is_file() and f.suffix != ".safetensors":
            text = f.read_bytes().decode("utf-8", errors="ignore")
            for phi in list(names)[:20] + list(ids)[:20]:
                assert phi not in text, (f, phi)


def test_resume_does_not_recompute_finished_strategies(run, monkeypatch):
    tmp, summary = run
    import medtl.experiment as exp

    def boom(*a, **k):
        raise AssertionError("should not be rebuilt")

    monkeypatch.setattr(exp, "build_strategy", boom)
    again = compare(tiny_cfg(tmp), progress=False, resume=True, write_html=False)
    for s in STRATS:
        assert again["strategies"][s]["test_auroc"] == summary["strategies"][s]["test_auroc"]


def test_failed_strategy_does_not_lose_the_others(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        strategies=["feature_extraction", "partial_fine_tuning"],
        params={"partial_fine_tuning": {"trainable_stages": 99}},
    )
    summary = compare(cfg, progress=False, write_html=False)
    assert summary["strategies"]["feature_extraction"]["status"] == "done"
    bad = summary["strategies"]["partial_fine_tuning"]
    assert bad["status"] == "failed" and "'trainable_stages'" in bad["error"]


def test_validation_and_test_from_other_sites(tmp_path):
    from medtl.data.synth import make_phantom

    site_b = make_phantom(tmp_path / "site_b", n_per_class=6, size=64, seed=7, difficulty=0.0)
    site_c = make_phantom(tmp_path / "site_c", n_per_class=5, size=64, seed=8, difficulty=0.0)
    cfg = tiny_cfg(
        tmp_path,
        strategies=["feature_extraction"],
        data={"val": str(site_b), "test": str(site_c)},
    )
    summary = compare(cfg, progress=False, write_html=False)
    assert summary["dataset"]["n_val"] == 12 and summary["dataset"]["n_test"] == 10
    # no test split is carved from the own data when the test set is external: every one of the
    # 48 own images trains (none is set aside to be neither trained on nor scored)
    assert summary["dataset"]["n_train"] == 48
    assert any("Validation on another dataset" in n for n in summary["notes"])
    row = summary["strategies"]["feature_extraction"]
    assert row["status"] == "done" and row["val_auroc"] is not None


def test_positive_class_flips_the_finding_end_to_end(run, tmp_path):
    # the phantom's classes are normal/opacity: by default "opacity" (sorted second) is the finding
    tmp, summary = run
    cfg = tiny_cfg(
        tmp_path,
        strategies=["feature_extraction"],
        data={"positive_class": "normal"},
        output={"out": str(tmp_path / "run"), "cache_dir": str(tmp / "cache")},
    )
    flipped = compare(cfg, progress=False)
    header = (tmp_path / "run/feature_extraction/predictions.csv").read_text().splitlines()[0]
    assert header.endswith("p_opacity,p_normal")
    default_header = (tmp / "run/feature_extraction/predictions.csv").read_text().splitlines()[0]
    assert default_header.endswith("p_normal,p_opacity")
    # the same images and the same fit, with the finding swapped: AUROC is unchanged
    a = summary["strategies"]["feature_extraction"]["test_auroc"]
    b = flipped["strategies"]["feature_extraction"]["test_auroc"]
    assert b == pytest.approx(a, abs=1e-6)
    # every embedding came from the first run's cache: no throughput is claimed for no work
    assert flipped["strategies"]["feature_extraction"]["images_per_s"] is None
    assert summary["strategies"]["feature_extraction"]["images_per_s"] > 0
