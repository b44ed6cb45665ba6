"""ItemStore: items, files and vectors in SQLite; every write one transaction that bumps the revision
(a rolled-back one leaves nothing), replacing a file's items, reading vectors in the asked order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmrank.errors import InputError
from mmrank.ingest import Fingerprint
from mmrank.item_store import DATABASE, SQL_BATCH, FileEntry, ItemStore
from mmrank.types import Item

DIM = 4


def _vectors(rows: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _items(ids: list[str], text: str | None = "words") -> list[Item]:
    return [Item(id=i, kind="text", text=text) for i in ids]


def _page(source: str, page: int, text: str | None = "page text") -> Item:
    return Item(id=f"{source}#page={page}", kind="page", source=source, page=page, text=text)


@pytest.fixture
def store(tmp_path):
    store = ItemStore.create(tmp_path / DATABASE, name="my-collection")
    yield store
    store.close()


def _add_with_vectors(store: ItemStore, ids: list[str], seed: int = 0, space: str = "image") -> np.ndarray:
    vectors = _vectors(len(ids), seed)
    store.add(_items(ids), {space: (ids, vectors)})
    return vectors


# ----------------------------------------------------------------------------- creating and counts


def test_a_new_store_is_empty_at_revision_zero(store):
    assert store.revision == 0
    assert len(store) == 0
    assert store.counts() == {"items": 0, "files": 0, "vectors": {}}
    assert store.items_by_kind() == {}
    assert store.count_with_text() == 0 and store.has_text is False
    assert list(store.items()) == []
    assert store.texts() == ([], [])


def test_name_defaults_to_the_path(tmp_path):
    store = ItemStore.create(tmp_path / DATABASE)
    try:
        assert store.name == str(tmp_path / DATABASE)
        assert store.path == tmp_path / DATABASE
    finally:
        store.close()


def test_counts_per_kind_space_and_text(store):
    store.add([Item(id="i1", kind="image"), Item(id="i2", kind="image", text=""),
               Item(id="t1", kind="text", text="hello")],
              {"image": (["i1", "i2"], _vectors(2)), "text": (["t1"], _vectors(1))})
    store.replace_files([FileEntry("f.pdf", [_page("f.pdf", 1), _page("f.pdf", 2, text=None)],
                                   Fingerprint(10, 20, "abc"))],
                        {"image": (["f.pdf#page=1"], _vectors(1))})
    assert len(store) == 5
    assert store.counts() == {"items": 5, "files": 1, "vectors": {"image": 3, "text": 1}}
    assert store.items_by_kind() == {"image": 2, "text": 1, "page": 2}
    # Empty text counts as no text.
    assert store.count_with_text() == 2 and store.has_text is True


def test_data_and_revision_survive_reopening(tmp_path):
    path = tmp_path / DATABASE
    store = ItemStore.create(path, name="c")
    vectors = _add_with_vectors(store, ["a", "b"])
    store.close()

    reopened = ItemStore(path, name="c")
    try:
        assert reopened.revision == 1
        assert [i.id for i in reopened.items()] == ["a", "b"]
        np.testing.assert_array_equal(reopened.stored_vectors(["b", "a"], "image", DIM)[1], vectors[[1, 0]])
    finally:
        reopened.close()


def test_create_on_an_existing_database_keeps_its_revision(tmp_path):
    path = tmp_path / DATABASE
    store = ItemStore.create(path)
    _add_with_vectors(store, ["a"])
    store.close()
    again = ItemStore.create(path)
    try:
        assert again.revision == 1 and len(again) == 1  # the schema is created "IF NOT EXISTS"
    finally:
        again.close()


# ----------------------------------------------------------------------------- revisions and transactions


def test_every_write_bumps_the_revision_once(store):
    _add_with_vectors(store, ["a", "b", "c"])
    assert store.revision == 1
    store.replace_files([FileEntry("f.pdf", [_page("f.pdf", 1)], Fingerprint(1, 1, "x"))], {})
    assert store.revision == 2
    assert store.remove(["a", "b"]) == 2
    assert store.revision == 3
    store.add([], {})
    assert store.revision == 4


def test_touch_file_changes_the_mtime_without_a_bump(store):
    store.replace_files([FileEntry("f.pdf", [_page("f.pdf", 1)], Fingerprint(100, 5, "sha"))], {})
    revision = store.revision
    store.touch_file("f.pdf", Fingerprint(100, 999, "sha"))
    assert store.revision == revision
    assert store.file_fingerprint("f.pdf") == Fingerprint(100, 999, "sha")
    assert [i.id for i in store.items()] == ["f.pdf#page=1"]


def test_touch_file_only_changes_the_mtime(store):
    store.replace_files([FileEntry("f.pdf", [_page("f.pdf", 1)], Fingerprint(100, 5, "sha"))], {})
    store.touch_file("f.pdf", Fingerprint(7, 6, "other"))
    assert store.file_fingerprint("f.pdf") == Fingerprint(100, 6, "sha")


def test_file_fingerprint_of_an_unknown_file_is_none(store):
    assert store.file_fingerprint("nowhere.pdf") is None


def test_transaction_bumps_unless_told_not_to(store):
    with store.transaction():
        pass
    assert store.revision == 1
    with store.transaction(bump=False):
        pass
    assert store.revision == 1


def test_a_failed_transaction_rolls_back_its_rows_and_the_bump(store):
    _add_with_vectors(store, ["a"])
    with pytest.raises(RuntimeError, match="crash"):
        with store.transaction():
            store._db.execute("INSERT INTO items VALUES ('ghost', 'text', NULL, NULL, 'boo', '{}', NULL)")
            assert len(store) == 2  # visible inside the transaction
            raise RuntimeError("crash")
    assert store.revision == 1
    assert [i.id for i in store.items()] == ["a"]
    # The connection is usable again: the next write works and bumps once.
    _add_with_vectors(store, ["b"], seed=1)
    assert store.revision == 2 and len(store) == 2


def test_add_is_all_or_nothing(store):
    """A vector for an item that does not exist fails after the items were inserted: the whole
    batch rolls back (items, vectors and the bump)."""
    _add_with_vectors(store, ["a"])
    with pytest.raises(InputError, match="my-collection: the vectors do not match the items .*FOREIGN KEY"):
        store.add(_items(["new1", "new2"]), {"image": (["new1", "unknown"], _vectors(2))})
    assert store.revision == 1
    assert [i.id for i in store.items()] == ["a"]
    assert store.counts()["vectors"] == {"image": 1}


def test_duplicate_ids_raise_input_error_naming_the_collection_and_roll_back(store):
    _add_with_vectors(store, ["a", "b"])
    with pytest.raises(InputError, match=r"^my-collection: already in the collection: 'a', 'b'\.$"):
        store.add(_items(["a", "b"]), {"image": (["a", "b"], _vectors(2, seed=5))})
    assert store.revision == 1 and len(store) == 2
    # The stored vectors are the original ones.
    np.testing.assert_array_equal(store.stored_vectors(["a", "b"], "image", DIM)[1], _vectors(2))


def test_an_existing_id_after_new_ones_stores_none_of_them(store):
    _add_with_vectors(store, ["old"])
    with pytest.raises(InputError, match="already in the collection: .*'old'"):
        store.add(_items(["fresh", "old"]), {})
    assert [i.id for i in store.items()] == ["old"]
    assert store.revision == 1


def test_an_id_repeated_within_one_batch_is_reported_as_such(store):
    with pytest.raises(InputError, match="the same item id appears twice in one batch"):
        store.add(_items(["n", "n"]), {})


def test_already_in_the_collection_names_only_existing_ids(store):
    _add_with_vectors(store, ["old"])
    with pytest.raises(InputError, match=r"already in the collection: 'old'\.$"):
        store.add(_items(["fresh", "old"]), {})


def test_the_store_does_not_check_vector_values(store):
    """NaN and infinity are the Collection front's to refuse; the store keeps what it is given."""
    vectors = np.array([[np.nan, 1, 2, 3], [np.inf, -np.inf, 0, 1]], dtype=np.float32)
    store.add(_items(["x", "y"]), {"image": (["x", "y"], vectors)})
    np.testing.assert_array_equal(store.stored_vectors(["x", "y"], "image", DIM)[1], vectors)


def test_vectors_are_stored_as_float32(store):
    as_float64 = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float64)
    store.add(_items(["x"]), {"image": (["x"], as_float64)})
    found, matrix = store.stored_vectors(["x"], "image", DIM)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, as_float64.astype(np.float32))


# ----------------------------------------------------------------------------- files


def test_replace_files_swaps_a_files_items_and_vectors(store):
    old = [_page("f.pdf", page) for page in (1, 2, 3)]
    store.replace_files([FileEntry("f.pdf", old, Fingerprint(1, 1, "a"))],
                        {"image": ([i.id for i in old], _vectors(3))})
    other = [_page("g.pdf", 1)]
    store.replace_files([FileEntry("g.pdf", other, Fingerprint(5, 5, "g"))], {"image": ([other[0].id], _vectors(1, 9))})

    new = [_page("f.pdf", 1, text="new")]
    new_vector = _vectors(1, seed=3)
    store.replace_files([FileEntry("f.pdf", new, Fingerprint(2, 2, "b"))], {"image": ([new[0].id], new_vector)})

    assert [(i.id, i.text) for i in store.items()] == [("g.pdf#page=1", "page text"), ("f.pdf#page=1", "new")]
    assert store.file_fingerprint("f.pdf") == Fingerprint(2, 2, "b")
    assert store.file_fingerprint("g.pdf") == Fingerprint(5, 5, "g")
    assert store.counts() == {"items": 2, "files": 2, "vectors": {"image": 2}}
    found, matrix = store.stored_vectors(["f.pdf#page=1", "f.pdf#page=2"], "image", DIM)
    assert found == ["f.pdf#page=1"]
    np.testing.assert_array_equal(matrix, new_vector)


def test_replace_files_stores_several_files_in_one_revision(store):
    entries = [FileEntry(f"{name}.png", [Item(id=f"{name}.png", kind="image", source=f"{name}.png")],
                         Fingerprint(i, i, name)) for i, name in enumerate(["a", "b", "c"])]
    store.replace_files(entries, {"image": (["a.png", "b.png", "c.png"], _vectors(3))})
    assert store.revision == 1
    assert store.counts()["files"] == 3
    assert [i.source for i in store.items()] == ["a.png", "b.png", "c.png"]


def test_replace_files_failure_keeps_the_earlier_version(store):
    old = [_page("f.pdf", 1, text="old")]
    store.replace_files([FileEntry("f.pdf", old, Fingerprint(1, 1, "a"))], {"image": ([old[0].id], _vectors(1))})
    store.add(_items(["taken"]), {})
    revision = store.revision
    broken = [_page("f.pdf", 1, text="new"), Item(id="taken", kind="page", source="f.pdf", page=2)]
    with pytest.raises(InputError, match="already in the collection: .*'taken'"):
        store.replace_files([FileEntry("f.pdf", broken, Fingerprint(2, 2, "b"))], {})
    assert store.revision == revision
    assert store.file_fingerprint("f.pdf") == Fingerprint(1, 1, "a")
    assert store.get_many(["f.pdf#page=1"])["f.pdf#page=1"].text == "old"
    assert store.counts()["vectors"] == {"image": 1}


def test_file_entry_is_frozen():
    entry = FileEntry("f.pdf", [], Fingerprint(1, 2, "x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.path = "g.pdf"  # type: ignore[misc]


# ----------------------------------------------------------------------------- removing


def test_remove_counts_existing_items_and_drops_their_vectors(store):
    _add_with_vectors(store, ["a", "b", "c"])
    store.add([], {"text": (["a", "c"], _vectors(2, seed=1))})
    assert store.remove(["a", "missing", "a"]) == 1
    assert [i.id for i in store.items()] == ["b", "c"]
    assert store.counts()["vectors"] == {"image": 2, "text": 1}
    assert store.stored_vectors(["a", "b"], "image", DIM)[0] == ["b"]
    revision = store.revision
    assert store.remove([]) == 0 and store.remove(["missing"]) == 0
    assert store.revision == revision  # nothing changed, so the indexes stay current


def test_remove_of_a_file_item_keeps_the_file_record(store):
    store.replace_files([FileEntry("f.pdf", [_page("f.pdf", 1), _page("f.pdf", 2)], Fingerprint(1, 1, "a"))], {})
    assert store.remove(["f.pdf#page=1"]) == 1
    assert store.file_fingerprint("f.pdf") == Fingerprint(1, 1, "a")
    assert [i.id for i in store.items()] == ["f.pdf#page=2"]


def test_more_ids_than_one_sql_batch(store):
    count = 2 * SQL_BATCH + 7
    ids = [f"id{i:05d}" for i in range(count)]
    vectors = _add_with_vectors(store, ids)
    reversed_ids = ids[::-1]
    found, matrix = store.stored_vectors(reversed_ids, "image", DIM)
    assert found == reversed_ids
    np.testing.assert_array_equal(matrix, vectors[::-1])
    assert len(store.get_many(ids)) == count
    assert store.remove(ids[1:]) == count - 1
    assert [i.id for i in store.items()] == ids[:1]


# ----------------------------------------------------------------------------- reading


def test_items_and_get_many_round_trip_every_field(store):
    items = [
        Item(id="p", kind="page", source="doc.pdf", page=3, text="page three", metadata={"lang": "en", "n": [1, 2]}),
        Item(id="i", kind="image", source="cat.png"),
        Item(id="t", kind="text", text="plain"),
    ]
    store.add(items, {})
    assert list(store.items()) == items
    assert store.get_many(["t", "missing", "p"]) == {"t": items[2], "p": items[0]}
    assert store.get_many([]) == {}


def test_items_come_in_insertion_order_not_id_order(store):
    store.add(_items(["zeta", "alpha"]), {})
    store.add(_items(["mid"]), {})
    assert [i.id for i in store.items()] == ["zeta", "alpha", "mid"]


def test_texts_are_the_items_with_text_in_insertion_order(store):
    store.add([Item(id="b", kind="text", text="beta"), Item(id="n", kind="image"),
               Item(id="e", kind="text", text=""), Item(id="a", kind="text", text="alpha")], {})
    assert store.texts() == (["b", "a"], ["beta", "alpha"])


def test_stored_vectors_follow_the_asked_order_once_each(store):
    vectors = _add_with_vectors(store, ["a", "b", "c", "d"])
    found, matrix = store.stored_vectors(["c", "zzz", "a", "c", "d", "a"], "image", DIM)
    assert found == ["c", "a", "d"]
    assert matrix.shape == (3, DIM) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, vectors[[2, 0, 3]])
    matrix[0, 0] = 42.0  # a private, writable copy
    assert store.stored_vectors(["c"], "image", DIM)[1][0, 0] == vectors[2, 0]


def test_stored_vectors_keep_spaces_apart(store):
    image = _add_with_vectors(store, ["a", "b"], seed=0, space="image")
    text = _vectors(1, seed=7)
    store.add([], {"text": (["b"], text)})
    assert store.stored_vectors(["a", "b"], "text", DIM)[0] == ["b"]
    np.testing.assert_array_equal(store.stored_vectors(["b"], "text", DIM)[1], text)
    np.testing.assert_array_equal(store.stored_vectors(["b"], "image", DIM)[1], image[[1]])


def test_stored_vectors_of_nothing_is_an_empty_matrix_of_the_space_dimension(store):
    _add_with_vectors(store, ["a"])
    for ids, space in ((["zzz"], "image"), (["a"], "text"), ([], "image")):
        found, matrix = store.stored_vectors(ids, space, DIM)
        assert found == [] and matrix.shape == (0, DIM) and matrix.dtype == np.float32


def test_all_vectors_in_insertion_order(store):
    first = _add_with_vectors(store, ["z", "a"], seed=0)
    second = _add_with_vectors(store, ["m"], seed=1)
    store.add([], {"text": (["a"], _vectors(1, seed=2))})
    ids, matrix = store.all_vectors("image", DIM)
    assert ids == ["z", "a", "m"]
    np.testing.assert_array_equal(matrix, np.vstack([first, second]))
    assert store.all_vectors("text", DIM)[0] == ["a"]
    ids, empty = store.all_vectors("audio", DIM)
    assert ids == [] and empty.shape == (0, DIM)


def test_vector_batches_stream_a_space_in_insertion_order(store):
    vectors = _add_with_vectors(store, [f"i{n}" for n in range(7)], seed=3)
    store.add([], {"text": (["i2"], _vectors(1, seed=4))})  # another space between the rows
    store.remove(["i3"])
    batches = list(store.vector_batches("image", DIM, batch=3))
    assert [ids for ids, _, _ in batches] == [["i0", "i1", "i2"], ["i4", "i5", "i6"]]
    assert all(parts == [0, 0, 0] for _, parts, _ in batches)
    np.testing.assert_array_equal(np.vstack([m for _, _, m in batches]), vectors[[0, 1, 2, 4, 5, 6]])
    assert store.vector_count("image") == 6 and store.vector_count("text") == 1
    assert list(store.vector_batches("audio", DIM)) == [] and store.vector_count("audio") == 0


def test_removed_and_replaced_vectors_leave_all_vectors(store):
    _add_with_vectors(store, ["a", "b", "c"])
    store.remove(["b"])
    assert store.all_vectors("image", DIM)[0] == ["a", "c"]
