"""Rankings as arrays: the helpers of mmrank.columns, and the evaluation path built on them giving
exactly what the Hit-per-item path gives."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.columns import ItemTable, RowOrder, as_hits, first_per_item, from_hits, positions, without_rows
from mmrank.evaluation import _restricted, found_in_rows
from mmrank.indexing import ItemEncoder
from mmrank.metrics import found_in
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.retrieval import HybridRetriever
from mmrank.types import Item, Query

WORDS = "cat dog rocket espresso violin oxygen kerosene string fifth pressure bar hour day sleep".split()


def test_item_table_numbers_ids_and_back():
    table = ItemTable(["a", "b", "c"])
    assert table.rows(["c", "x", "a", None]).tolist() == [2, -1, 0, -1]
    assert table.id_list(np.array([1, 2])) == ["b", "c"] and len(table) == 3 and "b" in table
    with pytest.raises(ValueError, match="distinct"):
        ItemTable(["a", "a"])


def test_first_per_item_keeps_each_items_best_vector_in_order():
    rows, scores = first_per_item(np.array([4, 2, 4, -1, 7, 2, 9]), np.array([.9, .8, .7, -np.inf, .5, .4, .3]), 3)
    assert rows.tolist() == [4, 2, 7] and scores.tolist() == [.9, .8, .5]


def test_without_rows_drops_then_cuts():
    rows, scores = without_rows((np.array([5, 3, 8, 1]), np.array([4., 3., 2., 1.])), np.array([3]), 2)
    assert rows.tolist() == [5, 8] and scores.tolist() == [4., 2.]


def test_hits_round_trip_through_rows():
    table = ItemTable(["a", "b", "c"])
    hits = [("c", 0.5), ("a", 0.25)]
    assert as_hits(table, from_hits(table, hits)) == hits
    assert from_hits(table, [("zz", 1.0), ("b", 2.0)])[0].tolist() == [1]


@pytest.mark.parametrize("size", [10, 100_000])  # a lookup table, and a sort for a short order in a large table
def test_positions_finds_rows_in_an_order(size):
    order = np.array([7, 3, 9, 0])
    assert positions(order, np.array([9, 5, 7, -1, 0]), size).tolist() == [2, -1, 0, -1, 3]
    assert positions(np.zeros(0, dtype=np.int64), np.array([1]), size).tolist() == [-1]


def test_a_reheaded_order_shares_its_tail_with_the_order_before_it():
    first = RowOrder.of(np.array([5, 1, 4, 0, 3, 2]))
    second = first.reheaded(np.array([4, 5, 1]))
    third = second.reheaded(np.array([5, 4]))  # a stage reordering a shorter head
    assert second.rows().tolist() == [4, 5, 1, 0, 3, 2] and third.rows().tolist() == [5, 4, 1, 0, 3, 2]
    assert np.shares_memory(third.parts[-1], first.parts[0])  # the tail is a view, not a copy
    assert third.positions(np.array([0, 5, 1, 9, -1]), 10).tolist() == [3, 0, 2, -1, -1]
    assert third.cut(4).rows().tolist() == [5, 4, 1, 0] and len(third.cut(4)) == 4 and len(third) == 6
    assert third.cut(0).rows().tolist() == []


def test_found_in_rows_agrees_with_the_id_list_path_on_random_cases():
    rng = random.Random(0)
    ids = [f"d{i}" for i in range(40)]
    table = ItemTable(ids)
    for _ in range(500):
        order = rng.sample(ids, rng.randint(0, 40))
        relevance = {i: rng.choice([-1, 0, 1, 2, 3]) for i in rng.sample(ids + ["unknown"], rng.randint(1, 12))}
        ignored = frozenset(rng.sample(ids, rng.randint(0, 5)))
        within = frozenset(rng.sample(ids, rng.randint(1, 15))) if rng.random() < 0.5 else None
        expected = found_in(_restricted(order, ignored, within), relevance)
        rows = table.rows(order)
        assert found_in_rows(rows, table, relevance, ignored, within) == expected
        split = rng.randint(0, len(rows))  # the same order held as a reordered head and a shared tail
        assert found_in_rows(RowOrder.of(rows).reheaded(rows[:split].copy()), table, relevance, ignored,
                             within) == expected


@pytest.fixture(scope="module")
def texts(tmp_path_factory, minilm):
    """60 short texts over a small vocabulary (many BM25 ties), encoded with the real MiniLM."""
    rng = random.Random(1)
    items = [Item(id=f"t{n:02d}", kind="text", text=" ".join(rng.choices(WORDS, k=rng.randint(2, 6))))
             for n in range(60)]
    collection = Collection.create(tmp_path_factory.mktemp("texts") / "c")
    encoder = ItemEncoder(minilm)
    with collection.writing():
        collection.add(items, encoder.encode(items, collection))
        collection.build_indexes()
    collection.use_encoder("text", minilm)
    yield collection
    collection.close()


@pytest.mark.parametrize("fusion", ["rrf", "score"])
def test_search_rows_give_every_stage_the_order_and_hits_search_batch_gives(texts, fusion):
    rerankers = [create_reranker({"type": "dense-passages", "space": "text", "depth": 7, "words": 3, "overlap": 1}),
                 create_reranker({"type": "alpha-qe", "space": "text", "depth": 4})]
    pipeline = Pipeline(texts, HybridRetriever(paths=["text", "bm25"], fusion=fusion, depth=5), rerankers)
    queries = [Query(text="cat rocket", id="q1"), Query(text="espresso bar pressure", id="q2", excluded={"t03", "t10"}),
               Query(text="violin", id="q3", candidates={"t01", "t02", "t05", "t07", "t30", "t44"})]
    full = len(texts)
    rankings = pipeline.search_batch(queries, k=full, snippets=False)
    ranked = pipeline.search_rows(queries, k=full, hits=12)
    for ranking, rows in zip(rankings, ranked):
        assert list(rows.orders) == ["retrieve", "dense-passages", "alpha-qe"] == list(ranking.timings)
        for stage in rows.orders:
            assert rows.ids(stage) == ranking.order_after(stage)
        # The Hits built for the head are the ones the Hit-per-item path builds.
        assert rows.ranking.to_dicts() == ranking.top(len(rows.ranking)).to_dicts()
        assert len(rows.ranking) == min(12, len(ranking))
    assert "t03" not in ranked[1].ids() and set(ranked[2].ids()) <= queries[2].candidates
    # Less deep (each path searched less deep, so fused differently), but at least the rerankers'
    # depth: still what search_batch gives.
    for shallow, ranking in zip(pipeline.search_rows(queries, k=8), pipeline.search_batch(queries, k=8)):
        assert {stage: shallow.ids(stage) for stage in shallow.orders} == {
            stage: ranking.order_after(stage) for stage in ranking.timings}


class _ReverseAll:
    """A reranker of its own (no ``head_only``): reverses the whole ranking, past its depth."""

    name, depth = "reverse", 2

    def rerank_batch(self, queries, rankings, collection):
        from mmrank.types import Placement

        return [ranking.with_stage(self.name, [Placement(hit, -rank) for rank, hit in enumerate(ranking.hits)][::-1])
                for ranking in rankings]


def test_a_stage_that_may_reorder_past_its_depth_gets_every_hit(texts):
    pipeline = Pipeline(texts, HybridRetriever(paths=["text"], depth=5), [_ReverseAll()])
    [ranked] = pipeline.search_rows(["cat rocket"], k=len(texts))
    assert ranked.ids("reverse") == ranked.ids("retrieve")[::-1] and len(ranked.ranking) == len(texts)
    [ranking] = pipeline.search_batch(["cat rocket"], k=len(texts))
    assert ranked.ids("reverse") == ranking.ids
