"""Does the measured advisor pick the winner, and do its predicted intervals hold? A development grid.

Cells: Kermany chest X-rays (``train/`` -> ``test/``; 50, 200, 1000, all training images) and the brain MRI
set (``Training/`` -> ``Testing/``, 4 classes; 100, 500, all; the test copies of byte-identical training
files are dropped before scoring, see that folder's README), and the built-in phantom (synthetic DICOM,
written to ``<work>/phantom``; 100, 400, all), x seeds (default 0 1 2). A fixed tenth of
each training folder (grouped by patient for Kermany, by file bytes for brain MRI; the same for every cell
and seed) is the **dev holdout**: never part of a cell, it is the in-distribution target on which the rule
may be inspected and chosen. "all" is the rest of the training folder. In every cell:

1. a stratified subsample of the training folder minus the dev holdout (the cell's size) is split ~86/14
   into train/val, grouped by patient where ids are known;
2. ``medtl.advise`` sees only that train+val (never the dev holdout or the test folder) and predicts each
   strategy's AUROC at the cell's size with an interval, and picks;
3. feature extraction and fine-tuning (the default LP-FT recipe, ``--epochs``) are trained on the same
   train/val and scored on the dev holdout and on the test folder; the paired test is DeLong's for two
   classes and a paired bootstrap of the macro one-vs-rest AUROC for more.

Reported on both targets: agreement with the significant winner (p < 0.05), mean AUROC regret (best
AUROC minus the pick's), coverage (how often each predicted interval contains the measured AUROC) and
sharpness (mean interval width), and each dataset's profile (BatchNorm KL, entropy, gradient share,
probes). Targets (issue 13): agreement >= 90%, regret <= 0.005, coverage >= 80% at width <= 0.08.
Constants are never tuned on the test folders. Training results and advice are stored apart, so
``--readvise`` re-runs only the advisor after a change to the rule.

Usage (the full grid is hours on a 2-core CPU; --smoke runs one small cell):
    python benchmarks/advisor_eval.py --datasets kermany brain --seeds 0 1 2
    python benchmarks/advisor_eval.py --smoke     # Kermany, 200 images, 64 px, seed 0, 3 epochs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = {
    "kermany": (
        "/work/shared/data/chest_xray_pneumonia_224",
        "train",
        "test",
        [50, 200, 1000, None],
    ),
    "brain": ("/work/shared/data/brain_tumor_mri", "Training", "Testing", [100, 500, None]),
    # NIH ChestX-ray14, 598 adult radiographs, 14 findings (macro AUROC over the scorable ones), one image
    # per patient: no test folder, so medtl's own patient-grouped split of labels.csv decides: its
    # training part (418) is the pool, its validation + test parts (180) the test images; no dev holdout.
    "nih": ("/work/shared/data/nih_cxr14_multilabel", "labels.csv", None, [300, None]),
    # the built-in phantom (synthetic DICOM chest radiographs, two images per fake patient), written to
    # <work>/phantom on first use: train 2 x 400 images (seed 11), test 2 x 200 (seed 12, other patients).
    # Synthetic: it profiles a large domain gap (KL 0.26 at 224 px, 0.52 at 64 px) and checks the grid's plumbing on data any
    # machine has; it is reported apart and claims nothing about accuracy on real images.
    "phantom": ("", "train", "test", [100, 400, None]),
}
PHANTOM = {"train": (400, 11), "test": (200, 12)}  # split -> (images per class, seed)
# Patient ids in Kermany file names (person123_bacteria_4.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-1427-0001):
# the advisor's pilot holdout, the cells' train/val split and the dev holdout are grouped by patient.
PATIENT_PATTERN = {"kermany": r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"}
# The dev holdout: a fixed tenth of each training folder (grouped by patient, or by file bytes where the
# folder has no patient ids), the same for every cell and seed and never part of any cell. It is the
# in-distribution target where the rule may be inspected and its constants chosen; the test folder is
# only reported.
DEV_FOLDS = 10
DEV_SEED = 20261202
# A fixed salt for the hashed patient ids: with the default per-process salt the grouped splits below
# (which sort the hashed ids) drew a different cell in every process, so a --readvise saw other images
# than the training run had.
SALT = b"medtl-advisor-eval-fixed-salt-v1"
log = logging.getLogger("advisor_eval")


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _groups(samples: list[Any]) -> list[str]:
    """Patient id where known, else the file's bytes (duplicates stay together)."""
    return [s.patient_id or _sha(s.path) for s in samples]


def _group_split(samples: list[Any], folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held) indices: one fold of a stratified, grouped k-fold (scikit-learn's)."""
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest, held = next(
        cv.split(np.zeros(len(samples)), [s.label for s in samples], _groups(samples))
    )
    return rest, held


def data_root(name: str, work: str | Path) -> Path:
    """The dataset's folder; the phantom's is written under ``work`` on first use (deterministic)."""
    if name != "phantom":
        return Path(DATA[name][0])
    from medtl.data.synth import make_phantom

    root = Path(work) / "phantom"
    for split, (per_class, seed) in PHANTOM.items():
        if not (root / split / "manifest.csv").is_file():
            log.info("writing the phantom's %s split (%d images)", split, 2 * per_class)
            make_phantom(root / split, n_per_class=per_class, seed=seed)
    return root


def _load(folder: Path, pattern: str | None) -> Any:
    """A folder, or its ``manifest.csv`` when it has one (the phantom's: it knows the patients)."""
    from medtl.data import load_dataset

    manifest = folder / "manifest.csv"
    src = manifest if manifest.is_file() else folder
    return load_dataset(str(src), progress=False, patient_id_pattern=pattern, salt=SALT)


def _nih_parts(root: Path) -> tuple[Any, list[Any], list[Any]]:
    """NIH: (dataset, pool = medtl's training split, test = its validation + test splits)."""
    from medtl.data import load_dataset

    ds = load_dataset(str(root / "labels.csv"), progress=False, salt=SALT)
    return ds, ds.split("train"), [*ds.split("val"), *ds.split("test")]


def load_cell_data(
    name: str, seed: int, n: int | None, work: str | Path = "runs/advisor_eval"
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(train+val Dataset for the cell, dev holdout or None, test Dataset, notes).

    The cell is a stratified subsample of the training folder minus the dev holdout ("all" = all of
    it), split ~86/14 into train/val grouped by patient; the test folder loses the files whose bytes
    equal a training-folder file.
    """
    from dataclasses import replace

    from sklearn.model_selection import train_test_split

    from medtl.data._types import Sample

    _, tr_dir, te_dir, _ = DATA[name]
    root = data_root(name, work)
    if name == "nih":
        train, pool, test_samples = _nih_parts(root)
        samples, dev = list(pool), None
        test = replace(train, samples=test_samples)
    else:
        train = _load(root / tr_dir, PATIENT_PATTERN.get(name))
        test = _load(root / te_dir, None)
        if train.classes != test.classes:
            raise SystemExit(f"{name}: class folders differ: {train.classes} vs {test.classes}")
        samples = list(train.samples)
        rest, held = _group_split(samples, DEV_FOLDS, DEV_SEED)
        dev_samples = [Sample(**{**samples[i].__dict__, "split": "test"}) for i in held]
        dev = replace(train, samples=dev_samples)
        pool = [samples[i] for i in rest]
    idx = np.arange(len(pool))
    if n is not None and n < len(pool):
        idx, _ = train_test_split(
            idx, train_size=n, stratify=[s.label for s in pool], random_state=seed
        )
    sub = [pool[i] for i in sorted(idx)]
    tr, va = _group_split(sub, 7, seed)
    split = {int(i): "train" for i in tr} | {int(i): "val" for i in va}
    cell = replace(
        train, samples=[Sample(**{**s.__dict__, "split": split[i]}) for i, s in enumerate(sub)]
    )
    # drop test files whose bytes equal any file of the whole training folder (not just the cell)
    seen = {_sha(s.path) for s in samples}
    kept = [
        Sample(**{**s.__dict__, "split": "test"}) for s in test.samples if _sha(s.path) not in seen
    ]
    notes = {
        "test_files": len(test.samples),
        "test_dropped_duplicates": len(test.samples) - len(kept),
        "dev_images": len(dev.samples) if dev is not None else 0,
    }
    return cell, dev, replace(test, samples=kept), notes


def seed_averaged(
    y: np.ndarray, probs: dict[str, list[np.ndarray]], task: Any, seed: int, questions: Any = None
) -> dict[str, Any]:
    """Each strategy's AUROC averaged over its training seeds, and FT - FE of those means with a paired
    bootstrap over the images (every seed's AUROC recomputed on the same replicate): the strategy, not
    one run, is compared. Multi-label: the macro over ``questions`` (the findings scorable here)."""
    from medtl.advisor._curve import bootstrap_weights, paired_difference, weighted_auroc

    w = bootstrap_weights(len(y), 2000, np.random.default_rng(seed))
    reps = {
        s: np.mean([weighted_auroc(y, p, w, task, questions) for p in ps], axis=0)
        for s, ps in probs.items()
    }
    ones = np.ones((1, len(y)))
    per_seed = {
        s: [float(weighted_auroc(y, p, ones, task, questions)[0]) for p in ps]
        for s, ps in probs.items()
    }
    d = paired_difference(reps["fine_tuning"], reps["feature_extraction"])
    return {
        "auroc": {s: float(np.mean(v)) for s, v in per_seed.items()},
        "per_seed": per_seed,
        "paired": {"method": "bootstrap_seed_mean", **d},
        "n": len(y),
    }


def train_cell(name: str, n: int | None, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train both strategies with every training seed on the cell; score the seed means on the dev
    holdout (where the dataset has one) and on the test images."""
    from medtl.advisor._findings import scored_findings
    from medtl.data import prepare_images
    from medtl.strategies import FeatureExtraction, FineTuning
    from medtl.tasks import task_for

    cell, dev, test, notes = load_cell_data(name, seed, n, args.work)
    cache = Path(args.cache or Path(args.work) / "cache")
    task = task_for(cell.classes, cell.task_kind)

    def prep(samples: list[Any]) -> Any:
        return prepare_images(
            samples,
            cell.classes,
            size=args.image_size,
            channels=1,
            cache_dir=cache / "images",
            read_options={"window": "header"},
            progress=False,
        )

    tr, va = prep(cell.split("train")), prep(cell.split("val"))
    targets = {"test": prep(test.samples)}
    if dev is not None:
        targets["dev"] = prep(dev.samples)
    probs: dict[str, dict[str, list[np.ndarray]]] = {t: {} for t in targets}
    runs = []
    for ts in args.train_seeds:
        kw = {"backbone": args.backbone, "seed": ts, "cache_dir": str(cache), "progress": False}
        t0 = time.perf_counter()
        fe = FeatureExtraction(**kw).fit(tr, va)
        t1 = time.perf_counter()
        ft = FineTuning(epochs=args.epochs, **kw).fit(tr, va)
        t2 = time.perf_counter()
        for t, d in targets.items():
            probs[t].setdefault("feature_extraction", []).append(fe.predict_proba(d))
            probs[t].setdefault("fine_tuning", []).append(ft.predict_proba(d))
        runs.append(
            {
                "train_seed": ts,
                "seconds": {"fe": t1 - t0, "ft": t2 - t1},
                "ft_epochs_run": int(ft.epochs_run_),
                "ft_best_epoch": int(ft.best_epoch_),
                "ft_val_auroc_by_epoch": [float(r["val_auroc"]) for r in ft.history_],
                "ft_epoch_seconds": [float(r["train_seconds"]) for r in ft.history_],
                "ft_batchnorm_folded": int(getattr(ft, "batchnorm_folded_", 0)),
            }
        )
        log.info("%s n=%s: training seed %d done in %.0f s", name, n or "all", ts, t2 - t0)
    scores = {}
    for t, d in targets.items():
        y = np.asarray(d.labels)
        questions = scored_findings([y], cell.classes)[0] if task.kind == "multilabel" else None
        scores[t] = seed_averaged(y, probs[t], task, seed, questions)
    return {
        "dataset": name,
        "n": n or "all",
        "n_train_val": len(cell.samples),
        "n_train": len(tr),
        "patients_known": any(s.patient_id for s in cell.samples),
        "seed": seed,
        **notes,
        **scores,
        "runs": runs,
    }


def advise_cell(name: str, n: int | None, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The advisor on the cell's train+val only (never the dev holdout or the test folder)."""
    from medtl.advisor import advise
    from medtl.advisor.rules import domain_gap

    cell, _, _, _ = load_cell_data(name, seed, n, args.work)
    t0 = time.perf_counter()
    advice = advise(
        cell,
        backbone=args.backbone,
        image_size=args.image_size,
        cache_dir=Path(args.cache or Path(args.work) / "cache"),
        seed=seed,
        progress=False,
        pilot_minutes=args.pilot_minutes,
        epochs=args.epochs,
    )
    return {
        "pick": advice.strategy,
        "epochs": args.epochs,  # the real run's, for re-scoring (rules.pilot_shortened)
        "confidence": advice.confidence,
        "predicted": advice.predicted_auroc,
        "interval": advice.expected_auroc,
        "branch": advice.decision["branch"],
        "predicted_gain": advice.decision["predicted_gain"],
        "measured_pilot": advice.decision.get("measured_paired"),
        "decision": advice.to_dict()["decision"],
        "curves": advice.curves,
        "pilot": advice.profile.pilot,
        "minutes": advice.estimated_minutes,
        "seconds": time.perf_counter() - t0,
        "budget": advice.budget,
        "profile": {
            "bn_kl": advice.profile.bn_kl,
            "imagenet_entropy": advice.profile.imagenet_entropy,
            "grad_early_share": advice.profile.grad_early_share,
            "knn_auroc": advice.profile.probe.get("knn_auroc"),
            "probe_auroc": advice.profile.probe.get("probe_auroc"),
            "gap": domain_gap(advice.profile)[1],
        },
    }


def truth_target(cell: dict[str, Any]) -> str:
    """Where a cell's truth is read: the in-distribution dev holdout, or the test images where the
    dataset has no dev holdout (NIH: medtl's own split of one distribution)."""
    return "dev" if "dev" in cell else "test"


def score(cell: dict[str, Any], adv: dict[str, Any], target: str) -> dict[str, Any]:
    """Agreement, regret and coverage of one cell's advice against one target (dev, test or truth)."""
    t = cell[truth_target(cell) if target == "truth" else target]
    aucs, pt = t["auroc"], t["paired"]
    best = max(aucs, key=aucs.get)
    iv = adv["interval"]
    return {
        "significant": bool(pt["p_value"] is not None and pt["p_value"] < 0.05),
        "best": best,
        "right": adv["pick"] == best,
        "regret": aucs[best] - aucs[adv["pick"]],
        "covered": {s: bool(iv[s][0] <= aucs[s] <= iv[s][1]) for s in aucs},
        "width": {s: iv[s][1] - iv[s][0] for s in aucs},
    }


def summary(rows: list[tuple[dict[str, Any], dict[str, Any]]], target: str) -> list[str]:
    """The issue's four numbers on one target."""
    sc = [score(c, a, target) for c, a in rows]
    sig = [x for x in sc if x["significant"]]
    cov = [v for x in sc for v in x["covered"].values()]
    wid = [v for x in sc for v in x["width"].values()]
    return [
        f"- cells: {len(sc)}; with a significant winner: {len(sig)}; advisor picked it in "
        f"{sum(x['right'] for x in sig)} of {len(sig)} (target >= 90%)",
        f"- mean AUROC regret: {np.mean([x['regret'] for x in sc]):.4f} (target <= 0.005)",
        f"- coverage: {np.mean(cov):.0%} of {len(cov)} intervals (target >= 80%); "
        f"sharpness (mean width): {np.mean(wid):.3f} (target <= 0.08)",
    ]


def report(results: dict[str, Any]) -> str:
    rows = [(r["train"], r["advice"]) for r in results.values() if "advice" in r and "train" in r]
    lines = [
        "| cell | n dev/test | FE dev | FT dev | FT-FE dev (p) | FE test | FT test | FT-FE test (p) | "
        "pick (conf) | FE pred [interval] | FT pred [interval] | advise s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, a in rows:
        p, i = a["predicted"], a["interval"]
        cells = []
        for t in ("dev", "test"):
            if t not in c:
                cells += ["-", "-", "-"]
                continue
            au, pt = c[t]["auroc"], c[t]["paired"]
            cells += [
                f"{au['feature_extraction']:.3f}",
                f"{au['fine_tuning']:.3f}",
                f"{pt['diff']:+.3f} ({pt['p_value']:.3f})",
            ]
        lines.append(
            f"| {c['dataset']}_n{c['n']}_s{c['seed']} | {c.get('dev', {}).get('n', '-')}/"
            f"{c['test']['n']} | "
            + " | ".join(cells)
            + f" | {a['pick']} ({a['confidence']}) | {p['feature_extraction']:.3f} "
            f"[{i['feature_extraction'][0]:.3f}, {i['feature_extraction'][1]:.3f}] | "
            f"{p['fine_tuning']:.3f} [{i['fine_tuning'][0]:.3f}, {i['fine_tuning'][1]:.3f}] | "
            f"{a['seconds']:.0f} |"
        )
    lines += [
        "",
        "Profiles (mean over the dataset's cells; descriptive, never voted):",
        "",
        "| dataset | BatchNorm KL | ImageNet entropy | gradient early share | k-NN AUROC | probe AUROC "
        "| gap |",
        "|---|---|---|---|---|---|---|",
    ]
    by_data: dict[str, list[dict[str, Any]]] = {}
    for c, a in rows:
        if "profile" in a:
            by_data.setdefault(c["dataset"], []).append(a["profile"])
    for name, profs in by_data.items():

        def avg(key: str, profs: list[dict[str, Any]] = profs) -> str:
            v = [p[key] for p in profs if p.get(key) is not None]
            return f"{np.mean(v):.3f}" if v else "-"

        gaps = sorted({p["gap"].split(" (")[0] for p in profs})
        lines.append(
            f"| {name} | {avg('bn_kl')} | {avg('imagenet_entropy')} | {avg('grad_early_share')} | "
            f"{avg('knn_auroc')} | "
            f"{avg('probe_auroc')} | {', '.join(gaps)} |"
        )
    for t, what in (
        (
            "truth",
            "truth (the dev holdout where the dataset has one, else its in-distribution test "
            "images; seed means; rules are chosen here, leave one dataset out)",
        ),
        ("dev", "dev holdout (in-distribution)"),
        ("test", "test folder (reported only; Kermany's test is shifted)"),
    ):
        have = [(c, a) for c, a in rows if t == "truth" or t in c]
        if not have:
            continue
        lines += ["", f"On the {what}:", *summary(have, t)]
        by: dict[str, list[Any]] = {}
        for c, a in have:
            by.setdefault(f"{c['dataset']} n={c['n']}", []).append((c, a))
        for k, sub in by.items():
            sc = [score(c, a, t) for c, a in sub]
            lines.append(
                f"  - {k}: {sum(x['right'] for x in sc if x['significant'])}/"
                f"{sum(x['significant'] for x in sc)} right, regret "
                f"{np.mean([x['regret'] for x in sc]):.3f}, coverage "
                f"{np.mean([v for x in sc for v in x['covered'].values()]):.0%}"
            )
    return "\n".join(lines)


# -- re-scoring the rule from the stored cells (no training) ----------------------------------------------
# Candidate prior constants of the rule (medtl.advisor.rules.full_size_gain); the literature-informed
# default comes first and wins ties. Chosen leave one dataset out: the constants that score a dataset's
# cells are those with the least mean regret (then the most agreement) on the other datasets' cells.
PRIOR_GAINS = (0.01, 0.0, 0.005, 0.02, 0.03)
PRIOR_SDS = (0.02, 0.01, 0.04, float("inf"))
PILOT_BIASES = (0.0, 0.005, 0.01)


def _shortened(adv: dict[str, Any]) -> bool:
    """Whether the cell's fine-tuning pilot trained less than the real run (the rule's own test)."""
    from medtl.advisor.rules import pilot_shortened
    from medtl.strategies import FineTuning

    return pilot_shortened(adv["pilot"], int(adv.get("epochs") or FineTuning().epochs))


def apply_rule(adv: dict[str, Any], rule: str, prior: tuple[float, ...] | None = None) -> dict:
    """The pick and intervals a rule gives from a cell's stored advice ingredients.

    ``full``: the shipped rule (expected gain at the full size, prior ``prior``); ``pilot``: the
    previous rule (the pilot's measured difference alone); ``curves``: the curves' extrapolated
    difference alone; ``always_ft`` / ``always_fe``.
    """
    from medtl.advisor.rules import full_size_gain, needed_gain, predictions_from_gain

    dec, curves = adv["decision"], adv["curves"]
    needed = needed_gain(adv["minutes"])
    fe_c = curves["feature_extraction"]
    if rule == "full":
        params = {s: (c["params"] if c["fitted"] else None) for s, c in curves.items()}
        g = full_size_gain(
            dec["measured_paired"],
            params,
            int(curves["fine_tuning"]["n_full"]),
            dec["predicted_gain"],
            prior_gain=prior[0],
            prior_sd=prior[1],
            shortened=_shortened(adv),
            pilot_bias=prior[2] if len(prior) > 2 else 0.0,
        )
        predicted, expected = predictions_from_gain(fe_c["predicted_auroc"], fe_c["interval"], g)
        pick = "fine_tuning" if g["diff"] >= needed else "feature_extraction"
        return {"pick": pick, "predicted": predicted, "interval": expected, "gain": g["diff"]}
    basis = {
        "pilot": dec["measured_paired"].get("diff"),
        "curves": dec["predicted_gain"]["diff"],
        "always_ft": 1.0,
        "always_fe": -1.0,
    }[rule]
    pick = "fine_tuning" if basis is not None and basis >= needed else "feature_extraction"
    return {
        "pick": pick,
        "predicted": adv["predicted"],
        "interval": adv["interval"],
        "gain": basis,
    }


def _scores(rows: list[tuple[dict, dict]], rule: str, prior: Any = None) -> list[dict[str, Any]]:
    return [score(c, apply_rule(a, rule, prior), "truth") for c, a in rows]


def _objective(sc: list[dict[str, Any]]) -> tuple[float, float]:
    sig = [x for x in sc if x["significant"]]
    agree = np.mean([x["right"] for x in sig]) if sig else 1.0
    return (float(np.mean([x["regret"] for x in sc])), -float(agree))


def _aggregate(sc: list[dict[str, Any]]) -> dict[str, Any]:
    sig = [x for x in sc if x["significant"]]
    cov = [v for x in sc for v in x["covered"].values()]
    wid = [v for x in sc for v in x["width"].values()]
    return {
        "cells": len(sc),
        "with_winner": len(sig),
        "winner_picked": int(sum(x["right"] for x in sig)),
        "mean_regret": float(np.mean([x["regret"] for x in sc])) if sc else float("nan"),
        "coverage": float(np.mean(cov)) if cov else float("nan"),
        "mean_width": float(np.mean(wid)) if wid else float("nan"),
    }


def _shipped() -> tuple[float, float, float]:
    from medtl.advisor import rules

    return (rules.PRIOR_GAIN, rules.PRIOR_SD, rules.PILOT_BIAS)


def leave_one_dataset_out(results: dict[str, Any]) -> dict[str, Any]:
    """Choose the prior constants without each dataset in turn, score that dataset's cells with them;
    the baselines (previous rule, curves alone, always one strategy) are scored on all cells."""
    rows = [(r["train"], r["advice"]) for r in results.values() if "advice" in r and "train" in r]
    names = sorted({c["dataset"] for c, _ in rows})
    grid = [(g, sd, b) for b in PILOT_BIASES for g in PRIOR_GAINS for sd in PRIOR_SDS]
    chosen, held_scores = {}, []
    for d in names:
        others = [(c, a) for c, a in rows if c["dataset"] != d]
        mine = [(c, a) for c, a in rows if c["dataset"] == d]
        best = grid[0]
        if others:
            best = min(grid, key=lambda pr: _objective(_scores(others, "full", pr)))
        chosen[d] = {"prior_gain": best[0], "prior_sd": best[1], "pilot_bias": best[2]}
        for (c, _), x in zip(mine, _scores(mine, "full", best)):
            held_scores.append({**x, "cell": f"{c['dataset']}_n{c['n']}_s{c['seed']}"})
    all_rows_best = min(grid, key=lambda pr: _objective(_scores(rows, "full", pr)))
    return {
        "lodo": _aggregate(held_scores),
        "lodo_cells": held_scores,
        "chosen_without": chosen,
        "chosen_on_all": {
            "prior_gain": all_rows_best[0],
            "prior_sd": all_rows_best[1],
            "pilot_bias": all_rows_best[2],
        },
        "baselines": {
            r: _aggregate(_scores(rows, r)) for r in ("pilot", "curves", "always_ft", "always_fe")
        },
        "shipped_constants_on_all": _aggregate(_scores(rows, "full", _shipped())),
    }


def cost_check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The advice's estimated minutes against the measured fits (mean over training seeds)."""
    out = []
    for r in results.values():
        if "advice" not in r or "runs" not in r.get("train", {}):
            continue
        c, a = r["train"], r["advice"]
        for key, s in (("fe", "feature_extraction"), ("ft", "fine_tuning")):
            took = float(np.mean([run["seconds"][key] for run in c["runs"]])) / 60.0
            out.append(
                {
                    "cell": f"{c['dataset']}_n{c['n']}_s{c['seed']}",
                    "strategy": s,
                    "estimated_min": a["minutes"][s],
                    "measured_min": took,
                    "ratio": a["minutes"][s] / took if took > 0 else float("nan"),
                }
            )
    return out


def twice_check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The advice's "twice as many images" prediction, scored: an advice-only cell at about half a
    trained cell's train+val size predicts each strategy's AUROC at twice its size (``at_full +
    gain_2x``, interval: its full-size interval shifted by the gain's interval); the trained cell's
    seed-mean AUROC (on its truth target) is what twice the images gave."""
    trained = {
        (r["train"]["dataset"], int(r["train"]["n_train_val"])): r["train"]
        for r in results.values()
        if "train" in r
    }
    out = []
    for r in results.values():
        if "train" in r or "advice" not in r:
            continue
        a = r["advice"]
        n_half = int(a["curves"]["fine_tuning"]["n_full"])
        name = r.get("dataset")
        match = [
            (n, c)
            for (d, n), c in trained.items()
            if d == name and 1.6 * n_half <= n <= 2.4 * n_half
        ]
        if not match:
            continue
        n2, c = match[0]
        truth = c[truth_target(c)]["auroc"]
        for s, cv in a["curves"].items():
            g, (glo, ghi) = cv["gain_2x"], cv["gain_2x_interval"]
            lo, hi = cv["interval"]
            pred = cv["predicted_auroc"] + g
            iv = [max(lo + glo, 0.0), min(hi + ghi, 1.0)]
            out.append(
                {
                    "cell": f"{name} {n_half} -> {n2}",
                    "strategy": s,
                    "predicted": pred,
                    "interval": iv,
                    "measured": truth[s],
                    "covered": bool(iv[0] <= truth[s] <= iv[1]),
                }
            )
    return out


def rescore_report(results: dict[str, Any]) -> str:
    res = leave_one_dataset_out(results)
    lines = [
        "## Rule re-scored from the stored cells (truth: seed means; leave one dataset out)",
        "",
    ]

    def row(name: str, agg: dict[str, Any]) -> str:
        return (
            f"| {name} | {agg['cells']} | {agg['winner_picked']}/{agg['with_winner']} | "
            f"{agg['mean_regret']:.4f} | {agg['coverage']:.0%} | {agg['mean_width']:.3f} |"
        )

    lines += [
        "| rule | cells | winner picked | mean regret | interval coverage | mean width |",
        "|---|---|---|---|---|---|",
        row("expected gain at full size + prior (LODO constants)", res["lodo"]),
        row(
            f"the same, shipped constants {_shipped()} (chosen on all cells)",
            res["shipped_constants_on_all"],
        ),
        *(row(f"baseline: {k}", v) for k, v in res["baselines"].items()),
        "",
        "Constants chosen without each dataset: "
        + "; ".join(f"{d}: {v}" for d, v in res["chosen_without"].items())
        + f"; on all cells: {res['chosen_on_all']}.",
        "",
        "| cell | significant | best | LODO pick right | regret |",
        "|---|---|---|---|---|",
    ]
    for x in res["lodo_cells"]:
        lines.append(
            f"| {x['cell']} | {x['significant']} | {x['best']} | {x['right']} | {x['regret']:.4f} |"
        )
    lines += [
        "",
        "| cell | strategy | estimated min | measured min (fit) | ratio |",
        "|---|---|---|---|---|",
    ]
    for x in cost_check(results):
        lines.append(
            f"| {x['cell']} | {x['strategy']} | {x['estimated_min']:.2f} | {x['measured_min']:.2f} "
            f"| {x['ratio']:.2f} |"
        )
    tw = twice_check(results)
    if tw:
        lines += [
            "",
            "Twice as many images, predicted from half the pool (advice-only cells) and measured:",
            "",
            "| cells | strategy | predicted | interval | measured | covered |",
            "|---|---|---|---|---|---|",
        ]
        for x in tw:
            lines.append(
                f"| {x['cell']} | {x['strategy']} | {x['predicted']:.3f} | {x['interval'][0]:.3f}-"
                f"{x['interval'][1]:.3f} | {x['measured']:.3f} | {x['covered']} |"
            )
        lines.append(f"Coverage {np.mean([x['covered'] for x in tw]):.0%} of {len(tw)}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--datasets", nargs="*", default=["kermany", "brain", "phantom"], choices=list(DATA)
    )
    ap.add_argument("--sizes", nargs="*", type=int, help="override every dataset's sizes (0 = all)")
    ap.add_argument(
        "--seeds", nargs="*", type=int, default=[0], help="data seeds (which subsample a cell is)"
    )
    ap.add_argument(
        "--train-seeds",
        nargs="*",
        type=int,
        default=[0, 1, 2],
        help="training seeds per cell: the truth is the strategies' mean over them",
    )
    ap.add_argument("--backbone", default="efficientnet_lite0.in1k")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the real fine-tuning runs")
    ap.add_argument("--pilot-minutes", type=float, default=2.0)
    ap.add_argument("--smoke", action="store_true", help="kermany, 200 images, 64 px, 1 seed")
    ap.add_argument("--work", default="runs/advisor_eval")
    ap.add_argument("--cache", help="embedding/image cache folder (default: <work>/cache)")
    ap.add_argument(
        "--advise-only",
        action="store_true",
        help="advise without training (cells at half a trained cell's size: checks the advice's "
        "'twice as many images' prediction against the trained cell)",
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="no training or advising: re-score the rule from the stored cells (leave one dataset out)",
    )
    ap.add_argument(
        "--readvise",
        action="store_true",
        help="re-run the advisor on every cell, keep the training",
    )
    args = ap.parse_args()
    if args.smoke:
        args.datasets, args.sizes, args.seeds = ["kermany"], [200], [0]
        args.image_size, args.epochs = 64, 3
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("medtl", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.work) / f"advisor_eval{'_smoke' if args.smoke else ''}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if args.rescore:
        text = rescore_report(results)
        print(text)
        out.with_name(out.stem + "_rescored.md").write_text(text + "\n")
        return
    from medtl._fileio import atomic_write_json

    for name in args.datasets:
        if name != "phantom" and not Path(DATA[name][0]).is_dir():
            log.warning("%s: %s not found, skipped", name, DATA[name][0])
            continue
        sizes = [s or None for s in args.sizes] if args.sizes else DATA[name][3]
        for n in sizes:
            for seed in args.seeds:
                cid = f"{name}_n{n or 'all'}_s{seed}_{args.image_size}px"
                r = results.setdefault(cid, {})
                if "train" not in r and not args.advise_only:
                    log.info("%s: training both strategies", cid)
                    r["train"] = train_cell(name, n, seed, args)
                    atomic_write_json(out, results)
                if "advice" not in r or args.readvise:
                    log.info("%s: advising", cid)
                    r["dataset"] = name
                    r["advice"] = advise_cell(name, n, seed, args)
                    atomic_write_json(out, results)
    table = report(results)
    print(table)
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
