"""Collections: creation and opening errors, search by item id, persistence, removal, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrank.collection import Collection, FileEntry
from mmrank.manifest import MANIFEST
from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.ingest import Fingerprint
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
