"""What every dataset loader returns: items, queries and relevance judgements for one split."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

from mmrank.errors import InputError, listing
from mmrank.types import Item, Query

Qrels = dict[str, dict[str, int]]

# (final ranked item ids per query id, output folder, pipeline name) -> the files written.
SubmissionWriter = Callable[[Mapping[str, list[str]], Path, str], list[Path]]


@dataclass(frozen=True)
class Judgements:
    """One way of scoring rankings: graded relevance per query, and per query the item ids removed
    from its ranking before scoring (a benchmark's "junk" images, a query's own reference image).

    ``within``, when it has an entry for a query, restricts that query's ranking to those ids
    (after the ignored ones are removed) before scoring: CIRR's Recall_subset, scored within the
    query's own image set. ``metrics``, when non-empty, are this set's own metrics, used instead
    of the ones the caller asks for. ``averaging`` says which queries the means count
    (:func:`mmrank.metrics.score_queries`): ``"relevant"``, or ``"trec_eval"`` as BEIR does.
    """

    qrels: Qrels
    ignored: Mapping[str, frozenset[str]] = field(default_factory=dict)
    within: Mapping[str, frozenset[str]] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    averaging: str = "relevant"


@dataclass
class RetrievalDataset:
    """One split of a retrieval benchmark.

    ``qrels`` maps query id -> item id -> graded relevance (> 0 means relevant); every query has
    its ``id`` set, and the ids in ``qrels`` are those of ``queries`` and ``items``.

    Optional, for benchmarks that need them:

    - ``ignored``: per query, item ids dropped from its ranking before scoring;
    - ``protocols``: named judgement sets scored from the same rankings (Revisited Oxford's easy /
      medium / hard); when given, they replace ``qrels`` in reports, as ``"<protocol>/<metric>"``;
    - ``group_by``: a ``Query.metadata`` key; every metric is then also averaged per group and over
      the groups, reported as ``"macro/<metric>"`` (MMDocIR's domains);
    - ``report_groups``: with ``group_by``, also report each group's mean as
      ``"<group>/<metric>"`` (FashionIQ's categories);
    - ``metrics``: the benchmark's standard metrics, used when the caller names none;
    - ``averaging``: which queries the plain qrels' means count (see :class:`Judgements`);
    - ``write_submission``: writes the benchmark's test-server files from the final rankings
      (query id -> ranked item ids, at least the top 50) into a folder, named after the pipeline;
      returns the paths written.

    A query whose ``candidates`` are set is searched among those items only (MMDocIR: the pages of
    the question's own document).
    """

    name: str
    items: list[Item]
    queries: list[Query]
    qrels: Qrels
    split: str
    ignored: Mapping[str, frozenset[str]] = field(default_factory=dict)
    protocols: Mapping[str, Judgements] = field(default_factory=dict)
    group_by: str | None = None
    metrics: tuple[str, ...] = ()
    report_groups: bool = False
    write_submission: SubmissionWriter | None = None
    averaging: str = "relevant"

    def judgements(self) -> dict[str, Judgements]:
        """The judgement sets to report, by prefix ("" for the plain qrels)."""
        if self.protocols:
            return dict(self.protocols)
        return {"": Judgements(self.qrels, self.ignored, averaging=self.averaging)}

    @property
    def needs_full_ranking(self) -> bool:
        """Whether scoring needs every item ranked: a judgement set restricts rankings to a
        subset (``within``), whose members may rank anywhere in the collection."""
        return any(judgements.within for judgements in self.judgements().values())

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset(name={self.name!r}, split={self.split!r}, items={len(self.items)}, "
            f"queries={len(self.queries)}, judgements={sum(len(r) for r in self.qrels.values())})"
        )


# --- small helpers the loaders share -----------------------------------------------------------


def read_json(path: Path, layout: str = "") -> Any:
    """The JSON value in ``path``; a missing or unreadable file is an InputError naming it (and,
    for a missing one, the expected ``layout`` when given)."""
    if not path.is_file():
        raise InputError(f"Missing file {path}." + (f" Expected {layout}." if layout else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not valid UTF-8 ({error.reason}).") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}).") from None


def inside(root: Path, relative: str, *, source: str) -> Path:
    """The file that ``relative``, a path read from a data file, names inside the folder ``root``
    it is relative to: ``root`` joined with the normalised path, so the file checked is the file
    read. ``source`` names where the path was read (the file, and its row, line or entry).

    The path is judged lexically, as :func:`os.path.normpath` reads it, and symlinks are not
    resolved: a symlinked image folder inside ``root`` may point anywhere. An InputError naming
    ``source`` and the path is raised for a path that is empty, holds a NUL character, is absolute,
    starts with a drive (``C:``, ``\\\\server\\share``: refused on every platform), names ``root``
    itself, or climbs out of ``root`` with ``..`` parts. A backslash is a separator on Windows
    only: on POSIX ``..\\x.png`` is a file name inside ``root``.
    """
    reason = _not_inside(relative)
    if reason:
        raise InputError(f"{source}: the path {relative!r} {reason}; a path read from a data file "
                         f"must lie inside the dataset folder {root}.")
    return root / os.path.normpath(relative)


def _not_inside(relative: str) -> str | None:
    """Why ``relative`` does not name a file inside the folder it is relative to, or None."""
    if not relative.strip():
        return "is empty"
    if "\0" in relative:
        return "holds a NUL character"
    anchor = PurePath(relative).anchor or PureWindowsPath(relative).drive
    if anchor:
        return f"is not relative (it starts with {anchor!r})"
    normal = os.path.normpath(relative)
    if normal == os.curdir:
        return "names the folder itself, not a file in it"
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "climbs out of the folder with '..'"
    return None


def missing_files(paths: Iterable[Path]) -> list[Path]:
    """The paths that are not in their folder, listing each folder once (no stat per file, so a
    gallery of 100k images is checked in one directory read)."""
    listed: dict[Path, set[str]] = {}
    missing = []
    for path in paths:
        names = listed.get(path.parent)
        if names is None:
            try:
                names = set(os.listdir(path.parent))
            except OSError:
                names = set()
            listed[path.parent] = names
        if path.name not in names:
            missing.append(path)
    return missing


def check_files(paths: Sequence[Path], listed_in: Path, what: str = "images") -> None:
    """An InputError naming the files of ``paths`` (listed in ``listed_in``) that do not exist."""
    missing = missing_files(paths)
    if missing:
        raise InputError(f"{listed_in}: {len(missing)} of the {len(paths)} {what} it lists are missing: "
                         f"{listing([str(p) for p in missing], quote=False)}.")


def submission_path(folder: Path, stem: str, pipeline: str) -> Path:
    """``<folder>/<stem>_<pipeline>.json``, the pipeline's name made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", pipeline).strip("._") or "pipeline"
    return folder / f"{stem}_{safe}.json"
