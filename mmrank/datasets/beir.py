"""BEIR-style text retrieval: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from mmrank.datasets._lines import json_objects, numbered_lines
from mmrank.datasets.base import RetrievalDataset
from mmrank.errors import InputError, listing
from mmrank.types import Item, Query

LAYOUT = (
    "corpus.jsonl (one JSON object per line: _id, title, text), "
    "queries.jsonl (_id, text) and qrels/<split>.tsv (query-id, corpus-id, score; tab-separated, "
    "with a header line)"
)


def load_beir(root: str | Path, split: str = "test", ignore_identical_ids: bool = True) -> RetrievalDataset:
    """Load a BEIR dataset folder, scored as BEIR's ``EvaluateRetrieval.evaluate`` scores.

    Corpus documents become text Items (title and text joined by a blank line); only the queries
    judged in ``qrels/<split>.tsv`` are kept, in ``queries.jsonl`` order. As in BEIR (and MTEB):

    - with ``ignore_identical_ids`` (BEIR's default), a document whose id is the query's own id is
      dropped from that query's ranking before scoring (ArguAna, Quora);
    - means follow pytrec_eval's rule (``averaging="trec_eval"``): every judged query counts, and
      one whose judgements hold no relevant document scores 0;
    - ``map@k`` is trec_eval's ``map_cut_k``, what BEIR reports as MAP@k.
    """
    if not isinstance(ignore_identical_ids, bool):
        raise InputError(f"ignore_identical_ids must be true or false; got {ignore_identical_ids!r}.")
    root = Path(root)
    corpus_path, queries_path, qrels_path = _check_layout(root, split)
    qrels = _read_qrels(qrels_path)
    items = _read_corpus(corpus_path)
    queries = _read_queries(queries_path, keep=qrels.keys())
    _check_references(qrels_path, "query", qrels.keys(), {q.id for q in queries}, queries_path)
    judged_items = dict.fromkeys(item_id for judgements in qrels.values() for item_id in judgements)
    _check_references(qrels_path, "corpus", judged_items, {i.id for i in items}, corpus_path)
    item_ids = {item.id for item in items}
    ignored = ({q.id: frozenset({q.id}) for q in queries if q.id in item_ids}
               if ignore_identical_ids else {})
    return RetrievalDataset(
        name=root.resolve().name, items=items, queries=queries, qrels=qrels, split=split,
        ignored=ignored, averaging="trec_eval",
    )


def _check_layout(root: Path, split: str) -> tuple[Path, Path, Path]:
    if not root.is_dir():
        raise InputError(f"BEIR dataset folder not found: {root}. Expected it to hold {LAYOUT}.")
    paths = (root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv")
    missing = [str(path.relative_to(root)) for path in paths if not path.is_file()]
    if missing:
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        found = f" Splits found in qrels/: {', '.join(splits)}." if splits else ""
        raise InputError(
            f"BEIR dataset folder {root} is missing {', '.join(missing)}. "
            f"Expected {LAYOUT}.{found}"
        )
    return paths


def _read_jsonl(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield (line number, _id, record) for each JSON object, rejecting duplicate ids."""
    seen: dict[str, int] = {}
    for lineno, record in json_objects(path):
        record_id = record.get("_id")
        if isinstance(record_id, bool) or not isinstance(record_id, (str, int)) or record_id == "":
            raise InputError(
                f"{path}:{lineno}: the object has no usable \"_id\" (got {record_id!r})."
            )
        record_id = str(record_id)
        if record_id in seen:
            raise InputError(
                f"{path}:{lineno}: duplicate _id {record_id!r} (first on line {seen[record_id]})."
            )
        seen[record_id] = lineno
        yield lineno, record_id, record


def _string_field(record: dict[str, Any], key: str, path: Path, lineno: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        kind = type(value).__name__
        raise InputError(f"{path}:{lineno}: \"{key}\" must be a string, got {kind}.")
    return value


def _read_corpus(path: Path) -> list[Item]:
    items = []
    for lineno, item_id, record in _read_jsonl(path):
        title = _string_field(record, "title", path, lineno)
        text = _string_field(record, "text", path, lineno)
        body = "\n\n".join(part for part in (title, text) if part.strip())
        items.append(Item(id=item_id, kind="text", text=body, metadata={"title": title}))
    return items


def _read_queries(path: Path, keep: Container[str]) -> list[Query]:
    queries = []
    for lineno, query_id, record in _read_jsonl(path):
        text = _string_field(record, "text", path, lineno)
        if not text.strip():
            raise InputError(f"{path}:{lineno}: query {query_id!r} has no text.")
        if query_id in keep:
            queries.append(Query(id=query_id, text=text))
    return queries


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read ``query-id <TAB> corpus-id <TAB> score`` rows; the first line is taken as the header
    unless it is itself a valid row."""
    qrels: dict[str, dict[str, int]] = {}
    for index, (lineno, line) in enumerate(numbered_lines(path)):
        try:
            query_id, item_id, score = _qrels_row(line)
        except ValueError as error:
            if index == 0:
                continue
            raise InputError(f"{path}:{lineno}: {error}") from None
        judgements = qrels.setdefault(query_id, {})
        if judgements.get(item_id, score) != score:
            raise InputError(
                f"{path}:{lineno}: query {query_id!r} and corpus id {item_id!r} were already "
                f"judged with score {judgements[item_id]}, now {score}."
            )
        judgements[item_id] = score
    if not qrels:
        raise InputError(f"{path} holds no relevance judgements.")
    return qrels


def _qrels_row(line: str) -> tuple[str, str, int]:
    fields = [field.strip() for field in line.split("\t")]
    if len(fields) != 3:
        raise ValueError(
            "expected 3 tab-separated fields (query-id, corpus-id, score), "
            f"got {len(fields)}: {line!r}."
        )
    if not fields[0] or not fields[1]:
        raise ValueError(f"empty query-id or corpus-id: {line!r}.")
    try:
        return fields[0], fields[1], int(fields[2])
    except ValueError:
        raise ValueError(f"the score must be an integer, got {fields[2]!r}.") from None


def _check_references(
    qrels_path: Path, what: str, referenced: Iterable[str], known: set[str], source: Path
) -> None:
    unknown = [ref for ref in referenced if ref not in known]
    if unknown:
        raise InputError(
            f"{qrels_path} references {len(unknown)} {what} id(s) missing from {source.name}: "
            f"{listing(unknown)}."
        )
