"""Collections of millions of vectors on one machine: what ``--index-factory auto`` builds, how long
it takes, what it weighs on disk, and how well and in how much memory it searches.

Vectors are synthetic and clustered on a low-dimensional manifold, made as FAISS's own
``faiss.contrib.datasets.SyntheticDataset`` makes them (a random projection of 10-dimensional
Gaussian points through ``sin``) except that the 10-dimensional points come from a mixture of
1,000 Gaussians (``--spread`` is their width; wider is harder), then L2-normalised. They are
generated and added ``--chunk`` rows at a time, never all in memory, with the same seeds each run.

For each N the script

1. builds a :class:`mmrank.index.VectorIndex` with the factory :func:`mmrank.index_plan.plan_index`
   picks for ``--budget`` (training on the first rows: the rows are drawn independently), keeping
   the full vectors in a file for re-scoring, and saves it;
2. computes the exact top-10 of ``--queries`` queries by streaming that file (ground truth);
3. in a fresh child process (so its memory is the search's alone), loads the saved index (an
   index planned to be searched from disk gets its inverted lists memory-mapped) and searches the
   queries in batches of ``--batch``, printing recall@10, queries/s and peak resident memory, with
   its anonymous part and the file pages mapped from disk (libraries, on-disk lists), which the
   kernel can drop. Re-scored vectors are read with ``pread``, so they are in neither.

    python benchmarks/scale_bench.py --n 1000000 --n 5000000 --budget 1GB --out /tmp/scale
    python benchmarks/scale_bench.py --n 1000000 --budget 40MB --out /tmp/scale   # searched from disk

Everything is on the CPU; the figures are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank.index import VectorIndex, new_vectors_name  # noqa: E402
from mmrank.index_plan import format_size, parse_size, plan_index  # noqa: E402
from mmrank.raw_vectors import RawVectors  # noqa: E402
from mmrank.report import format_table  # noqa: E402

LATENT, CENTRES, SEED = 10, 1000, 1338


class Clustered:
    """The synthetic vectors: chunk ``i`` of the stream, the same every run."""

    def __init__(self, dim: int, spread: float) -> None:
        rng = np.random.default_rng(SEED)
        self.projection = rng.random((LATENT, dim))
        self.frequency = rng.random(dim) * 4 + 0.1
        self.centres = rng.standard_normal((CENTRES, LATENT))
        self.spread = spread

    def chunk(self, number: int, rows: int) -> np.ndarray:
        rng = np.random.default_rng([SEED, number])
        latent = self.centres[rng.integers(0, CENTRES, rows)] + self.spread * rng.standard_normal((rows, LATENT))
        vectors = np.sin((latent @ self.projection) * self.frequency).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def stream(self, count: int, chunk: int):
        for number, start in enumerate(range(0, count, chunk)):
            yield start, self.chunk(number, min(chunk, count - start))

    def queries(self, count: int) -> np.ndarray:
        return self.chunk(-1 % (1 << 31), count)


def memory() -> dict[str, int]:
    """Peak and current resident memory of this process, and the current anonymous / file parts (bytes)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) * 1024 for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def build(data: Clustered, count: int, dim: int, budget: int, folder: Path, chunk: int) -> dict:
    plan = plan_index(count, dim, budget)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    index = VectorIndex(dim, plan.factory, device="cpu", refine=plan.refine or None, on_disk=plan.on_disk,
                        vectors_file=folder / new_vectors_name() if plan.refine else None)
    index.use_default_breadth()
    if not index.is_trained:
        sample = np.vstack([rows for _, rows in data.stream(plan.train_size, chunk)])
        index.train(sample)
        del sample
    trained = time.perf_counter() - start
    for first, rows in data.stream(count, chunk):
        index.add([str(i) for i in range(first, first + len(rows))], rows)
    index.save(folder)
    seconds = time.perf_counter() - start
    manifest = json.loads((folder / "index.json").read_text())
    sizes = {"index": (folder / manifest["index_file"]).stat().st_size,
             "vectors": (folder / manifest["vectors_file"]).stat().st_size if manifest.get("vectors_file") else 0}
    return {"plan": plan.to_dict(), "train_s": trained, "build_s": seconds, "sizes": sizes,
            "build_peak": memory()["VmHWM"], "nprobe": index.nprobe}


def ground_truth(folder: Path, queries: np.ndarray, count: int, dim: int, chunk: int, k: int = 10) -> np.ndarray:
    """Exact top-``k`` labels per query, streaming the saved full vectors ``chunk`` rows at a time."""
    manifest = json.loads((folder / "index.json").read_text())
    vectors = RawVectors.open(folder / manifest["vectors_file"], dim, count)
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    labels = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, count, chunk):
        rows = np.arange(start, min(count, start + chunk))
        scores = queries @ vectors.take(rows).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # this chunk's best k, unordered
        merged_scores = np.hstack([best, np.take_along_axis(scores, top, axis=1)])
        merged_labels = np.hstack([labels, rows[top]])
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(merged_scores, order, axis=1)
        labels = np.take_along_axis(merged_labels, order, axis=1)
    vectors.close()
    return labels


def search(folder: Path, queries_file: Path, truth_file: Path, batch: int, nprobe: int | None) -> dict:
    """Run in the child: load, search, measure."""
    queries, truth = np.load(queries_file), np.load(truth_file)
    start = time.perf_counter()
    index = VectorIndex.load(folder, device="cpu")
    loaded = time.perf_counter() - start
    index.search(queries[:batch], 10)  # warm-up: the first lists and rows come from disk
    start = time.perf_counter()
    found = []
    for first in range(0, len(queries), batch):
        labels, _ = index.search_labels(queries[first:first + batch], 10, nprobe=nprobe)
        found.append(labels)
    seconds = time.perf_counter() - start
    labels = np.vstack(found)
    recall = float(np.mean([len(set(row) & set(true)) / 10 for row, true in zip(labels.tolist(), truth.tolist())]))
    return {"load_s": loaded, "qps": len(queries) / seconds, "recall": recall, "nprobe": nprobe or index.nprobe,
            "memory": memory(), "on_disk": index.read_only}


def run(args: argparse.Namespace) -> None:
    data = Clustered(args.dim, args.spread)
    budget = parse_size(args.budget)
    rows = []
    for count in args.n:
        folder = Path(args.out) / f"n{count}-{args.budget}"
        print(f"N = {count:,}: {plan_index(count, args.dim, budget).describe()}", flush=True)
        built = json.loads((folder / "build.json").read_text()) if args.reuse and (folder / "build.json").exists() \
            else build(data, count, args.dim, budget, folder, args.chunk)
        (folder / "build.json").write_text(json.dumps(built))
        print(f"  built in {built['build_s']:.0f} s (training {built['train_s']:.0f} s)", flush=True)
        queries = data.queries(args.queries)
        np.save(folder / "queries.npy", queries)
        start = time.perf_counter()
        truth = ground_truth(folder, queries, count, args.dim, args.chunk)
        print(f"  exact top-10 of {len(queries)} queries by streaming: {time.perf_counter() - start:.0f} s", flush=True)
        np.save(folder / "truth.npy", truth)
        for nprobe in args.nprobe or [None]:
            child = subprocess.run(
                [sys.executable, __file__, "--search", str(folder), "--batch", str(args.batch),
                 *(["--nprobe", str(nprobe)] if nprobe else [])], check=True, capture_output=True, text=True)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            mem = result["memory"]
            rows.append([f"{count:,}", built["plan"]["factory"], "disk" if result["on_disk"] else "memory",
                         result["nprobe"], f"{built['build_s']:.0f}", format_size(built["build_peak"]),
                         format_size(built["sizes"]["index"]), format_size(built["sizes"]["vectors"]),
                         f"{result['recall']:.3f}", f"{result['qps']:.0f}", format_size(mem["VmHWM"]),
                         format_size(mem["RssAnon"]), format_size(mem["RssFile"])])
            print("  " + " | ".join(str(cell) for cell in rows[-1]), flush=True)
    print()
    print(format_table(["N", "index", "lists", "nprobe", "build s", "build peak", "index size", "vectors size",
                        "recall@10", "queries/s", "search peak RSS", "anon", "file"], rows))
    print(f"\n{args.dim}-d clustered synthetic vectors (spread {args.spread}), budget {args.budget}, "
          f"{args.queries} queries in batches of {args.batch}; recall against exact search. CPU only.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="collection sizes (repeatable)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--budget", default="1GB", help="memory budget for --index-factory auto")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="queries per search call")
    parser.add_argument("--chunk", type=int, default=262144, help="rows generated and added at a time")
    parser.add_argument("--spread", type=float, default=0.25, help="width of the latent clusters")
    parser.add_argument("--nprobe", type=int, action="append", help="search breadths to try (default: the index's)")
    parser.add_argument("--out", default="/tmp/mmrank-scale")
    parser.add_argument("--reuse", action="store_true", help="reuse indexes built by an earlier run")
    parser.add_argument("--search", help=argparse.SUPPRESS)  # the child: search the index in this folder
    args = parser.parse_args()
    if args.search:
        folder = Path(args.search)
        print(json.dumps(search(folder, folder / "queries.npy", folder / "truth.npy", args.batch,
                                args.nprobe[0] if args.nprobe else None)))
        return
    args.n = args.n or [1_000_000]
    run(args)


if __name__ == "__main__":
    main()
