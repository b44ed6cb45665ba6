"""A vision-language model behind an OpenAI-compatible chat endpoint (vLLM, SGLang).

Images travel inside the request as ``data:image/png;base64,...`` URLs (or JPEG, smaller but
lossy). Requests go through the official ``openai`` SDK, which applies the timeout and retries
failed requests (connection errors, timeouts, 408/409/429/5xx) with exponential backoff: 0.5 s
doubling up to 8 s with jitter, or the server's ``Retry-After``.

``assistant_prefix`` is sent as a final assistant message with ``continue_final_message=True,
add_generation_prompt=False`` in the request body: vLLM's convention (SGLang accepts the same
fields) for continuing that message rather than starting a new one. The template may trim
trailing spaces of the prefix.

``choice_probability`` asks for one token with ``logprobs`` and ``top_logprobs``; a choice the
server does not list among its top tokens gets probability 0. vLLM caps ``top_logprobs`` at its
``--max-logprobs`` (20 by default).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mmrank.errors import InputError, MMRankError, ModelUnavailableError
from mmrank.images import open_rgb
from mmrank.mllm.base import (
    Conversation,
    Generation,
    Usage,
    check_conversations,
    check_generation_options,
    choice_variants,
    softmax_rows,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

_T = TypeVar("_T")
_IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


class OpenAICompatibleModel:
    """A chat model served over HTTP by vLLM or SGLang (OpenAI chat completions API).

    ``base_url`` is the server's address, with or without the ``/v1`` suffix. ``model`` is the
    served model name; None asks the server (``/v1/models``) and takes the first. ``api_key``
    defaults to ``$OPENAI_API_KEY``, else ``EMPTY`` (what vLLM expects when it has no key).
    ``timeout`` is in seconds per request; ``max_retries`` retries per request; ``concurrency``
    requests are in flight at once. ``max_pixels`` downsizes larger images (aspect ratio kept)
    before they are sent, so a pipeline's pixel budget means the same here as with the local
    backend; the server may bound them further (e.g. vLLM's ``--mm-processor-kwargs``).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        top_logprobs: int = 20,
        concurrency: int = 8,
        image_format: str = "png",
        max_pixels: int | None = None,
    ) -> None:
        if image_format not in _IMAGE_FORMATS:
            raise InputError(f"image_format must be 'png' or 'jpeg'; got {image_format!r}.")
        if max_pixels is not None and max_pixels < 1:
            raise InputError(f"max_pixels must be positive, got {max_pixels}.")
        if top_logprobs < 1 or concurrency < 1:
            raise InputError(f"top_logprobs, concurrency must be positive: {top_logprobs}, {concurrency}.")
        from mmrank.optional import require

        openai = require("openai", "The OpenAI-compatible MLLM backend (vLLM, SGLang servers)")
        self.base_url = _api_url(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.image_format = image_format
        self.max_pixels = max_pixels
        self.usage = Usage()
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )
        self.model: str | None = model  # None while the server is asked (error messages read it)
        self.model = model or self._first_served_model()
        self.name = f"openai:{self.model}@{self.base_url}"

    def __repr__(self) -> str:
        return f"OpenAICompatibleModel({self.name!r})"

    def _first_served_model(self) -> str:
        with self._server_errors():
            served = [entry.id for entry in self._client.models.list()]
        if not served:
            raise ModelUnavailableError(f"The MLLM server at {self.base_url} serves no model.")
        return served[0]

    # --------------------------------------------------------------- generation
    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        assistant_prefix: str = "",
    ) -> list[Generation]:
        """One chat completion per conversation (``concurrency`` at a time); greedy at temperature 0."""
        conversations = check_conversations(conversations)
        check_generation_options(max_new_tokens, temperature)

        def complete(conversation: Conversation) -> Generation:
            response = self._complete(
                conversation, assistant_prefix, max_tokens=max_new_tokens, temperature=temperature
            )
            usage = response.usage
            return Generation(
                response.choices[0].message.content or "",
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
            )

        results = self._map(complete, conversations)
        self.usage.input_tokens += sum(result.input_tokens for result in results)
        self.usage.generated_tokens += sum(result.generated_tokens for result in results)
        return results

    # ------------------------------------------------------------------ scoring
    def choice_probability(
        self, conversations: Sequence[Conversation], choices: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray:
        """P(choice) for the next token, softmaxed over the choices only, from ``top_logprobs``.

        A choice's log-probability combines its spellings with and without a leading space
        (log-sum-exp); a choice absent from the top tokens gets probability 0. InputError when
        none of the choices is among them (raise ``top_logprobs``).
        """
        conversations = check_conversations(conversations)
        variants = choice_variants(choices)

        def score(conversation: Conversation) -> tuple[np.ndarray, int]:
            response = self._complete(
                conversation, assistant_prefix, max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=self.top_logprobs,
            )
            logprobs = response.choices[0].logprobs
            if logprobs is None or not logprobs.content:
                raise MMRankError(f"The MLLM server at {self.base_url} returned no logprobs.")
            top = [(entry.token, entry.logprob) for entry in logprobs.content[0].top_logprobs]
            prompt_tokens = response.usage.prompt_tokens if response.usage else 0
            return choice_log_probs(top, variants, self.top_logprobs), prompt_tokens

        scored = self._map(score, conversations)
        self.usage.input_tokens += sum(tokens for _, tokens in scored)
        if not scored:
            return np.zeros((0, len(variants)), dtype=np.float64)
        return softmax_rows(np.stack([row for row, _ in scored]))

    # ----------------------------------------------------------------- requests
    def _map(self, request: Callable[[Conversation], _T], conversations: list[Conversation]) -> list[_T]:
        """``request`` over every conversation, ``concurrency`` at a time, results in order."""
        self.usage.calls += 1
        if not conversations:
            return []
        with self._server_errors(), ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:
            results = list(pool.map(request, conversations))
        self.usage.forward_passes += len(conversations)
        return results

    def _complete(self, conversation: Conversation, assistant_prefix: str, **options: Any) -> ChatCompletion:
        messages = [self._message(message) for message in conversation]
        if assistant_prefix:
            messages.append({"role": "assistant", "content": assistant_prefix})
            options["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return self._client.chat.completions.create(model=self.model, messages=messages, **options)

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message with its image parts as data URLs and its text parts as OpenAI text parts."""
        content = message["content"]
        if isinstance(content, str):
            return {"role": message["role"], "content": content}
        parts = []
        for part in content:
            if part.get("type") == "image" or "image" in part:
                parts.append({"type": "image_url", "image_url": {"url": self._data_url(part.get("image"))}})
            elif "text" in part:
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise InputError(f"A message part is neither an image nor a text: {part!r}.")
        return {"role": message["role"], "content": parts}

    def _data_url(self, image: Any) -> str:
        if image is None:
            raise InputError("An image part has no 'image' (a PIL image or a path).")
        buffer = io.BytesIO()
        picture = open_rgb(image)
        if self.max_pixels is not None and picture.width * picture.height > self.max_pixels:
            scale = (self.max_pixels / (picture.width * picture.height)) ** 0.5
            size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
            picture = picture.resize(size, resample=3)  # bicubic
        picture.save(buffer, format=_IMAGE_FORMATS[self.image_format])
        return f"data:image/{self.image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"

    @contextmanager
    def _server_errors(self) -> Iterator[None]:
        """The SDK's connection and HTTP errors as mmrank errors that say what to do."""
        import openai

        try:
            yield
        except openai.APIConnectionError as exc:
            cause = "timed out" if isinstance(exc, openai.APITimeoutError) else _cause(exc)
            raise ModelUnavailableError(
                f"Cannot reach the MLLM server at {self.base_url} ({cause}; {self.max_retries} "
                f"retries, timeout {self.timeout:g} s): is it running? Start one with e.g. "
                "`vllm serve Qwen/Qwen2.5-VL-3B-Instruct` and pass its address, such as "
                "http://localhost:8000/v1."
            ) from exc
        except openai.NotFoundError as exc:
            what = f"does not serve the model {self.model!r}" if self.model else "has no /v1/models"
            raise ModelUnavailableError(
                f"The MLLM server at {self.base_url} {what} ({exc.message}). Check the address "
                "(the API lives under /v1) and the served model name (/v1/models lists them; "
                "model=None takes the first)."
            ) from exc
        except openai.APIStatusError as exc:
            raise MMRankError(
                f"The MLLM server at {self.base_url} answered {exc.status_code}: {exc.message}"
            ) from exc


def choice_log_probs(
    top: Sequence[tuple[str, float]], variants: list[tuple[str, str]], top_logprobs: int
) -> np.ndarray:
    """Each choice's log-probability from a next-token ``top`` list of (token text, logprob).

    Tokens of the same text and the spellings of one choice add up (log-sum-exp); a choice with
    none listed gets -inf. InputError when no choice is listed: ``top_logprobs`` was too small.
    """
    by_text: dict[str, float] = {}
    for token, logprob in top:
        by_text[token] = float(np.logaddexp(by_text.get(token, -np.inf), logprob))
    scores = np.array([np.logaddexp.reduce([by_text.get(t, -np.inf) for t in texts]) for texts in variants])
    if np.all(np.isneginf(scores)):
        raise InputError(
            f"None of the choices {[spellings[0] for spellings in variants]} is among the server's top "
            f"{top_logprobs} next tokens (those were {[token for token, _ in top][:10]}...). Raise "
            "top_logprobs (vLLM allows up to its --max-logprobs, 20 by default), or check that the "
            "choices are single tokens of the served model."
        )
    return scores


def _api_url(base_url: str) -> str:
    """The address with the ``/v1`` suffix the SDK expects."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection error, e.g. 'Connection refused'."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).strip() or type(exc).__name__
