"""Retrieval metrics over rankings of item ids and graded relevance judgements.

Conventions shared by every function here:

- ``ranked`` is a sequence of item ids, best first. Repeated ids are ignored after their first
  occurrence (the duplicate is dropped *before* cutting at ``k``), so an item can never be
  counted twice.
- ``relevance`` maps item id -> graded relevance; a grade > 0 means relevant, a grade <= 0 (or an
  id that is absent) means not relevant. Non-positive grades contribute no gain to nDCG.
- ``k`` must be a positive integer; a ``k`` larger than the ranking simply uses the whole ranking.
- A single-query metric called with no relevant item raises :class:`InputError` (the value would
  be undefined); :func:`evaluate_rankings` skips such queries instead and reports how many it
  evaluated.
- Every metric depends on a ranking only through where it put the relevant items
  (:class:`Found`), so a ranking held as an array of a million item rows is scored from the
  positions of its judged items (:func:`parse_found_metric`, :func:`score_found`) without
  listing its ids.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from mmrank.errors import InputError

Relevance = Mapping[str, int]

DEFAULT_METRICS = ("recall@1", "recall@5", "recall@10", "map@10", "ndcg@10", "mrr")


def _check_k(k: int | None, name: str = "k") -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InputError(f"{name} must be a positive integer, got {k!r}.")


class Found(NamedTuple):
    """Where a ranking put a query's relevant items (grade > 0): their 1-based ranks, ascending,
    and their grades. Every metric here is a function of this and the judgements, so a ranking
    held as an array (:func:`mmrank.columns.positions`) is scored without listing its ids."""

    ranks: tuple[int, ...] = ()
    grades: tuple[int, ...] = ()


def found_in(ranked: Sequence[str], relevance: Relevance) -> Found:
    """The :class:`Found` of a ranking of ids (repeated ids count at their first rank only)."""
    ranks, grades = [], []
    for rank, item_id in enumerate(dict.fromkeys(ranked), start=1):
        grade = relevance.get(item_id, 0)
        if grade > 0:
            ranks.append(rank)
            grades.append(grade)
    return Found(tuple(ranks), tuple(grades))


def _relevant_count(relevance: Relevance) -> int:
    count = sum(grade > 0 for grade in relevance.values())
    if not count:
        raise InputError(
            "No relevant item (grade > 0) among the judgements: the metric is undefined."
        )
    return count


def _within(found: Found, k: int | None) -> tuple[int, ...]:
    """The ranks of ``found`` that are at most ``k`` (all of them for None)."""
    return found.ranks if k is None else tuple(rank for rank in found.ranks if rank <= k)


def _recall(found: Found, relevance: Relevance, k: int) -> float:
    return len(_within(found, k)) / _relevant_count(relevance)


def _hit(found: Found, relevance: Relevance, k: int) -> float:
    _relevant_count(relevance)
    return float(bool(_within(found, k)))


def _precision_sum(found: Found, k: int | None) -> float:
    """The sum of precision@i over the ranks i <= k (all ranks for None) that hold a relevant item."""
    return sum(hits / rank for hits, rank in enumerate(_within(found, k), start=1))


def _average_precision(found: Found, relevance: Relevance, k: int | None) -> float:
    return _precision_sum(found, k) / _relevant_count(relevance)


def _average_precision_min(found: Found, relevance: Relevance, k: int) -> float:
    return _precision_sum(found, k) / min(_relevant_count(relevance), k)


def _revisited_average_precision(found: Found, relevance: Relevance, k: int | None) -> float:
    total = 0.0
    for before_count, rank in enumerate(_within(found, k)):
        position = rank - 1
        before = 1.0 if position == 0 else before_count / position
        total += (before + (before_count + 1) / (position + 1)) / 2
    return total / _relevant_count(relevance)


def _revisited_precision(found: Found, relevance: Relevance, k: int) -> float:
    hits = _within(found, k)
    cut = hits[-1] if len(hits) == _relevant_count(relevance) else k
    return len(hits) / cut


def _ndcg(found: Found, relevance: Relevance, k: int) -> float:
    _relevant_count(relevance)
    gains = sum(grade / math.log2(rank + 1) for rank, grade in zip(found.ranks, found.grades) if rank <= k)
    ideal = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)[:k]
    return gains / _dcg(ideal)


def _reciprocal_rank(found: Found, relevance: Relevance, k: int | None) -> float:
    _relevant_count(relevance)
    first = _within(found, k)[:1]
    return 1.0 / first[0] if first else 0.0


def _on_ranking(measure: Callable[[Found, Relevance, int | None], float], ranked: Sequence[str],
                relevance: Relevance, k: int | None, *, needs_k: bool = True) -> float:
    if needs_k or k is not None:
        _check_k(k)
    return measure(found_in(ranked, relevance), relevance, k)


def recall_at_k(ranked: Sequence[str], relevance: Relevance, k: int) -> float:
    """Recall@k = |relevant ∩ top-k| / |relevant|."""
    return _on_ranking(_recall, ranked, relevance, k)


def hit_rate_at_k(ranked: Sequence[str], relevance: Relevance, k: int) -> float:
    """Hit@k = 1.0 if any relevant item is in the top k, else 0.0."""
    return _on_ranking(_hit, ranked, relevance, k)


def average_precision_at_k(ranked: Sequence[str], relevance: Relevance, k: int | None) -> float:
    """AP@k as trec_eval's ``map_cut_k`` computes it (and BEIR and MTEB report as MAP@k,
    ir-measures as AP@k, ranx as map@k): the sum of precision@i over the ranks i <= k that hold a
    relevant item, divided by |relevant|.

    ``k=None`` (metric name ``map``) is trec_eval's ``map``: the same over the whole ranking,
    relevant items never retrieved adding 0. CIRCO divides by min(|relevant|, k) instead
    (:func:`average_precision_min_at_k`); Revisited Oxford/Paris integrate with trapezoids
    (:func:`revisited_average_precision`).
    """
    return _on_ranking(_average_precision, ranked, relevance, k, needs_k=False)


def average_precision_min_at_k(ranked: Sequence[str], relevance: Relevance, k: int) -> float:
    """AP@k divided by min(|relevant|, k) instead of |relevant| (metric name ``map_min@k``): the
    mAP@k of CIRCO's official evaluation, which a query with more relevant items than ``k`` can
    reach in full. Equal to :func:`average_precision_at_k` when |relevant| <= k."""
    return _on_ranking(_average_precision_min, ranked, relevance, k)


def revisited_average_precision(
    ranked: Sequence[str], relevance: Relevance, k: int | None = None
) -> float:
    """AP as the Revisited Oxford/Paris evaluation computes it (``compute_ap`` in
    filipradenovic/revisitop ``python/evaluate.py``): the precision-recall curve integrated with
    trapezoids.

    The j-th retrieved relevant item (j = 0, 1, ...) at 0-based rank r adds
    ``(j / r + (j + 1) / (r + 1)) / 2 / |relevant|``, with ``j / r`` taken as 1 when r = 0;
    relevant items never retrieved add 0. Ignored ("junk") items must already be removed from
    ``ranked`` (``score_judgements`` does). ``k`` cuts the ranking first (metric ``rmap@k``); the
    denominator stays |relevant|.
    """
    return _on_ranking(_revisited_average_precision, ranked, relevance, k, needs_k=False)


def revisited_precision_at_k(ranked: Sequence[str], relevance: Relevance, k: int) -> float:
    """mP@k of the Revisited Oxford/Paris evaluation (``compute_map`` in revisitop): precision
    at ``k' = min(k, rank of the last relevant item)``, so a query whose relevant items all sit
    above rank k is not charged for the slots after them.

    A relevant item missing from ``ranked`` counts as ranked below k (as in the official code,
    which ranks the whole database, whenever the ranking holds at least k items). Ignored items
    must already be removed from ``ranked``.
    """
    return _on_ranking(_revisited_precision, ranked, relevance, k)


def ndcg_at_k(ranked: Sequence[str], relevance: Relevance, k: int) -> float:
    """nDCG@k = DCG@k / IDCG@k with DCG@k = sum_{i=1..k} rel_i / log2(i + 1).

    ``rel_i`` is the grade of the item at rank i (0 when unjudged or <= 0): the linear gain of
    trec_eval and BEIR. IDCG@k is the DCG@k of the judged grades sorted in decreasing order.
    """
    return _on_ranking(_ndcg, ranked, relevance, k)


def _dcg(gains: Sequence[int]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def reciprocal_rank(ranked: Sequence[str], relevance: Relevance, k: int | None = None) -> float:
    """RR@k = 1 / (rank of the first relevant item), or 0.0 if none is in the top k.

    ``k=None`` looks at the whole ranking (plain reciprocal rank).
    """
    return _on_ranking(_reciprocal_rank, ranked, relevance, k, needs_k=False)


QueryMetric = Callable[[Sequence[str], Relevance], float]
FoundMetric = Callable[[Found, Relevance], float]

_MEASURES: dict[str, Callable[[Found, Relevance, int | None], float]] = {
    "recall": _recall,
    "hit": _hit,
    "map": _average_precision,
    "map_min": _average_precision_min,
    "ndcg": _ndcg,
    "mrr": _reciprocal_rank,
    "rmap": _revisited_average_precision,
    "mp": _revisited_precision,
}
_CUTOFF_OPTIONAL = frozenset({"map", "rmap", "mrr"})
_METRIC_NAME = re.compile(r"^(?P<base>[a-z_]+)(?:@(?P<k>\d+))?$")


def parse_metric(name: str) -> QueryMetric:
    """Turn a name such as ``recall@10``, ``hit@1``, ``map@5``, ``map``, ``map_min@5``,
    ``ndcg@10``, ``mrr``, ``mrr@10``, ``rmap`` or ``mp@5`` into a per-query function
    ``(ranked, relevance) -> float``.

    The generic names compute what trec_eval computes (``recall_k``, ``success_k``,
    ``map_cut_k``, ``map``, ``ndcg_cut_k``, ``recip_rank``); ``map_min@k`` is CIRCO's mAP@k;
    ``rmap`` and ``mp@k`` are the Revisited Oxford/Paris AP and mP@k
    (:func:`revisited_average_precision`, :func:`revisited_precision_at_k`)."""
    measure = parse_found_metric(name)
    return lambda ranked, relevance: measure(found_in(ranked, relevance), relevance)


def parse_found_metric(name: str) -> FoundMetric:
    """:func:`parse_metric` for a ranking already reduced to its :class:`Found`:
    ``(found, relevance) -> float``."""
    known = "recall@k, hit@k, map@k, map_min@k, ndcg@k, mrr, mrr@k, map, rmap, rmap@k, mp@k"
    match = _METRIC_NAME.match(name.strip().lower())
    if match is None or match["base"] not in _MEASURES:
        raise InputError(f"Unknown metric {name!r}: expected one of {known}.")
    base, k = match["base"], match["k"]
    if k is None and base not in _CUTOFF_OPTIONAL:
        raise InputError(f"Metric {name!r} needs a cutoff, e.g. {base}@10 (known: {known}).")
    cutoff = None if k is None else int(k)
    _check_k(cutoff, name=f"The cutoff in {name!r}")
    measure = _MEASURES[base]
    return lambda found, relevance: measure(found, relevance, cutoff)


# What each metric computes, with a cutoff k and (where allowed) over the whole ranking.
_DEFINITIONS = {
    "recall": ("trec_eval recall_{k}: relevant items in the top {k} / relevant items", None),
    "hit": ("trec_eval success_{k}: 1 when a relevant item is in the top {k}, else 0", None),
    "map": ("trec_eval map_cut_{k}: sum of precision at each relevant item in the top {k} / relevant items",
            "trec_eval map: sum of precision at each relevant item / relevant items"),
    "map_min": ("CIRCO mAP@{k}: sum of precision at each relevant item in the top {k} "
                "/ min(relevant items, {k})", None),
    "ndcg": ("trec_eval ndcg_cut_{k}: DCG@{k} / ideal DCG@{k}, gain = grade", None),
    "mrr": ("1 / rank of the first relevant item in the top {k}, else 0",
            "trec_eval recip_rank: 1 / rank of the first relevant item in the ranking as deep as it "
            "was evaluated (mmrank eval: 100 unless -k asks more), else 0"),
    "rmap": ("revisitop compute_ap over the top {k}: average precision, trapezoid interpolation",
             "revisitop compute_ap: average precision, trapezoid interpolation"),
    "mp": ("revisitop mP@{k}: precision at min({k}, rank of the last relevant item)", None),
}


def describe_metric(name: str) -> str:
    """What the metric ``name`` computes, in one line, naming the evaluator it agrees with (for
    reports and results files). A ``prefix/`` (protocol, group) is allowed."""
    base_name = name.rpartition("/")[2].strip().lower()
    parse_found_metric(base_name)
    match = _METRIC_NAME.match(base_name)
    with_cutoff, whole = _DEFINITIONS[match["base"]]
    return whole if match["k"] is None else with_cutoff.format(k=match["k"])


AVERAGING = ("relevant", "trec_eval")


def score_queries(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Relevance],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    averaging: str = "relevant",
) -> dict[str, dict[str, float]]:
    """Each metric's value per query (metric name -> query id -> value). Rankings for queries
    absent from ``qrels`` are ignored. Which judged queries count depends on ``averaging``:

    - ``"relevant"``: the queries of ``qrels`` with at least one relevant item; a judged query
      missing from ``rankings`` counts as an empty ranking (it scores 0);
    - ``"trec_eval"``: as pytrec_eval evaluates (and BEIR and MTEB average): the queries both in
      ``qrels`` and in ``rankings`` (an empty ranking included); a query whose judgements hold no
      relevant item scores 0 on every metric.
    """
    counted = counted_queries(rankings, qrels, averaging)
    return score_found({qid: found_in(rankings.get(qid, ()), rel) for qid, rel in counted.items()},
                       counted, metrics)


def score_found(found: Mapping[str, Found], qrels: Mapping[str, Relevance],
                metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each metric's value (metric name -> query id -> value) for every query of ``qrels`` (the
    queries to count, see :func:`counted_queries`), from where its ranking put its relevant items
    (a query missing from ``found`` found none); a query with no relevant item scores 0."""
    measures = {name: parse_found_metric(name) for name in metrics}
    nothing = Found()
    return {name: {qid: measure(found.get(qid, nothing), rel) if _has_relevant(rel) else 0.0
                   for qid, rel in qrels.items()}
            for name, measure in measures.items()}


def counted_queries(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Relevance],
                    averaging: str = "relevant") -> dict[str, Relevance]:
    """The judged queries that ``averaging`` counts (see :func:`score_queries`), with their
    judgements; an InputError when there is none."""
    if averaging not in AVERAGING:
        raise InputError(f"averaging must be one of {', '.join(AVERAGING)}; got {averaging!r}.")
    if averaging == "trec_eval":
        counted = {qid: rel for qid, rel in qrels.items() if qid in rankings}
        if not counted:
            raise InputError("No judged query has a ranking: nothing to evaluate.")
        return counted
    counted = {qid: rel for qid, rel in qrels.items() if _has_relevant(rel)}
    if not counted:
        raise InputError("No query in the qrels has a relevant item (grade > 0): nothing to evaluate.")
    return counted


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Relevance],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    averaging: str = "relevant",
) -> dict[str, float]:
    """Mean of each metric over the queries that ``averaging`` counts (see
    :func:`score_queries`). Keys are the metric names as given, plus ``"queries"``: the number of
    queries averaged over."""
    per_query = score_queries(rankings, qrels, metrics, averaging=averaging)
    results = {name: sum(values.values()) / len(values) for name, values in per_query.items()}
    results["queries"] = len(counted_queries(rankings, qrels, averaging))
    return results


def _has_relevant(relevance: Relevance) -> bool:
    return any(grade > 0 for grade in relevance.values())
