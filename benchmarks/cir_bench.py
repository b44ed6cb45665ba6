"""Composed-image reranking cost: SQUARE's single-pass grid (EBR) against pointwise scoring, for the
same K candidates per query.

    python benchmarks/cir_bench.py                                 # the tiny test model, CPU
    python benchmarks/cir_bench.py --arch qwen2.5-vl-3b --device cuda
    python benchmarks/cir_bench.py --k 4 --k 9 --k 16 --json       # several grid sizes, JSON rows
    python benchmarks/cir_bench.py --tile 224                      # smaller tiles: fewer visual tokens

Methods, each over the same queries and candidates (the bundled sample photos):

- ``ebr generate``: one grid image of the K candidates plus the reference image per query; the
  model writes ``{"ranking": [...]}`` (greedy, up to 4 K + 8 new tokens);
- ``ebr first-token``: the same prompt, one forward pass, marks ranked by their first-token
  probabilities;
- ``pointwise, batch 1`` / ``pointwise, batch B``: one yes/no question per candidate (RagLLaVA's
  plain template with the modification text as the question), one at a time or B per forward pass.

Per query it reports model forward passes (prefill batches plus decoding steps), input tokens
(text and image), generated tokens and wall time, and queries/s. ``--arch qwen2.5-vl-3b`` builds
a random-weight model of Qwen2.5-VL-3B-Instruct's architecture in bfloat16 (see
mllm_rerank_bench.py); random weights may stop a generation early or run to the token cap, so
generated tokens are counted, not assumed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllm_rerank_bench import build_model  # noqa: E402
from timing import timed  # noqa: E402

from mmrank.rerankers.grid import GridReranker  # noqa: E402
from mmrank.rerankers.pointwise import PointwiseReranker  # noqa: E402
from mmrank.types import Hit, Item, Query, Ranking  # noqa: E402

PHOTOS = sorted((ROOT / "assets" / "images").glob("*.jpg"))
REQUESTS = ["make it red", "show it at night", "add a dog next to it", "make it look like a painting"]


def workload(queries: int, k: int) -> tuple[list[Query], list[Ranking]]:
    """``queries`` composed queries, each with K candidates from the sample photos (rotated)."""
    built_queries, rankings = [], []
    for n in range(queries):
        query = Query(image=PHOTOS[n % len(PHOTOS)], modification=REQUESTS[n % len(REQUESTS)], id=f"q{n}")
        hits = tuple(Hit(Item(id=f"{n}-{i}", kind="image", source=str(PHOTOS[(n + i + 1) % len(PHOTOS)])), 1.0 - i / k)
                     for i in range(k))
        built_queries.append(query)
        rankings.append(Ranking(query, hits))
    return built_queries, rankings


def measure(name: str, model, stage, queries, rankings, device: str, repeats: int) -> dict:
    """One method's cost per query: counters from one run, time as the median of ``repeats``."""
    model.usage.reset()
    stage.rerank_batch(queries, rankings, None)
    count = len(queries)
    usage = model.usage
    per_query = {"forward_passes": usage.forward_passes / count, "input_tokens": usage.input_tokens / count,
                 "generated_tokens": usage.generated_tokens / count}
    seconds = timed(lambda: stage.rerank_batch(queries, rankings, None), device, repeats)
    return {"method": name, **per_query, "ms_per_query": 1000 * seconds / count,
            "queries_per_s": count / seconds}


def run(arch: str, device: str, ks: list[int], queries: int, batch: int, repeats: int, tile: int = 336) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmrank-cir-bench-") as scratch:
        model = build_model(arch, device, Path(scratch) / "model")
        for k in ks:
            built_queries, rankings = workload(queries, k)
            methods = [
                ("ebr generate", GridReranker(model=model, depth=k, tile=tile, batch_size=queries), queries),
                ("ebr first-token", GridReranker(model=model, depth=k, tile=tile, mode="first-token",
                                                 batch_size=queries), queries),
                ("pointwise, batch 1", PointwiseReranker(model=model, depth=k, template="plain"), 1),
                (f"pointwise, batch {batch}", PointwiseReranker(model=model, depth=k, template="plain"), batch),
            ]
            for name, stage, backend_batch in methods:
                model.batch_size = backend_batch
                rows.append({"k": k, **measure(name, model, stage, built_queries, rankings, device, repeats)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "qwen2.5-vl-3b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, action="append", help="candidates per query (repeatable; default 9)")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--tile", type=int, default=336, help="grid tile size in pixels")
    parser.add_argument("--batch", type=int, default=16, help="conversations per forward pass, batched pointwise")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    import torch

    rows = run(args.arch, args.device, args.k or [9], args.queries, args.batch, args.repeats, args.tile)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"model {args.arch} on {args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"{args.queries} queries, sample photos, grid tiles of {args.tile} px")
    header = f"{'K':>3}  {'method':<22}{'passes/q':>10}{'in tok/q':>10}{'gen tok/q':>10}{'ms/q':>10}{'q/s':>9}"
    print(header)
    for row in rows:
        print(f"{row['k']:>3}  {row['method']:<22}{row['forward_passes']:>10.1f}{row['input_tokens']:>10.0f}"
              f"{row['generated_tokens']:>10.1f}{row['ms_per_query']:>10.1f}{row['queries_per_s']:>9.2f}")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
