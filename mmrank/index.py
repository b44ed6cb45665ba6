"""VectorIndex: inner-product search over unit vectors keyed by string ids.

FAISS does the work (CPU, or GPU with a FAISS GPU build); exact search on CUDA without a FAISS GPU
build goes through torch (:mod:`mmrank.torch_search`). Where an index runs is chosen by
:func:`mmrank.faiss_tools.choose_backend`. FAISS labels are internal: callers only ever see their
own string ids.

On disk a saved index is a folder::

    <path>/
      index.json                 manifest: format + version, dim, factory, nprobe, ef_search,
                                 the FAISS file's name and SHA-256, and the string id of every label
      index-<16 hex>.faiss       the index in FAISS's own format (faiss.write_index), always a CPU index
      vectors-<16 hex>.f32       for an index that re-scores its candidates (``refine``): the float32
                                 vector of every label, read by row (:mod:`mmrank.raw_vectors`)

The FAISS file is named after its content, so a save never changes the file the current manifest
points to; replacing ``index.json`` is the single atomic step that switches to the new state, after
which the old FAISS file is deleted. Loading checks the checksum and that the file's vector count
and labels agree with the manifest; an index searched from disk (``on_disk``) and the vectors file
are checked by size only (hashing gigabytes on every load would cost more than the search).

Labels are sequential int64 numbers, never reused.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrank import faiss_shards, faiss_tools
from mmrank.errors import CollectionError, InputError, MMRankError, listing
from mmrank.files import fsync_dir, fsync_file, sha256_file, temporary_path, write_json_atomic
from mmrank.raw_vectors import RawVectors, rescore
from mmrank.torch_search import TorchExactSearch

FORMAT_NAME = "mmrank.vector_index"
FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"
_INDEX_FILE = re.compile(r"index-[0-9a-f]{16}\.faiss")
_VECTORS_FILE = re.compile(r"vectors-[0-9a-f]{16}\.f32")


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


def as_vectors(vectors: Any, dim: int, what: str, allow_1d: bool = False) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, ``dim``) array; InputError naming ``what`` when it has
    another shape or holds NaN or infinity (``allow_1d``: one (dim,) vector is one row)."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a numeric array: {exc}") from exc
    if allow_1d and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InputError(f"{what} must be a 2-D array of shape (n, {dim}); got shape {array.shape}.")
    if array.shape[1] != dim:
        raise InputError(f"{what} have dimension {array.shape[1]}, but this index holds {dim}-dimensional vectors.")
    bad = _nonfinite_rows(array)
    if bad:
        raise InputError(f"{what} contain NaN or infinite values, in rows {listing(bad, quote=False)}.")
    return np.ascontiguousarray(array)


class Labels:
    """The two-way map between string ids and the int64 labels FAISS stores: label ``n`` is the
    ``n``-th id ever added; a removed label maps to None and is never reused. The map from ids to
    labels is built only when first needed (adding, removing, membership), so an index loaded to
    search holds just the array of ids."""

    def __init__(self, ids: Sequence[str | None] = ()) -> None:
        # ids_of[label] is the id of a label (None once removed). It keeps a None slot past the last
        # label, so FAISS's "no hit" label -1 maps to None without a special case.
        self.ids_of = np.array([*ids, None], dtype=object)
        self.count = len(ids)
        self._live = self.count - sum(item_id is None for item_id in ids)
        self._by_id: dict[str, int] | None = None

    @property
    def _label_of(self) -> dict[str, int]:
        if self._by_id is None:
            self._by_id = {item_id: label for label, item_id in enumerate(self.ids_of[: self.count].tolist())
                           if item_id is not None}
        return self._by_id

    def __len__(self) -> int:
        return self._live

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    def assign(self, ids: list[str]) -> np.ndarray:
        """New labels for new ids."""
        labels = np.arange(self.count, self.count + len(ids), dtype=np.int64)
        if self.count + len(ids) + 1 > len(self.ids_of):
            grown = np.full(max(self.count + len(ids) + 1, 2 * len(self.ids_of)), None, dtype=object)
            grown[: self.count] = self.ids_of[: self.count]
            self.ids_of = grown
        self.ids_of[labels] = ids
        if self._by_id is not None:
            self._by_id.update(zip(ids, labels.tolist()))
        self.count += len(ids)
        self._live += len(ids)
        return labels

    def release(self, ids: Iterable[str]) -> np.ndarray:
        """The sorted labels of the known ids among ``ids``, which are forgotten."""
        label_of = self._label_of
        labels = np.array(sorted({label_of[i] for i in ids if i in label_of}), dtype=np.int64)
        for item_id in self.ids_of[labels]:
            del label_of[item_id]
        self.ids_of[labels] = None
        self._live -= len(labels)
        return labels

    def to_list(self) -> list[str | None]:
        """The id of every label so far (position = label; None = removed), as saved."""
        return self.ids_of[: self.count].tolist()


class VectorIndex:
    """Inner-product (cosine, for unit vectors) search keyed by the caller's string ids.

    ``factory`` is a FAISS index factory string: ``"Flat"`` (exact, the default), ``"IVF1024,Flat"``,
    ``"IVF256,PQ16"``, ``"HNSW32"``... ``device`` and ``backend`` choose where it runs (see
    :func:`~mmrank.faiss_tools.choose_backend`; the torch backend also runs on the CPU, which tests
    use). ``nprobe`` (IVF) and ``ef_search`` (HNSW) are search breadths.

    ``dtype`` (float16, bfloat16 or float32; default float16 on CUDA and float32 on the CPU),
    ``chunk_size`` (database rows per matmul) and ``query_batch_size`` only apply to the torch backend.
    FAISS GPU indexes return at most 2048 hits per query.

    ``gpus`` spreads the index over several GPUs: ``"all"`` (every visible GPU; on a machine with
    one or none this changes nothing), a number N (the first N) or a list of GPU numbers (asking
    for more GPUs than are visible is an error that says so). ``multi_gpu`` says how FAISS uses
    them: ``"shard"`` (default: each GPU holds 1/n of the vectors, so n GPUs hold n times as much)
    or ``"replicate"`` (each GPU holds every vector and serves 1/n of the queries: more queries/s).
    The torch backend always splits the vectors over its GPUs. ``self.gpus`` lists the GPUs in use
    (none on the CPU). A saved index is always one CPU index, loadable with or without GPUs.

    ``refine`` (for compressed indexes such as IVF-PQ): a search fetches ``refine`` x k candidates
    and re-scores them exactly from the full-precision vectors, which the index keeps in a file
    (``vectors_file``, else an anonymous temporary file) and reads only by the rows it re-scores.
    ``on_disk``: once saved, an IVF index is searched from disk when loaded (see :meth:`load`).

    ``faiss_index`` and ``ids`` wrap an existing CPU FAISS index built from ``factory``, whose labels
    are positions in ``ids`` (None for a removed label), as :meth:`load` does.
    """

    def __init__(self, dim: int, factory: str = "Flat", *, device: str = "auto", nprobe: int | None = None,
                 ef_search: int | None = None, backend: str | None = None, dtype: str | None = None,
                 chunk_size: int = 65536, query_batch_size: int = 1024, faiss_index: Any | None = None,
                 ids: Sequence[str | None] = (), refine: int | None = None,
                 vectors_file: str | Path | RawVectors | None = None, on_disk: bool = False,
                 gpus: str | int | Sequence[int] | None = None, multi_gpu: str = "shard") -> None:
        self.dim = _positive_int(dim, "dim")
        if not isinstance(factory, str) or not factory.strip():
            raise InputError(f"factory must be a FAISS index factory string such as 'Flat'; got {factory!r}.")
        self.factory = factory.strip()
        fresh = faiss_tools.new_index(self.dim, self.factory)
        self._needs_training = not fresh.is_trained
        self._min_training = faiss_tools.min_training_vectors(fresh)
        if multi_gpu not in faiss_shards.MULTI_GPU_MODES:
            raise InputError(f"multi_gpu must be 'shard' or 'replicate'; got {multi_gpu!r}.")
        self.multi_gpu = multi_gpu
        self.backend, self.device, self.gpus = faiss_tools.choose_devices(self.factory, device, backend, gpus)
        cpu_index = fresh if faiss_index is None else faiss_index
        self._labels = Labels(ids)
        if self.backend == "torch":
            self._store: faiss_tools.FaissStore | TorchExactSearch = TorchExactSearch(
                self.dim, self.device, dtype, chunk_size, query_batch_size,
                devices=[f"cuda:{n}" for n in self.gpus] if len(self.gpus) > 1 else None)
            self._store.add_from(cpu_index)
        else:
            self._store = self._faiss_store(cpu_index, device != "auto" or faiss_tools.asks_for_gpus(gpus))
        self._nprobe: int | None = None
        self._ef_search: int | None = None
        if nprobe is not None:
            self.nprobe = nprobe
        if ef_search is not None:
            self.ef_search = ef_search
        self.refine = None if refine is None else _positive_int(refine, "refine")
        self.on_disk = bool(on_disk)
        self.read_only = False  # an IVF index loaded from disk
        self._raw: RawVectors | None = None
        if isinstance(vectors_file, RawVectors):
            self._raw = vectors_file
        elif self.refine:
            if self._labels.count:
                raise InputError("An index wrapped with its labels needs its vectors file (a RawVectors) "
                                 "to re-score candidates.")
            self._raw = RawVectors.create(self.dim, vectors_file)

    def _faiss_store(self, cpu_index: Any, explicit_gpu: bool) -> faiss_tools.FaissStore:
        if self.backend == "faiss-gpu":
            try:
                if len(self.gpus) > 1:
                    return faiss_tools.FaissStore(cpu_index, gpus=self.gpus, multi_gpu=self.multi_gpu)
                return faiss_tools.FaissStore(cpu_index, self.gpus[0])
            except RuntimeError as exc:  # FAISS has no GPU version of this index type (e.g. HNSW)
                if explicit_gpu:
                    raise MMRankError(
                        f"FAISS cannot run a {self.factory!r} index on the GPU ({exc}). Use device='cpu'."
                    ) from exc
                self.backend, self.device, self.gpus = "faiss-cpu", "cpu", []
        return faiss_tools.FaissStore(cpu_index)

    # ----------------------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._labels

    def __repr__(self) -> str:
        return f"VectorIndex(dim={self.dim}, factory={self.factory!r}, backend={self.backend!r}, size={len(self)})"

    @property
    def min_training_vectors(self) -> int:
        """The fewest vectors this index type can be trained on (1 for one that learns nothing)."""
        return self._min_training

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

    def use_default_breadth(self) -> None:
        """Set ``nprobe`` (IVF) or ``ef_search`` (HNSW) to mmrank's defaults (saved with the index):
        :func:`~mmrank.faiss_tools.default_nprobe` and ``DEFAULT_EF_SEARCH``, where FAISS's own
        (1 and 16) miss most neighbours. Nothing changes for other indexes."""
        if self.backend == "torch":  # exact search: no breadth
            return
        fresh = faiss_tools.new_index(self.dim, self.factory)
        nprobe = faiss_tools.default_nprobe(fresh)
        if nprobe is not None:
            self.nprobe = nprobe
        elif faiss_tools.is_hnsw(fresh):
            self.ef_search = faiss_tools.DEFAULT_EF_SEARCH

    def _set_search_parameter(self, name: str, value: int) -> int:
        value = _positive_int(value, name)
        applies = f"{name} applies to {'IVF' if name == 'nprobe' else 'HNSW'} indexes, not to {self.factory!r}"
        if isinstance(self._store, TorchExactSearch):
            raise InputError(applies + ".")
        try:
            self._store.set_parameter(name, value)
        except RuntimeError as exc:  # FAISS's own message only names its source line
            raise InputError(applies + ".") from exc
        return value

    # ------------------------------------------------------------------------------------ building

    def train(self, vectors: np.ndarray) -> None:
        """Learn the index's quantizers (IVF, PQ) from a sample; does nothing for Flat and plain HNSW."""
        vectors = as_vectors(vectors, self.dim, "vectors")
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
        self._check_writable()
        vectors = as_vectors(vectors, self.dim, "vectors")
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
        if self._raw is not None:  # row n of the file is label n's vector
            if not self._raw.writable:  # loaded: the saved file stays as its manifest describes it
                self._raw = self._raw.writable_copy()
            self._raw.append(vectors)
        self._store.add(vectors, self._labels.assign(ids))

    def _check_writable(self) -> None:
        if self.read_only:
            raise MMRankError(f"This {self.factory!r} index is searched from disk (loaded with on_disk=True), "
                              "which is read-only: load it with on_disk=False to change it.")

    def _check_new_ids(self, ids: list[str]) -> None:
        not_str = [str(i) for i in ids if not isinstance(i, str)]
        if not_str:
            raise InputError(f"ids must be strings; got {listing(not_str)}.")
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise InputError(f"Duplicate ids in this call: {listing(repeated)}.")
        present = [i for i in ids if i in self._labels]
        if present:
            raise InputError(
                f"Ids already in the index: {listing(present)}. Remove them first to replace their vectors."
            )

    def remove(self, ids: Iterable[str]) -> int:
        """Remove these ids (unknown ones are ignored) and return how many were removed."""
        if isinstance(ids, (str, bytes)):
            raise InputError("ids must be a list of strings, not a single string.")
        self._check_writable()
        if not self._store.removable:
            raise MMRankError(
                f"A {self.factory!r} index cannot remove vectors (FAISS does not support it for this index "
                f"type). Rebuild the index from the vectors you want to keep."
            )
        labels = self._labels.release(ids)
        return self._store.remove(labels) if len(labels) else 0

    # ------------------------------------------------------------------------------------ searching

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` best ids per query and their scores.

        ``queries`` is (Q, dim), or (dim,) for one query. Returns ids per query (only real hits, so
        fewer than ``k`` when the index holds fewer) and float32 scores of shape (Q, k), padded with -inf.
        """
        labels, scores = self.search_labels(queries, k)
        hits = self._labels.ids_of[labels]
        missing = labels < 0
        if missing.any():  # IVF with a small nprobe, HNSW: fewer than `found` hits for some queries
            ids = [row[keep].tolist() for row, keep in zip(hits, ~missing)]
        else:
            ids = hits.tolist()
        if scores.shape[1] < k:
            scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
        return ids, scores

    def search_labels(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
                      ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, len(self))`` best labels per query (int64, -1 where the index found fewer)
        and their float32 scores (-inf there): :meth:`search` before labels become ids, for
        callers that keep rankings as arrays (:meth:`label_ids` maps labels to ids). ``nprobe``
        and ``ef_search`` widen or narrow this search only (ignored where they do not apply)."""
        queries = as_vectors(queries, self.dim, "queries", allow_1d=True)
        k = _positive_int(k, "k")
        found = min(k, len(self))
        if found == 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        if isinstance(self._store, TorchExactSearch):  # exact: no breadth to set
            scores, labels = self._store.search(queries, found)
        elif self._raw is not None and self.refine:
            _, candidates = self._store.search(queries, min(len(self), found * self.refine), nprobe=nprobe,
                                               ef_search=ef_search)
            scores, labels = rescore(self._raw, queries, candidates, found)
        else:
            scores, labels = self._store.search(queries, found, nprobe=nprobe, ef_search=ef_search)
        scores[labels < 0] = -np.inf
        return labels, scores

    @property
    def label_ids(self) -> np.ndarray:
        """The id of every label (object array; None for a removed label), with one more None
        slot at the end so that the "no hit" label -1 maps to None."""
        return self._labels.ids_of[: self._labels.count + 1]

    # ----------------------------------------------------------------------------------- persisting

    def save(self, path: str | Path) -> None:
        """Save to the folder ``path`` (created if needed) as ``index.json`` + ``index-<hash>.faiss``.

        Atomic: the new FAISS file gets a new name, then ``index.json`` is replaced in one rename; a
        failure at any point leaves the previous save readable.
        """
        if self.read_only:  # its lists live in the file it was loaded from, which a save may replace
            raise MMRankError("An index searched from disk cannot be saved; load it with on_disk=False "
                              "to save a copy.")
        folder = Path(path)
        vectors_file = None
        if self._raw is not None:
            vectors_file = self._saved_vectors(folder)
        _write_saved_index(folder, self._store.to_cpu(), lambda name, digest: {
            **self._manifest(name, digest), "vectors_file": vectors_file, "on_disk": self.on_disk})

    def _saved_vectors(self, folder: Path) -> str:
        """The name of this index's vectors file in ``folder``: the file itself when it already
        lies there under its final name (an index built in place), else a new copy."""
        raw = self._raw
        assert raw is not None
        if raw.path is not None and raw.path.parent.resolve() == folder.resolve() \
                and _VECTORS_FILE.fullmatch(raw.path.name):
            return raw.path.name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / new_vectors_name()
        raw.save_to(target)
        return target.name

    def _manifest(self, index_file: str, digest: str) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "factory": self.factory,
            "metric": "inner_product",
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
            "refine": self.refine,
            "index_file": index_file,
            "sha256": digest,
            "count": len(self),
            "ids": self._labels.to_list(),  # position = FAISS label; null = removed
        }

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", backend: str | None = None, dtype: str | None = None,
             chunk_size: int = 65536, query_batch_size: int = 1024, on_disk: bool | None = None,
             gpus: str | int | Sequence[int] | None = None, multi_gpu: str = "shard") -> VectorIndex:
        """Load a folder written by :meth:`save`, onto ``device`` (and ``gpus``: see the class docstring).

        ``on_disk`` searches an IVF index from disk: its inverted lists are memory-mapped and only
        the lists a search probes are read; the index is then read-only (:attr:`read_only`). FAISS
        maps plain IVF lists (Flat, SQ, 8-bit PQ codes), not fast-scan ones, which load into memory
        as usual. None: as it was saved."""
        folder = Path(path)
        manifest = _read_manifest(folder, folder / MANIFEST_NAME)  # read once: it lists every id
        on_disk = bool(manifest.get("on_disk")) if on_disk is None else on_disk
        cpu_index = _read_saved_index(folder, manifest, on_disk=on_disk)
        raw = None
        if manifest.get("vectors_file"):
            raw = RawVectors.open(folder / manifest["vectors_file"], manifest["dim"], len(manifest["ids"]))
        index = cls(manifest["dim"], manifest["factory"], device=device, nprobe=manifest["nprobe"],
                    ef_search=manifest["ef_search"], backend=backend, dtype=dtype, chunk_size=chunk_size,
                    query_batch_size=query_batch_size, faiss_index=cpu_index, ids=manifest["ids"],
                    refine=manifest.get("refine"), vectors_file=raw, on_disk=on_disk, gpus=gpus,
                    multi_gpu=multi_gpu)
        index.read_only = faiss_tools.lists_on_disk(cpu_index)
        return index


def new_vectors_name() -> str:
    """A fresh name for a vectors file (random, so a new file never replaces one in use)."""
    return f"vectors-{os.urandom(8).hex()}.f32"


def _write_saved_index(folder: Path, cpu_index: Any, manifest: Callable[[str, str], dict[str, Any]]) -> None:
    """Write ``cpu_index`` as ``index-<hash>.faiss`` and then ``manifest(file name, sha256)`` as
    ``index.json`` into ``folder``; see :meth:`VectorIndex.save`."""
    import faiss

    if folder.exists() and not folder.is_dir():
        raise CollectionError(f"Cannot save the index to {folder}: it is a file, and a saved index is a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    previous = _referenced_file(manifest_path)
    temporary = temporary_path(folder, ".faiss.tmp", prefix=".index-")
    index_path: Path | None = None
    try:
        faiss.write_index(cpu_index, str(temporary))
        fsync_file(temporary)
        digest = sha256_file(temporary)
        index_path = folder / f"index-{digest[:16]}.faiss"
        os.replace(temporary, index_path)
        manifest_data = manifest(index_path.name, digest)
        write_json_atomic(manifest_path, manifest_data)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if index_path is not None and index_path.name != previous:
            index_path.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        raise CollectionError(f"Could not save the index to {folder}: {exc}") from exc
    fsync_dir(folder)
    keep = {index_path.name, manifest_data.get("vectors_file")}
    for stale in folder.iterdir():
        if (_INDEX_FILE.fullmatch(stale.name) or _VECTORS_FILE.fullmatch(stale.name)) and stale.name not in keep:
            stale.unlink(missing_ok=True)


def verify_saved_index(folder: str | Path) -> None:
    """Check a folder written by :meth:`VectorIndex.save` without loading it: a valid manifest, and
    the FAISS file it names present with its recorded checksum. CollectionError says what is wrong."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    manifest = _read_manifest(folder, manifest_path)
    _checked_index_file(folder, manifest, manifest_path)
    if manifest.get("vectors_file"):
        RawVectors.open(folder / manifest["vectors_file"], manifest["dim"], len(manifest["ids"])).close()


def _checked_index_file(folder: Path, manifest: dict[str, Any], manifest_path: Path,
                        hashed: bool = True) -> Path:
    index_path = folder / manifest["index_file"]
    if not index_path.is_file():
        raise CollectionError(f"The saved index {folder} is incomplete: {index_path} is missing.")
    if hashed and sha256_file(index_path) != manifest["sha256"]:
        raise CollectionError(f"{index_path} is corrupted or truncated: its checksum does not match {manifest_path}.")
    return index_path


def _read_saved_index(folder: Path, manifest: dict[str, Any], on_disk: bool = False) -> Any:
    """The CPU FAISS index of a folder written by :meth:`VectorIndex.save`, checked against its
    ``manifest`` (``on_disk``: an IVF index's lists memory-mapped, its checksum not read)."""
    import faiss

    index_path = _checked_index_file(folder, manifest, folder / MANIFEST_NAME, hashed=not on_disk)
    try:
        cpu_index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP if on_disk else 0)
    except RuntimeError as exc:
        raise CollectionError(f"FAISS cannot read {index_path}: {exc}") from exc
    _check_agreement(cpu_index, manifest, index_path)
    return cpu_index


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
    for key in ("nprobe", "ef_search", "refine"):
        if manifest.get(key) is not None and not isinstance(manifest[key], int):
            return f"{key} is not an integer"
    vectors_file = manifest.get("vectors_file")
    if vectors_file is not None and not (isinstance(vectors_file, str) and _VECTORS_FILE.fullmatch(vectors_file)):
        return "vectors_file is not a plain vectors-<hex>.f32 name"
    ids = manifest.get("ids")
    if not isinstance(ids, list) or not all(i is None or isinstance(i, str) for i in ids):
        return "ids is not a list of strings and nulls"
    named = [i for i in ids if i is not None]
    if len(set(named)) != len(named) or manifest.get("count") != len(named):
        return "its ids are repeated or do not match its count"
    return None


def _check_agreement(index: Any, manifest: dict[str, Any], index_path: Path) -> None:
    """Raise CollectionError unless the FAISS index is the one the manifest describes."""
    import faiss

    problem = None
    labels = faiss_tools.id_map_labels(index)
    if index.d != manifest["dim"] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problem = f"it holds {index.d}-dimensional vectors with metric {index.metric_type}"
    elif index.ntotal != manifest["count"]:
        problem = f"it holds {index.ntotal} vectors, the manifest names {manifest['count']} ids"
    elif labels is not None and not np.array_equal(
            labels, np.flatnonzero([i is not None for i in manifest["ids"]])):
        problem = "its labels differ from the manifest's ids"
    if problem:
        raise CollectionError(f"{index_path} does not match its manifest: {problem}.")


def _referenced_file(manifest_path: Path) -> str | None:
    """The FAISS file name an existing manifest points to, if it can be read."""
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8")).get("index_file")
    except (OSError, ValueError, AttributeError):
        return None
