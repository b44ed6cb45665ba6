"""The Qwen3-Reranker stage: its prompt against the model card's construction (typed out here by
hand), P(yes) from fixed log-probabilities, its scores against the card's transformers code run on
the tiny Qwen3, truncation, batching, candidates without text, pages on the tiny Qwen2-VL, and its
pipeline file. The helpers at the top are shared with the ERank and ProRank tests."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmrank.errors import InputError
from mmrank.mllm import Usage
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import RERANKERS, create_reranker, register_reranker
from mmrank.rerankers.qwen3_reranker import THINK_PREFIX, Qwen3Reranker, cut_to_tokens, document_text
from mmrank.types import Hit, Item, Query, Ranking, StageScore

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
# The lead adds these lines to mmrank.rerankers.RERANKERS; until then the tests register them.
STAGE_TYPES = {"erank": "mmrank.rerankers.erank:ERankReranker",
               "prorank": "mmrank.rerankers.prorank:ProRankReranker",
               "qwen3-reranker": "mmrank.rerankers.qwen3_reranker:Qwen3Reranker"}

TOY_QUERY = "what causes tides"
TOY = [Item("d1", "text", text="Tides\n\nThe Moon's pull raises the oceans.", metadata={"title": "Tides"}),
       Item("d2", "text", text="The Sun pulls too."),
       Item("d3", "text", text="Cats\n\nCats sleep a lot.", metadata={"title": "Cats"})]

# QwenLM/Qwen3-Embedding at f4ad0c434c0e3534494e26a4a6bdfd8ab1431968, README.md ("Reranker Model /
# Transformers Usage", the model card's snippet): prefix + format_instruction(task, query, doc) +
# suffix for the golden case's first passage (the documents as the stage writes them: "title body").
CARD_PROMPT_D1 = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: what causes tides\n"
    "<Document>: Tides The Moon's pull raises the oceans.<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
               "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(autouse=True)
def stage_types() -> Iterator[None]:
    """The three stage types registered (as the registry will hold them), then the registry as it was."""
    saved = dict(RERANKERS)
    for kind, target in STAGE_TYPES.items():
        if kind not in RERANKERS:
            register_reranker(kind, target)
    yield
    RERANKERS.clear()
    RERANKERS.update(saved)


def hits_of(items: Sequence[Item]) -> tuple[Hit, ...]:
    """The items in this order, scored 10, 9, ... by a ``bm25`` first stage."""
    return tuple(Hit(item, 10.0 - n, stages={"bm25": StageScore(10.0 - n, n + 1)}) for n, item in enumerate(items))


def ranking(items: Sequence[Item], query: str = TOY_QUERY) -> Ranking:
    return Ranking(Query(text=query), hits_of(items), timings={"bm25": 0.0})


def passages(count: int) -> list[Item]:
    """``count`` short passages about the moon and the sea, all different."""
    words = "moon sea tide pull water sun cat dog".split()
    return [Item(f"p{n:02d}", "text", text=" ".join(words[(n + k) % len(words)] for k in range(3 + n % 4)))
            for n in range(count)]


def stage_records(result: Ranking, stage: str) -> dict[str, tuple[float | None, str | None]]:
    return {hit.item_id: (hit.stages[stage].score, hit.stages[stage].note) for hit in result}


def expected_order(ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """The ids sorted by descending score, ties in their incoming order (a stable sort)."""
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])]


def pages(folder: Path) -> list[Item]:
    """Three one-colour page images (red, green, blue)."""
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green", "blue"]):
        path = folder / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    return items


def load_pipeline(name: str) -> Any:
    """The pipeline file ``pipelines/<name>.yaml`` built (no collection), checked to round-trip."""
    import yaml

    from mmrank.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(PIPELINES / f"{name}.yaml", None)
    config = pipeline.to_config()
    assert config["name"] == name and config["retriever"]["paths"] == ["bm25"]
    assert Pipeline.from_config(yaml.safe_load(pipeline.to_yaml()), None).to_config() == config
    written = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    for option, value in written["rerankers"][0].items():
        assert config["rerankers"][0][option] == value, option
    return pipeline


class FixedLogprobs:
    """A scoring backend whose next-token log-probabilities are fixed per candidate: ``table`` maps a
    text found in the conversation to its row; records every call."""

    name, accepts_images = "fixed", False

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table, self.calls, self.usage = table, [], Usage()

    def token_logprobs(self, conversations, tokens, *, assistant_prefix="", top_k=None) -> np.ndarray:
        self.calls.append((list(conversations), list(tokens), assistant_prefix))
        rows = []
        for conversation in conversations:
            text = conversation if isinstance(conversation, str) else conversation[-1]["content"]
            rows.append(next(row for key, row in self.table.items() if key in text))
        return np.array(rows, dtype=np.float64)


# ------------------------------------------------------------------------------ prompt
def test_the_prompt_is_the_cards_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    """The messages, the text the tiny Qwen3 reads through its (Qwen3) chat template with the think
    prefix, and its token ids: those of the card's prefix + content + suffix, tokenized piecewise."""
    stage = Qwen3Reranker(model=tiny_llm)
    conversation = stage.conversation(tiny_llm, TOY_QUERY, TOY[0])
    assert conversation == [
        {"role": "system", "content": 'Judge whether the Document meets the requirements based on the Query and the '
                                      'Instruct provided. Note that the answer can only be "yes" or "no".'},
        {"role": "user", "content": "<Instruct>: Given a web search query, retrieve relevant passages that answer "
                                    "the query\n<Query>: what causes tides\n<Document>: Tides The Moon's pull raises "
                                    "the oceans."}]
    assert tiny_llm.prompt_text(conversation, THINK_PREFIX) == CARD_PROMPT_D1
    tokenizer = tiny_llm.tokenizer
    for item in TOY:
        content = (f"<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
                   f"<Query>: {TOY_QUERY}\n<Document>: {document_text(item)}")
        card_ids = (tokenizer.encode(CARD_PREFIX, add_special_tokens=False) + tokenizer(content)["input_ids"]
                    + tokenizer.encode(CARD_SUFFIX, add_special_tokens=False))
        ours = tiny_llm.prompt_text(stage.conversation(tiny_llm, TOY_QUERY, item), THINK_PREFIX)
        assert tokenizer.encode(ours, add_special_tokens=False) == card_ids
    # The answer tokens are the card's convert_tokens_to_ids("yes") / ("no").
    assert tiny_llm.resolve_tokens(["yes", "no"], THINK_PREFIX) == tokenizer.convert_tokens_to_ids(["yes", "no"])
    custom = Qwen3Reranker(model=tiny_llm, instruction="Find the cause")
    assert custom.conversation(tiny_llm, "q", TOY[1])[1]["content"] == (
        "<Instruct>: Find the cause\n<Query>: q\n<Document>: The Sun pulls too.")


def test_the_content_is_cut_between_prefix_and_suffix_as_the_card_truncates(tiny_llm: HFLanguageModel) -> None:
    """``max_length`` counts the card's prefix and suffix; the content keeps its first tokens
    (``truncation='longest_first'`` of one sequence), the suffix stays whole."""
    tokenizer = tiny_llm.tokenizer
    fixed = len(tokenizer.encode(CARD_PREFIX, add_special_tokens=False)) + len(
        tokenizer.encode(CARD_SUFFIX, add_special_tokens=False))
    def content(item: Item) -> str:
        return ("<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
                f"<Query>: {TOY_QUERY}\n<Document>: {document_text(item)}")

    budget = len(tokenizer.encode(content(TOY[1]), add_special_tokens=False)) + 2
    long = Item("long", "text", text="the moon pulls the sea " * 40)
    stage = Qwen3Reranker(model=tiny_llm, max_length=fixed + budget)
    card_ids = (tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
                + tokenizer(content(long), truncation="longest_first", max_length=budget)["input_ids"]
                + tokenizer.encode(CARD_SUFFIX, add_special_tokens=False))
    ours = tiny_llm.prompt_text(stage.conversation(tiny_llm, TOY_QUERY, long), THINK_PREFIX)
    assert tokenizer.encode(ours, add_special_tokens=False) == card_ids and len(card_ids) == fixed + budget
    short = tiny_llm.prompt_text(stage.conversation(tiny_llm, TOY_QUERY, TOY[1]), THINK_PREFIX)
    assert short.endswith("<Document>: The Sun pulls too." + CARD_SUFFIX)  # shorter content: unchanged
    # Without a tokenizer (a server) the document is cut in words.
    assert cut_to_tokens(None, "one two  three four", 2) == "one two"
    assert cut_to_tokens(None, "one two  three", 3) == "one two  three"
    [result] = Qwen3Reranker(model=tiny_llm, max_length=fixed).rerank_batch([Query(text="q")], [ranking(TOY)], None)
    assert all("leaves no room for the content" in note for _, note in stage_records(result, "qwen3-reranker").values())


# ------------------------------------------------------------------------ score logic
def test_the_score_is_p_yes_over_yes_and_no() -> None:
    """Fixed log-probabilities (yes, no): P(yes) = sigmoid(l_yes - l_no), computed by hand; neither
    listed: not scored, after the scored ones; the tail after depth unchanged."""
    model = FixedLogprobs({"Moon": [-0.5, -1.5], "Sun": [-3.0, -0.1], "Cats": [-np.inf, -np.inf],
                           "Stars": [-np.inf, -2.0], "Comets": [-7.0, -np.inf]})
    items = [*TOY, Item("d4", "text", text="Stars shine."), Item("d5", "text", text="Comets pass."),
             Item("tail", "text", text="Not reranked.")]
    stage = Qwen3Reranker(model=model, depth=5)
    [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    assert result.ids == ["d5", "d1", "d2", "d4", "d3", "tail"]
    records = stage_records(result, "qwen3-reranker")
    assert records["d1"][0] == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-12)  # 0.7310585786
    assert records["d2"][0] == pytest.approx(1 / (1 + math.exp(2.9)), abs=1e-12)  # 0.0521535
    assert records["d4"] == (0.0, None) and records["d5"] == (1.0, None)
    assert records["d3"] == (None, "not scored: neither 'yes' nor 'no' among the model's top tokens; kept its place "
                                   "after the scored hits")
    assert records["tail"] == (None, None) and result.stage_names == ["bm25", "qwen3-reranker"]
    [(_, tokens, prefix)] = model.calls
    assert tokens == ["yes", "no"] and prefix == "<think>\n\n</think>\n\n"


def test_candidates_without_text_are_noted_and_follow() -> None:
    model = FixedLogprobs({"Moon": [-0.5, -1.5], "Sun": [-3.0, -0.1]})
    items = [Item("blank", "text", text="  "), TOY[1], Item("page", "page", source="x.pdf", page=1), TOY[0]]
    [result] = Qwen3Reranker(model=model).rerank_batch([Query(text="q")], [ranking(items)], None)
    assert result.ids == ["d1", "d2", "blank", "page"]
    note = "not scored: no text to show; kept its place after the scored hits"
    assert stage_records(result, "qwen3-reranker")["blank"] == (None, note)
    assert stage_records(result, "qwen3-reranker")["page"] == (None, note)  # a text-only model: no picture


# ------------------------------------------------------------------------ real models
def card_scores(folder: Path, query: str, documents: Sequence[str], max_length: int = 8192) -> list[float]:
    """The card's transformers snippet (README.md at f4ad0c4), transcribed: prefix/suffix tokens,
    ``process_inputs``, ``compute_logits``; on the tiny Qwen3 in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
    task = "Given a web search query, retrieve relevant passages that answer the query"
    scores = []
    for doc in documents:  # one pair per forward pass: no padding (the model's own positions)
        pair = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=task, query=query, doc=doc)
        inputs = tokenizer([pair], padding=False, truncation="longest_first", return_attention_mask=False,
                           max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
        inputs["input_ids"][0] = prefix_tokens + inputs["input_ids"][0] + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        with torch.no_grad():
            batch_scores = model(**inputs).logits[:, -1, :].double()
        pair_logits = torch.stack([batch_scores[:, token_false_id], batch_scores[:, token_true_id]], dim=1)
        scores.append(float(torch.nn.functional.log_softmax(pair_logits, dim=1)[:, 1].exp()[0]))
    return scores


@pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")  # the card's pad call
def test_scores_are_the_cards_on_the_tiny_model(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    """The stage's scores equal the card's code run with plain transformers (softmax over the "no"
    and "yes" logits only) to 1e-6, and its order is theirs; the tail after depth keeps its place."""
    items = [*TOY, *passages(5)]
    stage = Qwen3Reranker(model=tiny_llm, depth=7)
    [result] = stage.rerank_batch([Query(text=TOY_QUERY)], [ranking(items)], None)
    expected = card_scores(tiny_llm_dir, TOY_QUERY, [document_text(item) for item in items[:7]])
    ids = [item.id for item in items]
    assert result.ids == expected_order(ids[:7], expected) + ids[7:]
    records = stage_records(result, "qwen3-reranker")
    assert [records[i][0] for i in ids[:7]] == pytest.approx(expected, abs=1e-6)
    assert len(set(np.round(expected, 6))) == 7  # distinct: the order is the scores', not the incoming one
    assert records[ids[7]] == (None, None) and result.stage_names == ["bm25", "qwen3-reranker"]


def assert_batching_changes_nothing(stage_class: type, model: HFLanguageModel, folder: Path) -> None:
    """Two queries' candidates in one call on ``model`` score as one candidate per call on a backend
    batch of one (atol 1e-5), in the same order."""
    lists = [ranking([*TOY, *passages(4)]), ranking(passages(6), "moon and sea")]
    queries = [incoming.query for incoming in lists]
    together = stage_class(model=model, batch_size=None).rerank_batch(queries, lists, None)
    one = HFLanguageModel(str(folder), device="cpu", batch_size=1)
    alone = stage_class(model=one, batch_size=1).rerank_batch(queries, lists, None)
    for joint, single in zip(together, alone):
        assert joint.ids == single.ids
        assert [hit.score for hit in joint] == pytest.approx([hit.score for hit in single], abs=1e-5)


def test_batching_does_not_change_scores(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    assert_batching_changes_nothing(Qwen3Reranker, tiny_llm, tiny_llm_dir)


def test_pages_go_to_a_vision_model_as_pictures(tiny_mllm: Any, tmp_path: Path) -> None:
    """A page or image candidate is its picture in the document's place; the order is that of P(yes)
    computed with ``token_logprobs`` on the same conversations; a missing picture is noted."""
    items = pages(tmp_path)
    stage = Qwen3Reranker(model=tiny_mllm)
    [system, user] = stage.conversation(tiny_mllm, "red page", items[0])
    assert system["content"].startswith("Judge whether the Document")
    assert [part.get("text") for part in user["content"]] == [
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: red page\n"
        "<Document>: ", None]
    assert user["content"][1]["image"].getpixel((0, 0)) == (255, 0, 0)
    missing = Item("gone", "image", source=str(tmp_path / "missing.png"))
    [result] = stage.rerank_batch([Query(text="red page")], [ranking([*items, missing], "red page")], None)
    logprobs = tiny_mllm.token_logprobs([stage.conversation(tiny_mllm, "red page", item) for item in items],
                                        ["yes", "no"], assistant_prefix=THINK_PREFIX)
    expected = [1 / (1 + math.exp(no - yes)) for yes, no in logprobs]
    assert result.ids == [*expected_order(["i0", "i1", "i2"], expected), "gone"]
    records = stage_records(result, "qwen3-reranker")
    assert [records[i][0] for i in ["i0", "i1", "i2"]] == pytest.approx(expected, abs=1e-6)
    assert records["gone"][0] is None and records["gone"][1].startswith("not scored: ")


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "qwen3-reranker", "instruction": "Find the cause", "max_length": 4096,
                              "depth": 30}).to_config()
    assert create_reranker(config).to_config() == config
    assert Qwen3Reranker.default_model == "Qwen/Qwen3-Reranker-0.6B"
    defaults = Qwen3Reranker()
    assert (defaults.name, defaults.depth, defaults.max_length) == ("qwen3-reranker", 100, 8192)
    assert defaults.instruction == "Given a web search query, retrieve relevant passages that answer the query"
    for options, message in [({"instruction": " "}, "instruction must be a non-empty text"),
                             ({"max_length": 0}, "max_length must be at least 1"),
                             ({"use_images": "sometimes"}, "use_images must be one of auto, always, never")]:
        with pytest.raises(InputError, match=message):
            Qwen3Reranker(**options)


def test_the_pipeline_file_loads_and_round_trips() -> None:
    pipeline = load_pipeline("beir-qwen3-reranker")
    [stage] = pipeline.rerankers
    assert isinstance(stage, Qwen3Reranker) and stage.model == "Qwen/Qwen3-Reranker-0.6B" and stage.depth == 100
