"""The MM-R5 reasoning reranker: its prompt, its window schedule, and its results with the real tiny
Qwen2-VL (checked against the model's own answers, window by window), plus forced malformed answers
from a scripted model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.images import item_image
from mmrank.mllm import Generation, Usage, shared_mllm
from mmrank.mllm.parsing import parse_answer_ranking
from mmrank.mllm.prompts import REASONING_SYSTEM_PROMPT, REASONING_TEMPLATE
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.reasoning import ReasoningReranker, window_schedule
from mmrank.retrieval import HybridRetriever
from mmrank.types import Item, Query, Ranking
from tests.paths import ASSETS

DPI = 30
# Small pages keep five of them well inside the tiny model's 4096 positions.
OPTIONS = {"device": "cpu", "dtype": "float32", "max_pixels": 28 * 28 * 16}
# With these questions the tiny model's answers do move pages (some windows parse, some do not).
QUESTIONS = ["Which factory makes the pressure sensors?",
             "Which region had the fastest sales growth last year?",
             "Who flew the first kerosene rocket?"]
REAL = {"depth": 7, "window": 5, "stride": 2, "max_new_tokens": 128, "dpi": DPI}
REAL_WINDOWS = [(2, 7), (0, 5)]


class ScriptedModel:
    """Answers each conversation with the next scripted text and records every call: only for
    forcing malformed answers."""

    name = "scripted"

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts, self.calls, self.usage = list(texts), [], Usage()

    def generate(self, conversations: Sequence[list[dict[str, Any]]], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, assistant_prefix: str = "") -> list[Generation]:
        self.calls.append((list(conversations), max_new_tokens, temperature, assistant_prefix))
        return [Generation(self.texts.pop(0), 0, 0) for _ in conversations]

    def choice_probability(self, conversations, choices, *, assistant_prefix: str = "") -> np.ndarray:
        raise AssertionError("the reasoning reranker only generates")


@pytest.fixture(scope="module")
def first_stage(docs) -> list[Ranking]:
    """CLIP page images + page text + BM25, fused: the 14 best pages per question."""
    return Pipeline(docs, HybridRetriever(paths=["image", "text", "bm25"])).search_batch(QUESTIONS, k=14)


@pytest.fixture(scope="module")
def model(tiny_mllm_dir: Path):
    """The tiny Qwen2-VL with small pages; rerankers naming the same folder and options share it."""
    return shared_mllm(str(tiny_mllm_dir), **OPTIONS)


@pytest.fixture(scope="module")
def real_reranker(tiny_mllm_dir: Path, model) -> ReasoningReranker:
    return ReasoningReranker(model=str(tiny_mllm_dir), model_options=OPTIONS, **REAL)


@pytest.fixture(scope="module")
def reranked(real_reranker, first_stage, docs) -> list[Ranking]:
    return real_reranker.rerank_batch([r.query for r in first_stage], first_stage, docs)


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def hand_conversation(question: str, items: Sequence[Item]) -> list[dict[str, Any]]:
    """MM-R5's conversation, built here from the prompt texts alone."""
    content = [{"type": "text", "text": REASONING_TEMPLATE.format(question=question, count=len(items))}]
    for index, item in enumerate(items, start=1):
        content += [{"type": "text", "text": f"\nImage {index}: "}, {"type": "image", "image": item_image(item, DPI)}]
    return [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": content}]


def notes(ranking: Ranking, stage: str = "reasoning") -> dict[str, str | None]:
    return {hit.item_id: hit.stages[stage].note for hit in ranking.hits}


# -------------------------------------------------------------------------- windows
def test_window_schedule_by_hand() -> None:
    assert window_schedule(12, 5, 2) == [(7, 12), (5, 10), (3, 8), (1, 6), (0, 5)]
    assert window_schedule(20, 5, 2)[0] == (15, 20) and window_schedule(20, 5, 2)[-2:] == [(1, 6), (0, 5)]
    assert window_schedule(7, 5, 5) == [(2, 7), (0, 5)]
    assert window_schedule(5, 5, 2) == [(0, 5)]
    assert window_schedule(3, 5, 2) == [(0, 3)]
    assert window_schedule(1, 5, 2) == window_schedule(0, 5, 2) == []
    assert ReasoningReranker(depth=12, window=5, stride=2).schedule(40) == window_schedule(12, 5, 2)


@given(count=st.integers(2, 60), window=st.integers(2, 12), data=st.data())
def test_windows_slide_from_the_back_to_the_front(count: int, window: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, window))
    windows = window_schedule(count, window, stride)
    assert all(end - start == min(window, count) for start, end in windows)
    assert windows[0][1] == count and windows[-1][0] == 0
    starts = [start for start, _ in windows]
    assert all(a - b == stride for a, b in zip(starts[:-2], starts[1:-1]))
    if len(windows) > 1:
        assert 0 < starts[-2] <= stride
    assert set().union(*(range(start, end) for start, end in windows)) == set(range(count))


def test_options_defaults_and_registry(monkeypatch, tiny_mllm_dir: Path) -> None:
    reranker = create_reranker({"type": "reasoning", "window": 4})
    assert isinstance(reranker, ReasoningReranker)
    assert (reranker.depth, reranker.window, reranker.step, reranker.max_new_tokens, reranker.temperature,
            reranker.name) == (20, 4, 2, 1024, 0.0, "reasoning")
    assert ReasoningReranker(window=2).step == 1 and ReasoningReranker(window=3).step == 1
    for bad in ({"window": 1}, {"stride": 0}, {"window": 5, "stride": 6}, {"max_new_tokens": 0},
                {"temperature": -0.1}, {"depth": 0}, {"batch_size": 0}):
        with pytest.raises(InputError):
            ReasoningReranker(**bad)
    asked = []
    monkeypatch.setattr("mmrank.mllm.shared_mllm",
                        lambda model, *, url=None, **options: asked.append((model, url, options)) or "loaded")
    for stage in (ReasoningReranker(), ReasoningReranker(url="http://gpu:8000/v1"),
                  ReasoningReranker(model=str(tiny_mllm_dir), model_options={"device": "cpu"})):
        assert stage.handle.get() == "loaded"
    assert asked == [("i2vec/MM-R5", None, {"max_pixels": 1280 * 28 * 28}),
                     (None, "http://gpu:8000/v1", {"max_pixels": 1280 * 28 * 28}),  # the server's first model
                     (str(tiny_mllm_dir), None, {"device": "cpu"})]


def test_yaml_pipeline(docs, monkeypatch, tiny_mllm_dir: Path) -> None:
    pipeline = Pipeline.from_yaml("docqa-mmr5", docs)
    assert (list(pipeline.retriever.paths), pipeline.retriever.fusion, pipeline.retriever.depth) == (
        ["image", "text", "bm25"], "rrf", 50)
    [stage] = pipeline.rerankers
    assert isinstance(stage, ReasoningReranker)
    assert (stage.depth, stage.window, stage.stride, stage.max_new_tokens, stage.temperature) == (20, 5, 2, 1024, 0.0)
    asked = []
    monkeypatch.setattr("mmrank.mllm.shared_mllm",
                        lambda model, *, url=None, **options: asked.append((model, url, options)))
    stage.handle.get()
    Pipeline.from_yaml("docqa-mmr5", docs, mllm=str(tiny_mllm_dir)).rerankers[0].handle.get()
    Pipeline.from_yaml("docqa-mmr5", docs, mllm_url="http://gpu:8000/v1").rerankers[0].handle.get()
    assert asked == [("i2vec/MM-R5", None, {"max_pixels": 1003520}),
                     (str(tiny_mllm_dir), None, {"max_pixels": 1003520}),
                     ("i2vec/MM-R5", "http://gpu:8000/v1", {"max_pixels": 1003520})]


# --------------------------------------------------------------------------- prompt
def test_conversation_follows_mm_r5s_prompt(first_stage) -> None:
    items = [hit.item for hit in first_stage[0].hits[:5]]
    system, user = ReasoningReranker(dpi=DPI).window_conversation(QUESTIONS[0], items)
    assert system == {"role": "system", "content": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
        "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
        "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
        "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>")}
    assert user["role"] == "user"
    parts = user["content"]
    assert parts[0] == {"type": "text", "text": (
        "Please rank the following images according to their relevance to the question. Provide your response in "
        "the format: <think>your reasoning process here</think><answer>[image_id_1, image_id_2, ...]</answer> "
        "where the numbers in the list represent the ranking order of images'id from most to least relevant. "
        "Before outputting the answer, you need to analyze each image and provide your analysis process.For "
        "example: <think>Image 1 shows the most relevant content because...</think><answer>[id_most_relevant, "
        "id_second_relevant, ...]</answer>\nThe question is: Which factory makes the pressure sensors?\n\n"
        "There are 5 images, id from 1 to 5, Image ID to image mapping:\n")}
    assert parts[1::2] == [{"type": "text", "text": f"\nImage {index}: "} for index in range(1, 6)]
    assert [part["type"] for part in parts[2::2]] == ["image"] * 5
    for part, item in zip(parts[2::2], items, strict=True):
        assert np.array_equal(pixels(part["image"]), pixels(item_image(item, DPI)))


def test_image_only_queries_are_refused(first_stage, docs) -> None:
    reranker = ReasoningReranker(model=ScriptedModel([]), dpi=DPI)
    with pytest.raises(InputError, match="has none"):
        reranker.rerank(Query(image=str(ASSETS / "images" / "cat.jpg")), first_stage[0], docs)


# ------------------------------------------------------------- the real tiny model
def test_final_order_is_the_models_answers_applied_window_by_window(reranked, first_stage, model) -> None:
    moved = 0
    for result, incoming in zip(reranked, first_stage, strict=True):
        head, expected_notes, reasonings = list(incoming.hits[:7]), {}, []
        for number, (begin, end) in enumerate(REAL_WINDOWS, start=1):
            window = head[begin:end]
            text = model.generate([hand_conversation(incoming.query.text, [h.item for h in window])],
                                  max_new_tokens=128)[0].text
            parsed = parse_answer_ranking(text, end - begin)
            head[begin:end] = [window[index] for index in parsed.order]
            reasonings.append(parsed.reasoning)
            if parsed.failure:
                note = f"answer not parsed: {parsed.failure}; kept the incoming order"
            elif not parsed.complete:
                note = f"model ranked {len(parsed.parsed_ids)} of 5; the rest kept their order"
            for hit in window if parsed.failure or not parsed.complete else []:
                expected_notes.setdefault(hit.item_id, []).append(f"window {number}: {note}")
        assert result.ids == [hit.item_id for hit in head] + incoming.ids[7:]
        assert result.explanations["reasoning"] == tuple(reasonings)
        assert notes(result) == {hit.item_id: " | ".join(expected_notes.get(hit.item_id, [])) or None
                                 for hit in result.hits}
        assert [hit.stages["reasoning"].score for hit in result.hits] == [1 / rank for rank in range(1, 8)] + [None] * 7
        assert [hit.score for hit in result.hits[7:]] == [hit.score for hit in incoming.hits[7:]]
        moved += result.ids != incoming.ids
    assert moved, "the tiny model's answers no longer move any page here: pick other QUESTIONS"


def test_a_batch_equals_one_query_at_a_time(reranked, real_reranker, first_stage, docs) -> None:
    alone = [real_reranker.rerank(ranking.query, ranking, docs) for ranking in first_stage]
    assert [r.ids for r in alone] == [r.ids for r in reranked]
    assert [r.explanations for r in alone] == [r.explanations for r in reranked]
    assert [notes(r) for r in alone] == [notes(r) for r in reranked]


def test_greedy_decoding_is_deterministic(reranked, real_reranker, first_stage, docs) -> None:
    again = real_reranker.rerank_batch([r.query for r in first_stage], first_stage, docs)
    assert [(r.ids, r.explanations, notes(r)) for r in again] == [(r.ids, r.explanations, notes(r)) for r in reranked]


@pytest.mark.parametrize("mode", ["keep-order", "fail"])
def test_a_missing_model_keeps_the_order_or_fails(mode: str, first_stage, docs, tmp_path: Path) -> None:
    reranker = ReasoningReranker(model=str(tmp_path / "no-such-model"), on_unavailable=mode, dpi=DPI)
    if mode == "fail":
        with pytest.raises(ModelUnavailableError, match="no-such-model"):
            reranker.rerank(first_stage[0].query, first_stage[0], docs)
        return
    result = reranker.rerank(first_stage[0].query, first_stage[0], docs)
    assert result.ids == first_stage[0].ids
    assert [hit.score for hit in result.hits] == [hit.score for hit in first_stage[0].hits]
    assert all(note.startswith("model unavailable: ") and "no-such-model" in note for note in notes(result).values())


# ------------------------------------------------------ forced malformed answers
def test_malformed_answers_fall_back_window_by_window(first_stage, docs) -> None:
    incoming = first_stage[0]
    p = incoming.ids  # p[i]: the page at first-stage position i
    model = ScriptedModel([
        "<think>reversed</think><answer>[5, 4, 3, 2, 1]</answer>",  # window 1, [7, 12): complete
        "page two, surely",                                         # window 2, [5, 10): no answer
        "<answer>[2, 2, 9",                                         # window 3, [3, 8): repeat, 9, cut off
        "<answer>[]</answer>",                                      # window 4, [1, 6): empty
        "<answer>Image 5, image 1</answer>",                        # window 5, [0, 5): partial
    ])
    reranker = ReasoningReranker(model=model, depth=12, window=5, stride=2, max_new_tokens=64, dpi=DPI)
    result = reranker.rerank(incoming.query, incoming, docs)
    # [7, 12) reversed: p0..p6 p11 p10 p9 p8 p7; [3, 8) = p3 p4 p5 p6 p11 -> p4 first;
    # [0, 5) = p0 p1 p2 p4 p3 -> Image 5 (p3), Image 1 (p0), then p1 p2 p4.
    assert result.ids == [p[i] for i in (3, 0, 1, 2, 4, 5, 6, 11, 10, 9, 8, 7, 12, 13)]
    window2 = "window 2: answer not parsed: no <answer> block in the output; kept the incoming order"
    window3 = "window 3: model ranked 1 of 5; the rest kept their order"
    window4 = "window 4: answer not parsed: no id from 1 to 5 in the <answer> block; kept the incoming order"
    window5 = "window 5: model ranked 2 of 5; the rest kept their order"
    assert notes(result) == {
        p[0]: window5, p[1]: f"{window4} | {window5}", p[2]: f"{window4} | {window5}",
        p[3]: f"{window3} | {window4} | {window5}", p[4]: f"{window3} | {window4} | {window5}",
        p[5]: f"{window2} | {window3} | {window4}", p[6]: f"{window2} | {window3}",
        p[11]: f"{window2} | {window3}", p[10]: window2, p[9]: window2, p[8]: None, p[7]: None,
        p[12]: None, p[13]: None}
    assert result.explanations["reasoning"] == ("reversed", "page two, surely", "", "", "")
    assert [(len(conversations), *options) for conversations, *options in model.calls] == [(1, 64, 0.0, "")] * 5
    first_window = model.calls[0][0][0][1]["content"][2::2]
    assert [pixels(part["image"]).tobytes() for part in first_window] == [
        pixels(item_image(hit.item, DPI)).tobytes() for hit in incoming.hits[7:12]]


def test_windows_of_all_queries_share_each_model_call(first_stage, docs) -> None:
    short = first_stage[1].top(6)  # windows [1, 6) and [0, 5), against five windows for 12 hits
    model = ScriptedModel(["<answer>[2, 1]</answer>"] * 7)
    reranker = ReasoningReranker(model=model, depth=12, window=5, stride=2, dpi=DPI)
    long, short = reranker.rerank_batch([first_stage[0].query, short.query], [first_stage[0], short], docs)
    assert [len(conversations) for conversations, *_ in model.calls] == [2, 2, 1, 1, 1]
    assert len(long.explanations["reasoning"]) == 5 and len(short.explanations["reasoning"]) == 2
    # short: [1, 6) swaps q1 and q2, then [0, 5) = q0 q2 q1 q3 q4 swaps q0 and q2.
    q = first_stage[1].ids
    assert short.ids == [q[2], q[0], q[1], q[3], q[4], q[5]]
    one_at_a_time = ScriptedModel(["<answer>[2, 1]</answer>"] * 7)
    reranker = ReasoningReranker(model=one_at_a_time, depth=12, window=5, stride=2, dpi=DPI, batch_size=1)
    results = reranker.rerank_batch([first_stage[0].query, short.query], [first_stage[0], first_stage[1].top(6)], docs)
    assert [len(conversations) for conversations, *_ in one_at_a_time.calls] == [1] * 7
    assert [r.ids for r in results] == [long.ids, short.ids]


def test_a_window_whose_pages_cannot_be_loaded_keeps_its_order(first_stage, docs, tmp_path: Path) -> None:
    ghost = Item(id="ghost", kind="image", source=str(tmp_path / "gone.png"))
    hits = list(first_stage[0].hits[:7])
    hits[6] = dataclasses.replace(hits[6], item=ghost)
    incoming = dataclasses.replace(first_stage[0], hits=tuple(hits))
    model = ScriptedModel(["<think>backwards</think><answer>[5, 4, 3, 2, 1]</answer>"])
    reranker = ReasoningReranker(model=model, depth=7, window=5, stride=2, dpi=DPI)
    result = reranker.rerank(incoming.query, incoming, docs)
    p = incoming.ids
    assert result.ids == [p[i] for i in (4, 3, 2, 1, 0, 5, 6)]  # window 1 [2, 7) holds the ghost
    assert notes(result)["ghost"].startswith("window 1: not asked: Cannot read image")
    assert notes(result)["ghost"].endswith("; kept the incoming order") and notes(result)[p[0]] is None
    assert result.explanations["reasoning"] == ("", "backwards")
    assert [len(conversations) for conversations, *_ in model.calls] == [1]
