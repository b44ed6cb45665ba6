"""Collection and pipeline overhead: what a search costs around the models.

Builds a collection of ``--n`` synthetic items (random-word texts, random unit vectors in an
``image`` space and a ``text`` space bound to the bundled all-MiniLM-L6-v2), then times, per query:

- opening the collection and its first search (loading the FAISS and BM25 indexes);
- exact vector search of the image space, over the whole index and restricted to ``--among``
  candidate ids per query (the ``among`` path scores stored vectors);
- the first stage through ``Pipeline.search_batch``: BM25 alone, and MiniLM + BM25 fused by RRF;
- a SuperGlobal stage (m = 100) over the BM25 rankings, reading candidates' stored vectors.

The vectors are random, so every figure here is a speed (plumbing) figure, never a quality one.

    python benchmarks/search_bench.py                    # N=20000, 256 queries
    python benchmarks/search_bench.py --n 100000 --queries 512
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timing import timed  # noqa: E402

from mmrank.collection import Collection  # noqa: E402
from mmrank.encoders import load_text_encoder  # noqa: E402
from mmrank.pipeline import Pipeline  # noqa: E402
from mmrank.report import format_table  # noqa: E402
from mmrank.rerankers.superglobal import SuperGlobalReranker  # noqa: E402
from mmrank.retrieval import HybridRetriever  # noqa: E402
from mmrank.types import Item, Query  # noqa: E402

IMAGE_DIM = 512


def unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build(folder: Path, n: int, text_encoder, rng: np.random.Generator, words: list[str]) -> None:
    with Collection.create(folder, device="cpu") as collection:
        collection.bind_encoder("image", "open_clip:synthetic/benchmark", IMAGE_DIM)
        collection.bind_encoder("text", text_encoder.name, text_encoder.dim)
        for start in range(0, n, 5000):
            ids = [f"item-{i}" for i in range(start, min(n, start + 5000))]
            items = [Item(id=i, kind="text", text=" ".join(rng.choice(words, 60))) for i in ids]
            collection.add(items, {"image": (ids, unit(rng, len(ids), IMAGE_DIM)),
                                   "text": (ids, unit(rng, len(ids), text_encoder.dim))})
        collection.build_indexes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="items in the collection")
    parser.add_argument("--queries", type=int, default=256, help="queries per timed batch")
    parser.add_argument("--among", type=int, default=200, help="candidate ids per restricted query")
    parser.add_argument("--k", type=int, default=100, help="hits per query")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    text_encoder = load_text_encoder(device="cpu")
    texts = [" ".join(rng.choice(words, 6)) for _ in range(args.queries)]
    queries = [Query(text=t, id=str(i)) for i, t in enumerate(texts)]
    image_queries = unit(rng, args.queries, IMAGE_DIM)
    ids = [f"item-{i}" for i in range(args.n)]
    among = [frozenset(rng.choice(ids, args.among, replace=False).tolist()) for _ in range(args.queries)]
    rows = []

    def row(label: str, seconds: float, per: int = args.queries) -> None:
        rows.append([label, f"{1000 * seconds / per:.3f}", f"{per / seconds:.0f}"])

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "collection"
        start = time.perf_counter()
        build(folder, args.n, text_encoder, rng, words)
        print(f"built {args.n} items in {time.perf_counter() - start:.1f} s")

        def open_and_search() -> None:
            with Collection.open(folder, device="cpu") as fresh:
                fresh.search_vectors("image", image_queries[:1], args.k)

        row("open + first image search", timed(open_and_search, "cpu", args.repeats), 1)
        collection = Collection.open(folder, device="cpu")
        collection.use_encoder("text", text_encoder)
        collection.search_vectors("image", image_queries, args.k)  # load the index
        row("image search, whole index", timed(lambda: collection.search_vectors("image", image_queries, args.k),
                                               "cpu", args.repeats))
        row(f"image search, among {args.among} ids",
            timed(lambda: collection.search_vectors("image", image_queries, args.k, among=among), "cpu", args.repeats))
        bm25 = Pipeline(collection, HybridRetriever(paths=["bm25"], depth=args.k))
        row("pipeline: bm25", timed(lambda: bm25.search_batch(queries, args.k), "cpu", args.repeats))
        restricted = [dataclasses.replace(q, candidates=a) for q, a in zip(queries, among)]
        row(f"pipeline: bm25, among {args.among} ids",
            timed(lambda: bm25.search_batch(restricted, args.k), "cpu", args.repeats))
        hybrid = Pipeline(collection, HybridRetriever(paths=["text", "bm25"], depth=args.k))
        row("pipeline: MiniLM + bm25 (rrf)", timed(lambda: hybrid.search_batch(queries, args.k), "cpu", args.repeats))
        first = bm25.search_batch(queries, args.k)
        first = [dataclasses.replace(r, query_vectors={"image": v}) for r, v in zip(first, image_queries)]
        stage = SuperGlobalReranker(m=args.k, k=9)
        row(f"superglobal stage (m={args.k})",
            timed(lambda: stage.rerank_batch(queries, first, collection), "cpu", args.repeats))
        collection.close()
    print(f"N={args.n}, {args.queries} queries per batch, k={args.k}, CPU; random vectors (speed only)")
    print(format_table(["what", "ms/query", "queries/s"], rows))


if __name__ == "__main__":
    main()
