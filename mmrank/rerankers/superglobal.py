"""SuperGlobal reranking: top-M descriptor refinement over a first stage's candidates.

From "Global Features are All You Need for Image Retrieval and Reranking" (Shao et al., ICCV 2023).
For each query, the top-M candidates' vectors are refined by their K nearest neighbours among
themselves (weight 1 for the vector itself, ``beta * similarity`` for each neighbour, no
re-normalisation); candidates are scored against the query (S1), the query is refined as the
element-wise max of the top K+1 refined candidates by S1, candidates are scored again (S2), and
the top M are sorted by ``(S1 + S2) / 2``. Positions after M keep their first-stage order.

:func:`superglobal_rerank` works on plain arrays after any vector search, vectorised over
queries (CUDA tensors stay on the GPU); :class:`SuperGlobalReranker` is the pipeline stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

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

SecondScore = Literal["refined", "original"]
# Queries refined together are capped so that one chunk's (queries x M x D) tensors stay near this
# many elements: on the CPU small enough to stay in cache (32 MiB in float32; measured best at
# about 8 queries of 400 x 2048), on a GPU large enough to fill it (1 GiB).
_CHUNK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}


def superglobal_rerank(query_vectors: Any, database_vectors: Any, ranks: Any, m: int = 400, k: int = 9,
                       beta: float = 0.15, *, second_score: SecondScore = "refined") -> Any:
    """Rerank first-stage results with SuperGlobal's refinement.

    ``query_vectors`` (Q, D) and ``database_vectors`` (N, D) are unit-norm; ``ranks`` (Q, R) holds
    integer indices into the database in first-stage order (R may be less than N). Returns the
    reranked (Q, R) indices, as the same kind of array as ``ranks`` (numpy, or a torch tensor on
    the same device). The top ``min(m, R)`` candidates are reranked; when fewer than K+1 exist,
    all of them serve as neighbours. ``second_score="original"`` scores S2 on the unrefined
    vectors (the paper's wording); the default follows the released reference code.
    """
    _check_parameters(m, k, beta, second_score)
    indices, _ = _superglobal(*as_tensors(query_vectors, database_vectors, ranks), m, k, beta, second_score)
    return restore_kind(indices, ranks)


def _check_parameters(m: int, k: int, beta: float, second_score: str) -> None:
    if m < 1 or k < 0 or not beta >= 0.0:
        raise InputError(f"SuperGlobal needs m >= 1, k >= 0 and beta >= 0; got m={m}, k={k}, beta={beta}.")
    if second_score not in ("refined", "original"):
        raise InputError(f"second_score must be 'refined' or 'original', got {second_score!r}.")


def _superglobal(queries, database, order, m: int, k: int, beta: float, second_score: SecondScore):
    """Reranked indices (Q, R) and the final scores of the reranked top min(m, R) (Q, top)."""
    check_vector_inputs(queries, database, order)
    top = min(m, order.shape[1])
    budget = _CHUNK_ELEMENTS.get(database.device.type, _CHUNK_ELEMENTS["cpu"])
    chunk = max(1, budget // (top * database.shape[1]))
    reranked = order.clone()
    scores = queries.new_empty((len(order), top))
    for start in range(0, len(order), chunk):
        rows = slice(start, start + chunk)
        reranked[rows, :top], scores[rows] = _refine(queries[rows], database, order[rows, :top], k, beta,
                                                     second_score)
    return reranked, scores


def _refine(queries, database, candidates, k: int, beta: float, second_score: SecondScore):
    """Reranked candidate indices (B, M) and their scores for a chunk of queries (B, D) and their
    candidates (B, M)."""
    vectors = gather_candidates(database, candidates)                 # (B, M, D)
    refined = refine_descriptors(vectors, k, beta)
    first = torch.einsum("bd,bmd->bm", queries, refined)              # S1
    by_first = torch.argsort(first, dim=1, descending=True, stable=True)
    expand = min(k + 1, candidates.shape[1])
    best = torch.gather(refined, 1, by_first[:, :expand, None].expand(-1, -1, refined.shape[2]))
    refined_query = best.amax(dim=1)                                  # (B, D)
    second_base = refined if second_score == "refined" else vectors
    second = torch.einsum("bd,bmd->bm", refined_query, second_base)   # S2
    final = (first + second) / 2
    # Sort in S1 order first so that ties fall back to it, as the reference does.
    final_in_first_order = torch.gather(final, 1, by_first)
    scores, order = torch.sort(final_in_first_order, dim=1, descending=True, stable=True)
    return torch.gather(candidates, 1, torch.gather(by_first, 1, order)), scores


def refine_descriptors(vectors, k: int, beta: float):
    """Each of the (B, M, D) vectors replaced by the weighted mean of itself (weight 1) and its
    ``k`` most similar vectors in the same set (weight ``beta * similarity``); not re-normalised."""
    similarity = torch.bmm(vectors, vectors.transpose(1, 2))          # (B, M, M)
    values, neighbours = similarity.topk(min(k + 1, vectors.shape[1]), dim=2)  # self first
    weights = values * beta
    weights[:, :, 0] = 1.0
    return weighted_neighbour_sum(vectors, neighbours, weights / weights.sum(dim=2, keepdim=True))


@dataclasses.dataclass(kw_only=True)
class SuperGlobalReranker(VectorReranker):
    """SuperGlobal refinement as a pipeline stage, on the collection's stored vectors of ``space``.

    The stage looks at the top ``m`` hits of the incoming ranking (its ``depth`` is ``m``).
    """

    name: str = "superglobal"
    depth: int = dataclasses.field(init=False)
    m: int = 400
    k: int = 9
    beta: float = 0.15
    second_score: SecondScore = "refined"

    def __post_init__(self) -> None:
        _check_parameters(self.m, self.k, self.beta, self.second_score)
        self.depth = self.m
        super().__post_init__()

    def rerank_tensors(self, queries, database, ranks):
        return _superglobal(queries, database, ranks, self.m, self.k, self.beta, self.second_score)
