"""Does the measured advisor pick the winner, and do its predicted intervals hold? A development grid.

Cells: Kermany chest X-rays (``train/`` -> ``test/``; 50, 200, 1000, all training images) and the brain MRI
set (``Training/`` -> ``Testing/``, 4 classes; 100, 500, all; the test copies of byte-identical training
files are dropped before scoring, see that folder's README), x seeds (default 0 1 2). In every cell:

1. a stratified subsample of the training folder (the cell's size) is split 85/15 into train/val;
2. ``medtl.advise`` sees only that train+val (never the test folder) and predicts each strategy's AUROC
   at the cell's size with an interval, and picks;
3. feature extraction and fine-tuning (the default LP-FT recipe, ``--epochs``) are trained on the same
   train/val and scored on the test folder; the paired test is DeLong's for two classes and a paired
   bootstrap of the macro one-vs-rest AUROC for more.

Reported: agreement with the significant winner (p < 0.05), mean AUROC regret (best test AUROC minus the
pick's), coverage (how often each predicted interval contains the measured test AUROC) and sharpness (mean
interval width). Targets (issue 13): agreement >= 90%, regret <= 0.005, coverage >= 80% at width <= 0.08.
Constants are never tuned on these test splits.

Usage (the full grid is hours on a 2-core CPU; --smoke runs one small cell):
    python benchmarks/advisor_eval.py --datasets kermany brain --seeds 0 1 2
    python benchmarks/advisor_eval.py --smoke     # Kermany, 200 images, 64 px, seed 0, 3 epochs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = {
    "kermany": (
        "/work/shared/data/chest_xray_pneumonia_224",
        "train",
        "test",
        [50, 200, 1000, None],
    ),
    "brain": ("/work/shared/data/brain_tumor_mri", "Training", "Testing", [100, 500, None]),
}
log = logging.getLogger("advisor_eval")


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_cell_data(name: str, seed: int, n: int | None) -> tuple[Any, Any, dict[str, Any]]:
    """(train+val Dataset for the cell, test Dataset, notes) with test duplicates of training dropped."""
    from sklearn.model_selection import train_test_split

    from medtl.data import load_dataset
    from medtl.data._types import Dataset, Sample

    root, tr_dir, te_dir, _ = DATA[name]
    train = load_dataset(str(Path(root, tr_dir)), progress=False)
    test = load_dataset(str(Path(root, te_dir)), progress=False)
    if train.classes != test.classes:
        raise SystemExit(f"{name}: class folders differ: {train.classes} vs {test.classes}")
    samples = list(train.samples)
    labels = [s.label for s in samples]
    idx = np.arange(len(samples))
    if n is not None and n < len(samples):
        idx, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    sub = [samples[i] for i in sorted(idx)]
    tr, va = train_test_split(
        np.arange(len(sub)), test_size=0.15, stratify=[s.label for s in sub], random_state=seed
    )
    split = {int(i): "train" for i in tr} | {int(i): "val" for i in va}
    cell = Dataset(
        train.root,
        train.source,
        train.classes,
        [Sample(**{**s.__dict__, "split": split[i]}) for i, s in enumerate(sub)],
    )
    # drop test files whose bytes equal any file of the whole training folder (not just the cell)
    seen = {_sha(s.path) for s in samples}
    kept = [
        Sample(**{**s.__dict__, "split": "test"}) for s in test.samples if _sha(s.path) not in seen
    ]
    notes = {
        "test_files": len(test.samples),
        "test_dropped_duplicates": len(test.samples) - len(kept),
    }
    return cell, Dataset(test.root, test.source, test.classes, kept), notes


def paired_test(y: np.ndarray, p_fe: np.ndarray, p_ft: np.ndarray, seed: int) -> dict[str, Any]:
    """FT - FE on the test images: DeLong (two classes) or a paired bootstrap of macro AUROC."""
    if p_fe.shape[1] == 2:
        from medtl.metrics import delong_test

        d = delong_test(y, p_ft[:, 1], p_fe[:, 1])
        return {"method": "delong", "diff": d["diff"], "p_value": d["p_value"]}
    from medtl.advisor._curve import bootstrap_weights, paired_difference, weighted_auroc

    w = bootstrap_weights(len(y), 2000, np.random.default_rng(seed))
    d = paired_difference(weighted_auroc(y, p_ft, w), weighted_auroc(y, p_fe, w))
    return {"method": "bootstrap_macro", "diff": d["diff"], "p_value": d["p_value"]}


def run_cell(name: str, n: int | None, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from medtl.advisor import advise
    from medtl.advisor._curve import weighted_auroc
    from medtl.data import prepare_images
    from medtl.strategies import FeatureExtraction, FineTuning

    cell, test, notes = load_cell_data(name, seed, n)
    cache = Path(args.work) / "cache"
    t0 = time.perf_counter()
    advice = advise(
        cell,
        backbone=args.backbone,
        image_size=args.image_size,
        cache_dir=cache,
        seed=seed,
        progress=False,
        pilot_minutes=args.pilot_minutes,
        epochs=args.epochs,
    )
    advise_s = time.perf_counter() - t0

    def prep(samples: list[Any]) -> Any:
        return prepare_images(
            samples,
            cell.classes,
            size=args.image_size,
            channels=1,
            cache_dir=cache / "images",
            read_options={"window": "header"},
            progress=False,
        )

    tr, va, te = prep(cell.split("train")), prep(cell.split("val")), prep(test.samples)
    kw = {"backbone": args.backbone, "seed": seed, "cache_dir": str(cache), "progress": False}
    t0 = time.perf_counter()
    p_fe = FeatureExtraction(**kw).fit(tr, va).predict_proba(te)
    t1 = time.perf_counter()
    p_ft = FineTuning(epochs=args.epochs, **kw).fit(tr, va).predict_proba(te)
    t2 = time.perf_counter()
    y = np.asarray(te.labels)
    ones = np.ones((1, len(y)))
    aucs = {
        "feature_extraction": float(weighted_auroc(y, p_fe, ones)[0]),
        "fine_tuning": float(weighted_auroc(y, p_ft, ones)[0]),
    }
    pt = paired_test(y, p_fe, p_ft, seed)
    best = max(aucs, key=aucs.get)
    pick = advice.strategy
    covered = {
        s: bool(advice.expected_auroc[s][0] <= aucs[s] <= advice.expected_auroc[s][1]) for s in aucs
    }
    return {
        "dataset": name,
        "n": n or "all",
        "n_train_val": len(cell.samples),
        "seed": seed,
        **notes,
        "test_auroc": aucs,
        "paired": pt,
        "significant": bool(pt["p_value"] is not None and pt["p_value"] < 0.05),
        "best": best,
        "pick": pick,
        "confidence": advice.confidence,
        "regret": aucs[best] - aucs[pick],
        "predicted": advice.predicted_auroc,
        "interval": advice.expected_auroc,
        "covered": covered,
        "width": {s: advice.expected_auroc[s][1] - advice.expected_auroc[s][0] for s in aucs},
        "branch": advice.decision["branch"],
        "predicted_gain": advice.decision["predicted_gain"],
        "seconds": {"advise": advise_s, "fe": t1 - t0, "ft": t2 - t1},
        "advice_budget": advice.budget,
    }


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | FE test | FT test | FT-FE (p) | pick (conf) | FE pred [interval] | "
        "FT pred [interval] | regret | advise s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, p, i = r["test_auroc"], r["predicted"], r["interval"]
        lines.append(
            f"| {r['dataset']}_n{r['n']}_s{r['seed']} | {a['feature_extraction']:.3f} | "
            f"{a['fine_tuning']:.3f} | {r['paired']['diff']:+.3f} ({r['paired']['p_value']:.3f}) | "
            f"{r['pick']} ({r['confidence']}) | {p['feature_extraction']:.3f} "
            f"[{i['feature_extraction'][0]:.3f}, {i['feature_extraction'][1]:.3f}] | "
            f"{p['fine_tuning']:.3f} [{i['fine_tuning'][0]:.3f}, {i['fine_tuning'][1]:.3f}] | "
            f"{r['regret']:.3f} | {r['seconds']['advise']:.0f} |"
        )
    sig = [r for r in rows if r["significant"]]
    cov = [c for r in rows for c in r["covered"].values()]
    wid = [w for r in rows for w in r["width"].values()]
    lines += [
        "",
        f"- cells: {len(rows)}; with a significant winner: {len(sig)}; advisor picked it in "
        f"{sum(r['pick'] == r['best'] for r in sig)} of {len(sig)} (target >= 90%)",
        f"- mean AUROC regret: {np.mean([r['regret'] for r in rows]):.4f} (target <= 0.005)",
        f"- coverage: {np.mean(cov):.0%} of {len(cov)} intervals (target >= 80%); "
        f"sharpness (mean width): {np.mean(wid):.3f} (target <= 0.08)",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", nargs="*", default=["kermany", "brain"], choices=list(DATA))
    ap.add_argument("--sizes", nargs="*", type=int, help="override every dataset's sizes (0 = all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--backbone", default="efficientnet_lite0.in1k")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the real fine-tuning runs")
    ap.add_argument("--pilot-minutes", type=float, default=2.0)
    ap.add_argument("--smoke", action="store_true", help="kermany, 200 images, 64 px, 1 seed")
    ap.add_argument("--work", default="runs/advisor_eval")
    args = ap.parse_args()
    if args.smoke:
        args.datasets, args.sizes, args.seeds = ["kermany"], [200], [0]
        args.image_size, args.epochs = 64, 3
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("medtl", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.work) / f"advisor_eval{'_smoke' if args.smoke else ''}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    from medtl._fileio import atomic_write_json

    for name in args.datasets:
        if not Path(DATA[name][0]).is_dir():
            log.warning("%s: %s not found, skipped", name, DATA[name][0])
            continue
        sizes = [s or None for s in args.sizes] if args.sizes else DATA[name][3]
        for n in sizes:
            for seed in args.seeds:
                cid = f"{name}_n{n or 'all'}_s{seed}_{args.image_size}px"
                if cid in results:
                    continue
                log.info("%s: running", cid)
                results[cid] = run_cell(name, n, seed, args)
                atomic_write_json(out, results)
    table = report(list(results.values()))
    print(table)
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
