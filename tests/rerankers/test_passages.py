"""The offline dense passage reranker: page scores by their best short passage under the collection's
own text model, added to the incoming scores (both normalised), checked against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.errors import InputError
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.passages import NO_TEXT_NOTE, DensePassageReranker
from mmrank.retrieval import HybridRetriever
from mmrank.text import split_passages
from mmrank.types import Hit, Item, Query, Ranking, StageScore

QUESTION = "How many hours a day do cats sleep?"


def normalised(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_the_head_is_reordered_by_incoming_plus_best_short_passage(docs, minilm):
    first = Pipeline(docs, HybridRetriever(paths=["bm25"])).search(QUESTION, k=8)
    stage = DensePassageReranker(depth=6, words=20, overlap=5, weight=0.7)
    ranking = stage.rerank(first.query, first, docs)
    head = first.hits[:6]
    query = minilm.encode_texts([QUESTION])[0]
    best = [max(float(vector @ query) for vector in minilm.encode_texts(split_passages(hit.item.text, 20, 5)))
            for hit in head]
    combined = normalised([hit.score for hit in head]) + 0.7 * normalised(best)
    expected = [head[i].item_id for i in np.argsort(-combined, kind="stable")]
    assert ranking.ids[:6] == expected and ranking.ids[6:] == first.ids[6:]
    np.testing.assert_allclose([hit.stages["dense-passages"].score for hit in ranking.hits[:6]],
                               np.sort(combined)[::-1], rtol=1e-5)
    assert all(hit.stages["dense-passages"].score is None for hit in ranking.hits[6:])
    assert "dense-passages" in ranking.timings


def test_weight_zero_keeps_the_incoming_order_and_items_without_text_follow(docs):
    first = Pipeline(docs, HybridRetriever(paths=["bm25"])).search(QUESTION, k=4)
    picture = Hit(item=Item(id="photo", kind="image", source="x.png"), score=99.0, stages={"retrieve": StageScore(99.0, 1)})
    incoming = Ranking(query=first.query, hits=(picture, *first.hits), timings=first.timings)
    ranking = DensePassageReranker(depth=5, weight=0.0).rerank(first.query, incoming, docs)
    assert ranking.ids == [*first.ids, "photo"]
    assert ranking[-1].stages["dense-passages"].note == NO_TEXT_NOTE


def test_options_and_queries_are_checked(docs):
    with pytest.raises(InputError, match="overlap must be at least 0 and less than max_words"):
        DensePassageReranker(words=10, overlap=10)
    with pytest.raises(InputError, match="weight must be at least 0"):
        DensePassageReranker(weight=-1)
    first = Pipeline(docs, HybridRetriever(paths=["bm25"])).search(QUESTION, k=3)
    image_only = Ranking(query=Query(image="x.png", id="q7"), hits=first.hits, timings=first.timings)
    with pytest.raises(InputError, match="'dense-passages' stage compares the query's text.*query 'q7' has none"):
        DensePassageReranker().rerank(image_only.query, image_only, docs)
    stage = create_reranker({"type": "dense-passages", "depth": 10, "weight": 0.25})
    assert stage.to_config() == {"type": "dense-passages", "name": "dense-passages", "depth": 10, "words": 60,
                                 "overlap": 20, "weight": 0.25, "space": "text"}
