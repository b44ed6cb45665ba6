"""A collection on disk: items and their vectors in SQLite, FAISS and BM25 indexes derived from them.

Layout of a collection folder::

    manifest.json        format, version, vector spaces (encoder + dimension), counts, index files
    items.sqlite         items, their vectors (float32 blobs) and the files they came from
    index/<space>.r<N>/  FAISS index of one vector space, built at database revision N
    bm25.r<N>/           BM25 index over item texts, built at revision N

:class:`Collection` is a thin front over four parts, each usable on its own: the
:class:`~mmrank.item_store.ItemStore` (the database, the source of truth), the
:class:`~mmrank.manifest.Manifest`, the :class:`~mmrank.index_set.IndexSet` (the derived indexes:
built, published and loaded) and the :class:`~mmrank.encoders.bound.BoundEncoders` (each vector
space's encoder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.columns import ItemTable, RowHits
from mmrank.encoders.bound import BoundEncoders
from mmrank.errors import CollectionError, InputError, listing
from mmrank.faiss_tools import check_factory
from mmrank.index_plan import AUTO, IndexPlan, parse_size
from mmrank.index_set import Hits, IndexSet
from mmrank.item_store import DATABASE, FileEntry, ItemStore, VectorBatch
from mmrank.locking import LOCK_FILE, WriterLock
from mmrank.manifest import MANIFEST, Manifest, Space
from mmrank.patch_files import check_dtype
from mmrank.text import PassageSplit
from mmrank.types import Item

if TYPE_CHECKING:
    from mmrank.encoders.base import Encoder
    from mmrank.ingest import Fingerprint

__all__ = ["Collection", "FileEntry", "Space"]


class Collection:
    """Items, their vectors and the indexes over them, kept in one folder.

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`. ``device`` is where FAISS indexes
    and encoders run. One process writes at a time: every write takes the collection's writer lock
    (:meth:`writing` holds it across many writes, as an index run does); searches never wait for it.
    """

    def __init__(self, path: Path, manifest: Manifest, store: ItemStore, device: str = "auto", *,
                 gpus: str | int | Sequence[int] | None = None, multi_gpu: str = "shard") -> None:
        self.path = path
        self.manifest = manifest
        self.store = store
        self.lock = WriterLock(path)
        self.indexes = IndexSet(path, store, manifest, device, self.lock, gpus=gpus, multi_gpu=multi_gpu)
        self.encoders = BoundEncoders(manifest, device)
        self._bind_patch_spaces()

    # ----------------------------------------------------------------- opening and creating
    @classmethod
    def create(cls, path: str | Path, *, index_factory: str = "Flat", device: str = "auto",
               memory_budget: int | str | None = None) -> Collection:
        """Make a new, empty collection in ``path`` (which must not exist, or be an empty folder).
        ``index_factory`` is a FAISS factory string, or ``auto`` to choose one from the number of
        vectors and ``memory_budget`` (e.g. ``"4GB"``; see :mod:`mmrank.index_plan`)."""
        path = Path(path)
        budget = _checked_index(index_factory, memory_budget)
        if (path / MANIFEST).exists():
            raise CollectionError(f"{path}: already a collection; open it instead of creating it.")
        if path.exists() and (not path.is_dir() or any(p.name != LOCK_FILE for p in path.iterdir())):
            raise CollectionError(
                f"{path}: exists and is not an mmrank collection; choose a new or empty folder "
                "(nothing was written)."
            )
        path.mkdir(parents=True, exist_ok=True)
        with WriterLock(path).hold():
            store = ItemStore.create(path / DATABASE, name=path)
            return cls(path, Manifest.create(path, index_factory, budget), store, device)

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", gpus: str | int | Sequence[int] | None = None,
             multi_gpu: str = "shard") -> Collection:
        """Open an existing collection; a clear CollectionError if ``path`` is not one. Its FAISS
        indexes run on ``device``; ``gpus`` (``"all"``, a count or GPU numbers) spreads them over
        several GPUs, sharded or replicated (``multi_gpu``; see :class:`~mmrank.index.VectorIndex`)."""
        path = Path(path)
        if not path.exists():
            raise CollectionError(f"{path}: no such collection (the folder does not exist).")
        if not path.is_dir() or not (path / MANIFEST).is_file():
            raise CollectionError(f"{path}: not an mmrank collection (no {MANIFEST} in it).")
        manifest = Manifest.read(path)
        if not (path / DATABASE).is_file():
            raise CollectionError(f"{path}: the collection's database {DATABASE} is missing.")
        return cls(path, manifest, ItemStore(path / DATABASE, name=path), device, gpus=gpus, multi_gpu=multi_gpu)

    @classmethod
    def open_or_create(cls, path: str | Path, *, index_factory: str | None = None, device: str = "auto",
                       wait: bool = True, on_wait: Callable[[str], None] | None = None,
                       memory_budget: int | str | None = None) -> Collection:
        """Open ``path`` if it holds a collection, else create one there. A new collection is made
        under the writer lock (``wait`` and ``on_wait`` as in :meth:`writing`), so two processes
        starting at once make one collection between them. ``index_factory`` and ``memory_budget``
        (as in :meth:`create`) change an existing collection's index when they differ."""
        path = Path(path)
        if index_factory or memory_budget is not None:
            _checked_index(index_factory or AUTO, memory_budget)
        if not (path / MANIFEST).exists():
            if path.exists() and not path.is_dir():
                raise CollectionError(f"{path}: exists and is not an mmrank collection; choose a new or "
                                      "empty folder (nothing was written).")
            path.mkdir(parents=True, exist_ok=True)
            with WriterLock(path).hold(wait=wait, on_wait=on_wait):  # another process may be creating it
                if not (path / MANIFEST).exists():
                    return cls.create(path, index_factory=index_factory or "Flat", device=device,
                                      memory_budget=memory_budget)
        collection = cls.open(path, device=device)
        factory = index_factory or collection.index_factory
        budget = None if memory_budget is None else parse_size(memory_budget)
        if factory != collection.index_factory or (budget is not None and budget != collection.manifest.memory_budget):
            collection.set_index_factory(factory, memory_budget=budget)
        return collection

    @contextmanager
    def writing(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the collection's writer lock for the block. Without ``wait``, another process's
        lock is a CollectionError at once; with it, ``on_wait`` (if given) is told, then the call
        waits. Taking the lock re-reads the manifest, so what another writer did is kept."""
        with self.lock.hold(wait=wait, on_wait=on_wait) as taken:
            if taken:
                self.manifest.refresh()
            yield

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- description
    @property
    def spaces(self) -> dict[str, Space]:
        return self.manifest.spaces

    @property
    def index_factory(self) -> str:
        return self.manifest.index_factory

    @property
    def revision(self) -> int:
        """The database revision: bumped by every write that changes items or vectors."""
        return self.store.revision

    @property
    def has_text(self) -> bool:
        return self.store.has_text

    def __len__(self) -> int:
        return len(self.store)

    def info(self) -> dict[str, Any]:
        """What is in the collection: counts, vector spaces and their encoders, index type."""
        counts = self.store.counts()
        data = self.manifest.data
        return {
            "path": str(self.path),
            "format_version": data["format_version"],
            "created": data["created"],
            "updated": data["updated"],
            "items": counts["items"],
            "items_by_kind": self.store.items_by_kind(),
            "files": counts["files"],
            "with_text": self.store.count_with_text(),
            "skipped_pages": self.store.skipped_pages(),
            "spaces": {
                name: {"encoder": space.encoder, "dim": space.dim, "vectors": counts["vectors"].get(name, 0),
                       **({"passages": space.passages.to_dict()} if space.passages else {}),
                       **(self._patch_info(name, space) if space.multi_vector else {})}
                for name, space in self.spaces.items()
            },
            "index": self.index_factory,
            **({"index_plans": {space: plan.describe() for space, plan in self.index_plans().items()},
                "memory_budget": self.manifest.memory_budget} if self.index_factory == AUTO else {}),
        }

    def _patch_info(self, name: str, space: Space) -> dict[str, Any]:
        """What :meth:`info` says of a late-interaction space: storage type, pages, bytes on disk
        (of which dead rows), and the centroids its index uses (0: every page scored exactly)."""
        from mmrank.patch_index import plan_lists

        files = self.store.bind_patch_space(name, space.dim, space.multi_vector)
        pages = len(self.store.patch_locations(name)[0])
        live = self.store.patch_rows_stored(name)
        return {"multi_vector": space.multi_vector, "pages": pages, "patch_bytes": files.bytes_on_disk(),
                "dead_rows": sum(files.rows(s) for s in files.segments()) - live, "centroids": plan_lists(live)}

    # ----------------------------------------------------------------- encoders
    def bind_encoder(self, space: str, encoder: str, dim: int, passages: PassageSplit | None = None,
                     multi_vector: str | None = None) -> Space:
        """Record which encoder fills ``space`` (and how a new text space splits texts into
        ``passages``, or, for a new late-interaction space, the type its patch vectors are stored
        as: ``multi_vector``, float16 or float32); refuse an encoder other than the recorded one.
        Returns the space as recorded."""
        if multi_vector is not None:
            check_dtype(multi_vector)
        with self.writing():
            bound = self.manifest.bind_encoder(space, encoder, dim, passages, multi_vector)
        self._bind_patch_spaces()
        return bound

    def _bind_patch_spaces(self) -> None:
        """Tell the store which spaces keep their vectors in patch files (as the manifest says)."""
        for name, space in self.manifest.spaces.items():
            if space.multi_vector is not None:
                self.store.bind_patch_space(name, space.dim, space.multi_vector)

    def check_encoder(self, space: str, encoder: str, dim: int | None = None) -> None:
        """Raise EncoderMismatchError unless ``encoder`` is the one this space was built with."""
        self.manifest.check_encoder(space, encoder, dim)

    def encoder(self, space: str) -> Encoder:
        """The encoder that built ``space``, loaded once from its recorded name."""
        return self.encoders.get(space)

    def use_encoder(self, space: str, encoder: Encoder) -> None:
        """Use an already loaded encoder for ``space`` (after checking it is the right one)."""
        self.encoders.use(space, encoder)

    # ----------------------------------------------------------------- files and items
    def file_fingerprint(self, path: str) -> Fingerprint | None:
        return self.store.file_fingerprint(path)

    def touch_file(self, path: str, fingerprint: Fingerprint) -> None:
        """Record a new modification time for a file whose content did not change."""
        with self.writing():
            self.store.touch_file(path, fingerprint)

    def replace_files(self, entries: Sequence[FileEntry], vectors: VectorBatch) -> None:
        """Store files with their items and vectors in one transaction, replacing what an earlier
        version of each file produced. ``vectors`` maps a space to (item ids, matrix)."""
        with self.writing():
            self.store.replace_files(entries, self._checked(vectors))

    def add(self, items: Sequence[Item], vectors: VectorBatch) -> None:
        """Add items that come from no file (e.g. a dataset's corpus) with their vectors, atomically.
        ``vectors`` maps a space name to (item ids, matrix). Existing ids raise InputError."""
        with self.writing():
            self.store.add(items, self._checked(vectors))

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items (and their vectors) by id; returns how many existed."""
        with self.writing():
            return self.store.remove(ids)

    def remove_missing_files(self, under: Iterable[str | Path]) -> int:
        """Remove the stored files that lie under ``under`` (folders, or files themselves) and no
        longer exist, with their items; returns how many."""
        roots = [Path(root).expanduser().resolve() for root in under]
        gone = [path for path in self.store.file_paths()
                if any(Path(path).is_relative_to(root) for root in roots) and not Path(path).exists()]
        if not gone:
            return 0
        with self.writing():
            return self.store.remove_files(gone)

    def get(self, item_id: str) -> Item:
        items = self.store.get_many([item_id])
        if item_id not in items:
            raise InputError(f"{self.path}: no item with id '{item_id}'.")
        return items[item_id]

    def get_many(self, ids: Iterable[str]) -> dict[str, Item]:
        """Items by id (missing ids are left out)."""
        return self.store.get_many(ids)

    def items(self) -> Iterator[Item]:
        return self.store.items()

    def vectors(self, ids: Sequence[str], space: str) -> np.ndarray:
        """Stored vectors of ``ids`` in ``space`` as a (len(ids), dim) float32 matrix."""
        found, matrix = self.stored_vectors(ids, space)
        if len(found) < len(ids):
            present = set(found)
            missing = [i for i in ids if i not in present]
            raise InputError(f"{self.path}: no {space} vectors for {len(missing)} items, e.g. '{missing[0]}'.")
        return matrix

    def stored_vectors(self, ids: Sequence[str], space: str) -> tuple[list[str], np.ndarray]:
        """The ids among ``ids`` that have a vector in ``space`` (in the given order), and their
        first vectors as a float32 matrix (an item split into passages has one per passage: see
        :meth:`item_vectors`)."""
        return self.store.stored_vectors(ids, space, self.manifest.space(space).dim)

    def item_vectors(self, ids: Sequence[str], space: str) -> tuple[list[str], np.ndarray]:
        """Every vector in ``space`` of the items ``ids`` (all their passages), one row each, with
        the item id of each row."""
        return self.store.item_vectors(ids, space, self.manifest.space(space).dim)

    # ----------------------------------------------------------------- search
    def search_vectors(self, space: str, queries: np.ndarray, k: int, *, encoder: str | None = None,
                       among: Sequence[Iterable[str] | None] | None = None) -> list[Hits]:
        """Nearest items of each query vector in ``space`` as (item id, inner product) lists.

        When ``encoder`` names the model that encoded the queries, it must be the space's own.
        ``among`` (one entry per query) restricts a query to the given item ids, scored exactly
        from their stored vectors; None entries search the whole index.
        """
        if encoder is not None:
            self.check_encoder(space, encoder, self.manifest.space(space).dim)
        return self.indexes.search_vectors(space, queries, k, among=among)

    def search_vector_rows(self, space: str, queries: np.ndarray, k: int, *, encoder: str | None = None,
                           among: Sequence[Iterable[str] | None] | None = None, nprobe: int | None = None,
                           ef_search: int | None = None) -> list[RowHits]:
        """:meth:`search_vectors` with each query's hits as arrays (rows of :meth:`item_table` and
        scores), for rankings that go deep (evaluation). ``nprobe`` / ``ef_search`` set this
        search's breadth on IVF / HNSW indexes (ignored by exact ones)."""
        if encoder is not None:
            self.check_encoder(space, encoder, self.manifest.space(space).dim)
        return self.indexes.search_vector_rows(space, queries, k, among=among, nprobe=nprobe, ef_search=ef_search)

    def search_patch_rows(self, space: str, queries: Sequence[np.ndarray], k: int, *, encoder: str | None = None,
                          among: Sequence[Iterable[str] | None] | None = None, nprobe: int | None = None,
                          exhaustive: bool = False, maxsim_depth: int | None = None) -> list[RowHits]:
        """The ``k`` best items of each query of token vectors ((tokens, dim) arrays) in the
        late-interaction ``space`` by MaxSim: rows of :meth:`item_table` and exact scores, best
        first. ``nprobe`` (centroids probed per query token), ``exhaustive`` (score every page)
        and ``maxsim_depth`` (pages scored exactly) as in :class:`~mmrank.patch_index.PatchIndex`;
        ``encoder`` and ``among`` as in :meth:`search_vectors`."""
        if encoder is not None:
            self.check_encoder(space, encoder, self.manifest.space(space).dim)
        return self.indexes.search_patch_rows(space, queries, k, among=among, nprobe=nprobe, exhaustive=exhaustive,
                                              maxsim_depth=maxsim_depth)

    def item_table(self) -> ItemTable:
        """A row number for every item (:class:`mmrank.columns.ItemTable`), for rankings held as arrays."""
        return self.indexes.item_table()

    def search_bm25(self, texts: Sequence[str], k: int, *,
                    among: Sequence[Iterable[str] | None] | None = None) -> list[Hits]:
        """BM25 over item texts: (item id, BM25 score) lists, best first, positive scores only.
        ``among`` restricts queries to item ids as in :meth:`search_vectors`."""
        return self.indexes.search_bm25(texts, k, among=among)

    # ----------------------------------------------------------------- indexes
    def set_index_factory(self, factory: str, *, memory_budget: int | str | None = None) -> None:
        """Change the FAISS index type (checked first: a factory FAISS cannot build changes nothing),
        or choose ``auto`` with a ``memory_budget``; indexes are rebuilt from the stored vectors."""
        budget = _checked_index(factory, memory_budget, [space.dim for space in self.spaces.values()])
        with self.writing():
            self.manifest.set_index_factory(factory, budget)
            self.indexes.forget()

    def index_plans(self) -> dict[str, IndexPlan]:
        """What ``auto`` chooses for each vector space at its current size (empty for a fixed factory)."""
        plans = {space: self.indexes.plan(space) for space in self.spaces}
        return {space: plan for space, plan in plans.items() if plan is not None}

    def build_indexes(self, *, repair: bool = True) -> list[str]:
        """Bring every index up to date with the database and publish them atomically; with
        ``repair``, published indexes that are missing or fail their checksum are rebuilt too.
        Returns the indexes (re)built."""
        with self.writing():
            return self.indexes.build(repair=repair)

    def repair_indexes(self) -> list[str]:
        """Rebuild from the database the published indexes that are missing or damaged (and any that
        are stale); returns the missing or damaged ones. Nothing is done when the folder is read-only
        or another process is writing (searches then rebuild what they need in memory)."""
        if not os.access(self.path, os.W_OK) or not self.lock.try_hold():
            return []
        try:
            with self.writing():
                damaged = self.indexes.damaged()
                self.indexes.build(force=bool(damaged))
        finally:
            self.lock.release()
        return damaged

    def _checked(self, vectors: VectorBatch) -> VectorBatch:
        """The vectors as float32 matrices, each of its space's dimension and finite."""
        checked = {}
        self._bind_patch_spaces()  # another process may have added a late-interaction space
        for space, (ids, matrix) in vectors.items():
            dim = self.manifest.space(space).dim
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            if matrix.shape != (len(ids), dim):
                raise InputError(f"{self.path}: {space} vectors of shape {matrix.shape} for {len(ids)} items; "
                                 f"expected ({len(ids)}, {dim}).")
            if not np.isfinite(matrix).all():
                rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1)).tolist()
                raise InputError(f"{self.path}: {space} vectors contain NaN or infinite values "
                                 f"(items {listing([ids[row] for row in rows])}).")
            checked[space] = (ids, matrix)
        return checked


def _checked_index(factory: str, memory_budget: int | str | None, dims: Iterable[int] = ()) -> int | None:
    """InputError unless ``factory`` is ``auto`` or a factory FAISS can build (for ``dims``), and a
    memory budget comes only with ``auto``; the budget in bytes."""
    if factory != AUTO:
        check_factory(factory, dims)
        if memory_budget is not None:
            raise InputError(f"A memory budget applies to --index-factory auto, not to {factory!r}: "
                             "drop the budget, or use auto.")
        return None
    return None if memory_budget is None else parse_size(memory_budget)
