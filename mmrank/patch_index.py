"""Search over a late-interaction space: candidate pages from patch centroids, then exact MaxSim.

Scoring every page by MaxSim reads every patch vector of the collection (12 GB for 50,000 pages of
ColQwen output) for each query. PLAID (Santhanam et al., 2022, the engine behind ColBERTv2) shows
how to avoid it, and this index follows its first stages:

1. **Centroids**: k-means (FAISS, spherical) over a random sample of the patch vectors gives
   ``nlist`` centroids; every patch vector is assigned to its nearest one, and each page keeps
   the *set* of centroids its patches fall in (a few hundred of them), with the inverse lists
   (centroid -> the pages holding one of its patches).
2. **Centroid interaction** (candidate scoring): each query token is compared with every
   centroid; its ``nprobe`` best centroids are looked up in the lists, and a page's approximate
   score is, summed over the tokens, the best score among its probed centroids, or, for a token
   none of whose probed centroids the page holds, that token's ``nprobe``-th best centroid score
   (a bound on what its unprobed centroids score). Every page gets an approximate score this way
   for the cost of a few list reads.
3. **Exact MaxSim** (:func:`mmrank.maxsim.maxsim`) over the ``maxsim_depth`` pages with the best
   approximate scores, read from the patch files (:mod:`mmrank.patch_files`); the ranking is by
   exact score, and only those pages are returned, so every score a caller sees is exact.

PLAID's last stage (re-scoring from compressed residuals) is replaced by exact scores from the
stored float16 vectors. Small spaces (at most ``EXACT_PATCHES`` vectors, a hundred-odd pages) get
no centroids: every page is scored exactly, which is then as fast. ``exhaustive=True`` does the
same at any size, for checking. ``benchmarks/late_interaction_bench.py`` measures recall against
exhaustive MaxSim and the pairs scored.

On disk an index is a folder: ``index.json`` (format, dimension, lists, ``nprobe``, the page ids
in label order, the arrays file's name and SHA-256) and ``patch-index-<16 hex>.npz`` (plain
arrays, read without pickles): each page's rows in the patch files, the centroids, each page's
centroid set and the lists. The patch vectors themselves stay in the collection's patch files.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.errors import CollectionError, InputError
from mmrank.files import fsync_dir, fsync_file, sha256_file, temporary_path, write_json_atomic
from mmrank.maxsim import FLOATS_PER_BLOCK, maxsim
from mmrank.patch_files import PatchFiles

FORMAT_NAME = "mmrank.patch_index"
FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"
_ARRAYS_FILE = re.compile(r"patch-index-[0-9a-f]{16}\.npz")

EXACT_PATCHES = 1 << 17   # up to this many patch vectors, every page is scored exactly
MIN_LISTS, MAX_LISTS = 256, 1 << 16
POINTS_PER_CENTROID = 40  # k-means sample: FAISS warns below 39 points per centroid
KMEANS_ITERATIONS = 10
HNSW_ASSIGN_FROM = 1 << 13  # from this many centroids, patches are assigned through an HNSW graph
TWO_LEVEL_FROM = 1 << 12  # from this many centroids, k-means runs in two levels
DEFAULT_NPROBE = 128
DEFAULT_MAXSIM_DEPTH = 200
ASSIGN_BATCH = 1 << 18  # patch rows assigned to centroids at a time (128 MB of float32 at 128-d)

PatchHits = tuple[np.ndarray, np.ndarray]
"""One query's hits: page labels (int64, best first) and their exact MaxSim scores (float32)."""


def plan_lists(patches: int) -> int:
    """Centroids for ``patches`` patch vectors: 0 (score every page exactly) up to
    :data:`EXACT_PATCHES`, else the power of two nearest 4·sqrt(patches), from 256 to 2^16 and at
    most patches / 40 (k-means wants 39 points per centroid). ColBERTv2 takes 16·sqrt, trained on
    a GPU; measured on the ``topics`` data of benchmarks/late_interaction_bench.py (2M patches),
    recall@10 at maxsim_depth 200 was 0.97 with half as many lists as this rule gives and 0.99
    with this rule. From :data:`TWO_LEVEL_FROM` lists, k-means runs in two levels
    (:func:`train_centroids`), which keeps its cost near that of sqrt(nlist) centroids."""
    if patches <= EXACT_PATCHES:
        return 0
    nlist = 1 << round(math.log2(4 * math.sqrt(patches)))
    nlist = min(max(nlist, MIN_LISTS), MAX_LISTS)
    while nlist > MIN_LISTS and nlist * POINTS_PER_CENTROID > patches:
        nlist //= 2
    return nlist


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        from mmrank.faiss_tools import torch_cuda_available

        return "cuda" if torch_cuda_available() else "cpu"
    return "cpu" if device == "cpu" else device


class PatchIndex:
    """Late-interaction search over the pages ``ids`` (label n is ``ids[n]``) of ``dim``-dimensional
    patch vectors in ``files``, whose rows lie at ``locations`` ((pages, 3): segment, first row,
    count). With ``centroids`` ((nlist, dim)), ``page_sets`` (per page, the centroids of its
    patches, as CSR bounds and values) guide the search (module docstring); without, every page is
    scored exactly. ``nprobe``: centroids probed per query token; ``device``: where exact scores
    are computed (``cpu``: numpy; ``cuda``: torch; ``auto``: CUDA when present)."""

    def __init__(self, dim: int, ids: Sequence[str], locations: np.ndarray, files: PatchFiles, *,
                 centroids: np.ndarray | None = None, page_sets: tuple[np.ndarray, np.ndarray] | None = None,
                 lists: tuple[np.ndarray, np.ndarray] | None = None, nprobe: int | None = None,
                 device: str = "auto") -> None:
        self.dim, self.ids, self.files = int(dim), list(ids), files
        self.locations = np.asarray(locations, dtype=np.int64).reshape(-1, 3)
        if len(self.locations) != len(self.ids):
            raise InputError(f"{len(self.ids)} pages but {len(self.locations)} locations.")
        self.centroids = None if centroids is None else np.ascontiguousarray(centroids, dtype=np.float32)
        self.page_sets = page_sets
        if self.centroids is not None and page_sets is None:
            raise InputError("A PatchIndex with centroids needs each page's centroid set.")
        self.lists = lists if lists is not None or page_sets is None else _invert(page_sets, len(self.centroids))
        self.nprobe = nprobe
        self.device = device
        self._label_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"PatchIndex(pages={len(self)}, patches={self.patches}, nlist={self.nlist})"

    @property
    def nlist(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)

    @property
    def patches(self) -> int:
        return int(self.locations[:, 2].sum())

    def labels(self, ids: Sequence[str]) -> np.ndarray:
        """The labels of the known pages among ``ids``, in the order given."""
        if self._label_of is None:
            self._label_of = {item_id: label for label, item_id in enumerate(self.ids)}
        return np.array([self._label_of[i] for i in ids if i in self._label_of], dtype=np.int64)

    # ----------------------------------------------------------------- building
    @classmethod
    def build(cls, dim: int, ids: Sequence[str], locations: np.ndarray, files: PatchFiles, *,
              previous: PatchIndex | None = None, device: str = "auto", seed: int = 0,
              on_progress: Callable[[str], None] | None = None) -> PatchIndex:
        """The index of these pages. With ``previous`` (the last index of the same space) of the
        same number of lists, its centroids are kept and the pages it already had at the same
        rows keep their centroid sets, so only new and moved pages are assigned: adding a file to a
        large collection costs what that file costs."""
        locations = np.asarray(locations, dtype=np.int64).reshape(-1, 3)
        nlist = plan_lists(int(locations[:, 2].sum()))
        if nlist == 0:
            return cls(dim, ids, locations, files, device=device)
        reuse = previous is not None and previous.nlist == nlist and previous.dim == dim
        if reuse:
            centroids = previous.centroids
        else:
            if on_progress:
                on_progress(f"training {nlist} centroids")
            centroids = train_centroids(files, locations, nlist, seed)
        known = previous.page_set_map() if reuse else {}
        sets = assign_pages(files, ids, locations, centroids, known, on_progress)
        return cls(dim, ids, locations, files, centroids=centroids, page_sets=sets, device=device)

    def page_set_map(self) -> dict[tuple[str, int, int, int], np.ndarray]:
        """(id, segment, first row, count) -> the page's centroid set, for rebuilding."""
        bounds, values = self.page_sets
        return {(item_id, *location): values[bounds[n]:bounds[n + 1]]
                for n, (item_id, location) in enumerate(zip(self.ids, map(tuple, self.locations.tolist())))}

    # ----------------------------------------------------------------- searching
    def search(self, queries: Sequence[np.ndarray], k: int, *, among: Sequence[np.ndarray | None] | None = None,
               nprobe: int | None = None, exhaustive: bool = False,
               maxsim_depth: int | None = None) -> list[PatchHits]:
        """The ``k`` best pages of each query (a (tokens, dim) array) by MaxSim, best first.
        ``among`` (one entry per query) restricts a query to those page labels, scored exactly;
        ``exhaustive`` scores every page exactly; otherwise the ``maxsim_depth`` (at least ``k``)
        pages with the best approximate scores are scored exactly (module docstring)."""
        queries = [np.ascontiguousarray(q, dtype=np.float32).reshape(-1, self.dim) for q in queries]
        among = list(among) if among is not None else [None] * len(queries)
        results: list[PatchHits | None] = [None] * len(queries)
        empty = [i for i, q in enumerate(queries) if not len(q) or not len(self)]
        for i in empty:
            results[i] = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        restricted = [i for i in range(len(queries)) if among[i] is not None and results[i] is None]
        for i in restricted:
            labels = np.unique(np.asarray(among[i], dtype=np.int64))
            results[i] = self._exact(queries[i], labels, k)
        rest = [i for i in range(len(queries)) if results[i] is None]
        depth = max(k, maxsim_depth or DEFAULT_MAXSIM_DEPTH)
        if exhaustive or self.centroids is None or depth >= len(self):
            for i, hits in zip(rest, self.exhaustive([queries[i] for i in rest], k)):
                results[i] = hits
        else:
            probe = min(self.nlist, nprobe or self.nprobe or DEFAULT_NPROBE)
            for i in rest:
                approx = self.approximate(queries[i], probe)
                results[i] = self._exact(queries[i], _best(approx, depth), k)
        return results  # type: ignore[return-value]

    def approximate(self, query: np.ndarray, nprobe: int) -> np.ndarray:
        """Every page's approximate score for ``query`` from its ``nprobe`` best centroids per
        token (centroid interaction, step 2 of the module docstring)."""
        scores = query @ self.centroids.T  # (tokens, nlist)
        probed = np.argpartition(-scores, nprobe - 1, axis=1)[:, :nprobe]
        probed_scores = np.take_along_axis(scores, probed, axis=1)
        list_bounds, list_pages = self.lists
        best = np.full((len(query), len(self)), -np.inf, dtype=np.float32)
        for token in range(len(query)):
            starts, ends = list_bounds[probed[token]], list_bounds[probed[token] + 1]
            pages = np.concatenate([list_pages[s:e] for s, e in zip(starts.tolist(), ends.tolist())])
            np.maximum.at(best[token], pages, np.repeat(probed_scores[token], ends - starts))
        floor = probed_scores.min(axis=1, keepdims=True)  # the nprobe-th best centroid of each token
        return np.maximum(best, floor).sum(axis=0)

    def exhaustive(self, queries: Sequence[np.ndarray], k: int) -> list[PatchHits]:
        """The ``k`` best pages of each query by exact MaxSim over every page, read a block of
        pages at a time (all queries scored against each block)."""
        if not queries:
            return []
        scores = np.concatenate([block for _, block in self._scored_blocks(queries, np.arange(len(self)))], axis=1)
        return [_top(np.arange(len(self)), row, k) for row in scores]

    def _exact(self, query: np.ndarray, labels: np.ndarray, k: int) -> PatchHits:
        labels = np.sort(labels)
        if not len(labels):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.concatenate([block[0] for _, block in self._scored_blocks([query], labels)])
        return _top(labels, scores, k)

    def _scored_blocks(self, queries: Sequence[np.ndarray], labels: np.ndarray):
        """(labels, MaxSim scores of every query) per block of pages small enough that one block's
        rows and token x row scores hold at most :data:`~mmrank.maxsim.FLOATS_PER_BLOCK` floats."""
        device = resolve_device(self.device)
        budget = max(1, FLOATS_PER_BLOCK // (self.dim + sum(len(q) for q in queries)))
        for start, end in page_batches(self.locations[labels, 2], budget):
            block = labels[start:end]
            rows = self.files.read(self.locations[block], dtype=None)
            yield block, maxsim(queries, rows, self.locations[block, 2], device=device)

    # ----------------------------------------------------------------- persisting
    def save(self, folder: str | Path) -> None:
        """Write ``index.json`` and the arrays file into ``folder``; atomic (as VectorIndex.save)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"locations": self.locations}
        if self.centroids is not None:
            arrays.update(centroids=self.centroids, set_bounds=self.page_sets[0], set_centroids=self.page_sets[1],
                          list_bounds=self.lists[0], list_pages=self.lists[1])
        temporary = temporary_path(folder, ".npz.tmp", prefix=".patch-index-")
        try:
            with open(temporary, "wb") as out:
                np.savez(out, **arrays)
            fsync_file(temporary)
            digest = sha256_file(temporary)
            target = folder / f"patch-index-{digest[:16]}.npz"
            os.replace(temporary, target)
            write_json_atomic(folder / MANIFEST_NAME, {
                "format": FORMAT_NAME, "version": FORMAT_VERSION, "dim": self.dim, "nlist": self.nlist,
                "nprobe": self.nprobe, "pages": len(self), "patches": self.patches,
                "space": self.files.space, "dtype": self.files.dtype.name,
                "arrays_file": target.name, "sha256": digest, "ids": self.ids})
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_dir(folder)
        for stale in folder.iterdir():
            if _ARRAYS_FILE.fullmatch(stale.name) and stale.name != target.name:
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: str | Path, files: PatchFiles, *, device: str = "auto") -> PatchIndex:
        """A folder written by :meth:`save`, over the patch files ``files``; CollectionError when
        it is damaged or does not match them."""
        folder = Path(folder)
        manifest = _read_manifest(folder)
        arrays = _read_arrays(folder, manifest)
        if manifest["dim"] != files.dim:
            raise CollectionError(f"{folder}: a {manifest['dim']}-dimensional patch index over {files.dim}-dimensional "
                                  "patch vectors.")
        sets = (arrays["set_bounds"], arrays["set_centroids"]) if "centroids" in arrays else None
        lists = (arrays["list_bounds"], arrays["list_pages"]) if "centroids" in arrays else None
        return cls(manifest["dim"], manifest["ids"], arrays["locations"], files, centroids=arrays.get("centroids"),
                   page_sets=sets, lists=lists, nprobe=manifest.get("nprobe"), device=device)


def verify_saved_patch_index(folder: str | Path) -> None:
    """Check a folder written by :meth:`PatchIndex.save` without loading it: a valid manifest and
    its arrays file present with the recorded checksum (CollectionError says what is wrong)."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    _checked_arrays_file(folder, manifest)


# ------------------------------------------------------------------------------------ building parts

def train_centroids(files: PatchFiles, locations: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """``nlist`` unit centroids by spherical k-means (FAISS) on 40 patch rows per centroid drawn
    at random from all the pages (each row read on its own: rows taken from a few whole pages
    instead cover a few pages' patterns, and measured recall fell from 0.98 to 0.77)."""
    import faiss

    rng = np.random.default_rng(seed)
    counts = locations[:, 2]
    total = int(counts.sum())
    chosen = np.sort(rng.choice(total, min(total, POINTS_PER_CENTROID * nlist), replace=False))
    page = np.searchsorted(np.cumsum(counts), chosen, side="right")
    offset = chosen - (np.cumsum(counts) - counts)[page]
    rows = np.stack([locations[page, 0], locations[page, 1] + offset, np.ones_like(offset)], axis=1)
    sample = np.ascontiguousarray(files.read(rows), dtype=np.float32)
    if nlist >= TWO_LEVEL_FROM:
        # sqrt(nlist) coarse clusters, then each split into its share of the nlist (faiss.contrib):
        # every point meets about 2 sqrt(nlist) centroids per iteration instead of nlist.
        from faiss.contrib.clustering import two_level_clustering

        centroids, _ = two_level_clustering(sample, int(math.sqrt(nlist)), nlist, clustering_niter=KMEANS_ITERATIONS,
                                            spherical=True, seed=seed + 1)
    else:
        kmeans = faiss.Kmeans(files.dim, nlist, niter=KMEANS_ITERATIONS, spherical=True, seed=seed + 1,
                              max_points_per_centroid=POINTS_PER_CENTROID + 1)
        kmeans.train(sample)
        centroids = kmeans.centroids
    return np.ascontiguousarray(centroids / np.linalg.norm(centroids, axis=1, keepdims=True), dtype=np.float32)


def centroid_quantizer(centroids: np.ndarray) -> Any:
    """A FAISS index that finds a vector's nearest centroid: exact up to
    :data:`HNSW_ASSIGN_FROM` centroids, an HNSW graph from there (assignment then costs the same
    however many centroids there are)."""
    import faiss

    dim = centroids.shape[1]
    if len(centroids) < HNSW_ASSIGN_FROM:
        quantizer = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 80
        quantizer.hnsw.efSearch = 64
    quantizer.add(centroids)
    return quantizer


def assign_pages(files: PatchFiles, ids: Sequence[str], locations: np.ndarray, centroids: np.ndarray,
                 known: dict[tuple[str, int, int, int], np.ndarray] | None = None,
                 on_progress: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each page's set of centroids (sorted, int32) as CSR (bounds, values): from ``known`` for a
    page already assigned at the same rows, else by assigning its rows to their nearest centroid,
    :data:`ASSIGN_BATCH` rows at a time."""
    known = known or {}
    sets: list[np.ndarray | None] = [known.get((item_id, *location)) for item_id, location in
                                     zip(ids, map(tuple, locations.tolist()))]
    todo = np.array([n for n, found in enumerate(sets) if found is None], dtype=np.int64)
    if len(todo):
        quantizer = centroid_quantizer(centroids)
        for start, end in page_batches(locations[todo, 2], ASSIGN_BATCH):
            batch = todo[start:end]
            _, nearest = quantizer.search(files.read(locations[batch]), 1)
            bounds = np.concatenate([[0], np.cumsum(locations[batch, 2])])
            for n, page in enumerate(batch.tolist()):
                sets[page] = np.unique(nearest[bounds[n]:bounds[n + 1], 0]).astype(np.int32)
            if on_progress:
                on_progress(f"assigned {end} of {len(todo)} pages")
    sizes = np.array([len(found) for found in sets], dtype=np.int64)
    values = np.concatenate(sets) if sets else np.zeros(0, np.int32)
    return np.concatenate([[0], np.cumsum(sizes)]), values.astype(np.int32)


def page_batches(counts: np.ndarray, budget: int):
    """(start, end) ranges over pages with ``counts`` rows each, in order, holding at most
    ``budget`` rows each (a page larger than that alone)."""
    cumulative = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
    start = 0
    while start < len(cumulative) - 1:
        end = max(start + 1, int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1)
        yield start, end
        start = end


def _invert(page_sets: tuple[np.ndarray, np.ndarray], nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Per centroid, the pages whose set holds it (CSR bounds over ``nlist`` centroids, int32 pages)."""
    bounds, values = page_sets
    pages = np.repeat(np.arange(len(bounds) - 1, dtype=np.int32), np.diff(bounds))
    order = np.argsort(values, kind="stable")
    list_bounds = np.searchsorted(values[order], np.arange(nlist + 1)).astype(np.int64)
    return list_bounds, pages[order]


def _best(scores: np.ndarray, depth: int) -> np.ndarray:
    """The positions of the ``depth`` largest scores (in no order)."""
    if depth >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, depth - 1)[:depth]


def _top(labels: np.ndarray, scores: np.ndarray, k: int) -> PatchHits:
    """The ``k`` best of ``labels`` by ``scores``, best first; equal scores by label."""
    order = np.lexsort((labels, -scores))[:k]
    return labels[order].astype(np.int64), scores[order].astype(np.float32)


# ------------------------------------------------------------------------------------ reading parts

def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise CollectionError(f"No saved patch index at {folder}: the folder does not exist.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionError(f"{folder} is not a saved patch index: {path} is missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CollectionError(f"Cannot read the patch index manifest {path}: {error}") from error
    problem = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        problem = f"its format is not {FORMAT_NAME!r}"
    elif manifest.get("version") != FORMAT_VERSION:
        problem = f"format version {manifest.get('version')!r}, but this mmrank reads version {FORMAT_VERSION}"
    elif not isinstance(manifest.get("arrays_file"), str) or not _ARRAYS_FILE.fullmatch(manifest["arrays_file"]):
        problem = "arrays_file is missing or not a plain patch-index-<hash>.npz name"
    elif not isinstance(manifest.get("ids"), list) or not all(isinstance(i, str) for i in manifest["ids"]):
        problem = "ids is not a list of strings"
    elif not isinstance(manifest.get("dim"), int) or not isinstance(manifest.get("sha256"), str):
        problem = "dim or sha256 is missing"
    if problem:
        raise CollectionError(f"{path} is not a valid patch index manifest: {problem}.")
    return manifest


def _checked_arrays_file(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / manifest["arrays_file"]
    if not path.is_file():
        raise CollectionError(f"The saved patch index {folder} is incomplete: {path} is missing.")
    if sha256_file(path) != manifest["sha256"]:
        raise CollectionError(f"{path} is corrupted or truncated: its checksum does not match {folder / MANIFEST_NAME}.")
    return path


def _read_arrays(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    path = _checked_arrays_file(folder, manifest)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise CollectionError(f"Cannot read {path}: {error}") from error
    pages = len(manifest["ids"])
    locations = arrays.get("locations")
    if locations is None or locations.shape != (pages, 3):
        raise CollectionError(f"{path} does not match its manifest: not one location per page.")
    return arrays
