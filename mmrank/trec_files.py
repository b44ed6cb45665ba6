"""TREC run and qrels files: the rankings `mmrank eval --save-runs` scored and the judgements it
scored them with, in the formats trec_eval, ranx and ir-measures read.

A run line is ``qid Q0 docid rank score tag``; the score is written as ``depth - rank + 1`` so that
tools which sort by score (trec_eval does, breaking ties by docid) keep mmrank's order exactly.
A qrels line is ``qid 0 docid grade``. Ids must not contain whitespace (the formats are
whitespace-separated); such an id is an InputError naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from mmrank.errors import InputError
from mmrank.files import write_lines_atomic

_WHITESPACE = re.compile(r"\s")


def write_run(path: str | Path, rankings: Mapping[str, Sequence[str]], tag: str) -> Path:
    """Write ``rankings`` (query id -> item ids, best first) as a TREC run file tagged ``tag``."""
    lines = (f"{_field(qid, path)} Q0 {_field(item_id, path)} {rank} {len(order) - rank + 1} {tag}\n"
             for qid, order in rankings.items() for rank, item_id in enumerate(order, start=1))
    write_lines_atomic(Path(path), lines, sync=False)
    return Path(path)


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> Path:
    """Write graded judgements (query id -> item id -> grade) as a TREC qrels file."""
    lines = (f"{_field(qid, path)} 0 {_field(item_id, path)} {grade}\n"
             for qid, judged in qrels.items() for item_id, grade in judged.items())
    write_lines_atomic(Path(path), lines, sync=False)
    return Path(path)


def file_name(name: str) -> str:
    """``name`` (a stage or protocol) as a file name: characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _field(value: str, path: str | Path) -> str:
    if not value or _WHITESPACE.search(value):
        raise InputError(f"{path}: the id {value!r} is empty or holds whitespace, which TREC files cannot hold.")
    return value
