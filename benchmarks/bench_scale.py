"""Fine-tuning throughput of 1 process vs N processes (torchrun + DistributedDataParallel), same run.

The same training (same global batch, same steps, same images) is run twice, back to back: once as one
process, once as ``--nproc`` processes started by ``torch.distributed.run``; the ratio of their
images/s (global images per second of training, warm epoch) is printed. On a CPU the threads are split
evenly between the processes (``--threads`` in total), so the comparison is at equal hardware.

    # this machine's CPU (gloo): 1 vs 2 processes
    python benchmarks/bench_scale.py --nproc 2 --backbone tiny_test --image-size 64
    # a multi-GPU machine (NCCL): 1 vs 8 GPUs, real backbone and size
    python benchmarks/bench_scale.py --nproc 8 --device cuda --backbone efficientnet_lite0.in1k \\
        --image-size 224 --batch-size 256 --steps 30

Absolute numbers on a shared machine mean little; the ratio of the two runs is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One process of the job: train for ``--steps`` x 2 epochs; rank 0 writes images/s."""
    import numpy as np
    import torch

    from medtl import distributed
    from medtl.backbones import create_backbone
    from medtl.data._types import PreparedImages
    from medtl.training import AugmentSettings, LoopSettings, train_network

    distributed.init_from_env(args.device)
    try:
        rng = np.random.default_rng(0)
        n, s = max(args.batch_size * 2, 64), args.image_size

        def images(k: int, off: int) -> PreparedImages:
            uids = [f"i{off + i}" for i in range(k)]
            return PreparedImages(
                pixels=rng.integers(0, 255, (k, 1, s, s), dtype=np.uint8),
                labels=(np.arange(k) % 2).astype(np.int64),
                uids=uids,
                keys=uids,
                classes=["a", "b"],
            )

        train, val = images(n, 0), images(32, n)
        torch.manual_seed(0)
        model, cfg = create_backbone(args.backbone, num_classes=2, pretrained=False)
        settings = LoopSettings(
            epochs=2,
            batch_size=args.batch_size,
            patience=None,
            min_steps_per_epoch=args.steps,
            device=args.device,
            precision=args.precision,
        )
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}]
        t0 = time.perf_counter()
        res = train_network(
            model,
            groups,
            cfg.mean,
            cfg.std,
            train,
            val,
            settings,
            augment=AugmentSettings(),
            progress=False,
        )
        warm = res.history[-1]  # the second epoch: caches, allocator and DDP buckets are warm
        if distributed.is_main():
            Path(args.result).write_text(
                json.dumps(
                    {
                        "processes": distributed.world_size(),
                        "images_per_s": warm["images"] / warm["train_seconds"],
                        "wall_s": time.perf_counter() - t0,
                    }
                )
            )
    finally:
        distributed.shutdown()


def launch(args: argparse.Namespace, nproc: int, result: str) -> dict:
    """Run this script's worker as ``nproc`` processes under torch.distributed.run."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, args.threads // nproc))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        __file__, "--worker", "--result", result, "--backbone", args.backbone,
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--device", args.device, "--precision", args.precision,
    ]  # fmt: skip
    subprocess.run(cmd, env=env, check=True)
    return json.loads(Path(result).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the distributed run")
    p.add_argument("--backbone", default="tiny_test")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (both runs)")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.batch_size % args.nproc:
        p.error(f"--batch-size {args.batch_size} must be a multiple of --nproc {args.nproc}")
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(args, 1, f"{tmp}/one.json")
        many = launch(args, args.nproc, f"{tmp}/many.json")
    ratio = many["images_per_s"] / one["images_per_s"]
    threads = (
        f", {max(1, args.threads // args.nproc)} thread(s) per process"
        if args.device == "cpu"
        else ""
    )
    print(
        f"{args.backbone} {args.image_size}px, global batch {args.batch_size}, {args.device}{threads}: "
        f"1 process {one['images_per_s']:.1f} img/s, {args.nproc} processes "
        f"{many['images_per_s']:.1f} img/s, ratio {ratio:.2f} (ideal {args.nproc})"
    )
    print(json.dumps({"one": one, "many": many, "ratio": ratio}))


if __name__ == "__main__":
    main()
