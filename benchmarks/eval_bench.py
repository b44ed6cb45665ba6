"""Evaluation bookkeeping: how much of `evaluate()` is search and reranking, and how much is the
rest (holding rankings, scoring them).

Builds a collection of ``--items`` synthetic items with random unit vectors (a seeded, model-free
text encoder stands in for CLIP) in a child process (so that the peak memory printed is the
evaluation's alone; ``--collection DIR`` keeps it for the next run), judges one random item per
query, then times, over ``--queries`` queries ranked ``--k`` deep (default: every item, as CIRR's
subset recall and rmap need):

- search alone: encoding the queries and ``Collection.search_vector_rows`` (the FAISS search and
  nothing else) in batches of 64;
- ``evaluate(pipeline, dataset)``: the same first stage through the pipeline, then the
  ``--rerank superglobal`` stage when asked (SuperGlobal over the top ``--m``), and the metrics;

and prints search, rerank and bookkeeping (evaluate minus both) times (each the fastest of
``--repeat`` runs), with the bare matrix products for scale, and peak memory (max RSS).
The vectors are random, so every figure is a speed figure, never a quality one.

    python benchmarks/eval_bench.py                                  # CIRR val size: 4,181 x 2,297
    python benchmarks/eval_bench.py --items 1000000 --queries 70 --metrics rmap --collection /tmp/roxf1m
    python benchmarks/eval_bench.py --items 1000000 --queries 70 --metrics rmap --collection /tmp/roxf1m \
        --rerank superglobal                                         # ROxf+1M-size, SuperGlobal's setting
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank import faiss_tools  # noqa: E402
from mmrank.collection import Collection  # noqa: E402
from mmrank.datasets import RetrievalDataset  # noqa: E402
from mmrank.encoders import register_encoder  # noqa: E402
from mmrank.evaluation import deep_batch, evaluate  # noqa: E402
from mmrank.pipeline import Pipeline  # noqa: E402
from mmrank.report import format_table  # noqa: E402
from mmrank.rerankers import create_reranker  # noqa: E402
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


def build(folder: Path, items: int, dim: int) -> float:
    """Create the synthetic collection in ``folder`` (seeded), 20,000 items at a time; its seconds."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    encoder = SeededTextEncoder(dim)
    with Collection.create(folder, device="cpu") as collection:
        collection.bind_encoder("text", encoder.name, encoder.dim)
        for start in range(0, items, 20_000):
            chunk = [f"item-{i}" for i in range(start, min(items, start + 20_000))]
            vectors = rng.standard_normal((len(chunk), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            collection.add([Item(id=i, kind="text", text=i) for i in chunk], {"text": (chunk, vectors)})
        collection.build_indexes()
    return time.perf_counter() - started


def best_of(repeat: int, step) -> float:
    """The fastest of ``repeat`` timed runs of ``step()``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2297)
    parser.add_argument("--queries", type=int, default=4181)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=None, help="ranking depth (default: every item)")
    parser.add_argument("--metrics", default="recall@1,recall@5,recall@10,recall@50")
    parser.add_argument("--rerank", choices=["none", "superglobal"], default="none")
    parser.add_argument("--m", type=int, default=400, help="SuperGlobal's top M (its depth)")
    parser.add_argument("--repeat", type=int, default=3, help="time each step this many times, keep the fastest")
    parser.add_argument("--collection", type=Path, default=None,
                        help="where to keep the collection (built when missing; default: a temporary folder)")
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
    rerankers = [create_reranker({"type": "superglobal", "space": "text", "m": args.m})] if args.rerank != "none" else []

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.collection or Path(scratch) / "c"
        build_s = None
        if not (folder / "manifest.json").is_file():
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                build_s = pool.submit(build, folder, args.items, args.dim).result()

        with Collection.open(folder, device="cpu") as collection:
            if len(collection) != args.items:
                raise SystemExit(f"{folder} holds {len(collection)} items, not --items {args.items}.")
            collection.use_encoder("text", encoder)
            collection.search_vector_rows("text", encoder.encode_texts(["warm-up"]), 1)
            size = deep_batch(64, depth)  # as evaluate() batches
            flat = faiss_tools.flat_view(collection.indexes.vector_index("text")._store.index)

            def products() -> None:  # the inner products alone, for scale: every query x every vector
                for start in range(0, len(queries), size):
                    encoder.encode_texts([q.text for q in queries[start:start + size]]) @ flat[0].T

            def search() -> None:
                for start in range(0, len(queries), size):
                    batch = queries[start:start + size]
                    collection.search_vector_rows("text", encoder.encode_texts([q.text for q in batch]), depth)

            pipeline = Pipeline(collection=collection, retriever=HybridRetriever(paths=["text"], depth=depth),
                                rerankers=rerankers, name="eval-bench")
            reports: list = []
            products_s, search_s, evaluate_s = (
                best_of(args.repeat, step) for step in (
                    products, search, lambda: reports.__setitem__(slice(None), evaluate(pipeline, dataset, metrics, k=depth))))

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = args.queries * depth
    rerank_s = sum(report.latency_ms for report in reports[1:]) * args.queries / 1000
    built = f"built in {build_s:.0f} s" if build_s is not None else f"reused from {folder}"
    print(f"Evaluation: {args.queries} queries x {args.items:,} items, depth {depth:,} ({pairs:,} pairs), "
          f"dim {args.dim}, stages {' + '.join(r.stage for r in reports)}; collection {built}; "
          f"{reports[0].metrics['queries']} queries scored; {', '.join(f'{r.stage} {k} {v:.4f}' for r in reports for k, v in r.metrics.items() if k != 'queries')}")
    rows = [
        ["matrix products alone (encode + queries x vectors)", f"{products_s:.2f}", "-"],
        ["search alone (encode + FAISS search)", f"{search_s:.2f}", "-"],
        ["evaluate() end to end", f"{evaluate_s:.2f}", f"{evaluate_s / search_s:.2f}x search"],
        ["  of which reranking", f"{rerank_s:.2f}", "-"],
        ["bookkeeping (evaluate - search - rerank)", f"{evaluate_s - search_s - rerank_s:.2f}",
         f"{1e6 * (evaluate_s - search_s - rerank_s) / pairs:.3f} us/pair"],
        ["peak memory of the evaluating process (max RSS)", f"{peak_mb:,.0f} MB", "-"],
    ]
    print(format_table(["what", "seconds", "note"], rows))


if __name__ == "__main__":
    main()
