"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from mmrank.errors import InputError
from mmrank.metrics import (
    DEFAULT_METRICS,
    average_precision_at_k,
    evaluate_rankings,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)

# Shared example: relevant items b (grade 1), d (grade 2) and x (grade 1, never retrieved);
# a, c, e are unjudged. Relevant ranks in RANKED: b at 2, d at 4.
RANKED = ["a", "b", "c", "d", "e"]
RELEVANCE = {"b": 1, "d": 2, "x": 1, "c": 0}
LOG2_3 = math.log2(3)  # 1.5849625


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 0 / 3),  # top-1 = [a]: no relevant item
        (2, 1 / 3),  # top-2 = [a, b]: b
        (5, 2 / 3),  # b, d out of {b, d, x}
        (10, 2 / 3),  # k beyond the ranking: the whole ranking, same as @5
    ],
)
def test_recall_at_k(k: int, expected: float) -> None:
    assert recall_at_k(RANKED, RELEVANCE, k) == approx(expected)


@pytest.mark.parametrize(("k", "expected"), [(1, 0.0), (2, 1.0), (100, 1.0)])
def test_hit_rate_at_k(k: int, expected: float) -> None:
    assert hit_rate_at_k(RANKED, RELEVANCE, k) == expected


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 0.0),  # nothing relevant in the top 1; divided by min(3, 1) = 1
        (2, (1 / 2) / 2),  # P@2 = 1/2 at b; divided by min(3, 2) = 2 -> 0.25
        (5, (1 / 2 + 2 / 4) / 3),  # P@2 = 1/2 at b, P@4 = 2/4 at d; min(3, 5) = 3 -> 1/3
        (10, (1 / 2 + 2 / 4) / 3),  # k beyond the ranking: min(3, 10) = 3, same as @5
    ],
)
def test_average_precision_at_k(k: int, expected: float) -> None:
    assert average_precision_at_k(RANKED, RELEVANCE, k) == approx(expected)


def test_average_precision_divides_by_min_of_relevant_and_k() -> None:
    # 3 relevant, k = 2, both top-2 relevant: (P@1 + P@2) / min(3, 2) = (1 + 1) / 2 = 1.0
    # (trec_eval's map_cut would divide by 3 and give 2/3).
    relevance = {"a": 1, "b": 1, "c": 1}
    assert average_precision_at_k(["a", "b", "c"], relevance, 2) == approx(1.0)


def test_ndcg_at_k_with_graded_relevance() -> None:
    # DCG@5  = 1/log2(3) [b at 2] + 2/log2(5) [d at 4] = 0.6309298 + 0.8613531 = 1.4922829
    # IDCG@5 = grades sorted [2, 1, 1]: 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.6309298 + 0.5
    #        = 3.1309298  ->  nDCG@5 = 1.4922829 / 3.1309298 = 0.4766261
    dcg = 1 / LOG2_3 + 2 / math.log2(5)
    idcg = 2 / 1 + 1 / LOG2_3 + 1 / 2
    assert ndcg_at_k(RANKED, RELEVANCE, 5) == approx(dcg / idcg)
    assert ndcg_at_k(RANKED, RELEVANCE, 5) == pytest.approx(0.4766261, abs=1e-6)


def test_ndcg_at_k_cuts_the_ideal_ranking_too() -> None:
    # DCG@2 = 1/log2(3) = 0.6309298; IDCG@2 = 2 + 1/log2(3) = 2.6309298 -> 0.2398125
    assert ndcg_at_k(RANKED, RELEVANCE, 2) == pytest.approx(0.2398125, abs=1e-6)


def test_ndcg_prefers_the_higher_grade_first() -> None:
    relevance = {"hi": 2, "lo": 1}
    # ideal order: (2 + 1/log2(3)) / (2 + 1/log2(3)) = 1.0
    assert ndcg_at_k(["hi", "lo"], relevance, 10) == approx(1.0)
    # swapped: (1 + 2/log2(3)) / (2 + 1/log2(3)) = 2.2618595 / 2.6309298 = 0.8597187
    assert ndcg_at_k(["lo", "hi"], relevance, 10) == pytest.approx(0.8597187, abs=1e-6)


def test_ndcg_gives_no_gain_to_non_positive_grades() -> None:
    # a has grade -1 -> gain 0; b at rank 2: 1/log2(3); IDCG = 1/log2(2) = 1 -> 0.6309298
    assert ndcg_at_k(["a", "b"], {"a": -1, "b": 1}, 10) == approx(1 / LOG2_3)


@pytest.mark.parametrize(
    ("k", "expected"),
    [(None, 1 / 2), (1, 0.0), (2, 1 / 2)],  # first relevant item (b) is at rank 2
)
def test_reciprocal_rank(k: int | None, expected: float) -> None:
    assert reciprocal_rank(RANKED, RELEVANCE, k) == approx(expected)


def test_reciprocal_rank_is_zero_when_nothing_relevant_is_retrieved() -> None:
    assert reciprocal_rank(["a", "c"], RELEVANCE) == 0.0


def test_empty_ranking_scores_zero() -> None:
    assert recall_at_k([], RELEVANCE, 5) == 0.0
    assert average_precision_at_k([], RELEVANCE, 5) == 0.0
    assert ndcg_at_k([], RELEVANCE, 5) == 0.0
    assert reciprocal_rank([], RELEVANCE) == 0.0


class TestDuplicates:
    """Later duplicates are dropped before cutting at k."""

    def test_a_duplicate_does_not_take_a_slot_in_the_top_k(self) -> None:
        # [x, x, a] -> [x, a]: a is at rank 2, inside the top 2.
        ranked = ["x", "x", "a"]
        assert recall_at_k(ranked, {"a": 1}, 2) == 1.0
        assert reciprocal_rank(ranked, {"a": 1}) == approx(1 / 2)

    def test_a_relevant_item_is_counted_once(self) -> None:
        # [a, a, c] -> [a, c]: 1 of {a, b} retrieved -> recall 1/2 (not 2/2).
        assert recall_at_k(["a", "a", "c"], {"a": 1, "b": 1}, 2) == approx(1 / 2)
        # DCG = 1/log2(2) = 1; IDCG = 1 + 1/log2(3) = 1.6309298 -> 0.6131472 (not 1.0).
        assert ndcg_at_k(["a", "a"], {"a": 1, "b": 1}, 10) == approx(1 / (1 + 1 / LOG2_3))
        # P@1 = 1 at a, then nothing: 1 / min(2, 10) = 0.5 (not (1 + 2/2) / 2 = 1.0).
        assert average_precision_at_k(["a", "a"], {"a": 1, "b": 1}, 10) == approx(0.5)


@pytest.mark.parametrize("relevance", [{}, {"a": 0}, {"a": -1, "b": 0}])
@pytest.mark.parametrize(
    "metric",
    [
        lambda r, rel: recall_at_k(r, rel, 5),
        lambda r, rel: hit_rate_at_k(r, rel, 5),
        lambda r, rel: average_precision_at_k(r, rel, 5),
        lambda r, rel: ndcg_at_k(r, rel, 5),
        lambda r, rel: reciprocal_rank(r, rel),
    ],
)
def test_a_query_without_relevant_items_raises(metric, relevance: dict[str, int]) -> None:
    with pytest.raises(InputError, match="No relevant item"):
        metric(["a", "b"], relevance)


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_bad_k_raises(k) -> None:
    with pytest.raises(InputError, match="positive integer"):
        recall_at_k(RANKED, RELEVANCE, k)


class TestEvaluateRankings:
    QRELS = {
        "q1": RELEVANCE,  # the shared example
        "q2": {"z": 1},  # z ranked first
        "q3": {"y": 0},  # no relevant item: skipped
        "q4": {"w": 1},  # no ranking given: scored as an empty ranking
    }
    RANKINGS = {"q1": RANKED, "q2": ["z", "a"], "q3": ["y"], "q9": ["a"]}  # q9 is not judged

    def test_means_over_queries_with_relevant_items(self) -> None:
        metrics = ["recall@5", "hit@1", "map@10", "ndcg@10", "mrr", "mrr@1"]
        result = evaluate_rankings(self.RANKINGS, self.QRELS, metrics)
        assert result["recall@5"] == approx((2 / 3 + 1 + 0) / 3)  # q1 2/3, q2 1, q4 0 -> 5/9
        assert result["hit@1"] == approx((0 + 1 + 0) / 3)
        # q1 (1/2 + 2/4) / min(3, 10) = 1/3, q2 1, q4 0 -> 4/9
        assert result["map@10"] == approx((1 / 3 + 1 + 0) / 3)
        # q1 as nDCG@5 above (ranking shorter than 10), q2 1, q4 0
        assert result["ndcg@10"] == pytest.approx((0.4766261 + 1 + 0) / 3, abs=1e-6)
        assert result["mrr"] == approx((1 / 2 + 1 + 0) / 3)  # -> 1/2
        assert result["mrr@1"] == approx((0 + 1 + 0) / 3)
        assert result["queries"] == 3

    def test_default_metrics(self) -> None:
        result = evaluate_rankings(self.RANKINGS, self.QRELS)
        assert list(result) == [*DEFAULT_METRICS, "queries"]
        assert result["recall@1"] == approx(1 / 3)  # q1 0, q2 1, q4 0

    def test_metric_names_are_case_insensitive_and_kept_as_given(self) -> None:
        result = evaluate_rankings(self.RANKINGS, self.QRELS, ["NDCG@10"])
        assert result["NDCG@10"] == pytest.approx(1.4766261 / 3, abs=1e-6)

    @pytest.mark.parametrize("name", ["precision@5", "recall", "ndcg@", "map@x", "foo", "recall@0"])
    def test_unknown_or_malformed_metric_names_raise(self, name: str) -> None:
        known = r"recall@k, hit@k, map@k, ndcg@k, mrr, mrr@k|positive"
        with pytest.raises(InputError, match=known):
            evaluate_rankings(self.RANKINGS, self.QRELS, [name])

    def test_no_query_with_relevant_items_raises(self) -> None:
        with pytest.raises(InputError, match="nothing to evaluate"):
            evaluate_rankings({"q": ["a"]}, {"q": {"a": 0}, "r": {}})
