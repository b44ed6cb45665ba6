"""VectorIndex benchmark: build time, queries/s, recall@k against exact search, and the overhead of
``VectorIndex.search`` over calling FAISS directly on the same underlying index (target: under 5%).

    python benchmarks/index_bench.py                     # N=100k, D=512, 1000 queries, k=10, on the CPU
    python benchmarks/index_bench.py --n 20000 --dim 128 --device auto

Data: clustered unit vectors (gaussian clusters around random centres, normalised); queries are fresh
points from the same clusters. The wrapper and raw FAISS timings are interleaved (alternating which
goes first); the overhead is the median ratio of adjacent wrapper/raw pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank.index import VectorIndex  # noqa: E402

CONFIGS = {  # name: (table label, factory, VectorIndex options)
    "flat": ("Flat", "Flat", {}),
    "ivf": ("IVF1024,Flat nprobe=16", "IVF1024,Flat", {"nprobe": 16}),
    "hnsw": ("HNSW32 efSearch=64", "HNSW32", {"ef_search": 64}),
    "torch": ("Flat (torch backend)", "Flat", {"backend": "torch"}),
}


def clustered(n: int, queries: int, dim: int, clusters: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` database and ``queries`` query unit vectors around the same ``clusters`` random centres,
    with gaussian noise of norm about ``spread``."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n + queries, dim), dtype=np.float32)
    for start in range(0, n + queries, 10_000):
        stop = min(start + 10_000, n + queries)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:stop] = centres[rng.integers(0, clusters, stop - start)] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[:n], out[n:]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_with_raw(index: VectorIndex, raw, queries: np.ndarray, k: int, repeats: int, min_seconds: float):
    """Interleaved timings of VectorIndex.search and of raw FAISS search on the same index.

    Returns (median wrapper seconds, median raw seconds, overhead, repeats); the overhead is the median
    of the wrapper/raw ratio over adjacent pairs, which shrugs off load changes between pairs.
    """
    wrapper_call = lambda: index.search(queries, k)  # noqa: E731
    raw_call = lambda: raw.search(queries, k)  # noqa: E731
    first = timed(wrapper_call) + timed(raw_call)  # also warms both up
    repeats = min(200, max(repeats, int(np.ceil(2 * min_seconds / max(first, 1e-6)))))
    wrapper_times, raw_times = [], []
    for r in range(repeats):
        pair = [(wrapper_times, wrapper_call), (raw_times, raw_call)]
        for times, call in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(call))
    ratio = statistics.median(w / f for w, f in zip(wrapper_times, raw_times))
    return statistics.median(wrapper_times), statistics.median(raw_times), ratio - 1, repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="database vectors")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension")
    parser.add_argument("--queries", type=int, default=1000, help="queries per search batch")
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--clusters", type=int, default=1000, help="gaussian clusters in the data")
    parser.add_argument("--spread", type=float, default=2.0, help="noise norm around each unit cluster centre")
    parser.add_argument("--device", default="cpu", help="VectorIndex device: cpu, auto, cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS/torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=7, help="minimum timed repeats per side")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per side")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="indexes to run")
    args = parser.parse_args()

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    database, queries = clustered(args.n, args.queries, args.dim, args.clusters, args.spread)
    ids = [f"v{i}" for i in range(args.n)]

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(database)
    _, truth = exact.search(queries, args.k)
    truth_sets = [{ids[i] for i in row} for row in truth]
    del exact

    print(
        f"N={args.n} D={args.dim} queries={args.queries} k={args.k} clusters={args.clusters} "
        f"threads={args.threads} device={args.device} faiss={faiss.__version__}"
    )
    header = (
        f"{'index':<24} {'backend':<9} {'build s':>8} {'queries/s':>10} {f'recall@{args.k}':>9} "
        f"{'wrapper ms':>10} {'faiss ms':>9} {'overhead':>8} {'reps':>4}"
    )
    print(header)
    print("-" * len(header))
    for label, factory, options in (CONFIGS[name] for name in args.only):
        start = time.perf_counter()
        index = VectorIndex(args.dim, factory, device=args.device, **options)
        index.train(database)
        index.add(ids, database)
        build = time.perf_counter() - start
        found, _ = index.search(queries, args.k)
        hits = np.mean([len(set(row) & t) / len(t) for row, t in zip(found, truth_sets)])
        raw = getattr(index._store, "index", None)  # the FAISS index inside (benchmark-only peek)
        if raw is not None:
            wrapper_s, raw_s, ratio, reps = compare_with_raw(
                index, raw, queries, args.k, args.repeats, args.min_seconds
            )
            raw_col, overhead = f"{raw_s * 1e3:9.1f}", f"{ratio * 100:+7.2f}%"
        else:
            times = [timed(lambda index=index: index.search(queries, args.k)) for _ in range(args.repeats)]
            wrapper_s, reps, raw_col, overhead = statistics.median(times), args.repeats, f"{'-':>9}", f"{'-':>8}"
        print(
            f"{label:<24} {index.backend:<9} {build:8.1f} {args.queries / wrapper_s:10.0f} {hits:9.4f} "
            f"{wrapper_s * 1e3:10.1f} {raw_col} {overhead} {reps:4d}",
            flush=True,
        )
        del index, raw


if __name__ == "__main__":
    main()
