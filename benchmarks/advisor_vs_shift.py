"""Does the advisor pick the strategy that measured better? Checked against benchmarks/shift_eval.py.

For every training-set size in the shift_eval results (Kermany train -> shifted official test), this runs
``medtl.advise`` on exactly that cell's training images (same split, same subsample, same image size) and
compares its pick with the measured winner between feature extraction (``fe``) and fine-tuning (the default
recipe, ``lpft``). A cell counts only when the paired DeLong test separates the two (p < 0.05); regret is the
test AUROC lost by following the advice. Not a test.

    python benchmarks/shift_eval.py --sizes 50,200,1000 --variants fe,lpft
    python benchmarks/advisor_vs_shift.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "chest_xray_pneumonia_224"
NAMES = {"fe": "feature_extraction", "lpft": "fine_tuning"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--results", default=str(ROOT / "runs" / "shift_eval" / "shift_eval_128px.json")
    )
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args(argv)
    results = json.loads(Path(args.results).read_text())

    from medtl.advisor import advise
    from medtl.config import config_from_dict
    from medtl.data._types import Dataset
    from medtl.experiment import load_data

    cells = sorted(
        {(k.split("|")[0], int(k.split("|")[1])) for k in results}, key=lambda c: (c[1], c[0])
    )
    rows = []
    for size, seed in cells:
        fe, ft = results.get(f"{size}|{seed}|fe"), results.get(f"{size}|{seed}|lpft")
        if not fe or not ft:
            continue
        cfg = config_from_dict(
            {
                "data": {
                    "path": str(KERMANY),
                    "max_train": None if size == "all" else int(size),
                    "split_seed": seed,
                },
                "model": {"image_size": args.image_size},
                "output": {"cache_dir": str(ROOT / ".medtl_cache")},
            }
        )
        data = load_data(cfg, progress=False)
        train_only = Dataset(
            root=data.dataset.root,
            source=data.dataset.source,
            classes=data.dataset.classes,
            samples=[s for s in data.dataset.samples if s.split == "train"],
        )
        advice = advise(
            train_only,
            image_size=args.image_size,
            cache_dir=str(ROOT / ".medtl_cache"),
            progress=False,
            seed=seed,
        )
        auc = {"feature_extraction": fe["test"]["auroc"], "fine_tuning": ft["test"]["auroc"]}
        best = max(auc, key=auc.get)
        p = ft.get("vs_fe", {}).get("p_value")
        pick = (
            advice.strategy if advice.strategy in auc else "fine_tuning"
        )  # partial counts as tuning
        rows.append(
            {
                "train images": fe["size"],
                "fe": auc["feature_extraction"],
                "lpft": auc["fine_tuning"],
                "p": p,
                "better": best,
                "advice": advice.strategy,
                "confidence": advice.confidence,
                "agrees": pick == best,
                "counted": p is not None and p < 0.05,
                "regret": auc[best] - auc[pick],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    counted = [r for r in rows if r["counted"]]
    print(
        "\n| train images | FE test AUROC | LP-FT test AUROC | DeLong p | better | advisor's pick | agrees |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p = "n/a" if r["p"] is None else f"{r['p']:.3g}"
        print(
            f"| {r['train images']} | {r['fe']:.3f} | {r['lpft']:.3f} | {p} | {r['better']} | "
            f"{r['advice']} ({r['confidence']}) | {'yes' if r['agrees'] else 'no'} |"
        )
    if counted:
        agree = sum(r["agrees"] for r in counted) / len(counted)
        regret = sum(r["regret"] for r in rows) / len(rows)
        print(
            f"\nagreement on {len(counted)} significant cells: {agree:.0%}; mean AUROC regret over "
            f"{len(rows)} cells: {regret:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
