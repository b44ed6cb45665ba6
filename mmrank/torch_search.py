"""Exact inner-product search in torch: for CUDA machines without a FAISS GPU build (and on the CPU,
which tests use). Vectors live in one tensor per device; queries go in batches, the database in
chunks, and a running top-k is merged across chunks, so memory stays bounded whatever the
collection's size. With several devices the rows are split among them: each device finds the top k
of its rows, and the host merges those lists into the exact global top k.

Equal scores are ranked later-added first, on one device or several alike, also when a group of
equal scores is cut by the k-th place (FAISS's exact index orders a tie group that fits in k the
same way). So the ranking does not depend on how rows are spread over devices or chunks: one device
and several give identical labels and scores whenever the scores themselves are identical, which
they are up to the last bit of float rounding (a matrix product may round differently for
differently shaped chunks, which can swap two scores that differ in their last bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mmrank.errors import InputError
from mmrank.faiss_shards import balanced_counts

DTYPES = ("float16", "bfloat16", "float32")
_TIE_GROUP = 64  # queries whose k-th place is a cut tie group are settled this many at a time


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _ordered(scores: Any, rows: Any) -> tuple[Any, Any]:
    """Each line's (scores, rows) sorted by score, equal scores by row, both descending."""
    rows, by_row = rows.sort(dim=1, descending=True, stable=True)
    scores, by_score = scores.gather(1, by_row).sort(dim=1, descending=True, stable=True)
    return scores, rows.gather(1, by_score)


def _settle_cut_ties(scores: Any, kth: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` best rows of each line of ``scores`` whose k-th best value ``kth`` is shared by
    rows beyond the k-th place: every row above ``kth``, then the last rows equal to it."""
    greater = scores > kth[:, None]
    equal = scores == kth[:, None]
    need = k - greater.sum(1, keepdim=True)
    from_end = equal.flip(1).cumsum(1).flip(1)  # rows equal to kth at or after each position
    rows = (greater | (equal & (from_end <= need))).nonzero()[:, 1].view(len(scores), k)
    return scores.gather(1, rows), rows


def chunk_top_k(scores: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` best (scores, rows) of each line of a score matrix, ranked by score and equal
    scores by row, both descending; a tie group cut by the k-th place keeps its last rows."""
    import torch

    if k >= scores.shape[1]:
        return _ordered(scores, torch.arange(scores.shape[1], device=scores.device).expand_as(scores))
    top, rows = scores.topk(k + 1, dim=1)
    cut = (top[:, k] == top[:, k - 1]).nonzero()[:, 0]
    top, rows = top[:, :k].clone(), rows[:, :k].clone()
    for start in range(0, len(cut), _TIE_GROUP):
        lines = cut[start : start + _TIE_GROUP]
        top[lines], rows[lines] = _settle_cut_ties(scores[lines], top[lines, k - 1], k)
    return _ordered(top, rows)


def _threaded(devices: list[Any]) -> bool:
    """Whether shards on ``devices`` are searched in parallel threads: when they span several GPUs
    (shards sharing the CPU or one GPU would only compete for it)."""
    return len({device for device in devices if device.type != "cpu"}) > 1


class _Shard:
    """The rows one device holds: their vectors (a tensor that grows by doubling), labels and
    sequence numbers (the order the rows were added in, kept through removals)."""

    def __init__(self, dim: int, device: Any, dtype: Any) -> None:
        import torch

        self._torch = torch
        self.device, self.dtype, self.n = device, dtype, 0
        self.vectors = torch.empty((0, dim), dtype=dtype, device=device)
        self.labels = np.empty(0, dtype=np.int64)
        self.seq = np.empty(0, dtype=np.int64)

    def add(self, vectors: np.ndarray, labels: np.ndarray, seq: np.ndarray) -> None:
        end = self.n + len(vectors)
        self._reserve(end)
        self.vectors[self.n : end] = self._torch.tensor(vectors, dtype=self.dtype, device=self.device)
        self.labels[self.n : end] = labels
        self.seq[self.n : end] = seq
        self.n = end

    def _reserve(self, size: int) -> None:
        capacity = len(self.labels)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity)
        vectors = self._torch.empty((capacity, self.vectors.shape[1]), dtype=self.dtype, device=self.device)
        vectors[: self.n] = self.vectors[: self.n]
        labels, seq = np.empty(capacity, dtype=np.int64), np.empty(capacity, dtype=np.int64)
        labels[: self.n], seq[: self.n] = self.labels[: self.n], self.seq[: self.n]
        self.vectors, self.labels, self.seq = vectors, labels, seq

    def remove(self, labels: np.ndarray) -> int:
        keep = np.flatnonzero(~np.isin(self.labels[: self.n], labels))
        removed = self.n - len(keep)
        if removed:
            rows = self._torch.from_numpy(keep).to(self.device)
            self.vectors[: len(keep)] = self.vectors[rows]
            self.labels[: len(keep)] = self.labels[keep]
            self.seq[: len(keep)] = self.seq[keep]
            self.n = len(keep)
        return removed

    def top_k(self, queries: np.ndarray, k: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32, rows) of this shard's ``min(k, n)`` best rows per query, ranked by
        score, equal scores later row first."""
        torch = self._torch
        with torch.inference_mode():
            batch = torch.tensor(queries, dtype=self.dtype, device=self.device)
            best_scores = best_rows = None
            for start in range(0, self.n, chunk_size):
                chunk = self.vectors[start : min(start + chunk_size, self.n)]
                scores, rows = chunk_top_k(batch @ chunk.T, min(k, len(chunk)))
                rows += start
                if best_scores is not None:
                    scores, rows = _ordered(torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows], 1))
                    scores, rows = scores[:, :k], rows[:, :k]
                best_scores, best_rows = scores, rows
            return best_scores.float().cpu().numpy(), best_rows.cpu().numpy()


class TorchExactSearch:
    """Vectors with int64 labels, searched exactly by matmul + top-k on ``device``, or split over
    ``devices`` (a list such as ``["cuda:0", "cuda:1"]``; new rows go to the emptiest device, and
    each GPU searches its rows in its own thread before the host merges their top-k lists).

    ``dtype`` is float16, bfloat16 or float32 (None: float32 on the CPU, float16 on CUDA);
    ``chunk_size`` database rows go into one matmul and ``query_batch_size`` queries into one
    batch. It offers what :class:`~mmrank.faiss_tools.FaissStore` offers, so an index can hold
    either.
    """

    removable = True
    is_trained = True

    def __init__(self, dim: int, device: str = "cpu", dtype: str | None = None, chunk_size: int = 65536,
                 query_batch_size: int = 1024, devices: Sequence[str] | None = None) -> None:
        import torch

        names = [device] if devices is None else devices
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise InputError(f"devices must be a non-empty list such as ['cuda:0', 'cuda:1']; got {devices!r}.")
        try:
            self.devices = [torch.device(name) for name in names]
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"devices must be torch device names such as 'cuda:0'; got {list(names)!r}.") from exc
        if dtype is None:
            dtype = "float32" if all(d.type == "cpu" for d in self.devices) else "float16"
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
        self._torch = torch
        self.device = self.devices[0]
        self.dtype = getattr(torch, dtype)
        self.chunk_size = _positive(chunk_size, "chunk_size")
        self.query_batch_size = _positive(query_batch_size, "query_batch_size")
        self.ntotal = 0
        self._added = 0  # sequence numbers handed out so far
        self._dim = dim
        self._shards = [_Shard(dim, d, self.dtype) for d in self.devices]

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        seq = np.arange(self._added, self._added + len(vectors), dtype=np.int64)
        start = 0
        for shard, count in zip(self._shards, balanced_counts([s.n for s in self._shards], len(vectors))):
            if count:
                shard.add(vectors[start : start + count], labels[start : start + count], seq[start : start + count])
            start += count
        self._added += len(vectors)
        self.ntotal += len(vectors)

    def remove(self, labels: np.ndarray) -> int:
        removed = sum(shard.remove(labels) for shard in self._shards)
        self.ntotal -= removed
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``min(k, ntotal)`` rows for each query: (scores float32, labels int64), ranked by
        score, equal scores later-added first."""
        k = min(k, self.ntotal)
        scores = np.empty((len(queries), k), dtype=np.float32)
        labels = np.empty((len(queries), k), dtype=np.int64)
        shards = [shard for shard in self._shards if shard.n]
        if k == 0:
            return scores, labels
        pool = ThreadPoolExecutor(len(shards)) if _threaded([shard.device for shard in shards]) else None
        try:
            for start in range(0, len(queries), self.query_batch_size):
                stop = start + self.query_batch_size
                batch = queries[start:stop]
                if len(shards) == 1:
                    top_scores, rows = shards[0].top_k(batch, k, self.chunk_size)
                    scores[start:stop], labels[start:stop] = top_scores, shards[0].labels[rows]
                    continue
                search = lambda shard: shard.top_k(batch, k, self.chunk_size)  # noqa: E731
                found = list(pool.map(search, shards) if pool else map(search, shards))
                scores[start:stop], labels[start:stop] = self._merge(shards, found, k)
        finally:
            if pool is not None:
                pool.shutdown()
        return scores, labels

    @staticmethod
    def _merge(shards: list[_Shard], found: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of the shards' lists: by score, equal scores by sequence number, descending."""
        scores = np.concatenate([s for s, _ in found], axis=1)
        seq = np.concatenate([shard.seq[rows] for shard, (_, rows) in zip(shards, found)], axis=1)
        labels = np.concatenate([shard.labels[rows] for shard, (_, rows) in zip(shards, found)], axis=1)
        order = np.lexsort((-seq, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)

    def to_cpu(self) -> Any:
        """A FAISS ``IDMap2,Flat`` copy holding the rows in the order they were added, so saved files
        are the same whichever backend (and however many devices) wrote them."""
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        vectors = [shard.vectors[: shard.n].float().cpu().numpy() for shard in self._shards]
        seq = np.concatenate([shard.seq[: shard.n] for shard in self._shards])
        labels = np.concatenate([shard.labels[: shard.n] for shard in self._shards])
        order = np.argsort(seq, kind="stable")
        if len(order):
            index.add_with_ids(np.concatenate(vectors)[order], labels[order])
        return index

    def add_from(self, index: Any) -> None:
        """Take the vectors and labels of a FAISS ``IDMap,Flat`` index."""
        import faiss

        id_map = faiss.downcast_index(index)
        if not isinstance(id_map, faiss.IndexIDMap):
            raise InputError("The torch backend takes its vectors from a FAISS IDMap,Flat index (factory 'Flat').")
        flat = faiss.downcast_index(id_map.index)
        if flat.ntotal:
            self.add(flat.reconstruct_n(0, flat.ntotal), faiss.vector_to_array(id_map.id_map))
