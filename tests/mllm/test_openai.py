"""The OpenAI-compatible MLLM backend against a local server that runs the tiny Qwen2-VL for real.

The server speaks the part of vLLM's API the backend uses (``/v1/models``, ``/v1/chat/completions``
with data-URL images, ``logprobs``/``top_logprobs`` and ``continue_final_message``) and answers with
the model's own greedy text and next-token log-probabilities.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tiny_mllm import sample_conversations

from mmrank.errors import InputError, ModelReplyError, ModelUnavailableError
from mmrank.mllm import (
    HFVisionLanguageModel,
    OpenAICompatibleModel,
    VisionLanguageModel,
    load_mllm,
)
from mmrank.mllm.base import Generation, choice_variants
from mmrank.mllm.hf import DEFAULT_MAX_PIXELS
from mmrank.mllm.openai import choice_log_probs

SERVED_NAME = "tiny-qwen2-vl"
RANKING_PREFIX = '{"ranking": ['


class TinyQwenServer:
    """The tiny model behind an OpenAI-compatible HTTP API, on a free local port.

    ``fail_next`` makes the next chat requests answer 500; ``chat_requests`` counts them all and
    ``last_body`` keeps the latest.
    """

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(folder)
        self.lock = threading.Lock()  # one request on the model at a time (it keeps rope state)
        self.fail_next = 0
        self.chat_requests = 0
        self.last_body: dict[str, Any] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/v1/models":
                    return self._reply(404, _error("no such route"))
                model = {"id": SERVED_NAME, "object": "model", "created": 0, "owned_by": "tests"}
                self._reply(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._reply(404, _error("no such route"))
                server.chat_requests += 1
                server.last_body = body
                if server.fail_next:
                    server.fail_next -= 1
                    return self._reply(500, _error("the engine hiccuped"))
                if body["model"] != SERVED_NAME:
                    return self._reply(404, _error(f"The model `{body['model']}` does not exist."))
                with server.lock:
                    self._reply(200, server.complete(body))

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion computed by the model: greedy text, or one token with its top logprobs."""
        import torch
        from qwen_vl_utils import process_vision_info

        messages = [_as_qwen_message(message) for message in body["messages"]]
        prompt = self.processor.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=body.get("add_generation_prompt", True),
            continue_final_message=body.get("continue_final_message", False),
        )
        images, _ = process_vision_info(messages)
        inputs = self.processor(text=[prompt], images=images, do_resize=False, return_tensors="pt")
        prompt_tokens = inputs["input_ids"].shape[1]
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            if body.get("logprobs"):
                output = self.model.generate(**inputs, max_new_tokens=body["max_tokens"], do_sample=False,
                                             output_logits=True, return_dict_in_generate=True)
                new_tokens = output.sequences[0, prompt_tokens:]
                steps = []
                for token, logits in zip(new_tokens.tolist(), output.logits, strict=True):
                    logprobs = torch.log_softmax(logits[0].double(), dim=-1)
                    top = torch.topk(logprobs, min(body["top_logprobs"], logprobs.numel()))
                    entries = [
                        {"token": tokenizer.decode([index]), "logprob": value}
                        for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                    ]
                    steps.append({"token": tokenizer.decode([token]), "logprob": float(logprobs[token]),
                                  "top_logprobs": entries})
                choice_logprobs = {"content": steps}
            else:
                output = self.model.generate(**inputs, max_new_tokens=body["max_tokens"], do_sample=False)
                new_tokens = output[0, prompt_tokens:]
                choice_logprobs = None
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": choice_logprobs,
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(new_tokens),
            "total_tokens": prompt_tokens + len(new_tokens),
        }
        created = int(time.time())
        return {"id": "chatcmpl-tiny", "object": "chat.completion", "created": created, "model": SERVED_NAME,
                "choices": [choice], "usage": usage}


def _as_qwen_message(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message with its image_url parts as qwen-vl-utils image parts (same pixel bounds
    as the HF backend's defaults)."""
    if isinstance(message["content"], str):
        return message
    parts = [
        {"type": "image", "image": part["image_url"]["url"], "max_pixels": DEFAULT_MAX_PIXELS}
        if part["type"] == "image_url" else part
        for part in message["content"]
    ]
    return {**message, "content": parts}


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "code": 400}}


class FaultyServer:
    """An OpenAI-compatible API that goes wrong: every chat request gets ``reply`` and
    ``/v1/models`` gets ``models``, each a (status, Content-Type or None, body) triple; a body that
    is not bytes is sent as JSON. ``requests`` counts the chat requests. Error statuses come with
    ``Retry-After-Ms: 1``, which the SDK's retries honour, so that tests going through them stay
    fast. A context manager: serving on a free local port at ``url`` while inside it.
    """

    def __init__(self, reply: tuple = (500, "application/json", {"error": {"message": "the engine died"}}),
                 models: tuple = (200, "application/json", {"object": "list", "data": [{"id": SERVED_NAME}]})) -> None:
        self.reply, self.models = reply, models
        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self) -> FaultyServer:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._send(*server.models)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                self._send(*server.reply)

            def _send(self, status: int, content_type: str | None, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if status >= 400:
                    self.send_header("Retry-After-Ms", "1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def server(tiny_mllm_dir: Path) -> Iterator[TinyQwenServer]:
    server = TinyQwenServer(tiny_mllm_dir)
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def client(server: TinyQwenServer) -> OpenAICompatibleModel:
    server.fail_next = 0
    return OpenAICompatibleModel(server.url, top_logprobs=1000, max_retries=0, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -------------------------------------------------------------------------- parity with HF
def test_asks_the_server_for_its_model(client: OpenAICompatibleModel, server: TinyQwenServer) -> None:
    assert client.model == SERVED_NAME
    assert client.name == f"openai:{SERVED_NAME}@{server.url}"
    assert isinstance(client, VisionLanguageModel)
    built = load_mllm(SERVED_NAME, url=server.url.removesuffix("/v1"))
    assert isinstance(built, OpenAICompatibleModel) and built.base_url == server.url


@pytest.mark.parametrize(
    ("choices", "prefix"), [(["Yes", "No", "True"], ""), (["1", "2", "3"], RANKING_PREFIX)]
)
def test_choice_probability_equals_the_hf_backend(
    client: OpenAICompatibleModel, tiny_mllm: HFVisionLanguageModel, choices: list[str], prefix: str
) -> None:
    conversations = sample_conversations(5, seed=3)
    served = client.choice_probability(conversations, choices, assistant_prefix=prefix)
    local = tiny_mllm.choice_probability(conversations, choices, assistant_prefix=prefix)
    np.testing.assert_allclose(served, local, atol=1e-4)
    assert served[:, 0].std() > 0.01


def test_generation_equals_the_hf_backend(
    client: OpenAICompatibleModel, tiny_mllm: HFVisionLanguageModel
) -> None:
    conversations = sample_conversations(4, seed=5)
    for prefix in ("", RANKING_PREFIX):
        served = client.generate(conversations, max_new_tokens=10, assistant_prefix=prefix)
        assert served == tiny_mllm.generate(conversations, max_new_tokens=10, assistant_prefix=prefix)
        assert len({generation.text for generation in served}) > 1


def test_token_logprobs_equal_the_hf_backend(
    client: OpenAICompatibleModel, tiny_mllm: HFVisionLanguageModel
) -> None:
    conversations = sample_conversations(4, seed=11)
    tokens = ["A", "B", "Yes", "1"]
    served = client.token_logprobs(conversations, tokens, assistant_prefix="[")
    local = tiny_mllm.token_logprobs(conversations, tokens, assistant_prefix="[")
    np.testing.assert_allclose(served, local, atol=1e-4)
    # Tokens outside the listed top ones come back as -inf, as the local backend's top_k gives them.
    few = client.token_logprobs(conversations, tokens, assistant_prefix="[", top_k=3)
    np.testing.assert_array_equal(np.isneginf(few), np.isneginf(tiny_mllm.token_logprobs(
        conversations, tokens, assistant_prefix="[", top_k=3)))


def test_generation_with_top_logprobs_equals_the_hf_backend(
    client: OpenAICompatibleModel, tiny_mllm: HFVisionLanguageModel
) -> None:
    conversations = sample_conversations(3, seed=2)
    served = client.generate(conversations, max_new_tokens=4, top_logprobs=3)
    local = tiny_mllm.generate(conversations, max_new_tokens=4, top_logprobs=3)
    for remote, here in zip(served, local, strict=True):
        assert remote.text == here.text and remote.tokens == here.tokens and len(remote.tokens) == 4
        for remote_step, local_step in zip(remote.top_logprobs, here.top_logprobs, strict=True):
            assert [token for token, _ in remote_step] == [token for token, _ in local_step]
            np.testing.assert_allclose([value for _, value in remote_step], [value for _, value in local_step],
                                       atol=1e-4)


def test_what_the_chat_api_cannot_do_is_refused_with_a_way_out(
    client: OpenAICompatibleModel, server: TinyQwenServer
) -> None:
    with pytest.raises(InputError, match="cannot score given continuations.*run the model locally"):
        client.sequence_logprob(sample_conversations(1), ["10]"])
    with pytest.raises(InputError, match="cannot take a prompt written out as a string"):
        client.generate(["<|im_start|>user\nhi<|im_end|>\n"])
    templated = OpenAICompatibleModel(server.url, max_retries=0, chat_template_options={"enable_thinking": False})
    templated.generate(sample_conversations(1), max_new_tokens=1)
    assert server.last_body["chat_template_kwargs"] == {"enable_thinking": False}


def test_usage_counts_requests_and_tokens(client: OpenAICompatibleModel, server: TinyQwenServer) -> None:
    before = server.chat_requests
    results = client.generate(sample_conversations(3), max_new_tokens=3)
    client.choice_probability(sample_conversations(2), ["Yes", "No"])
    assert server.chat_requests - before == 5
    assert (client.usage.calls, client.usage.forward_passes) == (2, 5)
    assert client.usage.generated_tokens == sum(g.generated_tokens for g in results) > 0


def test_images_travel_as_data_urls(server: TinyQwenServer) -> None:
    from PIL import Image

    conversations = sample_conversations(1)
    original = conversations[0][0]["content"][0]["image"]
    for image_format in ("png", "jpeg"):
        OpenAICompatibleModel(server.url, image_format=image_format).generate(conversations, max_new_tokens=1)
        part = server.last_body["messages"][0]["content"][0]
        header, data = part["image_url"]["url"].split(",", 1)
        assert (part["type"], header) == ("image_url", f"data:image/{image_format};base64")
        received = Image.open(io.BytesIO(base64.b64decode(data)))
        assert received.size == original.size
        if image_format == "png":
            assert np.array_equal(np.asarray(received), np.asarray(original))


def test_max_pixels_downsizes_what_is_sent(server: TinyQwenServer) -> None:
    from PIL import Image

    conversations = sample_conversations(1)
    original = conversations[0][0]["content"][0]["image"]
    budget = original.width * original.height // 4
    OpenAICompatibleModel(server.url, max_pixels=budget).generate(conversations, max_new_tokens=1)
    _, data = server.last_body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)
    received = Image.open(io.BytesIO(base64.b64decode(data)))
    assert received.width * received.height <= budget
    assert abs(received.width / received.height - original.width / original.height) < 0.1
    assert (received.width, received.height) == (original.width // 2, original.height // 2)


# ------------------------------------------------------------------------- top_logprobs
def test_choices_combine_their_spellings_and_absent_ones_get_zero() -> None:
    variants = choice_variants(["Yes", "No", "Maybe"])
    top = [("Other", -0.1), ("No", -0.5), ("Yes", -1.0), (" Yes", -2.0), ("No", -3.0)]
    scores = choice_log_probs(top, variants, 5)
    np.testing.assert_allclose(scores, [np.logaddexp(-1.0, -2.0), np.logaddexp(-0.5, -3.0), -np.inf])
    with pytest.raises(InputError, match="top 5 next tokens"):
        choice_log_probs(top, choice_variants(["True", "False"]), 5)


def test_too_few_top_logprobs_is_explained(server: TinyQwenServer) -> None:
    conversations = sample_conversations(1)
    client = OpenAICompatibleModel(server.url, top_logprobs=1)
    first = client.generate(conversations, max_new_tokens=1)[0].text  # the one token listed
    absent = [word for word in ("Yes", "No", "True", "False") if word != first.strip()][:2]
    with pytest.raises(InputError, match="top 1 next tokens.*Raise top_logprobs"):
        client.choice_probability(conversations, absent)


# ------------------------------------------------------------------------------- failures
def test_server_that_is_down_is_reported_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as error:
        OpenAICompatibleModel(url, max_retries=0, timeout=2)
    with pytest.raises(ModelUnavailableError, match="is it running"):
        OpenAICompatibleModel(url, "any", max_retries=0, timeout=2).generate(sample_conversations(2))
    assert time.monotonic() - start < 5
    assert f"Cannot reach the MLLM server at {url}" in str(error.value)
    assert "is it running?" in str(error.value) and "vllm serve" in str(error.value)


def test_a_failed_request_is_retried(server: TinyQwenServer) -> None:
    conversations = sample_conversations(1)
    expected = OpenAICompatibleModel(server.url, max_retries=0).generate(conversations, max_new_tokens=4)
    server.fail_next, before = 1, server.chat_requests
    retried = OpenAICompatibleModel(server.url, max_retries=1).generate(conversations, max_new_tokens=4)
    assert retried == expected
    assert server.chat_requests - before == 2
    server.fail_next = 1
    with pytest.raises(ModelUnavailableError, match="answered 500: .*hiccuped"):
        OpenAICompatibleModel(server.url, max_retries=0).generate(conversations, max_new_tokens=4)


def test_retries_default_to_three() -> None:
    with FaultyServer() as faulty:
        model = OpenAICompatibleModel(faulty.url, "any")
        assert model.max_retries == model._client.max_retries == 3
        with pytest.raises(ModelUnavailableError, match="answered 500 after 3 retries"):
            model.generate(sample_conversations(1), max_new_tokens=1)
        assert faulty.requests == 4
    with pytest.raises(InputError, match="max_retries >= 0 and timeout > 0"):
        OpenAICompatibleModel("http://h:1", "any", max_retries=-1)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_that_keeps_failing_is_unavailable_after_the_retries(status: int) -> None:
    with FaultyServer((status, "application/json", {"error": {"message": "the engine died"}})) as faulty:
        model = OpenAICompatibleModel(faulty.url, "any", max_retries=2, timeout=5)
        for ask in (lambda: model.generate(sample_conversations(1), max_new_tokens=1),
                    lambda: model.choice_probability(sample_conversations(1), ["Yes", "No"])):
            before = faulty.requests
            with pytest.raises(ModelUnavailableError) as error:
                ask()
            assert faulty.requests - before == 1 + 2
            assert type(error.value) is ModelUnavailableError
            assert str(error.value).startswith(f"The MLLM server at {faulty.url} answered {status} after 2 retries: "
                                               "'the engine died'. The server failed or is overloaded")
            assert "\n" not in str(error.value)


def test_an_http_error_names_the_server_the_status_and_its_message() -> None:
    page = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body><center>nginx</center></body></html>"
    cases = [((502, "text/html", page), "answered 502 after 1 retry: '502 Bad Gateway nginx'."),
             ((500, None, b""), "answered 500 after 1 retry: no message."),
             ((500, "application/json", {"object": "error", "message": "CUDA out of memory", "code": 500}),
              "answered 500 after 1 retry: 'CUDA out of memory'."),
             ((401, "application/json", {"error": {"message": "bad key"}}),
              "answered 401: 'bad key'. Check the API key"),
             ((400, "application/json", {"error": {"message": "prompt too long"}}),
              "answered 400: 'prompt too long'. The server refused the request")]
    for reply, expected in cases:
        with FaultyServer(reply) as faulty, pytest.raises(ModelUnavailableError) as error:
            OpenAICompatibleModel(faulty.url, "any", max_retries=1).generate(sample_conversations(1))
        assert f"The MLLM server at {faulty.url} {expected}" in str(error.value)
        assert faulty.requests == (1 if reply[0] < 500 else 2)  # 400 and 401 are not retried


def test_a_failed_request_drops_the_requests_not_yet_sent() -> None:
    with FaultyServer() as faulty, pytest.raises(ModelUnavailableError):
        OpenAICompatibleModel(faulty.url, "any", max_retries=0, concurrency=1).generate(sample_conversations(5))
    assert faulty.requests == 1


def test_a_server_that_goes_away_is_unavailable() -> None:
    with FaultyServer((200, "application/json", {})) as faulty:
        model = OpenAICompatibleModel(faulty.url, max_retries=1, timeout=2)  # asks /v1/models
        assert model.model == SERVED_NAME
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as error:
        model.choice_probability(sample_conversations(2), ["Yes", "No"])
    assert time.monotonic() - start < 5
    assert type(error.value) is ModelUnavailableError
    assert str(error.value).startswith(f"Cannot reach the MLLM server at {faulty.url} (")
    assert "1 retry, timeout 2 s): is it running?" in str(error.value)


# ------------------------------------------------------------------------ malformed replies
def completion(message: Any = None, logprobs: Any = None, **fields: Any) -> dict[str, Any]:
    """A chat completion with one choice; ``message`` defaults to an answer 'Yes'."""
    choice = {"index": 0, "finish_reason": "stop", "logprobs": logprobs,
              "message": {"role": "assistant", "content": "Yes"} if message is None else message}
    return {"id": "c", "object": "chat.completion", "created": 0, "model": SERVED_NAME, "choices": [choice], **fields}


def top(*entries: Any) -> dict[str, Any]:
    """``logprobs`` of one generated token with the given ``top_logprobs`` entries."""
    return {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": list(entries)}]}


JSON = "application/json"
MALFORMED = {  # what the server sends: (status, Content-Type, body), and what the error says is wrong
    "an HTML page": ((200, "text/html", b"<html><body><h1>Welcome to nginx!</h1></body></html>"),
                     "its body is text/html, not JSON: 'Welcome to nginx!'; is {url} the address of an "
                     "OpenAI-compatible API (vLLM, SGLang)?"),
    "plain text": ((200, "text/plain", b"OK"), "its body is text/plain, not JSON: 'OK'"),
    "HTML labelled JSON": ((200, JSON, b"<html>oops</html>"),
                           "its body is not valid JSON (Expecting value: line 1 column 1 (char 0)): "
                           "'<html>oops</html>'."),
    "truncated JSON": ((200, JSON, b'{"id": "c", "choices": [{"index": 0, "mess'),
                       "its body is not valid JSON (Unterminated string starting at: line 1 column 38 (char 37)): "
                       "'{\"id\": \"c\", \"choices\": [{\"index\": 0, \"mess'."),
    "an empty body": ((200, JSON, b""), "its body is not valid JSON (Expecting value: line 1 column 1 (char 0)): "
                                        "an empty body."),
    "a JSON list": ((200, JSON, [1, 2]), "its body is JSON but not an object: '[1, 2]'."),
    "no choices": ((200, JSON, {"id": "c", "object": "chat.completion"}), "no 'choices' list ("),
    "empty choices": ((200, JSON, {"choices": []}), "empty 'choices' ('{\"choices\": []}')."),
    "an error object": ((200, JSON, {"object": "error", "message": "engine dead"}),
                        "no 'choices' list (it says: 'engine dead')."),
    "a choice without a message": ((200, JSON, {"choices": [{"index": 0, "finish_reason": "stop"}]}),
                                   "a choice without a 'message' ("),
    "a message without content": ((200, JSON, completion({"role": "assistant"})),
                                  "a message without a text 'content' ('{\"role\": \"assistant\"}')."),
    "a content that is not text": ((200, JSON, completion({"role": "assistant", "content": 3})),
                                   "a message without a text 'content' ("),
}
MALFORMED_SCORES = {  # replies good enough for generate, not for choice_probability
    "no logprobs": ((200, JSON, completion()), "no 'logprobs' for the generated token, though the request asked "
                                               "for logprobs and top_logprobs=20."),
    "empty logprobs": ((200, JSON, completion(logprobs={"content": []})), "no 'logprobs' for the generated token"),
    "no top_logprobs": ((200, JSON, completion(logprobs={"content": [{"token": "Yes", "logprob": -0.1}]})),
                        "no 'top_logprobs' for the generated token, though the request asked for top_logprobs=20."),
    "a top_logprobs entry without a logprob": ((200, JSON, completion(logprobs=top({"token": "Yes"}))),
                                               "a 'top_logprobs' entry without a token and its logprob "
                                               "('{\"token\": \"Yes\"}')."),
    "a logprob that is not a number": ((200, JSON, completion(logprobs=top({"token": "No", "logprob": "-1"}))),
                                       "a 'top_logprobs' entry without a token and its logprob ("),
}


def asking(model: OpenAICompatibleModel, what: str):
    conversations = sample_conversations(2)
    if what == "generate":
        return lambda: model.generate(conversations, max_new_tokens=2)
    return lambda: model.choice_probability(conversations, ["Yes", "No"])


@pytest.mark.parametrize("case", [*(f"{name}|{ask}" for name in MALFORMED for ask in ("generate", "scores")),
                                  *(f"{name}|scores" for name in MALFORMED_SCORES)])
def test_a_malformed_reply_is_one_clear_error(case: str) -> None:
    name, what = case.split("|")
    reply, problem = {**MALFORMED, **MALFORMED_SCORES}[name]
    with FaultyServer(reply) as faulty, pytest.raises(ModelReplyError) as error:
        asking(OpenAICompatibleModel(faulty.url, "any", max_retries=2), what)()
    message = str(error.value)
    assert type(error.value) is ModelReplyError and isinstance(error.value, ModelUnavailableError)
    expected = f"The MLLM server at {faulty.url} sent a reply that is not an OpenAI chat completion: "
    assert message.startswith(expected + problem.replace("{url}", faulty.url)), message
    assert "\n" not in message
    assert faulty.requests <= 2  # a reply that came is not retried (two conversations, two requests at most)


def test_replies_good_enough_for_generation() -> None:
    """A null content is an empty answer, and ``usage`` is optional; logprobs only matter for scores."""
    for body, text in ((completion({"role": "assistant", "content": None}), ""), (completion(), "Yes")):
        with FaultyServer((200, JSON, body)) as faulty:
            model = OpenAICompatibleModel(faulty.url, "any")
            assert model.generate(sample_conversations(1)) == [Generation(text, 0, 0)]
    scored = completion(logprobs=top({"token": "Yes", "logprob": -0.5}, {"token": " No", "logprob": -1.5},
                                     {"token": "Maybe", "logprob": -2.0}), usage={"prompt_tokens": 7})
    with FaultyServer((200, JSON, scored)) as faulty:
        model = OpenAICompatibleModel(faulty.url, "any")
        np.testing.assert_allclose(model.choice_probability(sample_conversations(1), ["Yes", "No"]),
                                   [[1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(1.0))]])
        assert model.usage.input_tokens == 7


@pytest.mark.parametrize(("models", "problem"), [
    ((200, "text/html", b"<html>Jupyter</html>"), "its body is text/html, not JSON: 'Jupyter'"),
    ((200, JSON, {"object": "list"}), "no 'data' list of models with an 'id' ('{\"object\": \"list\"}')."),
    ((200, JSON, {"data": [{"object": "model"}]}), "no 'data' list of models with an 'id' ("),
])
def test_a_malformed_model_list_is_one_clear_error(models: tuple, problem: str) -> None:
    with FaultyServer(models=models) as faulty, pytest.raises(ModelReplyError) as error:
        OpenAICompatibleModel(faulty.url)
    assert str(error.value).startswith(
        f"The MLLM server at {faulty.url} sent a reply that is not an OpenAI model list: {problem}")
    with FaultyServer(models=(200, JSON, {"data": []})) as faulty, pytest.raises(ModelUnavailableError) as error:
        OpenAICompatibleModel(faulty.url)
    assert str(error.value) == f"The MLLM server at {faulty.url} serves no model."


def test_unknown_served_model_is_unavailable(server: TinyQwenServer) -> None:
    with pytest.raises(ModelUnavailableError, match="does not serve the model 'Qwen/Qwen2.5-VL-7B-Instruct'"):
        OpenAICompatibleModel(server.url, "Qwen/Qwen2.5-VL-7B-Instruct").generate(sample_conversations(1))
