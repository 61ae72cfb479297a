"""The training engine: loop, augmentation, hardware choices."""

from medtl.training._augment import AugmentSettings, BatchAugment
from medtl.training._device import (
    autocast_context,
    cpu_has_fast_bf16,
    describe_precision,
    resolve_device,
)
from medtl.training._loop import (
    LoopSettings,
    TrainResult,
    predict_logits,
    to_model_input,
    train_network,
    val_auroc,
)

__all__ = [
    "AugmentSettings",
    "BatchAugment",
    "LoopSettings",
    "TrainResult",
    "autocast_context",
    "cpu_has_fast_bf16",
    "describe_precision",
    "predict_logits",
    "resolve_device",
    "to_model_input",
    "train_network",
    "val_auroc",
]
