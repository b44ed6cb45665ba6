"""Random vectors and exact answers for the vector-search tests."""

from __future__ import annotations

import numpy as np


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors of ``dim`` dimensions (float32)."""
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered(n: int, dim: int, clusters: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres: data an IVF index can learn."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    vectors = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def scattered_labels(n: int, start: int, step: int, seed: int = 0) -> np.ndarray:
    """int64 labels that are neither positions nor in order, so a search returning rows fails."""
    return np.random.default_rng(seed).permutation(start + step * np.arange(n)).astype(np.int64)


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the ``k`` best inner products per query and those products (ties by row)."""
    scores = queries @ database.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)
