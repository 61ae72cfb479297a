"""medtl: adapt ImageNet-pretrained networks to medical images.

The public API is re-exported here; implementation lives in the subpackages. Heavy modules (torch, timm)
load lazily so that ``import medtl`` and ``medtl --help`` stay fast.

Example:
    >>> import medtl
    >>> image, meta = medtl.read_image("chest.dcm")          # float32 in [0, 1], no PHI in meta
    >>> ds = medtl.load_dataset("my_xrays/")                  # folders, CSV manifest or MedMNIST .npz
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "read_image": "medtl.io",
    "load_dataset": "medtl.data",
    "prepare_images": "medtl.data",
    "make_phantom": "medtl.data.synth",
    "data_card": "medtl.data.card",
    "Dataset": "medtl.data",
    "Sample": "medtl.data",
    "PreparedImages": "medtl.data",
    "create_backbone": "medtl.backbones",
    "list_backbones": "medtl.backbones",
    "get_strategy": "medtl.strategies",
    "list_strategies": "medtl.strategies",
    "FeatureExtraction": "medtl.strategies",
    "FineTuning": "medtl.strategies",
    "PartialFineTuning": "medtl.strategies",
    "FromScratch": "medtl.strategies",
    "load_model": "medtl.strategies",
    "compare": "medtl.experiment",
    "train": "medtl.experiment",
    "ExperimentConfig": "medtl.config",
    "load_config": "medtl.config",
    "evaluate": "medtl.evaluation",
    "predict": "medtl.evaluation",
    "advise": "medtl.advisor",
    "adapt_model": "medtl.adapt",
    "adapt_batchnorm": "medtl.adapt",
    "write_report": "medtl.report",
    "grad_cam": "medtl.explain",
    "MedtlError": "medtl.errors",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    if name in {
        "io",
        "data",
        "backbones",
        "strategies",
        "training",
        "metrics",
        "advisor",
        "report",
        "explain",
    }:
        return importlib.import_module(f"medtl.{name}")
    raise AttributeError(f"module 'medtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
