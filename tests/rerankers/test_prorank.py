"""The ProRank stage (mxbai-rerank-v2): its prompt and token ids against MxbaiRerankV2's (typed out
and transcribed here by hand), truncation, logit("1") - logit("0") from fixed log-probabilities and
on the tiny Qwen3 against the reference's forward pass, calibration, batching, candidates without
text, and its pipeline file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from mmrank.errors import InputError
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.prorank import ProRankReranker, prorank_input
from mmrank.rerankers.qwen3_reranker import document_text
from mmrank.types import Item, Query
from tests.rerankers.test_qwen3_reranker import (  # noqa: F401 (stage_types: the registry fixture)
    TOY,
    TOY_QUERY,
    FixedLogprobs,
    assert_batching_changes_nothing,
    expected_order,
    load_pipeline,
    passages,
    ranking,
    stage_records,
    stage_types,
)

# mixedbread-ai/mxbai-rerank at 8e709dca09e0fdba6bc7f6d4983940fdd1b783c5, mxbai_rerank/mxbai_rerank_v2.py:
# chat_template["prefix"] + query_prompt + sep + doc_prompt + sep + task_prompt + chat_template["suffix"]
# for the golden case's first passage, typed out by hand.
REFERENCE_D1 = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "query: what causes tides\n"
    "document: Tides The Moon's pull raises the oceans.\n"
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:<|im_end|>\n"
    "<|im_start|>assistant\n")
WITH_INSTRUCTION_D2 = REFERENCE_D1.replace(
    "query: what causes tides\ndocument: Tides The Moon's pull raises the oceans.\n",
    "instruction: Find the cause\nquery: what causes tides\ndocument: The Sun pulls too.\n")


class ReferenceMxbai:
    """MxbaiRerankV2 (mxbai_rerank_v2.py at 8e709dc) transcribed: ``prepare_predefined_inputs``,
    ``prepare_inputs`` and ``forward`` on a tokenizer and a transformers causal LM.
    ``prepare_for_model(q, sep + d, truncation="only_second", max_length=m)`` (which transformers 5's
    fast tokenizers no longer have) is written out: it drops the pair's last tokens until the two
    fit ``m``."""

    task_prompt = ("You are a search relevance expert who evaluates how well documents match search queries. For "
                   "each query-document pair, carefully analyze the semantic relationship between them, then "
                   "provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
    prefix = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
              "<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n"

    def __init__(self, tokenizer, model=None, max_length: int = 8192, model_max_length: int = 8192) -> None:
        self.tokenizer, self.model = tokenizer, model
        self.max_length, self.model_max_length = max_length, model_max_length

        def get_input_ids(x):
            return self.tokenizer(x, return_tensors=None, add_special_tokens=False)["input_ids"]

        self.yes_loc = get_input_ids("1")[0]
        self.no_loc = get_input_ids("0")[0]
        self.task_prompt_inputs = get_input_ids(self.task_prompt)
        self.sep_inputs = get_input_ids("\n")
        self.chat_template_prefix_inputs = get_input_ids(self.prefix)
        self.chat_template_suffix_inputs = get_input_ids(self.suffix)
        self.predefined_length = (len(self.chat_template_prefix_inputs) + len(self.task_prompt_inputs)
                                  + len(self.chat_template_suffix_inputs) + len(self.sep_inputs))
        if self.max_length + self.predefined_length > self.model_max_length:
            self.max_length = self.model_max_length - self.predefined_length

    def input_ids(self, query: str, document: str, instruction: str | None = None) -> list[int]:
        query_prompt = f"query: {query}"
        if instruction:
            query_prompt = "".join([f"instruction: {instruction}", "\n", query_prompt])
        query_inputs = self.tokenizer(query_prompt, return_tensors=None, add_special_tokens=False,
                                      max_length=self.max_length * 3 // 4, truncation=True)
        available_tokens = self.model_max_length - len(query_inputs["input_ids"]) - self.predefined_length
        doc_maxlen = min(available_tokens, self.max_length)
        document_inputs = self.tokenizer(f"document: {document}", return_tensors=None, add_special_tokens=False,
                                         max_length=doc_maxlen, truncation=True)
        first, pair = query_inputs["input_ids"], self.sep_inputs + document_inputs["input_ids"]
        excess = len(first) + len(pair) - self.max_length
        item = first + (pair[:len(pair) - excess] if excess > 0 else pair)
        return (self.chat_template_prefix_inputs + item + self.sep_inputs + self.task_prompt_inputs
                + self.chat_template_suffix_inputs)

    def predict(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None = None) -> list[float]:
        import torch

        inputs = [{"input_ids": self.input_ids(q, d, instruction)} for q, d in zip(queries, documents)]
        for item in inputs:
            item["attention_mask"] = [1] * len(item["input_ids"])
        padded = self.tokenizer.pad(inputs, padding="longest", pad_to_multiple_of=8, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        return (logits[:, -1, self.yes_loc] - logits[:, -1, self.no_loc]).double().tolist()


# ------------------------------------------------------------------------------ prompt
def test_the_prompt_and_its_token_ids_are_the_references(tiny_llm: HFLanguageModel) -> None:
    stage = ProRankReranker(model=tiny_llm)
    first = stage.prompt(tiny_llm, TOY_QUERY, TOY[0])
    assert first.text == REFERENCE_D1
    assert ProRankReranker(model=tiny_llm, instruction="Find the cause").prompt(
        tiny_llm, TOY_QUERY, TOY[1]).text == WITH_INSTRUCTION_D2
    reference = ReferenceMxbai(tiny_llm.tokenizer)
    for item in TOY:
        ours = stage.prompt(tiny_llm, TOY_QUERY, item)
        assert ours.ids == reference.input_ids(TOY_QUERY, document_text(item))
        # On the tiny tokenizer the written-out text also tokenizes to the same ids (on Qwen2.5's own
        # vocabulary it need not: "." and the newline after it merge; the stage scores ours.ids).
        assert tiny_llm.tokenizer.encode(ours.text, add_special_tokens=False) == ours.ids
    with_instruction = ProRankReranker(model=tiny_llm, instruction="Find the cause").prompt(tiny_llm, TOY_QUERY, TOY[2])
    assert with_instruction.ids == reference.input_ids(TOY_QUERY, document_text(TOY[2]), "Find the cause")
    # Without a tokenizer (a backend that reads strings): the same text, uncut, and no ids.
    assert prorank_input(None, TOY_QUERY, document_text(TOY[0])).text == REFERENCE_D1


@pytest.mark.parametrize("max_length", [24, 40, 8192])
def test_the_query_and_document_are_cut_as_the_reference_cuts_them(tiny_llm: HFLanguageModel,
                                                                    max_length: int) -> None:
    """The query part at most 3/4 of ``max_length``, the pair cut from its end to fit; with 8192 the
    tiny model's 8192 positions lower the budget by the fixed pieces, as the reference does."""
    tokenizer = tiny_llm.tokenizer
    query = "what does the moon pull " * (6 if max_length < 100 else 900)
    document = "the sea rises and falls " * (10 if max_length < 100 else 1500)
    ours = prorank_input(tokenizer, query, document, "Find the cause", max_length, 8192)
    reference = ReferenceMxbai(tokenizer, max_length=max_length, model_max_length=8192)
    assert ours.ids == reference.input_ids(query, document, "Find the cause")
    assert len(ours.ids) == reference.max_length + reference.predefined_length
    assert tokenizer.encode(ours.text, add_special_tokens=False) == ours.ids
    assert ours.text.endswith("\n" + ReferenceMxbai.task_prompt + ReferenceMxbai.suffix)


# ------------------------------------------------------------------------ score logic
def test_the_score_is_the_logit_difference_and_calibrates_as_the_reference() -> None:
    """Fixed log-probabilities of "1" and "0": x = l1 - l0 (2.0, -2.0, 0.5 by hand); calibrate:
    sigmoid(x - 9/2) for mxbai-rerank-base-v2; neither listed: not scored."""
    table = {"Moon": [-0.2, -2.2], "Sun": [-3.0, -1.0], "Cats": [-1.0, -1.5], "Stars": [float("-inf")] * 2}
    items = [*TOY, Item("d4", "text", text="Stars shine.")]
    model = FixedLogprobs(table)
    [result] = ProRankReranker(model=model).rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert result.ids == ["d1", "d3", "d2", "d4"]
    records = stage_records(result, "prorank")
    assert [records[i][0] for i in ["d1", "d3", "d2"]] == pytest.approx([2.0, 0.5, -2.0], abs=1e-12)
    assert records["d4"][0] is None and "neither '1' nor '0'" in records["d4"][1]
    [(conversations, tokens, prefix)] = model.calls
    assert tokens == ["1", "0"] and prefix == "" and conversations[0] == REFERENCE_D1  # written out, uncut
    named = FixedLogprobs(table)
    named.source = "mixedbread-ai/mxbai-rerank-base-v2"  # what a loaded model's name is read from
    calibrated = ProRankReranker(model=named, calibrate=True)
    [result] = calibrated.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert calibrated.display_max == 9.0
    sigmoid = [1 / (1 + math.exp(-(x - 4.5))) for x in (2.0, 0.5, -2.0)]  # 0.0758582, 0.0179862, 0.0015011
    assert [stage_records(result, "prorank")[i][0] for i in ["d1", "d3", "d2"]] == pytest.approx(sigmoid, abs=1e-12)
    assert ProRankReranker(model="mixedbread-ai/mxbai-rerank-large-v2").display_max == 12.0
    assert ProRankReranker(model="my/reranker").display_max == ProRankReranker(model=model).display_max == 12.0
    assert ProRankReranker(estimated_max=4).display_max == 4.0


def test_candidates_without_text_are_noted_and_pages_are_read_as_text() -> None:
    model = FixedLogprobs({"Moon": [-0.2, -2.2], "Sun": [-3.0, -1.0], "page text": [-1.0, -1.0]})
    items = [Item("blank", "text", text=" "), TOY[1], Item("page", "page", source="x.pdf", page=1, text="page text"),
             Item("bare", "page", source="x.pdf", page=2), TOY[0]]
    [result] = ProRankReranker(model=model).rerank_batch([Query(text="q")], [ranking(items)], None)
    assert result.ids == ["d1", "page", "d2", "blank", "bare"]
    note = "not scored: no text to show; kept its place after the scored hits"
    assert stage_records(result, "prorank")["blank"] == stage_records(result, "prorank")["bare"] == (None, note)
    with pytest.raises(InputError, match="shows candidates as text only; use_images cannot be 'always'"):
        ProRankReranker(use_images="always")


# ------------------------------------------------------------------------ real models
def test_scores_are_the_references_on_the_tiny_model(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    """The stage's scores equal MxbaiRerankV2's forward pass (transcribed, plain transformers, one
    pair per pass) on the reference's own ids, and its order is theirs; the tail keeps its place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = [*TOY, *passages(5)]
    tiny_llm.usage.reset()
    [result] = ProRankReranker(model=tiny_llm, depth=7, instruction="Find the cause").rerank_batch(
        [Query(text=TOY_QUERY)], [ranking(items)], None)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llm_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llm_dir), dtype=torch.float32).eval()
    reference = ReferenceMxbai(tokenizer, model)
    documents = [document_text(item) for item in items[:7]]
    expected = [reference.predict([TOY_QUERY], [document], "Find the cause")[0] for document in documents]
    ids = [item.id for item in items]
    assert result.ids == expected_order(ids[:7], expected) + ids[7:]
    records = stage_records(result, "prorank")
    assert [records[i][0] for i in ids[:7]] == pytest.approx(expected, abs=1e-4)
    assert len(set(round(x, 4) for x in expected)) == 7
    assert records[ids[7]] == (None, None) and result.stage_names == ["bm25", "prorank"]
    # One call; the tokens read are the reference's ids, not a re-tokenized text.
    assert tiny_llm.usage.calls == 1 and tiny_llm.usage.prompts == 7
    assert tiny_llm.usage.input_tokens == sum(len(reference.input_ids(TOY_QUERY, d, "Find the cause"))
                                              for d in documents)


def test_batching_does_not_change_scores(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    assert_batching_changes_nothing(ProRankReranker, tiny_llm, tiny_llm_dir)


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "prorank", "instruction": "Find the cause", "max_length": 4096,
                              "calibrate": True, "estimated_max": 10.0}).to_config()
    assert create_reranker(config).to_config() == config
    assert ProRankReranker.default_model == "mixedbread-ai/mxbai-rerank-base-v2"
    defaults = ProRankReranker()
    assert (defaults.name, defaults.depth, defaults.max_length, defaults.instruction, defaults.calibrate) == (
        "prorank", 100, 8192, None, False)
    assert defaults.display_max == 9.0
    for options, message in [({"max_length": 0}, "max_length must be at least 1"),
                             ({"max_length": 4}, "max_length must leave room"),
                             ({"instruction": 3}, "instruction must be a text or null"),
                             ({"estimated_max": "nine"}, "estimated_max must be a number or null")]:
        with pytest.raises(InputError, match=message):
            ProRankReranker(**options)


def test_the_pipeline_file_loads_and_round_trips() -> None:
    pipeline = load_pipeline("beir-prorank")
    [stage] = pipeline.rerankers
    assert isinstance(stage, ProRankReranker) and stage.model == "mixedbread-ai/mxbai-rerank-base-v2"
