"""Pointwise yes/no relevance reranking (RagLLaVA, "MLLM Is a Strong Reranker", 2024).

Each of the top ``depth`` candidates is one user message: the candidate's picture first, then the
question (after the candidate's caption, when it has one) and "Answer 'Yes' or 'No'.". Its score is
P(Yes): the first answer token's logits softmaxed over the choice words only. The choice words and
the template are options, so MonoQwen2-VL ("True"/"False") or Qwen3-VL-Reranker ("yes"/"no") run
with a config change.

A text-only candidate (kind ``text``) has no picture: it is asked about as a passage
(``Passage: ...`` / ``Question: ...`` / "Is this passage relevant to the question? ..."), whatever
the template. A candidate whose picture cannot be loaded (e.g. a missing file) is not scored: it
keeps its relative place after the scored ones, with a note naming the problem.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError
from mmrank.mllm.base import choice_variants
from mmrank.mllm.prompts import (
    POINTWISE_CAPTION_TEMPLATE,
    POINTWISE_PASSAGE_TEMPLATE,
    POINTWISE_PLAIN_TEMPLATE,
    answer_instruction,
)
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.mllm_stage import PictureMLLMReranker

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Hit, Item, Query, Ranking

BUILT_IN_TEMPLATES = ("auto", "caption", "plain")
_PLACEHOLDERS = {"question", "caption", "answer"}


@dataclasses.dataclass(kw_only=True)
class PointwiseReranker(PictureMLLMReranker):
    """Reorders the top ``depth`` hits by P(relevant) from one yes/no question per candidate.

    ``template``: ``"auto"`` (the caption template for candidates with a caption, the plain one
    otherwise), ``"caption"``, ``"plain"``, or a format string with ``{question}`` and optionally
    ``{caption}`` and ``{answer}`` (the answer instruction). ``choices``: the answer words, the
    first meaning relevant; the built-in templates' "Answer 'Yes' or 'No'." follows them.
    ``caption_field``: the ``Item.metadata`` key holding a caption, or ``"text"`` for the item's
    own text; captions have their whitespace collapsed and are cut at ``caption_chars`` characters.
    ``top_n`` / ``threshold``: keep only the first N hits / only the hits scored at least
    ``threshold`` (unscored hits and hits after ``depth`` are then dropped too): the returned
    ranking is shorter. ``batch_size``: candidates (of all queries together) per model call;
    pictures are loaded per call, so this bounds memory (None: all in one call; the backend still
    splits calls into its own batches). Model options and ``on_unavailable`` as in
    :class:`MLLMReranker`: when a call fails, the rankings with a candidate in it keep their order.
    """

    name: str = "pointwise"
    depth: int = 20
    template: str = "auto"
    choices: Sequence[str] = ("Yes", "No")
    caption_field: str = "caption"
    caption_chars: int = 600
    top_n: int | None = None
    threshold: float | None = None
    batch_size: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.choices = _check_choices(self.choices)
        self._fields = _template_fields(self.template)
        for option in ("caption_chars", "top_n", "batch_size"):
            at_least_one(option, getattr(self, option))
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"threshold must be between 0 and 1 (a probability), got {self.threshold}.")

    # ------------------------------------------------------------------ prompts
    def caption(self, item: Item) -> str | None:
        """The item's caption as the prompt shows it, or None when it has none."""
        raw = item.text if self.caption_field == "text" else item.metadata.get(self.caption_field)
        if not isinstance(raw, str) or not raw.strip():
            return None
        return " ".join(raw.split())[:self.caption_chars].rstrip()

    def prompt(self, question: str, item: Item) -> str:
        """The text part of the message about ``item`` (it follows the picture)."""
        answer = answer_instruction(self.choices)
        if item.kind == "text":
            return POINTWISE_PASSAGE_TEMPLATE.format(passage=_passage(item), question=question, answer=answer)
        caption = self.caption(item)
        return self._template_for(caption).format(question=question, caption=caption or "", answer=answer)

    def candidate_conversation(self, question: str, item: Item) -> Conversation:
        """The one user message about ``item``: its picture, then :meth:`prompt`. InputError when the
        picture cannot be loaded or a text item has no text."""
        content: list[dict[str, Any]] = []
        if item.kind != "text":
            content.append({"type": "image", "image": self.picture(item)})
        content.append({"type": "text", "text": self.prompt(question, item)})
        return [{"role": "user", "content": content}]

    def _template_for(self, caption: str | None) -> str:
        if self.template == "plain" or (self.template in ("auto", "caption") and caption is None):
            return POINTWISE_PLAIN_TEMPLATE
        if self.template in ("auto", "caption"):
            return POINTWISE_CAPTION_TEMPLATE
        return self.template

    def _caption_note(self, item: Item) -> str | None:
        """Why the template's caption is missing, when the template wants one and the item has none."""
        wants = self.template == "caption" or "caption" in self._fields
        if item.kind == "text" or not wants or self.caption(item) is not None:
            return None
        source = "text" if self.caption_field == "text" else f"metadata {self.caption_field!r}"
        fallback = "asked without one" if self.template == "caption" else "asked with an empty caption"
        return f"no caption (item {source} is empty); {fallback}"

    # ---------------------------------------------------------------- reranking
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Score the top ``depth`` hits of every ranking (one model call unless ``batch_size``). A
        ranking with a candidate in a call that fails keeps its incoming order (``on_unavailable``)."""
        calls = self.model_calls(rankings)
        verdicts: list[dict[int, HeadPlace]] = [{} for _ in rankings]
        if calls.model is not None:
            questions = [self.question(query) for query in queries]
            calls.ask_heads(self.depth, self.batch_size,
                            lambda model, batch: self._score(model, questions, batch, verdicts))
        return calls.results(lambda row: self._apply(rankings[row], verdicts[row]))

    def _score(self, model: VisionLanguageModel, questions: list[str], jobs: list[tuple[int, int, Hit]],
               verdicts: list[dict[int, HeadPlace]]) -> None:
        """Fill ``verdicts`` for one call's worth of candidates."""
        conversations, asked = [], []
        for row, position, hit in jobs:
            try:
                conversations.append(self.candidate_conversation(questions[row], hit.item))
            except (InputError, OSError) as error:
                verdicts[row][position] = HeadPlace(
                    position, None, f"not scored: {error}; kept its place after the scored hits")
                continue
            asked.append((row, position, hit))
        if not conversations:
            return
        relevant = model.choice_probability(conversations, self.choices)[:, 0]
        for (row, position, hit), probability in zip(asked, relevant):
            verdicts[row][position] = HeadPlace(position, float(probability), self._caption_note(hit.item))

    def _apply(self, ranking: Ranking, verdicts: dict[int, HeadPlace]) -> Ranking:
        """Scored head by P(relevant) (ties in incoming order), unscored head, then the rest; then
        ``threshold`` and ``top_n``."""
        head = [verdicts[position] for position in range(min(self.depth, len(ranking.hits)))]
        scored = sorted((place for place in head if place.score is not None), key=lambda place: -place.score)
        ordered = reorder_head(ranking, scored + [place for place in head if place.score is None], self.depth)
        if self.threshold is not None:
            ordered = [place for place in ordered if place.score is not None and place.score >= self.threshold]
        if self.top_n is not None:
            ordered = ordered[:self.top_n]
        return ranking.with_stage(self.name, ordered)


def _check_choices(choices: Sequence[str]) -> tuple[str, ...]:
    """At least two different, non-blank answer words (the first meaning relevant)."""
    if not isinstance(choices, str) and not all(isinstance(choice, str) for choice in choices):
        raise InputError(f"choices must be words (in YAML, quote them: ['Yes', 'No']); got {list(choices)!r}.")
    choice_variants(choices)
    if len(choices) < 2:
        raise InputError(f"choices needs at least two words (relevant first, e.g. Yes, No); got {list(choices)!r}.")
    return tuple(choice.strip() for choice in choices)


def _template_fields(template: str) -> set[str]:
    """The placeholders of a custom template (none for the built-in names); InputError when it has
    no ``{question}``, an unknown placeholder, or unbalanced braces."""
    if template in BUILT_IN_TEMPLATES:
        return set()
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        raise InputError(f"template {template!r} is not a valid format string: {error}.") from None
    if "question" not in fields or not fields <= _PLACEHOLDERS:
        raise InputError(
            f"template must be one of {', '.join(BUILT_IN_TEMPLATES)} or a format string with {{question}} and "
            f"optionally {{caption}} and {{answer}}; got {template!r} (placeholders {sorted(fields)}).")
    return fields


def _passage(item: Item) -> str:
    if not item.has_text:
        raise InputError(f"Text item {item.id!r} has no text to ask about.")
    return " ".join(item.text.split())
