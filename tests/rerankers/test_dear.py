"""The DeAR stages. Pointwise (``dear``): the pair's token ids against the reference's tokenization
(transcribed by hand) on the authors' toy example, the scores against plain transformers logits of a
tiny random Llama classifier built here, ordering, batching, candidates without text, a model that
is missing or a LoRA adapter without peft. Listwise (``dear-listwise``): the messages against
prompts.py (typed out by hand), the parser on fixed and fuzzed outputs (against a transcription of
the reference's), the windows, and real runs on the tiny Qwen3 and Qwen2-VL checked against the
models' own output.

Reference: DataScienceUIBK/DeAR-Reranking at c31c73985f0f7546ef7598a3c8815ef6594a6190.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm.hf_classifier import HFSequenceClassifier
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import RERANKERS, create_reranker
from mmrank.rerankers.dear import (
    DeARListwiseReranker,
    DeARReranker,
    document_text,
    parse_dear_ranking,
    passage_text,
)
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.rerankers.test_first import FakeModel, ranking

# ----------------------------------------------------------------------------- fixtures
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]

# simple_rerank.py's toy example (the "rerank a list for one query" demo): no titles.
TOY_QUERY = "When did Thomas Edison invent the light bulb?"
TOY_DOCS = ["Lightning strike at Seoul National University",
            "Thomas Edison tried to invent a device for car but failed",
            "Coffee is good for diet",
            "KEPCO fixes light problems",
            "Thomas Edison invented the light bulb in 1879"]
TOY_ITEMS = [Item(f"doc{n}", "text", text=text) for n, text in enumerate(TOY_DOCS)]


def build_llama3_tokenizer() -> Any:
    """A tiny Llama-3-style tokenizer: byte-level BPE trained on a few sentences, Llama 3's special
    tokens, no padding token, and Llama 3's post-processor (``<|begin_of_text|> $A`` and, for a
    pair, ``<|begin_of_text|> $A <|begin_of_text|> $B``, as its tokenizer.json has it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"query: {TOY_QUERY}", *(f"document: {text}" for text in TOY_DOCS),
              "The llama is a domesticated South American camelid."] * 4
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=LLAMA3_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", model_max_length=131072)


def build_tiny_llama_classifier(folder: Path, pad_token_id: int | None = None, seed: int = 0) -> Path:
    """A tiny LlamaForSequenceClassification with one label (seeded random weights) and the
    tokenizer above, saved into ``folder``; its config's ``pad_token_id`` as given."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_llama3_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama classifier whose config names no padding token (as Llama 3's)."""
    return build_tiny_llama_classifier(tmp_path_factory.mktemp("tiny_llama_cls"))


@pytest.fixture(scope="module")
def llama_tokenizer(llama_dir: Path) -> Any:
    """Its tokenizer as simple_rerank.py's load_ranker sets it: padding with the end-of-sequence
    token, on the right."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    return tokenizer


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two types in the registry (the lead's line for each, put back after the test)."""
    monkeypatch.setitem(RERANKERS, "dear", "mmrank.rerankers.dear:DeARReranker")
    monkeypatch.setitem(RERANKERS, "dear-listwise", "mmrank.rerankers.dear:DeARListwiseReranker")


def reference_row(tokenizer: Any, query: str, title: str, text: str, q_max_len: int = 32,
                  p_max_len: int = 196) -> list[int]:
    """pointwise_reranker/data.py, transcribed: RerankerInferencePreProcessor.__call__ (``'query: ' +
    query`` and ``'document: ' + title + ' ' + text`` encoded without special tokens, cut to
    q_max_len and p_max_len - 3), then RerankerInferenceDataset.__getitem__'s
    ``prepare_for_model([bos] + query, [bos] + text, truncation='only_second', padding='max_length',
    max_length=q_max_len + p_max_len)``: under transformers 4 (which the reference ran on)
    PreTrainedTokenizerFast's build_inputs_with_special_tokens joins the two lists as they are, and
    the padding token is the end-of-sequence token (inference.py: ``pad_token = eos_token``)."""
    query_ids = tokenizer.encode("query: " + query, add_special_tokens=False, max_length=q_max_len, truncation=True)
    text_ids = tokenizer.encode("document: " + title + " " + text, add_special_tokens=False,
                                max_length=p_max_len - 3, truncation=True)
    ids = [tokenizer.bos_token_id] + query_ids + [tokenizer.bos_token_id] + text_ids
    assert len(ids) <= q_max_len + p_max_len  # so 'only_second' never cuts
    return ids + [tokenizer.eos_token_id] * (q_max_len + p_max_len - len(ids))


def plain_logits(folder: Path, rows: list[list[int]], pad_token_id: int) -> np.ndarray:
    """What AutoModelForSequenceClassification gives for right-padded ``rows``, with the config's
    pad_token_id set as simple_rerank.py sets it (or as given)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    model.config.pad_token_id = pad_token_id
    ids = torch.tensor(rows)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([[real_length(row)] for row in rows])).long()
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].double().numpy()


def real_length(row: list[int]) -> int:
    """Tokens before the right padding (the end-of-sequence token, id 1 in the tiny tokenizer)."""
    length = len(row)
    while length and row[length - 1] == LLAMA3_SPECIAL.index("<|end_of_text|>"):
        length -= 1
    return length


def toy_ranking(items: list[Item] = TOY_ITEMS, query: str = TOY_QUERY) -> Ranking:
    hits = tuple(Hit(item, 10.0 - n, stages={"bm25": StageScore(10.0 - n, n + 1)}) for n, item in enumerate(items))
    return Ranking(Query(text=query), hits, timings={"bm25": 0.0})


def stage_notes(result: Ranking, stage: str) -> dict[str, str | None]:
    return {hit.item_id: hit.stages[stage].note for hit in result}


# ------------------------------------------------------------------- pointwise: tokens
def test_the_toy_example_is_tokenized_as_the_reference(llama_dir: Path, llama_tokenizer: Any) -> None:
    """The per-side row is data.py's; it reads ``<|begin_of_text|>query: q<|begin_of_text|>document:
    <title> <text>`` (two spaces: no title), padded to 32 + 196; on this Llama-3-style tokenizer it
    is also what simple_rerank.py's ``tokenizer(q, d, truncation=True, max_length=228,
    padding="max_length")`` gives (score_pair)."""
    classifier = HFSequenceClassifier(str(llama_dir), device="cpu")
    pairs = [("query: " + TOY_QUERY, document_text(item)) for item in TOY_ITEMS]
    assert pairs[4] == ("query: When did Thomas Edison invent the light bulb?",
                        "document:  Thomas Edison invented the light bulb in 1879")
    encoded = classifier.encode(pairs)
    expected = [reference_row(llama_tokenizer, TOY_QUERY, "", text) for text in TOY_DOCS]
    assert encoded["input_ids"].tolist() == expected
    assert encoded["attention_mask"].tolist() == [[1] * real_length(row) + [0] * (228 - real_length(row))
                                                  for row in expected]
    row = expected[4]
    assert llama_tokenizer.decode(row[:real_length(row)]) == (
        "<|begin_of_text|>query: When did Thomas Edison invent the light bulb?"
        "<|begin_of_text|>document:  Thomas Edison invented the light bulb in 1879")
    assert set(row[real_length(row):]) == {llama_tokenizer.convert_tokens_to_ids("<|end_of_text|>")}
    simple = llama_tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=228,
                             padding="max_length")
    assert simple["input_ids"] == expected
    assert classifier.encode(pairs, encoding="pair")["input_ids"].tolist() == expected


def test_long_sides_are_cut_per_side_or_longest_first(llama_dir: Path, llama_tokenizer: Any) -> None:
    """per-side: the query keeps its first 32 tokens and the document its first 193 (196 - 3);
    pair: the longer side loses tokens until the row has 228."""
    query, text = " ".join(["light"] * 60), " ".join(["bulb"] * 300)
    classifier = HFSequenceClassifier(str(llama_dir), device="cpu")
    [row] = classifier.encode([("query: " + query, "document:  " + text)])["input_ids"].tolist()
    assert row == reference_row(llama_tokenizer, query, "", text)
    bos = llama_tokenizer.bos_token_id
    assert row[0] == bos and row[33] == bos and real_length(row) == 1 + 32 + 1 + 193
    assert row[1:33] == llama_tokenizer.encode("query: " + query, add_special_tokens=False)[:32]
    [pair] = classifier.encode([("query: " + query, "document:  " + text)], encoding="pair")["input_ids"].tolist()
    simple = llama_tokenizer("query: " + query, "document:  " + text, truncation=True, max_length=228)
    assert pair == simple["input_ids"]
    assert len(pair) == 228 and pair.count(bos) == 2 and pair != row
    [short] = classifier.encode([("query: " + query, "document:  " + text)], max_lengths=(8, 20))["input_ids"].tolist()
    assert len(short) == 28 and real_length(short) == 1 + 8 + 1 + 17


# ------------------------------------------------------------------- pointwise: scores
def test_scores_are_plain_transformers_logits_and_set_the_order(llama_dir: Path, llama_tokenizer: Any) -> None:
    """The stage's score of each toy document is AutoModelForSequenceClassification's logit on the
    reference's row (pad_token_id set to the tokenizer's padding token, the end-of-sequence token,
    as simple_rerank.py does), and the head is sorted by it. (The authors' numbers for
    dear-8b-reranker-ce-v1 on this example: doc4 -2.016, doc1 -5.688, doc2 -6.375, doc0 -6.5,
    doc3 -6.781; not reproducible without the weights.)"""
    expected = plain_logits(llama_dir, [reference_row(llama_tokenizer, TOY_QUERY, "", text) for text in TOY_DOCS],
                            llama_tokenizer.eos_token_id)
    assert len(set(np.round(expected, 6))) == 5  # the random model tells them apart
    stage = DeARReranker(model=str(llama_dir), device="cpu", depth=5)
    incoming = toy_ranking([*TOY_ITEMS, Item("tail", "text", text="after depth")])
    [result] = stage.rerank_batch([incoming.query], [incoming], None)
    order = [f"doc{n}" for n in np.argsort(-expected, kind="stable")]
    assert result.ids == [*order, "tail"]
    scores = {hit.item_id: hit.stages["dear"].score for hit in result}
    np.testing.assert_allclose([scores[f"doc{n}"] for n in range(5)], expected, rtol=0, atol=1e-5)
    assert scores["tail"] is None and result.ids[-1] == "tail"  # after depth: unchanged
    assert stage.classifier().model.config.pad_token_id == llama_tokenizer.eos_token_id


def test_batching_changes_no_score(llama_dir: Path) -> None:
    """Rows are padded to 228 tokens, so a pair scores the same alone, in a batch of 3 or of all."""
    rankings = [toy_ranking(), toy_ranking(TOY_ITEMS[::-1], "light bulb inventor")]
    results = {}
    for size in (1, 3, 64):
        stage = DeARReranker(model=str(llama_dir), device="cpu", batch_size=size)
        results[size] = stage.rerank_batch([r.query for r in rankings], rankings, None)
        assert stage.classifier().usage.forward_passes == -(-10 // size)
    for size in (3, 64):
        for one, other in zip(results[1], results[size], strict=True):
            assert one.ids == other.ids
            np.testing.assert_allclose([h.stages["dear"].score for h in one], [h.stages["dear"].score for h in other],
                                       rtol=0, atol=1e-5)


def test_a_config_pad_token_of_0_reads_the_last_position(llama_dir: Path, llama_tokenizer: Any,
                                                         tmp_path: Path) -> None:
    """DeAR's training and inference code sets the base model's pad_token_id to 0 (modeling.py), so
    the head reads position 227 of the padded row: ``pad_token_id: 0`` gives plain transformers'
    logits under that config, the same in any batch, and other numbers than the default's."""
    rows = [reference_row(llama_tokenizer, TOY_QUERY, "", text) for text in TOY_DOCS]
    expected = plain_logits(llama_dir, rows, 0)
    default = plain_logits(llama_dir, rows, llama_tokenizer.eos_token_id)
    for size in (1, 5):
        stage = DeARReranker(model=str(llama_dir), device="cpu", pad_token_id=0, batch_size=size)
        [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [toy_ranking()], None)
        scores = {hit.item_id: hit.stages["dear"].score for hit in result}
        np.testing.assert_allclose([scores[f"doc{n}"] for n in range(5)], expected, rtol=0, atol=1e-5)
    assert not np.allclose(expected, default)
    saved = build_tiny_llama_classifier(tmp_path / "pad0", pad_token_id=0)  # a config that names 0 itself
    assert HFSequenceClassifier(str(saved), device="cpu").model.config.pad_token_id == 0


def test_candidates_without_text_keep_their_place_after_the_scored_ones(llama_dir: Path, llama_tokenizer: Any) -> None:
    items = [TOY_ITEMS[0], Item("img", "image", source="/nowhere.png"), TOY_ITEMS[4], Item("blank", "text", text="  ")]
    [result] = DeARReranker(model=str(llama_dir), device="cpu").rerank_batch([Query(text=TOY_QUERY)],
                                                                             [toy_ranking(items)], None)
    expected = plain_logits(llama_dir, [reference_row(llama_tokenizer, TOY_QUERY, "", TOY_DOCS[n]) for n in (0, 4)],
                            llama_tokenizer.eos_token_id)
    assert result.ids == [*(["doc0", "doc4"] if expected[0] > expected[1] else ["doc4", "doc0"]), "img", "blank"]
    notes = stage_notes(result, "dear")
    assert notes["img"] == notes["blank"] == "not scored: the item has no text; kept its place after the scored hits"
    assert notes["doc0"] is None and notes["doc4"] is None


def test_a_title_goes_before_the_text() -> None:
    item = Item("t", "text", text="Llama\n\nThe llama is a domesticated South American camelid...",
                metadata={"title": "Llama"})
    assert document_text(item) == "document: Llama The llama is a domesticated South American camelid..."


# ------------------------------------------------------------------ pointwise: failures
def test_a_missing_model_keeps_the_order_or_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stage = DeARReranker(model=str(tmp_path / "missing"), device="cpu")
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [toy_ranking()], None)
    assert result.ids == [item.id for item in TOY_ITEMS]
    note = result[0].stages["dear"].note
    assert note.startswith(f"model unavailable: Sequence classifier '{tmp_path / 'missing'}' is not available: "
                           "the folder does not exist.")
    assert "keeping the incoming order" in caplog.text
    with pytest.raises(ModelUnavailableError, match="the folder does not exist"):
        DeARReranker(model=str(tmp_path / "missing"), on_unavailable="fail").rerank_batch(
            [Query(text="q")], [toy_ranking()], None)
    hub = DeARReranker(device="cpu", on_unavailable="fail")  # the default checkpoint, not in the offline cache
    with pytest.raises(ModelUnavailableError, match=r"run `hf download abdoelsayed/dear-8b-reranker-ce-v1`"):
        hub.rerank_batch([Query(text="q")], [toy_ranking()], None)


def test_a_head_without_text_does_not_load_the_model(tmp_path: Path) -> None:
    items = [Item("a", "image", source="/a.png"), Item("b", "image", source="/b.png")]
    [result] = DeARReranker(model=str(tmp_path / "missing")).rerank_batch([Query(text="q")], [toy_ranking(items)], None)
    assert result.ids == ["a", "b"]
    assert set(stage_notes(result, "dear").values()) == {
        "not scored: the item has no text; kept its place after the scored hits"}


@pytest.mark.skipif(__import__("importlib").util.find_spec("peft") is not None, reason="peft is installed")
def test_a_lora_adapter_without_peft_names_the_merged_checkpoints(tmp_path: Path) -> None:
    adapter = tmp_path / "dear-8b-reranker-ce-lora-v1"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "meta-llama/Llama-3.1-8B", "peft_type": "LORA", "task_type": "SEQ_CLS"}))
    stage = DeARReranker(model=str(adapter), on_unavailable="fail")
    with pytest.raises(ModelUnavailableError) as caught:
        stage.rerank_batch([Query(text="q")], [toy_ranking()], None)
    message = str(caught.value)
    assert "is a PEFT (LoRA) adapter on 'meta-llama/Llama-3.1-8B'; loading it needs peft (pip install peft)" in message
    assert message.endswith("DeAR's merged checkpoints need no peft: abdoelsayed/dear-8b-reranker-ce-v1, "
                            "abdoelsayed/dear-8b-reranker-ranknet-v1, abdoelsayed/dear-3b-reranker-ce-v1, "
                            "abdoelsayed/dear-3b-reranker-ranknet-v1.")
    [kept] = DeARReranker(model=str(adapter)).rerank_batch([Query(text="q")], [toy_ranking()], None)
    assert kept.ids == [item.id for item in TOY_ITEMS] and "need no peft" in kept[0].stages["dear"].note


def test_a_lora_adapter_is_merged_into_its_base(tmp_path: Path, llama_dir: Path, llama_tokenizer: Any) -> None:
    """With peft: the adapter on its base with one label, merged (simple_rerank.py's load_ranker),
    scores as the merged model does under plain transformers."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(llama_dir, num_labels=1)
    adapter = get_peft_model(base, LoraConfig(base_model_name_or_path=str(llama_dir), task_type=TaskType.SEQ_CLS,
                                              r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, weight in adapter.named_parameters():
            if "lora_B" in name:
                weight.data.normal_(0, 0.5)  # a trained-looking adapter: not the identity
    adapter.save_pretrained(tmp_path / "adapter")
    merged = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(llama_dir, num_labels=1),
                                       tmp_path / "adapter").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    rows = [reference_row(llama_tokenizer, TOY_QUERY, "", text) for text in TOY_DOCS]
    scores = HFSequenceClassifier(str(tmp_path / "adapter"), device="cpu").score(
        [("query: " + TOY_QUERY, "document:  " + text) for text in TOY_DOCS])
    np.testing.assert_allclose(scores, plain_logits(tmp_path / "merged", rows, llama_tokenizer.eos_token_id),
                               rtol=0, atol=1e-5)
    assert not np.allclose(scores, plain_logits(llama_dir, rows, llama_tokenizer.eos_token_id))


def test_a_model_with_two_labels_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path / "two"
    tokenizer = build_llama3_tokenizer()
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_labels=2)
                                   ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelUnavailableError, match=r"it gives 2 scores per pair, and a reranker needs one"):
        HFSequenceClassifier(str(folder), device="cpu")


def test_pointwise_options_are_checked_and_round_trip(registered: None, llama_dir: Path) -> None:
    config = create_reranker({"type": "dear", "model": str(llama_dir), "encoding": "pair", "pad_token_id": 0,
                              "query_max_tokens": 16, "passage_max_tokens": 100, "batch_size": 8}).to_config()
    assert create_reranker(config).to_config() == config
    assert config["encoding"] == "pair" and config["depth"] == 100 and config["name"] == "dear"
    assert DeARReranker.default_model == "abdoelsayed/dear-8b-reranker-ce-v1"
    for options, message in [({"encoding": "concat"}, "encoding must be one of per-side, pair"),
                              ({"passage_max_tokens": 3}, "the passage side more than 3"),
                              ({"query_max_tokens": 0}, "The query side needs at least 1 token"),
                              ({"batch_size": 0}, "batch_size must be at least 1"),
                              ({"pad_token_id": -1}, "pad_token_id must be a token id"),
                              ({"model": ""}, "model must be a sequence classifier's"),
                              ({"on_unavailable": "skip"}, "on_unavailable must be")]:
        with pytest.raises(InputError, match=message):
            DeARReranker(**options)
    with pytest.raises(InputError, match="reads the query's text"):
        DeARReranker(model=str(llama_dir)).rerank_batch([Query(image="/x.png")], [toy_ranking()], None)


# ------------------------------------------------------------------- listwise: messages
TIDES = [Item("d1", "text", text="Tides\n\nTides follow the  Moon's pull [1].", metadata={"title": "Tides"}),
         Item("d2", "text", text="The Sun also pulls on the\noceans."),
         Item("d3", "text", text="Cats\n\nCats sleep a lot.", metadata={"title": "Cats"})]
TIDES_QUESTION = "what causes tides?"

# listwise_rerank/prompts.py (build_messages: prefix_messages, one user turn "[i] snippet" and the
# reply "Received passage [i]." per passage, post_prompt) at c31c73985f0f7546ef7598a3c8815ef6594a6190,
# with convert_trec_to_json.py's "Title: t Content: c" content (whitespace collapsed; the text alone
# without a title): typed out by hand.
GOLDEN_MESSAGES = [
    {"role": "system", "content": "You are RankLLM, an assistant that ranks passages by relevance to the query."},
    {"role": "user", "content": "I will provide you with 3 passages, each indicated by number identifier [].\n"
                                "Rank the passages based on their relevance to query: what causes tides?."},
    {"role": "assistant", "content": "Okay, please provide the passages."},
    {"role": "user", "content": "[1] Title: Tides Content: Tides follow the Moon's pull [1]."},
    {"role": "assistant", "content": "Received passage [1]."},
    {"role": "user", "content": "[2] The Sun also pulls on the oceans."},
    {"role": "assistant", "content": "Received passage [2]."},
    {"role": "user", "content": "[3] Title: Cats Content: Cats sleep a lot."},
    {"role": "assistant", "content": "Received passage [3]."},
    {"role": "user", "content": "Search Query: what causes tides?.\n"
                                "Rank the 3 passages above based on their relevance to the search query. The passages "
                                "should be listed in descending order using identifiers.\n"
                                "Please follow the steps below:\n"
                                "Step 1. List the information requirements to answer the query.\n"
                                "Step 2. For each requirement, find the passages containing that information.\n"
                                "Step 3. Rank passages that best cover clear and diverse information. Include all "
                                "passages.\n"
                                "Output format strictly: [2] > [1] > [3] ... Only output the ranking using "
                                "identifiers; no explanations."},
]


def tides_hits(items: list[Item] = TIDES) -> list[Hit]:
    return [Hit(item, 3.0 - n, stages={"bm25": StageScore(3.0 - n, n + 1)}) for n, item in enumerate(items)]


def test_the_messages_are_prompts_py_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    model = FakeModel(texts=["[1]"])
    DeARListwiseReranker(model=model).rank_windows(model, [(TIDES_QUESTION, tides_hits())])
    [(method, [conversation], max_new_tokens, prefix, temperature)] = model.calls
    assert conversation == GOLDEN_MESSAGES
    assert (method, max_new_tokens, prefix, temperature) == ("generate", 1024, "", 0.0)
    # The model's own chat template renders them (the tiny Qwen3's here), with the generation prompt.
    assert tiny_llm.prompt_text(conversation) == "".join(
        f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" for message in GOLDEN_MESSAGES
    ) + "<|im_start|>assistant\n"


def test_passages_are_collapsed_and_cut_at_300_words() -> None:
    long = Item("x", "text", text=" ".join(f"w{n}" for n in range(400)))
    assert passage_text(long) == " ".join(f"w{n}" for n in range(300))
    title_only = Item("e", "text", text="", metadata={"title": "Only a title"})
    assert passage_text(title_only) == "Title: Only a title Content:"
    assert passage_text(Item("r", "text", text="a Title: Content: b")) == "a b"  # the reference's replace, anywhere
    assert passage_text(TIDES[0], 4) == "Title: Tides Content: Tides"


# -------------------------------------------------------------------- listwise: parsing
def reference_parse(text: str, n: int) -> list[int]:
    """prompts.py's extract_after_think then parse_ranking_to_indices, transcribed."""
    import re

    m = re.search(r"</think>\s*(.*)", text, flags=re.DOTALL | re.IGNORECASE)
    ranking_text = m.group(1).strip() if m else text.strip()
    cleaned = "".join(ch if ch.isdigit() else " " for ch in ranking_text).strip()
    if not cleaned:
        return list(range(n))
    ints = [int(x) - 1 for x in cleaned.split() if x.isdigit()]
    seen, result = set(), []
    for idx in ints:
        if 0 <= idx < n and idx not in seen:
            seen.add(idx)
            result.append(idx)
    return result + [idx for idx in range(n) if idx not in seen]


@pytest.mark.parametrize(("text", "order", "note"), [
    ("<think>Passage [1] mentions the Moon; [2] the Sun.</think>\n[3] > [1] > [2]", ["p2", "p0", "p1"], None),
    ("[2] > [3] > [1]", ["p1", "p2", "p0"], None),  # no think block: the whole text
    ("3 1 2", ["p2", "p0", "p1"], None),  # bare numbers count too
    ("<think>x</THINK>[2]>[1]>[3]", ["p1", "p0", "p2"], None),  # any case
    ("<think>a</think> [2] </think> [3]", ["p1", "p2", "p0"],  # after the FIRST </think>
     "window 1: model ranked 2 of 3; the rest kept their order"),
    ("[2] > [2] > [9] > [0]", ["p1", "p0", "p2"], "window 1: model ranked 1 of 3; the rest kept their order"),
    ("", ["p0", "p1", "p2"], "window 1: answer not parsed: empty output; kept the incoming order"),
    ("<think>I cannot decide.</think>", ["p0", "p1", "p2"],
     "window 1: answer not parsed: empty output; kept the incoming order"),
    ("<think>[1] is best</think> none of them", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no number from 1 to 3 after </think>; kept the incoming order"),
    ("[4] > [7]", ["p0", "p1", "p2"],
     "window 1: answer not parsed: no number from 1 to 3 after </think>; kept the incoming order"),
    ("[1.5] > [3]", ["p0", "p4", "p2", "p1", "p3"], "window 1: model ranked 3 of 5; the rest kept their order"),
])
def test_fixed_outputs_give_the_reference_order(text: str, order: list[str], note: str | None) -> None:
    """Hand-computed orders; the reference's parser gives the same permutation on each. ("1.5" is
    two numbers for it: 1 and 5.)"""
    count = len(order)
    model = FakeModel(texts=[text])
    stage = DeARListwiseReranker(model=model, depth=count, window=count, stride=1)
    [result] = stage.rerank_batch([Query(text="q")], [ranking(count)], None)
    assert result.ids == order
    assert [f"p{index}" for index in reference_parse(text, count)] == order
    assert set(stage_notes(result, "dear-listwise").values()) == {note}
    assert result.explanations["dear-listwise"] == (text,)


_PIECES = st.sampled_from(["[", "]", " > ", ">", ",", " ", "\n", "</think>", "<think>", "</THINK>", "abc", "0", "00",
                           "1", "2", "3", "7", "12", "19", "20", "21", "99999999999999999999999", ".", "-"])


@given(text=st.one_of(st.text(max_size=80), st.lists(_PIECES, max_size=40).map("".join)),
       count=st.integers(min_value=1, max_value=20))
def test_any_output_gives_a_full_order(text: str, count: int) -> None:
    parsed = parse_dear_ranking(text, count)
    assert sorted(parsed.order) == list(range(count))
    assert (parsed.failure is None) == bool(parsed.parsed_ids)
    if text.isascii():
        assert list(parsed.order) == reference_parse(text, count)


@given(data=st.data(), count=st.integers(min_value=1, max_value=20))
def test_a_written_permutation_is_read_back(data: st.DataObject, count: int) -> None:
    order = data.draw(st.permutations(range(1, count + 1)))
    reasoning = data.draw(st.text(alphabet="abc [12] >\n", max_size=30))
    parsed = parse_dear_ranking(f"<think>{reasoning}</think>\n" + " > ".join(f"[{i}]" for i in order), count)
    assert parsed.complete and list(parsed.parsed_ids) == list(order)


def test_non_ascii_digits() -> None:
    """Decimal digits of other scripts are numbers (as int() reads them); a superscript, on which
    the reference's int() would raise, is not."""
    assert parse_dear_ranking("[٢] > [1]", 3).order == (1, 0, 2)
    assert parse_dear_ranking("[2²] > [3]", 3).order == (1, 2, 0)


# -------------------------------------------------------------------- listwise: windows
def test_the_windows_are_the_references() -> None:
    """pipeline.sliding_windows(rank_start=0, rank_end=30, window_size=20, step=10): [10, 30) then
    [0, 20), cut to the hits there are."""
    stage = DeARListwiseReranker()
    assert stage.schedule(100) == stage.schedule(30) == [(10, 30), (0, 20)]
    assert stage.schedule(25) == [(10, 25), (0, 20)]
    assert stage.schedule(12) == [(10, 12), (0, 12)]
    assert stage.schedule(11) == [(0, 11)]  # [10, 11) holds one hit: not asked
    assert stage.schedule(1) == []


def test_a_top_30_is_two_calls_and_the_tail_keeps_its_order() -> None:
    model = FakeModel(texts=["[20] > [1]", "[1] > [2]"])
    incoming = ranking(40)
    [result] = DeARListwiseReranker(model=model).rerank_batch([incoming.query], [incoming], None)
    assert model.usage.calls == 2
    first, second = (len(call[1][0]) for call in model.calls)
    assert first == second == 3 + 2 * 20 + 1  # three opening turns, two per passage, the last turn
    # window [10, 30): p29 first, then p10 .. p28; window [0, 20) of p0..p9, p29, p10..p18: kept (1, 2 first).
    assert result.ids[:11] == [f"p{n}" for n in range(10)] + ["p29"]
    assert result.ids[11:30] == [f"p{n}" for n in range(10, 29)]
    assert result.ids[30:] == [f"p{n}" for n in range(30, 40)]
    assert all(hit.stages["dear-listwise"].score is None for hit in result.hits[30:])


# ------------------------------------------------------------------------- real runs
def expected_windows(model: Any, stage: DeARListwiseReranker, question: str, hits: list[Hit]) -> list[str]:
    """The windows applied by hand, back to front, each parsed from the model's own generation."""
    order = list(hits[:min(stage.depth, len(hits))])
    for start, end in stage.schedule(len(hits)):
        conversation = stage.window_conversation(model, question, order[start:end])
        [generation] = model.generate([conversation], max_new_tokens=stage.max_new_tokens)
        parsed = parse_dear_ranking(generation.text, end - start)
        order[start:end] = [order[start + index] for index in parsed.order]
    return [hit.item_id for hit in order] + [hit.item_id for hit in hits[len(order):]]


def test_a_real_run_on_the_tiny_model_follows_its_own_output(tiny_llm: HFLanguageModel) -> None:
    """Windows [2, 6) then [0, 4). (A query with digits: the random model then writes one, 4, in
    its first answer, which moves p5 up; its second answer has none: that window keeps its order.)"""
    stage = DeARListwiseReranker(model=tiny_llm, depth=6, window=4, stride=2, max_new_tokens=24)
    incoming = ranking(8, "1 2 3")
    tiny_llm.usage.reset()
    [result] = stage.rerank_batch([incoming.query], [incoming], None)
    assert tiny_llm.usage.calls == 2 and tiny_llm.usage.generated_tokens > 0
    assert result.ids == expected_windows(tiny_llm, stage, "1 2 3", list(incoming.hits))
    assert result.ids == ["p0", "p1", "p5", "p2", "p3", "p4", "p6", "p7"]
    assert stage_notes(result, "dear-listwise")["p5"] == (
        "window 1: model ranked 1 of 4; the rest kept their order | window 2: answer not parsed: no number from 1 "
        "to 4 after </think>; kept the incoming order")
    assert [hit.stages["dear-listwise"].rank for hit in result] == list(range(1, 9))
    assert len(result.explanations["dear-listwise"]) == 2


def test_queries_in_one_call_rank_as_alone(tiny_llm: HFLanguageModel) -> None:
    rankings = [ranking(6, "tides"), ranking(5, "moon gravity", words=6)]
    together = DeARListwiseReranker(model=tiny_llm, depth=6, window=4, stride=2, max_new_tokens=12)
    alone = DeARListwiseReranker(model=tiny_llm, depth=6, window=4, stride=2, max_new_tokens=12, batch_size=1)
    queries = [r.query for r in rankings]
    assert [r.ids for r in together.rerank_batch(queries, rankings, None)] == \
           [r.ids for r in alone.rerank_batch(queries, rankings, None)]


def test_sampling_passes_the_temperature_and_a_seed_repeats_it(tiny_llm: HFLanguageModel) -> None:
    model = FakeModel(texts=["[1]"])
    DeARListwiseReranker(model=model, temperature=0.5).rank_windows(model, [("q", tides_hits())])
    assert model.calls[0][4] == 0.5
    runs = [DeARListwiseReranker(model=tiny_llm, temperature=0.5, seed=7, depth=4, window=4, stride=2,
                                 max_new_tokens=12)
            .rank_windows(tiny_llm, [("tides", list(ranking(4).hits))])[0].reasoning for _ in range(2)]
    assert runs[0] == runs[1]


def test_pages_go_to_a_vision_model_after_their_label(tiny_mllm: Any, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green", "blue"]):
        path = tmp_path / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    hits = tides_hits(items)
    stage = DeARListwiseReranker(model=tiny_mllm, max_new_tokens=8)
    conversation = stage.window_conversation(tiny_mllm, "red", hits)
    assert conversation[:3] == [GOLDEN_MESSAGES[0], {"role": "user", "content": GOLDEN_MESSAGES[1]["content"].replace(
        "what causes tides?", "red")}, GOLDEN_MESSAGES[2]]
    turn = conversation[3]["content"]
    assert turn[0] == {"type": "text", "text": "[1] "} and turn[1]["type"] == "image" and len(turn) == 2
    assert conversation[4] == {"role": "assistant", "content": "Received passage [1]."}
    [result] = stage.rerank_batch([Query(text="red")], [Ranking(Query(text="red"), tuple(hits))], None)
    assert result.ids == expected_windows(tiny_mllm, stage, "red", hits)
    text_only = DeARListwiseReranker(model=tiny_mllm, use_images="never")
    assert text_only.window_conversation(tiny_mllm, "red", hits)[3]["content"] == "[1] "


def test_listwise_options_are_checked_and_round_trip(registered: None) -> None:
    config = create_reranker({"type": "dear-listwise", "temperature": 0.5, "seed": 3, "max_new_tokens": 256,
                              "depth": 100}).to_config()
    assert create_reranker(config).to_config() == config
    default = create_reranker({"type": "dear-listwise"}).to_config()
    assert (default["depth"], default["window"], default["stride"], default["temperature"],
            default["max_new_tokens"], default["max_passage_words"]) == (30, 20, 10, 0.0, 1024, 300)
    assert DeARListwiseReranker.default_model == "abdoelsayed/dear-8b-reranker-listwise-v1"
    assert DeARListwiseReranker.takes_images
    for options, message in [({"temperature": -1.0}, "temperature >= 0"),
                             ({"max_new_tokens": 0}, "max_new_tokens >= 1"),
                             ({"seed": "x"}, "seed must be a whole number"),
                             ({"max_passage_words": 0}, "max_passage_words must be at least 1")]:
        with pytest.raises(InputError, match=message):
            DeARListwiseReranker(**options)
