"""A tiny random-weight Qwen2-VL with an offline processor: the MLLM test fixture.

``python tests/tiny_mllm.py`` rebuilds ``tests/fixtures/tiny-qwen2-vl/`` (seeded, so the same
weights every time). The tokenizer is a small byte-level BPE trained here on a few prompts, with
the Qwen special tokens, the Qwen2-VL chat template, and every word the rerankers score or parse
as a single token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "tiny-qwen2-vl"

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Weights drawn wider than transformers' 0.02 so that the random model's answers depend on its
# input: varied choice probabilities and varied generated text rather than one repeated token.
INIT_RANGE = 0.3

# Words that must be one token, with and without a leading space, through BPE merges.
CHOICE_WORDS = ["Yes", "No", "yes", "no", "True", "False", "ranking"]
# Qwen's pre-tokenizer splits these apart (markup, quotes, every digit on its own), so real Qwen
# models carry the tags as added tokens; here the numbers and "ranking" join them.
ADDED_WORDS = ["<think>", "</think>", "<answer>", "</answer>", '"ranking"'] + [str(i) for i in range(10, 21)]
# One byte, hence one token, in any byte-level BPE.
SINGLE_BYTES = ["[", "]", "{", "}", ":", ",", *[str(i) for i in range(1, 10)]]

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.",
    "Image Caption: a red house with a garden.",
    "Question: what is shown in the picture?",
    "Based on the image and its caption, is the image relevant to the question? Answer 'Yes' or 'No'.",
    "Is this image relevant to the question? Answer 'Yes' or 'No'.",
    "Rank the images by relevance to the question and answer <answer>[id_1, id_2, ...]</answer>.",
    "There are 5 images, id from 1 to 5. Image 1: Image 2: Image 3:",
    'The answer is {"ranking": [3, 1, 2]} because the first page shows the operating margin.',
    "Describe the image. A photo of a cat, a dog, a car, a tree, a building, a document page.",
]


def _train_bpe(vocab_size: int = 420) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE with Qwen's pre-tokenizer, trained on the corpus above."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    words = [f"{space}{word}" for word in CHOICE_WORDS for space in ("", " ")]
    corpus = _CORPUS * 3 + [" ".join(words)] * 40 + [word for word in words for _ in range(20)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def build_tiny_tokenizer(chat_template: str = QWEN2_VL_CHAT_TEMPLATE,
                         added_words: list[str] = ADDED_WORDS) -> Qwen2Tokenizer:
    """The Qwen2 tokenizer over the tiny BPE, with Qwen's special tokens and ``added_words``."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=chat_template,
        model_max_length=4096,
    )
    tokenizer.add_tokens([AddedToken(word, special=False, normalized=False) for word in added_words])
    _check_single_tokens(tokenizer, added_words)
    return tokenizer


def _check_single_tokens(tokenizer: Qwen2Tokenizer, added_words: list[str]) -> None:
    required = [f"{space}{word}" for word in CHOICE_WORDS for space in ("", " ")] + added_words + SINGLE_BYTES
    split = [word for word in required if len(tokenizer.encode(word, add_special_tokens=False)) != 1]
    if split:
        raise AssertionError(f"Not single tokens in the tiny tokenizer: {split}")


def build_tiny_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL and its processor into ``folder`` with save_pretrained.

    The weights are random (seeded) and stored as bfloat16 safetensors, like Qwen's own checkpoints.
    """
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tiny_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "initializer_range": INIT_RANGE,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": INIT_RANGE,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 16)
    video_processor = Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 16)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def sample_conversations(count: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """``count`` user turns of varied shapes: noise images of different sizes (every third turn has
    none) and questions of different lengths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    conversations = []
    for index in range(count):
        height, width = int(rng.integers(28, 160)), int(rng.integers(28, 160))
        question = {"type": "text", "text": "Question: is there a cat?" + " Or a dog, a tree?" * index}
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        content = [question] if index % 3 == 2 else [{"type": "image", "image": image}, question]
        conversations.append([{"role": "user", "content": content}])
    return conversations


if __name__ == "__main__":
    print(build_tiny_qwen2_vl(FIXTURE_DIR))
