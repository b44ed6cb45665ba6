"""The Hugging Face MLLM backend on the tiny random-weight Qwen2-VL fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tiny_mllm import build_tiny_qwen2_vl, sample_conversations

from mmrank.errors import InputError, MissingDependencyError, ModelUnavailableError
from mmrank.mllm import HFVisionLanguageModel, VisionLanguageModel, load_mllm

RANKING_PREFIX = '{"ranking": ['


@pytest.fixture(scope="module")
def reference(tiny_mllm_dir: Path) -> tuple[Any, Any]:
    """The fixture loaded with plain transformers: the reference the backend must agree with."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_mllm_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(tiny_mllm_dir)


def reference_inputs(reference: tuple[Any, Any], conversation: list[dict[str, Any]], prefix: str = "") -> Any:
    """One conversation through the processor alone (its images are multiples of 28 pixels within
    the processor's bounds, so no resizing happens on either path)."""
    _, processor = reference
    prompt = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) + prefix
    images = [part["image"] for message in conversation for part in message["content"] if "image" in part]
    return processor(text=[prompt], images=images or None, return_tensors="pt")


def aligned_conversation() -> list[dict[str, Any]]:
    """A question about one 84x56 image: a whole number of 28-pixel patches, within every bound."""
    from PIL import Image

    pixels = np.random.default_rng(7).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    image = {"type": "image", "image": Image.fromarray(pixels)}
    question = {"type": "text", "text": "Is the picture relevant to the question?"}
    return [{"role": "user", "content": [image, question]}]


# ----------------------------------------------------------------------------- fixture
def test_fixture_is_small_safe_and_rebuilt_by_its_builder(tiny_mllm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    names = sorted(path.name for path in tiny_mllm_dir.iterdir())
    assert sum(path.stat().st_size for path in tiny_mllm_dir.iterdir()) < 600_000
    assert "model.safetensors" in names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    rebuilt = build_tiny_qwen2_vl(tmp_path / "rebuilt")
    assert sorted(path.name for path in rebuilt.iterdir()) == names
    weights = load_file(tiny_mllm_dir / "model.safetensors")
    rebuilt_weights = load_file(rebuilt / "model.safetensors")
    assert weights.keys() == rebuilt_weights.keys()
    assert all(weights[name].equal(rebuilt_weights[name]) for name in weights)
    for name in [name for name in names if name.endswith((".json", ".jinja"))]:
        assert _settings(tiny_mllm_dir / name) == _settings(rebuilt / name), name


def _settings(path: Path) -> Any:
    """A saved file's content, less the transformers version that wrote it."""
    if path.suffix != ".json":
        return path.read_text()
    settings = json.loads(path.read_text())
    settings.pop("transformers_version", None)
    return settings


def test_fixture_tokenizer_keeps_the_scored_words_whole(tiny_mllm: HFVisionLanguageModel) -> None:
    tokenizer = tiny_mllm.processor.tokenizer
    words = ["Yes", " Yes", "No", " No", "yes", " no", "True", " False", "<think>", "</think>",
             "<answer>", "</answer>", "[", "]", "{", "}", '"ranking"', ":", ","]
    words += [str(number) for number in range(1, 21)]
    lengths = {word: len(tokenizer.encode(word, add_special_tokens=False)) for word in words}
    assert lengths == dict.fromkeys(words, 1)


# ------------------------------------------------------------------------------ loading
def test_loads_a_local_folder_by_absolute_name(tiny_mllm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_mllm_dir.parent)
    model = HFVisionLanguageModel(f"./{tiny_mllm_dir.name}", device="cpu", dtype="auto")
    assert model.name == f"hf:{tiny_mllm_dir.resolve()}"
    assert (model.device, model.dtype, model.attn_implementation) == ("cpu", "float32", "sdpa")
    assert isinstance(model, VisionLanguageModel)


def test_missing_folder_is_reported_with_the_way_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as error:
        HFVisionLanguageModel(str(tmp_path / "nowhere"), device="cpu")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "save_pretrained" in message


def test_hub_model_missing_offline_names_the_model_and_the_download_command() -> None:
    with pytest.raises(ModelUnavailableError) as error:
        load_mllm(device="cpu")
    message = str(error.value)
    assert "'Qwen/Qwen2.5-VL-3B-Instruct' is not available" in message
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in message
    assert "HF_HOME" in message and "HF_HUB_OFFLINE=1" in message and "local folder" in message


def test_folder_of_another_architecture_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ModelUnavailableError, match="not available: Unrecognized configuration class"):
        HFVisionLanguageModel(str(tmp_path), device="cpu")


def test_missing_qwen_vl_utils_names_the_package(
    tiny_mllm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "qwen_vl_utils", None)
    with pytest.raises(MissingDependencyError, match=r"qwen-vl-utils.*pip install 'mmrank\[mllm\]'"):
        HFVisionLanguageModel(str(tiny_mllm_dir), device="cpu")


def test_bad_settings_are_input_errors(tiny_mllm_dir: Path) -> None:
    with pytest.raises(InputError, match="dtype"):
        HFVisionLanguageModel(str(tiny_mllm_dir), dtype="float64")
    with pytest.raises(InputError, match="batch_size"):
        HFVisionLanguageModel(str(tiny_mllm_dir), batch_size=0)


def test_importing_the_package_loads_no_heavy_library() -> None:
    heavy = ("torch", "transformers", "openai", "qwen_vl_utils")
    code = f"import sys, mmrank.mllm; print([m for m in {heavy} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize(
    ("choices", "prefix"), [(["Yes", "No"], ""), (["1", "2", "3", "10"], RANKING_PREFIX)]
)
def test_choice_probability_is_the_softmax_over_the_choice_logits(
    tiny_mllm: HFVisionLanguageModel, reference: tuple[Any, Any], choices: list[str], prefix: str
) -> None:
    import torch

    model, processor = reference
    conversation = aligned_conversation()
    with torch.inference_mode():
        logits = model(**reference_inputs(reference, conversation, prefix)).logits[0, -1].double()

    def one_token_spellings(word: str) -> list[int]:
        encoded = [processor.tokenizer.encode(text) for text in (word, f" {word}")]
        return [ids[0] for ids in encoded if len(ids) == 1]

    choice_logits = torch.stack([torch.logsumexp(logits[one_token_spellings(word)], 0) for word in choices])
    expected = torch.softmax(choice_logits, 0).numpy()

    got = tiny_mllm.choice_probability([conversation], choices, assistant_prefix=prefix)
    assert got.shape == (1, len(choices)) and got.dtype == np.float64
    np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_scores_do_not_depend_on_batching(tiny_mllm: HFVisionLanguageModel, tiny_mllm_dir: Path) -> None:
    conversations = sample_conversations(8)
    choices = ["Yes", "No", "True"]
    batch = tiny_mllm.choice_probability(conversations, choices)
    alone = np.concatenate([tiny_mllm.choice_probability([c], choices) for c in conversations])
    chunked = HFVisionLanguageModel(str(tiny_mllm_dir), device="cpu", batch_size=3)
    reversed_chunks = chunked.choice_probability(conversations[::-1], choices)[::-1]
    text_only = [conversations[2], conversations[5]]
    np.testing.assert_allclose(batch, alone, atol=1e-4)
    np.testing.assert_allclose(reversed_chunks, alone, atol=1e-4)
    np.testing.assert_allclose(tiny_mllm.choice_probability(text_only, choices), alone[[2, 5]], atol=1e-4)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0)
    assert batch[:, 0].std() > 0.01  # the candidates really are told apart


def test_choice_that_is_not_one_token_is_refused_by_name(tiny_mllm: HFVisionLanguageModel) -> None:
    with pytest.raises(InputError) as error:
        tiny_mllm.choice_probability([aligned_conversation()], ["Yes", "Perhaps"])
    assert "'Perhaps'" in str(error.value) and tiny_mllm.name in str(error.value)


@pytest.mark.parametrize(
    ("conversations", "choices", "match"),
    [
        ("single", ["Yes", "No"], "single conversation"),
        ("empty", ["Yes", "No"], "Conversation 0"),
        ("ok", ["Yes", " Yes"], "different words"),
        ("ok", [], "non-empty"),
    ],
)
def test_malformed_requests_are_input_errors(
    tiny_mllm: HFVisionLanguageModel, conversations: str, choices: list[str], match: str
) -> None:
    conversation = aligned_conversation()
    conversations = {"single": conversation, "empty": [[]], "ok": [conversation]}[conversations]
    with pytest.raises(InputError, match=match):
        tiny_mllm.choice_probability(conversations, choices)


def test_unreadable_image_is_named(tiny_mllm: HFVisionLanguageModel, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    content = [{"type": "image", "image": broken}, {"type": "text", "text": "?"}]
    conversation = [{"role": "user", "content": content}]
    with pytest.raises(InputError, match="broken.png"):
        tiny_mllm.choice_probability([conversation], ["Yes", "No"])


def test_no_conversations_give_an_empty_result(tiny_mllm: HFVisionLanguageModel) -> None:
    assert tiny_mllm.choice_probability([], ["Yes", "No"]).shape == (0, 2)
    assert tiny_mllm.generate([]) == []


# ---------------------------------------------------------------------------- generation
def test_greedy_generation_matches_transformers_and_ignores_batching(
    tiny_mllm: HFVisionLanguageModel, reference: tuple[Any, Any]
) -> None:
    import torch

    model, processor = reference
    conversation = aligned_conversation()
    inputs = reference_inputs(reference, conversation, RANKING_PREFIX)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    got = tiny_mllm.generate([conversation], max_new_tokens=12, assistant_prefix=RANKING_PREFIX)[0]
    assert got.text == expected and got.text
    assert got.input_tokens == inputs["input_ids"].shape[1]

    conversations = sample_conversations(6)
    batch = tiny_mllm.generate(conversations, max_new_tokens=12)
    alone = [tiny_mllm.generate([c], max_new_tokens=12)[0] for c in conversations]
    assert batch == alone
    assert len({result.text for result in batch}) > 1
    assert all(1 <= result.generated_tokens <= 12 for result in batch)


def test_sampling_follows_the_temperature(tiny_mllm: HFVisionLanguageModel) -> None:
    import torch

    conversation = [aligned_conversation()]
    greedy = {tiny_mllm.generate(conversation, max_new_tokens=8)[0].text for _ in range(2)}
    torch.manual_seed(0)
    sampled = {tiny_mllm.generate(conversation, max_new_tokens=8, temperature=5.0)[0].text for _ in range(3)}
    assert len(greedy) == 1 and len(sampled) == 3


def test_usage_counts_calls_passes_and_tokens(tiny_mllm_dir: Path) -> None:
    model = HFVisionLanguageModel(str(tiny_mllm_dir), device="cpu", batch_size=2)
    conversations = sample_conversations(5)
    model.choice_probability(conversations, ["Yes", "No"])
    scored = (model.usage.calls, model.usage.forward_passes, model.usage.input_tokens)
    model.usage.reset()
    results = model.generate(conversations, max_new_tokens=4)
    prompt_tokens = sum(result.input_tokens for result in results)
    assert scored == (1, 3, prompt_tokens)
    assert model.usage.calls == 1
    assert model.usage.input_tokens == prompt_tokens
    assert model.usage.generated_tokens == sum(result.generated_tokens for result in results)
    # A batch decodes until its longest answer is done: one pass per token of that answer.
    longest = [max(result.generated_tokens for result in results[start:start + 2]) for start in (0, 2, 4)]
    assert model.usage.forward_passes == sum(longest)


def test_a_model_loaded_with_transformers_can_be_wrapped(
    tiny_mllm: HFVisionLanguageModel, reference: tuple[Any, Any]
) -> None:
    model, processor = reference
    wrapped = HFVisionLanguageModel(model, processor=processor, device="cpu")
    conversations = sample_conversations(3, seed=4)
    np.testing.assert_allclose(wrapped.choice_probability(conversations, ["Yes", "No"]),
                               tiny_mllm.choice_probability(conversations, ["Yes", "No"]), atol=1e-6)
    with pytest.raises(InputError, match="A loaded model needs its processor"):
        HFVisionLanguageModel(model, device="cpu")
