"""Model input from uint8 pixels, and the ImageNet class names."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from medtl.backbones._config import BackboneConfig
from medtl.errors import ConfigError


def preprocess(pixels_uint8: torch.Tensor | np.ndarray, cfg: BackboneConfig) -> torch.Tensor:
    """uint8 pixels (N, C, S, S), C = 1 or 3 -> float32 (N, 3, S, S) normalised for the backbone.

    ``out = (pixels / 255 - mean) / std`` per channel, by :func:`to_model_input` (the one normalisation
    that training, prediction and extraction use too). A grey image (C = 1) is replicated to three
    channels (``cfg.grey_mode == "replicate"``), so the pretrained stem is used unchanged.

    Example:
        >>> x = preprocess(torch.zeros(2, 1, 224, 224, dtype=torch.uint8), cfg)  # (2, 3, 224, 224)
    """
    x = torch.as_tensor(pixels_uint8)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(
            f"preprocess expects uint8 pixels of shape (N, C, S, S) with C = 1 or 3. Got dtype "
            f"{x.dtype} and shape {tuple(x.shape)}; convert with (image * 255).round().to(torch.uint8) "
            "and put channels second."
        )
    if cfg.grey_mode != "replicate":
        raise ConfigError(f"Unsupported grey_mode {cfg.grey_mode!r} in config of {cfg.name!r}.")
    return to_model_input(x.to(torch.float32).div_(255.0), cfg.mean, cfg.std)


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    # torchvision ships the category names with its weight enums; reading them downloads nothing
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in the classifier's index order (offline)."""
    return list(_imagenet_classes())


def to_model_input(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Images in [0, 1], (N, 1 or 3, H, W) -> normalised float (N, 3, H, W); grey is replicated to RGB.

    Training applies it after augmentation (which works in [0, 1]); :func:`preprocess` after uint8 -> [0, 1].
    """
    if x01.shape[1] == 1:
        x01 = x01.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s
