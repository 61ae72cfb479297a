"""Does the advisor pick the strategy that wins? Evidence over a grid of datasets, sizes and seeds.

For every cell (dataset, training-set size, seed) it runs the strategies with ``medtl.experiment.compare``
(same split for all), calls ``medtl.advisor.advise`` on that cell's training images, and scores the pick:

* agreement: how often the pick was the empirically better strategy, counting only cells where the
  paired DeLong test between the best strategy and the runner-up is significant at 5%;
* regret: best test AUROC minus the pick's test AUROC (mean over all cells).

When partial fine-tuning was not run, a "partial_fine_tuning" pick is scored as "fine_tuning" (it
trains the network too). It also reports how well each domain-gap signal (BatchNorm KL, ImageNet
entropy, frozen-probe AUROC) predicts the fine-tuning minus feature-extraction AUROC difference
(Spearman rho across cells). Results go to a JSON file; finished cells are skipped on re-runs.

Usage:
    nice -n 10 python benchmarks/advisor_eval.py --quick
    python benchmarks/advisor_eval.py --npz breastmnist.npz --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

KERMANY = "/work/shared/data/chest_xray_pneumonia_224"
log = logging.getLogger("advisor_eval")


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Cells: {name, path, max_train, seed} (phantoms are generated under the work folder)."""
    work = Path(args.work)
    cells: list[dict[str, Any]] = []
    sizes = [50, 200] if args.quick else [50, 200, 1000]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    if Path(args.kermany).is_dir():
        for n in sizes:
            for s in seeds:
                cells.append(
                    {"name": f"kermany_n{n}", "path": args.kermany, "max_train": n, "seed": s}
                )
    phantoms = (
        [("phantom_d0.5", 0.5, 128), ("phantom_tiny32_d0.3", 0.3, 32)]
        if args.quick
        else [
            ("phantom_d0.3", 0.3, 128),
            ("phantom_d0.7", 0.7, 128),
            ("phantom_tiny32_d0.3", 0.3, 32),
        ]
    )
    from medtl.data.synth import make_phantom

    for name, diff, native in phantoms:
        root = work / "data" / name
        if not (root / "phantom.json").exists():
            make_phantom(
                root, n_per_class=60 if args.quick else 150, size=native, difficulty=diff, seed=0
            )
        for s in seeds:
            cells.append({"name": name, "path": str(root), "max_train": None, "seed": s})
    for npz in args.npz or []:
        for n in sizes:
            for s in seeds:
                cells.append(
                    {"name": f"{Path(npz).stem}_n{n}", "path": npz, "max_train": n, "seed": s}
                )
    return cells


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def cell_id(c: dict[str, Any]) -> str:
    return f"{c['name']}_s{c['seed']}"


def run_cell(c: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from medtl.advisor import advise
    from medtl.config import config_from_dict
    from medtl.data._types import Dataset, Sample
    from medtl.experiment import compare, load_data

    work = Path(args.work)
    cfg = config_from_dict(
        {
            "name": cell_id(c),
            "data": {"path": c["path"], "max_train": c["max_train"], "split_seed": c["seed"]},
            "model": {"backbone": args.backbone, "image_size": args.image_size},
            "strategies": args.strategies,
            "train": {"epochs": args.epochs, "seed": c["seed"], "batch_size": 32},
            "output": {"out": str(work / "runs" / cell_id(c)), "cache_dir": str(work / "cache")},
        }
    )
    t0 = time.perf_counter()
    summary = compare(cfg, progress=False, resume=True, write_html=False)
    compare_s = time.perf_counter() - t0
    # advice on exactly this cell's training images (train only, so the size is the cell's size)
    data = load_data(cfg, progress=False)
    train = [Sample(**{**s.__dict__, "split": "train"}) for s in data.dataset.split("train")]
    ds = Dataset(data.dataset.root, data.dataset.source, data.dataset.classes, train)
    t0 = time.perf_counter()
    advice = advise(
        ds,
        backbone=args.backbone,
        image_size=args.image_size,
        cache_dir=work / "cache",
        seed=c["seed"],
        progress=False,
        epochs=args.epochs,
    )
    advise_s = time.perf_counter() - t0
    aucs = {
        n: r.get("test_auroc")
        for n, r in summary["strategies"].items()
        if r.get("status") == "done"
    }
    paired = {(p["a"], p["b"]): p for p in summary.get("paired", [])}
    ranked = sorted(aucs, key=lambda n: -np.nan_to_num(aucs[n], nan=-1))
    best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
    pair = paired.get((best, runner)) or paired.get((runner, best)) or {}
    p_value = (pair.get("delong") or {}).get("p_value")
    pick = advice.strategy
    scored = pick if pick in aucs else ("fine_tuning" if pick == "partial_fine_tuning" else pick)
    prof = advice.profile
    return {
        "cell": c,
        "test_auroc": aucs,
        "best": best,
        "p_best_vs_runner_up": p_value,
        "significant": p_value is not None and p_value < 0.05,
        "pick": pick,
        "scored_pick": scored,
        "correct": scored == best,
        "regret": _num(aucs[best]) - _num(aucs.get(scored)),
        "confidence": advice.confidence_score,
        "expected_auroc": advice.expected_auroc,
        "signals": {
            "bn_kl": prof.bn_kl,
            "imagenet_entropy": prof.imagenet_entropy,
            "probe_auroc": prof.probe_auroc,
            "knn_auroc": prof.knn_auroc,
            "probe_slope": prof.probe_slope,
        },
        "ft_minus_fe": _num(aucs.get("fine_tuning")) - _num(aucs.get("feature_extraction")),
        "seconds": {"compare": compare_s, "advise": advise_s},
        "estimated_minutes": advice.estimated_minutes,
    }


def report(results: dict[str, Any]) -> str:
    from scipy.stats import spearmanr

    rows = list(results.values())
    lines = [
        "| cell | FE AUROC | FT AUROC | best | p (DeLong) | advisor pick | conf | correct | regret | BN KL | entropy | probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, d: int = 3) -> str:
        return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"

    for r in rows:
        a, s = r["test_auroc"], r["signals"]
        lines.append(
            f"| {cell_id(r['cell'])} | {f(a.get('feature_extraction'))} | {f(a.get('fine_tuning'))} | "
            f"{r['best']} | {f(r['p_best_vs_runner_up'])} | {r['pick']} | {f(r['confidence'], 2)} | "
            f"{'yes' if r['correct'] else 'no'} | {f(r['regret'])} | {f(s['bn_kl'])} | "
            f"{f(s['imagenet_entropy'])} | {f(s['probe_auroc'])} |"
        )
    sig = [r for r in rows if r["significant"]]
    agree = sum(r["correct"] for r in sig)
    lines += [
        "",
        f"- cells: {len(rows)}; with a significant winner (DeLong p < 0.05): {len(sig)}; "
        f"advisor picked the significant winner in {agree} of {len(sig)}",
        f"- advisor agreed with the observed best in {sum(r['correct'] for r in rows)} of {len(rows)} cells "
        "(significant or not)",
        f"- mean AUROC regret: {f(float(np.nanmean([_num(r['regret']) for r in rows])) if rows else None)}",
    ]
    diff = np.array([_num(r["ft_minus_fe"]) for r in rows], dtype=float)
    for key in ("bn_kl", "imagenet_entropy", "probe_auroc", "knn_auroc"):
        x = np.array(
            [np.nan if r["signals"][key] is None else r["signals"][key] for r in rows], float
        )
        ok = np.isfinite(x) & np.isfinite(diff)
        if ok.sum() >= 4:
            rho = spearmanr(x[ok], diff[ok]).statistic
            lines.append(f"- Spearman rho({key}, FT - FE AUROC) = {rho:.2f} over {ok.sum()} cells")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny grid, 128 px, 3 epochs (~10 min on 2 cores)"
    )
    ap.add_argument("--kermany", default=KERMANY)
    ap.add_argument("--npz", nargs="*", help="MedMNIST-format .npz files to include")
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--backbone", default="efficientnet_lite0.in1k")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--strategies", nargs="*", default=None)
    ap.add_argument("--work", default="runs/advisor_eval", help="runs, caches and phantoms")
    ap.add_argument(
        "--out", default=None, help="results JSON (default <work>/advisor_eval[_quick].json)"
    )
    args = ap.parse_args()
    args.image_size = args.image_size or (128 if args.quick else None)
    args.epochs = args.epochs or (3 if args.quick else 8)
    args.strategies = args.strategies or (
        ["feature_extraction", "fine_tuning"]
        if args.quick
        else ["feature_extraction", "partial_fine_tuning", "fine_tuning"]
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("medtl", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out or Path(args.work) / f"advisor_eval{'_quick' if args.quick else ''}.json")
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    from medtl._fileio import atomic_write_json

    for c in grid(args):
        cid = cell_id(c)
        if cid in results:
            log.info("%s: done earlier, skipped", cid)
            continue
        log.info("%s: running", cid)
        try:
            results[cid] = run_cell(c, args)
        except Exception as exc:  # one failing cell must not lose the others
            log.error("%s failed: %s", cid, exc)
            continue
        atomic_write_json(out, results)
        r = results[cid]
        log.info("%s: best %s, pick %s, regret %.3f", cid, r["best"], r["pick"], r["regret"])
    table = report(results)
    print(table)
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
