"""End-to-end speed of what a user runs: whole `medtl` processes against the plain script they would write.

Each row runs, back to back in this one benchmark run (so the ratios mean something on a busy machine;
absolute seconds do not), a plain PyTorch/scikit-learn script doing the same job and the medtl command,
both as fresh processes on the same images, and prints the ratio plain / medtl (> 1: medtl is faster)
with the time per phase. Not a test: nothing here passes or fails.

    python benchmarks/bench_e2e.py                        # 1,000 Kermany training images + the test split
    python benchmarks/bench_e2e.py --sizes 1000,all --jobs fe,warm,advise,ft,startup
    python benchmarks/bench_e2e.py --data ../shared/data/brain_tumor_mri --train-dir Training --test-dir Testing

Jobs
- fe: plain = decode with PIL, resize, normalise, fp32 forward in batches of 32 under no_grad,
  ``LogisticRegression(C=0.01)`` on every training image, test AUROC. medtl = ``medtl compare --strategies
  feature_extraction`` with empty caches (the whole product: listing and hashing files, decoding,
  extraction, C chosen on validation then refit on train + val, metrics, report and plots).
- warm: the same medtl command again with the caches it left (a re-run after changing a report option).
- advise: ``medtl advise`` (no plain counterpart; its time against the 2-minute target).
- ft: one fine-tuning epoch. plain = fp32 ``model.train()`` AdamW loop over the decoded training images in
  batches of 32; medtl = ``medtl compare --strategies fine_tuning --epochs 1`` (LP-FT: probe + one epoch).
  Also the epoch alone: plain = images / (decoding + forward/backward/step) of its one epoch; medtl =
  images / the epoch's training seconds in ``history.json`` (what the issue 27 target compares).
- ftrun: medtl's default fine-tuning run end to end (``medtl train --config
  configs/kermany_fine_tuning.yaml`` with its data path set to the cell: LP-FT, 224 px, 5 epochs), its
  minutes against the 15-minute target. No plain side (a plain 5-epoch run is ~25 minutes here).
- startup: ``medtl --help`` and ``medtl backbones`` (targets < 1 s and < 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224"
SUFFIXES = {".jpeg", ".jpg", ".png"}

# The plain script a user writes (timm-style: a pretrained network, PIL, a linear head). It uses the
# same EfficientNet-Lite0 ImageNet weights as medtl (from the installed weights package) so the two
# differ only in how the work is done. It prints one JSON line with its phase times and test AUROC.
PLAIN = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import numpy as np, torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from medtl.backbones import create_backbone
t_import = time.perf_counter() - t0
job, train_dir, test_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ph = {"imports": t_import}
t = time.perf_counter()
classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
def files(d):
    return [(f, i) for i, c in enumerate(classes) for f in sorted((d / c).iterdir()) if f.is_file()]
tr, te = files(train_dir), files(test_dir)
ph["listing"] = time.perf_counter() - t
t = time.perf_counter()
model, cfg = create_backbone("efficientnet_lite0.in1k")
ph["model"] = time.perf_counter() - t
size = 224
mean = torch.tensor(cfg.mean).view(1, 3, 1, 1); std = torch.tensor(cfg.std).view(1, 3, 1, 1)
def load(batch):
    x = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
         for f, _ in batch]
    return (torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2) - mean) / std
ph["decoding"] = ph["forward"] = 0.0
if job == "fe":
    def embed(items):
        out = []
        model.eval()
        with torch.no_grad():
            for i in range(0, len(items), 32):
                t = time.perf_counter(); x = load(items[i:i + 32]); ph["decoding"] += time.perf_counter() - t
                t = time.perf_counter(); out.append(model(x).numpy()); ph["forward"] += time.perf_counter() - t
        return np.concatenate(out)
    f_tr, f_te = embed(tr), embed(te)
    t = time.perf_counter()
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    clf = LogisticRegression(C=0.01, max_iter=2000).fit((f_tr - mu) / sd, [y for _, y in tr])
    ph["head"] = time.perf_counter() - t
    t = time.perf_counter()
    p = clf.predict_proba((f_te - mu) / sd)
    y_te = [y for _, y in te]  # macro one-vs-rest AUROC for more than two classes, as medtl reports
    auc = roc_auc_score(y_te, p[:, 1]) if p.shape[1] == 2 else roc_auc_score(y_te, p, multi_class="ovr")
    ph["prediction"] = time.perf_counter() - t
else:  # one fine-tuning epoch, fp32, the whole batch in one pass
    model.reset_classifier(len(classes))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    order = np.random.default_rng(0).permutation(len(tr))
    for i in range(0, len(order), 32):
        batch = [tr[j] for j in order[i:i + 32]]
        t = time.perf_counter(); x = load(batch); ph["decoding"] += time.perf_counter() - t
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([y for _, y in batch]))
        opt.zero_grad(); loss.backward(); opt.step()
        ph["forward"] += time.perf_counter() - t
    auc = float("nan")
print(json.dumps({"phases": ph, "auroc": auc, "total": time.perf_counter() - t0}))
"""


def subset(src: Path, dst: Path, n: int | None, seed: int = 0) -> int:
    """Copy a stratified ``n`` images (all when None) of ``src``'s class folders into ``dst``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    per = {c: sorted(f for f in c.iterdir() if f.suffix.lower() in SUFFIXES) for c in classes}
    total = sum(len(v) for v in per.values())
    copied = 0
    for c, fs in per.items():
        k = len(fs) if n is None or n >= total else max(1, round(n * len(fs) / total))
        (dst / c.name).mkdir(parents=True, exist_ok=True)
        for i in sorted(rng.choice(len(fs), size=min(k, len(fs)), replace=False)):
            shutil.copy2(fs[i], dst / c.name / fs[i].name)
            copied += 1
    return copied


def run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        print(f"  ! {' '.join(cmd[:4])}... exited {out.returncode}: {out.stderr[-800:]}")
    return wall, out


def medtl_phases(run_dir: Path, name: str) -> dict[str, float]:
    """The phases medtl records for one strategy (seconds)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        row = summary["strategies"][name]
    except (OSError, KeyError, ValueError):
        return {}
    out = {"training (incl. extraction)": row.get("train_seconds")}
    meta = run_dir / name / "model" / "model.json"
    if meta.exists():
        extra = json.loads(meta.read_text()).get("extra", {})
        if extra.get("extract_seconds") is not None:
            out["extraction"] = extra["extract_seconds"]
    return {k: float(v) for k, v in out.items() if v is not None}


def fmt(ph: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in ph.items())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(KERMANY))
    ap.add_argument("--train-dir", default="train")
    ap.add_argument("--test-dir", default="test")
    ap.add_argument("--sizes", default="1000", help="comma-separated training sizes, or 'all'")
    ap.add_argument("--jobs", default="startup,fe,warm,advise,ft")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / args.train_dir).is_dir():
        sys.exit(f"no training folder {data / args.train_dir}: pass --data (see ../shared/data)")
    jobs = set(args.jobs.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="medtl_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    medtl = [sys.executable, "-m", "medtl"]
    py = [sys.executable, "-c", PLAIN]
    print(f"# bench_e2e on {data.name}; work folder {work}; {os.cpu_count()} CPUs")
    if "startup" in jobs:
        for cmd in (["--help"], ["backbones"]):
            t, _ = run([*medtl, *cmd], work)
            print(f"medtl {cmd[0]}: {t:.2f} s")
    for size in args.sizes.split(","):
        n = None if size == "all" else int(size)
        cell = work / f"n{size}"
        shutil.rmtree(cell, ignore_errors=True)
        k = subset(data / args.train_dir, cell / "train", n)
        shutil.copytree(data / args.test_dir, cell / "test")
        print(f"\n## {k} training images (+ {sum(1 for _ in (cell / 'test').rglob('*.*'))} test)")
        base = [
            *medtl, "compare", "--data", str(cell / "train"), "--test", str(cell / "test"),
            "--backbone", "efficientnet_lite0.in1k", "--image-size", "224", "--quiet", "--json",
        ]  # fmt: skip
        if "fe" in jobs:
            tp, outp = run([*py, "fe", str(cell / "train"), str(cell / "test")], cell)
            plain = json.loads(outp.stdout.strip().splitlines()[-1]) if outp.returncode == 0 else {}
            tm, outm = run([*base, "--strategies", "feature_extraction", "--out", "fe"], cell)
            ms = json.loads(outm.stdout) if outm.returncode == 0 else {}
            auc = (ms.get("strategies", {}).get("feature_extraction") or {}).get("test_auroc")
            print(
                f"feature extraction: plain {tp:.1f} s (AUROC {plain.get('auroc', float('nan')):.3f}) | "
                f"medtl {tm:.1f} s (AUROC {auc if auc is None else round(auc, 3)}) | ratio {tp / tm:.2f}x"
            )
            print(f"  plain phases: {fmt(plain.get('phases', {}))}")
            print(f"  medtl phases: {fmt(medtl_phases(cell / 'fe', 'feature_extraction'))}")
        if "warm" in jobs and "fe" in jobs:
            tw, _ = run([*base, "--strategies", "feature_extraction", "--out", "fe_warm"], cell)
            print(
                f"feature extraction, warm caches: medtl {tw:.1f} s | ratio to plain {tp / tw:.2f}x"
            )
            print(f"  medtl phases: {fmt(medtl_phases(cell / 'fe_warm', 'feature_extraction'))}")
        if "advise" in jobs:
            ta, outa = run(
                [*medtl, "advise", "--data", str(cell / "train"), "--json", "--quiet"], cell
            )
            adv = json.loads(outa.stdout) if outa.returncode == 0 else {}
            print(f"advise: {ta:.1f} s (target <= 120 s), pick {adv.get('strategy')}")
            parts = (adv.get("budget") or {}).get("seconds") or {}
            print(f"  advise phases: {fmt({k: v for k, v in parts.items() if k != 'total'})}")
        if "ft" in jobs:
            tp, outp = run([*py, "ft", str(cell / "train"), str(cell / "test")], cell)
            plain = json.loads(outp.stdout.strip().splitlines()[-1]) if outp.returncode == 0 else {}
            tm, _ = run(
                [*base, "--strategies", "fine_tuning", "--epochs", "1", "--out", "ft"], cell
            )
            print(
                f"one fine-tuning epoch: plain {tp:.1f} s | medtl {tm:.1f} s (LP-FT: probe + epoch, "
                f"validation, test, report) | ratio {tp / tm:.2f}x"
            )
            print(f"  plain phases: {fmt(plain.get('phases', {}))}")
            print(f"  medtl phases: {fmt(medtl_phases(cell / 'ft', 'fine_tuning'))}")
            epoch_rates(plain, cell / "ft", k)
        if "ftrun" in jobs:
            ft_run(cell, medtl)


def epoch_rates(plain: dict, run_dir: Path, n_plain: int) -> None:
    """The epoch alone, both sides: images per second of training (decoding included for both)."""
    ph = plain.get("phases", {})
    plain_rate = n_plain / max(1e-9, ph.get("decoding", 0.0) + ph.get("forward", 0.0))
    try:
        hist = json.loads((run_dir / "fine_tuning" / "history.json").read_text())
        row = hist[0]  # history.json: one row per epoch
        rate = row["images"] / row["train_seconds"]
    except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        print(f"  epoch alone: medtl history not readable ({exc})")
        return
    print(
        f"  epoch alone: plain {plain_rate:.1f} img/s | medtl {rate:.1f} img/s ({row['images']} "
        f"images, {row['train_seconds']:.1f} s) | ratio {rate / plain_rate:.2f}x (target >= 2x)"
    )


def ft_run(cell: Path, medtl: list[str]) -> None:
    """The README's Kermany fine-tuning run (its config, data pointed at the cell), whole process; run
    it with ``--sizes all`` for the README's number."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "kermany_fine_tuning.yaml").read_text())
    cfg["data"]["path"] = str(cell)  # train/ and test/, the layout of the Kermany folder
    cfg["output"] = {**cfg.get("output", {}), "out": str(cell / "ftrun")}
    (cell / "ftrun.yaml").write_text(yaml.safe_dump(cfg))
    t, _ = run([*medtl, "train", "--config", str(cell / "ftrun.yaml"), "--quiet"], cell)
    epochs = []  # history.json: one row per epoch
    with contextlib.suppress(OSError, ValueError):
        epochs = json.loads((cell / "ftrun" / "fine_tuning" / "history.json").read_text())
    train_s = sum(r.get("train_seconds", 0.0) for r in epochs)
    images = sum(r.get("images", 0) for r in epochs)
    auc = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        summary = json.loads((cell / "ftrun" / "summary.json").read_text())
        auc = summary["strategies"]["fine_tuning"]["test_auroc"]
    print(
        f"default fine-tuning run (configs/kermany_fine_tuning.yaml): {t / 60:.1f} min end to end "
        f"(target <= 15), {len(epochs)} epochs, training {train_s / 60:.1f} min at "
        f"{images / max(train_s, 1e-9):.1f} img/s, test AUROC {auc}"
    )


if __name__ == "__main__":
    main()
