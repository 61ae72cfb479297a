"""A thin module that gives non-timm networks timm's small interface."""

from __future__ import annotations

import torch
from torch import nn


class FeatureNet(nn.Module):
    """``features`` -> global average pool -> optional linear classifier, with timm's interface.

    ``forward_features(x)`` returns the last feature map (N, C, H, W); ``forward_head(x,
    pre_logits=True)`` the pooled features (N, num_features); ``model(x)`` the logits, or the pooled
    features when ``num_classes == 0``.

    Args:
        features: the convolutional body, ideally an ``nn.Sequential`` whose children are the stages.
        num_features: channels of the last feature map (= pooled feature length).
        num_classes: classifier outputs; 0 for none (identity).
        classifier_name: attribute name of the classifier (``"fc"``, ``"classifier"``), kept from the
            original architecture so its state-dict keys stay familiar.
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int = 0,
        classifier_name: str = "fc",
    ) -> None:
        super().__init__()
        self.features = features
        self.num_features = int(num_features)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier_name = classifier_name
        self.num_classes = 0
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        """The classifier module (identity when ``num_classes == 0``)."""
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised ``Linear(num_features, num_classes)``."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"FeatureNet only supports global_pool='avg'. Got {global_pool!r}.")
        self.num_classes = int(num_classes)
        head: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        setattr(self, self.classifier_name, head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, C, H, W)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool a feature map; return the pooled features (``pre_logits``) or the logits."""
        x = self.global_pool(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
