"""Issue 12: the model folder and the run folder say exactly what was done, and are used that way."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from medtl import runs
from medtl.cli import main
from medtl.config import config_from_dict
from medtl.errors import ConfigError, DatasetError
from medtl.evaluation import evaluate, predict
from medtl.experiment import compare
from medtl.strategies import load_model
from medtl.strategies._modelfile import IncompleteModelWarning, ModelFileError


def _cfg(out: Path, cache: Path, **data) -> dict:
    return {
        "name": "trust",
        "data": {"path": "synthetic", "synthetic_per_class": 24, **data},
        "model": {"backbone": "tiny_test", "image_size": 32},
        "strategies": ["feature_extraction", "fine_tuning"],
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"out": str(out), "cache_dir": str(cache)},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    cfg = _cfg(tmp / "run", tmp / "cache", window="full")
    summary = compare(config_from_dict(cfg), progress=False, write_html=False)
    return tmp, tmp / "run", summary


def test_model_folder_is_self_describing(run):
    _, rd, summary = run
    meta = json.loads((rd / "fine_tuning" / "model" / "model.json").read_text())
    assert meta["format"] == "medtl-model/2" and meta["medtl_version"]
    assert meta["preprocessing"]["read_options"]["window"] == "full"
    assert meta["preprocessing"]["channels"] == 1 and meta["preprocessing"]["image_size"] == 32
    assert meta["positive_class"] == meta["classes"][1]
    op = meta["operating_point"]
    assert op["chosen_on"] == "val" and op["rule"] == "youden"
    assert op["threshold"] == pytest.approx(summary["strategies"]["fine_tuning"]["threshold"])
    assert len(meta["weights"]["sha256"]) == 64
    est = load_model(rd / "fine_tuning" / "model")
    assert est.preprocessing_["read_options"]["window"] == "full"
    assert est.threshold_for()[0] == pytest.approx(op["threshold"])


def test_evaluate_own_test_split_reproduces_the_run(run):
    tmp, rd, summary = run
    data = tmp / "cache" / "phantom_n24_d0.5"
    res = evaluate([str(rd)], [str(data)], split="test", out=str(tmp / "ev"), progress=False)
    metrics = {
        n: json.loads((rd / n / "metrics.json").read_text())
        for n in ("feature_extraction", "fine_tuning")
    }
    for row in res["rows"]:
        name = row["strategy"]
        test = metrics[name]["test"]
        assert row["n"] == summary["dataset"]["n_test"]
        assert row["auroc"] == pytest.approx(test["auroc"]["auroc"], abs=1e-12)
        assert row["threshold"] == pytest.approx(metrics[name]["threshold"], abs=1e-12)
        assert row["sensitivity"] == pytest.approx(test["operating_point"]["sensitivity"])
        assert row["specificity"] == pytest.approx(test["operating_point"]["specificity"])
        for k in ("sens_low", "sens_high", "spec_low", "spec_high", "auroc_low"):
            assert row[k] is not None, k
        assert "operating point" in row["threshold_source"]
    assert "n/a–n/a" not in res["markdown"]
    # feature extraction's head was refit on train + val: its val split is training data now
    with pytest.raises(ConfigError, match="refit on train"):
        evaluate([str(rd / "feature_extraction" / "model")], [str(data)], split="val",
                 out=str(tmp / "ev_val"), progress=False)  # fmt: skip
    fe = json.loads((rd / "feature_extraction" / "model" / "model.json").read_text())
    assert fe["extra"]["head_fitted_on"] == "train+val"


def test_evaluate_split_needs_the_runs_dataset(run, tmp_path):
    _tmp, rd, _ = run
    from medtl.data.synth import make_phantom

    other = make_phantom(tmp_path / "other", n_per_class=6, size=64, seed=5)
    with pytest.raises(ConfigError, match="not the dataset of the run"):
        evaluate([str(rd / "fine_tuning" / "model")], [str(other)], split="test",
                 out=str(tmp_path / "e"), progress=False)  # fmt: skip
    # a bare model folder without a run: only --split all
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(rd / "fine_tuning" / "model", bare)
    with pytest.raises(ConfigError, match="split all"):
        evaluate([str(bare)], [str(other)], split="val", out=str(tmp_path / "e2"), progress=False)


def test_demo_splits_are_per_patient(run):
    _, rd, summary = run
    assert summary["dataset"]["split_unit"] == "patient"
    samples = json.loads((rd / "splits.json").read_text())["samples"]
    split_of: dict[str, set] = {}
    for s in samples:
        split_of.setdefault(s["patient_id"], set()).add(s["split"])
    assert split_of and all(len(v) == 1 for v in split_of.values())


def test_adapt_carries_everything(run, tmp_path):
    tmp, rd, _ = run
    from medtl.adapt import adapt_model

    data = tmp / "cache" / "phantom_n24_d0.5"
    out = tmp_path / "ft_adabn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapt_model(rd / "fine_tuning" / "model", str(data), out, cache_dir=None, progress=False)
    old = json.loads((rd / "fine_tuning" / "model" / "model.json").read_text())
    new = json.loads((out / "model.json").read_text())
    for k in ("preprocessing", "operating_point", "classes", "positive_class"):
        assert new[k] == old[k], k
    assert new["adaptation"]["method"] == "adabn"


def test_predict_calls_at_operating_point_and_reports_inputs(run, tmp_path, capsys):
    tmp, rd, _ = run
    model = rd / "fine_tuning" / "model"
    data = tmp / "cache" / "phantom_n24_d0.5"
    files = sorted(data.rglob("*.dcm"))[:4]
    renamed = tmp_path / "scan.txt"  # a DICOM named .txt is still a DICOM
    renamed.write_bytes(files[0].read_bytes())
    res = predict(model, [str(f) for f in files[1:]] + [str(renamed)], out=str(tmp_path / "p.csv"),
                  id_map=tmp_path / "ids.csv", progress=False)  # fmt: skip
    assert res["n"] == 4 and not res["unusable_named"]
    t = res["threshold"]
    for row in res["rows"]:
        p_pos = row["p_opacity"]
        assert row["call"] == ("opacity" if p_pos >= t else "normal")
    text = (tmp_path / "p.csv").read_text()
    assert str(data) not in text and "img_" not in text
    assert "CONTAINS PATIENT IDENTIFIERS" in (tmp_path / "ids.csv").read_text()
    forced = predict(model, [str(files[1])], out=None, threshold=0.0, progress=False)
    assert forced["rows"][0]["call"] == "opacity" and "overrides" in forced["threshold_source"]
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    code = main(["predict", str(model), str(files[1]), str(junk), "--out",
                 str(tmp_path / "q.csv"), "--quiet"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "looks like a text file" in err and "could not be used" in err
    assert "notes.txt" not in err  # named by id, not by a file name that may identify someone


def test_resume_refuses_conflicting_options_and_uses_saved_config(run, tmp_path, capsys):
    _tmp, rd, _ = run
    args = ["compare", "--out", str(rd), "--resume", "--quiet"]
    assert main([*args, "--image-size", "48"]) == 3
    err = capsys.readouterr().err
    assert "model.image_size" in err and "32" in err and "48" in err
    before = (rd / "config.yaml").read_text()
    # resuming without the options keeps the saved ones (finished strategies are not recomputed)
    assert main([*args, "--backbone", "tiny_test"]) in (0, 1)
    assert (rd / "config.yaml").read_text() == before
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["complete"] is True and summary["image_size"] == 32


def test_incomplete_run_is_visible(run, tmp_path):
    _, rd, _ = run
    import shutil

    broken = tmp_path / "killed"
    shutil.copytree(rd, broken)
    s = json.loads((broken / "summary.json").read_text())
    s["complete"] = False
    s["strategies"]["fine_tuning"] = {"status": "running"}
    (broken / "summary.json").write_text(json.dumps(s))
    loaded = runs.load_run(broken)
    assert not loaded.complete and loaded.unfinished == ["fine_tuning"]
    assert loaded.strategies["fine_tuning"].status == "incomplete"
    assert runs.load_run(rd).complete


def test_public_api_names_stay_callables():
    code = (
        "import medtl, medtl.evaluation, medtl.adapt, medtl.experiment, medtl.runs\n"
        "import medtl.explain, medtl.advisor\n"
        "bad = [n for n in medtl.__all__ if n != '__version__' and not callable(getattr(medtl, n))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _model_copy(run_dir: Path, tmp: Path) -> Path:
    import shutil

    dest = tmp / "m"
    shutil.copytree(run_dir / "feature_extraction" / "model", dest)
    return dest


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.json").unlink(), "model.json is missing"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 40), "SHA-256"),
        (lambda d: _edit(d, lambda m: m["preprocessing"].update(image_size=-3)), "image_size"),
        (lambda d: _edit(d, lambda m: m.update(classes=["a"])), "classes"),
        (lambda d: _edit(d, lambda m: m["operating_point"].update(threshold="x")), "threshold"),
        (lambda d: _edit(d, lambda m: m.update(format="other/9")), "unknown format"),
    ],
)
def test_damaged_model_folders_give_named_errors(run, tmp_path, damage, match):
    _, rd, _ = run
    d = _model_copy(rd, tmp_path)
    damage(d)
    with pytest.raises(ModelFileError, match=match):
        load_model(d)


def _edit(d: Path, fn) -> None:
    m = json.loads((d / "model.json").read_text())
    fn(m)
    (d / "model.json").write_text(json.dumps(m))


def test_bad_weights_without_recorded_hash_and_old_format(run, tmp_path):
    _, rd, _ = run
    d = _model_copy(rd, tmp_path)
    _edit(d, lambda m: m["weights"].update(sha256=None))
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad header}")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(d)
    # an older medtl-model/1 folder still loads, warning what it lacks
    d2 = _model_copy(rd, tmp_path / "v1")
    m = json.loads((d2 / "model.json").read_text())
    v1 = {k: m[k] for k in ("strategy", "params", "classes", "history", "extra")}
    v1.update(format="medtl-model/1", backbone=m["backbone"]["name"], image_size=32)
    (d2 / "model.json").write_text(json.dumps(v1))
    with pytest.warns(IncompleteModelWarning, match="operating point"):
        est = load_model(d2)
    assert est.threshold_for()[0] == 0.5


def test_nan_model_output_is_refused(run, tmp_path):
    _, rd, _ = run
    from safetensors.torch import load_file, save_file

    d = _model_copy(rd, tmp_path)
    state = load_file(d / "model.safetensors")
    key = next(k for k in state if state[k].is_floating_point())
    state[key] = state[key] * float("nan")
    save_file(state, d / "model.safetensors")
    _edit(d, lambda m: m["weights"].update(sha256=None))
    files = sorted((rd.parent / "cache").rglob("*.dcm"))[:2]
    with pytest.raises(ModelFileError, match="NaN"):
        predict(d, [str(f) for f in files], out=None, progress=False)


def test_resume_refuses_other_data(run, tmp_path):
    tmp, rd, _ = run
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(rd, copy)
    cfg = _cfg(copy, tmp / "cache", window="full", synthetic_per_class=24)
    cfg["data"]["split_seed"] = 0
    s = json.loads((copy / "summary.json").read_text())
    s["dataset"]["fingerprint"] = "0" * 64
    (copy / "summary.json").write_text(json.dumps(s))
    with pytest.raises(DatasetError, match="dataset differs"):
        compare(config_from_dict(cfg), progress=False, resume=True, write_html=False)
    assert np is not None and csv is not None


def test_predict_on_a_device_that_is_not_there_is_a_named_error(run, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tmp, rd, _ = run
    image = next((tmp / "cache" / "phantom_n24_d0.5").rglob("*.dcm"))
    code = main(["predict", str(rd / "fine_tuning" / "model"), str(image), "--device", "cuda",
                 "--out", str(tmp_path / "p.csv"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3 and "cuda" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
