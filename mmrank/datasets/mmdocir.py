"""MMDocIR page-level retrieval: ``MMDocIR_annotations.jsonl`` and ``MMDocIR_pages.parquet``.

Every page of an annotated document is a page Item ``<doc_name>#page=<n>`` (n 1-based); every
question is a Query searched among the pages of its own document only. Recall@1/3/5 is reported
over the questions (micro) and as the mean over domains (``macro/``).

Scored as MMDocIR's own page-level evaluation (``evaluate_page`` in MMDocRAG/MMDocIR
``metric_eval.py``, which ``search.py`` runs with k = 1, 3, 5): per question, the labelled pages
among the top k over the labelled pages; its "micro" line is the mean over every question, its
"macro" the mean of the per-domain means. Where that code differs, the full annotation file never
reaches the difference: it always divides its macro mean by its ten domains (a domain without
questions adding 0), and the file's questions cover all ten; it divides by the length of
``page_id`` with repeats, and the file repeats no page. Layout-level recall (box overlap with
``layout_mapping``) is not computed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrank.datasets._parquet import PageImages, iter_rows, row_count
from mmrank.datasets.base import Qrels, RetrievalDataset, inside
from mmrank.datasets._lines import json_objects
from mmrank.errors import InputError
from mmrank.types import Item, Query

ANNOTATIONS = "MMDocIR_annotations.jsonl"
PAGES = "MMDocIR_pages.parquet"
LAYOUT = (
    f"{ANNOTATIONS} (one JSON object per document: doc_name, domain, page_indices [first row, "
    "last row] of the pages parquet, questions [{Q, A, type, page_id: [0-based page numbers]}]) "
    f"and {PAGES} (doc_name, domain, passage_id, image_path, image_binary, ocr_text, vlm_text)"
)
SPLIT = "test"
TEXT_COLUMNS = {"ocr": "ocr_text", "vlm": "vlm_text"}
METRICS = ("recall@1", "recall@3", "recall@5")
_PAGE_COLUMNS = ("doc_name", "domain", "passage_id", "image_path", "image_binary")


@dataclass(frozen=True)
class _Question:
    index: int
    text: str
    answer: Any
    type: Any
    pages: tuple[int, ...]  # 0-based within the document


@dataclass(frozen=True)
class _Document:
    name: str
    domain: str
    first: int  # rows of the pages parquet, inclusive
    last: int
    lineno: int
    questions: tuple[_Question, ...]

    @property
    def page_count(self) -> int:
        return self.last - self.first + 1

    def page_id(self, page: int) -> str:
        """The item id of the 1-based ``page``."""
        return f"{self.name}#page={page}"


def load_mmdocir(
    root: str | Path, split: str = SPLIT, text: str = "ocr", image_cache: str | Path | None = None
) -> RetrievalDataset:
    """Load the MMDocIR evaluation set (its one split, ``"test"``) from ``root``.

    Page text is the OCR text, or the VLM description with ``text="vlm"``. A page image is read
    from ``<root>/<image_path>`` when that file exists, else its ``image_binary`` is written once
    into ``image_cache`` (see :class:`~mmrank.datasets._parquet.PageImages`). An ``image_path``
    that does not lie inside ``root`` is an InputError naming the row (see
    :func:`~mmrank.datasets.base.inside`).
    """
    root = Path(root).expanduser().absolute()  # item sources stay valid from any cwd
    _check_options(split, text)
    annotations, pages = _check_layout(root)
    documents = _read_annotations(annotations)
    _check_ranges(documents, annotations, pages)
    images = PageImages(root, image_cache)
    items = _read_pages(pages, annotations, documents, TEXT_COLUMNS[text], images)
    queries, qrels = _questions(documents)
    return RetrievalDataset(
        name="MMDocIR", items=items, queries=queries, qrels=qrels, split=split,
        group_by="domain", metrics=METRICS,
    )


def _check_options(split: str, text: str) -> None:
    if split != SPLIT:
        raise InputError(f"MMDocIR has one split, {SPLIT!r} (its evaluation set); got {split!r}.")
    if text not in TEXT_COLUMNS:
        raise InputError(f"Unknown MMDocIR page text {text!r}: choose {' or '.join(TEXT_COLUMNS)}.")


def _check_layout(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise InputError(f"MMDocIR folder not found: {root}. Expected it to hold {LAYOUT}.")
    paths = (root / ANNOTATIONS, root / PAGES)
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise InputError(f"MMDocIR folder {root} is missing {', '.join(missing)}. Expected {LAYOUT}.")
    return paths


# --- annotations -------------------------------------------------------------------------------


def _read_annotations(path: Path) -> list[_Document]:
    documents: list[_Document] = []
    seen: dict[str, int] = {}
    for lineno, record in json_objects(path):
        document = _document(record, path, lineno)
        if document.name in seen:
            raise InputError(
                f"{path}:{lineno}: duplicate doc_name {document.name!r} "
                f"(first on line {seen[document.name]})."
            )
        seen[document.name] = lineno
        documents.append(document)
    if not documents:
        raise InputError(f"{path} holds no documents.")
    return documents


def _document(record: dict[str, Any], path: Path, lineno: int) -> _Document:
    where = f"{path}:{lineno}"
    name = _text(record, "doc_name", where)
    domain = _text(record, "domain", where)
    indices = record.get("page_indices")
    if not (_int_list(indices) and len(indices) == 2 and 0 <= indices[0] <= indices[1]):
        raise InputError(
            f"{where}: page_indices of {name!r} must be [first row, last row] with "
            f"0 <= first <= last, got {indices!r}."
        )
    questions = record.get("questions")
    if not isinstance(questions, list):
        raise InputError(f"{where}: questions of {name!r} must be a list, got {questions!r}.")
    page_count = indices[1] - indices[0] + 1
    parsed = tuple(
        _question(index, raw, f"{where}: question {index} of {name!r}", page_count)
        for index, raw in enumerate(questions)
    )
    return _Document(name, domain, indices[0], indices[1], lineno, parsed)


def _question(index: int, raw: Any, where: str, page_count: int) -> _Question:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}.")
    text = _text(raw, "Q", where)
    where = f"{where} ({_excerpt(text)})"
    pages = raw.get("page_id")
    if not _int_list(pages) or not pages:
        raise InputError(f"{where}: page_id must be a non-empty list of page numbers, got {pages!r}.")
    outside = [page for page in pages if not 0 <= page < page_count]
    if outside:
        raise InputError(
            f"{where}: page_id {outside[0]} is outside the document's {page_count} pages "
            f"(0-based: 0 to {page_count - 1})."
        )
    return _Question(index, text, raw.get("A"), raw.get("type"), tuple(dict.fromkeys(pages)))


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: \"{key}\" must be a non-empty string, got {value!r}.")
    return value


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _excerpt(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _check_ranges(documents: Sequence[_Document], annotations: Path, pages: Path) -> None:
    """Every document's rows lie inside the pages parquet, and no row belongs to two documents."""
    rows = row_count(pages)
    for document in documents:
        if document.last >= rows:
            raise InputError(
                f"{annotations}:{document.lineno}: page_indices [{document.first}, {document.last}] "
                f"of {document.name!r} go past the end of {pages.name}, which has {rows} rows."
            )
    ordered = sorted(documents, key=lambda d: d.first)
    for before, after in itertools.pairwise(ordered):
        if after.first <= before.last:
            raise InputError(
                f"{annotations}:{after.lineno}: page_indices of {after.name!r} overlap those of "
                f"{before.name!r} (line {before.lineno}) at row {after.first}."
            )


# --- pages -------------------------------------------------------------------------------------


def _read_pages(
    pages: Path, annotations: Path, documents: Sequence[_Document], text_column: str,
    images: PageImages,
) -> list[Item]:
    """One Item per row that belongs to a document, streaming the parquet."""
    owners = sorted(documents, key=lambda d: d.first)
    items: list[Item] = []
    current = 0
    for row, record in iter_rows(pages, (*_PAGE_COLUMNS, text_column)):
        while current < len(owners) and owners[current].last < row:
            current += 1
        if current == len(owners):
            break
        document = owners[current]
        if row < document.first:
            continue
        if record["doc_name"] != document.name:
            raise InputError(
                f"{pages} row {row} belongs to document {record['doc_name']!r}, but "
                f"{annotations.name}:{document.lineno} gives rows {document.first}-{document.last} "
                f"to {document.name!r}."
            )
        items.append(_page_item(record, row, document, text_column, pages, images))
    return items


def _page_item(
    record: dict[str, Any], row: int, document: _Document, text_column: str, pages: Path,
    images: PageImages,
) -> Item:
    page = row - document.first + 1
    item_id = document.page_id(page)
    text = record[text_column]
    return Item(
        id=item_id, kind="page", source=_page_image(record, item_id, row, pages, images),
        page=page, text=text if isinstance(text, str) else None,
        metadata={"doc_name": document.name, "domain": record["domain"],
                  "passage_id": record["passage_id"]},
    )


def _page_image(
    record: dict[str, Any], item_id: str, row: int, pages: Path, images: PageImages
) -> str:
    """``<root>/<image_path>`` when that file exists, else the cached ``image_binary``; an
    ``image_path`` that leaves ``<root>`` is an InputError even when the row has image bytes."""
    image_path = record["image_path"]
    if isinstance(image_path, str) and image_path.strip():
        file = inside(pages.parent, image_path, source=f"{pages} row {row} ({item_id}) image_path")
        if file.is_file():
            return str(file)
    data = record["image_binary"]
    if isinstance(data, bytes) and data:
        return str(images.store(data, item_id))
    raise InputError(
        f"{pages} row {row} ({item_id}): no image_binary, and image_path {image_path!r} is not "
        f"a file under {pages.parent}."
    )


# --- questions ---------------------------------------------------------------------------------


def _questions(documents: Sequence[_Document]) -> tuple[list[Query], Qrels]:
    queries: list[Query] = []
    qrels: Qrels = {}
    for document in documents:
        candidates = frozenset(document.page_id(n) for n in range(1, document.page_count + 1))
        for question in document.questions:
            query_id = f"{document.name}/q{question.index}"
            queries.append(Query(
                id=query_id, text=question.text, candidates=candidates,
                metadata={"domain": document.domain, "doc_name": document.name,
                          "type": question.type, "answer": question.answer},
            ))
            qrels[query_id] = {document.page_id(page + 1): 1 for page in question.pages}
    return queries, qrels
