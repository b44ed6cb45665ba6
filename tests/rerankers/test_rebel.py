"""The REBEL stage: its prompts against the texts of bvarjavand/llama_index (PR 17590) and
microsoft/REBEL (copied here from the reference files), the one-pass slot filling of a written
prompt, the answer parser (pinned and fuzzed), call counts, the composite arithmetic and the
orders from canned answers worked out by hand, and real runs on the tiny Qwen3 and Qwen2-VL."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm import Generation, Usage
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.rebel import (
    REBEL_META_PROMPT,
    REBEL_ONE_TURN_PROMPT,
    RELEVANCE_ONLY_META_PROMPT,
    RebelReranker,
    parse_rebel_answer,
)
from mmrank.types import Hit, Item, Query, Ranking, StageScore

# bvarjavand/llama_index at ad1ae5b32bceb82a79b8281166371ce7d331e9d4,
# llama-index-core/llama_index/core/prompts/default_prompts.py, DEFAULT_REBEL_CHOICE_SELECT_PROMPT_TMPL up to its
# {context_str} slot, copied from the file ("theselected" sic).
ONE_TURN_HEAD = \
"""You are a re-ranking system. Your task is to analyze a user's query and a set of candidate documents, assign scores based on specified properties, and output the final ranking of documents.

**Inferred Properties**

1. **Depth of Content (0-5):**
- Higher scores indicate thorough detail and comprehensive coverage of the topic.
- A "5" is exceptionally in-depth with multiple facets addressed; a "0" is very superficial.

2. **Diversity of Perspectives (0-5):**
- Higher scores indicate that multiple viewpoints or angles are represented.
- A "5" means it engages with a variety of perspectives or sources; a "0" means it is entirely one-sided.

3. **Clarity and Specificity (0-5):**
- Higher scores indicate that the document presents information clearly and addresses the query with precise, unambiguous detail.
- A "5" means it is highly specific and clear, while a "0" means it is vague or overly general.

4. **Authoritativeness (0-5):**
- Higher scores indicate reputable sources, expert authorship, or recognized credibility.
- A "5" might be an extensively cited academic work or an official standard; a "0" would be an unknown or dubious source.

5. **Recency (0-5):**
- Higher scores indicate that the document references recent studies, data, or developments.
- A "5" means it is very current and up-to-date; a "0" means it is outdated or does not reference any time-sensitive information.

**Scoring Rubric**

- **Relevance (0-10):**
- A "10" means the document directly addresses the user's query, covering the key subject comprehensively.
- A "0" means it is completely off-topic.

- **Depth of Content (0-5):** Based on how detailed or thorough the document is.
- **Diversity of Perspectives (0-5):** Based on how many viewpoints or angles are presented.
- **Clarity and Specificity (0-5):** Based on how clear and precise the document is.
- **Authoritativeness (0-5):** Based on source credibility or recognized expertise.
- **Recency (0-5):** Based on how up-to-date the document is.

**Weighted Composite Score**
Final Score = Relevance + 0.5*(Depth of Content) + 0.5*(Diversity of Perspectives) + 0.5*(Clarity and Specificity) + 0.5*(Authoritativeness) + 0.5*(Recency)

**Instructions**
1. Assign Relevance to each document on a scale of 0-10. Discard any document with Relevance < 3.
2. For the remaining documents, assign scores for:
- Depth of Content (0-5)
- Diversity of Perspectives (0-5)
- Clarity and Specificity (0-5)
- Authoritativeness (0-5)
- Recency (0-5)
3. Compute each document's Final Score using the formula above.
4. Sort the documents by their Final Score in descending order.
5. If two documents end up with the same Final Score, prefer the one with higher Authoritativeness (or apply another consistent tie-breaking rule).
6. If no documents remain after filtering for Relevance, output nothing.
7. Output only the list of theselected documents with their Relevance scores, in this format (no extra text or commentary), where [score] is actually the Final Score and NOT the relevance score.
```
Doc: [document number], Relevance: [score]
```

**Example format:**
```
Document 1:
<summary of document 1>

Document 2:
<summary of document 2>

...

Document 10:
<summary of document 10>

Question: <question>
Answer:
Doc: 9, Relevance: 7
Doc: 3, Relevance: 4
Doc: 7, Relevance: 3

Let's try this now:

"""
# The golden case through REBELRerank._postprocess_nodes (one_turn=True): default_format_node_batch_fn
# ("Document {n}:\n{content}" joined by "\n\n") in {context_str}, the query in {query_str}, by SafeFormatter.
ONE_TURN_USER = (ONE_TURN_HEAD + "Document 1:\nTides\n\nThe Moon's pull raises the oceans.\n\n"
                 "Document 2:\nThe Sun pulls too.\n\n"
                 "Document 3:\nCats\n\nCats sleep a lot.\n"
                 "Question: what causes tides\nAnswer:\n```")
# sha256 of the reference texts as Python reads the literals (DEFAULT_REBEL_META_PROMPT_TMPL of the file above,
# 15930 characters; RELEVANCE_ONLY_REBEL_META_PROMPT_TMPL of microsoft/REBEL experiments.py at
# e797c9542c59504d8fc42015c7185ae8aef6648c, 2259 characters), computed from the reference files.
META_SHA256 = "bdb32ce6b19c45a7fcafe32e06d85d9ffdf3212ecb3ff25ab8936161f2bf2011"
RELEVANCE_ONLY_SHA256 = "438853789dff43bca9fc5b395eba14e2424dbadff8a3a6383db15ef913825247"

TOY = [Item("d1", "text", text="Tides\n\nThe Moon's pull raises the oceans.", metadata={"title": "Tides"}),
       Item("d2", "text", text="The Sun pulls too."),
       Item("d3", "text", text="Cats\n\nCats sleep a lot.", metadata={"title": "Cats"})]


def hits_of(items: Sequence[Item]) -> tuple[Hit, ...]:
    return tuple(Hit(item, 10.0 - n, stages={"bm25": StageScore(10.0 - n, n + 1)}) for n, item in enumerate(items))


def ranking(count: int, query: str = "q") -> Ranking:
    """``count`` passages ``p00`` .. in first-stage order."""
    return Ranking(Query(text=query), hits_of([Item(f"p{n:02d}", "text", text=f"passage p{n:02d}")
                                               for n in range(count)]), timings={"bm25": 0.0})


class CannedModel:
    """Answers every conversation with the next of ``texts`` (or ``answer(conversation)``); records
    each call's conversations and options."""

    name, accepts_images = "canned", False

    def __init__(self, texts: Sequence[str] = (), answer: Any = None) -> None:
        self.texts, self.answer, self.calls, self.usage = list(texts), answer, [], Usage()

    def generate(self, conversations, *, max_new_tokens=128, temperature=0.0, assistant_prefix="",
                 top_logprobs=0) -> list[Generation]:
        self.usage.calls += 1
        self.usage.prompts += len(conversations)
        self.calls.append((list(conversations), max_new_tokens, temperature))
        return [Generation(self.answer(conversation) if self.answer else self.texts.pop(0), 10, 5)
                for conversation in conversations]

    def choice_probability(self, *args, **kwargs):
        raise AssertionError("REBEL only generates")

    def prompts(self) -> list[str]:
        return [conversation[0]["content"] for conversations, _, _ in self.calls for conversation in conversations]


def notes(result: Ranking, stage: str = "rebel") -> dict[str, str | None]:
    return {hit.item_id: hit.stages[stage].note for hit in result}


def scores(result: Ranking, stage: str = "rebel") -> list[float | None]:
    return [hit.stages[stage].score for hit in result]


# ------------------------------------------------------------------------------ prompts
def test_the_texts_are_the_references() -> None:
    assert hashlib.sha256(REBEL_META_PROMPT.encode()).hexdigest() == META_SHA256 and len(REBEL_META_PROMPT) == 15930
    assert hashlib.sha256(RELEVANCE_ONLY_META_PROMPT.encode()).hexdigest() == RELEVANCE_ONLY_SHA256
    assert REBEL_ONE_TURN_PROMPT == ONE_TURN_HEAD + "{context_str}\nQuestion: {query_str}\nAnswer:\n```"
    # The meta-prompt's "Example format: \n" lines are Python escapes in the reference: real line breaks.
    assert '"Example format: \n"\n"Document 1:\n<summary of document 1>\n\n"\n' in REBEL_META_PROMPT
    assert REBEL_META_PROMPT.startswith("You are a prompt generator. You will receive only a user's query as input. "
                                        "Your task is to:\n\nAnalyze the user's query and identify additional ")
    assert REBEL_META_PROMPT.endswith("with no extra commentary.\nNow, here is the user's query:\n\n{user_query}\n")


def test_the_one_turn_prompt_is_the_references_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    model = CannedModel(["Doc: 2, Relevance: 8"])
    stage = RebelReranker(model=model, mode="one-turn")
    [result] = stage.rerank_batch([Query(text="what causes tides")], [Ranking(Query(text="x"), hits_of(TOY))], None)
    [([conversation], max_new_tokens, temperature)] = model.calls
    assert conversation == [{"role": "user", "content": ONE_TURN_USER}]
    assert (max_new_tokens, temperature) == (1024, 0.0)
    assert tiny_llm.prompt_text(conversation) == f"<|im_start|>user\n{ONE_TURN_USER}<|im_end|>\n<|im_start|>assistant\n"
    assert result.ids == ["d2", "d1", "d3"] and scores(result) == [8.0, None, None]


def test_weights_and_the_threshold_are_written_into_the_formula() -> None:
    stage = RebelReranker(mode="one-turn", weights={"depth": 1, "recency": 0.25}, min_relevance=4)
    prompt = stage.ranking_prompt()
    assert ("Final Score = Relevance + 1*(Depth of Content) + 0.5*(Diversity of Perspectives) + "
            "0.5*(Clarity and Specificity) + 0.5*(Authoritativeness) + 0.25*(Recency)\n") in prompt
    assert "Discard any document with Relevance < 4.\n" in prompt and "Relevance < 3" not in prompt
    assert prompt.replace("1*(Depth", "0.5*(Depth").replace("0.25*(Recency", "0.5*(Recency").replace(
        "< 4.", "< 3.") == REBEL_ONE_TURN_PROMPT


def test_the_two_turn_meta_call_sees_only_the_query_and_its_prompt_is_filled_in_one_pass() -> None:
    """REBELRerank: llm.predict(meta_prompt, user_query=q), then PromptTemplate(written).format(
    context_str=..., query_str=...) by SafeFormatter: only those two slots, once, other braces kept."""
    written = "Rank for {query_str} with {weights} and {0}.\n{context_str}\nQuestion: {query_str}\nAnswer:\n"
    items = [Item("a", "text", text="mentions {query_str} and {context_str}"), Item("b", "text", text="plain")]
    model = CannedModel([written, "Doc: 2, Relevance: 9\nDoc: 1, Relevance: 4"])
    stage = RebelReranker(model=model)
    [result] = stage.rerank_batch([Query(text="tides {x}")], [Ranking(Query(text="x"), hits_of(items))], None)
    meta, ranked = model.prompts()
    assert meta == REBEL_META_PROMPT.replace("{user_query}", "tides {x}")
    assert meta.endswith("Now, here is the user's query:\n\ntides {x}\n") and "{context_str}" in meta
    assert ranked == ("Rank for tides {x} with {weights} and {0}.\nDocument 1:\nmentions {query_str} and "
                      "{context_str}\n\nDocument 2:\nplain\nQuestion: tides {x}\nAnswer:\n")
    assert [(conversations.__len__(), budget) for conversations, budget, _ in model.calls] == [(1, 2048), (1, 1024)]
    assert result.ids == ["b", "a"] and scores(result) == [9.0, 4.0]
    assert result.explanations["rebel"] == (written, "Doc: 2, Relevance: 9\nDoc: 1, Relevance: 4")
    relevance_only = CannedModel([written, "Doc: 1, Relevance: 5"])
    RebelReranker(model=relevance_only, meta_prompt="relevance-only").rerank_batch(
        [Query(text="tides")], [ranking(2)], None)
    assert relevance_only.prompts()[0] == RELEVANCE_ONLY_META_PROMPT.replace("{user_query}", "tides")


@pytest.mark.parametrize(("written", "template_note"), [
    ("Just rank them well.", "the written prompt had no {context_str} slot; the documents and the question were put "
                             "after it"),
    ("<think>hmm</think>  ", "the meta call wrote no prompt; ranked with the one-turn prompt"),
])
def test_a_written_prompt_without_slots_is_guarded(written: str, template_note: str) -> None:
    model = CannedModel([written, "Doc: 1, Relevance: 5"])
    [result] = RebelReranker(model=model).rerank_batch([Query(text="tides")], [ranking(2)], None)
    ranked = model.prompts()[1]
    if "no {context_str}" in template_note:
        assert ranked == ("Just rank them well.\n\nDocument 1:\npassage p00\n\nDocument 2:\npassage p01\n"
                          "Question: tides\nAnswer:\n")
    else:
        assert ranked.startswith(ONE_TURN_HEAD)
    assert notes(result)["p00"] == template_note
    assert notes(result)["p01"] == (template_note + " | batch 1: not listed by the model (REBEL's prompts leave out "
                                    "relevance below 3); placed after the listed candidates")


# ------------------------------------------------------------------------------- parser
@pytest.mark.parametrize(("text", "listed", "problems", "failure"), [
    ("Doc: 9, Relevance: 7\nDoc: 3, Relevance: 4\nDoc: 7, Relevance: 3", [(8, 7.0), (2, 4.0), (6, 3.0)], [], None),
    ("doc:9,relevance:7.5", [(8, 7.5)], [], None),
    ("**Doc 2** - Relevance = [8.5]\n* Document 3: relevance: 6", [(1, 8.5), (2, 6.0)], [], None),
    ("DOC: [4], RELEVANCE: [10] Doc: 5, Relevance: 2", [(3, 10.0), (4, 2.0)], [], None),  # two on a line
    ("<think>Doc: 1, Relevance: 9</think>\nDoc: 2, Relevance: 1", [(1, 1.0)], [], None),
    ("Doc: 0, Relevance: 9\nDoc: 11, Relevance: 8\nDoc: 2, Relevance: 3\nDoc: 2, Relevance: 9", [(1, 3.0)],
     [(None, "Doc 0 is not one of 1 to 10: ignored"), (None, "Doc 11 is not one of 1 to 10: ignored"),
      (1, "Doc 2 listed again: its first line counts")], None),
    ("", [], [], "empty output"),
    ("All documents are irrelevant.", [], [], "no 'Doc: i, Relevance: x' line"),
    ("Doc: 12, Relevance: 9", [], [(None, "Doc 12 is not one of 1 to 10: ignored")],
     "no usable 'Doc: i, Relevance: x' line (i from 1 to 10)"),
    ("Doc: 1, Relevance: " + "9" * 400, [], [(0, "Doc 1: its score is too large to use: ignored")],
     "no usable 'Doc: i, Relevance: x' line (i from 1 to 10)"),
    ("Doc: [document number], Relevance: [score]", [], [], "no 'Doc: i, Relevance: x' line"),
])
def test_answers_are_read_tolerantly(text: str, listed: list, problems: list, failure: str | None) -> None:
    answer = parse_rebel_answer(text, 10)
    assert [(entry.index, entry.relevance) for entry in answer.listed] == listed
    assert list(answer.problems) == problems and answer.failure == failure


def test_criteria_and_integer_scores() -> None:
    [entry] = parse_rebel_answer("Doc: 1, Relevance: 7, Depth of Content: 3, diversity=2, Clarity: 4.5, "
                                 "Authority: 3, Recency: [1], Extra: 9", 3).listed
    assert dict(entry.criteria) == {"depth": 3.0, "diversity": 2.0, "clarity": 4.5, "authoritativeness": 3.0,
                                    "recency": 1.0}
    # The reference reads the first run of digits only (re.findall(r"\d+", ...)[0]).
    assert parse_rebel_answer("Doc: 1, Relevance: 7.5", 3, integer_scores=True).listed[0].relevance == 7.0


FRAGMENTS = ["Doc", "doc", "Document", ":", ",", " ", "\n", "Relevance", "relevance", "1", "2", "10", "0", "7.5",
             "[", "]", "*", "=", "</think>", "<think>", "Depth", "Recency", "-", "é", "999999999999"]
texts = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))


@given(text=texts, count=st.integers(min_value=1, max_value=20), integer_scores=st.booleans())
def test_any_answer_lists_each_candidate_once_or_fails(text: str, count: int, integer_scores: bool) -> None:
    answer = parse_rebel_answer(text, count, integer_scores)
    indices = [entry.index for entry in answer.listed]
    assert len(set(indices)) == len(indices) and all(0 <= index < count for index in indices)
    assert all(math.isfinite(entry.relevance) and entry.relevance >= 0 for entry in answer.listed)
    assert (answer.failure is None) == bool(indices)


@given(data=st.data(), count=st.integers(min_value=1, max_value=20))
def test_a_written_answer_is_read_back(data: st.DataObject, count: int) -> None:
    order = data.draw(st.permutations(range(count)))
    values = data.draw(st.lists(st.integers(min_value=0, max_value=200), min_size=count, max_size=count))
    text = "\n".join(f"Doc: {index + 1}, Relevance: {value / 10}" for index, value in zip(order, values))
    assert [(e.index, e.relevance) for e in parse_rebel_answer(text, count).listed] == [
        (index, value / 10) for index, value in zip(order, values)]


# ------------------------------------------------------------------------ calls and order
@pytest.mark.parametrize(("mode", "per_query"), [("one-turn", 3), ("two-turn", 4)])
def test_calls_per_query_are_the_batches_plus_the_meta_call(mode: str, per_query: int) -> None:
    """Depth 25 in batches of 10: ceil(25 / 10) = 3 ranking prompts a query, plus one meta prompt in
    two-turn mode; the prompts of all queries at one step share a generate call."""
    model = CannedModel(answer=lambda conversation: "Write {context_str} {query_str}" if "prompt generator" in
                        conversation[0]["content"] else "Doc: 1, Relevance: 5")
    lists = [ranking(30, "a"), ranking(30, "b")]
    RebelReranker(model=model, mode=mode, depth=25).rerank_batch([r.query for r in lists], lists, None)
    assert model.usage.prompts == 2 * per_query == 2 * (math.ceil(25 / 10) + (mode == "two-turn"))
    assert [len(conversations) for conversations, _, _ in model.calls] == ([2, 6] if mode == "two-turn" else [6])
    one_by_one = CannedModel(answer=model.answer)
    RebelReranker(model=one_by_one, mode=mode, depth=25, batch_size=1).rerank_batch([r.query for r in lists], lists,
                                                                                    None)
    assert one_by_one.usage.calls == one_by_one.usage.prompts == 2 * per_query
    batches = [prompt.count(":\npassage p") for prompt in one_by_one.prompts() if "passage p" in prompt]
    assert batches == [10, 10, 5, 10, 10, 5]


def test_listed_candidates_are_sorted_and_the_others_follow_in_order() -> None:
    """Two batches of 4 (depth 8 of 10). Batch 1 lists p02 (7.5), p00 (9) and p03 (7.5); batch 2
    lists p05 (8) and p07 (7.5). By score, ties in the answers' order: p00 9, p05 8, p02 7.5,
    p03 7.5, p07 7.5; then p01, p04, p06 (not listed) in their order; then p08, p09."""
    answers = ["Doc: 3, Relevance: 7.5\nDoc: 1, Relevance: 9\nDoc: 4, Relevance: 7.5",
               "Doc: 2, Relevance: 8\nDoc: 4, Relevance: 7.5"]
    stage = RebelReranker(model=CannedModel(answers), mode="one-turn", depth=8, choice_batch_size=4)
    [result] = stage.rerank_batch([Query(text="q")], [ranking(10)], None)
    assert result.ids == ["p00", "p05", "p02", "p03", "p07", "p01", "p04", "p06", "p08", "p09"]
    assert scores(result) == [9.0, 8.0, 7.5, 7.5, 7.5, None, None, None, None, None]
    assert notes(result)["p04"] == ("batch 2: not listed by the model (REBEL's prompts leave out relevance below 3); "
                                    "placed after the listed candidates")
    assert notes(result)["p00"] is None and notes(result)["p08"] is None
    # top_n cuts the list; integer_scores reads 7.5 as 7 (as the reference does): p05 8, then the 7s in order.
    [cut] = RebelReranker(model=CannedModel(answers), mode="one-turn", depth=8, choice_batch_size=4, top_n=3,
                          integer_scores=True).rerank_batch([Query(text="q")], [ranking(10)], None)
    assert cut.ids == ["p00", "p05", "p02"] and scores(cut) == [9.0, 8.0, 7.0]


def test_the_stage_composite_is_relevance_plus_weighted_criteria() -> None:
    """weights depth 1, recency 0, the others 0.5. Doc 1: 7 + 1*3 + 0.5*(2 + 4 + 3) + 0*5 = 14.5.
    Doc 2: relevance 2, below 3: moved after, noted. Doc 3: 6 + 1*0 + 0.5*(1 + 1 + 1) = 7.5, its
    depth and recency missing (counted 0, noted). Doc 4 not listed."""
    model = CannedModel(["Doc: 1, Relevance: 7, Depth: 3, Diversity: 2, Clarity: 4, Authoritativeness: 3, Recency: 5\n"
                         "Doc: 2, Relevance: 2, Depth: 5, Diversity: 5, Clarity: 5, Authoritativeness: 5, Recency: 5\n"
                         "Doc: 3, Relevance: 6, Diversity: 1, Clarity: 1, Authoritativeness: 1"])
    stage = RebelReranker(model=model, mode="one-turn", composite="stage", depth=4,
                          weights={"depth": 1, "recency": 0})
    [result] = stage.rerank_batch([Query(text="q")], [ranking(5)], None)
    assert result.ids == ["p00", "p02", "p01", "p03", "p04"]
    assert scores(result) == [14.5, 7.5, None, None, None]
    assert notes(result)["p01"] == ("batch 1: relevance 2 below 3, which REBEL drops; placed after the listed "
                                    "candidates")
    assert notes(result)["p02"] == "batch 1: no depth, recency score; counted 0"
    assert notes(result)["p03"] == "batch 1: not listed by the model; placed after the listed candidates"
    prompt = model.prompts()[0]
    assert prompt.startswith(ONE_TURN_HEAD.partition("**Weighted Composite Score**")[0].replace(
        ", and output the final ranking of documents.", ". The final ranking is computed from your scores."))
    assert "Doc: [document number], Relevance: [score], Depth: [score], Diversity: [score]" in prompt
    assert prompt.endswith("Document 4:\npassage p03\nQuestion: q\nAnswer:\n```")


def test_unparsed_answers_and_failed_calls_keep_the_order() -> None:
    model = CannedModel(["I think document two is best.",
                         "Doc: 3, Relevance: 6\nDoc: 3, Relevance: 9\nDoc: 7, Relevance: 1"])
    stage = RebelReranker(model=model, mode="one-turn", depth=6, choice_batch_size=3)
    [result] = stage.rerank_batch([Query(text="q")], [ranking(6)], None)
    assert result.ids == ["p05", "p00", "p01", "p02", "p03", "p04"]
    assert notes(result)["p00"] == ("batch 1: answer not parsed: no 'Doc: i, Relevance: x' line; placed after the "
                                    "listed candidates")
    assert notes(result)["p05"] == ("batch 2: Doc 3 listed again: its first line counts | batch 2: Doc 7 is not one "
                                    "of 1 to 3: ignored")
    assert notes(result)["p03"] == ("batch 2: Doc 7 is not one of 1 to 3: ignored | batch 2: not listed by the model "
                                    "(REBEL's prompts leave out relevance below 3); placed after the listed candidates")
    assert scores(result)[0] == 6.0

    class Gone(CannedModel):
        def generate(self, *args, **kwargs):
            raise ModelUnavailableError("server gone")

    [result] = RebelReranker(model=Gone()).rerank_batch([Query(text="q")], [ranking(4)], None)
    assert result.ids == ranking(4).ids and set(notes(result).values()) == {"model unavailable: server gone"}
    blank = [Item("x", "page", source="x.pdf", page=1), Item("p00", "text", text="passage p00")]
    model = CannedModel(["Doc: 1, Relevance: 5"])
    [result] = RebelReranker(model=model, mode="one-turn", use_images="never").rerank_batch(
        [Query(text="q")], [Ranking(Query(text="q"), hits_of(blank))], None)
    assert result.ids == ["p00", "x"] and notes(result)["x"] == ("not asked: no text to show; placed after the "
                                                                  "listed candidates")


# ------------------------------------------------------------------------- real models
@pytest.mark.parametrize("mode", ["one-turn", "two-turn"])
def test_a_real_run_on_the_tiny_model_completes_with_notes(tiny_llm: HFLanguageModel, mode: str) -> None:
    """Random weights write no 'Doc: i, Relevance: x' line: every candidate keeps its place, noted."""
    lists = [ranking(14, "tides"), ranking(14, "moon")]
    tiny_llm.usage.reset()
    stage = RebelReranker(model=tiny_llm, mode=mode, depth=12, choice_batch_size=5, max_new_tokens=8,
                          meta_max_new_tokens=8)
    results = stage.rerank_batch([r.query for r in lists], lists, None)
    for incoming, result in zip(lists, results, strict=True):
        assert result.ids == incoming.ids and result.stage_names == ["bm25", "rebel"]
        assert all(note and "batch " in note for note in list(notes(result).values())[:12])
        assert all(note is None for note in list(notes(result).values())[12:])
        assert len(result.explanations["rebel"]) == 3 + (mode == "two-turn")
    assert tiny_llm.usage.prompts == 2 * (3 + (mode == "two-turn"))
    assert tiny_llm.usage.calls == 1 + (mode == "two-turn")


def test_pages_go_to_a_vision_model_as_documents(tiny_mllm: Any, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green"]):
        path = tmp_path / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    stage = RebelReranker(model=tiny_mllm, mode="one-turn", max_new_tokens=4)
    [user] = stage.batch_conversation(tiny_mllm, stage.ranking_prompt(), "red page", hits_of(items))
    assert [part.get("text") for part in user["content"]] == [
        ONE_TURN_HEAD + "Document 1:\n", None, "\n\nDocument 2:\n", None, "\nQuestion: red page\nAnswer:\n```"]
    tiny_mllm.usage.reset()
    [result] = stage.rerank_batch([Query(text="red page")], [Ranking(Query(text="red page"), hits_of(items))], None)
    assert result.ids == ["i0", "i1"] and tiny_mllm.usage.prompts == 1
    assert "batch 1: " in notes(result)["i0"]


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "rebel", "mode": "one-turn", "composite": "stage", "weights": {"depth": 1},
                              "min_relevance": 4, "top_n": 3, "passage_words": 50, "batch_size": 2}).to_config()
    assert create_reranker(config).to_config() == config and config["weights"] == {"depth": 1}
    defaults = RebelReranker()
    assert (defaults.depth, defaults.mode, defaults.choice_batch_size, defaults.top_n) == (10, "two-turn", 10, None)
    assert RebelReranker.default_model == "Qwen/Qwen2.5-7B-Instruct"
    assert RebelReranker(passage_words=2).passage(TOY[0]) == "Tides The"
    for options, message in [({"mode": "three-turn"}, "mode must be one of one-turn, two-turn"),
                             ({"composite": "mean"}, "composite must be one of model, stage"),
                             ({"meta_prompt": "write a prompt"}, "meta_prompt must be one of default, relevance-only"),
                             ({"mode": "one-turn", "prompt": "Rank {query_str}"}, "prompt must be a text holding"),
                             ({"composite": "stage"}, "composite: stage needs mode: one-turn"),
                             ({"weights": {"depth": 1}}, "weights and min_relevance shape the fixed one-turn"),
                             ({"mode": "one-turn", "weights": {"novelty": 1}}, "weights maps criteria among"),
                             ({"mode": "one-turn", "weights": {"depth": -1}}, "weights maps criteria among"),
                             ({"min_relevance": "3"}, "min_relevance must be a number"),
                             ({"choice_batch_size": 0}, "choice_batch_size must be at least 1"),
                             ({"top_n": 0}, "top_n must be at least 1"),
                             ({"meta_max_new_tokens": 0}, "Need max_new_tokens >= 1")]:
        with pytest.raises(InputError, match=message):
            RebelReranker(**options)
    custom = RebelReranker(mode="one-turn", prompt="Docs:\n{context_str}\nQ: {query_str}")
    assert custom.ranking_prompt() == "Docs:\n{context_str}\nQ: {query_str}"
