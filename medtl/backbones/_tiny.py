"""``tiny_test``: a very small random-init CNN with the full backbone interface, for fast tests."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from medtl.backbones._config import BackboneConfig
from medtl.backbones._registry import register_backbone
from medtl.backbones._weights import load_into, load_state_dict_file, sha256_file

if TYPE_CHECKING:  # torch loads only when a network is built, so listing backbones stays fast
    from torch import nn

    from medtl.backbones._adapter import FeatureNet

TINY_CONFIG = BackboneConfig(
    name="tiny_test",
    arch="medtl_tiny_cnn",
    weights="random",
    input_size=64,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    feature_dim=32,
    classifier="fc",
    stages=("features.stem", "features.stage1", "features.stage2"),
    source="random",
    license="Apache-2.0",
    description="3-stage 8/16/32-channel CNN, random init only; for tests and quick smoke runs",
)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    from torch import nn

    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            act=nn.ReLU(inplace=True),
        )
    )


def build_tiny(num_classes: int = 0) -> FeatureNet:
    """The tiny network itself (random init from torch's global RNG: seed it for reproducibility)."""
    from torch import nn

    from medtl.backbones._adapter import FeatureNet

    features = nn.Sequential(
        OrderedDict(
            stem=_conv_bn_relu(3, 8),
            stage1=_conv_bn_relu(8, 16),
            stage2=_conv_bn_relu(16, 32),
        )
    )
    return FeatureNet(features, 32, num_classes=num_classes, classifier_name="fc")


@register_backbone(
    "tiny_test", config=TINY_CONFIG, locate_weights=lambda: (True, "random init only")
)
def _tiny_test(
    pretrained: bool, weights_path: str | None, allow_download: bool
) -> tuple[nn.Module, BackboneConfig]:
    # Random-only by design: `pretrained` is ignored so strategies can use it with their defaults.
    # An explicit weights file (e.g. saved from an earlier run) is still honoured.
    model = build_tiny()
    if weights_path is None:
        return model, TINY_CONFIG
    load_into(model, load_state_dict_file(weights_path), weights_path)
    cfg = replace(
        TINY_CONFIG,
        weights="file",
        weights_sha256=sha256_file(weights_path),
        source=f"file:{weights_path}",
    )
    return model, cfg
