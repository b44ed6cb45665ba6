"""What every dataset loader returns: items, queries and relevance judgements for one split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mmrank.types import Item, Query

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Judgements:
    """One way of scoring rankings: graded relevance per query, and per query the item ids removed
    from its ranking before scoring (a benchmark's "junk" images, a query's own reference image)."""

    qrels: Qrels
    ignored: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class RetrievalDataset:
    """One split of a retrieval benchmark.

    ``qrels`` maps query id -> item id -> graded relevance (> 0 means relevant); every query has
    its ``id`` set, and the ids in ``qrels`` are those of ``queries`` and ``items``.

    Optional, for benchmarks that need them:

    - ``ignored``: per query, item ids dropped from its ranking before scoring;
    - ``protocols``: named judgement sets scored from the same rankings (Revisited Oxford's easy /
      medium / hard); when given, they replace ``qrels`` in reports, as ``"<protocol>/<metric>"``;
    - ``group_by``: a ``Query.metadata`` key; every metric is then also averaged per group and over
      the groups, reported as ``"macro/<metric>"`` (MMDocIR's domains);
    - ``metrics``: the benchmark's standard metrics, used when the caller names none.

    A query whose ``candidates`` are set is searched among those items only (MMDocIR: the pages of
    the question's own document).
    """

    name: str
    items: list[Item]
    queries: list[Query]
    qrels: Qrels
    split: str
    ignored: Mapping[str, frozenset[str]] = field(default_factory=dict)
    protocols: Mapping[str, Judgements] = field(default_factory=dict)
    group_by: str | None = None
    metrics: tuple[str, ...] = ()

    def judgements(self) -> dict[str, Judgements]:
        """The judgement sets to report, by prefix ("" for the plain qrels)."""
        if self.protocols:
            return dict(self.protocols)
        return {"": Judgements(self.qrels, self.ignored)}

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset(name={self.name!r}, split={self.split!r}, items={len(self.items)}, "
            f"queries={len(self.queries)}, judgements={sum(len(r) for r in self.qrels.values())})"
        )
