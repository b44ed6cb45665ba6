"""ProRank: pointwise relevance from two next-token logits of a small Qwen2.5 reranker ("ProRank:
Prompt Warmup via Reinforcement Learning for Small Language Models Reranking", Li et al. 2025;
mixedbread-ai's ``mxbai-rerank-{base,large}-v2``).

Training (from the paper only, not here): a GRPO stage teaches the model to answer 0 or 1, then a
second stage refines fine-grained scores read from the same logits, with no new head. At inference
each candidate is one forward pass over a hard-coded Qwen2.5 chat wrapper (not the tokenizer's
template): the Qwen system turn, a user turn ``[instruction: i\\n]query: q\\ndocument: d\\n`` plus
a task prompt ending ``Relevance:``, and the assistant header. The score is logit("1") - logit("0")
(= log p1 - log p0) at the last position. Nothing is generated.

Reference read: mixedbread-ai/mxbai-rerank at 8e709dca09e0fdba6bc7f6d4983940fdd1b783c5,
``mxbai_rerank/mxbai_rerank_v2.py`` (``MxbaiRerankV2``: the prompt texts; ``prepare_predefined_inputs``
tokenizes each fixed piece on its own; ``prepare_inputs`` tokenizes the query part cut at
``max_length * 3 // 4`` tokens, the ``document: d`` part cut at ``min(model_max_length - query -
fixed pieces, max_length)``, joins them with ``prepare_for_model(query, sep + document,
truncation="only_second", max_length=max_length)`` and wraps the ids as ``prefix + item + sep + task
+ suffix``; ``max_length`` lowered to ``model_max_length - fixed`` when the two exceed the config's
``max_position_embeddings``; ``forward``: ``logits[:, -1, yes] - logits[:, -1, no]`` with the ids of
"1" and "0"), ``mxbai_rerank/utils.py`` (``sigmoid_normalize``: sigmoid(x - m/2)) and
``mxbai_rerank/base.py`` (``rank`` returns the raw logit differences).

Choices (each an option where there is one):

- Token ids: the reference concatenates separately tokenized pieces, and with Qwen's tokenizer a
  string holding the same text does not always give the same ids: its pre-tokenizer keeps
  punctuation and the newline after it in one piece, which Qwen's vocabulary can merge into one
  token, so a document ending in "." gives ``.`` then ``\\n`` in the reference but may give one
  ``.\\n`` token when the whole prompt is tokenized. On a local transformers model the stage
  therefore scores the reference's own ids (:func:`prorank_input`) through the backend's forward
  pass (batched, left-padded, positions from the first real token, so batching does not change a
  score). Other backends get the same text written out as one string (:attr:`ProRankInput.text`)
  and ``token_logprobs(["1", "0"])``; a server takes no written-out prompt, so the stage needs a
  local model.
- ``max_length`` (8192): the reference's truncation, in tokens of the model's tokenizer (the query
  part at most 3/4 of it); without a tokenizer here nothing is cut.
- ``instruction``: None (the reference's default) writes no ``instruction:`` line.
- ``calibrate``: the stage's score is sigmoid(x - m/2) instead of x (the same order), with
  ``estimated_max`` m: None takes the reference's table, 9 for mxbai-rerank-base-v2 and 12 for
  mxbai-rerank-large-v2 and any other model.
- A candidate's text is its title and body joined by a space; the query and document are stripped
  of surrounding whitespace (the reference takes them as given).
- Page images: no (``takes_images`` False): a page is scored by its text; a candidate without text
  is not scored, with a note.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.errors import InputError
from mmrank.rerankers.base import at_least_one
from mmrank.rerankers.llm_stage import PointwiseLLMReranker
from mmrank.rerankers.qwen3_reranker import Verdict, ask_each, document_text, sigmoid

if TYPE_CHECKING:
    from mmrank.mllm import VisionLanguageModel
    from mmrank.types import Hit, Item

MXBAI_RERANK_MODEL = "mixedbread-ai/mxbai-rerank-base-v2"

# mxbai_rerank/mxbai_rerank_v2.py at 8e709dc (MxbaiRerankV2's class attributes), character for character.
PRORANK_SEP = "\n"
PRORANK_INSTRUCTION = "instruction: {instruction}"
PRORANK_QUERY = "query: {query}"
PRORANK_DOCUMENT = "document: {document}"
PRORANK_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
PRORANK_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                  "assistant.<|im_end|>\n<|im_start|>user\n")
PRORANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
ANSWER_TOKENS = ("1", "0")  # relevant, not relevant
# estimated_max_cfg, and the constructor's fallback for other models.
ESTIMATED_MAX = {"mixedbread-ai/mxbai-rerank-base-v2": 9.0, "mixedbread-ai/mxbai-rerank-large-v2": 12.0}
OTHER_ESTIMATED_MAX = 12.0


@dataclass(frozen=True)
class ProRankInput:
    """One candidate's prompt: the reference's token ids (None without a tokenizer) and the same
    text written out."""

    ids: list[int] | None
    text: str


def prorank_input(tokenizer: Any, query: str, document: str, instruction: str | None = None,
                  max_length: int = 8192, model_max_length: int | None = None) -> ProRankInput:
    """``MxbaiRerankV2.prepare_inputs`` for one pair (see the module docstring): its ids with
    ``tokenizer`` (``model_max_length``: the config's ``max_position_embeddings``, None for no
    limit), and its text; without a tokenizer, the text uncut and no ids."""
    query_part = PRORANK_QUERY.format(query=query)
    if instruction:
        query_part = PRORANK_INSTRUCTION.format(instruction=instruction) + PRORANK_SEP + query_part
    document_part = PRORANK_DOCUMENT.format(document=document)
    if tokenizer is None:
        return ProRankInput(None, PRORANK_PREFIX + query_part + PRORANK_SEP + document_part + PRORANK_SEP
                            + PRORANK_TASK + PRORANK_SUFFIX)

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    prefix, sep, task, suffix = ids(PRORANK_PREFIX), ids(PRORANK_SEP), ids(PRORANK_TASK), ids(PRORANK_SUFFIX)
    fixed = len(prefix) + len(task) + len(suffix) + len(sep)
    limit = math.inf if model_max_length is None else model_max_length
    if max_length + fixed > limit:
        max_length = int(limit) - fixed
    query_ids = ids(query_part)[:max_length * 3 // 4]
    document_ids = ids(document_part)[:max(0, int(min(limit - len(query_ids) - fixed, max_length)))]
    # prepare_for_model(..., truncation="only_second"): the pair's end goes first.
    pair = (sep + document_ids)[:max(0, max_length - len(query_ids))]

    def text(piece: list[int]) -> str:
        return tokenizer.decode(piece, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return ProRankInput(prefix + query_ids + pair + sep + task + suffix,
                        PRORANK_PREFIX + text(query_ids) + text(pair) + PRORANK_SEP + PRORANK_TASK + PRORANK_SUFFIX)


@dataclasses.dataclass(kw_only=True)
class ProRankReranker(PointwiseLLMReranker):
    """Reorders the top ``depth`` (100) candidates by mxbai-rerank-v2's logit("1") - logit("0")
    (see the module docstring). ``instruction``: an optional ``instruction:`` line. ``max_length``:
    the pair's token budget (8192). ``calibrate`` / ``estimated_max``: score sigmoid(x - m/2)
    instead. ``batch_size``: candidates per model call. Other options as in
    :class:`~mmrank.rerankers.llm_stage.LLMReranker` (``use_images`` cannot be ``always``).
    """

    takes_images: ClassVar[bool] = False
    default_model: ClassVar[str | None] = MXBAI_RERANK_MODEL

    name: str = "prorank"
    depth: int = 100
    instruction: str | None = None
    max_length: int = 8192
    calibrate: bool = False
    estimated_max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise InputError(f"instruction must be a text or null; got {self.instruction!r}.")
        at_least_one("max_length", self.max_length)
        if self.max_length < 8:
            raise InputError(f"max_length must leave room for the query and document; got {self.max_length}.")
        if self.estimated_max is not None and not (isinstance(self.estimated_max, (int, float))
                                                   and math.isfinite(self.estimated_max)):
            raise InputError(f"estimated_max must be a number or null; got {self.estimated_max!r}.")

    @property
    def display_max(self) -> float:
        """The m of sigmoid(x - m/2): ``estimated_max``, else the reference's value for the model."""
        if self.estimated_max is not None:
            return float(self.estimated_max)
        return ESTIMATED_MAX.get(self.handle.model_name or self.handle.reference or "", OTHER_ESTIMATED_MAX)

    def prompt(self, model: VisionLanguageModel, question: str, item: Item) -> ProRankInput:
        """The candidate's input for ``model``: the reference's ids with its tokenizer, and the text."""
        config = getattr(getattr(model, "model", None), "config", None)
        return prorank_input(getattr(model, "tokenizer", None), question.strip(), document_text(item),
                             self.instruction, self.max_length, getattr(config, "max_position_embeddings", None))

    def score_candidates(self, model: VisionLanguageModel, questions: Sequence[str],
                         hits: Sequence[Hit]) -> list[Verdict]:
        asked, inputs, verdicts = ask_each(self, model, questions, hits, self.prompt)
        if not inputs:
            return verdicts
        for index, difference in zip(asked, relevance_logits(model, inputs)):
            if math.isnan(difference):
                verdicts[index] = (None, "not scored: neither '1' nor '0' among the model's top tokens; kept its "
                                         "place after the scored hits")
            else:
                verdicts[index] = (sigmoid(difference - self.display_max / 2) if self.calibrate else difference, None)
        return verdicts


def relevance_logits(model: VisionLanguageModel, inputs: Sequence[ProRankInput]) -> list[float]:
    """logit("1") - logit("0") after each input: from the reference's ids on a local transformers
    model, else from ``token_logprobs`` on the written-out text."""
    from mmrank.mllm.hf_base import HFChatModel

    if isinstance(model, HFChatModel) and all(entry.ids is not None for entry in inputs):
        return logit_differences(model, [entry.ids for entry in inputs], *ANSWER_TOKENS)
    logprobs = model.token_logprobs([entry.text for entry in inputs], list(ANSWER_TOKENS))
    return [float(relevant) - float(other) for relevant, other in logprobs]


def logit_differences(model: Any, rows: list[list[int]], positive: str, negative: str) -> list[float]:
    """logit(positive) - logit(negative) at the end of each row of token ids, ``model.batch_size``
    rows per forward pass (left-padded; the tokens' ids as the reference takes them: the first id
    of each text alone). ``model`` is a local :class:`~mmrank.mllm.hf_base.HFChatModel`, whose
    forward pass sets the positions and counts the usage."""
    from mmrank.mllm.hf_base import chunks

    tokenizer = model.tokenizer
    plus, minus = (tokenizer.encode(token, add_special_tokens=False)[0] for token in (positive, negative))
    model.usage.calls += 1
    model.usage.prompts += len(rows)
    found: list[float] = []
    for chunk in chunks(rows, model.batch_size):
        inputs = tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt").to(model.device)
        logits = model._forward(inputs)[:, -1, :]
        found += (logits[:, plus] - logits[:, minus]).tolist()
    return found
