"""Question answering over a folder of PDFs: which page answers each question.

Layout (the shape of the demo's ``assets/``)::

    <root>/**/*.pdf              every PDF under the folder, at any depth
    <root>/questions.json        [{"question": "...", "id": "optional",
                                   "expected": [{"source": "pdfs/report.pdf", "page": 3}, ...]}, ...]

Every page of every PDF is a page Item made exactly as ``mmrank index`` makes it (files found the
same way, :func:`mmrank.ingest.read_items`: id ``<resolved path>#page=<n>``, the page's text),
pages without text included: a text-only pipeline cannot find them, which is part of what is
measured. Every question is a Query (id ``q1``, ``q2``... in file order, or its own ``id``); each
expected (source, page) is relevant with grade 1. A ``source`` is a path relative to the folder
that holds the questions file and must name a PDF under ``<root>``; extra keys are ignored.
Reported by default: top-k accuracy (``hit@1/3/5/10``), ``recall@5/10`` and ``mrr``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrank.datasets.base import Qrels, RetrievalDataset, inside, read_json
from mmrank.errors import InputError, listing
from mmrank.ingest import PDF_SUFFIXES, discover, read_items
from mmrank.types import Item, Query

SPLIT = "test"
METRICS = ("hit@1", "hit@3", "hit@5", "hit@10", "recall@5", "recall@10", "mrr")
LAYOUT = ("a folder of PDFs (searched recursively) and a JSON list of questions, "
          '[{"question": "...", "expected": [{"source": "<PDF path relative to the questions '
          'file\'s folder>", "page": <1-based page>}, ...]}, ...]')


@dataclass(frozen=True)
class _Expected:
    path: Path  # inside the questions file's folder, as written (not resolved)
    source: str
    page: int
    where: str


@dataclass(frozen=True)
class _Question:
    id: str
    text: str
    expected: tuple[_Expected, ...]
    where: str


def load_pdfqa(root: str | Path, *, questions: str | Path = "questions.json",
               split: str = SPLIT) -> RetrievalDataset:
    """Load the PDFs under ``root`` and the questions in ``questions`` (a path relative to
    ``root``, or an absolute one). Anything wrong with the questions file (invalid JSON, a
    question without text or expected pages, a malformed entry, a source that climbs out of its
    folder or names no PDF of ``root``, a page the PDF lacks), a folder without PDFs or a PDF
    that cannot be read is an InputError naming the file, the question and what is wrong."""
    if split != SPLIT:
        raise InputError(f"Unknown pdfqa split {split!r}: a folder of PDFs and its questions file are "
                         f"one split, {SPLIT!r}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"PDF folder not found: {root}. Expected {LAYOUT}.")
    questions_path = root / Path(questions).expanduser()
    parsed = _read_questions(questions_path)
    items = _read_pages(root, questions_path)
    pages = _pages_by_file(items)
    qrels: Qrels = {}
    for question in parsed:
        qrels[question.id] = {}
        for expected in question.expected:
            qrels[question.id][_item_id(expected, pages, root, questions_path)] = 1
    queries = [Query(id=question.id, text=question.text) for question in parsed]
    return RetrievalDataset(name=root.resolve().name, items=items, queries=queries, qrels=qrels,
                            split=split, metrics=METRICS)


# --- the questions file ------------------------------------------------------------------------


def _read_questions(path: Path) -> list[_Question]:
    raw = read_json(path, LAYOUT)
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: expected a non-empty JSON list of questions "
                         f"({{\"question\": ..., \"expected\": [...]}}), got {_kind(raw)}.")
    parsed: list[_Question] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(raw, start=1):
        question = _question(entry, number, path)
        if question.id in seen:
            raise InputError(f"{question.where}: the id {question.id!r} is already that of question "
                             f"{seen[question.id]}.")
        seen[question.id] = number
        parsed.append(question)
    return parsed


def _question(entry: Any, number: int, path: Path) -> _Question:
    where = f"{path}: question {number}"
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a JSON object with \"question\" and \"expected\", "
                         f"got {_kind(entry)}.")
    if "id" in entry:
        own = entry["id"]
        if isinstance(own, bool) or not isinstance(own, (str, int)) or not str(own).strip():
            raise InputError(f"{where}: \"id\" must be a non-empty string or an integer, got {own!r}.")
        question_id = str(own).strip()
    else:
        question_id = f"q{number}"
    where = f"{where} (id {question_id!r})"
    text = entry.get("question")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where} has no question text (\"question\" must be a non-empty string, "
                         f"got {text!r}).")
    expected = entry.get("expected")
    if not isinstance(expected, list) or not expected:
        raise InputError(f"{where} has no expected pages (\"expected\" must be a non-empty list of "
                         f"{{\"source\": ..., \"page\": ...}}, got {expected!r}).")
    folder = path.parent
    return _Question(question_id, text, tuple(_expected(e, f"{where}, expected entry {index}", folder)
                                              for index, e in enumerate(expected, start=1)), where)


def _expected(entry: Any, where: str, folder: Path) -> _Expected:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a JSON object {{\"source\": ..., \"page\": ...}}, "
                         f"got {_kind(entry)}.")
    source, page = entry.get("source"), entry.get("page")
    if not isinstance(source, str) or not source.strip():
        raise InputError(f"{where}: \"source\" must be the path of a PDF relative to {folder}, "
                         f"got {source!r}.")
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InputError(f"{where}: \"page\" must be a page number (an integer from 1), got {page!r}.")
    return _Expected(inside(folder, source.strip(), source=where), source, page, where)


# --- the PDFs ----------------------------------------------------------------------------------


def _read_pages(root: Path, questions_path: Path) -> list[Item]:
    """Every page of every PDF under ``root``, found and read as ``mmrank index`` does; a PDF
    that cannot be read (or whose name cannot be stored) is an InputError: a benchmark does not
    drop documents."""
    files, skipped = discover([root])
    unreadable = [s for s in skipped if Path(s.path).suffix.lower() in PDF_SUFFIXES]
    if unreadable:
        raise InputError(f"{unreadable[0].path}: {unreadable[0].reason}.")
    pdfs = [path for path in files if path.suffix.lower() in PDF_SUFFIXES]
    if not pdfs:
        raise InputError(f"{questions_path}: the folder {root} holds no PDF, so its questions have no "
                         f"page to find. Expected {LAYOUT}.")
    items: list[Item] = []
    for pdf in pdfs:
        pages, warning = read_items(pdf)
        if warning:
            warnings.warn(f"{pdf}: {warning}.", stacklevel=3)
        items.extend(pages)
    return items


def _pages_by_file(items: list[Item]) -> dict[str, dict[int, str]]:
    """Resolved PDF path -> page number -> item id."""
    pages: dict[str, dict[int, str]] = {}
    for item in items:
        pages.setdefault(item.source, {})[item.page] = item.id
    return pages


def _item_id(expected: _Expected, pages: Mapping[str, dict[int, str]], root: Path,
             questions_path: Path) -> str:
    """The id of the expected page; the path is resolved only to be compared with the PDFs found
    under ``root`` (the file it names is never opened)."""
    resolved = str(expected.path.resolve())
    if resolved not in pages:
        folder = questions_path.parent.resolve()
        known = sorted(_relative(Path(p), folder) for p in pages)
        raise InputError(f"{expected.where}: the source {expected.source!r} is not a PDF of the folder "
                         f"{root} (sources are relative to {questions_path.parent}; its PDFs are "
                         f"{listing(known)}).")
    numbers = pages[resolved]
    if expected.page not in numbers:
        raise InputError(f"{expected.where}: {expected.source!r} has no page {expected.page} "
                         f"(it has {len(numbers)} page{'s' if len(numbers) != 1 else ''}).")
    return numbers[expected.page]


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _kind(value: Any) -> str:
    return f"an empty {type(value).__name__}" if value in ({}, []) else type(value).__name__
