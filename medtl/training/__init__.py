"""The training engine: loop, augmentation, hardware choices."""

from medtl.training._augment import AugmentSettings, BatchAugment
from medtl.training._device import (
    autocast_context,
    cpu_has_fast_bf16,
    cuda_dtype,
    describe_precision,
    grad_scaler,
    inference_precision,
    micro_batch_size,
    resolve_device,
    retained_allocations,
    to_device,
    training_precision,
)
from medtl.training._inference import fold_batchnorm, folded_for_training
from medtl.training._loop import (
    LoopSettings,
    TrainResult,
    logits_to_proba,
    micro_batch_for,
    predict_logits,
    to_model_input,
    train_network,
    training_step,
    val_auroc,
)

__all__ = [
    "AugmentSettings",
    "BatchAugment",
    "LoopSettings",
    "TrainResult",
    "autocast_context",
    "cpu_has_fast_bf16",
    "cuda_dtype",
    "describe_precision",
    "fold_batchnorm",
    "folded_for_training",
    "grad_scaler",
    "inference_precision",
    "logits_to_proba",
    "micro_batch_for",
    "micro_batch_size",
    "predict_logits",
    "resolve_device",
    "retained_allocations",
    "to_device",
    "to_model_input",
    "train_network",
    "training_precision",
    "training_step",
    "val_auroc",
]
