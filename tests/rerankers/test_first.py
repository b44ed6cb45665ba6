"""The FIRST stage: its prompts against rank_llm's and the authors' texts (transcribed here by hand),
FIRST's order from fixed log-probabilities, the generated-permutation parser (fuzzed), the window
schedule and its cost on the tiny Qwen3 (single-token: no generated token at all), the word cap,
and real runs on the tiny Qwen3 and Qwen2-VL checked against the models' own numbers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError
from mmrank.mllm import Generation, Usage
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.first import (
    FirstReranker,
    logprob_ranking,
    parse_permutation,
    passage_text,
)
from mmrank.rerankers.listwise import window_schedule
from mmrank.types import Hit, Item, Query, Ranking, StageScore

SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
QUESTION = "what causes tides [1]?"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# The golden case: a title, a mojibake apostrophe and a bracketed number; no title; a title.
TOY = [Item("d1", "text", text="Tides\n\nTides follow the Moonâ€™s pull [1].", metadata={"title": "Tides"}),
       Item("d2", "text", text="The Sun also pulls on the  oceans."),
       Item("d3", "text", text="Cats\n\nCats sleep a lot.", metadata={"title": "Cats"})]

# rank_llm at 99f70f1b90fe27c888b3d56598a78e1f4d4582f3 (parent of 94d8c51 "Simplify vllm batch (#345)"),
# src/rank_llm/rerank/prompt_templates/rank_zephyr_alpha_template.yaml through
# singleturn_listwise_inference_handler.py (prefix + "[{rank}] {candidate}\n" per passage + suffix) and
# inference_handler.py (_convert_doc_to_prompt_content: "Title: t Content: c", fix_text, 300 words,
# _replace_number, which also rewrites the query): typed out by hand.
RANK_LLM_USER = (
    "I will provide you with 3 passages, each indicated by an alphabetical identifier []. Rank the passages based "
    "on their relevance to the search query: what causes tides (1)?.\n"
    "[A] Title: Tides Content: Tides follow the Moon's pull (1).\n"
    "[B] The Sun also pulls on the oceans.\n"
    "[C] Title: Cats Content: Cats sleep a lot.\n"
    "Search Query: what causes tides (1)?.\n"
    "Rank the 3 passages above based on their relevance to the search query. All the passages should be included "
    "and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., "
    "[B] > [A], Answer concisely and directly and only respond with the ranking results, do not say any word or "
    "explain.")
# The same through rank_zephyr_template.yaml (numeric identifiers).
RANK_LLM_NUMBERS_USER = (
    "I will provide you with 3 passages, each indicated by a numerical identifier []. Rank the passages based "
    "on their relevance to the search query: what causes tides (1)?.\n"
    "[1] Title: Tides Content: Tides follow the Moon's pull (1).\n"
    "[2] The Sun also pulls on the oceans.\n"
    "[3] Title: Cats Content: Cats sleep a lot.\n"
    "Search Query: what causes tides (1)?.\n"
    "Rank the 3 passages above based on their relevance to the search query. All the passages should be included "
    "and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., "
    "[2] > [1], Answer concisely and directly and only respond with the ranking results, do not say any word or "
    "explain.")
# gangiswag/llm-reranker at 2d7cba423ad555064bdfc719313570b5f9525887, scripts/utils/rank_listwise_os_llm.py
# (_add_prefix_prompt "a alphabetical", create_prompt's f"{prefix}\n" blank line, _add_post_prompt with
# variable_passages=True as llm_util.py sets it) and rankllm.py's _replace_number (letters: [A-z]+; the query
# is not rewritten): typed out by hand.
LLM_RERANKER_USER = (
    "I will provide you with 3 passages, each indicated by a alphabetical identifier []. Rank the passages based "
    "on their relevance to the search query: what causes tides [1]?.\n\n"
    "[A] Title: Tides Content: Tides follow the Moon's pull [1].\n"
    "[B] The Sun also pulls on the oceans.\n"
    "[C] Title: Cats Content: Cats sleep a lot.\n"
    "Search Query: what causes tides [1]?.\n"
    "Rank the 3 passages above based on their relevance to the search query. All the passages should be included "
    "and listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., "
    "[B] > [A], Only respond with the ranking results, do not say any word or explain.")


class FakeModel:
    """A scoring backend with canned answers: ``rows`` (log-probabilities per call, one row per
    conversation, shorter rows padded with -inf) or ``texts`` (one generation per conversation).
    Records every call's conversations and arguments, and counts them on ``usage``."""

    name, accepts_images = "fake", False

    def __init__(self, rows: Sequence[Sequence[float]] = (), texts: Sequence[str] = ()) -> None:
        self.rows, self.texts, self.calls, self.usage = list(rows), list(texts), [], Usage()

    def token_logprobs(self, conversations, tokens, *, assistant_prefix="", top_k=None) -> np.ndarray:
        self.calls.append(("token_logprobs", list(conversations), list(tokens), assistant_prefix, top_k))
        self.usage.calls += 1
        rows = [self.rows.pop(0) if self.rows else [0.0] * len(tokens) for _ in conversations]
        return np.array([list(row) + [-np.inf] * (len(tokens) - len(row)) for row in rows], dtype=np.float64)

    def sequence_logprob(self, conversations, continuations, *, assistant_prefix="") -> np.ndarray:
        self.calls.append(("sequence_logprob", list(conversations), list(continuations), assistant_prefix, None))
        self.usage.calls += 1
        return np.array([self.rows.pop(0) for _ in conversations], dtype=np.float64)

    def generate(self, conversations, *, max_new_tokens=128, temperature=0.0, assistant_prefix="",
                 top_logprobs=0) -> list[Generation]:
        self.calls.append(("generate", list(conversations), max_new_tokens, assistant_prefix, temperature))
        self.usage.calls += 1
        return [Generation(self.texts.pop(0), 10, 5) for _ in conversations]

    def choice_probability(self, conversations, choices, *, assistant_prefix=""):
        raise AssertionError("FIRST does not ask for choice probabilities")


def toy_hits(items: Sequence[Item] = TOY) -> list[Hit]:
    return [Hit(item, 10.0 - n, stages={"bm25": StageScore(10.0 - n, n + 1), "retrieve": StageScore(10.0 - n, n + 1)})
            for n, item in enumerate(items)]


def ranking(count: int, query: str = "tides", words: int = 4) -> Ranking:
    """``count`` short passages ``p0`` .. in first-stage order."""
    vocabulary = "moon sun water pull tide ocean gravity cat dog wave".split()
    items = [Item(f"p{n}", "text", text=" ".join(vocabulary[(n * 7 + k) % len(vocabulary)] for k in range(words)))
             for n in range(count)]
    hits = tuple(Hit(item, 1.0 - n / 1000, stages={"bm25": StageScore(1.0 - n / 1000, n + 1)})
                 for n, item in enumerate(items))
    return Ranking(Query(text=query), hits, timings={"bm25": 0.0})


def notes(result: Ranking, stage: str = "first") -> dict[str, str | None]:
    return {hit.item_id: hit.stages[stage].note for hit in result}


# ------------------------------------------------------------------------------ prompts
def test_the_prompt_is_rank_llms_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    """rank_llm's FIRST prompt (see RANK_LLM_USER), and the text the tiny Qwen3 reads for it: its
    chat template with the generation prompt, then the literal ``[`` of rank_llm's use_logits path
    (rank_listwise_os_llm.py, ``p + "["``)."""
    model = FakeModel()
    FirstReranker(model=model).rank_windows(model, [(QUESTION, toy_hits())])
    [(method, [conversation], tokens, prefix, top_k)] = model.calls
    assert conversation == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": RANK_LLM_USER}]
    assert (method, tokens, prefix, top_k) == ("token_logprobs", ["A", "B", "C"], "[", 30)
    assert tiny_llm.prompt_text(conversation, prefix) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{RANK_LLM_USER}<|im_end|>\n"
        "<|im_start|>assistant\n[")


def test_numeric_and_authors_prompts_byte_for_byte() -> None:
    model = FakeModel()
    FirstReranker(model=model, identifiers="numbers", window=9, stride=4).rank_windows(model, [(QUESTION, toy_hits())])
    assert model.calls[0][1][0][1]["content"] == RANK_LLM_NUMBERS_USER
    assert model.calls[0][2] == ["1", "2", "3"]
    model = FakeModel()
    FirstReranker(model=model, prompt_style="llm-reranker").rank_windows(model, [(QUESTION, toy_hits())])
    assert model.calls[0][1][0] == [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": LLM_RERANKER_USER}]


def test_passages_are_capped_at_300_words_and_escaped() -> None:
    long = Item("x", "text", text=" ".join(f"w{n}" for n in range(400)) + " [12]")
    assert passage_text(long, 300) == " ".join(f"w{n}" for n in range(300))
    assert passage_text(Item("y", "text", text="see [12] and [ 3 ] or [A]"), 300) == "see (12) and [ 3 ] or [A]"
    assert passage_text(Item("y", "text", text="[A] and [bc]"), 300, r"\[([A-z]+)\]") == "(A) and (bc)"


class WordCounter:
    """A tokenizer whose tokens are the text's whitespace-separated words."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[str]:
        return text.split()


class CountingModel(FakeModel):
    """A fake local model: its prompt is the messages' texts joined, its tokens are words."""

    tokenizer = WordCounter()

    def prompt_text(self, conversation, assistant_prefix: str = "") -> str:
        return " ".join(message["content"] for message in conversation) + assistant_prefix


def test_the_word_cap_is_lowered_as_rank_llm_does_until_the_prompt_fits() -> None:
    """rank_listwise_os_llm.py create_prompt: while the prompt's tokens exceed context_size less the
    answer's, max_length -= max(1, excess // (n * 4)). Three passages of 100 words, a budget of 150
    passage words: 300, 288, ... 96, 85, 77, 71, 66, 62, 59, 57, 56, 55, ..., 50 words."""
    items = [Item(f"d{n}", "text", text=" ".join(["w"] * 100)) for n in range(3)]
    model = CountingModel()
    free = FirstReranker(model=model, context_size=None).window_conversation(model, "q", toy_hits(items))
    fixed = len(model.prompt_text(free).split()) - 300
    answer = len("[A] > [B] > [C]".split())
    stage = FirstReranker(model=model, context_size=fixed + 150 + answer)
    words, steps = 300, []
    while fixed + 3 * min(words, 100) > fixed + 150:  # the reference's loop, by hand
        words -= max(1, (fixed + 3 * min(words, 100) - fixed - 150) // 12)
        steps.append(words)
    assert words == 50 and steps[:2] == [288, 276] and steps[-3:] == [52, 51, 50]
    conversation = stage.window_conversation(model, "q", toy_hits(items))
    assert conversation[1]["content"].split().count("w") == 150
    assert "[A] " + " ".join(["w"] * 50) + "\n[B]" in conversation[1]["content"]


def test_a_prompt_that_cannot_fit_keeps_its_window_with_a_note() -> None:
    model = CountingModel()
    stage = FirstReranker(model=model, context_size=20)
    [result] = stage.rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == ["p0", "p1", "p2"] and model.calls == []
    assert notes(result)["p0"].startswith("window 1: not asked: The 'first' prompt for 3 candidates takes ")
    assert "raise context_size or lower window" in notes(result)["p0"]


# ------------------------------------------------------------------ single-token ranking
def test_fixed_logprobs_give_the_reference_permutation() -> None:
    """rank_llm's _evaluate_logits sorts the letters listed among the top 30 by log-probability
    ([B] -0.5, [D] -1.0, [A] -2.0, written "[B]>[D]>[A]"); receive_permutation then appends the
    letters it did not list (C, E) in their incoming order: B D A C E."""
    model = FakeModel(rows=[[-2.0, -0.5, -np.inf, -1.0, -np.inf]])
    [result] = FirstReranker(model=model).rerank_batch([Query(text="q")], [ranking(5)], None)
    assert result.ids == ["p1", "p3", "p0", "p2", "p4"]
    assert result.explanations["first"] == ("[B]>[D]>[A]",)
    assert set(notes(result).values()) == {"window 1: model ranked 3 of 5; the rest kept their order"}
    assert [hit.stages["first"].score for hit in result] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    # Ties keep the incoming order; nothing listed keeps the whole window, noted.
    assert logprob_ranking([-1.0, -0.5, -1.0], "ABC").order == (1, 0, 2)
    failed = logprob_ranking([-np.inf] * 3, "ABC")
    assert failed.order == (0, 1, 2) and failed.failure == "no identifier among the model's most likely next tokens"


def test_top_100_is_nine_forward_passes_and_no_generated_token(tiny_llm: HFLanguageModel) -> None:
    """rank_llm's sliding_windows over top-100 (window 20, stride 10): [80, 100), [70, 90), ...,
    [0, 20). FIRST reads each window in one forward pass, so the backend counts 9 calls, 9 forward
    passes and 0 generated tokens; the generated permutation (RankZephyr) on the same windows
    generates many."""
    assert window_schedule(100, 20, 10) == [(start, start + 20) for start in range(80, -1, -10)]
    fake = FakeModel()
    create_reranker({"type": "first", "model": fake}).rerank_batch([Query(text="q")], [ranking(120)], None)
    assert [len(tokens) for _, _, tokens, _, _ in fake.calls] == [20] * 9
    assert "[A] " + ranking(120).hits[80].item.text + "\n" in fake.calls[0][1][0][1]["content"]

    tiny_llm.usage.reset()
    [result] = FirstReranker(model=tiny_llm).rerank_batch([Query(text="tides")], [ranking(120)], None)
    first = dataclasses.replace(tiny_llm.usage)
    assert (first.calls, first.prompts, first.forward_passes, first.generated_tokens) == (9, 9, 9, 0)
    assert result.ids[100:] == ranking(120).ids[100:] and len(result.explanations["first"]) == 9
    tiny_llm.usage.reset()
    FirstReranker(model=tiny_llm, mode="generate").rerank_batch([Query(text="tides")], [ranking(120)], None)
    generate = dataclasses.replace(tiny_llm.usage)
    assert generate.calls == 9 and generate.generated_tokens > 9 * 50  # 98 a window on this tokenizer
    assert generate.forward_passes > first.forward_passes


def expected_order(model: Any, stage: FirstReranker, question: str, hits: Sequence[Hit],
                   top_k: int | None) -> list[str]:
    """The windows slid by hand: each window's letters sorted by the model's own token_logprobs."""
    order = list(range(min(stage.depth, len(hits))))
    for begin, end in window_schedule(len(order), stage.window, stage.stride):
        window = order[begin:end]
        conversation = stage.window_conversation(model, question, [hits[i] for i in window])
        row = model.token_logprobs([conversation], list(LETTERS[:len(window)]), assistant_prefix="[", top_k=top_k)[0]
        ranked = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])]
        ranked += [i for i in range(len(window)) if i not in ranked]
        order[begin:end] = [window[i] for i in ranked]
    return [hits[i].item_id for i in order] + [hit.item_id for hit in hits[len(order):]]


def test_real_run_on_the_tiny_model_follows_its_own_logprobs(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    options = {"depth": 9, "window": 4, "stride": 2, "top_k": None}
    stage = FirstReranker(model=tiny_llm, **options)
    queries = [Query(text=text) for text in ("tides", "moon pull", "cat")]
    lists = [ranking(12, query.text, words=6) for query in queries]
    results = stage.rerank_batch(queries, lists, None)
    for query, incoming, result in zip(queries, lists, results, strict=True):
        assert result.ids == expected_order(tiny_llm, stage, query.text, incoming.hits, None)
        assert result.ids[9:] == incoming.ids[9:]  # the tail after depth
        assert result.stage_names == ["bm25", "first"] and all(hit.stages["first"].note is None for hit in result[:9])
    assert any(result.ids != incoming.ids for result, incoming in zip(results, lists))
    # One window per call, and a backend that scores one conversation per forward pass: the same.
    one_at_a_time = HFLanguageModel(str(tiny_llm_dir), device="cpu", batch_size=1)
    alone = FirstReranker(model=one_at_a_time, batch_size=1, **options).rerank_batch(queries, lists, None)
    assert [r.ids for r in alone] == [r.ids for r in results]
    conversations = [stage.window_conversation(tiny_llm, query.text, incoming.hits[:4])
                     for query, incoming in zip(queries, lists)]
    np.testing.assert_allclose(one_at_a_time.token_logprobs(conversations, list("ABCD"), assistant_prefix="["),
                               tiny_llm.token_logprobs(conversations, list("ABCD"), assistant_prefix="["), atol=1e-5)
    # With the reference's top 30, the letters this random model never ranks that high keep their order.
    cut = FirstReranker(model=tiny_llm, depth=9, window=4, stride=2)
    [result] = cut.rerank_batch(queries[:1], lists[:1], None)
    assert result.ids == expected_order(tiny_llm, cut, "tides", lists[0].hits, 30)


def test_sequence_scoring_ranks_numeric_ids_beyond_nine(tiny_llm: HFLanguageModel) -> None:
    stage = FirstReranker(model=tiny_llm, identifiers="numbers", scoring="sequence", depth=12, window=12)
    [result] = stage.rerank_batch([Query(text="tides")], [ranking(12)], None)
    conversation = stage.window_conversation(tiny_llm, "tides", ranking(12).hits)
    scores = tiny_llm.sequence_logprob([conversation], [f"{n}]" for n in range(1, 13)], assistant_prefix="[")[0]
    assert result.ids == [f"p{i}" for i in np.argsort(-scores, kind="stable")]
    with pytest.raises(InputError, match=r"\[10\] onwards take two tokens .* use window <= 9, identifiers: letters"):
        FirstReranker(identifiers="numbers", window=12)
    FirstReranker(identifiers="numbers", window=9, stride=4)  # one digit each: allowed


def test_pages_go_to_a_vision_model_as_labelled_pictures(tiny_mllm: Any, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green", "blue"]):
        path = tmp_path / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    hits = toy_hits(items)
    stage = FirstReranker(model=tiny_mllm, top_k=None)
    [system, user] = stage.window_conversation(tiny_mllm, "red page", hits)
    texts = [part.get("text") for part in user["content"]]
    assert texts == [
        "I will provide you with 3 passages, each indicated by an alphabetical identifier []. Rank the passages "
        "based on their relevance to the search query: red page.\n[A] ", None, "\n[B] ", None, "\n[C] ", None,
        "\nSearch Query: red page.\nRank the 3 passages above based on their relevance to the search query. All "
        "the passages should be included and listed using identifiers, in descending order of relevance. The "
        "output format should be [] > [], e.g., [B] > [A], Answer concisely and directly and only respond with the "
        "ranking results, do not say any word or explain."]
    assert [part["image"].getpixel((0, 0)) for part in user["content"] if part["type"] == "image"] == [
        (255, 0, 0), (0, 128, 0), (0, 0, 255)]
    tiny_mllm.usage.reset()
    [result] = stage.rerank_batch([Query(text="red page")], [Ranking(Query(text="red page"), tuple(hits))], None)
    row = tiny_mllm.token_logprobs([[system, user]], list("ABC"), assistant_prefix="[")[0]
    assert result.ids == [f"i{i}" for i in np.argsort(-row, kind="stable")]
    assert tiny_mllm.usage.generated_tokens == 0


# ------------------------------------------------------------------ generated permutation
def test_generate_mode_parses_the_permutation() -> None:
    model = FakeModel(texts=["[C] > [A] > [B]"])
    stage = FirstReranker(model=model, mode="generate")
    [result] = stage.rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == ["p2", "p0", "p1"] and set(notes(result).values()) == {None}
    assert result.explanations["first"] == ("[C] > [A] > [B]",)
    [(method, _, max_new_tokens, prefix, temperature)] = model.calls
    assert (method, prefix, temperature, max_new_tokens) == ("generate", "", 0.0, 15)  # 5 tokens an id, no tokenizer
    model = FakeModel(texts=["[2] > [3] > [1]"])
    FirstReranker(model=model, mode="generate", identifiers="numbers", max_new_tokens=40).rank_windows(
        model, [("q", ranking(3).hits)])
    assert model.calls[0][2] == 40


def test_generate_budget_is_the_answers_tokens_on_a_local_model(tiny_llm: HFLanguageModel) -> None:
    """rank_llm's num_output_tokens: the tokens of "[A] > [B] > ... > [T]" (less its BOS: counted
    here without special tokens)."""
    expected = len(tiny_llm.tokenizer.encode(" > ".join(f"[{c}]" for c in LETTERS[:20]), add_special_tokens=False))
    from mmrank.rerankers.first import answer_tokens

    assert answer_tokens(tiny_llm, list(LETTERS[:20])) == expected


@pytest.mark.parametrize(("text", "order", "note"), [
    ("", ["p0", "p1", "p2"], "window 1: answer not parsed: empty output; kept the incoming order"),
    ("I cannot rank these.", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no identifier from [A] to [C]; kept the incoming order"),
    ("[Q] > [Z]", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no identifier from [A] to [C]; kept the incoming order"),
    ("[B] > [B] > [Q]", ["p1", "p0", "p2"], "window 1: model ranked 1 of 3; the rest kept their order"),
    ("<think>[A] > [B] > [C]</think>[C] > [B]", ["p2", "p1", "p0"],
     "window 1: model ranked 2 of 3; the rest kept their order"),
    ("C > A > B", ["p2", "p0", "p1"], None),
])
def test_broken_outputs_keep_the_order_with_notes(text: str, order: list[str], note: str | None) -> None:
    model = FakeModel(texts=[text])
    [result] = FirstReranker(model=model, mode="generate").rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == order
    assert set(notes(result).values()) == {note}


FRAGMENTS = ["[", "]", " > ", ">", "A", "B", "C", "T", "Z", "a", "1", "2", "10", "21", "99", " ", "\n", ",",
             "</think>", "<think>", "passage", "é", "\x00", "[A]", "[12]"]
texts = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))


@given(text=texts, count=st.integers(min_value=1, max_value=26), identifiers=st.sampled_from(["letters", "numbers"]))
def test_any_output_gives_a_full_order(text: str, count: int, identifiers: str) -> None:
    parsed = parse_permutation(text, count, identifiers)
    assert sorted(parsed.order) == list(range(count))
    assert list(parsed.order[:len(parsed.parsed_ids)]) == [i - 1 for i in parsed.parsed_ids]
    assert len(set(parsed.parsed_ids)) == len(parsed.parsed_ids) and all(1 <= i <= count for i in parsed.parsed_ids)
    assert (parsed.failure is None) == bool(parsed.parsed_ids)
    assert parsed.complete == (len(parsed.parsed_ids) == count)


@given(data=st.data(), count=st.integers(min_value=1, max_value=20), numbers=st.booleans(),
       separator=st.sampled_from([" > ", ">", " >", ", ", " "]))
def test_a_written_permutation_is_read_back(data: st.DataObject, count: int, numbers: bool, separator: str) -> None:
    order = data.draw(st.permutations(list(range(count))))
    labels = [str(i + 1) if numbers else LETTERS[i] for i in order]
    parsed = parse_permutation(separator.join(f"[{label}]" for label in labels), count,
                               "numbers" if numbers else "letters")
    assert parsed.order == tuple(order) and parsed.complete and parsed.failure is None


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "first", "mode": "generate", "window": 10, "stride": 5,
                              "max_new_tokens": 60, "prompt_style": "llm-reranker"}).to_config()
    assert create_reranker(config).to_config() == config and FirstReranker.default_model == "castorini/first_mistral"
    for options, message in [({"mode": "beam"}, "mode must be one of single-token, generate"),
                             ({"identifiers": "roman"}, "identifiers must be one of letters, numbers"),
                             ({"scoring": "mean"}, "scoring must be one of token, sequence"),
                             ({"prompt_style": "x"}, "prompt_style must be one of rank_llm, llm-reranker"),
                             ({"window": 30, "stride": 10}, r"at most 26 candidates \(\[A\] to \[Z\]\)"),
                             ({"mode": "generate", "scoring": "sequence"}, "applies to mode single-token only"),
                             ({"top_k": 0}, "top_k must be at least 1"),
                             ({"max_passage_words": 0}, "max_passage_words must be at least 1"),
                             ({"context_size": 0}, "context_size must be at least 1")]:
        with pytest.raises(InputError, match=message):
            FirstReranker(**options)


def test_a_backend_without_logprobs_is_told_to_generate() -> None:
    class GenerateOnly:
        name, accepts_images, usage = "gen-only", False, Usage()

        def generate(self, *args, **kwargs):
            raise AssertionError

    [result] = FirstReranker(model=GenerateOnly()).rerank_batch([Query(text="q")], [ranking(3)], None)
    assert result.ids == ["p0", "p1", "p2"]
    note = notes(result)["p0"]
    assert "needs a backend that gives token_logprobs" in note and "mode: generate" in note
