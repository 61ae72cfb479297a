"""Registry of pretrained backbones, offline weight resolution and the preprocessing that goes with them.

Every backbone is registered under an ``"arch.weights"`` name with one decorated factory and comes back
as ``(model, cfg)``: a network with timm's small interface (``forward_features``, ``forward_head``,
``reset_classifier``, ``get_classifier``) and the :class:`BackboneConfig` that travels with its weights.

Example:
    >>> from medtl.backbones import create_backbone, preprocess
    >>> model, cfg = create_backbone("efficientnet_lite0.in1k")          # offline ImageNet weights
    >>> feats = model(preprocess(pixels_uint8, cfg))                     # (N, cfg.feature_dim)
"""

from __future__ import annotations

import importlib
from typing import Any

from medtl.backbones import _efficientnet_lite, _tiny, _torchvision  # noqa: F401  (registration)
from medtl.backbones._config import BackboneConfig, backbone_fingerprint, state_dict_sha256
from medtl.backbones._efficientnet_lite import map_lite_state_dict
from medtl.backbones._registry import (
    backbone_config,
    backbone_names,
    create_backbone,
    list_backbones,
    register_backbone,
    require_weights,
)
from medtl.backbones._weights import (
    WeightsIntegrityError,
    load_state_dict_file,
    sha256_file,
    verify_sha256,
)

DEFAULT_BACKBONE = "efficientnet_lite0.in1k"

# Names whose modules import torch load on first use, so that listing backbones (and `medtl backbones`)
# does not pay torch's ~2 s import.
_LAZY = {
    "to_model_input": "medtl.backbones._preprocess",
    "FeatureNet": "medtl.backbones._adapter",
    "imagenet_classes": "medtl.backbones._preprocess",
    "preprocess": "medtl.backbones._preprocess",
    "check_stage_count": "medtl.backbones._stages",
    "set_trainable_stages": "medtl.backbones._stages",
    "stage_index": "medtl.backbones._stages",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medtl.backbones' has no attribute {name!r}")


__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneConfig",
    "FeatureNet",
    "WeightsIntegrityError",
    "backbone_config",
    "backbone_fingerprint",
    "backbone_names",
    "check_stage_count",
    "create_backbone",
    "imagenet_classes",
    "list_backbones",
    "load_state_dict_file",
    "map_lite_state_dict",
    "preprocess",
    "register_backbone",
    "require_weights",
    "set_trainable_stages",
    "sha256_file",
    "stage_index",
    "state_dict_sha256",
    "to_model_input",
    "verify_sha256",
]
