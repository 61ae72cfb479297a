"""A run folder and its model folders written before the task kind had an owner (medtl at commit
780bd7e, tests/fixtures/run_before_task_kinds: tiny_test backbone, 12 phantom images per class) still
load, report and evaluate."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from medtl.data import make_phantom
from medtl.evaluation import evaluate
from medtl.report import load_run, write_report
from medtl.strategies import load_model
from medtl.tasks import BinaryTask

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_task_kinds"


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_old_run_folder_loads_with_its_task_and_reports(tmp_path):
    run = _copy(tmp_path)
    data = load_run(run)
    assert isinstance(data.task, BinaryTask)  # no "task" recorded: two classes read as binary
    assert data.task.positive_class == data.classes[1]
    assert set(data.strategies) == {"feature_extraction", "fine_tuning"}
    assert all(st.finished for st in data.strategies.values())
    html = write_report(run).read_text()
    assert "Feature extraction" in html and "Fine-tuning" in html


def test_old_model_folder_loads_predicts_and_evaluates(tmp_path):
    run = _copy(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # written before model folders were sealed: it says so
        est = load_model(run / "fine_tuning" / "model")
    assert est.task_.kind == "binary" and est.positive_class_ == est.classes_[1]
    t, source = est.threshold_for()
    assert 0.0 <= t <= 1.0 and "operating point" in source
    px = np.zeros((3, 1, 32, 32), np.uint8)
    p = est.predict_proba(px)
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1)
    data = make_phantom(tmp_path / "site", n_per_class=6, size=64, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate([str(run / "fine_tuning" / "model")], [str(data)], out=str(tmp_path / "ev"),
                       progress=False)  # fmt: skip
    row = res["rows"][0]
    assert row["n"] == 12 and 0.0 <= row["auroc"] <= 1.0 and row["threshold"] == t
