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
        strategies[name] = SimpleNamespace(predictions=pred, history=None, finished=True)
    summary = {"strategies": {"fine_tuning": {"threshold": 0.42}}, "threshold_rule": "youden"}
    return SimpleNamespace(strategies=strategies, classes=["normal", "lesion"], summary=summary)


def test_operating_points_follow_threshold_and_prevalence():
    run = _fake_run()

    def ops(thr: float, prev: float, split: str = "test"):
        return L.operating_points(run, L.thresholds_for(run, L.OP_THRESHOLD, thr), split=split,
                                  prevalence=prev)  # fmt: skip

    a, b = ops(0.3, 0.1), ops(0.8, 0.1)
    for name in ("feature_extraction", "fine_tuning"):
        assert a[name]["sensitivity"] >= b[name]["sensitivity"]
        assert a[name]["specificity"] <= b[name]["specificity"]
        o = a[name]
        assert o["ppv_at_prevalence_low"] <= o["ppv_at_prevalence"] <= o["ppv_at_prevalence_high"]
        assert o["npv_at_prevalence_low"] <= o["npv_at_prevalence"] <= o["npv_at_prevalence_high"]
    c = ops(0.3, 0.5)
    assert c["fine_tuning"]["ppv_at_prevalence"] > a["fine_tuning"]["ppv_at_prevalence"]
    assert ops(0.3, 0.1, "val") != a  # validation and test numbers differ
    rows = L.operating_rows(a)
    assert rows[1]["Measure"].startswith("Sensitivity") and "%" in rows[1]["Fine-tuning"]
    assert any(r["Measure"] == "PPV at your prevalence" for r in rows)
    t = L.thresholds_for(run, L.OP_TARGET, 0.9)
    assert t["fine_tuning"][0] != t["feature_extraction"][0] and "validation" in t["fine_tuning"][1]
    saved = L.thresholds_for(run, L.OP_SAVED)
    assert saved["fine_tuning"][0] == 0.42  # the run's own operating point, chosen on validation
    assert "validation" in saved["feature_extraction"][1]


def test_operating_rows_explain_na():
    """NPV with no image called negative is 'n/a' with the reason, not a bare 'n/a'."""
    run = _fake_run()
    ops = L.operating_points(run, L.thresholds_for(run, L.OP_THRESHOLD, 0.0), prevalence=0.1)
    rows = {r["Measure"]: r for r in L.operating_rows(ops)}
    assert rows["NPV on these images"]["Fine-tuning"] == "n/a: no image called negative"
    assert rows["Sensitivity (cases caught)"]["Fine-tuning"].startswith("100%")


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
                "slope": 0.02,
            },
            "from_scratch": {"status": "failed", "error": "ValueError: boom"},
            "partial_fine_tuning": {"status": "running"},
        },
        "paired": [{"summary": "fine_tuning's AUROC is higher than feature_extraction's by 0.05"}],
        "notes": [
            "Validation overstates feature_extraction by 0.10 AUROC",
            "partial_fine_tuning x",
        ],
    }
    rows = L.strategy_rows(summary)
    assert "⚠" in rows[0]["Validation − test"] and "⚠" not in rows[1]["Validation − test"]
    assert rows[0]["Test AUROC"] == "0.800" and rows[0]["95% CI"] == "0.700–0.900"
    assert rows[0]["Slope / epoch"] == "— (no epochs)" and rows[1]["Slope / epoch"] == "0.020"
    assert rows[2]["Status"].startswith("failed") and "boom" in rows[2]["Status"]
    assert rows[3]["Status"] == "INCOMPLETE: not finished"
    assert all(len(k) <= 18 for r in rows for k in r)  # short headers: a table never clips them
    warns = L.gap_warnings(summary)
    assert len(warns) == 1 and warns[0].startswith("Feature extraction")
    assert "Fine-tuning's AUROC" in L.paired_sentences(summary)[0]
    assert L.run_notes(summary) == ["Partial fine-tuning x"]  # gap said once, no raw ids


def test_advice_view_plain_language_and_jargon(tmp_path):
    """Rendered from to_dict(), any field may be missing; human names, never raw ids."""
    full = SimpleNamespace(
        to_dict=lambda: {
            "strategy": "partial_fine_tuning",
            "confidence": "low",
            "expected_auroc": {"fine_tuning": [0.8, 0.9], "partial_fine_tuning": [0.7, 0.9]},
            "estimated_minutes": {"fine_tuning": 2.2, "partial_fine_tuning": 0.25},
            "rationale": ["signals mixed -> partial_fine_tuning beats fine_tuning"],
            "profile": {
                "n_images": 68,
                "n_profiled": 68,
                "bn_kl": 2.08,
                "grad_early_share": 0.55,
                "probe": {"knn_auroc": 0.6, "probe_auroc": 0.7, "slope_per_doubling": 0.04},
            },
        }
    )
    v = L.advice_view(full, data_images=80)
    assert v["headline"] == "Recommended: **Partial fine-tuning** (confidence: low)"
    assert v["lines"][0].startswith("**Partial fine-tuning**: expected AUROC about 0.80")
    assert "~15 s" in v["lines"][0] and "~2 min" in v["lines"][1]
    assert v["why"] == ["Signals mixed -> Partial fine-tuning beats Fine-tuning"]
    assert "+0.04" in v["more_data"]
    assert "Profiled 68" in v["profiled"] and "80 usable images" in v["profiled"]
    meas = {m["measure"]: m for m in v["measurements"]}
    assert meas["KL (BatchNorm divergence)"]["value"] == "2.08"
    assert meas["Adaptability (gradient)"]["value"] == "55% in the first half"
    assert meas["k-NN probe"]["meaning"]  # every jargon term has a one-line meaning
    assert "LP-FT" in L.JARGON
    empty = L.advice_view(SimpleNamespace(strategy="fine_tuning"))
    assert empty["lines"] == [] and empty["profiled"] is None


def test_build_config_and_plain_error(tmp_path):
    cfg = L.build_config(tmp_path / "d", tmp_path / "w", backbone="tiny_test", run_name="r1")
    assert Path(cfg.output.out) == tmp_path / "w" / "runs" / "r1"
    assert Path(cfg.output.cache_dir).is_relative_to(tmp_path / "w")
    assert cfg.strategies == ["feature_extraction", "fine_tuning"]
    msg = L.plain_error("cannot read b'\\x89PNG\\r\\n' here")
    assert "\\x89" not in msg and "binary" in msg


def test_progress_step_and_time_left():
    now = [0.0]
    p = L.Progress(["feature_extraction", "fine_tuning"], 3, clock=lambda: now[0])
    assert "preparing" in p.step_text() and "after the first epoch" in p.eta_text()
    p.start("feature_extraction")
    assert "Step 1 of 2" in p.step_text() and "no epochs" in p.step_text()
    now[0] = 5.0
    p.start("fine_tuning")
    now[0] = 25.0
    p.end_epoch("fine_tuning", {"epoch": 1, "val_auroc": 0.8})
    assert (
        p.step_text() == "Step 2 of 2 — Fine-tuning: epoch 1 of 3 finished, validation AUROC 0.800."
    )
    assert p.seconds_left() == 40.0 and "About 40 s left" in p.eta_text()
    assert 0.5 < p.fraction() < 1.0
    q = L.Progress(["fine_tuning"], 2, advised_minutes={"fine_tuning": 3.0}, clock=lambda: 0.0)
    q.start("fine_tuning")
    assert "3.0 min" in q.eta_text() and "advisor" in q.eta_text()


def test_run_label_and_state(tmp_path):
    import json

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  path: /data/phantom_n16_s64_seed0/manifest.csv\n")
    s = {
        "created": "2026-12-02T13:07:59",
        "complete": True,
        "backbone": "tiny_test",
        "dataset": {"counts": {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}}},
        "strategies": {"feature_extraction": {"status": "done"}, "fine_tuning": {"status": "done"}},
    }
    (run / "summary.json").write_text(json.dumps(s))
    assert L.run_label(run) == "2026-12-02 13:07 · Synthetic demo (8 images) · tiny_test · complete"
    s["complete"] = False
    s["strategies"]["fine_tuning"]["status"] = "interrupted"
    assert L.run_state(s) == (False, "INCOMPLETE: Fine-tuning not finished")
    assert L.list_runs(tmp_path) == [run]


def test_meta_rows_readable():
    rows = L.meta_rows({"format": "dicom", "inverted": True, "pixel_spacing": [0.2, 0.2],
                        "PatientName": "X"})  # fmt: skip
    assert rows == [
        {"Property": "File format", "Value": "dicom"},
        {"Property": "Inverted (MONOCHROME1 → bright = dense)", "Value": "yes"},
        {"Property": "Pixel spacing (mm)", "Value": "0.2 × 0.2"},
    ]


@pytest.mark.timeout(180)
def test_stopped_comparison_is_kept_as_interrupted(tmp_path):
    """Stopping (Streamlit raises a BaseException in the progress callback) marks the strategy
    interrupted and the run incomplete, and the caller gets the original exception back."""
    from medtl.data import make_phantom
    from medtl.runs import read_summary

    class Stop(BaseException):
        pass

    data = make_phantom(tmp_path / "d", n_per_class=16, size=32, seed=0)
    cfg = L.build_config(data, tmp_path / "w", backbone="tiny_test", epochs=3, image_size=32,
                         batch_size=8, run_name="cut")  # fmt: skip
    seen = []

    def on_epoch(name, row):
        raise Stop()

    with pytest.raises(L.ComparisonStopped) as err:
        L.run_comparison(cfg, on_start=seen.append, on_epoch=on_epoch)
    assert isinstance(err.value.cause, Stop)
    s = read_summary(err.value.run_dir)
    assert s["complete"] is False and seen == ["feature_extraction", "fine_tuning"]
    assert s["strategies"]["fine_tuning"]["status"] == "interrupted"
    assert L.run_state(s)[0] is False and "INCOMPLETE" in L.run_label(err.value.run_dir)


def test_learning_axes_whole_epochs_and_readable_span():
    from medtl.report import plot_learning_curves

    hist = {
        "Feature extraction": [{"epoch": 1, "C": 0.03, "val_auroc": 0.667}],
        "Fine-tuning": [{"epoch": 1, "val_auroc": 0.639, "elapsed": 1.0}],
    }
    ax = L.integer_epoch_axis(plot_learning_curves(hist), hist).axes[0]
    assert ax.get_xlim() == (0.5, 1.5) and list(ax.get_xticks()) == [1]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.1 - 1e-9 and lo <= 0.639 and hi >= 0.667
    run = SimpleNamespace(
        strategies={
            "feature_extraction": SimpleNamespace(
                finished=True, history=[{"epoch": 1, "C": 0.0316228, "val_auroc": 0.7}]
            ),
            "fine_tuning": SimpleNamespace(finished=False, history=[{"epoch": 1}]),
        }
    )
    assert L.learning_histories(run) == {
        "Feature extraction": [{"epoch": 1, "C": 0.03, "val_auroc": 0.7}]
    }


def test_threshold_source_in_words():
    t = L.threshold_source("model's operating point (youden, chosen on val)")
    assert t == (
        "model's operating point (best balance of sensitivity and specificity, chosen on the "
        "validation images)"
    )
    assert "target sensitivity 0.9" in L.threshold_source(
        "model's operating point (sensitivity 0.9, chosen on val)"
    )
