"""Hierarchical token pooling (mmrank.encoders.token_pooling), checked by hand and against the
clustering colpali-engine does."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mmrank.encoders.token_pooling import pool_tokens
from mmrank.errors import InputError


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def random_unit_rows(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# Three tight pairs along three orthogonal axes: any sensible clustering into 3 finds the pairs.
A, A2 = unit(1, 0, 0, 0), unit(1, 0.1, 0, 0)
B, B2 = unit(0, 1, 0, 0), unit(0, 1, 0, 0.1)
C, C2 = unit(0, 0, 1, 0), unit(0.1, 0, 1, 0)


def pair_mean(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first + second) / np.linalg.norm(first + second)


def test_three_tight_pairs_become_their_normalised_means_in_order_of_first_vector():
    pooled = pool_tokens(np.stack([A, A2, B, B2, C, C2]), 2)

    expected = np.stack([pair_mean(A, A2), pair_mean(B, B2), pair_mean(C, C2)])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    assert pooled.dtype == np.float32


def test_cluster_order_follows_each_clusters_first_vector_not_its_members_positions():
    # Interleaved: B's pair starts first, then C's, then A's.
    pooled = pool_tokens(np.stack([B, C, A, A2, C2, B2]), 2)

    expected = np.stack([pair_mean(B, B2), pair_mean(C, C2), pair_mean(A, A2)])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


@pytest.mark.parametrize(("count", "factor", "clusters"), [(10, 2, 5), (10, 3, 3), (7, 2, 3), (9, 9, 1), (3, 5, 1)])
def test_n_tokens_give_n_over_pool_factor_clusters_and_at_least_one(count, factor, clusters):
    pooled = pool_tokens(random_unit_rows(count, seed=count), factor)

    assert pooled.shape == (clusters, 8)


def test_pooled_rows_are_unit_norm_float32_whatever_the_input_dtype():
    pooled = pool_tokens(random_unit_rows(40).astype(np.float64), 4)

    assert pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)


def test_pool_factor_one_returns_the_input_unchanged():
    rows = random_unit_rows(6)

    assert pool_tokens(rows, 1) is rows


@pytest.mark.parametrize("count", [0, 1])
def test_zero_or_one_row_is_returned_unchanged(count):
    rows = random_unit_rows(count)

    np.testing.assert_array_equal(pool_tokens(rows, 3), rows)


def test_identical_rows_merge_into_that_row():
    row = unit(3, 4, 0, 0)

    np.testing.assert_allclose(pool_tokens(np.stack([row] * 4), 4), [row], atol=1e-6)


def test_clusters_are_wards_on_distance_rows_as_observations_like_colpali_engine():
    """colpali-engine hands ``1 - S`` to scipy's linkage as observation vectors, not as a distance
    matrix; the two readings cluster this input differently, and pool_tokens follows colpali-engine."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    rows = random_unit_rows(12, dim=6, seed=1)
    distances = 1 - rows @ rows.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_observations = fcluster(linkage(distances, method="ward"), t=4, criterion="maxclust")
    as_distances = fcluster(linkage(squareform(np.clip((distances + distances.T) / 2, 0, None), checks=False),
                                    method="ward"), t=4, criterion="maxclust")
    assert partition(as_observations) != partition(as_distances)  # the input tells the readings apart

    _, first = np.unique(as_observations, return_index=True)
    expected = [rows[as_observations == as_observations[i]].mean(axis=0) for i in np.sort(first)]
    expected = np.stack(expected) / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(pool_tokens(rows, 3), expected, atol=1e-6)


def test_pooling_raises_no_scipy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool_tokens(random_unit_rows(12), 3)


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == label).tolist()) for label in np.unique(labels)}


@pytest.mark.parametrize(("rows", "factor"), [(np.zeros((4, 2)), 0), (np.zeros(4), 2)])
def test_bad_arguments_raise_input_error(rows, factor):
    with pytest.raises(InputError):
        pool_tokens(rows, factor)
