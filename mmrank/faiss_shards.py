"""Spreading a FAISS index over several GPUs, and gathering it back into one CPU index: as a
``faiss.IndexShards`` (each GPU holds a part of the vectors, every query goes to all of them and
their top-k lists are merged) or a ``faiss.IndexReplicas`` (each GPU holds every vector and gets a
share of the queries). :class:`~mmrank.faiss_tools.FaissStore` holds a multi-GPU index with these
helpers.

They build both from a CPU index through a ``make_part(cpu_part, i)`` callback: the GPU path passes
a cloner to GPU ``i`` (:class:`GpuPlacement`), tests pass one that keeps the parts on the CPU
(:class:`HostPlacement`, or the builders' default), so everything but the copy to the GPU runs on a
machine without one too.

Tie order across shards. FAISS merges shards (``merge_knn_results``) with a heap over the shards'
sorted lists, which on equal scores takes the shard with the higher number first. Within one CPU
index equal scores come later-stored first (Flat) or larger label first (IVF). So a sharded index
whose parts hold consecutive stretches (:func:`split_index`: positions for an IDMap index, label
ranges for IVF) returns exactly what the whole index returns, ties included, as long as each group
of equal scores that reaches into the top k fits in it. A tie group cut by the k-th place is
represented by different members (each shard's heap keeps its earliest members, the merge prefers
the higher shard), and once more vectors are added (FaissStore puts them on the emptiest shards)
the order inside a tie group may differ too. The scores, and the labels of each score above the
k-th, are always the same. Replicas each hold the whole index, so they return exactly what it does.

FAISS is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mmrank.errors import InputError

MULTI_GPU_MODES = ("shard", "replicate")


def balanced_counts(sizes: Sequence[int], new: int) -> list[int]:
    """How many of ``new`` rows each of the parts holding ``sizes`` rows takes so that the parts
    end up as even as possible: the smallest are filled first, ties to the lower-numbered part."""
    sizes = np.asarray(sizes, dtype=np.int64)
    low, high = int(sizes.min()), int(sizes.max()) + new
    while low < high:  # the highest level every part can be filled up to with `new` rows
        level = (low + high + 1) // 2
        if np.clip(level - sizes, 0, None).sum() <= new:
            low = level
        else:
            high = level - 1
    counts = np.clip(low - sizes, 0, None)
    rest = new - int(counts.sum())  # fewer than the parts at `low`: one more each, lowest first
    counts[np.flatnonzero(sizes + counts == low)[:rest]] += 1
    return counts.tolist()


def _keep_part(cpu_index: Any, part: int) -> Any:
    return cpu_index


def split_index(cpu_index: Any, parts: int) -> Iterator[Any]:
    """``parts`` CPU copies of ``cpu_index`` that together hold each of its vectors once, with their
    labels, one copy at a time (each is a full copy until the vectors of the other parts are
    removed from it). An IDMap index is split into consecutive stretches of its stored order, an
    IVF index into consecutive label ranges of equal size: the splits under which the merged
    results of the parts equal the whole's, ties included (see the module docstring). Only indexes
    FAISS can remove vectors from (:func:`~mmrank.faiss_tools.can_remove`: IVF, and IDMaps over
    stored codes such as Flat) can be split, and merged back (RuntimeError otherwise)."""
    import faiss

    from mmrank.faiss_tools import _innermost, can_remove  # here: faiss_tools imports this module

    if not 1 <= parts:
        raise InputError(f"An index is split into at least 1 part; got {parts}.")
    outer = faiss.downcast_index(cpu_index)
    if not can_remove(cpu_index):
        raise RuntimeError(f"FAISS cannot remove vectors from {type(_innermost(cpu_index)).__name__} indexes, "
                           "so it cannot split one into shards; use multi_gpu='replicate'.")
    if cpu_index.ntotal == 0:
        selectors = [None] * parts
    elif isinstance(outer, faiss.IndexIDMap):
        stored = faiss.vector_to_array(outer.id_map)
        bounds = [len(stored) * i // parts for i in range(parts + 1)]
        selectors = [faiss.IDSelectorBatch(stored[bounds[i]:bounds[i + 1]]) for i in range(parts)]
    else:
        labels = np.sort(ivf_labels(cpu_index))
        edges = [int(labels[len(labels) * i // parts]) for i in range(parts)] + [int(labels[-1]) + 1]
        selectors = [faiss.IDSelectorRange(edges[i], edges[i + 1]) for i in range(parts)]
    for selector in selectors:
        part = faiss.clone_index(cpu_index)
        if selector is None:
            part.reset()
        else:
            part.remove_ids(faiss.IDSelectorNot(selector))
        yield part


def ivf_labels(index: Any) -> np.ndarray:
    """Every label an IVF index (or one under pre-transforms) holds, list by list."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    found = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def shards_of(parts: Sequence[Any], threaded: bool = True) -> Any:
    """A ``faiss.IndexShards`` over ``parts`` (which keep their labels: ``successive_ids`` off).
    Adding to it splits every batch into equal consecutive stretches, one per part, so a lone
    vector always lands on the last one (:class:`~mmrank.faiss_tools.FaissStore` adds to the
    emptiest parts instead)."""
    import faiss

    shards = faiss.IndexShards(parts[0].d, threaded, False)
    for part in parts:
        shards.add_shard(part)  # FAISS's Python layer keeps a reference to each part
    return shards


def shard_index(cpu_index: Any, n_shards: int, make_shard: Callable[[Any, int], Any] | None = None, *,
                threaded: bool = True) -> Any:
    """``cpu_index`` as a ``faiss.IndexShards`` of ``n_shards`` parts (:func:`split_index`), part i
    passed through ``make_shard(part, i)`` (e.g. a copy to GPU i; by default kept as it is)."""
    make_shard = make_shard or _keep_part
    return shards_of([make_shard(part, i) for i, part in enumerate(split_index(cpu_index, n_shards))], threaded)


def replicate_index(cpu_index: Any, n_replicas: int, make_replica: Callable[[Any, int], Any] | None = None, *,
                    threaded: bool = True) -> Any:
    """A ``faiss.IndexReplicas`` of ``n_replicas`` copies of ``cpu_index`` (``make_replica(index, i)``
    makes copy i, e.g. on GPU i; by default a CPU clone). A search splits the queries among the
    copies; FAISS's IndexReplicas cannot take search parameters or ``add_with_ids`` (add to each
    copy: :func:`parts_of`)."""
    import faiss

    replicas = faiss.IndexReplicas(cpu_index.d, threaded)
    for i in range(n_replicas):
        replicas.addIndex(make_replica(cpu_index, i) if make_replica else faiss.clone_index(cpu_index))
    return replicas


def parts_of(index: Any) -> list[Any]:
    """The sub-indexes of an IndexShards or IndexReplicas; ``[index]`` for any other index. They
    are the Python objects that were added, which own their index (FAISS's Python layer keeps
    them in ``referenced_objects``), so they stay valid after the container is gone; ``at(i)``
    would give views that do not."""
    import faiss

    if not isinstance(index, (faiss.IndexShards, faiss.IndexReplicas)):
        return [index]
    held = list(getattr(index, "referenced_objects", ()))
    if len(held) == index.count():
        return held
    return [faiss.downcast_index(index.at(i)) for i in range(index.count())]


def merge_parts(parts: Sequence[Any]) -> Any:
    """One CPU index holding the vectors and labels of the CPU indexes ``parts`` (all of one type,
    as :func:`split_index` makes them; they are emptied into the first, which is returned). An
    IDMap index over stored codes (Flat, PQ, SQ) comes out in label order: the order an index that
    was never split holds when labels were given in increasing order, as VectorIndex does."""
    import faiss

    from mmrank.faiss_tools import _innermost  # here: faiss_tools imports this module

    merged = parts[0]
    for part in parts[1:]:
        merged.merge_from(part, 0)
    outer = faiss.downcast_index(merged)
    if isinstance(outer, faiss.IndexIDMap) and isinstance(_innermost(outer.index), faiss.IndexFlatCodes):
        _sort_by_label(outer)
    return merged


def _sort_by_label(id_map: Any) -> None:
    """Reorder the stored codes of an IDMap over an IndexFlatCodes (in place) by label."""
    import faiss

    from mmrank.faiss_tools import _innermost  # here: faiss_tools imports this module

    n = id_map.ntotal
    labels = faiss.rev_swig_ptr(id_map.id_map.data(), n) if n else np.empty(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    if np.array_equal(order, np.arange(n)):
        return
    inner = _innermost(id_map.index)
    codes = faiss.rev_swig_ptr(inner.codes.data(), n * inner.code_size).reshape(n, inner.code_size)
    codes[:] = codes[order]
    labels[:] = labels[order]
    if isinstance(id_map, faiss.IndexIDMap2):
        id_map.construct_rev_map()


class GpuPlacement:
    """Moves FAISS indexes between the host and the GPUs ``gpus`` (one ``StandardGpuResources``
    each, as FAISS's multi-GPU code does)."""

    threaded = True  # IndexShards / IndexReplicas run the GPUs in parallel threads

    def __init__(self, gpus: Sequence[int]) -> None:
        import faiss

        self._faiss = faiss
        self.gpus = list(gpus)
        self._resources = [faiss.StandardGpuResources() for _ in self.gpus]

    def to_device(self, cpu_index: Any, part: int) -> Any:
        return self._faiss.index_cpu_to_gpu(self._resources[part], self.gpus[part], cpu_index)

    def to_host(self, index: Any) -> Any:
        return self._faiss.index_gpu_to_cpu(index)

    def parameter_space(self) -> Any:
        return self._faiss.GpuParameterSpace()


class HostPlacement:
    """A stand-in for ``parts`` GPUs that keeps every part on the CPU (copies move by cloning), so
    the multi-GPU logic of :class:`~mmrank.faiss_tools.FaissStore` runs, and is tested, on a
    machine without GPUs."""

    threaded = False

    def __init__(self, parts: int) -> None:
        self.gpus = list(range(parts))

    def to_device(self, cpu_index: Any, part: int) -> Any:
        import faiss

        return faiss.clone_index(cpu_index)

    def to_host(self, index: Any) -> Any:
        import faiss

        return faiss.clone_index(index)

    def parameter_space(self) -> Any:
        import faiss

        return faiss.ParameterSpace()
