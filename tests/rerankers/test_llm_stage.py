"""The bases the seed papers' LLM stages share (mmrank.rerankers.llm_stage, .listwise): how candidates
are shown, pointwise ordering, and sliding windows, with small stages and fake models whose answers
are fixed, so that every order is computed by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm.base import Usage
from mmrank.mllm.parsing import ParsedRanking, complete_order
from mmrank.rerankers.listwise import ListwiseLLMReranker, window_schedule
from mmrank.rerankers.llm_stage import PointwiseLLMReranker, first_words, title_and_body
from mmrank.types import Hit, Item, Query, Ranking, StageScore


class FakeModel:
    """A backend that answers nothing by itself: the stages below read ``value`` off it."""

    def __init__(self, accepts_images: bool = False, fail: bool = False) -> None:
        self.name, self.usage, self.accepts_images, self.fail = "fake", Usage(), accepts_images, fail


def ranking(ids: str, kind: str = "text", query: str = "q") -> Ranking:
    hits = tuple(Hit(Item(i, kind, text=f"passage {i}" if kind == "text" else None), 1.0 - n / 100,
                     stages={"retrieve": StageScore(1.0 - n / 100, n + 1)}) for n, i in enumerate(ids))
    return Ranking(Query(text=query), hits, timings={"retrieve": 0.01})


@dataclasses.dataclass(kw_only=True)
class LetterScore(PointwiseLLMReranker):
    """Scores a hit by the position of its id's letter in the alphabet (z best); ids in ``skip`` are
    not scored. Counts the candidates per call."""

    name: str = "letters"
    depth: int = 5
    skip: str = ""
    seen: list = dataclasses.field(default_factory=list)

    def score_candidates(self, model: Any, questions: Sequence[str], hits: Sequence[Hit]) -> list:
        if model.fail:
            raise ModelUnavailableError("server gone")
        self.seen.append(len(hits))
        return [(None, "not scored: skipped") if hit.item_id in self.skip else (float(ord(hit.item_id)), None)
                for hit in hits]


@dataclasses.dataclass(kw_only=True)
class ReverseWindows(ListwiseLLMReranker):
    """Answers every window with its hits reversed, except windows holding ``broken`` (no answer)."""

    name: str = "reverse"
    broken: str = ""
    windows: list = dataclasses.field(default_factory=list)

    def rank_windows(self, model: Any, windows: Sequence[tuple[str, Sequence[Hit]]]) -> list[ParsedRanking]:
        self.windows.append([[hit.item_id for hit in hits] for _, hits in windows])
        answers = []
        for _, hits in windows:
            if any(hit.item_id == self.broken for hit in hits):
                answers.append(ParsedRanking(tuple(range(len(hits))), (), False, "no answer", ""))
            else:
                ids = list(range(len(hits), 0, -1))
                answers.append(ParsedRanking(tuple(complete_order(ids, len(hits))), tuple(ids), True, None, "why"))
        return answers


def test_title_and_body_split_beir_items() -> None:
    item = Item("d1", "text", text="Cats\n\nCats purr  a lot.", metadata={"title": "Cats"})
    assert title_and_body(item) == ("Cats", "Cats purr  a lot.")
    assert title_and_body(Item("d2", "text", text="no title")) == ("", "no title")
    assert first_words(" one two\nthree  four ", 3) == "one two three"


def test_pointwise_sorts_the_head_and_keeps_unscored_hits_and_the_tail() -> None:
    stage = LetterScore(model=FakeModel(), skip="b", batch_size=4)
    result = stage.rerank_batch([Query(text="q")] * 2, [ranking("abcdefg"), ranking("xyz")], None)
    assert result[0].ids == list("edcabfg")  # e, d, c, a by score; b unscored after them; f, g the tail
    assert result[1].ids == list("zyx")
    assert stage.seen == [4, 4]  # 5 + 3 candidates, 4 per call
    records = {hit.item_id: hit.stages["letters"] for hit in result[0]}
    assert records["b"].score is None and records["b"].note == "not scored: skipped"
    assert records["e"].score == float(ord("e")) and records["f"].score is None


def test_pointwise_keeps_the_order_of_rankings_whose_call_failed() -> None:
    stage = LetterScore(model=FakeModel(fail=True))
    result = stage.rerank_batch([Query(text="q")], [ranking("abc")], None)
    assert result[0].ids == list("abc")
    assert all(hit.stages["letters"].note == "model unavailable: server gone" for hit in result[0])


def test_pictures_are_shown_only_to_models_that_read_them() -> None:
    page = Item("p1", "page", source="doc.pdf", page=1, text="page text")
    text = Item("t1", "text", text="passage")
    stage = LetterScore(model=FakeModel())
    assert not stage.shows_picture(FakeModel(accepts_images=True), text)
    assert stage.shows_picture(FakeModel(accepts_images=True), page)
    assert not stage.shows_picture(FakeModel(accepts_images=False), page)
    assert stage.candidate_part(FakeModel(), page, "as text") == {"type": "text", "text": "as text"}
    assert not LetterScore(model=FakeModel(), use_images="never").shows_picture(FakeModel(accepts_images=True), page)
    assert LetterScore(model=FakeModel(), use_images="always").shows_picture(FakeModel(), page)
    with pytest.raises(InputError, match="use_images must be one of auto, always, never"):
        LetterScore(use_images="sometimes")


def test_windows_slide_from_the_back_and_bubble_the_best_up() -> None:
    stage = ReverseWindows(model=FakeModel(), depth=6, window=4, stride=2)
    assert stage.schedule(10) == window_schedule(6, 4, 2) == [(2, 6), (0, 4)]
    [result] = stage.rerank_batch([Query(text="q")], [ranking("abcdefgh")], None)
    # [2, 6) reversed: a b f e d c; then [0, 4) reversed: e f b a d c; g h untouched.
    assert result.ids == list("efbadcgh")
    assert stage.windows == [[list("cdef")], [list("abfe")]]
    assert [hit.stages["reverse"].score for hit in result][:6] == [1 / rank for rank in range(1, 7)]
    assert result.explanations["reverse"] == ("why", "why")


def test_a_window_that_does_not_parse_keeps_its_order_with_a_note() -> None:
    stage = ReverseWindows(model=FakeModel(), depth=6, window=4, stride=2, broken="a")
    [result] = stage.rerank_batch([Query(text="q")], [ranking("abcdef")], None)
    assert result.ids == list("abfedc")  # the second window, holding a, kept its order
    notes = {hit.item_id: hit.stages["reverse"].note for hit in result}
    assert notes["a"] == "window 2: answer not parsed: no answer; kept the incoming order"
    assert notes["c"] is None


def test_windows_of_all_queries_at_one_step_go_together() -> None:
    stage = ReverseWindows(model=FakeModel(), depth=6, window=4, stride=2)
    results = stage.rerank_batch([Query(text="q")] * 3, [ranking("abcdef"), ranking("uvwxyz"), ranking("mn")], None)
    assert [len(call) for call in stage.windows] == [3, 2]  # step 1: all three; step 2: the two longer ones
    assert results[2].ids == ["n", "m"]
    with pytest.raises(InputError, match="Need window >= 2 and 1 <= stride <= window"):
        ReverseWindows(window=4, stride=5)
