"""The Streamlit app, driven headless with streamlit.testing.v1.AppTest (no browser, no network)."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from tests._helpers import app_texts as _texts

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "apps" / "medtl_app.py")
PHI = ("Fake^Patient", "PHI-123456", "19700101")


def _dicom_bytes(tmp: Path, bright: bool = True) -> bytes:
    from medtl.io import write_test_dicom

    arr = np.full((64, 64), 300, dtype=np.uint16)
    if bright:
        arr[20:40, 20:40] = 3000
    path = tmp / "phi.dcm"
    write_test_dicom(path, arr, PatientName=PHI[0], PatientID=PHI[1], PatientBirthDate=PHI[2])
    return path.read_bytes()


@pytest.fixture()
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTL_APP_WORK", str(tmp_path / "work"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["demo_n_per_class"] = 16
    at.session_state["demo_size"] = 64
    at.session_state["batch_size"] = 4  # 22 training images -> 6 steps per epoch
    return at.run()


def _goto(at: AppTest, section: str) -> AppTest:
    return at.sidebar.radio(key="section").set_value(section).run()


def test_main_flow(app, tmp_path, monkeypatch):
    at = app
    assert not at.exception
    assert at.title[0].value == "medtl — transfer learning for medical images"

    # Data: the synthetic demo set and its data card
    at.button(key="use_demo").click().run()
    assert not at.exception
    text = _texts(at)
    assert "32 images" in text and "2 classes" in text
    assert len(at.get("imgs")) >= 1 or "Example images" in text
    assert str(tmp_path / "work") in at.session_state["data_path"]
    finding = at.selectbox(key=f"positive_class::{at.session_state['data_path']}")
    assert finding.value == "opacity" and finding.options == ["normal", "opacity"]
    finding.set_value("normal").run()  # the user names the finding; the run must follow it

    # Advice: a fake advisor (the real one is written elsewhere)
    fake = types.ModuleType("medtl.advisor")

    _advice = types.SimpleNamespace(
        strategy="feature_extraction",
        confidence="moderate",
        expected_auroc={"feature_extraction": [0.7, 0.8], "fine_tuning": [0.72, 0.85]},
        estimated_minutes={"feature_extraction": 0.5, "fine_tuning": 4.0},
        rationale=["Few images per class.", "Small domain gap."],
    )

    calls = {}

    def advise(path, **kw):
        calls.update(kw, path=path)
        return _advice

    fake.advise = advise
    monkeypatch.setitem(sys.modules, "medtl.advisor", fake)
    at = _goto(at, "Advice")
    at.button(key="get_advice").click().run()
    assert not at.exception
    assert "Feature extraction" in at.success[0].value
    text = _texts(at)
    assert "Few images per class." in text and "0.70–0.80" in text and "~4 min" in text
    assert "about 0.75" in text  # plain language first: the expected AUROC as one number
    assert str(tmp_path / "work") in str(calls["cache_dir"])

    # Compare: quick run on the tiny backbone
    at = _goto(at, "Compare")
    at.selectbox(key="backbone").set_value("tiny_test")
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="image_size").set_value(48)
    at.button(key="run_compare").click().run(timeout=180)
    assert not at.exception, at.exception
    run_dir = Path(at.session_state["run_dir"])
    assert at.selectbox(key="run_pick").value == str(run_dir)  # the selector names the run shown
    assert run_dir.is_relative_to(tmp_path / "work")
    header = (run_dir / "fine_tuning" / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith("p_opacity,p_normal")  # "normal" was named the finding: index 1
    text = _texts(at)
    assert "Feature extraction" in text and "Fine-tuning" in text and "95% CI" in text
    for term in ("AUROC:", "95% CI (confidence interval)", "Calibration:"):
        assert term in text  # each metric explained where it appears
    assert "fine_tuning" not in text.replace("partial_fine_tuning", "")

    # a second, one-epoch comparison: the selector follows it (it used to name the previous run)
    at.number_input(key="epochs").set_value(1)
    at.button(key="run_compare").click().run(timeout=180)
    assert not at.exception, at.exception
    second = at.session_state["run_dir"]
    assert second != str(run_dir) and at.selectbox(key="run_pick").value == second
    assert "complete" in at.selectbox(key="run_pick").format_func(second)

    # Operating point: the model's own (validation-chosen) threshold first, then the user's own
    at = _goto(at, "Operating point")
    assert not at.exception
    text = _texts(at)
    assert "held-out test images" in text and "chosen on the validation images only" in text
    at.radio(key="op_mode").set_value("threshold").run()
    assert "validation images" in _texts(at)  # a chosen threshold is looked at on validation
    low = at.table[0].value.to_string()
    at.slider(key="thr").set_value(0.95).run()
    high = at.table[0].value.to_string()
    assert low != high and "Sensitivity" in high
    at.radio(key="op_split").set_value("test").run()
    assert "TEST images" in at.warning[0].value  # said clearly when the test set is shown
    at.number_input(key="prev").set_value(50.0).run()
    assert at.table[0].value.to_string() != high
    at.radio(key="op_mode").set_value("target").run()
    assert not at.exception and "Sensitivity" in at.table[0].value.to_string()

    # Single image: a DICOM with fake PHI gets both predictions, and no PHI is shown
    at = _goto(at, "Single image")
    at.get("file_uploader")[0].set_value(("scan.dcm", _dicom_bytes(tmp_path), "application/dicom"))
    at.run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert len(labels) == 2 and any("Feature extraction" in x for x in labels)
    assert all(m.value in ("normal", "opacity") for m in at.metric)  # the call, not only a number
    text = _texts(at)
    assert "Called" in text and "validation images" in text and "Models from the run" in text
    assert "Rows (pixels)" in text  # metadata as a readable table
    for phi in PHI:
        assert phi not in text
    for f in (tmp_path / "work").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv", ".md", ".yaml", ".html"):
            body = f.read_text(errors="replace")
            assert not any(phi in body for phi in PHI), f

    # a non-image upload gives a clear message and the app keeps running
    at.get("file_uploader")[0].set_value(("notes.txt", b"not an image at all", "text/plain"))
    at.run()
    assert not at.exception
    assert at.error and "cannot be read as an image" in at.error[0].value


def test_advisor_missing_and_bad_zip(app, tmp_path, monkeypatch):
    at = app
    monkeypatch.setitem(sys.modules, "medtl.advisor", None)  # import fails
    at.button(key="use_demo").click().run()
    at = _goto(at, "Advice")
    at.button(key="get_advice").click().run()
    assert not at.exception
    assert "advisor is not available" in at.warning[0].value

    at = _goto(at, "Data")
    at.radio(key="data_source").set_value("Upload a zip").run()
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.png", b"x")
        zf.writestr("a/ok.png", b"x")
    at.get("file_uploader")[0].set_value(("bad.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception
    assert "outside the zip" in at.error[0].value
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "work" / "evil.png").exists()

    at.get("file_uploader")[0].set_value(("x.zip", b"PK not really", "application/zip")).run()
    assert not at.exception and "not a zip file" in at.error[0].value


def test_incomplete_run_is_shown_as_incomplete(app, tmp_path):
    """A run whose process ended mid-way (status still 'running', complete: false) is never shown
    as a finished result: the selector, the sidebar and every page say it is incomplete."""
    import json

    run = tmp_path / "work" / "runs" / "run_cut"
    run.mkdir(parents=True)
    summary = {
        "name": "run_cut",
        "created": "2026-12-01T10:00:00",
        "complete": False,
        "backbone": "tiny_test",
        "dataset": {"classes": ["normal", "opacity"], "counts": {"test": {"normal": 2}}},
        "strategies": {
            "feature_extraction": {"status": "done", "test_auroc": 0.7, "val_auroc": 0.7},
            "fine_tuning": {"status": "running"},
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))
    at = _goto(app, "Compare")
    assert not at.exception, at.exception
    assert at.selectbox(key="run_pick").value == str(run)
    label = at.selectbox(key="run_pick").format_func(str(run))
    assert "INCOMPLETE" in label and "Fine-tuning not finished" in label
    assert "not a finished comparison" in at.error[0].value
    assert "INCOMPLETE: not finished" in at.table[0].value.to_string()
