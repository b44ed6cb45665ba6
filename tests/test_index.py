"""VectorIndex: parity with brute force, ids, removal, training, persistence, devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmrank import faiss_shards, faiss_tools
from mmrank import index as index_module
from mmrank.errors import CollectionError, InputError, MMRankError
from mmrank.index import VectorIndex
from tests import vectors as sample_vectors
from tests.paths import REPO

DIM = 32


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return sample_vectors.unit(n, dim, seed)


def clustered(n: int, clusters: int = 16, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return sample_vectors.clustered(n, dim, clusters, seed)


def names(n: int) -> list[str]:
    return [f"item-{i}" for i in range(n)]


brute_force = sample_vectors.exact_top_k
assert_same_hits = sample_vectors.assert_same_hits


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def torch_index(**options) -> VectorIndex:
    return VectorIndex(DIM, "Flat", device="cpu", backend="torch", **options)


BUILDERS = {
    "flat": lambda: VectorIndex(DIM, "Flat", device="cpu"),
    "ivf": lambda: VectorIndex(DIM, "IVF16,Flat", device="cpu", nprobe=16),
    "hnsw": lambda: VectorIndex(DIM, "HNSW32", device="cpu", ef_search=64),
    "torch": lambda: torch_index(chunk_size=97),
}


# ------------------------------------------------------------------------------------- searching


@pytest.mark.parametrize("kind", ["flat", "torch"])
def test_exact_search_matches_brute_force(kind):
    database, queries = unit(1000), unit(20, seed=1)
    index = BUILDERS[kind]()
    ids = names(1000)
    index.add(ids, database)
    found, scores = index.search(queries, 10)
    order, expected = brute_force(database, queries, 10)
    assert found == [[ids[i] for i in row] for row in order]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.dtype == np.float32 and scores.shape == (20, 10)


def test_string_ids_round_trip(tmp_path):
    ids = ["päge/1 #", "a\nb", "", "x" * 300, "item-0", "0"]
    vectors = unit(len(ids))
    index = VectorIndex(DIM, "Flat", device="cpu")
    index.add(ids, vectors)
    assert [index.search(v, 1)[0][0][0] for v in vectors] == ids
    assert all(i in index for i in ids) and "missing" not in index and len(index) == len(ids)
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", device="cpu")
    assert [loaded.search(v, 1)[0][0][0] for v in vectors] == ids


def test_batch_search_equals_single_queries_and_1d_query():
    database, queries = unit(300), unit(7, seed=2)
    index = VectorIndex(DIM, device="cpu")
    index.add(names(300), database)
    batch_ids, batch_scores = index.search(queries, 5)
    for row, query in enumerate(queries):
        single_ids, single_scores = index.search(query, 5)
        assert single_ids == [batch_ids[row]]
        np.testing.assert_allclose(single_scores[0], batch_scores[row], atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "torch"])
def test_k_larger_than_index_pads_with_minus_inf(kind):
    index = BUILDERS[kind]()
    found, scores = index.search(unit(2, seed=1), 4)
    assert found == [[], []] and scores.shape == (2, 4) and np.isneginf(scores).all()
    index.add(names(3), unit(3))
    found, scores = index.search(unit(2, seed=1), 10)
    assert [len(f) for f in found] == [3, 3] and sorted(found[0]) == names(3)
    assert scores.shape == (2, 10) and np.isfinite(scores[:, :3]).all() and np.isneginf(scores[:, 3:]).all()


def test_ivf_with_missing_hits_returns_only_real_ids():
    database = clustered(2000)
    index = VectorIndex(DIM, "IVF16,Flat", device="cpu", nprobe=1)
    index.add(names(2000), database)
    found, scores = index.search(database[:20], 2000)  # one list of 16 holds far fewer than 2000
    for row, ids in enumerate(found):
        assert 0 < len(ids) < 2000 and all(isinstance(i, str) for i in ids)
        assert np.isfinite(scores[row, : len(ids)]).all() and np.isneginf(scores[row, len(ids) :]).all()


# -------------------------------------------------------------------------------------- removing


@pytest.mark.parametrize("kind", ["flat", "ivf", "torch"])
def test_removed_ids_never_come_back(kind):
    database = clustered(600)
    ids = names(600)
    index = BUILDERS[kind]()
    index.add(ids, database)
    gone = ids[::3]
    assert index.remove([*gone, "unknown", gone[0]]) == len(gone)
    assert len(index) == 600 - len(gone) and gone[0] not in index and ids[1] in index
    found, _ = index.search(database, 50)
    assert not set(gone) & {i for row in found for i in row}
    kept = [i for i in ids if i not in set(gone)]
    assert [row[0] for row in index.search(database[1::3], 1)[0]] == ids[1::3]  # survivors still find themselves
    assert index.remove(["unknown"]) == 0
    index.add([gone[0]], database[:1])  # a removed id can be added again
    assert index.search(database[0], 1)[0] == [[gone[0]]] and len(index) == len(kept) + 1


def test_remove_rejects_a_single_string():
    index = VectorIndex(DIM, device="cpu")
    index.add(["ab"], unit(1))
    with pytest.raises(InputError, match="list of strings"):
        index.remove("ab")


# ---------------------------------------------------------------------------------------- errors


def test_duplicate_ids_are_named():
    index = VectorIndex(DIM, device="cpu")
    with pytest.raises(InputError, match="Duplicate ids.*'twice'"):
        index.add(["twice", "once", "twice"], unit(3))
    assert len(index) == 0
    index.add(["a", "b"], unit(2))
    with pytest.raises(InputError, match="already in the index: 'b'"):
        index.add(["c", "b"], unit(2, seed=3))
    assert len(index) == 2 and "c" not in index


def test_bad_vectors_are_rejected_with_reasons():
    index = VectorIndex(DIM, device="cpu")
    with pytest.raises(InputError, match=f"dimension 8, but this index holds {DIM}-dimensional"):
        index.add(["a"], unit(1, dim=8))
    with pytest.raises(InputError, match="2-D array"):
        index.add(["a"], np.zeros((1, 2, DIM), dtype=np.float32))
    bad = unit(4)
    bad[2, 5] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite values, in rows 2"):
        index.add(names(4), bad)
    with pytest.raises(InputError, match="2 ids for 3 vectors"):
        index.add(names(2), unit(3))
    with pytest.raises(InputError, match="must be strings"):
        index.add([1, 2], unit(2))
    with pytest.raises(InputError, match="single string"):
        index.add("ab", unit(2))
    assert len(index) == 0
    index.add(names(2), unit(2))
    with pytest.raises(InputError, match="dimension 5"):
        index.search(np.ones(5, dtype=np.float32), 1)
    with pytest.raises(InputError, match="NaN"):
        index.search(np.full(DIM, np.inf, dtype=np.float32), 1)
    with pytest.raises(InputError, match="k must be a positive integer"):
        index.search(unit(1), 0)


def test_bad_factory_and_parameters():
    with pytest.raises(InputError, match="'Nonsense42'"):
        VectorIndex(DIM, "Nonsense42", device="cpu")
    with pytest.raises(InputError, match="nprobe applies to IVF"):
        VectorIndex(DIM, "HNSW32", device="cpu", nprobe=4)
    with pytest.raises(InputError, match="efSearch applies to HNSW"):
        VectorIndex(DIM, "Flat", device="cpu", ef_search=4)
    with pytest.raises(InputError, match="nprobe applies to IVF"):
        torch_index(nprobe=2)
    with pytest.raises(InputError, match="exact search only"):
        VectorIndex(DIM, "HNSW32", device="cpu", backend="torch")


# -------------------------------------------------------------------------------------- training


def test_ivf_trains_and_recalls_like_exact_search():
    database, queries = clustered(3000), clustered(50, seed=7)
    index = VectorIndex(DIM, "IVF16,Flat", device="cpu")
    assert not index.is_trained
    with pytest.raises(InputError, match="at least 16 vectors"):
        index.train(database[:10])
    with pytest.raises(InputError, match="needs at least 16 vectors.*this call has 5"):
        index.add(names(5), database[:5])
    index.train(database[:1000])
    assert index.is_trained
    with pytest.raises(MMRankError, match="already trained"):
        index.train(database[:1000])
    index.add(names(3000), database)
    exact = VectorIndex(DIM, device="cpu")
    exact.add(names(3000), database)
    truth, _ = exact.search(queries, 10)
    index.nprobe = 4
    assert recall(index.search(queries, 10)[0], truth) >= 0.9
    index.nprobe = 16  # every list: exact
    assert recall(index.search(queries, 10)[0], truth) == 1.0


def test_first_add_trains_when_it_has_enough_vectors():
    index = VectorIndex(DIM, "IVF16,Flat", device="cpu", nprobe=16)
    index.add(names(500), clustered(500))
    assert index.is_trained and len(index) == 500


def test_pq_factory_trains_and_finds_items():
    database = clustered(2000)
    index = VectorIndex(DIM, "IVF16,PQ8", device="cpu", nprobe=16)
    with pytest.raises(InputError, match="at least 256 vectors"):
        index.train(database[:100])
    index.train(database)
    index.add(names(2000), database)
    found, _ = index.search(database[:100], 10)
    assert np.mean([f"item-{i}" in row for i, row in enumerate(found)]) >= 0.9


def test_flat_and_hnsw_need_no_training():
    for factory in ("Flat", "HNSW32"):
        index = VectorIndex(DIM, factory, device="cpu")
        assert index.is_trained
        index.train(unit(3))  # nothing to learn; accepted
        assert len(index) == 0


def test_hnsw_searches_well_and_refuses_removal():
    database, queries = unit(2000), unit(30, seed=5)
    index = VectorIndex(DIM, "HNSW32", device="cpu", ef_search=128)
    index.add(names(2000), database)
    order, _ = brute_force(database, queries, 10)
    assert recall(index.search(queries, 10)[0], [[f"item-{i}" for i in row] for row in order]) >= 0.9
    with pytest.raises(MMRankError, match="cannot remove.*Rebuild"):
        index.remove(["item-1"])
    assert len(index) == 2000 and "item-1" in index


# -------------------------------------------------------------------------------- torch backend


@pytest.mark.parametrize("chunk_size", [7, 64, 250, 1000])
@pytest.mark.parametrize("k", [1, 10, 100, 400])
def test_torch_chunked_top_k_matches_faiss(chunk_size, k):
    database, queries = unit(250), unit(10, seed=4)
    reference = VectorIndex(DIM, "Flat", device="cpu", backend="faiss")
    reference.add(names(250), database)
    index = torch_index(chunk_size=chunk_size, query_batch_size=3)
    index.add(names(100), database[:100])  # two adds: the buffer grows and keeps earlier rows
    index.add(names(250)[100:], database[100:])
    found, scores = index.search(queries, k)
    expected_ids, expected_scores = reference.search(queries, k)
    assert found == expected_ids
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision_is_exact_up_to_rounding(dtype):
    database, queries = unit(300), unit(10, seed=6)
    index = torch_index(dtype=dtype, chunk_size=128)
    index.add(names(300), database)
    found, scores = index.search(queries, 5)
    order, expected = brute_force(database, queries, 5)
    np.testing.assert_allclose(scores, expected, atol=2e-2)
    assert [row[0] for row in found] == [f"item-{row[0]}" for row in order]


# ---------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "torch"])
def test_save_load_round_trip(kind, tmp_path):
    database, queries = clustered(1000), clustered(20, seed=9)
    index = BUILDERS[kind]()
    index.add(names(1000), database)
    if kind != "hnsw":
        index.remove(names(1000)[:50])
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", device="cpu", backend="torch" if kind == "torch" else None)
    assert (loaded.backend, loaded.factory, loaded.dim) == (index.backend, index.factory, DIM)
    assert len(loaded) == len(index) and all(i in loaded for i in names(1000)[50:])
    assert (loaded.nprobe, loaded.ef_search) == (index.nprobe, index.ef_search)
    expected_ids, expected_scores = index.search(queries, 10)
    found, scores = loaded.search(queries, 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)
    loaded.add(["new"], database[:1])  # labels continue after the loaded ones
    assert loaded.search(database[0], 1)[0][0][0] in {"new", "item-0"} and len(loaded) == len(index) + 1


def test_torch_and_faiss_files_are_interchangeable(tmp_path):
    database, queries = unit(400), unit(10, seed=8)
    index = torch_index()
    index.add(names(400), database)
    index.save(tmp_path / "idx")
    as_faiss = VectorIndex.load(tmp_path / "idx", device="cpu")
    assert as_faiss.backend == "faiss-cpu"
    assert as_faiss.search(queries, 10)[0] == index.search(queries, 10)[0]
    as_faiss.save(tmp_path / "again")
    assert VectorIndex.load(tmp_path / "again", backend="torch", device="cpu").search(queries, 10)[0] == (
        index.search(queries, 10)[0]
    )


def test_saved_folder_layout(tmp_path):
    index = VectorIndex(DIM, device="cpu")
    index.add(names(3), unit(3))
    index.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert len(files) == 2 and files[1] == "index.json" and files[0].startswith("index-")
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["ids"] == names(3) and manifest["factory"] == "Flat" and manifest["index_file"] == files[0]
    index.remove(["item-1"])
    index.save(tmp_path / "idx")  # the old FAISS file goes away
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert len(files) == 2 and json.loads((tmp_path / "idx" / "index.json").read_text())["ids"] == [
        "item-0",
        None,
        "item-2",
    ]


def test_load_missing_gives_collection_error(tmp_path):
    with pytest.raises(CollectionError, match=str(tmp_path / "nowhere")):
        VectorIndex.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectionError, match="index.json is missing"):
        VectorIndex.load(tmp_path / "empty")


def saved(tmp_path: Path, n: int = 200) -> Path:
    index = VectorIndex(DIM, device="cpu")
    index.add(names(n), unit(n))
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_load_truncated_faiss_file_names_it(tmp_path):
    folder = saved(tmp_path)
    faiss_file = next(folder.glob("index-*.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[:1000])
    with pytest.raises(CollectionError, match=f"{faiss_file}.*corrupted or truncated"):
        VectorIndex.load(folder)
    faiss_file.unlink()
    with pytest.raises(CollectionError, match=f"{faiss_file} is missing"):
        VectorIndex.load(folder)


def test_load_corrupted_manifest_names_it(tmp_path):
    folder = saved(tmp_path)
    manifest = folder / "index.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(CollectionError, match=str(manifest)):
        VectorIndex.load(folder)
    data = json.loads(text)
    data["ids"] = data["ids"][:-1]  # the manifest no longer agrees with the FAISS file
    data["count"] -= 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(CollectionError, match="does not match its manifest"):
        VectorIndex.load(folder)
    data["index_file"] = "../elsewhere.faiss"
    manifest.write_text(json.dumps(data))
    with pytest.raises(CollectionError, match="not a valid vector index manifest"):
        VectorIndex.load(folder)


def test_save_into_a_file_path_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectionError, match="it is a file"):
        VectorIndex(DIM, device="cpu").save(tmp_path / "file")


def _failing_replace_on(call: int):
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == call:
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    return replace


@pytest.mark.parametrize("failure", ["write_index", "faiss_rename", "manifest_rename"])
def test_failed_save_leaves_previous_save_intact(failure, tmp_path, monkeypatch):
    import faiss

    folder = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    index = VectorIndex.load(folder, device="cpu")
    index.add(["extra"], unit(1, seed=11))
    if failure == "write_index":
        monkeypatch.setattr(faiss, "write_index", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    else:
        monkeypatch.setattr(os, "replace", _failing_replace_on(1 if failure == "faiss_rename" else 2))
    with pytest.raises(CollectionError, match=f"Could not save the index to {folder}"):
        index.save(folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files, nothing changed
    assert len(VectorIndex.load(folder, device="cpu")) == 200
    index.save(folder)
    assert len(VectorIndex.load(folder, device="cpu")) == 201 and len(list(folder.iterdir())) == 2


# --------------------------------------------------------------------------------------- devices


def test_device_resolution_on_this_cpu_machine():
    if faiss_tools.faiss_gpu_count() or faiss_tools.torch_cuda_available():
        pytest.skip("this machine has a GPU path")
    assert VectorIndex(DIM).backend == "faiss-cpu"
    assert VectorIndex(DIM, "HNSW32").device == "cpu"
    with pytest.raises(MMRankError, match="device='cuda' but no GPU path.*torch sees no CUDA"):
        VectorIndex(DIM, device="cuda")
    with pytest.raises(MMRankError, match="only does exact search"):
        VectorIndex(DIM, "IVF16,Flat", device="cuda")
    with pytest.raises(MMRankError, match="torch sees no CUDA device"):
        VectorIndex(DIM, device="cuda", backend="torch")
    with pytest.raises(InputError, match="device must be"):
        VectorIndex(DIM, device="gpu")


def test_import_does_not_load_faiss_or_torch():
    code = "import sys, mmrank.index; print(sorted({'faiss', 'torch'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- several GPUs
#
# No GPU here: FAISS's GPU count (or torch's) is replaced and the "GPUs" are CPU copies
# (faiss_shards.HostPlacement, or torch's "cpu" device); the rest is the real path, save and load
# included. Small-integer vectors make every score exact and many of them equal.


@pytest.fixture
def two_faiss_gpus(monkeypatch):
    monkeypatch.setattr(faiss_tools, "faiss_gpu_count", lambda: 2)
    monkeypatch.setattr(faiss_tools, "GpuPlacement", lambda gpus: faiss_shards.HostPlacement(len(gpus)))


def hits(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = index.search_labels(queries, k)
    return scores, labels


@pytest.mark.parametrize(("factory", "mode"), [("Flat", "shard"), ("Flat", "replicate"),
                                               ("IVF16,Flat", "shard"), ("IVF16,Flat", "replicate")])
def test_index_over_two_gpus_searches_saves_and_loads_like_one(two_faiss_gpus, tmp_path, factory, mode):
    data, queries = sample_vectors.integers(600, DIM), sample_vectors.integers(20, DIM, seed=1)
    ids = names(600)
    nprobe = 6 if factory != "Flat" else None
    one = VectorIndex(DIM, factory, device="cpu", nprobe=nprobe)
    two = VectorIndex(DIM, factory, gpus="all", multi_gpu=mode, nprobe=nprobe)
    assert (two.backend, two.device, two.gpus, two.multi_gpu) == ("faiss-gpu", "cuda", [0, 1], mode)
    assert two._store.devices == 2 and two._store.multi_gpu == mode
    for index in (one, two):
        index.add(ids[:300], data[:300])  # an IVF index trains on this batch
        index.add(ids[300:], data[300:])
        assert index.remove(ids[::4] + ["unknown"]) == 150
    assert len(two) == 450 and two._store.index.ntotal == 450
    if nprobe:  # set before training, kept by every part after it
        assert [faiss.extract_index_ivf(p).nprobe
                for p in faiss_shards.parts_of(two._store.index)] == [6, 6]
    truth = dict(enumerate(data))
    for k in (5, 450):
        assert_same_hits(hits(one, queries, k), hits(two, queries, k), truth, queries, tie_order=mode == "replicate")

    one.save(tmp_path / "one")
    two.save(tmp_path / "two")
    saved = [json.loads((tmp_path / name / "index.json").read_text()) for name in ("one", "two")]
    assert saved[0]["ids"] == saved[1]["ids"] and saved[1]["count"] == 450
    if factory == "Flat" or mode == "replicate":  # one CPU index, the very bytes one index writes
        assert saved[0]["sha256"] == saved[1]["sha256"]
    on_cpu = VectorIndex.load(tmp_path / "two", device="cpu")
    assert (on_cpu.backend, on_cpu.gpus, on_cpu.nprobe) == ("faiss-cpu", [], nprobe)
    again = VectorIndex.load(tmp_path / "two", gpus=2, multi_gpu=mode)
    assert again.gpus == [0, 1] and again._store.devices == 2
    for loaded in (on_cpu, again):
        assert_same_hits(hits(one, queries, 40), hits(loaded, queries, 40), truth, queries, tie_order=False)


def test_one_gpu_named_by_gpus_is_the_single_gpu_path(two_faiss_gpus):
    index = VectorIndex(DIM, "Flat", gpus=[1])
    assert (index.device, index.gpus, index._store.devices) == ("cuda:1", [1], 1)
    with pytest.raises(MMRankError, match="gpus=3 asks for 3 GPUs, but only 2 GPUs are visible"):
        VectorIndex(DIM, "Flat", gpus=3)
    with pytest.raises(MMRankError, match="cannot run a 'HNSW32' index on the GPU.*replicate"):
        VectorIndex(DIM, "HNSW32", gpus=2)  # asked for: an error, not a quiet fall back to the CPU
    assert VectorIndex(DIM, "HNSW32", gpus="all").backend == "faiss-cpu"  # as device='auto' does


def test_torch_backend_splits_the_vectors_over_the_gpus(monkeypatch):
    monkeypatch.setattr(faiss_tools, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(faiss_tools, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(faiss_tools, "torch_cuda_count", lambda: 3)
    made = []

    class OnTheCpu(index_module.TorchExactSearch):
        def __init__(self, dim, device, dtype, chunk_size, query_batch_size, devices=None):
            made.append((device, devices))
            super().__init__(dim, "cpu", "float32", chunk_size, query_batch_size,
                             devices=None if devices is None else ["cpu"] * len(devices))

    monkeypatch.setattr(index_module, "TorchExactSearch", OnTheCpu)
    data, queries = sample_vectors.integers(300, DIM), sample_vectors.integers(10, DIM, seed=2)
    three = VectorIndex(DIM, gpus="all", multi_gpu="replicate", chunk_size=64)
    assert (three.backend, three.device, three.gpus) == ("torch", "cuda", [0, 1, 2])
    assert made == [("cuda", ["cuda:0", "cuda:1", "cuda:2"])]
    one = VectorIndex(DIM, device="cpu")
    for index in (one, three):
        index.add(names(300), data)
    assert [s.n for s in three._store._shards] == [100, 100, 100]
    # exact search both ways; equal scores later-added first, as FAISS orders a tie group that fits
    assert_same_hits(hits(one, queries, 20), hits(three, queries, 20), dict(enumerate(data)), queries)
    assert np.array_equal(hits(one, queries, 300)[1], hits(three, queries, 300)[1])
    VectorIndex(DIM, gpus=[2])
    assert made[-1] == ("cuda:2", None)
    with pytest.raises(MMRankError, match="only 3 GPUs are visible"):
        VectorIndex(DIM, gpus=4)


def test_gpus_options_on_this_machine(tmp_path):
    if faiss_tools.faiss_gpu_count() or faiss_tools.torch_cuda_available():
        pytest.skip("this machine has a GPU path")
    index = VectorIndex(DIM, gpus="all")  # no GPU: nothing changes
    assert (index.backend, index.device, index.gpus) == ("faiss-cpu", "cpu", [])
    assert VectorIndex(DIM, device="cpu", gpus="all").gpus == []
    with pytest.raises(MMRankError, match="device='cuda' but no GPU path"):  # a number insists on GPUs
        VectorIndex(DIM, gpus=2)
    with pytest.raises(InputError, match="device='cpu' contradicts"):
        VectorIndex(DIM, device="cpu", gpus=[0, 1])
    with pytest.raises(InputError, match="multi_gpu must be"):
        VectorIndex(DIM, multi_gpu="mirror")
    index.add(names(10), unit(10))
    index.save(tmp_path / "saved")
    assert len(VectorIndex.load(tmp_path / "saved", gpus="all")) == 10
    with pytest.raises(MMRankError, match="no GPU path"):
        VectorIndex.load(tmp_path / "saved", gpus=2)


# ----------------------------------------------------------------------------- re-scoring, on disk


@pytest.mark.parametrize("factory", ["IVF8,PQ4x4fs", "IVF8,PQ4x4"])
def test_refining_with_every_candidate_gives_the_exact_ranking(factory, tmp_path):
    data, queries = clustered(600, dim=16), clustered(5, dim=16, seed=1)
    index = VectorIndex(16, factory, nprobe=8, refine=60, vectors_file=tmp_path / "v.f32")
    index.add(names(600), data)  # 10 x 60 candidates: every vector is re-scored exactly
    ids, scores = index.search(queries, 10)
    rows, exact = brute_force(data, queries, 10)
    assert ids == [[f"item-{r}" for r in row] for row in rows]
    np.testing.assert_allclose(scores, exact, rtol=1e-5)
    plain = VectorIndex(16, factory, nprobe=8)
    plain.add(names(600), data)
    assert plain.search(queries, 10)[0] != ids  # 4-byte codes alone misorder


def test_a_refining_index_saves_its_vectors_and_loads_them(tmp_path):
    data, queries = clustered(600, dim=16), clustered(5, dim=16, seed=1)
    index = VectorIndex(16, "IVF8,PQ4x4fs", nprobe=8, refine=10)  # vectors in a temporary file
    index.add(names(600), data)
    index.remove(["item-0"])
    expected = index.search(queries, 5)
    index.save(tmp_path / "saved")
    manifest = json.loads((tmp_path / "saved" / "index.json").read_text())
    assert manifest["refine"] == 10 and manifest["vectors_file"].startswith("vectors-")
    assert (tmp_path / "saved" / manifest["vectors_file"]).stat().st_size == 600 * 16 * 4  # removed rows stay
    loaded = VectorIndex.load(tmp_path / "saved")
    assert loaded.refine == 10 and loaded.search(queries, 5)[0] == expected[0]
    index.save(tmp_path / "saved")  # a second save replaces the vectors file and removes the old one
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "saved").iterdir()) == ["index", "index.json", "vectors"]


def test_a_missing_or_short_vectors_file_is_named(tmp_path):
    index = VectorIndex(16, "IVF8,PQ4x4fs", refine=10)
    index.add(names(600), clustered(600, dim=16))
    index.save(tmp_path / "saved")
    vectors = next((tmp_path / "saved").glob("vectors-*.f32"))
    vectors.write_bytes(vectors.read_bytes()[:-4])
    with pytest.raises(CollectionError, match=rf"{vectors.name} has .* bytes; it should hold 600 vectors"):
        VectorIndex.load(tmp_path / "saved")
    vectors.unlink()
    with pytest.raises(CollectionError, match="is missing"):
        index_module.verify_saved_index(tmp_path / "saved")


def test_an_ivf_index_is_searched_from_disk_read_only(tmp_path):
    data, queries = clustered(600, dim=16), clustered(5, dim=16, seed=1)
    index = VectorIndex(16, "IVF8,PQ4x4", nprobe=4, refine=10, on_disk=True)
    index.add(names(600), data)
    index.save(tmp_path / "saved")
    loaded = VectorIndex.load(tmp_path / "saved")  # as saved: from disk
    assert loaded.read_only and faiss_tools.lists_on_disk(loaded._store.index)
    assert loaded.search(queries, 5)[0] == index.search(queries, 5)[0]
    with pytest.raises(MMRankError, match="searched from disk .* load it with on_disk=False"):
        loaded.add(["new"], data[:1])
    with pytest.raises(MMRankError, match="cannot be saved"):
        loaded.save(tmp_path / "other")
    in_memory = VectorIndex.load(tmp_path / "saved", on_disk=False)
    assert not in_memory.read_only
    in_memory.add(["new"], -data[:1])
    assert in_memory.search(-data[:1], 1)[0] == [["new"]]  # its vector is re-scored from a copy ...
    assert VectorIndex.load(tmp_path / "saved").search(queries, 5)[0] == index.search(queries, 5)[0]  # ... saved one intact
