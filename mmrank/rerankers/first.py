"""FIRST: listwise reranking by single-token decoding ("FIRST: Faster Improved Listwise Reranking
with Single Token Decoding", Reddy et al., EMNLP 2024; "An Early FIRST Reproduction and Improvements
to Single-Token Decoding for Fast Listwise Reranking", Chen et al. 2024), with RankZephyr's
generated permutation (``mode: generate``) on the same prompt and windows, for comparison.

A window of candidates labelled ``[A]`` .. ``[T]`` goes to the model in one user turn (RankLLM's
prompt, below). FIRST does not generate the permutation: it renders the chat template with the
generation prompt, appends a literal ``[`` and reads the log-probabilities of the next token, one
forward pass; the letters, sorted by log-probability, are the window's order (letters outside the
top ``top_k`` next tokens follow in their incoming order). ``mode: generate`` lets the model write
``[B] > [A] > ...`` greedily and parses it. Windows slide from the back to the front
(:mod:`mmrank.rerankers.listwise`: top-100, window 20, stride 10 is 9 calls per query).

References read:

- castorini/rank_llm at 99f70f1b90fe27c888b3d56598a78e1f4d4582f3, the parent of 94d8c51 "Simplify
  vllm batch (#345)" (from that commit on, HEAD 1b3cabb included, ``use_logits`` is stored but never
  read): ``src/rank_llm/rerank/prompt_templates/rank_zephyr_alpha_template.yaml`` (FIRST's prompt; no
  other FIRST template exists) and ``rank_zephyr_template.yaml`` (numeric ids);
  ``src/rank_llm/rerank/listwise/rank_listwise_os_llm.py`` (``run_llm_batched`` with
  ``use_logits``: prompt + ``[``, one token, 30 logprobs; ``_evaluate_logits``; ``num_output_tokens``;
  ``create_prompt``: the word cap lowered until the prompt fits ``context_size`` minus the answer);
  ``listwise_rankllm.py`` (``sliding_windows``, ``receive_permutation``: ids deduplicated, the missing
  ones appended in order); ``singleturn_listwise_inference_handler.py`` and
  ``listwise_inference_handler.py`` (prefix + body per candidate + suffix in one user turn after the
  system message; ``_clean_response``); ``src/rank_llm/rerank/inference_handler.py``
  (``_convert_doc_to_prompt_content``: ``Title: t Content: c``, ftfy, first 300 words, ``[n]`` to
  ``(n)``); ``src/rank_llm/2cr/msmarco-v1-passage.yaml`` (first_mistral: context 4096,
  ``--variable_passages --use_alpha --use_logits``).
- gangiswag/llm-reranker at 2d7cba423ad555064bdfc719313570b5f9525887:
  ``scripts/utils/rank_listwise_os_llm.py`` (the authors' prompt and logits path),
  ``scripts/utils/rankllm.py`` (``_replace_number``), ``scripts/utils/llm_util.py`` (system
  message, ``variable_passages=True``), ``bash/run_rerank_llm.sh`` (window 20, step 10, top 100).

Choices (each an option):

- ``prompt_style``: ``rank_llm`` (default) is rank_llm's template, the reference of the default
  checkpoint ``castorini/first_mistral`` (Mistral-7B-Instruct-v0.3, whose chat template folds the
  system text into the user turn); ``llm-reranker`` is the authors' wording for
  ``rryisthebest/First_Model`` (Zephyr-7B-beta): "a alphabetical identifier" (sic), a blank line
  after the prefix, "Only respond with ..." without "Answer concisely and directly and", and
  ``[A-z]`` bracket escaping in letters mode. Both keep their texts character for character.
- Each letter is scored as the one token the model's tokenizer gives it after ``[``
  (``token_logprobs``, full softmax; -inf outside ``top_k``, as a server listing its top 30 reports
  it). The references take the best of all listed tokens that decode to the letter; on the
  checkpoints' tokenizers that is the same token.
- ``identifiers: numbers`` (``[1]`` ..) with one next token only works for windows up to 9 (``10``
  is two tokens), as in the references; ``scoring: sequence`` instead sums the teacher-forced
  log-probabilities of each id's continuation (``1]``, ``10]``, ...: ``sequence_logprob``, local
  models only), for any window and either identifier style.
- The word cap is rebuilt with the reference's rule (lower by ``max(1, excess // (4 n))``) when
  the model has a tokenizer (local models) and the window is all text: prompt tokens counted as
  rank_llm does (``tokenizer.encode`` of the ftfy-fixed rendered prompt) against ``context_size``
  minus the answer's tokens (those of ``[A] > [B] > ...``, counted without special tokens: the
  reference's ``- 1`` for the BOS token). A server model (no tokenizer) or a window of pictures is
  not capped. A prompt that does not fit even with no passage words is an InputError (the window
  keeps its order, noted), where the reference would slice from the end.
- ftfy is applied to the query and to each passage (the reference fixes the whole rendered
  prompt; on these parts that is the same text).
- ``mode: generate``: greedy, at most ``max_new_tokens`` (default: the answer's tokens, as the
  reference's ``max_tokens``; the reference also forces that many with ``min_tokens``, which the
  backends do not offer). Bracketed ids are read (``[B]``, ``[12]``), after the last
  ``</think>``; a text of bare ids and separators only (``B > A > C``) is read too; numbers fall
  back to every whole number, as the reference's cleanup does.
- Page images (``use_images``): a candidate shown as a picture is the ``[A] `` label, the image,
  then the rest of its line (zero-shot: no checkpoint was trained on images).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from ftfy import fix_text

from mmrank.errors import InputError
from mmrank.mllm.base import check_generation_options
from mmrank.mllm.parsing import ParsedRanking, complete_order, usable_ids
from mmrank.rerankers.listwise import ListwiseLLMReranker
from mmrank.rerankers.llm_stage import first_words, merged_text, title_and_body

if TYPE_CHECKING:
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Hit, Item

FIRST_MODEL = "castorini/first_mistral"

RANKLLM_SYSTEM = ("You are RankLLM, an intelligent assistant that can rank passages based on their relevancy "
                  "to the query")

# rank_llm's templates as yaml.safe_load reads them (rank_zephyr_alpha_template.yaml, rank_zephyr_template.yaml).
RANK_ZEPHYR_ALPHA_PREFIX = (
    "I will provide you with {num} passages, each indicated by an alphabetical identifier []. Rank the passages "
    "based on their relevance to the search query: {query}.\n")
RANK_ZEPHYR_PREFIX = (
    "I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the passages "
    "based on their relevance to the search query: {query}.\n")
RANK_ZEPHYR_BODY = "[{rank}] {candidate}\n"
RANK_ZEPHYR_SUFFIX = (
    "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. All the "
    "passages should be included and listed using identifiers, in descending order of relevance. The output "
    "format should be [] > [], e.g., {example}, Answer concisely and directly and only respond with the ranking "
    "results, do not say any word or explain.")

# gangiswag/llm-reranker's _add_prefix_prompt / _add_post_prompt (variable_passages=True), "a alphabetical" sic;
# create_prompt writes f"{prefix}\n", hence the blank line.
LLM_RERANKER_PREFIX = (
    "I will provide you with {num} passages, each indicated by a {style} identifier []. Rank the passages based "
    "on their relevance to the search query: {query}.\n\n")
LLM_RERANKER_SUFFIX = (
    "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. All the "
    "passages should be included and listed using identifiers, in descending order of relevance. The output "
    "format should be [] > [], e.g., {example}, Only respond with the ranking results, do not say any word or "
    "explain.")

# ``[n]`` in a passage becomes ``(n)`` (rank_llm, llm-reranker in numbers mode); llm-reranker in letters mode
# rewrites ``[letters]`` with the character class [A-z] (which also spans [ \\ ] ^ _ `).
NUMBER_BRACKETS = r"\[(\d+)\]"
LETTER_BRACKETS = r"\[([A-z]+)\]"

Mode = Literal["single-token", "generate"]
Identifiers = Literal["letters", "numbers"]
Scoring = Literal["token", "sequence"]
PromptStyle = Literal["rank_llm", "llm-reranker"]
MODES = ("single-token", "generate")
IDENTIFIERS = ("letters", "numbers")
SCORINGS = ("token", "sequence")
PROMPT_STYLES = ("rank_llm", "llm-reranker")
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class ListwiseTemplate:
    """A single-turn listwise prompt in rank_llm's layout: ``system`` message, then one user turn of
    ``prefix`` (``{num}``, ``{query}``), ``body`` per candidate (``{rank}`` its id, ``{candidate}``
    its passage, ``{score}`` for InsertRank) and ``suffix``. ``escape`` is the pattern whose matches
    in a passage become ``(...)``; ``escape_query`` says whether the query is escaped too."""

    system: str
    prefix: str
    body: str
    suffix: str
    escape: str = NUMBER_BRACKETS
    escape_query: bool = True

    def user_text(self, num: int, query: str) -> tuple[str, str]:
        """The prefix and the suffix for ``num`` candidates and ``query``."""
        return self.prefix.format(num=num, query=query), self.suffix.format(num=num, query=query)

    def body_around(self, values: Mapping[str, Any]) -> tuple[str, str]:
        """The candidate's line before and after its passage, for the ``values`` of its placeholders."""
        before, _, after = self.body.partition("{candidate}")
        return before.format(**values), after.format(**values)


FIRST_TEMPLATES: dict[tuple[str, str], ListwiseTemplate] = {
    ("rank_llm", "letters"): ListwiseTemplate(
        RANKLLM_SYSTEM, RANK_ZEPHYR_ALPHA_PREFIX, RANK_ZEPHYR_BODY,
        RANK_ZEPHYR_SUFFIX.replace("{example}", "[B] > [A]")),
    ("rank_llm", "numbers"): ListwiseTemplate(
        RANKLLM_SYSTEM, RANK_ZEPHYR_PREFIX, RANK_ZEPHYR_BODY, RANK_ZEPHYR_SUFFIX.replace("{example}", "[2] > [1]")),
    ("llm-reranker", "letters"): ListwiseTemplate(
        RANKLLM_SYSTEM, LLM_RERANKER_PREFIX.replace("{style}", "alphabetical"), RANK_ZEPHYR_BODY,
        LLM_RERANKER_SUFFIX.replace("{example}", "[B] > [A]"), LETTER_BRACKETS, escape_query=False),
    ("llm-reranker", "numbers"): ListwiseTemplate(
        RANKLLM_SYSTEM, LLM_RERANKER_PREFIX.replace("{style}", "numerical"), RANK_ZEPHYR_BODY,
        LLM_RERANKER_SUFFIX.replace("{example}", "[2] > [1]"), NUMBER_BRACKETS, escape_query=False),
}


def passage_text(item: Item, words: int, escape: str = NUMBER_BRACKETS) -> str:
    """rank_llm's rendering of a candidate: ``Title: t Content: c`` (``c`` alone without a title),
    ftfy-fixed, its first ``words`` words, then ``[n]`` written ``(n)`` (``escape``)."""
    title, body = title_and_body(item)
    content = f"Title: {title} Content: {body}" if title else body
    return re.sub(escape, r"(\1)", first_words(fix_text(content.strip()), words))


def identifier_labels(identifiers: str, count: int) -> list[str]:
    """The ids of ``count`` candidates: ``A``, ``B``, ... or ``1``, ``2``, ..."""
    return list(LETTERS[:count]) if identifiers == "letters" else [str(n) for n in range(1, count + 1)]


def answer_text(labels: Sequence[str]) -> str:
    """The full answer for these ids in their order: ``[A] > [B] > ...``."""
    return " > ".join(f"[{label}]" for label in labels)


def answer_tokens(model: Any, labels: Sequence[str]) -> int:
    """Tokens of the full answer ``[A] > [B] > ...`` for ``model`` (without special tokens); 5 per
    id for a model without a tokenizer (a server)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return 5 * len(labels)
    return len(tokenizer.encode(answer_text(labels), add_special_tokens=False))


def prompt_tokens(model: Any, conversation: Conversation) -> int | None:
    """The prompt's tokens as rank_llm counts them (``tokenizer.encode`` of the ftfy-fixed rendered
    prompt); None when the model has no tokenizer or the conversation shows a picture."""
    if getattr(model, "tokenizer", None) is None or not hasattr(model, "prompt_text"):
        return None
    if not isinstance(conversation, str) and any(
            isinstance(message["content"], list) and any(part.get("type") == "image" for part in message["content"])
            for message in conversation):
        return None
    return len(model.tokenizer.encode(fix_text(model.prompt_text(conversation))))


def logprob_ranking(logprobs: Sequence[float], labels: Sequence[str]) -> ParsedRanking:
    """FIRST's order of a window from its ids' next-token log-probabilities: the ids with a finite
    value by descending log-probability (ties in incoming order), then the others (outside the top
    k) in incoming order. ``reasoning`` is the reference's result string (``[B]>[A]>...``)."""
    values = [float(value) for value in logprobs]
    ranked = sorted((index for index, value in enumerate(values) if np.isfinite(value)), key=lambda i: -values[i])
    if not ranked:
        return ParsedRanking(tuple(range(len(values))), (), False,
                             "no identifier among the model's most likely next tokens", "")
    ids = [index + 1 for index in ranked]
    return ParsedRanking(tuple(complete_order(ids, len(values))), tuple(ids), len(ids) == len(values), None,
                         ">".join(f"[{labels[index]}]" for index in ranked))


_BRACKETED = {"letters": re.compile(r"\[\s*([A-Z])\s*\]"), "numbers": re.compile(r"\[\s*(\d{1,6})\s*\]")}
_BARE = {"letters": re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])"), "numbers": re.compile(r"(?<![0-9])\d{1,6}(?![0-9])")}
_LETTERS_ONLY = re.compile(r"[\sA-Z>,;.\-\[\]()]*")  # bare letters are read only from a text of ids and separators
_THINK_END = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)


def parse_permutation(text: str, count: int, identifiers: str = "letters") -> ParsedRanking:
    """The order in a generated ``[C] > [A] > [B]`` answer of ``count`` candidates.

    Reads what follows the last ``</think>``; bracketed ids first (``[C]``, ``[12]``), else bare
    ids when the text is ids and separators only (letters) or any whole numbers (numbers, as the
    reference's cleanup). Ids out of range are dropped, repeats count once, the missing ones follow
    in incoming order; no usable id keeps the incoming order with the reason in ``failure``.
    ``reasoning`` is the text as generated.
    """
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}.")
    answer = _THINK_END.split(text)[-1]
    found = _BRACKETED[identifiers].findall(answer)
    if not found and (identifiers == "numbers" or _LETTERS_ONLY.fullmatch(answer)):
        found = _BARE[identifiers].findall(answer)
    if identifiers == "letters":
        ids = [LETTERS.index(letter) + 1 for letter in found]
    else:
        ids = [int(number) for number in found]
    given = usable_ids(ids, count)
    if not given:
        labels = identifier_labels(identifiers, count)
        reason = "empty output" if not answer.strip() else f"no identifier from [{labels[0]}] to [{labels[-1]}]"
        return ParsedRanking(tuple(range(count)), (), False, reason, text)
    return ParsedRanking(tuple(complete_order(given, count)), tuple(given), len(given) == count, None, text)


@dataclasses.dataclass(kw_only=True)
class RankLLMListwiseReranker(ListwiseLLMReranker):
    """What FIRST and InsertRank share: rank_llm's single-turn listwise prompt over sliding windows,
    read by single-token log-probabilities or by a generated permutation.

    ``mode``: ``single-token`` (one forward pass per window: the ids after ``[`` by log-probability,
    those outside the ``top_k`` most likely next tokens last in incoming order; None: no cut) or
    ``generate`` (greedy ``[B] > [A] > ...``, at most ``max_new_tokens``, default the tokens of the
    full answer). ``identifiers``: ``letters`` (``[A]``.., windows up to 26) or ``numbers``
    (``[1]``..). ``scoring`` (single-token mode): ``token`` reads one next token (numbers: windows up
    to 9), ``sequence`` sums the teacher-forced log-probabilities of each id's ``X]`` (local models).
    Passages: their first ``max_passage_words`` words, fewer when the prompt would exceed
    ``context_size`` tokens less the answer's (local models; None: no cap). Windows, batching and
    results as in :class:`~mmrank.rerankers.listwise.ListwiseLLMReranker`.
    """

    mode: Mode = "single-token"
    identifiers: Identifiers = "letters"
    scoring: Scoring = "token"
    top_k: int | None = 30
    max_new_tokens: int | None = None
    max_passage_words: int = 300
    context_size: int | None = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        for option, value, allowed in (("mode", self.mode, MODES), ("identifiers", self.identifiers, IDENTIFIERS),
                                       ("scoring", self.scoring, SCORINGS)):
            if value not in allowed:
                raise InputError(f"{option} must be one of {', '.join(allowed)}; got {value!r}.")
        if self.identifiers == "letters" and self.window > len(LETTERS):
            raise InputError(f"identifiers: letters labels at most {len(LETTERS)} candidates ([A] to [Z]); got "
                             f"window {self.window}. Use a smaller window or identifiers: numbers.")
        if self.mode == "single-token" and self.scoring == "token" and self.identifiers == "numbers" \
                and self.window > 9:
            raise InputError(
                f"identifiers: numbers with mode single-token reads one next token after '[', but [10] onwards "
                f"take two tokens ('1', '0'), so window {self.window} cannot be ranked that way: use window <= 9, "
                "identifiers: letters (FIRST's choice), or scoring: sequence.")
        if self.mode == "generate" and self.scoring != "token":
            raise InputError("scoring: sequence applies to mode single-token only (mode generate reads the "
                             "generated text); leave scoring at 'token'.")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be at least 1 (or None: no cut), got {self.top_k}.")
        if self.max_new_tokens is not None:
            check_generation_options(self.max_new_tokens, 0.0)
        if self.max_passage_words < 1:
            raise InputError(f"max_passage_words must be at least 1, got {self.max_passage_words}.")
        if self.context_size is not None and self.context_size < 1:
            raise InputError(f"context_size must be at least 1 (or None: no cap), got {self.context_size}.")

    # ------------------------------------------------------------------ prompt
    @abstractmethod
    def template(self) -> ListwiseTemplate:
        """The prompt this stage sends."""

    def body_values(self, hits: Sequence[Hit]) -> list[dict[str, Any]]:
        """Placeholder values of each candidate's line besides ``rank`` and ``candidate`` (none)."""
        return [{} for _ in hits]

    def window_conversation(self, model: VisionLanguageModel, question: str, hits: Sequence[Hit]) -> Conversation:
        """The system message and one user turn for a window of ``hits``, its passages at the
        longest word cap that fits (see the class docstring). InputError when a picture cannot be
        loaded or the prompt cannot fit."""
        budget = None
        if self.context_size is not None:
            budget = self.context_size - answer_tokens(model, identifier_labels(self.identifiers, len(hits)))
        words = self.max_passage_words
        while True:
            conversation = self._conversation(model, question, hits, words)
            used = None if budget is None else prompt_tokens(model, conversation)
            if used is None or used <= budget:
                return conversation
            if words == 0:
                raise InputError(f"The {self.name!r} prompt for {len(hits)} candidates takes {used} tokens even with "
                                 f"no passage words, more than context_size {self.context_size} less the answer; "
                                 "raise context_size or lower window.")
            words = max(0, words - max(1, (used - budget) // (len(hits) * 4)))

    def _conversation(self, model: VisionLanguageModel, question: str, hits: Sequence[Hit],
                      words: int) -> Conversation:
        template = self.template()
        query = fix_text(question)
        if template.escape_query:
            query = re.sub(NUMBER_BRACKETS, r"(\1)", query)
        prefix, suffix = template.user_text(len(hits), query)
        parts: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
        labels = identifier_labels(self.identifiers, len(hits))
        for label, hit, values in zip(labels, hits, self.body_values(hits), strict=True):
            before, after = template.body_around({"rank": label, **values})
            part = self.candidate_part(model, hit.item, passage_text(hit.item, words, template.escape))
            parts += [{"type": "text", "text": before}, part, {"type": "text", "text": after}]
        parts.append({"type": "text", "text": suffix})
        content = merged_text(parts)
        messages = [{"role": "system", "content": template.system}] if template.system else []
        return [*messages, {"role": "user", "content": content[0]["text"] if len(content) == 1 else content}]

    # ----------------------------------------------------------------- ranking
    def rank_windows(self, model: VisionLanguageModel, windows: Sequence[tuple[str, Sequence[Hit]]]
                     ) -> list[ParsedRanking]:
        conversations = [self.window_conversation(model, question, hits) for question, hits in windows]
        counts = [len(hits) for _, hits in windows]
        labels = identifier_labels(self.identifiers, max(counts))
        if self.mode == "generate":
            budget = self.max_new_tokens or answer_tokens(model, labels)
            generations = model.generate(conversations, max_new_tokens=budget, temperature=0.0)
            return [parse_permutation(generation.text, count, self.identifiers)
                    for generation, count in zip(generations, counts, strict=True)]
        rows = self._id_logprobs(model, conversations, labels)
        return [logprob_ranking(row[:count], labels[:count]) for row, count in zip(rows, counts, strict=True)]

    def _id_logprobs(self, model: Any, conversations: list[Conversation], labels: list[str]) -> np.ndarray:
        """Each window's log-probability of each id after ``[``: the next token, or (``scoring:
        sequence``) the teacher-forced sum over ``X]``."""
        method = "sequence_logprob" if self.scoring == "sequence" else "token_logprobs"
        if not hasattr(model, method):
            raise InputError(f"mode single-token needs a backend that gives {method}; "
                             f"{getattr(model, 'name', model)!r} does not: use a local model or an "
                             "OpenAI-compatible server, or mode: generate.")
        if self.scoring == "sequence":
            return model.sequence_logprob(conversations, [f"{label}]" for label in labels], assistant_prefix="[")
        return model.token_logprobs(conversations, labels, assistant_prefix="[", top_k=self.top_k)


@dataclasses.dataclass(kw_only=True)
class FirstReranker(RankLLMListwiseReranker):
    """FIRST (default ``castorini/first_mistral``; the authors' ``rryisthebest/First_Model`` reads
    ``prompt_style: llm-reranker``): single-token listwise reranking of the top ``depth`` (100)
    candidates in windows of 20, stride 10, or with ``mode: generate`` RankZephyr's generated
    permutation on the same prompt (e.g. ``castorini/rank_zephyr_7b_v1_full`` with
    ``identifiers: numbers``). Options as in :class:`RankLLMListwiseReranker`; ``prompt_style``
    picks the reference wording (see the module docstring)."""

    default_model: ClassVar[str | None] = FIRST_MODEL

    name: str = "first"
    prompt_style: PromptStyle = "rank_llm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_style not in PROMPT_STYLES:
            raise InputError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}; got {self.prompt_style!r}.")

    def template(self) -> ListwiseTemplate:
        return FIRST_TEMPLATES[self.prompt_style, self.identifiers]
