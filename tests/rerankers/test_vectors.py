"""Vector-only rerankers as pipeline stages (SuperGlobal, alpha-QE, alpha-DBA) and the baselines'
arithmetic on hand-computed cases."""

from __future__ import annotations


import numpy as np
import pytest

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
