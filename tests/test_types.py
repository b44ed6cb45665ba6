"""Core types: empty queries are refused; stages are recorded and can be read back in order."""

from __future__ import annotations

import pytest

from mmrank.errors import InputError
from mmrank.types import Hit, Item, Query, Ranking, StageScore


def _ranking() -> Ranking:
    hits = tuple(Hit(item=Item(id=i, kind="text"), score=s, stages={"retrieve": StageScore(s, r)})
                 for r, (i, s) in enumerate([("a", 0.9), ("b", 0.5), ("c", 0.1)], start=1))
    return Ranking(query=Query(text="q"), hits=hits, timings={"retrieve": 0.01})


@pytest.mark.parametrize("kwargs", [{}, {"text": "   "}, {"text": "", "modification": " "}])
def test_empty_query_is_refused(kwargs):
    with pytest.raises(InputError, match="The query is empty"):
        Query(**kwargs)


def test_search_text_joins_text_and_modification():
    assert Query(text="a red car", modification="make it blue").search_text == "a red car make it blue"
    assert Query(image="x.png").search_text is None


def test_with_stage_records_scores_ranks_and_keeps_history():
    ranking = _ranking()
    hits = {h.item_id: h for h in ranking}
    reranked = ranking.with_stage("rerank", [(hits["c"], 2.0, None), (hits["a"], None, "kept"), (hits["b"], 1.0, None)],
                                  seconds=0.5)
    assert reranked.ids == ["c", "a", "b"]
    assert reranked.order_after("retrieve") == ["a", "b", "c"]
    assert reranked.order_after("rerank") == ["c", "a", "b"]
    assert reranked[1].score == 0.9 and reranked[1].stages["rerank"].note == "kept"
    assert reranked.stage_names == ["retrieve", "rerank"]
    assert reranked.to_dicts()[0] == {
        "rank": 1, "id": "c", "kind": "text", "source": None, "page": None, "score": 2.0, "found_by": [],
        "snippet": None, "stages": {"retrieve": {"score": 0.1, "rank": 3}, "rerank": {"score": 2.0, "rank": 1}},
    }
