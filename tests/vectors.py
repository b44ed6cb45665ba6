"""Random vectors and exact answers for the vector-search tests."""

from __future__ import annotations

import functools

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


def integers(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` vectors of small integers (float32): every inner product is exact, whatever the order
    of the sums, and many are equal, so tie handling shows in every ranking."""
    return np.random.default_rng(seed).integers(-2, 3, (n, dim)).astype(np.float32)


def assert_same_hits(expected: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray],
                     truth: dict[int, np.ndarray] | None = None, queries: np.ndarray | None = None, *,
                     tie_order: bool = True) -> None:
    """Identical scores, and identical labels except inside a group of equal scores cut by the k-th
    place, which may be represented by other members: distinct labels whose exact score (from
    ``truth``: label -> vector, when given) is that score. ``tie_order=False``: equal scores may
    also come in another order (the same labels)."""
    (expected_scores, expected_labels), (scores, labels) = expected, got
    assert np.array_equal(scores, expected_scores)
    cut = (expected_scores == expected_scores[:, -1:]) & (expected_labels >= 0)
    if tie_order:
        assert np.array_equal(np.where(cut, 0, labels), np.where(cut, 0, expected_labels))
    else:
        for row in range(len(scores)):
            for value in np.unique(expected_scores[row][~cut[row]]):
                group = expected_scores[row] == value
                assert sorted(labels[row][group].tolist()) == sorted(expected_labels[row][group].tolist())
    for row in np.flatnonzero(cut.any(axis=1)):
        members = labels[row][cut[row]]
        assert len(set(members.tolist())) == len(members)
        if truth is not None:
            exact = np.array([truth[int(label)] @ queries[row] for label in members])
            assert (exact == expected_scores[row, -1]).all()


@functools.lru_cache(maxsize=None)
def _trained(factory: str) -> bytes:
    import faiss

    from mmrank import faiss_tools

    index = faiss_tools.new_index(8, factory)
    index.train(integers(900, 8, 0))  # training is what takes time (PQ above all): once per factory
    return faiss.serialize_index(index)


def trained_index(factory: str):
    """An empty ``factory`` index (8 dimensions) trained on ``integers(900, 8)``, a fresh copy each call."""
    import faiss

    return faiss.deserialize_index(_trained(factory))
