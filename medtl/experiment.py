"""Run experiments: load data once, train each strategy on the same split, evaluate, write a run folder.

``compare(cfg)`` is what ``medtl compare``, ``medtl train`` and ``medtl demo`` call. A run folder holds the
resolved config, the split, the data card, per-strategy history/predictions/metrics/model, ``summary.json``
and the HTML report. Finished strategies are not recomputed when the run is resumed; an interrupted
fine-tuning continues from its last end-of-epoch checkpoint.

Under ``torchrun`` every process runs ``compare``: rank 0 loads the data first (the others then read the
decoded-image cache), every process trains its share of each batch and predicts its share of the images,
and only rank 0 reads and writes the run folder (see :mod:`medtl.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtl import distributed, records, runs
from medtl import subgroup_results as _subgroups
from medtl._fileio import atomic_write_json, atomic_write_text
from medtl.cachekeys import cache_record, start_cache_record
from medtl.config import ExperimentConfig, check_batch_sizes, flatten_config, load_config
from medtl.data import DEFAULT_CACHE_DIR as _DEFAULT_CACHE_DIR
from medtl.data import (
    Dataset,
    PreparedImages,
    Sample,
    is_phantom,
    phantom_manifest,
    source_info,
)
from medtl.errors import ConfigError, DatasetError
from medtl.formatting import num
from medtl.runs import auroc_of, evaluate_probabilities
from medtl.strategies import get_strategy, list_strategies, strategy_tags

log = logging.getLogger(__name__)

#: where decoded images, embeddings and the project's id salt live unless output.cache_dir says
#: (owned by medtl.data, re-exported here)
DEFAULT_CACHE_DIR = _DEFAULT_CACHE_DIR


@dataclass
class PreparedData:
    """A dataset with its three splits decoded at one size (what every strategy of a run shares)."""

    dataset: Dataset
    train: PreparedImages
    val: PreparedImages
    test: PreparedImages
    image_size: int
    notes: list[str]
    salt: bytes | None = None  # the project's key for de-identified ids


def default_cache_dir(cfg: ExperimentConfig) -> Path:
    """Where decoded images and embeddings are cached (``output.cache_dir``, default ``./.medtl_cache``)."""
    if cfg.output.cache_dir:
        return Path(cfg.output.cache_dir).expanduser()
    return Path(DEFAULT_CACHE_DIR)


def _subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """A stratified subsample of ``n`` samples (every class kept; proportions preserved)."""
    from medtl.data import stratified_subset

    return stratified_subset(samples, n, seed)


def resolve_image_size(cfg: ExperimentConfig) -> int:
    """The configured image size, or the backbone's default input size."""
    if cfg.model.image_size:
        return int(cfg.model.image_size)
    from medtl._options import look_up_option
    from medtl.backbones import list_backbones

    rows = {r["name"]: r for r in list_backbones()}
    look_up_option("model.backbone", cfg.model.backbone, list(rows))
    return int(rows[cfg.model.backbone]["input_size"])


def load_data(cfg: ExperimentConfig, *, progress: bool = True) -> PreparedData:
    """Load the dataset(s) of ``cfg``, assign splits, and decode all images at the run's size."""
    from medtl.data import check_class_counts, load_dataset, project_salt

    notes: list[str] = []
    read_options = {"window": cfg.data.window}
    path = cfg.data.path
    cache = default_cache_dir(cfg)
    salt = project_salt(cache)  # de-identified ids: keyed per project (its cache folder)
    if path == "synthetic":
        path = _synthetic_phantom(cfg, cache)
        notes.append("Synthetic phantom data: results say nothing about clinical accuracy.")
    path = phantom_manifest(path)
    ds = load_dataset(
        path,
        val_fraction=cfg.data.val_fraction,
        # with an external test set nothing is carved for a test split: those images would be
        # neither trained on nor scored (15% of the user's labelled images thrown away)
        test_fraction=0.0 if cfg.data.test else cfg.data.test_fraction,
        seed=cfg.data.split_seed,
        min_per_class=cfg.data.min_per_class,
        patient_id_pattern=cfg.data.patient_id_pattern,
        positive_class=cfg.data.positive_class,
        read_options=read_options,
        progress=progress,
        salt=salt,
        cache_dir=cache,
        # every file is decoded exactly once, by prepare_images below (which skips and reports bad
        # files); the class counts are checked on what decoded, before any training
        verify=False,
        subgroups=cfg.data.subgroups,
        findings=cfg.data.findings,
        uncertain=cfg.data.uncertain,
    )
    train_s, val_s, test_s = _run_splits(cfg, ds, notes, read_options, progress, salt)
    check_batch_sizes(cfg, len(train_s), list_strategies(trains_in_epochs=True))  # before decoding
    size = resolve_image_size(cfg)
    prep = _decode_splits(ds, (train_s, val_s, test_s), size, cache, read_options, progress)
    bad = {s.path for s in ds.skipped}
    train_s, val_s, test_s = (
        [s for s in part if s.path not in bad] for part in (train_s, val_s, test_s)
    )
    check_class_counts(ds.classes, train_s + val_s + test_s, cfg.data.min_per_class)
    ds.samples = [*train_s, *val_s, *test_s]
    return PreparedData(ds, prep["train"], prep["val"], prep["test"], size, notes, salt)


def _synthetic_phantom(cfg: ExperimentConfig, cache: Path) -> str:
    """The phantom folder ``data.path: synthetic`` stands for, written into the cache when absent."""
    from medtl.data.synth import make_phantom

    target = cache / f"phantom_n{cfg.data.synthetic_per_class}_d{cfg.data.synthetic_difficulty}"
    extra: dict[str, Any] = {}
    if cfg.data.synthetic_findings:  # several findings per image
        target = target.with_name(f"{target.name}_f{cfg.data.synthetic_findings}")
        extra["findings"] = cfg.data.synthetic_findings
    if not is_phantom(target, current=True):  # absent, half-written or an older version
        if target.exists():
            shutil.rmtree(target)
        make_phantom(
            target,
            n_per_class=cfg.data.synthetic_per_class,
            difficulty=cfg.data.synthetic_difficulty,
            seed=0,
            **extra,
        )
    return str(target)


def _external_samples(
    cfg: ExperimentConfig,
    ds: Dataset,
    path: str,
    field: str,
    split: str,
    read_options: dict[str, Any],
    progress: bool,
    salt: bytes | None,
) -> list[Sample]:
    """Every image of another dataset, as one split (another site's validation or test data)."""
    from medtl.data import load_dataset
    from medtl.subgroups import SITE_EXTERNAL_TEST, SITE_EXTERNAL_VAL, with_site

    ext = load_dataset(path, val_fraction=0, test_fraction=0, read_options=read_options,
                       min_per_class=1, progress=progress, verify=False, salt=salt,
                       positive_class=cfg.data.positive_class,
                       subgroups=cfg.data.subgroups,
                       findings=ds.classes if ds.task_kind else None,
                       uncertain=cfg.data.uncertain)  # fmt: skip
    _check_same_classes(ds, ext, field)
    ds.skipped.extend(ext.skipped)
    prefix = split[0] + "-"  # keeps uids distinct from the main dataset's
    site = SITE_EXTERNAL_VAL if split == "val" else SITE_EXTERNAL_TEST  # the subgroup "site"
    return [dataclasses.replace(s, split=split, uid=prefix + s.uid,
                                attributes=with_site(s.attributes, site))
            for s in ext.samples]  # fmt: skip


def _run_splits(
    cfg: ExperimentConfig,
    ds: Dataset,
    notes: list[str],
    read_options: dict[str, Any],
    progress: bool,
    salt: bytes | None,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """The run's train, val and test samples: external val/test data, the training cap, none empty."""
    train_s, val_s, test_s = ds.split("train"), ds.split("val"), ds.split("test")
    if cfg.data.val:
        train_s = train_s + val_s  # the own-site validation split goes back to training
        val_s = _external_samples(
            cfg, ds, cfg.data.val, "data.val", "val", read_options, progress, salt
        )
        notes.append("Validation on another dataset (data.val): shift-aware model selection.")
    if cfg.data.test:
        test_s = _external_samples(
            cfg, ds, cfg.data.test, "data.test", "test", read_options, progress, salt
        )
        notes.append("External test set (data.test).")
    if cfg.data.max_train:
        n_before = len(train_s)
        train_s = _subsample(train_s, cfg.data.max_train, cfg.data.split_seed)
        notes.append(
            f"Training split subsampled to {len(train_s)} of {n_before} images (stratified)."
        )
    for nm, part in (("train", train_s), ("val", val_s), ("test", test_s)):
        if not part:
            raise DatasetError(
                f"The {nm!r} split is empty. Give the dataset a {nm}/ folder, or raise "
                f"data.{'val' if nm == 'val' else 'test'}_fraction above 0."
            )
    return train_s, val_s, test_s


def _decode_splits(
    ds: Dataset,
    parts: tuple[list[Sample], list[Sample], list[Sample]],
    size: int,
    cache: Path,
    read_options: dict[str, Any],
    progress: bool,
) -> dict[str, PreparedImages]:
    """Each split decoded at ``size`` (through the image cache); what failed joins ``ds.skipped``."""
    from medtl.data import image_cache_dir, prepare_images

    prep = {}
    for nm, part in zip(("train", "val", "test"), parts):
        prep[nm] = prepare_images(
            part,
            ds.classes,
            size=size,
            channels=1,
            cache_dir=image_cache_dir(cache),
            read_options=read_options,
            progress=progress,
        )
        ds.skipped.extend(s for s in prep[nm].skipped if s not in ds.skipped)
        prep[nm].labelling = ds.labelling  # several findings: the uncertain policy, for the model
    return prep


def _patients(data: PreparedData, images: PreparedImages) -> list[str] | None:
    """The (hashed) patient of each image, the unit of a bootstrap over patients; None when the
    dataset knows no patients (the bootstrap then resamples images)."""
    pid = {s.uid: s.patient_id for s in data.dataset.samples if s.patient_id}
    if not pid:
        return None
    return [pid.get(u) or u for u in images.uids]


def split_unit(ds: Dataset) -> str:
    """How the splits were made: ``given`` (the dataset's own folders/column), ``patient`` (carved
    with every patient in one split) or ``image`` (carved per image: no patient ids known)."""
    if source_info(ds.source).splits_given:
        return "given"
    if ds.samples and all(s.patient_id for s in ds.samples):
        return "patient"
    return "image"


def _check_same_classes(main: Dataset, other: Dataset, field: str) -> None:
    if list(main.classes) != list(other.classes):
        raise DatasetError(
            f"The dataset in {field!r} has classes {other.classes} but the training data has "
            f"{main.classes}. Use the same class folder names in both."
        )


def build_strategy(
    name: str, cfg: ExperimentConfig, run_dir: Path, *, progress: bool, resume: bool
):
    """Instantiate strategy ``name`` with the run's common settings and its own overrides."""

    params: dict[str, Any] = {
        "backbone": cfg.model.backbone,
        "seed": cfg.train.seed,
        "device": cfg.train.device,
        "precision": cfg.train.precision,
        "weights_path": cfg.model.weights_path,
        "allow_download": cfg.model.allow_download,
        "progress": progress,
    }
    tags = strategy_tags(name)
    if tags.trains_in_epochs:
        params.update(
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            max_minutes=cfg.train.max_minutes,
            checkpoint_dir=str(run_dir / name),
            resume=resume,
        )
    params["cache_dir"] = str(default_cache_dir(cfg))
    if not tags.pretrained:
        params.pop("weights_path")
        params.pop("allow_download")
    params.update(cfg.params.get(name, {}))
    return get_strategy(name, **params)


def run_strategy(
    name: str,
    cfg: ExperimentConfig,
    data: PreparedData,
    run_dir: Path,
    *,
    progress: bool = True,
    resume: bool = False,
    on_epoch_end: Callable[[str, dict], None] | None = None,
) -> dict[str, Any]:
    """Fit one strategy, evaluate it, and write ``<run>/<name>/``; returns its summary row."""

    sdir = runs.strategy_dir(run_dir, name)
    done_file = sdir / runs.STRATEGY_SUMMARY_FILE

    def finished() -> dict[str, Any] | None:
        if resume and done_file.exists():
            log.info("%s already finished in %s; not recomputed", name, sdir)
            return json.loads(done_file.read_text())
        sdir.mkdir(parents=True, exist_ok=True)
        return None

    done = distributed.on_main(finished)  # rank 0 owns the run folder
    if done is not None:
        return done
    start_cache_record()  # what this strategy is served from cache: its summary row's `cache`
    est = build_strategy(name, cfg, run_dir, progress=progress, resume=resume)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if strategy_tags(name).trains_in_epochs:
        kwargs["history_path"] = sdir / runs.HISTORY_FILE
        if on_epoch_end is not None:
            kwargs["on_epoch_end"] = lambda row: on_epoch_end(name, row)
    est.fit(data.train, data.val, **kwargs)
    train_seconds = time.perf_counter() - t0
    mdir = runs.model_dir(run_dir, name)
    if distributed.is_main():
        # the saved model is what users get: evaluate exactly that (the other processes of a
        # distributed job hold the same weights in memory)
        est = est.save_and_reload(mdir)
    # each process predicts its share of the images; every process gets all of them, in order.
    # A head refit on train + val gives its held-out predictions: it must not choose its threshold
    # on its own training data.
    p_val = est.validation_proba(data.val, progress=progress, shard=True)
    p_test = est.predict_proba(data.test, progress=progress, shard=True)
    return distributed.on_main(
        lambda: _write_strategy(name, cfg, data, est, sdir, mdir, p_val, p_test, train_seconds)
    )


def _write_strategy(
    name: str,
    cfg: ExperimentConfig,
    data: PreparedData,
    est: Any,
    sdir: Path,
    mdir: Path,
    p_val: np.ndarray,
    p_test: np.ndarray,
    train_seconds: float,
) -> dict[str, Any]:
    """Rank 0's part of :func:`run_strategy`: predictions, metrics and the summary row, written."""
    from medtl.metrics import learning_curve_summary

    done_file = sdir / runs.STRATEGY_SUMMARY_FILE
    atomic_write_json(sdir / runs.HISTORY_FILE, est.history_)
    atomic_write_text(
        sdir / runs.PREDICTIONS_FILE,
        runs.predictions_csv(
            [("val", data.val, p_val), ("test", data.test, p_test)],
            data.dataset.classes,
            est.task_,
        ),
    )
    metrics = evaluate_probabilities(
        data.val.labels, p_val, data.test.labels, p_test, cfg, task=est.task_,
        groups=(_patients(data, data.val), _patients(data, data.test)),
    )  # fmt: skip
    if data.test.attributes:  # performance by subgroup on the test set, at the same threshold
        metrics["subgroups"] = _subgroups.test_block(data, p_test, metrics.get("threshold"))
    atomic_write_json(sdir / runs.METRICS_FILE, metrics)
    op = runs.operating_point_record(metrics, len(data.val))
    if op is not None:  # the model folder carries the operating point it was validated at
        est.set_operating_point(**op)
        est.save_meta(mdir)
    test_auc, test_ci = auroc_of(metrics, "test")
    val_auc, _ = auroc_of(metrics, "val")
    hist = est.history_ or []
    curve = (
        learning_curve_summary(
            [num(r.get("val_auroc")) for r in hist], [num(r.get("elapsed")) for r in hist]
        )
        if hist and est.tags.trains_in_epochs
        # no epochs: no curve (a 0.0 slope would read as "trained and stopped improving")
        else {"start": None, "slope": None, "asymptote": None, "best_epoch": None}
    )
    # images pushed through a training step (or embedded now, not read from the cache)
    n_images, work_seconds = est.work_done(len(data.train), len(data.val), train_seconds)
    row = {
        "status": runs.STATUS_DONE,
        "error": None,
        "test_auroc": test_auc,
        "test_auroc_ci": test_ci,
        "val_auroc": val_auc,
        "val_minus_test": val_auc - test_auc,
        "train_seconds": float(est.fit_seconds_ or train_seconds),
        "epochs_run": len(hist) if est.tags.trains_in_epochs else 0,
        # for feature extraction, best_epoch is the index of the chosen regularisation C
        "best_epoch": est.best_epoch_ if est.tags.trains_in_epochs else None,
        # None when nothing was computed (every embedding came from the cache): no throughput to show
        "images_per_s": n_images / work_seconds if work_seconds and n_images > 0 else None,
        "start": curve.get("start"),
        "slope": curve.get("slope"),
        "asymptote": curve.get("asymptote"),
        "threshold": metrics.get("threshold"),
        "params": est.recorded_params(),
        "cache": cache_record(data.train, data.val, data.test),
    }
    atomic_write_json(done_file, row)
    return row


#: config fields a resumed run may change: where it is written and how it shows progress
_RESUME_FREE = ("output.",)


def resume_config(
    run_dir: Path, cfg: ExperimentConfig, explicit: set[str] | None = None
) -> ExperimentConfig:
    """The config a resumed run uses: the run's own ``config.yaml``.

    Args:
        run_dir: the run folder.
        cfg: the config the caller built (defaults + options).
        explicit: the fields the caller set on purpose (command-line options, a config file); None
            means every field of ``cfg`` is deliberate (the Python API).

    Raises:
        ConfigError: a deliberately given field differs from the saved one (naming the field, the
            saved value and the given one), or the folder holds no config to resume.
    """
    saved_path = run_dir / runs.CONFIG_FILE
    if not saved_path.is_file():
        raise ConfigError(
            f"Cannot resume {str(run_dir)!r}: it has no {runs.CONFIG_FILE} (no run was started "
            "there). Drop --resume to start a new run."
        )
    saved = load_config(saved_path)
    filled = records.restore_data_paths(saved, cfg, explicit, run_dir)  # paths are not kept
    given, kept = flatten_config(cfg.to_dict()), flatten_config(saved.to_dict())
    keys = (set(given) if explicit is None else set(explicit)) - filled
    conflicts = [
        f"{k}: saved {kept.get(k)!r}, given {given.get(k)!r}"
        for k in sorted(keys)
        if not k.startswith(_RESUME_FREE) and given.get(k) != kept.get(k)
    ]
    if conflicts:
        raise ConfigError(
            f"Cannot resume {str(run_dir)!r} with different settings; the run's models were made "
            "with its saved config. Conflicting: " + "; ".join(conflicts) + ". Resume without "
            "those options, or start a new run in another --out folder."
        )
    # where results go may change on resume; the cache (which keys the ids) stays the run's own
    # unless another is given
    cache_dir = cfg.output.cache_dir or saved.output.cache_dir
    saved.output = dataclasses.replace(cfg.output, cache_dir=cache_dir)
    return saved


def _write_provenance(run_dir: Path, cfg: ExperimentConfig, data: PreparedData) -> str:
    """The files only the run that creates the folder writes: config (without data paths), split,
    data card, skipped. Returns the split file's digest (recorded in summary.json)."""
    from medtl.data import dataset_fingerprint, save_splits
    from medtl.data.card import data_card

    fingerprint = dataset_fingerprint(data.dataset)
    text = records.redact_data_paths(cfg.to_dict(), fingerprint)
    atomic_write_text(run_dir / runs.CONFIG_FILE, text)
    save_splits(data.dataset, run_dir / runs.SPLITS_FILE, salt=data.salt)
    atomic_write_text(run_dir / runs.DATA_CARD_FILE, data_card(data.dataset, title=cfg.name))
    atomic_write_text(
        run_dir / runs.SKIPPED_FILE, runs.skipped_csv(data.dataset.skipped, data.salt)
    )
    if data.test.attributes:
        _subgroups.write_attributes(run_dir, data)
    return records.file_digest(run_dir / runs.SPLITS_FILE)


def _check_same_data(run_dir: Path, summary: dict[str, Any], fingerprint: str) -> None:
    saved = (summary.get("dataset") or {}).get("fingerprint") or _splits_fingerprint(run_dir)
    if saved and saved != fingerprint:
        raise DatasetError(
            f"Cannot resume {str(run_dir)!r}: the dataset differs from the one the run started on "
            "(its files, labels or split changed; fingerprint "
            f"{fingerprint[:12]} vs {saved[:12]}). Start a new run in another --out folder."
        )


def _splits_fingerprint(run_dir: Path) -> str | None:
    """The data fingerprint a run's ``splits.json`` records (None when it has none)."""
    try:
        obj = json.loads((run_dir / runs.SPLITS_FILE).read_text(encoding="utf-8"))
        return str(obj["fingerprint"]) if isinstance(obj, dict) and obj.get("fingerprint") else None
    except (OSError, ValueError):
        return None


def _require_weights(cfg: ExperimentConfig) -> None:
    """Missing pretrained weights stop the run before any data is read (not after, as N failures)."""
    from medtl.backbones import require_weights

    if any(strategy_tags(n).pretrained for n in cfg.strategies):
        require_weights(
            cfg.model.backbone,
            weights_path=cfg.model.weights_path,
            allow_download=cfg.model.allow_download,
        )


def compare(
    cfg: ExperimentConfig | str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    resume: bool = False,
    explicit: set[str] | None = None,
    on_epoch_end: Callable[[str, dict], None] | None = None,
    on_strategy_start: Callable[[str], None] | None = None,
    write_html: bool = True,
) -> dict[str, Any]:
    """Run every strategy of ``cfg`` on the same split and write the run folder ``cfg.output.out``.

    Returns the summary dict (also written to ``<out>/summary.json``). A strategy that fails is recorded
    with its error and the others still run. Every strategy has a status in the summary (``pending``
    and ``running`` while the run is in progress; ``done``, ``failed`` or ``interrupted``), and
    ``complete`` says whether the run finished, so a run stopped half-way is never read as finished.

    With ``resume=True`` the run continues in its folder with the folder's own saved config
    (``explicit`` names the fields the caller set on purpose; one that differs is refused) and only if
    the data is the same (fingerprint of ids, labels, splits and file sizes). The folder's config
    keeps no data path, so a resumed run takes ``data.path`` (and ``data.val``/``data.test``) from
    ``cfg``. One process at a time works in a run folder: a second one raises RunLockedError.

    Example:
        >>> summary = medtl.compare("configs/demo.yaml", overrides={"output.out": "runs/demo"})
        >>> summary["strategies"]["feature_extraction"]["test_auroc"]
    """
    if not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg, overrides)
    elif overrides:
        cfg = load_config(None, {**flatten_config(cfg.to_dict()), **overrides})
    run_dir = Path(cfg.output.out).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"'output.out' is {str(run_dir)!r}, which is a file. Give a folder path for the run."
        )
    lock: list[records.RunLock] = []  # rank 0 owns the run folder: one process works in it
    distributed.on_main(lambda: lock.append(records.acquire_run_lock(run_dir)))
    try:
        summary = _compare(
            cfg,
            run_dir,
            progress=progress,
            resume=resume,
            explicit=explicit,
            on_epoch_end=on_epoch_end,
            on_strategy_start=on_strategy_start,
            write_html=write_html,
        )
    except BaseException:
        for held in lock:
            held.release(failed=True)
        raise
    for held in lock:
        held.release()
    return summary


def _compare(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    progress: bool,
    resume: bool,
    explicit: set[str] | None,
    on_epoch_end: Callable[[str, dict], None] | None,
    on_strategy_start: Callable[[str], None] | None,
    write_html: bool,
) -> dict[str, Any]:
    """The work of :func:`compare`, done while this process holds the run folder's lock."""
    from medtl.data import dataset_fingerprint

    previous, cfg = _start_run(cfg, run_dir, resume=resume, explicit=explicit)
    progress = progress and distributed.is_main()
    with distributed.main_first():  # rank 0 decodes into the cache; the others then read it
        data = load_data(cfg, progress=progress)
    fingerprint = dataset_fingerprint(data.dataset)
    _check_ranks_agree(fingerprint)
    if resume:
        distributed.on_main(lambda: _check_same_data(run_dir, previous or {}, fingerprint))
        splits_digest = (previous or {}).get(records.SPLITS_DIGEST_KEY)
    else:
        splits_digest = distributed.on_main(lambda: _write_provenance(run_dir, cfg, data))
    summary = _new_summary(cfg, data, previous, fingerprint, splits_digest, resume=resume)
    _save_summary(run_dir, summary)
    for name in cfg.strategies:
        if on_strategy_start is not None:
            on_strategy_start(name)
        summary["strategies"][name] = {"status": runs.STATUS_RUNNING}
        _save_summary(run_dir, summary)
        _run_recorded(name, cfg, data, run_dir, summary, progress, resume, on_epoch_end)
        _check_ranks_agree(summary["strategies"][name].get("status"), what=f"the {name} status")
        _save_summary(run_dir, summary)
    # rank 0 writes the rest; every process returns the same summary
    return distributed.on_main(lambda: _finish(run_dir, summary, cfg, write_html))


def _start_run(
    cfg: ExperimentConfig, run_dir: Path, *, resume: bool, explicit: set[str] | None
) -> tuple[dict[str, Any] | None, ExperimentConfig]:
    """The previous summary (when resuming) and the run's config, checked before any data is read."""
    if not resume:
        distributed.check_config(
            cfg, list_strategies(trains_in_epochs=True)
        )  # before any work: world size vs batch, CUDA

    def start() -> tuple[dict[str, Any] | None, ExperimentConfig]:
        previous = runs.read_summary(run_dir) if resume else None
        resolved = resume_config(run_dir, cfg, explicit) if resume else cfg
        _require_weights(resolved)  # missing weights: refused before any data is read
        run_dir.mkdir(parents=True, exist_ok=True)
        return previous, resolved

    previous, cfg = distributed.on_main(start)  # rank 0 owns the run folder
    if resume:
        distributed.check_config(
            cfg, list_strategies(trains_in_epochs=True)
        )  # the resumed run's own config
    return previous, cfg


def _new_summary(
    cfg: ExperimentConfig,
    data: PreparedData,
    previous: dict[str, Any] | None,
    fingerprint: str,
    splits_digest: str | None,
    *,
    resume: bool,
) -> dict[str, Any]:
    """The run's summary before any strategy has run: every strategy pending."""
    from medtl.data.card import summarise_dataset
    from medtl.training import describe_precision, resolve_device

    device = resolve_device(cfg.train.device)
    precision = describe_precision(device, cfg.train.precision)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "created": (previous or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": False,
        "backbone": cfg.model.backbone,
        "image_size": data.image_size,
        "device": str(device),
        "precision": precision,
        "execution": records.execution_record(device, precision),
        "dataset": {
            "label": records.dataset_label(cfg.data.name, fingerprint),
            **runs.dataset_summary(summarise_dataset(data.dataset)),
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "split_unit": split_unit(data.dataset),
            "fingerprint": fingerprint,
        },
        records.SPLITS_DIGEST_KEY: splits_digest,
        "threshold_rule": cfg.metrics.threshold_rule,
        "prevalence": cfg.metrics.prevalence,
        "strategies": {n: {"status": runs.STATUS_PENDING} for n in cfg.strategies},
        "paired": [],
        "notes": list(data.notes),
        "environment": runs.environment(),
    }
    if resume:
        summary["resumed"] = [
            *(previous or {}).get("resumed", []),
            time.strftime("%Y-%m-%dT%H:%M:%S"),
        ]
    return summary


def _save_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (rank 0 only), so that the folder always says where the run stands."""
    if distributed.is_main():
        atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)


def _run_recorded(
    name: str,
    cfg: ExperimentConfig,
    data: PreparedData,
    run_dir: Path,
    summary: dict[str, Any],
    progress: bool,
    resume: bool,
    on_epoch_end: Callable[[str, dict], None] | None,
) -> None:
    """Run one strategy into ``summary``; a failure is recorded and only stops the others if fatal."""
    try:
        summary["strategies"][name] = run_strategy(
            name,
            cfg,
            data,
            run_dir,
            progress=progress,
            resume=resume,
            on_epoch_end=on_epoch_end,
        )
    except KeyboardInterrupt:
        summary["strategies"][name] = {
            "status": runs.STATUS_INTERRUPTED,
            "error": "interrupted by the user",
        }
        _save_summary(run_dir, summary)
        raise
    except distributed.DistributedError as exc:  # the job cannot go on: no strategy can
        summary["strategies"][name] = {"status": runs.STATUS_FAILED, "error": str(exc)}
        _save_summary(run_dir, summary)
        raise
    except Exception as exc:  # one failing strategy must not lose the others' results
        if isinstance(exc, distributed.dist.DistError):
            summary["strategies"][name] = {"status": runs.STATUS_FAILED, "error": str(exc)}
            _save_summary(run_dir, summary)
            raise distributed.DistributedError(
                f"Rank {distributed.rank()} of {distributed.world_size()}: {name} lost "
                f"contact with another process ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Rerun the "
                "same torchrun command with --resume to continue."
            ) from exc
        log.error("strategy %s failed: %s", name, exc)
        summary["strategies"][name] = {
            "status": runs.STATUS_FAILED,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=5),
        }


def _finish(
    run_dir: Path, summary: dict[str, Any], cfg: ExperimentConfig, write_html: bool
) -> dict[str, Any]:
    """Paired comparisons, gaps, ``complete``, the HTML report: the end of :func:`compare`."""
    summary_path = run_dir / runs.SUMMARY_FILE
    summary["paired"] = runs.paired_comparisons(run_dir, summary, seed=cfg.train.seed)
    if (run_dir / runs.SUBGROUPS_FILE).is_file():
        summary["subgroups"] = _subgroups.run_subgroups(run_dir, summary)
    runs.flag_gaps(summary)
    summary["complete"] = True
    atomic_write_json(summary_path, summary)
    if write_html:
        try:
            from medtl.report import write_report

            summary["report"] = str(write_report(run_dir))
        except Exception as exc:  # the numbers are already saved; a report failure is not fatal
            log.error("could not write the HTML report: %s", exc)
            runs.add_note(summary, f"HTML report failed: {exc}")
        atomic_write_json(summary_path, summary)
    return summary


def _check_ranks_agree(value: Any, what: str = "the dataset fingerprint") -> None:
    """Every process of a distributed job must hold the same ``value`` (no-op for one process)."""
    if distributed.world_size() == 1:
        return
    values = distributed.all_gather_object(value)
    if len(set(map(str, values))) > 1:
        raise distributed.DistributedError(
            f"The processes of this job disagree on {what}: "
            + ", ".join(f"rank {r}: {str(v)[:16]}" for r, v in enumerate(values))
            + ". Every node must see the same data and cache: put data.path and output.cache_dir "
            "on a filesystem shared by all nodes."
        )


def train(
    cfg: ExperimentConfig | str | Path,
    *,
    strategy: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one strategy (``strategy`` or the config's first) and write its run folder."""
    overrides = dict(overrides or {})
    if strategy is not None:
        overrides["strategies"] = [strategy]
    if not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg, overrides)
    else:
        cfg = load_config(None, {**flatten_config(cfg.to_dict()), **overrides})
    if strategy is None and len(cfg.strategies) > 1:
        cfg.strategies = cfg.strategies[:1]
    return compare(cfg, progress=progress, resume=resume)
