"""faiss_tools: backend choice, index construction, what an index can do, and FaissStore on the CPU."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys

import faiss
import numpy as np
import pytest

from mmrank import faiss_shards, faiss_tools
from mmrank.errors import InputError, MMRankError
from tests import vectors as sample_vectors
from tests.paths import REPO

DIM = 32


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return sample_vectors.unit(n, dim, seed)


def clustered(n: int, clusters: int = 16, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return sample_vectors.clustered(n, dim, clusters, seed)


def scattered_labels(n: int, seed: int = 0) -> np.ndarray:
    return sample_vectors.scattered_labels(n, 1000, 7, seed)


def brute_force(database: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the ``k`` best rows per query, as FaissStore.search returns them."""
    order, scores = sample_vectors.exact_top_k(database, queries, k)
    return scores, labels[order]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)


def no_gpu_message(device: str, why: str) -> str:
    return (
        f"device={device!r} but no GPU path is available: this FAISS build has no GPU support "
        f"(pip install 'mmrank[gpu]' for faiss-gpu) and {why}. Use device='cpu' or 'auto'."
    )


# ---------------------------------------------------------------------------------- import cost


def test_import_loads_neither_faiss_nor_torch():
    result = run_python(
        "import sys, mmrank.faiss_tools, mmrank.faiss_shards, mmrank.torch_search; "
        "print(sorted({'faiss', 'torch'} & set(sys.modules)))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_choose_backend_measures_the_machine_only_when_it_must():
    code = """
import sys
from mmrank import faiss_tools as ft
from mmrank.errors import MMRankError
print(ft.choose_backend('Flat', 'cpu'))                    # cpu: nothing to measure
print(ft.choose_backend('Flat', 'cpu', 'torch'))           # torch on the cpu: no CUDA question
print(ft.choose_backend('HNSW32', 'auto', faiss_gpus=0))   # not Flat: torch cannot serve it anyway
try:
    ft.choose_backend('IVF16,Flat', 'cuda', faiss_gpus=0)
except MMRankError:
    print('refused')
print(sorted({'faiss', 'torch'} & set(sys.modules)))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == [
        "('faiss-cpu', 'cpu')", "('torch', 'cpu')", "('faiss-cpu', 'cpu')", "refused", "[]"
    ]


# ------------------------------------------------------------------------------- backend choice


@pytest.mark.parametrize(
    ("faiss_gpus", "torch_cuda", "factory", "device", "backend", "expected"),
    [
        (1, True, "Flat", "auto", None, ("faiss-gpu", "cuda")),
        (1, False, "HNSW32", "cuda:1", None, ("faiss-gpu", "cuda:1")),
        (0, True, "Flat", "auto", None, ("torch", "cuda")),
        (0, True, "Flat", "cuda:1", None, ("torch", "cuda:1")),
        (0, True, "IVF16,Flat", "auto", None, ("faiss-cpu", "cpu")),
        (0, True, "Flat", "auto", "faiss", ("faiss-cpu", "cpu")),
        (1, True, "Flat", "cpu", None, ("faiss-cpu", "cpu")),
        (1, True, "Flat", "auto", "torch", ("torch", "cuda")),
        (0, False, "Flat", "auto", None, ("faiss-cpu", "cpu")),
    ],
)
def test_backend_choice(faiss_gpus, torch_cuda, factory, device, backend, expected):
    assert faiss_tools.choose_backend(factory, device, backend, faiss_gpus=faiss_gpus,
                                      torch_cuda=torch_cuda) == expected


def test_cuda_without_any_gpu_path_is_refused():
    with pytest.raises(MMRankError, match="backend='faiss'"):
        faiss_tools.choose_backend("Flat", "cuda", "faiss", faiss_gpus=0, torch_cuda=True)


@pytest.mark.parametrize(
    ("faiss_gpus", "torch_cuda", "factory", "device", "backend", "expected"),
    [
        # backend='torch': Flat only; auto follows torch's CUDA; an explicit device is kept
        (0, False, "Flat", "auto", "torch", ("torch", "cpu")),
        (2, False, "Flat", "cpu", "torch", ("torch", "cpu")),
        (0, True, "Flat", "cpu", "torch", ("torch", "cpu")),
        (0, True, "Flat", "cuda", "torch", ("torch", "cuda")),
        (0, True, "Flat", "cuda:3", "torch", ("torch", "cuda:3")),
        # device='cpu' always means FAISS on the CPU
        (2, True, "HNSW32", "cpu", None, ("faiss-cpu", "cpu")),
        (2, True, "IVF16,Flat", "cpu", "faiss", ("faiss-cpu", "cpu")),
        # a FAISS GPU build serves every factory, and wins over torch
        (2, True, "IVF16,PQ4x8", "auto", None, ("faiss-gpu", "cuda")),
        (2, False, "Flat", "cuda", "faiss", ("faiss-gpu", "cuda")),
        (1, True, "Flat", "cuda:0", None, ("faiss-gpu", "cuda:0")),
        # no FAISS GPU: torch on CUDA for Flat only, else the CPU under 'auto'
        (0, True, "Flat", "cuda", None, ("torch", "cuda")),
        (0, True, "HNSW32", "auto", None, ("faiss-cpu", "cpu")),
        (0, False, "IVF16,Flat", "auto", None, ("faiss-cpu", "cpu")),
        (0, False, "Flat", "auto", "faiss", ("faiss-cpu", "cpu")),
    ],
)
def test_more_backend_choices(faiss_gpus, torch_cuda, factory, device, backend, expected):
    assert faiss_tools.choose_backend(factory, device, backend, faiss_gpus=faiss_gpus,
                                      torch_cuda=torch_cuda) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:", "CUDA", "cuda:x", "cuda:-1", "cpu:0", " cpu", "auto ", "", None, 0])
def test_bad_device_is_refused(device):
    with pytest.raises(InputError) as caught:
        faiss_tools.choose_backend("Flat", device, faiss_gpus=1, torch_cuda=True)
    assert str(caught.value) == f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}."


@pytest.mark.parametrize("backend", ["faiss-gpu", "faiss-cpu", "Torch", "", "cuda"])
def test_bad_backend_is_refused(backend):
    with pytest.raises(InputError) as caught:
        faiss_tools.choose_backend("Flat", "auto", backend, faiss_gpus=1, torch_cuda=True)
    assert str(caught.value) == f"backend must be None (automatic), 'faiss' or 'torch'; got {backend!r}."


def test_device_is_checked_before_backend():
    with pytest.raises(InputError, match="device must be"):
        faiss_tools.choose_backend("Flat", "gpu", "nope", faiss_gpus=1, torch_cuda=True)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat", "IDMap2,Flat", "flat"])
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_torch_backend_refuses_a_factory_other_than_flat(factory, device):
    with pytest.raises(InputError) as caught:
        faiss_tools.choose_backend(factory, device, "torch", faiss_gpus=1, torch_cuda=True)
    assert str(caught.value) == f"The torch backend does exact search only (factory 'Flat'), not {factory!r}."


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("faiss_gpus", [0, 2])
def test_torch_backend_on_cuda_needs_torch_cuda(device, faiss_gpus):
    with pytest.raises(MMRankError) as caught:
        faiss_tools.choose_backend("Flat", device, "torch", faiss_gpus=faiss_gpus, torch_cuda=False)
    assert type(caught.value) is MMRankError  # the machine's fault, not the input's
    assert str(caught.value) == f"device={device!r} with the torch backend, but torch sees no CUDA device."


@pytest.mark.parametrize(
    ("factory", "device", "backend", "torch_cuda", "why"),
    [
        ("Flat", "cuda", None, False, "torch sees no CUDA device either"),
        ("Flat", "cuda:1", None, False, "torch sees no CUDA device either"),
        ("IVF16,Flat", "cuda", None, True,
         "the torch GPU backend only does exact search (factory 'Flat'), not 'IVF16,Flat'"),
        ("HNSW32", "cuda:2", None, False,
         "the torch GPU backend only does exact search (factory 'Flat'), not 'HNSW32'"),
        ("Flat", "cuda", "faiss", True, "torch is not used because backend='faiss' was asked for"),
        ("IVF16,Flat", "cuda:0", "faiss", False, "torch is not used because backend='faiss' was asked for"),
    ],
)
def test_cuda_without_a_gpu_path_says_why(factory, device, backend, torch_cuda, why):
    with pytest.raises(MMRankError) as caught:
        faiss_tools.choose_backend(factory, device, backend, faiss_gpus=0, torch_cuda=torch_cuda)
    assert type(caught.value) is MMRankError
    assert str(caught.value) == no_gpu_message(device, why)


def test_machine_is_measured_when_not_described():
    measured = {"faiss_gpus": faiss_tools.faiss_gpu_count(), "torch_cuda": faiss_tools.torch_cuda_available()}
    for factory in ("Flat", "IVF16,Flat"):
        for backend in (None, "faiss"):
            assert faiss_tools.choose_backend(factory, "auto", backend) == faiss_tools.choose_backend(
                factory, "auto", backend, **measured)
    assert faiss_tools.choose_backend("Flat", "auto", "torch") == (
        "torch", "cuda" if measured["torch_cuda"] else "cpu")


def test_gpu_counts_describe_this_machine():
    import torch

    count = faiss_tools.faiss_gpu_count()
    assert isinstance(count, int) and count >= 0
    if not hasattr(faiss, "StandardGpuResources"):  # a faiss-cpu build
        assert count == 0
    assert faiss_tools.torch_cuda_available() is torch.cuda.is_available()


# ---------------------------------------------------------------------------------- new_index


@pytest.mark.parametrize(
    ("factory", "outer", "inner"),
    [
        ("Flat", faiss.IndexIDMap2, faiss.IndexFlat),
        ("HNSW32", faiss.IndexIDMap2, faiss.IndexHNSWFlat),
        ("PCA16,Flat", faiss.IndexIDMap2, faiss.IndexPreTransform),
        ("IVF16,Flat", faiss.IndexIVFFlat, None),
        ("IVF16,PQ4x8", faiss.IndexIVFPQ, None),
        ("OPQ4,IVF16,PQ4x8", faiss.IndexPreTransform, None),
    ],
)
def test_new_index_is_inner_product_and_takes_labels(factory, outer, inner):
    index = faiss_tools.new_index(DIM, factory)
    top = faiss.downcast_index(index)
    assert type(top) is outer
    assert (top.d, top.ntotal, top.metric_type) == (DIM, 0, faiss.METRIC_INNER_PRODUCT)
    if inner is None:  # IVF keeps labels itself: an IDMap around it would mislabel hits after a removal
        assert not isinstance(top, faiss.IndexIDMap)
    else:
        wrapped = faiss.downcast_index(top.index)
        assert type(wrapped) is inner and wrapped.metric_type == faiss.METRIC_INNER_PRODUCT


def test_wrapped_index_outlives_the_factory_result_and_keeps_labels():
    index = faiss_tools.new_index(DIM, "Flat")
    gc.collect()  # the IDMap2 must hold on to the Flat index it wraps
    vectors, labels = unit(5), np.array([70, 5, 300, 2**40, 11], dtype=np.int64)
    index.add_with_ids(vectors, labels)
    scores, found = index.search(vectors, 1)
    assert found[:, 0].tolist() == labels.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)  # inner product of unit vectors with themselves


@pytest.mark.parametrize("factory", ["Nonsense42", "IVF16,Flatt", "IVF,Flat", "LSH"])
def test_bad_factory_is_an_input_error_naming_it(factory):
    expected = f"FAISS cannot build an index from the factory string {factory!r}: "
    with pytest.raises(InputError, match=re.escape(expected)):
        faiss_tools.new_index(DIM, factory)


# ------------------------------------------------------------------------ what an index can do


def raw(factory: str):
    """A FAISS index straight from the factory, without new_index's IDMap2."""
    return faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)


@pytest.mark.parametrize(
    ("factory", "native"),
    [
        ("Flat", False),
        ("HNSW32", False),
        ("PQ4", False),
        ("PCA16,Flat", False),
        ("IVF16,Flat", True),
        ("IVF16,PQ4x8", True),
        ("IDMap,Flat", True),
        ("IDMap2,HNSW32", True),
        ("OPQ4,IVF16,Flat", True),
        ("PCA16,IVF16,Flat", True),
    ],
)
def test_has_native_ids(factory, native):
    assert faiss_tools.has_native_ids(raw(factory)) is native
    assert faiss_tools.has_native_ids(faiss_tools.new_index(DIM, factory)) is True  # new_index wraps the rest


@pytest.mark.parametrize(
    ("factory", "removable"),
    [
        ("Flat", True),  # IDMap2 over Flat
        ("SQ8", True),
        ("PQ4", True),
        ("IVF16,Flat", True),
        ("IVF16,PQ4x8", True),
        ("HNSW32", False),  # IDMap2 over HNSW
        ("HNSW32,PQ4", False),
        ("PCA16,Flat", True),  # a pre-transform: the inner index's answer
        ("OPQ4,IVF16,Flat", True),
        ("PCA16,IVF16,Flat", True),
        ("PCA16,HNSW32", False),
        ("OPQ4,HNSW32", False),
    ],
)
def test_can_remove(factory, removable):
    assert faiss_tools.can_remove(faiss_tools.new_index(DIM, factory)) is removable


def test_can_remove_refuses_a_bare_flat_and_hnsw():
    # A bare Flat shifts the labels of later vectors on removal; HNSW cannot remove at all.
    assert faiss_tools.can_remove(raw("Flat")) is False
    assert faiss_tools.can_remove(raw("HNSW32")) is False
    hnsw = faiss_tools.new_index(DIM, "HNSW32")
    hnsw.add_with_ids(unit(10), np.arange(10, dtype=np.int64))
    with pytest.raises(RuntimeError):  # what can_remove() == False spares callers
        hnsw.remove_ids(np.array([3], dtype=np.int64))


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("Flat", 1),
        ("HNSW32", 1),
        ("SQ8", 1),
        ("IVF16,Flat", 16),
        ("IVF64,Flat", 64),
        ("IVF16,PQ4x8", 256),  # k-means of each PQ sub-quantizer: 2**8 centroids
        ("IVF16,PQ4", 256),
        ("IVF16,PQ4x4", 16),  # 2**4 codes, no more than the 16 lists
        ("IVF64,PQ4x4", 64),
        ("PQ4", 256),  # inside the IDMap2
        ("HNSW32,PQ4", 256),  # HNSW's storage
        ("PCA16,IVF16,Flat", 16),  # under a pre-transform
        ("OPQ4,IVF16,PQ4x8", 256),
    ],
)
def test_min_training_vectors(factory, expected):
    index = faiss_tools.new_index(DIM, factory)
    assert faiss_tools.min_training_vectors(index) == expected


# "np": no polysemous training, which takes FAISS some 20 s for 8-bit codes and changes nothing here.
@pytest.mark.parametrize(
    "factory", ["IVF16,Flat", "IVF64,Flat", "IVF16,PQ4x8np", "IVF64,PQ4x4np", "OPQ4,IVF16,PQ4x8np"]
)
def test_min_training_vectors_is_the_fewest_faiss_accepts(factory):
    index = faiss_tools.new_index(DIM, factory)
    need = faiss_tools.min_training_vectors(index)
    data = clustered(need, seed=3)
    with pytest.raises(RuntimeError, match="training points"):
        index.train(data[:-1])
    index = faiss_tools.new_index(DIM, factory)
    index.train(data)
    assert index.is_trained


@pytest.mark.parametrize(("factory", "expected"), [("OPQ4,IVF16,Flat", 256), ("PCA16,Flat", 16)])
def test_min_training_vectors_counts_the_pre_transform(factory, expected):
    index = faiss_tools.new_index(DIM, factory)
    assert faiss_tools.min_training_vectors(index) == expected
    index.train(clustered(expected, seed=3))
    assert index.is_trained


def test_min_training_vectors_of_a_temporary_index():
    code = """
from mmrank import faiss_tools as ft
for _ in range(10):
    found = [ft.min_training_vectors(ft.new_index(32, f)) for f in ("Flat", "HNSW32", "HNSW32,PQ4")]
print(found)
"""
    result = run_python(code)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip() == "[1, 1, 256]"


def test_id_map_labels():
    index = faiss_tools.new_index(DIM, "Flat")
    empty = faiss_tools.id_map_labels(index)
    assert empty.dtype == np.int64 and empty.size == 0
    index.add_with_ids(unit(4), np.array([50, 3, 17, 1000], dtype=np.int64))
    labels = faiss_tools.id_map_labels(index)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 17, 50, 1000]
    index.remove_ids(np.array([17], dtype=np.int64))
    assert faiss_tools.id_map_labels(index).tolist() == [3, 50, 1000]
    hnsw = faiss_tools.new_index(DIM, "HNSW32")
    hnsw.add_with_ids(unit(3), np.array([9, 2, 5], dtype=np.int64))
    assert faiss_tools.id_map_labels(hnsw).tolist() == [2, 5, 9]


def test_id_map_labels_is_none_without_an_id_map():
    ivf = faiss_tools.new_index(DIM, "IVF16,Flat")
    ivf.train(clustered(200))
    ivf.add_with_ids(clustered(20, seed=1), np.arange(20, dtype=np.int64))
    assert faiss_tools.id_map_labels(ivf) is None
    assert faiss_tools.id_map_labels(raw("Flat")) is None
    assert faiss_tools.id_map_labels(faiss_tools.new_index(DIM, "OPQ4,IVF16,Flat")) is None


# ---------------------------------------------------------------------------------- FaissStore


def test_faiss_store_flat_add_search_remove():
    database, queries, labels = unit(400), unit(12, seed=1), scattered_labels(400)
    store = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "Flat"))
    assert store.removable and store.is_trained
    store.add(database[:150], labels[:150])
    store.add(database[150:], labels[150:])
    scores, found = store.search(queries, 10)
    expected_scores, expected_labels = brute_force(database, labels, queries, 10)
    assert found.dtype == np.int64 and found.shape == (12, 10)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)

    gone = labels[::3]
    unknown = np.array([-5, 999], dtype=np.int64)
    assert store.remove(np.concatenate([gone[::-1], unknown])) == len(gone)
    assert store.index.ntotal == 400 - len(gone)
    keep = np.ones(400, dtype=bool)
    keep[::3] = False
    scores, found = store.search(queries, 10)
    expected_scores, expected_labels = brute_force(database[keep], labels[keep], queries, 10)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert store.search(database[keep], 1)[1][:, 0].tolist() == labels[keep].tolist()  # survivors find themselves
    assert faiss_tools.id_map_labels(store.to_cpu()).tolist() == sorted(labels[keep].tolist())
    assert store.to_cpu() is store.index  # already on the CPU


def test_faiss_store_ivf_trains_probes_and_removes():
    database, queries, labels = clustered(600), clustered(15, seed=2), scattered_labels(600, seed=1)
    store = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "IVF16,Flat"))
    assert store.removable and not store.is_trained
    store.train(database)
    assert store.is_trained
    store.add(database, labels)

    store.set_parameter("nprobe", 1)  # FAISS's default: one list of 16, so far fewer than 600 hits
    _, found = store.search(queries, 600)
    assert (found == -1).any(axis=1).all()
    assert set(found[found >= 0].tolist()) <= set(labels.tolist())

    store.set_parameter("nprobe", 16)  # every list: exact
    assert store.index.nprobe == 16
    scores, found = store.search(queries, 10)
    expected_scores, expected_labels = brute_force(database, labels, queries, 10)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)

    keep = np.ones(600, dtype=bool)
    keep[1::2] = False
    assert store.remove(labels[~keep]) == 300
    scores, found = store.search(queries, 10)
    expected_scores, expected_labels = brute_force(database[keep], labels[keep], queries, 10)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_faiss_store_removal_under_a_pre_transform_keeps_labels():
    database, queries, labels = unit(300), unit(10, seed=1), scattered_labels(300, seed=2)
    keep = np.ones(300, dtype=bool)
    keep[::4] = False
    removed = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "PCA16,Flat"))
    never_added = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "PCA16,Flat"))
    assert removed.removable
    for store in (removed, never_added):
        store.train(database)  # PCA is deterministic: both learn the same projection
    removed.add(database, labels)
    never_added.add(database[keep], labels[keep])
    assert removed.remove(labels[~keep]) == (~keep).sum()
    scores, found = removed.search(queries, 20)
    expected_scores, expected_labels = never_added.search(queries, 20)
    np.testing.assert_array_equal(found, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_faiss_store_hnsw_searches_but_cannot_remove():
    database, labels = unit(300), scattered_labels(300, seed=3)
    store = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "HNSW32"))
    assert not store.removable and store.is_trained
    store.add(database, labels)
    store.set_parameter("efSearch", 64)
    assert faiss.downcast_index(store.index.index).hnsw.efSearch == 64
    assert store.search(database, 1)[1][:, 0].tolist() == labels.tolist()
    with pytest.raises(RuntimeError):
        store.set_parameter("nprobe", 4)
    with pytest.raises(RuntimeError):
        store.remove(labels[:1])


@pytest.mark.parametrize("name", ["nprobe", "efSearch"])
def test_faiss_store_parameter_that_does_not_apply_raises(name):
    store = faiss_tools.FaissStore(faiss_tools.new_index(DIM, "Flat"))
    with pytest.raises(RuntimeError, match=name):
        store.set_parameter(name, 4)


def test_flat_view_sees_an_exact_indexs_vectors_and_labels_without_copying():
    data = sample_vectors.unit(20, 8)
    index = faiss_tools.new_index(8, "Flat")
    index.add_with_ids(data, np.arange(20) * 3 + 5)
    vectors, labels = faiss_tools.flat_view(index)
    assert np.array_equal(vectors, data) and labels.tolist() == (np.arange(20) * 3 + 5).tolist()
    assert not vectors.flags.writeable and not vectors.flags.owndata
    for factory in ("HNSW8", "IVF2,Flat", "PQ4"):
        assert faiss_tools.flat_view(faiss_tools.new_index(8, factory)) is None


def test_a_deep_search_sorts_every_score_and_agrees_with_faiss():
    rng = np.random.default_rng(3)
    data = sample_vectors.unit(300, 16)
    data[[40, 41, 90, 250]] = data[7]  # a tie group of five that fits in every k asked here
    index = faiss_tools.new_index(16, "Flat")
    index.add_with_ids(data, rng.permutation(300).astype(np.int64))
    queries = np.vstack([data[7] + 0.01, sample_vectors.unit(3, 16, seed=9)]).astype(np.float32)
    store = faiss_tools.FaissStore(index)
    for k in (300, 120):  # deeper than a quarter of the vectors: sorted
        scores, labels = store.search(queries, k)
        expected_scores, expected_labels = index.search(queries, k)
        assert np.array_equal(labels, expected_labels)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    scores, labels = faiss_tools.sorted_search(*faiss_tools.flat_view(index), queries[:1], 5)
    stored = faiss.vector_to_array(index.id_map)  # ties: the later stored first, as FAISS gives them
    assert labels[0].tolist() == stored[[250, 90, 41, 40, 7]].tolist()


def test_descending_order_puts_equal_values_last_position_first():
    rng = np.random.default_rng(0)
    for _ in range(500):  # few distinct values: long runs of ties
        values = rng.integers(0, rng.integers(1, 8), rng.integers(0, 40)).astype(np.float32)
        expected = len(values) - 1 - np.argsort(-values[::-1], kind="stable")
        assert faiss_tools.descending_order(values).tolist() == expected.tolist()


@pytest.mark.parametrize(("factory", "nprobe", "hnsw"), [("IVF64,Flat", 8, False), ("IVF4096,PQ8", 256, False),
                                                        ("IVF8,Flat", 8, False), ("Flat", None, False),
                                                        ("HNSW32", None, True)])
def test_default_breadths_by_index_type(factory, nprobe, hnsw):
    index = faiss_tools.new_index(16, factory)
    assert faiss_tools.default_nprobe(index) == nprobe and faiss_tools.is_hnsw(index) is hnsw
    assert faiss_tools.is_ivf(index) is (nprobe is not None)


def test_a_search_can_widen_an_ivf_index_without_changing_it():
    data = sample_vectors.clustered(2000, 16, clusters=32, seed=1)
    index = faiss_tools.new_index(16, "IVF32,Flat")
    index.train(data)
    index.add_with_ids(data, np.arange(2000, dtype=np.int64))
    store = faiss_tools.FaissStore(index)
    exact, _ = sample_vectors.exact_top_k(data, data[:20], 10)
    _, labels = store.search(data[:20], 10, nprobe=32)
    assert np.array_equal(labels, exact) and index.nprobe == 1


# ------------------------------------------------------------------------------- several GPUs
#
# FaissStore over several GPUs runs here with the GPUs replaced by CPU copies
# (faiss_shards.HostPlacement): everything but the copy to a GPU. The sharding helpers themselves
# are tested in test_faiss_shards.py. Small-integer vectors make every inner product exact (so
# results cannot depend on how a matrix product is blocked) and make many scores equal (so tie
# handling is exercised on every query).


def integer_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return sample_vectors.integers(n, dim, seed)


assert_same_hits = sample_vectors.assert_same_hits


trained_index = sample_vectors.trained_index


def host_store(factory: str, mode: str, parts: int = 2) -> faiss_tools.FaissStore:
    return faiss_tools.FaissStore(faiss_tools.new_index(8, factory), multi_gpu=mode,
                                  placement=faiss_shards.HostPlacement(parts))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])  # IVF-PQ: as IVF-Flat, with a slow training
@pytest.mark.parametrize("mode", faiss_shards.MULTI_GPU_MODES)
def test_multi_device_store_trains_adds_removes_and_searches_like_one_index(factory, mode):
    data, labels = integer_vectors(900), scattered_labels(900)
    queries = integer_vectors(25, seed=5)
    one = faiss_tools.FaissStore(trained_index(factory))
    several = host_store(factory, mode)
    assert several.devices == 2 and one.devices == 0
    for store in (one, several):
        if not store.is_trained:
            store.train(data)  # the same data as one's: FAISS's training is deterministic
        for start, stop in ((0, 500), (500, 501), (501, 900)):  # in batches, as VectorIndex adds
            store.add(data[start:stop], labels[start:stop])
        if factory != "Flat":
            store.set_parameter("nprobe", 6)
    parts = faiss_shards.parts_of(several.index)
    assert several.is_trained and several.index.ntotal == 900
    assert [p.ntotal for p in parts] == ([450, 450] if mode == "shard" else [900, 900])
    if factory != "Flat":  # one training, copied: every part has the same quantizer and nprobe
        centroids = [faiss.extract_index_ivf(p).quantizer.reconstruct_n(0, 16) for p in parts]
        assert np.array_equal(centroids[0], centroids[1])
        assert np.array_equal(centroids[0], faiss.extract_index_ivf(one.index).quantizer.reconstruct_n(0, 16))
        assert [faiss.extract_index_ivf(p).nprobe for p in parts] == [6, 6]
    truth = dict(zip(labels.tolist(), data))
    replicated = mode == "replicate"  # exactly the same; shards filled in batches: ties in any order
    for k in (3, 40):
        assert_same_hits(one.search(queries, k), several.search(queries, k), truth, queries, tie_order=replicated)

    gone = labels[1::3]
    unknown = np.array([-7, 10**9], dtype=np.int64)
    assert several.remove(np.concatenate([gone, unknown])) == one.remove(gone) == 300
    assert several.index.ntotal == 600 and sum(p.ntotal for p in faiss_shards.parts_of(several.index)) == (
        600 if mode == "shard" else 1200)
    after = several.search(queries, 600)
    assert not np.isin(after[1], gone).any()
    assert_same_hits(one.search(queries, 40), several.search(queries, 40), truth, queries, tie_order=replicated)

    cpu = several.to_cpu()  # one CPU index with the same labels: what a save writes
    assert not isinstance(cpu, (faiss.IndexShards, faiss.IndexReplicas)) and cpu.ntotal == 600
    if factory == "Flat":
        assert faiss_tools.id_map_labels(cpu).tolist() == faiss_tools.id_map_labels(one.index).tolist()
    else:
        assert sorted(faiss_shards.ivf_labels(cpu).tolist()) == sorted(faiss_shards.ivf_labels(one.index).tolist())
    back = faiss_tools.FaissStore(cpu)
    assert_same_hits(one.search(queries, 40), back.search(queries, 40), truth, queries, tie_order=replicated)


def test_multi_device_flat_store_writes_the_bytes_one_index_writes():
    data, labels = integer_vectors(300), np.arange(300, dtype=np.int64)
    one, several = faiss_tools.FaissStore(faiss_tools.new_index(8, "Flat")), host_store("Flat", "shard", 3)
    for store in (one, several):
        store.add(data[:100], labels[:100])
        store.add(data[100:], labels[100:])
        store.remove(labels[::5])
    assert faiss.serialize_index(several.to_cpu()).tobytes() == faiss.serialize_index(one.to_cpu()).tobytes()


def test_multi_device_store_parameters():
    flat = host_store("Flat", "shard")
    with pytest.raises(RuntimeError, match="nprobe"):  # reaches the parts, which refuse it
        flat.set_parameter("nprobe", 4)
    with pytest.raises(InputError, match="multi_gpu"):
        faiss_tools.FaissStore(faiss_tools.new_index(8, "Flat"), multi_gpu="mirror")
    with pytest.raises(InputError, match="not both"):
        faiss_tools.FaissStore(faiss_tools.new_index(8, "Flat"), 0, gpus=[0, 1])
    with pytest.raises(RuntimeError, match="replicate"):
        host_store("HNSW8", "shard")
    hnsw = host_store("HNSW8", "replicate")  # replicas need no split
    data = integer_vectors(100)
    hnsw.add(data, np.arange(100))
    assert hnsw.index.ntotal == 100 and not hnsw.removable
    hnsw.set_parameter("efSearch", 32)
    assert [faiss.downcast_index(p.index).hnsw.efSearch for p in faiss_shards.parts_of(hnsw.index)] == [32, 32]


@pytest.mark.parametrize(("gpus", "visible", "expected"), [
    (None, 4, []), ("all", 3, [0, 1, 2]), ("all", 0, []), (" ALL ", 1, [0]), (2, 4, [0, 1]),
    ([3, 1], 4, [3, 1]), ((0,), 1, [0]), ("1,3", 4, [1, 3]), ("2", 2, [0, 1]), (np.int64(1), 1, [0]),
])
def test_resolve_gpus(gpus, visible, expected):
    assert faiss_tools.resolve_gpus(gpus, visible) == expected


@pytest.mark.parametrize(("gpus", "visible", "error", "message"), [
    (3, 2, MMRankError, "gpus=3 asks for 3 GPUs, but only 2 GPUs are visible (numbers 0 to 1). Use gpus='all'"),
    (2, 1, MMRankError, "only 1 GPU is visible"),
    (1, 0, MMRankError, "no GPU is visible"),
    ([0, 2], 2, MMRankError, "names GPU 2, but only 2 GPUs are visible"),
    ([-1], 2, MMRankError, "names GPU -1"),
    ([0, 0], 2, InputError, "names a GPU twice"),
    (0, 2, InputError, "at least 1"),
    ([], 2, InputError, "gpus must be"),
    (True, 2, InputError, "gpus must be"),
    ("some", 2, InputError, "gpus must be 'all'"),
    ([0.5], 2, InputError, "gpus must be"),
])
def test_resolve_gpus_refusals_say_what_to_do(gpus, visible, error, message):
    with pytest.raises(error) as caught:
        faiss_tools.resolve_gpus(gpus, visible)
    assert message in str(caught.value)
    if error is MMRankError:
        assert "CUDA_VISIBLE_DEVICES" in str(caught.value)


@pytest.mark.parametrize(("factory", "device", "gpus", "faiss_gpus", "torch_gpus", "expected"), [
    ("Flat", "auto", None, 2, 2, ("faiss-gpu", "cuda", [0])),            # no gpus: one GPU, as before
    ("Flat", "cuda:1", None, 2, 2, ("faiss-gpu", "cuda:1", [1])),
    ("Flat", "auto", "all", 2, 2, ("faiss-gpu", "cuda", [0, 1])),
    ("IVF16,Flat", "cuda", [1, 0], 3, 0, ("faiss-gpu", "cuda", [1, 0])),
    ("Flat", "auto", "all", 1, 1, ("faiss-gpu", "cuda:0", [0])),         # one GPU: nothing changes
    ("Flat", "auto", "all", 0, 0, ("faiss-cpu", "cpu", [])),            # no GPU: nothing changes
    ("Flat", "cpu", "all", 2, 2, ("faiss-cpu", "cpu", [])),
    ("Flat", "auto", "all", 0, 3, ("torch", "cuda", [0, 1, 2])),        # torch counts its own GPUs
    ("Flat", "auto", 2, 0, 2, ("torch", "cuda", [0, 1])),
    ("IVF16,Flat", "auto", "all", 0, 2, ("faiss-cpu", "cpu", [])),      # torch is exact search only
])
def test_choose_devices(factory, device, gpus, faiss_gpus, torch_gpus, expected):
    assert faiss_tools.choose_devices(factory, device, None, gpus, faiss_gpus=faiss_gpus,
                                      torch_gpus=torch_gpus) == expected


def test_choose_devices_refusals():
    with pytest.raises(MMRankError, match="only 2 GPUs are visible"):
        faiss_tools.choose_devices("Flat", "auto", None, 3, faiss_gpus=2, torch_gpus=2)
    with pytest.raises(MMRankError, match="no GPU support"):  # a number insists on GPUs: why none is usable
        faiss_tools.choose_devices("IVF16,Flat", "auto", None, 2, faiss_gpus=0, torch_gpus=2)
    for device in ("cpu", "cuda:1"):
        with pytest.raises(InputError, match=f"device={device!r} contradicts"):
            faiss_tools.choose_devices("Flat", device, None, [0, 1], faiss_gpus=2, torch_gpus=2)
    with pytest.raises(InputError, match="contradicts"):
        faiss_tools.choose_devices("Flat", "cuda:1", None, "all", faiss_gpus=2, torch_gpus=2)


def test_shards_take_lone_vectors_in_turn():
    store = host_store("Flat", "shard", 3)
    data = integer_vectors(7)
    for i in range(7):  # IndexShards.add_with_ids would put every one of them on the last shard
        store.add(data[i : i + 1], np.array([i]))
    assert [p.ntotal for p in faiss_shards.parts_of(store.index)] == [3, 2, 2] and store.index.ntotal == 7
