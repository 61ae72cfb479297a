"""What a run writes besides the models: predictions, metrics, paired tests, gap flags, environment.

Split out of ``medtl.experiment`` so that the runner reads as the sequence of steps it performs.
"""

from __future__ import annotations

import csv
import io
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from medtl.config import ExperimentConfig
from medtl.data._types import PreparedImages


def _predictions_csv(
    parts: list[tuple[str, PreparedImages, np.ndarray]], classes: list[str]
) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["uid", "split", "label", *[f"p_{c}" for c in classes]])
    for split, images, proba in parts:
        for uid, lab, row in zip(images.uids, images.labels, proba):
            # shortest exact float text, not 6 decimals: p = 0.9999999 and 0.99999999 must not tie
            w.writerow([uid, split, int(lab), *[repr(float(x)) for x in row]])
    return buf.getvalue()


def evaluate_probabilities(
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    cfg: ExperimentConfig,
) -> dict[str, Any]:
    """Clinical metrics on test (threshold chosen on validation) and on validation."""
    from medtl.metrics import clinical_report, multiclass_auroc

    m = cfg.metrics
    if p_test.shape[1] == 2:

        def report(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
            # the operating threshold is always chosen on validation, for both splits' numbers
            return clinical_report(
                y, p[:, 1], y_val=y_val, p_val=p_val[:, 1], rule=m.threshold_rule,
                target=m.target, prevalence=m.prevalence, ci_method=m.ci_method,
                seed=cfg.train.seed,
            ).to_dict()  # fmt: skip

        test, val = report(y_test, p_test), report(y_val, p_val)
        return {"test": test, "val": val, "threshold": test.get("threshold")}
    return {
        "test": {"multiclass_auroc": multiclass_auroc(y_test, p_test)},
        "val": {"multiclass_auroc": multiclass_auroc(y_val, p_val)},
        "threshold": None,
    }


def _auroc_of(metrics: dict[str, Any], split: str) -> tuple[float, list[float] | None]:
    part = metrics.get(split, {})
    if "auroc" in part and isinstance(part["auroc"], dict):
        a = part["auroc"]
        return _num(a.get("auroc")), [_num(a.get("low")), _num(a.get("high"))]
    if "multiclass_auroc" in part:
        return _num(part["multiclass_auroc"].get("macro")), None
    return float("nan"), None


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _dataset_summary(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("root", "source", "classes", "counts", "n_skipped", "patient_ids", "imbalance_ratio")
    out = {k: s[k] for k in keep if k in s}
    out.setdefault("n_skipped", len(s.get("skipped", [])))
    return out


def _environment() -> dict[str, str]:
    import torch

    import medtl

    return {
        "medtl": medtl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def _read_test_probs(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = list(csv.DictReader((run_dir / name / "predictions.csv").open()))
    rows = [r for r in rows if r["split"] == "test"]
    pcols = [c for c in rows[0] if c.startswith("p_")] if rows else []
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([[float(r[c]) for c in pcols] for r in rows])
    return y, p, [r["uid"] for r in rows]


def _paired(run_dir: Path, cfg: ExperimentConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired tests on the shared test images: every pair of finished binary strategies."""
    from medtl.metrics import compare_paired

    done = [n for n, r in summary["strategies"].items() if r.get("status") == "done"]
    out = []
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            ya, pa, ua = _read_test_probs(run_dir, a)
            _yb, pb, ub = _read_test_probs(run_dir, b)
            if ua != ub or pa.shape[1] != 2:
                continue
            res = compare_paired(
                ya,
                pa[:, 1],
                pb[:, 1],
                threshold_a=_num(summary["strategies"][a].get("threshold") or 0.5),
                threshold_b=_num(summary["strategies"][b].get("threshold") or 0.5),
                seed=cfg.train.seed,
                name_a=a,
                name_b=b,
            )
            out.append({"a": a, "b": b, **res})
    return out


def _flag_gaps(summary: dict[str, Any], tol: float = 0.03) -> None:
    for name, r in summary["strategies"].items():
        gap = r.get("val_minus_test")
        if gap is not None and not math.isnan(gap) and gap > tol:
            summary["notes"].append(
                f"Validation overstates {name} by {gap:.2f} AUROC on the test data "
                "(the test set may be shifted from the training site)."
            )
