"""BM25Index: hand-computed scores, orderings, masked single-query search (agreeing with the full
search filtered), and saving and loading without pickles."""

from __future__ import annotations

import json
import math
import os

import pytest

from mmrank.errors import CollectionError
from mmrank.lexical import BM25Index

# bm25s's defaults ("lucene"): k1 = 1.5, b = 0.75.
K1, B = 1.5, 0.75

CORPUS = {
    "a": "the cat sat on the mat",        # tokens: cat sat mat
    "b": "a dog and a cat",               # tokens: dog cat
    "c": "rockets to the moon and back",  # tokens: rockets moon back
}


def _index(corpus: dict[str, str] = CORPUS) -> BM25Index:
    return BM25Index.build(list(corpus), list(corpus.values()))


def _lucene(tf: int, df: int, n_docs: int, length: int, average: float) -> float:
    """One term's BM25 score as bm25s computes it (Lucene's idf, tf saturation without (k1 + 1))."""
    idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + K1 * (1 - B + B * length / average))


def _varied_corpus() -> dict[str, str]:
    """Twelve texts whose scores for "comet" and "comet nebula" are all distinct: "comet" is
    repeated 1 to 3 times and each text has its own length."""
    corpus = {}
    for i in range(12):
        words = ["comet"] * (i % 3 + 1) + [f"pad{i}x{j}" for j in range(i)]
        if i % 4 == 0:
            words.append("nebula")
        corpus[f"t{i:02d}"] = " ".join(words)
    corpus["none"] = "quiet harbour evening"  # shares no term with the queries
    return corpus


def _filtered(hits: list[tuple[str, float]], subset: set[str], k: int) -> list[tuple[str, float]]:
    return [hit for hit in hits if hit[0] in subset][:k]


# ----------------------------------------------------------------------------- search


def test_scores_are_bm25_lucene_scores_computed_by_hand():
    index = _index()
    # Tokenized lengths 3, 2, 3 (stopwords dropped): average 8/3.
    average = 8 / 3
    [hits] = index.search(["cat"], k=5)
    assert [item_id for item_id, _ in hits] == ["b", "a"]  # the shorter text ranks first
    assert hits[0][1] == pytest.approx(_lucene(1, 2, 3, 2, average), rel=1e-5)
    assert hits[1][1] == pytest.approx(_lucene(1, 2, 3, 3, average), rel=1e-5)
    assert hits[0][1] == pytest.approx(0.2118326, rel=1e-5)

    [hits] = index.search(["cat moon"], k=5)
    assert [item_id for item_id, _ in hits] == ["c", "b", "a"]
    assert hits[0][1] == pytest.approx(_lucene(1, 1, 3, 3, average), rel=1e-5)


def test_items_sharing_no_term_are_left_out():
    index = _index()
    assert index.search(["cat"], k=3)[0] == index.search(["cat"], k=2)[0]
    assert [i for i, _ in index.search(["cat"], k=3)[0]] == ["b", "a"]
    assert index.search(["zebra"], k=3) == [[]]
    # Stopwords and one-letter words are not terms: such a query finds nothing.
    assert index.search(["the and of a"], k=3) == [[]]


def test_search_runs_one_result_list_per_query_in_order():
    index = _index()
    results = index.search(["moon", "zebra", "dog"], k=2)
    assert [[i for i, _ in hits] for hits in results] == [["c"], [], ["b"]]


def test_k_is_clamped_and_non_positive_k_finds_nothing():
    index = _index()
    assert len(index) == 3
    assert [i for i, _ in index.search(["cat moon"], k=100)[0]] == ["c", "b", "a"]
    assert [i for i, _ in index.search(["cat moon"], k=1)[0]] == ["c"]
    assert index.search(["cat", "moon"], k=0) == [[], []]
    assert index.search(["cat"], k=-3) == [[]]


def test_an_empty_index_finds_nothing():
    empty = BM25Index([], retriever=None)
    assert len(empty) == 0
    assert empty.search(["cat", "dog"], k=5) == [[], []]


def test_scores_are_python_floats_and_ids_strings():
    [hits] = _index().search(["cat"], k=2)
    assert all(type(item_id) is str and type(score) is float for item_id, score in hits)


def test_texts_without_terms_are_indexed_but_never_found():
    index = BM25Index.build(["x", "y", "z"], ["the cat", "   ", "of the"])
    assert len(index) == 3
    assert [i for i, _ in index.search(["cat"], k=3)[0]] == ["x"]
    assert index.search_within("cat", ["y", "z"], k=3) == []


# ----------------------------------------------------------------------------- search_within


@pytest.mark.parametrize("query", ["comet", "comet nebula", "nebula"])
@pytest.mark.parametrize("subset", [
    {"t00", "t05", "t07", "t10"},
    {"t01", "t02", "none"},
    {"t03"},
    set(_varied_corpus()),
])
def test_search_within_agrees_with_search_filtered(query, subset):
    corpus = _varied_corpus()
    index = _index(corpus)
    [everything] = index.search([query], k=len(corpus))
    scores = [score for _, score in everything]
    assert len(set(scores)) == len(scores)  # distinct scores: the order is unambiguous
    for k in (1, 2, len(subset)):
        within = index.search_within(query, sorted(subset), k)
        assert within == _filtered(everything, subset, k)


def test_search_within_masks_better_items_out():
    index = _index(_varied_corpus())
    [best] = index.search(["comet"], k=1)
    best_id = best[0][0]
    within = index.search_within("comet", [i for i in _varied_corpus() if i != best_id], k=3)
    assert best_id not in [i for i, _ in within]
    assert len(within) == 3


def test_search_within_ignores_unknown_ids_and_takes_any_iterable():
    index = _index()
    assert index.search_within("cat", ["zzz", "a", "nope"], k=5) == index.search(["cat"], k=5)[0][1:]
    assert index.search_within("cat", (i for i in ["b", "a"]), k=5) == index.search(["cat"], k=5)[0]
    assert index.search_within("cat", ["zzz"], k=5) == []
    assert index.search_within("cat", [], k=5) == []


def test_search_within_non_positive_k_or_empty_query_finds_nothing():
    index = _index()
    assert index.search_within("cat", ["a", "b"], k=0) == []
    assert index.search_within("cat", ["a", "b"], k=-1) == []
    assert index.search_within("the", ["a", "b"], k=2) == []
    assert index.search_within("zebra", ["a", "b"], k=2) == []


def test_search_within_keeps_only_positive_scores():
    index = _index()
    # "c" shares no term with "cat": it is in the subset but scores 0, so it is left out.
    assert [i for i, _ in index.search_within("cat", ["a", "c"], k=2)] == ["a"]


def test_search_within_with_repeated_ids():
    index = _index()
    assert index.search_within("cat", ["a", "a", "b", "b"], k=4) == index.search(["cat"], k=3)[0]


# ----------------------------------------------------------------------------- save and load


def test_save_and_load_round_trip_without_pickles(tmp_path):
    index = _index(_varied_corpus())
    index.save(tmp_path / "bm25.r1")
    saved = sorted(p.name for p in (tmp_path / "bm25.r1").iterdir())
    assert "ids.json" in saved
    assert not [name for name in saved if name.endswith((".pkl", ".pickle"))]
    assert json.loads((tmp_path / "bm25.r1" / "ids.json").read_text()) == list(_varied_corpus())

    loaded = BM25Index.load(tmp_path / "bm25.r1")
    assert len(loaded) == len(index)
    queries = ["comet", "comet nebula", "harbour", "zebra"]
    assert loaded.search(queries, k=5) == index.search(queries, k=5)
    assert loaded.search_within("comet", ["t01", "t04"], k=2) == index.search_within("comet", ["t01", "t04"], k=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25.r1"]  # no temporary folder left


def test_save_replaces_an_existing_folder(tmp_path):
    folder = tmp_path / "bm25"
    _index().save(folder)
    (folder / "stray.txt").write_text("from the old index")
    BM25Index.build(["p", "q"], ["comet tail", "quiet harbour"]).save(folder)
    assert not (folder / "stray.txt").exists()
    loaded = BM25Index.load(folder)
    assert len(loaded) == 2
    assert [i for i, _ in loaded.search(["comet"], k=2)[0]] == ["p"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_failed_save_leaves_no_temporary_and_the_old_index(monkeypatch, tmp_path):
    folder = tmp_path / "bm25"
    _index().save(folder)
    before = sorted(p.name for p in folder.iterdir())
    index = BM25Index.build(["p"], ["comet tail"])

    def broken_save(path: str, **options) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index._retriever, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        index.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [i for i, _ in BM25Index.load(folder).search(["cat"], k=3)[0]] == ["b", "a"]


def test_failed_rename_of_a_new_index_leaves_nothing(monkeypatch, tmp_path):
    index = _index()

    def replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        index.save(tmp_path / "bm25.r3")
    assert list(tmp_path.iterdir()) == []


def test_load_of_a_missing_folder_names_it(tmp_path):
    with pytest.raises(CollectionError, match=r"bm25\.r9: BM25 index missing or damaged"):
        BM25Index.load(tmp_path / "bm25.r9")


@pytest.mark.parametrize("damage", ["ids", "ids-missing", "params"])
def test_load_of_a_damaged_index_names_it(tmp_path, damage):
    folder = tmp_path / "bm25.r2"
    _index().save(folder)
    if damage == "ids":
        (folder / "ids.json").write_text('["a", "b"')
    elif damage == "ids-missing":
        (folder / "ids.json").unlink()
    else:
        for path in folder.iterdir():
            if path.name != "ids.json" and path.suffix == ".json":
                path.write_text("{not json")
    with pytest.raises(CollectionError, match=r"bm25\.r2: BM25 index missing or damaged"):
        BM25Index.load(folder)
