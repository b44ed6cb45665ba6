"""One run of every GPU check on a bare machine with one H100/H200: install the carried wheels,
then time and verify, and print ONE table (check, result, target, status, seconds, peak GPU memory).

    python benchmarks/gpu_check.py                      # on the GPU machine (about 4-6 minutes)
    python benchmarks/gpu_check.py --quick              # smaller sizes: a dry run
    python benchmarks/gpu_check.py --quick --device cpu # here, on the CPU: CUDA-only parts are skipped

Through the device tool: fill wheels/ with ``scripts/gpu_wheels.sh`` here, then one call with
carry=["wheels"] and the command
``PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json`` (timeout_s about 480).

Before it reaches the GPU machine, ``scripts/gpu_wheels.sh`` downloads the wheels that machine lacks
(faiss-cpu, open_clip_torch + ftfy + wcwidth, qwen-vl-utils, pymupdf 1.x) into ``wheels/``; this
script installs the missing ones from there (``pip --no-index --no-deps --target``) and runs mmrank
from the checkout (nothing to install for it).

Checks (each one's failure becomes a row with its error; the rest still run):
  * exact search: VectorIndex on CUDA (the torch backend, picked automatically without a FAISS GPU
    build) vs the CPU FAISS Flat index on N x 512 random unit vectors: recall@10 of the GPU results
    against the CPU ones, the largest "shortfall" (how far below the true 10th score the worst item
    the GPU returned really scores: near-ties swapped by float16 rounding show as a tiny shortfall),
    and queries/s of both, for the default float16 and for float32;
  * several GPUs: the torch exact search split over every visible GPU vs one GPU (identical results
    on small-integer vectors, ties included; queries/s on random ones), with one GPU only the code
    path (two parts on it) and a "1 GPU visible: skipped" row; FAISS sharded / replicated over the
    GPUs vs one (recall, queries/s, remove, merge back to the CPU), or "skipped: no faiss GPU build";
  * a Collection built and saved on CUDA reopens on the CPU with the same search results;
  * open_clip ViT-B-32 / ViT-L-14 image encoding (random weights, float16), images/s;
  * SuperGlobal refinement (Q=1000, M=400, K=9, D=2048), ms/query;
  * late-interaction MaxSim (mmrank.maxsim) of 27-token queries against pages of 1,000 float16
    patch vectors (128-d) on the device (torch, float16 products) vs numpy on the CPU: the largest
    score difference, and pages scored per second on each;
  * MLLM reranking with a random Qwen2.5-VL-3B-architecture model: benchmarks/cir_bench.py --json and
    benchmarks/mllm_rerank_bench.py as subprocesses (peak memory read device-wide while they run).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
for _path in (str(ROOT), str(BENCHMARKS)):  # run from a checkout without installing mmrank
    if _path not in sys.path:
        sys.path.insert(0, _path)

# distribution name -> module it provides; what the GPU machine lacks (see /work/shared/environment.md)
CARRIED = {
    "faiss-cpu": "faiss",
    "open_clip_torch": "open_clip",
    "ftfy": "ftfy",
    "wcwidth": "wcwidth",
    "qwen-vl-utils": "qwen_vl_utils",
    "pymupdf": "pymupdf",
}
DEFAULT_SITE = Path(tempfile.gettempdir()) / "mmrank-gpu-site"


# ----------------------------------------------------------------------------------- rows and table

@dataclass
class Row:
    """One line of the result table. ``status`` is pass, FAIL, info or skipped."""

    check: str
    result: str
    target: str = ""
    status: str = "info"
    seconds: float | None = None
    peak_gib: float | None = None


def format_rows(rows: Sequence[Row]) -> str:
    """An aligned text table of the rows (long results are kept whole: the last columns wrap)."""
    headers = ["check", "result", "target", "status", "s", "peak GiB"]
    cells = [[r.check, r.result, r.target, r.status,
              "" if r.seconds is None else f"{r.seconds:.1f}",
              "" if r.peak_gib is None else f"{r.peak_gib:.2f}"] for r in rows]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [headers, ["-" * w for w in widths], *cells]]
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    counts = {status: sum(r.status == status for r in rows) for status in ("pass", "FAIL", "info", "skipped")}
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def cuda_device(device: str) -> bool:
    return device.startswith("cuda")


def skipped(check: str, why: str = "skipped (no CUDA)") -> Row:
    return Row(check, why, status="skipped")


def run_check(name: str, function: Callable[[], list[Row]], device: str) -> list[Row]:
    """Run one check; its error becomes a FAIL row. The first row gets the seconds and the peak GPU
    memory (torch's allocator, this process) of the whole check."""
    torch = _torch()
    on_gpu = cuda_device(device) and torch is not None and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"--- {name} ...", flush=True)
    start = time.perf_counter()
    try:
        rows = list(function())
    except Exception as exc:  # noqa: BLE001 - every failure goes into the table
        traceback.print_exc()
        rows = [Row(name, f"error: {type(exc).__name__}: {_one_line(str(exc))}", status="FAIL")]
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    if rows:
        first = rows[0]
        rows[0] = replace(first, seconds=first.seconds if first.seconds is not None else seconds,
                          peak_gib=first.peak_gib if first.peak_gib is not None else peak)
    print(f"--- {name}: {seconds:.1f} s", flush=True)
    for row in rows:
        print(f"    {row.status:<7} {row.check}: {row.result}", flush=True)
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return rows


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# ------------------------------------------------------------------------------------------ wheels

def missing_distributions(carried: dict[str, str] = CARRIED) -> list[str]:
    """The carried distributions whose module cannot be imported here."""
    return [dist for dist, module in carried.items() if importlib.util.find_spec(module) is None]


def install_wheels(folder: Path, site: Path, names: Sequence[str]) -> str:
    """pip-install ``names`` from the wheel ``folder`` (no index, no dependencies) into ``site``,
    put ``site`` first on sys.path and PYTHONPATH, and say what happened."""
    if not names:
        return "nothing to install"
    if not folder.is_dir():
        return f"missing {', '.join(names)}, but there is no wheel folder {folder}"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check", "--find-links", str(folder),
               "--target", str(site), "--upgrade", *names]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"pip failed ({done.returncode}): {_one_line(done.stderr or done.stdout)}"
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    return f"installed {', '.join(names)} into {site}"


# ------------------------------------------------------------------------------------ exact search

def random_unit(rows: int, dim: int, seed: int, device: str = "cpu") -> np.ndarray:
    """``rows`` random unit vectors (float32, numpy), drawn on ``device`` (fast on CUDA)."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 262_144):
        stop = min(rows, start + 262_144)
        block = torch.randn((stop - start, dim), generator=generator, device=device)
        out[start:stop] = torch.nn.functional.normalize(block, dim=1).cpu().numpy()
    return out


def recall_at_k(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} result lists for {len(truth)} truth lists")
    if not truth:
        return 1.0
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def shortfall(found: Sequence[Sequence[str]], truth_scores: np.ndarray, database: np.ndarray,
              queries: np.ndarray, k: int) -> float:
    """How far below the true k-th score the worst returned item really scores (0 when the results
    are exactly right; a tiny value when only near-ties were swapped). Ids are row numbers."""
    rows = np.array([[int(i) for i in row[:k]] for row in found])
    exact = np.einsum("qkd,qd->qk", database[rows], queries)
    return float(max(0.0, (truth_scores[:, k - 1] - exact.min(axis=1)).max()))


def search_parity(n: int, dim: int, nq: int, k: int, device: str, repeats: int = 3,
                  dtypes: Sequence[str | None] = (None,)) -> list[Row]:
    """VectorIndex on ``device`` vs the CPU FAISS Flat index: recall@k, shortfall, queries/s.

    On CUDA the backend is left to VectorIndex (it must pick torch without a FAISS GPU build); on
    the CPU the torch backend is forced, so the comparison still means something. ``dtypes``: the
    torch backend's dtypes to try (None: its default, float16 on CUDA, float32 on the CPU).
    """
    from mmrank.index import VectorIndex
    from timing import timed

    database = random_unit(n, dim, seed=0, device=device)
    queries = random_unit(nq, dim, seed=1, device=device)
    ids = [str(i) for i in range(n)]
    label = f"N={n:,} D={dim} Q={nq} k={k}"

    cpu = VectorIndex(dim, "Flat", device="cpu")
    cpu.add(ids, database)
    truth, truth_scores = cpu.search(queries, k)
    cpu_seconds = timed(lambda: cpu.search(queries, k), "cpu", repeats)
    cpu = None  # free the CPU index before the GPU ones are built
    gc.collect()
    rows = [Row(f"exact search CPU FAISS Flat ({label})", f"{nq / cpu_seconds:,.0f} queries/s")]
    on_cuda = cuda_device(device)
    tolerance = {"float16": 2e-3, "bfloat16": 1.5e-2, "float32": 1e-5}
    for dtype in dtypes:
        index = VectorIndex(dim, "Flat", device=device, backend=None if on_cuda else "torch", dtype=dtype)
        name = str(index._store.dtype).removeprefix("torch.") if index.backend == "torch" else "float32"
        if on_cuda and dtype is dtypes[0]:
            rows.append(Row("VectorIndex backend on CUDA (device='cuda')", f"{index.backend} ({name} default)",
                            "torch", "pass" if index.backend == "torch" else "FAIL"))
        index.add(ids, database)
        found, scores = index.search(queries, k)
        seconds = timed(lambda: index.search(queries, k), device, repeats)
        recall = recall_at_k(found, truth, k)
        worst = shortfall(found, truth_scores, database, queries, k)
        score_error = float(np.abs(scores - truth_scores).max())
        allowed = tolerance.get(name, 1e-5)
        exact_target = name == "float32"
        ok = worst <= allowed and (recall >= 0.999 if exact_target else recall >= 0.98)
        where = f"{index.backend} {name} on {device}"
        rows.append(Row(
            f"exact search {where} vs CPU FAISS: recall@{k}",
            f"{recall:.4f}; shortfall {worst:.1e}; max score diff {score_error:.1e}; "
            f"{nq / seconds:,.0f} queries/s ({cpu_seconds / seconds:.1f}x CPU)",
            "1.0 (ties aside)" if exact_target else f"1.0 up to {name} near-ties: shortfall <= {allowed:g}",
            "pass" if ok else "FAIL"))
        index = None
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------- several GPUs

def split_plan(device: str, visible: int) -> tuple[str, list[str], str | None]:
    """Where the several-device checks run: (one device, the devices to split over, why the
    comparison over all GPUs is skipped, or None). On the CPU: two "devices" that are both the CPU
    (the logic, not the speed); with one GPU: two parts on it (the code runs on CUDA, the speed-up
    cannot be measured)."""
    if not cuda_device(device):
        return "cpu", ["cpu", "cpu"], None
    if visible < 2:
        return "cuda:0", ["cuda:0", "cuda:0"], "1 GPU visible: skipped"
    return "cuda:0", [f"cuda:{i}" for i in range(visible)], None


def torch_split_search(n: int, dim: int, nq: int, k: int, one: str, several: Sequence[str], repeats: int = 3,
                       moot: str | None = None) -> list[Row]:
    """TorchExactSearch on ``one`` device vs split over ``several``: on small-integer vectors (exact
    scores, many ties) the results must be identical; on random unit vectors the same up to the
    rounding of differently shaped matrix products; queries/s of both. ``moot``: why the speed
    comparison over all GPUs is skipped (a row says so)."""
    from mmrank.torch_search import TorchExactSearch
    from timing import timed

    where = f"{len(several)} parts on {', '.join(dict.fromkeys(several))}"
    rows = []
    if moot is not None:
        rows.append(Row("torch exact search split over all GPUs vs one", moot, status="skipped"))
    rng = np.random.default_rng(5)
    small = min(n, 200_000)
    integers = rng.integers(-2, 3, (small, dim)).astype(np.float32)
    int_queries = rng.integers(-2, 3, (nq, dim)).astype(np.float32)
    labels = rng.permutation(small).astype(np.int64)
    results = []
    for store in (TorchExactSearch(dim, one), TorchExactSearch(dim, devices=list(several))):
        store.add(integers, labels)
        results.append(store.search(int_queries, k))
        store = None
    same = np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])
    rows.append(Row(f"torch split search, integer vectors ({where}; N={small:,} D={dim} k={k})",
                    "identical labels and scores" if same else
                    f"{int((results[0][1] == results[1][1]).all(axis=1).sum())}/{nq} identical rows",
                    "identical, ties included", "pass" if same else "FAIL"))
    integers = results = None

    database = random_unit(n, dim, seed=8, device=one)
    queries = random_unit(nq, dim, seed=9, device=one)
    labels = np.arange(n, dtype=np.int64)
    single = TorchExactSearch(dim, one)
    single.add(database, labels)
    truth_scores, truth = single.search(queries, k)
    one_seconds = timed(lambda: single.search(queries, k), one, repeats)
    name = str(single.dtype).removeprefix("torch.")
    single = None
    gc.collect()
    split = TorchExactSearch(dim, devices=list(several))
    split.add(database, labels)
    scores, found = split.search(queries, k)
    split_seconds = timed(lambda: split.search(queries, k), one, repeats)
    split = None
    identical = int((found == truth).all(axis=1).sum())
    recall = recall_at_k(found.tolist(), truth.tolist(), k)
    worst = shortfall([[str(i) for i in row] for row in found], truth_scores, database, queries, k)
    allowed = {"float16": 2e-3, "bfloat16": 1.5e-2}.get(name, 1e-5)
    ok = recall >= 0.999 and worst <= allowed
    rows.append(Row(
        f"torch split search {name} ({where}) vs {one} (N={n:,} D={dim} Q={nq} k={k})",
        f"{identical}/{nq} identical rows; recall {recall:.4f}; shortfall {worst:.1e}; "
        f"{nq / one_seconds:,.0f} -> {nq / split_seconds:,.0f} queries/s ({one_seconds / split_seconds:.2f}x)",
        f"identical up to {name} rounding", "pass" if ok else "FAIL"))
    return rows


def faiss_multi_gpu(n: int, dim: int, nq: int, k: int, repeats: int = 3) -> list[Row]:
    """FAISS sharded and replicated over the GPUs (two parts on one GPU when there is only one) vs
    one GPU, for Flat and IVF: recall, queries/s, removal and the merge back to one CPU index.
    Skipped without a FAISS GPU build."""
    import faiss
    from mmrank import faiss_shards, faiss_tools
    from timing import timed

    gpus = faiss_tools.faiss_gpu_count()
    if gpus == 0:
        return [Row("FAISS sharded / replicated over GPUs", "skipped: no faiss GPU build", status="skipped")]
    numbers = list(range(gpus)) if gpus > 1 else [0, 0]
    database, queries = random_unit(n, dim, seed=10, device="cuda"), random_unit(nq, dim, seed=11, device="cuda")
    labels = np.arange(n, dtype=np.int64)
    rows = []
    for factory in ("Flat", "IVF1024,Flat"):
        cpu = faiss_tools.new_index(dim, factory)
        if not cpu.is_trained:
            cpu.train(database[: min(n, 100_000)])
        cpu.add_with_ids(database, labels)
        one = faiss_tools.FaissStore(faiss.clone_index(cpu), 0)
        if factory != "Flat":
            one.set_parameter("nprobe", 32)
        truth_scores, truth = one.search(queries, k)
        one_seconds = timed(lambda: one.search(queries, k), "cuda", repeats)
        one = None
        for mode in faiss_shards.MULTI_GPU_MODES:
            store = faiss_tools.FaissStore(faiss.clone_index(cpu), gpus=numbers, multi_gpu=mode)
            if factory != "Flat":
                store.set_parameter("nprobe", 32)
            scores, found = store.search(queries, k)
            seconds = timed(lambda: store.search(queries, k), "cuda", repeats)
            recall = recall_at_k(found.tolist(), truth.tolist(), k)
            diff = float(np.abs(scores - truth_scores).max())
            back = store.to_cpu()
            merged = back.ntotal == n and sorted(
                (faiss_tools.id_map_labels(back) if factory == "Flat" else faiss_shards.ivf_labels(back)).tolist()
            ) == labels.tolist()
            removed = store.remove(labels[:100]) == 100 and not np.isin(store.search(queries, k)[1], labels[:100]).any()
            ok = recall >= 0.999 and diff < 1e-4 and merged and removed
            rows.append(Row(
                f"FAISS {factory} {mode} over GPUs {numbers} vs GPU 0 (N={n:,} D={dim} Q={nq} k={k})",
                f"recall {recall:.4f}; max score diff {diff:.1e}; {nq / one_seconds:,.0f} -> "
                f"{nq / seconds:,.0f} queries/s; to_cpu {'same labels' if merged else 'WRONG'}; "
                f"remove {'ok' if removed else 'WRONG'}",
                "same results (ties aside)", "pass" if ok else "FAIL"))
            store = back = None
            gc.collect()
    return rows


def multi_gpu_checks(device: str, size: dict) -> list[Row]:
    """The torch split search (over every visible GPU; see split_plan) and FAISS's sharded and
    replicated indexes."""
    torch = _torch()
    visible = torch.cuda.device_count() if torch is not None and cuda_device(device) else 0
    one, several, moot = split_plan(device, visible)
    rows = torch_split_search(size["multi_n"], size["dim"], size["nq"], size["k"], one, several,
                              size["repeats"], moot)
    if cuda_device(device):
        rows += faiss_multi_gpu(size["multi_n"], 128, size["nq"], size["k"], size["repeats"])
    else:
        rows.append(skipped("FAISS sharded / replicated over GPUs"))
    return rows


def collection_roundtrip(n: int, dim: int, nq: int, k: int, device: str, folder: Path) -> list[Row]:
    """Build a Collection's index on ``device``, save it, reopen the collection on the CPU and
    compare the search results (ids and scores)."""
    from mmrank.collection import Collection
    from mmrank.types import Item

    vectors = random_unit(n, dim, seed=2)
    queries = random_unit(nq, dim, seed=3)
    ids = [f"item{i}" for i in range(n)]
    path = folder / "collection"
    with Collection.create(path, device=device) as collection:
        collection.bind_encoder("image", "test:random", dim)
        collection.add([Item(id=i, kind="image") for i in ids], {"image": (ids, vectors)})
        before = collection.search_vectors("image", queries, k)
        backend = collection.indexes.vector_index("image").backend
    with Collection.open(path, device="cpu") as reopened:
        after = reopened.search_vectors("image", queries, k)
        loaded = reopened.indexes.vector_index("image").backend
    found_before = [[i for i, _ in row] for row in before]
    found_after = [[i for i, _ in row] for row in after]
    same = sum(a == b for a, b in zip(found_before, found_after))
    top1 = all(a[:1] == b[:1] for a, b in zip(found_before, found_after))
    score_diff = max(abs(s1 - s2) for r1, r2 in zip(before, after) for (_, s1), (_, s2) in zip(r1, r2))
    recall = recall_at_k(found_after, found_before, k)
    ok = top1 and recall >= 0.99 and score_diff < 2e-3 and loaded == "faiss-cpu"
    return [Row(f"collection saved on {device} ({backend}), reopened on cpu ({loaded})",
                f"{same}/{nq} identical top-{k}; recall {recall:.4f}; max score diff {score_diff:.1e}",
                "same results (fp16 near-ties aside)", "pass" if ok else "FAIL")]


# ----------------------------------------------------------------------------------------- encoders

def clip_throughput(name: str, batch: int, device: str, repeats: int = 5) -> Row:
    """Images/s of open_clip ``name`` (random weights) encoding a synthetic batch (float16 on CUDA)."""
    import open_clip
    import torch
    from timing import timed

    dtype = torch.float16 if cuda_device(device) else torch.float32
    model = open_clip.create_model(name, pretrained=None).to(device=device, dtype=dtype).eval()
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn((batch, 3, *size), device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = timed(lambda: model.encode_image(images), device, repeats)
    model = images = None
    return Row(f"open_clip {name} encode_image ({str(dtype).removeprefix('torch.')}, batch {batch})",
               f"{batch / seconds:,.1f} images/s")


def superglobal_check(queries: int, n: int, m: int, k: int, dim: int, device: str, repeats: int) -> Row:
    """SuperGlobal refinement time per query (benchmarks/superglobal_bench.py's measurement)."""
    from superglobal_bench import bench_refinement

    result = bench_refinement(queries, n, m, k, dim, device, repeats)
    return Row(f"SuperGlobal refinement Q={queries} M={m} K={k} D={dim} on {device}",
               f"{result['ms/query']:.3f} ms/query; {result['GFLOP/s']:,.0f} GFLOP/s = "
               f"{result['fraction']:.0%} of a plain bmm")


def maxsim_check(pages: int, patches: int, dim: int, queries: int, device: str, repeats: int) -> list[Row]:
    """MaxSim of ``queries`` 27-token queries against ``pages`` random pages of ``patches`` float16
    vectors: the device's scores (torch; on the CPU the torch path itself) against numpy's, and
    pages scored per second (one query at a time, as the exact stage of a search scores them)."""
    from mmrank import maxsim as module
    from timing import timed

    rows = random_unit(pages * patches, dim, seed=5).astype(np.float16)
    counts = np.full(pages, patches)
    tokens = [random_unit(27, dim, seed=100 + q) for q in range(queries)]
    cpu = module.maxsim(tokens, rows, counts)
    on = module._maxsim_torch(tokens, rows, counts, device)  # the path device="cuda" takes
    diff = float(np.abs(on - cpu).max() / np.abs(cpu).max())
    cpu_s = timed(lambda: module.maxsim(tokens[:1], rows, counts), "cpu", repeats)
    dev_s = timed(lambda: module._maxsim_torch(tokens[:1], rows, counts, device), device, repeats)
    ok = diff < 5e-3  # float16 products on a GPU: scores of ~10 agree to a few thousandths
    return [Row(f"MaxSim {pages} pages x {patches} x {dim} (float16) on {device} vs numpy",
                f"max relative score difference {diff:.1e}; {pages / dev_s:,.0f} pages/s on {device}, "
                f"{pages / cpu_s:,.0f} pages/s numpy (1 query, rows read from host memory)",
                "difference < 5e-3", "pass" if ok else "FAIL")]


# ---------------------------------------------------------------------------------------- subprocess

class DevicePeak:
    """Device-wide GPU memory in use (cudaMemGetInfo), polled in a thread: the peak rise over the
    level at start. Works for subprocesses, which torch's allocator counters cannot see."""

    def __init__(self, enabled: bool, interval: float = 0.05) -> None:
        self.enabled, self.interval, self.peak = enabled, interval, 0
        self._stop = threading.Event()

    def __enter__(self) -> DevicePeak:
        if self.enabled:
            import torch

            free, total = torch.cuda.mem_get_info()
            self._base = total - free
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free - self._base)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return self.peak / 2**30 if self.enabled else None


def run_script(script: Path, arguments: Sequence[str], timeout: float, device: str):
    """Run a benchmark script; returns (returncode or None on timeout, stdout, stderr, peak GiB)."""
    torch = _torch()
    watch = cuda_device(device) and torch is not None and torch.cuda.is_available()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with DevicePeak(watch) as peak:
        try:
            done = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True,
                                  timeout=timeout, cwd=ROOT, env=env)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code = None
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    return code, out, err, peak.gib


def parse_json_rows(stdout: str) -> list[dict]:
    """The JSON list of row objects a benchmark printed (indented or not), after any other output:
    the first line starting with ``[`` (or ``{"rows": [...]``) from which a list of objects decodes."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^[ \t]*[\[{]", stdout, flags=re.MULTILINE):
        try:
            parsed, _ = decoder.raw_decode(stdout[match.start():].lstrip())
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            parsed = parsed.get("rows")
        if isinstance(parsed, list) and parsed and all(isinstance(row, dict) for row in parsed):
            return parsed
    raise ValueError("no JSON list of rows in the output")


def _failure(name: str, code: int | None, out: str, err: str, timeout: float) -> Row:
    why = f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
    tail = _one_line((err or out).strip().splitlines()[-1] if (err or out).strip() else "")
    return Row(name, f"{why}: {tail}", status="FAIL")


def cir_bench(arch: str, device: str, timeout: float, extra: Sequence[str] = ()) -> list[Row]:
    script = BENCHMARKS / "cir_bench.py"
    name = f"cir_bench --arch {arch}"
    if not script.exists():
        return [Row(name, "not run (benchmarks/cir_bench.py is missing)", status="skipped")]
    code, out, err, peak = run_script(script, ["--arch", arch, "--device", device, "--json", *extra], timeout, device)
    if code != 0:
        return [_failure(name, code, out, err, timeout)]
    rows = []
    for entry in parse_json_rows(out):
        method = entry.get("method", "?") + (f" (K={entry['k']})" if "k" in entry else "")
        rate = entry.get("queries_per_s")
        others = "; ".join(f"{key} {_short(value)}" for key, value in entry.items()
                           if key not in ("method", "queries_per_s", "k"))
        result = (f"{rate:.2f} queries/s" if isinstance(rate, (int, float)) else "queries/s ?") + \
            (f"; {others}" if others else "")
        rows.append(Row(f"{name}: {method}", _one_line(result, 200)))
    if not rows:
        rows = [Row(name, "ran, but printed no rows", status="FAIL")]
    rows[0] = replace(rows[0], peak_gib=peak)
    return rows


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_RATE_LINE = re.compile(r"candidates/s|windows/s|peak GPU memory")


def mllm_rerank_bench(arch: str, device: str, timeout: float, extra: Sequence[str] = ()) -> tuple[list[Row], str]:
    """benchmarks/mllm_rerank_bench.py (no JSON output): one row per result line, and its output tail."""
    script = BENCHMARKS / "mllm_rerank_bench.py"
    name = f"mllm_rerank_bench --arch {arch}"
    if not script.exists():
        return [Row(name, "not run (benchmarks/mllm_rerank_bench.py is missing)", status="skipped")], ""
    code, out, err, peak = run_script(script, ["--arch", arch, "--device", device, *extra], timeout, device)
    tail = "\n".join(out.strip().splitlines()[-8:])
    if code != 0:
        return [_failure(name, code, out, err, timeout)], tail
    rows = [Row(f"{name}: {line.split('  ')[0].strip()}", _one_line(line.split("  ", 1)[-1]))
            for line in out.splitlines() if _RATE_LINE.search(line)]
    if not rows:
        rows = [Row(name, "ran, but printed no result lines", status="FAIL")]
    rows[0] = replace(rows[0], peak_gib=peak)
    return rows, tail


# ------------------------------------------------------------------------------------------ sizes

def sizes(device: str, quick: bool) -> dict:
    """Problem sizes: the full run on CUDA, a smaller one with --quick, and small ones on the CPU."""
    if cuda_device(device):
        return {"n": 100_000 if quick else 1_000_000, "nq": 200 if quick else 1000, "dim": 512, "k": 10,
                "repeats": 3, "collection_n": 20_000, "clip_batch": 64 if quick else 256,
                "clip_models": ("ViT-B-32", "ViT-L-14"), "sg_q": 100 if quick else 1000,
                "sg_n": 20_000 if quick else 100_000, "mllm_arch": "qwen2.5-vl-3b",
                "mllm_args": ("--repeats", "1"), "cir_args": ("--repeats", "2"), "bench_timeout": 150,
                "multi_n": 100_000 if quick else 1_000_000, "late_pages": 200 if quick else 2000}
    return {"n": 2_000 if quick else 50_000, "nq": 50 if quick else 200, "dim": 512 if not quick else 128,
            "k": 10, "repeats": 1 if quick else 3, "collection_n": 2_000, "clip_batch": 2 if quick else 8,
            "clip_models": ("ViT-B-32",), "sg_q": 4 if quick else 20, "sg_n": 2_000 if quick else 10_000,
            "mllm_arch": "tiny",
            "mllm_args": ("--repeats", "1", "--candidates", "4", "--window", "2", "--new-tokens", "8"),
            "cir_args": ("--queries", "1", "--k", "4", "--repeats", "1"), "bench_timeout": 120 if quick else 300,
            "multi_n": 2_000 if quick else 20_000, "late_pages": 20 if quick else 200}


# -------------------------------------------------------------------------------------------- main

def environment_line(device: str) -> str:
    torch = _torch()
    parts = [f"python {sys.version.split()[0]}"]
    if torch is not None:
        parts.append(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    for module in ("faiss", "open_clip", "transformers", "pymupdf"):
        try:
            parts.append(f"{module} {getattr(importlib.import_module(module), '__version__', '?')}")
        except Exception as exc:  # noqa: BLE001
            parts.append(f"{module} missing ({type(exc).__name__})")
    return f"device {device}; " + ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto (cuda when torch sees one)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a dry run")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="folder of carried wheels")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where missing wheels are installed")
    parser.add_argument("--only", nargs="+", choices=("search", "multigpu", "collection", "clip", "superglobal", "late",
                                                       "cir", "mllm"),
                        help="run only these checks")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for the whole run: the benchmark subprocesses get what is left")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def time_left(wanted: float) -> float:
        """A subprocess timeout: ``wanted``, cut to the budget left (30 s at least)."""
        return max(30.0, min(wanted, args.budget - (time.perf_counter() - started)))

    print(install_wheels(args.wheels, args.site, missing_distributions()), flush=True)
    torch = _torch()
    device = args.device
    if device == "auto":
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    has_cuda = torch is not None and torch.cuda.is_available()
    print(environment_line(device), flush=True)
    size = sizes(device, args.quick)
    wanted = set(args.only or ("search", "multigpu", "collection", "clip", "superglobal", "late", "cir", "mllm"))
    rows: list[Row] = []
    tails: list[tuple[str, str]] = []

    if cuda_device(device) and not has_cuda:
        rows.append(Row("CUDA", f"--device {device}, but torch sees no CUDA device", status="FAIL"))
        device = "cpu"
        size = sizes(device, args.quick)

    if "search" in wanted:
        dtypes = (None, "float32") if cuda_device(device) else (None,)
        rows += run_check("exact search parity", lambda: search_parity(
            size["n"], size["dim"], size["nq"], size["k"], device, size["repeats"], dtypes), device)
    if "multigpu" in wanted:
        rows += run_check("several GPUs", lambda: multi_gpu_checks(device, size), device)
    if "collection" in wanted:
        def collection() -> list[Row]:
            with tempfile.TemporaryDirectory(prefix="mmrank-gpu-check-") as scratch:
                return collection_roundtrip(size["collection_n"], size["dim"], 50, size["k"], device, Path(scratch))
        rows += run_check("collection GPU save -> CPU load", collection, device)
    if "clip" in wanted:
        for name in ("ViT-B-32", "ViT-L-14"):
            if name in size["clip_models"]:
                rows += run_check(f"open_clip {name}", lambda name=name: [
                    clip_throughput(name, size["clip_batch"], device, size["repeats"] + 2)], device)
            else:
                rows.append(skipped(f"open_clip {name} encode_image"))
    if "superglobal" in wanted:
        rows += run_check("SuperGlobal", lambda: [superglobal_check(
            size["sg_q"], size["sg_n"], 400, 9, 2048, device, size["repeats"])], device)
    if "late" in wanted:
        rows += run_check("late-interaction MaxSim", lambda: maxsim_check(
            size["late_pages"], 1000, 128, 4, device, size["repeats"]), device)
    if "cir" in wanted:
        rows += run_check("cir_bench", lambda: cir_bench(
            size["mllm_arch"], device, time_left(size["bench_timeout"]), size["cir_args"]), device)
    if "mllm" in wanted:
        def mllm() -> list[Row]:
            found, tail = mllm_rerank_bench(size["mllm_arch"], device, time_left(size["bench_timeout"]),
                                            size["mllm_args"])
            tails.append(("mllm_rerank_bench", tail))
            return found
        rows += run_check("mllm_rerank_bench", mllm, device)

    total = time.perf_counter() - started
    print()
    print(environment_line(device))
    print(format_rows(rows))
    for name, tail in tails:
        if tail:
            print(f"\n{name} output (tail):\n{tail}")
    print(f"\n{summary(rows)}; total {total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "environment": environment_line(device),
                                         "seconds": total, "rows": [asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
