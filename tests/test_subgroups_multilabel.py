"""Performance by subgroup on several findings per image (issue 26): per finding on its labelled
images at its own threshold, a macro AUROC per group, and the run's and ``evaluate --by``'s
surfaces on a multi-label phantom with a sex column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medtl.metrics import subgroup_report, subgroup_report_multilabel
from medtl.subgroup_results import subgroup_block
from medtl.tasks import task_for

NAMES = ["effusion", "nodule"]


def _scores(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two findings; the first is much harder to see in women (a planted gap), the second is not;
    a fifth of each finding's labels blank."""
    rng = np.random.default_rng(seed)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    y = (rng.random((n, 2)) < 0.35).astype(np.float64)
    sep = np.where(sex == "F", 0.3, 2.5)
    p = np.empty_like(y)
    p[:, 0] = 1 / (1 + np.exp(-(y[:, 0] * sep + rng.normal(size=n) - 0.5)))
    p[:, 1] = 1 / (1 + np.exp(-(y[:, 1] * 2.0 + rng.normal(size=n) - 0.5)))
    y[rng.random(y.shape) < 0.2] = np.nan
    return y, p, sex


@pytest.mark.parametrize("seed", [0, 1])
def test_per_finding_on_labelled_images_at_its_threshold_with_macro_per_group(seed: int) -> None:
    y, p, sex = _scores(seed)
    t = [0.4, 0.6]
    rep = subgroup_report_multilabel(y, p, {"sex": sex}, NAMES, thresholds=t)
    # each finding's report equals the binary report of its labelled images only, at its threshold
    for k, name in enumerate(NAMES):
        lab = ~np.isnan(y[:, k])
        alone = subgroup_report(y[lab, k], p[lab, k], {"sex": sex[lab]}, threshold=t[k])
        got = rep["per_finding"][name]
        assert got["threshold"] == t[k]
        for a, b in zip(got["attributes"]["sex"], alone["attributes"]["sex"]):
            assert a["n"] == b["n"] and a["auroc"] == pytest.approx(b["auroc"])
            assert a["sensitivity"] == pytest.approx(b["sensitivity"])
    # the planted gap is found in the first finding, and no gap is flagged in the second
    f0 = next(r for r in rep["per_finding"]["effusion"]["attributes"]["sex"] if r["group"] == "F")
    assert f0["auroc_gap"] < -0.15 and f0["auroc_gap_p_holm"] < 0.01
    f1 = next(r for r in rep["per_finding"]["nodule"]["attributes"]["sex"] if r["group"] == "F")
    assert f1["auroc_gap_p_holm"] > 0.05
    # the macro per group is the mean over the findings judged overall
    assert rep["macro_findings"] == NAMES
    for row in rep["macro"]["sex"]:
        aucs = [
            next(
                r for r in rep["per_finding"][f]["attributes"]["sex"] if r["group"] == row["group"]
            )["auroc"]
            for f in NAMES
        ]
        assert row["auroc"] == pytest.approx(np.mean(aucs)) and row["n_findings"] == 2
    women = next(r for r in rep["macro"]["sex"] if r["group"] == "F")
    men = next(r for r in rep["macro"]["sex"] if r["group"] == "M")
    assert women["auroc"] < men["auroc"]


def test_subgroup_block_asks_the_task() -> None:
    y, p, sex = _scores(0)
    attrs = [{"sex": s} for s in sex]
    task = task_for(NAMES, "multilabel")
    block = subgroup_block(
        attrs, y, p, threshold={"effusion": 0.3, "nodule": 0.7}, class_names=NAMES, task=task
    )
    assert block["kind"] == "multilabel"
    assert block["thresholds"] == {"effusion": 0.3, "nodule": 0.7}
    assert block["per_finding"]["nodule"]["threshold"] == 0.7
    assert json.loads(json.dumps(block, allow_nan=False))  # JSON-safe (NaN -> null)
    # single-label callers without a task keep their forms
    yb = np.nan_to_num(y[:, 0]).astype(np.int64)
    pb = np.c_[1 - p[:, 0], p[:, 0]]
    assert subgroup_block(attrs, yb, pb, threshold=0.5, class_names=["no", "yes"])["kind"] == (
        "binary"
    )
    assert subgroup_block(attrs, yb, pb, threshold=None, class_names=["no", "yes"])["kind"] == (
        "one-vs-rest"
    )
    with pytest.raises(Exception, match="one threshold per finding"):
        subgroup_report_multilabel(y, p, {"sex": sex}, NAMES, thresholds=[0.5])


# -- surfaces: a multi-label run with a sex column, evaluate --by -----------------------------------
@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    from medtl.config import config_from_dict
    from medtl.data.synth import make_phantom
    from medtl.experiment import compare

    tmp = tmp_path_factory.mktemp("sgml")
    root = make_phantom(tmp / "ph", n_per_class=50, size=64, findings=3, seed=2, difficulty=0.0,
                        prevalence=[0.4, 0.4, 0.3])  # fmt: skip
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = next(k for k in rows[0] if k not in ("path", "patient_id"))
    for i, r in enumerate(rows):
        r["sex"] = "F" if int(r["patient_id"][1:]) % 2 else "M"
        if i % 7 == 0:
            r[first] = ""  # not labelled
    manifest = root / "labels_sex.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = config_from_dict({
        "name": "sgml",
        "data": {"path": str(manifest), "min_per_class": 2, "test_fraction": 0.3,
                 "subgroups": "sex"},
        "model": {"backbone": "tiny_test", "image_size": 32},
        "strategies": ["feature_extraction", "fine_tuning"],
        "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"out": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
    })  # fmt: skip
    return tmp, manifest, first, compare(cfg, progress=False, write_html=False)


def test_run_writes_subgroups_per_finding_and_macro(ml_run) -> None:
    tmp, _, first, summary = ml_run
    out = tmp / "run"
    assert summary["dataset"]["task"] == "multilabel"
    assert all(summary["strategies"][n]["status"] == "done" for n in summary["strategies"])
    metrics = json.loads((out / "feature_extraction" / "metrics.json").read_text())
    block = metrics["subgroups"]
    assert block["kind"] == "multilabel"
    findings = summary["dataset"]["classes"]
    assert set(block["per_finding"]) == set(findings)
    for f in findings:  # each finding at the threshold chosen for it on validation
        assert block["per_finding"][f]["threshold"] == pytest.approx(metrics["threshold"][f])
    test_n = metrics["test"]["n"]
    rows = block["per_finding"][first]["attributes"]["sex"]
    labelled = test_n - metrics["test"]["multilabel"]["per_finding"][first]["n_missing"]
    assert sum(r["n"] for r in rows) == labelled < test_n  # blank labels left out
    assert {r["group"] for r in block["macro"]["sex"]} == {"F", "M"}
    sg = json.loads((out / "summary.json").read_text())["subgroups"]
    fe = sg["strategies"]["feature_extraction"]
    assert fe["kind"] == "multilabel" and set(fe["per_finding"]) == set(findings)
    assert fe["macro"]["sex"][0]["group"] in ("F", "M")
    assert sg["paired"] and set(sg["paired"][0]["per_finding"]) <= set(findings)


def test_evaluate_by_on_a_multilabel_model(ml_run, tmp_path: Path) -> None:
    from medtl.evaluation import evaluate

    tmp, manifest, _, summary = ml_run
    res = evaluate([str(tmp / "run" / "feature_extraction" / "model")], [str(manifest)],
                   out=str(tmp_path / "ev"), by="sex", progress=False)  # fmt: skip
    rows = res["rows"]
    assert rows[0]["subgroup"] == "all"
    sub = {r["subgroup"]: r for r in rows[1:]}
    assert set(sub) == {"sex=F", "sex=M"}
    findings = summary["dataset"]["classes"]
    for r in sub.values():
        assert set(r["per_finding"]) == set(findings)
        assert isinstance(r["threshold"], dict)
    assert sum(r["n"] for r in sub.values()) <= rows[0]["n"]
    table = (tmp_path / "ev" / "evaluation_findings.csv").read_text().splitlines()
    assert table[0].split(",")[3] == "subgroup"
    assert any(",sex=F," in line for line in table[1:])
    assert "[sex=F]" in res["markdown"]


def test_report_shows_the_macro_per_subgroup(ml_run) -> None:
    from medtl.report import write_report

    tmp, _, _, _ = ml_run
    html = write_report(tmp / "run").read_text()
    assert "Performance by subgroup" in html


def test_report_subgroups_macro_over_findings_and_per_finding_table(ml_run) -> None:
    from medtl.report import write_report
    from medtl.report._subgroups import finding_group_rows, subgroup_numbers

    tmp, _, first, summary = ml_run
    html = write_report(tmp / "run").read_text()
    findings = summary["dataset"]["classes"]
    sg_json = json.loads((tmp / "run" / "summary.json").read_text())
    sg = subgroup_numbers(sg_json)
    assert sg["per_finding"] and set(sg["findings"]) == {"Feature extraction", "Fine-tuning"}
    assert "macro one-vs-rest" not in html  # not the multi-class wording
    for label in ("Feature extraction", "Fine-tuning"):
        assert f"{label}: macro AUROC over the findings, per group" in html
        assert f"{label}: AUROC (95% DeLong CI) per finding and group" in html
    # the compact table: one row per group, one AUROC cell per finding, from summary.json
    fe = sg_json["subgroups"]["strategies"]["feature_extraction"]["per_finding"]
    rows = finding_group_rows(fe)
    assert [r[:2] for r in rows] == [["sex", "F"], ["sex", "M"]]
    assert len(rows[0]) == 2 + len(findings)
    f_row = next(r for r in fe[first]["attributes"]["sex"] if r["group"] == "F")
    assert rows[0][2 + findings.index(first)].startswith(f"{f_row['auroc']:.3f}")
    # the largest gap of each finding in words, under the strategy's name
    words = [w for ws in sg["words"].values() for w in ws]
    assert all(w in html for w in words)
    assert not any("one-vs-rest" in w for w in words)


def test_app_subgroups_per_finding(ml_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    tmp, _, first, summary = ml_run
    findings = summary["dataset"]["classes"]
    monkeypatch.setenv("MEDTL_APP_WORK", str(tmp_path / "work"))
    app = str(Path(__file__).resolve().parents[1] / "apps" / "medtl_app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.session_state["run_dir"] = str(tmp / "run")
    at.run()
    at = at.sidebar.radio(key="section").set_value("Subgroups").run()
    assert not at.exception, at.exception
    assert not at.info  # neither "not broken down" nor "no subgroups"
    macro = [t.value for t in at.table if "Macro AUROC" in t.value.columns]
    assert len(macro) == 2 and {g.split(" (")[0] for g in macro[0]["Group"]} == {"F", "M"}
    pick = at.selectbox(key="sg_finding")
    assert {o.split(" (")[0] for o in pick.options} == set(findings)
    pick.set_value(first).run()
    assert not at.exception, at.exception
    binary = [t.value for t in at.table if "FNR (95% CI)" in t.value.columns]
    assert len(binary) == 2  # the binary table per strategy, for the chosen finding
    # its n per group: the images labelled for that finding (blanks left out)
    per = json.loads((tmp / "run" / "summary.json").read_text())["subgroups"]["strategies"][
        "feature_extraction"
    ]["per_finding"]

    def shown_n() -> list[int]:
        t = next(t.value for t in at.table if "FNR (95% CI)" in t.value.columns)
        return sorted(map(int, t["n"]))

    assert shown_n() == sorted(r["n"] for r in per[first]["attributes"]["sex"])
    other = next(f for f in findings if f != first)
    at.selectbox(key="sg_finding").set_value(other).run()
    assert not at.exception, at.exception
    assert shown_n() == sorted(r["n"] for r in per[other]["attributes"]["sex"])
    assert sum(shown_n()) > sum(r["n"] for r in per[first]["attributes"]["sex"])  # no blanks
