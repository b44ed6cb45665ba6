"""Exact inner-product search in torch: for CUDA machines without a FAISS GPU build (and on the CPU,
which tests use). Vectors live in one tensor; queries go in batches, the database in chunks, and a
running top-k is merged across chunks, so memory stays bounded whatever the collection's size."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmrank.errors import InputError

DTYPES = ("float16", "bfloat16", "float32")


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


class TorchExactSearch:
    """Vectors with int64 labels, searched exactly by matmul + top-k on ``device``.

    ``dtype`` is float16, bfloat16 or float32 (None: float32 on the CPU, float16 on CUDA);
    ``chunk_size`` database rows go into one matmul and ``query_batch_size`` queries into one
    batch. It offers what :class:`~mmrank.faiss_tools.FaissStore` offers, so an index can hold
    either.
    """

    removable = True
    is_trained = True

    def __init__(self, dim: int, device: str = "cpu", dtype: str | None = None, chunk_size: int = 65536,
                 query_batch_size: int = 1024) -> None:
        import torch

        if dtype is None:
            dtype = "float32" if device == "cpu" else "float16"
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
        self._torch = torch
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.chunk_size = _positive(chunk_size, "chunk_size")
        self.query_batch_size = _positive(query_batch_size, "query_batch_size")
        self.ntotal = 0
        self._vectors = torch.empty((0, dim), dtype=self.dtype, device=self.device)
        self._labels = np.empty(0, dtype=np.int64)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        end = self.ntotal + len(vectors)
        self._reserve(end)
        self._vectors[self.ntotal : end] = self._torch.tensor(vectors, dtype=self.dtype, device=self.device)
        self._labels[self.ntotal : end] = labels
        self.ntotal = end

    def _reserve(self, size: int) -> None:
        capacity = len(self._labels)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity)
        vectors = self._torch.empty((capacity, self._vectors.shape[1]), dtype=self.dtype, device=self.device)
        vectors[: self.ntotal] = self._vectors[: self.ntotal]
        labels = np.empty(capacity, dtype=np.int64)
        labels[: self.ntotal] = self._labels[: self.ntotal]
        self._vectors, self._labels = vectors, labels

    def remove(self, labels: np.ndarray) -> int:
        keep = np.flatnonzero(~np.isin(self._labels[: self.ntotal], labels))
        removed = self.ntotal - len(keep)
        if removed:
            rows = self._torch.from_numpy(keep).to(self.device)
            self._vectors[: len(keep)] = self._vectors[rows]
            self._labels[: len(keep)] = self._labels[keep]
            self.ntotal = len(keep)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (at most ntotal) rows for each query: (scores float32, labels int64)."""
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        with self._torch.inference_mode():
            for start in range(0, len(queries), self.query_batch_size):
                stop = start + self.query_batch_size
                batch = self._torch.tensor(queries[start:stop], dtype=self.dtype, device=self.device)
                top_scores, top_rows = self._top_k(batch, k)
                scores[start:stop] = top_scores.float().cpu().numpy()
                rows[start:stop] = top_rows.cpu().numpy()
        return scores, self._labels[rows]

    def _top_k(self, queries: Any, k: int) -> tuple[Any, Any]:
        torch = self._torch
        best_scores = best_rows = None
        for start in range(0, self.ntotal, self.chunk_size):
            chunk = self._vectors[start : min(start + self.chunk_size, self.ntotal)]
            scores, rows = (queries @ chunk.T).topk(min(k, len(chunk)), dim=1)
            rows += start
            if best_scores is not None:
                scores, rows = torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows], 1)
                scores, picked = scores.topk(min(k, scores.shape[1]), dim=1)
                rows = rows.gather(1, picked)
            best_scores, best_rows = scores, rows
        return best_scores, best_rows

    def to_cpu(self) -> Any:
        """A FAISS ``IDMap2,Flat`` copy, so saved files are the same whichever backend wrote them."""
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self._vectors.shape[1]))
        vectors = self._vectors[: self.ntotal].float().cpu().numpy()
        index.add_with_ids(vectors, self._labels[: self.ntotal])
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
