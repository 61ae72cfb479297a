"""The estimator contract shared by every strategy, and the strategy registry.

Contract (scikit-learn style): ``__init__`` only stores keyword arguments; ``fit(train, val)`` sets the
learned attributes (ending in ``_``) and returns ``self``; ``predict_proba(images)`` gives (N, K)
probabilities; ``save(dir)`` / ``load(dir)`` round-trip exactly, with tensors in safetensors and everything
else in JSON (no pickle).

Every strategy ends as the same kind of object: a backbone network whose classifier is a linear layer, so
prediction, saving, heatmaps and test-time adaptation work identically for all of them.

The device is part of the estimator: ``fit`` resolves the ``device`` parameter once into ``device_``
(``load_model(..., device=...)`` sets it for a loaded model), and extraction, training and prediction all
run there.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from medtl._fileio import atomic_write
from medtl._options import look_up_option
from medtl.data import PreparedImages, Sample
from medtl.errors import ConfigError, NotFittedError
from medtl.strategies._modelfile import (
    META_FILE,
    MODEL_FILE,
    ModelFileError,
    complete_read_options,
    read_meta,
    sha256_file,
    write_meta,
)
from medtl.tasks import Task, task_for

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Strategy]] = {}

__all__ = [
    "META_FILE",
    "MODEL_FILE",
    "Strategy",
    "StrategyTags",
    "load_model",
    "preprocessing_of",
    "strategy_tags",
]


def preprocessing_of(images: PreparedImages) -> dict[str, Any]:
    """How ``images`` were prepared: image size, channels and every read option.

    Taken from ``images.preprocessing`` (set by ``prepare_images``); images built by hand are
    described by their shape and the reader's defaults, marked ``"assumed": true``.
    """
    pre = getattr(images, "preprocessing", None)
    if pre:
        return {
            "image_size": int(pre["image_size"]),
            "channels": int(pre["channels"]),
            "read_options": complete_read_options(pre.get("read_options")),
        }
    px = np.asarray(images.pixels if isinstance(images, PreparedImages) else images)
    return {
        "image_size": int(px.shape[-1]),
        "channels": int(px.shape[1]),
        "read_options": complete_read_options(None),
        "assumed": True,
    }


@dataclasses.dataclass(frozen=True)
class StrategyTags:
    """What a strategy is, declared on its class (in the spirit of scikit-learn's estimator tags).

    Everything outside ``medtl/strategies/`` asks these instead of branching on strategy names.

    Attributes:
        trains_in_epochs: an epoch loop (epochs, batch size, checkpoints, a per-epoch history and a
            learning curve); False for a one-pass extraction and a fitted head.
        pretrained: starts from ImageNet weights (takes ``weights_path`` / ``allow_download``).
        freezes_batchnorm: BatchNorm statistics are never re-estimated in training.
        reads_embedding_cache: reuses cached frozen-backbone embeddings.
        default: part of the default comparison (``medtl compare`` without ``--strategies``).
        control: a control that shows what pretraining adds, not a candidate for deployment.
        summary: one sentence for the app and the CLI's help on what the strategy trains.
    """

    trains_in_epochs: bool = True
    pretrained: bool = True
    freezes_batchnorm: bool = False
    reads_embedding_cache: bool = False
    default: bool = False
    control: bool = False
    summary: str = ""


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name`` (CLI, configs, ``get_strategy``).

    A second class under a name already taken is refused (as the backbone registry does).
    """
    old = _REGISTRY.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"A strategy named {cls.name!r} is already registered ({old.__qualname__}); "
            "choose another name."
        )
    _REGISTRY[cls.name] = cls
    return cls


def list_strategies(**tags: Any) -> list[str]:
    """Names of the registered strategies, in registration order, optionally only those whose
    tags match (e.g. ``list_strategies(default=True)``, ``list_strategies(trains_in_epochs=True)``)."""
    return [
        n for n, c in _REGISTRY.items() if all(getattr(c.tags, k) == v for k, v in tags.items())
    ]


def strategy_tags(name: str) -> StrategyTags:
    """The tags of a registered strategy (did-you-mean error for an unknown name)."""
    look_up_option("strategy", name, list_strategies())
    return _REGISTRY[name].tags


def strategy_label(name: str) -> str:
    """The human name of a strategy ("fine_tuning" -> "Fine-tuning"); unknown names are kept.

    The one place display names come from: the report, the app, the CLI and the advisor call it.
    """
    cls = _REGISTRY.get(name)
    return cls.label if cls is not None else name


def strategy_description(name: str) -> str:
    """One line saying what the strategy trains (for tables and the app)."""
    cls = _REGISTRY.get(name)
    return cls.description if cls is not None else ""


def get_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate a registered strategy by name with keyword parameters.

    Example:
        >>> est = get_strategy("feature_extraction", backbone="tiny_test")
    """
    look_up_option("strategy", name, list_strategies())
    cls = _REGISTRY[name]
    valid = set(cls._param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        import difflib

        hints = [
            f"{u!r} (did you mean {m[0]!r}?)"
            if (m := difflib.get_close_matches(u, valid, n=1))
            else repr(u)
            for u in unknown
        ]
        raise ConfigError(
            f"Unknown parameter(s) for strategy {name!r}: {', '.join(hints)}. "
            f"Valid parameters: {sorted(valid)}."
        )
    return cls(**params)


class Strategy:
    """Base class: parameters, fitted-state checks, prediction and (de)serialisation."""

    name: ClassVar[str] = "base"
    #: human name shown to users (see ``strategy_label``)
    label: ClassVar[str] = "Base"
    #: one line on what is trained
    description: ClassVar[str] = ""
    #: what the strategy is (see :class:`StrategyTags`)
    tags: ClassVar[StrategyTags] = StrategyTags()

    # -- parameters ----------------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-safe), as in scikit-learn."""
        return {k: getattr(self, k) for k in self._param_names()}

    def recorded_params(self) -> dict[str, Any]:
        """:meth:`get_params` as written to ``model.json`` and ``summary.json``: machine-local
        folders (caches, checkpoints) are left out and a weights file is named without its folder,
        so the files carry no paths (the weights are identified by their SHA-256)."""
        params = self.get_params()
        for key in ("cache_dir", "checkpoint_dir"):
            if params.get(key) is not None:
                params[key] = None
        if params.get("weights_path"):
            params["weights_path"] = Path(str(params["weights_path"])).name
        return params

    def set_params(self, **params: Any) -> Strategy:
        for k, v in params.items():
            if k not in self._param_names():
                raise ConfigError(f"{type(self).__name__} has no parameter {k!r}.")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def freezes_batchnorm(self) -> bool:
        """True when this estimator (as configured) never re-estimates BatchNorm statistics."""
        return self.tags.freezes_batchnorm

    def trains_on_validation(self) -> bool:
        """True when the fitted model was (re)fitted on the validation images too, so they are
        training data for it (feature extraction's refit on train + validation)."""
        return getattr(self, "refit_on_", "train") == "train+val"

    def work_done(self, n_train: int, n_val: int, fit_seconds: float) -> tuple[int, float]:
        """(images computed by the last fit, seconds of that work), for the run's throughput.

        An epoch loop counts the images pushed through training steps; a strategy that reads cached
        embeddings counts those it computed now.
        """
        hist = getattr(self, "history_", None) or []
        if self.tags.trains_in_epochs:
            images = sum(int(r.get("images", n_train)) for r in hist)
            seconds = sum(float(r.get("train_seconds", r.get("seconds", 0)) or 0) for r in hist)
            return images, seconds
        images = n_train + n_val - int(getattr(self, "cache_hits_", 0) or 0)
        return images, float(getattr(self, "extract_seconds_", None) or fit_seconds)

    # -- fitted state ----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call fit(train, val) or "
                f"{type(self).__name__}.load(dir) first."
            )

    def fit(self, train: PreparedImages, val: PreparedImages) -> Strategy:  # pragma: no cover
        raise NotImplementedError

    def _check_fit_inputs(self, train: PreparedImages, val: PreparedImages) -> None:
        """Check the splits, and record how the training images were prepared (a learned fact:
        the model must be served images prepared the same way). A new fit forgets any earlier
        operating point and calibration."""
        for nm, part in (("train", train), ("val", val)):
            if len(part) == 0:
                raise ConfigError(f"The {nm!r} split is empty; it needs images of every class.")
        if set(train.uids) & set(val.uids):
            raise ConfigError(
                "The 'train' and 'val' splits share images; validation must be held out."
            )
        task = task_for(train.classes, getattr(train, "task_kind", None))
        task.check_train_labels(train.labels)
        self.preprocessing_ = preprocessing_of(train)
        self.task_kind_ = task.kind
        # several findings per image: which findings, the uncertain-label policy (model.json)
        self.labelling_ = getattr(train, "labelling", None)
        self.operating_point_ = None
        self.calibration_ = None

    # -- prediction ----------------------------------------------------------------------------------
    def _pixels(self, images: PreparedImages | np.ndarray) -> np.ndarray:
        px = images.pixels if isinstance(images, PreparedImages) else np.asarray(images)
        if px.ndim != 4 or px.dtype != np.uint8:
            raise ConfigError(
                f"predict_proba expects PreparedImages or a uint8 array (N, C, S, S); got "
                f"{px.dtype} array of shape {px.shape}. Use medtl.prepare_images(...) first."
            )
        size = self.image_size_
        if px.shape[-1] != size or px.shape[-2] != size:
            raise ConfigError(
                f"Images are {px.shape[-2]}x{px.shape[-1]} but this model was trained at {size}x{size}; "
                f"prepare them with size={size}."
            )
        return px

    @property
    def _device(self) -> Any:
        """The estimator's device (``device_``; CPU for an object without one), model moved there."""
        import torch

        device = getattr(self, "device_", None) or torch.device("cpu")
        self.model_.to(device)
        return device

    def predict_logits(
        self, images: PreparedImages | np.ndarray, *, progress: bool = False, shard: bool = False
    ) -> np.ndarray:
        """Logits (N, K) for prepared images, computed on the estimator's device (``device_``).

        ``shard=True`` (a collective in a distributed job: every process must call it with the same
        images) predicts this process's contiguous share and gathers every share in order.
        """
        from medtl import distributed
        from medtl.training import predict_logits

        self._check_fitted()
        px = self._pixels(images)
        device = self._device

        def run(idx: np.ndarray | None) -> np.ndarray:
            return predict_logits(
                self.model_,
                px if idx is None else px[idx],
                self.backbone_config_.mean,
                self.backbone_config_.std,
                device=device,
                precision=getattr(self, "precision", "auto"),
                progress=progress and distributed.is_main(),
            )

        if shard and distributed.world_size() > 1:
            return distributed.map_shards(run, len(px))
        return run(None)

    def predict_proba(
        self, images: PreparedImages | np.ndarray, *, progress: bool = False, shard: bool = False
    ) -> np.ndarray:
        """Class probabilities (N, K, float64) for prepared images (softmax of the logits).

        float64 so that confident predictions near 0 or 1 keep their order (see ``logits_to_proba``).
        ``shard``: see :meth:`predict_logits`.
        """
        extra = {"shard": True} if shard else {}  # overrides of predict_logits may not know shard
        logits = self.predict_logits(images, progress=progress, **extra)
        classes = getattr(self, "classes_", None) or [str(k) for k in range(logits.shape[1])]
        return task_for(classes, getattr(self, "task_kind_", None)).proba_from_logits(logits)

    def validation_proba(
        self, val: PreparedImages, *, progress: bool = False, shard: bool = False
    ) -> np.ndarray:
        """Probabilities on the validation images ``val`` given to :meth:`fit`, from a model that
        did not train on them.

        Usually :meth:`predict_proba`. A strategy that refits on train + validation after choosing
        its settings (feature extraction's head) returns the held-out predictions it made before the
        refit, so the operating point and the reported validation AUROC are never in-sample.
        """
        held = getattr(self, "heldout_val_proba_", None)
        if held is not None and len(held) == len(val):
            return np.asarray(held, dtype=np.float64)
        return self.predict_proba(val, progress=progress, shard=shard)

    def predict(self, images: PreparedImages | np.ndarray) -> np.ndarray:
        """Class index per image: the call at the operating point for two classes (see
        :meth:`decide`), the most probable class otherwise."""
        return self.decide(self.predict_proba(images))

    # -- deployment: preprocessing and operating point ---------------------------------------------
    def prepare(
        self,
        samples: Sequence[Sample],
        *,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        read_options: dict[str, Any] | None = None,
    ) -> PreparedImages:
        """Decode ``samples`` exactly as this model's training images were prepared.

        Image size, channels and read options (window, percentiles, frame) come from the model
        (``preprocessing_``); ``read_options`` overrides single options on purpose (the caller should
        say so in its output).
        """
        from medtl.data import prepare_images

        pre = self.preprocessing_
        opts = {**pre["read_options"], **(read_options or {})}
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
        return prepare_images(
            samples,
            list(self.classes_),
            size=int(pre["image_size"]),
            channels=int(pre["channels"]),
            cache_dir=cache_dir,
            read_options=opts,
            progress=progress,
        )

    @property
    def task_(self) -> Task:
        """The model's task kind (:mod:`medtl.tasks`), from its classes and recorded kind."""
        self._check_fitted()
        return task_for(self.classes_, getattr(self, "task_kind_", None))

    @property
    def positive_class_(self) -> str | None:
        """The finding of a two-class model (the last class), None for the other kinds."""
        return self.task_.positive_class

    def set_operating_point(
        self,
        threshold: Any,
        *,
        rule: str,
        target: float | None,
        chosen_on: str,
        n: int | None = None,
        **extra: Any,
    ) -> Strategy:
        """Record the operating point chosen for this model (two classes only).

        Args:
            threshold: P(positive class) at or above which the call is positive (several
                findings per image: one per finding, as a dict finding -> threshold).
            rule: how it was chosen (``youden``, ``sensitivity``, ``specificity``, ``fixed``).
            target: the rule's target (e.g. sensitivity 0.9), None for Youden.
            chosen_on: the split it was chosen on (``val``; never ``test`` for a deployed model).
            n: images in that split.
            extra: further JSON-safe facts (e.g. the sensitivity it gave there).
        """
        self._check_fitted()
        if not self.task_.thresholded:
            raise ConfigError(
                f"An operating threshold applies to two-class models; this one is "
                f"{self.task_.title} with {len(self.classes_)} classes ({self.classes_})."
            )
        # a number in [0, 1]; for several findings a dict finding -> threshold (one per finding)
        t = self.task_.check_threshold(threshold)
        self.operating_point_ = {
            "threshold": t,
            "rule": rule,
            "target": target,
            "chosen_on": chosen_on,
            "n": n,
            "positive_class": self.positive_class_,
            **extra,
        }
        return self

    def threshold_for(self, override: Any = None) -> tuple[Any, str]:
        """(threshold, where it comes from) for two-class calls: ``override`` if given, else the
        model's operating point, else 0.5 (said so). (None, "argmax") for more classes; for several
        findings per image a dict finding -> threshold (:meth:`medtl.tasks.Task.check_threshold`)."""
        if not self.task_.thresholded:
            return None, f"most probable class ({self.task_.title})"
        if override is not None:
            t = self.task_.check_threshold(override)
            return t, "given on the command line / by the caller (overrides the model's)"
        op = getattr(self, "operating_point_", None)
        if op:
            rule = op.get("rule")
            target = op.get("target")
            how = rule if target is None else f"{rule} {target:g}"
            t = op["threshold"]
            t = self.task_.check_threshold(t) if isinstance(t, dict) else float(t)
            return t, f"model's operating point ({how}, chosen on {op.get('chosen_on')})"
        return 0.5, "0.5 default (the model records no operating point)"

    def decide(self, proba: np.ndarray, threshold: Any = None) -> np.ndarray:
        """Calls per row of ``proba`` as the task makes them (:meth:`medtl.tasks.Task.decide`):
        positive when P(positive) >= the operating threshold for two classes, else the most
        probable class; for several findings one call per finding at its own threshold."""
        t, _ = self.threshold_for(threshold)
        return self.task_.decide(np.asarray(proba), t)

    # -- persistence -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        """Strategy-specific JSON-safe state saved in model.json (override in subclasses)."""
        return {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted model to ``directory``: ``model.safetensors``, then ``model.json``.

        Each file is written atomically, weights first: ``model.json`` records the weights' SHA-256,
        so a folder whose weights were interrupted or replaced is refused when loaded.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise ConfigError(
                f"Cannot save the model to {str(d)!r}: it is a file. Pass a folder path."
            )
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        atomic_write(d / MODEL_FILE, lambda tmp: save_file(state, tmp))
        self.save_meta(d)
        return d

    def save_and_reload(self, directory: str | os.PathLike) -> Strategy:
        """Save to ``directory`` and return the folder loaded back, as users get it: on the same
        device, with the same cache folder (a ``cache_dir: None`` stays off), and carrying the
        held-out validation predictions of a refit (see :meth:`validation_proba`)."""
        self.save(directory)
        loaded = load_model(
            directory,
            device=str(getattr(self, "device_", "cpu")),
            cache_dir=getattr(self, "cache_dir", None),
        )
        loaded.heldout_val_proba_ = getattr(self, "heldout_val_proba_", None)
        return loaded

    def save_meta(self, directory: str | os.PathLike) -> Path:
        """(Re)write ``model.json`` and its seal in the weights' header (the tensors are kept), e.g.
        after :meth:`set_operating_point` on a saved model."""
        import medtl

        self._check_fitted()
        d = Path(directory)
        cfg = self.backbone_config_
        meta = {
            "medtl_version": medtl.__version__,
            "strategy": self.name,
            "params": self.recorded_params(),
            "backbone": {
                "name": cfg.name,
                "pretrained_weights_sha256": cfg.weights_sha256,
                "mean": list(cfg.mean),
                "std": list(cfg.std),
            },
            "weights": {"file": MODEL_FILE, "sha256": sha256_file(d / MODEL_FILE)},
            "preprocessing": self.preprocessing_,
            "task": self.task_.kind,
            "classes": list(self.classes_),
            "labelling": getattr(self, "labelling_", None),
            "positive_class": self.positive_class_,
            "operating_point": getattr(self, "operating_point_", None),
            "calibration": getattr(self, "calibration_", None),
            "history": getattr(self, "history_", []),
            "fit_seconds": getattr(self, "fit_seconds_", None),
            "best_epoch": getattr(self, "best_epoch_", None),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "extra": self._extra_state(),
            "adaptation": getattr(self, "adaptation_", None),
        }
        write_meta(d, meta)
        return d

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str = "cpu",
        cache_dir: str | os.PathLike | None = None,
    ) -> Strategy:
        """Load a model written by :meth:`save` (any strategy; the class is read from model.json)."""
        return load_model(directory, device=device, cache_dir=cache_dir)


def _build_network(backbone: str, n_classes: int, **kwargs: Any) -> tuple[nn.Module, Any]:
    from medtl.backbones import create_backbone

    return create_backbone(backbone, num_classes=n_classes, **kwargs)


def load_model(
    directory: str | os.PathLike,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> Strategy:
    """Load any saved medtl model folder (written by ``Strategy.save``), with everything it records.

    ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``) is where the loaded model predicts
    (its ``device_``). ``cache_dir`` is this machine's project cache folder, for strategies that keep
    one (feature extraction predicts from cached embeddings): the folder records no paths, so the
    caller gives it back; None: no cache.

    The network is rebuilt with random weights (no weight file needed) and then filled from
    ``model.safetensors`` (after its SHA-256 is checked against ``model.json``), so loading works
    offline and reproduces predictions exactly. Preprocessing, classes, the operating point and the
    calibration are restored; ``predict``, ``evaluate``, ``adapt`` and the app read them from here.

    Raises:
        ModelFileError: a missing, invalid or tampered ``model.json`` or weights file, named.
    """
    import dataclasses

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_meta(d)
    weights_path = d / MODEL_FILE
    name = meta["strategy"]
    if name not in _REGISTRY:
        raise ModelFileError(
            f"{d / META_FILE}: strategy {name!r} is not registered in this medtl "
            f"({list_strategies()})."
        )
    cls = _REGISTRY[name]
    est = cls(**{k: v for k, v in meta.get("params", {}).items() if k in cls._param_names()})
    if cache_dir is not None and "cache_dir" in cls._param_names():
        est.cache_dir = str(cache_dir)
    bb = meta["backbone"]
    try:
        model, cfg = _build_network(bb["name"], len(meta["classes"]), pretrained=False)
    except ConfigError as exc:
        raise ModelFileError(f"{d / META_FILE}: backbone {bb['name']!r}: {exc}") from None
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{weights_path}: not a readable safetensors file ({exc}). Use the model folder written "
            "by medtl or retrain."
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFileError(
            f"{weights_path} does not fit backbone {bb['name']!r} with {len(meta['classes'])} "
            f"classes: {first}"
        ) from None
    if missing or unexpected:
        raise ModelFileError(
            f"{weights_path} does not match backbone {bb['name']!r}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}."
        )
    from medtl.training import resolve_device

    est.device_ = resolve_device(device)
    model.eval()
    model.to(est.device_)
    est.model_ = model
    est.backbone_config_ = dataclasses.replace(
        cfg, weights_sha256=bb.get("pretrained_weights_sha256")
    )
    est.preprocessing_ = dict(meta["preprocessing"])
    est.image_size_ = int(meta["preprocessing"]["image_size"])
    est.classes_ = list(meta["classes"])
    est.task_kind_ = meta.get("task")  # None in folders written before the task kind was recorded
    est.labelling_ = meta.get("labelling")  # findings' uncertain-label policy (multi-label)
    est.operating_point_ = meta.get("operating_point")
    est.calibration_ = meta.get("calibration")
    est.history_ = meta.get("history", [])
    est.fit_seconds_ = meta.get("fit_seconds")
    est.best_epoch_ = meta.get("best_epoch")
    est._restore_extra(meta.get("extra", {}))
    est.adaptation_ = meta.get("adaptation")
    est.medtl_version_ = meta.get("medtl_version")
    return est
