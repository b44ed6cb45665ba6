"""What every dataset loader returns: items, queries and relevance judgements for one split."""

from __future__ import annotations

from dataclasses import dataclass

from mmrank.types import Item, Query


@dataclass
class RetrievalDataset:
    """One split of a retrieval benchmark.

    ``qrels`` maps query id -> item id -> graded relevance (> 0 means relevant); every query has
    its ``id`` set, and the ids in ``qrels`` are those of ``queries`` and ``items``.
    """

    name: str
    items: list[Item]
    queries: list[Query]
    qrels: dict[str, dict[str, int]]
    split: str

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset(name={self.name!r}, split={self.split!r}, items={len(self.items)}, "
            f"queries={len(self.queries)}, judgements={sum(len(r) for r in self.qrels.values())})"
        )
