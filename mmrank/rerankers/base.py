"""The one interface every reranker implements, the base they share, and how a stage reorders the
head of a ranking while keeping its tail."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from mmrank.config import dataclass_options
from mmrank.errors import InputError
from mmrank.types import Placement

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.types import Query, Ranking


@runtime_checkable
class Reranker(Protocol):
    """Reorders the first ``depth`` hits of each ranking; hits after ``depth`` keep their order.

    A reranker reads what it needs (vectors, page images, texts) from the collection by item id,
    records its score, rank and note on every hit under its ``name`` (see ``Ranking.with_stage``),
    and when it cannot score a candidate keeps the incoming order for it and says so in the note.
    The time a stage takes is measured by its caller (``Pipeline``). ``to_config`` gives the
    options that rebuild it (``{"type": ..., **options}``, see :func:`mmrank.rerankers.create_reranker`).
    """

    name: str
    depth: int

    def rerank(self, query: Query, ranking: Ranking, collection: Collection) -> Ranking: ...

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]: ...

    def to_config(self) -> dict[str, Any]: ...


@dataclasses.dataclass(kw_only=True)
class BaseReranker(ABC):
    """What the bundled rerankers share: keyword-only options as dataclass fields (each subclass
    gives ``name`` and ``depth`` its own defaults), one-query :meth:`rerank` through
    :meth:`rerank_batch`, and :meth:`to_config` from the fields."""

    name: str
    depth: int
    head_only: ClassVar[bool] = True
    """Whether the stage only reorders the first ``depth`` hits and keeps the rest as they came (as
    :func:`reorder_head` does): evaluation then hands it the head alone and keeps the tail as an
    array (:meth:`mmrank.pipeline.Pipeline.search_rows`). A stage that searches again sets it False."""

    def __post_init__(self) -> None:
        at_least_one("depth", self.depth)

    def rerank(self, query: Query, ranking: Ranking, collection: Collection) -> Ranking:
        """One ranking: :meth:`rerank_batch` of one, timed."""
        from mmrank.pipeline import rerank_all

        return rerank_all(self, [query], [ranking], collection)[0]

    @abstractmethod
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Rerank every ranking (as many model calls as batching allows)."""

    def to_config(self) -> dict[str, Any]:
        """``{"type": <registered type>, **options}``: every constructor option, as plain YAML values."""
        from mmrank.rerankers import reranker_type

        return {"type": reranker_type(type(self)), **self.options()}

    def options(self) -> dict[str, Any]:
        """The constructor options, as plain values."""
        return dataclass_options(self)


class HeadPlace(NamedTuple):
    """Where a stage puts the hit at ``position`` (0-based, in the incoming ranking) of the head it
    reranks, with its score there and a note."""

    position: int
    score: float | None = None
    note: str | None = None


def reorder_head(ranking: Ranking, head: Sequence[HeadPlace], depth: int,
                 unplaced_note: str | None = None) -> list[Placement]:
    """The whole ranking as a stage leaves it: the ``head`` places in their order, then the hits of
    the first ``depth`` that ``head`` does not place (in incoming order, with ``unplaced_note``),
    then every hit after ``depth`` unchanged."""
    hits = ranking.hits
    placed = {place.position for place in head}
    return ([Placement(hits[place.position], place.score, place.note) for place in head]
            + [Placement(hit, None, unplaced_note) for position, hit in enumerate(hits[:depth])
               if position not in placed]
            + [Placement(hit) for hit in hits[depth:]])


def keep_order(ranking: Ranking, stage: str, note: str | None) -> Ranking:
    """The ranking unchanged, recorded as ``stage`` with ``note`` on every hit."""
    return ranking.with_stage(stage, [Placement(hit, None, note) for hit in ranking.hits])


def query_text(query: Query, stage: str, use: str, hint: str = "") -> str:
    """The query's text for a stage that reads it (``query.search_text``); for an image-only query,
    an InputError: "The <stage> <use>, but query <id> has none (an image-only query)<hint>."."""
    text = query.search_text
    if text is None:
        label = f" {query.id!r}" if query.id else ""
        raise InputError(f"The {stage!r} {use}, but query{label} has none (an image-only query){hint}.")
    return text


def at_least_one(option: str, value: int | None) -> int | None:
    """``value`` (None passes) after an InputError unless it is at least 1."""
    if value is not None and value < 1:
        raise InputError(f"{option} must be at least 1, got {value}.")
    return value
