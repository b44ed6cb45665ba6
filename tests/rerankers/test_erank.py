"""The ERank stage: its prompt (the paper's Figure 5, typed out here by hand), the answer parser and
s x P(s) on fixed generations (hand-computed; "10" two tokens), parse failures (noted, fuzzed), the
BRIGHT hybrid, real runs on the tiny Qwen3 and Qwen2-VL, and its pipeline file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError
from mmrank.mllm import Generation, Usage
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.erank import ERANK_INSTRUCTIONS, ERankReranker, parse_erank_answer, zscores
from mmrank.rerankers.qwen3_reranker import document_text
from mmrank.types import Hit, Item, Query, StageScore
from tests.rerankers.test_qwen3_reranker import (  # noqa: F401 (stage_types: the registry fixture)
    TOY,
    TOY_QUERY,
    expected_order,
    load_pipeline,
    pages,
    passages,
    ranking,
    stage_records,
    stage_types,
)

# The golden case through the paper's Figure 5 (arXiv 2509.00520v1; the card's examples/utils.py was
# not found in any store: no commit to cite), its line breaks as reconstructed in mmrank.rerankers.erank,
# with Table 7's BEIR / TREC DL instruction ("retrieval relevant passage." sic), typed out by hand.
FIGURE_5_D1 = (
    "Given a query and a document, please give a relevance score of 0 to 10.\n"
    "The goal or relevance definition is: Given a query, retrieval relevant passage.\n\n"
    "Here is the query: what causes tides\n"
    "Here is the document: Tides The Moon's pull raises the oceans.\n"
    "After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].\n"
    "- 0 represents completely not related.\n"
    "- 10 means perfectly related.\n"
    "Desired output format: <think> put your thinking here </think><answer> Only allows an integer here </answer>\n"
    "Your output:")


def generation(*steps: tuple[str, float] | str) -> Generation:
    """A generation whose tokens are ``steps``: ``(token, p)`` puts the token in its step's top
    log-probabilities with probability p (and an alternative "x" with the rest), a bare token with
    probability 1."""
    tokens, tops = [], []
    for step in steps:
        token, probability = (step, 1.0) if isinstance(step, str) else step
        tokens.append(token)
        top = [(token, math.log(probability))]
        if probability < 1:
            top.append(("x", math.log(1 - probability)))
        tops.append(tuple(top))
    return Generation("".join(tokens), 10, len(tokens), tuple(tokens), tuple(tops))


def answer(*digits: tuple[str, float]) -> Generation:
    return generation("<think>", " it is about tides", "</think>", "<answer>", *digits, "</answer>", "<|im_end|>")


class FixedAnswers:
    """A backend that answers each conversation with the generation of the first key found in its
    user message; records every call's conversations and options."""

    name, accepts_images = "fixed", False

    def __init__(self, table: dict[str, Generation]) -> None:
        self.table, self.calls, self.usage = table, [], Usage()

    def generate(self, conversations, *, max_new_tokens=128, temperature=0.0, assistant_prefix="",
                 top_logprobs=0) -> list[Generation]:
        self.calls.append((list(conversations), max_new_tokens, temperature, assistant_prefix, top_logprobs))
        return [next(value for key, value in self.table.items() if key in conversation[-1]["content"])
                for conversation in conversations]


# ------------------------------------------------------------------------------ prompt
def test_the_prompt_is_figure_5_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    """One user message, no system turn; the tiny Qwen3 reads it through its chat template."""
    stage = ERankReranker(model=tiny_llm)
    conversation = stage.conversation(tiny_llm, TOY_QUERY, TOY[0])
    assert conversation == [{"role": "user", "content": FIGURE_5_D1}]
    assert tiny_llm.prompt_text(conversation) == f"<|im_start|>user\n{FIGURE_5_D1}<|im_end|>\n<|im_start|>assistant\n"
    pony = ERankReranker(model=tiny_llm, instruction="bright-pony").conversation(tiny_llm, "q", TOY[1])
    assert ("The goal or relevance definition is: I will use the programming language pony. But to solve the problem "
            "above, I need to know things about pony.") in pony[0]["content"]
    own = ERankReranker(model=tiny_llm, instruction="Find the cause.", template="{instruction}|{query}|{document}")
    assert own.conversation(tiny_llm, "q", TOY[1]) == [{"role": "user",
                                                       "content": "Find the cause.|q|The Sun pulls too."}]
    assert ERANK_INSTRUCTIONS["beir"] == "Given a query, retrieval relevant passage."
    assert set(ERANK_INSTRUCTIONS) == {"beir", "bright", "bright-aops", "bright-leetcode", "bright-pony",
                                       "bright-theoremqa", "followir"}


def test_query_and_document_are_cut_to_their_token_budgets(tiny_llm: HFLanguageModel) -> None:
    tokenizer = tiny_llm.tokenizer
    stage = ERankReranker(model=tiny_llm, query_tokens=3, document_tokens=4, template="{query}|{document}")
    [message] = stage.conversation(tiny_llm, TOY_QUERY, TOY[0])
    query_cut = tokenizer.decode(tokenizer.encode(TOY_QUERY)[:3])
    document_cut = tokenizer.decode(tokenizer.encode(document_text(TOY[0]))[:4])
    assert message["content"] == f"{query_cut}|{document_cut}" and len(query_cut) < len(TOY_QUERY)
    whole = ERankReranker(model=tiny_llm, query_tokens=None, document_tokens=None, template="{query}|{document}")
    assert whole.conversation(tiny_llm, TOY_QUERY, TOY[0])[0]["content"] == f"{TOY_QUERY}|{document_text(TOY[0])}"


# ------------------------------------------------------------------------ the parser
@pytest.mark.parametrize(("output", "mode", "score", "probability"), [
    (answer(("7", 0.6)), "product", 7, 0.6),
    (answer(("1", 0.8), ("0", 0.9)), "product", 10, 0.72),  # "10" is two tokens: P("1") x P("0" | "1")
    (answer(("1", 0.8), ("0", 0.9)), "first", 10, 0.8),  # the first digit's token alone
    (answer(("0", 0.5)), "product", 0, 0.5),
    (generation("<think>", "x", "</think>", "<answer>", " ", ("3", 0.25), " ", "</answer>"), "product", 3, 0.25),
    # the answer after the last </think>; an answer inside the thinking does not count
    (generation("<think>", "<answer>9</answer>", "</think>", "</think>", "<answer>", ("2", 0.5), "</answer>"),
     "product", 2, 0.5),
    # the digit inside a longer token: that token's probability
    (generation("</think>", "<answer>", ("4</", 0.4), "answer>"), "product", 4, 0.4),
])
def test_the_answer_and_its_probability_are_read(output: Generation, mode: str, score: int,
                                                 probability: float) -> None:
    read = parse_erank_answer(output, mode)
    assert (read.score, read.reason) == (score, None)
    assert read.probability == pytest.approx(probability, abs=1e-12)
    assert read.value == pytest.approx(score * probability, abs=1e-12)


@pytest.mark.parametrize(("output", "reason"), [
    (Generation("", 5, 0), "empty output"),
    (generation("<think>", "still thinking"), "no </think> in the output"),
    (generation("<think>", "x", "</think>", "7"), "no <answer>integer</answer> after </think>"),
    (generation("<think>", "<answer>7</answer>", "</think>"), "no <answer>integer</answer> after </think>"),
    (generation("</think>", "<answer>seven</answer>"), "no <answer>integer</answer> after </think>"),
    (answer(("1", 0.5), ("1", 0.5)), "answer 11 is not a score from 0 to 10"),
    (answer(("1", 0.5), ("0", 0.5), ("0", 0.5)), "answer 100 is not a score from 0 to 10"),
    (Generation("</think><answer>7</answer>", 5, 3), "no per-token log-probabilities in the generation"),
    (Generation("</think><answer>7</answer>", 5, 3, ("</think>", "<answer>", "7", "</answer>"),
                ((("</think>", 0.0),), (("<answer>", 0.0),), (("8", -0.1),), (("</answer>", 0.0),))),
     "the answer's token '7' is not among its step's top log-probabilities"),
])
def test_outputs_that_do_not_parse_say_why(output: Generation, reason: str) -> None:
    read = parse_erank_answer(output)
    assert (read.score, read.probability, read.value) == (None, None, None)
    assert read.reason.startswith(reason)


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<|im_end|>", " ", "\n", "x", "answer", "<", ">", "/",
          *"0123456789", "10", "-1", "é"]


@given(st.lists(st.sampled_from(PIECES), max_size=30), st.data())
def test_any_output_gives_a_score_from_0_to_10_or_a_reason(tokens: list[str], data: st.DataObject) -> None:
    tops = tuple(tuple((data.draw(st.sampled_from([token, "x", "7"])), -data.draw(
        st.floats(0, 50, allow_nan=False))) for _ in range(data.draw(st.integers(1, 3)))) for token in tokens)
    for output in (Generation("".join(tokens), 1, len(tokens), tuple(tokens), tops),
                   Generation("".join(tokens), 1, len(tokens))):
        read = parse_erank_answer(output, data.draw(st.sampled_from(["product", "first"])))
        if read.reason is None:
            assert read.score in range(11) and 0.0 <= read.probability <= 1.0
            assert 0.0 <= read.value <= 10.0
        else:
            assert read.score is None and read.probability is None and isinstance(read.reason, str)


@given(st.text(alphabet="abc <>/\n", max_size=20), st.integers(0, 10),
       st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2))
def test_a_well_formed_answer_is_read_back(thinking: str, score: int, probabilities: list[float]) -> None:
    digits = [(digit, p) for digit, p in zip(str(score), probabilities)]
    read = parse_erank_answer(generation("<think>", thinking, "</think>", "<answer>", *digits, "</answer>"))
    assert read.score == score and read.reason is None
    assert read.probability == pytest.approx(math.prod(p for _, p in digits), rel=1e-9)


# ------------------------------------------------------------------------ the stage
def test_candidates_are_sorted_by_s_times_p_and_failures_score_0_with_a_note() -> None:
    """Hand-computed: d1 7 x 0.6 = 4.2, d2 10 x 0.72 = 7.2, d3 no answer (0, noted), d4 3 x 0.9 = 2.7;
    a candidate without text is not asked; the tail after depth is unchanged."""
    model = FixedAnswers({"Moon": answer(("7", 0.6)), "Sun": answer(("1", 0.8), ("0", 0.9)),
                          "Cats": generation("<think>", "hmm"), "Stars": answer(("3", 0.9))})
    items = [*TOY, Item("blank", "text", text=" "), Item("d4", "text", text="Stars shine."),
             Item("tail", "text", text="Not reranked.")]
    stage = ERankReranker(model=model, depth=5)
    [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert result.ids == ["d2", "d1", "d4", "d3", "blank", "tail"]
    records = stage_records(result, "erank")
    assert records["d2"][0] == pytest.approx(7.2) and records["d1"][0] == pytest.approx(4.2)
    assert records["d4"][0] == pytest.approx(2.7)
    assert records["d3"] == (0.0, "answer not parsed: no </think> in the output; scored 0")
    assert records["blank"] == (None, "not scored: no text to show; kept its place after the scored hits")
    assert records["tail"] == (None, None) and result.stage_names == ["bm25", "erank"]
    [(conversations, max_new_tokens, temperature, prefix, top_logprobs)] = model.calls
    assert (len(conversations), max_new_tokens, temperature, prefix, top_logprobs) == (4, 4096, 0.0, "", 20)
    first = ERankReranker(model=model, depth=5, answer_probability="first")
    [result] = first.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert stage_records(result, "erank")["d2"][0] == pytest.approx(8.0)
    unscored = ERankReranker(model=model, depth=5, on_parse_failure="unscored")
    [result] = unscored.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert result.ids == ["d2", "d1", "d4", "d3", "blank", "tail"]
    assert stage_records(result, "erank")["d3"] == (
        None, "answer not parsed: no </think> in the output; not scored, kept its place after the scored hits")


def test_batching_does_not_change_the_scores() -> None:
    model = FixedAnswers({"Moon": answer(("7", 0.6)), "Sun": answer(("1", 0.8), ("0", 0.9)),
                          "Cats": answer(("5", 0.5)), "p0": answer(("2", 0.5)), "sea": answer(("6", 0.1)),
                          "": answer(("1", 0.3))})
    lists = [ranking([*TOY, *passages(3)]), ranking(passages(5), "moon and sea")]
    queries = [incoming.query for incoming in lists]
    together = ERankReranker(model=model, batch_size=None).rerank_batch(queries, lists, None)
    alone = ERankReranker(model=model, batch_size=1).rerank_batch(queries, lists, None)
    assert [len(call[0]) for call in model.calls] == [11] + [1] * 11
    for joint, single in zip(together, alone):
        assert joint.ids == single.ids and [hit.score for hit in joint] == [hit.score for hit in single]


def test_the_hybrid_mixes_z_scores_with_the_first_stage() -> None:
    """Rerank 0, 6, 3 and BM25 10, 9, 8: z-scores (-1.2247, 1.2247, 0) and (1.2247, 0, -1.2247);
    w 0.8 gives -0.7348, 0.9798, -0.2449 (d2, d3, d1); w 0.2 gives 0.7348, 0.2449, -0.9798."""
    model = FixedAnswers({"Moon": answer(("0", 0.5)), "Sun": answer(("6", 1.0)), "Cats": answer(("3", 1.0))})
    root = math.sqrt(1.5)  # 3 / sqrt(6) = 1.2247...
    assert zscores([0, 6, 3]).tolist() == pytest.approx([-root, root, 0.0])
    assert zscores([10, 9, 8]).tolist() == pytest.approx([root, 0.0, -root]) and zscores([2, 2]).tolist() == [0, 0]
    [result] = ERankReranker(model=model, hybrid_weight=0.8).rerank_batch([Query(text="q")], [ranking(TOY)], None)
    assert result.ids == ["d2", "d3", "d1"]
    records = stage_records(result, "erank")
    assert [records[i][0] for i in ("d1", "d2", "d3")] == pytest.approx(
        [-0.6 * root, 0.8 * root, -0.2 * root])
    assert records["d2"][1] == "rerank score 6"
    [result] = ERankReranker(model=model, hybrid_weight=0.2).rerank_batch([Query(text="q")], [ranking(TOY)], None)
    assert result.ids == ["d1", "d2", "d3"]
    assert stage_records(result, "erank")["d1"][0] == pytest.approx(0.6 * root)
    other = ranking(TOY)
    other = other.__class__(other.query, tuple(Hit(hit.item, hit.score, stages={"text": StageScore(1.0 * n, n + 1)})
                                               for n, hit in enumerate(other.hits)))
    [result] = ERankReranker(model=model, hybrid_weight=0.5).rerank_batch([Query(text="q")], [other], None)
    assert result.ids == ["d2", "d3", "d1"]  # no bm25 record: the first stage recorded ("text", ascending)
    with pytest.raises(InputError, match="set hybrid_stage to the stage that scored it"):
        ERankReranker(model=model, hybrid_weight=0.5, hybrid_stage="bm25").rerank_batch(
            [Query(text="q")], [other], None)


# ------------------------------------------------------------------------ real models
def independent_verdicts(model: Any, stage: ERankReranker, question: str, items: Sequence[Item]) -> list[tuple]:
    """The model's own generations for the stage's conversations, read by the parser: (score, note)."""
    generations = model.generate([stage.conversation(model, question, item) for item in items],
                                 max_new_tokens=stage.max_new_tokens, top_logprobs=20)
    verdicts = []
    for output in generations:
        read = parse_erank_answer(output)
        verdicts.append((read.value, None) if read.reason is None
                        else (0.0, f"answer not parsed: {read.reason}; scored 0"))
    return verdicts


def test_a_real_run_on_the_tiny_model_scores_what_the_model_wrote(tiny_llm: HFLanguageModel,
                                                                    tiny_llm_dir: Path) -> None:
    """Random weights rarely write an answer: each candidate's score and note are those of reading the
    model's own greedy generation (asked directly), the order theirs; one call; a backend batch of one
    gives the same; the tail stays."""
    items = [*TOY, *passages(3)]
    stage = ERankReranker(model=tiny_llm, depth=5, max_new_tokens=12)
    tiny_llm.usage.reset()
    [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert tiny_llm.usage.calls == 1 and tiny_llm.usage.prompts == 5
    expected = independent_verdicts(tiny_llm, stage, TOY_QUERY, items[:5])
    ids = [item.id for item in items]
    assert result.ids == expected_order(ids[:5], [score for score, _ in expected]) + ids[5:]
    records = stage_records(result, "erank")
    assert [records[i] for i in ids[:5]] == expected and records[ids[5]] == (None, None)
    one = HFLanguageModel(str(tiny_llm_dir), device="cpu", batch_size=1)
    [alone] = ERankReranker(model=one, depth=5, max_new_tokens=12, batch_size=1).rerank_batch(
        [Query(text=TOY_QUERY)], [ranking(items)], None)
    assert alone.ids == result.ids and stage_records(alone, "erank") == records


def test_pages_go_to_a_vision_model_as_pictures(tiny_mllm: Any, tmp_path: Path) -> None:
    items = pages(tmp_path)
    stage = ERankReranker(model=tiny_mllm, max_new_tokens=6)
    [message] = stage.conversation(tiny_mllm, "red page", items[0])
    before, after = FIGURE_5_D1.replace(TOY_QUERY, "red page").split("Tides The Moon's pull raises the oceans.")
    assert [part.get("text") for part in message["content"]] == [before, None, after]
    assert message["content"][1]["image"].getpixel((0, 0)) == (255, 0, 0)
    missing = Item("gone", "image", source=str(tmp_path / "missing.png"))
    [result] = stage.rerank_batch([Query(text="red page")], [ranking([*items, missing], "red page")], None)
    expected = independent_verdicts(tiny_mllm, stage, "red page", items)
    assert result.ids == [*expected_order(["i0", "i1", "i2"], [score for score, _ in expected]), "gone"]
    records = stage_records(result, "erank")
    assert [records[i] for i in ("i0", "i1", "i2")] == expected
    assert records["gone"][0] is None and records["gone"][1].startswith("not scored: ")


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "erank", "instruction": "bright", "query_tokens": None, "max_new_tokens": 2048,
                              "answer_probability": "first", "on_parse_failure": "unscored", "hybrid_weight": 0.8,
                              "hybrid_stage": "bm25", "template": "{query} {document}"}).to_config()
    assert create_reranker(config).to_config() == config
    assert ERankReranker.default_model == "Alibaba-NLP/ERank-4B"
    defaults = ERankReranker()
    assert (defaults.name, defaults.depth, defaults.instruction, defaults.query_tokens, defaults.document_tokens,
            defaults.max_new_tokens, defaults.temperature, defaults.top_logprobs, defaults.hybrid_weight) == (
        "erank", 100, "beir", 2048, 2048, 4096, 0.0, 20, None)
    for options, message in [({"instruction": ""}, "instruction must be one of beir, bright"),
                             ({"template": "{query}"}, "template must be a format string with {query}, one {document}"),
                             ({"template": "{query} {document} {doc}"}, "placeholders"),
                             ({"template": "{query"}, "is not a valid format string"),
                             ({"answer_probability": "sum"}, "answer_probability must be one of product, first"),
                             ({"on_parse_failure": "drop"}, "on_parse_failure must be one of zero, unscored"),
                             ({"hybrid_weight": 1.5}, "hybrid_weight must be between 0 and 1"),
                             ({"top_logprobs": 0}, "top_logprobs must be at least 1"),
                             ({"document_tokens": 0}, "document_tokens must be at least 1"),
                             ({"max_new_tokens": 0}, "Need max_new_tokens >= 1")]:
        with pytest.raises(InputError, match=message.replace("{", r"\{").replace("}", r"\}")):
            ERankReranker(**options)


def test_the_pipeline_file_loads_and_round_trips() -> None:
    pipeline = load_pipeline("beir-erank")
    [stage] = pipeline.rerankers
    assert isinstance(stage, ERankReranker) and stage.model == "Alibaba-NLP/ERank-4B"
