"""Hierarchical token pooling: fewer vectors per page for late-interaction (MaxSim) retrieval.

A ColPali / ColQwen2 page has one vector per patch and prompt token, often several hundred.
Neighbouring patches of blank or uniform regions are near duplicates, so merging similar vectors
into their mean shrinks a page's storage and MaxSim work by about the pooling factor, at some cost
in recall (``benchmarks/late_interaction_bench.py --token-pooling`` measures it).

:func:`pool_tokens` does what colpali-engine's ``HierarchicalTokenPooler`` does, so a page pooled
here gives the same vectors as one pooled there.
"""

from __future__ import annotations

import warnings

import numpy as np

from mmrank.errors import InputError


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """Merge a page's (n, dim) vectors into at most ``max(n // pool_factor, 1)`` cluster means.

    The clusters come from Ward hierarchical clustering (scipy ``linkage`` + ``fcluster`` with
    ``criterion="maxclust"``); each output row is the mean of one cluster's vectors, L2-normalised,
    as float32. Rows are ordered by the position of each cluster's first vector (the cluster
    holding vector 0 comes first). colpali-engine lists the same rows in scipy's label order
    instead; MaxSim scores do not depend on row order.

    Like colpali-engine, the clustering treats each row of the distance matrix
    ``1 - vectors @ vectors.T`` as an observation (a point in n dimensions: the vector's cosine
    distances to every vector) and clusters those points with Euclidean Ward linkage; it does not
    read the matrix as pairwise distances. That keeps our pooled vectors identical to
    colpali-engine's (scipy's warning that the matrix "looks like an uncondensed distance matrix"
    is silenced for that reason). Similar vectors have similar distance rows, so they still merge.

    ``fcluster`` may return fewer clusters than asked for when merge heights tie; then there are
    fewer rows. ``pool_factor`` 1 returns ``vectors`` unchanged, and so does a single row (nothing
    to merge; colpali-engine refuses it); zero rows give zero rows.
    """
    if pool_factor < 1:
        raise InputError(f"pool_factor must be at least 1 (1: no pooling); got {pool_factor}.")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise InputError(f"pool_tokens expects a 2-D (tokens, dim) array; got shape {vectors.shape}.")
    if pool_factor == 1 or len(vectors) <= 1:
        return vectors
    from scipy.cluster.hierarchy import ClusterWarning, fcluster, linkage

    vectors = vectors.astype(np.float32, copy=False)
    distances = 1.0 - vectors @ vectors.T  # float32, as colpali-engine computes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterWarning)
        tree = linkage(distances, method="ward", metric="euclidean")
    labels = fcluster(tree, t=max(len(vectors) // pool_factor, 1), criterion="maxclust")
    # np.unique's first-occurrence indices, sorted, give the clusters in order of their first vector.
    _, first = np.unique(labels, return_index=True)
    means = np.stack([vectors[labels == labels[start]].mean(axis=0) for start in np.sort(first)])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)
