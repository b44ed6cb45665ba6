"""Qwen3-Reranker: pointwise yes/no relevance from the next-token logits ("Qwen3 Embedding: Advancing
Text Embedding and Reranking Through Foundation Models", Zhang et al. 2025; Hugging Face model cards
``Qwen/Qwen3-Reranker-{0.6B,4B,8B}``).

Each candidate is one conversation: a fixed system turn asking for "yes" or "no", the user turn
``<Instruct>: i\\n<Query>: q\\n<Document>: d`` and the assistant turn already opened with an empty
think block, ``<think>\\n\\n</think>\\n\\n``. The score is P(yes) softmaxed over the two answer
tokens only: sigmoid(l_yes - l_no), read with ``token_logprobs(..., ["yes", "no"])`` (full-softmax
log-probabilities, whose difference is the logits' difference). One forward pass per candidate, no
generation.

Reference read: QwenLM/Qwen3-Embedding at f4ad0c434c0e3534494e26a4a6bdfd8ab1431968, ``README.md``
("Reranker Model / Transformers Usage": the snippet of the Hugging Face model card, whose own copy
was not in any store here) and ``examples/qwen3_reranker_transformers.py``: ``prefix`` /
``suffix`` strings written by hand around ``format_instruction``'s text, the content tokenized
alone and cut (``truncation='longest_first'``: its first tokens kept) at ``max_length - len(prefix
tokens) - len(suffix tokens)`` with ``max_length = 8192``, ids concatenated, left-padded; the score
``log_softmax([l_no, l_yes])[1].exp()``.

Choices (each an option where there is one):

- The conversation is written as messages (system, user) with ``<think>\\n\\n</think>\\n\\n`` as
  the assistant prefix. Through Qwen3's chat template (which the checkpoints ship) they render to
  the card's text byte for byte (tested on the tiny Qwen3 fixture), and as messages they also reach
  a server (vLLM) and a vision-language model, which a written-out string would not. Leave the
  template's ``enable_thinking`` unset: set to false it writes the empty think block itself, and
  the prefix would repeat it.
- ``max_length`` (8192): the user content is cut at its first ``max_length - prefix - suffix``
  tokens of the model's tokenizer (the card's prefix and suffix counted with the same tokenizer),
  decoded back to text; a server model, whose tokenizer is not here, has the document cut at as
  many words instead. A candidate shown as a picture is not cut (its image tokens are the
  backend's).
- ``instruction``: the card's default, "Given a web search query, retrieve relevant passages that
  answer the query". (``examples/qwen3_reranker_transformers.py`` defaults to "Given the user
  query, retrieval the relevant passages", sic; give it as ``instruction`` to match that script.)
- A candidate's text is its title and body joined by a space (the body alone without a title).
- When neither "yes" nor "no" is among a server's listed top tokens (log-probability -inf for
  both), the candidate is not scored, with a note; when one is missing it scores 0 or 1.
- The card's vLLM variant differs: messages through ``apply_chat_template(...,
  add_generation_prompt=False, enable_thinking=False)`` with ``\\n\\n`` between ``<Instruct>``,
  ``<Query>`` and ``<Document>``, the token ids cut at ``max_length`` before the suffix is added,
  one generated token restricted to yes/no (``allowed_token_ids``) with 20 logprobs, and a missing
  logprob floored at -10. The reference here is the transformers variant.
- Page images: the Qwen3-VL-Reranker family scores the same way (yes/no after the same kind of
  prompt), so a candidate that is a page or an image is shown as its picture in place of the
  document text when the model reads images (``use_images``).

The helpers at the end (:func:`document_text`, :func:`cut_to_tokens`, :func:`ask_each`) are shared
with the ERank and ProRank stages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.errors import InputError
from mmrank.rerankers.base import at_least_one
from mmrank.rerankers.llm_stage import PointwiseLLMReranker, first_words, merged_text, title_and_body

if TYPE_CHECKING:
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.rerankers.llm_stage import LLMReranker
    from mmrank.types import Hit, Item

QWEN3_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"

# README.md's transformers snippet at f4ad0c4, character for character.
QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')
QWEN3_USER = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_PREFIX = f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
THINK_PREFIX = "<think>\n\n</think>\n\n"  # the assistant turn's start: the end of QWEN3_SUFFIX
ANSWER_TOKENS = ("yes", "no")

NO_TEXT_NOTE = "not scored: no text to show; kept its place after the scored hits"

Verdict = tuple[float | None, str | None]


@dataclasses.dataclass(kw_only=True)
class Qwen3Reranker(PointwiseLLMReranker):
    """Reorders the top ``depth`` (100) candidates by Qwen3-Reranker's P(yes) (see the module
    docstring). ``instruction``: the ``<Instruct>`` line. ``max_length``: the prompt's token budget
    (8192). ``batch_size``: candidates per model call (the backend splits them into its own
    batches). Other options as in :class:`~mmrank.rerankers.llm_stage.LLMReranker`.

    Candidates with nothing to show (no text, and no picture for this model) or whose picture does
    not load are not scored: they keep their place after the scored ones, with a note.
    """

    default_model: ClassVar[str | None] = QWEN3_RERANKER_MODEL

    name: str = "qwen3-reranker"
    depth: int = 100
    instruction: str = QWEN3_INSTRUCTION
    max_length: int = 8192

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise InputError(f"instruction must be a non-empty text; got {self.instruction!r}.")
        at_least_one("max_length", self.max_length)

    def conversation(self, model: VisionLanguageModel, question: str, item: Item) -> Conversation:
        """The system and user messages about ``item`` (its picture or its text, cut to fit
        ``max_length``); the assistant turn then starts with :data:`THINK_PREFIX`."""
        before = QWEN3_USER.format(instruction=self.instruction, query=question, doc="")
        if self.shows_picture(model, item):
            user: str | list[dict[str, Any]] = merged_text(
                [{"type": "text", "text": before}, self.candidate_part(model, item, "")])
        else:
            user = self._content(model, before, document_text(item))
        return [{"role": "system", "content": QWEN3_SYSTEM}, {"role": "user", "content": user}]

    def _content(self, model: VisionLanguageModel, before: str, document: str) -> str:
        """``before + document`` cut at the card's content budget: tokens with a tokenizer here,
        the document's words for a server."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            return before + cut_to_tokens(None, document, self.max_length)
        fixed = len(tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)) + len(
            tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False))
        if self.max_length <= fixed:
            raise InputError(f"max_length {self.max_length} leaves no room for the content after the "
                             f"{fixed} tokens of the fixed prompt; raise it (the card uses 8192).")
        return cut_to_tokens(model, before + document, self.max_length - fixed)

    def score_candidates(self, model: VisionLanguageModel, questions: Sequence[str],
                         hits: Sequence[Hit]) -> list[Verdict]:
        asked, conversations, verdicts = ask_each(self, model, questions, hits, self.conversation)
        if conversations:
            logprobs = model.token_logprobs(conversations, list(ANSWER_TOKENS), assistant_prefix=THINK_PREFIX)
            for index, (yes, no) in zip(asked, logprobs):
                verdicts[index] = yes_probability(float(yes), float(no))
        return verdicts


def yes_probability(yes: float, no: float) -> Verdict:
    """(P(yes) over the two answer tokens, None) from their log-probabilities; (None, why) when
    both are -inf (neither among a server's listed tokens)."""
    if yes == no == -math.inf:
        return None, ("not scored: neither 'yes' nor 'no' among the model's top tokens; kept its place after the "
                      "scored hits")
    return sigmoid(yes - no), None


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow (0 at -inf, 1 at +inf)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


# ------------------------------------------------------------------ shared by the pointwise LLM stages
def document_text(item: Item) -> str:
    """The candidate as the pointwise LLM stages show it: ``title body`` (the body alone without a
    title; BEIR items hold ``title\\n\\nbody``)."""
    title, body = title_and_body(item)
    return f"{title} {body}" if title else body


def cut_to_tokens(model: Any, text: str, count: int | None) -> str:
    """``text`` cut to its first ``count`` tokens of ``model``'s tokenizer (decoded back to text),
    or to ``count`` words for a model without a tokenizer here (a server); unchanged when it is
    not longer (or ``count`` is None)."""
    if count is None:
        return text
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return first_words(text, count) if len(text.split()) > count else text
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= count:
        return text
    return tokenizer.decode(ids[:count], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def ask_each(stage: LLMReranker, model: VisionLanguageModel, questions: Sequence[str], hits: Sequence[Hit],
             build: Callable[[VisionLanguageModel, str, Item], Any]) -> tuple[list[int], list[Any], list[Verdict]]:
    """What to send for ``hits`` (``build(model, question, item)``: a conversation, or a stage's own
    input): the indices asked, what ``build`` gave for them, and a verdict per hit: ``(None, note)``
    for those that cannot be asked (no text and no picture for this model; a picture that does not
    load), ``(None, None)`` to fill in for the others."""
    asked: list[int] = []
    conversations: list[Any] = []
    verdicts: list[Verdict] = [(None, None)] * len(hits)
    for index, (question, hit) in enumerate(zip(questions, hits, strict=True)):
        if not (stage.shows_picture(model, hit.item) or hit.item.has_text):
            verdicts[index] = (None, NO_TEXT_NOTE)
            continue
        try:
            conversations.append(build(model, question, hit.item))
        except (InputError, OSError) as error:
            verdicts[index] = (None, f"not scored: {error}; kept its place after the scored hits")
            continue
        asked.append(index)
    return asked, conversations, verdicts
