"""The advisor on several findings per image: folds stratified over findings, per-finding counts,
and which findings are too rare to learn or to score at this size.

Labels of a multi-label pilot are (N, K) floats (1, 0, NaN = not labelled; see
:mod:`medtl.data._multilabel`). Every split of the pilot is an iterative stratification over the
findings (:func:`medtl.data.iterative_carve`, patient-grouped where ids are known), so that each
finding keeps its share of positives in the held-out images and in each training size; the
single-label pilot keeps its scikit-learn splits (:mod:`medtl.advisor._pilot`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medtl.data import iterative_carve

#: a finding needs this many positive and negative advised images to be learnable at this size:
#: fewer leave a per-finding head (or a sigmoid output) a handful of examples to generalise from,
#: and a 15% test split of them would hold 1 or 2 positives, below the scorable rule's 5
MIN_LEARNABLE = 10
#: a finding needs this many positive and negative images in the pilot's pool to train the pilot
#: at all (as the single-label pilot needs 6 per class)
MIN_PILOT = 6


def is_multilabel_labels(y: Any) -> bool:
    """True for (N, K) multi-label targets (single-label labels are (N,) class indices)."""
    return np.asarray(y).ndim == 2


def counts(y: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per finding: positive, negative and unlabelled images of (N, K) targets."""
    from medtl.data import finding_counts

    return finding_counts(np.asarray(y, dtype=np.float64), list(names))


def _side(c: dict[str, int]) -> int:
    return min(c["pos"], c["neg"])


def too_rare(pool: dict[str, dict[str, int]], minimum: int = MIN_LEARNABLE) -> dict[str, dict]:
    """The findings with fewer than ``minimum`` positive (or negative) images, with their counts."""
    return {f: c for f, c in pool.items() if _side(c) < minimum}


def pilot_min_count(y: np.ndarray, names: Sequence[str], where: str) -> int:
    """The count that sizes the pilot: the positives (or negatives) of the best-represented
    finding, so the smallest pilot size holds a few of them. ConfigError (counts named) when no
    finding has :data:`MIN_PILOT` positive and negative images."""
    from medtl.errors import ConfigError

    c = counts(y, names)
    best = max((_side(v) for v in c.values()), default=0)
    if best < MIN_PILOT:
        detail = ", ".join(f"{f!r}: {v['pos']} pos / {v['neg']} neg" for f, v in c.items())
        raise ConfigError(
            f"No finding of {where} has at least {MIN_PILOT} positive and {MIN_PILOT} negative "
            f"readable images ({detail}); the advisor needs one to run its pilot. Add labelled "
            "images, or name the better-represented findings with --findings."
        )
    return int(best)


def trainable(y: np.ndarray) -> bool:
    """True when some finding has 2 positive and 2 negative images among ``y``'s rows (a pilot
    size and its 80/20 train/validation split can then train)."""
    y = np.asarray(y, dtype=np.float64)
    return bool(np.any((np.sum(y == 1, axis=0) >= 2) & (np.sum(y == 0, axis=0) >= 2)))


def nested_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose every prefix is (nearly) stratified over the findings: each image is
    filed under its rarest positive finding (or "none"), and each file is spread evenly over the
    order, as the single-label pilot spreads each class."""
    y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0)
    n, k = y.shape
    prevalence = (y == 1).sum(0)
    rank = np.argsort(np.argsort(prevalence, kind="stable"), kind="stable")  # 0 = rarest
    stratum = np.full(n, k)
    for i in range(n):
        pos = np.flatnonzero(y[i] == 1)
        if len(pos):
            stratum[i] = int(pos[np.argmin(rank[pos])])
    keys = np.empty(n)
    for s in np.unique(stratum):
        idx = np.flatnonzero(stratum == s)
        rng.shuffle(idx)
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    return np.argsort(keys, kind="stable")


def fit_split(y: np.ndarray, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices of one pilot fit: ``fraction`` carved for validation,
    stratified over the findings."""
    val = iterative_carve(np.asarray(y, dtype=np.float64), None, fraction, seed)
    return np.flatnonzero(~val), np.flatnonzero(val)


def _groups(groups: Sequence[str | None] | None) -> np.ndarray | None:
    if groups is None or not any(groups):
        return None
    from medtl.advisor._measure import group_codes

    return group_codes(groups)


def holdout(
    y: np.ndarray, groups: Sequence[str | None] | None, n_eval: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows: about ``n_eval`` held out, whole patients, stratified over findings."""
    ev = iterative_carve(np.asarray(y, np.float64), _groups(groups), n_eval / len(y), seed)
    return np.flatnonzero(~ev), np.flatnonzero(ev)


def holdouts(
    y: np.ndarray,
    groups: Sequence[str | None] | None,
    n_eval: int,
    repeats: int,
    top: int,
    seed: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """The pilot's ``repeats`` (train, held-out) splits and whether the held-out parts are disjoint
    (as :func:`medtl.advisor._pilot._holdouts`): several repeats are the first folds of a k-fold
    carved one fold at a time (fold i takes 1 / (k - i) of the rows not yet held out); a fold whose
    training part is smaller than ``top`` or holds no finding with both classes falls back to a
    random holdout."""
    y = np.asarray(y, dtype=np.float64)
    if repeats <= 1:
        return [holdout(y, groups, n_eval, seed)], False
    g = _groups(groups)
    n = len(y)
    k = max(repeats, math.ceil(n / max(n_eval, 1)))
    left = np.arange(n)
    out, disjoint = [], True
    for r in range(repeats):
        fold = None
        if len(left) >= 2:
            part = iterative_carve(y[left], None if g is None else g[left], 1 / (k - r), seed + r)
            ev = left[part]
            tr = np.setdiff1d(np.arange(n), ev)
            if len(tr) >= top and trainable(y[tr]) and _scored_any(y[ev]):
                fold = (tr, ev)
                left = left[~part]
        if fold is None:
            fold = holdout(y, groups, n_eval, seed + 1000 * r)
            disjoint = False
        out.append(fold)
    return out, disjoint


def _scored_any(y: np.ndarray) -> bool:
    y = np.asarray(y, dtype=np.float64)
    return bool(np.any((np.sum(y == 1, axis=0) >= 1) & (np.sum(y == 0, axis=0) >= 1)))


def scored_findings(
    evals: Sequence[np.ndarray], names: Sequence[str]
) -> tuple[list[str], dict[str, dict[str, int]], int]:
    """The findings the pilot's macro AUROC averages over, those left out with their counts (the
    fewest positives / negatives over the repeats' held-out images), and the rule's count.

    The rule is :data:`medtl.metrics.MIN_SCORABLE`'s (at least 5 positive and 5 negative labelled
    images) in every repeat's held-out images; where no finding meets it, at least one of each.
    """
    from medtl.metrics import MIN_SCORABLE

    per = [counts(e, names) for e in evals]
    least = {f: {k: min(p[f][k] for p in per) for k in ("pos", "neg")} for f in names}
    for minimum in (MIN_SCORABLE, 1):
        scored = [f for f in names if _side(least[f]) >= minimum]
        if scored:
            return scored, {f: c for f, c in least.items() if f not in scored}, minimum
    return [], least, MIN_SCORABLE


def rare_sentence(
    pool: dict[str, dict[str, int]],
    n_images: int,
    scored: Sequence[str],
    unscored: dict[str, dict[str, int]],
    min_scored: int,
) -> str | None:
    """The rationale's sentence on the findings too rare to learn or to score at this size
    (None when every finding is learnable and scored)."""
    rare = too_rare(pool)
    if not rare and not unscored:
        return None

    def listed(d: dict[str, dict[str, int]]) -> str:
        return ", ".join(
            f"{f} ({c['pos']} positive{'s' if c['pos'] != 1 else ''}"
            + (
                f", {c['neg']} negative{'s' if c['neg'] != 1 else ''}"
                if c["neg"] < c["pos"]
                else ""
            )
            + ")"
            for f, c in sorted(d.items(), key=lambda kv: _side(kv[1]))
        )

    parts = []
    if rare:
        parts.append(
            f"{len(rare)} finding{'s are' if len(rare) > 1 else ' is'} too rare to learn from "
            f"your {n_images} images (fewer than {MIN_LEARNABLE} positive or negative images): "
            f"{listed(rare)}; more labelled examples of {'them' if len(rare) > 1 else 'it'} "
            "matter more than the choice of strategy."
        )
    if unscored:
        parts.append(
            f"Left out of the trial's macro AUROC (fewer than {min_scored} positive or negative "
            f"held-out images): {listed(unscored)}; it covers "
            + (", ".join(scored) if scored else "no finding")
            + "."
        )
    return " ".join(parts)
