"""TorchExactSearch on the CPU: chunked top-k against numpy brute force, growing, removal, FAISS
copies, half precision, options."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest
import torch

from mmrank import faiss_tools, torch_search
from mmrank.errors import InputError
from mmrank.torch_search import TorchExactSearch
from tests import vectors as sample_vectors

DIM = 24


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return sample_vectors.unit(n, dim, seed)


def scattered_labels(n: int, seed: int = 0) -> np.ndarray:
    return sample_vectors.scattered_labels(n, 5000, 3, seed)


def brute_force(database: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the ``k`` best rows per query, as TorchExactSearch.search returns them."""
    order, scores = sample_vectors.exact_top_k(database, queries, k)
    return scores, labels[order]


def filled(database: np.ndarray, labels: np.ndarray, **options) -> TorchExactSearch:
    store = TorchExactSearch(DIM, **options)
    store.add(database, labels)
    return store


def assert_brute_force(store: TorchExactSearch, database: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                       k: int) -> None:
    scores, found = store.search(queries, k)
    expected_scores, expected_labels = brute_force(database, labels, queries, k)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == (len(queries), k)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


# ------------------------------------------------------------------------------------ searching


@pytest.mark.parametrize("chunk_size", [3, 7, 50, 120, 1000])  # 3, 7: < k; 7, 50: a short last chunk; == N; > N
@pytest.mark.parametrize("query_batch_size", [1, 4, 50])  # 9 queries: one per batch, a partial last batch, one batch
def test_search_matches_brute_force(chunk_size, query_batch_size):
    database, queries, labels = unit(120), unit(9, seed=1), scattered_labels(120)
    store = filled(database, labels, chunk_size=chunk_size, query_batch_size=query_batch_size)
    for k in (1, 10, 119, 120):  # k == ntotal is the most a caller asks for
        assert_brute_force(store, database, labels, queries, k)


def test_k_equal_to_ntotal_returns_every_label_once_best_first():
    database, queries, labels = unit(50), unit(4, seed=2), scattered_labels(50)
    scores, found = filled(database, labels, chunk_size=6).search(queries, 50)
    for row_scores, row_labels in zip(scores, found):
        assert sorted(row_labels.tolist()) == sorted(labels.tolist())
        assert (np.diff(row_scores) <= 0).all()


def test_search_by_hand():
    database = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    store = TorchExactSearch(2, chunk_size=3, query_batch_size=1)
    store.add(database, np.array([10, 20, 30, 40]))
    scores, found = store.search(np.array([[1, 0], [-0.8, 0.6]], dtype=np.float32), 3)
    assert found.tolist() == [[10, 30, 20], [40, 20, 30]]
    np.testing.assert_allclose(scores, [[1, 0.6, 0], [0.8, 0.6, 0]], atol=1e-6)


# ------------------------------------------------------------------------------- adding, removing


def test_adds_in_several_calls_grow_the_buffer_and_keep_earlier_rows():
    database, labels = unit(200), scattered_labels(200)
    store = TorchExactSearch(DIM, chunk_size=16, query_batch_size=8)
    assert store.ntotal == 0
    total = 0
    for size in (1, 2, 5, 40, 3, 149):  # the first adds outgrow the buffer again and again
        store.add(database[total : total + size], labels[total : total + size])
        total += size
        assert store.ntotal == total
        _, found = store.search(database[:total], 1)  # every row so far still finds itself
        assert found[:, 0].tolist() == labels[:total].tolist()
    assert_brute_force(store, database, labels, unit(6, seed=3), 10)
    copy = store.to_cpu()
    np.testing.assert_array_equal(faiss.downcast_index(copy.index).reconstruct_n(0, 200), database)
    np.testing.assert_array_equal(faiss.vector_to_array(copy.id_map), labels)


def test_remove_keeps_the_remaining_labels():
    database, queries, labels = unit(300), unit(10, seed=1), scattered_labels(300)
    store = filled(database, labels, chunk_size=32)
    assert store.removable and store.is_trained
    gone = np.random.default_rng(5).choice(labels, 100, replace=False)
    unknown = np.array([-1, 7, 10**12], dtype=np.int64)
    assert store.remove(np.concatenate([gone[:40], unknown, gone[:5]])) == 40  # unknown and repeated: ignored
    assert store.remove(gone[40:][::-1]) == 60
    assert store.remove(gone) == 0 and store.remove(unknown) == 0
    assert store.ntotal == 200
    keep = ~np.isin(labels, gone)
    assert_brute_force(store, database[keep], labels[keep], queries, 10)
    assert_brute_force(store, database[keep], labels[keep], queries, 200)
    _, found = store.search(database[keep], 1)
    assert found[:, 0].tolist() == labels[keep].tolist()
    # Survivors keep their order: the FAISS copy lists them as they were added.
    copy = store.to_cpu()  # held in a name: FAISS frees an index whose Python object goes away
    assert faiss.vector_to_array(copy.id_map).tolist() == labels[keep].tolist()


def test_results_after_removal_do_not_depend_on_the_order_of_removals_or_adds():
    database, queries, labels = unit(240), unit(12, seed=4), scattered_labels(240)
    first, second = labels[:240:5], labels[3:240:7]
    a = filled(database, labels, chunk_size=25)
    a.remove(first)
    a.remove(second)
    b = filled(database, labels, chunk_size=25)
    b.remove(np.random.default_rng(6).permutation(np.union1d(first, second)))
    keep = ~np.isin(labels, np.union1d(first, second))
    reverse = np.flatnonzero(keep)[::-1]
    c = filled(database[reverse], labels[reverse], chunk_size=25)  # survivors only, added backwards
    assert a.ntotal == b.ntotal == c.ntotal == keep.sum()
    expected_scores, expected_labels = brute_force(database[keep], labels[keep], queries, 15)
    for store in (a, b, c):
        scores, found = store.search(queries, 15)
        np.testing.assert_array_equal(found, expected_labels)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_remove_everything_then_add_again():
    database, labels = unit(20), scattered_labels(20)
    store = filled(database, labels, chunk_size=4)
    assert store.remove(labels) == 20 and store.ntotal == 0
    store.add(database[:3], np.array([1, 2, 3]))
    assert store.ntotal == 3
    assert_brute_force(store, database[:3], np.array([1, 2, 3]), database[:5], 3)


# ---------------------------------------------------------------------------------- FAISS copies


def test_to_cpu_is_a_faiss_flat_id_map_with_the_same_vectors_and_labels():
    database, queries, labels = unit(150), unit(8, seed=2), scattered_labels(150)
    store = filled(database, labels, chunk_size=40)
    store.remove(labels[::5])
    keep = np.ones(150, dtype=bool)
    keep[::5] = False
    copy = store.to_cpu()
    assert type(copy) is faiss.IndexIDMap2
    flat = faiss.downcast_index(copy.index)
    assert isinstance(flat, faiss.IndexFlat) and flat.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (copy.d, copy.ntotal) == (DIM, 120)
    np.testing.assert_array_equal(flat.reconstruct_n(0, 120), database[keep])
    np.testing.assert_array_equal(faiss.vector_to_array(copy.id_map), labels[keep])
    assert faiss_tools.can_remove(copy) and faiss_tools.id_map_labels(copy).tolist() == sorted(labels[keep].tolist())
    faiss_scores, faiss_labels = copy.search(queries, 10)
    scores, found = store.search(queries, 10)
    np.testing.assert_array_equal(found, faiss_labels)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


def test_to_cpu_writes_the_same_bytes_as_a_faiss_flat_index():
    database, labels = unit(50), scattered_labels(50)
    faiss_index = faiss_tools.new_index(DIM, "Flat")
    faiss_index.add_with_ids(database, labels)
    copy = filled(database, labels, chunk_size=16).to_cpu()
    np.testing.assert_array_equal(faiss.serialize_index(copy), faiss.serialize_index(faiss_index))


def test_add_from_reproduces_the_same_search():
    database, queries, labels = unit(150), unit(8, seed=2), scattered_labels(150)
    store = filled(database, labels, chunk_size=40, query_batch_size=3)
    store.remove(labels[10:30])
    again = TorchExactSearch(DIM, chunk_size=40, query_batch_size=3)
    again.add_from(store.to_cpu())
    assert again.ntotal == store.ntotal == 130
    for k in (1, 10, 130):
        expected_scores, expected_labels = store.search(queries, k)
        scores, found = again.search(queries, k)
        np.testing.assert_array_equal(found, expected_labels)
        np.testing.assert_array_equal(scores, expected_scores)


def test_add_from_a_faiss_flat_index_and_an_empty_one():
    database, labels = unit(60), scattered_labels(60)
    index = faiss_tools.new_index(DIM, "Flat")
    index.add_with_ids(database, labels)
    store = TorchExactSearch(DIM, chunk_size=7)
    store.add_from(faiss_tools.new_index(DIM, "Flat"))  # nothing to take
    assert store.ntotal == 0
    store.add_from(index)
    assert_brute_force(store, database, labels, unit(5, seed=9), 12)


def test_add_from_refuses_an_index_without_an_id_map():
    ivf = faiss_tools.new_index(DIM, "IVF4,Flat")
    with pytest.raises(InputError, match=re.escape("takes its vectors from a FAISS IDMap,Flat index (factory 'Flat')")):
        TorchExactSearch(DIM).add_from(ivf)
    with pytest.raises(InputError, match="IDMap,Flat"):
        TorchExactSearch(DIM).add_from(faiss.IndexFlatIP(DIM))


# ------------------------------------------------------------------------------------- dtypes


def separated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A database and queries that are its rows plus a little noise: each query's best row wins by a wide margin."""
    database = unit(n, seed=seed)
    noise = 0.05 * np.random.default_rng(seed + 1).standard_normal(database.shape).astype(np.float32)
    queries = database + noise
    return database, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def test_default_dtype_on_the_cpu_is_float32():
    assert TorchExactSearch(DIM).dtype is torch.float32
    assert TorchExactSearch(DIM, dtype="float16").dtype is torch.float16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gives_the_same_top_1(dtype):
    database, queries = separated(200)
    labels = scattered_labels(200)
    half = filled(database, labels, dtype=dtype, chunk_size=64, query_batch_size=32)
    full = filled(database, labels, dtype="float32", chunk_size=64, query_batch_size=32)
    half_scores, half_found = half.search(queries, 5)
    full_scores, full_found = full.search(queries, 5)
    assert half.dtype is getattr(torch, dtype) and half_scores.dtype == np.float32
    assert half_found[:, 0].tolist() == full_found[:, 0].tolist() == labels.tolist()
    np.testing.assert_allclose(half_scores, full_scores, atol=3e-2)
    # The FAISS copy holds the rounded vectors, widened back to float32.
    rounded = torch.from_numpy(database).to(getattr(torch, dtype)).float().numpy()
    copy = half.to_cpu()
    np.testing.assert_array_equal(faiss.downcast_index(copy.index).reconstruct_n(0, 200), rounded)


# -------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "float64"}, "dtype must be one of float16, bfloat16, float32; got 'float64'."),
        ({"dtype": "half"}, "dtype must be one of float16, bfloat16, float32; got 'half'."),
        ({"dtype": "Float32"}, "dtype must be one of float16, bfloat16, float32; got 'Float32'."),
        ({"chunk_size": 0}, "chunk_size must be a positive integer; got 0."),
        ({"chunk_size": -5}, "chunk_size must be a positive integer; got -5."),
        ({"chunk_size": 2.0}, "chunk_size must be a positive integer; got 2.0."),
        ({"chunk_size": True}, "chunk_size must be a positive integer; got True."),
        ({"chunk_size": "64"}, "chunk_size must be a positive integer; got '64'."),
        ({"query_batch_size": 0}, "query_batch_size must be a positive integer; got 0."),
        ({"query_batch_size": None}, "query_batch_size must be a positive integer; got None."),
        ({"query_batch_size": False}, "query_batch_size must be a positive integer; got False."),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(InputError) as caught:
        TorchExactSearch(DIM, **options)
    assert str(caught.value) == message


def test_numpy_integers_are_accepted_as_sizes():
    store = TorchExactSearch(DIM, chunk_size=np.int64(5), query_batch_size=np.int32(2))
    assert (store.chunk_size, store.query_batch_size) == (5, 2)
    assert type(store.chunk_size) is int and type(store.query_batch_size) is int
    database, labels = unit(23), scattered_labels(23)
    store.add(database, labels)
    assert_brute_force(store, database, labels, unit(5, seed=1), 23)


# ------------------------------------------------------------------------------ several devices
#
# Small-integer vectors make every inner product exact, whatever the matrix product's blocking or
# precision, and make many scores equal: the tie rule (later-added first, also for which members of
# a tie group cut by the k-th place are kept) then decides every ranking.


def integer_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return sample_vectors.integers(n, dim, seed)


def ranked_later_first(database: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the ``k`` best rows per query, equal scores later row first."""
    scores = queries @ database.T
    order = np.array([faiss_tools.descending_order(row)[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), labels[order]


def added_in_batches(store: TorchExactSearch, database: np.ndarray, labels: np.ndarray) -> TorchExactSearch:
    for start, stop in ((0, 100), (100, 101), (101, 102), (102, len(database))):
        store.add(database[start:stop], labels[start:stop])
    return store


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_split_over_devices_equals_one_device_ties_included(dtype, chunk_size):
    database, labels, queries = integer_vectors(300), scattered_labels(300), integer_vectors(20, seed=1)
    stores = [added_in_batches(TorchExactSearch(8, dtype=dtype, devices=["cpu"] * n, chunk_size=chunk_size,
                                                query_batch_size=8), database, labels) for n in (1, 2, 3)]
    assert [[s.n for s in store._shards] for store in stores] == [[300], [150, 150], [100, 100, 100]]
    for k in (1, 5, 31, 100, 101, 151, 300):  # ties cut at the k-th place; k above a device's rows
        expected = ranked_later_first(database, labels, queries, k)
        for store in stores:
            scores, found = store.search(queries, k)
            assert np.array_equal(found, expected[1]) and np.array_equal(scores, expected[0])


def test_split_search_after_removal_and_more_adds():
    database, labels, queries = integer_vectors(400), scattered_labels(400), integer_vectors(15, seed=2)
    one = TorchExactSearch(8, chunk_size=16)
    two = TorchExactSearch(8, devices=["cpu", "cpu"], chunk_size=16)
    keep = np.ones(400, dtype=bool)
    keep[:150:2] = False  # all from the first device's rows: the devices end up uneven
    for store in (one, two):
        store.add(database[:300], labels[:300])
        assert store.remove(np.concatenate([labels[~keep], [-3]])) == (~keep).sum()
        store.add(database[300:], labels[300:])  # new rows go to the emptier device first
    assert [s.n for s in two._shards] == [163, 162] and two.ntotal == one.ntotal == keep.sum()
    for k in (1, 9, 164, int(keep.sum())):
        expected = ranked_later_first(database[keep], labels[keep], queries, k)
        for store in (one, two):
            scores, found = store.search(queries, k)
            assert np.array_equal(found, expected[1]) and np.array_equal(scores, expected[0])


def test_random_vectors_split_over_devices_match_brute_force():
    database, queries, labels = unit(500), unit(30, seed=4), scattered_labels(500)
    store = TorchExactSearch(DIM, devices=["cpu", "cpu"], chunk_size=64, query_batch_size=16)
    store.add(database, labels)
    assert_brute_force(store, database, labels, queries, 10)
    assert_brute_force(store, database, labels, queries, 500)


def test_split_to_cpu_writes_what_one_device_writes_in_added_order():
    database, labels = integer_vectors(120), scattered_labels(120)
    one, two = TorchExactSearch(8), TorchExactSearch(8, devices=["cpu", "cpu"])
    for store in (one, two):
        added_in_batches(store, database, labels)
        store.remove(labels[5:60:3])
    assert faiss.serialize_index(two.to_cpu()).tobytes() == faiss.serialize_index(one.to_cpu()).tobytes()
    again = TorchExactSearch(8, devices=["cpu", "cpu", "cpu"])
    again.add_from(two.to_cpu())
    queries = integer_vectors(6, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(again.search(queries, 40), one.search(queries, 40)))


def test_fewer_rows_than_k_and_empty_devices():
    store = TorchExactSearch(8, devices=["cpu", "cpu", "cpu"])
    queries = integer_vectors(3, seed=6)
    assert store.search(queries, 5)[0].shape == (3, 0)
    store.add(integer_vectors(2), np.array([4, 9]))  # one device stays empty
    scores, found = store.search(queries, 5)
    assert found.shape == (3, 2) and sorted(found[0].tolist()) == [4, 9]


def test_devices_option():
    store = TorchExactSearch(8, devices=["cpu", "cpu"])
    assert store.device == torch.device("cpu") and store.devices == [torch.device("cpu")] * 2
    assert store.dtype is torch.float32
    for bad in ([], "cpu", ["nowhere"]):
        with pytest.raises(InputError, match="devices"):
            TorchExactSearch(8, devices=bad)


def test_devices_searched_in_threads_give_the_same_results(monkeypatch):
    database, labels, queries = integer_vectors(200), scattered_labels(200), integer_vectors(12, seed=7)
    store = added_in_batches(TorchExactSearch(8, devices=["cpu"] * 3, chunk_size=16, query_batch_size=5),
                             database, labels)
    expected = store.search(queries, 40)
    monkeypatch.setattr(torch_search, "_threaded", lambda devices: True)  # as for shards on 3 GPUs
    assert all(np.array_equal(a, b) for a, b in zip(store.search(queries, 40), expected))
    assert np.array_equal(expected[1], ranked_later_first(database, labels, queries, 40)[1])


def test_only_shards_on_several_gpus_get_threads():
    cuda = [torch.device("cuda:0"), torch.device("cuda:1")]
    assert torch_search._threaded(cuda) and not torch_search._threaded([torch.device("cpu")] * 2)
    assert not torch_search._threaded([cuda[0], cuda[0]])
