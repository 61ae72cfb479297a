"""Fine-tuning under distribution shift: Kermany train -> official test, several training-set sizes.

Reproduces the team's table (feature extraction vs plain fine-tuning, validation carved from train, test on the
shifted official split) with medtl's strategies and the shift-robust variants, each with and without AdaBN
(BatchNorm statistics re-estimated on the unlabelled test images: transductive, as test-time adaptation is
evaluated in the literature). Every variant is compared with feature extraction on the same test images by
DeLong's paired test. Not a test; resumable (finished cells are kept in the JSON file).

    python benchmarks/shift_eval.py --sizes 50,200,1000 --variants fe,ft,lpft,lpft_l2sp,lpft_wise
    python benchmarks/shift_eval.py --sizes all --variants fe,lpft_wise --image-size 128

Variants (all EfficientNet-Lite0, ImageNet weights from the offline package):
  fe         feature extraction: frozen backbone, logistic regression, C chosen on validation
  ft         plain fine-tuning: random head, AdamW, one-cycle, backbone at 0.1x the head's rate
  lpft       LP-FT: the head starts from the fe probe, then every layer at a small rate
  lpft_l2sp  LP-FT + L2-SP towards the pretrained weights + layer-wise rate decay
  lpft_wise  LP-FT + weight interpolation between the probe and the fine-tuned weights (alpha on val)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224"
# patient ids from Kermany's file names (as configs/kermany_*.yaml): validation never shares a patient
KERMANY_PATIENTS = r"^(person\d+_(?:bacteria|virus))_|^((?:NORMAL2-)?IM-\d+)-"

VARIANTS = {
    "fe": ("feature_extraction", {}),
    "ft": ("fine_tuning", {"head_init": "random"}),
    "lpft": ("fine_tuning", {"head_init": "probe", "lr": 3e-4, "backbone_lr_ratio": 0.3}),
    "lpft_l2sp": (
        "fine_tuning",
        {
            "head_init": "probe",
            "lr": 3e-4,
            "backbone_lr_ratio": 0.3,
            "l2sp": 0.01,
            "layer_decay": 0.8,
        },
    ),
    "lpft_wise": (
        "fine_tuning",
        {"head_init": "probe", "lr": 3e-4, "backbone_lr_ratio": 0.3, "interpolate": True},
    ),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="50,200,1000", help="training-set sizes, 'all' for every image"
    )
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--no-adabn", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "shift_eval"))
    args = ap.parse_args(argv)
    if not KERMANY.exists():
        print(f"{KERMANY} is absent; nothing to do")
        return 0

    from sklearn.metrics import roc_auc_score

    from medtl.adapt import adapt_batchnorm
    from medtl.config import config_from_dict
    from medtl.experiment import load_data
    from medtl.metrics import auroc_ci, compare_paired
    from medtl.strategies import get_strategy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / f"shift_eval_{args.image_size}px.json"
    results = json.loads(res_file.read_text()) if res_file.exists() else {}
    cache = ROOT / ".medtl_cache"
    for seed in [int(s) for s in args.seeds.split(",")]:
        for size in args.sizes.split(","):
            cfg = config_from_dict(
                {
                    "data": {
                        "path": str(KERMANY),
                        "max_train": None if size == "all" else int(size),
                        "split_seed": seed,
                        "patient_id_pattern": KERMANY_PATIENTS,
                    },
                    "model": {"image_size": args.image_size},
                    "output": {"cache_dir": str(cache)},
                }
            )
            data = None
            for v in args.variants.split(","):
                key = f"{size}|{seed}|{v}"
                if key in results and "test_p" in results[key]:
                    continue
                if data is None:
                    data = load_data(cfg, progress=False)
                name, params = VARIANTS[v]
                est = get_strategy(
                    name,
                    seed=seed,
                    progress=False,
                    cache_dir=str(cache),
                    **(
                        {"epochs": args.epochs, "batch_size": 32}
                        if name != "feature_extraction"
                        else {}
                    ),
                    **params,
                )
                t0 = time.perf_counter()
                est.fit(data.train, data.val)
                secs = time.perf_counter() - t0
                p = est.predict_proba(data.test)[:, 1]
                pv = est.predict_proba(data.val)[:, 1]
                row = {
                    "size": len(data.train),
                    "seed": seed,
                    "variant": v,
                    "seconds": secs,
                    "val_auroc": float(roc_auc_score(data.val.labels, pv)),
                    "test": auroc_ci(data.test.labels, p),
                    "alpha": getattr(est, "alpha_", None),
                    "epochs_run": len(est.history_) if name != "feature_extraction" else 0,
                }
                if not args.no_adabn:
                    ad = adapt_batchnorm(est, data.test)
                    row["test_adabn"] = auroc_ci(
                        data.test.labels, ad.predict_proba(data.test)[:, 1]
                    )
                row["test_p"] = [round(float(x), 6) for x in p]
                results[key] = row
                res_file.write_text(json.dumps(results, indent=1, default=float))
                print(
                    f"{key}: val {row['val_auroc']:.3f} test {row['test']['auroc']:.3f}"
                    + (f" adabn {row['test_adabn']['auroc']:.3f}" if "test_adabn" in row else "")
                    + f" ({secs:.0f}s)",
                    flush=True,
                )
            fe_row = results.get(f"{size}|{seed}|fe")
            if (
                data is not None and fe_row and "test_p" in fe_row
            ):  # paired tests on the same images
                for v in args.variants.split(","):
                    row = results.get(f"{size}|{seed}|{v}")
                    if v != "fe" and row and "test_p" in row:
                        cmp = compare_paired(
                            data.test.labels,
                            np.array(row["test_p"]),
                            np.array(fe_row["test_p"]),
                            name_a=v,
                            name_b="fe",
                        )
                        row["vs_fe"] = {"diff": cmp["diff"], "p_value": cmp["delong"]["p_value"]}
                res_file.write_text(json.dumps(results, indent=1, default=float))
    print_table(results, args.image_size)
    return 0


def print_table(results: dict, image_size: int) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in results.values()))
    sizes = sorted({r["size"] for r in results.values()})
    print(f"\n### Kermany train -> official test, {image_size}px, test AUROC (AdaBN in brackets)\n")
    print("| train images | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for n in sizes:
        cells = []
        for v in variants:
            rows = [r for r in results.values() if r["size"] == n and r["variant"] == v]
            if not rows:
                cells.append("")
                continue
            t = np.mean([r["test"]["auroc"] for r in rows])
            a = [r["test_adabn"]["auroc"] for r in rows if "test_adabn" in r]
            vs = [r.get("vs_fe", {}).get("p_value") for r in rows]
            mark = "*" if vs and vs[0] is not None and vs[0] < 0.05 else ""
            cells.append(f"{t:.3f}{mark}" + (f" ({np.mean(a):.3f})" if a else ""))
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n`*`: differs from feature extraction on the same test images, DeLong p < 0.05.")


if __name__ == "__main__":
    sys.exit(main())
