"""Grad-CAM heatmaps: which parts of an image pushed a model towards a class.

Every medtl strategy ends as a backbone network with timm's interface (``forward_features`` gives the
last convolutional feature map, ``forward_head`` pools it and applies the linear classifier), so one
function explains all of them. The heatmap is a coarse hint for a human reader, not a segmentation:
it has the resolution of the last feature map (e.g. 7x7 for a 224 px EfficientNet) upsampled to the image.

Written here rather than taken from ``monai.visualize.GradCAM``: timm's ``forward_features`` /
``forward_head`` split gives the feature map directly (no layer-name lookup or forward hooks), the
whole method is a gradient and a weighted sum, and MONAI (a large dependency) had no other use in medtl.

Example:
    >>> from medtl.explain import grad_cam, overlay
    >>> est = medtl.load_model("runs/latest/fine_tuning/model")
    >>> heat = grad_cam(est, prepared.pixels[0])          # (S, S) in [0, 1]
    >>> rgb = overlay(image01, heat)                        # (H, W, 3) uint8 for display
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medtl.data import PreparedImages
from medtl.errors import ConfigError, NotFittedError
from medtl.tasks import task_for

__all__ = ["grad_cam", "overlay"]

logger = logging.getLogger(__name__)


def _as_chw(image: Any) -> np.ndarray:
    """A uint8 (C, S, S) array from an array or the first row of a PreparedImages."""
    px = image.pixels[:1] if isinstance(image, PreparedImages) else np.asarray(image)
    if px.ndim == 4 and px.shape[0] == 1:
        px = px[0]
    if px.ndim != 3 or px.dtype != np.uint8 or px.shape[0] not in (1, 3):
        raise ConfigError(
            f"grad_cam expects a uint8 image of shape (C, S, S) with C = 1 or 3, or a PreparedImages "
            f"row; got {px.dtype} array of shape {px.shape}. Prepare it with medtl.prepare_images "
            "(or pass prepared.pixels[i])."
        )
    return px


def grad_cam(estimator: Any, image: Any, *, class_index: int = 1) -> np.ndarray:
    """Grad-CAM heatmap of a fitted estimator for one prepared image.

    The target is the log-probability of ``class_index`` (for two classes this is a monotone function
    of the logit difference, the quantity the softmax actually depends on). Its gradient with respect
    to the last feature map, averaged over space, weights the feature channels; the positive part of
    the weighted sum, upsampled to the image and scaled to [0, 1], is the heatmap (Selvaraju et al.
    2017). The model's parameters are not changed, get no ``.grad`` and keep their ``requires_grad``
    flags and train/eval mode.

    Args:
        estimator: a fitted medtl strategy (``model_``, ``backbone_config_`` with mean/std,
            ``image_size_``), e.g. from :func:`medtl.load_model`.
        image: uint8 (C, S, S) pixels (or (1, C, S, S), or a PreparedImages whose first row is used)
            at the estimator's ``image_size_``.
        class_index: the class to explain (default 1, the positive class of a binary model).

    Returns:
        float32 (S, S) heatmap in [0, 1]; all zeros when nothing in the image speaks for the class.

    Raises:
        NotFittedError: the estimator has no model.
        ConfigError: wrong image shape/dtype/size or an out-of-range ``class_index``.
    """
    import torch
    import torch.nn.functional as F

    from medtl.training import to_model_input

    model = getattr(estimator, "model_", None)
    if model is None:
        raise NotFittedError(
            f"{type(estimator).__name__} is not fitted yet; fit it or load it with "
            "medtl.load_model(dir) before asking for a heatmap."
        )
    px = _as_chw(image)
    size = getattr(estimator, "image_size_", None)
    if size is not None and px.shape[-1] != int(size):
        raise ConfigError(
            f"The image is {px.shape[-2]}x{px.shape[-1]} but the model was trained at {size}x{size}; "
            f"prepare it with size={size}."
        )
    cfg = estimator.backbone_config_
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    device = params[0].device if params else torch.device("cpu")
    try:
        model.eval()
        for p in params:  # gradients are needed for the feature map only, not for the weights
            p.requires_grad_(False)
        with torch.enable_grad():
            x = torch.from_numpy(np.ascontiguousarray(px[None])).to(device).float().div_(255.0)
            x = to_model_input(x, cfg.mean, cfg.std)
            feats = model.forward_features(x)
            if feats.ndim != 4:
                raise ConfigError(
                    f"forward_features of {cfg.name!r} returned shape {tuple(feats.shape)}; Grad-CAM "
                    "needs a convolutional feature map (N, C, H, W)."
                )
            feats = feats.detach().float().requires_grad_(True)
            logits = model.forward_head(feats)
            n_classes = int(logits.shape[1])
            if not 0 <= class_index < n_classes:
                raise ConfigError(
                    f"The 'class_index' parameter must be in [0, {n_classes - 1}] for this model. "
                    f"Got {class_index!r} instead."
                )
            # the model's own task (log-softmax for one label, log-sigmoid per finding); a bare
            # network wrapper without one is read as single-label
            task = getattr(estimator, "task_", None) or task_for([str(k) for k in range(n_classes)])
            target = task.log_proba(logits.float())[0, class_index]
            (grads,) = torch.autograd.grad(target, feats)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=px.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        heat = cam.cpu().numpy().astype(np.float32)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    top = float(heat.max()) if heat.size else 0.0
    if not np.isfinite(top) or top <= 0:
        logger.debug("Grad-CAM is empty for class %d (no positive evidence)", class_index)
        return np.zeros_like(heat)
    return np.clip(heat / top, 0.0, 1.0)


def overlay(image01: Any, heatmap: Any, *, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap over a grey (or RGB) image for display.

    Args:
        image01: the image in [0, 1], (H, W) or (H, W, 3) (as returned by ``medtl.read_image``).
        heatmap: (h, w) values in [0, 1] (any size; resized to the image).
        alpha: heatmap opacity in [0, 1].
        cmap: a matplotlib colour map name.

    Returns:
        uint8 RGB array (H, W, 3).
    """
    from matplotlib import colormaps
    from PIL import Image

    from medtl._options import check_range

    check_range("alpha", float(alpha), 0.0, 1.0)
    img = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ConfigError(f"overlay expects an (H, W) or (H, W, 3) image; got shape {img.shape}.")
    img = img[..., :3]
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.ndim != 2:
        raise ConfigError(f"overlay expects a 2-D heatmap; got shape {heat.shape}.")
    h, w = img.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    colour = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3].astype(np.float32)
    # fade the colour where the heatmap is weak so the anatomy stays readable
    a = alpha * np.clip(heat, 0.0, 1.0)[..., None]
    out = (1.0 - a) * img + a * colour
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
