"""Batch evaluation of saved models on datasets, and plain prediction on files.

``evaluate`` writes one table (CSV + Markdown), one row per model x dataset, with every clinical metric and
its CI. Each finished row is stored as it completes, so an interrupted batch resumes without recomputing.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medtl._fileio import atomic_write_json, atomic_write_text
from medtl.data._types import SkippedFile
from medtl.errors import ConfigError

log = logging.getLogger(__name__)

COLUMNS = [
    "model",
    "strategy",
    "dataset",
    "split",
    "n",
    "n_pos",
    "prevalence",
    "auroc",
    "auroc_low",
    "auroc_high",
    "auprc",
    "threshold",
    "threshold_source",
    "sensitivity",
    "sens_low",
    "sens_high",
    "specificity",
    "spec_low",
    "spec_high",
    "ppv",
    "npv",
    "ppv_deploy",
    "npv_deploy",
    "lr_pos",
    "lr_neg",
    "f1",
    "brier",
    "ece",
    "n_skipped",
]


def find_models(paths: list[str]) -> list[Path]:
    """Expand model folders and run folders (every ``*/model`` inside) into model folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "model.json").exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(m.parent for m in p.glob("*/model/model.json"))
            if not found:
                raise ConfigError(
                    f"{p} holds no saved model (no model.json, no */model/model.json)."
                )
            out.extend(found)
        else:
            raise ConfigError(f"Model path {str(p)!r} does not exist.")
    return out


def _training_threshold(model_dir: Path) -> float | None:
    m = model_dir.parent / "metrics.json"
    if m.exists():
        t = json.loads(m.read_text()).get("threshold")
        return None if t is None else float(t)
    return None


def _row_key(model_dir: Path, dataset: str, split: str, threshold: Any, prevalence: Any) -> str:
    w = model_dir / "model.safetensors"
    stat = w.stat()
    text = f"{model_dir.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{Path(dataset).resolve()}|{split}|{threshold}|{prevalence}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _get(d: dict, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def evaluate(
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    *,
    batch_file: str | None = None,
    out: str = "evaluation",
    split: str = "all",
    threshold: float | None = None,
    prevalence: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model on every dataset; returns {"rows", "csv", "markdown"}.

    Args:
        models: model folders or run folders.
        datasets: labelled datasets (any source ``load_dataset`` reads), e.g. an external test site.
        batch_file: YAML with keys ``models``, ``datasets`` and optional ``out``, ``split``, ``threshold``,
            ``prevalence`` (arguments given here take precedence over the file).
        split: ``all`` (every image of the dataset) or one of ``train``/``val``/``test``.
        threshold: operating threshold; default is the one chosen on validation at training time.
        prevalence: deployment prevalence for PPV/NPV.

    Example:
        >>> medtl.evaluate(["runs/a"], ["site_b/"], out="eval")["csv"]
    """
    from tqdm.auto import tqdm

    from medtl._options import look_up_option

    if batch_file:
        import yaml

        spec = yaml.safe_load(Path(batch_file).read_text()) or {}
        unknown = set(spec) - {"models", "datasets", "out", "split", "threshold", "prevalence"}
        if unknown:
            raise ConfigError(f"Unknown field(s) {sorted(unknown)} in batch file {batch_file}.")
        models = (models or []) + list(spec.get("models", []))
        datasets = (datasets or []) + list(spec.get("datasets", []))
        out = spec.get("out", out) if out == "evaluation" else out
        split = spec.get("split", split)
        threshold = threshold if threshold is not None else spec.get("threshold")
        prevalence = prevalence if prevalence is not None else spec.get("prevalence")
    look_up_option("split", split, ["all", "train", "val", "test"])
    if not models or not datasets:
        raise ConfigError(
            "evaluate needs at least one model and one dataset (--data or a --batch file)."
        )
    model_dirs = find_models(list(models))
    out_dir = Path(out)
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)
    jobs = [(m, d) for d in datasets for m in model_dirs]
    rows = []
    for m, d in tqdm(jobs, desc="evaluate", disable=not progress):
        key = _row_key(m, d, split, threshold, prevalence)
        row_file = out_dir / "rows" / f"{key}.json"
        if row_file.exists():
            rows.append(json.loads(row_file.read_text()))
            continue
        row = _evaluate_one(m, d, split, threshold, prevalence, out_dir / ".cache", progress)
        atomic_write_json(row_file, row)
        rows.append(row)
    csv_path = out_dir / "evaluation.csv"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    atomic_write_text(csv_path, buf.getvalue())
    md = _markdown(rows)
    atomic_write_text(out_dir / "evaluation.md", md)
    return {"rows": rows, "csv": str(csv_path), "markdown": md}


def _evaluate_one(
    model_dir: Path,
    dataset: str,
    split: str,
    threshold: float | None,
    prevalence: float | None,
    cache: Path,
    progress: bool,
) -> dict[str, Any]:
    from medtl.data import load_dataset, prepare_images
    from medtl.metrics import clinical_report
    from medtl.strategies import load_model

    est = load_model(model_dir)
    frac = 0.0 if split == "all" else 0.15
    ds = load_dataset(
        dataset, val_fraction=frac, test_fraction=frac, min_per_class=1, progress=progress
    )
    if set(ds.classes) != set(est.classes_):
        raise ConfigError(
            f"Dataset {dataset} has classes {ds.classes} but model {model_dir} was trained on "
            f"{est.classes_}. Name the class folders like the training data."
        )
    remap = {i: est.classes_.index(c) for i, c in enumerate(ds.classes)}  # match classes by name
    samples = ds.samples if split == "all" else ds.split(split)
    samples = [dataclasses.replace(s, label=remap[s.label]) for s in samples]
    images = prepare_images(
        samples,
        list(est.classes_),
        size=est.image_size_,
        channels=1,
        cache_dir=cache / "images",
        progress=progress,
    )
    proba = est.predict_proba(images, progress=progress)
    t = threshold if threshold is not None else _training_threshold(model_dir)
    source = (
        "given"
        if threshold is not None
        else ("validation (training run)" if t is not None else "0.5 default")
    )
    rep = clinical_report(
        images.labels,
        proba[:, 1],
        rule="fixed",
        target=0.5 if t is None else t,
        prevalence=prevalence,
    ).to_dict()
    op = rep.get("operating_point", {})
    return {
        "model": str(model_dir),
        "strategy": est.name,
        "dataset": str(dataset),
        "split": split,
        "n": len(images),
        "n_pos": int((images.labels == 1).sum()),
        "prevalence": float(np.mean(images.labels == 1)) if len(images) else None,
        "auroc": _get(rep, "auroc", "auroc"),
        "auroc_low": _get(rep, "auroc", "low"),
        "auroc_high": _get(rep, "auroc", "high"),
        "auprc": rep.get("auprc"),
        "threshold": 0.5 if t is None else t,
        "threshold_source": source,
        "sensitivity": _get(op, "sensitivity"),
        "sens_low": _first(_get(op, "sensitivity_ci")),
        "sens_high": _second(_get(op, "sensitivity_ci")),
        "specificity": _get(op, "specificity"),
        "spec_low": _first(_get(op, "specificity_ci")),
        "spec_high": _second(_get(op, "specificity_ci")),
        "ppv": _get(op, "ppv"),
        "npv": _get(op, "npv"),
        "ppv_deploy": _get(op, "ppv_at_prevalence"),
        "npv_deploy": _get(op, "npv_at_prevalence"),
        "lr_pos": _get(op, "lr_pos"),
        "lr_neg": _get(op, "lr_neg"),
        "f1": _get(op, "f1"),
        "brier": _get(rep, "calibration", "brier"),
        "ece": _get(rep, "calibration", "ece"),
        "n_skipped": len(ds.skipped) + len(images.skipped),
    }


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list | tuple) and x else None


def _second(x: Any) -> Any:
    return x[1] if isinstance(x, list | tuple) and len(x) > 1 else None


def _markdown(rows: list[dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    lines = [
        "| model | dataset | n | AUROC (95% CI) | sensitivity (95% CI) | specificity (95% CI) | PPV | NPV | threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['n']} | {f(r['auroc'])} ({f(r['auroc_low'])}–{f(r['auroc_high'])}) "
            f"| {f(r['sensitivity'])} ({f(r['sens_low'])}–{f(r['sens_high'])}) "
            f"| {f(r['specificity'])} ({f(r['spec_low'])}–{f(r['spec_high'])}) | {f(r['ppv'])} | {f(r['npv'])} "
            f"| {f(r['threshold'])} |"
        )
    return "\n".join(lines) + "\n"


def predict(
    model_dir: str, paths: list[str], *, out: str | None = "predictions.csv", progress: bool = True
) -> dict[str, Any]:
    """Predict class probabilities for image files and folders (recursively); writes a CSV.

    Returns {"n", "out", "rows", "skipped"}; unreadable files are listed in ``skipped`` with a reason.
    """
    from medtl.data import prepare_images
    from medtl.data._files import unlabelled_samples
    from medtl.strategies import load_model

    est = load_model(model_dir)
    samples = unlabelled_samples(paths)
    images = prepare_images(
        samples, est.classes_, size=est.image_size_, channels=1, progress=progress
    )
    proba = est.predict_proba(images) if len(images) else np.zeros((0, len(est.classes_)))
    by_uid = {s.uid: s.path for s in samples}
    rows = []
    for uid, pr in zip(images.uids, proba):
        rows.append(
            {
                "path": by_uid[uid],
                **{f"p_{c}": float(v) for c, v in zip(est.classes_, pr)},
                "predicted": est.classes_[int(np.argmax(pr))],
            }
        )
    if out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", *[f"p_{c}" for c in est.classes_], "predicted"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
        atomic_write_text(out, buf.getvalue())
    skipped: list[SkippedFile] = list(images.skipped)
    return {"n": len(rows), "out": out, "rows": rows, "skipped": skipped}
