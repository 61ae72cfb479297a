"""The app's pure logic (apps/_app_inputs.py, apps/_app_logic.py), without Streamlit."""

from __future__ import annotations

import io
import stat
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps"))

import _app_inputs as I  # noqa: E402
import _app_logic as L  # noqa: E402


def _png_bytes(value: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _files_outside(tmp_path: Path, work: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(work)]


def test_work_dir_from_env(tmp_path):
    w = I.work_dir({"MEDTL_APP_WORK": str(tmp_path / "w")})
    assert w == (tmp_path / "w").resolve() and w.is_dir()


def test_zip_with_wrapping_folder_is_extracted_inside_work(tmp_path):
    work = tmp_path / "work"
    data = _zip(
        {
            "set/NORMAL/a.png": _png_bytes(),
            "set/PNEUMONIA/b.png": _png_bytes(200),
            "__MACOSX/set/._a.png": b"junk",
        }
    )
    root = I.extract_zip(data, "set.zip", work)
    assert root.is_relative_to(work)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["NORMAL", "PNEUMONIA"]
    assert not list(work.rglob("._a.png"))
    assert I.extract_zip(data, "set.zip", work) == root  # same content: reused


@pytest.mark.parametrize(
    "entry", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "..\\evil.png", "C:/evil.png"]
)
def test_zip_traversal_refused(tmp_path, entry):
    work = tmp_path / "work"
    data = _zip({entry: b"x", "A/a.png": _png_bytes(), "B/b.png": _png_bytes()})
    with pytest.raises(I.AppInputError, match="outside the zip"):
        I.extract_zip(data, "evil.zip", work)
    assert _files_outside(tmp_path, work) == []
    assert not list(work.rglob("*.png"))


def test_zip_links_no_classes_and_not_zip(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(I.AppInputError, match="symbolic links"):
        I.extract_zip(_zip({"A/a.png": b"x", "B/b.png": b"x"}, links=("A/l",)), "l.zip", work)
    with pytest.raises(I.AppInputError, match="no class folders"):
        I.extract_zip(_zip({"a.png": b"x", "b.png": b"y"}), "flat.zip", work)
    with pytest.raises(I.AppInputError, match="not a zip file"):
        I.extract_zip(b"hello", "x.zip", work)
    assert not list(work.rglob("*.png"))


def test_size_limits(tmp_path):
    with pytest.raises(I.AppInputError, match="limit is 1 MB"):
        I.check_size("big.dcm", 2 * 1024 * 1024, 1)
    I.check_size("ok.dcm", 1024, 1)
    big = b"\0" * (I.MAX_IMAGE_MB * 1024 * 1024 + 1)
    with pytest.raises(I.AppInputError, match="50 MB"):
        I.save_single_upload(big, "big.dcm", tmp_path)
    assert not (tmp_path / "uploads").exists()


def test_read_single_phi_and_corrupt_dicom(tmp_path):
    from medtl.io import write_test_dicom

    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4000).astype(np.uint16)
    src = tmp_path / "phi.dcm"
    write_test_dicom(src, arr, PatientName="Fake^Patient", PatientID="PHI-123456")
    path = I.save_single_upload(src.read_bytes(), "phi.dcm", tmp_path / "work")
    assert path.is_relative_to(tmp_path / "work")
    img, meta = I.read_single(path)
    assert img.shape == (64, 64) and 0 <= img.min() <= img.max() <= 1
    assert meta["format"] == "dicom"
    assert "Fake" not in repr(meta) and "PHI-123456" not in repr(meta)
    assert set(meta) <= set(I.SAFE_META_KEYS)
    bad = I.save_single_upload(src.read_bytes()[:400], "cut.dcm", tmp_path / "work")
    with pytest.raises(I.AppInputError, match="cannot be read as an image"):
        I.read_single(bad)


def test_safe_meta_drops_unknown_keys():
    meta = {"format": "dicom", "PatientName": "X", "patient_id": "Y", "rows": 4, "notes": None}
    assert I.safe_meta(meta) == {"format": "dicom", "rows": 4}


def test_server_folder_messages(tmp_path):
    with pytest.raises(I.AppInputError, match="does not exist"):
        I.server_folder(str(tmp_path / "nope"))
    with pytest.raises(I.AppInputError, match="Type the path"):
        I.server_folder("  ")
    assert I.server_folder(str(tmp_path)) == tmp_path.resolve()


def _fake_run(seed: int = 0):
    from medtl.report import Predictions

    rng = np.random.default_rng(seed)
    strategies = {}
    for name, sep in (("feature_extraction", 1.0), ("fine_tuning", 2.0)):
        y = np.array([0, 1] * 40)
        p = 1 / (1 + np.exp(-(sep * (y - 0.5) * 2 + rng.normal(0, 1, y.size))))
        split = np.array(["val"] * 40 + ["test"] * 40)
        pred = Predictions(
            uid=[str(i) for i in range(80)],
            split=split,
            label=y,
            proba=np.stack([1 - p, p], 1),
            class_names=["normal", "lesion"],
        )
        strategies[name] = SimpleNamespace(predictions=pred, history=None)
    return SimpleNamespace(strategies=strategies, classes=["normal", "lesion"])


def test_operating_points_follow_threshold_and_prevalence():
    run = _fake_run()
    a = L.operating_points(run, threshold=0.3, prevalence=0.1)
    b = L.operating_points(run, threshold=0.8, prevalence=0.1)
    for name in ("feature_extraction", "fine_tuning"):
        assert a[name]["sensitivity"] >= b[name]["sensitivity"]
        assert a[name]["specificity"] <= b[name]["specificity"]
        o = a[name]
        assert o["ppv_at_prevalence_low"] <= o["ppv_at_prevalence"] <= o["ppv_at_prevalence_high"]
        assert o["npv_at_prevalence_low"] <= o["npv_at_prevalence"] <= o["npv_at_prevalence_high"]
    c = L.operating_points(run, threshold=0.3, prevalence=0.5)
    assert c["fine_tuning"]["ppv_at_prevalence"] > a["fine_tuning"]["ppv_at_prevalence"]
    rows = L.operating_rows(a)
    assert rows[1]["measure"].startswith("Sensitivity") and "%" in rows[1]["Fine-tuning"]
    assert any(r["measure"] == "PPV at your prevalence" for r in rows)
    t = L.operating_points(run, target_sensitivity=0.9)
    assert t["fine_tuning"]["threshold"] != t["feature_extraction"]["threshold"]
    with pytest.raises(I.AppInputError):
        L.operating_points(run)


def test_strategy_rows_flag_gap_and_failed():
    summary = {
        "strategies": {
            "feature_extraction": {
                "status": "done",
                "test_auroc": 0.80,
                "test_auroc_ci": [0.7, 0.9],
                "val_auroc": 0.90,
                "val_minus_test": 0.10,
                "train_seconds": 3.2,
                "start": 0.9,
                "slope": 0.0,
                "asymptote": 0.9,
            },
            "fine_tuning": {
                "status": "done",
                "test_auroc": 0.85,
                "test_auroc_ci": [0.75, 0.95],
                "val_auroc": 0.86,
                "val_minus_test": 0.01,
                "train_seconds": 30.0,
            },
            "from_scratch": {"status": "failed", "error": "ValueError: boom"},
        },
        "paired": [{"summary": "fine_tuning's AUROC is higher than feature_extraction's by 0.05"}],
    }
    rows = L.strategy_rows(summary)
    assert "overstated" in rows[0]["validation − test"]
    assert "overstated" not in rows[1]["validation − test"]
    assert rows[0]["test AUROC"] == "0.800 (95% CI 0.700–0.900)"
    assert rows[2]["status"] == "failed" and "boom" in rows[2]["note"]
    warns = L.gap_warnings(summary)
    assert len(warns) == 1 and warns[0].startswith("Feature extraction")
    assert "Fine-tuning's AUROC" in L.paired_sentences(summary)[0]


def test_advice_rows_and_build_config(tmp_path):
    adv = SimpleNamespace(
        expected_auroc={"fine_tuning": [0.8, 0.9]}, estimated_minutes={"fine_tuning": 0.25}
    )
    rows = L.advice_rows(adv)
    assert rows == [
        {
            "strategy": "Fine-tuning (all layers)",
            "expected AUROC": "0.80 – 0.90",
            "estimated time": "15 s",
        }
    ]
    cfg = L.build_config(tmp_path / "d", tmp_path / "w", backbone="tiny_test", run_name="r1")
    assert Path(cfg.output.out) == tmp_path / "w" / "runs" / "r1"
    assert Path(cfg.output.cache_dir).is_relative_to(tmp_path / "w")
    assert cfg.strategies == ["feature_extraction", "fine_tuning"]
