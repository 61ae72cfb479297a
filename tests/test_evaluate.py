"""Batch evaluation (resumable table) and plain prediction on files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from medtl.cli import main
from medtl.errors import ConfigError
from medtl.evaluation import evaluate, predict
from medtl.strategies import get_strategy
from tests._helpers import blob_images


def write_folder(root, images):
    for i, (px, lab) in enumerate(zip(images.pixels, images.labels)):
        d = root / images.classes[lab]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px[0]).save(d / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    train, val = blob_images(40, seed=31), blob_images(20, seed=32, offset=100)
    dirs = []
    for name, kw in (
        ("feature_extraction", {"Cs": [0.1, 1.0]}),
        ("fine_tuning", {"epochs": 2, "batch_size": 8}),
    ):
        est = get_strategy(name, backbone="tiny_test", progress=False, **kw).fit(train, val)
        dirs.append(est.save(tmp / name / "model"))
    site = write_folder(tmp / "site_b", blob_images(24, seed=33, offset=300))
    return tmp, dirs, site


def test_evaluate_table_and_resume(models, monkeypatch):
    tmp, dirs, site = models
    out = tmp / "table"
    res = evaluate([str(d) for d in dirs], [str(site)], out=str(out), progress=False)
    assert len(res["rows"]) == 2
    rows = list(csv.DictReader(Path(res["csv"]).read_text().splitlines()))
    assert {r["strategy"] for r in rows} == {"feature_extraction", "fine_tuning"}
    for r in rows:
        assert r["n"] == "24" and 0 <= float(r["auroc"]) <= 1
        assert float(r["auroc_low"]) <= float(r["auroc"]) <= float(r["auroc_high"])
        assert r["sensitivity"] != ""
    assert "AUROC" in (out / "evaluation.md").read_text()

    import medtl.evaluation as ev

    monkeypatch.setattr(
        ev, "_evaluate_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed"))
    )
    again = evaluate([str(d) for d in dirs], [str(site)], out=str(out), progress=False)
    assert [r["auroc"] for r in again["rows"]] == [r["auroc"] for r in res["rows"]]


def test_evaluate_batch_file_and_run_folder(models, tmp_path):
    tmp, _dirs, site = models
    batch = tmp_path / "batch.yaml"
    batch.write_text(f"models: [{tmp}]\ndatasets: [{site}]\nout: {tmp_path / 'o'}\n")
    res = evaluate(batch_file=str(batch), progress=False)
    assert len(res["rows"]) == 2  # the run-like folder expands to both models
    bad = tmp_path / "bad.yaml"
    bad.write_text("modles: []\n")
    with pytest.raises(ConfigError, match="modles"):
        evaluate(batch_file=str(bad))


def test_predict_files_and_folders_skips_bad_files(models, tmp_path, capsys):
    _, dirs, site = models
    (site / "normal" / "corrupt.png").write_bytes(b"\x89PNG broken")
    try:
        res = predict(str(dirs[0]), [str(site)], out=str(tmp_path / "p.csv"), progress=False)
        assert res["n"] == 24 and len(res["skipped"]) == 1
        rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
        assert len(rows) == 24 and {"id", "p_normal", "p_lesion", "call"} <= set(rows[0])
        assert "path" not in rows[0]  # file names may carry identifiers
        assert (
            main(["predict", str(dirs[0]), str(site), "--out", str(tmp_path / "q.csv"), "--quiet"])
            == 0
        )
        err = capsys.readouterr().err
        assert "not a recognised image format" in err and "corrupt.png" not in err
    finally:
        (site / "normal" / "corrupt.png").unlink()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="no saved model"):
        evaluate([str(tmp_path)], [str(tmp_path)], out=str(tmp_path / "o"))
