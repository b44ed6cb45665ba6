"""Classic vector-only baselines to compare SuperGlobal with: alpha-QE and alpha-DBA.

Both work on a first stage's candidates only (no second search over the whole database), so they
cost what SuperGlobal costs and compose with any first stage:

- **alpha-QE** (Radenovic et al.): the query becomes ``normalise(q + sum_i max(q.x_i, 0)^alpha x_i)``
  over its top ``n`` candidates; every candidate is scored again against it.
- **alpha-DBA**: every candidate becomes ``normalise(sum_j max(x.x_j, 0)^alpha x_j)`` over its
  ``n`` nearest candidates (itself included, weight 1); the query is scored against them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from mmrank.errors import InputError
from mmrank.rerankers.vectors import (
    VectorReranker,
    as_tensors,
    check_vector_inputs,
    gather_candidates,
    restore_kind,
    weighted_neighbour_sum,
)


def alpha_query_expansion(query_vectors: Any, database_vectors: Any, ranks: Any, n: int = 2,
                          alpha: float = 3.0) -> Any:
    """Rerank ``ranks`` (Q, R) by alpha-QE over the top ``n`` candidates; same array kinds as
    :func:`mmrank.rerankers.superglobal.superglobal_rerank`."""
    _check(n, alpha)
    indices, _ = _rescore(*as_tensors(query_vectors, database_vectors, ranks), _expand_queries, n, alpha)
    return restore_kind(indices, ranks)


def alpha_database_augmentation(query_vectors: Any, database_vectors: Any, ranks: Any, n: int = 2,
                                alpha: float = 3.0) -> Any:
    """Rerank ``ranks`` (Q, R) by alpha-DBA among each query's candidates; same array kinds as
    :func:`mmrank.rerankers.superglobal.superglobal_rerank`."""
    _check(n, alpha)
    indices, _ = _rescore(*as_tensors(query_vectors, database_vectors, ranks), _augment_database, n, alpha)
    return restore_kind(indices, ranks)


def _check(n: int, alpha: float) -> None:
    if n < 1 or not alpha >= 0.0:
        raise InputError(f"n must be at least 1 and alpha at least 0; got n={n}, alpha={alpha}.")


def _rescore(queries, database, ranks, transform, n: int, alpha: float):
    """Score every candidate with ``transform(queries, candidates) -> (queries', candidates')``
    and sort; returns reranked ranks and sorted scores."""
    check_vector_inputs(queries, database, ranks)
    vectors = gather_candidates(database, ranks)
    new_queries, new_vectors = transform(queries, vectors, min(n, ranks.shape[1]), alpha)
    scores = torch.einsum("bd,bmd->bm", new_queries, new_vectors)
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return torch.gather(ranks, 1, order), sorted_scores


def _weights(similarity, alpha: float):
    return similarity.clamp(min=0) ** alpha


def _normalise(vectors):
    return torch.nn.functional.normalize(vectors, dim=-1)


def _expand_queries(queries, vectors, n: int, alpha: float):
    top = vectors[:, :n]                                                      # first-stage order
    weights = _weights(torch.einsum("bd,bnd->bn", queries, top), alpha)
    expanded = queries + torch.einsum("bn,bnd->bd", weights, top)
    return _normalise(expanded), vectors


def _augment_database(queries, vectors, n: int, alpha: float):
    values, neighbours = torch.bmm(vectors, vectors.transpose(1, 2)).topk(n, dim=2)
    weights = _weights(values, alpha)
    weights[:, :, 0] = 1.0
    return queries, _normalise(weighted_neighbour_sum(vectors, neighbours, weights))


@dataclasses.dataclass(kw_only=True)
class _AlphaReranker(VectorReranker):
    """Rescoring the top ``depth`` hits from stored vectors with one of the transforms above
    (each subclass sets ``transform``)."""

    transform: ClassVar[Callable[..., tuple[torch.Tensor, torch.Tensor]]]

    depth: int = 100
    n: int = 2
    alpha: float = 3.0

    def __post_init__(self) -> None:
        _check(self.n, self.alpha)
        super().__post_init__()

    def rerank_tensors(self, queries, database, ranks):
        return _rescore(queries, database, ranks, self.transform, self.n, self.alpha)


@dataclasses.dataclass(kw_only=True)
class AlphaQueryExpansionReranker(_AlphaReranker):
    """alpha-QE over the top ``n`` hits, rescoring the top ``depth`` hits from stored vectors."""

    transform = staticmethod(_expand_queries)
    name: str = "alpha-qe"


@dataclasses.dataclass(kw_only=True)
class AlphaDatabaseAugmentationReranker(_AlphaReranker):
    """alpha-DBA among the top ``depth`` hits (each augmented by its ``n`` nearest, itself first)."""

    transform = staticmethod(_augment_database)
    name: str = "alpha-dba"
