"""What the seed papers' LLM rerankers cost per query: model calls (prompts sent), input and generated
tokens, and queries per second, each stage over the same top-100 candidate lists.

    python benchmarks/text_rerank_bench.py                        # the tiny test model, CPU
    python benchmarks/text_rerank_bench.py --arch qwen2.5-7b --device cuda --queries 4

The candidates are synthetic passages (title and about 120 words of English-like text, a fixed
seed), 100 per query; listwise stages use windows of 20, stride 10 (9 windows a query). ``--arch``
builds a random-weight model of a real architecture (Qwen2.5-7B-Instruct: 28 layers, hidden 3584,
GQA 28/4; Qwen3-4B: 36 layers, hidden 2560, GQA 32/8) in bfloat16 with the tiny fixture's
tokenizer: the compute per token is the real model's, the words are not. A random model rarely
writes a parsable answer and rarely stops early, so generating stages run to their token cap
(``--new-tokens``, given per row): these are speed and plumbing figures, never quality figures.
DeAR's pointwise stage needs a sequence classifier and is measured on a random one of the same
size (``--arch``) or a tiny one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmrank.mllm.hf_text import HFLanguageModel  # noqa: E402
from mmrank.rerankers import create_reranker  # noqa: E402
from mmrank.types import Hit, Item, Query, Ranking, StageScore  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tiny-qwen3"
TOKENIZER_FILES = ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json")

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
                   "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "qwen3-4b": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
                 "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                 "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so no will more can who its out "
         "time about up them some could into than other then now only first over new two may any these like "
         "river city system energy protein cell market court law film music water heart study data model "
         "patient school war team power light field").split()


def stage_rows(new_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, stage config) of every row; reasoning stages capped at ``new_tokens`` new tokens."""
    return [
        ("first (single token)", {"type": "first"}),
        # The permutation modes' own cap: the tokens of the whole answer "[A] > [B] > ...", as rank_llm.
        ("first (generate, RankZephyr)", {"type": "first", "mode": "generate"}),
        ("insertrank", {"type": "insertrank"}),
        ("erank", {"type": "erank", "max_new_tokens": new_tokens}),
        ("setwise (Rank-R1)", {"type": "setwise", "max_new_tokens": new_tokens}),
        ("rebel (one turn)", {"type": "rebel", "mode": "one-turn", "max_new_tokens": new_tokens}),
        ("rebel (two turns)", {"type": "rebel", "max_new_tokens": new_tokens, "meta_max_new_tokens": new_tokens}),
        ("prorank", {"type": "prorank"}),
        ("qwen3-reranker", {"type": "qwen3-reranker"}),
        ("dear-listwise", {"type": "dear-listwise", "max_new_tokens": new_tokens}),
    ]


def build_model(arch: str, device: str, folder: Path, batch_size: int) -> HFLanguageModel:
    """The tiny fixture, or a random-weight model of ``arch`` written to ``folder``."""
    if arch == "tiny":
        return HFLanguageModel(str(FIXTURE), device=device, dtype="float32", batch_size=batch_size)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(ARCHITECTURES[arch]))
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None  # random weights: every generation runs to its cap
    return HFLanguageModel(model, tokenizer=AutoTokenizer.from_pretrained(folder), device=device,
                           batch_size=batch_size)


def rankings(queries: int, depth: int, seed: int = 0) -> tuple[list[Query], list[Ranking]]:
    """``queries`` queries of five words, each with ``depth`` synthetic passages scored like BM25."""
    import random

    rng = random.Random(seed)
    found_queries, found = [], []
    for q in range(queries):
        query = Query(text=" ".join(rng.choices(WORDS, k=5)) + "?", id=f"q{q}")
        hits = []
        for rank in range(depth):
            title = " ".join(rng.choices(WORDS, k=3)).title()
            body = " ".join(rng.choices(WORDS, k=120)) + "."
            score = 30.0 - rank * 0.2
            item = Item(f"q{q}d{rank}", "text", text=f"{title}\n\n{body}", metadata={"title": title})
            hits.append(Hit(item, score, stages={"bm25": StageScore(score, rank + 1)}))
        found_queries.append(query)
        found.append(Ranking(query, tuple(hits), timings={"bm25": 0.0}))
    return found_queries, found


def measure(stage: Any, model: Any, queries: list[Query], lists: list[Ranking]) -> dict[str, float]:
    model.usage.reset()
    start = time.perf_counter()
    results = stage.rerank_batch(queries, lists, None)
    seconds = time.perf_counter() - start
    assert [len(result) for result in results] == [len(ranking) for ranking in lists]
    usage, count = model.usage, len(queries)
    return {"calls": usage.prompts / count, "input": usage.input_tokens / count,
            "generated": usage.generated_tokens / count, "qps": count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", *ARCHITECTURES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=256, help="cap on generated tokens per prompt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="row labels (prefixes) to run")
    args = parser.parse_args()
    import torch

    queries, lists = rankings(args.queries, args.depth)
    with tempfile.TemporaryDirectory(prefix="mmrank-bench-") as scratch:
        model = build_model(args.arch, args.device, Path(scratch) / "model", args.batch_size)
        print(f"model {args.arch} on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads); "
              f"{args.queries} queries x top-{args.depth}; generated tokens capped at {args.new_tokens}")
        # Warm up (first-call set-up of torch and the tokenizer is not any stage's cost).
        model.generate([[{"role": "user", "content": "warm up " * 200}]] * 2, max_new_tokens=4)
        print(f"{'stage':<30}{'prompts/query':>14}{'input tok/query':>17}{'generated tok/query':>21}{'queries/s':>11}")
        for label, config in stage_rows(args.new_tokens):
            if args.only and not any(label.startswith(prefix) for prefix in args.only):
                continue
            stage = create_reranker({**config, "model": model, "depth": args.depth})
            row = measure(stage, model, queries, lists)
            print(f"{label:<30}{row['calls']:>14.1f}{row['input']:>17,.0f}{row['generated']:>21,.0f}{row['qps']:>11.3f}",
                  flush=True)
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
