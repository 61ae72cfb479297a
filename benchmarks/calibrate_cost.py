"""Measure the advisor's cost model against the real engine: seconds per image of extraction and of a
fine-tuning step, and the fixed cost of one pilot fit, at two image sizes.

The advisor sizes its pilot and estimates each strategy's minutes with a deterministic cost model
(``medtl.advisor._pilot``: seconds per image = multiply-accumulates / a reference rate + a per-image
overhead; a fixed cost per fit). This script times what that model predicts, on real images, and fits
its constants: per size, pilot fine-tuning fits at three sizes give (fixed cost, seconds per training
image) by least squares; the two sizes give (rate, overhead) for training and for extraction. It
prints the fitted constants beside the shipped ones and the model's error on every timed run. Timings
only (no accuracy): fitting them here tunes nothing on any result. Not a test.

    python benchmarks/calibrate_cost.py                 # Kermany (../shared/data), 64 and 224 px
    python benchmarks/calibrate_cost.py --sizes 64 128 224 --images 400
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224" / "train"


def main() -> None:
    from medtl.advisor import _pilot as P
    from medtl.backbones import create_backbone
    from medtl.data import load_dataset, make_phantom, prepare_images
    from medtl.strategies import FineTuning
    from medtl.strategies._feature_extraction import extract_embeddings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(KERMANY))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--images", type=int, default=600, help="images decoded for the timings")
    ap.add_argument("--fits", type=int, nargs="+", default=[40, 160, 320], help="pilot fit sizes")
    ap.add_argument(
        "--schedule-fit", type=int, default=60, help="pool of the longer schedules' timed fits"
    )
    ap.add_argument("--backbone", default="efficientnet_lite0.in1k")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = Path(args.data)
    if not data.is_dir():
        import tempfile

        data = Path(tempfile.mkdtemp()) / "phantom"
        make_phantom(data, n_per_class=args.images // 2, seed=0)
        print(f"(no {args.data}: using the synthetic phantom; its timings are as valid)")
    ds = load_dataset(data, val_fraction=0, test_fraction=0, verify=False, progress=False)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ds.samples), size=min(args.images, len(ds.samples)), replace=False)
    samples = [ds.samples[i] for i in sorted(pick)]
    print(
        f"# cost model calibration: {len(samples)} images, {args.backbone}, {torch.get_num_threads()} threads"
    )
    rows = {}  # size -> dict of measured per-image seconds
    for size in args.sizes:
        t = time.perf_counter()
        images = prepare_images(samples, ds.classes, size=size, channels=1, progress=False)
        decode_s = (time.perf_counter() - t) / len(images)
        model, cfg = create_backbone(args.backbone, num_classes=len(ds.classes), pretrained=True)
        model.eval()
        macs = P.count_macs(model, size)
        frozen = cfg.stages[: FineTuning().frozen_stages(cfg)]  # the default recipe's frozen stages
        frozen_macs = P.count_macs(model, size, frozen)
        cost = P.CostModel(macs=macs, frozen_macs=frozen_macs)
        extract_embeddings(model, cfg, images.pixels[:16], progress=False)  # warm-up
        t = time.perf_counter()
        extract_embeddings(model, cfg, images.pixels, progress=False)
        extract_s = (time.perf_counter() - t) / len(images)
        n_eval = min(P.EVAL_MAX, len(images) // 3)
        order = np.random.default_rng(1).permutation(len(images))  # classes mixed in every prefix
        ev = images.subset(order[len(images) - n_eval :])
        fits = []
        for n in [args.fits[0], *args.fits]:  # the first fit warms up (allocator, kernels): dropped
            n = min(n, len(images) - n_eval)
            idx = order[:n]
            n_va = n // 5
            tr, va = images.subset(idx[n_va:]), images.subset(idx[:n_va])
            t = time.perf_counter()
            ft = FineTuning(
                backbone=args.backbone, epochs=P.PILOT_EPOCHS, batch_size=P.PILOT_BATCH,
                min_steps_per_epoch=P.PILOT_MIN_STEPS, patience=None, seed=0, progress=False,
            ).fit(tr, va)  # fmt: skip
            ft.predict_proba(ev)
            took = time.perf_counter() - t
            n_tr = len(tr)
            steps = max(-(-n_tr // P.PILOT_BATCH), P.PILOT_MIN_STEPS)
            passes = P.PILOT_EPOCHS * steps * min(P.PILOT_BATCH, n_tr)
            evals = 1.5 * (P.PILOT_EPOCHS * len(va) + n_eval)
            planned = cost.ft_fit_seconds(
                n, n_eval, P.PILOT_EPOCHS, P.PILOT_MIN_STEPS, P.PILOT_BATCH
            )
            fits.append((passes, evals, took, planned))
            if len(fits) == 1:
                continue
            print(
                f"{size}px pilot fit on {n}: {took:.1f} s (model planned {planned:.1f} s, {planned / took:.1f}x)"
            )
        # the longer pilot schedules (the recipe's own, half its epochs): planned vs measured on one
        # small pool, where the planner picks them (a per-epoch cost the model lacks would show here)
        n = min(args.schedule_fit, len(images) - n_eval)
        idx = order[:n]
        tr, va = images.subset(idx[n // 5 :]), images.subset(idx[: n // 5])
        for sch in P.pilot_schedules(8)[:-1]:
            t = time.perf_counter()
            FineTuning(
                backbone=args.backbone, epochs=sch.epochs, batch_size=sch.batch,
                min_steps_per_epoch=sch.min_steps, patience=None, seed=0, progress=False,
            ).fit(tr, va).predict_proba(ev)  # fmt: skip
            took = time.perf_counter() - t
            planned = cost.ft_fit_seconds(n, n_eval, sch.epochs, sch.min_steps, sch.batch)
            print(
                f"{size}px schedule {sch.epochs} epochs x >= {sch.min_steps} steps of {sch.batch} on "
                f"{n}: {took:.1f} s (model planned {planned:.1f} s, {planned / took:.2f}x)"
            )
        # took - evals * extract_s = fixed + passes * train_s  (least squares over the fits)
        fits = fits[1:]
        A = np.array([[1.0, p] for p, _, _, _ in fits])
        b = np.array([took - e * extract_s for _, e, took, _ in fits])
        fixed, train_s = np.linalg.lstsq(A, b, rcond=None)[0]
        rows[size] = {
            "macs": macs,
            "frozen_macs": frozen_macs,
            "decode": decode_s,
            "extract": extract_s,
            "train": train_s,
            "fixed": fixed,
        }
        print(
            f"{size}px: {macs / 1e9:.3f} GMAC/image | decode {1e3 * decode_s:.1f} ms (model {1e3 * cost.decode_s:.1f}) | "
            f"extract {1e3 * extract_s:.1f} ms (model {1e3 * cost.extract_s:.1f}) | train step "
            f"{1e3 * train_s:.1f} ms/image (model {1e3 * cost.train_s:.1f}) | fixed per fit {fixed:.2f} s "
            f"(model {P.FIT_OVERHEAD_S:.1f})"
        )

    # a training step runs the frozen stages forward only: their MACs are charged at the extraction
    # rate, the trained MACs at the fitted training rate
    def charged(s: int, kind: str) -> tuple[float, float]:
        r = rows[s]
        if kind == "extract":
            return r["macs"], r["extract"]
        ext = r["frozen_macs"] / (P.REF_EXTRACT_GMACS_PER_S * 1e9)
        return r["macs"] - r["frozen_macs"], r["train"] - ext

    if len(rows) == 1:  # one size: the rate with the shipped per-image overhead
        (s,) = rows
        for kind, ref in (
            ("train", P.REF_TRAIN_GMACS_PER_S),
            ("extract", P.REF_EXTRACT_GMACS_PER_S),
        ):
            m, t = charged(s, kind)
            rate = m / max(1e-9, t - P.PER_IMAGE_OVERHEAD_S[kind]) / 1e9
            print(f"{kind}: {rate:.1f} GMAC/s at the shipped overhead (shipped {ref:.1f} GMAC/s)")
    if len(rows) >= 2:
        sizes = sorted(rows)
        for kind, ref, over in (
            ("train", P.REF_TRAIN_GMACS_PER_S, P.PER_IMAGE_OVERHEAD_S["train"]),
            ("extract", P.REF_EXTRACT_GMACS_PER_S, P.PER_IMAGE_OVERHEAD_S["extract"]),
        ):
            M = np.array([[charged(s, kind)[0], 1.0] for s in sizes])
            inv_rate, overhead = np.linalg.lstsq(
                M, np.array([charged(s, kind)[1] for s in sizes]), rcond=None
            )[0]
            print(
                f"{kind}: fitted {1 / inv_rate / 1e9:.1f} GMAC/s + {1e3 * overhead:.1f} ms/image "
                f"(shipped {ref:.1f} GMAC/s + {1e3 * over:.1f} ms)"
            )
        print(
            f"fixed cost per pilot fit: {np.mean([rows[s]['fixed'] for s in sizes]):.2f} s (shipped {P.FIT_OVERHEAD_S})"
        )
        print(
            f"decode: {1e3 * np.mean([rows[s]['decode'] for s in sizes]):.1f} ms/image (shipped {1e3 * P.PER_IMAGE_OVERHEAD_S['decode']:.1f})"
        )


if __name__ == "__main__":
    main()
