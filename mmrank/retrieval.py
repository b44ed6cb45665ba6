"""The first stage: dense search in each of the collection's vector spaces, plus BM25, fused.

Paths:
- ``text``: the query text through the collection's text encoder, over item texts' vectors;
- ``bm25``: the query text through BM25 over item texts;
- ``image``: the query image (or the query text, through the image model's text tower) over the
  image vectors of images and page renders. A reference image plus a modification text is fused
  into one composed query vector.

Each hit records every path's score and rank and names the paths that found it, so an item
without text that only its image embedding found says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmrank.collection import Collection
from mmrank.errors import InputError
from mmrank.fusion import FUSION_METHODS, compose_query_vector, fuse_results
from mmrank.types import Hit, Query, Ranking, StageScore

PATHS = ("text", "bm25", "image")
STAGE = "retrieve"


@dataclass
class HybridRetriever:
    """Searches every applicable path to ``depth`` and fuses them (``rrf`` or ``score``).

    When only one path applies, its own scores are kept. ``alpha`` weighs the modification text
    against the reference image in composed queries.
    """

    paths: Sequence[str] = PATHS
    fusion: str = "rrf"
    weights: Mapping[str, float] | None = None
    depth: int = 100
    rrf_k: int = 60
    alpha: float = 0.8
    name: str = field(default=STAGE, init=False)

    def __post_init__(self) -> None:
        unknown = set(self.paths) - set(PATHS)
        if unknown or not self.paths:
            raise InputError(f"Unknown retrieval paths {sorted(unknown)}; choose from {', '.join(PATHS)}.")
        if self.fusion not in FUSION_METHODS:
            raise InputError(f"Unknown fusion method '{self.fusion}'; choose one of {', '.join(FUSION_METHODS)}.")

    def retrieve(self, query: Query, collection: Collection, k: int | None = None) -> Ranking:
        """The fused top ``max(k, depth)`` items of the collection for ``query``."""
        start = time.perf_counter()
        depth = max(k or 0, self.depth)
        results = {path: self._search_path(path, query, collection, depth)
                   for path in self.active_paths(query, collection)}
        if not results:
            raise InputError(_nothing_to_search(query, collection))
        fused = next(iter(results.values())) if len(results) == 1 else fuse_results(
            results, self.fusion, self.weights, self.rrf_k)
        fused = fused[:depth]
        items = collection.get_many(item_id for item_id, _ in fused)
        per_path = {path: {item_id: (rank, score) for rank, (item_id, score) in enumerate(hits, start=1)}
                    for path, hits in results.items()}
        hits = []
        for rank, (item_id, score) in enumerate(fused, start=1):
            stages = {path: StageScore(score=found[item_id][1], rank=found[item_id][0])
                      for path, found in per_path.items() if item_id in found}
            stages[STAGE] = StageScore(score=score, rank=rank)
            hits.append(Hit(item=items[item_id], score=score, stages=stages,
                            found_by=tuple(p for p in per_path if item_id in per_path[p])))
        return Ranking(query=query, hits=tuple(hits), timings={STAGE: time.perf_counter() - start})

    def active_paths(self, query: Query, collection: Collection) -> list[str]:
        """The configured paths this query and collection allow, in configured order."""
        spaces = collection.spaces
        text = query.search_text
        usable = {
            "text": "text" in spaces and text is not None,
            "bm25": text is not None and collection.has_text,
            "image": "image" in spaces,
        }
        return [path for path in self.paths if usable[path]]

    def _search_path(self, path: str, query: Query, collection: Collection, depth: int) -> list[tuple[str, float]]:
        if path == "bm25":
            return collection.search_text([query.search_text], depth)[0]
        if path == "text":
            encoder = collection.encoder("text")
            vector = encoder.encode_texts([query.search_text])
        else:
            encoder = collection.encoder("image")
            vector = self._image_query_vector(query, encoder)
        return collection.search(path, vector, depth, encoder=encoder.name)[0]

    def _image_query_vector(self, query: Query, encoder) -> np.ndarray:
        text = query.search_text
        if query.image is None:
            return encoder.encode_texts([text])
        image_vector = encoder.encode_images([query.image])
        if text is None:
            return image_vector
        return compose_query_vector(image_vector, encoder.encode_texts([text]), self.alpha)


def _nothing_to_search(query: Query, collection: Collection) -> str:
    if query.image is not None and "image" not in collection.spaces:
        return (f"{collection.path}: this collection has no image vectors, so an image query cannot "
                "be answered; build it with an image model (mmrank index --image-model ...).")
    return f"{collection.path}: nothing in this collection can answer the query (no matching vectors or text)."
