"""Where an LP-FT training step's time goes, per phase.

EfficientNet-Lite0 at 224 px, a batch of 32 random images, BatchNorm statistics frozen (as the
default recipe trains), the training precision medtl picks on this machine: uint8 -> float,
augmentation, normalisation, forward, backward, optimiser, for passes of 4 images (what medtl uses
on a CPU when BatchNorm is frozen) and of 32 (one pass per batch); then the inference speed a
validation pass gets in fp32 and bf16. Not a test; run on an idle machine:

    python benchmarks/profile_ft_step.py                      # medtl's training precision
    python benchmarks/profile_ft_step.py --precision bf16     # what bf16 autocast would give
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from medtl.backbones import create_backbone, to_model_input
from medtl.training import (
    AugmentSettings,
    BatchAugment,
    autocast_context,
    training_precision,
)

BATCH = 32
DEVICE = torch.device("cpu")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model, cfg = create_backbone("efficientnet_lite0.in1k", num_classes=2, pretrained=True)
    model.train()
    for m in model.modules():  # LP-FT: BatchNorm statistics frozen, every parameter trainable
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    aug = BatchAugment(AugmentSettings())
    rng = np.random.default_rng(0)
    px = torch.from_numpy(rng.integers(0, 255, (BATCH, 3, 224, 224), dtype=np.uint8))
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
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()

        _, t["optimiser"] = _timed(update)
        return t

    for micro in (4, BATCH):
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
