"""The clinician app's logic, without Streamlit: data input, safety checks, tables and predictions.

Everything the page file (``medtl_app.py``) shows is computed here by small functions over medtl's
public API, so it can be tested without a browser. All files the app writes go under one work folder
(``work_dir()``; default ``./medtl_app_work``, or the ``MEDTL_APP_WORK`` environment variable, which is
read only here, in the app layer).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _app_inputs import (  # noqa: F401  (re-exported for the page)
    ENV_WORK,
    MAX_IMAGE_MB,
    MAX_ZIP_MB,
    AppInputError,
    check_size,
    demo_dataset,
    extract_zip,
    read_single,
    safe_meta,
    save_single_upload,
    server_folder,
    work_dir,
)

from medtl.errors import MedtlError
from medtl.report import fci, fnum, fpct

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0.in1k"


def strategy_label(name: str, *, long: bool = False) -> str:
    """Human name of a strategy (owned by medtl.strategies); ``long`` adds what it trains."""
    from medtl.strategies import strategy_description
    from medtl.strategies import strategy_label as label

    return f"{label(name)} ({strategy_description(name)})" if long else label(name)


# -- data card ------------------------------------------------------------------------------------


@dataclass
class DataView:
    """What the Data section shows."""

    path: Path
    summary: dict[str, Any]
    examples: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (class, image in [0, 1])
    skipped: list[dict[str, str]] = field(default_factory=list)


def describe_dataset(path: str | Path, *, examples_per_class: int = 2) -> DataView:
    """Load a dataset, summarise it (data card facts) and read a few example images correctly."""
    from medtl.data import load_dataset, summarise_dataset
    from medtl.errors import ImageReadError
    from medtl.io import read_image

    try:
        from medtl.experiment import _phantom_manifest

        ds = load_dataset(_phantom_manifest(str(path)), min_per_class=2, progress=False)
    except MedtlError as exc:
        raise AppInputError(f"This dataset cannot be used: {exc}") from exc
    summary = summarise_dataset(ds, max_files=16)
    examples: list[tuple[str, np.ndarray]] = []
    if ds.source != "npz":
        for ci, cname in enumerate(ds.classes):
            for s in [s for s in ds.samples if s.label == ci][:examples_per_class]:
                try:
                    img, _meta = read_image(s.path)  # windowed, MONOCHROME1 inverted
                except ImageReadError:
                    continue
                examples.append((cname, img))
    return DataView(Path(path), summary, examples, list(summary.get("skipped", [])))


def counts_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows 'class, train, val, test, total' for the data card."""
    counts = summary.get("counts", {})
    rows = []
    for cname in summary.get("classes", []):
        row: dict[str, Any] = {"class": cname}
        for sp in ("train", "val", "test", "unassigned"):
            if sp in counts:
                row[sp] = counts[sp].get(cname, 0)
        row["total"] = summary.get("class_totals", {}).get(cname, 0)
        rows.append(row)
    return rows


# -- advice --------------------------------------------------------------------------------------


def get_advice(data_path: str | Path, work: Path, *, backbone: str, image_size: int | None) -> Any:
    """The advisor's recommendation, or raise AppInputError when the advisor is not available."""
    try:
        from medtl.advisor import advise
    except ImportError as exc:
        raise AppInputError(
            "The advisor is not available in this installation of medtl yet; you can still run "
            "the comparison below to see which strategy works best on your data."
        ) from exc
    return advise(
        data_path,
        backbone=backbone,
        image_size=image_size,
        budget_minutes=30,
        cache_dir=work / "cache",
        progress=False,
    )


def advice_rows(advice: Any) -> list[dict[str, Any]]:
    """Per-strategy rows: expected AUROC range and estimated minutes."""
    exp = getattr(advice, "expected_auroc", {}) or {}
    mins = getattr(advice, "estimated_minutes", {}) or {}
    rows = []
    for name in sorted(set(exp) | set(mins)):
        lo_hi = exp.get(name)
        rows.append(
            {
                "strategy": strategy_label(name, long=True),
                "expected AUROC": f"{lo_hi[0]:.2f} – {lo_hi[1]:.2f}" if lo_hi else "n/a",
                "estimated time": _minutes(mins.get(name)),
            }
        )
    return rows


def _minutes(m: Any) -> str:
    if m is None or not math.isfinite(float(m)):
        return "n/a"
    return f"{float(m) * 60:.0f} s" if float(m) < 1 else f"{float(m):.1f} min"


# -- comparison -----------------------------------------------------------------------------------


def build_config(
    data_path: str | Path,
    work: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    epochs: int = 3,
    image_size: int = 128,
    strategies: list[str] | None = None,
    batch_size: int = 32,
    run_name: str | None = None,
    positive_class: str | None = None,
) -> Any:
    """An ExperimentConfig whose run folder and caches are inside the work folder."""
    from medtl.config import config_from_dict

    name = run_name or time.strftime("run_%Y%m%d_%H%M%S")
    return config_from_dict(
        {
            "name": name,
            "data": {
                "path": str(data_path),
                "min_per_class": 2,
                "positive_class": positive_class,
            },
            "model": {"backbone": backbone, "image_size": int(image_size)},
            "strategies": list(strategies or ["feature_extraction", "fine_tuning"]),
            "train": {"epochs": int(epochs), "batch_size": int(batch_size), "seed": 0},
            "output": {"out": str(work / "runs" / name), "cache_dir": str(work / "cache")},
        }
    )


def list_runs(work: Path) -> list[Path]:
    """Run folders under ``work/runs`` that have a summary, newest first."""
    runs = [p.parent for p in (work / "runs").glob("*/summary.json")]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def strategy_rows(summary: dict[str, Any], gap_tol: float = 0.03) -> list[dict[str, Any]]:
    """One row per strategy: AUROC with CI, validation gap (flagged), time and learning-curve shape."""
    rows = []
    for name, r in (summary.get("strategies") or {}).items():
        row: dict[str, Any] = {
            "strategy": strategy_label(name, long=True),
            "status": r.get("status"),
        }
        if r.get("status") != "done":
            row["note"] = str(r.get("error") or "")[:200]
            rows.append(row)
            continue
        gap = r.get("val_minus_test")
        flag = gap is not None and math.isfinite(float(gap)) and float(gap) > gap_tol
        row.update(
            {
                "test AUROC": fci(
                    r.get("test_auroc"), *(r.get("test_auroc_ci") or (None, None)), label="95% CI "
                ),
                "validation AUROC": fnum(r.get("val_auroc")),
                "validation − test": (
                    f"{float(gap):+.3f}" + (" ⚠ overstated" if flag else "")
                    if gap is not None and math.isfinite(float(gap))
                    else "n/a"
                ),
                "training time": f"{float(r.get('train_seconds') or 0):.1f} s",
                "start": fnum(r.get("start")),
                "slope (per epoch)": fnum(r.get("slope")),
                "asymptote": fnum(r.get("asymptote")),
            }
        )
        rows.append(row)
    return rows


def gap_warnings(summary: dict[str, Any], gap_tol: float = 0.03) -> list[str]:
    """Plain sentences for strategies whose validation AUROC overstates test AUROC by > gap_tol."""
    out = []
    for name, r in (summary.get("strategies") or {}).items():
        gap = r.get("val_minus_test")
        ok = r.get("status") == "done" and gap is not None and math.isfinite(float(gap))
        if ok and float(gap) > gap_tol:
            out.append(
                f"{strategy_label(name, long=True)}: validation AUROC is {float(gap):.2f} higher "
                "than on the test images, so validation numbers are optimistic here (the test "
                "set may differ from the training data)."
            )
    return out


def paired_sentences(summary: dict[str, Any]) -> list[str]:
    """The paired test of each pair of strategies, in words."""
    out = []
    for pr in summary.get("paired") or []:
        text = pr.get("summary")
        if not text:
            continue
        from medtl.strategies import list_strategies

        for key in sorted(list_strategies(), key=len, reverse=True):  # partial_fine_tuning first
            text = text.replace(key, strategy_label(key))
        out.append(text)
    return out


def curves(run: Any, split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """strategy label -> (labels, P(positive)) of one split, for binary runs with predictions."""
    out = {}
    for name, st in run.strategies.items():
        if st.predictions is not None and st.predictions.proba.shape[1] == 2:
            y, p = st.predictions.subset(split)
            if len(y):
                out[strategy_label(name)] = (y, p)
    return out


# -- operating point ------------------------------------------------------------------------------


def operating_points(
    run: Any,
    *,
    threshold: float | None = None,
    target_sensitivity: float | None = None,
    prevalence: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Test-set operating point of every binary strategy, from the stored predictions only.

    Either a common ``threshold`` or a ``target_sensitivity`` (each model's threshold is then chosen
    on its VALIDATION predictions, so the test numbers stay honest). PPV/NPV at ``prevalence`` get an
    approximate interval by plugging the Wilson bounds of sensitivity and specificity into Bayes'
    rule (hand-written: no library offers it; PPV and NPV both increase with sensitivity and
    specificity, so the bounds are monotone).
    """
    from medtl.metrics import choose_threshold, operating_point, ppv_npv_at_prevalence

    if (threshold is None) == (target_sensitivity is None):
        raise AppInputError("Give either a threshold or a target sensitivity.")
    out = {}
    for name, st in run.strategies.items():
        if st.predictions is None or st.predictions.proba.shape[1] != 2:
            continue
        y, p = st.predictions.subset("test")
        if not len(y):
            continue
        thr = threshold
        if thr is None:
            yv, pv = st.predictions.subset("val")
            thr = choose_threshold(yv, pv, rule="sensitivity", target=float(target_sensitivity))
        op = operating_point(y, p, float(thr), prevalence=prevalence)
        if prevalence is not None:
            lo = ppv_npv_at_prevalence(op["sensitivity_low"], op["specificity_low"], prevalence)
            hi = ppv_npv_at_prevalence(op["sensitivity_high"], op["specificity_high"], prevalence)
            op["ppv_at_prevalence_low"], op["ppv_at_prevalence_high"] = lo[0], hi[0]
            op["npv_at_prevalence_low"], op["npv_at_prevalence_high"] = lo[1], hi[1]
        out[name] = op
    return out


def operating_rows(ops: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A table (rows = measures, one column per model) with 95% CIs, in percent."""
    measures = [
        ("Threshold (probability)", lambda o: f"{o['threshold']:.3f}"),
        (
            "Sensitivity (cases caught)",
            lambda o: fpct(o["sensitivity"], o["sensitivity_low"], o["sensitivity_high"]),
        ),
        (
            "Specificity (normals cleared)",
            lambda o: fpct(o["specificity"], o["specificity_low"], o["specificity_high"]),
        ),
    ]
    if any(o.get("deployment_prevalence") for o in ops.values()):
        measures += [
            (
                "PPV at your prevalence",
                lambda o: fpct(
                    o["ppv_at_prevalence"],
                    o.get("ppv_at_prevalence_low"),
                    o.get("ppv_at_prevalence_high"),
                ),
            ),
            (
                "NPV at your prevalence",
                lambda o: fpct(
                    o["npv_at_prevalence"],
                    o.get("npv_at_prevalence_low"),
                    o.get("npv_at_prevalence_high"),
                ),
            ),
        ]
    measures += [
        ("PPV on the test set", lambda o: fpct(o["ppv"], o["ppv_low"], o["ppv_high"])),
        ("NPV on the test set", lambda o: fpct(o["npv"], o["npv_low"], o["npv_high"])),
        ("Missed cases (false negatives)", lambda o: str(o["fn"])),
        ("False alarms (false positives)", lambda o: str(o["fp"])),
    ]  # fmt: skip
    rows = []
    for label, fn in measures:
        row = {"measure": label}
        for name, op in ops.items():
            row[strategy_label(name)] = fn(op)
        rows.append(row)
    return rows


# -- single image ---------------------------------------------------------------------------------


def model_dirs(run_dir: Path) -> dict[str, Path]:
    """strategy -> saved model folder, for the finished strategies of a run."""
    return {
        d.name: d / "model"
        for d in sorted(Path(run_dir).iterdir())
        if d.is_dir() and (d / "model" / "model.json").exists()
    }


def predict_single(estimator: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, Grad-CAM heatmap for the positive class) of one image file."""
    from medtl.data import Sample, prepare_images
    from medtl.explain import grad_cam

    prep = prepare_images(
        [Sample(path=str(path), label=-1, uid="upload")],
        list(estimator.classes_),
        size=int(estimator.image_size_),
        channels=1,
        progress=False,
    )
    if len(prep) == 0:
        reason = prep.skipped[0].reason if prep.skipped else "unknown reason"
        raise AppInputError(f"The image could not be prepared for the model: {reason}")
    proba = estimator.predict_proba(prep)[0]
    heat = grad_cam(estimator, prep.pixels[0], class_index=min(1, len(proba) - 1))
    return proba, heat
