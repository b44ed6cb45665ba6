"""The text-only transformers backend (HFLanguageModel) on the tiny random-weight Qwen3 fixture, and
the scoring calls every local backend shares (token and sequence log-probabilities, generation with
top log-probabilities), checked against plain transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tiny_llm import build_tiny_qwen3

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm import HFLanguageModel, HFVisionLanguageModel, ScoringLanguageModel, load_mllm

SYSTEM = "You are RankLLM, an intelligent assistant."


def conversations() -> list[list[dict[str, Any]]]:
    """Three chats of different lengths (so batches pad), one with text parts."""
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Query: cat. Rank [A] and [B]."}],
        [{"role": "user", "content": "Is the passage about a dog relevant? " * 3}],
        [{"role": "user", "content": [{"type": "text", "text": "Question: "}, {"type": "text", "text": "moon?"}]}],
    ]


@pytest.fixture(scope="module")
def reference(tiny_llm_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llm_dir)


def reference_logprobs(reference: tuple[Any, Any], text: str) -> Any:
    """log softmax of every position of ``text`` alone (no padding), by plain transformers."""
    import torch

    model, tokenizer = reference
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return ids[0], torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)


# ----------------------------------------------------------------------------- fixture
def test_fixture_is_small_safe_and_rebuilt_by_its_builder(tiny_llm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    names = sorted(path.name for path in tiny_llm_dir.iterdir())
    assert sum(path.stat().st_size for path in tiny_llm_dir.iterdir()) < 400_000
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    rebuilt = build_tiny_qwen3(tmp_path / "rebuilt")
    assert sorted(path.name for path in rebuilt.iterdir()) == names
    weights, again = load_file(tiny_llm_dir / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert weights.keys() == again.keys() and all(weights[name].equal(again[name]) for name in weights)


def test_fixture_tokenizer_is_shaped_like_qwens(tiny_llm: HFLanguageModel) -> None:
    encode = tiny_llm.tokenizer.encode
    assert [len(encode(letter, add_special_tokens=False)) for letter in "ABCDEFGHIJKLMNOPQRST"] == [1] * 20
    assert len(encode("10", add_special_tokens=False)) == 2  # every digit its own token, as in Qwen
    assert all(len(encode(word, add_special_tokens=False)) == 1 for word in ["yes", "no", "<think>", "</answer>"])


# ----------------------------------------------------------------------------- loading
def test_load_mllm_picks_the_backend_from_the_config(tiny_llm_dir: Path, tiny_mllm_dir: Path) -> None:
    text = load_mllm(str(tiny_llm_dir), device="cpu", max_pixels=1000)  # pixel bounds are ignored for text
    assert isinstance(text, HFLanguageModel) and not text.accepts_images
    assert isinstance(text, ScoringLanguageModel)
    assert isinstance(load_mllm(str(tiny_mllm_dir), device="cpu"), HFVisionLanguageModel)
    with pytest.raises(InputError, match="kind must be 'vision' or 'text'"):
        load_mllm(str(tiny_llm_dir), kind="audio")


def test_a_model_not_downloaded_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailableError) as error:
        load_mllm("castorini/no-such-first-model", kind="text")
    message = str(error.value)
    assert message.startswith("Language model 'castorini/no-such-first-model' is not available")
    assert "hf download castorini/no-such-first-model" in message
    with pytest.raises(ModelUnavailableError, match="Language model .* the folder does not exist"):
        HFLanguageModel(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- prompts
def test_prompts_are_the_models_own_chat_template(tiny_llm: HFLanguageModel, tiny_llm_dir: Path) -> None:
    chat = conversations()[0]
    assert tiny_llm.prompt_text(chat, "[") == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nQuery: cat. Rank [A] and [B].<|im_end|>\n"
        "<|im_start|>assistant\n[")
    no_thinking = HFLanguageModel(str(tiny_llm_dir), device="cpu", chat_template_options={"enable_thinking": False})
    assert no_thinking.prompt_text(chat).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A prompt written out as a string is read as it is, and scores like the same text from messages.
    written = tiny_llm.prompt_text(chat, "[")
    assert tiny_llm.prompt_text(written) == written
    np.testing.assert_allclose(tiny_llm.token_logprobs([written], ["A", "B"]),
                               tiny_llm.token_logprobs([chat], ["A", "B"], assistant_prefix="["), atol=1e-9)


def test_an_image_part_is_refused_by_a_text_model(tiny_llm: HFLanguageModel) -> None:
    chat = [{"role": "user", "content": [{"type": "image", "image": "page.png"}, {"type": "text", "text": "q"}]}]
    with pytest.raises(InputError, match="text-only language model cannot read an image part"):
        tiny_llm.token_logprobs([chat], ["yes"])


# ----------------------------------------------------------------------------- scoring
def test_token_logprobs_are_the_full_softmax_at_the_last_position(
    tiny_llm: HFLanguageModel, reference: tuple[Any, Any]
) -> None:
    chats = conversations()
    tokens = ["A", "B", "C", "yes"]
    batched = tiny_llm.token_logprobs(chats, tokens, assistant_prefix="[")
    ids = tiny_llm.resolve_tokens(tokens, "[")
    for row, chat in enumerate(chats):
        _, logprobs = reference_logprobs(reference, tiny_llm.prompt_text(chat, "["))
        np.testing.assert_allclose(batched[row], logprobs[-1, ids].numpy(), atol=1e-5)
    assert (batched < 0).all() and batched.std() > 0.1


def test_top_k_hides_the_tokens_a_server_would_not_list(tiny_llm: HFLanguageModel) -> None:
    chats = conversations()
    letters = list("ABCDEFGHIJKLMNOPQRST")
    full = tiny_llm.token_logprobs(chats, letters, assistant_prefix="[")
    cut = tiny_llm.token_logprobs(chats, letters, assistant_prefix="[", top_k=30)
    kept = ~np.isneginf(cut)
    np.testing.assert_allclose(cut[kept], full[kept])
    assert kept.any() and (~kept).any()
    # What is kept is exactly the letters at least as likely as the 30th token of the vocabulary.
    import torch

    for row, chat in enumerate(chats):
        inputs = tiny_llm._inputs([chat], "[")
        logits = torch.log_softmax(tiny_llm._forward(inputs)[0, -1], dim=-1)
        threshold = torch.topk(logits, 30).values[-1].item()
        np.testing.assert_array_equal(kept[row], full[row] >= threshold - 1e-12)


def test_scores_do_not_depend_on_the_batch(tiny_llm_dir: Path, tiny_llm: HFLanguageModel) -> None:
    one_at_a_time = HFLanguageModel(str(tiny_llm_dir), device="cpu", batch_size=1)
    chats = conversations()
    np.testing.assert_allclose(one_at_a_time.token_logprobs(chats, ["yes", "no"]),
                               tiny_llm.token_logprobs(chats, ["yes", "no"]), atol=1e-5)
    np.testing.assert_allclose(one_at_a_time.sequence_logprob(chats, ["10]", "2]"], assistant_prefix="["),
                               tiny_llm.sequence_logprob(chats, ["10]", "2]"], assistant_prefix="["), atol=1e-5)
    np.testing.assert_allclose(one_at_a_time.choice_probability(chats, ["yes", "no"]),
                               tiny_llm.choice_probability(chats, ["yes", "no"]), atol=1e-5)


def test_sequence_logprob_is_the_teacher_forced_sum(tiny_llm: HFLanguageModel, reference: tuple[Any, Any]) -> None:
    chats = conversations()
    continuations = ["10]", "2]", "A"]
    scores = tiny_llm.sequence_logprob(chats, continuations, assistant_prefix="[")
    assert scores.shape == (3, 3)
    for row, chat in enumerate(chats):
        prompt = tiny_llm.prompt_text(chat, "[")
        prompt_length = len(tiny_llm.tokenizer.encode(prompt, add_special_tokens=False))
        for column, text in enumerate(continuations):
            ids, logprobs = reference_logprobs(reference, prompt + text)
            by_hand = sum(float(logprobs[position - 1, ids[position]]) for position in range(prompt_length, len(ids)))
            assert scores[row, column] == pytest.approx(by_hand, abs=1e-5)
    # "10]" is three tokens ("1", "0", "]"); a single-token continuation is token_logprobs itself.
    np.testing.assert_allclose(scores[:, 2], tiny_llm.token_logprobs(chats, ["A"], assistant_prefix="[")[:, 0],
                               atol=1e-5)


def test_tokens_that_are_not_single_or_not_distinct_are_refused(tiny_llm: HFLanguageModel) -> None:
    with pytest.raises(InputError, match="'10' is not one token after '\\[' .*sequence_logprob"):
        tiny_llm.token_logprobs(conversations(), ["A", "10"], assistant_prefix="[")
    with pytest.raises(InputError, match="must be different strings"):
        tiny_llm.token_logprobs(conversations(), ["A", "A"])
    with pytest.raises(InputError, match="non-empty list"):
        tiny_llm.sequence_logprob(conversations(), [])


# ----------------------------------------------------------------------------- generation
def test_generation_is_greedy_transformers_with_its_top_logprobs(
    tiny_llm: HFLanguageModel, reference: tuple[Any, Any]
) -> None:
    import torch

    model, tokenizer = reference
    chats = conversations()
    generations = tiny_llm.generate(chats, max_new_tokens=5, top_logprobs=4)
    plain = tiny_llm.generate(chats, max_new_tokens=5)
    for chat, generation, without in zip(chats, generations, plain, strict=True):
        ids = tokenizer(tiny_llm.prompt_text(chat), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            greedy = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1]:]
        assert generation.text == tokenizer.decode(greedy, skip_special_tokens=True) == without.text
        assert without.tokens == () and without.top_logprobs == ()
        assert len(generation.tokens) == len(generation.top_logprobs) == generation.generated_tokens
        # Greedy: each step's token is its most likely one, and the first step's numbers are the
        # full softmax that token_logprobs gives.
        assert all(step[0][0] == token for step, token in zip(generation.top_logprobs, generation.tokens))
        first = generation.top_logprobs[0]
        assert len(first) == 4 and [value for _, value in first] == sorted((value for _, value in first), reverse=True)
    # (Byte pieces of a character decode to U+FFFD, as servers show them: leave those out.)
    first = [(row, *generation.top_logprobs[0][0]) for row, generation in enumerate(generations)
             if "\ufffd" not in generation.top_logprobs[0][0][0]]
    assert first
    for row, token, value in first:
        assert tiny_llm.token_logprobs(chats[row:row + 1], [token])[0, 0] == pytest.approx(value, abs=1e-5)
