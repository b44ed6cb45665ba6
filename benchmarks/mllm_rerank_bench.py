"""MLLM reranking throughput: pointwise yes/no scoring one candidate at a time vs batched, and
reasoning (MM-R5 style) windows per second, on rendered PDF pages.

    python benchmarks/mllm_rerank_bench.py                              # the tiny test model, CPU
    python benchmarks/mllm_rerank_bench.py --arch qwen2.5-vl-3b --device cuda

``--arch qwen2.5-vl-3b`` builds a random-weight model of Qwen2.5-VL-3B-Instruct's exact architecture
(36 layers, hidden 2048, GQA 16/2 heads, 32-block vision tower) in bfloat16, with the tiny test
fixture's tokenizer and processor: the compute per token is the real model's, the words are not.
Pages are the bundled sample PDFs rendered at 144 dpi and sized by qwen-vl-utils to the default
pixel budget (1280 * 28 * 28, about 1,300 visual tokens a page). Random weights may stop a
generation early, so the reasoning rows also report the tokens actually generated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from timing import timed  # noqa: E402

from mmrank.mllm.hf import DEFAULT_MAX_PIXELS, HFVisionLanguageModel  # noqa: E402
from mmrank.rerankers.pointwise import PointwiseReranker  # noqa: E402
from mmrank.rerankers.reasoning import ReasoningReranker  # noqa: E402
from mmrank.types import Item  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tiny-qwen2-vl"
PROCESSOR_FILES = ("chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json")

# Qwen2.5-VL-3B-Instruct's architecture; special token ids are the fixture tokenizer's.
QWEN25_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "image_token_id": 12, "video_token_id": 13, "vision_start_token_id": 9, "vision_end_token_id": 10,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen2_5_vl_text", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
        "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 0, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "hidden_act": "silu", "in_channels": 3,
    },
}


def build_model(arch: str, device: str, folder: Path) -> HFVisionLanguageModel:
    """The tiny fixture, or a random-weight 3B-architecture model written to ``folder``."""
    if arch == "tiny":
        return HFVisionLanguageModel(str(FIXTURE), device=device, dtype="float32", batch_size=16)
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_VL_3B))
    for name in PROCESSOR_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    processor = AutoProcessor.from_pretrained(folder)
    return HFVisionLanguageModel(model, processor=processor, device=device, batch_size=16)


def pages(count: int) -> list[Item]:
    """``count`` pages of the bundled PDFs (cycled), as page items rendered at 144 dpi when asked."""
    import pymupdf

    found = []
    for pdf in sorted((ROOT / "assets" / "pdfs").glob("*.pdf")):
        with pymupdf.open(pdf) as document:
            found += [Item(id=f"{pdf}#page={n}", kind="page", source=str(pdf), page=n)
                      for n in range(1, document.page_count + 1)]
    return (found * count)[:count]


def pointwise_conversations(items: list[Item], question: str):
    """The conversations the pointwise reranker sends (plain template: no caption)."""
    stage = PointwiseReranker(template="plain")
    return [stage.candidate_conversation(question, item) for item in items]


def reasoning_conversations(items: list[Item], question: str, window: int):
    """One reasoning conversation per window of ``window`` pages."""
    stage = ReasoningReranker(window=window)
    return [stage.window_conversation(question, items[start:start + window])
            for start in range(0, len(items) - window + 1, window)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "qwen2.5-vl-3b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="mmrank-bench-") as scratch:
        model = build_model(args.arch, args.device, Path(scratch) / "model")
        items = pages(args.candidates)
        question = "What was the operating margin in 2016?"
        conversations = pointwise_conversations(items, question)
        rows = []
        model.usage.reset()
        model.choice_probability(conversations[:1], ["Yes", "No"])
        tokens = model.usage.input_tokens
        for batch in (1, 16):
            model.batch_size = batch
            seconds = timed(lambda: model.choice_probability(conversations, ["Yes", "No"]), args.device, args.repeats)
            rows.append((f"pointwise, batch {batch}", f"{len(conversations) / seconds:.2f} candidates/s",
                         f"{tokens} tokens/candidate"))
        windows = reasoning_conversations(items, question, args.window)
        model.batch_size = len(windows)
        model.usage.reset()
        seconds = timed(lambda: model.generate(windows, max_new_tokens=args.new_tokens), args.device, args.repeats)
        generated = model.usage.generated_tokens / max(1, model.usage.calls) / len(windows)
        rows.append((f"reasoning, {len(windows)} windows of {args.window}", f"{len(windows) / seconds:.2f} windows/s",
                     f"{generated:.0f} of {args.new_tokens} new tokens/window"))
    print(f"model {args.arch} on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"max_pixels {DEFAULT_MAX_PIXELS}")
    for name, rate, detail in rows:
        print(f"{name:<34}{rate:>22}   {detail}")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
