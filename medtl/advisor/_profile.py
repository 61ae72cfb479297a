"""Profile a dataset for the advisor: size, balance, domain gap, transferability and cost.

One forward pass over (at most ``max_images``) training images gives the embeddings (stored in the same
content-keyed cache as :class:`medtl.strategies.FeatureExtraction`, so a later feature-extraction run
reuses them) and, through forward hooks, the BatchNorm statistics of the target images.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtl.data import Dataset, PreparedImages, Sample
from medtl.formatting import json_safe

log = logging.getLogger(__name__)

PROBE_MAX_IMAGES = 800  # the cross-validated probe runs on at most this many of the profiled images
BN_MIN_IMAGES = 256  # BN statistics need a forward pass over at least this many images (or all)


@dataclass
class Profile:
    """The numbers the rules look at (all JSON-safe; None where a measurement was not possible).

    Attributes:
        n_images: training + validation images the user would train on (before any profiling cap).
        n_train, n_val: split sizes.
        class_counts: training + validation images per class name.
        min_class: size of the smallest class; imbalance: largest / smallest class.
        n_classes: number of classes.
        native_size: median height of the files in pixels (from the data card's sample).
        modalities: DICOM modalities seen (e.g. {"DX": 40}); formats: file formats seen.
        profile_size: side length the images were resized to for the backbone.
        n_profiled: images used for the measurements; subsampled: True when capped.
        backbone: backbone name; pretrained: whether it has ImageNet weights.
        bn_kl, bn_mean_shift, bn_layers: BatchNorm divergence to ImageNet (see ``BNStatsRecorder``).
        imagenet_entropy: mean normalised entropy of the ImageNet classifier (0..1).
        grad_early_share: share of the task's relative gradient in the first half of the backbone
            (see ``gradient_early_share``; an adaptability signal, descriptive only).
        probe: cross-validated probe results (see ``probe_transferability``).
        macs_per_image: multiply-accumulates of one forward pass (the deterministic cost model's input).
        epochs: epochs assumed for the fine-tuning estimates; device: where it ran.
        embed_cache_hits: profiled images whose embeddings came from the cache.
        profile_seconds: wall time of the whole advice.
        pilot: the pilot's plan and settings (see ``medtl.advisor._pilot``).
        timings: measured seconds per part of the advice, with the budget (reported, never decisive).
        task: the task kind (:mod:`medtl.tasks`); metric: the compared AUROC's name in sentences
            ("AUROC", "macro AUROC").
        findings: several findings per image: positive / negative / unlabelled advised images per
            finding (``class_counts`` then counts positives, ``min_class`` the fewest positives).
    """

    n_images: int
    n_train: int
    n_val: int
    class_counts: dict[str, int]
    min_class: int
    imbalance: float
    n_classes: int
    native_size: float | None
    modalities: dict[str, int]
    formats: dict[str, int]
    profile_size: int
    n_profiled: int
    subsampled: bool
    backbone: str
    pretrained: bool
    bn_kl: float | None = None
    bn_mean_shift: float | None = None
    bn_layers: int = 0
    imagenet_entropy: float | None = None
    grad_early_share: float | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    macs_per_image: int = 0
    epochs: int = 8
    device: str = "cpu"
    embed_cache_hits: int = 0
    profile_seconds: float = 0.0
    pilot: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    task: str = "binary"
    metric: str = "AUROC"
    findings: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def probe_auroc(self) -> float | None:
        v = self.probe.get("probe_auroc")
        return None if v is None or not np.isfinite(v) else float(v)

    @property
    def probe_std(self) -> float:
        v = self.probe.get("probe_std")
        return 0.05 if v is None or not np.isfinite(v) else float(v)

    @property
    def knn_auroc(self) -> float | None:
        v = self.probe.get("knn_auroc")
        return None if v is None or not np.isfinite(v) else float(v)

    @property
    def probe_slope(self) -> float | None:
        v = self.probe.get("slope_per_doubling")
        return None if v is None or not np.isfinite(v) else float(v)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))


def stratified_cap(samples: list[Sample], max_images: int, seed: int) -> list[Sample]:
    """At most ``max_images`` samples, stratified by class or over every finding (all of them when
    fewer); the same subsample as ``data.max_train`` (:func:`medtl.data.stratified_subset`)."""
    from medtl.data import stratified_subset

    return stratified_subset(samples, max_images, seed)


def advice_samples(dataset: Dataset) -> tuple[list[Sample], int, int]:
    """The images advice is about: train + val (never test); all samples when no split is assigned."""
    train, val = dataset.split("train"), dataset.split("val")
    if not train:
        return list(dataset.samples), len(dataset.samples), 0
    return [*train, *val], len(train), len(val)


def measure(
    images: PreparedImages,
    *,
    backbone: str,
    cache_dir: str | Path | None,
    seed: int,
    progress: bool,
    patient_ids: list[str | None] | None = None,
) -> dict[str, Any]:
    """Embeddings + BN divergence + ImageNet entropy + cross-validated probes for prepared images.

    ``patient_ids`` (one per image, None where unknown) groups the probes' cross-validation folds.
    """
    import torch

    from medtl.advisor._measure import (
        BNStatsRecorder,
        gradient_early_share,
        imagenet_entropy,
        probe_findings,
        probe_transferability,
    )
    from medtl.backbones import create_backbone
    from medtl.strategies import FeatureExtraction, extract_embeddings
    from medtl.tasks import task_for
    from medtl.training import resolve_device

    device = resolve_device("auto")
    # same seed + build order as FeatureExtraction.fit, so random-init backbones share its cache key
    torch.manual_seed(seed)
    model, cfg = create_backbone(backbone, pretrained=True, num_classes=1000)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fe = FeatureExtraction(
        backbone=backbone,
        seed=seed,
        cache_dir=None if cache_dir is None else str(cache_dir),
        progress=progress,
    )
    # The embeddings come from FeatureExtraction's own (BatchNorm-folded) extraction, so the cache
    # holds the numbers a following `medtl compare` would compute itself: hooks on the BatchNorm
    # layers would force the unfolded network, whose embeddings differ (by ~1e-3 under bf16), and a
    # compare after advise would then not equal a compare alone. The BN statistics get their own
    # short hooked pass over an evenly spaced subset.
    emb = fe.embed(images, model, cfg, "advisor: embed")
    rec = BNStatsRecorder(model).attach()
    try:
        if rec.layers:
            need = min(len(images), BN_MIN_IMAGES)
            idx = np.linspace(0, len(images) - 1, need).round().astype(int)
            extract_embeddings(model, cfg, images.pixels[idx], progress=False)
    finally:
        rec.detach()
    div = rec.divergence()
    # the probe is a profile detail now (the pilot decides): cap its cost on large pools
    rows = np.arange(len(images))
    if len(rows) > PROBE_MAX_IMAGES:
        rows = np.sort(
            np.random.default_rng(seed).choice(len(rows), PROBE_MAX_IMAGES, replace=False)
        )
    labels = np.asarray(images.labels)
    probe_groups = None if patient_ids is None else [patient_ids[i] for i in rows]
    if labels.ndim == 2:  # several findings per image: one probe per finding
        probe = probe_findings(
            emb[rows], labels[rows], images.classes, seed=seed, groups=probe_groups
        )
    else:
        probe = probe_transferability(emb[rows], labels[rows], seed=seed, groups=probe_groups)
    grad = (
        gradient_early_share(
            model,
            cfg,
            images.pixels,
            labels,
            emb,
            C=float(probe.get("probe_C", 0.1)),
            seed=seed,
            task=task_for(images.classes, images.task_kind),
        )
        if cfg.pretrained
        else {"early_share": None}
    )
    return {
        "grad_early_share": grad["early_share"],
        "bn_kl": div["kl"],
        "bn_mean_shift": div["mean_shift"],
        "bn_layers": int(div["layers"] or 0),
        "imagenet_entropy": imagenet_entropy(model, emb) if cfg.pretrained else None,
        "probe": probe,
        "pretrained": bool(cfg.pretrained),
        "embed_cache_hits": int(getattr(fe, "cache_hits_", 0)),
        "device": str(device),
        "embeddings": emb,
    }


def build_profile(
    dataset: Dataset,
    images: PreparedImages,
    measured: dict[str, Any],
    *,
    n_train: int,
    n_val: int,
    n_images: int,
    backbone: str,
    epochs: int,
    started: float,
    macs_per_image: int = 0,
) -> Profile:
    """Combine the data card's facts, the split sizes and the measurements into a :class:`Profile`."""
    from medtl.data.card import summarise_dataset
    from medtl.tasks import task_for

    card = summarise_dataset(dataset, max_files=32)
    task = task_for(dataset.classes, dataset.task_kind)
    counts = {name: 0 for name in dataset.classes}
    names = dataset.classes
    pool = advice_samples(dataset)[0]
    findings: dict[str, dict[str, int]] = {}
    if dataset.task_kind:  # several findings per image: positives per finding
        from medtl.data import finding_counts, targets_of

        findings = finding_counts(targets_of(pool, len(names)), names)
        counts = {f: c["pos"] for f, c in findings.items()}
    else:
        for s in pool:
            counts[names[s.label]] += 1
    nonzero = [v for v in counts.values() if v > 0]
    height = (card.get("images") or {}).get("height") or {}
    return Profile(
        n_images=n_images,
        n_train=n_train,
        n_val=n_val,
        class_counts=counts,
        min_class=int(min(counts.values())) if counts else 0,
        imbalance=float(max(nonzero) / min(nonzero)) if nonzero else float("nan"),
        n_classes=len(dataset.classes),
        native_size=height.get("median"),
        modalities=dict(card["images"].get("modalities", {})),
        formats=dict(card["images"].get("formats", {})),
        profile_size=int(images.pixels.shape[-1]),
        n_profiled=len(images),
        subsampled=len(images) < n_images,
        backbone=backbone,
        pretrained=measured["pretrained"],
        bn_kl=measured["bn_kl"],
        bn_mean_shift=measured["bn_mean_shift"],
        bn_layers=measured["bn_layers"],
        imagenet_entropy=measured["imagenet_entropy"],
        grad_early_share=measured.get("grad_early_share"),
        probe=measured["probe"],
        macs_per_image=int(macs_per_image),
        epochs=epochs,
        device=measured["device"],
        embed_cache_hits=measured["embed_cache_hits"],
        profile_seconds=time.perf_counter() - started,
        task=task.kind,
        # "macro AUROC (one-vs-rest)" -> "macro AUROC": the name that fits in a sentence
        metric=task.metric_name.split(" (")[0],
        findings=findings,
    )
