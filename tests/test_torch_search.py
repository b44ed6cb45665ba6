"""TorchExactSearch on the CPU: chunked top-k against numpy brute force, growing, removal, FAISS
copies, half precision, options."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest
import torch

from mmrank import faiss_tools
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
