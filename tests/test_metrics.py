"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from mmrank.errors import InputError
from mmrank.metrics import (
    DEFAULT_METRICS,
    average_precision_at_k,
    average_precision_min_at_k,
    evaluate_rankings,
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    parse_metric,
    reciprocal_rank,
    revisited_average_precision,
    revisited_precision_at_k,
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
        (1, 0.0),  # nothing relevant in the top 1
        (2, (1 / 2) / 3),  # P@2 = 1/2 at b; divided by |relevant| = 3 (trec_eval's map_cut_2)
        (5, (1 / 2 + 2 / 4) / 3),  # P@2 = 1/2 at b, P@4 = 2/4 at d; / 3 -> 1/3
        (10, (1 / 2 + 2 / 4) / 3),  # k beyond the ranking: same as @5
    ],
)
def test_average_precision_at_k(k: int, expected: float) -> None:
    assert average_precision_at_k(RANKED, RELEVANCE, k) == approx(expected)
    assert parse_metric(f"map@{k}")(RANKED, RELEVANCE) == approx(expected)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 0.0),  # nothing relevant in the top 1; divided by min(3, 1) = 1
        (2, (1 / 2) / 2),  # P@2 = 1/2 at b; divided by min(3, 2) = 2 -> 0.25
        (5, (1 / 2 + 2 / 4) / 3),  # min(3, 5) = 3 -> 1/3, as map@5
    ],
)
def test_average_precision_min_at_k_is_circos_normalisation(k: int, expected: float) -> None:
    assert average_precision_min_at_k(RANKED, RELEVANCE, k) == approx(expected)
    assert parse_metric(f"map_min@{k}")(RANKED, RELEVANCE) == approx(expected)


def test_map_at_k_divides_by_all_relevant_items_and_map_min_by_min_of_relevant_and_k() -> None:
    # 3 relevant, k = 2, both top-2 relevant: (P@1 + P@2) = 2; trec_eval's map_cut_2 (map@2)
    # divides by 3, CIRCO's mAP@2 (map_min@2) by min(3, 2) = 2.
    relevance = {"a": 1, "b": 1, "c": 1}
    assert average_precision_at_k(["a", "b", "c"], relevance, 2) == approx(2 / 3)
    assert average_precision_min_at_k(["a", "b", "c"], relevance, 2) == approx(1.0)


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
        known = r"recall@k, hit@k, map@k, map_min@k, ndcg@k, mrr, mrr@k|positive"
        with pytest.raises(InputError, match=known):
            evaluate_rankings(self.RANKINGS, self.QRELS, [name])

    def test_no_query_with_relevant_items_raises(self) -> None:
        with pytest.raises(InputError, match="nothing to evaluate"):
            evaluate_rankings({"q": ["a"]}, {"q": {"a": 0}, "r": {}})


# --- plain AP over the whole ranking, and the Revisited Oxford/Paris metrics -------------------


def test_map_without_cutoff_is_plain_average_precision() -> None:
    # b at rank 2 (P = 1/2), d at rank 4 (P = 2/4), x never retrieved (adds 0): (1/2 + 1/2) / 3
    assert average_precision_at_k(RANKED, RELEVANCE, None) == approx(1 / 3)
    assert parse_metric("map")(RANKED, RELEVANCE) == approx(1 / 3)


def test_map_without_cutoff_divides_by_all_relevant_items() -> None:
    # 3 relevant, only a and b retrieved, at ranks 1 and 2: (1 + 1) / 3 (map@2 would give 1.0)
    relevance = {"a": 1, "b": 1, "c": 1}
    assert parse_metric("map")(["a", "b"], relevance) == approx(2 / 3)
    assert parse_metric("map_min@2")(["a", "b"], relevance) == approx(1.0)


def test_rmap_integrates_the_precision_recall_curve_with_trapezoids() -> None:
    # Positives of RELEVANCE: b (0-based rank 1), d (rank 3), x (never retrieved); npos = 3.
    # j=0, r=1: (0/1 + 1/2) / 2 = 1/4;  j=1, r=3: (1/3 + 2/4) / 2 = 5/12;  x adds 0.
    # (1/4 + 5/12) / 3 = (8/12) / 3 = 2/9
    assert revisited_average_precision(RANKED, RELEVANCE) == approx(2 / 9)
    assert parse_metric("rmap")(RANKED, RELEVANCE) == approx(2 / 9)


def test_rmap_takes_precision_before_the_first_rank_as_one() -> None:
    # p at r=0: (1 + 1/1) / 2 = 1;  q at r=2: (1/2 + 2/3) / 2 = 7/12  ->  (1 + 7/12) / 2 = 19/24
    # plain AP of the same ranking: (1/1 + 2/3) / 2 = 20/24
    ranked, relevance = ["p", "n", "q"], {"p": 1, "q": 1}
    assert revisited_average_precision(ranked, relevance) == approx(19 / 24)
    assert average_precision_at_k(ranked, relevance, None) == approx(20 / 24)


def test_rmap_with_a_cutoff_keeps_all_positives_in_the_denominator() -> None:
    # rmap@2 of [p, n, q]: only p (r=0) counts: 1 / 2 positives
    assert parse_metric("rmap@2")(["p", "n", "q"], {"p": 1, "q": 1}) == approx(1 / 2)


def test_rmap_counts_a_repeated_positive_once() -> None:
    # [p, p, q] -> [p, q]: r=0: 1;  r=1: (1/1 + 2/2) / 2 = 1  ->  (1 + 1) / 2 = 1.0
    assert revisited_average_precision(["p", "p", "q"], {"p": 1, "q": 1}) == approx(1.0)


def test_removing_junk_before_scoring_moves_the_positives_up() -> None:
    # With junk j still in place, positives p, q sit at r=1 and r=3:
    #   (0/1 + 1/2) / 2 = 1/4;  (1/3 + 2/4) / 2 = 5/12  ->  (1/4 + 5/12) / 2 = 1/3.
    # With j removed, the ranking is [p, n, q]: 19/24 as above.
    relevance = {"p": 1, "q": 1}
    with_junk = ["j", "p", "n", "q"]
    assert revisited_average_precision(with_junk, relevance) == approx(1 / 3)
    assert revisited_average_precision([i for i in with_junk if i != "j"], relevance) == approx(19 / 24)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 0 / 1),  # top-1 = [a]; not every positive in it: divide by k = 1
        (5, 2 / 5),  # b, d in the top 5, x never retrieved (counts as below 5): 2 / 5
        (10, 2 / 10),  # x still missing: divide by k = 10
    ],
)
def test_mp_at_k_divides_by_k_while_a_positive_is_below_k(k: int, expected: float) -> None:
    assert revisited_precision_at_k(RANKED, RELEVANCE, k) == approx(expected)
    assert parse_metric(f"mp@{k}")(RANKED, RELEVANCE) == approx(expected)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 0 / 1),  # top-1 = [a]
        (3, 1 / 3),  # p at 2 is in the top 3, q at 4 is not: 1 / 3
        (5, 2 / 4),  # both positives by rank 4: precision at rank 4 = 2 / 4 (P@5 would be 2 / 5)
        (10, 2 / 4),  # same: the slots after the last positive are not charged
    ],
)
def test_mp_at_k_stops_at_the_last_positive(k: int, expected: float) -> None:
    ranked = ["a", "p", "b", "q", "c", "d"]
    assert revisited_precision_at_k(ranked, {"p": 1, "q": 1}, k) == approx(expected)


def test_revisited_metrics_of_an_empty_ranking_are_zero() -> None:
    assert revisited_average_precision([], RELEVANCE) == 0.0
    assert revisited_precision_at_k([], RELEVANCE, 5) == 0.0


@pytest.mark.parametrize(
    "metric",
    [
        lambda r, rel: revisited_average_precision(r, rel),
        lambda r, rel: revisited_precision_at_k(r, rel, 5),
    ],
)
def test_revisited_metrics_without_relevant_items_raise(metric) -> None:
    with pytest.raises(InputError, match="No relevant item"):
        metric(["a"], {"a": 0})


@pytest.mark.parametrize("name", ["recall", "hit", "ndcg", "mp"])
def test_metrics_other_than_map_rmap_mrr_still_need_a_cutoff(name: str) -> None:
    with pytest.raises(InputError, match=rf"Metric '{name}' needs a cutoff, e\.g\. {name}@10"):
        parse_metric(name)


def test_revisited_metrics_average_over_queries() -> None:
    # q1: rmap 2/9, mp@5 2/5 (above); q2: z first -> rmap (1 + 1) / 2 / 1 = 1, mp@5 1/1 = 1
    rankings = {"q1": RANKED, "q2": ["z", "a"]}
    qrels = {"q1": RELEVANCE, "q2": {"z": 1}}
    result = evaluate_rankings(rankings, qrels, ["rmap", "mp@5", "map"])
    assert result == {
        "rmap": approx((2 / 9 + 1) / 2),
        "mp@5": approx((2 / 5 + 1) / 2),
        "map": approx((1 / 3 + 1) / 2),
        "queries": 2,
    }


# --- definitions, and which queries the means count ---------------------------------------------


def test_every_metric_name_has_a_definition_naming_its_evaluator() -> None:
    from mmrank.metrics import describe_metric

    assert describe_metric("map@10") == (
        "trec_eval map_cut_10: sum of precision at each relevant item in the top 10 / relevant items")
    assert describe_metric("map_min@5").startswith("CIRCO mAP@5:")
    assert describe_metric("easy/rmap") == "revisitop compute_ap: average precision, trapezoid interpolation"
    assert describe_metric("macro/recall@3") == "trec_eval recall_3: relevant items in the top 3 / relevant items"
    with pytest.raises(InputError, match="Unknown metric 'p@5'"):
        describe_metric("p@5")


def test_trec_eval_averaging_counts_judged_queries_with_a_ranking_and_zero_grade_queries_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 1}}
    rankings = {"q1": ["a"], "q2": ["b"], "q4": ["a"]}  # q3 not run, q4 not judged
    relevant_rule = evaluate_rankings(rankings, qrels, ["recall@1"])
    assert relevant_rule == {"recall@1": approx((1 + 0) / 2), "queries": 2}  # q1 and q3 (scored 0)
    trec_rule = evaluate_rankings(rankings, qrels, ["recall@1"], averaging="trec_eval")
    assert trec_rule == {"recall@1": approx((1 + 0) / 2), "queries": 2}  # q1 and q2 (scored 0)
    assert evaluate_rankings({"q1": ["a"], "q2": []}, qrels, ["mrr"], averaging="trec_eval") == {
        "mrr": approx(1 / 2), "queries": 2}
    with pytest.raises(InputError, match="averaging must be one of relevant, trec_eval; got 'beir'"):
        evaluate_rankings(rankings, qrels, averaging="beir")
    with pytest.raises(InputError, match="No judged query has a ranking"):
        evaluate_rankings({"q9": ["a"]}, qrels, averaging="trec_eval")
