"""Reasoning listwise reranking of pages (MM-R5, Xu et al. 2025).

The model sees a window of candidate pages at once, labelled ``Image 1`` .. ``Image N`` in their
incoming order, thinks inside ``<think></think>`` and answers ``<answer>[3, 1, ...]</answer>``
(prompt: :mod:`mmrank.mllm.prompts`; parsing: :func:`~mmrank.mllm.parsing.parse_answer_ranking`).

Windows slide RankGPT-style over the top ``depth`` hits from the back to the front, so the best
candidates bubble up: with ``n`` hits the windows start at ``n - window``, ``n - window - stride``,
... while above 0, and a last window starts at 0 (see :func:`window_schedule`; e.g. depth 12,
window 5, stride 2: [7, 12), [5, 10), [3, 8), [1, 6), [0, 5)). A list no longer than ``window`` is
one window. Each window's parsed order replaces its positions before the next window is built.
The windows of all queries at the same step go to the model in one ``generate`` call (or in calls
of ``batch_size`` windows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.errors import InputError
from mmrank.mllm.base import check_generation_options
from mmrank.mllm.parsing import parse_answer_ranking
from mmrank.mllm.prompts import REASONING_IMAGE_LABEL, REASONING_SYSTEM_PROMPT, REASONING_TEMPLATE
from mmrank.rerankers.base import at_least_one
from mmrank.rerankers.listwise import Window, WindowProgress, slide_windows, window_schedule
from mmrank.rerankers.mllm_stage import PictureMLLMReranker

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Item, Query, Ranking

__all__ = ["MMR5_MODEL", "ReasoningReranker", "Window", "window_schedule"]

MMR5_MODEL = "i2vec/MM-R5"
MMR5_MAX_PIXELS = 1280 * 28 * 28

@dataclasses.dataclass(kw_only=True)
class ReasoningReranker(PictureMLLMReranker):
    """Reorders the top ``depth`` pages with a reasoning listwise model (MM-R5 by default).

    ``model``: a Hub id or local folder, run locally (default i2vec/MM-R5), or with ``url`` the
    served model name (default: the server's first model). ``window`` pages per prompt, windows
    ``stride`` apart (default ``window // 2``, at least 1; at most ``window``). Decoding is greedy
    at ``temperature`` 0 (the authors sample at 0.3), capped at ``max_new_tokens``.
    ``model_options`` default to ``{"max_pixels": 1003520}`` (1280*28*28 pixels a page), for a
    local model and a server alike.
    ``batch_size``: windows per model call (pages are loaded per call, so this bounds memory); None
    sends the windows of all queries at one step together.

    Result: the head's stage score is 1 / new rank (1, 0.5, 0.33, ...); hits after ``depth`` keep
    their order and score. A window whose answer cannot be parsed, or whose pages cannot be loaded,
    keeps its incoming order; a partial answer ranks the ids given and keeps the rest in order; both
    are noted on the window's hits (``window k: ...``, several joined by `` | ``). The reasoning of
    window k is ``explanations[name][k - 1]`` (empty for a window not asked). ``on_unavailable`` as
    in :class:`~mmrank.rerankers.mllm_stage.MLLMReranker`: a ranking whose window is in a call that
    fails keeps its incoming order (its earlier windows' answers are dropped).
    """

    default_model: ClassVar[str | None] = MMR5_MODEL
    default_model_options: ClassVar[dict[str, Any]] = {"max_pixels": MMR5_MAX_PIXELS}

    name: str = "reasoning"
    depth: int = 20
    window: int = 5
    stride: int | None = None
    max_new_tokens: int = 1024
    temperature: float = 0.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        stride = self.step
        if self.window < 2 or not 1 <= stride <= self.window:
            raise InputError(f"Need window >= 2 and 1 <= stride <= window; got window {self.window}, "
                             f"stride {stride}.")
        at_least_one("batch_size", self.batch_size)
        check_generation_options(self.max_new_tokens, self.temperature)

    @property
    def step(self) -> int:
        """How far apart windows start: ``stride``, by default half a window (at least 1)."""
        return max(1, self.window // 2) if self.stride is None else self.stride

    def schedule(self, count: int) -> list[Window]:
        """The windows over a ranking of ``count`` hits (only the first ``depth`` are reranked)."""
        return window_schedule(min(count, self.depth), self.window, self.step)

    def window_conversation(self, question: str, items: Sequence[Item]) -> Conversation:
        """The system prompt and one user message: the instruction with the question and the number
        of pages, then ``Image i:`` and page i for each item. InputError when a picture cannot be
        loaded."""
        content: list[dict[str, Any]] = [
            {"type": "text", "text": REASONING_TEMPLATE.format(question=question, count=len(items))}]
        for index, item in enumerate(items, start=1):
            content.append({"type": "text", "text": REASONING_IMAGE_LABEL.format(index=index)})
            content.append({"type": "image", "image": self.picture(item)})
        return [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Slide the windows over every ranking; window k of all rankings go to the model together.
        A ranking in a call that fails keeps its incoming order and is not asked again."""
        calls = self.model_calls(rankings)
        progress: list[WindowProgress] = []
        if calls.model is not None:
            progress = [
                WindowProgress(ranking, self.question(query), self.schedule(len(ranking)),
                          list(range(min(self.depth, len(ranking)))))
                for query, ranking in zip(queries, rankings, strict=True)]
        return slide_windows(calls, progress, self.batch_size, self._step)

    def _step(self, model: VisionLanguageModel, step: int, progress: list[WindowProgress]) -> None:
        """Ask for window ``step`` of every ranking in ``progress`` and apply the answers."""
        conversations, asked = [], []
        for entry in progress:
            begin, end = entry.schedule[step]
            positions = entry.order[begin:end]
            try:
                items = [entry.ranking.hits[position].item for position in positions]
                conversations.append(self.window_conversation(entry.question, items))
            except (InputError, OSError) as error:
                entry.note(positions, f"window {step + 1}: not asked: {error}; kept the incoming order")
                entry.explanations.append("")
                continue
            asked.append(entry)
        if not conversations:
            return
        generations = model.generate(conversations, max_new_tokens=self.max_new_tokens,
                                     temperature=self.temperature)
        for entry, generation in zip(asked, generations, strict=True):
            begin, end = entry.schedule[step]
            entry.apply(step, parse_answer_ranking(generation.text, end - begin))
