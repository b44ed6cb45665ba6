"""Sliding-window listwise reranking with an LLM (RankGPT's schedule, used by FIRST, RankZephyr,
InsertRank and DeAR's listwise stage).

Windows of ``window`` candidates slide over the top ``depth`` hits from the back to the front,
``stride`` apart (top-100, window 20, stride 10
gives the 9 windows [80, 100), [70, 90), ..., [0, 20); see :func:`window_schedule`), so the best candidates bubble up. Each
window's order replaces its positions before the next window is built. The windows of all queries
at the same step go to the model together (or ``batch_size`` windows per call).

A subclass implements :meth:`ListwiseLLMReranker.rank_windows`: for each window (its question and
its hits, in their current order) a :class:`~mmrank.mllm.parsing.ParsedRanking`. A window whose
answer cannot be read keeps its incoming order; a partial answer ranks the ids given and keeps the
rest in order; both are noted on the window's hits (``window k: ...``).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmrank.errors import InputError
from mmrank.mllm.parsing import ParsedRanking
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.llm_stage import LLMReranker

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import VisionLanguageModel
    from mmrank.rerankers.mllm_stage import ModelCalls
    from mmrank.types import Hit, Query, Ranking

Window = tuple[int, int]


def window_schedule(count: int, window: int, stride: int) -> list[Window]:
    """The ``[start, end)`` windows over ``count`` candidates, in the order they are ranked: from the
    end of the list to the front, ``stride`` apart, the last one starting at 0 (none for fewer than
    two candidates)."""
    if count <= window:
        return [(0, count)] if count >= 2 else []
    starts = [*range(count - window, 0, -stride), 0]
    return [(start, start + window) for start in starts]


@dataclass
class WindowProgress:
    """One ranking on its way through the windows: ``order`` holds head positions (indices into
    the incoming hits), ``notes`` what went wrong per head position, ``explanations`` each asked
    window's reasoning (empty when none)."""

    ranking: Ranking
    question: str
    schedule: list[Window]
    order: list[int]
    notes: dict[int, list[str]] = field(default_factory=dict)
    explanations: list[str] = field(default_factory=list)

    def note(self, positions: Sequence[int], text: str) -> None:
        for position in positions:
            self.notes.setdefault(position, []).append(text)

    def window_hits(self, step: int) -> tuple[list[int], list[Hit]]:
        """The head positions and hits of window ``step``, in their current order."""
        begin, end = self.schedule[step]
        positions = self.order[begin:end]
        return positions, [self.ranking.hits[position] for position in positions]

    def apply(self, step: int, parsed: ParsedRanking) -> None:
        """Window ``step`` reordered by ``parsed``, with a note when it failed or was partial."""
        begin, end = self.schedule[step]
        positions = self.order[begin:end]
        self.order[begin:end] = [positions[index] for index in parsed.order]
        self.explanations.append(parsed.reasoning)
        note = window_note(parsed, end - begin)
        if note:
            self.note(positions, f"window {step + 1}: {note}")

    def result(self, stage: str) -> Ranking:
        """The ranking as the windows left it: head scores 1 / new rank, then the tail."""
        head = [HeadPlace(position, 1.0 / rank, " | ".join(self.notes.get(position, [])) or None)
                for rank, position in enumerate(self.order, start=1)]
        return self.ranking.with_stage(stage, reorder_head(self.ranking, head, len(self.order)),
                                       explanations=self.explanations)


def slide_windows(calls: ModelCalls, progress: list[WindowProgress], batch_size: int | None,
                  ask: Callable[[VisionLanguageModel, int, list[WindowProgress]], None]) -> list[Ranking]:
    """Every ranking through its windows: at step k, ``ask(model, k, entries)`` for the rankings
    that have a k-th window and are not lost, ``batch_size`` at a time (None: all together); then
    each ranking's result (the incoming order, noted, for a lost one)."""
    for step in range(max((len(p.schedule) for p in progress), default=0)):
        active = [row for row, p in enumerate(progress) if step < len(p.schedule) and row not in calls.lost]
        size = batch_size or max(1, len(active))
        for begin in range(0, len(active), size):
            rows = active[begin:begin + size]
            calls.ask(rows, ask, step, [progress[row] for row in rows])
    return calls.results(lambda row: progress[row].result(calls.stage.name))


def window_note(parsed: ParsedRanking, size: int) -> str | None:
    """What a window's hits should say about its answer: a failure, a partial answer, or nothing."""
    if parsed.failure is not None:
        return f"answer not parsed: {parsed.failure}; kept the incoming order"
    if not parsed.complete:
        return f"model ranked {len(parsed.parsed_ids)} of {size}; the rest kept their order"
    return None


@dataclasses.dataclass(kw_only=True)
class ListwiseLLMReranker(LLMReranker):
    """Reorders the top ``depth`` hits window by window (see the module docstring).

    ``window`` candidates per prompt, windows ``stride`` apart (at most ``window``); ``batch_size``
    windows per model call (None: the windows of all queries at one step together). Result: the
    head's stage score is 1 / new rank; hits after ``depth`` keep their order and score. The
    reasoning a window's answer gave, if any, is ``explanations[name][k - 1]``.
    """

    depth: int = 100
    window: int = 20
    stride: int = 10
    batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 2 or not 1 <= self.stride <= self.window:
            raise InputError(f"Need window >= 2 and 1 <= stride <= window; got window {self.window}, "
                             f"stride {self.stride}.")
        at_least_one("batch_size", self.batch_size)

    def schedule(self, count: int) -> list[Window]:
        """The windows over a ranking of ``count`` hits (only the first ``depth`` are reranked)."""
        return window_schedule(min(count, self.depth), self.window, self.stride)

    @abstractmethod
    def rank_windows(self, model: VisionLanguageModel, windows: Sequence[tuple[str, Sequence[Hit]]]
                     ) -> list[ParsedRanking]:
        """For each (question, hits) window, the model's order of its hits (one call, batched)."""

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        calls = self.model_calls(rankings)
        progress: list[WindowProgress] = []
        if calls.model is not None:
            progress = [WindowProgress(ranking, self.question(query), self.schedule(len(ranking)),
                                       list(range(min(self.depth, len(ranking)))))
                        for query, ranking in zip(queries, rankings, strict=True)]
        return slide_windows(calls, progress, self.batch_size, self._step)

    def _step(self, model: VisionLanguageModel, step: int, progress: list[WindowProgress]) -> None:
        """Ask for window ``step`` of every ranking in ``progress`` and apply the answers; a window
        whose candidates cannot be shown (a picture that cannot be loaded) keeps its order."""
        windows, asked = [], []
        for entry in progress:
            positions, hits = entry.window_hits(step)
            windows.append((entry.question, hits))
            asked.append((entry, positions))
        try:
            answers = self.rank_windows(model, windows) if windows else []
        except (InputError, OSError) as error:
            if len(windows) == 1:
                entry, positions = asked[0]
                entry.note(positions, f"window {step + 1}: not asked: {error}; kept the incoming order")
                entry.explanations.append("")
                return
            for entry in progress:  # find the window at fault: ask one at a time
                self._step(model, step, [entry])
            return
        for (entry, _), parsed in zip(asked, answers, strict=True):
            entry.apply(step, parsed)
