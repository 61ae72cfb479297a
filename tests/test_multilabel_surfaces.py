"""Several findings per image where the user meets them: the report (per-finding tables sorted by
prevalence, macro/micro summaries, unscored findings, small-multiple ROC curves, the paired
comparison per finding, the checklist) and the app (Data, Compare, Operating point, Single image),
on one tiny multi-label phantom run (3 findings, one too rare to score, blank labels)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps"))

import _app_findings as F  # noqa: E402
import _app_logic as L  # noqa: E402

from tests._helpers import app_texts  # noqa: E402

FINDINGS = ["right_upper_opacity", "left_upper_opacity", "right_lower_opacity"]
RARE, BLANKED = "right_lower_opacity", "left_upper_opacity"


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    """(work folder, run folder, phantom folder) of a two-strategy multi-label run: the third
    finding at 8% prevalence (too rare to score on 24 test images), every 7th label of the second
    finding blank."""
    from medtl.config import config_from_dict
    from medtl.data import make_phantom
    from medtl.experiment import compare

    tmp = tmp_path_factory.mktemp("mlsurf")
    ph = make_phantom(tmp / "ph", n_per_class=80, size=48, difficulty=0.0, findings=3,
                      prevalence=[0.35, 0.3, 0.08])  # fmt: skip
    man = ph / "manifest.csv"
    rows = list(csv.reader(man.open()))
    col = rows[0].index(BLANKED)
    for i, r in enumerate(rows[1:]):
        if i % 7 == 0:
            r[col] = ""
    with man.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    work = tmp / "work"
    cfg = config_from_dict(
        {
            "name": "ml", "data": {"path": str(man), "min_per_class": 2},
            "model": {"backbone": "tiny_test", "image_size": 32},
            "strategies": ["feature_extraction", "fine_tuning"],
            "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
            "train": {"epochs": 2, "batch_size": 16},
            "output": {"out": str(work / "runs" / "ml"), "cache_dir": str(work / "cache")},
        }
    )  # fmt: skip
    summary = compare(cfg, progress=False, write_html=True)
    assert summary["dataset"]["task"] == "multilabel"
    return work, work / "runs" / "ml", ph


def _metrics(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name / "metrics.json").read_text())


# -- report -----------------------------------------------------------------------------------------
def test_findings_numbers_are_the_metrics_files_sorted_by_prevalence(ml) -> None:
    from medtl.report import findings_numbers, load_run

    _, run_dir, _ = ml
    run = load_run(run_dir)
    block = findings_numbers(run)
    assert block is not None and set(block["order"]) == set(FINDINGS)
    test_counts = run.summary["dataset"]["findings"]["per_split"]["test"]
    prev = [
        test_counts[f]["pos"] / (test_counts[f]["pos"] + test_counts[f]["neg"])
        for f in block["order"]
    ]
    assert prev == sorted(prev, reverse=True)  # most prevalent first
    for name, s in block["strategies"].items():
        m = _metrics(run_dir, name)["test"]
        ml_ = m["multilabel"]
        assert s["macro"] == pytest.approx(run.summary["strategies"][name]["test_auroc"])
        assert (s["micro"], s["micro_low"], s["micro_high"]) == pytest.approx(
            (ml_["micro"], ml_["micro_low"], ml_["micro_high"])
        )
        assert math.isfinite(s["macro_low"]) and s["macro_low"] <= s["macro"] <= s["macro_high"]
        assert s["n_scorable"] == 2 and s["n_findings"] == 3
        assert [r["finding"] for r in s["rows"]] == block["order"]
        for r in s["rows"]:
            rep = m["per_finding"][r["finding"]]
            op = rep["operating_point"]
            assert r["auroc"] == pytest.approx(rep["auroc"]["auroc"])
            assert (r["auroc_low"], r["auroc_high"]) == pytest.approx(
                (rep["auroc"]["low"], rep["auroc"]["high"])
            )
            assert r["threshold"] == pytest.approx(
                _metrics(run_dir, name)["threshold"][r["finding"]]
            )
            for k in ("sensitivity", "specificity", "ppv", "npv"):
                want = [math.nan if op[x] is None else op[x] for x in (k, f"{k}_low")]
                assert [r[k], r[f"{k}_low"]] == pytest.approx(want, nan_ok=True)
            assert r["auprc"] == pytest.approx(rep["auprc"])
            assert r["brier"] == pytest.approx(rep["calibration"]["brier"])
            assert (r["n_pos"], r["n_neg"]) == (
                test_counts[r["finding"]]["pos"],
                test_counts[r["finding"]]["neg"],
            )
            assert r["scorable"] == (r["finding"] != RARE)
        blanks = {r["finding"]: r["n_missing"] for r in s["rows"]}
        assert (
            blanks[BLANKED] == test_counts[BLANKED]["missing"] > 0
        )  # blank: not labelled, counted
    assert set(block["unscorable"]) == {RARE}
    assert block["unscorable"][RARE] == {
        "n_pos": test_counts[RARE]["pos"],
        "n_neg": test_counts[RARE]["neg"],
    }
    # a single-label run has no per-finding block
    binary = dataclasses.replace(run, summary={"dataset": {"task": "binary"}}, classes=["a", "b"])
    assert findings_numbers(binary) is None


def test_report_shows_findings_macro_micro_curves_and_paired_per_finding(ml) -> None:
    from medtl.report import write_report
    from medtl.tasks import MultiLabelTask

    _, run_dir, _ = ml
    html = write_report(run_dir).read_text()
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["task"] == "multilabel" and rep["findings"]["order"]
    for label in ("Feature extraction", "Fine-tuning"):
        assert f"Per finding: {label} (test set, most prevalent first)" in html
    for f in FINDINGS:
        assert html.count(f) >= 4  # tables of both strategies, the paired table, the data counts
    assert "Macro AUROC (95% bootstrap CI)" in html and "Micro AUROC (95% bootstrap CI)" in html
    assert "at least 5 positives and 5 negatives" in html  # the scoring rule, said
    c = rep["findings"]["unscorable"][RARE]
    assert f"{RARE} ({c['n_pos']} positive / {c['n_neg']} negative test images)" in html
    assert f"{RARE} (not scored)" in html
    assert "Holm-adjusted p" in html and "Per finding (DeLong on each finding" in html
    assert "Validation macro AUROC" in html and "Per-class AUROC" not in html
    assert "Labelled images per finding and split (positive / negative / blank)" in html
    assert "the findings the scoring rule keeps" in html  # what the learning curves average
    # the headline says the micro AUROC and the rule, beside the macro
    assert any("micro AUROC" in line for line in rep["headline"])
    assert any(line.startswith("Scored findings:") for line in rep["headline"])
    assert "plots/roc.png" in rep["plots"]
    assert (run_dir / "plots" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROC curves per finding" in html
    # the checklist describes the multi-label metrics through the task
    items = {c["item"]: c for c in rep["checklist"]}
    assert (
        items["Performance metrics with confidence intervals"]["content"]
        == MultiLabelTask.metrics_text
    )
    assert MultiLabelTask.paired_tests in items["Statistical comparison of models"]["content"]
    assert items["Calibration"]["content"].startswith("per finding")
    assert "per finding" in items["Operating point selection"]["content"]
    assert items["Clinical utility (decision curve)"]["content"] == ""  # not drawn per finding
    assert "macro AUROC" in items["Model selection on validation data"]["content"]
    assert "positive/negative" in items["Number of images per class and split"]["content"]
    card = {f["name"]: f["value"] for sec in rep["model_card"] for f in sec["fields"]}
    assert "Test macro AUROC" in card and "Test micro AUROC" in card
    assert card["Findings scored"].startswith("2 of 3")
    assert "Sensitivity" not in card


def test_small_multiple_roc_panels(ml) -> None:
    from medtl.report import findings_numbers, findings_roc_figure, load_run, plot_roc_findings

    _, run_dir, _ = ml
    run = load_run(run_dir)
    block = findings_numbers(run)
    fig = findings_roc_figure(run, block)
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 3
    assert [ax.get_title().split("\n")[0] for ax in panels] == block["order"]
    for ax, f in zip(panels, block["order"]):
        aurocs = sorted(t.get_text() for t in ax.get_legend().get_texts())
        expected = sorted(
            f"{r['auroc']:.3f}"
            for s in block["strategies"].values()
            for r in s["rows"]
            if r["finding"] == f
        )
        assert aurocs == expected  # one line per strategy, its AUROC in the legend
    assert "not scored" in panels[block["order"].index(RARE)].get_title()
    # 14 findings: 4 per row, 4 rows, the two spare panels hidden
    rng = np.random.default_rng(0)
    y = (rng.random(40) < 0.3).astype(int)
    curves = {f"f{k}": {"A": (y, y + rng.random(40))} for k in range(14)}
    fig = plot_roc_findings(curves)
    assert len(fig.axes) == 16 and sum(ax.axison for ax in fig.axes) == 14


# -- app logic --------------------------------------------------------------------------------------
def test_finding_view_is_the_binary_view_of_its_labelled_rows(ml) -> None:
    from medtl.report import finding_run, load_run

    _, run_dir, _ = ml
    run = load_run(run_dir)
    assert not L.curves(run) and not L.thresholds_for(run, L.OP_SAVED)  # never the binary path
    fr = finding_run(run, BLANKED)
    assert fr.classes == [f"no {BLANKED}", BLANKED] and fr.task.kind == "binary"
    full = run.strategies["fine_tuning"].predictions
    view = fr.strategies["fine_tuning"].predictions
    k = full.class_names.index(BLANKED)
    assert len(view.uid) == int(np.sum(~np.isnan(full.label[:, k]))) < len(full.uid)
    assert set(L.curves(fr)) == {"Feature extraction", "Fine-tuning"}
    saved = L.thresholds_for(fr, L.OP_SAVED)
    ops = L.operating_points(fr, saved, split="test")
    for name in ("feature_extraction", "fine_tuning"):
        m = _metrics(run_dir, name)
        assert saved[name][0] == pytest.approx(m["threshold"][BLANKED])
        op = m["test"]["per_finding"][BLANKED]["operating_point"]
        # the app's numbers at the saved threshold are the run's own, on the labelled rows
        assert ops[name]["sensitivity"] == pytest.approx(op["sensitivity"])
        assert ops[name]["specificity"] == pytest.approx(op["specificity"])
        assert ops[name]["confusion"] == op["confusion"]
    with pytest.raises(KeyError, match="nodule"):
        finding_run(run, "nodule")


def test_data_rows_and_single_image_calls(ml) -> None:
    from medtl.strategies import load_model

    _, run_dir, ph = ml
    view = L.describe_dataset(ph)
    s = view.summary
    assert F.summary_per_finding(s)
    rows = F.finding_count_rows(s)
    assert {r["Finding"] for r in rows} == set(FINDINGS)
    assert list(rows[0]) == ["Finding", "Training (pos / neg / blank)", "Validation (pos / neg / blank)",
                             "Test (pos / neg / blank)", "Prevalence (labelled images)"]  # fmt: skip
    blanks = sum(int(r["Training (pos / neg / blank)"].split(" / ")[2]) for r in rows)
    assert blanks > 0  # the blanked labels are counted as blank
    assert rows[-1]["Finding"] == RARE  # the rarest last
    assert "3 findings" in F.data_sentence(s) and "not labelled" in F.data_sentence(s)
    assert view.examples and all(isinstance(c, str) for c, _ in view.examples)
    est = load_model(run_dir / "fine_tuning" / "model")
    img = next((ph / "images").glob("*.dcm"))
    res = F.predict_findings(est, img, BLANKED)
    assert res.proba.shape == (3,) and res.finding == BLANKED
    t = np.array(
        [
            json.loads((run_dir / "fine_tuning" / "metrics.json").read_text())["threshold"][f]
            for f in est.classes_
        ]
    )
    assert res.thresholds == pytest.approx(t)
    assert list(res.calls) == [int(p >= v) for p, v in zip(res.proba, t)]
    assert res.heat.shape == (32, 32) and 0 <= res.heat.min() <= res.heat.max() <= 1
    rows = F.single_rows(res)
    assert [r["Finding"] for r in rows] == [
        est.classes_[k] for k in np.argsort(-res.proba, kind="stable")
    ]
    assert {r["Call"] for r in rows} <= {"present", "absent"}


# -- paired comparison ----------------------------------------------------------------------------
def test_paired_macro_bootstrap_is_over_patients_from_splits_json(ml) -> None:
    """summary.json's paired macro difference resamples patients (their hashed ids read from
    splits.json), as metrics.json's intervals do; per-finding DeLong is unchanged."""
    from medtl.metrics import compare_paired_multilabel
    from medtl.runs import read_predictions

    _, run_dir, _ = ml
    summary = json.loads((run_dir / "summary.json").read_text())
    (pair,) = summary["paired"]
    assert pair["bootstrap"]["unit"] == "patient"
    splits = json.loads((run_dir / "splits.json").read_text())
    pid = {r["uid"]: r["patient_id"] for r in splits["samples"]}
    pa = read_predictions(run_dir / pair["a"] / "predictions.csv")
    pb = read_predictions(run_dir / pair["b"] / "predictions.csv")
    m = pa.split == "test"
    groups = [pid[u] for u, k in zip(pa.uid, m) if k]
    assert len(set(groups)) < len(groups)  # two images per patient: patients differ from images
    seed = pair["bootstrap"]["seed"]
    args = (pa.label[m], pa.proba[m], pb.proba[pb.split == "test"], FINDINGS)
    by_patient = compare_paired_multilabel(*args, groups=groups, seed=seed)
    by_image = compare_paired_multilabel(*args, seed=seed)
    for k in ("low", "high", "se"):
        assert pair["bootstrap"][k] == pytest.approx(by_patient["bootstrap"][k])
    assert pair["bootstrap"]["se"] != pytest.approx(by_image["bootstrap"]["se"])
    assert pair["per_class"][FINDINGS[0]]["p_value"] == pytest.approx(
        by_image["per_class"][FINDINGS[0]]["p_value"]
    )
    # and the report says what was resampled
    from medtl.report import write_report

    assert "Macro AUROC (paired bootstrap over patients)" in write_report(run_dir).read_text()


# -- the app, headless ------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_app_pages_on_a_multilabel_run(ml, monkeypatch) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    work, run_dir, ph = ml
    monkeypatch.setenv("MEDTL_APP_WORK", str(work))
    at = AppTest.from_file(str(ROOT / "apps" / "medtl_app.py"), default_timeout=120)
    at.session_state["data_path"] = str(ph)
    at.run()
    assert not at.exception, at.exception
    text = app_texts(at)  # Data
    assert "several findings per image" in text and "pos / neg / blank" in text
    assert all(f in at.table[0].value.to_string() for f in FINDINGS)
    assert not [s for s in at.selectbox if str(s.key).startswith("positive_class::")]

    def goto(section: str):
        return at.sidebar.radio(key="section").set_value(section).run()

    at = goto("Compare")
    assert not at.exception, at.exception
    assert at.selectbox(key="run_pick").value == str(run_dir)
    n = sum(
        json.loads((run_dir / "summary.json").read_text())["dataset"][f"n_{sp}"]
        for sp in ("train", "val", "test")
    )
    assert f"({n} images)" in at.selectbox(key="run_pick").format_func(
        str(run_dir)
    )  # not positives
    text = app_texts(at)
    assert "Macro AUROC (95% CI)" in text and "Micro AUROC (95% CI)" in text
    assert "Not scored" in text and RARE in text and "Per finding (DeLong" in text
    tables = [t.value for t in at.table]
    per_finding = [t for t in tables if "AUROC (95% DeLong CI)" in t.columns]
    assert len(per_finding) == 2 and all(
        list(t["Finding"])[-1].startswith(RARE) for t in per_finding
    )
    assert len(at.tabs) == 2

    at = goto("Operating point")
    assert not at.exception, at.exception
    pick = at.selectbox(key="op_finding")
    # labelled with their test counts, most prevalent first
    assert pick.options[-1].startswith(f"{RARE} (") and "negative test images" in pick.options[-1]
    assert {o.split(" (")[0] for o in pick.options} == set(FINDINGS)
    pick.set_value(BLANKED).run()
    assert not at.exception, at.exception
    counts = json.loads((run_dir / "summary.json").read_text())["dataset"]["findings"]["per_split"][
        "test"
    ][BLANKED]
    text = app_texts(at)
    assert f"Finding (positive class): **{BLANKED}**" in text
    assert f"{counts['pos'] + counts['neg']} held-out test images" in text  # its labelled rows only
    first = at.table[0].value.to_string()
    at.radio(key="op_mode").set_value("threshold").run()
    at.slider(key="thr").set_value(0.97).run()
    assert not at.exception and at.table[0].value.to_string() != first
    at.selectbox(key="op_finding").set_value(FINDINGS[0]).run()
    assert not at.exception and f"**{FINDINGS[0]}**" in app_texts(at)

    at = goto("Subgroups")
    assert not at.exception, at.exception
    assert "has no subgroups" in at.info[0].value  # broken down per finding when it has some
    assert at.selectbox(key="sg_finding").options  # the finding picker comes first

    at = goto("Single image")
    img = sorted((ph / "images").glob("*.dcm"))[0]
    at.get("file_uploader")[0].set_value(("scan.dcm", img.read_bytes(), "application/dicom"))
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="single_finding").options[-1] == RARE
    assert [m.label for m in at.metric] == [
        "Feature extraction: findings present",
        "Fine-tuning: findings present",
    ]
    rows = [t.value for t in at.table if "Call" in t.value.columns]
    assert len(rows) == 2 and all(sorted(t["Finding"]) == sorted(FINDINGS) for t in rows)
    assert all(set(t["Call"]) <= {"present", "absent"} for t in rows)
    at.selectbox(key="single_finding").set_value(RARE).run()
    assert not at.exception, at.exception
