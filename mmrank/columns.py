"""Rankings as arrays: item rows, scores and positions, for evaluating at the depth of real
benchmarks without a Python object per (query, item) pair.

An :class:`ItemTable` numbers a collection's items (row ``n`` is the ``n``-th item stored); a
ranking is then an int array of rows, best first, with a float array of scores beside it
(:data:`RowHits`). The helpers here are small and independent: picking each item's best vector
(:func:`first_per_item`), dropping excluded items (:func:`without_rows`), turning rows back into
``(id, score)`` lists (:func:`as_hits`), and finding where a ranking put a few given items
(:func:`positions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

RowHits = tuple[np.ndarray, np.ndarray]
"""One query's hits as arrays: item rows (int32, best first) and their scores, of equal length."""

NO_ROW = -1


class ItemTable:
    """A dense number (row) per item id and back: ``ids[row]`` is an id, :meth:`rows` the rows of ids
    (:data:`NO_ROW` for an id the table lacks)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = np.array(list(ids), dtype=object)
        self._row = {item_id: row for row, item_id in enumerate(self.ids.tolist())}
        if len(self._row) != len(self.ids):
            raise ValueError("ItemTable ids must be distinct.")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def row(self, item_id: str) -> int:
        """The row of one id, or :data:`NO_ROW`."""
        return self._row.get(item_id, NO_ROW)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """The rows of ``ids`` in order, :data:`NO_ROW` for unknown ids (and None), as int32."""
        get = self._row.get
        return np.fromiter((get(item_id, NO_ROW) for item_id in ids), dtype=np.int32)

    def id_list(self, rows: np.ndarray) -> list[str]:
        """The ids of ``rows`` (all known) as a list."""
        return self.ids[rows].tolist()


def empty_hits() -> RowHits:
    return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)


def first_per_item(rows: np.ndarray, scores: np.ndarray, k: int) -> RowHits:
    """The first (best) occurrence of each row among best-first ``rows``, up to ``k`` of them, with
    their scores; :data:`NO_ROW` entries (no hit) are dropped. For indexes where an item owns several
    vectors, this keeps each item's best one."""
    rows = np.asarray(rows)
    scores = np.asarray(scores)
    real = rows != NO_ROW
    rows, scores = rows[real], scores[real]
    _, first = np.unique(rows, return_index=True)
    if len(first) == len(rows):
        return rows[:k], scores[:k]
    keep = np.sort(first)[:k]
    return rows[keep], scores[keep]


def without_rows(hits: RowHits, dropped: np.ndarray, k: int) -> RowHits:
    """``hits`` less the entries whose row is in ``dropped``, cut to ``k``."""
    rows, scores = hits
    if len(dropped):
        keep = ~np.isin(rows, dropped)
        rows, scores = rows[keep], scores[keep]
    return rows[:k], scores[:k]


def as_hits(table: ItemTable, hits: RowHits) -> list[tuple[str, float]]:
    """Row hits as ``(item id, score)`` pairs with Python floats."""
    rows, scores = hits
    return list(zip(table.id_list(rows), np.asarray(scores).astype(float).tolist()))


def from_hits(table: ItemTable, hits: Sequence[tuple[str, float]]) -> RowHits:
    """``(item id, score)`` pairs as row hits (ids the table lacks are dropped)."""
    rows = table.rows(item_id for item_id, _ in hits)
    scores = np.fromiter((score for _, score in hits), dtype=np.float64, count=len(hits))
    known = rows != NO_ROW
    return rows[known], scores[known]


def positions(order: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """The 0-based position of each of ``rows`` in ``order`` (distinct rows below ``size``), -1 for
    rows the order does not hold or :data:`NO_ROW`. Costs one pass over ``order``."""
    rows = np.asarray(rows)
    if not len(order) or not len(rows):
        return np.full(len(rows), -1, dtype=np.int64)
    if size > 64 * len(order):  # a short order in a large table: a sort is cheaper than a lookup table
        sorter = np.argsort(order, kind="stable")
        at = sorter[np.searchsorted(order, rows, sorter=sorter).clip(max=len(order) - 1)]
        return np.where((order[at] == rows) & (rows != NO_ROW), at, -1)
    inverse = np.full(size + 1, -1, dtype=np.int32 if len(order) < 2**31 else np.int64)
    inverse[order] = np.arange(len(order))  # the last slot stays -1: it answers NO_ROW (-1 indexes it)
    return inverse[rows]


@dataclass(frozen=True)
class RowOrder:
    """Item rows, best first, held as consecutive parts: a stage that reorders only the head of a
    ranking keeps the rest as a view of the order it came with (:meth:`reheaded`), so the stages
    of one query share one array for their common tail."""

    parts: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, rows: np.ndarray) -> RowOrder:
        return cls((np.asarray(rows),))

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def rows(self, k: int | None = None) -> np.ndarray:
        """The first ``k`` rows (all when None) as one array."""
        parts = self.cut(k).parts if k is not None else self.parts
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def cut(self, k: int) -> RowOrder:
        """The first ``k`` rows (views, no copy)."""
        kept, left = [], k
        for part in self.parts:
            if left <= 0:
                break
            kept.append(part[:left])
            left -= len(kept[-1])
        return RowOrder(tuple(kept) or (self.parts[0][:0],))

    def reheaded(self, head: np.ndarray) -> RowOrder:
        """``head``, then this order's rows after ``len(head)`` (views): the order a stage leaves
        when it reorders the first ``len(head)`` rows only."""
        rest, skip = [], len(head)
        for part in self.parts:
            if skip >= len(part):
                skip -= len(part)
                continue
            rest.append(part[skip:])
            skip = 0
        return RowOrder((np.asarray(head), *rest))

    def positions(self, rows: np.ndarray, size: int) -> np.ndarray:
        """:func:`positions` of ``rows`` in this order."""
        if len(self.parts) == 1:
            return positions(self.parts[0], rows, size)
        found = np.full(len(rows), -1, dtype=np.int64)
        offset = 0
        for part in self.parts:
            at = positions(part, rows, size)
            found = np.where(at >= 0, at + offset, found)
            offset += len(part)
        return found
