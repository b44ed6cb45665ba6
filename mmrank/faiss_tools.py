"""Small FAISS helpers, each usable on its own: build an inner-product index from a factory string,
ask what an index can do, choose where search runs, and hold an index on the CPU or one GPU.

FAISS and torch are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from mmrank.errors import InputError, MMRankError

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


class FaissStore:
    """A FAISS index holding int64 labels, on the CPU or on one GPU (``gpu``: its number)."""

    def __init__(self, cpu_index: Any, gpu: int | None = None) -> None:
        import faiss

        self._faiss = faiss
        self.removable = can_remove(cpu_index)
        self._gpu = gpu
        self.index = cpu_index
        if gpu is not None:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, gpu, cpu_index)

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

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the ``k`` best per query; label -1 where there are fewer hits.

        ``nprobe`` (IVF) and ``ef_search`` (HNSW) set this search's breadth, leaving the index's
        own setting alone; they are ignored by indexes they do not apply to. A deep search of an
        exact CPU index (``k`` above a quarter of its vectors, as evaluation asks for full rankings)
        computes every score and sorts them (:func:`sorted_search`): FAISS's per-query heaps cost
        several times more at that depth."""
        flat = flat_view(self.index) if self._gpu is None and DEEP_SEARCH * k > self.index.ntotal else None
        if flat is not None:
            return sorted_search(*flat, queries, k)
        params = self._search_parameters(nprobe, ef_search)
        return self.index.search(queries, k) if params is None else self.index.search(queries, k, params=params)

    def _search_parameters(self, nprobe: int | None, ef_search: int | None) -> Any:
        """FAISS's per-search parameters for this index, or None when none apply."""
        if self._gpu is not None:
            return None
        if nprobe is not None and is_ivf(self.index):
            return self._faiss.SearchParametersIVF(nprobe=nprobe)
        if ef_search is not None and is_hnsw(self.index):
            return self._faiss.SearchParametersHNSW(efSearch=ef_search)
        return None

    def set_parameter(self, name: str, value: int) -> None:
        """A search parameter such as ``nprobe`` or ``efSearch`` (RuntimeError when it does not apply)."""
        space = self._faiss.GpuParameterSpace() if self._gpu is not None else self._faiss.ParameterSpace()
        space.set_index_parameter(self.index, name, value)

    def to_cpu(self) -> Any:
        return self._faiss.index_gpu_to_cpu(self.index) if self._gpu is not None else self.index
