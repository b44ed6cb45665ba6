"""The Rank-R1 setwise stage: its prompts against ielab/llm-rankers' texts (typed out here by hand),
the answer parser (fuzzed), the heapsort against a transcription of the reference's heapSort /
heapify / compare (same compares, same shuffles, same order) with an oracle that knows the hidden
relevance, lockstep batching across queries, failed compares, and real runs on the tiny Qwen3 and
Qwen2-VL."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm import Generation, Usage
from mmrank.mllm.hf_text import HFLanguageModel
from mmrank.rerankers import create_reranker
from mmrank.rerankers.setwise import SetwiseReranker, heapsort_steps, parse_setwise_answer
from mmrank.types import Hit, Item, Query, Ranking, StageScore

# ielab/llm-rankers at b36517bf17a3956dc56c4c967f972d02390b1cdd, Rank-R1/prompts/prompt_setwise-R1.toml
# (prompt_system, prompt_user) as toml.load reads them, typed out by hand.
V1_SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
             "assistant first thinks about the reasoning process in the mind and then provides the user with the "
             "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
             "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
# The golden case through llmrankers/setwise.py RankR1SetwiseLlmRanker.compare ("\n".join(f"[i] text"), the
# layout of create_dataset.py and of run_setwise.py at de2c33d9c351f55a107aa15ec7e86927071ba14c) with
# run_setwise.py's load_run_file (f"{title} {text}"), the three documents in this order.
V1_USER = ('Given the query: "what causes tides", which of the following documents is most relevant?\n'
           "[1] Tides The Moon's pull raises the oceans.\n"
           "[2] The Sun pulls too.\n"
           "[3] Cats Cats sleep a lot.\n"
           "After completing the reasoning process, please provide only the label of the most relevant document to "
           "the query, enclosed in square brackets, within the answer tags. For example, if the third document is "
           "the most relevant, the answer should be: <think> reasoning process here </think> <answer>[3]</answer>.")
# Rank-R1/prompts/prompt_setwise-R1-v0.2.toml through run_setwise.py at b36517b (doc_prefix "[{num}]: ",
# doc_separator "\n\n"), typed out by hand.
V2_SYSTEM = ("You are RankLLM, an intelligent assistant capable of evaluating the relevancy of passages to a given "
             "query.")
V2_USER = ("You will be presented with a query, and a set of documents.\n\n"
           "Your task consists of the following step:\n\n"
           "1. Analyze the query: Carefully read the query and identify the core problem or question being asked.\n\n"
           "2. Analyze the documents: Thoroughly examine each document and briefly explain how each document is "
           "relevant or not relevant to the query.\n\n"
           "3. Find the most relevant document: Based on your analysis, select the most relevant document to the "
           "query from the set and briefly explain why.\n\n"
           "Important: Provide your analysis within the <think> </think> tags and answer only the label of the most "
           "relevant document, enclosed in square brackets, within the <answer> </answer> tags. For example, if the "
           "third document is the most relevant, your response should be:\n"
           "<think> Your analysis here </think>\n"
           "<answer>[3]</answer>\n\n"
           "Here is the query: what causes tides\n\n"
           "Here are the documents:\n"
           "[1]: Tides The Moon's pull raises the oceans.\n\n"
           "[2]: The Sun pulls too.\n\n"
           "[3]: Cats Cats sleep a lot.")

TOY = [Item("d1", "text", text="Tides\n\nThe Moon's pull raises the oceans.", metadata={"title": "Tides"}),
       Item("d2", "text", text="The Sun pulls too."),
       Item("d3", "text", text="Cats\n\nCats sleep a lot.", metadata={"title": "Cats"})]


def hits_of(items: Sequence[Item]) -> tuple[Hit, ...]:
    return tuple(Hit(item, 10.0 - n, stages={"bm25": StageScore(10.0 - n, n + 1)}) for n, item in enumerate(items))


def ranking(count: int, query: str = "q") -> Ranking:
    """``count`` passages ``p00`` .. in first-stage order (each text is its id)."""
    return Ranking(Query(text=query), hits_of([Item(f"p{n:02d}", "text", text=f"p{n:02d}") for n in range(count)]),
                   timings={"bm25": 0.0})


SHOWN = re.compile(r"^\[(\d+)\]:? (p\d+)$", re.MULTILINE)


def shown_ids(conversation: Any) -> list[str]:
    """The candidate ids of a compare prompt, in the order shown."""
    return [pid for _, pid in SHOWN.findall(conversation[1]["content"])]


class OracleModel:
    """Answers each compare with the label of the candidate of highest hidden ``relevance`` (or
    ``answer(ids)`` when given); records the shown ids of every compare, per generate call."""

    name, accepts_images = "oracle", False

    def __init__(self, relevance: dict[str, float] | None = None,
                 answer: Callable[[list[str]], str] | None = None) -> None:
        self.relevance, self.answer, self.calls, self.usage = relevance or {}, answer, [], Usage()

    def generate(self, conversations, *, max_new_tokens=128, temperature=0.0, assistant_prefix="",
                 top_logprobs=0) -> list[Generation]:
        self.usage.calls += 1
        shown = [shown_ids(conversation) for conversation in conversations]
        self.calls.append((shown, list(conversations), max_new_tokens, temperature))
        best = best_label(self.relevance)
        answer = self.answer or (lambda ids: f"<think> reasons </think>\n<answer>{best(ids)}</answer>")
        return [Generation(answer(ids), 10, 5) for ids in shown]

    def choice_probability(self, *args, **kwargs):
        raise AssertionError("Rank-R1 only generates")

    def compares(self) -> list[list[str]]:
        return [ids for shown, _, _, _ in self.calls for ids in shown]


class ReferenceSetwise:
    """ielab/llm-rankers at b36517bf17a3956dc56c4c967f972d02390b1cdd, transcribed: ``heapify``,
    ``heapSort`` and ``rerank`` of llmrankers/setwise.py's SetwiseLlmRanker, and the part of
    RankR1SetwiseLlmRanker.compare that draws the shuffle (``random.sample(id_passage,
    len(id_passage))`` from the seeded stream ``rng``), labels it and maps the answer back
    ("Unexpected voting." when the answer is not a label). ``answer(shown_ids)`` is the model:
    the label it writes, stripped. ``compares`` records the shown ids of every compare."""

    CHARACTERS = [f"[{i + 1}]" for i in range(100)]

    def __init__(self, num_child: int, k: int, rng: random.Random, answer: Callable[[list[str]], str]) -> None:
        self.num_child, self.k, self.rng, self.model_answer, self.compares = num_child, k, rng, answer, []

    def compare(self, query, docs):
        id_passage = [(i, p) for i, p in enumerate(docs)]
        labels = [self.CHARACTERS[i] for i in range(len(docs))]
        batch = [self.rng.sample(id_passage, len(id_passage)), labels]
        ref = [p[0] for p in batch[0]]
        passages = [p[1] for p in batch[0]]
        self.compares.append(passages)
        result = self.model_answer(passages)
        if result not in labels:
            return "Unexpected voting."
        return self.CHARACTERS[ref[labels.index(result)]]

    def heapify(self, arr, n, i, query):
        if self.num_child * i + 1 < n:
            docs = [arr[i]] + arr[self.num_child * i + 1: min((self.num_child * (i + 1) + 1), n)]
            inds = [i] + list(range(self.num_child * i + 1, min((self.num_child * (i + 1) + 1), n)))
            output = self.compare(query, docs)
            try:
                best_ind = self.CHARACTERS.index(output)
            except ValueError:
                best_ind = 0
            try:
                largest = inds[best_ind]
            except IndexError:
                largest = i
            if largest != i:
                arr[i], arr[largest] = arr[largest], arr[i]
                self.heapify(arr, n, largest, query)

    def heapSort(self, arr, query, k):  # noqa: N802 (the reference's name)
        n = len(arr)
        ranked = 0
        for i in range(n // self.num_child, -1, -1):
            self.heapify(arr, n, i, query)
        for i in range(n - 1, 0, -1):
            arr[i], arr[0] = arr[0], arr[i]
            ranked += 1
            if ranked == k:
                break
            self.heapify(arr, i, 0, query)

    def rerank(self, query, ranking):
        original_ranking = list(ranking)
        ranking = list(ranking)
        self.heapSort(ranking, query, self.k)
        ranking = list(reversed(ranking))
        results, top = [], set()
        for doc in ranking[:self.k]:
            top.add(doc)
            results.append(doc)
        results += [doc for doc in original_ranking if doc not in top]
        return results


def best_label(relevance: dict[str, float]) -> Callable[[list[str]], str]:
    return lambda ids: f"[{1 + max(range(len(ids)), key=lambda i: relevance[ids[i]])}]"


def hidden_relevance(count: int, seed: int = 7) -> dict[str, float]:
    values = list(range(count))
    random.Random(seed).shuffle(values)
    return {f"p{n:02d}": float(value) for n, value in enumerate(values)}


def notes(result: Ranking, stage: str = "setwise") -> dict[str, str | None]:
    return {hit.item_id: hit.stages[stage].note for hit in result}


# ------------------------------------------------------------------------------ prompts
def test_the_v01_prompt_is_the_references_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    """The system and user messages of one compare, and the text the tiny Qwen3 reads: its chat
    template with the generation prompt (Qwen2.5's layout, as vLLM's llm.chat renders it)."""
    stage = SetwiseReranker(model=OracleModel())
    conversation = stage.compare_conversation(tiny_llm, "what causes tides", hits_of(TOY))
    assert conversation == [{"role": "system", "content": V1_SYSTEM}, {"role": "user", "content": V1_USER}]
    assert tiny_llm.prompt_text(conversation) == (
        f"<|im_start|>system\n{V1_SYSTEM}<|im_end|>\n<|im_start|>user\n{V1_USER}<|im_end|>\n<|im_start|>assistant\n")
    # HEAD's run_setwise.py writes the toml's doc_prefix "[{num}]: " for v0.1 too.
    colon = SetwiseReranker(doc_prefix="[{num}]: ").compare_conversation(tiny_llm, "what causes tides", hits_of(TOY))
    assert colon[1]["content"] == V1_USER.replace("\n[1] ", "\n[1]: ").replace("\n[2] ", "\n[2]: ").replace(
        "\n[3] ", "\n[3]: ")


def test_the_v02_prompt_is_the_references_byte_for_byte(tiny_llm: HFLanguageModel) -> None:
    stage = SetwiseReranker(prompt_version="v0.2")
    assert stage.compare_conversation(tiny_llm, "what causes tides", hits_of(TOY)) == [
        {"role": "system", "content": V2_SYSTEM}, {"role": "user", "content": V2_USER}]


def test_query_and_passages_are_cut_in_tokens_as_the_reference_truncates(tiny_llm: HFLanguageModel) -> None:
    """truncate(text, n) = convert_tokens_to_string(tokenize(text)[:n]): on the tiny tokenizer
    "Tides The Moon's" is T|id|es|Ġ|The|Ġ|M|o|on|'|s: 7 tokens are "Tides The M"."""
    stage = SetwiseReranker(passage_tokens=7, query_tokens=3)
    assert stage.passage(tiny_llm, TOY[0]) == "Tides The M"
    model = OracleModel(answer=lambda ids: "[1]")
    stage = SetwiseReranker(model=model, passage_tokens=5, query_tokens=3)
    stage.rerank_batch([Query(text="what causes tides on earth")], [ranking(2)], None)
    # A backend without a tokenizer here (a server) cuts at as many words.
    assert 'Given the query: "what causes tides", which' in model.calls[0][1][0][1]["content"]
    assert SetwiseReranker(passage_tokens=2).passage(model, TOY[0]) == "Tides The"


# ------------------------------------------------------------------------------- parser
@pytest.mark.parametrize(("text", "count", "winner", "reason"), [
    ("<think> a </think> <answer>[2]</answer>", 3, 1, None),
    ("<THINK>Doc 3 fits.</THINK>\n\n<Answer> [3] </Answer>", 3, 2, None),  # lower-cased, stripped
    ("<think>x</think><answer>[20]</answer>", 20, 19, None),
    ("", 3, None, "empty output"),
    ("<answer>[1]</answer>", 3, None, "no <think>...</think> <answer>...</answer> in the output"),
    ("<think>x</think> maybe <answer>[1]</answer>", 3, None,
     "no <think>...</think> <answer>...</answer> in the output"),
    ("<think>x</think><answer>[4]</answer>", 3, None, "answer '[4]' is not one of [1] to [3]"),
    ("<think>x</think><answer>2</answer>", 3, None, "answer '2' is not one of [1] to [3]"),
    ("<think>x</think><answer>[01]</answer>", 3, None, "answer '[01]' is not one of [1] to [3]"),
    ("<think>x</think><answer>[1], [2]</answer>", 3, None, "answer '[1], [2]' is not one of [1] to [3]"),
])
def test_the_answer_is_read_as_the_reference_reads_it(text: str, count: int, winner: int | None,
                                                       reason: str | None) -> None:
    parsed = parse_setwise_answer(text, count)
    assert parsed[:2] == (winner, reason)
    assert parse_setwise_answer("<think>Doc 3 fits.</think><answer>[3]</answer>", 3)[2] == "Doc 3 fits."


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "[", "]", "1", "2", "20", "0", " ", "\n", "x", "İ",
             "<THINK>", "[3]", "</ANSWER>"]
texts = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))


@given(text=texts, count=st.integers(min_value=1, max_value=25))
def test_any_output_gives_a_winner_in_range_or_a_reason(text: str, count: int) -> None:
    winner, reason, reasoning = parse_setwise_answer(text, count)
    assert (winner is None) != (reason is None)
    assert winner is None or 0 <= winner < count
    assert isinstance(reasoning, str)


@given(count=st.integers(min_value=1, max_value=40), data=st.data())
def test_a_well_formed_answer_is_read_back(count: int, data: st.DataObject) -> None:
    label = data.draw(st.integers(min_value=1, max_value=count))
    assert parse_setwise_answer(f"<think>because</think>\n<answer>[{label}]</answer>", count)[0] == label - 1


# ---------------------------------------------------------------------------- heapsort
@pytest.mark.parametrize(("count", "num_child", "k"), [(25, 3, 5), (25, 19, 10), (7, 2, 10), (1, 3, 5), (30, 4, 1)])
def test_heapsort_asks_the_references_compares_and_finds_the_true_top_k(count: int, num_child: int, k: int) -> None:
    """Against an oracle that knows the hidden relevance: the same compares in the same order, each
    set shuffled as the reference's random.sample from Random(929) does, the same final order, and
    the top k are the truly best k (best first), the rest in first-stage order."""
    relevance = hidden_relevance(count)
    reference = ReferenceSetwise(num_child, k, random.Random(929), best_label(relevance))
    expected = reference.rerank("q", ranking(count).ids)
    model = OracleModel(relevance)
    stage = SetwiseReranker(model=model, num_child=num_child, k=k)
    [result] = stage.rerank_batch([Query(text="q")], [ranking(count)], None)
    assert model.compares() == reference.compares
    assert result.ids == expected
    truly = sorted(relevance, key=lambda pid: -relevance[pid])[:k]
    assert result.ids[:k] == truly
    assert result.ids[k:] == [pid for pid in ranking(count).ids if pid not in truly]
    assert [hit.stages["setwise"].score for hit in result] == [-float(rank) for rank in range(1, count + 1)]
    assert set(notes(result).values()) == {None}
    assert result.explanations.get("setwise", ()) == ("reasons",) * len(reference.compares)


def test_the_first_sets_follow_the_references_schedule() -> None:
    """heapSort builds the heap from node n // num_child down: with 25 candidates and 3 children
    the first set is node 7 and its children 22, 23, 24; node 8 has none."""
    steps = heapsort_steps(25, 3, 5)
    assert next(steps) == [7, 22, 23, 24]
    assert steps.send(None) == [6, 19, 20, 21]
    assert steps.send(2) == [5, 16, 17, 18]  # 20 won: swapped with 6 (a leaf: no further sift)
    steps = heapsort_steps(3, 3, 5)
    assert next(steps) == [0, 1, 2]
    assert steps.send(1) == [2, 0]  # 1 won and went out first; the last one, 2, is now the root
    with pytest.raises(StopIteration) as done:
        steps.send(None)  # no winner: the root, 2, stays and goes out second
    assert done.value.value == [1, 2, 0]


def test_the_shuffle_is_the_references_random_sample_from_seed_929() -> None:
    model = OracleModel(hidden_relevance(3))
    SetwiseReranker(model=model).rerank_batch([Query(text="q")], [ranking(3)], None)
    docs = ["p00", "p01", "p02"]
    expected = [p for _, p in random.Random(929).sample(list(enumerate(docs)), 3)]
    assert model.compares()[0] == expected
    seeded = OracleModel(hidden_relevance(3))
    SetwiseReranker(model=seeded, seed=0).rerank_batch([Query(text="q")], [ranking(3)], None)
    assert seeded.compares()[0] == [p for _, p in random.Random(0).sample(list(enumerate(docs)), 3)]


# ----------------------------------------------------------------------------- batching
def test_queries_go_in_lockstep_and_batching_changes_nothing() -> None:
    counts = [25, 12, 3]
    lists = [ranking(count, f"q{n}") for n, count in enumerate(counts)]
    queries = [ranking.query for ranking in lists]
    relevance = {**hidden_relevance(25)}
    together = OracleModel(relevance)
    results = SetwiseReranker(model=together, num_child=3, k=5).rerank_batch(queries, lists, None)
    alone = OracleModel(relevance)
    one_by_one = SetwiseReranker(model=alone, num_child=3, k=5, batch_size=1).rerank_batch(queries, lists, None)
    assert [r.ids for r in one_by_one] == [r.ids for r in results]
    expected = []
    for count in counts:
        reference = ReferenceSetwise(3, 5, random.Random(929), best_label(relevance))
        expected.append((reference.rerank("q", ranking(count).ids), reference.compares))
    assert [r.ids for r in results] == [ids for ids, _ in expected]
    # Call j holds the j-th compare of every query that still has one.
    longest = max(len(compares) for _, compares in expected)
    assert len(together.calls) == longest
    for step, (shown, _, max_new_tokens, temperature) in enumerate(together.calls):
        assert shown == [compares[step] for _, compares in expected if step < len(compares)]
        assert (max_new_tokens, temperature) == (2048, 0.0)
    assert len(alone.calls) == sum(len(compares) for _, compares in expected)
    assert all(len(shown) == 1 for shown, _, _, _ in alone.calls)


def test_seed_scope_run_draws_one_stream_across_queries_in_order() -> None:
    """The reference seeds the global random once: the second query's shuffles continue the
    first query's stream."""
    relevance = hidden_relevance(25)
    lists = [ranking(25, "a"), ranking(12, "b")]
    stream = random.Random(929)
    expected, compares = [], []
    for incoming in lists:
        reference = ReferenceSetwise(3, 5, stream, best_label(relevance))
        expected.append(reference.rerank("q", incoming.ids))
        compares += reference.compares
    model = OracleModel(relevance)
    stage = SetwiseReranker(model=model, num_child=3, k=5, seed_scope="run")
    results = stage.rerank_batch([incoming.query for incoming in lists], lists, None)
    assert [r.ids for r in results] == expected and model.compares() == compares
    assert all(len(shown) == 1 for shown, _, _, _ in model.calls)  # one query at a time
    # The stream goes on in the next batch, as it does through a reference run.
    reference = ReferenceSetwise(3, 5, stream, best_label(relevance))
    reference.rerank("q", lists[1].ids)
    model.calls.clear()
    stage.rerank_batch([lists[1].query], [lists[1]], None)
    assert model.compares() == reference.compares


# ---------------------------------------------------------------------- failed compares
def test_a_compare_without_a_winner_leaves_the_root_with_a_note() -> None:
    """The reference's "Unexpected voting." gives best_ind 0: the root stays. Heapsort still swaps
    the root out at each extraction, so the order moves as the transcription says."""
    model = OracleModel(answer=lambda ids: "I am not sure.")
    [result] = SetwiseReranker(model=model, num_child=3, k=5).rerank_batch([Query(text="q")], [ranking(10)], None)
    reference = ReferenceSetwise(3, 5, random.Random(929), lambda ids: "nothing")
    assert result.ids == reference.rerank("q", ranking(10).ids) != ranking(10).ids
    assert notes(result)["p09"].startswith("compare 1: no winner: no <think>...</think> <answer>...</answer> in the "
                                           "output; the heap root stayed | compare ")  # [2, 7, 8, 9] first
    for pid in ranking(10).ids:
        assert notes(result)[pid].count("compare ") == sum(pid in shown for shown in reference.compares)
    # on_no_winner: first-stage lets the best incoming rank of each set win: the order is kept.
    kept = OracleModel(answer=lambda ids: "<think>x</think><answer>[99]</answer>")
    [result] = SetwiseReranker(model=kept, num_child=3, k=5, on_no_winner="first-stage").rerank_batch(
        [Query(text="q")], [ranking(10)], None)
    assert result.ids == ranking(10).ids
    assert notes(result)["p09"].startswith("compare 1: no winner: answer '[99]' is not one of [1] to [4]; the best "
                                           "first-stage rank won | compare 4: ")


def test_candidates_without_text_follow_unranked_and_a_failed_call_keeps_the_order() -> None:
    items = [Item("p00", "text", text="p00"), Item("blank", "page", source="x.pdf", page=1), Item("p01", "text",
                                                                                                 text="p01")]
    model = OracleModel({"p00": 0.0, "p01": 1.0})
    [result] = SetwiseReranker(model=model, use_images="never").rerank_batch(
        [Query(text="q")], [Ranking(Query(text="q"), hits_of(items))], None)
    assert result.ids == ["p01", "p00", "blank"]
    assert notes(result)["blank"] == "not ranked: no text to show; placed after the ranked candidates"
    assert result[2].stages["setwise"].score is None

    class Gone(OracleModel):
        def generate(self, *args, **kwargs):
            raise ModelUnavailableError("server gone")

    [result] = SetwiseReranker(model=Gone()).rerank_batch([Query(text="q")], [ranking(5)], None)
    assert result.ids == ranking(5).ids and set(notes(result).values()) == {"model unavailable: server gone"}


# ------------------------------------------------------------------------- real models
def test_a_real_run_on_the_tiny_model_completes_with_notes(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    """Random weights write no answer tag: every compare has no winner, noted, and the order is the
    one the reference's heapsort leaves then; one compare per call and a backend batch of one give
    the same; the tail after depth stays."""
    options = {"depth": 9, "num_child": 3, "k": 3, "max_new_tokens": 6}
    lists = [ranking(12, "tides"), ranking(12, "moon")]
    queries = [incoming.query for incoming in lists]
    tiny_llm.usage.reset()
    results = SetwiseReranker(model=tiny_llm, **options).rerank_batch(queries, lists, None)
    reference = ReferenceSetwise(3, 3, random.Random(929), lambda ids: "")
    expected = reference.rerank("q", ranking(12).ids[:9]) + ranking(12).ids[9:]
    for result in results:
        assert result.ids == expected and result.stage_names == ["bm25", "setwise"]
        assert len(result.explanations["setwise"]) == len(reference.compares)
        assert all("no winner" in notes(result)[pid] for pid in ranking(12).ids[:9])
        assert all(notes(result)[pid] is None for pid in ranking(12).ids[9:])
    assert tiny_llm.usage.calls == len(reference.compares)  # both queries' compares together, step by step
    assert tiny_llm.usage.prompts == 2 * len(reference.compares)
    one = HFLanguageModel(str(tiny_llm_dir), device="cpu", batch_size=1)
    alone = SetwiseReranker(model=one, batch_size=1, **options).rerank_batch(queries, lists, None)
    assert [r.ids for r in alone] == [r.ids for r in results]
    assert [r.explanations for r in alone] == [r.explanations for r in results]


def test_pages_go_to_a_vision_model_as_labelled_pictures(tiny_mllm: Any, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for n, colour in enumerate(["red", "green", "blue"]):
        path = tmp_path / f"page{n}.png"
        Image.new("RGB", (56, 56), colour).save(path)
        items.append(Item(f"i{n}", "image", source=str(path)))
    stage = SetwiseReranker(model=tiny_mllm, max_new_tokens=4)
    [system, user] = stage.compare_conversation(tiny_mllm, "red page", hits_of(items))
    assert system == {"role": "system", "content": V1_SYSTEM}
    assert [part.get("text") for part in user["content"]] == [
        'Given the query: "red page", which of the following documents is most relevant?\n[1] ', None, "\n[2] ",
        None, "\n[3] ", None,
        "\nAfter completing the reasoning process, please provide only the label of the most relevant document to "
        "the query, enclosed in square brackets, within the answer tags. For example, if the third document is the "
        "most relevant, the answer should be: <think> reasoning process here </think> <answer>[3]</answer>."]
    assert [part["image"].getpixel((0, 0)) for part in user["content"] if part["type"] == "image"] == [
        (255, 0, 0), (0, 128, 0), (0, 0, 255)]
    tiny_mllm.usage.reset()
    [result] = stage.rerank_batch([Query(text="red page")], [Ranking(Query(text="red page"), hits_of(items))], None)
    assert sorted(result.ids) == ["i0", "i1", "i2"]
    assert tiny_mllm.usage.calls == 2  # the three, then the two left after the first one went out
    assert result.explanations["setwise"] and "no winner" in notes(result)["i0"]
    missing = [*items[:2], Item("gone", "image", source=str(tmp_path / "missing.png"))]
    stage = SetwiseReranker(model=tiny_mllm, max_new_tokens=4, on_no_winner="first-stage")
    [result] = stage.rerank_batch([Query(text="red page")], [Ranking(Query(text="red page"), hits_of(missing))], None)
    assert result.ids == ["i0", "i1", "gone"] and "compare 1: not asked: " in notes(result)["gone"]


# ---------------------------------------------------------------------------- options
def test_options_are_checked_and_round_trip() -> None:
    config = create_reranker({"type": "setwise", "num_child": 3, "k": 5, "prompt_version": "v0.2", "seed": 0,
                              "doc_prefix": "[{num}]: ", "seed_scope": "run", "on_no_winner": "first-stage",
                              "query_tokens": None}).to_config()
    assert create_reranker(config).to_config() == config
    assert config["seed"] == 0 and "_stream" not in config
    assert SetwiseReranker.default_model == "ielabgroup/Rank-R1-7B-v0.1"
    defaults = SetwiseReranker()
    assert (defaults.depth, defaults.num_child, defaults.k, defaults.seed, defaults.max_new_tokens,
            defaults.query_tokens, defaults.passage_tokens) == (100, 19, 10, 929, 2048, 32, 512)
    for options, message in [({"prompt_version": "v1"}, "prompt_version must be one of v0.1, v0.2"),
                             ({"seed_scope": "batch"}, "seed_scope must be one of query, run"),
                             ({"on_no_winner": "last"}, "on_no_winner must be one of root, first-stage"),
                             ({"doc_prefix": "[i] "}, "doc_prefix must be a text holding {num}"),
                             ({"seed": "929"}, "seed must be a whole number"),
                             ({"num_child": 0}, "num_child must be at least 1"),
                             ({"k": 0}, "k must be at least 1"),
                             ({"passage_tokens": 0}, "passage_tokens must be at least 1"),
                             ({"max_new_tokens": 0}, "Need max_new_tokens >= 1")]:
        with pytest.raises(InputError, match=re.escape(message) if "{" in message else message):
            SetwiseReranker(**options)
