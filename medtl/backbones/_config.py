"""The configuration that travels with a backbone's weights, and the fingerprint that keys caches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

GREY_MODES = ("replicate",)


@dataclass(frozen=True)
class BackboneConfig:
    """What a backbone is, where its weights come from and how its input must be prepared.

    The pretrained configuration travels with the weights (as in timm): a model is only meaningful
    together with the preprocessing it was trained with.

    Attributes:
        name: registered name, architecture and weights (e.g. ``"efficientnet_lite0.in1k"``).
        arch: timm or torchvision architecture it builds (e.g. ``"tf_efficientnet_lite0"``).
        weights: ``"in1k"`` (ImageNet-1k), ``"random"`` (random init, the from-scratch control) or
            ``"file"`` (an explicit file for a backbone that has no pretrained weights of its own).
        input_size: default square training size in pixels.
        mean, std: per-channel normalisation applied to intensities in [0, 1].
        in_chans: channels the stem expects (3).
        feature_dim: length of the pooled feature vector (``forward_head(x, pre_logits=True)``).
        classifier: attribute name of the classifier module (``model.get_classifier()``).
        grey_mode: how a 1-channel image enters the 3-channel stem. ``"replicate"``: the grey channel is
            copied to R, G and B, so the pretrained stem is used unchanged (no re-initialised or
            averaged first conv, so ImageNet features transfer as they were learned).
        weights_file: expected file name of the weights (e.g. ``"resnet18-f37072fd.pth"``).
        weights_sha256: SHA-256 of the weights file that was (or will be) loaded; None for random init
            or when not known in advance.
        source: where the weights come from: ``"package:<module>"``, ``"torch_cache"``,
            ``"file:<path>"``, ``"download"`` or ``"random"``.
        stages: module names from the stem to the last stage, in forward order, for partial
            fine-tuning ("last k stages trainable") and layer-wise learning rates. A parameter belongs
            to a stage when its name equals the stage name or starts with it plus ``"."``. Parameters
            outside every stage and outside the classifier form the "neck" after the last stage (e.g.
            EfficientNet's ``conv_head``/``bn2``); :func:`medtl.backbones.stage_index` assigns them to
            the last stage.
        fine_tune_frozen: leading ``stages`` that fine-tuning keeps at their pretrained weights unless told
            otherwise (``freeze_stages``). These are the high-resolution layers: on a CPU they take most
            of a training step's backward time and hold few of the weights. Set where it was measured
            (EfficientNet-Lite, issue 27); 0 = every layer trains.
        license: license of the weights.
        description: one line for humans.
    """

    name: str
    arch: str
    weights: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    classifier: str
    stages: tuple[str, ...]
    in_chans: int = 3
    grey_mode: str = "replicate"
    weights_file: str | None = None
    weights_sha256: str | None = None
    source: str = "random"
    fine_tune_frozen: int = 0
    license: str = "unknown"
    description: str = ""

    @property
    def pretrained(self) -> bool:
        """True when the configuration describes pretrained (not random) weights."""
        return self.weights != "random"


def state_dict_sha256(model: nn.Module, exclude_classifier: bool = True) -> str:
    """SHA-256 over a model's parameter and buffer values (names included), optionally without the head.

    Used to fingerprint randomly initialised backbones, whose weights have no file to hash.
    """
    import torch

    skip: set[str] = set()
    if exclude_classifier and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        head_ids = {id(t) for t in (*head.parameters(), *head.buffers())}
        state = dict(model.named_parameters())
        state.update(dict(model.named_buffers()))
        skip = {n for n, t in state.items() if id(t) in head_ids}
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def backbone_fingerprint(cfg: BackboneConfig, model: nn.Module | None = None) -> str:
    """A stable hex key for embedding caches: same fingerprint <=> same features for the same pixels.

    It hashes the name, architecture, the weights' identity and the preprocessing (mean, std, default
    size, channels, grey mode). The weights' identity is, in order: ``cfg.weights_sha256``; else, when
    ``model`` is given, a hash of its backbone tensors (classifier excluded, so a fresh random head does
    not change it); else the seed-free marker ``"random:unseeded"`` - two random inits then share a
    fingerprint, so pass ``model`` whenever the weights are random.

    Example:
        >>> model, cfg = create_backbone("tiny_test")
        >>> key = backbone_fingerprint(cfg, model)
    """
    if cfg.weights_sha256:
        weights_id = f"sha256:{cfg.weights_sha256}"
    elif model is not None:
        weights_id = f"tensors:{state_dict_sha256(model)}"
    else:
        weights_id = "random:unseeded"
    payload = {
        "version": 1,
        "name": cfg.name,
        "arch": cfg.arch,
        "weights": weights_id,
        "mean": [float(v) for v in cfg.mean],
        "std": [float(v) for v in cfg.std],
        "input_size": int(cfg.input_size),
        "in_chans": int(cfg.in_chans),
        "grey_mode": cfg.grey_mode,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
