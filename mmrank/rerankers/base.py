"""The one interface every reranker implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.types import Query, Ranking


@runtime_checkable
class Reranker(Protocol):
    """Reorders the first ``depth`` hits of a ranking; hits after ``depth`` keep their order.

    A reranker reads what it needs (vectors, page images, texts) from the collection by item id,
    records its score and rank on every hit under its ``name`` (see ``Ranking.with_stage``), and
    when it cannot score a candidate keeps the incoming order for it and says so in the note.
    A reranker may also offer ``rerank_batch(queries, rankings, collection)`` to handle many
    queries in one call; pipelines use it when present.
    """

    name: str
    depth: int

    def rerank(self, query: Query, ranking: Ranking, collection: Collection) -> Ranking: ...
