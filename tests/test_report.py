"""Tests for medtl.report: fabricated run folders -> plots, report.html, report.json."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.figure import Figure

from medtl.errors import ConfigError, DatasetError
from medtl.metrics import clinical_report, compare_paired, learning_curve_summary
from medtl.report import (
    SECTION_TITLES,
    load_run,
    plot_calibration,
    plot_confusion,
    plot_decision_curve,
    plot_learning_curves,
    plot_roc,
    save_figure,
    write_report,
)

QUALITY = {
    "fine_tuning": 2.2,
    "feature_extraction": 1.4,
    "from_scratch": 0.5,
    "partial_fine_tuning": 1.8,
}


PARAMS = {
    "feature_extraction": {"head": "logreg", "Cs": [0.01, 0.1, 1.0], "select_by": "log_loss_1se",
                           "class_weighting": "balanced"},
    "fine_tuning": {"epochs": 5, "batch_size": 16, "lr": None, "weight_decay": 0.01,
                    "schedule": "onecycle", "warmup_frac": 0.15, "patience": 3, "augment": True,
                    "augment_strength": 1.0, "hflip": False, "class_weighting": "balanced",
                    "head_init": "probe", "checkpoint_dir": "/home/jane.doe/runs/x"},
}  # fmt: skip


def _scores(rng: np.random.Generator, y: np.ndarray, k: int, quality: float) -> np.ndarray:
    """(n, k) class probabilities whose true-class logit is raised by ``quality``."""
    logits = rng.normal(size=(y.size, k))
    logits[np.arange(y.size), y] += quality
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _history(name: str, rng: np.random.Generator, q: float) -> list[dict]:
    if name == "feature_extraction":
        return [
            {"epoch": i + 1, "C": c, "val_auroc": 0.8 + 0.02 * i, "elapsed": 3.0 + i}
            for i, c in enumerate((0.01, 0.1, 1.0))
        ]
    rows, t = [], 0.0
    for e in range(1, 6):
        sec = 10.0 + rng.random()
        t += sec
        rows.append({
            "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e,
            "val_auroc": min(0.99, 0.5 + q * 0.08 * np.log1p(e)), "seconds": sec, "elapsed": t,
        })  # fmt: skip
    return rows


def make_fake_run(
    tmp_path: Path,
    strategies: tuple[str, ...] = ("fine_tuning", "feature_extraction", "from_scratch"),
    *,
    classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA"),
    failed: dict[str, str] | None = None,
    val_auroc: dict[str, float] | None = None,
    prevalence: float | None = None,
    n_test: int = 120,
    n_val: int = 60,
    n_skipped: int = 3,
    seed: int = 0,
) -> Path:
    """Fabricate a run folder like `medtl compare` writes one (see the report module's docstring)."""
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    run.mkdir(parents=True)
    k = len(classes)
    failed = failed or {}
    yt = rng.integers(0, k, n_test)
    yv = rng.integers(0, k, n_val)
    counts = {
        s: {c: int(m) for c, m in zip(classes, np.bincount(y, minlength=k))}
        for s, y in (("train", rng.integers(0, k, 300)), ("val", yv), ("test", yt))
    }
    cfg = {"name": "fake", "data": {"path": "synthetic", "val_fraction": 0.15, "split_seed": 0},
           "model": {"backbone": "tiny_test"}, "train": {"epochs": 5, "batch_size": 16, "seed": 0},
           "metrics": {"threshold_rule": "youden", "prevalence": prevalence}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "data_card.md").write_text("# Data card\n\nSynthetic phantom <b>test</b> data.\n")
    with open(run / "skipped.csv", "w") as fh:
        fh.write("path,reason\n")
        for i in range(n_skipped):
            fh.write(f"img/bad_{i}.dcm,truncated file\n")
    infos, scores = {}, {}
    for name in strategies:
        q = QUALITY.get(name, 1.0)
        info = {"status": "done", "error": None, "train_seconds": 52.5, "epochs_run": 5,
                "images_per_s": 40.0, "params": PARAMS.get(name, {})}  # fmt: skip
        if name in failed:
            info.update(status="failed", error=failed[name], test_auroc=None, val_auroc=None)
            (run / name).mkdir()
            infos[name] = info
            continue
        sdir = run / name
        sdir.mkdir()
        pt, pv = _scores(rng, yt, k, q), _scores(rng, yv, k, q)
        scores[name] = (pt, pv)
        with open(sdir / "predictions.csv", "w") as fh:
            fh.write("uid,split,label," + ",".join(f"p_{c}" for c in classes) + "\n")
            for split, y, p in (("val", yv, pv), ("test", yt, pt)):
                for i in range(y.size):
                    fh.write(
                        f"{split}{i:04d},{split},{y[i]},"
                        + ",".join(f"{v:.6f}" for v in p[i])
                        + "\n"
                    )
        hist = _history(name, rng, q)
        (sdir / "history.json").write_text(json.dumps(hist))
        if k == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = clinical_report(yt, pt[:, 1], y_val=yv, p_val=pv[:, 1], prevalence=prevalence)
                vrep = clinical_report(yv, pv[:, 1], y_val=yv, p_val=pv[:, 1])
            metrics = {"test": rep.to_dict(), "val": vrep.to_dict(), "threshold": rep.threshold}
            (sdir / "metrics.json").write_text(json.dumps(metrics))
            a = rep.auroc
            info.update(test_auroc=a["auroc"], test_auroc_ci=[a["low"], a["high"]],
                        val_auroc=vrep.auroc["auroc"])  # fmt: skip
        else:
            info.update(test_auroc=0.8, test_auroc_ci=[0.7, 0.9], val_auroc=0.81)
        if val_auroc and name in val_auroc:
            info["val_auroc"] = val_auroc[name]
        if name != "feature_extraction":
            info.update(learning_curve_summary([r["val_auroc"] for r in hist]))
        infos[name] = info
    paired = []
    done = list(scores)
    if k == 2:
        for i, a in enumerate(done):
            for b in done[i + 1 :]:
                d = compare_paired(yt, scores[a][0][:, 1], scores[b][0][:, 1], n_boot=200)
                paired.append({"a": a, "b": b, **d})
    summary = {
        "name": "fake-run", "created": "2025-01-01T00:00:00+00:00", "backbone": "tiny_test",
        "image_size": 64, "device": "cpu", "precision": "fp32",
        "dataset": {"source": "phantom", "classes": list(classes), "counts": counts,
                    "n_skipped": n_skipped, "patient_ids": False},
        "threshold_rule": "youden", "prevalence": prevalence, "strategies": infos, "paired": paired,
        "notes": ["fabricated for tests"],
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip PNG rasterisation (most of a report's time) in tests that check content only."""
    monkeypatch.setattr("medtl.report._write.figure_to_png", lambda fig: b"\x89PNG stub")


def _strip_time(text: str) -> str:
    return re.sub(r'<span class="rendered">[^<]*</span>', "", text)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_fake_run(
        tmp_path_factory.mktemp("bin"),
        val_auroc={"feature_extraction": 0.99},
        prevalence=0.1,
        n_skipped=60,
    )
    write_report(run)
    return run


def test_binary_report_has_every_section_and_embedded_images(binary_run: Path) -> None:
    html = (binary_run / "report.html").read_text()
    assert "had the highest test AUROC" in html
    assert "Fine-tuning had the highest test AUROC" in html  # strongest fabricated model wins
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in html, title
    assert html.count('src="data:image/png;base64,') >= 6
    assert 'src="http' not in html and "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert "Model card" in html and "TO COMPLETE" in html and "to complete by the authors" in html
    assert "PPV at deployment prevalence (10.0%)" in html
    for name in (
        "roc",
        "calibration",
        "decision_curve",
        "confusion",
        "learning_epoch",
        "learning_time",
    ):
        png = binary_run / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # Data card is escaped, and only 50 skipped files are listed, with the total.
    assert "&lt;b&gt;test&lt;/b&gt;" in html
    assert "Skipped files (50 shown of 60)" in html
    assert "bad_49.dcm" in html and "bad_50.dcm" not in html


def test_validation_overstates_flag(binary_run: Path) -> None:
    html = (binary_run / "report.html").read_text()
    rep = json.loads((binary_run / "report.json").read_text())
    fe = rep["strategies"]["feature_extraction"]
    assert fe["val_overstates"] is True
    expected = (
        f"validation overstates this model by {0.99 - fe['test_auroc']:.2f} AUROC on the test data"
    )
    assert expected in html
    assert rep["strategies"]["fine_tuning"]["val_overstates"] is False


def test_report_json_holds_the_numbers(binary_run: Path) -> None:
    rep = json.loads((binary_run / "report.json").read_text())
    metrics = json.loads((binary_run / "fine_tuning" / "metrics.json").read_text())
    ft = rep["strategies"]["fine_tuning"]
    assert ft["test_auroc"] == pytest.approx(metrics["test"]["auroc"]["auroc"])
    assert ft["sensitivity"] == pytest.approx(metrics["test"]["operating_point"]["sensitivity"])
    assert ft["threshold_source"] == "validation"
    assert ft["ppv_at_prevalence"] == pytest.approx(
        metrics["test"]["operating_point"]["ppv_at_prevalence"]
    )
    assert rep["best_strategy"] == "fine_tuning"
    assert len(rep["paired"]) == 3
    assert all(np.isfinite(p["delong_p"]) and p["reading"] for p in rep["paired"])
    assert rep["data"]["skipped_total"] == 60 and len(rep["data"]["skipped_first"]) == 50
    statuses = {c["status"] for c in rep["checklist"]}
    assert statuses == {"filled automatically", "to complete by the authors"}
    assert {"medtl", "torch"} <= set(rep["versions"])
    assert sorted(rep["plots"]) == sorted(
        f"plots/{p.name}" for p in (binary_run / "plots").iterdir()
    )


def test_rendering_twice_gives_the_same_html(binary_run: Path) -> None:
    first = (binary_run / "report.html").read_text()
    png = (binary_run / "plots" / "roc.png").read_bytes()
    write_report(binary_run)
    assert _strip_time((binary_run / "report.html").read_text()) == _strip_time(first)
    assert (binary_run / "plots" / "roc.png").read_bytes() == png


def test_failed_strategy_shows_its_error_escaped(tmp_path: Path, fast_png: None) -> None:
    run = make_fake_run(
        tmp_path, ("fine_tuning", "feature_extraction"),
        failed={"fine_tuning": "out of memory <script>alert(1)</script>"}, n_test=40, n_val=30,
    )  # fmt: skip
    html = write_report(run, title="Failure <test>").read_text()
    assert "Fine-tuning failed: out of memory &lt;script&gt;" in html
    assert "<script>" not in html
    assert "<title>Failure &lt;test&gt;</title>" in html
    assert "Feature extraction reached a test AUROC" in html
    rep = json.loads((run / "report.json").read_text())
    assert rep["strategies"]["fine_tuning"]["status"] == "failed"
    assert rep["paired"] == []
    # A failed strategy's missing files are expected, so they are not reported as notes.
    assert not any("fine_tuning/" in n for n in rep["notes"])


def test_multiclass_run_renders_per_class_auroc(tmp_path: Path, fast_png: None) -> None:
    run = make_fake_run(tmp_path, ("fine_tuning", "feature_extraction"), classes=("a", "b", "c"))
    html = write_report(run).read_text()
    assert "Per-class AUROC (one-vs-rest, test set, 95% DeLong CI)" in html
    assert "Binary-only section; skipped for this multi-class run." in html
    rep = json.loads((run / "report.json").read_text())
    assert rep["task"] == "multiclass"
    per = rep["strategies"]["fine_tuning"]["per_class_auroc"]
    assert set(per) == {"a", "b", "c"} and all(0.5 < v <= 1 for v in per.values())
    assert np.array(rep["strategies"]["fine_tuning"]["confusion"]).shape == (3, 3)
    assert (run / "plots" / "confusion.png").is_file() and not (run / "plots" / "roc.png").exists()


def test_missing_files_are_skipped_with_notes(tmp_path: Path, fast_png: None) -> None:
    run = make_fake_run(tmp_path, ("fine_tuning", "from_scratch"), n_test=50, n_val=40)
    (run / "fine_tuning" / "metrics.json").unlink()
    (run / "from_scratch" / "history.json").unlink()
    (run / "skipped.csv").unlink()
    (run / "config.yaml").unlink()
    html = write_report(run).read_text()
    rep = json.loads((run / "report.json").read_text())
    notes = " ".join(rep["notes"])
    assert "metrics recomputed from predictions.csv" in notes
    assert "from_scratch/history.json is missing" in notes
    assert "skipped.csv missing" in html
    assert np.isfinite(rep["strategies"]["fine_tuning"]["sensitivity"])
    # Without summary.json the strategies are found from their folders.
    (run / "summary.json").unlink()
    html = write_report(run).read_text()
    assert "summary.json is missing" in html
    rep = json.loads((run / "report.json").read_text())
    assert set(rep["strategies"]) == {"fine_tuning", "from_scratch"}
    assert rep["paired"] and rep["paired"][0]["a"] == "fine_tuning"  # computed from predictions


def test_none_metrics_show_na(tmp_path: Path, fast_png: None) -> None:
    run = make_fake_run(tmp_path, ("fine_tuning",), n_test=30, n_val=20)
    path = run / "fine_tuning" / "metrics.json"
    m = json.loads(path.read_text())
    m["test"]["calibration"]["brier"] = None
    m["test"]["operating_point"]["f1"] = None
    path.write_text(json.dumps(m))
    html = write_report(run).read_text()
    assert re.search(r"<td>Brier score \(lower is better\)</td><td[^>]*>n/a</td>", html)
    assert re.search(r"<td>F1</td><td[^>]*>n/a</td>", html)


def test_load_run_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        load_run(tmp_path / "nope")


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


@pytest.fixture(scope="module")
def curves() -> dict:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    return {
        "good": (y, np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)),
        "weak": (y, np.clip(0.1 * y + rng.random(80) * 0.9, 0, 1)),
    }


def _histories() -> dict:
    rng = np.random.default_rng(0)
    return {
        n: _history(n, rng, QUALITY[n])
        for n in ("fine_tuning", "feature_extraction", "from_scratch")
    }


@pytest.mark.parametrize(
    "draw",
    [
        lambda c: plot_roc(c, {"good": (0.2, 0.8)}),
        lambda c: plot_roc(c, None, cis={"good": (0.7, 0.9)}),
        lambda c: plot_calibration(c),
        lambda c: plot_decision_curve(c),
        lambda c: plot_confusion({"good": [[30, 10], [5, 35]], "weak": [[20, 20], [15, 25]]}),
        lambda c: plot_learning_curves(_histories(), "epoch"),
        lambda c: plot_learning_curves(_histories(), "elapsed"),
        lambda c: plot_learning_curves(
            {"feature_extraction": _histories()["feature_extraction"]}, "elapsed"
        ),
        lambda c: plot_roc({}),
    ],
    ids=[
        "roc-op",
        "roc-ci",
        "calibration",
        "decision",
        "confusion",
        "lc-epoch",
        "lc-time",
        "lc-fe",
        "empty",
    ],
)
def test_plot_functions_return_figures_and_save_png(draw, curves: dict, tmp_path: Path) -> None:
    fig = draw(curves)
    assert isinstance(fig, Figure)
    out = save_figure(fig, tmp_path / "fig.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert _png_width(out) == 800


def test_plot_legends_carry_auroc_and_learning_signature(curves: dict) -> None:
    fig = plot_roc(curves, cis={"good": (0.61, 0.83)})
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(lbl.startswith("good: AUROC") and "(95% CI 0.610–0.830)" in lbl for lbl in labels)
    fig = plot_learning_curves(_histories(), "epoch")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("start" in lbl and "slope" in lbl and "asymptote" in lbl for lbl in labels)
    fe = "feature_extraction: no epochs; validation AUROC 0.840 (C = 1), trained in 5.0 s"
    assert fe in labels


def test_learning_curves_reject_unknown_axis() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'elapsed'"):
        plot_learning_curves(_histories(), x="elapsd")


def test_confusion_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="must be square"):
        plot_confusion({"bad": [[1, 2, 3], [4, 5, 6]]})


def test_empty_or_broken_run_folder_still_renders(tmp_path: Path, fast_png: None) -> None:
    html = write_report(tmp_path).read_text()
    assert "No strategy produced a test AUROC" in html and "summary.json is missing" in html
    run = make_fake_run(tmp_path / "x", ("fine_tuning",), n_test=20, n_val=20)
    (run / "fine_tuning" / "predictions.csv").write_text(
        "uid,split,label,p_a,p_b\nx,test,oops,0.1,0.9\n"
    )
    (run / "summary.json").write_text("{not json")
    html = write_report(run).read_text()
    assert "summary.json could not be read" in html
    assert "line 2: cannot parse the row" in html


def test_number_formatters_shared_by_report_and_app() -> None:
    from medtl.report import fci, fnum, fpct

    assert fnum(0.91234) == "0.912" and fnum(None) == "n/a" and fnum(float("nan")) == "n/a"
    assert fnum(float("inf")) == "∞"
    assert fci(0.9, 0.85, 0.95) == "0.900 (0.850–0.950)"
    assert fci(0.9, 0.85, 0.95, label="95% CI ") == "0.900 (95% CI 0.850–0.950)"
    assert fci(0.9, None, 0.95) == "0.900" and fci("x", 0.1, 0.2) == "n/a"
    assert fpct(0.873, 0.81, 0.92) == "87% (81–92%)"
    assert fpct(0.5) == "50%" and fpct(0.5, float("nan"), 0.6) == "50%" and fpct(None) == "n/a"


# -- issue 15: wording that is true, calibration, plots ---------------------------------------------
def test_large_gaps_are_flagged_either_way(tmp_path: Path, fast_png: None) -> None:
    run = make_fake_run(tmp_path, ("fine_tuning", "from_scratch"), val_auroc={"fine_tuning": 0.5})
    html = write_report(run).read_text()
    rep = json.loads((run / "report.json").read_text())
    ft = rep["strategies"]["fine_tuning"]
    assert ft["val_minus_test"] < -0.03 and ft["gap_flag"] == "understates"
    assert (
        f"{ft['val_minus_test']:+.3f} (within" not in html
        and "consistent"
        not in html.split("Fine-tuning: test AUROC is")[0].split("Validation − test")[-1]
    )
    assert "Fine-tuning: test AUROC is" in html and "test above validation" in html


def test_p_values_below_a_thousandth_are_written_so(binary_run: Path) -> None:
    rep = json.loads((binary_run / "report.json").read_text())
    tiny = [p for p in rep["paired"] if p["delong_p"] < 0.001]
    assert tiny, "the fabricated run should hold a clearly significant pair"
    html = (binary_run / "report.html").read_text()
    paired = html[html.index('id="paired"') :]
    assert "&lt; 0.001" in paired and ">0.000<" not in paired and "p = 0.000" not in html


def test_a_tie_is_called_a_tie() -> None:
    from medtl.report._content import paired_reading

    row = {"a": "fine_tuning", "b": "from_scratch", "diff": 0.0002, "auc_a": 0.667, "low": -0.5,
           "high": 0.5, "p": 1.0, "alpha": 0.05, "mcnemar_p": float("nan"), "multiclass": False,
           "metric": "AUROC", "test": "DeLong"}  # fmt: skip
    text = paired_reading(row)
    assert (
        text.startswith("Fine-tuning and From scratch tie on AUROC (0.667)") and "ahead" not in text
    )


def test_feature_extraction_has_no_epochs_and_legend_matches_table(binary_run: Path) -> None:
    rep = json.loads((binary_run / "report.json").read_text())
    fe = rep["strategies"]["feature_extraction"]
    assert fe["epochless"] and fe["epochs_run"] is None
    assert fe["learning"]["best_epoch"] is None and fe["learning"]["setting"] == "C = 1"
    assert fe["learning"]["asymptote"] == fe["val_auroc"]
    html = (binary_run / "report.html").read_text()
    assert "none: features extracted once" in html and "kept C = 1" in html
    fig = plot_learning_curves(_histories(), "elapsed", kept={"feature_extraction": (0.796, 53.7)})
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert (
        "feature_extraction: no epochs; validation AUROC 0.796 (C = 1), trained in 53.7 s" in labels
    )


def test_one_epoch_run_gets_whole_epoch_ticks() -> None:
    fig = plot_learning_curves({"Fine-tuning": [{"epoch": 1, "val_auroc": 0.8, "elapsed": 3.0}]})
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.5, 1.5)
    ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 1.5]
    assert ticks == [1.0]
    assert any("one epoch, no slope" in t.get_text() for t in fig.legends[0].get_texts())


def test_calibration_and_decision_curve_at_deployment_prevalence(binary_run: Path) -> None:
    rep = json.loads((binary_run / "report.json").read_text())
    ft = rep["strategies"]["fine_tuning"]
    assert ft["calibration_slope_low"] < ft["calibration_slope"] < ft["calibration_slope_high"]
    assert ft["ece_bins"] == 4  # 120 test images: about 30 per bin
    assert ft["decision_prevalence"] == pytest.approx(0.1)
    html = (binary_run / "report.html").read_text()
    assert "Calibration slope" in html and "Calibration intercept" in html
    assert "at the deployment prevalence (10.0%)" in html
    fig = plot_decision_curve({"m": ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])}, prevalence=0.1)
    assert any("deployment prevalence 10.0%" in t.get_text() for t in fig.legends[0].get_texts())


def test_checklist_rows_are_sentences_without_paths(binary_run: Path) -> None:
    rep = json.loads((binary_run / "report.json").read_text())
    items = {c["item"].split(" (")[0]: c["content"] for c in rep["checklist"]}
    training = items["Training details"]
    assert (
        "AdamW" in training
        and "one-cycle" in training
        and "early stopping after 3 epochs" in training
    )
    assert "Feature extraction: backbone frozen" in training and "kept C = 1" in training
    assert (
        "=" not in items["Data partitioning"]
        and "15% of images held out" in items["Data partitioning"]
    )
    html = (binary_run / "report.html").read_text()
    assert "jane.doe" not in html and "jane.doe" not in (binary_run / "report.json").read_text()
    assert "<td>Location</td>" not in html
    assert "fine_tuning" not in re.sub(
        r'(id|href|alt)="[^"]*"', "", html.split('id="checklist"')[1]
    )


# -- issue 13: multi-class runs get CIs and paired tests ---------------------------------------------
def test_multiclass_report_has_per_class_cis_and_a_paired_test(
    tmp_path: Path, fast_png: None
) -> None:
    run = make_fake_run(tmp_path, ("fine_tuning", "from_scratch"), classes=("a", "b", "c"))
    html = write_report(run).read_text()
    rep = json.loads((run / "report.json").read_text())
    ft = rep["strategies"]["fine_tuning"]
    assert ft["test_auroc_low"] < ft["test_auroc"] < ft["test_auroc_high"]
    assert all(lo < ft["per_class_auroc"][c] < hi for c, (lo, hi) in ft["per_class_ci"].items())
    (pair,) = rep["paired"]
    assert pair["multiclass"] and pair["test"] == "paired bootstrap"
    assert pair["diff"] > 0 and pair["boot_low"] > 0  # fine-tuning is far better in the fabrication
    assert set(pair["per_class"]) == {"a", "b", "c"}
    assert "Macro (paired bootstrap)" in html and "Test macro AUROC (95% bootstrap CI)" in html
    assert "Fine-tuning had the highest test macro AUROC" in html


def test_runs_give_multiclass_metrics_a_ci_and_pairs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medtl import runs

    run = make_fake_run(tmp_path, ("fine_tuning", "from_scratch"), classes=("a", "b", "c"))
    preds = load_run(run).strategies["fine_tuning"].predictions
    yt, pt = preds.subset("test")
    yv, pv = preds.subset("val")
    cfg = SimpleNamespace(metrics=SimpleNamespace(), train=SimpleNamespace(seed=3))
    m = runs.evaluate_probabilities(yv, pv, yt, pt, cfg, class_names=["a", "b", "c"])
    auc, ci = runs.auroc_of(m, "test")
    assert ci is not None and ci[0] < auc < ci[1]
    assert m["test"]["multiclass_auroc"]["macro"] == pytest.approx(auc)
    assert set(m["test"]["multiclass"]["per_class"]) == {"a", "b", "c"}
    assert runs.evaluate_probabilities(yv, pv, yt, pt, cfg, class_names=["a", "b", "c"]) == m
    summary = json.loads((run / "summary.json").read_text())
    (pair,) = runs.paired_comparisons(run, summary, seed=0)
    assert pair["a"] == "fine_tuning" and pair["bootstrap"]["low"] > 0
    assert pair["summary"].startswith("Fine-tuning's macro AUROC is higher than From scratch's")


def test_training_details_say_which_stages_stayed_frozen() -> None:
    from medtl.report._cards import _network_text

    p = dict(PARAMS["fine_tuning"], lr=3e-4, backbone_lr_ratio=0.3)
    frozen = _network_text("fine_tuning", {**p, "frozen_stages_run": ["conv_stem", "bn1"]}, [], 5)
    assert "the first 2 backbone stages (conv_stem, bn1) kept at their pretrained weights" in frozen
    assert "every layer trained" in _network_text(
        "fine_tuning", {**p, "frozen_stages_run": []}, [], 5
    )
    old = _network_text("fine_tuning", p, [], 5)  # a model folder that did not record it
    assert "stages" not in old and "every layer" not in old
