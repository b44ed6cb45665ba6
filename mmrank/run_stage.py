"""A first stage read from a TREC run file: rerank a ranking computed elsewhere (BM25 from
Pyserini, a dense retriever, another system's output) with mmrank's reranking stages.

:class:`RunFirstStage` stands where a pipeline's :class:`~mmrank.retrieval.HybridRetriever`
stands: ``retrieve_batch(queries, collection, k)`` returns, for each query, the run's ranking of
that query's id (the order :func:`mmrank.trec_files.read_run` gives, trec_eval's: score
descending, ties by doc id descending), each hit carrying the run's score, cut to
``max(k, depth)`` as the retriever's first stage is. The run's doc ids are the collection's item
ids (``mmrank eval`` stores a BEIR corpus under its ``_id`` s). The stage is recorded under its own
name, ``run:<file name>``, so rerankers after it work unchanged and evaluation scores it as its
own stage.

Bad input never stops a run: doc ids the collection does not hold are left out of their
rankings, and queries the run does not rank get an empty ranking; both are counted, with
examples, in :attr:`RunFirstStage.problems` (:meth:`RunFirstStage.warnings` words them). A
malformed run line is read_run's InputError naming ``file:line``, raised when the file is read,
before any query runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError
from mmrank.trec_files import Problems, Run, read_run
from mmrank.types import Hit, Item, Query, Ranking, StageScore

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.columns import ItemTable
    from mmrank.pipeline import Pipeline

FOUND_BY = "run"  # what a hit's found_by says: the run file found it

# kind -> (what was found, what was done about it), for RunFirstStage.warnings.
_PROBLEMS = {
    "unknown_doc": ("doc ids the collection does not hold", "left out of their rankings"),
    "unranked_query": ("queries without a line in the run", "their rankings are empty"),
    "unasked_query": ("run queries that are not asked", "not reranked (is it the run of another split?)"),
}


@dataclass
class RunFirstStage:
    """The first stage of a pipeline, read from a TREC run (see the module docstring): ``depth``
    hits per query at least, as :attr:`HybridRetriever.depth <mmrank.retrieval.HybridRetriever.depth>`.

    ``problems`` counts, once per query id, the doc ids passed over because the collection lacks
    them (``unknown_doc``, examples ``"q1 d9"``) and the queries the run does not rank
    (``unranked_query``), and, after :meth:`check_queries`, the run's queries no one asks
    (``unasked_query``); the run file's own problems (repeated lines) are in ``run.problems``.
    """

    run: Run
    depth: int = 100
    name: str = field(init=False)
    problems: Problems = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise InputError(f"depth must be a whole number of at least 1, got {self.depth!r}.")
        self.name = f"run:{self.run.path.name}"
        self.problems = Problems(str(self.run.path))
        self._seen: set[str] = set()

    @classmethod
    def from_file(cls, path: str | Path, depth: int = 100) -> RunFirstStage:
        """Read the run at ``path`` (an InputError naming ``file:line`` for a malformed line)."""
        return cls(read_run(path), depth)

    def to_config(self) -> dict[str, Any]:
        """The options that build this stage again (:meth:`from_file`)."""
        return {"run": str(self.run.path), "depth": self.depth}

    def retrieve(self, query: Query, collection: Collection, k: int | None = None) -> Ranking:
        """The run's top ``max(k, depth)`` items of the collection for ``query`` (by its id)."""
        return self.retrieve_batch([query], collection, k)[0]

    def retrieve_batch(self, queries: Sequence[Query], collection: Collection,
                       k: int | None = None) -> list[Ranking]:
        """:meth:`retrieve` for many queries; each ranking's time is its share of the batch's.
        A query's ``excluded`` ids are left out, and with ``candidates`` only those are kept, as
        the retriever does."""
        start = time.perf_counter()
        depth = max(k or 0, self.depth)
        table = collection.item_table()
        orders = [self._order(query, table, depth) for query in queries]
        items = collection.get_many({item_id for order in orders for item_id in order})
        seconds = (time.perf_counter() - start) / max(1, len(queries))
        return [self._ranking(query, order, items, seconds) for query, order in zip(queries, orders)]

    def check_queries(self, query_ids: Sequence[str | None]) -> None:
        """Count the run's query ids that are not among ``query_ids`` (the queries that will be
        asked, e.g. a dataset split's) as ``unasked_query``."""
        asked = set(query_ids)
        for qid in self.run.rankings:
            if qid not in asked:
                self.problems.add("unasked_query", qid)

    def warnings(self) -> list[str]:
        """One line per kind of problem met so far, the run file's own first, e.g. ``bm25.trec: 2
        doc ids the collection does not hold (e.g. q1 d9; q2 d7); left out of their rankings``."""
        lines = self.run.problems.describe()
        for kind, count in self.problems.counts.items():
            found, done = _PROBLEMS[kind]
            examples = self.problems.examples[kind]
            more = " ..." if count > len(examples) else ""
            lines.append(f"{self.problems.source}: {count} {found} (e.g. {'; '.join(examples)}{more}); {done}")
        return lines

    def _order(self, query: Query, table: ItemTable, depth: int) -> list[str]:
        """The first ``depth`` of the run's doc ids for ``query`` that the collection holds (and
        the query allows), recording what was passed over the first time the query is seen."""
        if query.id is None:
            raise InputError(f"{self.run.path}: a run file ranks queries by id, and this query has none "
                             "(give each Query an id, as the dataset loaders do).")
        first = query.id not in self._seen
        self._seen.add(query.id)
        ranked = self.run.rankings.get(query.id)
        if ranked is None:
            if first:
                self.problems.add("unranked_query", query.id)
            return []
        order = []
        for docid in ranked:
            if len(order) == depth:
                break
            if docid not in table:
                if first:
                    self.problems.add("unknown_doc", f"{query.id} {docid}")
            elif docid not in query.excluded and (query.candidates is None or docid in query.candidates):
                order.append(docid)
        return order

    def _ranking(self, query: Query, order: list[str], items: Mapping[str, Item], seconds: float) -> Ranking:
        scores = self.run.scores[query.id] if order else {}
        hits = tuple(Hit(item=items[docid], score=scores[docid],
                         stages={self.name: StageScore(score=scores[docid], rank=rank)}, found_by=(FOUND_BY,))
                     for rank, docid in enumerate(order, start=1))
        return Ranking(query=query, hits=hits, timings={self.name: seconds})


def with_run(pipeline: Pipeline, stage: RunFirstStage) -> Pipeline:
    """``pipeline`` with ``stage`` in place of its retriever, as deep as that retriever was (its
    ``depth``), and the same rerankers after it."""
    stage.depth = pipeline.retriever.depth
    return dataclasses.replace(pipeline, retriever=stage)
