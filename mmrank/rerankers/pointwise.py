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

import string
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mmrank.documents import DEFAULT_DPI
from mmrank.errors import InputError
from mmrank.mllm.base import choice_variants
from mmrank.mllm.prompts import (
    POINTWISE_CAPTION_TEMPLATE,
    POINTWISE_PASSAGE_TEMPLATE,
    POINTWISE_PLAIN_TEMPLATE,
    answer_instruction,
)
from mmrank.rerankers.mllm_stage import MLLMReranker, OnUnavailable

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Hit, Item, Query, Ranking

BUILT_IN_TEMPLATES = ("auto", "caption", "plain")
_PLACEHOLDERS = {"question", "caption", "answer"}
# What the stage said about one candidate: P(relevant) (None when not scored) and a note.
Verdict = tuple[float | None, str | None]


class PointwiseReranker(MLLMReranker):
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
    splits calls into its own batches). Model options as in :class:`MLLMReranker`.
    """

    def __init__(self, *, model: str | VisionLanguageModel | None = None, url: str | None = None,
                 model_options: Mapping[str, Any] | None = None, on_unavailable: OnUnavailable = "fail",
                 dpi: int = DEFAULT_DPI, depth: int = 20, name: str = "pointwise", template: str = "auto",
                 choices: Sequence[str] = ("Yes", "No"), caption_field: str = "caption",
                 caption_chars: int = 600, top_n: int | None = None, threshold: float | None = None,
                 batch_size: int | None = 64) -> None:
        super().__init__(depth=depth, name=name, model=model, url=url, model_options=model_options,
                         on_unavailable=on_unavailable, dpi=dpi)
        self.choices = _check_choices(choices)
        self.template = template
        self._fields = _template_fields(template)
        self.caption_field = caption_field
        self.caption_chars = _at_least_one("caption_chars", caption_chars)
        self.top_n = None if top_n is None else _at_least_one("top_n", top_n)
        self.batch_size = None if batch_size is None else _at_least_one("batch_size", batch_size)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be between 0 and 1 (a probability), got {threshold}.")
        self.threshold = threshold

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

    def build_conversation(self, query: Query, item: Item) -> Conversation:
        """The one user message about ``item``: its picture, then :meth:`prompt`. InputError when the
        picture cannot be loaded or a text item has no text."""
        return self._conversation(self.question(query), item)

    def _conversation(self, question: str, item: Item) -> Conversation:
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
    def rerank_with(self, model: VisionLanguageModel, queries: Sequence[Query], rankings: Sequence[Ranking],
                    collection: Collection) -> list[Ranking]:
        """Score the top ``depth`` hits of every ranking (one model call unless ``batch_size``)."""
        start = time.perf_counter()
        questions = [self.question(query) for query in queries]
        jobs = [(row, position, hit) for row, ranking in enumerate(rankings)
                for position, hit in enumerate(ranking.hits[:self.depth])]
        verdicts: list[dict[int, Verdict]] = [{} for _ in rankings]
        size = self.batch_size or max(1, len(jobs))
        for begin in range(0, len(jobs), size):
            self._score(model, questions, jobs[begin:begin + size], verdicts)
        seconds = (time.perf_counter() - start) / max(1, len(rankings))
        return [self._apply(ranking, verdict, seconds) for ranking, verdict in zip(rankings, verdicts)]

    def _score(self, model: VisionLanguageModel, questions: list[str], jobs: list[tuple[int, int, Hit]],
               verdicts: list[dict[int, Verdict]]) -> None:
        """Fill ``verdicts`` for one call's worth of candidates."""
        conversations, asked = [], []
        for row, position, hit in jobs:
            try:
                conversations.append(self._conversation(questions[row], hit.item))
            except (InputError, OSError) as error:
                verdicts[row][position] = (None, f"not scored: {error}; kept its place after the scored hits")
                continue
            asked.append((row, position, hit))
        if not conversations:
            return
        relevant = model.choice_probability(conversations, self.choices)[:, 0]
        for (row, position, hit), probability in zip(asked, relevant):
            verdicts[row][position] = (float(probability), self._caption_note(hit.item))

    def _apply(self, ranking: Ranking, verdicts: dict[int, Verdict], seconds: float) -> Ranking:
        """Scored head by P(relevant) (ties in incoming order), unscored head, then the rest."""
        head = range(min(self.depth, len(ranking.hits)))
        scored = sorted((i for i in head if verdicts[i][0] is not None), key=lambda i: -verdicts[i][0])
        unscored = [i for i in head if verdicts[i][0] is None]
        ordered = [(ranking.hits[i], *verdicts[i]) for i in scored + unscored]
        ordered += [(hit, None, None) for hit in ranking.hits[self.depth:]]
        if self.threshold is not None:
            ordered = [entry for entry in ordered if entry[1] is not None and entry[1] >= self.threshold]
        if self.top_n is not None:
            ordered = ordered[:self.top_n]
        return ranking.with_stage(self.name, ordered, seconds)


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


def _at_least_one(option: str, value: int) -> int:
    if value < 1:
        raise InputError(f"{option} must be at least 1, got {value}.")
    return value
