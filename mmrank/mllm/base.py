"""What every vision-language model backend promises: generation and choice probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmrank.errors import InputError

Conversation = list[dict[str, Any]]
"""Chat messages in the Qwen/OpenAI shape: ``[{"role": "system" | "user" | "assistant", "content":
str | [{"type": "image", "image": PIL image or path}, {"type": "text", "text": "..."}]}]``."""


@dataclass(frozen=True)
class Generation:
    """One generated answer and its token counts (prompt tokens include image tokens)."""

    text: str
    input_tokens: int
    generated_tokens: int


@dataclass
class Usage:
    """Cumulative counters of a backend, for benchmarks.

    ``forward_passes`` counts model forward passes (prefill batches plus decoding steps) for local
    backends and HTTP requests for server backends.
    """

    calls: int = 0
    forward_passes: int = 0
    input_tokens: int = 0
    generated_tokens: int = 0

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.calls = self.forward_passes = self.input_tokens = self.generated_tokens = 0


@runtime_checkable
class VisionLanguageModel(Protocol):
    """A chat model over images and text.

    ``assistant_prefix`` is text the assistant turn already starts with (after the generation
    prompt), e.g. ``{"ranking": [`` so that the next token is a number. Temperature 0 is greedy.
    ``choice_probability`` returns, for each conversation, the softmax over the given choices'
    next-token logits only (not over the vocabulary): a (len(conversations), len(choices)) float64
    array whose rows sum to 1.
    """

    name: str
    usage: Usage

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        assistant_prefix: str = "",
    ) -> list[Generation]: ...

    def choice_probability(
        self, conversations: Sequence[Conversation], choices: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray: ...


def check_conversations(conversations: Sequence[Conversation]) -> list[Conversation]:
    """The conversations as a list; InputError for a single conversation or malformed messages."""
    if isinstance(conversations, (str, dict)) or (conversations and isinstance(conversations[0], dict)):
        raise InputError("Expected a list of conversations (lists of messages); got a single conversation.")
    for index, conversation in enumerate(conversations):
        if not conversation or not all(
            isinstance(message, dict) and {"role", "content"} <= message.keys() for message in conversation
        ):
            raise InputError(
                f"Conversation {index} is not a non-empty list of messages with 'role' and 'content'."
            )
    return list(conversations)


def check_generation_options(max_new_tokens: int, temperature: float) -> None:
    """InputError unless at least one new token is asked for at a non-negative temperature."""
    if max_new_tokens < 1 or temperature < 0:
        raise InputError(
            f"Need max_new_tokens >= 1 and temperature >= 0; got {max_new_tokens} and {temperature}."
        )


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
