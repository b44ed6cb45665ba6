"""patch_index: candidate pages from patch centroids, exact MaxSim over the best, and exhaustive MaxSim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrank import patch_index as module
from mmrank.errors import CollectionError, InputError
from mmrank.maxsim import maxsim_pairs
from mmrank.patch_files import PatchFiles
from mmrank.patch_index import PatchIndex, page_batches, plan_lists, verify_saved_patch_index
from tests import vectors as sample_vectors

DIM = 16


def _corpus(tmp_path, pages=60, seed=0):
    """Documents of 5 pages; a document's pages draw their 20-40 patches from its own 3 topics.
    Stored as float32 patch files."""
    rng = np.random.default_rng(seed)
    topics = sample_vectors.unit(3 * (pages // 5 + 1), DIM, seed=seed + 100)
    files = PatchFiles(tmp_path / "patches", "patches", DIM, "float32")
    vectors, locations = [], []
    for page in range(pages):
        mine = topics[3 * (page // 5):3 * (page // 5) + 3]
        count = int(rng.integers(20, 41))
        rows = mine[rng.integers(0, 3, count)] + 0.05 * rng.standard_normal((count, DIM))
        rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
        segment, start = files.append(rows)
        vectors.append(rows)
        locations.append((segment, start, count))
    return files, [f"page-{n}" for n in range(pages)], np.array(locations), vectors


def _queries(vectors, count=8, seed=1):
    """Queries of 5 tokens near patches of one page each (so of its document's topics)."""
    rng = np.random.default_rng(seed)
    queries = []
    for target in rng.choice(len(vectors), count, replace=False):
        rows = vectors[target][rng.integers(0, len(vectors[target]), 5)] + 0.05 * rng.standard_normal((5, DIM))
        queries.append((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    return queries


def _by_hand(query, vectors, k):
    scores = np.array([maxsim_pairs(query, page) for page in vectors])
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return order, scores[order]


@pytest.fixture
def with_centroids(monkeypatch):
    """Small corpora get centroids too (normally only spaces past EXACT_PATCHES do)."""
    monkeypatch.setattr(module, "EXACT_PATCHES", 0)
    monkeypatch.setattr(module, "MIN_LISTS", 8)


def test_the_plan_scores_small_spaces_exactly_and_grows_with_the_square_root():
    assert plan_lists(0) == plan_lists(module.EXACT_PATCHES) == 0
    assert plan_lists(10_000_000) == 16384  # 4 * sqrt(1e7) = 12,649 -> the nearest power of two
    assert plan_lists(50_000_000) == 32768
    assert plan_lists(10**12) == module.MAX_LISTS
    assert plan_lists(module.EXACT_PATCHES + 1) * module.POINTS_PER_CENTROID <= module.EXACT_PATCHES + 1 or \
        plan_lists(module.EXACT_PATCHES + 1) == module.MIN_LISTS


def test_a_small_space_is_searched_exactly(tmp_path):
    files, ids, locations, vectors = _corpus(tmp_path)
    index = PatchIndex.build(DIM, ids, locations, files, device="cpu")
    assert index.nlist == 0
    queries = _queries(vectors)
    for query, (labels, scores) in zip(queries, index.search(queries, 5)):
        want_labels, want_scores = _by_hand(query, vectors, 5)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_candidates_from_centroids_find_the_exhaustive_top_and_report_exact_scores(tmp_path, with_centroids):
    files, ids, locations, vectors = _corpus(tmp_path)
    index = PatchIndex.build(DIM, ids, locations, files, device="cpu")
    assert index.nlist == plan_lists(int(locations[:, 2].sum())) > 0
    queries = _queries(vectors)
    exhaustive = index.search(queries, 5, exhaustive=True)
    found = index.search(queries, 5, nprobe=4, maxsim_depth=10)
    for query, (labels, scores), (want_labels, _) in zip(queries, found, exhaustive):
        assert set(labels.tolist()) == set(want_labels.tolist())  # the same top 5 from a sixth of the pages
        np.testing.assert_allclose(scores, [maxsim_pairs(query, vectors[n]) for n in labels], rtol=1e-5)


def test_centroid_interaction_probing_every_centroid_is_plain_centroid_interaction(tmp_path, with_centroids):
    files, ids, locations, vectors = _corpus(tmp_path, pages=30)
    index = PatchIndex.build(DIM, ids, locations, files, device="cpu")
    query = _queries(vectors, count=1)[0]
    scores = query @ index.centroids.T
    bounds, values = index.page_sets
    # A page's centroid set is where its patches' nearest centroids are.
    page = files.read(locations[[3]])
    assert set(np.argmax(page @ index.centroids.T, axis=1).tolist()) == set(values[bounds[3]:bounds[4]].tolist())
    plain = [scores[:, values[bounds[n]:bounds[n + 1]]].max(axis=1).sum() for n in range(len(ids))]
    np.testing.assert_allclose(index.approximate(query, index.nlist), plain, rtol=1e-5)
    # Probing one centroid per token: a token the page misses counts as that token's best centroid.
    one = index.approximate(query, 1)
    best = scores.max(axis=1)
    np.testing.assert_allclose(one, np.full(len(ids), best.sum()), rtol=1e-5)


def test_among_restricts_and_scores_exactly(tmp_path, with_centroids):
    files, ids, locations, vectors = _corpus(tmp_path)
    index = PatchIndex.build(DIM, ids, locations, files, device="cpu")
    query = _queries(vectors, count=1)[0]
    labels, scores = index.search([query], 10, among=[np.array([7, 3, 3, 50])])[0]
    assert sorted(labels.tolist()) == [3, 7, 50]
    np.testing.assert_allclose(scores, [maxsim_pairs(query, vectors[n]) for n in labels], rtol=1e-5)
    assert list(scores) == sorted(scores, reverse=True)
    assert index.labels(["page-50", "nope", "page-3"]).tolist() == [50, 3]


def test_saved_and_loaded_it_searches_the_same(tmp_path, with_centroids):
    files, ids, locations, vectors = _corpus(tmp_path)
    index = PatchIndex.build(DIM, ids, locations, files, device="cpu")
    index.save(tmp_path / "saved")
    verify_saved_patch_index(tmp_path / "saved")
    loaded = PatchIndex.load(tmp_path / "saved", files, device="cpu")
    queries = _queries(vectors)
    for (a, sa), (b, sb) in zip(index.search(queries, 5, nprobe=3, maxsim_depth=10),
                                loaded.search(queries, 5, nprobe=3, maxsim_depth=10)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
    manifest = json.loads((tmp_path / "saved" / "index.json").read_text())
    assert manifest["ids"] == ids and manifest["nlist"] == index.nlist
    arrays = tmp_path / "saved" / manifest["arrays_file"]
    arrays.write_bytes(arrays.read_bytes()[:-10])
    with pytest.raises(CollectionError, match="corrupted or truncated"):
        verify_saved_patch_index(tmp_path / "saved")
    with pytest.raises(CollectionError, match="does not exist"):
        PatchIndex.load(tmp_path / "nowhere", files)
    with pytest.raises(CollectionError, match="-dimensional patch index over 8-dimensional"):
        index.save(tmp_path / "again")
        PatchIndex.load(tmp_path / "again", PatchFiles(tmp_path / "patches", "patches", 8, "float32"))


def test_a_rebuild_keeps_the_centroids_and_assigns_only_new_or_moved_pages(tmp_path, with_centroids, monkeypatch):
    files, ids, locations, vectors = _corpus(tmp_path)
    first = PatchIndex.build(DIM, ids[:50], locations[:50], files, device="cpu")
    assigned = []
    real = module.assign_pages

    def counting(files_, ids_, locations_, centroids, known=None, on_progress=None):
        assigned.append(sum((i, *map(int, loc)) not in (known or {}) for i, loc in zip(ids_, locations_)))
        return real(files_, ids_, locations_, centroids, known, on_progress)

    monkeypatch.setattr(module, "assign_pages", counting)
    moved = locations[:60].copy()
    moved[0] = locations[59]  # page-0 now lies where page 59's rows are
    again = PatchIndex.build(DIM, ids[:60], moved, files, previous=first, device="cpu")
    assert again.nlist == first.nlist
    np.testing.assert_array_equal(again.centroids, first.centroids)
    assert assigned == [11]  # pages 50-59 and the moved page 0
    bounds, values = again.page_sets
    old_bounds, old_values = first.page_sets
    np.testing.assert_array_equal(values[bounds[5]:bounds[6]], old_values[old_bounds[5]:old_bounds[6]])
    assert set(values[bounds[0]:bounds[1]].tolist()) == set(values[bounds[59]:bounds[60]].tolist())


def test_page_batches_hold_whole_pages_within_the_budget():
    assert list(page_batches([3, 3, 3, 10, 1, 1], 6)) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert list(page_batches([], 6)) == []


def test_pages_and_locations_must_agree(tmp_path):
    files = PatchFiles(tmp_path, "patches", DIM)
    with pytest.raises(InputError, match="2 pages but 1 locations"):
        PatchIndex(DIM, ["a", "b"], np.array([[0, 0, 1]]), files)
