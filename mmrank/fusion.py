"""Fusing result lists (reciprocal-rank or score fusion) and fusing query vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmrank.columns import ItemTable, RowHits, as_hits, from_hits
from mmrank.encoders.base import l2_normalize
from mmrank.errors import InputError

ResultList = Sequence[tuple[str, float]]
FUSION_METHODS = ("rrf", "score")


def reciprocal_rank_fusion(
    results: Mapping[str, ResultList], weights: Mapping[str, float] | None = None, k: int = 60
) -> list[tuple[str, float]]:
    """RRF (Cormack et al., 2009): ``score(d) = sum_p w_p / (k + rank_p(d))`` with 1-based ranks.
    Ties keep the order in which items were first seen, path by path."""
    return fuse_results(results, "rrf", weights, k)


def score_fusion(
    results: Mapping[str, ResultList], weights: Mapping[str, float] | None = None
) -> list[tuple[str, float]]:
    """Weighted sum of min-max normalised scores per path (an item a path did not return adds 0),
    so BM25's unbounded scores and cosine similarities can be mixed."""
    return fuse_results(results, "score", weights)


def fuse_results(
    results: Mapping[str, ResultList], method: str = "rrf", weights: Mapping[str, float] | None = None,
    rrf_k: int = 60,
) -> list[tuple[str, float]]:
    """Fuse several best-first result lists into one with the named method ("rrf" or "score"):
    :func:`fuse_rows` on ``(item id, score)`` lists."""
    table = ItemTable(dict.fromkeys(item_id for hits in results.values() for item_id, _ in hits))
    fused = fuse_rows({path: from_hits(table, hits) for path, hits in results.items()}, method, weights, rrf_k)
    return as_hits(table, fused)


def fuse_rows(results: Mapping[str, RowHits], method: str = "rrf", weights: Mapping[str, float] | None = None,
              rrf_k: int = 60) -> RowHits:
    """Fuse several best-first hit arrays (rows and scores) into one, best first (float64 scores).

    ``rrf``: ``sum_p w_p / (k + rank_p)`` (:func:`reciprocal_rank_fusion`); ``score``: the weighted
    sum of each path's min-max normalised scores (:func:`score_fusion`). An item a path did not
    return adds 0 there; ties keep the order in which items were first seen, path by path."""
    if method not in FUSION_METHODS:
        raise InputError(f"Unknown fusion method '{method}'; choose one of {', '.join(FUSION_METHODS)}.")
    paths = [(path, np.asarray(rows), np.asarray(scores, dtype=np.float64))
             for path, (rows, scores) in results.items() if len(rows)]
    if not paths:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64)
    unique, first = np.unique(np.concatenate([rows for _, rows, _ in paths]), return_index=True)
    seen = unique[np.argsort(first, kind="stable")]  # every item once, in first-seen order
    slot = np.empty(len(unique), dtype=np.int64)
    slot[np.argsort(first, kind="stable")] = np.arange(len(unique))  # unique index -> place in `seen`
    fused = np.zeros(len(seen), dtype=np.float64)
    for path, rows, scores in paths:
        weight = 1.0 if weights is None else weights.get(path, 1.0)
        if method == "rrf":
            values = weight / (rrf_k + np.arange(1, len(rows) + 1, dtype=np.float64))
        else:
            span = scores.max() - scores.min()
            values = weight * (np.ones_like(scores) if span == 0 else (scores - scores.min()) / span)
        fused[slot[np.searchsorted(unique, rows)]] += values
    order = np.argsort(-fused, kind="stable")
    return seen[order], fused[order]


def compose_query_vector(image_vector: np.ndarray, text_vector: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Composed query: ``normalise((1 - alpha) * image + alpha * text)`` on unit-norm inputs."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}.")
    return l2_normalize((1.0 - alpha) * l2_normalize(image_vector) + alpha * l2_normalize(text_vector))


CAPTION_FUSION_LEVELS = ("embedding", "score")


def fuse_caption_vector(query_vector: np.ndarray, caption_vector: np.ndarray, beta: float = 0.5,
                        level: str = "embedding") -> np.ndarray:
    """SQUARE's caption fusion of a composed query vector with its target caption's text vector
    (both unit-norm, shape (D,) or (N, D)).

    ``embedding``: ``normalise((1 - beta) * query + beta * caption)``. ``score``: the un-normalised
    sum, whose inner product with a unit-norm gallery vector g is exactly
    ``(1 - beta) cos(query, g) + beta cos(caption, g)``. The two rank a gallery identically (they
    differ by a positive factor per query); only the scores differ.
    """
    check_caption_fusion(beta, level)
    fused = (1.0 - beta) * l2_normalize(query_vector) + beta * l2_normalize(caption_vector)
    return l2_normalize(fused) if level == "embedding" else fused.astype(np.float32)


def check_caption_fusion(beta: float, level: str) -> None:
    """InputError unless ``beta`` lies in [0, 1] and ``level`` is a known caption fusion level."""
    if not 0.0 <= beta <= 1.0:
        raise InputError(f"beta must lie in [0, 1], got {beta}.")
    if level not in CAPTION_FUSION_LEVELS:
        raise InputError(f"Unknown caption fusion level {level!r}; choose one of {', '.join(CAPTION_FUSION_LEVELS)}.")
