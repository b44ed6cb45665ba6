"""faiss_shards: splitting a FAISS index into shards or replicas, searching them, and merging them back."""

from __future__ import annotations


import faiss
import numpy as np
import pytest

from mmrank import faiss_shards, faiss_tools
from tests import vectors as sample_vectors

# Everything runs on the CPU: shard_index / replicate_index keep the parts as CPU copies with their
# default make_part, so all but the copy to a GPU is exercised. Small-integer vectors make every
# inner product exact (so results cannot depend on how a matrix product is blocked) and make many
# scores equal (so tie handling is exercised on every query).


def integer_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return sample_vectors.integers(n, dim, seed)


def scattered_labels(n: int, seed: int = 0) -> np.ndarray:
    return sample_vectors.scattered_labels(n, 1000, 7, seed)


assert_same_hits = sample_vectors.assert_same_hits


trained_index = sample_vectors.trained_index


def filled_index(factory: str, data: np.ndarray, labels: np.ndarray) -> faiss.Index:
    index = trained_index(factory)
    index.add_with_ids(data, labels)
    if faiss_tools.is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = 4
    return index


MULTI_FACTORIES = ["Flat", "IVF16,Flat", "IVF16,PQ4x4"]


@pytest.mark.parametrize("factory", MULTI_FACTORIES)
def test_shard_index_splits_the_vectors_once_each_with_their_labels(factory):
    data, labels = integer_vectors(500), scattered_labels(500)
    index = filled_index(factory, data, labels)
    made = []
    shards = faiss_shards.shard_index(index, 3, lambda part, i: made.append(i) or part)
    parts = faiss_shards.parts_of(shards)
    assert isinstance(shards, faiss.IndexShards) and not shards.successive_ids and made == [0, 1, 2]
    assert [p.ntotal for p in parts] == [166, 167, 167] and shards.ntotal == 500
    held = [faiss_tools.id_map_labels(p) if factory == "Flat" else faiss_shards.ivf_labels(p) for p in parts]
    assert sorted(np.concatenate(held).tolist()) == sorted(labels.tolist())
    if factory != "Flat":  # IVF: label ranges, in shard order; every shard keeps the trained quantizer
        assert max(held[0]) < min(held[1]) and max(held[1]) < min(held[2])
        centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 16)
        for part in parts:
            assert np.array_equal(faiss.extract_index_ivf(part).quantizer.reconstruct_n(0, 16), centroids)
    assert index.ntotal == 500  # the index itself is left whole


@pytest.mark.parametrize("factory", MULTI_FACTORIES)
@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_search_equals_the_whole_index(factory, n_shards):
    data, labels = integer_vectors(600), scattered_labels(600)
    queries = integer_vectors(25, seed=1)  # 25 queries: FAISS's BLAS path; one query: its heap path
    index = filled_index(factory, data, labels)
    shards = faiss_shards.shard_index(index, n_shards, threaded=n_shards == 3)
    truth = dict(zip(labels.tolist(), data)) if factory != "IVF16,PQ4x4" else None
    for k in (1, 7, 600 // n_shards + 1, 600):  # ties cut at the k-th place; k above a shard's size
        for batch in (queries, queries[:1]):
            whole, split = index.search(batch, k), shards.search(batch, k)
            assert_same_hits(whole, split, truth, batch)
    # k = every vector: no tie group is cut, so labels come in the very same order, ties included
    whole, split = index.search(queries, 600), shards.search(queries, 600)
    assert np.array_equal(whole[1], split[1]) and np.array_equal(whole[0], split[0])
    if factory != "Flat":  # FAISS hands per-search parameters to every shard
        params = faiss.SearchParametersIVF(nprobe=16)
        assert_same_hits(index.search(queries, 50, params=params), shards.search(queries, 50, params=params))
        assert (shards.search(queries, 600, params=params)[1] >= 0).all()  # all lists: every vector


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_sharded_search_after_removal_never_returns_removed_labels(factory):
    data, labels = integer_vectors(400), scattered_labels(400)
    index = filled_index(factory, data, labels)
    gone = labels[::3]
    index.remove_ids(gone)
    shards = faiss_shards.shard_index(index, 2)
    queries = integer_vectors(20, seed=2)
    whole, split = index.search(queries, 400), shards.search(queries, 400)
    assert np.array_equal(whole[1], split[1]) and np.array_equal(whole[0], split[0])
    assert not np.isin(split[1], gone).any() and shards.ntotal == 400 - len(gone)


def test_faiss_merges_shards_ties_higher_shard_first():
    """What the module docstring of faiss_shards says: equal scores from different shards come
    higher shard first, and within a shard in that shard's own order (later-stored first for Flat)."""
    data = np.zeros((6, 4), dtype=np.float32)
    data[:, 0] = 1  # six equal vectors: every score ties
    index = faiss_tools.new_index(4, "Flat")
    index.add_with_ids(data, np.arange(10, 16))
    shards = faiss_shards.shard_index(index, 2)  # shard 0: 10, 11, 12; shard 1: 13, 14, 15
    query = np.ones((1, 4), dtype=np.float32)
    assert shards.search(query, 6)[1].tolist() == [[15, 14, 13, 12, 11, 10]] == index.search(query, 6)[1].tolist()
    # cut at k=2: each shard keeps its earliest members (heap), the merge takes shard 1's first
    assert shards.search(query, 2)[1].tolist() == [[14, 13]]
    assert index.search(query, 2)[1].tolist() == [[11, 10]]


@pytest.mark.parametrize("factory", MULTI_FACTORIES + ["HNSW8"])
def test_replicated_search_equals_the_whole_index_exactly(factory):
    data, labels = integer_vectors(300), scattered_labels(300)
    index = filled_index(factory, data, labels)
    replicas = faiss_shards.replicate_index(index, 3, threaded=False)
    assert isinstance(replicas, faiss.IndexReplicas) and replicas.ntotal == 300
    queries = integer_vectors(10, seed=3)  # split 4 + 4 + 2 over the copies
    for k in (1, 5, 300):
        whole, copied = index.search(queries, k), replicas.search(queries, k)
        assert np.array_equal(whole[0], copied[0]) and np.array_equal(whole[1], copied[1])


def test_merge_parts_gives_back_the_index_that_was_split():
    data = integer_vectors(300)
    labels = np.arange(300, dtype=np.int64) * 2 + 5  # increasing, as VectorIndex gives them
    flat = filled_index("Flat", data, labels)
    parts = faiss_shards.parts_of(faiss_shards.shard_index(flat, 3))
    merged = faiss_shards.merge_parts([faiss.clone_index(p) for p in parts])
    assert faiss.serialize_index(merged).tobytes() == faiss.serialize_index(flat).tobytes()
    ivf = filled_index("IVF16,Flat", data, labels)
    parts = faiss_shards.parts_of(faiss_shards.shard_index(ivf, 2))
    merged = faiss_shards.merge_parts([faiss.clone_index(p) for p in parts])
    assert sorted(faiss_shards.ivf_labels(merged).tolist()) == labels.tolist()
    queries = integer_vectors(20, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(merged.search(queries, 300), ivf.search(queries, 300)))


def test_merge_parts_sorts_an_id_map_by_label_and_keeps_its_reverse_map():
    data, labels = integer_vectors(50), scattered_labels(50)
    index = filled_index("Flat", data, labels)
    merged = faiss_shards.merge_parts([faiss.clone_index(index)])
    stored = faiss.vector_to_array(merged.id_map)
    assert stored.tolist() == sorted(labels.tolist())
    assert np.array_equal(merged.index.reconstruct_n(0, 50), data[np.argsort(labels)])  # stored order
    assert np.array_equal(merged.reconstruct(int(labels[7])), data[7])  # IDMap2 looks labels up


def test_shard_refuses_an_index_faiss_cannot_remove_from():
    with pytest.raises(RuntimeError, match="replicate"):
        faiss_shards.shard_index(faiss_tools.new_index(8, "HNSW8"), 2)


@pytest.mark.parametrize(("sizes", "new", "expected"), [
    ([0, 0], 1, [1, 0]), ([1, 0], 1, [0, 1]), ([0, 0, 0], 7, [3, 2, 2]), ([5, 0, 2], 4, [0, 3, 1]),
    ([5, 0, 2], 0, [0, 0, 0]), ([9, 1], 3, [0, 3]), ([3, 3], 5, [3, 2]),
])
def test_balanced_counts_fill_the_emptiest_parts_first(sizes, new, expected):
    counts = faiss_shards.balanced_counts(sizes, new)
    assert counts == expected and sum(counts) == new
