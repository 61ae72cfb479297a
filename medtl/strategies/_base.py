"""The estimator contract shared by every strategy, and the strategy registry.

Contract (scikit-learn style): ``__init__`` only stores keyword arguments; ``fit(train, val)`` sets the
learned attributes (ending in ``_``) and returns ``self``; ``predict_proba(images)`` gives (N, K)
probabilities; ``save(dir)`` / ``load(dir)`` round-trip exactly, with tensors in safetensors and everything
else in JSON (no pickle).

Every strategy ends as the same kind of object: a backbone network whose classifier is a linear layer, so
prediction, saving, heatmaps and test-time adaptation work identically for all of them.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from medtl._fileio import atomic_write, atomic_write_json
from medtl._options import look_up_option
from medtl.data._types import PreparedImages
from medtl.errors import ConfigError, NotFittedError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Strategy]] = {}

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name`` (CLI, configs, ``get_strategy``)."""
    _REGISTRY[cls.name] = cls
    return cls


def list_strategies() -> list[str]:
    """Names of the registered strategies."""
    return sorted(_REGISTRY)


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

    # -- parameters ----------------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-safe), as in scikit-learn."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> Strategy:
        for k, v in params.items():
            if k not in self._param_names():
                raise ConfigError(f"{type(self).__name__} has no parameter {k!r}.")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitted state ----------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call fit(train, val) or "
                f"{type(self).__name__}.load(dir) first."
            )

    def fit(self, train: PreparedImages, val: PreparedImages) -> Strategy:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _check_fit_inputs(train: PreparedImages, val: PreparedImages) -> None:
        for nm, part in (("train", train), ("val", val)):
            if len(part) == 0:
                raise ConfigError(f"The {nm!r} split is empty; it needs images of every class.")
        if set(train.uids) & set(val.uids):
            raise ConfigError(
                "The 'train' and 'val' splits share images; validation must be held out."
            )
        present = np.unique(train.labels)
        if len(present) < 2:
            raise ConfigError(
                f"The 'train' split holds a single class ({train.classes[int(present[0])]!r}); "
                "training needs at least two classes."
            )

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

    def predict_logits(
        self, images: PreparedImages | np.ndarray, *, progress: bool = False
    ) -> np.ndarray:
        """Logits (N, K) for prepared images."""
        from medtl.training import predict_logits

        self._check_fitted()
        px = self._pixels(images)
        return predict_logits(
            self.model_,
            px,
            self.backbone_config_.mean,
            self.backbone_config_.std,
            precision=getattr(self, "precision", "auto"),
            progress=progress,
        )

    def predict_proba(
        self, images: PreparedImages | np.ndarray, *, progress: bool = False
    ) -> np.ndarray:
        """Class probabilities (N, K, float64) for prepared images (softmax of the logits).

        float64 so that confident predictions near 0 or 1 keep their order (see ``logits_to_proba``).
        """
        from medtl.training import logits_to_proba

        return logits_to_proba(self.predict_logits(images, progress=progress))

    def predict(self, images: PreparedImages | np.ndarray) -> np.ndarray:
        """Most probable class index per image."""
        return self.predict_proba(images).argmax(1)

    # -- persistence -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        """Strategy-specific JSON-safe state saved in model.json (override in subclasses)."""
        return {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the fitted model to ``directory`` (model.safetensors + model.json), atomically per file."""
        from safetensors.torch import save_file

        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        atomic_write(d / MODEL_FILE, lambda tmp: save_file(state, tmp))
        meta = {
            "format": "medtl-model/1",
            "strategy": self.name,
            "params": self.get_params(),
            "backbone": self.backbone_config_.name,
            "image_size": self.image_size_,
            "classes": list(self.classes_),
            "history": getattr(self, "history_", []),
            "fit_seconds": getattr(self, "fit_seconds_", None),
            "best_epoch": getattr(self, "best_epoch_", None),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "extra": self._extra_state(),
            "adaptation": getattr(self, "adaptation_", None),
        }
        atomic_write_json(d / META_FILE, meta)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Strategy:
        """Load a model written by :meth:`save` (any strategy; the class is read from model.json)."""
        return load_model(directory)


def _build_network(backbone: str, n_classes: int, **kwargs: Any) -> tuple[nn.Module, Any]:
    from medtl.backbones import create_backbone

    return create_backbone(backbone, num_classes=n_classes, **kwargs)


def load_model(directory: str | os.PathLike) -> Strategy:
    """Load any saved medtl model folder (written by ``Strategy.save``).

    The network is rebuilt with random weights (no weight file needed) and then filled from
    ``model.safetensors``, so loading works offline and reproduces predictions exactly.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    meta_path, weights_path = d / META_FILE, d / MODEL_FILE
    if not meta_path.exists() or not weights_path.exists():
        raise ConfigError(
            f"{d} is not a medtl model folder: expected {META_FILE} and {MODEL_FILE}. "
            "Pass the 'model' folder of a run (e.g. runs/<id>/<strategy>/model)."
        )
    meta = json.loads(meta_path.read_text())
    name = look_up_option("strategy", meta["strategy"], list_strategies())
    cls = _REGISTRY[name]
    est = cls(**{k: v for k, v in meta["params"].items() if k in cls._param_names()})
    model, cfg = _build_network(meta["backbone"], len(meta["classes"]), pretrained=False)
    missing, unexpected = model.load_state_dict(load_file(weights_path), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights_path} does not match backbone {meta['backbone']!r}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}."
        )
    model.eval()
    est.model_ = model
    est.backbone_config_ = cfg
    est.image_size_ = int(meta["image_size"])
    est.classes_ = list(meta["classes"])
    est.history_ = meta.get("history", [])
    est.fit_seconds_ = meta.get("fit_seconds")
    est.best_epoch_ = meta.get("best_epoch")
    est._restore_extra(meta.get("extra", {}))
    est.adaptation_ = meta.get("adaptation")
    return est
