"""VectorIndex: inner-product search over unit vectors keyed by string ids.

FAISS does the work (CPU, or GPU with a FAISS GPU build); exact search on CUDA without a FAISS GPU
build goes through a torch matmul + top-k backend. FAISS labels are internal: callers only ever see
their own string ids.

On disk a saved index is a folder::

    <path>/
      index.json                 manifest: format + version, dim, factory, nprobe, ef_search,
                                 the FAISS file's name and SHA-256, and the string id of every label
      index-<16 hex>.faiss       the index in FAISS's own format (faiss.write_index), always a CPU index

The FAISS file is named after its content, so a save never changes the file the current manifest
points to; replacing ``index.json`` is the single atomic step that switches to the new state, after
which the old FAISS file is deleted. Loading checks the checksum and that the file's vector count
and labels agree with the manifest.

Labels are sequential int64 numbers, never reused. IVF indexes store them natively; every other
index type is wrapped in ``IndexIDMap2`` (an IDMap around IVF would mislabel hits after a removal).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.errors import CollectionError, InputError, MissingDependencyError, MMRankError

FORMAT_NAME = "mmrank.vector_index"
FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"
_INDEX_FILE = re.compile(r"index-[0-9a-f]{16}\.faiss")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_TORCH_DTYPES = ("float16", "bfloat16", "float32")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            "VectorIndex needs FAISS: pip install faiss-cpu (or the GPU build: pip install 'mmrank[gpu]')."
        ) from exc
    return faiss


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("The torch index backend needs PyTorch: pip install torch.") from exc
    return torch


def _faiss_gpu_count() -> int:
    faiss = _import_faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _resolve_backend(factory: str, device: str, backend: str | None) -> tuple[str, str]:
    """Pick ``(backend, device)``: backend is faiss-cpu, faiss-gpu or torch; device is cpu or cuda[:n]."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}.")
    if backend not in (None, "faiss", "torch"):
        raise InputError(f"backend must be None (automatic), 'faiss' or 'torch'; got {backend!r}.")
    exact = factory == "Flat"
    if backend == "torch":
        if not exact:
            raise InputError(f"The torch backend does exact search only (factory 'Flat'), not {factory!r}.")
        if device == "auto":
            return "torch", "cuda" if _torch_cuda_available() else "cpu"
        if device != "cpu" and not _torch_cuda_available():
            raise MMRankError(f"device={device!r} with the torch backend, but torch sees no CUDA device.")
        return "torch", device
    if device == "cpu":
        return "faiss-cpu", "cpu"
    if _faiss_gpu_count() > 0:
        return "faiss-gpu", "cuda" if device == "auto" else device
    if backend is None and exact and _torch_cuda_available():
        return "torch", "cuda" if device == "auto" else device
    if device == "auto":
        return "faiss-cpu", "cpu"
    if backend == "faiss":
        why = "torch is not used because backend='faiss' was asked for"
    elif exact:
        why = "torch sees no CUDA device either"
    else:
        why = f"the torch GPU backend only does exact search (factory 'Flat'), not {factory!r}"
    raise MMRankError(
        f"device={device!r} but no GPU path is available: this FAISS build has no GPU support "
        f"(pip install 'mmrank[gpu]' for faiss-gpu) and {why}. Use device='cpu' or 'auto'."
    )


def _new_faiss_index(dim: int, factory: str) -> Any:
    """An empty CPU index for ``factory`` (inner product) that takes our int64 labels via add_with_ids."""
    faiss = _import_faiss()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"FAISS cannot build an index from the factory string {factory!r}: {exc}") from exc
    # IVF indexes store labels themselves; wrapping them in an IDMap would mislabel hits after a removal.
    return index if _has_native_ids(index) else faiss.IndexIDMap2(index)


def _has_native_ids(index: Any) -> bool:
    faiss = _import_faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _has_native_ids(index.index)
    return isinstance(index, (faiss.IndexIVF, faiss.IndexIDMap))


def _removable(index: Any) -> bool:
    """Whether FAISS can remove vectors from ``index`` and keep every remaining label right."""
    faiss = _import_faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _removable(index.index)
    if isinstance(index, faiss.IndexIDMap):
        return _compacts_on_removal(index.index)
    return isinstance(index, faiss.IndexIVF)


def _compacts_on_removal(index: Any) -> bool:
    faiss = _import_faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _compacts_on_removal(index.index)
    return isinstance(index, faiss.IndexFlatCodes)


def _min_training_vectors(index: Any) -> int:
    """The fewest vectors FAISS can train ``index`` on: k-means needs one point per centroid."""
    faiss = _import_faiss()
    index = faiss.downcast_index(index)
    need = index.nlist if isinstance(index, faiss.IndexIVF) else 1
    pq = getattr(index, "pq", None)
    if pq is not None:
        need = max(need, pq.ksub)
    for attr in ("index", "storage", "base_index"):
        inner = getattr(index, attr, None)
        if isinstance(inner, faiss.Index):
            need = max(need, _min_training_vectors(inner))
    return need


def _preview(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _nonfinite_rows(array: np.ndarray, block: int = 16384) -> list[int]:
    """Rows holding NaN or inf, checked a block at a time to keep the temporary small."""
    bad: list[int] = []
    for start in range(0, len(array), block):
        finite = np.isfinite(array[start : start + block])
        if not finite.all():
            bad.extend((start + np.flatnonzero(~finite.all(axis=1))).tolist())
    return bad


class _FaissStore:
    """A FAISS index holding VectorIndex's int64 labels, on the CPU or on one GPU."""

    def __init__(self, cpu_index: Any, gpu: int | None) -> None:
        self._faiss = _import_faiss()
        self.removable = _removable(cpu_index)
        self._gpu = gpu
        self.index = cpu_index
        if gpu is not None:
            self._resources = self._faiss.StandardGpuResources()
            self.index = self._faiss.index_cpu_to_gpu(self._resources, gpu, cpu_index)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        self.index.train(vectors)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self.index.add_with_ids(vectors, labels)

    def remove(self, labels: np.ndarray) -> int:
        if self._gpu is None:
            return int(self.index.remove_ids(labels))
        # FAISS GPU indexes cannot remove: do it on a CPU copy and move that back.
        cpu_index = self.to_cpu()
        removed = int(cpu_index.remove_ids(labels))
        self.index = self._faiss.index_cpu_to_gpu(self._resources, self._gpu, cpu_index)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def set_parameter(self, name: str, value: int) -> None:
        space = self._faiss.GpuParameterSpace() if self._gpu is not None else self._faiss.ParameterSpace()
        space.set_index_parameter(self.index, name, value)

    def to_cpu(self) -> Any:
        return self._faiss.index_gpu_to_cpu(self.index) if self._gpu is not None else self.index


class _TorchStore:
    """Exact inner-product search: vectors in one torch tensor, queries in batches, the database in
    chunks, and a running top-k merged across chunks."""

    removable = True
    is_trained = True

    def __init__(self, dim: int, device: str, dtype: str, chunk_size: int, query_batch_size: int) -> None:
        self._torch = _import_torch()
        self.device = self._torch.device(device)
        self.dtype = getattr(self._torch, dtype)
        self.chunk_size = chunk_size
        self.query_batch_size = query_batch_size
        self.ntotal = 0
        self._vectors = self._torch.empty((0, dim), dtype=self.dtype, device=self.device)
        self._labels = np.empty(0, dtype=np.int64)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        end = self.ntotal + len(vectors)
        self._reserve(end)
        self._vectors[self.ntotal : end] = self._torch.tensor(vectors, dtype=self.dtype, device=self.device)
        self._labels[self.ntotal : end] = labels
        self.ntotal = end

    def _reserve(self, size: int) -> None:
        capacity = len(self._labels)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity)
        vectors = self._torch.empty((capacity, self._vectors.shape[1]), dtype=self.dtype, device=self.device)
        vectors[: self.ntotal] = self._vectors[: self.ntotal]
        labels = np.empty(capacity, dtype=np.int64)
        labels[: self.ntotal] = self._labels[: self.ntotal]
        self._vectors, self._labels = vectors, labels

    def remove(self, labels: np.ndarray) -> int:
        keep = np.flatnonzero(~np.isin(self._labels[: self.ntotal], labels))
        removed = self.ntotal - len(keep)
        if removed:
            rows = self._torch.from_numpy(keep).to(self.device)
            self._vectors[: len(keep)] = self._vectors[rows]
            self._labels[: len(keep)] = self._labels[keep]
            self.ntotal = len(keep)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (at most ntotal) rows for each query: (scores float32, labels int64)."""
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        with self._torch.inference_mode():
            for start in range(0, len(queries), self.query_batch_size):
                stop = start + self.query_batch_size
                batch = self._torch.tensor(queries[start:stop], dtype=self.dtype, device=self.device)
                top_scores, top_rows = self._top_k(batch, k)
                scores[start:stop] = top_scores.float().cpu().numpy()
                rows[start:stop] = top_rows.cpu().numpy()
        return scores, self._labels[rows]

    def _top_k(self, queries: Any, k: int) -> tuple[Any, Any]:
        torch = self._torch
        best_scores = best_rows = None
        for start in range(0, self.ntotal, self.chunk_size):
            chunk = self._vectors[start : min(start + self.chunk_size, self.ntotal)]
            scores, rows = (queries @ chunk.T).topk(min(k, len(chunk)), dim=1)
            rows += start
            if best_scores is not None:
                scores, rows = torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows], 1)
                scores, picked = scores.topk(min(k, scores.shape[1]), dim=1)
                rows = rows.gather(1, picked)
            best_scores, best_rows = scores, rows
        return best_scores, best_rows

    def to_cpu(self) -> Any:
        """A FAISS ``IDMap2,Flat`` copy, so saved files are the same whichever backend wrote them."""
        faiss = _import_faiss()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self._vectors.shape[1]))
        vectors = self._vectors[: self.ntotal].float().cpu().numpy()
        index.add_with_ids(vectors, self._labels[: self.ntotal])
        return index

    def add_from(self, index: Any) -> None:
        """Take the vectors and labels of a FAISS ``IDMap,Flat`` index."""
        faiss = _import_faiss()
        id_map = faiss.downcast_index(index)
        flat = faiss.downcast_index(id_map.index)
        self.add(flat.reconstruct_n(0, flat.ntotal), faiss.vector_to_array(id_map.id_map))


class VectorIndex:
    """Inner-product (cosine, for unit vectors) search keyed by the caller's string ids.

    ``factory`` is a FAISS index factory string: ``"Flat"`` (exact, the default), ``"IVF1024,Flat"``,
    ``"IVF256,PQ16"``, ``"HNSW32"``... ``device="auto"`` uses the FAISS GPU build when there is one,
    else the torch backend for exact search on CUDA, else FAISS on the CPU; ``"cpu"`` forces the CPU;
    ``"cuda"``/``"cuda:N"`` insists on a GPU. ``backend`` (``"faiss"`` or ``"torch"``) forces one
    implementation; the torch backend also runs on the CPU, which tests use.

    ``dtype`` (float16, bfloat16 or float32; default float16 on CUDA and float32 on the CPU),
    ``chunk_size`` (database rows per matmul) and ``query_batch_size`` only apply to the torch backend.
    FAISS GPU indexes return at most 2048 hits per query.
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        *,
        device: str = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
        backend: str | None = None,
        dtype: str | None = None,
        chunk_size: int = 65536,
        query_batch_size: int = 1024,
    ) -> None:
        self._setup(dim, factory, None, device, backend, dtype, chunk_size, query_batch_size)
        if nprobe is not None:
            self.nprobe = nprobe
        if ef_search is not None:
            self.ef_search = ef_search

    def _setup(
        self,
        dim: int,
        factory: str,
        cpu_index: Any | None,
        device: str,
        backend: str | None,
        dtype: str | None,
        chunk_size: int,
        query_batch_size: int,
    ) -> None:
        self.dim = _positive_int(dim, "dim")
        if not isinstance(factory, str) or not factory.strip():
            raise InputError(f"factory must be a FAISS index factory string such as 'Flat'; got {factory!r}.")
        self.factory = factory.strip()
        fresh = _new_faiss_index(self.dim, self.factory)
        self._needs_training = not fresh.is_trained
        self._min_training = _min_training_vectors(fresh)
        self.backend, self.device = _resolve_backend(self.factory, device, backend)
        cpu_index = fresh if cpu_index is None else cpu_index
        if self.backend == "torch":
            if dtype is None:
                dtype = "float32" if self.device == "cpu" else "float16"
            if dtype not in _TORCH_DTYPES:
                raise InputError(f"dtype must be one of {', '.join(_TORCH_DTYPES)}; got {dtype!r}.")
            chunk_size = _positive_int(chunk_size, "chunk_size")
            query_batch_size = _positive_int(query_batch_size, "query_batch_size")
            self._store: _FaissStore | _TorchStore = _TorchStore(
                self.dim, self.device, dtype, chunk_size, query_batch_size
            )
            self._store.add_from(cpu_index)
        else:
            self._store = self._faiss_store(cpu_index, explicit_gpu=device != "auto")
        self._nprobe: int | None = None
        self._ef_search: int | None = None
        self._id_to_label: dict[str, int] = {}
        # _label_ids[label] is the string id of a label (None once removed). It always keeps a None slot
        # past the last label, so FAISS's "no hit" label -1 maps to None without a special case.
        self._label_ids = np.full(16, None, dtype=object)
        self._next_label = 0

    def _faiss_store(self, cpu_index: Any, explicit_gpu: bool) -> _FaissStore:
        if self.backend == "faiss-gpu":
            gpu = int(self.device.partition(":")[2] or 0)
            try:
                return _FaissStore(cpu_index, gpu)
            except RuntimeError as exc:  # FAISS has no GPU version of this index type (e.g. HNSW)
                if explicit_gpu:
                    raise MMRankError(
                        f"FAISS cannot run a {self.factory!r} index on the GPU ({exc}). Use device='cpu'."
                    ) from exc
                self.backend, self.device = "faiss-cpu", "cpu"
        return _FaissStore(cpu_index, None)

    # ----------------------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self._id_to_label)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id_to_label

    def __repr__(self) -> str:
        return f"VectorIndex(dim={self.dim}, factory={self.factory!r}, backend={self.backend!r}, size={len(self)})"

    @property
    def is_trained(self) -> bool:
        """Whether vectors can be added (Flat and plain HNSW learn nothing, so they always can)."""
        return self._store.is_trained

    @property
    def nprobe(self) -> int | None:
        """Inverted lists an IVF search visits (None: FAISS's default, 1)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = self._set_search_parameter("nprobe", value)

    @property
    def ef_search(self) -> int | None:
        """HNSW search breadth, efSearch (None: FAISS's default, 16)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = self._set_search_parameter("efSearch", value)

    def _set_search_parameter(self, name: str, value: int) -> int:
        value = _positive_int(value, name)
        applies = f"{name} applies to {'IVF' if name == 'nprobe' else 'HNSW'} indexes, not to {self.factory!r}"
        if isinstance(self._store, _TorchStore):
            raise InputError(applies + ".")
        try:
            self._store.set_parameter(name, value)
        except RuntimeError as exc:  # FAISS's own message only names its source line
            raise InputError(applies + ".") from exc
        return value

    # ------------------------------------------------------------------------------------ building

    def train(self, vectors: np.ndarray) -> None:
        """Learn the index's quantizers (IVF, PQ) from a sample; does nothing for Flat and plain HNSW."""
        vectors = self._check_vectors(vectors, "vectors")
        if not self._needs_training:
            return
        if self.is_trained:
            raise MMRankError(
                f"This {self.factory!r} index is already trained; build a new VectorIndex to retrain."
            )
        if len(vectors) < self._min_training:
            raise InputError(
                f"Training a {self.factory!r} index needs at least {self._min_training} vectors; "
                f"got {len(vectors)}."
            )
        self._train(vectors)

    def _train(self, vectors: np.ndarray) -> None:
        try:
            self._store.train(vectors)
        except RuntimeError as exc:
            raise InputError(
                f"FAISS could not train the {self.factory!r} index on {len(vectors)} vectors: {exc}"
            ) from exc

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add one vector per id. Ids must be new strings; an untrained index trains on this batch."""
        if isinstance(ids, (str, bytes)):
            raise InputError("ids must be a list of strings, not a single string.")
        ids = list(ids)
        vectors = self._check_vectors(vectors, "vectors")
        if len(ids) != len(vectors):
            raise InputError(f"Got {len(ids)} ids for {len(vectors)} vectors; give one id per vector.")
        self._check_new_ids(ids)
        if not ids:
            return
        if not self.is_trained:
            if len(vectors) < self._min_training:
                raise InputError(
                    f"This {self.factory!r} index must be trained before vectors are added, which needs at "
                    f"least {self._min_training} vectors (FAISS recommends about 39 per centroid); this call "
                    f"has {len(vectors)}. Call train() with a larger sample or add more vectors at once."
                )
            self._train(vectors)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        self._store.add(vectors, labels)
        self._reserve_labels(self._next_label + len(ids) + 1)
        self._label_ids[labels] = ids
        self._id_to_label.update(zip(ids, labels.tolist()))
        self._next_label += len(ids)

    def _check_new_ids(self, ids: list[str]) -> None:
        not_str = [i for i in ids if not isinstance(i, str)]
        if not_str:
            raise InputError(f"ids must be strings; got {_preview(map(str, not_str))}.")
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise InputError(f"Duplicate ids in this call: {_preview(repeated)}.")
        present = [i for i in ids if i in self._id_to_label]
        if present:
            raise InputError(
                f"Ids already in the index: {_preview(present)}. Remove them first to replace their vectors."
            )

    def _reserve_labels(self, size: int) -> None:
        if size > len(self._label_ids):
            grown = np.full(max(size, 2 * len(self._label_ids)), None, dtype=object)
            grown[: self._next_label] = self._label_ids[: self._next_label]
            self._label_ids = grown

    def remove(self, ids: Iterable[str]) -> int:
        """Remove these ids (unknown ones are ignored) and return how many were removed."""
        if isinstance(ids, (str, bytes)):
            raise InputError("ids must be a list of strings, not a single string.")
        if not self._store.removable:
            raise MMRankError(
                f"A {self.factory!r} index cannot remove vectors (FAISS does not support it for this index "
                f"type). Rebuild the index from the vectors you want to keep."
            )
        labels = np.array(sorted({self._id_to_label[i] for i in ids if i in self._id_to_label}), dtype=np.int64)
        if not len(labels):
            return 0
        removed = self._store.remove(labels)
        for item_id in self._label_ids[labels]:
            del self._id_to_label[item_id]
        self._label_ids[labels] = None
        return removed

    # ------------------------------------------------------------------------------------ searching

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` best ids per query and their scores.

        ``queries`` is (Q, dim), or (dim,) for one query. Returns ids per query (only real hits, so
        fewer than ``k`` when the index holds fewer) and float32 scores of shape (Q, k), padded with -inf.
        """
        queries = self._check_vectors(queries, "queries", allow_1d=True)
        k = _positive_int(k, "k")
        found = min(k, len(self))
        if found == 0:
            return [[] for _ in range(len(queries))], np.full((len(queries), k), -np.inf, dtype=np.float32)
        scores, labels = self._store.search(queries, found)
        hits = self._label_ids[labels]
        missing = labels < 0
        if missing.any():  # IVF with a small nprobe, HNSW: fewer than `found` hits for some queries
            scores[missing] = -np.inf
            ids = [row[keep].tolist() for row, keep in zip(hits, ~missing)]
        else:
            ids = hits.tolist()
        if found < k:
            scores = np.pad(scores, ((0, 0), (0, k - found)), constant_values=-np.inf)
        return ids, scores

    def _check_vectors(self, vectors: np.ndarray, what: str, allow_1d: bool = False) -> np.ndarray:
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} must be a numeric array: {exc}") from exc
        if allow_1d and array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise InputError(f"{what} must be a 2-D array of shape (n, {self.dim}); got shape {array.shape}.")
        if array.shape[1] != self.dim:
            raise InputError(
                f"{what} have dimension {array.shape[1]}, but this index holds {self.dim}-dimensional vectors."
            )
        bad = _nonfinite_rows(array)
        if bad:
            raise InputError(f"{what} contain NaN or infinite values, in rows {_preview(map(str, bad))}.")
        return np.ascontiguousarray(array)

    # ----------------------------------------------------------------------------------- persisting

    def save(self, path: str | Path) -> None:
        """Save to the folder ``path`` (created if needed) as ``index.json`` + ``index-<hash>.faiss``.

        Atomic: the new FAISS file gets a new name, then ``index.json`` is replaced in one rename; a
        failure at any point leaves the previous save readable.
        """
        faiss = _import_faiss()
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise CollectionError(
                f"Cannot save the index to {folder}: it is a file, and a saved index is a folder."
            )
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / MANIFEST_NAME
        previous = _referenced_file(manifest_path)
        temps: list[Path] = []
        index_path: Path | None = None
        try:
            temps.append(_temp_path(folder, ".faiss.tmp"))
            faiss.write_index(self._store.to_cpu(), str(temps[-1]))
            _fsync_file(temps[-1])
            digest = _sha256(temps[-1])
            candidate = folder / f"index-{digest[:16]}.faiss"
            os.replace(temps[-1], candidate)
            index_path = candidate
            temps.append(_temp_path(folder, ".json.tmp"))
            _write_json(temps[-1], self._manifest(index_path.name, digest))
            os.replace(temps[-1], manifest_path)
        except BaseException as exc:
            for temp in temps:
                temp.unlink(missing_ok=True)
            if index_path is not None and index_path.name != previous:
                index_path.unlink(missing_ok=True)
            if not isinstance(exc, Exception):
                raise
            raise CollectionError(f"Could not save the index to {folder}: {exc}") from exc
        _fsync_dir(folder)
        for stale in folder.iterdir():
            if _INDEX_FILE.fullmatch(stale.name) and stale.name != index_path.name:
                stale.unlink(missing_ok=True)

    def _manifest(self, index_file: str, digest: str) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "factory": self.factory,
            "metric": "inner_product",
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
            "index_file": index_file,
            "sha256": digest,
            "count": len(self),
            "ids": self._label_ids[: self._next_label].tolist(),  # position = FAISS label; null = removed
        }

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        backend: str | None = None,
        dtype: str | None = None,
        chunk_size: int = 65536,
        query_batch_size: int = 1024,
    ) -> VectorIndex:
        """Load a folder written by :meth:`save`, onto ``device`` (see the class docstring)."""
        faiss = _import_faiss()
        folder = Path(path)
        manifest_path = folder / MANIFEST_NAME
        manifest = _read_manifest(folder, manifest_path)
        index_path = folder / manifest["index_file"]
        if not index_path.is_file():
            raise CollectionError(f"The saved index {folder} is incomplete: {index_path} is missing.")
        if _sha256(index_path) != manifest["sha256"]:
            raise CollectionError(
                f"{index_path} is corrupted or truncated: its checksum does not match {manifest_path}."
            )
        try:
            cpu_index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise CollectionError(f"FAISS cannot read {index_path}: {exc}") from exc
        ids = manifest["ids"]
        _check_agreement(cpu_index, manifest, index_path)
        loaded = cls.__new__(cls)
        loaded._setup(
            manifest["dim"], manifest["factory"], cpu_index, device, backend, dtype, chunk_size, query_batch_size
        )
        loaded._label_ids = np.array([*ids, None], dtype=object)
        loaded._id_to_label = {item_id: label for label, item_id in enumerate(ids) if item_id is not None}
        loaded._next_label = len(ids)
        if manifest["nprobe"] is not None:
            loaded.nprobe = manifest["nprobe"]
        if manifest["ef_search"] is not None:
            loaded.ef_search = manifest["ef_search"]
        return loaded


def _read_manifest(folder: Path, manifest_path: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CollectionError(f"No saved vector index at {folder}: the folder does not exist.")
    if not manifest_path.is_file():
        raise CollectionError(f"{folder} is not a saved vector index: {manifest_path} is missing.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CollectionError(f"Cannot read the vector index manifest {manifest_path}: {exc}") from exc
    problem = _manifest_problem(manifest)
    if problem:
        raise CollectionError(f"{manifest_path} is not a valid vector index manifest: {problem}.")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return f"its format is not {FORMAT_NAME!r}"
    if manifest.get("version") != FORMAT_VERSION:
        return f"format version {manifest.get('version')!r}, but this mmrank reads version {FORMAT_VERSION}"
    if not isinstance(manifest.get("dim"), int) or not isinstance(manifest.get("factory"), str):
        return "dim or factory is missing"
    if not isinstance(manifest.get("index_file"), str) or not _INDEX_FILE.fullmatch(manifest["index_file"]):
        return "index_file is missing or not a plain index-<hash>.faiss name"
    if not isinstance(manifest.get("sha256"), str):
        return "sha256 is missing"
    for key in ("nprobe", "ef_search"):
        if manifest.get(key) is not None and not isinstance(manifest[key], int):
            return f"{key} is not an integer"
    ids = manifest.get("ids")
    if not isinstance(ids, list) or not all(i is None or isinstance(i, str) for i in ids):
        return "ids is not a list of strings and nulls"
    named = [i for i in ids if i is not None]
    if len(set(named)) != len(named) or manifest.get("count") != len(named):
        return "its ids are repeated or do not match its count"
    return None


def _check_agreement(index: Any, manifest: dict[str, Any], index_path: Path) -> None:
    """Raise CollectionError unless the FAISS index is the one the manifest describes."""
    faiss = _import_faiss()
    problem = None
    if index.d != manifest["dim"] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problem = f"it holds {index.d}-dimensional vectors with metric {index.metric_type}"
    elif index.ntotal != manifest["count"]:
        problem = f"it holds {index.ntotal} vectors, the manifest names {manifest['count']} ids"
    else:
        outer = faiss.downcast_index(index)
        if isinstance(outer, faiss.IndexIDMap):
            labels = np.sort(faiss.vector_to_array(outer.id_map))
            expected = np.flatnonzero([i is not None for i in manifest["ids"]])
            if not np.array_equal(labels, expected):
                problem = "its labels differ from the manifest's ids"
    if problem:
        raise CollectionError(f"{index_path} does not match its manifest: {problem}.")


def _referenced_file(manifest_path: Path) -> str | None:
    """The FAISS file name an existing manifest points to, if it can be read."""
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8")).get("index_file")
    except (OSError, ValueError, AttributeError):
        return None


def _temp_path(folder: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(dir=folder, prefix=".index-", suffix=suffix)
    os.close(handle)
    return Path(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
