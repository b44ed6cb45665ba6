"""What every language model backend promises, for vision-language and text-only chat models
alike: generation, choice probabilities, next-token log-probabilities and teacher-forced sequence
log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmrank.errors import InputError

Conversation = list[dict[str, Any]] | str
"""Chat messages in the Qwen/OpenAI shape: ``[{"role": "system" | "user" | "assistant", "content":
str | [{"type": "image", "image": PIL image or path}, {"type": "text", "text": "..."}]}]``; or a
``str``: a whole prompt already written out (special tokens included, e.g. ProRank's hard-coded
Qwen wrapper), which the backend tokenizes as it is, without a chat template."""

TopTokens = tuple[tuple[str, float], ...]
"""One decoding step's most likely next tokens: (token text, log-probability), most likely first."""


@dataclass(frozen=True)
class Generation:
    """One generated answer and its token counts (prompt tokens include image tokens).

    When ``generate`` is asked for ``top_logprobs=k``: ``tokens`` holds the text of each generated
    token (special tokens included, so that it lines up with the steps) and ``top_logprobs`` the
    k most likely tokens at each step, with log-probabilities from the full softmax. Otherwise both
    are empty.
    """

    text: str
    input_tokens: int
    generated_tokens: int
    tokens: tuple[str, ...] = ()
    top_logprobs: tuple[TopTokens, ...] = ()


@dataclass
class Usage:
    """Cumulative counters of a backend, for benchmarks.

    ``calls`` counts calls to the backend (each may hold many conversations), ``prompts`` the
    conversations (or continuation rows) sent, ``forward_passes`` model forward passes (prefill
    batches plus decoding steps) for local backends and HTTP requests for server backends.
    """

    calls: int = 0
    prompts: int = 0
    forward_passes: int = 0
    input_tokens: int = 0
    generated_tokens: int = 0

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.calls = self.prompts = self.forward_passes = self.input_tokens = self.generated_tokens = 0


@runtime_checkable
class VisionLanguageModel(Protocol):
    """A chat model over images and text (``accepts_images`` False: text only).

    ``assistant_prefix`` is text the assistant turn already starts with (after the generation
    prompt), e.g. ``{"ranking": [`` so that the next token is a number. Temperature 0 is greedy.
    ``choice_probability`` returns, for each conversation, the softmax over the given choices'
    next-token logits only (not over the vocabulary): a (len(conversations), len(choices)) float64
    array whose rows sum to 1.
    """

    name: str
    usage: Usage
    accepts_images: bool

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        assistant_prefix: str = "",
        top_logprobs: int = 0,
    ) -> list[Generation]: ...

    def choice_probability(
        self, conversations: Sequence[Conversation], choices: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray: ...


@runtime_checkable
class ScoringLanguageModel(VisionLanguageModel, Protocol):
    """A backend that also gives log-probabilities of named tokens and of whole continuations.

    ``token_logprobs``: for each conversation, the log-probability of each of ``tokens`` (each
    exactly one token after ``assistant_prefix``; InputError otherwise) as the next token, from the
    softmax over the whole vocabulary (not renormalised): a (len(conversations), len(tokens))
    float64 array. With ``top_k``, a token outside the vocabulary's ``top_k`` most likely gets
    -inf, as a server that only lists its top tokens reports it.

    ``sequence_logprob``: for each conversation and each of ``continuations``, the sum of the
    teacher-forced log-probabilities of the continuation's tokens after ``assistant_prefix``
    (identifiers of more than one token such as ``[10]``): a (len(conversations),
    len(continuations)) float64 array.
    """

    def token_logprobs(
        self, conversations: Sequence[Conversation], tokens: Sequence[str], *, assistant_prefix: str = "",
        top_k: int | None = None,
    ) -> np.ndarray: ...

    def sequence_logprob(
        self, conversations: Sequence[Conversation], continuations: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray: ...


def check_conversations(conversations: Sequence[Conversation]) -> list[Conversation]:
    """The conversations as a list; InputError for a single conversation or malformed messages (a
    conversation may also be a whole prompt as a non-empty string)."""
    if isinstance(conversations, (str, dict)) or (conversations and isinstance(conversations[0], dict)):
        raise InputError("Expected a list of conversations (lists of messages); got a single conversation.")
    for index, conversation in enumerate(conversations):
        if isinstance(conversation, str):
            if not conversation:
                raise InputError(f"Conversation {index} is an empty prompt.")
            continue
        if not conversation or not all(
            isinstance(message, dict) and {"role", "content"} <= message.keys() for message in conversation
        ):
            raise InputError(
                f"Conversation {index} is not a non-empty list of messages with 'role' and 'content'."
            )
    return list(conversations)


def check_generation_options(max_new_tokens: int, temperature: float, top_logprobs: int = 0) -> None:
    """InputError unless at least one new token is asked for at a non-negative temperature (and
    ``top_logprobs`` is not negative)."""
    if max_new_tokens < 1 or temperature < 0 or top_logprobs < 0:
        raise InputError(
            f"Need max_new_tokens >= 1, temperature >= 0 and top_logprobs >= 0; got {max_new_tokens}, "
            f"{temperature} and {top_logprobs}."
        )


def check_tokens(tokens: Sequence[str], what: str = "tokens") -> list[str]:
    """The token texts as a list; InputError for none, an empty one or repeats."""
    if isinstance(tokens, str) or len(tokens) == 0 or not all(isinstance(token, str) and token for token in tokens):
        raise InputError(f"{what} must be a non-empty list of non-empty strings; got {tokens!r}.")
    if len(set(tokens)) != len(tokens):
        raise InputError(f"{what} must be different strings; got {list(tokens)!r}.")
    return list(tokens)


def choice_variants(choices: Sequence[str]) -> list[tuple[str, str]]:
    """Each choice's spellings as a next token: the word itself and with one leading space.

    InputError for no choices, a blank choice, or two choices that are the same word.
    """
    if isinstance(choices, str) or len(choices) == 0:
        raise InputError(f"choices must be a non-empty list of words; got {choices!r}.")
    words = [choice.strip() for choice in choices]
    if not all(words):
        raise InputError(f"choices must not be blank; got {list(choices)!r}.")
    if len(set(words)) != len(words):
        raise InputError(f"choices must be different words; got {list(choices)!r}.")
    return [(word, f" {word}") for word in words]


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; a row of -inf everywhere but one entry gives a one-hot row."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)
