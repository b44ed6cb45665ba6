"""Float32 vectors appended to a file and read back by row number.

A compressed index (IVF-SQ8, IVF-PQ) keeps its full-precision vectors here to re-score its
candidates exactly: a search reads only the rows it re-scores, so the vectors never have to fit in
memory. The file is plain row-major float32 without a header (``count x dim x 4`` bytes); its row
``n`` is the vector given FAISS label ``n``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmrank.errors import CollectionError, InputError


class RawVectors:
    """``dim``-dimensional float32 rows in the file ``path`` (an anonymous temporary file when
    None, deleted when closed). Use :meth:`create` for a new file and :meth:`open` for a saved one."""

    def __init__(self, dim: int, path: Path | None = None, rows: int = 0, *, writable: bool = True) -> None:
        self.dim, self.path, self.rows, self.writable = dim, path, rows, writable
        if path is None:
            self._file: BinaryIO = tempfile.TemporaryFile(prefix="mmrank-vectors-")
        else:
            self._file = open(path, "r+b" if writable else "rb")  # noqa: SIM115 (closed by close())

    @classmethod
    def create(cls, dim: int, path: str | Path | None = None) -> RawVectors:
        """An empty file at ``path`` (replacing one there), or an anonymous temporary one."""
        if path is not None:
            Path(path).write_bytes(b"")
        return cls(dim, None if path is None else Path(path))

    @classmethod
    def open(cls, path: str | Path, dim: int, rows: int) -> RawVectors:
        """The saved file ``path``, read-only; CollectionError unless it holds exactly ``rows`` rows."""
        path = Path(path)
        expected = rows * dim * 4
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            found = "is missing" if size is None else f"has {size} bytes"
            raise CollectionError(f"{path} {found}; it should hold {rows} vectors of {dim} float32 "
                                  f"({expected} bytes). Rebuild the index.")
        return cls(dim, path, rows, writable=False)

    def __len__(self) -> int:
        return self.rows

    def append(self, vectors: np.ndarray) -> None:
        """Add rows at the end (``vectors`` is (n, dim) float32)."""
        if not self.writable:
            raise InputError(f"{self.path} was opened read-only; its vectors cannot change.")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._file.seek(self.rows * self.dim * 4)
        self._file.write(vectors.tobytes())
        self._file.flush()
        self.rows += len(vectors)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (any shape of row numbers) as a new float32 array of shape
        ``rows.shape + (dim,)``: only those rows are read, each with one ``pread``. (A memory map
        would be as fast, but the kernel maps 64 KB around every row it touches, and those pages
        count as the process's resident memory.)"""
        rows = np.asarray(rows, dtype=np.int64)
        width = self.dim * 4
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise InputError(f"Rows {rows.min()}..{rows.max()} asked of {self.rows} stored vectors.")
        pread, descriptor = os.pread, self._file.fileno()
        data = b"".join([pread(descriptor, width, row * width) for row in rows.ravel().tolist()])
        return np.frombuffer(data, dtype=np.float32).reshape(*rows.shape, self.dim).copy()

    def writable_copy(self) -> RawVectors:
        """These rows in a new anonymous temporary file that takes appends (for an index loaded
        from a saved folder, whose own file must stay as saved)."""
        copy = RawVectors(self.dim)
        self._copy_into(copy._file)
        copy.rows = self.rows
        return copy

    def save_to(self, path: Path) -> None:
        """Copy the rows into a new file at ``path`` (flushed to disk)."""
        with open(path, "wb") as out:
            self._copy_into(out)
            os.fsync(out.fileno())

    def _copy_into(self, out: BinaryIO) -> None:
        self._file.flush()
        self._file.seek(0)
        remaining = self.rows * self.dim * 4
        while remaining:
            block = self._file.read(min(remaining, 1 << 24))
            out.write(block)
            remaining -= len(block)
        out.flush()

    def close(self) -> None:
        self._file.close()


def rescore(vectors: RawVectors, queries: np.ndarray, candidates: np.ndarray, k: int,
            block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the ``k`` best of each query's ``candidates`` (labels, -1 for none) by
    exact inner product with their rows of ``vectors``; -inf and -1 where a query has fewer than
    ``k`` candidates. Equal scores keep the candidates' order. Queries go ``block`` at a time, so
    at most block x candidates rows are in memory."""
    count, depth = candidates.shape
    k = min(k, depth)
    scores = np.full((count, k), -np.inf, dtype=np.float32)
    labels = np.full((count, k), -1, dtype=np.int64)
    for start in range(0, count, block):
        rows = candidates[start:start + block]
        exact = np.einsum("qcd,qd->qc", vectors.take(np.maximum(rows, 0)), queries[start:start + block])
        exact[rows < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores[start:start + block] = np.take_along_axis(exact, order, axis=1)
        labels[start:start + block] = np.where(np.isfinite(scores[start:start + block]),
                                               np.take_along_axis(rows, order, axis=1), -1)
    return scores, labels
