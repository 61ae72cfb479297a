"""``advise``: profile a dataset once and apply the rules."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medtl.advisor._profile import advice_samples, build_profile, measure, stratified_cap
from medtl.advisor.rules import Advice, decide
from medtl.data._types import Dataset
from medtl.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_READ_OPTIONS: dict[str, Any] = {"window": "header"}  # as medtl.experiment.load_data


def advise(
    data: str | Path | Dataset,
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    budget_minutes: float | None = None,
    cache_dir: str | Path = ".medtl_cache",
    max_images: int = 2000,
    seed: int = 0,
    progress: bool = True,
    read_options: dict[str, Any] | None = None,
    epochs: int | None = None,
    patient_id_pattern: str | None = None,
    positive_class: str | None = None,
) -> Advice:
    """Recommend fine-tuning, partial fine-tuning or feature extraction for a dataset, and say why.

    Profiles the training + validation images (never the test split): size per class, domain gap to
    ImageNet (BatchNorm statistics and ImageNet-classifier entropy, from the same forward pass as the
    embeddings), cross-validated k-NN and logistic probes on frozen features with a short learning
    curve, and the measured cost per image of each strategy. The embeddings land in the same cache
    that :class:`medtl.strategies.FeatureExtraction` reads, so a following feature-extraction run
    reuses them.

    Args:
        data: dataset folder, CSV manifest, ``.npz``, or a loaded :class:`medtl.data.Dataset`.
        backbone: registered backbone (default ``medtl.backbones.DEFAULT_BACKBONE``).
        image_size: side length for the backbone (default: the backbone's input size).
        budget_minutes: wall-time budget; strategies estimated to exceed it are not recommended.
        cache_dir: decoded-image and embedding cache (as ``medtl.experiment.default_cache_dir``).
        max_images: most images to profile (stratified subsample above it; the advice says so).
        seed: seed of the subsample, the folds and random-init backbones.
        progress: show progress bars.
        read_options: options for ``medtl.io.read_image`` (default as experiments: header window).
        epochs: epochs assumed for fine-tuning cost (default: the FineTuning default).
        patient_id_pattern: regular expression giving patient ids from file names (as
            ``load_dataset``); with ids (from it or a manifest) the probes' folds are grouped by patient.
        positive_class: the class that is the finding, as for ``compare``; checked against the
            data (AUROC itself does not depend on it).

    Returns:
        :class:`Advice` with ``strategy``, ``confidence``, ``expected_auroc``, ``estimated_minutes``,
        ``rationale``, ``profile``; ``to_dict()`` and ``explain()``.

    Example:
        >>> advice = medtl.advise("chest_xray/", budget_minutes=15)
        >>> print(advice.explain())
    """
    from medtl._options import check_range
    from medtl.backbones import DEFAULT_BACKBONE, backbone_config
    from medtl.data import load_dataset, prepare_images
    from medtl.strategies import FineTuning

    started = time.perf_counter()
    backbone = backbone or DEFAULT_BACKBONE
    check_range("max_images", max_images, 10)
    if budget_minutes is not None:
        check_range("budget_minutes", budget_minutes, 0)
    read_options = dict(DEFAULT_READ_OPTIONS if read_options is None else read_options)
    cfg = backbone_config(
        backbone
    )  # unknown names fail here with did-you-mean, before any decoding
    size = int(image_size or cfg.input_size)
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, str | Path):
        from medtl.data import project_salt
        from medtl.experiment import _phantom_manifest

        dataset = load_dataset(
            _phantom_manifest(str(data)),
            read_options=read_options,
            progress=progress,
            patient_id_pattern=patient_id_pattern,
            salt=project_salt(cache_dir),
        )
    else:
        raise ConfigError(
            f"The 'data' parameter of advise must be a path or a medtl.data.Dataset. "
            f"Got {type(data).__name__}."
        )
    if positive_class is not None and positive_class not in dataset.classes:
        raise ConfigError(
            f"positive_class {positive_class!r} is not a class of this dataset "
            f"({', '.join(dataset.classes)}). Give one of them (the same as for `medtl compare`)."
        )
    samples, n_train, n_val = advice_samples(dataset)
    profiled = stratified_cap(samples, int(max_images), seed)
    if len(profiled) < len(samples):
        log.info("advisor: profiling a stratified %d of %d images", len(profiled), len(samples))
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    images = prepare_images(
        profiled,
        dataset.classes,
        size=size,
        channels=1,
        cache_dir=None if cache is None else cache / "images",
        read_options=read_options,
        progress=progress,
    )
    if len(images) < 4:
        raise ConfigError(
            f"Only {len(images)} readable image(s) in {dataset.root!r}; the advisor needs a few per "
            "class. Check the skipped files listed by `medtl data card`."
        )
    pid = {s.uid: s.patient_id for s in profiled}
    measured = measure(
        images,
        backbone=backbone,
        cache_dir=cache,
        seed=seed,
        progress=progress,
        patient_ids=[pid.get(u) for u in images.uids],
    )
    profile = build_profile(
        dataset,
        images,
        measured,
        n_train=n_train,
        n_val=n_val,
        n_images=len(samples),
        backbone=backbone,
        epochs=int(epochs or FineTuning().epochs),
        started=started,
    )
    advice = decide(profile, budget_minutes=budget_minutes)
    log.info("advisor: %s (%s confidence)", advice.strategy, advice.confidence)
    return advice
