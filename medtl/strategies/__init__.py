"""Transfer-learning strategies behind one estimator contract (fit / predict_proba / save / load).

Registered: ``feature_extraction``, ``fine_tuning``, ``partial_fine_tuning``, ``from_scratch``.
"""

from medtl.backbones import DEFAULT_BACKBONE
from medtl.strategies._base import (
    Strategy,
    StrategyTags,
    get_strategy,
    list_strategies,
    load_model,
    register_strategy,
    strategy_description,
    strategy_label,
    strategy_tags,
)
from medtl.strategies._embeddings import embedding_row_key
from medtl.strategies._feature_extraction import (
    FeatureExtraction,
    extract_embeddings,
    row_span_basis,
)
from medtl.strategies._modelfile import META_FILE, MODEL_FILE, ModelFileError, read_meta
from medtl.strategies._network import FineTuning, FromScratch, PartialFineTuning

__all__ = [
    "DEFAULT_BACKBONE",
    "META_FILE",
    "MODEL_FILE",
    "FeatureExtraction",
    "FineTuning",
    "FromScratch",
    "ModelFileError",
    "PartialFineTuning",
    "Strategy",
    "StrategyTags",
    "embedding_row_key",
    "extract_embeddings",
    "get_strategy",
    "list_strategies",
    "load_model",
    "read_meta",
    "register_strategy",
    "row_span_basis",
    "strategy_description",
    "strategy_label",
    "strategy_tags",
]
