"""Dense passage reranking, offline on a CPU: the top pages re-scored by the collection's own text
model over short passages.

The first stage scores a page by its best passage of about a model window (a few hundred words).
This stage splits each of the top ``depth`` pages into shorter, overlapping passages (``words`` /
``overlap``), encodes them with the text model that built the collection's text space (the bundled
all-MiniLM-L6-v2 by default, so it runs with no network), and scores a page by its best short
passage's cosine with the query. The new score is the incoming one and the passage score, each
min-max normalised over the head, added with ``weight`` on the passage score; the head is sorted
by it and the tail keeps its order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mmrank.errors import InputError
from mmrank.rerankers.base import BaseReranker, HeadPlace, query_text, reorder_head
from mmrank.text import check_passage_split, split_passages

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.types import Query, Ranking

NO_TEXT_NOTE = "not scored: the item has no text; kept its place after the scored hits"


@dataclasses.dataclass(kw_only=True)
class DensePassageReranker(BaseReranker):
    """Re-scores the top ``depth`` hits by their best short passage under the collection's text
    model (see the module docstring). ``space``: the vector space whose encoder is used."""

    name: str = "dense-passages"
    depth: int = 20
    words: int = 60
    overlap: int = 20
    weight: float = 0.5
    space: str = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_passage_split(self.words, self.overlap)
        if not self.weight >= 0:
            raise InputError(f"weight must be at least 0, got {self.weight}.")

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        questions = [query_text(query, self.name, "stage compares the query's text with page text")
                     for query in queries]
        heads = [[hit for hit in ranking.hits[:self.depth] if hit.item.has_text] for ranking in rankings]
        owners, passages = [], []
        for row, head in enumerate(heads):
            for position, hit in enumerate(head):
                for passage in split_passages(hit.item.text, self.words, self.overlap):
                    owners.append((row, position))
                    passages.append(passage)
        if not passages:
            return [self._apply(ranking, [], []) for ranking in rankings]
        encoder = collection.encoder(self.space)
        query_vectors = encoder.encode_texts(questions)
        similarity = np.einsum("pd,pd->p", encoder.encode_texts(passages),
                               query_vectors[[row for row, _ in owners]])
        best = [np.full(len(head), -np.inf) for head in heads]
        for (row, position), score in zip(owners, similarity):
            best[row][position] = max(best[row][position], float(score))
        return [self._apply(ranking, head, list(scores)) for ranking, head, scores in zip(rankings, heads, best)]

    def _apply(self, ranking: Ranking, head: list, passage_scores: list[float]) -> Ranking:
        """The head's hits with text by their combined score (ties in incoming order), then the
        head's hits without text (noted), then the tail."""
        positions = {hit.item_id: position for position, hit in enumerate(ranking.hits)}
        combined = _normalised([hit.score for hit in head]) + self.weight * _normalised(passage_scores)
        order = np.argsort(-combined, kind="stable")
        placed = [HeadPlace(positions[head[i].item_id], float(combined[i])) for i in order]
        return ranking.with_stage(self.name, reorder_head(ranking, placed, self.depth, unplaced_note=NO_TEXT_NOTE))


def _normalised(values: Sequence[float]) -> np.ndarray:
    """Min-max normalised to [0, 1] (all 1 when the values are equal)."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        return array
    span = array.max() - array.min()
    return np.ones_like(array) if span == 0 else (array - array.min()) / span
