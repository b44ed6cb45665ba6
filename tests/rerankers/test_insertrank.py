"""The InsertRank stage: its prompt against rank_llm's community template (transcribed here by hand),
the score formats and where the score comes from, the permutation it parses (and what it does with
broken answers), and real runs on the tiny Qwen3 and Qwen2-VL checked against the models' own output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.first import parse_permutation
from mmrank.rerankers.insertrank import InsertRankReranker, first_stage_score, shown_scores
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.rerankers.test_first import QUESTION, SYSTEM, TOY, FakeModel, ranking

SCORES = [12.3456, 8.0, 3.14159]

# rank_llm at 99f70f1b90fe27c888b3d56598a78e1f4d4582f3 (the same file at HEAD 1b3cabb),
# src/rank_llm/rerank/prompt_templates/insert_rank_template.yaml ("passge" sic) through
# singleturn_listwise_inference_handler.py (_generate_body: score f"{cand.score:.3f}") and
# inference_handler.py (_convert_doc_to_prompt_content, _replace_number also on the query): typed out by hand.
INSERT_RANK_USER = (
    "I will provide you with 3 passages, each indicated by a numerical identifier []. I will also provide the BM25 "
    "scores from a lexical retrieval system.\n\n"
    "Rank the passages based on their relevance to the search query: what causes tides (1)?.\n"
    "[1] Title: Tides Content: Tides follow the Moon's pull (1).\n"
    "BM25 score for passge [1]: {0}\n"
    "[2] The Sun also pulls on the oceans.\n"
    "BM25 score for passge [2]: {1}\n"
    "[3] Title: Cats Content: Cats sleep a lot.\n"
    "BM25 score for passge [3]: {2}\n"
    "Search Query: what causes tides (1)?.\n"
    "Rerank the above 3 passages based on their relevance to the query. Consider both the document content and "
    "the BM25 scores as signals for relevance. All the passages should be included and listed using identifiers, "
    "in descending order of relevance. The output format should be [] > [], e.g., [2] > [1]. Return the ranking "
    "as a list of numbers from 1 to 3, most relevant first. Answer concisely and directly and only respond with "
    "the ranking results, do not say any word or explain.")


def scored_hits(items: list[Item] = TOY, scores: list[float] = SCORES) -> list[Hit]:
    """Hits fused from a dense path and BM25: ``bm25`` holds the BM25 score, ``retrieve`` the fused one."""
    return [Hit(item, 0.5 - n / 10, stages={"text": StageScore(0.9 - n / 10, n + 1),
                                            "bm25": StageScore(score, n + 1),
                                            "retrieve": StageScore(0.5 - n / 10, n + 1)})
            for n, (item, score) in enumerate(zip(items, scores, strict=True))]


def sent_user_text(stage: InsertRankReranker, hits: list[Hit], question: str = QUESTION) -> str:
    model = FakeModel(texts=["[1]"])
    stage.rank_windows(model, [(question, hits)])
    [(_, [conversation], _, _, _)] = model.calls
    assert conversation[0] == {"role": "system", "content": SYSTEM}
    return conversation[1]["content"]


# ------------------------------------------------------------------------------ prompts
def test_the_prompt_is_the_insert_rank_template_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    model = FakeModel(texts=["[1]"])
    InsertRankReranker(model=model).rank_windows(model, [(QUESTION, scored_hits())])
    [(method, [conversation], max_new_tokens, prefix, temperature)] = model.calls
    user = INSERT_RANK_USER.format("12.346", "8.000", "3.142")
    assert conversation == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    assert (method, prefix, temperature, max_new_tokens) == ("generate", "", 0.0, 15)
    # A generated permutation: the chat template with the generation prompt, no assistant prefix.
    assert tiny_llm.prompt_text(conversation) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def test_score_formats() -> None:
    """min-max over the window: (8.0 - 3.14159) / (12.3456 - 3.14159) = 0.52787; x100: times 100."""
    minmax = sent_user_text(InsertRankReranker(score_format="minmax"), scored_hits())
    assert minmax == INSERT_RANK_USER.format("1.000", "0.528", "0.000")
    x100 = sent_user_text(InsertRankReranker(score_format="x100"), scored_hits())
    assert x100 == INSERT_RANK_USER.format("1234.560", "800.000", "314.159")
    assert shown_scores([2.0, 2.0], "minmax") == [1.0, 1.0]


def test_the_score_comes_from_bm25_else_the_first_stage() -> None:
    hits = scored_hits()
    assert [first_stage_score(hit, None) for hit in hits] == SCORES  # bm25 over the fused score
    assert first_stage_score(hits[0], "text") == 0.9
    dense = Hit(TOY[0], 0.7, stages={"text": StageScore(0.7, 1), "retrieve": StageScore(0.016, 1)})
    assert first_stage_score(dense, None) == 0.7  # no bm25: the first stage it records
    fused = sent_user_text(InsertRankReranker(score_stage="retrieve"), hits)
    assert fused == INSERT_RANK_USER.format("0.500", "0.400", "0.300")
    with pytest.raises(InputError, match=r"hit 'd1' has no score from 'run' \(stages with a score: 'text', 'bm25', "
                                         r"'retrieve'\); set score_stage"):
        first_stage_score(hits[0], "run")


def test_a_hit_without_the_score_keeps_its_window_with_a_note() -> None:
    model = FakeModel(texts=["[2] > [1]"])
    stage = InsertRankReranker(model=model, score_stage="run")
    [result] = stage.rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == ["p0", "p1", "p2"] and model.calls == []
    assert result[0].stages["insertrank"].note.startswith(
        "window 1: not asked: The insertrank stage shows each candidate's first-stage score, but hit 'p0' has no "
        "score from 'run'")


# -------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "order", "note"), [
    ("[3] > [1] > [2]", ["p2", "p0", "p1"], None),
    ("3, 1, 2", ["p2", "p0", "p1"], None),  # the reference's cleanup reads bare numbers
    ("", ["p0", "p1", "p2"], "window 1: answer not parsed: empty output; kept the incoming order"),
    ("I cannot rank these.", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no identifier from [1] to [3]; kept the incoming order"),
    ("[7] > [9]", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no identifier from [1] to [3]; kept the incoming order"),
    ("[2] > [2] > [2]", ["p1", "p0", "p2"], "window 1: model ranked 1 of 3; the rest kept their order"),
])
def test_generated_permutations_and_broken_ones(text: str, order: list[str], note: str | None) -> None:
    model = FakeModel(texts=[text])
    [result] = InsertRankReranker(model=model).rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == order
    assert {hit.stages["insertrank"].note for hit in result} == {note}
    assert result.explanations["insertrank"] == (text,)


@given(scores=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=20))
def test_min_max_scores_lie_between_0_and_1_in_the_same_order(scores: list[float]) -> None:
    shown = shown_scores(scores, "minmax")
    assert all(0.0 <= value <= 1.0 for value in shown)
    assert all((a < b) <= (x <= y) for a, b, x, y in zip(scores, scores[1:], shown, shown[1:]))


@given(ids=st.lists(st.integers(min_value=0, max_value=40), max_size=30), count=st.integers(min_value=1, max_value=20))
def test_numeric_answers_keep_the_usable_ids_first(ids: list[int], count: int) -> None:
    parsed = parse_permutation(" > ".join(f"[{i}]" for i in ids), count, "numbers")
    usable = list(dict.fromkeys(i for i in ids if 1 <= i <= count))
    assert list(parsed.parsed_ids) == usable and sorted(parsed.order) == list(range(count))


# --------------------------------------------------------------------------- real runs
def test_real_generation_on_the_tiny_model_is_parsed_as_its_own_output(tiny_llm: HFLanguageModel) -> None:
    stage = InsertRankReranker(model=tiny_llm, depth=5, window=5, stride=5, max_new_tokens=24)
    incoming = ranking(7, "tides")
    tiny_llm.usage.reset()
    [result] = stage.rerank_batch([incoming.query], [incoming], None)
    assert tiny_llm.usage.calls == 1 and tiny_llm.usage.generated_tokens > 0
    conversation = stage.window_conversation(tiny_llm, "tides", incoming.hits[:5])
    assert "BM25 score for passge [5]: 0.996\n" in conversation[1]["content"]
    [generation] = tiny_llm.generate([conversation], max_new_tokens=24)
    parsed = parse_permutation(generation.text, 5, "numbers")
    assert result.ids == [incoming.ids[i] for i in parsed.order] + incoming.ids[5:]
    assert result.explanations["insertrank"] == (generation.text,)


def test_single_token_mode_on_numeric_ids(tiny_llm: HFLanguageModel) -> None:
    stage = InsertRankReranker(model=tiny_llm, mode="single-token", depth=6, window=6, stride=3, top_k=None)
    incoming = ranking(6, "moon")
    [result] = stage.rerank_batch([incoming.query], [incoming], None)
    conversation = stage.window_conversation(tiny_llm, "moon", incoming.hits)
    row = tiny_llm.token_logprobs([conversation], [str(n) for n in range(1, 7)], assistant_prefix="[")[0]
    assert result.ids == [incoming.ids[i] for i in np.argsort(-row, kind="stable")]
    with pytest.raises(InputError, match="use window <= 9"):
        InsertRankReranker(mode="single-token")  # window 20 of numbers


def test_pages_show_their_score_line_after_the_picture(tiny_mllm: Any, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green"]):
        path = tmp_path / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    hits = scored_hits(items, [7.5, 2.25])
    stage = InsertRankReranker(model=tiny_mllm, max_new_tokens=8)
    [_, user] = stage.window_conversation(tiny_mllm, "red", hits)
    assert [part.get("text") for part in user["content"]][1:4] == [
        None, "\nBM25 score for passge [1]: 7.500\n[2] ", None]
    assert user["content"][0]["text"].endswith("search query: red.\n[1] ")
    assert user["content"][4]["text"].startswith("\nBM25 score for passge [2]: 2.250\nSearch Query: red.\n")
    [result] = stage.rerank_batch([Query(text="red")], [Ranking(Query(text="red"), tuple(hits))], None)
    [generation] = tiny_mllm.generate([[_, user]], max_new_tokens=8)
    assert result.ids == [items[i].id for i in parse_permutation(generation.text, 2, "numbers").order]


def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "insertrank", "score_format": "minmax", "score_stage": "bm25",
                              "identifiers": "letters", "window": 10, "stride": 5}).to_config()
    assert create_reranker(config).to_config() == config
    assert InsertRankReranker.default_model == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(InputError, match="score_format must be one of raw, minmax, x100"):
        InsertRankReranker(score_format="log")
    with pytest.raises(InputError, match="score_stage names a stage"):
        InsertRankReranker(score_stage="")
