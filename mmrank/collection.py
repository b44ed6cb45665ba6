"""A collection on disk: items and their vectors in SQLite, FAISS and BM25 indexes derived from them.

Layout of a collection folder::

    manifest.json        format, version, vector spaces (encoder + dimension), counts, index files
    items.sqlite         items, their vectors (float32 blobs) and the files they came from
    index/<space>.r<N>/  FAISS index of one vector space, built at database revision N
    bm25.r<N>/           BM25 index over item texts, built at revision N

The database is the source of truth and every write to it is one transaction, so a build that is
killed (even with SIGKILL) loses at most the batch in flight. Indexes are derived data: written
aside under a new name, then published by atomically replacing the manifest; stale or missing
indexes are rebuilt from the database.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.files import write_json_atomic
from mmrank.types import Item

if TYPE_CHECKING:
    from mmrank.ingest import Fingerprint
    from mmrank.lexical import BM25Index
    from mmrank.index import VectorIndex

FORMAT = "mmrank.collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "items.sqlite"

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
    space TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (item_id, space)
);
INSERT OR IGNORE INTO meta VALUES ('revision', '0');
"""


@dataclass(frozen=True)
class Space:
    """A vector space of the collection: which encoder made its vectors, and their dimension."""

    name: str
    encoder: str
    dim: int


@dataclass(frozen=True)
class FileEntry:
    """One source file in the collection and the items it produced."""

    path: str
    items: list[Item]
    fingerprint: Fingerprint


class Collection:
    """Items, their vectors and the indexes over them, kept in one folder.

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; never the constructor.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], device: str = "auto") -> None:
        self.path = path
        self._manifest = manifest
        self._device = device
        self._db = sqlite3.connect(path / DATABASE, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._indexes: dict[str, VectorIndex] = {}
        self._bm25: BM25Index | None = None
        self._encoders: dict[str, Any] = {}

    # ----------------------------------------------------------------- opening and creating
    @classmethod
    def create(cls, path: str | Path, *, index_factory: str = "Flat", device: str = "auto") -> Collection:
        """Make a new, empty collection in ``path`` (which must not exist, or be an empty folder)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise CollectionError(f"{path}: already a collection; open it instead of creating it.")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CollectionError(
                f"{path}: exists and is not an mmrank collection; choose a new or empty folder "
                "(nothing was written)."
            )
        path.mkdir(parents=True, exist_ok=True)
        now = _now()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": now,
            "updated": now,
            "spaces": {},
            "index": {"factory": index_factory, "files": {}, "revision": -1},
            "counts": {"items": 0, "files": 0, "vectors": {}},
        }
        database = sqlite3.connect(path / DATABASE)
        database.executescript(_SCHEMA)
        database.close()
        write_json_atomic(path / MANIFEST, manifest, indent=2, sort_keys=True)
        return cls(path, manifest, device)

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto") -> Collection:
        """Open an existing collection; a clear CollectionError if ``path`` is not one."""
        path = Path(path)
        if not path.exists():
            raise CollectionError(f"{path}: no such collection (the folder does not exist).")
        if not path.is_dir() or not (path / MANIFEST).is_file():
            raise CollectionError(f"{path}: not an mmrank collection (no {MANIFEST} in it).")
        manifest = _read_manifest(path / MANIFEST)
        if not (path / DATABASE).is_file():
            raise CollectionError(f"{path}: the collection's database {DATABASE} is missing.")
        return cls(path, manifest, device)

    @classmethod
    def open_or_create(cls, path: str | Path, *, index_factory: str | None = None,
                       device: str = "auto") -> Collection:
        """Open ``path`` if it holds a collection, else create one there."""
        if (Path(path) / MANIFEST).exists():
            collection = cls.open(path, device=device)
            if index_factory and index_factory != collection.index_factory:
                collection.set_index_factory(index_factory)
            return collection
        return cls.create(path, index_factory=index_factory or "Flat", device=device)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- description
    @property
    def spaces(self) -> dict[str, Space]:
        return {name: Space(name, s["encoder"], s["dim"]) for name, s in self._manifest["spaces"].items()}

    @property
    def index_factory(self) -> str:
        return self._manifest["index"]["factory"]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def info(self) -> dict[str, Any]:
        """What is in the collection: counts, vector spaces and their encoders, index type."""
        counts = self._counts()
        return {
            "path": str(self.path),
            "format_version": self._manifest["format_version"],
            "created": self._manifest["created"],
            "updated": self._manifest["updated"],
            "items": counts["items"],
            "items_by_kind": dict(self._db.execute("SELECT kind, COUNT(*) FROM items GROUP BY kind")),
            "files": counts["files"],
            "with_text": self._db.execute(
                "SELECT COUNT(*) FROM items WHERE text IS NOT NULL AND text != ''").fetchone()[0],
            "spaces": {
                name: {"encoder": space.encoder, "dim": space.dim, "vectors": counts["vectors"].get(name, 0)}
                for name, space in self.spaces.items()
            },
            "index": self.index_factory,
        }

    def _counts(self) -> dict[str, Any]:
        return {
            "items": len(self),
            "files": self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0],
            "vectors": dict(self._db.execute("SELECT space, COUNT(*) FROM vectors GROUP BY space")),
        }

    # ----------------------------------------------------------------- encoders
    def bind_encoder(self, space: str, encoder: str, dim: int) -> None:
        """Record which encoder fills ``space``; refuse an encoder other than the recorded one."""
        known = self._manifest["spaces"].get(space)
        if known is None:
            self._manifest["spaces"][space] = {"encoder": encoder, "dim": int(dim)}
            self._write_manifest()
        else:
            self.check_encoder(space, encoder, dim)

    def check_encoder(self, space: str, encoder: str, dim: int | None = None) -> None:
        """Raise EncoderMismatchError unless ``encoder`` is the one this space was built with."""
        known = self._manifest["spaces"].get(space)
        if known is None:
            raise CollectionError(f"{self.path}: the collection has no {space} vectors.")
        if known["encoder"] != encoder or (dim is not None and known["dim"] != dim):
            raise EncoderMismatchError(
                f"{self.path}: its {space} vectors were made by '{known['encoder']}' "
                f"({known['dim']} dimensions), but the query was encoded by '{encoder}'. "
                f"Use the same model, or build a new collection with '{encoder}'."
            )

    def encoder(self, space: str) -> Any:
        """The encoder that built ``space``, loaded once from its recorded name."""
        from mmrank.encoders import load_encoder_by_name

        if space not in self._encoders:
            known = self.spaces.get(space)
            if known is None:
                raise CollectionError(f"{self.path}: the collection has no {space} vectors.")
            self._encoders[space] = load_encoder_by_name(known.encoder, device=self._device)
        return self._encoders[space]

    def use_encoder(self, space: str, encoder: Any) -> None:
        """Use an already loaded encoder for ``space`` (after checking it is the right one)."""
        self.check_encoder(space, encoder.name, encoder.dim)
        self._encoders[space] = encoder

    # ----------------------------------------------------------------- files and items
    def file_fingerprint(self, path: str) -> Fingerprint | None:
        from mmrank.ingest import Fingerprint

        row = self._db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (path,)).fetchone()
        return Fingerprint(*row) if row else None

    def touch_file(self, path: str, fingerprint: Fingerprint) -> None:
        """Record a new modification time for a file whose content did not change."""
        with self._transaction(bump=False):
            self._db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (fingerprint.mtime_ns, path))

    def replace_files(self, entries: Sequence[FileEntry],
                      vectors: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> None:
        """Store files with their items and vectors in one transaction, replacing what an earlier
        version of each file produced."""
        with self._transaction():
            for entry in entries:
                self._db.execute("DELETE FROM files WHERE path = ?", (entry.path,))
                fp = entry.fingerprint
                self._db.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (entry.path, fp.size, fp.mtime_ns, fp.sha256))
                self._insert_items(entry.items, file=entry.path)
            self._insert_vectors(vectors)

    def add(self, items: Sequence[Item], vectors: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> None:
        """Add items that come from no file (e.g. a dataset's corpus) with their vectors, atomically.
        ``vectors`` maps a space name to (item ids, matrix). Existing ids raise InputError."""
        with self._transaction():
            self._insert_items(items, file=None)
            self._insert_vectors(vectors)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items (and their vectors) by id; returns how many existed."""
        ids = list(ids)
        with self._transaction():
            removed = 0
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                removed += self._db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk).rowcount
        return removed

    def get(self, item_id: str) -> Item:
        items = self.get_many([item_id])
        if item_id not in items:
            raise InputError(f"{self.path}: no item with id '{item_id}'.")
        return items[item_id]

    def get_many(self, ids: Iterable[str]) -> dict[str, Item]:
        """Items by id (missing ids are left out)."""
        found: dict[str, Item] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id, kind, source, page, text, metadata FROM items WHERE id IN ({marks})", chunk)
            for row in rows:
                found[row[0]] = _item_from_row(row)
        return found

    def items(self) -> Iterator[Item]:
        rows = self._db.execute("SELECT id, kind, source, page, text, metadata FROM items ORDER BY rowid")
        for row in rows.fetchall():
            yield _item_from_row(row)

    def vectors(self, ids: Sequence[str], space: str) -> np.ndarray:
        """Stored vectors of ``ids`` in ``space`` as a (len(ids), dim) float32 matrix."""
        found, matrix = self.stored_vectors(ids, space)
        if len(found) < len(ids):
            present = set(found)
            missing = [i for i in ids if i not in present]
            raise InputError(f"{self.path}: no {space} vectors for {len(missing)} items, e.g. '{missing[0]}'.")
        return matrix

    def stored_vectors(self, ids: Sequence[str], space: str) -> tuple[list[str], np.ndarray]:
        """The ids among ``ids`` that have a vector in ``space`` (in the given order), and those
        vectors as a float32 matrix."""
        dim = self._space(space).dim
        by_id: dict[str, bytes] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            by_id.update(self._db.execute(
                f"SELECT item_id, vector FROM vectors WHERE space = ? AND item_id IN ({marks})",
                [space, *chunk]))
        found = [i for i in dict.fromkeys(ids) if i in by_id]
        if not found:
            return [], np.zeros((0, dim), dtype=np.float32)
        matrix = np.frombuffer(b"".join(by_id[i] for i in found), dtype=np.float32)
        return found, matrix.reshape(len(found), dim).copy()

    # ----------------------------------------------------------------- search
    def search(self, space: str, queries: np.ndarray, k: int, *, encoder: str | None = None,
               among: Sequence[Iterable[str] | None] | None = None) -> list[list[tuple[str, float]]]:
        """Nearest items of each query vector in ``space`` as (item id, inner product) lists.

        When ``encoder`` names the model that encoded the queries, it must be the space's own.
        ``among`` (one entry per query) restricts a query to the given item ids, scored exactly
        from their stored vectors; None entries search the whole index.
        """
        space_info = self._space(space)
        if encoder is not None:
            self.check_encoder(space, encoder, space_info.dim)
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != space_info.dim:
            raise EncoderMismatchError(
                f"{self.path}: query vectors have {queries.shape[1]} dimensions; the collection's "
                f"{space} vectors have {space_info.dim}.")
        among = list(among) if among is not None else [None] * len(queries)
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
        open_rows = [i for i, subset in enumerate(among) if subset is None]
        index = self._vector_index(space)
        if open_rows and len(index):
            ids, scores = index.search(queries[open_rows], k)
            for row, row_ids, row_scores in zip(open_rows, ids, scores):
                results[row] = list(zip(row_ids, map(float, row_scores)))
        for row, subset in enumerate(among):
            if subset is not None:
                found, matrix = self.stored_vectors(sorted(subset), space)
                scores = matrix @ queries[row]
                best = np.argsort(-scores, kind="stable")[:k]
                results[row] = [(found[i], float(scores[i])) for i in best]
        return results

    def search_text(self, queries: Sequence[str], k: int, *,
                    among: Sequence[Iterable[str] | None] | None = None) -> list[list[tuple[str, float]]]:
        """BM25 over item texts: (item id, BM25 score) lists, best first, positive scores only.
        ``among`` restricts queries to item ids as in :meth:`search`."""
        among = list(among) if among is not None else [None] * len(queries)
        lexical = self._lexical_index()
        results: list[list[tuple[str, float]]] = [[] for _ in queries]
        open_rows = [i for i, subset in enumerate(among) if subset is None]
        if open_rows:
            for row, hits in zip(open_rows, lexical.search([queries[i] for i in open_rows], k)):
                results[row] = hits
        for row, subset in enumerate(among):
            if subset is not None:
                allowed = set(subset)
                hits = lexical.search([queries[row]], len(self))[0]
                results[row] = [hit for hit in hits if hit[0] in allowed][:k]
        return results

    @property
    def has_text(self) -> bool:
        return self._db.execute(
            "SELECT EXISTS(SELECT 1 FROM items WHERE text IS NOT NULL AND text != '')").fetchone()[0] == 1

    # ----------------------------------------------------------------- indexes
    def set_index_factory(self, factory: str) -> None:
        """Change the FAISS index type; indexes are rebuilt from the stored vectors."""
        self._manifest["index"]["factory"] = factory
        self._manifest["index"]["revision"] = -1
        self._indexes.clear()
        self._write_manifest()

    def build_indexes(self) -> None:
        """Bring every index up to date with the database and publish them atomically."""
        revision = self._revision()
        if self._manifest["index"]["revision"] == revision and self._index_files_exist():
            return
        (self.path / "index").mkdir(exist_ok=True)
        files: dict[str, str] = {}
        for space in self.spaces:
            index = self._build_vector_index(space)
            relative = f"index/{space}.r{revision}"
            index.save(self.path / relative)
            self._indexes[space] = index
            files[space] = relative
        if self.has_text:
            from mmrank.lexical import BM25Index

            ids, texts = self._texts()
            self._bm25 = BM25Index.build(ids, texts)
            relative = f"bm25.r{revision}"
            self._bm25.save(self.path / relative)
            files["bm25"] = relative
        previous = self._manifest["index"]["files"]
        self._manifest["index"].update(files=files, revision=revision)
        self._manifest["counts"] = self._counts()
        self._write_manifest()
        for relative in set(previous.values()) - set(files.values()):
            shutil.rmtree(self.path / relative, ignore_errors=True)

    def _vector_index(self, space: str) -> VectorIndex:
        if space not in self._indexes:
            from mmrank.index import VectorIndex

            stored = self._manifest["index"]["files"].get(space)
            if self._indexes_current() and stored:
                self._indexes[space] = VectorIndex.load(self.path / stored, device=self._device)
            elif self._writable:
                self.build_indexes()
            else:
                self._indexes[space] = self._build_vector_index(space)
        return self._indexes[space]

    def _lexical_index(self) -> BM25Index:
        if self._bm25 is None:
            from mmrank.lexical import BM25Index

            stored = self._manifest["index"]["files"].get("bm25")
            if self._indexes_current() and stored:
                self._bm25 = BM25Index.load(self.path / stored)
            elif self._writable:
                self.build_indexes()
            else:
                self._bm25 = BM25Index.build(*self._texts())
        if self._bm25 is None:
            raise CollectionError(f"{self.path}: no item has text, so there is nothing for BM25 to search.")
        return self._bm25

    def _build_vector_index(self, space: str) -> VectorIndex:
        from mmrank.index import VectorIndex

        dim = self._space(space).dim
        rows = self._db.execute("SELECT item_id, vector FROM vectors WHERE space = ? ORDER BY rowid", (space,))
        ids, blobs = [], []
        for item_id, blob in rows:
            ids.append(item_id)
            blobs.append(blob)
        index = VectorIndex(dim, self.index_factory, device=self._device)
        if ids:
            vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
            try:
                index.add(ids, vectors)
            except InputError as error:
                raise CollectionError(
                    f"{self.path}: cannot build its '{self.index_factory}' index over {len(ids)} {space} "
                    f"vectors ({error}) The vectors are stored: choose another index type (e.g. "
                    "--index-factory Flat) and only the index is rebuilt."
                ) from error
        return index

    def _texts(self) -> tuple[list[str], list[str]]:
        rows = self._db.execute(
            "SELECT id, text FROM items WHERE text IS NOT NULL AND text != '' ORDER BY rowid").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def _indexes_current(self) -> bool:
        return self._manifest["index"]["revision"] == self._revision()

    def _index_files_exist(self) -> bool:
        return all((self.path / f).exists() for f in self._manifest["index"]["files"].values())

    # ----------------------------------------------------------------- internals
    @property
    def _writable(self) -> bool:
        return os.access(self.path, os.W_OK)

    def _space(self, space: str) -> Space:
        known = self.spaces.get(space)
        if known is None:
            raise CollectionError(f"{self.path}: the collection has no {space} vectors.")
        return known

    def _revision(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    @contextmanager
    def _transaction(self, bump: bool = True) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if bump:
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._indexes.clear()
        self._bm25 = None

    def _insert_items(self, items: Sequence[Item], file: str | None) -> None:
        try:
            self._db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.id, i.kind, i.source, i.page, i.text, json.dumps(dict(i.metadata)), file) for i in items],
            )
        except sqlite3.IntegrityError as error:
            existing = list(self.get_many(i.id for i in items))
            named = ", ".join(f"'{i}'" for i in existing[:5]) + (" ..." if len(existing) > 5 else "")
            raise InputError(
                f"{self.path}: already in the collection: {named}." if existing
                else f"{self.path}: the same item id appears twice in one batch ({error})."
            ) from error

    def _insert_vectors(self, vectors: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> None:
        for space, (ids, matrix) in vectors.items():
            info = self._space(space)
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            if matrix.shape != (len(ids), info.dim):
                raise InputError(
                    f"{self.path}: {space} vectors of shape {matrix.shape} for {len(ids)} items; "
                    f"expected ({len(ids)}, {info.dim}).")
            if not np.isfinite(matrix).all():
                raise InputError(f"{self.path}: {space} vectors contain NaN or infinite values.")
            self._db.executemany(
                "INSERT INTO vectors VALUES (?, ?, ?)",
                [(item_id, space, row.tobytes()) for item_id, row in zip(ids, matrix)],
            )

    def _write_manifest(self) -> None:
        self._manifest["updated"] = _now()
        write_json_atomic(self.path / MANIFEST, self._manifest, indent=2, sort_keys=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CollectionError(f"{path}: corrupted manifest, not valid JSON ({error}).") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CollectionError(f"{path}: not an mmrank collection manifest.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CollectionError(
            f"{path}: collection format version {version!r} is not supported by this mmrank "
            f"(it reads version {FORMAT_VERSION}).")
    for key in ("spaces", "index", "counts", "created"):
        if key not in manifest:
            raise CollectionError(f"{path}: corrupted manifest, '{key}' is missing.")
    return manifest


def _item_from_row(row: tuple) -> Item:
    item_id, kind, source, page, text, metadata = row
    return Item(id=item_id, kind=kind, source=source, page=page, text=text, metadata=json.loads(metadata))


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
