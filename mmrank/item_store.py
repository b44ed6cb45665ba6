"""The source of truth of a collection: items, the files they came from and their vectors, in SQLite.

Every write is one transaction that also bumps the database's revision number, so a build that is
killed (even with SIGKILL) loses at most the batch in flight, and derived indexes know whether
they are current (they record the revision they were built at).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmrank.errors import CollectionError, InputError, listing
from mmrank.patch_files import FOLDER as PATCH_FOLDER
from mmrank.patch_files import PatchFiles
from mmrank.types import Item

if TYPE_CHECKING:
    from mmrank.ingest import Fingerprint

DATABASE = "items.sqlite"
SQL_BATCH = 500  # ids per "IN (...)" query, well under SQLite's parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT, page INTEGER, text TEXT,
    metadata TEXT NOT NULL, file TEXT REFERENCES files(path) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS items_file ON items(file);
CREATE TABLE IF NOT EXISTS vectors (
    item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    space TEXT NOT NULL, part INTEGER NOT NULL DEFAULT 0, vector BLOB NOT NULL,
    PRIMARY KEY (item_id, space, part)
);
INSERT OR IGNORE INTO meta VALUES ('revision', '0');
"""
# Pages of stored files that were left out (no text and no way to encode their picture), and why.
_SKIPPED_PAGES = """
CREATE TABLE IF NOT EXISTS skipped_pages (
    path TEXT NOT NULL, page INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (path, page)
);
"""
# Where the patch vectors of late-interaction spaces lie in their files (mmrank.patch_files): one
# row per item and space, its rows start..start+count-1 of that space's file of the segment.
_PATCH_ROWS = """
CREATE TABLE IF NOT EXISTS patch_rows (
    item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    space TEXT NOT NULL, segment INTEGER NOT NULL, start INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (item_id, space)
);
"""
# Databases written before items could own several vectors per space lack vectors.part.
_ADD_PARTS = """
CREATE TABLE vectors_with_parts (
    item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    space TEXT NOT NULL, part INTEGER NOT NULL DEFAULT 0, vector BLOB NOT NULL,
    PRIMARY KEY (item_id, space, part)
);
INSERT INTO vectors_with_parts (rowid, item_id, space, part, vector)
    SELECT rowid, item_id, space, 0, vector FROM vectors ORDER BY rowid;
DROP TABLE vectors;
ALTER TABLE vectors_with_parts RENAME TO vectors;
"""
_ITEM_COLUMNS = "id, kind, source, page, text, metadata"

# Vectors per space to store: (item ids, float32 matrix with one row per id).
VectorBatch = Mapping[str, tuple[Sequence[str], np.ndarray]]


@dataclass(frozen=True)
class FileEntry:
    """One source file in the collection, the items it produced, and its pages that were left out
    as (page number, reason)."""

    path: str
    items: list[Item]
    fingerprint: Fingerprint
    skipped_pages: Sequence[tuple[int, str]] = ()


class ItemStore:
    """Items, files and vectors of one collection in the SQLite file ``path``.

    ``name`` is how error messages name the collection (its folder). Vectors are stored as float32
    blobs without checks: the caller checks shapes against the vector space first. An item may own
    several vectors in a space (a long page's passages): its ``part`` 0, 1, ... in the order given.
    A database from before parts existed is upgraded when it is opened.

    A late-interaction space (:meth:`bind_patch_space`) keeps its vectors, one per page patch, in
    patch files beside the database (:mod:`mmrank.patch_files`); the database records where each
    item's rows lie, in the transaction that stores the item.
    """

    def __init__(self, path: Path, name: str | Path | None = None) -> None:
        self.path = path
        self.name = str(name or path)
        self.patch_files: dict[str, PatchFiles] = {}
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self.revision  # noqa: B018 (reads the database once: a damaged file fails here, clearly)
            self._upgrade()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise CollectionError(
                f"{self.name}: its database {path.name} is damaged or not an SQLite file ({error}). The "
                "items cannot be read: build the collection again from its files into a new folder "
                "(mmrank index FILES --out NEW_FOLDER).") from error

    @classmethod
    def create(cls, path: Path, name: str | Path | None = None) -> ItemStore:
        """A new, empty database at ``path``."""
        database = sqlite3.connect(path)
        database.executescript(_SCHEMA + _SKIPPED_PAGES + _PATCH_ROWS)
        database.close()
        return cls(path, name)

    def close(self) -> None:
        self._db.close()

    def _upgrade(self) -> None:
        """Bring an older database up to date, in one transaction each step: the vectors get their
        part numbers (all 0), and the table of skipped pages is added."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "skipped_pages" not in tables:
            self._db.execute(_SKIPPED_PAGES)
        if "patch_rows" not in tables:
            self._db.execute(_PATCH_ROWS)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(vectors)")}
        if "part" not in columns:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, _ADD_PARTS.split(";")):
                    self._db.execute(statement)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ----------------------------------------------------------------- counts
    @property
    def revision(self) -> int:
        """Bumped by every write that changes items or vectors."""
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def counts(self) -> dict[str, object]:
        """Items, files and vectors per space."""
        vectors = dict(self._db.execute("SELECT space, COUNT(*) FROM vectors GROUP BY space"))
        vectors.update(self._db.execute("SELECT space, SUM(count) FROM patch_rows GROUP BY space"))
        return {
            "items": len(self),
            "files": self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0],
            "vectors": vectors,
        }

    def skipped_pages(self, path: str | None = None) -> int:
        """How many pages of stored files (of the file ``path``, when given) were left out."""
        if path is None:
            return self._db.execute("SELECT COUNT(*) FROM skipped_pages").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM skipped_pages WHERE path = ?", (path,)).fetchone()[0]

    def items_by_kind(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind"))

    def count_with_text(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items WHERE text IS NOT NULL AND text != ''").fetchone()[0]

    @property
    def has_text(self) -> bool:
        return self._db.execute(
            "SELECT EXISTS(SELECT 1 FROM items WHERE text IS NOT NULL AND text != '')").fetchone()[0] == 1

    # ----------------------------------------------------------------- writing
    @contextmanager
    def transaction(self, bump: bool = True) -> Iterator[None]:
        """One write transaction (taken at once, so writers queue); ``bump`` raises the revision."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if bump:
                self._bump()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")

    def file_fingerprint(self, path: str) -> Fingerprint | None:
        from mmrank.ingest import Fingerprint

        row = self._db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (path,)).fetchone()
        return Fingerprint(*row) if row else None

    def touch_file(self, path: str, fingerprint: Fingerprint) -> None:
        """Record a new modification time for a file whose content did not change."""
        with self.transaction(bump=False):
            self._db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (fingerprint.mtime_ns, path))

    def replace_files(self, entries: Sequence[FileEntry], vectors: VectorBatch) -> None:
        """Store files with their items and vectors in one transaction, replacing what an earlier
        version of each file produced."""
        items = [item for entry in entries for item in entry.items]
        with self._conflicts_reported(items), self.transaction():
            for entry in entries:
                self._db.execute("DELETE FROM files WHERE path = ?", (entry.path,))
                self._db.execute("DELETE FROM skipped_pages WHERE path = ?", (entry.path,))
                fp = entry.fingerprint
                self._db.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (entry.path, fp.size, fp.mtime_ns, fp.sha256))
                self._db.executemany("INSERT INTO skipped_pages VALUES (?, ?, ?)",
                                     [(entry.path, page, reason) for page, reason in entry.skipped_pages])
                self._insert_items(entry.items, file=entry.path)
            self._insert_vectors(vectors)

    def add(self, items: Sequence[Item], vectors: VectorBatch) -> None:
        """Add items that come from no file with their vectors, in one transaction; existing ids
        raise InputError."""
        with self._conflicts_reported(items), self.transaction():
            self._insert_items(items, file=None)
            self._insert_vectors(vectors)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items (and their vectors) by id; returns how many existed (the revision is bumped
        only when some did)."""
        with self.transaction(bump=False):
            removed = sum(self._db.execute(f"DELETE FROM items WHERE id IN ({_marks(chunk)})", chunk).rowcount
                          for chunk in _chunks(list(ids)))
            if removed:
                self._bump()
        return removed

    def file_paths(self) -> list[str]:
        """The paths of every stored file."""
        return [row[0] for row in self._db.execute("SELECT path FROM files ORDER BY path")]

    def remove_files(self, paths: Iterable[str]) -> int:
        """Remove files with their items and vectors; returns how many were stored (the revision is
        bumped only when some were)."""
        paths = list(paths)
        with self.transaction(bump=False):
            for chunk in _chunks(paths):
                self._db.execute(f"DELETE FROM skipped_pages WHERE path IN ({_marks(chunk)})", chunk)
            removed = sum(self._db.execute(f"DELETE FROM files WHERE path IN ({_marks(chunk)})", chunk).rowcount
                          for chunk in _chunks(paths))
            if removed:
                self._bump()
        return removed

    @contextmanager
    def _conflicts_reported(self, items: Sequence[Item]) -> Iterator[None]:
        """A write refused by the database's constraints as an InputError that says why, worked out
        after the transaction rolled back (so it sees only what was stored before)."""
        try:
            yield
        except sqlite3.IntegrityError as error:
            ids = [item.id for item in items]
            repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
            existing = list(self.get_many(ids))
            if repeated:
                problem = f"the same item id appears twice in one batch: {listing(repeated)}"
            elif existing:
                problem = f"already in the collection: {listing(existing)}"
            else:  # a vector for an item that is not stored, or two vectors of one item in one space
                problem = f"the vectors do not match the items ({error}); every vector needs its own item"
            raise InputError(f"{self.name}: {problem}.") from error

    def _insert_items(self, items: Sequence[Item], file: str | None) -> None:
        self._db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(i.id, i.kind, i.source, i.page, i.text, json.dumps(dict(i.metadata)), file) for i in items],
        )

    def _insert_vectors(self, vectors: VectorBatch) -> None:
        for space, (ids, matrix) in vectors.items():
            if space in self.patch_files:
                self._insert_patches(space, ids, matrix)
                continue
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            parts: Counter[str] = Counter()
            rows = []
            for item_id, row in zip(ids, matrix):
                rows.append((item_id, space, parts[item_id], row.tobytes()))
                parts[item_id] += 1
            self._db.executemany("INSERT INTO vectors (item_id, space, part, vector) VALUES (?, ?, ?, ?)", rows)

    def _insert_patches(self, space: str, ids: Sequence[str], matrix: np.ndarray) -> None:
        """Append an item's rows (``ids`` names the item of each row; an item's rows are
        consecutive) to the space's patch file and record where they lie."""
        runs = _runs(ids)
        if len({item_id for item_id, _, _ in runs}) != len(runs):
            raise InputError(f"{self.name}: the {space} vectors of an item must come one after the other.")
        if not runs:
            return
        segment, first = self.patch_files[space].append(matrix)
        self._db.executemany("INSERT INTO patch_rows VALUES (?, ?, ?, ?, ?)",
                             [(item_id, space, segment, first + start, count) for item_id, start, count in runs])

    def bind_patch_space(self, space: str, dim: int, dtype: str) -> PatchFiles:
        """Keep the vectors of ``space`` in patch files (``dtype``: float16 or float32) from now on."""
        if space not in self.patch_files:
            self.patch_files[space] = PatchFiles(self.path.parent / PATCH_FOLDER, space, dim, dtype)
        return self.patch_files[space]

    def patch_locations(self, space: str, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """The items of the late-interaction ``space`` (in insertion order, or those among ``ids``
        in the order given, once each) and where their rows lie: an (n, 3) int64 array of
        (segment, first row, count)."""
        if ids is None:
            rows = self._db.execute("SELECT item_id, segment, start, count FROM patch_rows WHERE space = ? "
                                    "ORDER BY rowid", (space,)).fetchall()
        else:
            by_id = {}
            for chunk in _chunks(list(dict.fromkeys(ids))):
                by_id.update((row[0], row) for row in self._db.execute(
                    f"SELECT item_id, segment, start, count FROM patch_rows WHERE space = ? AND item_id IN "
                    f"({_marks(chunk)})", [space, *chunk]))
            rows = [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
        locations = np.array([row[1:] for row in rows], dtype=np.int64).reshape(-1, 3)
        return [row[0] for row in rows], locations

    def patch_rows_stored(self, space: str) -> int:
        """How many patch rows the items of ``space`` own (live rows; the files may hold more)."""
        return self._db.execute("SELECT COALESCE(SUM(count), 0) FROM patch_rows WHERE space = ?",
                                (space,)).fetchone()[0]

    def compact_patches(self, space: str) -> int:
        """Rewrite the live rows of ``space`` into a new segment, in insertion order, point the
        database at them (one transaction, which bumps the revision), then delete the old
        segments; returns how many dead rows were dropped. Run under the writer lock."""
        files = self.patch_files[space]
        old = files.segments()
        ids, locations = self.patch_locations(space)
        dead = sum(files.rows(segment) for segment in old) - int(locations[:, 2].sum())
        if not old or dead <= 0:
            return 0
        segment, moved = (old[-1] + 1), []
        at = 0
        for start in range(0, len(ids), 256):  # a few hundred pages (tens of MB) at a time
            block = locations[start:start + 256]
            files.append(files.read(block, dtype=None), segment=segment)
            for item_id, count in zip(ids[start:start + 256], block[:, 2].tolist()):
                moved.append((segment, at, count, item_id, space))
                at += count
        with self.transaction():
            self._db.executemany("UPDATE patch_rows SET segment = ?, start = ?, count = ? WHERE item_id = ? "
                                 "AND space = ?", moved)
        files.forget_readers()
        for stale in old:
            files.path(stale).unlink(missing_ok=True)
        return dead

    # ----------------------------------------------------------------- reading
    def get_many(self, ids: Iterable[str]) -> dict[str, Item]:
        """Items by id (missing ids are left out)."""
        found: dict[str, Item] = {}
        for chunk in _chunks(list(ids)):
            rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({_marks(chunk)})", chunk)
            found.update((row[0], _item_from_row(row)) for row in rows)
        return found

    def items(self) -> Iterator[Item]:
        """Every item, in insertion order."""
        rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items ORDER BY rowid").fetchall()
        return (_item_from_row(row) for row in rows)

    def ids(self) -> list[str]:
        """Every item id, in insertion order."""
        return [row[0] for row in self._db.execute("SELECT id FROM items ORDER BY rowid")]

    def texts(self) -> tuple[list[str], list[str]]:
        """Ids and texts of the items that have text, in insertion order."""
        rows = self._db.execute(
            "SELECT id, text FROM items WHERE text IS NOT NULL AND text != '' ORDER BY rowid").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def stored_vectors(self, ids: Sequence[str], space: str, dim: int) -> tuple[list[str], np.ndarray]:
        """The ids among ``ids`` that have a vector in ``space`` (in the given order, once each), and
        their first vectors (part 0) as a (found, ``dim``) float32 matrix."""
        by_id: dict[str, bytes] = {}
        for chunk in _chunks(list(ids)):
            by_id.update(self._db.execute(
                f"SELECT item_id, vector FROM vectors WHERE space = ? AND part = 0 AND item_id IN ({_marks(chunk)})",
                [space, *chunk]))
        found = [i for i in dict.fromkeys(ids) if i in by_id]
        return found, _matrix([by_id[i] for i in found], dim)

    def item_vectors(self, ids: Sequence[str], space: str, dim: int) -> tuple[list[str], np.ndarray]:
        """Every vector in ``space`` of the items ``ids`` (all their parts), one row each, with the
        item id of each row: items in the given order, parts in order."""
        if space in self.patch_files:
            found, locations = self.patch_locations(space, ids)
            return np.repeat(np.array(found, dtype=object), locations[:, 2]).tolist(), \
                self.patch_files[space].read(locations)
        by_id: dict[str, list[bytes]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self._db.execute(
                f"SELECT item_id, vector FROM vectors WHERE space = ? AND item_id IN ({_marks(chunk)}) "
                "ORDER BY item_id, part", [space, *chunk])
            for item_id, blob in rows:
                by_id.setdefault(item_id, []).append(blob)
        row_ids = [i for i in dict.fromkeys(ids) if i in by_id for _ in by_id[i]]
        return row_ids, _matrix([blob for i in dict.fromkeys(ids) if i in by_id for blob in by_id[i]], dim)

    def all_vectors(self, space: str, dim: int) -> tuple[list[str], np.ndarray]:
        """Every vector of ``space`` with its item id, in insertion order (an item with several
        vectors appears once per vector, its parts in order). All in memory: to go through a large
        space, use :meth:`vector_batches`."""
        ids, matrices = [], []
        for batch_ids, _, matrix in self.vector_batches(space, dim):
            ids.extend(batch_ids)
            matrices.append(matrix)
        return ids, np.vstack(matrices) if matrices else np.zeros((0, dim), dtype=np.float32)

    def vector_batches(self, space: str, dim: int, batch: int = 65536,
                       ) -> Iterator[tuple[list[str], list[int], np.ndarray]]:
        """Every vector of ``space`` in insertion order, ``batch`` rows at a time: (item ids, part
        numbers, float32 matrix) per batch. Each batch is its own query, so memory holds one batch
        however large the space is."""
        after = 0
        while True:
            rows = self._db.execute(
                "SELECT rowid, item_id, part, vector FROM vectors WHERE space = ? AND rowid > ? ORDER BY rowid "
                "LIMIT ?", (space, after, batch)).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            ids, parts, blobs = zip(*((row[1], row[2], row[3]) for row in rows))
            yield list(ids), list(parts), _matrix(list(blobs), dim, writable=False)

    def vector_count(self, space: str) -> int:
        """How many vectors ``space`` holds."""
        if space in self.patch_files:
            return self.patch_rows_stored(space)
        return self._db.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space,)).fetchone()[0]

    def parts_per_item(self, space: str) -> int:
        """The most vectors one item owns in ``space`` (0 for an empty space)."""
        return self._db.execute("SELECT COALESCE(MAX(part) + 1, 0) FROM vectors WHERE space = ?",
                                (space,)).fetchone()[0]


def _runs(ids: Sequence[str]) -> list[tuple[str, int, int]]:
    """(id, first position, length) of each run of equal consecutive ids."""
    runs: list[tuple[str, int, int]] = []
    for position, item_id in enumerate(ids):
        if runs and runs[-1][0] == item_id:
            runs[-1] = (item_id, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((item_id, position, 1))
    return runs


def _matrix(blobs: list[bytes], dim: int, writable: bool = True) -> np.ndarray:
    """float32 blobs as one (len(blobs), dim) matrix (read-only unless ``writable``, which copies)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)
    return matrix.copy() if writable else matrix


def _item_from_row(row: tuple) -> Item:
    item_id, kind, source, page, text, metadata = row
    return Item(id=item_id, kind=kind, source=source, page=page, text=text, metadata=json.loads(metadata))


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))


def _chunks(values: list, size: int = SQL_BATCH) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
