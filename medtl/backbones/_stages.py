"""Stage helpers for partial fine-tuning and layer-wise learning rates."""

from __future__ import annotations

from torch import nn

from medtl.backbones._config import BackboneConfig
from medtl.errors import ConfigError


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def stage_index(name: str, cfg: BackboneConfig) -> int | None:
    """Stage (0 = stem) of parameter or module ``name``; None for the classifier.

    Names outside every stage and outside the classifier (the "neck" after the last stage, e.g.
    EfficientNet's ``conv_head``/``bn2``) belong to the last stage.

    Example:
        >>> stage_index("blocks.6.0.conv_pw.weight", lite0_cfg)   # 8 (stages: conv_stem, bn1, blocks.0-6)
    """
    if _within(name, cfg.classifier):
        return None
    for i, stage in enumerate(cfg.stages):
        if _within(name, stage):
            return i
    return len(cfg.stages) - 1


def check_stage_count(cfg: BackboneConfig, k: object, most: int, what: str, fix: str = "") -> int:
    """``k`` as a count of ``cfg``'s stages in ``[0, most]``; else a ConfigError naming ``what`` (e.g.
    "'freeze_stages' parameter"), the backbone's stages and ``fix``. One check for every stage count."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= most:
        raise ConfigError(
            f"The {what} must be an integer in [0, {most}] for backbone {cfg.name!r} (its stages: "
            f"{', '.join(cfg.stages)}). Got {k!r}." + (f" {fix}" if fix else "")
        )
    return k


def set_trainable_stages(model: nn.Module, cfg: BackboneConfig, k: int) -> list[nn.Module]:
    """Make only the last ``k`` stages (the neck counts with the last one) and the classifier trainable.

    Args:
        model: a backbone from :func:`create_backbone`.
        cfg: its config.
        k: 0 = head only (like feature extraction), ``len(cfg.stages)`` = everything.

    Returns:
        The frozen modules (outermost ones only); keep them in eval mode (``m.eval()`` after every
        ``model.train()``) so their BatchNorm statistics do not move.
    """
    n = len(cfg.stages)
    first = n - check_stage_count(cfg, k, n, "'k' parameter (trainable stages)")

    def frozen(name: str) -> bool:
        idx = stage_index(name, cfg)
        return idx is not None and idx < first

    for pname, p in model.named_parameters():
        p.requires_grad_(not frozen(pname))
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or any(_within(s, name) and s != name for s in cfg.stages):
            continue  # the root or a container that holds stages (e.g. "features", "blocks")
        if _within(name, cfg.classifier) or not frozen(name):
            continue
        if any(_within(name, parent) for parent, _ in out):
            continue
        if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
            continue  # e.g. the global pool: nothing to freeze
        out.append((name, module))
    return [m for _, m in out]
