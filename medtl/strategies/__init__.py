"""Transfer-learning strategies behind one estimator contract (fit / predict_proba / save / load).

Registered: ``feature_extraction``, ``fine_tuning``, ``partial_fine_tuning``, ``from_scratch``.
"""

from medtl.strategies._base import (
    Strategy,
    get_strategy,
    list_strategies,
    load_model,
    register_strategy,
    strategy_description,
    strategy_label,
)
from medtl.strategies._feature_extraction import FeatureExtraction, extract_embeddings
from medtl.strategies._network import DEFAULT_BACKBONE, FineTuning, FromScratch, PartialFineTuning

__all__ = [
    "DEFAULT_BACKBONE",
    "FeatureExtraction",
    "FineTuning",
    "FromScratch",
    "PartialFineTuning",
    "Strategy",
    "extract_embeddings",
    "get_strategy",
    "list_strategies",
    "load_model",
    "register_strategy",
    "strategy_description",
    "strategy_label",
]
