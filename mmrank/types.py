"""The small, plain types every stage passes along: Item, Query, Hit, Ranking."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union

if TYPE_CHECKING:
    from PIL import Image as PILImage

ItemKind = Literal["image", "page", "text"]
ImageInput = Union[str, Path, "PILImage.Image"]


@dataclass(frozen=True)
class Item:
    """One retrievable unit: an image file, a PDF page, or a text passage.

    ``source`` is the file the item came from (None for items that only live in a dataset);
    ``page`` is the 1-based page number for PDF pages and None otherwise.
    """

    id: str
    kind: ItemKind
    source: str | None = None
    page: int | None = None
    text: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_text(self) -> bool:
        return bool(self.text and self.text.strip())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "page": self.page,
            "text": self.text,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class Query:
    """What a user asks: text, an image, or a reference image plus a modification text.

    ``candidates``, when given, restricts the search to those item ids (e.g. the pages of one
    document); ``excluded`` item ids are never returned (e.g. a composed query's own reference
    image, which CIRR leaves out of the results).
    """

    text: str | None = None
    image: ImageInput | None = None
    modification: str | None = None
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    candidates: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        from mmrank.errors import InputError

        if self.candidates is not None:
            object.__setattr__(self, "candidates", frozenset(self.candidates))
        object.__setattr__(self, "excluded", frozenset(self.excluded))
        has_text = bool(self.text and self.text.strip())
        has_modification = bool(self.modification and self.modification.strip())
        if not has_text and self.image is None and not has_modification:
            raise InputError("The query is empty: give a text, an image, or both.")

    @property
    def search_text(self) -> str | None:
        """The text a text encoder should see (the modification text for composed queries)."""
        parts = [p.strip() for p in (self.text, self.modification) if p and p.strip()]
        return " ".join(parts) or None


@dataclass(frozen=True)
class StageScore:
    """What one stage said about a hit: its score there (None if it did not score it), its
    1-based rank after that stage, and a note (e.g. why a reranker fell back)."""

    score: float | None
    rank: int
    note: str | None = None


@dataclass(frozen=True)
class Hit:
    """One result: the item, its current score, and the record of every stage it went through.

    ``found_by`` names the first-stage paths (``text``, ``bm25``, ``image``) that retrieved it;
    ``snippet`` is the part of the item's text that best matches the query (set by a pipeline).
    """

    item: Item
    score: float
    stages: Mapping[str, StageScore] = field(default_factory=dict)
    found_by: tuple[str, ...] = ()
    snippet: str | None = None

    @property
    def item_id(self) -> str:
        return self.item.id

    def to_dict(self, rank: int) -> dict[str, Any]:
        return {
            "rank": rank,
            "id": self.item.id,
            "kind": self.item.kind,
            "source": self.item.source,
            "page": self.item.page,
            "score": self.score,
            "found_by": list(self.found_by),
            "snippet": self.snippet,
            "stages": {
                name: {"score": s.score, "rank": s.rank, **({"note": s.note} if s.note else {})}
                for name, s in self.stages.items()
            },
        }


class Placement(NamedTuple):
    """Where a stage puts a hit: the hit, the stage's score for it (None when the stage did not
    score it; the hit keeps its previous score) and a note (e.g. why it was not scored)."""

    hit: Hit
    score: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class Ranking:
    """The ordered hits for one query, with the seconds each stage took.

    ``query_vectors`` holds the vector the first stage searched each space with (so vector
    rerankers need not encode the query again); ``explanations`` holds, per stage, what a model
    said while ranking (e.g. a reasoning reranker's thinking, one text per window, or the target
    caption a composed-query stage wrote); ``pictures`` holds, per stage, the images a stage
    showed the model that are not items (e.g. the grid of numbered candidates), as PIL images.
    """

    query: Query
    hits: tuple[Hit, ...]
    timings: Mapping[str, float] = field(default_factory=dict)
    query_vectors: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    explanations: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    pictures: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]

    @property
    def ids(self) -> list[str]:
        return [h.item.id for h in self.hits]

    @property
    def stage_names(self) -> list[str]:
        return list(self.timings)

    def order_after(self, stage: str) -> list[str]:
        """Item ids in the order the named stage left them (hits it never saw are dropped)."""
        ranked = [(h.stages[stage].rank, h.item.id) for h in self.hits if stage in h.stages]
        return [item_id for _, item_id in sorted(ranked)]

    def top(self, k: int) -> Ranking:
        return replace(self, hits=self.hits[:k])

    def with_stage(
        self,
        stage: str,
        ordered: Iterable[Placement],
        seconds: float = 0.0,
        explanations: Iterable[str] = (),
        pictures: Iterable[Any] = (),
    ) -> Ranking:
        """A new ranking in the given order, each hit carrying this stage's score, rank and note.

        ``ordered`` yields a :class:`Placement` per hit, best first.
        ``seconds`` is the stage's time for this query (a pipeline measures it and sets it with
        :meth:`with_timing`). ``explanations`` and ``pictures`` are kept under the stage's name (see
        the class docstring).
        """
        hits = []
        for rank, (hit, score, note) in enumerate(ordered, start=1):
            stages = {**hit.stages, stage: StageScore(score=score, rank=rank, note=note)}
            hits.append(replace(hit, score=hit.score if score is None else score, stages=stages))
        explained, shown = tuple(explanations), tuple(pictures)
        return replace(self, hits=tuple(hits), timings={**self.timings, stage: seconds},
                       explanations={**self.explanations, stage: explained} if explained else self.explanations,
                       pictures={**self.pictures, stage: shown} if shown else self.pictures)

    def with_timing(self, stage: str, seconds: float) -> Ranking:
        """The same ranking with ``seconds`` recorded as the time ``stage`` took for it."""
        return replace(self, timings={**self.timings, stage: seconds})

    def to_dicts(self) -> list[dict[str, Any]]:
        return [hit.to_dict(rank) for rank, hit in enumerate(self.hits, start=1)]
