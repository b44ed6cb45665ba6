"""Evaluating a pipeline on a dataset: metrics and latency after every stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmrank.collection import Collection
from mmrank.datasets import RetrievalDataset
from mmrank.datasets.base import Judgements
from mmrank.errors import InputError
from mmrank.indexing import ItemEncoder
from mmrank.metrics import counted_queries, parse_metric, score_queries
from mmrank.pipeline import Pipeline
from mmrank.types import Ranking

DEFAULT_METRICS = ("recall@1", "recall@5", "recall@10", "map@10", "ndcg@10", "mrr")


@dataclass(frozen=True)
class StageReport:
    """Metrics of the ranking as one stage left it, and that stage's mean latency per query."""

    stage: str
    metrics: dict[str, float]
    latency_ms: float


def add_dataset_items(collection: Collection, dataset: RetrievalDataset, encoder: ItemEncoder,
                      *, batch_size: int = 256, progress: bool = False) -> int:
    """Encode and store the dataset's items that the collection lacks (so an interrupted build
    resumes), holding the collection's writer lock; returns how many were added."""
    from tqdm.auto import tqdm

    with collection.writing():
        present = collection.get_many(item.id for item in dataset.items)
        missing = [item for item in dataset.items if item.id not in present]
        for start in tqdm(range(0, len(missing), batch_size), desc="Encoding corpus", disable=not progress):
            batch = missing[start:start + batch_size]
            collection.add(batch, encoder.encode(batch, collection))
        collection.build_indexes()
    return len(missing)


def ranking_depth(metrics: list[str], items: int, full: bool = False) -> int:
    """How deep rankings must go for these metrics: every item when one has no cutoff, or when
    ``full`` (a dataset that scores rankings restricted to a subset of the items)."""
    cutoffs = [name.partition("@")[2] for name in metrics]
    if full or any(not cutoff and not name.startswith("mrr") for name, cutoff in zip(metrics, cutoffs)):
        return max(1, items)
    return max([100, *(int(c) for c in cutoffs if c.isdigit())])


def evaluate(pipeline: Pipeline, dataset: RetrievalDataset, metrics: Sequence[str] | None = None,
             *, k: int | None = None, batch_size: int = 64, progress: bool = False,
             on_batch: Callable[[Sequence[Ranking]], None] | None = None,
             save_runs: str | Path | None = None) -> list[StageReport]:
    """Run every query (``batch_size`` at a time through the first stage) and score the order after
    each stage (first stage, then each reranker); latency is the mean time per query per stage.

    ``metrics`` defaults to the dataset's own, else :data:`DEFAULT_METRICS`; they, and the
    judgement sets' own metrics, are checked before any query runs. Rankings go ``k`` deep; by
    default as deep as the metrics need (:func:`ranking_depth`: every item for a metric without a
    cutoff such as ``map`` or ``rmap``, and for datasets that score within a subset of the items,
    as CIRR's Recall_subset@k does), exactly as ``mmrank eval`` ranks. A smaller ``k`` cuts every
    ranking there, and metrics that look deeper see only that much. Ignored items are dropped
    before scoring; protocols, per-group (macro) means and per-group values are reported as the
    dataset asks (see :class:`RetrievalDataset`). A protocol with no judged query reports only
    ``<protocol>/queries`` = 0.

    ``on_batch``, when given, is called with each batch's final rankings (as
    :meth:`Pipeline.search_batch` returns them), e.g. to write a submission without keeping
    every ranking here.

    ``save_runs``, a folder, receives what was scored as TREC files (:mod:`mmrank.trec_files`):
    per judgement set, ``[<protocol>.]qrels.txt`` (the judgements of the queries the means count)
    and ``[<protocol>.]<stage>.run`` per stage (the rankings as scored: ignored items removed,
    kept to a query's subset where the set has one). ``trec_eval -c -m <measure> qrels run``
    prints the same means for the generic metrics.
    """
    from tqdm.auto import tqdm

    metrics = list(metrics or dataset.metrics or DEFAULT_METRICS)
    judgement_sets = dataset.judgements()
    own = [m for judgements in judgement_sets.values() for m in judgements.metrics]
    for name in [*metrics, *own]:
        parse_metric(name)
    k = k or ranking_depth([*metrics, *own], len(dataset.items), full=dataset.needs_full_ranking)
    orders: dict[str, dict[str, list[str]]] = {}
    seconds: dict[str, float] = {}
    with tqdm(total=len(dataset.queries), desc="Queries", disable=not progress) as bar:
        for start in range(0, len(dataset.queries), batch_size):
            batch = dataset.queries[start:start + batch_size]
            rankings = pipeline.search_batch(batch, k, snippets=False)
            for query, ranking in zip(batch, rankings):
                for stage, spent in ranking.timings.items():
                    orders.setdefault(stage, {})[query.id] = ranking.order_after(stage)
                    seconds[stage] = seconds.get(stage, 0.0) + spent
            if on_batch is not None:
                on_batch(rankings)
            bar.update(len(batch))
    if save_runs is not None:
        _save_runs(Path(save_runs), orders, judgement_sets, pipeline)
    groups = _groups(dataset)
    count = max(1, len(dataset.queries))
    reports = []
    for stage, order in orders.items():
        values: dict[str, float] = {}
        for prefix, judgements in judgement_sets.items():
            values.update(score_judgements(order, judgements, metrics, groups, prefix,
                                           report_groups=dataset.report_groups))
        reports.append(StageReport(stage, values, 1000 * seconds[stage] / count))
    return reports


def score_judgements(rankings: dict[str, list[str]], judgements: Judgements, metrics: Sequence[str],
                     groups: dict[str, str] | None = None, prefix: str = "", *,
                     report_groups: bool = False) -> dict[str, float]:
    """Mean metrics of ``rankings`` under one judgement set, ignored items removed first, then
    each ranking restricted to the query's ``within`` ids when it has some; the set's own
    ``metrics``, when it has any, replace ``metrics``. With ``groups`` (query id -> group), also
    the mean of the per-group means as ``macro/<metric>``, and with ``report_groups`` each
    group's mean as ``<group>/<metric>``. Keys carry ``prefix + "/"`` when a prefix is given;
    ``queries`` counts the scored queries (with none, it is the only key)."""
    if judgements.averaging == "relevant" and not any(
            any(grade > 0 for grade in relevance.values()) for relevance in judgements.qrels.values()):
        return {f"{prefix}/queries" if prefix else "queries": 0}
    per_query = score_queries(scored_rankings(rankings, judgements), judgements.qrels,
                              judgements.metrics or metrics, averaging=judgements.averaging)
    results: dict[str, float] = {}
    for name, values in per_query.items():
        results[name] = sum(values.values()) / len(values)
        if groups:
            by_group: dict[str, list[float]] = {}
            for qid, value in values.items():
                by_group.setdefault(groups[qid], []).append(value)
            results[f"macro/{name}"] = sum(sum(v) / len(v) for v in by_group.values()) / len(by_group)
            if report_groups:
                for group, group_values in by_group.items():
                    results[f"{group}/{name}"] = sum(group_values) / len(group_values)
    results["queries"] = len(next(iter(per_query.values()), {}))
    return {f"{prefix}/{key}" if prefix else key: value for key, value in results.items()}


def scored_rankings(rankings: dict[str, list[str]], judgements: Judgements) -> dict[str, list[str]]:
    """``rankings`` as ``judgements`` score them: each query's ignored ids removed, and kept to its
    ``within`` ids when it has some."""
    return {qid: _restricted(order, judgements.ignored.get(qid, ()), judgements.within.get(qid))
            for qid, order in rankings.items()}


def _restricted(order: list[str], ignored: frozenset[str] | tuple, within: frozenset[str] | None) -> list[str]:
    """``order`` less the ignored ids, and kept to the ``within`` ids when given."""
    return [i for i in order if i not in ignored and (within is None or i in within)]


def _save_runs(folder: Path, orders: dict[str, dict[str, list[str]]], judgement_sets: dict[str, Judgements],
               pipeline: Pipeline) -> None:
    from mmrank.trec_files import file_name, write_qrels, write_run

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, judgements in judgement_sets.items():
        start = f"{file_name(prefix)}." if prefix else ""
        ranked = next(iter(orders.values()), {})  # which queries count depends only on which were ranked
        try:
            counted = counted_queries(ranked, judgements.qrels, judgements.averaging)
        except InputError:  # no query this set can score: an empty qrels file
            counted = {}
        write_qrels(folder / f"{start}qrels.txt", counted)
        for stage, order in orders.items():
            write_run(folder / f"{start}{file_name(stage)}.run", scored_rankings(order, judgements),
                      tag=file_name(f"{pipeline.name or 'mmrank'}-{stage}"))


@dataclass
class SubmissionRankings:
    """An ``on_batch`` callback for :func:`evaluate` that keeps what a submission needs: per
    query, the final ``depth`` first ids and, in ranking order, any lower-ranked id of the
    query's ``within`` sets (CIRR's image set), in ``rankings`` (query id -> ids)."""

    dataset: RetrievalDataset
    depth: int = 50
    rankings: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._within: dict[str, frozenset[str]] = {}
        for judgements in self.dataset.judgements().values():
            for qid, ids in judgements.within.items():
                self._within[qid] = self._within.get(qid, frozenset()) | ids

    def __call__(self, rankings: Sequence[Ranking]) -> None:
        for ranking in rankings:
            ids = ranking.ids
            wanted = self._within.get(ranking.query.id, frozenset())
            self.rankings[ranking.query.id] = ids[:self.depth] + [i for i in ids[self.depth:] if i in wanted]


def _groups(dataset: RetrievalDataset) -> dict[str, str] | None:
    if dataset.group_by is None:
        return None
    return {query.id: str(query.metadata.get(dataset.group_by, "")) for query in dataset.queries}
