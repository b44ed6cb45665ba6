"""A tiny random-weight Qwen3 causal LM with an offline tokenizer: the text LLM test fixture.

``python -m tests.tiny_llm`` rebuilds ``tests/fixtures/tiny-qwen3/`` (seeded, so the same weights
every time). The tokenizer is the tiny byte-level BPE of :mod:`tests.tiny_mllm` (Qwen's
pre-tokenizer, so every digit is its own token and ``10`` is two, as in real Qwen models; every
letter is one token, so FIRST's ``[A]`` .. ``[T]`` labels are too), with Qwen3's chat template:
``<|im_start|>role\\n...<|im_end|>`` turns, and with ``enable_thinking=False`` an empty
``<think>\\n\\n</think>\\n\\n`` after the generation prompt.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_mllm import INIT_RANGE, QWEN_SPECIAL_TOKENS, build_tiny_tokenizer

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "tiny-qwen3"
# Qwen3 carries its reasoning tags as added tokens; numbers stay digit by digit.
ADDED_WORDS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen3's template, reduced to what text reranking uses (no tools): the system turn when given,
# every message in its <|im_start|> turn, and the thinking switch after the generation prompt.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def build_tiny_qwen3(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3ForCausalLM and its tokenizer into ``folder`` with save_pretrained
    (random seeded weights, stored as bfloat16 safetensors like Qwen's own checkpoints)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tiny_tokenizer(QWEN3_CHAT_TEMPLATE, ADDED_WORDS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        initializer_range=INIT_RANGE,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(build_tiny_qwen3(FIXTURE_DIR))
