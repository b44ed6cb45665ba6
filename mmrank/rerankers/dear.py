"""DeAR: two-stage reranking distilled from a large teacher ("DeAR: Dual-Stage Document Reranking with
Reasoning Agents via LLM Distillation", Abdallah et al., EMNLP Findings 2025): a pointwise stage, a
Llama 3 with a one-logit classification head (``dear``, :class:`DeARReranker`), over the BM25 top
100, then a listwise stage, a Llama-3.1-8B-Instruct that reasons and writes ``[2] > [1] > ...``
(``dear-listwise``, :class:`DeARListwiseReranker`), over the top 30 in windows of 20, stride 10.

References read: DataScienceUIBK/DeAR-Reranking at c31c73985f0f7546ef7598a3c8815ef6594a6190:
``simple_rerank.py`` (loading a merged model or a LoRA adapter, ``score_pair``, ``rerank`` and the
toy example), ``pointwise_reranker/data.py`` (``RerankerInferencePreProcessor``,
``RerankerInferenceDataset``, ``RerankerInferenceCollator``), ``pointwise_reranker/inference.py``,
``pointwise_reranker/modeling.py`` (``DistillRerankerModel.load``), ``pointwise_reranker/arguments.py``,
``run_pointwise.sh`` (q_max_len 32, p_max_len 196), ``pointwise_reranker/convert_trec_to_json.py``
(the listwise input: ``Title: t Content: c``), ``listwise_rerank/prompts.py`` (the messages and the
parser), ``listwise_rerank/pipeline.py`` (windows), ``listwise_rerank/clients.py`` (decoding),
``listwise_rerank/main.py`` and ``run_listwise.sh`` (rank_end 30, window 20, step 10, temperature
0.5, 1024 new tokens, 300 words), ``simple_rerank_listwise.py`` and ``README.md``.

Pointwise (``dear``). The input is the pair ``query: q`` / ``document: title text`` (title and text
joined by a space, so ``document:  text`` without a title), at most 32 + 196 tokens, read by
:class:`~mmrank.mllm.hf_classifier.HFSequenceClassifier`; the score is the head's logit, higher is
better. The references tokenize it two ways, both offered (``encoding``):

- ``per-side`` (default): the inference pipeline the paper's runs use (``run_pointwise.sh`` ->
  ``inference.py`` -> ``data.py``): the query cut to 32 tokens, the document to 196 - 3, then
  ``<|begin_of_text|> query <|begin_of_text|> document``, padded on the right to 228 tokens.
- ``pair``: ``simple_rerank.py``'s ``tokenizer(q, d, truncation=True, max_length=228)``, the
  tokenizer's pair template cut longest-first; on Llama 3 the same row until a side is cut.

Every row is padded to 228 tokens, as ``data.py`` and ``score_pair`` do, so a score does not depend
on its batch (``simple_rerank.rerank`` pads to the longest pair of its batch of 64 instead, which
changes the logit where the checkpoint's ``pad_token_id`` is not its padding token).
``pad_token_id``: None keeps the checkpoint's config, or where it names none sets the tokenizer's
padding token (its end-of-sequence token), as ``simple_rerank.py`` does; the inference pipeline
loads the LoRA adapters on a base whose ``pad_token_id`` it sets to 0, so the head reads the last
(padded) position: ``pad_token_id: 0`` reproduces that. The ``-lora`` checkpoints need peft (loaded
on their base with one label and merged, as ``simple_rerank.py`` does); without it the error names
the merged checkpoints. The authors' toy example (``simple_rerank.py``: "When did Thomas Edison
invent the light bulb?", five one-line documents without titles) gives, by the authors' numbers
for ``dear-8b-reranker-ce-v1`` (their comment "DeAR-P-8B-BC", bfloat16): document 4 -2.015625,
document 1 -5.6875, then 2 -6.375, 0 -6.5, 3 -6.78125. These are the authors' figures; they are not
reproduced here (the weights are not available offline): the tests check the tokenization against
the reference's and the scores against plain transformers on a tiny random Llama classifier.

Listwise (``dear-listwise``). RankGPT's multi-turn messages, character for character from
``prompts.py``: the system message, a user turn announcing the passages and the query, the reply
"Okay, please provide the passages.", then per passage a user turn ``[i] text`` and the reply
``Received passage [i].``, and a last user turn with the query, a three-step plan and the strict
``[2] > [1] > [3] ...`` output format. A passage is ``Title: t Content: c`` (its text alone without
a title), whitespace collapsed, with ``"Title: Content: "`` removed, its first 300 words. The answer
is read after the first ``</think>`` (the whole text without one): every run of digits is a number,
ids out of range are dropped, repeats count once, the missing ones follow in incoming order
(:func:`parse_dear_ranking`); an answer without a usable number keeps the window's order, noted.
The reference treats any ``str.isdigit`` character as a digit and would raise on ``²``; here only
decimal digits count.

Choices (options):

- Decoding: the reference samples (``do_sample=True``, temperature 0.5, top_p 0.9, 1024 new
  tokens, no seed). The backends take a temperature only, so ``temperature`` defaults to 0 (greedy,
  reproducible; the spec offers greedy) and ``temperature: 0.5`` samples without nucleus cut-off
  (top_p is not supported by the backends). ``seed``: with temperature > 0, torch's random
  generators are seeded with it before each window call on a local model (a server samples with its
  own state); the draws then depend on which windows share the call (``batch_size``).
- Windows: the reference's ``sliding_windows`` over ranks [0, 30): [10, 30) then [0, 20). With
  fewer hits than ``depth`` its windows stay where they are, cut to the hits there are (25 hits:
  [10, 25) then [0, 20)); a window of fewer than two hits is not asked.
- The reference's local client tokenizes the rendered chat template with special tokens, so a
  Llama 3 prompt starts with two ``<|begin_of_text|>``; mmrank's backends read the template's one.
  ``simple_rerank_listwise.py`` words its last turn slightly differently (a line break instead of the
  space before "The passages should ...", and it ends at "Output format strictly: [2] > [1] > [3]");
  the pipeline's ``prompts.py`` is the one here.
- Page images: zero-shot only (no checkpoint was trained on pictures): a candidate shown as a
  picture is its ``[i] `` label then the image in its user turn. The pointwise stage reads text only.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm.base import check_generation_options
from mmrank.mllm.handle import ON_UNAVAILABLE, OnUnavailable
from mmrank.mllm.hf_classifier import PAIR_ENCODINGS, PairEncoding, PeftMissingError, check_max_lengths
from mmrank.mllm.parsing import ParsedRanking, complete_order, usable_ids
from mmrank.rerankers.base import BaseReranker, HeadPlace, at_least_one, keep_order, query_text, reorder_head
from mmrank.rerankers.cross_encoder import NO_TEXT_NOTE
from mmrank.rerankers.listwise import ListwiseLLMReranker, Window, window_schedule
from mmrank.rerankers.llm_stage import first_words, merged_text, title_and_body

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.mllm.hf_classifier import HFSequenceClassifier
    from mmrank.types import Hit, Item, Query, Ranking

logger = logging.getLogger("mmrank")

DEAR_POINTWISE_MODEL = "abdoelsayed/dear-8b-reranker-ce-v1"
DEAR_LISTWISE_MODEL = "abdoelsayed/dear-8b-reranker-listwise-v1"
# The full (merged) pointwise checkpoints, which load without peft (README.md's model tables).
DEAR_MERGED_MODELS = ("abdoelsayed/dear-8b-reranker-ce-v1", "abdoelsayed/dear-8b-reranker-ranknet-v1",
                      "abdoelsayed/dear-3b-reranker-ce-v1", "abdoelsayed/dear-3b-reranker-ranknet-v1")

# pointwise_reranker/data.py and simple_rerank.py.
QUERY_PREFIX = "query: "
DOCUMENT_PREFIX = "document: "

# listwise_rerank/prompts.py, character for character.
DEAR_SYSTEM = "You are RankLLM, an assistant that ranks passages by relevance to the query."
DEAR_PREFIX = ("I will provide you with {num} passages, each indicated by number identifier [].\n"
               "Rank the passages based on their relevance to query: {query}.")
DEAR_PREFIX_REPLY = "Okay, please provide the passages."
DEAR_PASSAGE_LABEL = "[{rank}] "  # then the passage: f"[{i}] {snippet}"
DEAR_PASSAGE_REPLY = "Received passage [{rank}]."
DEAR_SUFFIX = (
    "Search Query: {query}.\n"
    "Rank the {num} passages above based on their relevance to the search query. "
    "The passages should be listed in descending order using identifiers.\n"
    "Please follow the steps below:\n"
    "Step 1. List the information requirements to answer the query.\n"
    "Step 2. For each requirement, find the passages containing that information.\n"
    "Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n"
    "Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations.")
EMPTY_TITLE = "Title: Content: "  # what prompts.py removes from a passage whose title is empty

_AFTER_THINK = re.compile(r"</think>\s*(.*)", re.DOTALL | re.IGNORECASE)  # prompts.extract_after_think


# ------------------------------------------------------------------------------ pointwise
def document_text(item: Item) -> str:
    """The pointwise stage's second side: ``document: <title> <text>`` (data.py, simple_rerank.py)."""
    title, body = title_and_body(item)
    return f"{DOCUMENT_PREFIX}{title} {body}"


@dataclasses.dataclass(kw_only=True)
class DeARReranker(BaseReranker):
    """DeAR's pointwise stage: the top ``depth`` (100) hits by a one-logit classifier's score of
    ``query: q`` / ``document: title text`` (see the module docstring).

    ``model``: a Hugging Face id or local folder (None: ``abdoelsayed/dear-8b-reranker-ce-v1``; also
    the ``3b`` and ``ranknet`` checkpoints, and the ``-lora`` adapters with peft installed), loaded on
    first use on ``device`` (``auto``: CUDA when torch sees a GPU) in ``dtype`` (``auto``: bfloat16
    on CUDA, float32 on the CPU). ``query_max_tokens`` / ``passage_max_tokens``: 32 / 196 as the
    reference; ``encoding``: ``per-side`` (the inference pipeline) or ``pair`` (simple_rerank.py);
    ``pad_token_id``: see the module docstring. ``batch_size``: pairs per forward pass, the
    candidates of all queries together. A candidate without text keeps its place after the scored
    ones, noted. ``on_unavailable``: ``keep-order`` (default) leaves every ranking as it came when
    the model cannot be loaded, with a warning and the note ``model unavailable: <reason>``;
    ``fail`` raises ModelUnavailableError.
    """

    default_model: ClassVar[str] = DEAR_POINTWISE_MODEL

    name: str = "dear"
    depth: int = 100
    model: str | None = None
    batch_size: int = 64
    query_max_tokens: int = 32
    passage_max_tokens: int = 196
    encoding: PairEncoding = "per-side"
    pad_token_id: int | None = None
    device: str | None = "auto"
    dtype: str = "auto"
    on_unavailable: OnUnavailable = "keep-order"
    _classifier: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _problem: ModelUnavailableError | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, Path):
            self.model = str(self.model)
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise InputError(f"model must be a sequence classifier's Hugging Face id or folder, e.g. "
                             f"{DEAR_POINTWISE_MODEL}, or None; got {self.model!r}.")
        at_least_one("batch_size", self.batch_size)
        check_max_lengths((self.query_max_tokens, self.passage_max_tokens))
        if self.encoding not in PAIR_ENCODINGS:
            raise InputError(f"encoding must be one of {', '.join(PAIR_ENCODINGS)}; got {self.encoding!r}.")
        if self.pad_token_id is not None and (not isinstance(self.pad_token_id, int) or self.pad_token_id < 0):
            raise InputError(f"pad_token_id must be a token id (a whole number >= 0) or None; "
                             f"got {self.pad_token_id!r}.")
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise InputError(f"on_unavailable must be 'fail' or 'keep-order', got {self.on_unavailable!r}.")

    def classifier(self) -> HFSequenceClassifier:
        """The classifier, loaded on first use and kept; ModelUnavailableError when it cannot be
        loaded (then again on every later call, without trying again)."""
        if self._classifier is None:
            if self._problem is not None:
                raise self._problem
            from mmrank.mllm.hf_classifier import HFSequenceClassifier

            try:
                self._classifier = HFSequenceClassifier(
                    self.model or self.default_model, device=self.device, dtype=self.dtype,
                    batch_size=self.batch_size, pad_token_id=self.pad_token_id)
            except PeftMissingError as error:
                self._problem = ModelUnavailableError(
                    f"{error} DeAR's merged checkpoints need no peft: {', '.join(DEAR_MERGED_MODELS)}.")
                raise self._problem from error
            except ModelUnavailableError as error:
                self._problem = error
                raise
        return self._classifier

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Score the top ``depth`` hits with text of every ranking together, ``batch_size`` pairs per
        forward pass, and order each head by score (ties in incoming order)."""
        questions = [QUERY_PREFIX + query_text(query, self.name, "reranker reads the query's text with each "
                                               "candidate's text", "; use it with text queries")
                     for query in queries]
        owners = [(row, position) for row, ranking in enumerate(rankings)
                  for position, hit in enumerate(ranking.hits[:self.depth]) if hit.item.has_text]
        scores: list[dict[int, float]] = [{} for _ in rankings]
        if owners:
            try:
                classifier = self.classifier()
            except ModelUnavailableError as error:
                if self.on_unavailable == "fail":
                    raise
                logger.warning("%s: keeping the incoming order: %s", self.name, error)
                return [keep_order(ranking, self.name, f"model unavailable: {error}") for ranking in rankings]
            pairs = [(questions[row], document_text(rankings[row].hits[position].item)) for row, position in owners]
            values = classifier.score(pairs, max_lengths=(self.query_max_tokens, self.passage_max_tokens),
                                      encoding=self.encoding)
            for (row, position), value in zip(owners, values, strict=True):
                scores[row][position] = float(value)
        return [self._apply(ranking, found) for ranking, found in zip(rankings, scores, strict=True)]

    def _apply(self, ranking: Ranking, scores: dict[int, float]) -> Ranking:
        """Scored head by score (ties in incoming order), the head without text, then the rest."""
        size = min(self.depth, len(ranking.hits))
        scored = sorted((HeadPlace(position, scores[position]) for position in range(size) if position in scores),
                        key=lambda place: -place.score)
        unscored = [HeadPlace(position, None, NO_TEXT_NOTE) for position in range(size) if position not in scores]
        return ranking.with_stage(self.name, reorder_head(ranking, scored + unscored, self.depth))


# ------------------------------------------------------------------------------- listwise
def passage_text(item: Item, words: int = 300) -> str:
    """prompts.py's passage: ``Title: t Content: c`` (the text alone without a title, as
    convert_trec_to_json.py writes it), whitespace collapsed, ``Title: Content: `` removed, its
    first ``words`` words."""
    title, body = title_and_body(item)
    content = f"Title: {title} Content: {body}" if title else body
    return first_words(" ".join(content.split()).replace(EMPTY_TITLE, "").strip(), words)


def after_think(text: str) -> str:
    """What follows the first ``</think>`` (and the whitespace after it), else the whole text, stripped."""
    found = _AFTER_THINK.search(text)
    return found.group(1).strip() if found else text.strip()


def parse_dear_ranking(text: str, count: int) -> ParsedRanking:
    """prompts.py's ``parse_ranking_to_indices`` on what follows ``</think>``: every run of decimal
    digits is an id; ids from 1 to ``count`` are kept once in their order, the missing ones follow
    in incoming order. No usable id keeps the incoming order, with the reason in ``failure``.
    ``reasoning`` is the text as generated."""
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}.")
    answer = after_think(text)
    numbers = "".join(character if character.isdecimal() else " " for character in answer).split()
    ids = [int(number) for number in numbers if len(number.lstrip("0")) <= 18]  # longer: never an id
    given = usable_ids(ids, count)
    if not given:
        reason = "empty output" if not answer else f"no number from 1 to {count} after </think>"
        return ParsedRanking(tuple(range(count)), (), False, reason, text)
    return ParsedRanking(tuple(complete_order(given, count)), tuple(given), len(given) == count, None, text)


@dataclasses.dataclass(kw_only=True)
class DeARListwiseReranker(ListwiseLLMReranker):
    """DeAR's listwise stage: RankGPT-style multi-turn messages over windows of ``window`` (20)
    candidates ``stride`` (10) apart across the top ``depth`` (30), each answered with a reasoned
    ``[2] > [1] > ...`` (see the module docstring).

    ``max_new_tokens`` (1024) per window; ``temperature`` 0 is greedy, above it samples (``seed``:
    see the module docstring); passages are cut to ``max_passage_words`` (300) words. Default model
    ``abdoelsayed/dear-8b-reranker-listwise-v1``. Page images go to a vision-language model as
    pictures (``use_images``). Windows, batching and results as in
    :class:`~mmrank.rerankers.listwise.ListwiseLLMReranker`.
    """

    default_model: ClassVar[str | None] = DEAR_LISTWISE_MODEL
    takes_images: ClassVar[bool] = True

    name: str = "dear-listwise"
    depth: int = 30
    window: int = 20
    stride: int = 10
    max_new_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None
    max_passage_words: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        check_generation_options(self.max_new_tokens, self.temperature)
        at_least_one("max_passage_words", self.max_passage_words)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise InputError(f"seed must be a whole number or None, got {self.seed!r}.")

    def schedule(self, count: int) -> list[Window]:
        """The reference's windows over ``depth`` ranks, cut to the ``count`` hits there are (those
        with fewer than two hits left out)."""
        windows = [(start, min(end, count)) for start, end in window_schedule(self.depth, self.window, self.stride)]
        return [(start, end) for start, end in windows if end - start >= 2]

    def window_conversation(self, model: VisionLanguageModel, question: str, hits: Sequence[Hit]) -> Conversation:
        """prompts.py's ``build_messages`` for one window (a picture, where shown, after its label)."""
        num = len(hits)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": DEAR_SYSTEM},
            {"role": "user", "content": DEAR_PREFIX.format(num=num, query=question)},
            {"role": "assistant", "content": DEAR_PREFIX_REPLY},
        ]
        for rank, hit in enumerate(hits, start=1):
            part = self.candidate_part(model, hit.item, passage_text(hit.item, self.max_passage_words))
            content = merged_text([{"type": "text", "text": DEAR_PASSAGE_LABEL.format(rank=rank)}, part])
            messages.append({"role": "user", "content": content[0]["text"] if len(content) == 1 else content})
            messages.append({"role": "assistant", "content": DEAR_PASSAGE_REPLY.format(rank=rank)})
        messages.append({"role": "user", "content": DEAR_SUFFIX.format(num=num, query=question)})
        return messages

    def rank_windows(self, model: VisionLanguageModel, windows: Sequence[tuple[str, Sequence[Hit]]]
                     ) -> list[ParsedRanking]:
        conversations = [self.window_conversation(model, question, hits) for question, hits in windows]
        with seeded_sampling(self.seed if self.temperature > 0 else None):
            generations = model.generate(conversations, max_new_tokens=self.max_new_tokens,
                                         temperature=self.temperature)
        return [parse_dear_ranking(generation.text, len(hits))
                for generation, (_, hits) in zip(generations, windows, strict=True)]


@contextmanager
def seeded_sampling(seed: int | None) -> Iterator[None]:
    """torch's random generators seeded with ``seed`` inside the block and put back after it
    (nothing for None)."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
