"""IndexSet: searches over the FAISS and BM25 indexes that agree with brute force (restricted ones
too), revision-named folders published through the manifest, rebuilding stale indexes, in-memory
indexes for a read-only collection, and clear errors."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.index_set import IndexSet, search_among
from mmrank.item_store import DATABASE, ItemStore
from mmrank.manifest import MANIFEST, Manifest
from mmrank.types import Item

DIM = 8
N = 24


def _unit(rows: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _text(i: int) -> str | None:
    """Item i's text: "comet" 1 to 3 times, "nebula" on every fourth, and a length of its own, so
    that BM25 scores differ; every fifth item has no text."""
    if i % 5 == 4:
        return None
    words = ["comet"] * (i % 3 + 1) + [f"pad{i}x{j}" for j in range(i % 11)]
    if i % 4 == 0:
        words.append("nebula")
    return " ".join(words)


def _fill(store: ItemStore, count: int = N, start: int = 0, seed: int = 0) -> tuple[list[str], np.ndarray]:
    ids = [f"i{i:02d}" for i in range(start, start + count)]
    vectors = _unit(count, seed)
    items = [Item(id=item_id, kind="image", text=_text(start + n)) for n, item_id in enumerate(ids)]
    store.add(items, {"image": (ids, vectors)})
    return ids, vectors


def _brute(ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


def _assert_hits(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [i for i, _ in found] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], rtol=1e-5, atol=1e-6)


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its modification time and size."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _published_folders(folder: Path) -> set[str]:
    return ({p.relative_to(folder).as_posix() for p in (folder / "index").glob("*")}
            | {p.name for p in folder.glob("bm25*")})


class Parts:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.store = ItemStore.create(folder / DATABASE, name=folder)
        self.manifest = Manifest.create(folder)
        self.manifest.bind_encoder("image", "test:random", DIM)

    def index_set(self) -> IndexSet:
        return IndexSet(self.folder, self.store, self.manifest, device="cpu")


@pytest.fixture
def parts(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    parts = Parts(folder)
    yield parts
    parts.store.close()


@pytest.fixture
def filled(parts):
    ids, vectors = _fill(parts.store)
    return parts, ids, vectors


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder look read-only to IndexSet (the tests run as root, which chmod cannot stop):
    os.access says it cannot be written. Returns the calls that asked about it."""
    asked: list[Path] = []
    real = os.access

    def protect(folder: Path) -> list[Path]:
        def access(path, mode, *args, **kwargs):
            if Path(path) == folder and mode & os.W_OK:
                asked.append(Path(path))
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
        return asked

    return protect


def _forbid_build(monkeypatch) -> None:
    def build(self):
        raise AssertionError("build() should not run")

    monkeypatch.setattr(IndexSet, "build", build)


# ----------------------------------------------------------------------------- search_among


class Recorder:
    def __init__(self) -> None:
        self.all_calls: list[list[str]] = []
        self.subset_calls: list[tuple[str, object]] = []

    def search_all(self, batch: list[str]) -> list[list[tuple[str, float]]]:
        self.all_calls.append(list(batch))
        return [[(f"all:{query}", 1.0)] for query in batch]

    def search_subset(self, query: str, subset) -> list[tuple[str, float]]:
        self.subset_calls.append((query, subset))
        return [(f"sub:{query}:{item}", 0.5) for item in sorted(subset)]


def test_search_among_searches_open_rows_in_one_call_and_each_restricted_row_alone():
    recorder = Recorder()
    among = [None, {"x"}, None, ["b", "a"], None]
    results = search_among(["q0", "q1", "q2", "q3", "q4"], among, recorder.search_all, recorder.search_subset)
    assert recorder.all_calls == [["q0", "q2", "q4"]]
    assert recorder.subset_calls == [("q1", {"x"}), ("q3", ["b", "a"])]
    assert results == [
        [("all:q0", 1.0)],
        [("sub:q1:x", 0.5)],
        [("all:q2", 1.0)],
        [("sub:q3:a", 0.5), ("sub:q3:b", 0.5)],
        [("all:q4", 1.0)],
    ]


@pytest.mark.parametrize("among", [None, [None, None]], ids=["none", "all-none"])
def test_search_among_without_restrictions_is_one_search_all(among):
    recorder = Recorder()
    results = search_among(["q0", "q1"], among, recorder.search_all, recorder.search_subset)
    assert recorder.all_calls == [["q0", "q1"]] and recorder.subset_calls == []
    assert results == [[("all:q0", 1.0)], [("all:q1", 1.0)]]


def test_search_among_with_every_row_restricted_never_searches_all():
    recorder = Recorder()
    results = search_among(["q0", "q1"], [set(), ["z"]], recorder.search_all, recorder.search_subset)
    assert recorder.all_calls == []
    # An empty restriction is a restriction to nothing, not to everything.
    assert recorder.subset_calls == [("q0", set()), ("q1", ["z"])]
    assert results == [[], [("sub:q1:z", 0.5)]]


def test_search_among_takes_any_iterable_of_entries():
    recorder = Recorder()
    results = search_among(["q0", "q1"], (entry for entry in [["a"], None]), recorder.search_all,
                           recorder.search_subset)
    assert results == [[("sub:q0:a", 0.5)], [("all:q1", 1.0)]]


def test_search_among_of_no_queries_searches_nothing():
    recorder = Recorder()
    assert search_among([], None, recorder.search_all, recorder.search_subset) == []
    assert recorder.all_calls == [] and recorder.subset_calls == []


@pytest.mark.parametrize("among", [[None], [None, None, None], []])
def test_search_among_needs_one_entry_per_query(among):
    recorder = Recorder()
    with pytest.raises(InputError, match=rf"among has {len(among)} entries for 2 queries; give one per query"):
        search_among(["q0", "q1"], among, recorder.search_all, recorder.search_subset)
    assert recorder.all_calls == [] and recorder.subset_calls == []


# ----------------------------------------------------------------------------- vector search


def test_search_vectors_equals_brute_force(filled):
    parts, ids, vectors = filled
    queries = _unit(5, seed=11)
    results = parts.index_set().search_vectors("image", queries, k=6)
    assert len(results) == 5
    for query, hits in zip(queries, results):
        _assert_hits(hits, _brute(ids, vectors, query, 6))


def test_search_vectors_finds_each_item_first_with_its_own_vector(filled):
    parts, ids, vectors = filled
    results = parts.index_set().search_vectors("image", vectors, k=1)
    assert [hits[0][0] for hits in results] == ids
    np.testing.assert_allclose([hits[0][1] for hits in results], 1.0, atol=1e-5)


def test_one_query_vector_is_one_row_and_k_is_clamped(filled):
    parts, ids, vectors = filled
    [hits] = parts.index_set().search_vectors("image", _unit(1, seed=3)[0], k=100)
    assert len(hits) == N
    _assert_hits(hits, _brute(ids, vectors, _unit(1, seed=3)[0], N))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restricted_vector_search_equals_brute_force_over_the_subset(filled, seed):
    parts, ids, vectors = filled
    # Items without an image vector, unknown ids and repeats in the subset are ignored.
    parts.store.add([Item(id="text-only", kind="text", text="comet")], {})
    rng = np.random.default_rng(seed)
    queries = _unit(4, seed=20 + seed)
    subsets = [set(rng.choice(ids, size=size, replace=False).tolist()) for size in (1, 5, 9, N)]
    among = [sorted(subsets[0]) + ["nobody"], subsets[1] | {"text-only"},
             list(subsets[2]) * 2, iter(sorted(subsets[3]))]
    k = 4
    results = parts.index_set().search_vectors("image", queries, k, among=among)
    for query, subset, hits in zip(queries, subsets, results):
        rows = [ids.index(i) for i in sorted(subset)]
        _assert_hits(hits, _brute([ids[r] for r in rows], vectors[rows], query, k))
    assert len(results[0]) == 1


def test_open_and_restricted_rows_mix(filled):
    parts, ids, vectors = filled
    queries = _unit(3, seed=5)
    index_set = parts.index_set()
    subset = {"i03", "i07", "i19"}
    mixed = index_set.search_vectors("image", queries, 3, among=[None, subset, None])
    unrestricted = index_set.search_vectors("image", queries, 3)
    assert mixed[0] == unrestricted[0] and mixed[2] == unrestricted[2]
    rows = sorted(ids.index(i) for i in subset)
    _assert_hits(mixed[1], _brute([ids[r] for r in rows], vectors[rows], queries[1], 3))


def test_restricted_search_of_unknown_ids_finds_nothing(filled):
    parts, _, _ = filled
    assert parts.index_set().search_vectors("image", _unit(2, seed=1), 3, among=[["nope"], []]) == [[], []]


def test_query_vectors_of_another_dimension_are_refused(filled):
    parts, _, _ = filled
    with pytest.raises(EncoderMismatchError,
                       match=rf"{re.escape(str(parts.folder))}: query vectors have 5 dimensions; "
                             rf"the collection's image vectors have {DIM}"):
        parts.index_set().search_vectors("image", np.ones((2, 5), dtype=np.float32), k=3)


def test_an_unknown_space_names_the_space(filled):
    parts, _, _ = filled
    index_set = parts.index_set()
    with pytest.raises(CollectionError, match=rf"{re.escape(str(parts.folder))}: the collection has no text vectors"):
        index_set.search_vectors("text", _unit(1), k=3)
    with pytest.raises(CollectionError, match="has no audio vectors"):
        index_set.vector_index("audio")


def test_among_of_the_wrong_length_is_refused(filled):
    parts, _, vectors = filled
    index_set = parts.index_set()
    with pytest.raises(InputError, match="among has 1 entries for 2 queries"):
        index_set.search_vectors("image", vectors[:2], 3, among=[None])
    with pytest.raises(InputError, match="among has 3 entries for 1 queries"):
        index_set.search_bm25(["comet"], 3, among=[None, None, None])


def test_a_bound_space_without_vectors_finds_nothing(filled):
    parts, _, _ = filled
    parts.manifest.bind_encoder("text", "test:text", 4)
    queries = np.ones((2, 4), dtype=np.float32)
    index_set = parts.index_set()
    assert index_set.search_vectors("text", queries, 3) == [[], []]
    assert index_set.search_vectors("text", queries, 3, among=[["i00"], None]) == [[], []]


def test_a_space_bound_after_publishing_can_be_searched(filled):
    parts, _, _ = filled
    parts.index_set().build()
    parts.manifest.bind_encoder("text", "test:text", 4)
    assert parts.index_set().search_vectors("text", np.ones((1, 4), dtype=np.float32), 3) == [[]]


# ----------------------------------------------------------------------------- BM25 search


def _all_bm25(index_set: IndexSet, query: str) -> list[tuple[str, float]]:
    [hits] = index_set.search_bm25([query], k=N)
    scores = [score for _, score in hits]
    assert len(set(scores)) == len(scores), "the corpus should give distinct scores"
    return hits


def test_bm25_finds_only_items_with_a_shared_term(filled):
    parts, ids, _ = filled
    index_set = parts.index_set()
    hits = _all_bm25(index_set, "comet")
    assert sorted(i for i, _ in hits) == sorted(i for n, i in enumerate(ids) if _text(n) is not None)
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    nebula = {i for i, _ in _all_bm25(index_set, "nebula")}
    assert nebula == {i for n, i in enumerate(ids) if n % 4 == 0 and n % 5 != 4}
    assert index_set.search_bm25(["harbour", "the"], k=5) == [[], []]


@pytest.mark.parametrize("query", ["comet", "nebula comet", "pad9x3 comet"])
def test_restricted_bm25_equals_the_full_search_filtered(filled, query):
    parts, ids, _ = filled
    index_set = parts.index_set()
    everything = _all_bm25(index_set, query)
    rng = np.random.default_rng(len(query))
    subsets = [set(rng.choice(ids, size=size, replace=False).tolist()) for size in (3, 8, 15)]
    subsets.append({"i04", "i09", "i00", "unknown"})  # two items without text, one unknown id
    for k in (1, 3, 10):
        results = index_set.search_bm25([query] * (len(subsets) + 1), k, among=[*subsets, None])
        for subset, hits in zip(subsets, results):
            assert hits == [hit for hit in everything if hit[0] in subset][:k]
        assert results[-1] == everything[:k]


def test_a_collection_without_text_has_nothing_for_bm25(parts):
    parts.store.add([Item(id="a", kind="image"), Item(id="b", kind="image", text="")],
                    {"image": (["a", "b"], _unit(2))})
    index_set = parts.index_set()
    message = rf"{re.escape(str(parts.folder))}: no item has text, so there is nothing for BM25 to search"
    with pytest.raises(CollectionError, match=message):
        index_set.search_bm25(["comet"], 3)
    with pytest.raises(CollectionError, match=message):
        index_set.search_bm25(["comet"], 3, among=[["a"]])
    # Vector search still works, and the build published no BM25 folder.
    assert index_set.search_vectors("image", _unit(1), 1)[0][0][0] in {"a", "b"}
    assert "bm25" not in parts.manifest.index_files


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_texts_without_any_term_do_not_break_the_build(parts):
    parts.store.add([Item(id="a", kind="page", text="1"), Item(id="b", kind="page", text="the and of")],
                    {"image": (["a", "b"], _unit(2))})
    index_set = parts.index_set()
    index_set.build()
    assert index_set.search_vectors("image", _unit(2)[:1], 1)[0][0][0] == "a"
    assert parts.manifest.index_files["bm25"] == "bm25.r1"
    assert index_set.search_bm25(["the page", "1"], 3) == [[], []]
    assert parts.index_set().search_bm25(["page"], 3, among=[["a"]]) == [[]]  # loaded from disk


def test_k_must_be_a_positive_integer_for_whole_and_restricted_searches(filled):
    parts, _, _ = filled
    index_set = parts.index_set()
    for k in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="k must be a positive integer"):
            index_set.search_vectors("image", _unit(1), k, among=[["i00"]])
        with pytest.raises(InputError, match="k must be a positive integer"):
            index_set.search_bm25(["cat"], k)


def test_a_deleted_index_folder_is_rebuilt(filled):
    parts, _, _ = filled
    parts.index_set().build()
    before = parts.index_set().search_vectors("image", _unit(3), 4)
    shutil.rmtree(parts.folder / parts.manifest.index_files["image"])
    assert parts.index_set().search_vectors("image", _unit(3), 4) == before
    assert (parts.folder / parts.manifest.index_files["image"]).is_dir()


# ----------------------------------------------------------------------------- building and publishing


def test_build_publishes_revision_named_folders(filled):
    parts, _, _ = filled
    assert parts.store.revision == 1
    parts.index_set().build()
    assert parts.manifest.index_files == {"image": "index/image.r1", "bm25": "bm25.r1"}
    assert parts.manifest.index_revision == 1
    assert _published_folders(parts.folder) == {"index/image.r1", "bm25.r1"}
    assert (parts.folder / "index" / "image.r1" / "index.json").is_file()
    assert (parts.folder / "bm25.r1" / "ids.json").is_file()
    on_disk = Manifest.read(parts.folder)
    assert on_disk.index_files == parts.manifest.index_files and on_disk.index_revision == 1
    assert on_disk.data["counts"] == parts.store.counts() == {"items": N, "files": 0, "vectors": {"image": N}}


def test_a_new_build_deletes_the_previous_revisions_folders(filled):
    parts, _, _ = filled
    index_set = parts.index_set()
    index_set.build()
    _fill(parts.store, count=3, start=N, seed=9)
    parts.store.remove(["i00"])
    assert parts.store.revision == 3
    index_set.build()
    assert parts.manifest.index_files == {"image": "index/image.r3", "bm25": "bm25.r3"}
    assert _published_folders(parts.folder) == {"index/image.r3", "bm25.r3"}
    assert Manifest.read(parts.folder).data["counts"]["items"] == N + 2


def test_build_at_the_published_revision_does_nothing(filled, monkeypatch):
    parts, _, _ = filled
    index_set = parts.index_set()
    index_set.build()
    tree = _tree(parts.folder)
    published: list[int] = []
    monkeypatch.setattr(parts.manifest, "publish", lambda *args: published.append(1))
    index_set.build()
    parts.index_set().build()
    assert published == []
    assert _tree(parts.folder) == tree


def test_build_replaces_published_folders_that_went_missing(filled):
    parts, _, _ = filled
    index_set = parts.index_set()
    index_set.build()
    shutil.rmtree(parts.folder / "bm25.r1")
    index_set.build()
    assert (parts.folder / "bm25.r1" / "ids.json").is_file()
    assert parts.manifest.index_files["bm25"] == "bm25.r1"


def test_a_new_index_set_loads_the_published_indexes(filled, monkeypatch):
    parts, _, vectors = filled
    first = parts.index_set()
    first.build()
    expected_vectors = first.search_vectors("image", vectors[:3], 5)
    expected_bm25 = first.search_bm25(["comet", "nebula"], 5)
    _forbid_build(monkeypatch)
    reopened = IndexSet(parts.folder, parts.store, Manifest.read(parts.folder), device="cpu")
    assert reopened.search_vectors("image", vectors[:3], 5) == expected_vectors
    assert reopened.search_bm25(["comet", "nebula"], 5) == expected_bm25


def test_loaded_indexes_are_kept_until_forgotten(filled):
    parts, _, _ = filled
    index_set = parts.index_set()
    vector_index, bm25_index = index_set.vector_index("image"), index_set.bm25_index()
    assert index_set.vector_index("image") is vector_index
    assert index_set.bm25_index() is bm25_index
    index_set.forget()
    assert index_set.vector_index("image") is not vector_index
    assert index_set.bm25_index() is not bm25_index


# ----------------------------------------------------------------------------- stale indexes


def test_a_write_makes_the_next_search_see_the_new_items(filled):
    parts, ids, vectors = filled
    index_set = parts.index_set()
    index_set.build()
    assert index_set.search_bm25(["aurora"], 3) == [[]]

    new = Item(id="new", kind="image", text="aurora comet")
    new_vector = _unit(1, seed=99)
    parts.store.add([new], {"image": (["new"], new_vector)})
    assert parts.store.revision == 2

    [hits] = index_set.search_vectors("image", new_vector, 3)
    _assert_hits(hits, _brute(ids + ["new"], np.vstack([vectors, new_vector]), new_vector[0], 3))
    assert hits[0][0] == "new"
    assert [i for i, _ in index_set.search_bm25(["aurora"], 3)[0]] == ["new"]
    # The stale indexes were rebuilt and published (the folder is writable).
    assert parts.manifest.index_revision == 2
    assert _published_folders(parts.folder) == {"index/image.r2", "bm25.r2"}


def test_removed_items_disappear_from_the_next_search(filled):
    parts, ids, vectors = filled
    index_set = parts.index_set()
    assert index_set.search_vectors("image", vectors[5], 1)[0][0][0] == "i05"
    parts.store.remove(["i05"])
    [hits] = index_set.search_vectors("image", vectors[5], N)
    assert "i05" not in [i for i, _ in hits] and len(hits) == N - 1
    assert "i05" not in [i for i, _ in index_set.search_bm25(["comet"], N)[0]]


def test_a_write_through_another_connection_is_seen(filled):
    parts, ids, vectors = filled
    index_set = parts.index_set()
    index_set.search_vectors("image", vectors[:1], 1)
    other = ItemStore(parts.folder / DATABASE)
    try:
        more_ids, more = _fill(other, count=2, start=N, seed=4)
    finally:
        other.close()
    [hits] = index_set.search_vectors("image", more[1], 1)
    assert hits[0][0] == more_ids[1]


def test_changing_the_index_type_rebuilds_at_the_same_revision(filled):
    parts, ids, vectors = filled
    index_set = parts.index_set()
    index_set.build()
    parts.manifest.set_index_factory("HNSW32")
    index_set.forget()
    [hits] = index_set.search_vectors("image", vectors[7], 1)
    assert hits[0][0] == "i07"
    assert index_set.vector_index("image").factory == "HNSW32"
    assert parts.manifest.index_revision == 1
    assert parts.manifest.index_files == {"image": "index/image.r1", "bm25": "bm25.r1"}
    assert Manifest.read(parts.folder).index_factory == "HNSW32"
    assert _published_folders(parts.folder) == {"index/image.r1", "bm25.r1"}


def test_an_ivf_index_over_too_few_vectors_says_the_vectors_are_kept(filled):
    parts, ids, vectors = filled
    parts.manifest.set_index_factory("IVF64,Flat")
    index_set = parts.index_set()
    with pytest.raises(CollectionError) as caught:
        index_set.search_vectors("image", vectors[:1], 3)
    message = str(caught.value)
    assert message.startswith(f"{parts.folder}: cannot build its 'IVF64,Flat' index over {N} image vectors")
    assert "The vectors are stored: choose another index type" in message
    assert "--index-factory Flat" in message
    assert isinstance(caught.value.__cause__, InputError)
    # Nothing was lost or published.
    assert parts.store.counts()["vectors"] == {"image": N}
    assert parts.manifest.index_revision == -1 and parts.manifest.index_files == {}

    parts.manifest.set_index_factory("Flat")
    index_set.forget()
    _assert_hits(index_set.search_vectors("image", vectors[2], 3)[0], _brute(ids, vectors, vectors[2], 3))


# ----------------------------------------------------------------------------- read-only collections


def test_a_read_only_collection_builds_stale_indexes_in_memory(filled, read_only, monkeypatch):
    parts, ids, vectors = filled
    parts.index_set().build()
    more_ids, more = _fill(parts.store, count=4, start=N, seed=7)
    all_ids, all_vectors = ids + more_ids, np.vstack([vectors, more])

    asked = read_only(parts.folder)
    _forbid_build(monkeypatch)
    tree, manifest_bytes = _tree(parts.folder), (parts.folder / MANIFEST).read_bytes()
    index_set = parts.index_set()

    queries = more[[0, 3]]
    for query, hits in zip(queries, index_set.search_vectors("image", queries, 5)):
        _assert_hits(hits, _brute(all_ids, all_vectors, query, 5))
    subset = {"i01", more_ids[2], "i10"}
    rows = sorted(all_ids.index(i) for i in subset)
    [hits] = index_set.search_vectors("image", queries[:1], 2, among=[subset])
    _assert_hits(hits, _brute([all_ids[r] for r in rows], all_vectors[rows], queries[0], 2))
    # BM25 also covers the new items' texts (every text has "comet").
    bm25_ids = {i for i, _ in index_set.search_bm25(["comet"], 100)[0]}
    assert bm25_ids == {i for n, i in enumerate(all_ids) if _text(n) is not None}
    assert bm25_ids & set(more_ids) == {"i25", "i26", "i27"}  # i24 has no text

    assert asked, "the read-only check was not reached"
    assert _tree(parts.folder) == tree
    assert (parts.folder / MANIFEST).read_bytes() == manifest_bytes
    assert parts.manifest.index_revision == 1


def test_a_folder_chmod_read_only_gets_in_memory_indexes(filled):
    """The same with real permissions, where they apply (not as root)."""
    parts, ids, vectors = filled
    tree = _tree(parts.folder)
    parts.folder.chmod(0o555)
    try:
        if os.access(parts.folder, os.W_OK):
            pytest.skip("this user can write to read-only folders (root)")
        index_set = parts.index_set()
        _assert_hits(index_set.search_vectors("image", vectors[4], 3)[0], _brute(ids, vectors, vectors[4], 3))
        assert index_set.search_bm25(["comet"], 1)[0][0][0] in ids
    finally:
        parts.folder.chmod(0o755)
    assert _tree(parts.folder) == tree


def test_a_read_only_collection_never_built_is_searchable(filled, read_only):
    parts, ids, vectors = filled
    read_only(parts.folder)
    tree = _tree(parts.folder)
    index_set = parts.index_set()
    _assert_hits(index_set.search_vectors("image", vectors[4], 3)[0], _brute(ids, vectors, vectors[4], 3))
    assert index_set.search_bm25(["comet"], 2)[0][0][0] in ids
    assert _tree(parts.folder) == tree
    assert not (parts.folder / "index").exists()


def test_a_read_only_collection_without_text_has_nothing_for_bm25(parts, read_only):
    parts.store.add([Item(id="a", kind="image")], {"image": (["a"], _unit(1))})
    read_only(parts.folder)
    with pytest.raises(CollectionError, match="no item has text, so there is nothing for BM25 to search"):
        parts.index_set().search_bm25(["comet"], 3)


def test_a_read_only_collection_loads_current_published_indexes(filled, read_only, monkeypatch):
    parts, _, vectors = filled
    writable = parts.index_set()
    writable.build()
    expected = writable.search_vectors("image", vectors[:2], 4), writable.search_bm25(["comet"], 4)
    read_only(parts.folder)
    built: list[str] = []
    monkeypatch.setattr(IndexSet, "_build_vector_index", lambda self, space: built.append(space))
    index_set = parts.index_set()
    assert (index_set.search_vectors("image", vectors[:2], 4), index_set.search_bm25(["comet"], 4)) == expected
    assert built == []
