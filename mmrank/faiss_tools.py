"""Small FAISS helpers, each usable on its own: build an inner-product index from a factory string,
ask what an index can do, choose where search runs, and hold an index on the CPU, one GPU, or
several GPUs (sharded or replicated, with the helpers of :mod:`mmrank.faiss_shards`).

FAISS and torch are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mmrank.errors import InputError, MMRankError, listing
from mmrank.faiss_shards import (MULTI_GPU_MODES, GpuPlacement, HostPlacement, balanced_counts, merge_parts,
                                 parts_of, replicate_index, shard_index, shards_of)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
BACKENDS = ("faiss-cpu", "faiss-gpu", "torch")
_ANY_DIM = 768  # checks a factory's syntax when no dimension is known yet (divisible by common PQ sizes)


def faiss_gpu_count() -> int:
    """GPUs the installed FAISS build can use (0 for faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def torch_cuda_count() -> int:
    """How many CUDA devices torch sees."""
    import torch

    return torch.cuda.device_count()


def choose_backend(factory: str, device: str = "auto", backend: str | None = None, *,
                   faiss_gpus: int | None = None, torch_cuda: bool | None = None) -> tuple[str, str]:
    """Where an index of ``factory`` runs: ``(backend, device)``, backend one of :data:`BACKENDS`
    and device ``cpu`` or ``cuda[:n]``.

    ``device="auto"`` takes the FAISS GPU build when there is one, else torch's exact search on
    CUDA (``Flat`` only), else FAISS on the CPU; ``cuda``/``cuda:N`` insists on a GPU (an error
    says why none can be used); ``cpu`` forces the CPU. ``backend`` (``"faiss"`` or ``"torch"``)
    forces an implementation. ``faiss_gpus`` and ``torch_cuda`` describe the machine (measured
    when None).
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}.")
    if backend not in (None, "faiss", "torch"):
        raise InputError(f"backend must be None (automatic), 'faiss' or 'torch'; got {backend!r}.")
    def cuda() -> bool:  # asked only when it matters: importing torch takes seconds
        return torch_cuda_available() if torch_cuda is None else torch_cuda

    exact = factory == "Flat"
    if backend == "torch":
        if not exact:
            raise InputError(f"The torch backend does exact search only (factory 'Flat'), not {factory!r}.")
        if device == "auto":
            return "torch", "cuda" if cuda() else "cpu"
        if device != "cpu" and not cuda():
            raise MMRankError(f"device={device!r} with the torch backend, but torch sees no CUDA device.")
        return "torch", device
    if device == "cpu":
        return "faiss-cpu", "cpu"
    if (faiss_gpu_count() if faiss_gpus is None else faiss_gpus) > 0:
        return "faiss-gpu", "cuda" if device == "auto" else device
    if backend is None and exact and cuda():
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


def new_index(dim: int, factory: str) -> Any:
    """An empty CPU index for ``factory`` (inner product) that takes int64 labels through
    ``add_with_ids``: IVF indexes store labels themselves, every other type is wrapped in
    ``IndexIDMap2`` (an IDMap around IVF would mislabel hits after a removal)."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"FAISS cannot build an index from the factory string {factory!r}: {exc}") from exc
    return index if has_native_ids(index) else faiss.IndexIDMap2(index)


def check_factory(factory: str, dims: Iterable[int] = ()) -> None:
    """InputError unless FAISS can build an index from ``factory`` for each of ``dims`` (for a
    typo such as ``Flaat``, at any dimension when none is known yet), so a bad factory is refused
    before it is written anywhere."""
    if not isinstance(factory, str) or not factory.strip():
        raise InputError(f"The index factory must be a FAISS factory string such as 'Flat'; got {factory!r}.")
    for dim in sorted(set(dims)) or [_ANY_DIM]:
        try:
            new_index(dim, factory.strip())
        except InputError as error:
            raise InputError(f"{error} Nothing was changed; FAISS factories look like Flat, IVF1024,Flat, "
                             "HNSW32 or IVF1024,PQ32.") from None


def _innermost(index: Any) -> Any:
    """The index under any pre-transforms (OPQ, PCA ...)."""
    import faiss

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def has_native_ids(index: Any) -> bool:
    """Whether ``index`` keeps the labels given to ``add_with_ids`` (IVF and IDMap indexes do)."""
    import faiss

    return isinstance(_innermost(index), (faiss.IndexIVF, faiss.IndexIDMap))


def can_remove(index: Any) -> bool:
    """Whether FAISS can remove vectors from ``index`` and keep every remaining label right: IVF
    indexes, and IDMaps around flat-code indexes (which compact on removal)."""
    import faiss

    inner = _innermost(index)
    if isinstance(inner, faiss.IndexIDMap):
        return isinstance(_innermost(inner.index), faiss.IndexFlatCodes)
    return isinstance(inner, faiss.IndexIVF)


def min_training_vectors(index: Any) -> int:
    """The fewest vectors FAISS can train ``index`` on: k-means needs one point per centroid (IVF
    lists, PQ and OPQ codes) and PCA one per output dimension, in this index or any it wraps."""
    import faiss

    inner = faiss.downcast_index(index)  # a new name: ``index`` keeps the caller's object alive
    need = inner.nlist if isinstance(inner, faiss.IndexIVF) else 1
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, pq.ksub)
    if isinstance(inner, faiss.IndexPreTransform):
        for step in range(inner.chain.size()):
            transform = faiss.downcast_VectorTransform(inner.chain.at(step))
            if isinstance(transform, faiss.OPQMatrix):
                need = max(need, 256)  # OPQ trains a PQ with 8-bit codes
            elif isinstance(transform, faiss.PCAMatrix):
                need = max(need, transform.d_out)
    for attr in ("index", "storage", "base_index"):
        wrapped = getattr(inner, attr, None)
        if isinstance(wrapped, faiss.Index):
            need = max(need, min_training_vectors(wrapped))
    return need


def id_map_labels(index: Any) -> np.ndarray | None:
    """The sorted labels an IDMap index holds, or None for an index that stores labels otherwise."""
    import faiss

    outer = faiss.downcast_index(index)
    if not isinstance(outer, faiss.IndexIDMap):
        return None
    return np.sort(faiss.vector_to_array(outer.id_map))


DEEP_SEARCH = 4  # a search for more than 1/DEEP_SEARCH of an exact index's vectors sorts every score
DEFAULT_EF_SEARCH = 128


def is_ivf(index: Any) -> bool:
    """Whether ``index`` (or the index an IDMap wraps) is an inverted-file index."""
    import faiss

    try:
        return faiss.extract_index_ivf(index) is not None
    except RuntimeError:
        return False


def lists_on_disk(index: Any) -> bool:
    """Whether ``index`` is an IVF index whose inverted lists are memory-mapped from its file
    (read with ``IO_FLAG_MMAP``), so a search reads only the lists it probes."""
    import faiss

    if not is_ivf(index):
        return False
    lists = faiss.extract_index_ivf(index).invlists
    return isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)


def is_hnsw(index: Any) -> bool:
    """Whether ``index`` (or the index an IDMap wraps) is an HNSW graph."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return isinstance(inner, faiss.IndexHNSW)


def default_nprobe(index: Any) -> int | None:
    """The inverted lists an IVF search visits unless told otherwise: a sixteenth of them, at least
    8 (FAISS's own default, 1, finds about one true neighbour in seven on clustered data); None
    for an index that is not IVF."""
    import faiss

    if not is_ivf(index):
        return None
    nlist = faiss.extract_index_ivf(index).nlist
    return min(nlist, max(8, nlist // 16))


def flat_view(index: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored vectors (a read-only view, not a copy) and labels of an exact inner-product CPU
    index wrapped in ``IndexIDMap2`` (as :func:`new_index` makes for ``Flat``); None for any other
    index."""
    import faiss

    if not isinstance(index, faiss.IndexIDMap2):
        return None
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexFlat) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
    vectors.flags.writeable = False
    return vectors, faiss.vector_to_array(index.id_map)


def sorted_search(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the ``k`` best inner products per query, by computing all of them and
    sorting: a matrix product and a sort instead of FAISS's heaps, for deep searches. Equal scores
    come later-stored first, the order FAISS's heaps give a tie group that fits in ``k``. Scores
    equal FAISS's to float rounding."""
    k = min(k, len(vectors))
    scores = np.asarray(queries, dtype=np.float32) @ vectors.T
    found = np.empty((len(scores), k), dtype=np.int64)
    best = np.empty((len(scores), k), dtype=np.float32)
    for row, values in enumerate(scores):
        order = descending_order(values)[:k]
        found[row], best[row] = labels[order], values[order]
    return best, found


def descending_order(values: np.ndarray) -> np.ndarray:
    """The positions of ``values`` from the largest value down, equal values from the last
    position back. One quicksort, then only the tied positions are put in order (a stable sort
    costs twice as much, and ties are rare)."""
    order = np.argsort(-values)
    ranked = values[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])
    if len(tied):
        members = np.union1d(tied, tied + 1)  # the places in `order` that hold a tied value
        run = np.cumsum(np.r_[False, ranked[members][1:] != ranked[members][:-1]])
        order[members] = order[members][np.lexsort((-order[members], run))]
    return order


# ------------------------------------------------------------------------------- several GPUs
#
# Which GPUs an index runs on; mmrank.faiss_shards spreads it over them (sharded or replicated)
# and says what that does to the order of equal scores.


def resolve_gpus(gpus: str | int | Sequence[int] | None, visible: int) -> list[int]:
    """The GPU numbers ``gpus`` names, checked against the ``visible`` GPUs.

    None: none (the device decides); ``"all"``: every visible GPU (none on a machine without one);
    an int N: the first N; a list (or a string such as ``"0,2"``): those GPUs. Asking for more GPUs
    than are visible, or for one that is not, is an MMRankError that says what to do.
    """
    if gpus is None:
        return []
    if isinstance(gpus, str):
        text = gpus.strip().lower()
        if text == "all":
            return list(range(visible))
        try:
            gpus = [int(part) for part in text.split(",")] if "," in text else int(text)
        except ValueError:
            raise InputError(f"gpus must be 'all', a number of GPUs or GPU numbers such as '0,1'; "
                             f"got {gpus!r}.") from None
    hint = ("Use gpus='all' (every visible GPU), a smaller number, or device='cpu'; CUDA_VISIBLE_DEVICES "
            "decides which GPUs a process sees.")
    seen = "no GPU is visible" if visible == 0 else f"only {visible} GPU{'s are' if visible > 1 else ' is'} " \
        f"visible (numbers 0 to {visible - 1})"
    if isinstance(gpus, (int, np.integer)) and not isinstance(gpus, bool):
        if gpus < 1:
            raise InputError(f"gpus must be at least 1; got {gpus}.")
        if gpus > visible:
            raise MMRankError(f"gpus={gpus} asks for {gpus} GPUs, but {seen}. {hint}")
        return list(range(int(gpus)))
    if not isinstance(gpus, Sequence) or not gpus or not all(
            isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in gpus):
        raise InputError(f"gpus must be None, 'all', a number of GPUs or a list of GPU numbers; got {gpus!r}.")
    numbers = [int(g) for g in gpus]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"gpus names a GPU twice: {numbers}.")
    missing = [g for g in numbers if not 0 <= g < visible]
    if missing:
        raise MMRankError(f"gpus={numbers} names GPU {listing(missing, quote=False)}, but {seen}. {hint}")
    return numbers


def asks_for_gpus(gpus: str | int | Sequence[int] | None) -> bool:
    """Whether ``gpus`` insists on GPUs (a number or a list); None and ``"all"`` do not: on a
    machine without GPUs they change nothing."""
    return gpus is not None and not (isinstance(gpus, str) and gpus.strip().lower() == "all")


def choose_devices(factory: str, device: str = "auto", backend: str | None = None,
                   gpus: str | int | Sequence[int] | None = None, *, faiss_gpus: int | None = None,
                   torch_gpus: int | None = None) -> tuple[str, str, list[int]]:
    """:func:`choose_backend`, and the GPUs the index runs on: ``(backend, device, gpu numbers)``
    with no number on the CPU, one for one GPU (device ``cuda:N``), and the GPUs ``gpus`` names
    (:func:`resolve_gpus`) when it names more than one (device ``cuda``).

    ``gpus`` goes with ``device="auto"`` or ``"cuda"``; a number or list of GPUs makes ``auto``
    insist on a GPU, while ``"all"`` uses the GPUs there are, if any. The GPUs counted are FAISS's
    for the FAISS GPU build and torch's for the torch backend (``faiss_gpus`` / ``torch_gpus``
    describe the machine; measured when None)."""
    if gpus is not None and device not in ("auto", "cuda") and (asks_for_gpus(gpus) or device != "cpu"):
        raise InputError(f"gpus={gpus!r} spreads the index over GPUs, which device={device!r} contradicts: "
                         "use device='auto' or 'cuda' with gpus, or leave gpus out.")
    wanted = "cuda" if asks_for_gpus(gpus) and device == "auto" else device
    torch_cuda = None if torch_gpus is None else torch_gpus > 0
    chosen, where = choose_backend(factory, wanted, backend, faiss_gpus=faiss_gpus, torch_cuda=torch_cuda)
    if where == "cpu":
        return chosen, where, []
    if gpus is None:
        return chosen, where, [int(where.partition(":")[2] or 0)]
    if chosen == "faiss-gpu":
        visible = faiss_gpu_count() if faiss_gpus is None else faiss_gpus
    else:
        visible = torch_cuda_count() if torch_gpus is None else torch_gpus
    numbers = resolve_gpus(gpus, visible)
    return chosen, f"cuda:{numbers[0]}" if len(numbers) == 1 else "cuda", numbers


class FaissStore:
    """A FAISS index holding int64 labels: on the CPU, on one GPU (``gpu``: its number) or over
    several (``gpus``: their numbers), either split among them (``multi_gpu="shard"``: each holds
    1/n of the vectors, every query goes to all) or copied to each (``"replicate"``: each holds all
    of them and gets 1/n of the queries). ``placement`` (tests) replaces the GPUs with
    :class:`~mmrank.faiss_shards.HostPlacement`.

    New vectors go to the emptiest shards, or to every replica. What FAISS cannot do on a GPU
    (remove vectors) or on IndexShards / IndexReplicas (remove) is done on CPU copies, which then
    go back; training trains the first part and copies the result to the others, so every part
    has the same quantizers. ``set_parameter`` reaches every part; per-search ``nprobe`` /
    ``ef_search`` apply on the CPU only, as with one GPU.
    """

    def __init__(self, cpu_index: Any, gpu: int | None = None, *, gpus: Sequence[int] | None = None,
                 multi_gpu: str = "shard", placement: GpuPlacement | HostPlacement | None = None) -> None:
        import faiss

        if multi_gpu not in MULTI_GPU_MODES:
            raise InputError(f"multi_gpu must be one of {', '.join(MULTI_GPU_MODES)}; got {multi_gpu!r}.")
        if gpu is not None and gpus is not None:
            raise InputError("Give gpu (one GPU) or gpus (several), not both.")
        self._faiss = faiss
        self.removable = can_remove(cpu_index)
        self._ivf, self._hnsw = is_ivf(cpu_index), is_hnsw(cpu_index)
        self.multi_gpu = multi_gpu
        if placement is None:
            numbers = [gpu] if gpu is not None else list(gpus or ())
            placement = GpuPlacement(numbers) if numbers else None
        self._placement = placement
        self.index = self._place(cpu_index)

    @property
    def devices(self) -> int:
        """How many devices hold the index (0: it is on the CPU)."""
        return 0 if self._placement is None else len(self._placement.gpus)

    def _place(self, cpu_index: Any) -> Any:
        placement = self._placement
        if placement is None:
            return cpu_index
        if len(placement.gpus) == 1:
            return placement.to_device(cpu_index, 0)
        build = shard_index if self.multi_gpu == "shard" else replicate_index
        return build(cpu_index, len(placement.gpus), placement.to_device, threaded=placement.threaded)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if self.devices < 2:
            self.index.train(vectors)
            return
        first = parts_of(self.index)[0]
        first.train(vectors)
        self.index = self._place(self._placement.to_host(first))

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if self.devices < 2:
            self.index.add_with_ids(vectors, labels)
            return
        parts = parts_of(self.index)
        if self.multi_gpu == "replicate":
            counts = [len(vectors)] * len(parts)
            starts = [0] * len(parts)
        else:  # the emptiest shards first (IndexShards would send a lone vector to the last one)
            counts = balanced_counts([part.ntotal for part in parts], len(vectors))
            starts = np.cumsum([0, *counts[:-1]]).tolist()
        for part, start, count in zip(parts, starts, counts):
            if count:
                part.add_with_ids(vectors[start : start + count], labels[start : start + count])
        self.index.syncWithSubIndexes()

    def remove(self, labels: np.ndarray) -> int:
        if self._placement is None:
            return int(self.index.remove_ids(labels))
        if self.devices > 1 and self.multi_gpu == "shard":  # each shard on its own, keeping its place
            removed, shards = 0, []
            for i, shard in enumerate(parts_of(self.index)):
                cpu_shard = self._placement.to_host(shard)
                gone = int(cpu_shard.remove_ids(labels))
                shards.append(self._placement.to_device(cpu_shard, i) if gone else shard)
                removed += gone
            self.index = shards_of(shards, self._placement.threaded)
            return removed
        # FAISS GPU indexes cannot remove: do it on a CPU copy and move that back.
        cpu_index = self.to_cpu()
        removed = int(cpu_index.remove_ids(labels))
        self.index = self._place(cpu_index)
        return removed

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the ``k`` best per query; label -1 where there are fewer hits.

        ``nprobe`` (IVF) and ``ef_search`` (HNSW) set this search's breadth, leaving the index's
        own setting alone; they are ignored by indexes they do not apply to. A deep search of an
        exact CPU index (``k`` above a quarter of its vectors, as evaluation asks for full rankings)
        computes every score and sorts them (:func:`sorted_search`): FAISS's per-query heaps cost
        several times more at that depth."""
        on_cpu = self._placement is None
        flat = flat_view(self.index) if on_cpu and DEEP_SEARCH * k > self.index.ntotal else None
        if flat is not None:
            return sorted_search(*flat, queries, k)
        params = self._search_parameters(nprobe, ef_search)
        return self.index.search(queries, k) if params is None else self.index.search(queries, k, params=params)

    def _search_parameters(self, nprobe: int | None, ef_search: int | None) -> Any:
        """FAISS's per-search parameters for this index, or None when none apply."""
        if self._placement is not None:
            return None
        if nprobe is not None and self._ivf:
            return self._faiss.SearchParametersIVF(nprobe=nprobe)
        if ef_search is not None and self._hnsw:
            return self._faiss.SearchParametersHNSW(efSearch=ef_search)
        return None

    def set_parameter(self, name: str, value: int) -> None:
        """A search parameter such as ``nprobe`` or ``efSearch`` (RuntimeError when it does not apply)."""
        placement = self._placement
        space = self._faiss.ParameterSpace() if placement is None else placement.parameter_space()
        space.set_index_parameter(self.index, name, value)

    def to_cpu(self) -> Any:
        """The index as one CPU index (the index itself when it is on the CPU): a sharded index's
        parts are merged back (:func:`~mmrank.faiss_shards.merge_parts`), a replicated one gives
        its first copy."""
        placement = self._placement
        if placement is None:
            return self.index
        if self.devices == 1:
            return placement.to_host(self.index)
        parts = parts_of(self.index)
        if self.multi_gpu == "replicate":
            return placement.to_host(parts[0])
        return merge_parts([placement.to_host(part) for part in parts])
