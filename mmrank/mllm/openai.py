"""A vision-language model behind an OpenAI-compatible chat endpoint (vLLM, SGLang).

Images travel inside the request as ``data:image/png;base64,...`` URLs (or JPEG, smaller but
lossy). Requests go through the official ``openai`` SDK, which applies the timeout and retries
failed requests (connection errors, timeouts, 408/409/429/5xx) with exponential backoff: 0.5 s
doubling up to 8 s, less up to a quarter at random, or what the server's ``Retry-After`` asks
(up to two minutes); with the default 3 retries a failing request is given up after waiting about
3.5 s in all.

What is left after the retries is one line each, never a traceback: a server that cannot be
reached, or that answers with an HTTP error, raises ModelUnavailableError naming the server, the
status and the server's message; a reply that is not what the protocol promises raises
ModelReplyError (a ModelUnavailableError). The SDK parses leniently (an HTML page comes back as a
string, malformed JSON as a bare JSONDecodeError, missing fields as None), so the replies are read
here from their raw bodies and checked: a JSON object, ``choices[0].message.content`` (a string
or null), and for scores ``choices[0].logprobs.content[0].top_logprobs`` (tokens and their
log-probabilities); ``usage`` is optional. A stage with ``on_unavailable: keep-order`` then keeps
the incoming order of the rankings concerned (see :class:`~mmrank.mllm.handle.ModelHandle`).

``assistant_prefix`` is sent as a final assistant message with ``continue_final_message=True,
add_generation_prompt=False`` in the request body: vLLM's convention (SGLang accepts the same
fields) for continuing that message rather than starting a new one. The template may trim
trailing spaces of the prefix.

``choice_probability`` and ``token_logprobs`` ask for one token with ``logprobs`` and
``top_logprobs``; a choice or token the server does not list among its top tokens gets probability
0 (log-probability -inf, logged at debug level). vLLM caps ``top_logprobs`` at its
``--max-logprobs`` (20 by default): a FIRST window of 20 labels needs every one of them listed, so
start vLLM with a higher ``--max-logprobs`` and raise ``top_logprobs`` to match.
``generate(top_logprobs=k)`` reads each generated token's alternatives the same way.

Not over HTTP: ``sequence_logprob`` (the chat API does not score a given continuation) and
prompts written out as strings (the server applies its own chat template); both raise InputError
that says to use a local model. ``chat_template_options`` travel as vLLM's
``chat_template_kwargs``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from mmrank.errors import InputError, ModelReplyError, ModelUnavailableError
from mmrank.images import data_url, open_rgb
from mmrank.mllm.base import (
    Conversation,
    Generation,
    Usage,
    check_conversations,
    check_generation_options,
    check_tokens,
    choice_variants,
    softmax_rows,
)

_T = TypeVar("_T")
_IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
_COMPLETION = "an OpenAI chat completion"
_MODEL_LIST = "an OpenAI model list"
logger = logging.getLogger("mmrank")


class OpenAICompatibleModel:
    """A chat model served over HTTP by vLLM or SGLang (OpenAI chat completions API).

    ``base_url`` is the server's address, with or without the ``/v1`` suffix. ``model`` is the
    served model name; None asks the server (``/v1/models``) and takes the first. ``api_key``
    defaults to ``$OPENAI_API_KEY``, else ``EMPTY`` (what vLLM expects when it has no key).
    ``timeout`` is in seconds per request; ``max_retries`` (default 3) retries a request that
    could not connect, timed out or was answered 408, 409, 429 or 5xx, with exponential backoff
    (see the module docstring); ``concurrency`` requests are in flight at once, and when one fails
    after its retries the requests not yet sent are dropped. ``max_pixels`` downsizes larger images
    (aspect ratio kept) before they are sent, so a pipeline's pixel budget means the same here as
    with the local backend; the server may bound them further (e.g. vLLM's
    ``--mm-processor-kwargs``).

    Raises ModelUnavailableError when the server cannot be reached or answers an HTTP error (after
    the retries), and ModelReplyError when its reply is not an OpenAI chat completion (or model
    list) as promised.
    """

    accepts_images = True  # the server decides: a text-only model answers 400

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        top_logprobs: int = 20,
        concurrency: int = 8,
        image_format: str = "png",
        max_pixels: int | None = None,
        chat_template_options: dict[str, Any] | None = None,
    ) -> None:
        if image_format not in _IMAGE_FORMATS:
            raise InputError(f"image_format must be 'png' or 'jpeg'; got {image_format!r}.")
        if max_pixels is not None and max_pixels < 1:
            raise InputError(f"max_pixels must be positive, got {max_pixels}.")
        if top_logprobs < 1 or concurrency < 1:
            raise InputError(f"top_logprobs, concurrency must be positive: {top_logprobs}, {concurrency}.")
        if not isinstance(max_retries, int) or max_retries < 0 or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InputError(f"Need max_retries >= 0 and timeout > 0 (seconds); got {max_retries!r} and {timeout!r}.")
        from mmrank.optional import require

        openai = require("openai", "The OpenAI-compatible MLLM backend (vLLM, SGLang servers)")
        self.base_url = _api_url(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.image_format = image_format
        self.max_pixels = max_pixels
        self.chat_template_options = dict(chat_template_options or {})
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
            reply = self._reply(self._client.models.with_raw_response.list(), _MODEL_LIST)
        served = reply.get("data")
        if not isinstance(served, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("id"), str) for entry in served
        ):
            raise self._bad_reply(_MODEL_LIST, f"no 'data' list of models with an 'id' ({_excerpt(reply)})")
        if not served:
            raise ModelUnavailableError(f"The MLLM server at {self.base_url} serves no model.")
        return served[0]["id"]

    # --------------------------------------------------------------- generation
    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        assistant_prefix: str = "",
        top_logprobs: int = 0,
    ) -> list[Generation]:
        """One chat completion per conversation (``concurrency`` at a time); greedy at temperature 0."""
        conversations = check_conversations(conversations)
        check_generation_options(max_new_tokens, temperature, top_logprobs)
        options: dict[str, Any] = {"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}

        def complete(conversation: Conversation) -> Generation:
            reply = self._complete(
                conversation, assistant_prefix, max_tokens=max_new_tokens, temperature=temperature, **options
            )
            choice = self._choice(reply)
            steps = self._steps(choice) if top_logprobs else []
            return Generation(
                choice["message"]["content"] or "", _tokens(reply, "prompt_tokens"),
                _tokens(reply, "completion_tokens"), tuple(token for token, _ in steps),
                tuple(top for _, top in steps),
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
            reply = self._complete(
                conversation, assistant_prefix, max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=self.top_logprobs,
            )
            top = self._top_logprobs(self._choice(reply))
            return choice_log_probs(top, variants, self.top_logprobs), _tokens(reply, "prompt_tokens")

        scored = self._map(score, conversations)
        self.usage.input_tokens += sum(tokens for _, tokens in scored)
        if not scored:
            return np.zeros((0, len(variants)), dtype=np.float64)
        return softmax_rows(np.stack([row for row, _ in scored]))

    def token_logprobs(
        self, conversations: Sequence[Conversation], tokens: Sequence[str], *, assistant_prefix: str = "",
        top_k: int | None = None,
    ) -> np.ndarray:
        """Log P(token) of each of ``tokens`` (exact token texts) as the next token, read from the
        server's ``top_logprobs`` (at most ``top_k`` of them): -inf for a token not listed."""
        conversations = check_conversations(conversations)
        tokens = check_tokens(tokens)
        listed = min(self.top_logprobs, top_k) if top_k is not None else self.top_logprobs

        def score(conversation: Conversation) -> tuple[np.ndarray, int]:
            reply = self._complete(conversation, assistant_prefix, max_tokens=1, temperature=0.0,
                                   logprobs=True, top_logprobs=listed)
            by_text: dict[str, float] = {}
            for token, logprob in self._top_logprobs(self._choice(reply)):
                by_text.setdefault(token, logprob)
            missing = [token for token in tokens if token not in by_text]
            if missing:
                logger.debug("%s: %s not among the top %d next tokens; their log-probability is -inf",
                             self.name, missing, listed)
            return np.array([by_text.get(token, -np.inf) for token in tokens]), _tokens(reply, "prompt_tokens")

        scored = self._map(score, conversations)
        self.usage.input_tokens += sum(count for _, count in scored)
        return np.stack([row for row, _ in scored]) if scored else np.zeros((0, len(tokens)), dtype=np.float64)

    def sequence_logprob(
        self, conversations: Sequence[Conversation], continuations: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray:
        """Not available over the chat API: InputError."""
        raise InputError(f"{self.name} cannot score given continuations (the chat completions API only scores "
                         "what it generates): run the model locally, or use single-token identifiers.")

    # ----------------------------------------------------------------- requests
    def _map(self, request: Callable[[Conversation], _T], conversations: list[Conversation]) -> list[_T]:
        """``request`` over every conversation, ``concurrency`` at a time, results in order. The
        first request to fail (after its retries) raises, and the requests not yet sent are dropped."""
        self.usage.calls += 1
        self.usage.prompts += len(conversations)
        if not conversations:
            return []
        failures: list[BaseException] = []

        def attempt(conversation: Conversation) -> _T | None:
            if failures:  # another request failed: this one is not sent
                return None
            try:
                return request(conversation)
            except BaseException as error:
                failures.append(error)
                raise

        with self._server_errors():
            with ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:
                futures = [pool.submit(attempt, conversation) for conversation in conversations]
            if failures:
                raise failures[0]
            results = [future.result() for future in futures]
        self.usage.forward_passes += len(conversations)
        return results

    def _complete(self, conversation: Conversation, assistant_prefix: str, **options: Any) -> dict[str, Any]:
        """One chat completion request; its reply as a JSON object (ModelReplyError otherwise)."""
        if isinstance(conversation, str):
            raise InputError(f"{self.name} applies its own chat template, so it cannot take a prompt written out "
                             "as a string: run the model locally (its prompt is then read as it is).")
        messages = [self._message(message) for message in conversation]
        extra: dict[str, Any] = {}
        if assistant_prefix:
            messages.append({"role": "assistant", "content": assistant_prefix})
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if self.chat_template_options:
            extra["chat_template_kwargs"] = self.chat_template_options
        if extra:
            options["extra_body"] = extra
        raw = self._client.chat.completions.with_raw_response.create(model=self.model, messages=messages, **options)
        return self._reply(raw, _COMPLETION)

    # ------------------------------------------------------------------ replies
    def _reply(self, raw: Any, expected: str) -> dict[str, Any]:
        """A successful reply's body as a JSON object; ModelReplyError when it is not one (e.g. an
        HTML page from a proxy, or a body cut short)."""
        text = raw.text
        kind = raw.headers.get("content-type", "").split(";")[0].strip()
        try:
            body = json.loads(text)
        except ValueError as error:
            if "json" in kind:
                problem = f"its body is not valid JSON ({error}): {_excerpt(text, tags=True)}"
            else:
                problem = (f"its body is {kind or 'of no stated type'}, not JSON: {_excerpt(text)}; is "
                           f"{self.base_url} the address of an OpenAI-compatible API (vLLM, SGLang)?")
            raise self._bad_reply(expected, problem) from None
        if not isinstance(body, dict):
            raise self._bad_reply(expected, f"its body is JSON but not an object: {_excerpt(text)}")
        return body

    def _choice(self, reply: dict[str, Any]) -> dict[str, Any]:
        """The first choice of a chat completion, checked to hold a message with a ``content``
        (a string, or null for no text)."""
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices:
            said = _said(reply)
            problem = "no 'choices' list" if not isinstance(choices, list) else "empty 'choices'"
            raise self._bad_reply(_COMPLETION, problem + (f" (it says: {said})" if said else f" ({_excerpt(reply)})"))
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise self._bad_reply(_COMPLETION, f"a choice without a 'message' ({_excerpt(choice)})")
        if "content" not in message or not isinstance(message["content"], (str, type(None))):
            raise self._bad_reply(_COMPLETION, f"a message without a text 'content' ({_excerpt(message)})")
        return choice

    def _top_logprobs(self, choice: dict[str, Any], step: int = 0) -> list[tuple[str, float]]:
        """Generated token ``step``'s ``top_logprobs`` as (token, logprob) pairs, checked."""
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(content, list) or len(content) <= step:
            raise self._bad_reply(_COMPLETION, "no 'logprobs' for the generated token, though the request "
                                               f"asked for logprobs and top_logprobs={self.top_logprobs}")
        first = content[step]
        top = first.get("top_logprobs") if isinstance(first, dict) else None
        if not isinstance(top, list) or not top:
            raise self._bad_reply(_COMPLETION, "no 'top_logprobs' for the generated token, though the request "
                                               f"asked for top_logprobs={self.top_logprobs}")
        pairs = []
        for entry in top:
            token = entry.get("token") if isinstance(entry, dict) else None
            logprob = entry.get("logprob") if isinstance(entry, dict) else None
            if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
                raise self._bad_reply(_COMPLETION, f"a 'top_logprobs' entry without a token and its logprob "
                                                   f"({_excerpt(entry)})")
            pairs.append((token, float(logprob)))
        return pairs

    def _steps(self, choice: dict[str, Any]) -> list[tuple[str, tuple[tuple[str, float], ...]]]:
        """Each generated token and its ``top_logprobs`` as (token, ((token, logprob), ...)), checked."""
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(content, list):
            raise self._bad_reply(_COMPLETION, "no 'logprobs' for the generated tokens, though the request asked "
                                               "for logprobs")
        steps = []
        for index, entry in enumerate(content):
            token = entry.get("token") if isinstance(entry, dict) else None
            if not isinstance(token, str):
                raise self._bad_reply(_COMPLETION, f"a 'logprobs' entry without a token ({_excerpt(entry)})")
            steps.append((token, tuple(self._top_logprobs(choice, index))))
        return steps

    def _bad_reply(self, expected: str, problem: str) -> ModelReplyError:
        """The one-line error for a reply that is not ``expected``, saying what is wrong with it."""
        end = "" if problem.endswith("?") else "."
        return ModelReplyError(
            f"The MLLM server at {self.base_url} sent a reply that is not {expected}: {problem}{end}")

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
        picture = open_rgb(image)
        if self.max_pixels is not None and picture.width * picture.height > self.max_pixels:
            scale = (self.max_pixels / (picture.width * picture.height)) ** 0.5
            size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
            picture = picture.resize(size, resample=3)  # bicubic
        return data_url(picture, _IMAGE_FORMATS[self.image_format])

    @contextmanager
    def _server_errors(self) -> Iterator[None]:
        """The SDK's connection and HTTP errors as mmrank errors that say what to do."""
        import openai

        try:
            yield
        except openai.APIConnectionError as exc:
            cause = "timed out" if isinstance(exc, openai.APITimeoutError) else _cause(exc)
            raise ModelUnavailableError(
                f"Cannot reach the MLLM server at {self.base_url} ({cause}; {_retries(self.max_retries)}, "
                f"timeout {self.timeout:g} s): is it running? Start one with e.g. "
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
            status = exc.status_code
            retried = status in (408, 409, 429) or status >= 500
            after = f" after {_retries(self.max_retries)}" if retried and self.max_retries else ""
            raise ModelUnavailableError(
                f"The MLLM server at {self.base_url} answered {status}{after}: {_server_message(exc)}. "
                + _STATUS_ADVICE.get(status, _STATUS_ADVICE[500] if retried else _STATUS_ADVICE[400])
            ) from exc
        except openai.APIError as exc:  # e.g. a response the SDK could not read
            raise ModelUnavailableError(f"The MLLM server at {self.base_url} failed: {exc}") from exc


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


_STATUS_ADVICE = {
    400: "The server refused the request: check its limits (e.g. vLLM's --max-model-len and "
         "--limit-mm-per-prompt) against the stage's depth, window and max_pixels.",
    401: "Check the API key (api_key in model_options, or $OPENAI_API_KEY).",
    403: "Check the API key (api_key in model_options, or $OPENAI_API_KEY).",
    500: "The server failed or is overloaded: check its log, or raise max_retries or timeout in "
         "model_options.",
}


def _server_message(exc: Any) -> str:
    """What a server said with an HTTP error: its JSON ``message``, or its page's text, on one line."""
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message")
        return _excerpt(message) if isinstance(message, str) and message.strip() else _excerpt(body)
    if isinstance(body, str) and body.strip():
        return _excerpt(body)
    return "no message"


def _said(reply: dict[str, Any]) -> str | None:
    """The message of an error object sent as a reply (``{"error": {"message": ...}}`` or vLLM's
    ``{"object": "error", "message": ...}``), if that is what it is."""
    error = reply.get("error")
    message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
    if message is None and reply.get("object") == "error":
        message = reply.get("message")
    return _excerpt(message) if isinstance(message, str) and message.strip() else None


def _excerpt(value: Any, limit: int = 160, *, tags: bool = False) -> str:
    """A reply or part of one for an error message, on one line: a page's text (without its tags
    unless ``tags``), JSON as JSON, cut at ``limit`` characters."""
    if isinstance(value, str):
        text = re.sub(r"<[^>]*>", " ", value) if value.lstrip().startswith("<") and not tags else value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return repr(text[:limit] + "..." if len(text) > limit else text) if text else "an empty body"


def _retries(count: int) -> str:
    """``1 retry``, ``3 retries``."""
    return f"{count} {'retry' if count == 1 else 'retries'}"


def _tokens(reply: dict[str, Any], field: str) -> int:
    """A token count from a reply's optional ``usage`` (0 when absent)."""
    usage = reply.get("usage")
    count = usage.get(field) if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _api_url(base_url: str) -> str:
    """The address with the ``/v1`` suffix the SDK expects."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection error, e.g. 'Connection refused'."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).strip() or type(exc).__name__
