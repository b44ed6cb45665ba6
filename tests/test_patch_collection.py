"""A collection with a late-interaction space: patch rows stored beside the database, the index
built, published, rebuilt and repaired like the others, searches by MaxSim, and dead rows dropped."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from mmrank import patch_index as patch_module
from mmrank.collection import Collection
from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.item_store import ItemStore
from mmrank.maxsim import maxsim_pairs
from mmrank.types import Item
from tests import vectors as sample_vectors

DIM = 8
SPACE = "patches"


def _page(n: int, rows: int = 6) -> np.ndarray:
    return sample_vectors.unit(rows, DIM, seed=1000 + n)


def _add(collection: Collection, numbers, rows: int = 6) -> None:
    items = [Item(id=f"p{n}", kind="page", source=f"doc.pdf", page=n + 1) for n in numbers]
    ids = [item.id for item in items for _ in range(rows)]
    collection.add(items, {SPACE: (ids, np.vstack([_page(n, rows) for n in numbers]))})


def _collection(tmp_path, pages=10) -> Collection:
    collection = Collection.create(tmp_path / "c", device="cpu")
    collection.bind_encoder(SPACE, "test:patches", DIM, multi_vector="float16")
    _add(collection, range(pages))
    return collection


def _ids(collection, hits):
    return collection.item_table().id_list(hits[0])


def test_patch_rows_are_stored_beside_the_database_and_scored_by_maxsim(tmp_path):
    collection = _collection(tmp_path)
    info = collection.info()["spaces"][SPACE]
    assert info["multi_vector"] == "float16" and info["pages"] == 10 and info["vectors"] == 60
    assert info["patch_bytes"] == 60 * DIM * 2 and info["dead_rows"] == 0 and info["centroids"] == 0
    query = sample_vectors.unit(3, DIM, seed=7)
    [hits] = collection.search_patch_rows(SPACE, [query], 4)
    expected = sorted(((maxsim_pairs(query, _page(n).astype(np.float16)), f"p{n}") for n in range(10)), reverse=True)
    assert _ids(collection, hits) == [item_id for _, item_id in expected[:4]]
    np.testing.assert_allclose(hits[1], [score for score, _ in expected[:4]], rtol=1e-5)
    row_ids, rows = collection.item_vectors(["p3", "p1"], SPACE)
    assert row_ids == ["p3"] * 6 + ["p1"] * 6
    np.testing.assert_array_equal(rows, np.vstack([_page(3), _page(1)]).astype(np.float16).astype(np.float32))


def test_the_space_reopens_from_disk_with_its_published_index(tmp_path):
    collection = _collection(tmp_path)
    collection.build_indexes()
    query = sample_vectors.unit(2, DIM, seed=3)
    before = collection.search_patch_rows(SPACE, [query], 5)
    collection.close()
    again = Collection.open(tmp_path / "c", device="cpu")
    assert again.spaces[SPACE].multi_vector == "float16"
    after = again.search_patch_rows(SPACE, [query], 5)
    np.testing.assert_array_equal(before[0][0], after[0][0])
    np.testing.assert_array_equal(before[0][1], after[0][1])


def test_among_excluded_and_removed_items(tmp_path):
    collection = _collection(tmp_path)
    query = sample_vectors.unit(2, DIM, seed=4)
    [hits] = collection.search_patch_rows(SPACE, [query], 10, among=[["p2", "p5", "missing"]])
    assert sorted(_ids(collection, hits)) == ["p2", "p5"]
    collection.remove(["p2"])
    [hits] = collection.search_patch_rows(SPACE, [query], 10)
    assert "p2" not in _ids(collection, hits) and len(hits[0]) == 9


def test_dead_rows_are_counted_and_compaction_keeps_every_answer(tmp_path, monkeypatch):
    collection = _collection(tmp_path, pages=12)
    collection.build_indexes()
    collection.remove([f"p{n}" for n in range(9)])
    files = collection.store.patch_files[SPACE]
    files.append(sample_vectors.unit(5, DIM))  # rows a killed build appended and never recorded
    assert collection.info()["spaces"][SPACE]["dead_rows"] == 9 * 6 + 5
    query = sample_vectors.unit(3, DIM, seed=5)
    before = collection.search_patch_rows(SPACE, [query], 3)
    import mmrank.index_set as index_set_module

    monkeypatch.setattr(index_set_module.IndexSet, "_compact_patches", _compact_always)
    collection.build_indexes()
    info = collection.info()["spaces"][SPACE]
    assert info["dead_rows"] == 0 and info["patch_bytes"] == 3 * 6 * DIM * 2 and files.segments() == [1]
    after = collection.search_patch_rows(SPACE, [query], 3)
    assert _ids(collection, before[0]) == _ids(collection, after[0])
    np.testing.assert_array_equal(before[0][1], after[0][1])
    _add(collection, [20])  # new rows go to the new segment
    assert collection.store.patch_locations(SPACE, ["p20"])[1].tolist() == [[1, 18, 6]]


def _compact_always(self) -> bool:
    return any(self.store.compact_patches(name) for name, space in self.manifest.spaces.items() if space.multi_vector)


def test_a_large_space_gets_centroids_and_finds_the_exhaustive_top(tmp_path, monkeypatch):
    monkeypatch.setattr(patch_module, "EXACT_PATCHES", 100)
    monkeypatch.setattr(patch_module, "MIN_LISTS", 4)
    collection = _collection(tmp_path, pages=40)
    collection.build_indexes()
    index = collection.indexes.patch_index(SPACE)
    assert index.nlist > 0 and collection.info()["spaces"][SPACE]["centroids"] == index.nlist
    query = _page(17)[:3]
    exhaustive = collection.search_patch_rows(SPACE, [query], 5, exhaustive=True)
    found = collection.search_patch_rows(SPACE, [query], 5, nprobe=index.nlist, maxsim_depth=40)
    assert _ids(collection, found[0])[0] == "p17" == _ids(collection, exhaustive[0])[0]
    np.testing.assert_array_equal(found[0][1], exhaustive[0][1])


def test_a_damaged_index_is_rebuilt_from_the_stored_rows(tmp_path):
    collection = _collection(tmp_path)
    collection.build_indexes()
    folder = tmp_path / "c" / collection.manifest.index_files[SPACE]
    next(folder.glob("patch-index-*.npz")).write_bytes(b"broken")
    assert collection.repair_indexes() == [SPACE]
    [hits] = collection.search_patch_rows(SPACE, [_page(4)[:2]], 1)
    assert _ids(collection, hits) == ["p4"]


def test_wrong_queries_and_wrong_uses_are_refused(tmp_path):
    collection = _collection(tmp_path)
    with pytest.raises(EncoderMismatchError, match="query token vectors have 5 dimensions"):
        collection.search_patch_rows(SPACE, [np.ones((2, 5), np.float32)], 3)
    with pytest.raises(EncoderMismatchError, match="made by 'test:patches'"):
        collection.search_patch_rows(SPACE, [np.ones((2, DIM), np.float32)], 3, encoder="other:model")
    with pytest.raises(CollectionError, match="late-interaction space"):
        collection.indexes.vector_index(SPACE)
    with pytest.raises(InputError, match="must come one after the other"):
        collection.add([Item(id="a", kind="page"), Item(id="b", kind="page")],
                       {SPACE: (["a", "b", "a"], sample_vectors.unit(3, DIM))})
    with pytest.raises(InputError, match="float16 or float32"):
        collection.bind_encoder("other", "test:x", DIM, multi_vector="int4")


def test_a_database_from_before_patch_rows_is_upgraded(tmp_path):
    store = ItemStore.create(tmp_path / "items.sqlite")
    store.close()
    with sqlite3.connect(tmp_path / "items.sqlite") as database:
        database.execute("DROP TABLE patch_rows")
    store = ItemStore(tmp_path / "items.sqlite")
    assert store.patch_locations(SPACE) == ([], pytest.approx(np.zeros((0, 3))))
