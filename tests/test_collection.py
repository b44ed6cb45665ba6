"""Collections: creation and opening errors, search by item id, persistence, removal, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrank.collection import Collection, FileEntry
from mmrank.manifest import MANIFEST
from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.ingest import Fingerprint
from mmrank.text import PassageSplit
from mmrank.types import Item

DIM = 8


def _unit(rows: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _items(n: int, prefix: str = "doc") -> list[Item]:
    words = ["cats", "rockets", "coffee", "margins", "galaxies", "bread", "rivers", "violins"]
    return [Item(id=f"{prefix}{i}", kind="text", text=f"a note about {words[i % len(words)]}") for i in range(n)]


@pytest.fixture
def filled(tmp_path):
    collection = Collection.create(tmp_path / "c")
    collection.bind_encoder("text", "test:encoder", DIM)
    vectors = _unit(8)
    collection.add(_items(8), {"text": ([f"doc{i}" for i in range(8)], vectors)})
    yield collection, vectors
    collection.close()


def test_create_writes_manifest_and_refuses_to_clobber(tmp_path):
    with Collection.create(tmp_path / "c") as collection:
        assert len(collection) == 0
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["format"] == "mmrank.collection" and manifest["format_version"] == 1
    with pytest.raises(CollectionError, match="already a collection"):
        Collection.create(tmp_path / "c")

    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(CollectionError, match="not an mmrank collection.*nothing was written"):
        Collection.create(other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_open_errors_are_clear_and_touch_nothing(tmp_path):
    with pytest.raises(CollectionError, match="does not exist"):
        Collection.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CollectionError, match="not an mmrank collection"):
        Collection.open(tmp_path / "plain")

    Collection.create(tmp_path / "c").close()
    manifest = tmp_path / "c" / MANIFEST
    manifest.write_text('{"format": "mmrank.collection", "format_vers')
    with pytest.raises(CollectionError, match="corrupted manifest"):
        Collection.open(tmp_path / "c")
    assert manifest.read_text() == '{"format": "mmrank.collection", "format_vers'


def test_search_returns_item_ids_and_self_first(filled):
    collection, vectors = filled
    results = collection.search_vectors("text", vectors[[3, 5]], k=3)
    assert [r[0][0] for r in results] == ["doc3", "doc5"]
    assert results[0][0][1] == pytest.approx(1.0, abs=1e-5)
    brute = np.argsort(-(vectors @ vectors[3]))[:3]
    assert [item_id for item_id, _ in results[0]] == [f"doc{i}" for i in brute]


def test_encoder_mismatch_is_refused(filled):
    collection, vectors = filled
    with pytest.raises(EncoderMismatchError, match="made by 'test:encoder'.*encoded by 'other:model'"):
        collection.search_vectors("text", vectors[:1], k=1, encoder="other:model")
    with pytest.raises(EncoderMismatchError, match="other:model"):
        collection.bind_encoder("text", "other:model", DIM)
    with pytest.raises(EncoderMismatchError, match="dimensions"):
        collection.search_vectors("text", np.ones((1, DIM + 1), dtype=np.float32), k=1)


def test_indexes_persist_and_follow_changes(tmp_path, filled):
    collection, vectors = filled
    collection.build_indexes()
    before = collection.search_vectors("text", vectors[:2], k=4)
    collection.close()

    reopened = Collection.open(collection.path)
    assert reopened.search_vectors("text", vectors[:2], k=4) == before
    assert reopened.search_bm25(["coffee"], k=2)[0][0][0] == "doc2"

    assert reopened.remove(["doc0", "missing"]) == 1
    assert "doc0" not in [i for i, _ in reopened.search_vectors("text", vectors[:1], k=8)[0]]
    assert "doc0" not in reopened.get_many(["doc0", "doc1"])
    reopened.close()
    # Stale indexes were rebuilt and published; the old files are gone.
    manifest = json.loads((collection.path / MANIFEST).read_text())
    published = set(manifest["index"]["files"].values())
    on_disk = {p.relative_to(collection.path).as_posix() for p in collection.path.glob("index/*")}
    on_disk |= {p.name for p in collection.path.glob("bm25.r*")}
    assert {f.split("/")[-1] for f in published} == {f.split("/")[-1] for f in on_disk}


def test_items_and_vectors_round_trip(filled):
    collection, vectors = filled
    assert collection.get("doc4").text == "a note about galaxies"
    np.testing.assert_array_equal(collection.vectors(["doc6", "doc1"], "text"), vectors[[6, 1]])
    with pytest.raises(InputError, match="no item with id 'zzz'"):
        collection.get("zzz")


def test_duplicate_ids_and_bad_vectors_leave_the_collection_unchanged(filled):
    collection, _ = filled
    with pytest.raises(InputError, match="already in the collection: 'doc0', 'doc1'"):
        collection.add(_items(2), {"text": (["doc0", "doc1"], _unit(2))})
    with pytest.raises(InputError, match="NaN"):
        collection.add(_items(1, "new"), {"text": (["new0"], np.full((1, DIM), np.nan, dtype=np.float32))})
    with pytest.raises(InputError, match="shape"):
        collection.add(_items(1, "new"), {"text": (["new0"], _unit(2))})
    assert len(collection) == 8


def test_replace_files_swaps_a_files_items(tmp_path):
    with Collection.create(tmp_path / "c") as collection:
        collection.bind_encoder("text", "test:encoder", DIM)
        old = [Item(id=f"f.pdf#page={i}", kind="page", source="f.pdf", page=i, text="old") for i in (1, 2, 3)]
        collection.replace_files([FileEntry("f.pdf", old, Fingerprint(1, 1, "a"))],
                                 {"text": ([i.id for i in old], _unit(3))})
        new = [Item(id="f.pdf#page=1", kind="page", source="f.pdf", page=1, text="new")]
        collection.replace_files([FileEntry("f.pdf", new, Fingerprint(2, 2, "b"))], {"text": ([new[0].id], _unit(1))})
        assert [i.text for i in collection.items()] == ["new"]
        assert collection.file_fingerprint("f.pdf") == Fingerprint(2, 2, "b")
        assert collection.info()["spaces"]["text"]["vectors"] == 1


# ------------------------------------------------------------------------------ several vectors per item


def _passage_collection(folder, factory: str = "Flat") -> tuple[Collection, dict[str, np.ndarray]]:
    """Three items owning 1, 3 and 2 vectors ("passages") in the text space."""
    collection = Collection.create(folder, index_factory=factory)
    collection.bind_encoder("text", "test:encoder", DIM, passages=PassageSplit(100, 20))
    parts = {"one": _unit(1, seed=1), "three": _unit(3, seed=2), "two": _unit(2, seed=3)}
    ids = [item_id for item_id, vectors in parts.items() for _ in vectors]
    collection.add([Item(id=i, kind="text", text=i) for i in parts], {"text": (ids, np.concatenate(list(parts.values())))})
    return collection, parts


def _best_per_item(parts: dict[str, np.ndarray], query: np.ndarray, among=None) -> list[tuple[str, float]]:
    best = {item: float((vectors @ query).max()) for item, vectors in parts.items() if among is None or item in among}
    return sorted(best.items(), key=lambda pair: -pair[1])


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_an_item_is_found_by_its_best_passage(tmp_path, factory):
    collection, parts = _passage_collection(tmp_path / "c", factory)
    assert collection.info()["spaces"]["text"] == {"encoder": "test:encoder", "dim": DIM, "vectors": 6,
                                                   "passages": {"words": 100, "overlap": 20, "limit": None}}
    for query in [*parts["three"], *parts["two"], _unit(1, seed=9)[0]]:
        expected = _best_per_item(parts, query)
        found = collection.search_vectors("text", query[None], k=3)[0]
        assert [item for item, _ in found] == [item for item, _ in expected]
        np.testing.assert_allclose([score for _, score in found], [score for _, score in expected], rtol=1e-5)
        # k items, not k vectors: the item with three passages takes one place
        assert [item for item, _ in collection.search_vectors("text", query[None], k=2)[0]] == [
            item for item, _ in expected[:2]]
    query = parts["three"][1]
    among = collection.search_vectors("text", query[None], k=3, among=[{"three", "one"}])[0]
    expected = _best_per_item(parts, query, among={"three", "one"})
    assert [item for item, _ in among] == [item for item, _ in expected] == ["three", "one"]
    np.testing.assert_allclose([score for _, score in among], [score for _, score in expected], rtol=1e-5)


def test_passages_are_stored_in_order_and_removed_with_their_item(tmp_path):
    collection, parts = _passage_collection(tmp_path / "c")
    ids, matrix = collection.item_vectors(["two", "three"], "text")
    assert ids == ["two", "two", "three", "three", "three"]
    np.testing.assert_array_equal(matrix, np.concatenate([parts["two"], parts["three"]]))
    found, first = collection.stored_vectors(["three", "missing"], "text")
    assert found == ["three"] and np.array_equal(first[0], parts["three"][0])
    assert collection.remove(["three"]) == 1
    assert collection.info()["spaces"]["text"]["vectors"] == 3
    found = collection.search_vectors("text", parts["three"][0][None], k=5)[0]
    assert [item for item, _ in found] == [item for item, _ in _best_per_item(
        {"one": parts["one"], "two": parts["two"]}, parts["three"][0])]


def test_a_replaced_file_replaces_all_its_passages(tmp_path):
    collection = Collection.create(tmp_path / "c")
    collection.bind_encoder("text", "test:encoder", DIM, passages=PassageSplit(100, 20))
    first, second = _unit(3, seed=4), _unit(1, seed=5)
    print_ = Fingerprint(size=1, mtime_ns=1, sha256="a")
    collection.replace_files([FileEntry("f.pdf", [Item(id="f#1", kind="page", text="x")], print_)],
                             {"text": (["f#1", "f#1", "f#1"], first)})
    collection.replace_files([FileEntry("f.pdf", [Item(id="f#1", kind="page", text="y")], print_)],
                             {"text": (["f#1"], second)})
    ids, matrix = collection.item_vectors(["f#1"], "text")
    assert ids == ["f#1"] and np.array_equal(matrix, second)
    assert collection.search_vectors("text", first[0][None], k=5)[0][0][0] == "f#1"


def test_a_collection_from_before_passages_is_upgraded_on_opening(tmp_path):
    import sqlite3

    collection, _ = _passage_collection(tmp_path / "c")
    collection.close()
    database = sqlite3.connect(tmp_path / "c" / "items.sqlite")  # rebuild the old table: no part column
    database.executescript("""
        CREATE TABLE old (item_id TEXT NOT NULL, space TEXT NOT NULL, vector BLOB NOT NULL,
                          PRIMARY KEY (item_id, space));
        INSERT INTO old SELECT item_id, space, vector FROM vectors WHERE part = 0;
        DROP TABLE vectors; ALTER TABLE old RENAME TO vectors; DROP TABLE skipped_pages;""")
    database.close()
    with Collection.open(tmp_path / "c") as reopened:
        assert reopened.info()["spaces"]["text"]["vectors"] == 3 and reopened.info()["skipped_pages"] == 0
        assert reopened.item_vectors(["three"], "text")[0] == ["three"]
        reopened.build_indexes()
        assert len(reopened.search_vectors("text", _unit(1)[0][None], k=3)[0]) == 3


def test_an_ivf_collection_searches_wide_enough_by_default_and_per_search(tmp_path):
    from mmrank.retrieval import HybridRetriever
    from tests.vectors import clustered, exact_top_k

    data = clustered(4000, 16, clusters=64, seed=3)
    queries = clustered(40, 16, clusters=64, seed=4)
    ids = [f"v{i}" for i in range(len(data))]
    with Collection.create(tmp_path / "c", index_factory="IVF64,Flat") as collection:
        collection.bind_encoder("text", "test:encoder", 16)
        collection.add([Item(id=i, kind="text", text=i) for i in ids], {"text": (ids, data)})
        collection.build_indexes()
    exact, _ = exact_top_k(data, queries, 10)
    expected = [[ids[row] for row in rows] for rows in exact]

    def recall(nprobe=None):
        with Collection.open(tmp_path / "c") as collection:
            found = collection.search_vector_rows("text", queries, 10, nprobe=nprobe)
            table = collection.item_table()
            return np.mean([len(set(table.id_list(rows)) & set(truth)) / 10
                            for (rows, _), truth in zip(found, expected)])

    # FAISS's own default (1 list of 64) finds few true neighbours; the saved default (8) most.
    assert json.loads(next((tmp_path / "c" / "index").glob("text.r*/index.json")).read_text())["nprobe"] == 8
    assert recall(nprobe=1) < 0.7 and recall() >= 0.9
    assert recall(nprobe=64) == 1.0  # every list: exact
    # An index saved before mmrank set breadths (nprobe null) gets the default when loaded.
    saved = next((tmp_path / "c" / "index").glob("text.r*/index.json"))
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "nprobe": None}))
    with Collection.open(tmp_path / "c") as collection:
        assert collection.indexes.vector_index("text").nprobe == 8
    assert HybridRetriever(paths=["text"], nprobe=64).nprobe == 64
    with pytest.raises(InputError, match="nprobe must be at least 1"):
        HybridRetriever(nprobe=0)


def test_an_auto_collection_chooses_its_index_from_its_size_and_budget(tmp_path):
    from tests.vectors import clustered

    data = clustered(400, DIM * 2, clusters=8, seed=5)
    ids = [f"v{i}" for i in range(len(data))]
    with Collection.create(tmp_path / "c", index_factory="auto", memory_budget="1MB") as collection:
        collection.bind_encoder("text", "test:encoder", DIM * 2)
        collection.add([Item(id=i, kind="text", text=i) for i in ids], {"text": (ids, data)})
        assert collection.index_plans()["text"].factory == "Flat"  # 400 x 16 x 4 bytes fit in 1 MB
        # 5 KB: 8 lists (512 bytes) leave 3.5 bytes a vector: 4-bit PQ with 4 codes, re-scored exactly.
        collection.set_index_factory("auto", memory_budget="5KB")
        collection.build_indexes()
        info = collection.info()
        assert (info["index"], info["memory_budget"]) == ("auto", 5 << 10)
        assert info["index_plans"]["text"].startswith("IVF8,PQ4x4fs")
    with Collection.open(tmp_path / "c") as collection:
        index = collection.indexes.vector_index("text")
        assert (index.factory, index.refine, index.read_only) == ("IVF8,PQ4x4fs", 10, False)
        hits = collection.search_vectors("text", data[:50], 10)
        assert [h[0][0] for h in hits] == ids[:50]  # each vector finds itself first: its exact score is 1
        np.testing.assert_allclose([h[0][1] for h in hits], 1.0, rtol=1e-5)
        # 2 KB fits no code at all: 8-bit PQ whose lists are searched from disk.
        collection.set_index_factory("auto", memory_budget="2KB")
        collection.build_indexes()
    with Collection.open(tmp_path / "c") as collection:
        index = collection.indexes.vector_index("text")
        assert (index.factory, index.read_only) == ("IVF8,PQ2", True)
        assert [h[0][0] for h in collection.search_vectors("text", data[:50], 10)] == ids[:50]


def test_a_memory_budget_needs_the_auto_index(tmp_path):
    with pytest.raises(InputError, match="memory budget applies to --index-factory auto, not to 'Flat'"):
        Collection.create(tmp_path / "c", index_factory="Flat", memory_budget="1GB")
    with pytest.raises(InputError, match="looks like 4GB"):
        Collection.create(tmp_path / "c", index_factory="auto", memory_budget="lots")
    assert not (tmp_path / "c").exists()


def test_gpus_for_a_collection_on_a_machine_without_them_say_so(filled):
    from mmrank.errors import MMRankError

    collection, vectors = filled
    collection.build_indexes()
    expected = [hit[0] for hit in collection.search_vectors("text", vectors[:1], 3)[0]]
    with Collection.open(collection.path, gpus=2) as on_gpus:
        with pytest.raises(MMRankError, match="no GPU path is available"):
            on_gpus.search_vectors("text", vectors[:1], 3)
    with Collection.open(collection.path, gpus="all") as everywhere:  # all of none: the CPU
        assert [hit[0] for hit in everywhere.search_vectors("text", vectors[:1], 3)[0]] == expected
