"""Evaluation bookkeeping: how much of `evaluate()` is search, and how much is building rankings.

Builds a collection of ``--items`` synthetic items with random unit vectors (a seeded, model-free
text encoder stands in for CLIP), judges one random item per query, then times, over ``--queries``
queries ranked ``--k`` deep (default: every item, as CIRR's subset recall and rmap need):

- search alone: encoding the queries and ``Collection.search_vectors`` in batches of 64;
- ``evaluate(pipeline, dataset)``: the same first stage through the pipeline, every (query, item)
  pair turned into a Hit, and the metrics;

and prints the bookkeeping (evaluate minus search), its share, and peak memory (max RSS).
The vectors are random, so every figure is a speed figure, never a quality one.

    python benchmarks/eval_bench.py                                  # CIRR val size: 4,181 x 2,297
    python benchmarks/eval_bench.py --items 100000 --queries 70 --metrics rmap   # ROxf+100k-like
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank.collection import Collection  # noqa: E402
from mmrank.datasets import RetrievalDataset  # noqa: E402
from mmrank.encoders import register_encoder  # noqa: E402
from mmrank.evaluation import evaluate  # noqa: E402
from mmrank.pipeline import Pipeline  # noqa: E402
from mmrank.report import format_table  # noqa: E402
from mmrank.retrieval import HybridRetriever  # noqa: E402
from mmrank.types import Item, Query  # noqa: E402


class SeededTextEncoder:
    """Each text to a random unit vector seeded by its CRC-32: model-free and deterministic."""

    modalities = frozenset({"text"})

    def __init__(self, dim: int = 512) -> None:
        self.dim, self.name = dim, f"seeded:{dim}"

    @classmethod
    def from_identity(cls, reference: str, **options):
        return cls(int(reference))

    def encode_texts(self, texts):
        rows = [np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dim) for text in texts]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


register_encoder("seeded", SeededTextEncoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2297)
    parser.add_argument("--queries", type=int, default=4181)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=None, help="ranking depth (default: every item)")
    parser.add_argument("--metrics", default="recall@1,recall@5,recall@10,recall@50")
    args = parser.parse_args()
    depth = args.k or args.items
    rng = np.random.default_rng(0)
    encoder = SeededTextEncoder(args.dim)
    ids = [f"item-{i}" for i in range(args.items)]
    items = [Item(id=i, kind="text", text=i) for i in ids]
    queries = [Query(text=f"query {j}", id=f"q{j}") for j in range(args.queries)]
    qrels = {q.id: {ids[int(rng.integers(args.items))]: 1} for q in queries}
    dataset = RetrievalDataset(name="synthetic", items=items, queries=queries, qrels=qrels, split="val")
    metrics = [m.strip() for m in args.metrics.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        with Collection.create(Path(scratch) / "c", device="cpu") as collection:
            collection.bind_encoder("text", encoder.name, encoder.dim)
            for start in range(0, args.items, 20_000):
                chunk = ids[start:start + 20_000]
                vectors = rng.standard_normal((len(chunk), args.dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                collection.add(items[start:start + 20_000], {"text": (chunk, vectors)})
            collection.build_indexes()
        build_s = time.perf_counter() - started

        with Collection.open(Path(scratch) / "c", device="cpu") as collection:
            collection.search_vectors("text", encoder.encode_texts(["warm-up"]), 1)
            started = time.perf_counter()
            for start in range(0, len(queries), 64):
                batch = queries[start:start + 64]
                collection.search_vectors("text", encoder.encode_texts([q.text for q in batch]), depth)
            search_s = time.perf_counter() - started

            pipeline = Pipeline(collection=collection, retriever=HybridRetriever(paths=["text"], depth=depth),
                                name="eval-bench")
            started = time.perf_counter()
            [report] = evaluate(pipeline, dataset, metrics, k=depth)
            evaluate_s = time.perf_counter() - started

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = args.queries * depth
    print(f"Evaluation bookkeeping: {args.queries} queries x {args.items} items, depth {depth} "
          f"({pairs:,} pairs), dim {args.dim}; collection built in {build_s:.1f} s; "
          f"{report.metrics['queries']} queries scored")
    rows = [
        ["search alone (encode + search_vectors)", f"{search_s:.2f}", "-"],
        ["evaluate() end to end", f"{evaluate_s:.2f}", f"{evaluate_s / search_s:.1f}x search"],
        ["bookkeeping (evaluate - search)", f"{evaluate_s - search_s:.2f}",
         f"{1e6 * (evaluate_s - search_s) / pairs:.2f} us/pair"],
        ["peak memory (max RSS)", f"{peak_mb:,.0f} MB", "-"],
    ]
    print(format_table(["what", "seconds", "note"], rows))


if __name__ == "__main__":
    main()
