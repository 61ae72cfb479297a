"""Where an LP-FT training step's time goes, per phase.

EfficientNet-Lite0 at 224 px, a batch of 32 random images, BatchNorm statistics frozen (as the
default recipe trains), the training precision medtl picks on this machine: uint8 -> float,
augmentation, normalisation, forward, backward, optimiser, for passes of 4, 16 (what medtl uses on a
CPU when BatchNorm is frozen, since issue 27) and 32 images (one pass per batch); then the inference speed a
validation pass gets in fp32 and bf16. The batch is 32 real Kermany chest X-rays when
../shared/data has them (random pixels ran the folded step 1.5x faster than real images did: speed
depends on the content here, so the profile uses real ones), else random pixels. ``--fold`` folds each
frozen BatchNorm into its convolution as medtl's training does on a CPU (``folded_for_training``).
Not a test; run on an idle machine:

    python benchmarks/profile_ft_step.py                      # unfolded
    python benchmarks/profile_ft_step.py --fold               # folded, as medtl trains
    python benchmarks/profile_ft_step.py --precision bf16     # what bf16 autocast would give
    python benchmarks/profile_ft_step.py --fold --freeze      # the default recipe since issue 27:
                                                              # also the stride <= 8 stages frozen
    python benchmarks/profile_ft_step.py --fold --freeze --no-retain   # glibc's default allocation

Steps run inside ``retained_allocations`` (freed memory kept for reuse, as medtl trains) unless
``--no-retain``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from torch import nn

from medtl.backbones import create_backbone, to_model_input
from medtl.training import (
    AugmentSettings,
    BatchAugment,
    autocast_context,
    folded_for_training,
    retained_allocations,
    training_precision,
)

BATCH = 32
DEVICE = torch.device("cpu")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _images() -> torch.Tensor:
    """32 real Kermany images (uint8, 3 x 224 x 224) when present, else random pixels."""
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_pneumonia_224"
    files = sorted(root.glob("train/*/*.jpeg"))[::50][:BATCH]
    if len(files) == BATCH:
        arr = [np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files]
        return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()
    print("Kermany images not found: random pixels (faster than real images here)")
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 255, (BATCH, 3, 224, 224), dtype=np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--fold", action="store_true", help="BatchNorm folded as medtl trains")
    ap.add_argument(
        "--freeze",
        action="store_true",
        help="the stages FineTuning keeps frozen by default, frozen",
    )
    ap.add_argument(
        "--no-retain",
        action="store_true",
        help="glibc's default allocation (large blocks mapped afresh each time), not medtl's",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model, cfg = create_backbone("efficientnet_lite0.in1k", num_classes=2, pretrained=True)
    model.train()
    for m in model.modules():  # LP-FT: BatchNorm statistics frozen, every parameter trainable
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    if args.freeze:
        from medtl.backbones import set_trainable_stages
        from medtl.strategies import FineTuning

        k = FineTuning().frozen_stages(cfg)
        for m in set_trainable_stages(model, cfg, len(cfg.stages) - k):
            m.eval()
        print(f"frozen: {', '.join(cfg.stages[:k])}")
    model.to(memory_format=torch.channels_last)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=3e-4, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    aug = BatchAugment(AugmentSettings())
    px = _images()
    y = torch.randint(0, 2, (BATCH,))
    gen = torch.Generator().manual_seed(0)
    prec = training_precision(DEVICE, args.precision)
    print(f"training precision: {prec}; threads: {torch.get_num_threads()}")

    def step(micro: int) -> dict[str, float]:
        t: dict[str, float] = {}
        x, t["to_float"] = _timed(lambda: px.float().div_(255.0))
        x, t["augment"] = _timed(lambda: aug(x, gen, rows=slice(0, BATCH), n_total=BATCH))
        x, t["normalise"] = _timed(lambda: to_model_input(x, cfg.mean, cfg.std))
        opt.zero_grad(set_to_none=True)
        t["forward"] = t["backward"] = 0.0
        for i in range(0, BATCH, micro):
            xb = x[i : i + micro].contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            with autocast_context(DEVICE, prec):
                out = model(xb)
            loss = loss_fn(out.float(), y[i : i + micro]) / BATCH
            t["forward"] += time.perf_counter() - t0
            _, dt = _timed(loss.backward)
            t["backward"] += dt

        def update() -> None:
            nn.utils.clip_grad_norm_(trained, 2.0)
            opt.step()

        _, t["optimiser"] = _timed(update)
        return t

    example = to_model_input(px[:2].float().div(255), cfg.mean, cfg.std)
    fold = folded_for_training(model, example) if args.fold else contextlib.nullcontext(0)
    retain = contextlib.nullcontext(False) if args.no_retain else retained_allocations()
    with retain as kept, fold as n:
        print(f"BatchNorm folded into {n} convolutions; freed memory kept for reuse: {kept}")
        for micro in (4, 16, BATCH):
            step(micro)  # warm-up
            runs = [step(micro) for _ in range(3)]
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            total = sum(mean.values())
            parts = ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in mean.items())
            print(f"passes of {micro}: {BATCH / total:.1f} img/s; {parts}")
    model.eval()
    with torch.inference_mode():
        for p in ("fp32", "bf16"):
            with autocast_context(DEVICE, p):
                model(px[:4].float().contiguous(memory_format=torch.channels_last))
                t0 = time.perf_counter()
                for i in range(0, BATCH, 4):
                    x = to_model_input(px[i : i + 4].float().div(255), cfg.mean, cfg.std)
                    model(x.contiguous(memory_format=torch.channels_last))
                print(f"inference {p}: {BATCH / (time.perf_counter() - t0):.1f} img/s")


if __name__ == "__main__":
    main()
