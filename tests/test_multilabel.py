"""Several findings per image (issue 24): labels, splits, the task, metrics, records, end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medtl.data import load_dataset
from medtl.errors import DatasetError
from medtl.tasks import MultiLabelTask, task_for

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr14_multilabel"


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


def _manifest(tmp: Path, header: list[str], rows: list[list[str]]) -> Path:
    for r in rows:
        _png(tmp / r[0], ord(r[0][0]))
    path = tmp / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# -- reading labels ---------------------------------------------------------------------------
def test_manifest_findings_no_finding_uncertain_and_ignored_columns(tmp_path) -> None:
    header = ["path", "patient_id", "Sex", "Age", "view", "notes", "No Finding", "Effusion", "Mass"]
    rows = [
        ["a.png", "p1", "F", "61", "PA", "some text", "1", "", ""],  # No Finding: blanks -> 0
        ["b.png", "p2", "M", "40", "AP", "x", "", "1", "-1"],  # uncertain Mass
        ["c.png", "p3", "M", "33", "PA", "y", "", "0.0", "1.0"],
        ["d.png", "p4", "F", "50", "PA", "z", "", "", "0"],  # Effusion not labelled
    ]
    path = _manifest(tmp_path, header, rows)
    kw = dict(val_fraction=0, test_fraction=0, min_per_class=1, progress=False)
    ds = load_dataset(path, **kw)
    assert ds.task_kind == "multilabel" and ds.classes == ["Effusion", "Mass"]
    t = {Path(s.path).name: s.targets for s in ds.samples}
    assert t["a.png"] == (0.0, 0.0)
    assert math.isnan(t["b.png"][1]) and t["b.png"][0] == 1.0  # uncertain ignored by default
    assert t["c.png"] == (0.0, 1.0)
    assert math.isnan(t["d.png"][0]) and t["d.png"][1] == 0.0
    lab = ds.labelling
    assert lab["ignored_columns"] == ["Sex", "Age", "view", "notes"]
    assert lab["no_finding_rows"] == 1 and lab["no_finding_filled"] == 2
    assert lab["uncertain"] == "ignore" and lab["uncertain_counts"] == {"Mass": 1}
    for policy, value in (("positive", 1.0), ("negative", 0.0)):
        ds2 = load_dataset(path, uncertain=policy, **kw)
        b = next(s for s in ds2.samples if s.path.endswith("b.png"))
        assert b.targets[1] == value and ds2.labelling["uncertain"] == policy
    # explicit findings: only those, in that order
    ds3 = load_dataset(path, findings=["Mass"], **kw)
    assert ds3.classes == ["Mass"] and "Effusion" in ds3.labelling["ignored_columns"]
    # the data card lists findings, ignored columns and No Finding use
    from medtl.data import data_card

    card = data_card(ds)
    assert "columns ignored (not findings): Sex, Age, view, notes" in card
    assert "`No Finding` column" in card and "Effusion" in card


def test_bad_finding_value_names_line_column_and_value(tmp_path) -> None:
    header = ["path", "Effusion", "Mass"]
    rows = [["a.png", "1", "0"], ["b.png", "0", "0"], ["c.png", "yes", "1"], ["d.png", "1", "1"]]
    path = _manifest(tmp_path, header, rows)
    with pytest.raises(DatasetError, match=r"line 4, column 'Effusion': value 'yes'"):
        load_dataset(path, val_fraction=0, test_fraction=0, min_per_class=1, progress=False)
    with pytest.raises(DatasetError, match="no column for the finding 'Nodule'"):
        load_dataset(path, findings=["Nodule"], min_per_class=1, progress=False)


def test_npz_with_label_matrix_is_multilabel(tmp_path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (30, 8, 8), dtype=np.uint8)
    y = (rng.random((30, 3)) < 0.4).astype(np.int64)
    y[0] = 1
    y[1] = 0
    np.savez(tmp_path / "chest.npz", train_images=imgs, train_labels=y)
    kw = dict(val_fraction=0.2, test_fraction=0.2, min_per_class=1, progress=False)
    ds = load_dataset(tmp_path / "chest.npz", **kw)
    assert ds.task_kind == "multilabel" and ds.classes == ["finding_0", "finding_1", "finding_2"]
    named = load_dataset(tmp_path / "chest.npz", findings=["a", "b", "c"], **kw)
    assert named.classes == ["a", "b", "c"]
    assert sorted(s.targets for s in named.samples) == sorted(tuple(map(float, r)) for r in y)


# -- splits -----------------------------------------------------------------------------------
def test_iterative_split_keeps_patients_together_and_spreads_every_finding(tmp_path) -> None:
    from medtl.data.synth import make_multilabel_phantom

    root = make_multilabel_phantom(
        tmp_path / "ph", n_images=120, findings=4, prevalence=[0.5, 0.3, 0.2, 0.1], size=32
    )
    ds = load_dataset(root / "manifest.csv", min_per_class=1, progress=False)
    where: dict[str, set[str]] = {}
    for s in ds.samples:
        where.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in where.values())  # patient-grouped
    counts = ds.finding_counts()
    for f in ds.classes:  # each finding has positives in every split
        assert all(counts[sp][f]["pos"] > 0 for sp in ("train", "val", "test")), (f, counts)
    # deterministic
    again = load_dataset(root / "manifest.csv", min_per_class=1, progress=False)
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]


def test_iterative_carve_matches_finding_shares() -> None:
    from medtl.data import iterative_carve

    rng = np.random.default_rng(1)
    y = (rng.random((400, 5)) < [0.4, 0.2, 0.1, 0.05, 0.02]).astype(float)
    carved = iterative_carve(y, np.arange(400) // 2, 0.25, seed=0)
    share = y[carved].sum(0) / y.sum(0)
    assert np.all(np.abs(share - 0.25) < 0.1), share
    assert abs(carved.mean() - 0.25) < 0.05


# -- the task -----------------------------------------------------------------------------------
def _labels_with_blanks(seed: int = 0, n: int = 60, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    y[: k * 2, :] = np.tile([[1.0], [0.0]], (k, k))  # both classes in every column
    logits = rng.normal(size=(n, k)) + 1.5 * (y - 0.5)
    y[rng.random((n, k)) < 0.25] = np.nan
    y[: k * 2, :] = np.tile([[1.0], [0.0]], (k, k))
    return y, logits


def test_blank_labels_change_no_loss_and_batch_weight_counts_labelled_entries() -> None:
    y, logits = _labels_with_blanks()
    task = MultiLabelTask(["a", "b", "c"])
    pw = task.class_weights(y)
    loss = task.loss(pw, reduction="sum")
    z = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    total = loss(z, torch.from_numpy(y))
    total.backward()
    expected, grads = 0.0, torch.zeros_like(z)
    for k in range(3):
        lab = ~np.isnan(y[:, k])  # the same data with the blank rows removed for this finding
        zk = torch.tensor(logits[lab, k], dtype=torch.float32, requires_grad=True)
        part = torch.nn.functional.binary_cross_entropy_with_logits(
            zk, torch.from_numpy(y[lab, k]).float(), pos_weight=pw[k], reduction="sum"
        )
        part.backward()
        expected += float(part.detach())
        grads[torch.from_numpy(np.flatnonzero(lab)), k] = zk.grad
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(z.grad, grads, atol=1e-6)  # blank entries get no gradient
    assert task.batch_weight(torch.from_numpy(y)) == float(np.sum(~np.isnan(y)))
    # positive weights: negatives / positives among the labelled images
    lab0 = y[~np.isnan(y[:, 0]), 0]
    assert float(pw[0]) == pytest.approx(np.sum(lab0 == 0) / np.sum(lab0 == 1))


def test_one_findings_metrics_equal_the_binary_path_on_its_labelled_rows() -> None:
    from medtl.config import MetricsConfig

    y_val, l_val = _labels_with_blanks(1)
    y_test, l_test = _labels_with_blanks(2)
    task = MultiLabelTask(["a", "b", "c"])
    p_val, p_test = task.proba_from_logits(l_val), task.proba_from_logits(l_test)
    m = MetricsConfig()
    res = task.evaluate(y_val, p_val, y_test, p_test, metrics=m, seed=0)
    for k, name in enumerate(task.classes):
        lv, lt = ~np.isnan(y_val[:, k]), ~np.isnan(y_test[:, k])
        b = task_for(["no", name]).evaluate(
            y_val[lv, k].astype(int), np.c_[1 - p_val[lv, k], p_val[lv, k]],
            y_test[lt, k].astype(int), np.c_[1 - p_test[lt, k], p_test[lt, k]],
            metrics=m, seed=0,
        )  # fmt: skip
        mine = res["test"]["per_finding"][name]
        assert mine["auroc"] == pytest.approx(b["test"]["auroc"])
        assert mine["operating_point"] == pytest.approx(b["test"]["operating_point"])
        assert res["threshold"][name] == pytest.approx(b["threshold"])
        summ = res["test"]["multilabel"]["per_finding"][name]
        assert summ["auroc"] == pytest.approx(b["test"]["auroc"]["auroc"])
        assert summ["n_missing"] == int(np.sum(~lt))
    ml = res["test"]["multilabel"]
    scorable = [f for f in task.classes if f in ml["scorable"]]
    assert scorable and ml["macro"] == pytest.approx(
        np.mean([ml["per_finding"][f]["auroc"] for f in scorable])
    )
    assert ml["macro_low"] <= ml["macro"] <= ml["macro_high"]
    from medtl.tasks import metrics_auroc

    assert metrics_auroc(res, "test")[0] == pytest.approx(ml["macro"])


def test_unscorable_findings_are_listed_not_averaged() -> None:
    from medtl.metrics import multilabel_auroc_ci

    rng = np.random.default_rng(0)
    y = np.c_[rng.random(40) < 0.5, np.r_[np.ones(3), np.zeros(37)]].astype(float)
    p = np.clip(y * 0.6 + rng.random(y.shape) * 0.5, 0, 1)
    r = multilabel_auroc_ci(y, p, ["common", "rare"], n_boot=200)
    assert r["scorable"] == ["common"] and r["unscorable"] == {"rare": {"n_pos": 3, "n_neg": 37}}
    assert r["macro"] == pytest.approx(r["per_finding"]["common"]["auroc"])


def test_weighted_auc_and_holm() -> None:
    from sklearn.metrics import roc_auc_score

    from medtl.metrics import holm
    from medtl.metrics._multilabel import weighted_auc

    rng = np.random.default_rng(3)
    s, y = np.round(rng.random(40), 1), rng.random(40) < 0.4
    w = rng.integers(0, 3, size=(4, 40)).astype(float)
    got = weighted_auc(s, y, w)
    for i in range(4):
        reps = w[i].astype(int)
        assert got[i] == pytest.approx(roc_auc_score(np.repeat(y, reps), np.repeat(s, reps)))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_thresholds_and_calls_per_finding() -> None:
    task = MultiLabelTask(["a", "b"])
    p = np.array([[0.3, 0.9], [0.7, 0.2]])
    assert task.decide(p, {"a": 0.5, "b": 0.95}).tolist() == [[0, 0], [1, 0]]
    assert task.decide(p).tolist() == [[0, 1], [1, 0]]
    assert task.check_threshold([0.2, 0.8]) == {"a": 0.2, "b": 0.8}
    assert task.call_cells([1, 0]) == {"call_a": 1, "call_b": 0}
    assert task.label_cells([1.0, np.nan]) == [1, ""]


# -- end to end -------------------------------------------------------------------------------
STRATS = ["feature_extraction", "fine_tuning", "from_scratch"]


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    from medtl.config import config_from_dict
    from medtl.experiment import compare

    tmp = tmp_path_factory.mktemp("ml")
    cfg = config_from_dict(
        {
            "name": "ml",
            "data": {
                "path": "synthetic", "synthetic_per_class": 80, "synthetic_difficulty": 0.0,
                "min_per_class": 2, "synthetic_findings": 3,
            },
            "model": {"backbone": "tiny_test", "image_size": 48},
            "strategies": STRATS,
            "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
            "train": {"epochs": 2, "batch_size": 8},
            "output": {"out": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
        }
    )  # fmt: skip
    summary = compare(cfg, progress=False, write_html=False)
    return tmp, summary


def test_compare_on_the_multilabel_phantom(ml_run) -> None:
    from medtl.runs import load_run, read_predictions
    from medtl.strategies import load_model

    tmp, summary = ml_run
    run = tmp / "run"
    assert summary["dataset"]["task"] == "multilabel"
    assert all(summary["strategies"][n]["status"] == "done" for n in STRATS), summary
    findings = summary["dataset"]["classes"]
    assert len(findings) == 3
    for n in STRATS:
        metrics = json.loads((run / n / "metrics.json").read_text())
        ml = metrics["test"]["multilabel"]
        assert set(ml["per_finding"]) == set(findings)
        assert set(metrics["threshold"]) == set(findings)
        assert ml["bootstrap_unit"] == "patient"  # the phantom has two images per patient
        pred = read_predictions(run / n / "predictions.csv")
        assert pred.task.kind == "multilabel" and pred.label.shape == pred.proba.shape
        header = (run / n / "predictions.csv").read_text().splitlines()[0].split(",")
        assert header == [
            "uid",
            "split",
            *[f"y_{f}" for f in findings],
            *[f"p_{f}" for f in findings],
        ]
        model = load_model(run / n / "model")
        assert model.task_.kind == "multilabel"
        assert set(model.operating_point_["threshold"]) == set(findings)
        assert model.labelling_["uncertain"] == "ignore"
    fe = summary["strategies"]["feature_extraction"]
    assert math.isfinite(fe["test_auroc"]) and fe["test_auroc"] > 0.7  # conspicuous phantom
    assert summary["paired"] and all(
        "p_holm" in v for v in summary["paired"][0]["per_class"].values()
    )
    assert load_run(run).task.kind == "multilabel"
    card = (run / "data_card.md").read_text()
    assert "Findings (several per image)" in card


def test_evaluate_and_predict_multilabel_models(ml_run, tmp_path) -> None:
    from medtl.evaluation import evaluate, predict

    tmp, summary = ml_run
    run = tmp / "run"
    phantom = next((tmp / "cache").glob("phantom*_f3"))
    table = evaluate([str(run / "feature_extraction" / "model")], [str(phantom)],
                     out=str(tmp_path / "ev"), split="test", progress=False)  # fmt: skip
    row = table["rows"][0]
    assert row["auroc"] == pytest.approx(summary["strategies"]["feature_extraction"]["test_auroc"])
    assert set(row["per_finding"]) == set(summary["dataset"]["classes"])
    assert (tmp_path / "ev" / "evaluation_findings.csv").is_file()
    res = predict(run / "fine_tuning" / "model", [str(phantom / "images")],
                  out=tmp_path / "p.csv", cache_dir=tmp / "cache", progress=False)  # fmt: skip
    findings = summary["dataset"]["classes"]
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header == ["id", *[f"p_{f}" for f in findings], *[f"call_{f}" for f in findings]]
    assert res["n"] == 160 and isinstance(res["threshold"], dict)


# -- real data ----------------------------------------------------------------------------------
@pytest.mark.real_data
def test_nih_cxr14_multilabel_loads_and_splits() -> None:
    if not (NIH / "labels.csv").is_file():
        pytest.skip("NIH ChestX-ray14 subset not present")
    ds = load_dataset(NIH / "labels.csv", verify=False, progress=False)
    assert ds.task_kind == "multilabel" and len(ds.classes) == 14
    assert ds.labelling["ignored_columns"] == ["sex", "age", "view"]
    counts = ds.finding_counts()
    totals = {f: sum(counts[sp][f]["pos"] for sp in counts) for f in ds.classes}
    assert totals["Infiltration"] == 117 and totals["Pneumonia"] == 14  # the README's counts
    for f in ds.classes:  # every finding has positives in every split (stratified)
        assert all(counts[sp][f]["pos"] >= 1 for sp in ("train", "val", "test")), (f, counts)
    assert len(ds.split("test")) == 90 and len(ds.split("val")) == 90
