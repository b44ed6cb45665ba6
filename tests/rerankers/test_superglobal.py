"""SuperGlobal refinement: parity with the released reference code, the spec's edge cases, clear
errors on bad input, and the pipeline stage over a collection's stored vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrank.errors import InputError
from mmrank.rerankers.superglobal import SuperGlobalReranker, refine_descriptors, superglobal_rerank


def reference_rerank(X, Q, ranks, M=400, K=9, beta=0.15, s2_on_refined=True):
    """The released MDescAug + RerankwMDA steps, one query and one candidate at a time (numpy).

    Written from the reference code's behaviour, loops and all, as an independent oracle."""
    reranked = []
    for q, order in zip(Q, ranks):
        top = list(order[:M])
        G = X[top]
        S = G @ G.T
        refined = []
        for d in range(len(top)):
            neighbours = np.argsort(-S[d], kind="stable")[:K + 1]
            weights = np.array([1.0] + [beta * S[d, i] for i in neighbours[1:]])
            refined.append((weights[:, None] * G[neighbours]).sum(0) / weights.sum())
        refined = np.array(refined)
        s1 = refined @ q
        by_s1 = np.argsort(-s1, kind="stable")
        q_refined = refined[by_s1[:K + 1]].max(axis=0)
        s2 = refined @ q_refined if s2_on_refined else G @ q_refined
        final = (s1 + s2) / 2
        in_s1_order = np.argsort(-final[by_s1], kind="stable")
        reranked.append([top[i] for i in by_s1[in_s1_order]] + list(order[M:]))
    return np.array(reranked)


def unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def first_stage(Q, X, r):
    return np.argsort(-(Q @ X.T), axis=1, kind="stable")[:, :r]


@pytest.mark.parametrize(("n", "d", "q", "r", "m", "k"), [
    (400, 64, 6, 400, 400, 9),    # the defaults, the whole database as candidates
    (300, 32, 5, 200, 50, 9),     # positions after M keep their order
    (200, 16, 4, 120, 400, 9),    # M larger than the candidate list: all R are reranked
    (80, 8, 3, 6, 400, 9),        # fewer than K+1 candidates
    (60, 12, 3, 1, 400, 9),       # a single candidate
])
def test_matches_the_reference_steps(n, d, q, r, m, k):
    rng = np.random.default_rng(n + r)
    X, Q = unit(rng, n, d), unit(rng, q, d)
    ranks = first_stage(Q, X, r)
    ours = superglobal_rerank(Q, X, ranks, m=m, k=k)
    assert ours.shape == ranks.shape and ours.dtype == ranks.dtype
    np.testing.assert_array_equal(ours, reference_rerank(X.astype(np.float64), Q.astype(np.float64), ranks, m, k))
    np.testing.assert_array_equal(ours[:, m:], ranks[:, m:])
    assert all(sorted(row) == sorted(orig) for row, orig in zip(ours[:, :m], ranks[:, :m]))


def test_paper_variant_scores_s2_on_unrefined_vectors():
    rng = np.random.default_rng(3)
    X, Q = unit(rng, 300, 24), unit(rng, 8, 24)
    ranks = first_stage(Q, X, 300)
    paper = superglobal_rerank(Q, X, ranks, m=100, second_score="original")
    np.testing.assert_array_equal(paper, reference_rerank(X, Q, ranks, 100, s2_on_refined=False))
    assert not np.array_equal(paper, superglobal_rerank(Q, X, ranks, m=100))


def test_refinement_by_hand():
    # Three 2-D unit vectors; K=1, beta=0.5. a=(1,0), b=(0.6,0.8), c=(0,1).
    # a: nearest other is b (s=0.6) -> (a + 0.3 b) / 1.3 = (1.18, 0.24) / 1.3
    # b: nearest other is a or c (both 0.6 vs 0.8: c wins, s=0.8) -> (b + 0.4 c) / 1.4 = (0.6, 1.2) / 1.4
    # c: nearest other is b (s=0.8) -> (c + 0.4 b) / 1.4 = (0.24, 1.32) / 1.4
    vectors = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    refined = refine_descriptors(vectors, k=1, beta=0.5)[0]
    expected = torch.tensor([[1.18 / 1.3, 0.24 / 1.3], [0.6 / 1.4, 1.2 / 1.4], [0.24 / 1.4, 1.32 / 1.4]])
    torch.testing.assert_close(refined, expected)


def test_a_consistent_cluster_overtakes_an_isolated_near_match():
    # The outlier is the closest to the query, but nothing else looks like it; four views of the
    # same place agree with each other. Refinement and the max-pooled query favour the cluster.
    rng = np.random.default_rng(0)
    d = 64
    place = unit(rng, d)
    query = unit(rng, d)
    query = (0.6 * query + 0.8 * place)
    query /= np.linalg.norm(query)
    cluster = place + 0.15 * unit(rng, 4, d)
    cluster /= np.linalg.norm(cluster, axis=1, keepdims=True)
    outlier = 0.8 * query + 0.6 * unit(rng, d)
    outlier /= np.linalg.norm(outlier)
    noise = unit(rng, 20, d)
    X = np.vstack([outlier[None], cluster, noise]).astype(np.float32)
    ranks = first_stage(query[None].astype(np.float32), X, len(X))
    assert ranks[0, 0] == 0  # the outlier leads the first stage
    reranked = superglobal_rerank(query[None], X, ranks, m=25, k=3, beta=0.15)
    assert set(reranked[0, :4]) == {1, 2, 3, 4} and reranked[0, 4] == 0


def test_torch_tensors_in_torch_tensors_out():
    rng = np.random.default_rng(5)
    X, Q = unit(rng, 100, 16), unit(rng, 3, 16)
    ranks = first_stage(Q, X, 50).astype(np.int32)
    expected = superglobal_rerank(Q, X, ranks, m=40)
    assert expected.dtype == np.int32
    out = superglobal_rerank(torch.from_numpy(Q), torch.from_numpy(X), torch.from_numpy(ranks), m=40)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), expected)
    half = superglobal_rerank(torch.from_numpy(Q).half(), torch.from_numpy(X).half(), torch.from_numpy(ranks), m=40)
    assert half.shape == (3, 50)  # half precision is computed in float32 on the CPU


@pytest.mark.parametrize(("change", "message"), [
    (lambda Q, X, R: (Q[:, :8], X, R), "Query vectors have 8 dimensions, database vectors 16"),
    (lambda Q, X, R: (Q, X, R + 100), "index 1.* outside the database's 100 vectors"),
    (lambda Q, X, R: (Q, X, -R - 1), "index -.* outside"),
    (lambda Q, X, R: (Q, X, R.astype(np.float32)), "ranks must hold integer indices"),
    (lambda Q, X, R: (Q, X, R[:2]), "ranks has 2 rows for 3 queries"),
    (lambda Q, X, R: (Q, X, R[:, :0]), "every query needs at least one candidate"),
    (lambda Q, X, R: (np.where(np.arange(3)[:, None] == 1, np.nan, Q), X, R), "Query vector 1 holds NaN"),
    (lambda Q, X, R: (np.where(np.arange(3)[:, None] == 2, 0.0, Q), X, R), "Query vector 2 is all zeros"),
    (lambda Q, X, R: (Q, np.where(np.arange(100)[:, None] == R[0, 3], np.inf, X), R),
     r"Database vector \d+ \(candidate 3 of query 0\) holds NaN or infinity"),
    (lambda Q, X, R: (Q[0], X, R), r"Expected query_vectors \(Q, D\)"),
])
def test_bad_input_gets_a_clear_error(change, message):
    rng = np.random.default_rng(7)
    X, Q = unit(rng, 100, 16), unit(rng, 3, 16)
    ranks = first_stage(Q, X, 20)
    with pytest.raises(InputError, match=message):
        superglobal_rerank(*change(Q, X, ranks))


@pytest.mark.parametrize(("options", "message"), [
    ({"m": 0}, "m >= 1"), ({"k": -1}, "k >= 0"), ({"beta": float("nan")}, "beta >= 0"),
    ({"second_score": "paper"}, "second_score must be"),
])
def test_bad_parameters_are_refused(options, message):
    rng = np.random.default_rng(1)
    X, Q = unit(rng, 10, 4), unit(rng, 1, 4)
    with pytest.raises(InputError, match=message):
        superglobal_rerank(Q, X, first_stage(Q, X, 10), **options)
    with pytest.raises(InputError, match=message):
        SuperGlobalReranker(**options)
