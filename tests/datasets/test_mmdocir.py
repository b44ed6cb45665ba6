"""The MMDocIR loader on a tiny folder in the official layout: items, questions, cached page
images, every validation error, and an evaluation restricted to each question's document."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrank.collection import Collection
from mmrank.datasets import load_dataset
from mmrank.datasets.mmdocir import load_mmdocir
from mmrank.errors import InputError
from mmrank.evaluation import add_dataset_items, evaluate
from mmrank.indexing import ItemEncoder
from mmrank.pipeline import Pipeline
from mmrank.retrieval import HybridRetriever
from tests.datasets.test_base import untouched

PAGE_SCHEMA = pa.schema([
    ("doc_name", pa.string()), ("domain", pa.string()), ("passage_id", pa.string()),
    ("image_path", pa.string()), ("image_binary", pa.binary()), ("ocr_text", pa.string()),
    ("vlm_text", pa.string()),
])
# (doc_name, domain, ocr_text); a page's image is (24 + row) x (30 + row) pixels.
PAGES = [
    ("annual.pdf", "Financial report", "Revenue table: revenue rose to 12 million dollars in 2021."),
    ("annual.pdf", "Financial report", "Board of directors and governance structure."),
    ("annual.pdf", "Financial report", "Acme has 500 employees working in three offices."),
    ("budget.pdf", "Financial report", "The city budget funds parks and public libraries."),
    # Words of annual.pdf's first question, on another document's page: only the candidates
    # restriction keeps it out of that question's ranking.
    ("budget.pdf", "Financial report", "How much did revenue rise to in 2021? Revenue rose."),
    ("news.pdf", "News", "Local football team wins the championship final."),
    ("news.pdf", "News", "Weather forecast: heavy rain expected on Sunday."),
    ("unannotated.pdf", "News", "A page of a document without annotations."),
]
NEWS_IMAGE = "images/news_p1.png"  # shipped as a file: used instead of the page's bytes
DOCUMENTS = [
    {"doc_name": "annual.pdf", "domain": "Financial report", "page_indices": [0, 2],
     "layout_indices": [0, 4], "questions": [
         {"Q": "How much did revenue rise to in 2021?", "A": "12 million", "type": "['Table']",
          "page_id": [0], "layout_mapping": []},
         {"Q": "How many employees work at Acme?", "A": "500", "type": "['Pure-text']",
          "page_id": [2], "layout_mapping": []}]},
    {"doc_name": "budget.pdf", "domain": "Financial report", "page_indices": [3, 4],
     "layout_indices": [5, 6], "questions": [
         {"Q": "What does the city budget fund?", "A": "parks", "type": "['Pure-text']",
          "page_id": [0], "layout_mapping": []}]},
    # Labelled with the weather page on purpose: News scores recall@1 = 0, so the mean over
    # domains (macro) differs from the mean over questions (micro).
    {"doc_name": "news.pdf", "domain": "News", "page_indices": [5, 6], "layout_indices": [7, 8],
     "questions": [
         {"Q": "Which football team won the championship final?", "A": "local",
          "type": "['Pure-text']", "page_id": [1], "layout_mapping": []}]},
]


def _image(row: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24 + row, 30 + row), (10 * row, 100, 200)).save(buffer, fmt)
    return buffer.getvalue()


def page_rows() -> list[dict[str, Any]]:
    return [
        {"doc_name": doc, "domain": domain, "passage_id": str(row), "image_path": f"pages/{row}.jpg",
         "image_binary": _image(row), "ocr_text": text, "vlm_text": f"VLM: {text}"}
        for row, (doc, domain, text) in enumerate(PAGES)
    ]


def write_mmdocir(root: Path, documents: list[Any] | None = None,
                  rows: list[dict[str, Any]] | None = None) -> Path:
    """Write the annotations (one JSON value per line) and the pages parquet."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(d) for d in (DOCUMENTS if documents is None else documents)]
    (root / "MMDocIR_annotations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(page_rows() if rows is None else rows, PAGE_SCHEMA),
                   root / "MMDocIR_pages.parquet")
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 50), "white").save(root / NEWS_IMAGE)
    return root


@pytest.fixture
def mmdocir_root(tmp_path: Path) -> Path:
    rows = page_rows()
    rows[5]["image_path"] = NEWS_IMAGE
    return write_mmdocir(tmp_path / "MMDocIR", rows=rows)


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_pages_become_items_with_their_text_and_cached_images(mmdocir_root: Path) -> None:
    dataset = load_mmdocir(mmdocir_root)

    ids = ["annual.pdf#page=1", "annual.pdf#page=2", "annual.pdf#page=3", "budget.pdf#page=1",
           "budget.pdf#page=2", "news.pdf#page=1", "news.pdf#page=2"]
    assert [item.id for item in dataset.items] == ids  # the unannotated page is left out
    assert [item.page for item in dataset.items] == [1, 2, 3, 1, 2, 1, 2]
    assert {item.kind for item in dataset.items} == {"page"}
    assert [item.text for item in dataset.items] == [text for _, _, text in PAGES[:7]]
    assert dataset.items[4].metadata == {"doc_name": "budget.pdf", "domain": "Financial report",
                                         "passage_id": "4"}
    assert dataset.items[5].source == str(mmdocir_root / NEWS_IMAGE)
    cache = mmdocir_root / ".mmrank-pages"
    for row, item in enumerate(dataset.items):
        if row != 5:
            assert Path(item.source).parent == cache
            assert _size(item.source) == (24 + row, 30 + row)
    assert sorted(p.suffix for p in cache.iterdir()) == [".jpg"] * 6  # no temporary file left


def test_questions_search_their_own_document(mmdocir_root: Path) -> None:
    dataset = load_mmdocir(mmdocir_root)

    assert [q.id for q in dataset.queries] == [
        "annual.pdf/q0", "annual.pdf/q1", "budget.pdf/q0", "news.pdf/q0"]
    first = dataset.queries[0]
    assert first.text == "How much did revenue rise to in 2021?"
    assert first.candidates == {"annual.pdf#page=1", "annual.pdf#page=2", "annual.pdf#page=3"}
    assert first.metadata == {"domain": "Financial report", "doc_name": "annual.pdf",
                              "type": "['Table']", "answer": "12 million"}
    assert dataset.queries[3].candidates == {"news.pdf#page=1", "news.pdf#page=2"}
    assert dataset.qrels == {
        "annual.pdf/q0": {"annual.pdf#page=1": 1}, "annual.pdf/q1": {"annual.pdf#page=3": 1},
        "budget.pdf/q0": {"budget.pdf#page=1": 1}, "news.pdf/q0": {"news.pdf#page=2": 1},
    }
    assert (dataset.name, dataset.split) == ("MMDocIR", "test")
    assert dataset.group_by == "domain"
    assert dataset.metrics == ("recall@1", "recall@3", "recall@5")


def test_multi_page_questions_and_vlm_text(tmp_path: Path) -> None:
    documents = copy.deepcopy(DOCUMENTS)
    documents[0]["questions"][1]["page_id"] = [2, 0, 2]
    dataset = load_mmdocir(write_mmdocir(tmp_path / "ds", documents), text="vlm")
    assert dataset.qrels["annual.pdf/q1"] == {"annual.pdf#page=3": 1, "annual.pdf#page=1": 1}
    assert dataset.items[0].text == f"VLM: {PAGES[0][2]}"


def test_second_load_reuses_the_cached_images(mmdocir_root: Path) -> None:
    first = load_mmdocir(mmdocir_root)
    cached = {item.source: Path(item.source).stat().st_mtime_ns for item in first.items}
    second = load_mmdocir(mmdocir_root)
    assert [item.source for item in second.items] == [item.source for item in first.items]
    assert {s: Path(s).stat().st_mtime_ns for s in cached} == cached
    assert len(list((mmdocir_root / ".mmrank-pages").iterdir())) == 6


def test_image_cache_option_and_fallback_to_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_mmdocir(tmp_path / "ds")
    chosen = load_mmdocir(root, image_cache=tmp_path / "chosen")
    assert {Path(i.source).parent for i in chosen.items} == {tmp_path / "chosen"}

    (root / ".mmrank-pages").write_text("not a folder")  # the default place is unusable
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fallback = load_mmdocir(root)
    [folder] = {Path(i.source).parent for i in fallback.items}
    assert folder.parent == tmp_path / "xdg" / "mmrank" / "pages"
    assert folder.name.startswith("ds-")
    assert _size(fallback.items[2].source) == (26, 32)


def test_load_dataset_knows_the_kind_and_sources_are_absolute(
    mmdocir_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(mmdocir_root.parent)
    dataset = load_dataset("mmdocir", "MMDocIR", split="test", text="vlm")
    assert len(dataset.items) == 7 and dataset.items[0].text.startswith("VLM: ")
    assert dataset.items[0].source.startswith(str(mmdocir_root / ".mmrank-pages"))
    assert dataset.items[5].source == str(mmdocir_root / NEWS_IMAGE)


# --- malformed folders -------------------------------------------------------------------------


def test_missing_folder_and_files_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"MMDocIR folder not found: .*nowhere.*page_indices"):
        load_mmdocir(tmp_path / "nowhere")
    root = write_mmdocir(tmp_path / "ds")
    (root / "MMDocIR_pages.parquet").unlink()
    with pytest.raises(InputError, match=r"is missing MMDocIR_pages\.parquet\. Expected .*image_binary"):
        load_mmdocir(root)


@pytest.mark.parametrize(
    ("options", "expected"),
    [({"split": "dev"}, "MMDocIR has one split, 'test' .*got 'dev'"),
     ({"text": "markdown"}, "Unknown MMDocIR page text 'markdown': choose ocr or vlm")],
)
def test_bad_options(mmdocir_root: Path, options: dict[str, str], expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        load_mmdocir(mmdocir_root, **options)


def _broken(change) -> list[Any]:
    documents = copy.deepcopy(DOCUMENTS)
    change(documents)
    return documents


def _set(index: int, key: str, value: Any):
    return lambda docs: docs[index].__setitem__(key, value)


def _set_question(index: int, key: str, value: Any):
    return lambda docs: docs[index]["questions"][0].__setitem__(key, value)


QUESTION = re.escape("question 0 of 'budget.pdf' ('What does the city budget fund?')")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.__setitem__(1, ["not", "an", "object"]), "expected a JSON object, got list"),
        (_set(1, "doc_name", ""), '"doc_name" must be a non-empty string'),
        (_set(1, "domain", None), '"domain" must be a non-empty string, got None'),
        (_set(1, "page_indices", [4, 3]), r"page_indices of 'budget.pdf' must be \[first row, last row\]"),
        (_set(1, "page_indices", [3]), r"page_indices of 'budget.pdf' must be .*got \[3\]"),
        (_set(1, "page_indices", [3, 9]), (r"page_indices \[3, 9\] of 'budget.pdf' go past the end "
                                          r"of MMDocIR_pages\.parquet, which has 8 rows")),
        (_set(1, "page_indices", [2, 4]), (r"page_indices of 'budget.pdf' overlap those of "
                                          r"'annual.pdf' \(line 1\) at row 2")),
        (_set(1, "doc_name", "annual.pdf"), r"duplicate doc_name 'annual.pdf' \(first on line 1\)"),
        (_set(1, "questions", {}), "questions of 'budget.pdf' must be a list"),
        (_set_question(1, "Q", 7), 'question 0 of \'budget.pdf\': "Q" must be a non-empty string'),
        (_set_question(1, "page_id", []), QUESTION + ": page_id must be a non-empty list"),
        (_set_question(1, "page_id", ["0"]), QUESTION + ": page_id must be a non-empty list"),
        (_set_question(1, "page_id", [0, 2]), QUESTION + r": page_id 2 is outside the document's "
                                              r"2 pages \(0-based: 0 to 1\)"),
    ],
)
def test_bad_annotation_names_file_line_and_question(tmp_path: Path, change, expected: str) -> None:
    root = write_mmdocir(tmp_path / "ds", _broken(change))
    with pytest.raises(InputError, match=rf"MMDocIR_annotations\.jsonl:2: {expected}"):
        load_mmdocir(root)


def test_invalid_json_and_empty_annotations(tmp_path: Path) -> None:
    root = write_mmdocir(tmp_path / "ds")
    (root / "MMDocIR_annotations.jsonl").write_text(json.dumps(DOCUMENTS[0]) + "\n{oops\n")
    with pytest.raises(InputError, match=r"MMDocIR_annotations\.jsonl:2: not valid JSON"):
        load_mmdocir(root)
    (root / "MMDocIR_annotations.jsonl").write_text("\n")
    with pytest.raises(InputError, match=r"MMDocIR_annotations\.jsonl holds no documents"):
        load_mmdocir(root)


def test_row_of_another_document_inside_a_range(tmp_path: Path) -> None:
    rows = page_rows()
    rows[4]["doc_name"] = "news.pdf"
    root = write_mmdocir(tmp_path / "ds", rows=rows)
    expected = (r"MMDocIR_pages\.parquet row 4 belongs to document 'news.pdf', but "
                r"MMDocIR_annotations\.jsonl:2 gives rows 3-4 to 'budget.pdf'")
    with pytest.raises(InputError, match=expected):
        load_mmdocir(root)


def test_pages_parquet_without_a_column_names_the_columns_found(tmp_path: Path) -> None:
    root = write_mmdocir(tmp_path / "ds")
    table = pq.read_table(root / "MMDocIR_pages.parquet").drop_columns(["image_binary"])
    pq.write_table(table, root / "MMDocIR_pages.parquet")
    expected = (r"MMDocIR_pages\.parquet lacks the column\(s\) image_binary; columns found: "
                r"doc_name, domain, passage_id, image_path, ocr_text, vlm_text\.")
    with pytest.raises(InputError, match=expected):
        load_mmdocir(root)


def test_page_without_image_names_the_row(tmp_path: Path) -> None:
    rows = page_rows()
    rows[3]["image_binary"] = None
    root = write_mmdocir(tmp_path / "ds", rows=rows)
    expected = (r"MMDocIR_pages\.parquet row 3 \(budget\.pdf#page=1\): no image_binary, and "
                r"image_path 'pages/3\.jpg' is not a file under")
    with pytest.raises(InputError, match=expected):
        load_mmdocir(root)


def test_unreadable_pages_file(tmp_path: Path) -> None:
    root = write_mmdocir(tmp_path / "ds")
    (root / "MMDocIR_pages.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"MMDocIR_pages\.parquet: not a readable parquet file"):
        load_mmdocir(root)


# --- end to end --------------------------------------------------------------------------------


def test_evaluation_ranks_only_each_questions_pages_and_reports_macro(
    mmdocir_root: Path, tmp_path: Path, minilm
) -> None:
    dataset = load_mmdocir(mmdocir_root)
    collection = Collection.create(tmp_path / "collection")
    assert add_dataset_items(collection, dataset, ItemEncoder(text_encoder=minilm)) == 7
    pipeline = Pipeline(collection, HybridRetriever(paths=("text", "bm25")))

    rankings = pipeline.search_batch(dataset.queries, k=10)
    for query, ranking in zip(dataset.queries, rankings):
        assert set(ranking.ids) == query.candidates  # every page of its document, no other
    assert rankings[0].ids[0] == "annual.pdf#page=1"

    [report] = evaluate(pipeline, dataset)
    assert report.stage == "retrieve"
    # Financial report: 3 questions, all right; News: 1 question, its label on the 2nd page.
    assert report.metrics == {
        "recall@1": 0.75, "macro/recall@1": 0.5,
        "recall@3": 1.0, "macro/recall@3": 1.0,
        "recall@5": 1.0, "macro/recall@5": 1.0,
        "queries": 4,
    }


# --- paths in the pages parquet stay inside the dataset folder ---------------------------------


def _outside(tmp_path: Path) -> Path:
    """A real image outside the dataset folder: nothing may look at it."""
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (9, 9), "red").save(tmp_path / "outside" / "secret.png")
    return tmp_path / "outside"


@pytest.mark.parametrize("bad", ["../outside/secret.png", "images/../../outside/secret.png", "ABSOLUTE"])
def test_an_image_path_leaving_the_folder_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    outside = _outside(tmp_path)
    bad = str(outside / "secret.png") if bad == "ABSOLUTE" else bad
    rows = page_rows()
    rows[2]["image_path"] = bad  # the row has image bytes too: the path is refused anyway
    root = write_mmdocir(tmp_path / "ds", rows=rows)
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError) as error:
        load_mmdocir(root)
    assert str(error.value).startswith(
        f"{root / 'MMDocIR_pages.parquet'} row 2 (annual.pdf#page=3) image_path: the path {bad!r} ")
    assert f"must lie inside the dataset folder {root}." in str(error.value)
    assert touched == []


def test_nested_and_normalised_image_paths_still_load(tmp_path: Path) -> None:
    rows = page_rows()
    rows[0]["image_path"] = "images/a/b.png"
    rows[1]["image_path"] = "./images/x/../a/c.png"
    root = write_mmdocir(tmp_path / "ds", rows=rows)
    (root / "images" / "a").mkdir()
    Image.new("RGB", (11, 12)).save(root / "images" / "a" / "b.png")
    Image.new("RGB", (13, 14)).save(root / "images" / "a" / "c.png")
    dataset = load_mmdocir(root)
    assert dataset.items[0].source == str(root / "images" / "a" / "b.png")
    assert dataset.items[1].source == str(root / "images" / "a" / "c.png")
    assert _size(dataset.items[1].source) == (13, 14)


def test_a_symlinked_image_folder_inside_the_dataset_still_loads(tmp_path: Path) -> None:
    disk = tmp_path / "other-disk" / "pages"
    disk.mkdir(parents=True)
    Image.new("RGB", (15, 16)).save(disk / "0.png")
    rows = page_rows()
    rows[0]["image_path"] = "linked/0.png"
    root = write_mmdocir(tmp_path / "ds", rows=rows)
    (root / "linked").symlink_to(disk, target_is_directory=True)
    dataset = load_mmdocir(root)
    assert dataset.items[0].source == str(root / "linked" / "0.png")
    assert _size(dataset.items[0].source) == (15, 16)


def test_a_blank_or_null_image_path_means_none_and_the_bytes_are_used(tmp_path: Path) -> None:
    rows = page_rows()
    rows[0]["image_path"], rows[1]["image_path"], rows[2]["image_path"] = "", "  ", None
    dataset = load_mmdocir(write_mmdocir(tmp_path / "ds", rows=rows))
    assert [_size(item.source) for item in dataset.items[:3]] == [(24, 30), (25, 31), (26, 32)]


# --- scored as MMDocIR's own evaluate_page ----------------------------------------------------

# 0-based page numbers within each question's document, best first, as metric_eval's
# top_k_indices gives them.
PAGE_RANKINGS = {"annual.pdf/q0": [1, 0, 2], "annual.pdf/q1": [2, 1, 0], "budget.pdf/q0": [0, 1],
                 "news.pdf/q0": [0, 1]}


def _official_page_recall(documents: list[dict[str, Any]], k: int) -> dict[str, float]:
    """evaluate_page(metric="recall") re-done by hand: per question |set(top k) & set(page_id)| /
    len(page_id); "micro" the mean over the questions, "macro" the mean of the domain means (the
    official code lists the full set's ten domains, which all have questions; here the domains
    of these documents)."""
    by_domain: dict[str, list[float]] = {}
    for document in documents:
        for index, question in enumerate(document["questions"]):
            top = PAGE_RANKINGS[f"{document['doc_name']}/q{index}"][:k]
            truth = question["page_id"]
            by_domain.setdefault(document["domain"], []).append(len(set(top) & set(truth)) / len(truth))
    values = [value for domain in by_domain.values() for value in domain]
    return {"micro": sum(values) / len(values),
            "macro": sum(sum(v) / len(v) for v in by_domain.values()) / len(by_domain)}


def test_recall_equals_mmdocirs_evaluate_page(tmp_path: Path) -> None:
    from mmrank.evaluation import score_judgements

    documents = copy.deepcopy(DOCUMENTS)
    documents[0]["questions"][1]["page_id"] = [2, 0]  # two labelled pages: recall@1 is 1/2
    dataset = load_mmdocir(write_mmdocir(tmp_path / "ds", documents))
    rankings = {qid: [f"{qid.split('/')[0]}#page={page + 1}" for page in pages]
                for qid, pages in PAGE_RANKINGS.items()}
    groups = {query.id: query.metadata[dataset.group_by] for query in dataset.queries}
    scored = score_judgements(rankings, dataset.judgements()[""], dataset.metrics, groups)
    assert scored.pop("queries") == 4
    for k in (1, 3, 5):
        official = _official_page_recall(documents, k)
        assert scored[f"recall@{k}"] == pytest.approx(official["micro"], abs=1e-12)
        assert scored[f"macro/recall@{k}"] == pytest.approx(official["macro"], abs=1e-12)
    # By hand, recall@1: Financial report 0, 1/2, 1 (mean 1/2), News 0.
    assert (scored["recall@1"], scored["macro/recall@1"]) == (1.5 / 4, 0.25)
    assert (scored["recall@3"], scored["macro/recall@3"]) == (1.0, 1.0)
