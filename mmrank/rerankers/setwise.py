"""Rank-R1: setwise reasoning reranking with heapsort ("Rank-R1: Enhancing Reasoning in LLM-based
Document Rerankers via Reinforcement Learning", Zhuang et al. 2025).

The model sees a set of candidates labelled ``[1]`` .. ``[n]``, thinks inside ``<think></think>``
and names the most relevant one, ``<answer>[3]</answer>``. A heapsort over the top ``depth``
candidates (``num_child`` children a node, so sets of ``num_child + 1``: 20 by default) asks these
compares and stops once the best ``k`` (10) are out; the other candidates keep their first-stage
order after them. Each compare shuffles its set before labelling it, from a seeded random stream.

Each query's heapsort is a resumable state machine (:func:`heapsort_steps`, a generator that yields
the set it wants compared and receives the winner), so the compares of all queries at the same
point go to the model in one ``generate`` call (or ``batch_size`` per call) and batching changes
nothing.

References read (ielab/llm-rankers):

- at b36517bf17a3956dc56c4c967f972d02390b1cdd (HEAD, "rank-r1-v0.2"): ``llmrankers/setwise.py``
  (``RankR1SetwiseLlmRanker.compare``: ``random.sample`` of the set, labels ``[1]`` .. in order,
  ``"\\n".join(f"[i] text")``, system + user messages, greedy with ``max_tokens=2048``, the toml's
  ``pattern`` searched in the lower-cased completion, the answer looked up among the labels and
  mapped back to the set's own order, "Unexpected voting." when it is not one; ``heapify`` /
  ``heapSort``: a failed compare gives ``best_ind = 0``, the root; ``rerank``: the reversed array's
  first ``k``, then the rest in the original order, score ``-rank``; ``truncate``:
  ``convert_tokens_to_string(tokenize(text)[:length])``; ``random.seed(929)`` at import);
  ``Rank-R1/run_setwise.py`` (the same compare with the toml's ``doc_prefix`` / ``doc_separator``,
  ``max_tokens=8000``, ``random.seed(929)`` after its imports, the title prepended as
  ``f"{title} {text}"`` before truncation); ``Rank-R1/prompts/prompt_setwise-R1.toml`` and
  ``prompt_setwise-R1-v0.2.toml`` (read with tomllib: the texts below are those values);
  ``Rank-R1/README.md`` (DL runs: ``--query_length 32 --passage_length 512 --num_child 19 --k 10``;
  BRIGHT: 1024 / 1024); ``Rank-R1/create_dataset_v0.2.py`` (v0.2 trained with ``[i]: text``).
- at de2c33d9c351f55a107aa15ec7e86927071ba14c ("add rank-r1 to lib") and
  a6efc0541cea64a438a4ed5c886a5b0ff9b18b0f: ``Rank-R1/run_setwise.py`` wrote ``[i] text`` (the v0.2
  commit changed it to the toml's ``[i]: ``, which the v0.1 toml had not had before), and
  ``Rank-R1/create_dataset.py`` trained v0.1 with ``[i] text`` joined by ``\\n``.

Choices (each an option):

- ``doc_prefix``: the label before each candidate, ``{num}`` its number. Default (None): the
  layout each version was trained and first evaluated with: ``[{num}] `` for v0.1 (training data,
  the library class and the script as the DL results were run), ``[{num}]: `` for v0.2 (its toml).
  HEAD's script writes ``[{num}]: `` for v0.1 too: give ``doc_prefix: "[{num}]: "`` to match it.
- The shuffle: the reference draws every compare's ``random.sample`` from Python's global
  ``random`` seeded with 929, one stream through the whole run, so a query's shuffles depend on
  every compare of the queries before it. ``seed_scope: query`` (default) gives each query its own
  ``random.Random(seed)``: the same draws as the reference's first query, and a query's result does
  not depend on which queries share its batch. ``seed_scope: run`` keeps one stream for the stage's
  life and runs the queries one after the other (no lockstep), as the reference does. (vLLM reseeds
  the global ``random`` with its own ``seed`` when it builds its engine in the caller's process, the
  V0 engine with a seed given or V1 without multiprocessing; a reference run made so drew from that
  seed instead: set ``seed`` to it.) ``rng.sample(range(n), n)`` draws the same permutation as the
  reference's ``random.sample(id_passage, n)``. Only ``num_permutation=1`` (the default) is done.
- The answer must be exactly one of ``[1]`` .. ``[n]`` after ``strip()`` (the reference's test);
  otherwise there is no winner and, with ``on_no_winner: root`` (default, the reference's
  ``best_ind = 0``), the heap root stays. Heapsort still swaps the root out at each extraction, so
  under failed compares candidates do move. ``on_no_winner: first-stage`` makes the candidate
  with the best incoming rank in the set win instead: a model that never answers then leaves the
  incoming order as it was. Either way every candidate of the set is noted.
- Score: ``-rank`` over the whole head, as the reference writes it (the top ``k``, then the rest in
  first-stage order). Candidates with nothing to show (no text, no picture) are not put in the heap:
  they follow the others, unscored, noted.
- Truncation: query and passage cut at ``query_tokens`` / ``passage_tokens`` tokens of the model's
  tokenizer (32 / 512, the DL runs; None: no cut); a server model, whose tokenizer is not here,
  cuts at as many words instead. The title is prepended with a space, as the script does.
- Decoding: greedy, at most ``max_new_tokens`` (2048, the library; the script at HEAD allows 8000).
- Page images (``use_images``): a candidate shown as a picture is its label, then the page image
  (zero-shot: no checkpoint was trained on pictures).

Models: ``ielabgroup/Rank-R1-{3B,7B,14B}-v0.1`` are LoRA adapters on ``Qwen/Qwen2.5-{3B,7B,14B}-Instruct``
(transformers loads an adapter folder onto its base when peft is installed; or merge it with
``PeftModel.merge_and_unload`` and save it with the base's tokenizer; servers: vLLM ``--enable-lora``);
``ielabgroup/Rank-R1-32B-v0.2`` (Qwen3-32B) reads ``prompt_version: v0.2``.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mmrank.errors import InputError
from mmrank.mllm.base import check_generation_options
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.llm_stage import LLMReranker, first_words, merged_text, showable_head, title_and_body

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.rerankers.mllm_stage import ModelCalls
    from mmrank.types import Hit, Item, Query, Ranking

RANK_R1_MODEL = "ielabgroup/Rank-R1-7B-v0.1"

# Rank-R1/prompts/prompt_setwise-R1.toml (v0.1) as tomllib reads it.
R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>.")
R1_USER = (
    'Given the query: "{query}", which of the following documents is most relevant?\n{docs}\nAfter completing the '
    "reasoning process, please provide only the label of the most relevant document to the query, enclosed in square "
    "brackets, within the answer tags. For example, if the third document is the most relevant, the answer should "
    "be: <think> reasoning process here </think> <answer>[3]</answer>.")
# Rank-R1/prompts/prompt_setwise-R1-v0.2.toml ("the following step:" sic).
R1_V2_SYSTEM = ("You are RankLLM, an intelligent assistant capable of evaluating the relevancy of passages to a given "
                "query.")
R1_V2_USER = (
    "You will be presented with a query, and a set of documents.\n\nYour task consists of the following step:\n\n"
    "1. Analyze the query: Carefully read the query and identify the core problem or question being asked.\n\n"
    "2. Analyze the documents: Thoroughly examine each document and briefly explain how each document is relevant or "
    "not relevant to the query.\n\n"
    "3. Find the most relevant document: Based on your analysis, select the most relevant document to the query from "
    "the set and briefly explain why.\n\n"
    "Important: Provide your analysis within the <think> </think> tags and answer only the label of the most relevant "
    "document, enclosed in square brackets, within the <answer> </answer> tags. For example, if the third document is "
    "the most relevant, your response should be:\n<think> Your analysis here </think>\n<answer>[3]</answer>\n\n"
    "Here is the query: {query}\n\nHere are the documents:\n{docs}")
# Both tomls' pattern, searched in the lower-cased completion with re.DOTALL.
R1_PATTERN = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)

PromptVersion = Literal["v0.1", "v0.2"]
SeedScope = Literal["query", "run"]
NoWinner = Literal["root", "first-stage"]
SEED_SCOPES = ("query", "run")
NO_WINNER = ("root", "first-stage")


@dataclass(frozen=True)
class SetwisePrompt:
    """A Rank-R1 prompt: the system text, the user template (``{query}``, ``{docs}``), the text
    between two candidates and the default label before each (``{num}``)."""

    system: str
    user: str
    separator: str
    doc_prefix: str


PROMPTS: dict[str, SetwisePrompt] = {
    "v0.1": SetwisePrompt(R1_SYSTEM, R1_USER, "\n", "[{num}] "),
    "v0.2": SetwisePrompt(R1_V2_SYSTEM, R1_V2_USER, "\n\n", "[{num}]: "),
}

HeapSteps = Generator[list[int], "int | None", list[int]]


def heapsort_steps(count: int, num_child: int, k: int) -> HeapSteps:
    """The reference's ``heapSort`` / ``heapify`` over ``count`` candidates (0-based, in their
    incoming order) as a generator: it yields each set to compare (candidate indices, the heap node
    first, then its children), receives the winner's index within that set (None: no winner, the
    node stays), and returns the best ``k`` candidates, best first (all of them, sorted, when
    ``count <= k + 1``). The reference's recursion on the swapped child is the loop here."""
    heap = list(range(count))

    def sift(size: int, node: int) -> Generator[list[int], int | None, None]:
        while num_child * node + 1 < size:
            members = [node, *range(num_child * node + 1, min(num_child * (node + 1) + 1, size))]
            best = yield [heap[index] for index in members]
            largest = node if best is None else members[best]
            if largest == node:
                return
            heap[node], heap[largest] = heap[largest], heap[node]
            node = largest

    for node in range(count // num_child, -1, -1):
        yield from sift(count, node)
    for end in range(count - 1, 0, -1):
        heap[end], heap[0] = heap[0], heap[end]
        if count - end == k:
            break
        yield from sift(end, 0)
    return heap[::-1][:k]


def parse_setwise_answer(text: str, count: int) -> tuple[int | None, str | None, str]:
    """The 0-based winner of a compare of ``count`` candidates, the reason when there is none, and
    the reasoning: the first ``<think>...</think> <answer>...</answer>`` of the lower-cased text
    (the reference's pattern), whose answer, stripped, must be one of ``[1]`` .. ``[count]``."""
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}.")
    match = R1_PATTERN.search(text.lower())
    if match is None:
        reason = "empty output" if not text.strip() else "no <think>...</think> <answer>...</answer> in the output"
        return None, reason, text.strip()
    answer = match[2].strip()
    own = re.search(R1_PATTERN.pattern, text, re.DOTALL | re.IGNORECASE)
    reasoning = (own[1] if own else match[1]).strip()
    if re.fullmatch(r"\[[1-9][0-9]{0,5}\]", answer) and int(answer[1:-1]) <= count:
        return int(answer[1:-1]) - 1, None, reasoning
    shown = answer if len(answer) <= 40 else answer[:40] + "..."
    return None, f"answer {shown!r} is not one of [1] to [{count}]", reasoning


def truncated(model: Any, text: str, count: int | None) -> str:
    """``text`` cut at ``count`` tokens of the model's tokenizer as the reference's ``truncate``
    does (``convert_tokens_to_string(tokenize(text)[:count])``); at ``count`` words for a model
    without a tokenizer here (a server); unchanged for None."""
    if count is None:
        return text
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "convert_tokens_to_string"):
        return first_words(text, count)
    return tokenizer.convert_tokens_to_string(tokenizer.tokenize(text)[:count])


@dataclass
class HeapProgress:
    """One ranking on its way through its heapsort: ``eligible`` holds the head positions in the
    heap (indices into the incoming hits), ``pending`` the positions of the set now asked about
    (the heap node first) and ``shown`` its order in the prompt (``shown[j]`` indexes
    ``pending``); ``top`` the heap's result once done."""

    ranking: Ranking
    question: str
    eligible: list[int]
    skipped: dict[int, str]
    steps: HeapSteps
    rng: random.Random
    pending: list[int] | None = None
    shown: list[int] = field(default_factory=list)
    top: list[int] | None = None
    compares: int = 0
    notes: dict[int, list[str]] = field(default_factory=dict)
    explanations: list[str] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)

    def start(self) -> None:
        """Take the heap to its first compare (or its end, for fewer than two candidates)."""
        self._next(None, first=True)

    def answer(self, winner: int | None) -> None:
        """Hand the winner of the pending set (an index into ``pending``, None for none) to the heap."""
        self._next(winner)

    def no_winner(self, reason: str, on_no_winner: str) -> None:
        """End the pending compare without an answer: the root stays (or the best incoming rank wins)."""
        for position in self.pending or []:
            self.notes.setdefault(position, []).append(f"compare {self.compares}: {reason}")
        winner = None if on_no_winner == "root" else self.pending.index(min(self.pending))
        self._next(winner)

    def shown_positions(self) -> list[int]:
        """The pending set's head positions in the order the prompt shows them."""
        return [self.pending[index] for index in self.shown]

    def _next(self, sent: int | None, first: bool = False) -> None:
        try:
            members = next(self.steps) if first else self.steps.send(sent)
        except StopIteration as stop:
            self.top, self.pending = [self.eligible[index] for index in stop.value], None
            return
        self.pending = [self.eligible[index] for index in members]
        self.shown = self.rng.sample(range(len(members)), len(members))
        self.compares += 1

    def result(self, stage: str) -> Ranking:
        """Head scores ``-rank``: the heap's top, then the rest of the heap in incoming order; then
        the candidates not in the heap (unscored, noted); then the tail."""
        top = self.top or []
        ranked = set(top)
        order = top + [position for position in self.eligible if position not in ranked]
        head = [HeadPlace(position, float(-rank), " | ".join(self.notes.get(position, [])) or None)
                for rank, position in enumerate(order, start=1)]
        head += [HeadPlace(position, None, note) for position, note in self.skipped.items()]
        return self.ranking.with_stage(stage, reorder_head(self.ranking, head, len(head)),
                                       explanations=self.explanations)


@dataclasses.dataclass(kw_only=True)
class SetwiseReranker(LLMReranker):
    """Rank-R1 setwise reranking of the top ``depth`` (100) candidates (see the module docstring).

    ``num_child`` children per heap node (19: sets of up to 20), the best ``k`` (10) sorted out,
    the rest in first-stage order. ``prompt_version``: ``v0.1`` (the Qwen2.5 LoRA checkpoints) or
    ``v0.2`` (Rank-R1-32B-v0.2). ``doc_prefix``: the label before each candidate (``{num}``; None:
    the version's own). ``query_tokens`` / ``passage_tokens``: truncation (None: none). Greedy at
    ``temperature`` 0, at most ``max_new_tokens``. ``seed`` / ``seed_scope``: the shuffle of each
    compare's set. ``on_no_winner``: ``root`` or ``first-stage``. ``batch_size``: compares per
    model call (None: those of all queries at one step together).

    Result: head scores ``-rank``; the notes of a candidate list the compares it was in that had no
    winner; ``explanations[name]`` holds each compare's reasoning in order. A ranking in a call that
    fails keeps its incoming order (``on_unavailable``).
    """

    default_model: ClassVar[str | None] = RANK_R1_MODEL

    name: str = "setwise"
    depth: int = 100
    num_child: int = 19
    k: int = 10
    prompt_version: PromptVersion = "v0.1"
    doc_prefix: str | None = None
    query_tokens: int | None = 32
    passage_tokens: int | None = 512
    max_new_tokens: int = 2048
    temperature: float = 0.0
    seed: int = 929
    seed_scope: SeedScope = "query"
    on_no_winner: NoWinner = "root"
    batch_size: int | None = None
    _stream: random.Random = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_version not in PROMPTS:
            raise InputError(f"prompt_version must be one of {', '.join(PROMPTS)}; got {self.prompt_version!r}.")
        for option, value, allowed in (("seed_scope", self.seed_scope, SEED_SCOPES),
                                       ("on_no_winner", self.on_no_winner, NO_WINNER)):
            if value not in allowed:
                raise InputError(f"{option} must be one of {', '.join(allowed)}; got {value!r}.")
        if self.doc_prefix is not None and (not isinstance(self.doc_prefix, str) or "{num}" not in self.doc_prefix):
            raise InputError(f"doc_prefix must be a text holding {{num}} (e.g. '[{{num}}] '); got {self.doc_prefix!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"seed must be a whole number, got {self.seed!r}.")
        for option in ("num_child", "k", "query_tokens", "passage_tokens", "batch_size"):
            at_least_one(option, getattr(self, option))
        check_generation_options(self.max_new_tokens, self.temperature)
        self._stream = random.Random(self.seed)

    @property
    def prompt(self) -> SetwisePrompt:
        return PROMPTS[self.prompt_version]

    # ------------------------------------------------------------------ prompt
    def label(self, number: int) -> str:
        """The text before the ``number``-th (1-based) candidate of a set."""
        return (self.doc_prefix or self.prompt.doc_prefix).replace("{num}", str(number))

    def passage(self, model: VisionLanguageModel, item: Item) -> str:
        """The candidate as the script shows it: ``title text`` (the text alone without a title),
        cut at ``passage_tokens`` tokens."""
        title, body = title_and_body(item)
        return truncated(model, f"{title} {body}" if title else body, self.passage_tokens)

    def compare_conversation(self, model: VisionLanguageModel, question: str, hits: Sequence[Hit],
                             passages: Sequence[str] | None = None) -> Conversation:
        """The system message and the user turn asking which of ``hits`` (in this order, labelled
        from 1) is most relevant to ``question`` (already truncated). ``passages``: the hits' texts
        when already rendered. InputError when a picture cannot be loaded."""
        before, _, after = self.prompt.user.partition("{docs}")
        parts: list[dict[str, Any]] = [{"type": "text", "text": before.format(query=question)}]
        for number, hit in enumerate(hits, start=1):
            text = self.passage(model, hit.item) if passages is None else passages[number - 1]
            separator = self.prompt.separator if number > 1 else ""
            parts += [{"type": "text", "text": separator + self.label(number)},
                      self.candidate_part(model, hit.item, text)]
        parts.append({"type": "text", "text": after.format(query=question)})
        content = merged_text(parts)
        user = content[0]["text"] if len(content) == 1 and content[0]["type"] == "text" else content
        return [{"role": "system", "content": self.prompt.system}, {"role": "user", "content": user}]

    # ----------------------------------------------------------------- ranking
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Heapsort every ranking; the compares of all rankings at the same point go to the model
        together (``seed_scope: run``: one ranking after the other)."""
        calls = self.model_calls(rankings)
        heaps: list[HeapProgress] = []
        if calls.model is not None:
            heaps = [self._heap(calls.model, query, ranking) for query, ranking in zip(queries, rankings, strict=True)]
            groups = [[row] for row in range(len(heaps))] if self.seed_scope == "run" else [list(range(len(heaps)))]
            for rows in groups:
                self._run(calls, heaps, rows)
        return calls.results(lambda row: heaps[row].result(self.name))

    def _heap(self, model: VisionLanguageModel, query: Query, ranking: Ranking) -> HeapProgress:
        eligible, unshown = showable_head(self, model, ranking)
        skipped = dict.fromkeys(unshown, "not ranked: no text to show; placed after the ranked candidates")
        rng = self._stream if self.seed_scope == "run" else random.Random(self.seed)
        return HeapProgress(ranking, truncated(model, self.question(query), self.query_tokens), eligible, skipped,
                            heapsort_steps(len(eligible), self.num_child, self.k), rng)

    def _run(self, calls: ModelCalls, heaps: list[HeapProgress], rows: list[int]) -> None:
        for row in rows:
            heaps[row].start()
        while active := [row for row in rows if heaps[row].pending is not None and row not in calls.lost]:
            size = self.batch_size or len(active)
            for begin in range(0, len(active), size):
                chunk = active[begin:begin + size]
                calls.ask(chunk, self._compare, [heaps[row] for row in chunk])

    def _compare(self, model: VisionLanguageModel, heaps: list[HeapProgress]) -> None:
        """Ask each heap's pending compare (one ``generate`` call) and hand the winners back; a set
        that cannot be shown (a picture that does not load) has no winner, noted."""
        conversations, asked = [], []
        for heap in heaps:
            positions = heap.shown_positions()
            hits = [heap.ranking.hits[position] for position in positions]
            try:
                passages = [self._cached_text(model, heap, position) for position in positions]
                conversations.append(self.compare_conversation(model, heap.question, hits, passages))
            except (InputError, OSError) as error:
                heap.explanations.append("")
                heap.no_winner(f"not asked: {error}; {self._stayed}", self.on_no_winner)
                continue
            asked.append(heap)
        if not conversations:
            return
        generations = model.generate(conversations, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        for heap, generation in zip(asked, generations, strict=True):
            shown, reason, reasoning = parse_setwise_answer(generation.text, len(heap.shown))
            heap.explanations.append(reasoning)
            if shown is None:
                heap.no_winner(f"no winner: {reason}; {self._stayed}", self.on_no_winner)
            else:
                heap.answer(heap.shown[shown])

    @property
    def _stayed(self) -> str:
        return "the heap root stayed" if self.on_no_winner == "root" else "the best first-stage rank won"

    def _cached_text(self, model: VisionLanguageModel, heap: HeapProgress, position: int) -> str:
        """The candidate's text, rendered once per ranking (empty for a picture)."""
        if position not in heap.texts:
            item = heap.ranking.hits[position].item
            heap.texts[position] = "" if self.shows_picture(model, item) else self.passage(model, item)
        return heap.texts[position]
