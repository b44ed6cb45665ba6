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

from mmrank.errors import InputError, MMRankError, ModelUnavailableError
from mmrank.mllm import (
    HFVisionLanguageModel,
    OpenAICompatibleModel,
    VisionLanguageModel,
    load_mllm,
)
from mmrank.mllm.base import choice_variants
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
                logprobs = torch.log_softmax(self.model(**inputs).logits[0, -1].double(), dim=-1)
                top = torch.topk(logprobs, min(body["top_logprobs"], logprobs.numel()))
                entries = [
                    {"token": tokenizer.decode([index]), "logprob": value}
                    for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ]
                new_tokens = top.indices[:1]  # the greedy token
                choice_logprobs = {"content": [{**entries[0], "top_logprobs": entries}]}
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
    with pytest.raises(MMRankError, match="answered 500: .*hiccuped"):
        OpenAICompatibleModel(server.url, max_retries=0).generate(conversations, max_new_tokens=4)


def test_unknown_served_model_is_unavailable(server: TinyQwenServer) -> None:
    with pytest.raises(ModelUnavailableError, match="does not serve the model 'Qwen/Qwen2.5-VL-7B-Instruct'"):
        OpenAICompatibleModel(server.url, "Qwen/Qwen2.5-VL-7B-Instruct").generate(sample_conversations(1))
