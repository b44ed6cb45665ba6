"""Evaluating a pipeline on a dataset: metrics and latency after every stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Collection as Collection_
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrank.collection import Collection
from mmrank.columns import ItemTable, RowOrder
from mmrank.datasets import RetrievalDataset
from mmrank.datasets.base import Judgements
from mmrank.errors import InputError
from mmrank.indexing import ItemEncoder
from mmrank.ingest import Skipped
from mmrank.metrics import Found, counted_queries, found_in, parse_metric, score_found
from mmrank.pipeline import Pipeline, RankedRows

DEFAULT_METRICS = ("recall@1", "recall@5", "recall@10", "map@10", "ndcg@10", "mrr")


@dataclass(frozen=True)
class StageReport:
    """Metrics of the ranking as one stage left it, and that stage's mean latency per query."""

    stage: str
    metrics: dict[str, float]
    latency_ms: float


def add_dataset_items(collection: Collection, dataset: RetrievalDataset, encoder: ItemEncoder,
                      *, batch_size: int = 256, progress: bool = False,
                      skipped: list[Skipped] | None = None) -> int:
    """Encode and store the dataset's items that the collection lacks (so an interrupted build
    resumes), holding the collection's writer lock; returns how many were added. A batch that
    fails to encode is encoded item by item, and an item that cannot be (a page image that does
    not open, a page the model gives no vector for) is left out and appended to ``skipped``, as
    ``mmrank index`` skips a bad page."""
    from tqdm.auto import tqdm

    from mmrank.indexing import RUN_ERRORS, encode_one_by_one, merged

    added = 0
    with collection.writing():
        present = collection.get_many(item.id for item in dataset.items)
        missing = [item for item in dataset.items if item.id not in present]
        for start in tqdm(range(0, len(missing), batch_size), desc="Encoding corpus", disable=not progress):
            batch = missing[start:start + batch_size]
            try:
                vectors = encoder.encode(batch, collection)
            except RUN_ERRORS:
                raise
            except Exception:  # find the items that fail; the others go in
                batch, parts, failed = encode_one_by_one(batch, lambda some: encoder.encode(some, collection))
                vectors = merged(parts)
                if skipped is not None:
                    skipped.extend(failed)
            if batch:
                collection.add(batch, vectors)
                added += len(batch)
        collection.build_indexes()
    return added


PAIRS_PER_BATCH = 1 << 23


def deep_batch(batch_size: int, depth: int) -> int:
    """How many queries to rank at once, ``depth`` deep: ``batch_size``, fewer when that would
    hold more than :data:`PAIRS_PER_BATCH` (8.4M) (query, item) pairs in memory at once."""
    return max(1, min(batch_size, PAIRS_PER_BATCH // max(1, depth)))


def ranking_depth(metrics: list[str], items: int, full: bool = False) -> int:
    """How deep rankings must go for these metrics: every item when one has no cutoff, or when
    ``full`` (a dataset that scores rankings restricted to a subset of the items)."""
    cutoffs = [name.partition("@")[2] for name in metrics]
    if full or any(not cutoff and not name.startswith("mrr") for name, cutoff in zip(metrics, cutoffs)):
        return max(1, items)
    return max([100, *(int(c) for c in cutoffs if c.isdigit())])


def evaluate(pipeline: Pipeline, dataset: RetrievalDataset, metrics: Sequence[str] | None = None,
             *, k: int | None = None, batch_size: int = 64, progress: bool = False,
             on_batch: Callable[[Sequence[RankedRows]], None] | None = None,
             save_runs: str | Path | None = None, hits: int = 0) -> list[StageReport]:
    """Run every query (``batch_size`` at a time through the first stage, fewer when ranking
    deep: :func:`deep_batch`) and score the order after
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

    Rankings are held as arrays of item rows (:meth:`Pipeline.search_rows`): rerankers get Hits
    for the head they look at and the tail stays an array, so ranking every item costs little
    more than the searches. ``on_batch``, when given, is called with each batch's
    :class:`~mmrank.pipeline.RankedRows` (``.ids()`` lists the final order; ``.ranking`` holds
    the first ``hits`` of it, at least the rerankers' head, as Hits), e.g. to write a submission
    or a report without keeping every ranking here.

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
    batch_size = deep_batch(batch_size, k)
    orders: dict[str, dict[str, RowOrder]] = {}
    tables: dict[str, ItemTable] = {}  # query id -> the table its rows number (one per collection)
    seconds: dict[str, float] = {}
    with tqdm(total=len(dataset.queries), desc="Queries", disable=not progress) as bar:
        for start in range(0, len(dataset.queries), batch_size):
            batch = dataset.queries[start:start + batch_size]
            ranked = pipeline.search_rows(batch, k, hits=hits)
            for query, found in zip(batch, ranked):
                tables[query.id] = found.table
                for stage, order in found.orders.items():
                    orders.setdefault(stage, {})[query.id] = order
                for stage, spent in found.timings.items():
                    seconds[stage] = seconds.get(stage, 0.0) + spent
            if on_batch is not None:
                on_batch(ranked)
            bar.update(len(batch))
    if save_runs is not None:
        _save_runs(Path(save_runs), orders, tables, judgement_sets, pipeline)
    groups = _groups(dataset)
    count = max(1, len(dataset.queries))
    reports = []
    for stage, order in orders.items():
        values: dict[str, float] = {}
        for prefix, judgements in judgement_sets.items():
            found = {qid: found_in_rows(rows, tables[qid], judgements.qrels[qid], judgements.ignored.get(qid, ()),
                                        judgements.within.get(qid))
                     for qid, rows in order.items() if qid in judgements.qrels}
            values.update(_means(found, judgements, metrics, groups, prefix, report_groups=dataset.report_groups))
        reports.append(StageReport(stage, values, 1000 * seconds[stage] / count))
    return reports


def score_judgements(rankings: Mapping[str, Sequence[str]], judgements: Judgements, metrics: Sequence[str],
                     groups: dict[str, str] | None = None, prefix: str = "", *,
                     report_groups: bool = False) -> dict[str, float]:
    """Mean metrics of ``rankings`` under one judgement set, ignored items removed first, then
    each ranking restricted to the query's ``within`` ids when it has some; the set's own
    ``metrics``, when it has any, replace ``metrics``. With ``groups`` (query id -> group), also
    the mean of the per-group means as ``macro/<metric>``, and with ``report_groups`` each
    group's mean as ``<group>/<metric>``. Keys carry ``prefix + "/"`` when a prefix is given;
    ``queries`` counts the scored queries (with none, it is the only key)."""
    found = {qid: found_in(order, judgements.qrels[qid])
             for qid, order in scored_rankings(rankings, judgements).items() if qid in judgements.qrels}
    return _means(found, judgements, metrics, groups, prefix, report_groups=report_groups)


def found_in_rows(order: RowOrder | np.ndarray, table: ItemTable, relevance: Mapping[str, int],
                  ignored: Collection_[str] = (), within: Collection_[str] | None = None) -> Found:
    """Where ``order`` (distinct item rows of ``table``, best first) put the relevant items of
    ``relevance``, ranked as :func:`score_judgements` ranks: ``ignored`` ids removed first, then
    kept to the ``within`` ids when given. One pass over ``order``; no id list is built."""
    order = order if isinstance(order, RowOrder) else RowOrder.of(order)
    judged = [(item_id, grade) for item_id, grade in relevance.items()
              if grade > 0 and item_id not in ignored and (within is None or item_id in within)]
    if not judged:
        return Found()
    scope = list(within) if within is not None else list(ignored)
    at = order.positions(table.rows([*(item_id for item_id, _ in judged), *scope]), len(table))
    relevant_at, scope_at = at[:len(judged)], at[len(judged):]
    if within is not None:  # the rank among the within items that are not ignored
        kept = np.sort(scope_at[[item_id not in ignored for item_id in scope] & (scope_at >= 0)])
        ranks = np.searchsorted(kept, relevant_at) + 1
    elif not len(scope_at):
        ranks = relevant_at + 1
    else:  # the rank once the ignored items above it are removed
        ranks = relevant_at + 1 - np.searchsorted(np.sort(scope_at[scope_at >= 0]), relevant_at)
    pairs = sorted((int(rank), grade) for rank, position, (_, grade) in zip(ranks, relevant_at, judged)
                   if position >= 0)
    return Found(tuple(rank for rank, _ in pairs), tuple(grade for _, grade in pairs))


def _means(found: Mapping[str, Found], judgements: Judgements, metrics: Sequence[str],
           groups: dict[str, str] | None, prefix: str, *, report_groups: bool) -> dict[str, float]:
    """The means :func:`score_judgements` reports, from each ranked judged query's :class:`Found`."""
    if judgements.averaging == "relevant" and not any(
            any(grade > 0 for grade in relevance.values()) for relevance in judgements.qrels.values()):
        return {f"{prefix}/queries" if prefix else "queries": 0}
    counted = counted_queries(found, judgements.qrels, judgements.averaging)
    per_query = score_found(found, counted, judgements.metrics or metrics)
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
    results["queries"] = len(counted)
    return {f"{prefix}/{key}" if prefix else key: value for key, value in results.items()}


def scored_rankings(rankings: Mapping[str, Sequence[str]], judgements: Judgements) -> dict[str, list[str]]:
    """``rankings`` as ``judgements`` score them: each query's ignored ids removed, and kept to its
    ``within`` ids when it has some."""
    return {qid: _restricted(order, judgements.ignored.get(qid, ()), judgements.within.get(qid))
            for qid, order in rankings.items()}


def _restricted(order: Sequence[str], ignored: Collection_[str], within: Collection_[str] | None) -> list[str]:
    """``order`` less the ignored ids, and kept to the ``within`` ids when given."""
    return [i for i in order if i not in ignored and (within is None or i in within)]


class _ScoredRows(Mapping):
    """Rankings held as item rows, as ``judgements`` score them (:func:`scored_rankings`), listed
    as ids one query at a time (for writing run files without holding every id)."""

    def __init__(self, orders: Mapping[str, RowOrder], tables: Mapping[str, ItemTable],
                 judgements: Judgements) -> None:
        self.orders, self.tables, self.judgements = orders, tables, judgements

    def __getitem__(self, qid: str) -> list[str]:
        order, table = self.orders[qid].rows(), self.tables[qid]
        keep = ~np.isin(order, table.rows(self.judgements.ignored.get(qid, ())))
        within = self.judgements.within.get(qid)
        if within is not None:
            keep &= np.isin(order, table.rows(within))
        return table.id_list(order[keep])

    def __iter__(self):
        return iter(self.orders)

    def __len__(self) -> int:
        return len(self.orders)


def _save_runs(folder: Path, orders: dict[str, dict[str, RowOrder]], tables: Mapping[str, ItemTable],
               judgement_sets: dict[str, Judgements], pipeline: Pipeline) -> None:
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
            write_run(folder / f"{start}{file_name(stage)}.run", _ScoredRows(order, tables, judgements),
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

    def __call__(self, ranked: Sequence[RankedRows]) -> None:
        for found in ranked:
            ids = found.ids()
            wanted = self._within.get(found.query.id, frozenset())
            self.rankings[found.query.id] = ids[:self.depth] + [i for i in ids[self.depth:] if i in wanted]


def _groups(dataset: RetrievalDataset) -> dict[str, str] | None:
    if dataset.group_by is None:
        return None
    return {query.id: str(query.metadata.get(dataset.group_by, "")) for query in dataset.queries}
