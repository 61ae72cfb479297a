"""torchvision ResNet-18/50 and DenseNet-121 with ImageNet weights resolved offline.

Weights come from an explicit file, else the torch hub cache (where torchvision itself puts them),
else - only with ``allow_download=True`` - a hash-checked download of torchvision's own URL. The
torchvision network is wrapped in :class:`FeatureNet`, regrouped so that each stage is one module.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from medtl.backbones._config import BackboneConfig
from medtl.backbones._registry import register_backbone
from medtl.backbones._weights import (
    hub_checkpoint_path,
    load_into,
    load_state_dict_file,
    resolve_hub_weights,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medtl.backbones._adapter import FeatureNet


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _TV:
    arch: str  # torchvision builder name
    weights_enum: str  # torchvision weights enum member, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    # file name / url copied from the enum (checked by the tests) so listing needs no torchvision import
    file_name: str
    url: str
    feature_dim: int
    classifier: str
    description: str


_MODELS = {
    "resnet18.tv_in1k": _TV(
        "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth", 512, "fc",
        "ResNet-18, ImageNet-1k (torchvision V1 weights; torch cache or explicit file)",
    ),
    "resnet50.tv_in1k": _TV(
        "resnet50", "ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", 2048, "fc",
        "ResNet-50, ImageNet-1k (torchvision V1 weights; torch cache or explicit file)",
    ),
    "densenet121.tv_in1k": _TV(
        "densenet121", "DenseNet121_Weights.IMAGENET1K_V1", "densenet121-a639ec97.pth",
        "https://download.pytorch.org/models/densenet121-a639ec97.pth", 1024, "classifier",
        "DenseNet-121, ImageNet-1k (torchvision; the classic CheXNet backbone)",
    ),
}  # fmt: skip

_RESNET_STAGES = ("features.stem", *(f"features.layer{i}" for i in range(1, 5)))
_DENSENET_STAGES = ("features.stem", *(f"features.block{i}" for i in range(1, 5)))

# torchvision's DenseNet checkpoints use the old keys 'norm.1', 'conv.2'...; torchvision renames them in
# a private function, so its regular expression is repeated here (hand-written on purpose), extended to
# num_batches_tracked for checkpoints saved by newer torch versions.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def fix_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old-style DenseNet keys (``norm.1`` -> ``norm1``) as torchvision does when loading."""
    out = {}
    for key, value in state.items():
        m = _DENSENET_OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def tv_config(name: str) -> BackboneConfig:
    """The pretrained config of a registered torchvision backbone."""
    spec = _MODELS[name]
    return BackboneConfig(
        name=name,
        arch=f"torchvision.{spec.arch}",
        weights="in1k",
        input_size=224,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        feature_dim=spec.feature_dim,
        classifier=spec.classifier,
        stages=_DENSENET_STAGES if spec.arch.startswith("densenet") else _RESNET_STAGES,
        weights_file=spec.file_name,
        weights_sha256=None,  # filled with the loaded file's hash
        source="torch_cache",
        license="BSD-3-Clause (torchvision weights)",
        description=spec.description,
    )


def wrap_resnet(net: nn.Module) -> FeatureNet:
    """Regroup a torchvision ResNet as stem + layer1..4 (same modules, same forward)."""
    from torch import nn

    from medtl.backbones._adapter import FeatureNet

    features = nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)
            ),
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )
    model = FeatureNet(features, net.fc.in_features, num_classes=0, classifier_name="fc")
    model.fc = net.fc
    model.num_classes = net.fc.out_features
    return model


def wrap_densenet(net: nn.Module) -> FeatureNet:
    """Regroup a torchvision DenseNet as stem + block1..4 (block = dense block + transition; the last
    one ends with the final BatchNorm and the ReLU torchvision applies in ``forward``)."""
    from torch import nn

    from medtl.backbones._adapter import FeatureNet

    f = net.features
    blocks: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(OrderedDict(conv0=f.conv0, norm0=f.norm0, relu0=f.relu0, pool0=f.pool0))
    )
    for i in range(1, 4):
        blocks[f"block{i}"] = nn.Sequential(
            OrderedDict(dense=getattr(f, f"denseblock{i}"), transition=getattr(f, f"transition{i}"))
        )
    blocks["block4"] = nn.Sequential(
        OrderedDict(dense=f.denseblock4, norm5=f.norm5, relu5=nn.ReLU(inplace=True))
    )
    model = FeatureNet(
        nn.Sequential(blocks), net.classifier.in_features, classifier_name="classifier"
    )
    model.classifier = net.classifier
    model.num_classes = net.classifier.out_features
    return model


def _locator(name: str) -> Callable[[], tuple[bool, str]]:
    spec = _MODELS[name]

    def locate() -> tuple[bool, str]:
        path = hub_checkpoint_path(spec.file_name)
        if path.is_file():
            return True, f"torch cache ({path})"
        return False, f"missing: {path} (get it from {spec.url}, or use --allow-download/--weights)"

    return locate


def _factory(name: str) -> Callable[[bool, str | None, bool], tuple[nn.Module, BackboneConfig]]:
    spec = _MODELS[name]
    cfg0 = tv_config(name)

    def factory(
        pretrained: bool, weights_path: str | None, allow_download: bool
    ) -> tuple[nn.Module, BackboneConfig]:
        import torchvision.models as tvm

        net = getattr(tvm, spec.arch)(weights=None)  # never let torchvision download by itself
        cfg = replace(cfg0, weights="random", source="random")
        if pretrained:
            path, source, sha = resolve_hub_weights(
                name=name,
                file_name=spec.file_name,
                url=spec.url,
                weights_path=weights_path,
                allow_download=allow_download,
            )
            state = load_state_dict_file(path)
            if spec.arch.startswith("densenet"):
                state = fix_densenet_keys(state)
            load_into(net, state, path)
            cfg = replace(cfg0, weights_sha256=sha, source=source)
        wrap = wrap_densenet if spec.arch.startswith("densenet") else wrap_resnet
        return wrap(net), cfg

    return factory


for _name in _MODELS:
    register_backbone(_name, config=tv_config(_name), locate_weights=_locator(_name))(
        _factory(_name)
    )
