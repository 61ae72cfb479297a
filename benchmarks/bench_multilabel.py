"""Multi-label feature extraction end to end: ``medtl compare`` against the plain script a user writes.

Both sides run, back to back in this one benchmark run, as fresh processes on the same images and
the same split (a manifest with a ``split`` column, carved patient-grouped and stratified over the
findings with medtl's iterative stratification, seed 0):

- plain: decode each PNG with PIL, resize to 224, grey to three channels, normalise, fp32 forward of
  the same EfficientNet-Lite0 ImageNet weights in batches of 32 under ``no_grad``, then one
  ``LogisticRegression(C=0.01, class_weight="balanced")`` per finding on train + validation.
- medtl: ``medtl compare --strategies feature_extraction`` with empty caches (the whole product:
  listing and hashing files, decoding, extraction, C chosen per finding on validation then refit
  on train + validation, metrics with bootstrap intervals, report and plots).

Both are scored the same way, here, from their test probabilities: the macro AUROC over the
findings with at least 5 positives and 5 negatives in the test split (medtl's scorable rule).
Prints the ratio plain / medtl of the wall times (> 1: medtl is faster) and both macro AUROCs.
Not a test: nothing here passes or fails.

    python benchmarks/bench_multilabel.py                     # the NIH ChestX-ray14 subset (598 images)
    python benchmarks/bench_multilabel.py --out benchmarks/results/bench_multilabel.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NIH = ROOT.parent / "shared" / "data" / "nih_cxr14_multilabel"
MIN_SCORABLE = 5

PLAIN = r"""
import csv, json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import numpy as np, torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from medtl.backbones import create_backbone
ph = {"imports": time.perf_counter() - t0}
manifest, findings, out = Path(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
rows = list(csv.DictReader(open(manifest)))
t = time.perf_counter()
model, cfg = create_backbone("efficientnet_lite0.in1k", num_classes=0, pretrained=True)
model.eval()
mean = torch.tensor(cfg.mean).view(1, 3, 1, 1); std = torch.tensor(cfg.std).view(1, 3, 1, 1)
ph["model"] = time.perf_counter() - t
t = time.perf_counter()
feats = []
with torch.no_grad():
    for i in range(0, len(rows), 32):
        batch = []
        for r in rows[i:i + 32]:
            im = Image.open(r["path"]).convert("L").resize((224, 224), Image.BILINEAR)
            batch.append(np.repeat(np.asarray(im, np.float32)[None] / 255.0, 3, 0))
        x = (torch.from_numpy(np.stack(batch)) - mean) / std
        feats.append(model(x).numpy())
z = np.concatenate(feats)
ph["decode_and_extract"] = time.perf_counter() - t
t = time.perf_counter()
fit = np.array([r["split"] in ("train", "val") for r in rows])
test = np.array([r["split"] == "test" for r in rows])
proba = np.full((len(rows), len(findings)), np.nan)
for k, f in enumerate(findings):
    y = np.array([float(r[f]) if r[f] != "" else np.nan for r in rows])
    m = fit & ~np.isnan(y)
    clf = LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000).fit(z[m], y[m])
    proba[:, k] = clf.predict_proba(z)[:, 1]
ph["heads"] = time.perf_counter() - t
np.save(out, proba[test])
print(json.dumps({"phases": ph}))
"""


def _carve_manifest(src: Path, dest: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A copy of ``src`` with absolute paths and a ``split`` column (70/15/15, patient-grouped,
    stratified over the findings)."""
    from medtl.data import iterative_carve

    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = {"path", "patient_id", "sex", "age", "view", "split"}
    findings = [c for c in rows[0] if c not in meta]
    y = np.array([[float(r[f]) for f in findings] for r in rows])
    groups = np.array([r["patient_id"] for r in rows])
    test = iterative_carve(y, groups, 0.15, seed=0)
    rest = np.flatnonzero(~test)
    val_rest = iterative_carve(y[rest], groups[rest], 0.15 / 0.85, seed=1)
    split = np.array(["train"] * len(rows), dtype=object)
    split[test] = "test"
    split[rest[val_rest]] = "val"
    for r, s in zip(rows, split):
        r["path"] = str((src.parent / r["path"]).resolve())
        r["split"] = str(s)
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return findings, rows


def _macro(y: np.ndarray, p: np.ndarray, findings: list[str]) -> tuple[float, list[str]]:
    from sklearn.metrics import roc_auc_score

    aucs, used = [], []
    for k, f in enumerate(findings):
        m = ~np.isnan(y[:, k])
        pos = int((y[m, k] == 1).sum())
        if pos >= MIN_SCORABLE and int(m.sum()) - pos >= MIN_SCORABLE:
            aucs.append(roc_auc_score(y[m, k], p[m, k]))
            used.append(f)
    return float(np.mean(aucs)), used


def _medtl_test_proba(run: Path, findings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    with open(run / "feature_extraction" / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    y = np.array(
        [[float(r[f"y_{f}"]) if r[f"y_{f}"] != "" else np.nan for f in findings] for r in rows]
    )
    return y, np.array([[float(r[f"p_{f}"]) for f in findings] for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(NIH / "labels.csv"))
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    src = Path(args.data)
    if not src.is_file():
        sys.exit(f"{src} not found (the NIH subset lives in ../shared/data/nih_cxr14_multilabel)")
    work = Path(tempfile.mkdtemp(prefix="bench_ml_"))
    manifest = work / "manifest.csv"
    findings, rows = _carve_manifest(src, manifest)
    y_test = np.array(
        [[float(r[f]) for f in findings] for r in rows if r["split"] == "test"], dtype=float
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PLAIN, str(manifest), ",".join(findings), str(work / "plain.npy")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    plain_s = time.perf_counter() - t
    plain_phases = json.loads(out.stdout.strip().splitlines()[-1])["phases"]
    p_plain = np.load(work / "plain.npy")

    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "medtl", "compare", "--data", str(manifest), "--out",
         str(work / "run"), "--strategies", "feature_extraction", "--quiet"],
        capture_output=True, text=True, env=env, check=True, cwd=work,  # empty caches in work/
    )  # fmt: skip
    medtl_s = time.perf_counter() - t
    y_medtl, p_medtl = _medtl_test_proba(work / "run", findings)
    assert len(y_medtl) == len(y_test), "the two sides scored different test splits"
    # each side with its own row order; the same images and labels (counts checked)
    assert np.array_equal(np.nansum(y_medtl, 0), np.nansum(y_test, 0))
    macro_plain, used = _macro(y_test, p_plain, findings)
    macro_medtl, used_m = _macro(y_medtl, p_medtl, findings)
    assert used == used_m
    res = {
        "images": len(rows),
        "findings": len(findings),
        "scorable_on_test": used,
        "plain_seconds": round(plain_s, 1),
        "medtl_seconds": round(medtl_s, 1),
        "ratio_plain_over_medtl": round(plain_s / medtl_s, 2),
        "plain_phases": {k: round(v, 1) for k, v in plain_phases.items()},
        "macro_auroc_plain": round(macro_plain, 4),
        "macro_auroc_medtl": round(macro_medtl, 4),
        "macro_difference_medtl_minus_plain": round(macro_medtl - macro_plain, 4),
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
