"""The pdfqa loader: a folder of PDFs and a questions file in the shape of the demo's
``assets/questions.json``, on the bundled assets and on small folders, well-formed and broken."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mmrank.datasets import known_kinds, load_dataset
from mmrank.datasets.pdfqa import METRICS, load_pdfqa
from mmrank.errors import InputError
from mmrank.ingest import read_items
from mmrank.metrics import hit_rate_at_k, parse_metric
from mmrank.types import Query
from tests.paths import ASSETS
from tests.sample_files import make_pdf

QUESTIONS = json.loads((ASSETS / "questions.json").read_text(encoding="utf-8"))


def _page_id(pdf: Path, page: int) -> str:
    return f"{pdf.resolve()}#page={page}"


def write_questions(folder: Path, questions, name: str = "questions.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(questions if isinstance(questions, str) else json.dumps(questions), encoding="utf-8")
    return path


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """Two PDFs (one in a subfolder, one with a page without text) and two questions."""
    root = tmp_path / "docs"
    make_pdf(root / "b.pdf", ["Bees make honey from nectar.", None])
    make_pdf(root / "sub" / "a.pdf", ["Apples grow on trees.", "Almonds are seeds.", "Avocados are fruit."])
    write_questions(root, [
        {"question": "What do bees make?", "expected": [{"source": "b.pdf", "page": 1}]},
        {"question": "Which grow on trees?", "id": "trees", "answer": "apples",
         "expected": [{"source": "sub/a.pdf", "page": 1}, {"source": "./sub/a.pdf", "page": 3}]},
    ])
    return root


# --- the bundled demo assets -------------------------------------------------------------------


def test_the_demo_assets_load_as_mmrank_index_makes_their_pages() -> None:
    dataset = load_dataset("pdfqa", ASSETS, questions="questions.json")

    pdfs = sorted(p.resolve() for p in (ASSETS / "pdfs").glob("*.pdf"))
    assert dataset.items == [item for pdf in pdfs for item in read_items(pdf)[0]]
    assert len(dataset.items) == 16 and {item.kind for item in dataset.items} == {"page"}
    assert dataset.queries == [Query(id=f"q{n}", text=q["question"]) for n, q in enumerate(QUESTIONS, start=1)]
    assert len(dataset.queries) == 12
    assert dataset.qrels == {
        f"q{n}": {_page_id(ASSETS / e["source"], e["page"]): 1 for e in q["expected"]}
        for n, q in enumerate(QUESTIONS, start=1)
    }
    assert (dataset.name, dataset.split, dataset.metrics) == ("assets", "test", METRICS)


def test_the_default_metrics_are_top_k_accuracy_recall_and_mrr() -> None:
    assert "pdfqa" in known_kinds()
    assert METRICS == ("hit@1", "hit@3", "hit@5", "hit@10", "recall@5", "recall@10", "mrr")
    for name in METRICS:
        parse_metric(name)
    # hit@k is top-k accuracy: 1 when any expected page is in the top k.
    assert hit_rate_at_k(["x", "y", "p"], {"p": 1, "q": 1}, 3) == 1.0
    assert hit_rate_at_k(["x", "y", "p"], {"p": 1}, 2) == 0.0


def test_eval_on_the_demo_assets_finds_every_expected_page_first(run_cli, minilm) -> None:
    code, out, err = run_cli("eval", ASSETS, "--format", "pdfqa", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["queries"], result["split"]) == (12, "test")
    [stage] = result["stages"]  # docqa-text: one fused retrieval stage
    assert list(stage["metrics"]) == [*METRICS, "queries"]
    # As the demo prints: "12 of 12 questions have the expected page at rank 1."
    assert stage["metrics"]["hit@1"] == 1.0 and stage["metrics"]["mrr"] == 1.0
    assert stage["metrics"]["queries"] == 12


def test_questions_may_live_above_the_pdf_folder() -> None:
    # Index only assets/pdfs; the sources stay relative to the folder holding questions.json.
    dataset = load_pdfqa(ASSETS / "pdfs", questions="../questions.json")
    assert len(dataset.items) == 16 and dataset.qrels == load_pdfqa(ASSETS).qrels


# --- small folders -----------------------------------------------------------------------------


def test_every_page_is_an_item_text_or_not_and_ids_are_the_questions_own(docs: Path) -> None:
    dataset = load_pdfqa(docs)

    pdfs = [(docs / "b.pdf").resolve(), (docs / "sub" / "a.pdf").resolve()]
    assert [item.id for item in dataset.items] == [_page_id(pdfs[0], 1), _page_id(pdfs[0], 2),
                                                   *(_page_id(pdfs[1], n) for n in (1, 2, 3))]
    assert dataset.items[1].text is None and dataset.items[1].kind == "page"  # kept, though textless
    assert [(q.id, q.text) for q in dataset.queries] == [("q1", "What do bees make?"),
                                                         ("trees", "Which grow on trees?")]
    assert dataset.qrels == {"q1": {_page_id(pdfs[0], 1): 1},
                             "trees": {_page_id(pdfs[1], 1): 1, _page_id(pdfs[1], 3): 1}}


def test_a_questions_file_in_a_subfolder_has_sources_relative_to_it(docs: Path) -> None:
    write_questions(docs / "sub", [{"question": "Almonds?", "expected": [{"source": "a.pdf", "page": 2}]}], "qa.json")
    dataset = load_pdfqa(docs, questions="sub/qa.json")
    assert dataset.qrels == {"q1": {_page_id(docs / "sub" / "a.pdf", 2): 1}}


def test_only_the_test_split_exists(docs: Path) -> None:
    with pytest.raises(InputError, match="Unknown pdfqa split 'dev'"):
        load_pdfqa(docs, split="dev")


GOOD = {"question": "What do bees make?", "expected": [{"source": "b.pdf", "page": 1}]}

E1 = r"question 2 \(id 'q2'\), expected entry 1: "
BAD_QUESTIONS = [
    ({"expected": [{"source": "b.pdf", "page": 1}]}, r"question 2 \(id 'q2'\) has no question text"),
    ({"question": "  ", "expected": [{"source": "b.pdf", "page": 1}]}, "question 2 .* has no question text"),
    ({"question": 7, "expected": [{"source": "b.pdf", "page": 1}]}, "question 2 .* has no question text"),
    ({"question": "Bees?", "expected": []}, r"question 2 \(id 'q2'\) has no expected pages"),
    ({"question": "Bees?"}, "question 2 .* has no expected pages"),
    ({"question": "Bees?", "expected": {"source": "b.pdf", "page": 1}}, "question 2 .* has no expected pages"),
    ("Bees?", "question 2: expected a JSON object"),
    ({"question": "Bees?", "id": True, "expected": [{"source": "b.pdf", "page": 1}]},
     "question 2: \"id\" must be a non-empty string"),
    ({"question": "Bees?", "id": "q1", "expected": [{"source": "b.pdf", "page": 1}]},
     r"question 2 \(id 'q1'\): the id 'q1' is already that of question 1"),
    ({"question": "Bees?", "expected": ["b.pdf"]}, E1 + "expected a JSON object"),
    ({"question": "Bees?", "expected": [{"page": 1}]}, E1 + "\"source\" must be the path of a PDF"),
    ({"question": "Bees?", "expected": [{"source": "b.pdf", "page": 1}, {"source": "b.pdf"}]},
     r"question 2 \(id 'q2'\), expected entry 2: \"page\" must be a page number .* got None"),
    ({"question": "Bees?", "expected": [{"source": "b.pdf", "page": "1"}]}, E1 + "\"page\" must be a page number .* got '1'"),
    ({"question": "Bees?", "expected": [{"source": "b.pdf", "page": 0}]}, E1 + "\"page\" must be a page number .* got 0"),
    ({"question": "Bees?", "expected": [{"source": "b.pdf", "page": True}]}, E1 + "\"page\" must be a page number"),
    ({"question": "Bees?", "expected": [{"source": "c.pdf", "page": 1}]},
     E1 + "the source 'c.pdf' is not a PDF of the folder .*its PDFs are 'b.pdf', 'sub/a.pdf'"),
    ({"question": "Bees?", "expected": [{"source": "questions.json", "page": 1}]},
     E1 + "the source 'questions.json' is not a PDF of the folder"),
    ({"question": "Bees?", "expected": [{"source": "sub", "page": 1}]}, E1 + "the source 'sub' is not a PDF"),
    ({"question": "Bees?", "expected": [{"source": "b.pdf", "page": 3}]}, E1 + r"'b.pdf' has no page 3 \(it has 2 pages\)"),
    ({"question": "Bees?", "expected": [{"source": ".", "page": 1}]}, E1 + "the path '.' names the folder itself"),
]


@pytest.mark.parametrize("question, message", BAD_QUESTIONS)
def test_a_bad_question_names_the_file_the_question_and_the_fault(docs: Path, question, message: str) -> None:
    path = write_questions(docs, [GOOD, question])
    with pytest.raises(InputError, match=re.escape(str(path)) + ": " + message):
        load_pdfqa(docs)


@pytest.mark.parametrize("content, message", [
    ("[{\"question\": \"x\",", "not valid JSON"),
    ("{}", "expected a non-empty JSON list of questions .* got an empty dict"),
    ("[]", "expected a non-empty JSON list of questions .* got an empty list"),
    ("{\"questions\": []}", "expected a non-empty JSON list of questions .* got dict"),
])
def test_a_bad_questions_file_is_refused(docs: Path, content: str, message: str) -> None:
    path = write_questions(docs, content)
    with pytest.raises(InputError, match=re.escape(str(path)) + ": " + message):
        load_pdfqa(docs)


def test_a_missing_questions_file_is_named(docs: Path) -> None:
    with pytest.raises(InputError, match=re.escape(f"Missing file {docs / 'other.json'}.") + " Expected a folder"):
        load_pdfqa(docs, questions="other.json")


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="PDF folder not found: .*nowhere"):
        load_pdfqa(tmp_path / "nowhere")


def test_a_folder_without_pdfs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no PDFs here", encoding="utf-8")
    path = write_questions(tmp_path, [GOOD])
    with pytest.raises(InputError, match=re.escape(f"{path}: the folder {tmp_path} holds no PDF")):
        load_pdfqa(tmp_path)


def test_a_pdf_that_cannot_be_read_is_an_error_not_a_dropped_document(docs: Path) -> None:
    broken = docs / "sub" / "broken.pdf"
    broken.write_bytes(b"this is not a PDF at all")
    with pytest.raises(InputError, match=re.escape(str(broken.resolve()))):
        load_pdfqa(docs)


@pytest.mark.parametrize("source", ["../outside.pdf", "sub/../../outside.pdf", "{outside}"])
def test_a_source_outside_the_folder_is_refused_and_never_read(docs: Path, monkeypatch, source: str) -> None:
    outside = make_pdf(docs.parent / "outside.pdf", ["Secret text."])
    source = source.format(outside=outside)
    read: list[Path] = []

    def spy(path: Path):
        read.append(path)
        return read_items(path)

    monkeypatch.setattr("mmrank.datasets.pdfqa.read_items", spy)
    path = write_questions(docs, [GOOD, {"question": "Secret?", "expected": [{"source": source, "page": 1}]}])
    with pytest.raises(InputError, match=re.escape(f"{path}: question 2 (id 'q2'), expected entry 1: the path "
                                                   f"{source!r}") + " (climbs out|is not relative)"):
        load_pdfqa(docs)
    assert outside.resolve() not in read and outside not in read


def test_a_source_beside_the_questions_but_outside_the_pdf_folder_is_never_read(tmp_path: Path, monkeypatch) -> None:
    # The questions file sits above the PDF folder: a PDF next to it lies inside the questions'
    # folder but is no document of the folder evaluated.
    make_pdf(tmp_path / "docs" / "a.pdf", ["Apples."])
    make_pdf(tmp_path / "outside.pdf", ["Secret text."])
    read: list[Path] = []

    def spy(path: Path):
        read.append(path)
        return read_items(path)

    monkeypatch.setattr("mmrank.datasets.pdfqa.read_items", spy)
    write_questions(tmp_path, [{"question": "Secret?", "expected": [{"source": "outside.pdf", "page": 1}]}])
    with pytest.raises(InputError, match="the source 'outside.pdf' is not a PDF of the folder .*docs.* 'docs/a.pdf'"):
        load_pdfqa(tmp_path / "docs", questions="../questions.json")
    assert read == [(tmp_path / "docs" / "a.pdf").resolve()]


def test_a_pdf_whose_name_cannot_be_stored_is_an_error_not_a_dropped_document(docs: Path) -> None:
    pdf = make_pdf(docs / "cafe.pdf", ["Coffee."])
    os.rename(os.fsencode(pdf), os.fsencode(docs) + b"/caf\xe9.pdf")
    with pytest.raises(InputError, match=r"caf\\xe9\.pdf: its name is not valid UTF-8"):
        load_pdfqa(docs)
