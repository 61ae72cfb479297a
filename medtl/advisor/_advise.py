"""``advise``: profile a dataset, run the pilot of both strategies, extrapolate, apply the rule."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtl.advisor._profile import advice_samples, build_profile, measure, stratified_cap
from medtl.advisor.rules import Advice, decide, measured_from_pilot
from medtl.data import DEFAULT_CACHE_DIR, Dataset
from medtl.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_READ_OPTIONS: dict[str, Any] = {"window": "header"}  # as medtl.experiment.load_data
# The advisor's own time budget: medtl advise on 5,000 images at 224 px with efficientnet_lite0 is
# planned to finish in about 2 minutes on the project's 2-core CPU (reference cost model, _pilot.py).
DEFAULT_PILOT_MINUTES = 2.0


def advise(
    data: str | Path | Dataset,
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    budget_minutes: float | None = None,
    pilot_minutes: float = DEFAULT_PILOT_MINUTES,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    max_images: int = 5000,
    seed: int = 0,
    progress: bool = True,
    read_options: dict[str, Any] | None = None,
    epochs: int | None = None,
    patient_id_pattern: str | None = None,
    positive_class: str | None = None,
    findings: Sequence[str] | None = None,
    uncertain: str = "ignore",
) -> Advice:
    """Recommend fine-tuning or feature extraction for a dataset from a measured pilot, and say why.

    Works on the training + validation images only (never the test split). Profiles them (size per
    class, domain gap to ImageNet from BatchNorm statistics and ImageNet-classifier entropy, cross-
    validated frozen-feature probes), then runs a pilot: feature extraction and a short run of the
    default fine-tuning recipe (LP-FT) at 2-3 training sizes, both scored on the same held-out images
    (grouped by patient when ids are known), so their difference is paired. Power-law learning curves
    extrapolate each strategy to the full training size; the written rule in
    :mod:`medtl.advisor.rules` picks. The pilot's size follows ``pilot_minutes`` through a
    deterministic cost model, so the same data and seed give the same advice on any machine load.
    The embeddings land in the cache that :class:`medtl.strategies.FeatureExtraction` reads.

    Args:
        data: dataset folder, CSV manifest, ``.npz``, or a loaded :class:`medtl.data.Dataset`.
        backbone: registered backbone (default ``medtl.backbones.DEFAULT_BACKBONE``).
        image_size: side length for the backbone (default: the backbone's input size).
        budget_minutes: training budget; a strategy whose reference cost on the full data exceeds it
            is not recommended.
        pilot_minutes: the advisor's own time budget (decoding, embedding, pilot); sizes the pilot.
        cache_dir: decoded-image and embedding cache (as ``medtl.experiment.default_cache_dir``).
        max_images: most images to profile (stratified subsample above it, or above what
            ``pilot_minutes`` affords; the advice says so).
        seed: seed of the subsample, the folds and random-init backbones.
        progress: show progress bars.
        read_options: options for ``medtl.io.read_image`` (default as experiments: header window).
        epochs: epochs assumed for fine-tuning cost (default: the FineTuning default).
        patient_id_pattern: regular expression giving patient ids from file names (as
            ``load_dataset``); with ids (from it or a manifest) the probes' folds are grouped by patient.
        positive_class: the class that is the finding, as for ``compare``; checked against the
            data (AUROC itself does not depend on it).
        findings: several findings per image: the manifest's finding columns, as for
            ``compare`` (``data.findings``); the comparison is then on the macro AUROC over the
            findings the pilot can score, and the advice lists those too rare to learn.
        uncertain: what an uncertain label (-1) becomes: ``ignore`` (not labelled),
            ``positive`` or ``negative`` (``data.uncertain``).

    Returns:
        :class:`Advice` with ``strategy``, ``confidence``, ``expected_auroc`` (interval at full size),
        ``predicted_auroc``, ``gain_2x``, ``estimated_minutes``, ``rationale``, ``details``,
        ``budget``, ``profile``; ``to_dict()`` and ``explain()``.

    Example:
        >>> advice = medtl.advise("chest_xray/", budget_minutes=15, pilot_minutes=2)
        >>> print(advice.explain())
    """
    from medtl.backbones import DEFAULT_BACKBONE

    started = time.perf_counter()
    timings: dict[str, float] = {}
    backbone = backbone or DEFAULT_BACKBONE
    _check_budgets(max_images, pilot_minutes, budget_minutes)
    read_options = dict(DEFAULT_READ_OPTIONS if read_options is None else read_options)
    size = _image_size(backbone, image_size)  # unknown names fail here, before any decoding
    dataset = _load_advice_dataset(
        data, read_options, progress, patient_id_pattern, cache_dir, findings, uncertain
    )
    _check_positive_class(dataset, positive_class)
    samples, n_train, n_val = advice_samples(dataset)
    timings["load"] = time.perf_counter() - started
    return _pilot_and_decide(
        dataset,
        samples,
        n_train,
        n_val,
        started=started,
        timings=timings,
        backbone=backbone,
        size=size,
        budget_minutes=budget_minutes,
        pilot_minutes=pilot_minutes,
        cache_dir=cache_dir,
        max_images=max_images,
        seed=seed,
        progress=progress,
        read_options=read_options,
        epochs=epochs,
    )


def _check_budgets(max_images: int, pilot_minutes: float, budget_minutes: float | None) -> None:
    """Check advise's size and time limits before anything is read (ConfigError naming the one)."""
    from medtl._options import check_range

    check_range("max_images", max_images, 10)
    check_range("pilot_minutes", pilot_minutes, 0)
    if budget_minutes is not None:
        check_range("budget_minutes", budget_minutes, 0)


def _image_size(backbone: str, image_size: int | None) -> int:
    """The side length the advisor decodes at: ``image_size`` or the backbone's input size."""
    from medtl.backbones import backbone_config

    cfg = backbone_config(backbone)  # unknown names fail here with did-you-mean
    return int(image_size or cfg.input_size)


def _load_advice_dataset(
    data: str | Path | Dataset,
    read_options: dict[str, Any],
    progress: bool,
    patient_id_pattern: str | None,
    cache_dir: str | Path,
    findings: Sequence[str] | None,
    uncertain: str,
) -> Dataset:
    """The dataset to advise on: ``data`` itself, or loaded with the splits `medtl compare` uses."""
    from medtl.data import load_dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | Path):
        from medtl.data import phantom_manifest, project_salt

        # the splits `medtl compare` makes with its defaults (as medtl.experiment.load_data): no
        # verify pass, so unreadable files do not shift the carving, and the advice never sees
        # the test images compare will score; the pool's files are decoded (and bad ones
        # skipped) once, by prepare_images below
        return load_dataset(
            phantom_manifest(str(data)),
            read_options=read_options,
            progress=progress,
            patient_id_pattern=patient_id_pattern,
            salt=project_salt(cache_dir),
            cache_dir=cache_dir,
            verify=False,
            findings=findings,
            uncertain=uncertain,
        )
    raise ConfigError(
        f"The 'data' parameter of advise must be a path or a medtl.data.Dataset. "
        f"Got {type(data).__name__}."
    )


def _check_positive_class(dataset: Dataset, positive_class: str | None) -> None:
    """ConfigError when ``positive_class`` is given and is not one of the dataset's classes."""
    if positive_class is not None and positive_class not in dataset.classes:
        raise ConfigError(
            f"positive_class {positive_class!r} is not a class of this dataset "
            f"({', '.join(dataset.classes)}). Give one of them (the same as for `medtl compare`)."
        )


def _pilot_and_decide(
    dataset: Dataset,
    samples: Any,
    n_train: int,
    n_val: int,
    *,
    started: float,
    timings: dict[str, float],
    backbone: str,
    size: int,
    budget_minutes: float | None,
    pilot_minutes: float,
    cache_dir: str | Path,
    max_images: int,
    seed: int,
    progress: bool,
    read_options: dict[str, Any],
    epochs: int | None,
) -> Advice:
    """Measure the pool, run the pilot, extrapolate it to full size and apply the rule."""
    from medtl.advisor._pilot import (
        CostModel,
        choose_plan,
        count_macs,
        plan_cross_validation,
        plan_pilot,
        run_pilot,
    )
    from medtl.backbones import create_backbone
    from medtl.strategies import FineTuning

    net, cfg = create_backbone(backbone, pretrained=False, num_classes=len(dataset.classes))
    frozen = cfg.stages[: FineTuning().frozen_stages(cfg)]  # what the default recipe keeps frozen
    cost = CostModel(
        macs=count_macs(net, size), frozen_macs=count_macs(net, size, frozen) if frozen else 0
    )
    del net
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    images, measured, patient_ids, n_strata, min_count = _measure_pool(
        samples,
        dataset,
        cost,
        backbone=backbone,
        size=size,
        pilot_minutes=pilot_minutes,
        max_images=max_images,
        seed=seed,
        cache=cache,
        read_options=read_options,
        progress=progress,
        timings=timings,
    )
    epochs = int(epochs or FineTuning().epochs)
    plan = choose_plan(
        plan_pilot(len(images), n_strata, min_count, cost, float(pilot_minutes), epochs),
        plan_cross_validation(len(images), min_count, cost, float(pilot_minutes), epochs)
        if len(images) == len(samples)  # all the images, not a subsample
        else None,
    )
    pilot = run_pilot(
        images,
        plan,
        backbone=backbone,
        cache_dir=None if cache is None else str(cache),
        seed=seed,
        patient_ids=patient_ids,
        cost=cost,
    )
    timings.update(pilot["seconds"])
    minutes = cost.full_minutes(n_train, n_val, epochs)
    t0 = time.perf_counter()
    m = measured_from_pilot(pilot, n_full=len(samples), minutes=minutes, seed=seed)
    timings["curves"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    timings["budget"] = 60.0 * float(pilot_minutes)
    profile = build_profile(
        dataset,
        images,
        measured,
        n_train=n_train,
        n_val=n_val,
        n_images=len(samples),
        backbone=backbone,
        epochs=epochs,
        started=started,
        macs_per_image=cost.macs,
    )
    profile.pilot = _pilot_record(plan, pilot, epochs)
    profile.timings = {k: round(v, 2) for k, v in timings.items()}
    advice = decide(profile, m, budget_minutes=budget_minutes)
    advice.budget = _budget_record(pilot_minutes, timings, plan)
    log.info("advisor: %s (%s confidence)", advice.strategy, advice.confidence)
    return advice


def _measure_pool(
    samples: Any,
    dataset: Dataset,
    cost: Any,
    *,
    backbone: str,
    size: int,
    pilot_minutes: float,
    max_images: int,
    seed: int,
    cache: Path | None,
    read_options: dict[str, Any],
    progress: bool,
    timings: dict[str, float],
) -> tuple[Any, Any, list[Any], int, int]:
    """Cap, decode and profile the pool: (images, measured, ids, strata, fewest of a stratum)."""
    from medtl.advisor._pilot import pool_size
    from medtl.data import image_cache_dir, prepare_images

    n_pool = pool_size(len(samples), cost, float(pilot_minutes), int(max_images))
    profiled = stratified_cap(samples, n_pool, seed)
    if len(profiled) < len(samples):
        log.info("advisor: measuring a stratified %d of %d images", len(profiled), len(samples))
    t0 = time.perf_counter()
    images = prepare_images(
        profiled,
        dataset.classes,
        size=size,
        channels=1,
        cache_dir=image_cache_dir(cache),
        read_options=read_options,
        progress=progress,
    )
    timings["decode"] = time.perf_counter() - t0
    n_strata, min_count = _pilot_counts(images, dataset)
    pid = {s.uid: s.patient_id for s in profiled}
    patient_ids = [pid.get(u) for u in images.uids]
    t0 = time.perf_counter()
    measured = measure(
        images,
        backbone=backbone,
        cache_dir=cache,
        seed=seed,
        progress=progress,
        patient_ids=patient_ids,
    )
    timings["embed_and_profile"] = time.perf_counter() - t0
    return images, measured, patient_ids, n_strata, min_count


def _pilot_record(plan: Any, pilot: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The pilot's plan, schedule and recipe as the profile records them."""
    return {
        "plan": plan.to_dict(),
        "epochs": plan.schedule.epochs,
        "recipe": "LP-FT (FineTuning defaults)"
        + (", its own schedule" if plan.schedule.epochs >= epochs else ", a shortened schedule"),
        "guard_hit": bool(pilot["guard_hit"]),
        "disjoint": bool(pilot.get("disjoint")),
    }


def _budget_record(pilot_minutes: float, timings: dict[str, float], plan: Any) -> dict[str, Any]:
    """The advisor's time budget and how each phase spent it, for ``Advice.budget``."""
    return {
        "pilot_minutes": float(pilot_minutes),
        "seconds": {k: round(v, 1) for k, v in timings.items() if k not in ("budget",)},
        "share_of_budget": {
            k: round(v / timings["budget"], 3)
            for k, v in timings.items()
            if k not in ("budget", "total")
        },
        "planned_seconds": plan.to_dict()["planned_seconds"],
    }


def _pilot_counts(images: Any, dataset: Dataset) -> tuple[int, int]:
    """(strata, fewest images of a stratum) that size the pilot: the classes and the smallest
    class, or for several findings per image the two sides of a finding and the positives (or
    negatives) of the best-represented one. ConfigError when the pilot cannot run."""
    from medtl.advisor import _findings

    labels = np.asarray(images.labels)
    if _findings.is_multilabel_labels(labels):
        where = f"{dataset.root!r} ({len(images)} readable images)"
        return 2, _findings.pilot_min_count(labels, dataset.classes, where)
    counts = [int((labels == c).sum()) for c in range(len(dataset.classes))]
    if len(images) < 4 or min(counts) < 6:
        raise ConfigError(
            f"Only {len(images)} readable image(s) in {dataset.root!r} ({counts} per class); the "
            "advisor needs at least 6 per class to run its pilot. Check the skipped files listed by "
            "`medtl data card`, or add labelled images."
        )
    return len(dataset.classes), min(counts)
