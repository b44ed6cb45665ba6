"""The first stage: dense search in each of the collection's vector spaces, plus BM25, fused.

Paths:
- ``text``: the query text through the collection's text encoder, over item texts' vectors;
- ``bm25``: the query text through BM25 over item texts;
- ``image``: the query image (or the query text, through the image model's text tower) over the
  image vectors of images and page renders. A reference image plus a modification text is fused
  into one composed query vector;
- ``patches``: the query text through a late-interaction page model (ColPali, ColQwen) into token
  vectors, over the pages' patch vectors, scored by MaxSim (:mod:`mmrank.patch_index`: candidate
  pages from patch centroids, then exact MaxSim over the best of them).

Each hit records every path's score and rank and names the paths that found it, so an item
without text that only its image embedding found says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrank.collection import Collection
from mmrank.config import dataclass_options
from mmrank.encoders import encodes_text
from mmrank.errors import InputError
from mmrank.rerankers.base import at_least_one
from mmrank.columns import ItemTable, RowHits, from_hits, positions, without_rows
from mmrank.fusion import FUSION_METHODS, compose_query_vector, fuse_rows
from mmrank.types import Hit, Item, Query, Ranking, StageScore

PATHS = ("text", "bm25", "image", "patches")
STAGE = "retrieve"


@dataclass
class HybridRetriever:
    """Searches every applicable path to ``depth`` and fuses them (``rrf`` or ``score``).

    When only one path applies, its own scores are kept. ``alpha`` weighs the modification text
    against the reference image in composed queries. ``nprobe`` / ``ef_search`` set how widely an
    IVF / HNSW index is searched (None: the breadth saved with the index; exact indexes ignore them);
    on the ``patches`` path ``nprobe`` is the centroids probed per query token.

    The ``patches`` path scores exactly, by MaxSim, the ``maxsim_depth`` pages (at least ``depth``;
    None: 200) that its candidate generation ranks best, or, with ``exhaustive``, every page (for
    checking the candidates: slower, same scores).
    """

    paths: Sequence[str] = PATHS
    fusion: str = "rrf"
    weights: Mapping[str, float] | None = None
    depth: int = 100
    rrf_k: int = 60
    alpha: float = 0.8
    nprobe: int | None = None
    ef_search: int | None = None
    maxsim_depth: int | None = None
    exhaustive: bool = False
    name: str = field(default=STAGE, init=False)

    def __post_init__(self) -> None:
        unknown = set(self.paths) - set(PATHS)
        if unknown or not self.paths:
            raise InputError(f"Unknown retrieval paths {sorted(unknown)}; choose from {', '.join(PATHS)}.")
        if self.fusion not in FUSION_METHODS:
            raise InputError(f"Unknown fusion method '{self.fusion}'; choose one of {', '.join(FUSION_METHODS)}.")
        for option in ("nprobe", "ef_search", "maxsim_depth"):
            at_least_one(option, getattr(self, option))
        if not isinstance(self.exhaustive, bool):
            raise InputError(f"exhaustive is true or false; got {self.exhaustive!r}.")

    def to_config(self) -> dict[str, Any]:
        """The options that build this retriever again."""
        return dataclass_options(self)

    def retrieve(self, query: Query, collection: Collection, k: int | None = None) -> Ranking:
        """The fused top ``max(k, depth)`` items of the collection for ``query``."""
        return self.retrieve_batch([query], collection, k)[0]

    def retrieve_batch(self, queries: Sequence[Query], collection: Collection, k: int | None = None) -> list[Ranking]:
        """Like :meth:`retrieve` for many queries at once: each path encodes and searches the whole
        batch in one call. Each ranking's ``retrieve`` time is its share of the batch's time."""
        retrieved = self.retrieve_rows(queries, collection, k)
        items = collection.get_many({item_id for found in retrieved for item_id in found.ids()})
        return [found.ranking(items) for found in retrieved]

    def retrieve_rows(self, queries: Sequence[Query], collection: Collection, k: int | None = None) -> list[Retrieved]:
        """:meth:`retrieve_batch` as arrays (rows of the collection's item table), with no Hit
        built: what evaluation ranks deep with."""
        start = time.perf_counter()
        depth = max(k or 0, self.depth)
        table = collection.item_table()
        usable = self._usable(collection)
        active = [[path for path in self.paths if usable(query, path)] for query in queries]
        results: list[dict[str, RowHits]] = [{} for _ in queries]
        vectors: list[dict[str, np.ndarray]] = [{} for _ in queries]
        for path in self.paths:
            chosen = [i for i, paths in enumerate(active) if path in paths]
            if chosen:
                found, searched = self._search_path(path, [queries[i] for i in chosen], collection, depth)
                for row, (i, hits) in enumerate(zip(chosen, found)):
                    results[i][path] = hits
                    if searched is not None:
                        vectors[i][path] = searched[row]
        for query, paths in zip(queries, results):
            if not paths:
                raise InputError(_nothing_to_search(query, collection))
        seconds = (time.perf_counter() - start) / max(1, len(queries))
        retrieved = []
        for query, paths, searched in zip(queries, results, vectors):
            rows, scores = self._fuse(paths)
            retrieved.append(Retrieved(query, table, rows[:depth], scores[:depth], paths, searched, seconds))
        return retrieved

    def active_paths(self, query: Query, collection: Collection) -> list[str]:
        """The configured paths this query and collection allow, in configured order."""
        usable = self._usable(collection)
        return [path for path in self.paths if usable(query, path)]

    @staticmethod
    def _usable(collection: Collection) -> Callable[[Query, str], bool]:
        """Whether a path can answer a query, with what the collection offers read once."""
        spaces, has_text = collection.spaces, collection.has_text
        image_text = "image" in spaces and encodes_text(spaces["image"].encoder)

        def usable(query: Query, path: str) -> bool:
            if path == "text":
                return "text" in spaces and query.search_text is not None
            if path == "bm25":
                return has_text and query.search_text is not None
            if path == "patches":
                return "patches" in spaces and query.search_text is not None
            return "image" in spaces and (query.image is not None or image_text)
        return usable

    def _fuse(self, results: Mapping[str, RowHits]) -> RowHits:
        if len(results) == 1:
            return next(iter(results.values()))
        return fuse_rows(results, self.fusion, self.weights, self.rrf_k)

    def _search_path(self, path: str, queries: Sequence[Query], collection: Collection,
                     depth: int) -> tuple[list[RowHits], Sequence[np.ndarray] | None]:
        """Each query's hits on one path, and the query vectors it searched with (None for BM25;
        a (tokens, dim) array per query on the patches path)."""
        texts = [query.search_text for query in queries]
        among = [query.candidates for query in queries]
        wider = depth + max(len(query.excluded) for query in queries)
        table = collection.item_table()
        if path == "bm25":
            found = [from_hits(table, hits) for hits in collection.search_bm25(texts, wider, among=among)]
            return without_excluded_rows(queries, found, table, depth), None
        if path == "patches":
            encoder = collection.encoder("patches")
            tokens = encoder.encode_queries(texts)
            found = collection.search_patch_rows(path, tokens, wider, encoder=encoder.name, among=among,
                                                 nprobe=self.nprobe, exhaustive=self.exhaustive,
                                                 maxsim_depth=self.maxsim_depth)
            return without_excluded_rows(queries, found, table, depth), tokens
        if path == "text":
            encoder = collection.encoder("text")
            vectors = encoder.encode_texts(texts)
        else:
            encoder = collection.encoder("image")
            vectors = self._image_query_vectors(queries, encoder)
        found = collection.search_vector_rows(path, vectors, wider, encoder=encoder.name, among=among,
                                              nprobe=self.nprobe, ef_search=self.ef_search)
        return without_excluded_rows(queries, found, table, depth), vectors

    def _image_query_vectors(self, queries: Sequence[Query], encoder) -> np.ndarray:
        """Rows for the image space: the query image, the query text through the image model's
        text tower, or both fused into a composed query."""
        with_image = [i for i, q in enumerate(queries) if q.image is not None]
        with_text = [i for i, q in enumerate(queries)
                     if q.search_text is not None and encodes_text(encoder.name)]
        image_vectors = dict(zip(with_image, encoder.encode_images([queries[i].image for i in with_image])
                                 if with_image else ()))
        text_vectors = dict(zip(with_text, encoder.encode_texts([queries[i].search_text for i in with_text])
                                if with_text else ()))
        rows = []
        for i in range(len(queries)):
            if i in image_vectors and i in text_vectors:
                rows.append(compose_query_vector(image_vectors[i], text_vectors[i], self.alpha))
            else:
                rows.append(image_vectors[i] if i in image_vectors else text_vectors[i])
        return np.stack(rows)


def without_excluded(queries: Sequence[Query], found: Sequence[list[tuple[str, float]]],
                     depth: int) -> list[list[tuple[str, float]]]:
    """Each query's hits less its ``excluded`` ids, cut to ``depth``."""
    return [[hit for hit in hits if hit[0] not in query.excluded][:depth] if query.excluded else hits[:depth]
            for query, hits in zip(queries, found)]


def without_excluded_rows(queries: Sequence[Query], found: Sequence[RowHits], table: ItemTable,
                          depth: int) -> list[RowHits]:
    """:func:`without_excluded` for hits held as arrays."""
    return [without_rows(hits, table.rows(query.excluded), depth) for query, hits in zip(queries, found)]


@dataclass(frozen=True)
class Retrieved:
    """One query's first stage as arrays: the fused order (``rows`` of ``table``, best first, and
    ``scores``), each path's own hits, the query vectors searched with, and the query's share of
    the batch's time. :meth:`ranking` turns its head into Hits."""

    query: Query
    table: ItemTable
    rows: np.ndarray
    scores: np.ndarray
    paths: Mapping[str, RowHits]
    vectors: Mapping[str, np.ndarray]
    seconds: float

    def ids(self, head: int | None = None) -> list[str]:
        """The item ids of the first ``head`` rows (all when None)."""
        return self.table.id_list(self.rows[:head])

    def ranking(self, items: Mapping[str, Item], head: int | None = None) -> Ranking:
        """The first ``head`` items (all when None) as a Ranking of Hits in fused order, each with
        every path's score and rank and the paths that found it; ``items`` holds their Items."""
        if head == 0:
            return Ranking(query=self.query, hits=(), timings={STAGE: self.seconds}, query_vectors=dict(self.vectors))
        rows, scores = self.rows[:head], self.scores[:head]
        per_path = {}
        for path, (path_rows, path_scores) in self.paths.items():
            # One path: the fused order is its own, so no lookup over a (possibly full-depth) order.
            at = np.arange(len(rows)) if len(self.paths) == 1 else positions(path_rows, rows, len(self.table))
            per_path[path] = (at, path_scores)
        hits = []
        for n, (item_id, score) in enumerate(zip(self.table.id_list(rows), scores.astype(float).tolist())):
            stages = {path: StageScore(score=float(path_scores[at[n]]), rank=int(at[n]) + 1)
                      for path, (at, path_scores) in per_path.items() if at[n] >= 0}
            stages[STAGE] = StageScore(score=score, rank=n + 1)
            hits.append(Hit(item=items[item_id], score=score, stages=stages,
                            found_by=tuple(path for path, (at, _) in per_path.items() if at[n] >= 0)))
        return Ranking(query=self.query, hits=tuple(hits), timings={STAGE: self.seconds},
                       query_vectors=dict(self.vectors))


def _nothing_to_search(query: Query, collection: Collection) -> str:
    if query.image is not None and "image" not in collection.spaces:
        return (f"{collection.path}: this collection has no image vectors, so an image query cannot "
                "be answered; build it with an image model (mmrank index --image-model ...).")
    return f"{collection.path}: nothing in this collection can answer the query (no matching vectors or text)."
