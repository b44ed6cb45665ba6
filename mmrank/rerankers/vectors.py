"""What the vector-only rerankers (SuperGlobal, alpha-QE, alpha-DBA) share: input checks on plain
arrays, and the pipeline stage that feeds them a collection's stored vectors."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.errors import InputError
from mmrank.rerankers.base import BaseReranker, HeadPlace, reorder_head

if TYPE_CHECKING:
    import torch

    from mmrank.collection import Collection
    from mmrank.types import Query, Ranking


def as_tensors(queries: Any, database: Any, ranks: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Numpy arrays or torch tensors as torch tensors on one device (the database's, when it is a
    tensor) in one floating dtype (float32 at least on the CPU); ranks as int64."""
    import torch

    tensors = [torch.as_tensor(x) for x in (queries, database, ranks)]
    device = next((t.device for t in (tensors[1], tensors[0], tensors[2]) if t.device.type != "cpu"),
                  torch.device("cpu"))
    queries_t, database_t, ranks_t = (t.to(device) for t in tensors)
    for name, tensor in (("query_vectors", queries_t), ("database_vectors", database_t)):
        if not tensor.is_floating_point():
            raise InputError(f"{name} must hold floating-point numbers, got {tensor.dtype}.")
    if ranks_t.is_floating_point() or ranks_t.dtype == torch.bool:
        raise InputError(f"ranks must hold integer indices, got {ranks_t.dtype}.")
    dtype = torch.promote_types(queries_t.dtype, database_t.dtype)
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return queries_t.to(dtype), database_t.to(dtype), ranks_t.long()


def check_vector_inputs(queries: torch.Tensor, database: torch.Tensor, ranks: torch.Tensor) -> None:
    """Shapes agree, ranks index the database, query vectors are finite and non-zero."""
    if queries.ndim != 2 or database.ndim != 2 or ranks.ndim != 2:
        raise InputError(
            "Expected query_vectors (Q, D), database_vectors (N, D) and ranks (Q, R); got shapes "
            f"{tuple(queries.shape)}, {tuple(database.shape)} and {tuple(ranks.shape)}.")
    if queries.shape[1] != database.shape[1]:
        raise InputError(f"Query vectors have {queries.shape[1]} dimensions, database vectors "
                         f"{database.shape[1]}.")
    if ranks.shape[0] != queries.shape[0]:
        raise InputError(f"ranks has {ranks.shape[0]} rows for {queries.shape[0]} queries.")
    if ranks.shape[1] == 0:
        raise InputError("ranks is empty: every query needs at least one candidate.")
    low, high = (int(ranks.min()), int(ranks.max())) if ranks.numel() else (0, -1)
    if low < 0 or high >= database.shape[0]:
        bad = low if low < 0 else high
        raise InputError(f"ranks holds index {bad}, outside the database's {database.shape[0]} vectors.")
    finite = queries.isfinite().all(dim=1)
    if not bool(finite.all()):
        raise InputError(f"Query vector {int((~finite).nonzero()[0])} holds NaN or infinity.")
    zero = (queries == 0).all(dim=1)
    if bool(zero.any()):
        raise InputError(f"Query vector {int(zero.nonzero()[0])} is all zeros: it cannot rank anything.")


def gather_candidates(database: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The (B, M, D) vectors of (B, M) candidate indices; non-finite vectors are an error."""
    vectors = database[candidates]
    if bool(vectors.sum(dim=2).isfinite().all()):  # a NaN or infinity spoils its row's sum; 20x cheaper
        return vectors
    finite = vectors.isfinite().all(dim=2)
    if not bool(finite.all()):
        query, position = (int(i) for i in (~finite).nonzero()[0])
        raise InputError(f"Database vector {int(candidates[query, position])} (candidate {position} of "
                         f"query {query}) holds NaN or infinity.")
    return vectors


def weighted_neighbour_sum(vectors: torch.Tensor, neighbours: torch.Tensor, weights: torch.Tensor, *,
                           sparse: bool | None = None) -> torch.Tensor:
    """For (B, M, D) vectors, (B, M, J) neighbour indices into the same M and (B, M, J) weights:
    each vector's weighted sum of its neighbours, (B, M, D).

    The weights form a (B*M, B*M) block-diagonal matrix applied in one product: sparse (CSR) on
    the CPU, where it is about twice as fast as a dense (B, M, M) batched matmul, and dense on
    GPUs (``sparse=None`` picks by device). Either beats J gathers of (B, M, D) several times over.
    """
    import warnings

    import torch

    batch, count, dim = vectors.shape
    if sparse is None:
        sparse = vectors.device.type == "cpu"
    if not sparse:
        dense = torch.zeros((batch, count, count), dtype=vectors.dtype, device=vectors.device)
        return torch.bmm(dense.scatter_(2, neighbours, weights.to(vectors.dtype)), vectors)
    columns = neighbours + torch.arange(batch, device=vectors.device)[:, None, None] * count
    rows = torch.arange(batch * count + 1, device=vectors.device) * neighbours.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        matrix = torch.sparse_csr_tensor(rows, columns.flatten(), weights.flatten().to(vectors.dtype),
                                         size=(batch * count, batch * count), check_invariants=False)
        return (matrix @ vectors.reshape(batch * count, dim)).view(batch, count, dim)


def restore_kind(result: torch.Tensor, like: Any) -> Any:
    """``result`` as the same kind of array as ``like``: numpy (same dtype) or a tensor on its device."""
    import torch

    if isinstance(like, torch.Tensor):
        return result.to(device=like.device, dtype=like.dtype)
    return result.cpu().numpy().astype(np.asarray(like).dtype, copy=False)


@dataclasses.dataclass(kw_only=True)
class VectorReranker(BaseReranker):
    """A pipeline stage that reranks the top ``depth`` hits from stored vectors alone.

    Subclasses implement :meth:`rerank_tensors` (queries (Q, D), database (N, D), ranks (Q, R)
    -> reranked ranks and the scores of the reranked head). The query vector is the one the first
    stage searched ``space`` with, or the query encoded by the space's encoder when the first stage
    did not search that space. Hits without a vector in ``space`` keep their relative order after
    the reranked ones, with a note. ``device``: where the tensors go (``auto``: a GPU if present).
    """

    space: str = "image"
    device: str = "auto"

    @abstractmethod
    def rerank_tensors(self, queries: torch.Tensor, database: torch.Tensor,
                       ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reranked (Q, R) ranks and the (Q, H) scores of their first H positions."""

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Rerank many rankings; those with equally many candidates go through one call."""
        import torch

        from mmrank.encoders.base import resolve_device

        device = torch.device(resolve_device(self.device))
        heads = [collection.stored_vectors(ranking.ids[:self.depth], self.space) for ranking in rankings]
        query_vectors = [self._query_vector(query, ranking, collection) for query, ranking in zip(queries, rankings)]
        orders: list[list[tuple[int, float | None]]] = [[] for _ in rankings]
        by_size: dict[int, list[int]] = {}
        for row, (ids, _) in enumerate(heads):
            if ids:
                by_size.setdefault(len(ids), []).append(row)
        for size, rows in by_size.items():
            database = torch.from_numpy(np.concatenate([heads[row][1] for row in rows])).to(device)
            ranks = torch.arange(len(rows) * size, device=device).reshape(len(rows), size)
            stacked = torch.from_numpy(np.stack([query_vectors[row] for row in rows])).to(device)
            reranked, scores = self.rerank_tensors(stacked, database, ranks)
            reranked = (reranked - ranks[:, :1]).cpu().numpy()
            scores = scores.float().cpu().numpy()
            for position, row in enumerate(rows):
                head_scores = [float(score) for score in scores[position]] + [None] * (size - scores.shape[1])
                orders[row] = list(zip(reranked[position].tolist(), head_scores))
        return [self._apply(ranking, ids, order) for ranking, (ids, _), order in zip(rankings, heads, orders)]

    def _apply(self, ranking: Ranking, ids: list[str], order: list[tuple[int, float | None]]) -> Ranking:
        position = {hit.item_id: index for index, hit in enumerate(ranking.hits[:self.depth])}
        head = [HeadPlace(position[ids[index]], score) for index, score in order]
        note = f"no {self.space} vector; kept its place after the reranked hits"
        return ranking.with_stage(self.name, reorder_head(ranking, head, self.depth, unplaced_note=note))

    def _query_vector(self, query: Query, ranking: Ranking, collection: Collection) -> np.ndarray:
        searched = ranking.query_vectors.get(self.space)
        if searched is not None:
            return np.asarray(searched, dtype=np.float32)
        encoder = collection.encoder(self.space)
        if query.image is not None:
            return encoder.encode_images([query.image])[0]
        return encoder.encode_texts([query.search_text])[0]
