"""What the LLM rerankers of the seed papers share (FIRST, InsertRank, ERank, Rank-R1, REBEL,
ProRank, DeAR, Qwen3-Reranker): a model that may be text-only or vision-language, candidates shown
as text or, where the method allows and the model reads images, as page pictures, and pointwise
scoring in batches that keeps the incoming order of what it cannot score.

The model is loaded through :class:`~mmrank.mllm.handle.ModelHandle` as for the MLLM stages: a
local folder or Hub id runs with transformers as a vision-language model when its config has a
vision tower and as a text-only causal LM otherwise; ``url`` asks an OpenAI-compatible server.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mmrank.errors import InputError
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.mllm_stage import PictureMLLMReranker

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import VisionLanguageModel
    from mmrank.types import Hit, Item, Query, Ranking

UseImages = Literal["auto", "always", "never"]
USE_IMAGES = ("auto", "always", "never")


def title_and_body(item: Item) -> tuple[str, str]:
    """The item's title (``metadata["title"]``, else empty) and its text without that title in
    front (BEIR items hold ``title + "\\n\\n" + text``), each with its whitespace kept as is."""
    title = item.metadata.get("title") if isinstance(item.metadata.get("title"), str) else ""
    text = item.text or ""
    if title and text.startswith(title):
        text = text[len(title):].lstrip("\n")
    return title.strip(), text.strip()


def first_words(text: str, count: int) -> str:
    """The first ``count`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:count])


def merged_text(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The message parts with neighbouring text parts joined and empty ones dropped."""
    merged: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "text":
            if not part["text"]:
                continue
            if merged and merged[-1]["type"] == "text":
                merged[-1] = {"type": "text", "text": merged[-1]["text"] + part["text"]}
                continue
        merged.append(part)
    return merged


@dataclasses.dataclass(kw_only=True)
class LLMReranker(PictureMLLMReranker):
    """A stage that asks a text-only or vision-language chat model about the candidates.

    ``use_images``: ``auto`` shows a candidate that is a page or an image as its picture when the
    model reads images (``accepts_images``) and the method takes pictures, and as its text
    otherwise (a candidate without text is then not scored, with a note); ``always`` shows pictures (a text-only model then fails with InputError); ``never``
    always shows text. Other options as in :class:`~mmrank.rerankers.mllm_stage.MLLMReranker`.
    """

    takes_images: ClassVar[bool] = True  # whether the method can show candidates as pictures
    default_model_options: ClassVar[Mapping[str, Any]] = {"kind": "text"}

    use_images: UseImages = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_images not in USE_IMAGES:
            raise InputError(f"use_images must be one of {', '.join(USE_IMAGES)}; got {self.use_images!r}.")
        if self.use_images == "always" and not self.takes_images:
            raise InputError(f"The {self.name!r} stage shows candidates as text only; use_images cannot be 'always'.")

    def shows_picture(self, model: VisionLanguageModel, item: Item) -> bool:
        """Whether ``item`` goes to ``model`` as a picture (else as its text)."""
        if self.use_images == "never" or not self.takes_images or item.kind == "text":
            return False
        return self.use_images == "always" or bool(getattr(model, "accepts_images", False))

    def candidate_part(self, model: VisionLanguageModel, item: Item, text: str) -> dict[str, Any]:
        """The message part showing ``item``: its picture, or ``text`` (the method's rendering of
        its text). InputError when the picture cannot be loaded."""
        if self.shows_picture(model, item):
            return {"type": "image", "image": self.picture(item)}
        return {"type": "text", "text": text}


@dataclasses.dataclass(kw_only=True)
class PointwiseLLMReranker(LLMReranker):
    """An LLM stage that scores each of the top ``depth`` candidates on its own.

    Subclasses implement :meth:`score_candidates`: a score (higher is better) and a note, or a
    None score and the reason, for each (question, hit) of one call. The candidates of all queries
    go to the model together, ``batch_size`` per call (None: all in one call). The head is sorted by
    score (ties in incoming order); candidates not scored keep their relative place after the scored
    ones; hits after ``depth`` keep their order. A call that fails (``on_unavailable: keep-order``)
    leaves the rankings with a candidate in it in their incoming order.
    """

    batch_size: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least_one("batch_size", self.batch_size)

    @abstractmethod
    def score_candidates(self, model: VisionLanguageModel, questions: Sequence[str],
                         hits: Sequence[Hit]) -> list[tuple[float | None, str | None]]:
        """(score, note) of each hit for its question; a None score keeps the hit unscored."""

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        calls = self.model_calls(rankings)
        verdicts: list[dict[int, HeadPlace]] = [{} for _ in rankings]
        if calls.model is not None:
            questions = [self.question(query) for query in queries]
            calls.ask_heads(self.depth, self.batch_size,
                            lambda model, batch: self._score(model, questions, batch, verdicts))
        return calls.results(lambda row: self._apply(rankings[row], verdicts[row]))

    def _score(self, model: VisionLanguageModel, questions: list[str], jobs: list[tuple[int, int, Hit]],
               verdicts: list[dict[int, HeadPlace]]) -> None:
        if not jobs:
            return
        scored = self.score_candidates(model, [questions[row] for row, _, _ in jobs], [hit for _, _, hit in jobs])
        for (row, position, _), (score, note) in zip(jobs, scored, strict=True):
            verdicts[row][position] = HeadPlace(position, score, note)

    def _apply(self, ranking: Ranking, verdicts: dict[int, HeadPlace]) -> Ranking:
        head = [verdicts.get(position, HeadPlace(position)) for position in range(min(self.depth, len(ranking)))]
        scored = sorted((place for place in head if place.score is not None), key=lambda place: -place.score)
        unscored = [place for place in head if place.score is None]
        return ranking.with_stage(self.name, reorder_head(ranking, scored + unscored, self.depth))


def showable_head(stage: LLMReranker, model: VisionLanguageModel, ranking: Ranking) -> tuple[list[int], list[int]]:
    """The positions of the first ``stage.depth`` hits that ``stage`` can show ``model`` (as a
    picture or as text), and those it cannot (no text, and no picture for this model)."""
    shown, unshown = [], []
    for position, hit in enumerate(ranking.hits[:stage.depth]):
        (shown if stage.shows_picture(model, hit.item) or hit.item.has_text else unshown).append(position)
    return shown, unshown
