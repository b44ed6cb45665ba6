"""ViDoRe visual document retrieval, in the Hugging Face parquet layouts of its three generations.

- ``qa`` (v1 QA): one table whose rows are pages (``image``, ``image_filename``), some with a
  ``query``; queries are deduplicated by text. Main metric nDCG@5.
- ``beir`` (v1 BEIR, v2): configs ``corpus``, ``queries`` and ``qrels`` with ``corpus-id`` /
  ``query-id`` columns. Main metric nDCG@5.
- ``v3``: the same configs with ``corpus_id`` / ``query_id``; the corpus's ``markdown`` becomes
  the page text. Main metric nDCG@10.

Pages are page Items whose image is written once into a cache folder; queries search the whole
corpus.

Scored as the official evaluators score (``ViDoReEvaluatorQA`` of illuin-tech/vidore-benchmark
for ``qa``; MTEB's ViDoRe tasks, and vidore-benchmark's ``ViDoReEvaluatorBEIR``, for ``beir`` and
``v3``): pytrec_eval's ``ndcg_cut`` (linear gain) and ``recall``, averaged over every judged query
(one judged with 0 grades only scores 0: ``averaging="trec_eval"``). MTEB rounds each mean to 5
decimals; mmrank does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mmrank.datasets._parquet import (
    PageImages,
    column_names,
    iter_rows,
    row_count,
    split_files,
)
from mmrank.datasets.base import Qrels, RetrievalDataset, inside
from mmrank.errors import InputError, listing
from mmrank.types import Item, Query

FORMATS = {
    "qa": "qa (v1 QA): one table <root>/data/<split>-*.parquet or <root>/*.parquet with columns "
          "query (null on pages without a question), image, image_filename",
    "beir": "beir (v1 BEIR, v2): configs corpus (corpus-id, image), queries (query-id, query"
            "[, language]) and qrels (query-id, corpus-id, score), each as "
            "<root>/<config>/<split>-*.parquet or <root>/<config>.parquet",
    "v3": "v3: configs corpus (corpus_id, image, markdown), queries (query_id, query[, language]) "
          "and qrels (query_id, corpus_id, score), laid out as for beir",
}
METRICS = {
    "qa": ("ndcg@5", "recall@1", "recall@5"),
    "beir": ("ndcg@5", "recall@1", "recall@5"),
    "v3": ("ndcg@10", "recall@5", "recall@10"),
}
CONFIGS = ("corpus", "queries", "qrels")
QA_RELEVANCE = {
    "last": "the page of the last row carrying the query's text (ViDoReEvaluatorQA, the v1 leaderboard)",
    "all": "the page of every row carrying the query's text (the BEIR copies that MTEB evaluates)",
}
_ID_COLUMNS = {"beir": ("corpus-id", "query-id"), "v3": ("corpus_id", "query_id")}


def load_vidore(
    root: str | Path,
    split: str = "test",
    format: str | None = None,
    language: str | None = None,
    image_cache: str | Path | None = None,
    qa_relevance: str = "last",
    per_language: bool = True,
) -> RetrievalDataset:
    """Load a ViDoRe dataset folder (a Hugging Face dataset snapshot).

    ``format`` (``qa``, ``beir`` or ``v3``) is detected from the files when not given;
    ``language`` keeps only the queries of that language (``beir`` and ``v3``); page images go
    to ``image_cache`` (see :class:`~mmrank.datasets._parquet.PageImages`).

    Scoring follows the official evaluators (see the module's docstring):

    - ``qa_relevance`` (format ``qa``) says which page is relevant to a query whose text several
      rows carry: ``"last"``, the last such row's page, as vidore-benchmark's
      ``ViDoReEvaluatorQA`` judges (one page per query; a page whose file name equals the query's
      text is also dropped from its ranking, as its ``ignore_identical_ids=True`` does), or
      ``"all"``, every such row's page, as the BEIR copies of the v1 sets that MTEB evaluates
      (``vidore-benchmark``'s ``convert_ds_from_qa_to_beir``);
    - ``per_language``: when the queries are in several languages, each language's mean is also
      reported (``english/ndcg@5``) and their mean (``macro/ndcg@5``): MTEB scores a multilingual
      ViDoRe v2 / v3 task per language and reports the mean of the languages' scores. False
      reports only the mean over all queries.
    """
    if qa_relevance not in QA_RELEVANCE:
        choices = "; ".join(f"{name!r}: {meaning}" for name, meaning in QA_RELEVANCE.items())
        raise InputError(f"Unknown qa_relevance {qa_relevance!r}: choose {choices}.")
    if not isinstance(per_language, bool):
        raise InputError(f"per_language must be true or false; got {per_language!r}.")
    root = Path(root).expanduser().absolute()  # item sources stay valid from any cwd
    if not root.is_dir():
        raise InputError(f"ViDoRe dataset folder not found: {root}. {_expected()}")
    kind = _checked_format(format) if format is not None else detect_format(root, split)
    images = PageImages(root, image_cache)
    ignored: dict[str, frozenset[str]] = {}
    if kind == "qa":
        if language is not None:
            raise InputError("The language filter needs a queries config (formats beir, v3); "
                             f"{root} is read as format qa.")
        items, queries, qrels = _load_qa(root, split, images, every_row=qa_relevance == "all")
        if qa_relevance == "last":  # ViDoReEvaluatorQA: query ids are texts, page ids file names
            item_ids = {item.id for item in items}
            ignored = {q.id: frozenset({q.text}) for q in queries if q.text in item_ids}
    else:
        items, queries, qrels = _load_configs(root, split, kind, language, images)
    languages = {str(query.metadata.get("language")) for query in queries if "language" in query.metadata}
    grouped = per_language and len(languages) > 1
    return RetrievalDataset(
        name=root.resolve().name, items=items, queries=queries, qrels=qrels, split=split,
        ignored=ignored, metrics=METRICS[kind], averaging="trec_eval",
        group_by="language" if grouped else None, report_groups=grouped,
    )


def detect_format(root: Path, split: str = "test") -> str:
    """``qa``, ``beir`` or ``v3``, from the files under ``root``."""
    present = [name for name in CONFIGS if _config_candidates(root, name)]
    if len(present) == len(CONFIGS):
        corpus = _config_files(root, "corpus", split)[0]
        found = column_names(corpus)
        for kind, (corpus_id, _) in _ID_COLUMNS.items():
            if corpus_id in found:
                return kind
        raise InputError(
            f"{corpus} has neither a corpus-id column (format beir) nor a corpus_id column "
            f"(format v3); columns found: {', '.join(found)}."
        )
    if present:
        missing = [name for name in CONFIGS if name not in present]
        raise InputError(
            f"ViDoRe folder {root} holds the config(s) {', '.join(present)} but not "
            f"{', '.join(missing)}. {_expected()}"
        )
    if _qa_candidates(root):
        return "qa"
    raise InputError(f"Cannot tell which ViDoRe format {root} holds: {_listing(root)}. {_expected()}")


def _checked_format(format: str) -> str:
    kind = format.strip().lower()
    if kind not in FORMATS:
        raise InputError(f"Unknown ViDoRe format {format!r}: choose {', '.join(FORMATS)}.")
    return kind


def _expected() -> str:
    return "Expected one of the ViDoRe layouts: " + "; ".join(FORMATS.values()) + "."


def _listing(root: Path, limit: int = 10) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return "the folder is empty"
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"found {', '.join(entries[:limit])}{more}"


# --- v1 QA -------------------------------------------------------------------------------------


def _qa_candidates(root: Path) -> list[Path]:
    data = root / "data"
    files = sorted(data.rglob("*.parquet")) if data.is_dir() else []
    return files or sorted(root.glob("*.parquet"))


def _load_qa(root: Path, split: str, images: PageImages,
             every_row: bool) -> tuple[list[Item], list[Query], Qrels]:
    """Pages deduplicated by image_filename (the first row's image); queries by text (the first
    row's number as id), each judged relevant to the page of the last row that carries it, or of
    every such row when ``every_row``."""
    files = split_files(_qa_candidates(root), split, root)
    if not files:
        raise InputError(f"ViDoRe folder {root} has no parquet table. Expected {FORMATS['qa']}.")
    items: dict[str, Item] = {}
    by_text: dict[str, Query] = {}
    qrels: Qrels = {}
    for number, path, row, record in _rows(files, ("query", "image", "image_filename")):
        filename = _identifier(record["image_filename"], path, row, "image_filename")
        if filename not in items:
            source = _image_source(record["image"], filename, root, path, row, images)
            items[filename] = Item(id=filename, kind="page", source=source)
        text = _optional_text(record["query"], path, row)
        if text is None:
            continue
        query = by_text.setdefault(text, Query(id=f"q{number}", text=text))
        if every_row:
            qrels.setdefault(query.id, {})[filename] = 1
        else:
            qrels[query.id] = {filename: 1}
    if not by_text:
        raise InputError(f"{_describe(files)}: no row has a query.")
    return list(items.values()), list(by_text.values()), qrels


def _rows(
    files: Sequence[Path], columns: Sequence[str]
) -> Iterator[tuple[int, Path, int, dict[str, Any]]]:
    """(row number over all files, file, row in that file, record), streaming."""
    offset = 0
    for path in files:
        for row, record in iter_rows(path, columns):
            yield offset + row, path, row, record
        offset += row_count(path)


# --- v1 BEIR, v2, v3 ---------------------------------------------------------------------------


def _config_candidates(root: Path, name: str) -> list[Path]:
    folder = root / name
    if folder.is_dir():
        return sorted(folder.rglob("*.parquet"))
    single = root / f"{name}.parquet"
    return [single] if single.is_file() else []


def _config_files(root: Path, name: str, split: str) -> list[Path]:
    files = split_files(_config_candidates(root, name), split, root / name)
    if not files:
        raise InputError(
            f"ViDoRe folder {root} has no {name} config: expected {root / name}/<split>-*.parquet "
            f"or {root / name}.parquet."
        )
    return files


def _load_configs(
    root: Path, split: str, kind: str, language: str | None, images: PageImages
) -> tuple[list[Item], list[Query], Qrels]:
    corpus_id, query_id = _ID_COLUMNS[kind]
    corpus, queries_files, qrels_files = (_config_files(root, name, split) for name in CONFIGS)
    items = _read_corpus(corpus, corpus_id, root, images)
    queries, all_query_ids = _read_queries(queries_files, query_id, language)
    qrels = _read_qrels(qrels_files, (query_id, corpus_id), all_query_ids, {i.id for i in items})
    kept = {query.id for query in queries}
    qrels = {qid: judged for qid, judged in qrels.items() if qid in kept}
    return items, [query for query in queries if query.id in qrels], qrels


def _read_corpus(files: Sequence[Path], id_column: str, root: Path, images: PageImages) -> list[Item]:
    """Page Items, the ``markdown`` column (when the corpus has one) as their text."""
    with_text = "markdown" in column_names(files[0])
    columns = (id_column, "image", *(("markdown",) if with_text else ()))
    items: list[Item] = []
    first_row: dict[str, tuple[Path, int]] = {}
    for _, path, row, record in _rows(files, columns):
        item_id = _identifier(record[id_column], path, row, id_column)
        _reject_duplicate(item_id, id_column, first_row, path, row)
        source = _image_source(record["image"], item_id, root, path, row, images)
        text = record.get("markdown")
        items.append(Item(id=item_id, kind="page", source=source,
                          text=text if isinstance(text, str) else None))
    return items


def _read_queries(
    files: Sequence[Path], id_column: str, language: str | None
) -> tuple[list[Query], set[str]]:
    """The queries of ``language`` (all when None), and the ids of every query in the files."""
    has_language = "language" in column_names(files[0])
    columns = (id_column, "query", *(("language",) if has_language or language else ()))
    queries: list[Query] = []
    first_row: dict[str, tuple[Path, int]] = {}
    languages: set[str] = set()
    for _, path, row, record in _rows(files, columns):
        query_id = _identifier(record[id_column], path, row, id_column)
        _reject_duplicate(query_id, id_column, first_row, path, row)
        text = _optional_text(record["query"], path, row)
        if text is None:
            raise InputError(f"{path} row {row}: query {query_id!r} has no text.")
        found = record.get("language")
        languages.add(str(found))
        if language is None or str(found).strip().lower() == language.strip().lower():
            metadata = {"language": found} if has_language else {}
            queries.append(Query(id=query_id, text=text, metadata=metadata))
    if not queries and language is not None:
        raise InputError(
            f"No query in {_describe(files)} has language {language!r}; "
            f"languages found: {', '.join(sorted(languages))}."
        )
    return queries, set(first_row)


def _read_qrels(
    files: Sequence[Path], id_columns: tuple[str, str], query_ids: set[str], item_ids: set[str]
) -> Qrels:
    """Judgements by query id; a pair judged twice keeps its last score, as MTEB and
    vidore-benchmark read qrels."""
    query_column, corpus_column = id_columns
    qrels: Qrels = {}
    for _, path, row, record in _rows(files, (query_column, corpus_column, "score")):
        query_id = _identifier(record[query_column], path, row, query_column)
        item_id = _identifier(record[corpus_column], path, row, corpus_column)
        score = _score(record["score"], path, row)
        qrels.setdefault(query_id, {})[item_id] = score
    if not qrels:
        raise InputError(f"{_describe(files)} holds no relevance judgements.")
    _check_known(files, query_column, qrels, query_ids, "queries")
    _check_known(files, corpus_column, (i for j in qrels.values() for i in j), item_ids, "corpus")
    return qrels


def _check_known(qrels_files: Sequence[Path], column: str, referenced: Iterable[str],
                 known: set[str], config: str) -> None:
    unknown = list(dict.fromkeys(ref for ref in referenced if ref not in known))
    if unknown:
        raise InputError(
            f"{_describe(qrels_files)}: {len(unknown)} {column} value(s) missing from the "
            f"{config} config: {listing(unknown)}."
        )


# --- values ------------------------------------------------------------------------------------


def _identifier(value: Any, path: Path, row: int, column: str) -> str:
    """A string or integer id, as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InputError(f"{path} row {row}: {column} must be a non-empty string or an integer, "
                         f"got {value!r}.")
    return str(value)


def _reject_duplicate(key: str, column: str, first_row: dict[str, tuple[Path, int]], path: Path,
                      row: int) -> None:
    if key in first_row:
        first_path, first = first_row[key]
        where = f"row {first}" if first_path == path else f"{first_path} row {first}"
        raise InputError(f"{path} row {row}: duplicate {column} {key!r} (first at {where}).")
    first_row[key] = (path, row)


def _optional_text(value: Any, path: Path, row: int) -> str | None:
    """The query text, None for a null or blank one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{path} row {row}: query must be a string, got {type(value).__name__}.")
    return value if value.strip() else None


def _describe(files: Sequence[Path]) -> str:
    """One file by its path, several by their folder."""
    return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"


def _score(value: Any, path: Path, row: int) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise InputError(f"{path} row {row}: score must be an integer, got {value!r}.")
    return int(value)


def _image_source(value: Any, name: str, root: Path, path: Path, row: int,
                  images: PageImages) -> str:
    """The page image file: its bytes written to the cache, or, for an image without bytes, its
    ``path`` under ``root`` (an InputError when that path leaves ``root``). The path beside an
    image's bytes is the name of the file it came from, never read, so never checked."""
    data, hint = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    if isinstance(data, bytes) and data:
        return str(images.store(data, name))
    if isinstance(hint, str) and hint.strip():
        file = inside(root, hint, source=f"{path} row {row} ({name}) image path")
        if file.is_file():
            return str(file)
    raise InputError(
        f"{path} row {row} ({name}): the image has no bytes and its path {hint!r} is not a file "
        f"under {root}."
    )
