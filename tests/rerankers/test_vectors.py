"""Vector-only rerankers as pipeline stages (SuperGlobal, alpha-QE, alpha-DBA) and the baselines'
arithmetic on hand-computed cases."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from mmrank.errors import InputError
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.expansion import (
    AlphaDatabaseAugmentationReranker,
    AlphaQueryExpansionReranker,
    alpha_database_augmentation,
    alpha_query_expansion,
)
from mmrank.rerankers.superglobal import SuperGlobalReranker, superglobal_rerank
from mmrank.rerankers.vectors import (
    as_tensors,
    check_vector_inputs,
    gather_candidates,
    restore_kind,
    weighted_neighbour_sum,
)
from mmrank.retrieval import HybridRetriever
from mmrank.types import Query
from tests.paths import ASSETS, IMAGES


def test_superglobal_stage_reranks_the_top_m_from_stored_vectors(photos):
    retriever = HybridRetriever(paths=["image"])
    pipeline = Pipeline(photos, retriever, [SuperGlobalReranker(m=5, k=2)])
    query = Query(image=str(IMAGES / "cat.jpg"))
    ranking = pipeline.search(query, k=8)
    first = ranking.order_after("retrieve")
    assert len(first) == 8 and ranking.stage_names == ["retrieve", "superglobal"]
    vectors = photos.vectors(first, "image")
    expected = superglobal_rerank(ranking.query_vectors["image"][None], vectors, np.arange(8)[None], m=5, k=2)[0]
    assert ranking.ids == [first[i] for i in expected]
    assert ranking.ids[5:] == first[5:]  # after M: first-stage order
    head = ranking.hits[:5]
    assert all(hit.stages["superglobal"].score is not None for hit in head)
    assert [h.stages["superglobal"].score for h in head] == sorted((h.stages["superglobal"].score for h in head),
                                                                   reverse=True)


def test_batched_stage_equals_one_query_at_a_time(photos):
    pipeline = Pipeline(photos, HybridRetriever(paths=["image"]), [SuperGlobalReranker(m=6, k=3)])
    queries = [Query(image=str(IMAGES / name)) for name in ("cat.jpg", "rocket.jpg", "coins.jpg")]
    batched = pipeline.search_batch(queries, k=8)
    assert [r.ids for r in batched] == [pipeline.search(q, k=8).ids for q in queries]


def test_text_query_vector_is_encoded_when_the_first_stage_did_not_search_the_space(photos, tiny_clip):
    reranker = SuperGlobalReranker(m=4, k=1)
    ranking = Pipeline(photos, HybridRetriever(paths=["image"])).search("a cat", k=6)
    stripped = type(ranking)(query=ranking.query, hits=ranking.hits, timings=ranking.timings)
    assert reranker.rerank(ranking.query, stripped, photos).ids == reranker.rerank(ranking.query, ranking, photos).ids


def test_yaml_pipeline_and_bad_options(photos):
    pipeline = Pipeline.from_yaml("landmarks-superglobal", photos)
    [stage] = pipeline.rerankers
    assert (stage.m, stage.k, stage.beta, pipeline.retriever.depth) == (400, 9, 0.15, 400)
    assert isinstance(create_reranker({"type": "alpha-qe", "n": 3}), AlphaQueryExpansionReranker)
    with pytest.raises(InputError, match="Bad options for reranker type 'superglobal'.*'mm'"):
        create_reranker({"type": "superglobal", "mm": 3})


def test_alpha_qe_by_hand():
    # q = (1, 0); first stage: a (0.8), b (0.6), c (0.5). n = 1, alpha = 3:
    # q' = normalise(q + 0.8^3 a) = (1.4096, 0.3072) / 1.44269
    # scores: a 0.90941, c (0.7048 + 0.26604) / 1.44269 = 0.67295, b (0.84576 - 0.24576) / 1.44269 = 0.41589
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    database = np.array([[0.8, 0.6], [0.6, -0.8], [0.5, 0.8660254]], dtype=np.float32)
    assert alpha_query_expansion(q, database, np.array([[0, 1, 2]]), n=1, alpha=3).tolist() == [[0, 2, 1]]
    import torch

    stage = AlphaQueryExpansionReranker(n=1, alpha=3)
    _, scores = stage.rerank_tensors(torch.from_numpy(q), torch.from_numpy(database), torch.tensor([[0, 1, 2]]))
    np.testing.assert_allclose(scores.numpy(), [[0.90941, 0.67295, 0.41589]], atol=1e-4)


def test_alpha_dba_by_hand():
    # n = 2: each candidate + its nearest other candidate, weights 1 and max(s, 0)^alpha; alpha = 1.
    # a = (1, 0), b = (0.6, 0.8), c = (0, 1); q = (0.8, 0.6): first stage b (0.96), a (0.8), c (0.6).
    # a' = normalise(a + 0.6 b) = (1.36, 0.48) / 1.44222 -> q . a' = (1.088 + 0.288) / 1.44222 = 0.95408
    # b' = normalise(b + 0.8 c) = (0.6, 1.6) / 1.70880   -> q . b' = (0.48 + 0.96) / 1.70880 = 0.84270
    # c' = normalise(c + 0.8 b) = (0.48, 1.64) / 1.70880 -> q . c' = (0.384 + 0.984) / 1.70880 = 0.80056
    q = np.array([[0.8, 0.6]], dtype=np.float32)
    database = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    assert alpha_database_augmentation(q, database, np.array([[1, 0, 2]]), n=2, alpha=1).tolist() == [[0, 1, 2]]
    import torch

    stage = create_reranker({"type": "alpha-dba", "n": 2, "alpha": 1})
    assert isinstance(stage, AlphaDatabaseAugmentationReranker)
    _, scores = stage.rerank_tensors(torch.from_numpy(q), torch.from_numpy(database), torch.tensor([[1, 0, 2]]))
    np.testing.assert_allclose(scores.numpy(), [[0.95408, 0.84270, 0.80056]], atol=1e-4)


@pytest.mark.parametrize("function", [alpha_query_expansion, alpha_database_augmentation])
def test_baselines_refuse_bad_input(function):
    with pytest.raises(InputError, match="n must be at least 1"):
        function(np.ones((1, 2)), np.ones((3, 2)), np.array([[0, 1, 2]]), n=0)
    with pytest.raises(InputError, match="outside the database"):
        function(np.ones((1, 2)), np.ones((3, 2)), np.array([[0, 1, 5]]))


def test_hits_without_a_vector_in_the_space_keep_their_order_after_the_reranked_ones(tmp_path, minilm, tiny_clip):
    from mmrank.collection import Collection
    from mmrank.indexing import ItemEncoder, index_paths

    root = ASSETS
    with Collection.create(tmp_path / "mixed") as collection:
        # Pages with text get text vectors only; photos get image vectors only.
        index_paths(collection, [root / "pdfs", IMAGES], ItemEncoder(minilm, tiny_clip))
        collection.use_encoder("text", minilm)
        collection.use_encoder("image", tiny_clip)
        first = Pipeline(collection).search("a cat sleeping in the morning sun", k=30)
        ranking = SuperGlobalReranker(m=30, k=2).rerank(first.query, first, collection)
    kinds = [hit.item.kind for hit in ranking.hits]
    assert "page" in kinds and "image" in kinds
    pages = [hit for hit in ranking.hits if hit.item.kind == "page"]
    assert kinds == sorted(kinds, key=lambda kind: kind == "page")  # photos first, then pages
    assert [h.item_id for h in pages] == [h.item_id for h in first.hits if h.item.kind == "page"]
    assert all(h.stages["superglobal"].note.startswith("no image vector") for h in pages)
    assert all(h.stages["superglobal"].score is not None for h in ranking.hits if h.item.kind == "image")


# ------------------------------------------------- the shared helpers of vectors.py
def test_as_tensors_takes_numpy_and_torch_and_promotes_to_one_dtype():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    database = np.array([[0.5, 0.5], [0.0, 1.0]], dtype=np.float64)
    q, d, r = as_tensors(queries, database, np.array([[1, 0]], dtype=np.int32))
    assert all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in (q, d, r))
    assert (q.dtype, d.dtype, r.dtype) == (torch.float64, torch.float64, torch.int64)
    assert q.tolist() == [[1.0, 0.0]] and d.tolist() == [[0.5, 0.5], [0.0, 1.0]] and r.tolist() == [[1, 0]]
    q, d, r = as_tensors(torch.from_numpy(queries), torch.from_numpy(database.astype(np.float32)), [[0, 1]])
    assert (q.dtype, d.dtype, r.dtype) == (torch.float32, torch.float32, torch.int64) and r.tolist() == [[0, 1]]
    assert as_tensors(queries, database, torch.tensor([[1, 0]], dtype=torch.uint8))[2].dtype == torch.int64


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_as_tensors_computes_in_float32_at_least_on_the_cpu(half):
    queries, database = torch.ones((1, 2), dtype=half), torch.ones((3, 2), dtype=half)
    q, d, _ = as_tensors(queries, database, np.array([[0, 1, 2]]))
    assert (q.dtype, d.dtype) == (torch.float32, torch.float32)
    q, d, _ = as_tensors(queries, database.double(), np.array([[0, 1, 2]]))
    assert (q.dtype, d.dtype) == (torch.float64, torch.float64)
    q, d, _ = as_tensors(np.ones((1, 2), dtype=np.float16), np.ones((3, 2), dtype=np.float16), [[0]])
    assert (q.dtype, d.dtype) == (torch.float32, torch.float32)


def test_as_tensors_moves_everything_to_the_databases_device():
    # The meta device stands in for a GPU: not the CPU, so half precision is kept there.
    database = torch.ones((3, 2), dtype=torch.float16, device="meta")
    q, d, r = as_tensors(np.ones((1, 2), dtype=np.float16), database, np.array([[0, 2]], dtype=np.int32))
    assert [t.device.type for t in (q, d, r)] == ["meta"] * 3
    assert (q.dtype, d.dtype, r.dtype) == (torch.float16, torch.float16, torch.int64)


def test_as_tensors_refuses_integer_vectors_and_non_integer_ranks():
    floats, ranks = np.ones((1, 2), dtype=np.float32), np.array([[0, 1]])
    with pytest.raises(InputError, match="query_vectors must hold floating-point numbers, got torch.int64"):
        as_tensors(np.ones((1, 2), dtype=np.int64), floats, ranks)
    with pytest.raises(InputError, match="database_vectors must hold floating-point numbers, got torch.int32"):
        as_tensors(floats, np.ones((2, 2), dtype=np.int32), ranks)
    with pytest.raises(InputError, match="ranks must hold integer indices, got torch.float64"):
        as_tensors(floats, floats, np.array([[0.0, 1.0]]))
    with pytest.raises(InputError, match="ranks must hold integer indices, got torch.bool"):
        as_tensors(floats, floats, np.array([[True, False]]))


def valid_inputs():
    """Two queries (D = 3), four database vectors, two candidates each."""
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    database = torch.eye(4, 3)
    return queries, database, torch.tensor([[0, 3], [2, 1]])


def test_check_vector_inputs_passes_good_input():
    queries, database, ranks = valid_inputs()
    assert check_vector_inputs(queries, database, ranks) is None
    database[1, 1] = float("nan")  # database vectors are checked where they are gathered, not here
    assert check_vector_inputs(queries, database, ranks) is None


@pytest.mark.parametrize("broken, message", [
    ({"queries": torch.ones(3)}, r"Expected query_vectors \(Q, D\), database_vectors \(N, D\) and ranks "
                                 r"\(Q, R\); got shapes \(3,\), \(4, 3\) and \(2, 2\)\."),
    ({"database": torch.ones((1, 4, 3))}, r"got shapes \(2, 3\), \(1, 4, 3\) and \(2, 2\)"),
    ({"ranks": torch.tensor([0, 1])}, r"got shapes \(2, 3\), \(4, 3\) and \(2,\)"),
    ({"database": torch.ones((4, 5))}, r"^Query vectors have 3 dimensions, database vectors 5\.$"),
    ({"ranks": torch.tensor([[0, 1]])}, r"^ranks has 1 rows for 2 queries\.$"),
    ({"ranks": torch.zeros((2, 0), dtype=torch.long)}, "^ranks is empty: every query needs at least one candidate"),
    ({"ranks": torch.tensor([[0, 4], [1, 2]])}, r"^ranks holds index 4, outside the database's 4 vectors\.$"),
    ({"ranks": torch.tensor([[0, 9], [-1, 2]])}, r"^ranks holds index -1, outside the database's 4 vectors\.$"),
    ({"queries": torch.tensor([[1.0, 0.0, 0.0], [0.0, float("nan"), 1.0]])},
     r"^Query vector 1 holds NaN or infinity\.$"),
    ({"queries": torch.tensor([[float("inf"), 0.0, 0.0], [0.0, 1.0, 1.0]])}, "^Query vector 0 holds NaN or infinity"),
    ({"queries": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])},
     r"^Query vector 1 is all zeros: it cannot rank anything\.$"),
])
def test_check_vector_inputs_names_each_problem(broken, message):
    queries, database, ranks = valid_inputs()
    inputs = {"queries": queries, "database": database, "ranks": ranks, **broken}
    with pytest.raises(InputError, match=message):
        check_vector_inputs(inputs["queries"], inputs["database"], inputs["ranks"])


def test_a_batch_of_no_queries_is_not_a_torch_error():
    check_vector_inputs(torch.zeros((0, 3)), torch.eye(4, 3), torch.zeros((0, 2), dtype=torch.long))
    reranked = superglobal_rerank(np.zeros((0, 3), np.float32), np.eye(4, 3, dtype=np.float32),
                                  np.zeros((0, 2), dtype=np.int64))
    assert isinstance(reranked, np.ndarray) and reranked.shape == (0, 2)


def test_gather_candidates_by_hand():
    database = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    vectors = gather_candidates(database, torch.tensor([[3, 0], [1, 1]]))
    assert vectors.shape == (2, 2, 3)
    assert vectors.tolist() == [[[9, 10, 11], [0, 1, 2]], [[3, 4, 5], [3, 4, 5]]]
    database[2, 1] = float("nan")  # not a candidate: no error
    assert gather_candidates(database, torch.tensor([[3, 0]])).tolist() == [[[9, 10, 11], [0, 1, 2]]]
    big = torch.full((2, 2), 3e38)  # finite, though each row's sum overflows to infinity
    assert torch.equal(gather_candidates(big, torch.tensor([[1, 0]])), big[None])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_gather_candidates_names_a_non_finite_database_vector(bad):
    database = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    database[2, 1] = bad
    with pytest.raises(InputError, match=r"^Database vector 2 \(candidate 1 of query 1\) holds NaN or infinity\.$"):
        gather_candidates(database, torch.tensor([[0, 1, 3], [3, 2, 0]]))
    with pytest.raises(InputError, match=r"^Database vector 2 \(candidate 0 of query 0\)"):
        gather_candidates(database, torch.tensor([[2, 2], [2, 0]]))


def test_weighted_neighbour_sum_by_hand():
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    neighbours = torch.tensor([[[0, 1], [1, 0]]])
    weights = torch.tensor([[[1.0, 0.5], [1.0, 0.25]]])
    # first: 1 * (1, 0) + 0.5 * (0, 1); second: 1 * (0, 1) + 0.25 * (1, 0)
    for sparse in (True, False, None):
        result = weighted_neighbour_sum(vectors, neighbours, weights, sparse=sparse)
        assert result.tolist() == [[[1.0, 0.5], [0.25, 1.0]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_neighbour_sum_sparse_dense_and_a_loop_agree(dtype):
    generator = torch.Generator().manual_seed(0)
    batch, count, dim, per = 3, 6, 5, 4
    vectors = torch.randn((batch, count, dim), generator=generator, dtype=dtype)
    # distinct neighbours per vector (as topk gives them), itself first
    neighbours = torch.stack([torch.stack([
        torch.tensor([m] + [n for n in torch.randperm(count, generator=generator).tolist() if n != m][:per - 1])
        for m in range(count)]) for _ in range(batch)])
    weights = torch.rand((batch, count, per), generator=generator)  # float32 whatever the vectors' dtype
    by_hand = torch.zeros_like(vectors)
    for b in range(batch):
        for m in range(count):
            for j in range(per):
                by_hand[b, m] += float(weights[b, m, j]) * vectors[b, neighbours[b, m, j]]
    sparse = weighted_neighbour_sum(vectors, neighbours, weights, sparse=True)
    dense = weighted_neighbour_sum(vectors, neighbours, weights, sparse=False)
    chosen = weighted_neighbour_sum(vectors, neighbours, weights)  # the CPU: sparse
    assert sparse.shape == dense.shape == (batch, count, dim)
    assert sparse.dtype == dense.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sparse, by_hand, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(dense, by_hand, atol=tolerance, rtol=tolerance)
    assert torch.equal(chosen, sparse)


def test_restore_kind_gives_back_the_kind_of_array_it_was_given():
    result = torch.tensor([[2, 0, 1]])
    as_numpy = restore_kind(result, np.array([[0, 1, 2]], dtype=np.int32))
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.int32 and as_numpy.tolist() == [[2, 0, 1]]
    as_float = restore_kind(torch.tensor([[0.5, 0.25]], dtype=torch.float64), np.zeros((1, 2), dtype=np.float16))
    assert as_float.dtype == np.float16 and as_float.tolist() == [[0.5, 0.25]]
    assert restore_kind(result, [[0, 1, 2]]).dtype == np.asarray([[0, 1, 2]]).dtype  # a list: numpy
    like = torch.zeros((1, 3), dtype=torch.int32)
    as_tensor = restore_kind(result, like)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.int32 and as_tensor.device == like.device
    assert as_tensor.tolist() == [[2, 0, 1]]
    on_meta = restore_kind(result, torch.zeros((1, 3), dtype=torch.int16, device="meta"))
    assert (on_meta.device.type, on_meta.dtype) == ("meta", torch.int16)


def test_the_public_functions_return_the_kind_they_were_given():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    database = np.array([[0.6, 0.8], [1.0, 0.0], [0.8, 0.6]], dtype=np.float32)
    ranks = np.array([[0, 1, 2]], dtype=np.int32)
    reranked = superglobal_rerank(queries, database, ranks, m=3, k=1)
    assert isinstance(reranked, np.ndarray) and reranked.dtype == np.int32
    as_tensor = superglobal_rerank(torch.from_numpy(queries), torch.from_numpy(database), torch.from_numpy(ranks),
                                   m=3, k=1)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.int32
    assert as_tensor.tolist() == reranked.tolist() and sorted(reranked[0].tolist()) == [0, 1, 2]
