"""The backbone registry: one decorated factory per backbone (as timm's ``@register_model``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medtl._options import look_up_option
from medtl.backbones._config import BackboneConfig
from medtl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

Factory = Callable[[bool, "str | None", bool], "tuple[nn.Module, BackboneConfig]"]
# returns (available offline, where the weights are / would come from)
Locator = Callable[[], "tuple[bool, str]"]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Factory
    config: BackboneConfig | None
    locate: Locator | None


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str,
    *,
    config: BackboneConfig | None = None,
    locate_weights: Locator | None = None,
) -> Callable[[Factory], Factory]:
    """Register a backbone factory under ``name``.

    The factory is called as ``factory(pretrained, weights_path, allow_download)`` and returns
    ``(model, cfg)``: a model with timm's small interface (``forward_features``, ``forward_head``,
    ``reset_classifier``, ``get_classifier``) carrying its native classifier, and its BackboneConfig.

    Args:
        name: the registered name (``"arch.weights"``, e.g. ``"resnet18.tv_in1k"``).
        config: the static config, so that :func:`list_backbones` can describe the backbone without
            building it. Without one, listing builds the model once with ``pretrained=False``.
        locate_weights: an offline check ``() -> (available, where)`` used by :func:`list_backbones`;
            it must not load the weights. Without one, the backbone is reported as available.

    Example:
        >>> @register_backbone("my_net")
        ... def _my_net(pretrained, weights_path, allow_download):
        ...     return build_model(), BackboneConfig(...)
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_backbone: 'name' must be a non-empty string. Got {name!r}.")

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ConfigError(
                f"A backbone named {name!r} is already registered. Choose another name."
            )
        _REGISTRY[name] = _Entry(name, factory, config, locate_weights)
        return factory

    return decorator


def backbone_names() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    return _REGISTRY[look_up_option("backbone", name, backbone_names())]


def backbone_config(name: str) -> BackboneConfig:
    """The static config of a registered backbone (pretrained description), without building it."""
    entry = _entry(name)
    if entry.config is not None:
        return entry.config
    return entry.factory(False, None, False)[1]


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights_path: str | None = None,
    allow_download: bool = False,
    num_classes: int = 0,
) -> tuple[nn.Module, BackboneConfig]:
    """Build a registered backbone, with its weights resolved offline, and its config.

    Args:
        name: a registered name (see :func:`list_backbones`); unknown names suggest the closest one.
        pretrained: load ImageNet weights; False gives a random init of the same architecture (the
            from-scratch control). Ignored by random-only backbones such as ``"tiny_test"``.
        weights_path: explicit weights file (.pth state dict or .safetensors), tried first.
        allow_download: allow a download when the weights are not found offline (never by default).
        num_classes: size of the new classifier; 0 means none, so ``model(x)`` returns pooled features
            (N, cfg.feature_dim). A value equal to the native classifier's (1000 for ImageNet
            backbones) keeps the ImageNet classifier.

    Returns:
        ``(model, cfg)``; the model is in training mode, as torch creates it.

    Raises:
        ConfigError: unknown name (with did-you-mean) or bad argument.
        WeightsNotFoundError: pretrained weights are not available offline.

    Example:
        >>> model, cfg = create_backbone("efficientnet_lite0.in1k", num_classes=2)
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(
            f"The 'num_classes' parameter must be an int >= 0. Got {num_classes!r} instead."
        )
    if weights_path is not None and not pretrained:
        warnings.warn(
            f"weights_path={weights_path!r} is ignored because pretrained=False for backbone "
            f"{name!r}; pass pretrained=True to load it.",
            stacklevel=2,
        )
        weights_path = None
    model, cfg = entry.factory(bool(pretrained), weights_path, bool(allow_download))
    if getattr(model, "num_classes", None) != num_classes:
        model.reset_classifier(num_classes)
    log.debug("created backbone %s (weights=%s, source=%s)", cfg.name, cfg.weights, cfg.source)
    return model, cfg


def list_backbones() -> list[dict[str, Any]]:
    """Describe every registered backbone, checking offline (without loading) if its weights are there.

    Returns:
        One dict per backbone: ``name``, ``description``, ``arch``, ``weights``, ``feature_dim``,
        ``input_size``, ``weights_available`` (bool), ``weights_source`` (where the weights are or
        would come from), ``weights_file``, ``license``.
    """
    rows = []
    for name in backbone_names():
        entry = _REGISTRY[name]
        cfg = backbone_config(name)
        available, where = entry.locate() if entry.locate else (True, cfg.source)
        rows.append(
            {
                "name": name,
                "description": cfg.description,
                "arch": cfg.arch,
                "weights": cfg.weights,
                "feature_dim": cfg.feature_dim,
                "input_size": cfg.input_size,
                "weights_available": bool(available),
                "weights_source": where,
                "weights_file": cfg.weights_file,
                "license": cfg.license,
            }
        )
    return rows


def require_weights(
    name: str, *, weights_path: str | None = None, allow_download: bool = False
) -> None:
    """Refuse, before any data is read, a pretrained backbone whose weights are not on this machine.

    Cheap (no torch import, no hashing): the registered offline locator says whether the weights are
    there. An explicit ``weights_path`` or ``allow_download`` is left to the factory to check.

    Raises:
        ConfigError: ``name`` is not registered.
        WeightsNotFoundError: the weights are missing; the message says how to get them.
    """
    from medtl.errors import WeightsNotFoundError

    entry = _entry(name)
    if weights_path is not None or allow_download or entry.locate is None:
        return
    available, where = entry.locate()
    if not available:
        raise WeightsNotFoundError(
            f"model.backbone {name!r}: its pretrained weights are not on this machine ({where}). "
            "Give the weights file with --weights FILE (config: model.weights_path), allow a "
            "one-time download with --allow-download (model.allow_download: true), or choose a "
            "backbone that `medtl backbones` lists as available."
        )
