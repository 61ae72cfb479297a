"""Does a change to the fine-tuning recipe keep its results? The default recipe against a variant, on the
advisor grid's cells, mean over training seeds.

Trains ``FineTuning`` with the variant's options (e.g. ``--epochs 5``) on the same cells as
``benchmarks/advisor_eval.py`` (same data seed, train/val split, dev holdout and test images) and compares
its seed-mean AUROC with the default recipe's stored in that grid's results (``--grid``), with the
seconds per fit. Results are written per cell as they finish. Not a test; hours on a 2-core CPU:

    python benchmarks/recipe_check.py --epochs 5 --datasets kermany brain --sizes 1000
    python benchmarks/recipe_check.py --epochs 5 --sizes 0 --datasets kermany --set freeze_stages=0

``--sizes 0`` is the whole pool (the grid's "all" cell, which the grid itself has no default-recipe runs
for: run the default recipe as a variant of itself to get them).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import advisor_eval as grid  # the grid's cells, one owner
import numpy as np

log = logging.getLogger("recipe_check")


def check_cell(name: str, n: int | None, args: argparse.Namespace) -> dict[str, Any]:
    from medtl.data import prepare_images
    from medtl.strategies import FineTuning
    from medtl.tasks import task_for

    cell, dev, test, _ = grid.load_cell_data(name, 0, n, args.work)
    cache = Path(args.work) / "cache"
    task = task_for(cell.classes, cell.task_kind)

    def prep(samples: list[Any]) -> Any:
        return prepare_images(
            samples, cell.classes, size=224, channels=1, cache_dir=cache / "images",
            read_options={"window": "header"}, progress=False,
        )  # fmt: skip

    tr, va = prep(cell.split("train")), prep(cell.split("val"))
    targets = {"test": prep(test.samples)} | ({"dev": prep(dev.samples)} if dev else {})
    out: dict[str, Any] = {"seconds": [], "epochs_run": [], "aurocs": {t: [] for t in targets}}
    for ts in args.train_seeds:
        t0 = time.perf_counter()
        ft = FineTuning(
            epochs=args.epochs, seed=ts, cache_dir=str(cache), progress=False, **args.options
        ).fit(tr, va)
        out["seconds"].append(time.perf_counter() - t0)
        out["epochs_run"].append(ft.epochs_run_)
        for t, d in targets.items():
            out["aurocs"][t].append(float(task.headline_auroc(d.labels, ft.predict_proba(d))))
        log.info("%s n=%s seed %d: %.0f s", name, n or "all", ts, out["seconds"][-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, required=True, help="the variant's epochs")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="other FineTuning options of the variant (YAML values), e.g. freeze_stages=0",
    )  # fmt: skip
    ap.add_argument("--datasets", nargs="*", default=["kermany", "brain"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[1000])
    ap.add_argument("--train-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="runs/advisor_eval_v3", help="the grid's work folder")
    ap.add_argument("--out", default="benchmarks/results/recipe_check.json")
    args = ap.parse_args()
    import yaml

    args.options = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("medtl").setLevel(logging.WARNING)
    from medtl._fileio import atomic_write_json

    base = json.loads((Path(args.work) / "advisor_eval.json").read_text())
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.datasets:
        for n in args.sizes:
            key = f"{name}_n{n or 'all'}_epochs{args.epochs}" + "".join(
                f"_{k}{v}" for k, v in sorted(args.options.items())
            )
            if key not in results:
                results[key] = check_cell(name, n or None, args)
                atomic_write_json(out, results)
            ref = base.get(f"{name}_n{n or 'all'}_s0_224px", {}).get("train")
            if not ref:
                continue
            for t, aucs in results[key]["aurocs"].items():
                default = ref[t]["per_seed"]["fine_tuning"]
                print(
                    f"{key} {t}: variant {np.mean(aucs):.4f} vs default {np.mean(default):.4f} "
                    f"(diff {np.mean(aucs) - np.mean(default):+.4f}; per seed "
                    f"{[round(a - b, 4) for a, b in zip(aucs, default)]}); fit "
                    f"{np.mean(results[key]['seconds']):.0f} s vs "
                    f"{np.mean([r['seconds']['ft'] for r in ref['runs']]):.0f} s"
                )


if __name__ == "__main__":
    main()
