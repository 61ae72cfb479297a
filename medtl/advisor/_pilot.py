"""The pilot: both strategies trained on the user's own training data, scored on the same held-out images.

A deterministic cost model (multiply-accumulates of the backbone at the image size, at a reference rate
measured on the project's 2-core CPU) sizes the pilot to the advisor's time budget, so the plan, and with
it the advice, never depends on the machine's momentary load. Measured seconds are reported beside it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medtl.advisor._measure import group_codes
from medtl.data import PreparedImages
from medtl.strategies import FeatureExtraction, FineTuning

#: the strategies the advisor compares, named by their classes (the registry owns the names)
FE = FeatureExtraction.name
FT = FineTuning.name

log = logging.getLogger(__name__)

# Reference rates on the project's 2-core CPU, measured with `python benchmarks/calibrate_cost.py` on
# 2026-12-02 (Kermany images, efficientnet_lite0, the pilot's own fine-tuning fits at 40/160/320 images and
# extraction of 600, at 64 and 224 px; seconds per image fitted as MACs / rate + overhead): training
# 12.4 GMAC/s + 2.4 ms, extraction 99 GMAC/s + 0.6 ms, 0.8 s fixed per fit. The shipped values are those
# slowed by ~1.25x, headroom for this VM's run-to-run variation (up to ~1.5x) so that the plan stays
# inside the advisor's budget. The previous values (4.6 GMAC/s + 8 ms, 36.8 + 2.5 ms, 5 s per fit) were
# measured before the engine's channels-last / folded-BatchNorm / cache-sized-pass speedups and had become
# 2.2-4x pessimistic: the pilot used a third of its budget (16+32+64 images at 224 px on 5,216), and the
# strategies' estimated minutes were 3.6-9x the measured ones on the development grid.
REF_TRAIN_GMACS_PER_S = 10.0
REF_EXTRACT_GMACS_PER_S = 8 * REF_TRAIN_GMACS_PER_S
# Costs that do not scale with multiply-accumulates (depthwise convolutions are memory-bound, Python and
# autograd overhead). Decoding is not fitted: it depends on the files (a 224 px JPEG decodes in ~1 ms, a
# 2,000 px DICOM in tens), 4 ms is kept as a typical mixed dataset's.
PER_IMAGE_OVERHEAD_S = {"train": 0.003, "extract": 0.001, "decode": 0.004}
FIT_OVERHEAD_S = (
    1.0  # network, probe head (11 regularisation strengths) and optimiser, per pilot fit
)
# The pilot recipe: the default fine-tuning recipe (LP-FT: probe head, frozen BatchNorm statistics, gentle
# rates, onecycle schedule) with the most faithful of the schedules in `pilot_schedules` that lets the
# whole pool fit the budget, else the short one below. Batches of 16 (the default recipe uses 32) give a
# short pilot twice the optimiser steps at equal cost.
PILOT_EPOCHS = 3
PILOT_MIN_STEPS = 2
PILOT_BATCH = 16
FRACTIONS = (0.25, 0.5, 1.0)
EVAL_FRACTION = 0.3
EVAL_MAX = 300
MAX_REPEATS = 3
# Shares of the advisor's budget: decoding + embedding the profiled images, and the fine-tuning pilot. The
# rest is for listing the files, the feature-extraction pilot, the curves and the process's start: ~17 s
# of 120 on 5,216 Kermany images with empty caches (bench_e2e --jobs advise, after the recalibration
# above), so the two shares leave a quarter of the budget (0.3 + 0.55 had left 15%: 110.7 s of 120).
EMBED_SHARE = 0.3
PILOT_SHARE = 0.45
MIN_PER_CLASS = 4  # a pilot size needs at least this many images of every class
# Small data: both strategies in full (the default recipe) on CV_FOLDS folds of the pool, each scored on
# its held-out fold, when that costs no more than the pilot would (plan_cross_validation).
CV_FOLDS = 3
# grouped, stratified folds are uneven: every fold trains on the same number of images, this margin
# below the mean training part
CV_SIZE_MARGIN = 1.15


def count_macs(model: nn.Module, size: int, within: Sequence[str] | None = None) -> int:
    """Multiply-accumulates of one forward pass of one ``size`` x ``size`` image (convolutions + linear);
    with ``within``, only those of the modules under these names (e.g. the stages fine-tuning freezes)."""
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    total = [0]

    def hook(m: nn.Module, _i: Any, o: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total[0] += int(o.numel() // o.shape[0]) * k
        else:
            total[0] += m.in_features * m.out_features

    def counted(name: str) -> bool:
        return within is None or any(name == w or name.startswith(w + ".") for w in within)

    handles = [
        m.register_forward_hook(hook)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and counted(name)
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, first.in_channels, size, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0]


@dataclass
class CostModel:
    """Reference seconds per image for decoding, extraction and a training step (deterministic).

    ``frozen_macs`` (of ``macs``) belong to the stages fine-tuning keeps frozen: a training step only runs
    them forward, without gradients, so they cost what extraction costs."""

    macs: int
    frozen_macs: int = 0

    @property
    def extract_s(self) -> float:
        return self.macs / (REF_EXTRACT_GMACS_PER_S * 1e9) + PER_IMAGE_OVERHEAD_S["extract"]

    @property
    def train_s(self) -> float:
        trained = self.macs - self.frozen_macs
        return (
            trained / (REF_TRAIN_GMACS_PER_S * 1e9)
            + self.frozen_macs / (REF_EXTRACT_GMACS_PER_S * 1e9)
            + PER_IMAGE_OVERHEAD_S["train"]
        )

    @property
    def decode_s(self) -> float:
        return PER_IMAGE_OVERHEAD_S["decode"]

    @property
    def embed_s(self) -> float:
        """Decoding and extracting one image (what the advisor spends per profiled image)."""
        return self.decode_s + self.extract_s

    def ft_fit_seconds(self, n: int, n_eval: int, epochs: int, min_steps: int, batch: int) -> float:
        """One fine-tuning fit on ``n`` images (80/20 train/val inside) plus scoring ``n_eval`` images."""
        n_tr, n_va = n - n // 5, n // 5
        steps = max(math.ceil(n_tr / batch), min_steps)
        train = epochs * steps * min(batch, n_tr) * self.train_s
        # validation every epoch and the final scoring run the unfolded network: ~1.5x extraction
        return FIT_OVERHEAD_S + train + 1.5 * self.extract_s * (epochs * n_va + n_eval)

    def full_minutes(
        self, n_train: int, n_val: int, epochs: int, batch: int = 32
    ) -> dict[str, float]:
        """Reference minutes of each strategy's real run on the full training data."""
        fe = (n_train + n_val) * self.embed_s + FIT_OVERHEAD_S
        steps = max(math.ceil(n_train / batch), 10)
        ft = epochs * (steps * min(batch, n_train) * self.train_s + 1.5 * n_val * self.extract_s)
        ft += fe
        return {FE: fe / 60.0, FT: ft / 60.0}


@dataclass(frozen=True)
class Schedule:
    """A fine-tuning schedule of the pilot: epochs, images per batch, least optimiser steps per epoch."""

    epochs: int
    batch: int
    min_steps: int

    def to_dict(self) -> dict[str, int]:
        return {"epochs": self.epochs, "batch": self.batch, "min_steps": self.min_steps}


SHORT_SCHEDULE = Schedule(PILOT_EPOCHS, PILOT_BATCH, PILOT_MIN_STEPS)


def pilot_schedules(full_epochs: int) -> list[Schedule]:
    """The pilot's schedules, most faithful first: the default recipe's own (``full_epochs`` epochs,
    its batch size and least steps per epoch), half its epochs, then the short pilot schedule.

    Why: a pilot that trains much less than the real run measures a weaker fine-tuning than the user
    will get. On 50 images the short schedule (3 epochs of 3 steps of 16) sees the data ~3 times; the
    default recipe (8 epochs of at least 10 steps of 32) sees it ~50 times. Where the budget lets the
    whole pool train with a longer schedule (small datasets, small images), the pilot uses it.
    """
    from medtl.training import LoopSettings

    real = LoopSettings()
    ladder = [
        Schedule(int(full_epochs), real.batch_size, real.min_steps_per_epoch),
        Schedule(
            max(int(full_epochs) // 2, PILOT_EPOCHS), real.batch_size, real.min_steps_per_epoch
        ),
        SHORT_SCHEDULE,
    ]
    return list(dict.fromkeys(ladder))  # in order, without repeats


@dataclass
class PilotPlan:
    """How big the pilot is (all deterministic functions of the data sizes, the backbone and the budget)."""

    pilot_minutes: float
    n_pool: int
    n_eval: int
    ft_sizes: list[int]
    fe_sizes: list[int]
    repeats: int
    planned_seconds: dict[str, float] = field(default_factory=dict)
    schedule: Schedule = SHORT_SCHEDULE
    kind: str = "pilot"  # or "cross_validation" (see plan_cross_validation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pilot_minutes": self.pilot_minutes,
            "n_pool": self.n_pool,
            "n_eval": self.n_eval,
            "ft_sizes": list(self.ft_sizes),
            "fe_sizes": list(self.fe_sizes),
            "repeats": self.repeats,
            "schedule": self.schedule.to_dict(),
            "planned_seconds": {k: round(v, 1) for k, v in self.planned_seconds.items()},
        }


def pool_size(n_images: int, cost: CostModel, pilot_minutes: float, max_images: int) -> int:
    """How many images the advisor decodes and embeds within its embedding share of the budget."""
    affordable = int(EMBED_SHARE * 60.0 * pilot_minutes / cost.embed_s)
    return int(min(n_images, max_images, max(affordable, 200)))


def plan_pilot(
    n_pool: int,
    n_classes: int,
    min_class: int,
    cost: CostModel,
    pilot_minutes: float,
    full_epochs: int | None = None,
) -> PilotPlan:
    """Choose the held-out size, the training sizes, the schedule and the repeats that fit the budget.

    The schedule is the most faithful of :func:`pilot_schedules` (``full_epochs``: the real run's
    epochs, default ``FineTuning``'s) with which the whole pool trains within the budget; when none
    does, the short schedule at the largest affordable size (a longer extrapolation, but from more
    images). Budget left after that buys repeats on disjoint held-out folds.
    """
    n_eval = int(min(EVAL_MAX, max(round(EVAL_FRACTION * n_pool), 2 * n_classes)))
    n_avail = n_pool - n_eval
    budget = PILOT_SHARE * 60.0 * pilot_minutes

    # the smallest pilot size whose (stratified) prefix holds MIN_PER_CLASS of the rarest class: with
    # 13 normal among 50 images, 4 per class overall left one normal image in a 9-image pilot, and the
    # pilot's stratified train/val split failed (found by benchmarks/advisor_eval.py at 50 images)
    least = max(MIN_PER_CLASS * n_classes, math.ceil(MIN_PER_CLASS * n_pool / max(min_class, 1)))

    def cost_of(top: int, repeats: int, sch: Schedule) -> float:
        sizes = _sizes(top, least)
        per = sum(
            cost.ft_fit_seconds(s, n_eval, sch.epochs, sch.min_steps, sch.batch) for s in sizes
        )
        return repeats * per

    if full_epochs is None:
        from medtl.strategies import FineTuning

        full_epochs = FineTuning().epochs
    schedules = pilot_schedules(full_epochs)
    sch = next((x for x in schedules if cost_of(n_avail, 1, x) <= budget), schedules[-1])
    lo_n = least * 4  # the smallest top size with 3 usable fractions
    top = n_avail
    while top > lo_n and cost_of(top, 1, sch) > budget:
        top = int(top * 0.9)
    top = max(min(top, n_avail), min(lo_n, n_avail))
    repeats = 1
    while repeats < MAX_REPEATS and top == n_avail and cost_of(top, repeats + 1, sch) <= budget:
        repeats += 1
    ft_sizes = _sizes(top, least)
    fe_sizes = sorted(set(ft_sizes) | ({n_avail} if n_avail > 1.4 * top else set()))
    planned = {
        "embed": n_pool * cost.embed_s,
        "fine_tuning_pilot": cost_of(top, repeats, sch),
    }
    return PilotPlan(
        pilot_minutes=pilot_minutes,
        n_pool=n_pool,
        n_eval=n_eval,
        ft_sizes=ft_sizes,
        fe_sizes=fe_sizes,
        repeats=repeats,
        planned_seconds=planned,
        schedule=sch,
    )


def plan_cross_validation(
    n_pool: int, min_class: int, cost: CostModel, pilot_minutes: float, full_epochs: int
) -> PilotPlan | None:
    """Both strategies in full (the default recipe's own schedule) on ``CV_FOLDS`` folds of the pool.

    Returns the plan, or None when a fold could not hold every class twice over. Its cost is in
    ``planned_seconds`` for :func:`choose_plan` to weigh against the pilot's.
    """
    if min_class < 2 * CV_FOLDS or n_pool < 4 * CV_FOLDS:
        return None
    n_eval = math.ceil(n_pool / CV_FOLDS)
    size = n_pool - math.ceil(CV_SIZE_MARGIN * n_eval)
    sch = pilot_schedules(full_epochs)[0]  # the default recipe's own schedule
    fit = cost.ft_fit_seconds(size, n_eval, sch.epochs, sch.min_steps, sch.batch)
    return PilotPlan(
        pilot_minutes=pilot_minutes,
        n_pool=n_pool,
        n_eval=n_eval,
        ft_sizes=[size],
        fe_sizes=[size],
        repeats=CV_FOLDS,
        planned_seconds={
            "embed": n_pool * cost.embed_s,
            "fine_tuning_pilot": CV_FOLDS * fit,
        },
        schedule=sch,
        kind="cross_validation",
    )


def choose_plan(pilot: PilotPlan, cv: PilotPlan | None) -> PilotPlan:
    """The cross-validated comparison when running both strategies in full costs no more than the
    pilot would (its plan, or its share of the advisor's budget, whichever is larger): then the
    measurement is the real recipe near the full size, not an extrapolation."""
    if cv is None:
        return pilot
    allowed = max(
        pilot.planned_seconds["fine_tuning_pilot"], PILOT_SHARE * 60 * pilot.pilot_minutes
    )
    return cv if cv.planned_seconds["fine_tuning_pilot"] <= allowed else pilot


def _sizes(top: int, least: int) -> list[int]:
    """The pilot's training sizes: FRACTIONS of ``top``, dropping those under ``least`` images."""
    return sorted({round(f * top) for f in FRACTIONS if round(f * top) >= least}) or [top]


def _nested_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose every prefix is (nearly) stratified: classes interleaved in proportion."""
    keys = np.empty(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.argsort(keys, kind="stable")


def _holdout(
    y: np.ndarray, groups: list[str | None] | None, n_eval: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified held-out set of about ``n_eval`` images (grouped by patient when ids are known)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    idx = np.arange(len(y))
    if groups is not None and any(groups):
        g = group_codes(groups)
        frac = n_eval / len(y)
        split = GroupShuffleSplit(1, test_size=frac, random_state=seed)
        tr, te = next(split.split(idx, y, g))
        if len(np.unique(y[te])) == len(np.unique(y)):
            return tr, te
    split = StratifiedShuffleSplit(1, test_size=n_eval, random_state=seed)
    return next(split.split(idx, y))


def _holdouts(
    y: np.ndarray, groups: list[str | None] | None, n_eval: int, repeats: int, top: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """The ``repeats`` (train, held-out) splits of the pilot, and whether their held-out parts are disjoint.

    One repeat: a random held-out set of ``n_eval`` images (:func:`_holdout`). Several: the first
    ``repeats`` folds of a stratified (patient-grouped when ids are known) k-fold with folds of at most
    ``n_eval`` images, so that every held-out image is a different one: three random 30% holdouts of 50
    images score ~33 distinct images, three folds score 39-50; a larger disjoint evaluation set sharpens
    the paired difference and the intervals (cross-fitting). A fold that lost a class, or whose training
    part is smaller than the pilot's largest size ``top``, falls back to a random holdout.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if repeats <= 1:
        return [_holdout(y, groups, n_eval, seed)], False
    idx = np.arange(len(y))
    counts = np.bincount(y)
    k = min(max(repeats, math.ceil(len(y) / max(n_eval, 1))), int(counts[counts > 0].min()))
    if groups is not None and any(groups):
        g = group_codes(groups)
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        folds = list(cv.split(idx, y, g)) if k >= 2 and len(np.unique(g)) >= k else []
    else:
        folds = (
            list(StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, y))
            if k >= 2
            else []
        )
    n_classes = len(np.unique(y))
    out, disjoint = [], True
    for r in range(repeats):
        if r < len(folds):
            tr, ev = folds[r]
            if len(np.unique(y[ev])) == n_classes and len(tr) >= top:
                out.append((tr, ev))
                continue
        out.append(_holdout(y, groups, n_eval, seed + 1000 * r))
        disjoint = False
    return out, disjoint


def _subset(images: PreparedImages, idx: np.ndarray) -> PreparedImages:
    return images.subset(np.asarray(idx))


def run_pilot(
    images: PreparedImages,
    plan: PilotPlan,
    *,
    backbone: str,
    cache_dir: str | None,
    seed: int,
    patient_ids: list[str | None] | None,
    cost: CostModel,
) -> dict[str, Any]:
    """Train both strategies at the planned sizes on each repeat's training part; score the held-out part.

    Returns:
        ``{"repeats": [{"eval_idx", "y_eval", "fe": {size: proba}, "ft": {size: proba}}],
        "seconds": {...}, "guard_hit": bool, "disjoint": bool, "task": Task}`` (``disjoint``: the
        repeats' held-out images are different images, see :func:`_holdouts`; ``task``: the task
        the probabilities answer, :mod:`medtl.tasks`).
    """
    from medtl.tasks import task_for

    y = np.asarray(images.labels)
    task = task_for(images.classes, images.task_kind)
    folds = _folds_for(y)
    out: list[dict[str, Any]] = []
    seconds = {"feature_extraction_pilot": 0.0, "fine_tuning_pilot": 0.0}
    guard_hit = False
    top = max([*plan.fe_sizes, *plan.ft_sizes])
    splits, disjoint = folds.holdouts(y, patient_ids, plan.n_eval, plan.repeats, top, seed)
    for r, (tr_idx, ev_idx) in enumerate(splits):
        rs = seed + 1000 * r
        order = tr_idx[folds.nested_order(y[tr_idx], np.random.default_rng(rs))]
        ev = _subset(images, ev_idx)
        rec: dict[str, Any] = {"eval_idx": ev_idx, "y_eval": y[ev_idx], "fe": {}, "ft": {}}
        for size in sorted(set(plan.fe_sizes) | set(plan.ft_sizes)):
            sub = order[:size]
            if not folds.trainable(y[sub]):
                # a stratified train/val split needs 2 of every class (of some finding); the plan's
                # sizes ensure it for stratified prefixes, this catches a grouped holdout that took
                # most of a class
                log.info("advisor pilot: size %d skipped (a class has < 2 images in it)", size)
                continue
            a, b = folds.fit_split(y[sub], rs)
            tr, va = _subset(images, np.sort(sub[a])), _subset(images, np.sort(sub[b]))
            t0 = time.perf_counter()
            fe = FeatureExtraction(
                backbone=backbone, seed=seed, cache_dir=cache_dir, progress=False
            )
            rec["fe"][size] = fe.fit(tr, va).predict_proba(ev)
            seconds["feature_extraction_pilot"] += time.perf_counter() - t0
            if size not in plan.ft_sizes:
                continue
            sch = plan.schedule
            planned = cost.ft_fit_seconds(size, len(ev), sch.epochs, sch.min_steps, sch.batch)
            t0 = time.perf_counter()
            ft = FineTuning(
                backbone=backbone,
                epochs=sch.epochs,
                batch_size=sch.batch,
                min_steps_per_epoch=sch.min_steps,
                patience=None,
                seed=seed,
                cache_dir=cache_dir,
                # a guard against a machine far slower than the reference, not a time box: when it
                # fires the result depends on the machine's speed, and the advice says so
                max_minutes=4 * planned / 60.0,
                progress=False,
            ).fit(tr, va)
            guard_hit |= ft.epochs_run_ < sch.epochs
            rec["ft"][size] = ft.predict_proba(ev)
            seconds["fine_tuning_pilot"] += time.perf_counter() - t0
            log.info("advisor pilot: repeat %d, size %d done", r, size)
        out.append(rec)
    return {
        "repeats": out,
        "seconds": seconds,
        "guard_hit": guard_hit,
        "disjoint": disjoint,
        "task": task,
        "method": plan.kind,
    }


class _SingleLabelFolds:
    """The pilot's splits of single-label data: scikit-learn's stratified (grouped) splitters."""

    holdouts = staticmethod(_holdouts)
    nested_order = staticmethod(_nested_order)

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def trainable(self, y: np.ndarray) -> bool:
        return bool(np.bincount(y, minlength=self.n_classes).min() >= 2)

    @staticmethod
    def fit_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)


def _folds_for(y: np.ndarray) -> Any:
    """The pilot's splitting functions for these labels: stratified by class, or over every
    finding for (N, K) multi-label targets (:mod:`medtl.advisor._findings`)."""
    from medtl.advisor import _findings

    if _findings.is_multilabel_labels(y):
        return _findings
    return _SingleLabelFolds(int(y.max()) + 1)
