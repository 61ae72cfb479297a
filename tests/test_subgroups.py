"""Performance by subgroup: attributes (never identifiers, ages in bands), numbers, surfaces."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter, grey_opening

from medtl.data import data_card, load_dataset, prepare_images
from medtl.data.synth import make_phantom
from medtl.errors import ConfigError, DatasetError
from medtl.metrics import gap_sentences, holm, subgroup_paired, subgroup_report
from medtl.subgroups import (
    age_band,
    normalise_value,
    parse_age,
    parse_subgroups,
)

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr14_multilabel"


# -- attributes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "band"),
    [
        ("045Y", "40-59"),
        ("093Y", "80+"),
        (95, "80+"),
        ("89", "80+"),
        ("006M", "<18"),
        ("010D", "<18"),
        ("003W", "<18"),
        ("017Y", "<18"),
        ("018Y", "18-39"),
        ("39.9", "18-39"),
        ("60", "60-79"),
        ("", None),
        ("abc", None),
        ("200Y", None),  # not an age
        ("19400305", None),  # a date is never an age
        (None, None),
    ],
)
def test_age_bands(raw, band) -> None:
    assert normalise_value("age", raw) == band


def test_no_exact_age_above_89_is_ever_shown(tmp_path: Path) -> None:
    assert parse_age("093Y") == 93.0 and age_band(93.0) == "80+"
    rows = [("a.png", "x", "F", str(90 + i % 6)) for i in range(6)] + [
        ("b.png", "y", "M", "45") for _ in range(6)
    ]
    root = tmp_path / "d"
    root.mkdir()
    with open(root / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "sex", "age"])
        for i, (_, lab, sex, age) in enumerate(rows):
            (root / f"{i}.png").write_bytes(str(i).encode())
            w.writerow([f"{i}.png", lab, sex, age])
    ds = load_dataset(root / "m.csv", verify=False, progress=False, subgroups="sex,age",
                      min_per_class=1, val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    assert {s.attributes["age"] for s in ds.samples} == {"80+", "40-59"}
    card = data_card(ds, max_files=1)
    assert "## Composition by subgroup" in card and "80+" in card
    for age in range(90, 96):
        assert f"| {age}" not in card and f"{age} " not in card.split("## Composition")[1][:400]


def test_sex_and_view_normalised() -> None:
    assert [normalise_value("sex", v) for v in ("F", "female", " W", "m", "Male", "O")] == [
        "F", "F", "F", "M", "M", "other",
    ]  # fmt: skip
    assert [normalise_value("view", v) for v in ("PA", "ap", "LL", "lateral", "obl")] == [
        "PA", "AP", "lateral", "lateral", "OBL",
    ]  # fmt: skip
    assert normalise_value("sex", "nan") is None
    assert parse_subgroups("Gender, age ,view_position") == ["sex", "age", "view"]


@pytest.mark.parametrize("name", ["patient_id", "PatientName", "accession", "study_date", "path"])
def test_identifier_names_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="identifier"):
        parse_subgroups(f"sex,{name}")


def _manifest(tmp: Path, columns: dict[str, list[str]], n: int = 40) -> Path:
    root = tmp / "m"
    root.mkdir(exist_ok=True)
    with open(root / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", *columns])
        for i in range(n):
            (root / f"{i}.png").write_bytes(str(i).encode())
            w.writerow([f"{i}.png", "ab"[i % 2], *[c[i] for c in columns.values()]])
    return root / "m.csv"


def test_identifier_like_column_refused(tmp_path: Path) -> None:
    codes = [f"H{1000 + i}" for i in range(40)]  # one value per row: an identifier
    m = _manifest(tmp_path, {"code": codes, "ward": ["A", "B"] * 20})
    with pytest.raises(DatasetError, match="'code' has 40 distinct values in 40 rows"):
        load_dataset(m, verify=False, progress=False, subgroups="code")
    ds = load_dataset(m, verify=False, progress=False, subgroups="ward")  # a real grouping
    assert {s.attributes["ward"] for s in ds.samples} == {"A", "B"}
    with pytest.raises(DatasetError, match="No image has a value"):
        load_dataset(m, verify=False, progress=False, subgroups="ethnicity")


def test_long_free_text_value_refused(tmp_path: Path) -> None:
    m = _manifest(tmp_path, {"note": ["A"] * 39 + ["x" * 60]})
    with pytest.raises(DatasetError, match=r"line 41.*free text or an identifier"):
        load_dataset(m, verify=False, progress=False, subgroups="note")


def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return path


def test_attributes_from_real_dicom_headers() -> None:
    from medtl.io import read_image
    from medtl.io._dicom import read_dicom_attributes

    rg1 = _testdata("RG1_UNCI.dcm")  # a real radiograph with a birth date but no PatientAge
    attrs = read_dicom_attributes(rg1)
    assert attrs == {
        "sex": "F",
        "view": "PA",
        "manufacturer": "Philips Medical Systems",
        "model": "Cassette Holder Type 9840 500 70201",
        "modality": "CR",
        "body_part": "CHEST",
    }  # no "age": it is never computed from the birth date
    assert read_image(rg1)[1]["attributes"] == attrs
    assert read_dicom_attributes(_testdata("SC_rgb_small_odd.dcm"))["age"] == "18-39"  # 024Y
    assert read_dicom_attributes(_testdata("CT_small.dcm"))["sex"] == "other"  # "O"


def test_phantom_headers_feed_subgroups(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "p", n_per_class=20, size=32)
    ds = load_dataset(root / "manifest.csv", progress=False, subgroups="sex,age,view,scanner")
    groups = {a: {s.attributes.get(a) for s in ds.samples} for a in ("sex", "view", "manufacturer")}
    assert groups["sex"] == {"F", "M"} and groups["view"] <= {"PA", "AP"}
    assert groups["manufacturer"] == {"Acme Radiography", "Phantom CR Systems"}
    assert all(s.attributes["age"] in ("18-39", "40-59", "60-79", "80+") for s in ds.samples)
    # group names never become ids: uids and patient ids are the same with or without subgroups
    plain = load_dataset(root / "manifest.csv", progress=False)
    assert [s.uid for s in plain.samples] == [s.uid for s in ds.samples]
    assert [s.patient_id for s in plain.samples] == [s.patient_id for s in ds.samples]


# -- numbers ---------------------------------------------------------------------------------------------
def test_holm() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.01, float("nan"), 0.5])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)


def _scores(seed: int = 0, n: int = 1200):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    view = rng.choice(["PA", "AP"], n)
    y = rng.integers(0, 2, n)
    sep = np.where(sex == "F", 0.5, 2.0)  # planted: the model separates women's images worse
    p = 1 / (1 + np.exp(-(y * sep + rng.normal(size=n) - 0.5)))
    return y, p, sex, view


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_gap_found_and_non_gap_not_flagged(seed: int) -> None:
    y, p, sex, view = _scores(seed)
    rep = subgroup_report(y, p, {"sex": sex, "view": view}, threshold=0.5)
    f = next(r for r in rep["attributes"]["sex"] if r["group"] == "F")
    assert f["auroc_gap"] < -0.15 and f["auroc_gap_p_holm"] < 0.001
    assert f["fnr_gap"] > 0.1 and f["fnr_gap_p_holm"] < 0.001
    assert f["auroc_gap_low"] < f["auroc_gap"] < f["auroc_gap_high"] < 0
    for r in rep["attributes"]["view"]:
        assert r["auroc_gap_p_holm"] > 0.05  # no gap planted by view
    words = gap_sentences(rep, "Fine-tuning")
    assert (
        words[0].startswith("Fine-tuning is worse for sex = F")
        and "unlikely to be chance" in words[0]
    )
    assert not any("view" in w and "unlikely" in w for w in words)


def test_group_numbers_match_medtl_metrics() -> None:
    from medtl.metrics import auroc_ci, operating_point

    y, p, sex, _ = _scores(3, 300)
    rep = subgroup_report(
        y, p, {"sex": sex}, threshold=0.5, patient_ids=[f"p{i // 2}" for i in range(300)]
    )
    f = next(r for r in rep["attributes"]["sex"] if r["group"] == "F")
    m = sex == "F"
    a = auroc_ci(y[m], p[m])
    op = operating_point(y[m], p[m], 0.5)
    assert (f["auroc"], f["auroc_low"], f["auroc_high"]) == pytest.approx(
        (a["auroc"], a["low"], a["high"])
    )
    assert f["sensitivity"] == pytest.approx(op["sensitivity"])
    assert f["specificity_low"] == pytest.approx(op["specificity_low"])
    assert f["fnr"] == pytest.approx(1 - op["sensitivity"])
    assert f["calibration_in_the_large"] == pytest.approx(y[m].mean() - p[m].mean())
    assert f["n"] == m.sum() and 0 < f["n_patients"] <= f["n"]
    assert rep["overall"]["n"] == 300


def test_too_small_groups_are_shown_not_tested() -> None:
    y, p, _, _ = _scores(4, 600)
    site = np.where(np.arange(600) < 12, "clinic", "hospital")
    rep = subgroup_report(y, p, {"site": site}, threshold=0.5)
    rows = {r["group"]: r for r in rep["attributes"]["site"]}
    assert set(rows) == {"clinic", "hospital"}  # never dropped
    assert rows["clinic"]["too_small"] and rows["clinic"]["n"] == 12
    assert "auroc_gap" not in rows["clinic"]
    assert "auroc_gap" not in rows["hospital"]  # its rest is the small group: not tested either
    assert (
        "site=clinic" in gap_sentences(rep)[-1] and "Too small to judge" in gap_sentences(rep)[-1]
    )


def test_missing_values_are_an_unknown_group_and_blank_labels_left_out() -> None:
    y, p, sex, _ = _scores(5, 400)
    groups = [None if i % 10 == 0 else s for i, s in enumerate(sex)]
    yl = y.astype(float)
    yl[:7] = np.nan  # unlabelled for this finding: left out, never negative
    rep = subgroup_report(yl, p, {"sex": groups}, threshold=0.5)
    assert [r["group"] for r in rep["attributes"]["sex"]] == ["F", "M", "unknown"]
    assert rep["overall"]["n"] == 393


def test_paired_gain_per_subgroup() -> None:
    rng = np.random.default_rng(6)
    n = 1600
    sex = rng.choice(["F", "M"], n)
    y = rng.integers(0, 2, n)
    base = rng.normal(size=n)
    p_b = 1 / (1 + np.exp(-(y * 1.0 + base)))
    good = 1 / (1 + np.exp(-(y * 2.0 + base)))
    holds = subgroup_paired(y, good, p_b, {"sex": sex})
    assert holds["holds"]["sex"] is True and holds["reversed"]["sex"] == []
    worse_for_f = np.where(
        sex == "F", 1 / (1 + np.exp(-(y * 0.4 + base))), 1 / (1 + np.exp(-(y * 4.0 + base)))
    )
    res = subgroup_paired(y, worse_for_f, p_b, {"sex": sex})
    assert res["overall"]["diff"] > 0 and res["holds"]["sex"] is False
    assert res["reversed"]["sex"] == ["F"]


# -- the phantom with a planted gap, end to end without a trained model -------------------------------------
def _blob_score(img: np.ndarray) -> float:
    """A fixed lesion detector (top-hat maximum inside the lungs), as in test_synth_phantom."""
    opened = grey_opening(img, size=(3, 3))
    background = grey_opening(opened, size=(25, 25))
    lungs = binary_erosion(background < 0.42, iterations=3)
    lungs &= ~binary_dilation(gaussian_filter(img, 2) < 0.12, iterations=18)
    n = img.shape[1]
    lungs[:, int(n * 0.42) : int(n * 0.58)] = False
    return float((opened - background)[lungs].max()) if lungs.any() else 0.0


def test_phantom_planted_gap_is_found(tmp_path: Path) -> None:
    root = make_phantom(tmp_path / "p", n_per_class=60, size=128, difficulty=0.0,
                        faint_group="sex=F", faint_factor=0.15, seed=0)  # fmt: skip
    ds = load_dataset(root / "manifest.csv", progress=False, verify=False, subgroups="sex,view")
    prep = prepare_images(ds.samples, ds.classes, size=128, progress=False)
    s = np.array([_blob_score(px[0].astype(np.float32) / 255) for px in prep.pixels])
    y = (prep.labels == ds.classes.index("opacity")).astype(int)
    cols = {a: [x.get(a) for x in prep.attributes] for a in ("sex", "view")}
    rep = subgroup_report(y, s, cols, threshold=float(np.median(s)))
    f = next(r for r in rep["attributes"]["sex"] if r["group"] == "F")
    assert f["auroc_gap"] < -0.2 and f["auroc_gap_p_holm"] < 0.01
    assert f["fnr_gap"] > 0.2 and f["fnr_gap_p_holm"] < 0.01
    assert all(r["auroc_gap_p_holm"] > 0.05 for r in rep["attributes"]["view"])


# -- surfaces: a run, its report, the data card, evaluate --by, the app ----------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from medtl.config import config_from_dict
    from medtl.experiment import compare

    tmp = tmp_path_factory.mktemp("sg")
    root = make_phantom(tmp / "ph", n_per_class=40, size=64, difficulty=0.0, faint_group="sex=F",
                        faint_factor=0.2, seed=1)  # fmt: skip
    cfg = config_from_dict({
        "name": "sg",
        "data": {"path": str(root / "manifest.csv"), "min_per_class": 2, "test_fraction": 0.3,
                 "subgroups": "sex,age,view"},
        "model": {"backbone": "tiny_test", "image_size": 48},
        "strategies": ["feature_extraction", "fine_tuning"],
        "params": {"feature_extraction": {"Cs": [0.1, 1.0]}},
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"out": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
    })  # fmt: skip
    return tmp, root, compare(cfg, progress=False)


def test_run_folder_has_subgroups(run) -> None:
    import pydicom

    tmp, root, _ = run
    out = tmp / "run"
    table = (out / "subgroups.csv").read_text()
    assert table.splitlines()[0] == "uid,split,sex,age,view"
    metrics = json.loads((out / "fine_tuning" / "metrics.json").read_text())
    block = metrics["subgroups"]
    assert block["kind"] == "binary" and block["threshold"] == pytest.approx(metrics["threshold"])
    assert {r["group"] for r in block["attributes"]["sex"]} == {"F", "M"}
    assert sum(r["n"] for r in block["attributes"]["age"]) == block["overall"]["n"]
    sg = json.loads((out / "summary.json").read_text())["subgroups"]
    assert set(sg["strategies"]) == {"feature_extraction", "fine_tuning"}
    assert sg["paired"] and sg["paired"][0]["words"]
    # no identifier and no exact age from the headers anywhere in what the run wrote
    secrets = set()
    for f in root.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        secrets |= {str(ds.PatientID), str(ds.PatientBirthDate), str(ds.PatientAge)}
    texts = [table, json.dumps(block), json.dumps(sg), (out / "data_card.md").read_text()]
    for text in texts:
        assert not any(v in text for v in secrets)
    assert "## Composition by subgroup" in texts[-1]


def test_report_section_and_checklist(run) -> None:
    tmp, _, _ = run
    from medtl.report import write_report

    html = write_report(tmp / "run").read_text()
    assert "Performance by subgroup" in html and "FNR (95% CI)" in html
    rep = json.loads((tmp / "run" / "report.json").read_text())
    assert "plots/subgroups.png" in rep["plots"]
    item = next(c for c in rep["checklist"] if c["item"].startswith("Subgroup"))
    assert item["status"].startswith("filled") and "sex, age, view" in item["content"]
    assert "hold in every subgroup?" in html  # the paired check per subgroup, in words


def test_evaluate_by(run) -> None:
    from medtl.evaluation import evaluate

    tmp, root, _ = run
    res = evaluate([str(tmp / "run" / "fine_tuning" / "model")], [str(root / "manifest.csv")],
                   out=str(tmp / "eval"), by="sex,view", progress=False)  # fmt: skip
    subs = [r["subgroup"] for r in res["rows"]]
    assert subs[0] == "all" and {"sex=F", "sex=M"} <= set(subs)
    assert (
        sum(r["n"] for r in res["rows"] if r["subgroup"].startswith("sex=")) == res["rows"][0]["n"]
    )
    header = (tmp / "eval" / "evaluation.csv").read_text().splitlines()[0]
    assert "subgroup" in header and "fnr_gap_p_holm" in header
    assert "[sex=F]" in res["markdown"]


def test_app_subgroup_reports(run) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))
    from _app_subgroups import subgroup_reports

    from medtl.runs import load_run

    tmp, _, _ = run
    r = load_run(tmp / "run")
    reports = subgroup_reports(r, {n: (0.3, "your threshold") for n in r.strategies})
    assert set(reports) == set(r.strategies)
    assert reports["fine_tuning"]["threshold"] == 0.3
    assert {g["group"] for g in reports["fine_tuning"]["attributes"]["view"]} <= {"PA", "AP"}


# -- real data ----------------------------------------------------------------------------------------------
@pytest.mark.real_data
def test_nih_cxr14_subgroups(tmp_path: Path) -> None:
    if not (NIH / "labels.csv").is_file():
        pytest.skip(f"{NIH} is absent")
    with open(NIH / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    manifest = tmp_path / "effusion.csv"  # one finding as one binary question
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "sex", "age", "view", "code"])
        for r in rows:
            label = "effusion" if r["Effusion"] == "1" else "no_effusion"
            w.writerow([str(NIH / r["path"]), label, r["patient_id"], r["sex"], r["age"], r["view"],
                        r["patient_id"]])  # fmt: skip
    ds = load_dataset(manifest, verify=False, progress=False, subgroups="sex,age,view",
                      positive_class="effusion")  # fmt: skip
    from collections import Counter

    count = lambda a: dict(Counter(s.attributes[a] for s in ds.samples))  # noqa: E731
    assert count("sex") == {"M": 318, "F": 280}  # as the dataset's README states
    assert count("view") == {"PA": 496, "AP": 102}
    assert count("age") == {"<18": 20, "18-39": 139, "40-59": 270, "60-79": 160, "80+": 9}
    with pytest.raises(DatasetError, match="identifies images or patients"):
        # the patient id under a harmless name is still refused: one value per row
        load_dataset(manifest, verify=False, progress=False, subgroups="sex,code")
    y = np.array([s.label for s in ds.samples])
    score = np.array([float(s.attributes["view"] == "AP") for s in ds.samples]) * 0.5 + 0.25
    rep = subgroup_report(y, score, {a: [s.attributes[a] for s in ds.samples]
                                     for a in ("sex", "age", "view")}, threshold=0.5)  # fmt: skip
    rows_age = {r["group"]: r for r in rep["attributes"]["age"]}
    assert rows_age["80+"]["too_small"] and rows_age["80+"]["n"] == 9
    assert rep["overall"]["n_pos"] == 80


def test_app_subgroups_view(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    tmp, _, _ = run
    monkeypatch.setenv("MEDTL_APP_WORK", str(tmp_path / "work"))
    app = str(Path(__file__).resolve().parents[1] / "apps" / "medtl_app.py")
    at = AppTest.from_file(app, default_timeout=60)
    at.session_state["run_dir"] = str(tmp / "run")
    at.run()
    at = at.sidebar.radio(key="section").set_value("Subgroups").run()
    assert not at.exception
    assert len(at.table) == 2  # one table per strategy
    text = " ".join(str(m.value) for m in at.markdown)
    assert "Operating point" in text and "FNR" in text


def test_data_card_command_shows_who_is_represented(tmp_path: Path, capsys) -> None:
    """``medtl data card --subgroups``: images per split and group, without identifiers."""
    from PIL import Image

    from medtl.cli import main

    root = tmp_path / "site"
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "sex"])
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / f"{i}.png")
            w.writerow([f"{i}.png", "ab"[i % 2], f"P{i:03d}", "FM"[i // 20]])
    assert main(["data", "card", str(root / "labels.csv"), "--subgroups", "sex", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "## Composition by subgroup" in out and "### sex" in out
    assert "| F |" in out and "| M |" in out and "P001" not in out
