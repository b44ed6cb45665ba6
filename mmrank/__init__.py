"""mmrank: multimodal retrieval and reranking.

Index images and PDF pages into a :class:`Collection`, then search them with a
:class:`Pipeline` (a first stage plus rerankers)::

    from mmrank import Collection, Pipeline, Query
    collection = Collection.open("my-collection")
    ranking = Pipeline(collection).search(Query(text="operating margin in 2016"), k=5)

Heavy components load lazily, so ``import mmrank`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from mmrank.errors import (
    CollectionError,
    EncoderMismatchError,
    InputError,
    MissingDependencyError,
    MMRankError,
    ModelReplyError,
    ModelUnavailableError,
)
from mmrank.types import Hit, Item, Query, Ranking, StageScore

__version__ = "0.1.0"

_LAZY = {
    "Collection": "mmrank.collection",
    "VectorIndex": "mmrank.index",
    "Pipeline": "mmrank.pipeline",
    "HybridRetriever": "mmrank.retrieval",
    "load_dataset": "mmrank.datasets",
    "load_image_encoder": "mmrank.encoders",
    "load_text_encoder": "mmrank.encoders",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmrank' has no attribute '{name}'")


__all__ = [
    "CollectionError", "EncoderMismatchError", "Hit", "InputError", "Item", "MMRankError",
    "MissingDependencyError", "ModelReplyError", "ModelUnavailableError", "Query", "Ranking", "StageScore", "__version__",
    *_LAZY,
]
