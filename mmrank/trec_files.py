"""TREC run and qrels files: the rankings `mmrank eval --save-runs` scored and the judgements it
scored them with, in the formats trec_eval, ranx and ir-measures read.

A run line is ``qid Q0 docid rank score tag``; the score is written as ``depth - rank + 1`` so that
tools which sort by score (trec_eval does, breaking ties by docid) keep mmrank's order exactly.
A qrels line is ``qid 0 docid grade``. Ids must not contain whitespace (the formats are
whitespace-separated); such an id is an InputError naming it.

:func:`read_run` and :func:`read_qrels` read such files (mmrank's or anyone's) line by line, as
trec_eval reads them. A malformed line is an InputError naming ``file:line``, what is wrong and
what was expected; problems trec_eval would refuse or silently absorb (duplicate lines, negative
grades) are counted in the result's :class:`Problems` instead, and :func:`check_run` counts the
query ids a run and its qrels do not share, so a long scoring never stops half way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


RUN_FORMAT = "qid Q0 docid rank score tag"
QRELS_FORMAT = "qid 0 docid grade"
EXAMPLES_KEPT = 3  # examples kept per kind of problem

# kind -> (what was found, what was done about it), for Problems.describe.
_PROBLEMS = {
    "duplicate_doc": ("repeated (query, doc) lines",
                      "the first of each is kept (trec_eval refuses such a file)"),
    "duplicate_judgement": ("repeated judgements with the same grade", "ignored"),
    "conflicting_grade": ("repeated judgements with another grade",
                          "the first grade is kept (trec_eval refuses such a file)"),
    "negative_grade": ("negative grades", "kept, and never relevant, as in trec_eval"),
    "unknown_query": ("run queries not in the qrels", "not scored, as in trec_eval"),
    "unranked_query": ("judged queries not in the run",
                       "trec_eval skips them (--averaging trec_eval); trec_eval -c and --averaging relevant "
                       "score them 0"),
}


@dataclass
class Problems:
    """The problems found in a file (or between a run and its qrels) that do not stop the
    reading: per kind (a key of ``counts``, e.g. ``"duplicate_doc"``), how many there were and
    the first few examples (``"line 12: q1 d3"``, or a query id)."""

    source: str
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def describe(self) -> list[str]:
        """One line per kind of problem, e.g. ``x.run: 2 repeated (query, doc) lines (e.g. line 7: q1 d3,
        first at line 2; line 9: q2 d1, first at line 5); the first of each is kept (trec_eval refuses
        such a file)``."""
        lines = []
        for kind, count in self.counts.items():
            found, done = _PROBLEMS.get(kind, (kind, ""))
            more = " ..." if count > len(self.examples[kind]) else ""
            lines.append(f"{self.source}: {count} {found} (e.g. {'; '.join(self.examples[kind])}{more})"
                         + (f"; {done}" if done else ""))
        return lines


@dataclass(frozen=True)
class Qrels:
    """A qrels file as read: ``judgements`` (query id -> doc id -> grade, in file order) and the
    ``problems`` found; ``lines`` counts the judgement lines read (blank lines not counted)."""

    path: Path
    judgements: dict[str, dict[str, int]]
    problems: Problems
    lines: int


@dataclass(frozen=True)
class Run:
    """A run file as read: ``rankings`` (query id -> doc ids, best first, in trec_eval's order:
    see :func:`read_run`), ``tag`` (the run tag of the last line, the one trec_eval reports), the
    ``problems`` found, ``lines`` (the ranking lines read) and ``scores`` (query id -> doc id ->
    the score of its first line)."""

    path: Path
    rankings: dict[str, list[str]]
    tag: str | None
    problems: Problems
    lines: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def read_qrels(path: str | Path) -> Qrels:
    """Read a TREC qrels file, ``qid 0 docid grade`` per line (whitespace-separated; the second
    field is ignored, as trec_eval ignores it; blank lines are skipped).

    A line without exactly 4 fields, or with a grade that is not an integer, is an InputError
    naming ``file:line``. Not fatal, and counted in ``problems``: a (query, doc) pair judged
    again (``duplicate_judgement`` with the same grade, ``conflicting_grade`` with another; the
    first line is kept; trec_eval refuses such a file with "duplicate docs"), and negative grades
    (``negative_grade``: kept; like 0 they are never relevant, as in trec_eval, which takes a
    grade < 0 as in the pool but unjudged).
    """
    problems = Problems(str(path))
    judgements: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    count = 0
    for number, fields in _fields(path, "qrels"):
        if len(fields) != 4:
            raise _malformed(path, number, f"expected 4 fields '{QRELS_FORMAT}', got {len(fields)}")
        qid, _, docid, text = fields
        try:
            grade = int(text)
        except ValueError:
            raise _malformed(path, number, f"the grade {text!r} is not an integer; expected '{QRELS_FORMAT}' "
                                           "with a whole-number grade such as 0, 1 or 2") from None
        count += 1
        judged = judgements.setdefault(qid, {})
        if docid in judged:
            kind = "duplicate_judgement" if judged[docid] == grade else "conflicting_grade"
            problems.add(kind, f"line {number}: {qid} {docid}, first at line {first_line[qid, docid]}"
                         if judged[docid] == grade else f"line {number}: {qid} {docid} grade {grade}, "
                         f"grade {judged[docid]} at line {first_line[qid, docid]}")
            continue
        if grade < 0:
            problems.add("negative_grade", f"line {number}: {qid} {docid} {grade}")
        judged[docid] = grade
        first_line[qid, docid] = number
    return Qrels(Path(path), judgements, problems, count)


def read_run(path: str | Path) -> Run:
    """Read a TREC run file, ``qid Q0 docid rank score tag`` per line (whitespace-separated;
    blank lines are skipped).

    Each query's ranking is ordered as trec_eval orders it (``comp_sim_docno`` in its
    ``form_res_rels.c``): by score, highest first, and equal scores by doc id in *descending*
    order (``strcmp``, i.e. by code point); the rank field is checked to be a number but, as in
    trec_eval, not used. The tag kept is the last line's, as trec_eval keeps it.

    A line without exactly 6 fields, or whose rank or score is not a number (or whose score is
    not finite), is an InputError naming ``file:line``. A (query, doc) pair on a second line is
    not fatal: it is counted in ``problems`` as ``duplicate_doc`` and the first line is kept
    (trec_eval refuses such a file with "duplicate docs").
    """
    problems = Problems(str(path))
    scored: dict[str, dict[str, tuple[float, int]]] = {}  # query -> doc -> (score, line number)
    tag = None
    count = 0
    for number, fields in _fields(path, "run"):
        if len(fields) != 6:
            raise _malformed(path, number, f"expected 6 fields '{RUN_FORMAT}', got {len(fields)}")
        qid, _, docid, rank, score_text, tag = fields
        _number(path, number, rank, "rank")
        score = _number(path, number, score_text, "score")
        count += 1
        docs = scored.setdefault(qid, {})
        if docid in docs:
            problems.add("duplicate_doc", f"line {number}: {qid} {docid}, first at line {docs[docid][1]}")
            continue
        docs[docid] = (score, number)
    # trec_eval's comp_sim_docno: score descending, then doc id descending.
    rankings = {qid: [docid for _, docid in sorted(((s, d) for d, (s, _) in docs.items()), reverse=True)]
                for qid, docs in scored.items()}
    scores = {qid: {docid: score for docid, (score, _) in docs.items()} for qid, docs in scored.items()}
    return Run(Path(path), rankings, tag, problems, count, scores)


def check_run(run: Run, qrels: Qrels) -> Problems:
    """What a run and its qrels do not share, counted (the run's path as source):
    ``unknown_query``, query ids of the run the qrels do not judge (not scored), and
    ``unranked_query``, judged query ids without a line in the run (trec_eval skips them;
    ``trec_eval -c`` scores them 0). A query's ranking read from a file is never empty: a query
    without lines is not in the run."""
    problems = Problems(f"{run.path} vs {qrels.path}")
    for qid in run.rankings:
        if qid not in qrels.judgements:
            problems.add("unknown_query", qid)
    for qid in qrels.judgements:
        if qid not in run.rankings:
            problems.add("unranked_query", qid)
    return problems


def _fields(path: str | Path, kind: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line, read one at a time."""
    try:
        file = open(path, "rb")
    except OSError as error:
        raise InputError(f"{path}: cannot read the {kind} file ({error.strerror or error}).") from None
    with file:
        for number, raw in enumerate(file, start=1):
            try:
                fields = raw.decode("utf-8").split()
            except UnicodeDecodeError:
                raise _malformed(path, number, f"the line is not UTF-8 text; expected a TREC {kind} line "
                                               f"'{RUN_FORMAT if kind == 'run' else QRELS_FORMAT}'") from None
            if fields:
                yield number, fields


def _number(path: str | Path, number: int, text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _malformed(path, number, f"the {name} {text!r} is not a number; expected '{RUN_FORMAT}'") from None
    if not math.isfinite(value):
        raise _malformed(path, number, f"the {name} {text!r} is not finite; expected '{RUN_FORMAT}' with a "
                                       f"finite {name}")
    return value


def _malformed(path: str | Path, number: int, what: str) -> InputError:
    return InputError(f"{path}:{number}: {what}.")
