"""Speed of medtl's feature extraction and fine-tuning step against a plain timm fp32 loop.

Both run in this one process, on the same images and the same weights, so the printed ratios mean
something even on a busy machine (absolute seconds do not). Not a test: nothing here passes or fails.

    python benchmarks/bench_speed.py                      # Kermany images if ../shared/data exists, else phantom
    python benchmarks/bench_speed.py --n 256 --size 224 --cached 5000

What is compared
- extraction: plain = for each batch of ``--batch`` files, decode with PIL, resize, normalise, fp32 NCHW
  forward under torch.no_grad (what a first script does). medtl = ``prepare_images`` (decoded-image cache)
  + ``extract_embeddings`` with its defaults (BatchNorm folded into the convolutions, channels-last,
  inference mode, cache-sized passes on a CPU, autocast where the CPU has native bf16). Reported cold
  (decode included, empty cache) and warm (decoded cache).
- fine-tuning step: forward + backward + AdamW step on the same already-decoded batch of ``--batch``.
  plain = fp32 NCHW, ``model.train()``, the whole batch in one pass. medtl = the default fine-tuning
  recipe's step (LP-FT: BatchNorm statistics frozen) through ``medtl.training.training_step`` with the
  loop's settings (channels-last, gradients accumulated over cache-sized passes, autocast where it helps).
- attribution rows: the plain loop given medtl's pass size (and, for the step, frozen BatchNorm), so the
  part of the ratio that comes from pass size alone is visible.
- cached re-run: ``FeatureExtraction.fit`` a second time on ``--cached`` images (decoded images and
  embeddings from the cache) — the target is under 10 s for 5k images.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224"


def image_files(n: int, tmp: Path) -> tuple[list[Path], str]:
    if KERMANY.exists():
        files = sorted((KERMANY / "train").rglob("*.jpeg"))
        rng = np.random.default_rng(0)
        pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
        return [files[i] for i in sorted(pick)], "Kermany chest X-ray JPEGs"
    from medtl.data.synth import make_phantom

    root = make_phantom(tmp / "phantom", n_per_class=(n + 1) // 2, size=256)
    return sorted(root.rglob("*.dcm"))[:n], "synthetic phantom DICOMs"


def plain_extract(model, files, size, mean, std, bs):
    from PIL import Image

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, len(files), bs):
            batch = []
            for f in files[i : i + bs]:
                if f.suffix == ".dcm":
                    import medtl

                    arr = (medtl.read_image(f)[0] * 255).astype(np.uint8)
                    img = Image.fromarray(arr).convert("RGB")
                else:
                    img = Image.open(f).convert("RGB")
                img = img.resize((size, size), Image.BILINEAR)
                batch.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1))
            x = (torch.stack(batch).float() / 255 - m) / s
            out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy()


def time_it(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=256, help="images for the extraction comparison")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="training steps timed per side")
    ap.add_argument("--cached", type=int, default=0, help="images for the cached re-run (0 = skip)")
    ap.add_argument("--backbone", default="efficientnet_lite0.in1k")
    args = ap.parse_args(argv)

    from medtl.backbones import create_backbone
    from medtl.data import prepare_images
    from medtl.data._types import Sample
    from medtl.strategies import extract_embeddings
    from medtl.training import describe_precision, to_model_input

    tmp = Path(tempfile.mkdtemp(prefix="medtl_bench_"))
    try:
        files, what = image_files(args.n, tmp)
        print(
            f"# medtl speed benchmark: {len(files)} {what}, {args.size}px, batch {args.batch}, "
            f"{torch.get_num_threads()} threads, precision {describe_precision(torch.device('cpu'))}"
        )
        model, cfg = create_backbone(args.backbone, num_classes=2)
        model.eval()
        samples = [Sample(path=str(f), label=0, uid=f"u{i}") for i, f in enumerate(files)]

        # -- extraction ---------------------------------------------------------------------------
        plain_extract(
            model, files[: args.batch], args.size, cfg.mean, cfg.std, args.batch
        )  # warm-up
        t_plain = time_it(
            lambda: plain_extract(model, files, args.size, cfg.mean, cfg.std, args.batch)
        )
        cache = tmp / "cache"

        def medtl_cold():
            shutil.rmtree(cache, ignore_errors=True)
            px = prepare_images(
                samples, ["a", "b"], size=args.size, channels=1, cache_dir=cache, progress=False
            )
            extract_embeddings(model, cfg, px.pixels, progress=False)

        def medtl_warm():
            px = prepare_images(
                samples, ["a", "b"], size=args.size, channels=1, cache_dir=cache, progress=False
            )
            extract_embeddings(model, cfg, px.pixels, progress=False)

        t_cold = time_it(medtl_cold)
        t_warm = time_it(medtl_warm)
        from medtl.training import micro_batch_size

        micro = micro_batch_size(torch.device("cpu"), args.size, args.batch)
        t_plain_micro = time_it(
            lambda: plain_extract(model, files, args.size, cfg.mean, cfg.std, micro)
        )
        # same numbers? (grey replicated vs RGB JPEG of grey content: near-identical, not bit-identical)
        px = prepare_images(
            samples[:8], ["a", "b"], size=args.size, channels=1, cache_dir=cache, progress=False
        )
        a = extract_embeddings(model, cfg, px.pixels, progress=False)
        b = plain_extract(model, files[:8], args.size, cfg.mean, cfg.std, 8)
        cos = float(
            np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        )
        n = len(files)
        print("\n| task | plain timm fp32 (img/s) | medtl (img/s) | ratio |")
        print("|---|---|---|---|")
        print(
            f"| extraction, cold (decode + forward) | {n / t_plain:.1f} | {n / t_cold:.1f} | {t_plain / t_cold:.2f}x |"
        )
        print(
            f"| extraction, warm (decoded cache) | {n / t_plain:.1f} | {n / t_warm:.1f} | {t_plain / t_warm:.2f}x |"
        )
        print(
            f"| (attribution) plain loop in passes of {micro} | {n / t_plain:.1f} | {n / t_plain_micro:.1f} "
            f"| {t_plain / t_plain_micro:.2f}x |"
        )

        # -- fine-tuning step ---------------------------------------------------------------------
        pixels = torch.from_numpy(
            prepare_images(
                samples[: args.batch],
                ["a", "b"],
                size=args.size,
                channels=1,
                cache_dir=cache,
                progress=False,
            ).pixels
        )
        y = torch.tensor([0, 1] * (args.batch // 2))[: len(pixels)]
        dev = torch.device("cpu")

        from torch import nn

        from medtl.training import training_step

        def make_step(net, medtl_side, frozen_bn, micro_batch):
            net = copy.deepcopy(net).train()
            if frozen_bn:  # what FineTuning's default (LP-FT) does: BatchNorm statistics stay fixed
                for m in net.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            if medtl_side:
                net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

            def step():
                x = to_model_input(pixels.float() / 255, cfg.mean, cfg.std)
                training_step(
                    net,
                    opt,
                    loss_fn,
                    x,
                    y,
                    micro_batch=micro_batch,
                    precision="auto" if medtl_side else "fp32",
                    channels_last=medtl_side,
                )

            return step

        from medtl.training import LoopSettings
        from medtl.training import micro_batch_for as _resolve_micro_batch

        probe = copy.deepcopy(model).eval()  # BatchNorm frozen, as in the default recipe
        step_micro = _resolve_micro_batch(
            probe, LoopSettings(batch_size=len(pixels)), dev, args.size
        )
        plain_step = make_step(model, False, False, None)
        medtl_step = make_step(model, True, True, step_micro)
        plain_micro_step = make_step(model, False, True, step_micro)
        plain_step(), medtl_step(), plain_micro_step()  # warm-up
        tp = min(time_it(plain_step) for _ in range(args.steps))
        tm = min(time_it(medtl_step) for _ in range(args.steps))
        tpm = min(time_it(plain_micro_step) for _ in range(args.steps))
        bs = len(pixels)
        print(
            f"| fine-tuning step (fwd+bwd+AdamW) | {bs / tp:.1f} | {bs / tm:.1f} | {tp / tm:.2f}x |"
        )
        print(
            f"| (attribution) plain step, frozen BatchNorm, passes of {step_micro} | {bs / tp:.1f} "
            f"| {bs / tpm:.1f} | {tp / tpm:.2f}x |"
        )
        print(f"\nembeddings agree with the plain loop: mean cosine similarity {cos:.4f}")

        # -- cached re-run ------------------------------------------------------------------------
        if args.cached and KERMANY.exists():
            from medtl.data import load_dataset
            from medtl.strategies import FeatureExtraction

            ds = load_dataset(KERMANY, progress=False, verify=False)
            tr = ds.split("train")[: args.cached]
            va = ds.split("val")[:200]
            c2 = ROOT / ".medtl_cache"

            def mk(s):
                return prepare_images(
                    s,
                    ds.classes,
                    size=args.size,
                    channels=1,
                    cache_dir=c2 / "images",
                    progress=False,
                )

            t0 = time.perf_counter()
            FeatureExtraction(cache_dir=str(c2), progress=False).fit(mk(tr), mk(va))
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            fe = FeatureExtraction(cache_dir=str(c2), progress=False).fit(mk(tr), mk(va))
            second = time.perf_counter() - t0
            print(
                f"\ncached re-run of feature extraction on {len(tr)} + {len(va)} images: {second:.1f} s "
                f"(first run {first:.1f} s; {fe.cache_hits_} embeddings from the cache)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
