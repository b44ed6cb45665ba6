"""Late-interaction page search at scale: candidate generation + exact MaxSim against exhaustive MaxSim.

Builds collections of synthetic pages shaped like ColQwen output (``--patches`` vectors of
``--dim`` dimensions per page, stored as float16), searches them through the real code path
(``Collection.search_patch_rows``, i.e. :mod:`mmrank.patch_index`) and prints, per size:

- build: writing the patch vectors, training the centroids and assigning every patch;
- storage: patch bytes per page, the index folder's size, the database's size;
- per (nprobe, maxsim_depth): recall@10 of the returned top 10 against exhaustive MaxSim's top 10
  (computed once, with ``exhaustive=True``), the page-query pairs scored exactly per query
  (``maxsim_depth``) against exhaustive's (every page), queries/s, and the peak resident memory
  of the searching process (a fresh child process per setting, on the CPU; no model loaded).

Synthetic data, two generators (both clustered; say which when quoting a number):

- ``documents`` (default): pages belong to documents of 20 pages; a document draws 64 "visual
  words" around its own topic, a page 40 of them, and 30% of a page's patches are background
  words shared by every page (Zipf-distributed, as blank margins and body text are). Queries
  have 13 shared prompt tokens (ColQwen's "Query: " prefix and augmentation tokens) and 14
  content tokens near patches of one target page.
- ``topics``: no documents: every page draws 40 words from one vocabulary of 8,192 with Zipf
  popularity. The top 10 is then a near-tie of pages that share a word or two with the query:
  the hard case for any candidate generation.

``--token-pooling 2 --token-pooling 3`` also measures what hierarchical token pooling costs:
recall@10 of exhaustive MaxSim over pooled pages against the unpooled exhaustive top 10, on the
first ``--pooling-pages`` pages (pooling a thousand-vector page takes a fraction of a second).
``--neighbours`` adds the baseline that searches each query token's nearest patch vectors in a
FAISS IVF-PQ index over all patches (ids = pages) and scores the pages found.

Examples (about 10 minutes and 1 hour on 2 cores)::

    python benchmarks/late_interaction_bench.py --pages 10000 --out /tmp/li
    python benchmarks/late_interaction_bench.py --pages 50000 --out /tmp/li --nprobe 64 --maxsim-depth 200

Random vectors, no model: these are speed, memory and recall-of-the-index figures, not
retrieval-quality figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPACE = "patches"
DOC_PAGES, DOC_WORDS, PAGE_WORDS, BACKGROUND, BACKGROUND_WORDS = 20, 64, 40, 0.3, 256
TOPIC_WORDS = 8192
PROMPT_TOKENS, CONTENT_TOKENS = 13, 14
BLOCK_PAGES = 250


# ------------------------------------------------------------------------------------ synthetic data

def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


class Pages:
    """The synthetic pages of one generator, each reproducible on its own from (seed, page)."""

    def __init__(self, kind: str, patches: int, dim: int, seed: int = 0) -> None:
        self.kind, self.patches, self.dim, self.seed = kind, patches, dim, seed
        rng = np.random.default_rng([seed, 1])
        self.background = _unit(rng.standard_normal((BACKGROUND_WORDS, dim))).astype(np.float32)
        if kind == "topics":
            self.words = _unit(rng.standard_normal((TOPIC_WORDS, dim))).astype(np.float32)
            popularity = 1.0 / np.arange(1, TOPIC_WORDS + 1)
            self.popularity = popularity / popularity.sum()
        self._documents: dict[int, np.ndarray] = {}

    def _document_words(self, document: int) -> np.ndarray:
        if document not in self._documents:
            rng = np.random.default_rng([self.seed, 2, document])
            topic = rng.standard_normal(self.dim)
            self._documents = {document: _unit(topic + rng.standard_normal((DOC_WORDS, self.dim))).astype(np.float32)}
        return self._documents[document]

    def page(self, number: int) -> np.ndarray:
        """Page ``number``'s (patches, dim) unit vectors, float32."""
        rng = np.random.default_rng([self.seed, 3, number])
        if self.kind == "topics":
            mine = self.words[rng.choice(TOPIC_WORDS, PAGE_WORDS, replace=False, p=self.popularity)]
            centres, noise = mine[rng.integers(0, PAGE_WORDS, self.patches)], 0.6
        else:
            words = self._document_words(number // DOC_PAGES)
            mine = words[rng.choice(DOC_WORDS, PAGE_WORDS, replace=False)]
            shared = int(BACKGROUND * self.patches)
            centres = np.vstack([mine[rng.integers(0, PAGE_WORDS, self.patches - shared)],
                                 self.background[rng.zipf(1.3, shared) % BACKGROUND_WORDS]])
            noise = 0.5
        vectors = centres + noise * rng.standard_normal((self.patches, self.dim)) / np.sqrt(self.dim)
        return _unit(vectors).astype(np.float32)


def make_queries(pages: Pages, count: int, total: int, seed: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` queries, each 13 prompt tokens shared by all (with a little noise) and 14 tokens
    near random patches of a target page (noisier); returns the queries and their targets."""
    rng = np.random.default_rng([seed, 4])
    prompt = _unit(rng.standard_normal((PROMPT_TOKENS, pages.dim)))
    targets = rng.choice(total, count, replace=False)
    queries = []
    for target in targets:
        content = pages.page(int(target))[rng.integers(0, pages.patches, CONTENT_TOKENS)]
        content = content + 0.8 * rng.standard_normal(content.shape) / np.sqrt(pages.dim)
        shared = prompt + 0.3 * rng.standard_normal(prompt.shape) / np.sqrt(pages.dim)
        queries.append(_unit(np.vstack([shared, content])).astype(np.float32))
    return queries, targets


# ------------------------------------------------------------------------------------ building

def build(folder: Path, pages: Pages, total: int) -> dict[str, float]:
    from mmrank.collection import Collection
    from mmrank.types import Item

    collection = Collection.create(folder, device="cpu")
    collection.bind_encoder(SPACE, f"synthetic:{pages.kind}/{pages.patches}x{pages.dim}", pages.dim,
                            multi_vector="float16")
    start = time.perf_counter()
    for first in range(0, total, BLOCK_PAGES):
        numbers = range(first, min(total, first + BLOCK_PAGES))
        items = [Item(id=f"page-{n}", kind="page") for n in numbers]
        matrix = np.concatenate([pages.page(n) for n in numbers])
        ids = np.repeat([item.id for item in items], pages.patches).tolist()
        collection.add(items, {SPACE: (ids, matrix)})
        print(f"\r  stored {first + len(numbers)}/{total} pages", end="", file=sys.stderr, flush=True)
    stored = time.perf_counter() - start
    print(file=sys.stderr)
    start = time.perf_counter()
    collection.build_indexes()
    indexed = time.perf_counter() - start
    collection.close()
    return {"store_s": stored, "index_s": indexed}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_queries(path: Path, queries: list[np.ndarray]) -> None:
    np.savez(path, tokens=np.vstack(queries), bounds=np.cumsum([0, *(len(q) for q in queries)]))


def load_queries(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        tokens, bounds = data["tokens"], data["bounds"]
    return [tokens[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


# ------------------------------------------------------------------------------------ searching (child)

def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike getrusage's ru_maxrss, which
    execve keeps, it starts afresh in a new program, so a child does not report its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def search_child(args: argparse.Namespace) -> None:
    """One search setting in this fresh process; prints a JSON line."""
    from mmrank.collection import Collection

    queries = load_queries(Path(args.queries))
    collection = Collection.open(args.collection, device="cpu")
    collection.indexes.patch_index(SPACE)  # loaded before timing, as a server holds it
    options = {"exhaustive": True} if args.exhaustive else {"nprobe": args.nprobe, "maxsim_depth": args.maxsim_depth}
    start = time.perf_counter()
    found = []
    for first in range(0, len(queries), args.batch):
        found.extend(collection.search_patch_rows(SPACE, queries[first:first + args.batch], 10, **options))
    seconds = time.perf_counter() - start
    rows = [hits[0][:10].tolist() + [-1] * (10 - len(hits[0][:10])) for hits in found]
    scores = [hits[1].tolist() for hits in found]
    print(json.dumps({"seconds": seconds, "queries": len(queries), "rows": rows, "scores": scores,
                      "peak_rss": peak_rss()}))


def run_child(collection: Path, queries: Path, **options) -> dict:
    command = [sys.executable, __file__, "search", "--collection", str(collection), "--queries", str(queries)]
    for key, value in options.items():
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            command += [f"--{key.replace('_', '-')}", str(value)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ baselines

def pooling_recall(pages: Pages, queries: int, count: int, factors: list[int]) -> list[dict]:
    """Recall@10 of exhaustive MaxSim over token-pooled pages against the unpooled top 10, over
    the first ``count`` pages, with ``queries`` queries aimed at those pages."""
    from mmrank.encoders.token_pooling import pool_tokens
    from mmrank.maxsim import maxsim

    queries, _ = make_queries(pages, min(queries, count), count, seed=2)
    originals = [pages.page(n) for n in range(count)]
    exact = maxsim(queries, np.vstack(originals), [len(p) for p in originals])
    truth = np.argsort(-exact, axis=1)[:, :10]
    results = []
    for factor in factors:
        start = time.perf_counter()
        pooled = [pool_tokens(page, factor) for page in originals]
        seconds = (time.perf_counter() - start) / count
        scores = maxsim(queries, np.vstack(pooled), [len(p) for p in pooled])
        top = np.argsort(-scores, axis=1)[:, :10]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, truth)])
        results.append({"factor": factor, "rows_per_page": float(np.mean([len(p) for p in pooled])),
                        "recall@10": float(recall), "pool_ms_per_page": 1000 * seconds})
    return results


def neighbours_baseline(folder: Path, queries: list[np.ndarray], truth: np.ndarray, depths: list[int],
                        neighbours: int = 256) -> list[dict]:
    """The issue's first sketch: each query token's ``neighbours`` nearest patch vectors from a
    FAISS IVF-PQ index over every patch (ids = pages), pages ranked by the sum over tokens of their
    best retrieved patch score (the token's last retrieved score when none), then the best
    ``depth`` of them scored exactly."""
    import faiss

    from mmrank.collection import Collection
    from mmrank.index_plan import nlist_for

    collection = Collection.open(folder, device="cpu")
    index_ = collection.indexes.patch_index(SPACE)
    files, locations = index_.files, index_.locations
    nlist = min(4096, nlist_for(index_.patches))
    ivf = faiss.index_factory(index_.dim, f"IVF{nlist},PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(locations), max(1, 40 * nlist // int(locations[0, 2]) + 1), replace=False))
    start = time.perf_counter()
    ivf.train(files.read(locations[chosen]))
    for first in range(0, len(locations), 256):
        block = locations[first:first + 256]
        ivf.add_with_ids(files.read(block), np.repeat(np.arange(first, first + len(block)), block[:, 2]))
    built = time.perf_counter() - start
    ivf.nprobe = 32
    results = []
    for depth in depths:
        recalls, seconds = [], 0.0
        for query, want in zip(queries, truth):
            start = time.perf_counter()
            scores, labels = ivf.search(query, neighbours)
            pages, at = np.unique(labels[labels >= 0], return_inverse=True)
            best = np.full((len(query), len(pages)), -np.inf, np.float32)
            tokens = np.repeat(np.arange(len(query)), labels.shape[1])[labels.ravel() >= 0]
            np.maximum.at(best, (tokens, at), scores.ravel()[labels.ravel() >= 0])
            approx = np.maximum(best, scores[:, -1:]).sum(axis=0)
            keep = pages[np.argsort(-approx)[:depth]]
            exact = index_._exact(query, keep, 10)
            seconds += time.perf_counter() - start
            recalls.append(len(set(exact[0].tolist()) & set(want.tolist())) / 10)
        results.append({"depth": depth, "recall@10": float(np.mean(recalls)), "ms_per_query": 1000 * seconds / len(queries),
                        "build_s": built, "factory": f"IVF{nlist},PQ16x4fs", "neighbours": neighbours})
    collection.close()
    return results


# ------------------------------------------------------------------------------------ main

def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda values: "| " + " | ".join(str(v).ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def measure(args: argparse.Namespace, total: int) -> None:
    from mmrank.patch_index import plan_lists

    out = Path(args.out) / f"{args.generator}-{total}x{args.patches}"
    folder = out / "collection"
    pages = Pages(args.generator, args.patches, args.dim)
    out.mkdir(parents=True, exist_ok=True)
    timing = json.loads((out / "build.json").read_text()) if args.reuse and (out / "build.json").is_file() else None
    if timing is None:
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        timing = build(folder, pages, total)
        (out / "build.json").write_text(json.dumps(timing))
    queries_file = out / "queries.npz"
    if not (args.reuse and queries_file.is_file()):
        queries, _ = make_queries(pages, args.queries, total)
        save_queries(queries_file, queries)
    queries = load_queries(queries_file)
    truth_file = out / "truth.json"
    if args.reuse and truth_file.is_file():
        truth = json.loads(truth_file.read_text())
    else:
        truth = run_child(folder, queries_file, exhaustive=True, batch=len(queries))
        truth_file.write_text(json.dumps(truth))
    truth_rows = np.array(truth["rows"])
    top_scores = np.array([s[:10] for s in truth["scores"]])
    patch_bytes = folder_size(folder / "patches")
    index_bytes = folder_size(folder / "index")
    print(f"\n## {args.generator}: {total} pages x {args.patches} patches x {args.dim} (float16), "
          f"{len(queries)} queries, {plan_lists(total * args.patches)} centroids")
    print(f"build: store {timing['store_s']:.0f} s, index {timing['index_s']:.0f} s; storage: "
          f"{patch_bytes / total / 1024:.0f} KB of patches per page ({patch_bytes / 2**30:.2f} GB), index "
          f"{index_bytes / 2**20:.1f} MB ({index_bytes / total:.0f} B per page), database "
          f"{(folder / 'items.sqlite').stat().st_size / 2**20:.1f} MB")
    print(f"exact MaxSim of the true top 1 / 10 (mean over queries): {top_scores[:, 0].mean():.2f} / "
          f"{top_scores[:, 9].mean():.2f}")
    rows = [["exhaustive", "-", f"{total}", "1.000", "1x", f"{truth['queries'] / truth['seconds']:.2f}",
             f"{truth['peak_rss'] / 2**20:.0f} MB"]]
    for nprobe in args.nprobe:
        for depth in args.maxsim_depth:
            got = run_child(folder, queries_file, nprobe=nprobe, maxsim_depth=depth, batch=args.batch)
            found = np.array(got["rows"])
            recall = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / 10 for a, b in zip(found, truth_rows)])
            rows.append([f"nprobe {nprobe}", str(depth), str(depth), f"{recall:.3f}", f"{total / depth:.0f}x fewer",
                         f"{got['queries'] / got['seconds']:.2f}", f"{got['peak_rss'] / 2**20:.0f} MB"])
    print(table(["search", "maxsim_depth", "pairs/query", "recall@10", "pairs vs exhaustive", "queries/s (CPU)",
                 "peak RSS"], rows))
    if args.neighbours:
        results = neighbours_baseline(folder, queries, truth_rows, args.maxsim_depth)
        print(f"\nbaseline, token neighbours ({results[0]['factory']}, {results[0]['neighbours']} per token, "
              f"nprobe 32, built in {results[0]['build_s']:.0f} s):")
        print(table(["maxsim_depth", "recall@10", "ms/query"],
                    [[r["depth"], f"{r['recall@10']:.3f}", f"{r['ms_per_query']:.1f}"] for r in results]))
    if args.token_pooling:
        count = min(total, args.pooling_pages)
        results = pooling_recall(pages, len(queries), count, args.token_pooling)
        print(f"\ntoken pooling, exhaustive MaxSim over the first {count} pages (recall@10 against unpooled):")
        print(table(["pool factor", "vectors per page", "recall@10", "pooling ms/page"],
                    [[r["factor"], f"{r['rows_per_page']:.0f}", f"{r['recall@10']:.3f}", f"{r['pool_ms_per_page']:.0f}"]
                     for r in results]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "search":
        parser = argparse.ArgumentParser()
        parser.add_argument("search")
        parser.add_argument("--collection", required=True)
        parser.add_argument("--queries", required=True)
        parser.add_argument("--exhaustive", action="store_true")
        parser.add_argument("--nprobe", type=int)
        parser.add_argument("--maxsim-depth", type=int)
        parser.add_argument("--batch", type=int, default=16)
        search_child(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, action="append", help="pages per collection (repeatable)")
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--generator", choices=("documents", "topics"), default="documents")
    parser.add_argument("--nprobe", type=int, action="append")
    parser.add_argument("--maxsim-depth", type=int, action="append")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--token-pooling", type=int, action="append", help="pool factors to measure (e.g. 2, 3)")
    parser.add_argument("--pooling-pages", type=int, default=1000)
    parser.add_argument("--neighbours", action="store_true", help="also measure the token-neighbours baseline")
    parser.add_argument("--out", default="/tmp/mmrank-late-interaction")
    parser.add_argument("--reuse", action="store_true", help="reuse collections, queries and truth already built")
    args = parser.parse_args()
    args.nprobe = args.nprobe or [16, 64]
    args.maxsim_depth = args.maxsim_depth or [100, 200]
    print(f"late_interaction_bench on {os.cpu_count()} CPUs; synthetic {args.generator} pages (random vectors: "
          "speed, memory and index recall, not retrieval quality)")
    for total in args.pages or [10000]:
        measure(args, total)


if __name__ == "__main__":
    main()
