"""The derived indexes of a collection: a FAISS index per vector space and BM25 over item texts.

They are built from the item store at one database revision, saved under revision-named folders
(``index/<space>.r<N>/``, ``bm25.r<N>/``) and published by atomically replacing the manifest, so
readers always see a complete set. Stale or missing indexes are rebuilt from the database: in
place when the collection's folder is writable, else in memory for this process.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mmrank.columns import NO_ROW, ItemTable, RowHits, as_hits, empty_hits, first_per_item
from mmrank.errors import CollectionError, EncoderMismatchError, InputError
from mmrank.index_plan import AUTO, IndexPlan, plan_index, training_size
from mmrank.locking import WriterLock

if TYPE_CHECKING:
    from mmrank.index import VectorIndex
    from mmrank.item_store import ItemStore
    from mmrank.lexical import BM25Index, BM25Settings
    from mmrank.manifest import Manifest
    from mmrank.patch_index import PatchIndex

logger = logging.getLogger("mmrank")
Hits = list[tuple[str, float]]
QueryT = TypeVar("QueryT")
BM25 = "bm25"


def search_among(queries: Sequence[QueryT], among: Sequence[Iterable[str] | None] | None,
                 search_all: Callable[[list[QueryT]], list[Hits]],
                 search_subset: Callable[[QueryT, Iterable[str]], Hits]) -> list[Hits]:
    """Each query's hits: the queries whose ``among`` entry is None through ``search_all`` in one
    call, the others one at a time through ``search_subset`` over their own item ids."""
    among = list(among) if among is not None else [None] * len(queries)
    if len(among) != len(queries):
        raise InputError(f"among has {len(among)} entries for {len(queries)} queries; give one per query.")
    results: list[Hits] = [[] for _ in queries]
    open_rows = [row for row, subset in enumerate(among) if subset is None]
    if open_rows:
        for row, hits in zip(open_rows, search_all([queries[row] for row in open_rows])):
            results[row] = hits
    for row, subset in enumerate(among):
        if subset is not None:
            results[row] = search_subset(queries[row], subset)
    return results


def vector_key(item_id: str, part: int) -> str:
    """The key of one of an item's vectors in an index where items own several: ``<part>\x1f<id>``."""
    return f"{part}\x1f{item_id}"


def item_of(key: str) -> str:
    """The item id in a :func:`vector_key`."""
    return key.partition("\x1f")[2]


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}.")


class IndexSet:
    """The FAISS and BM25 indexes of the collection in ``folder``, over ``store``'s contents, as
    ``manifest`` publishes them; FAISS indexes run on ``device``, spread over ``gpus`` as
    ``multi_gpu`` says (see :class:`~mmrank.index.VectorIndex`). ``lock`` is the collection's
    writer lock: an index rebuilt while another process holds it stays in memory."""

    def __init__(self, folder: Path, store: ItemStore, manifest: Manifest, device: str = "auto",
                 lock: WriterLock | None = None, *, gpus: str | int | Sequence[int] | None = None,
                 multi_gpu: str = "shard") -> None:
        self.folder, self.store, self.manifest = folder, store, manifest
        self.placement: dict[str, Any] = {"device": device, "gpus": gpus, "multi_gpu": multi_gpu}
        self.lock = lock or WriterLock(folder)
        self._vectors: dict[str, VectorIndex] = {}
        self._patches: dict[str, PatchIndex] = {}
        self._bm25: BM25Index | None = None
        self._part_counts: dict[str, int] = {}
        self._table: ItemTable | None = None
        self._label_row_cache: dict[str, np.ndarray] = {}  # space -> item row of each index label
        self._revision: int | None = None  # the store revision the loaded indexes belong to

    # ----------------------------------------------------------------- searching
    def search_vectors(self, space: str, queries: np.ndarray, k: int, *,
                       among: Sequence[Iterable[str] | None] | None = None) -> list[Hits]:
        """Nearest items of each query vector in ``space`` as (item id, inner product) lists.
        ``among`` (one entry per query) restricts a query to the given item ids, scored exactly
        from their stored vectors; None entries search the whole index."""
        table = self.item_table()
        return [as_hits(table, hits) for hits in self.search_vector_rows(space, queries, k, among=among)]

    def search_vector_rows(self, space: str, queries: np.ndarray, k: int, *,
                           among: Sequence[Iterable[str] | None] | None = None, nprobe: int | None = None,
                           ef_search: int | None = None) -> list[RowHits]:
        """:meth:`search_vectors` with each query's hits as arrays: rows of :meth:`item_table`
        and scores (float32), best first. ``nprobe`` / ``ef_search`` set this search's breadth on
        IVF / HNSW indexes (the index's own default otherwise)."""
        dim = self.manifest.space(space).dim
        _check_k(k)
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != dim:
            raise EncoderMismatchError(
                f"{self.folder}: query vectors have {queries.shape[1]} dimensions; the collection's "
                f"{space} vectors have {dim}.")

        def search_all(rows: list[np.ndarray]) -> list[RowHits]:
            index = self.vector_index(space)
            if not len(index):
                return [empty_hits() for _ in rows]
            # The best k items' best vectors are among the top k * parts vectors (an item has at most
            # ``parts`` vectors), so that many are fetched and each item keeps its best one.
            parts = self._parts(space)
            labels, scores = index.search_labels(np.stack(rows), min(len(index), k * parts), nprobe=nprobe,
                                                 ef_search=ef_search)
            item_rows = self._label_rows(space, index)[labels]
            if parts == 1:  # one vector per item: no item twice, only "no hit" slots to drop
                if not (item_rows == NO_ROW).any():
                    return list(zip(item_rows, scores))
                return [(found[found != NO_ROW], found_scores[found != NO_ROW])
                        for found, found_scores in zip(item_rows, scores)]
            return [first_per_item(found, found_scores, k) for found, found_scores in zip(item_rows, scores)]

        def search_subset(query: np.ndarray, subset: Iterable[str]) -> RowHits:
            row_ids, matrix = self.store.item_vectors(sorted(subset), space, dim)
            scores = matrix @ query
            order = np.argsort(-scores, kind="stable")
            return first_per_item(self.item_table().rows(row_ids)[order], scores[order], k)

        return search_among(list(queries), among, search_all, search_subset)

    def search_patch_rows(self, space: str, queries: Sequence[np.ndarray], k: int, *,
                          among: Sequence[Iterable[str] | None] | None = None, nprobe: int | None = None,
                          exhaustive: bool = False, maxsim_depth: int | None = None) -> list[RowHits]:
        """The ``k`` best items of each query of token vectors (a (tokens, dim) array) in the
        late-interaction ``space`` by MaxSim, as rows of :meth:`item_table` and exact scores,
        best first (see :class:`~mmrank.patch_index.PatchIndex` for ``nprobe``, ``exhaustive`` and
        ``maxsim_depth``). ``among`` restricts a query to the given item ids, all scored exactly."""
        dim = self._patch_space(space).dim
        _check_k(k)
        queries = [np.atleast_2d(np.asarray(query, dtype=np.float32)) for query in queries]
        wrong = sorted({query.shape[1] for query in queries if query.shape[1] != dim})
        if wrong:
            raise EncoderMismatchError(
                f"{self.folder}: query token vectors have {wrong[0]} dimensions; the collection's {space} "
                f"vectors have {dim}.")
        among = list(among) if among is not None else [None] * len(queries)
        if len(among) != len(queries):
            raise InputError(f"among has {len(among)} entries for {len(queries)} queries; give one per query.")
        index = self.patch_index(space)
        if space not in self._label_row_cache:
            self._label_row_cache[space] = self.item_table().rows(index.ids)
        rows = self._label_row_cache[space]
        found = index.search(queries, k, among=[None if ids is None else index.labels(list(ids)) for ids in among],
                             nprobe=nprobe, exhaustive=exhaustive, maxsim_depth=maxsim_depth)
        return [(rows[labels], scores) for labels, scores in found]

    def _patch_space(self, space: str):
        known = self.manifest.space(space)
        if known.multi_vector is None:
            raise CollectionError(f"{self.folder}: its {space} vectors are one per item, not a late-interaction "
                                  "space of patch vectors; search them with search_vector_rows.")
        return known

    def item_table(self) -> ItemTable:
        """Every item's row number, for rankings held as arrays (:mod:`mmrank.columns`), at the
        current revision."""
        self._forget_if_stale()
        if self._table is None:
            self._table = ItemTable(self.store.ids())
        return self._table

    def _label_rows(self, space: str, index: VectorIndex) -> np.ndarray:
        """The item row of each label of ``space``'s loaded index (-1 for a removed label and for
        the "no hit" label -1, which indexes the last slot)."""
        if space not in self._label_row_cache:
            ids = index.label_ids.tolist()
            if self._parts(space) > 1:
                ids = [None if key is None else item_of(key) for key in ids]
            self._label_row_cache[space] = self.item_table().rows(ids)
        return self._label_row_cache[space]

    def search_bm25(self, texts: Sequence[str], k: int, *,
                    among: Sequence[Iterable[str] | None] | None = None) -> list[Hits]:
        """BM25 over item texts: (item id, BM25 score) lists, best first, positive scores only.
        ``among`` restricts queries to item ids as in :meth:`search_vectors`."""
        _check_k(k)
        return search_among(list(texts), among, lambda batch: self.bm25_index().search(batch, k),
                            lambda text, subset: self.bm25_index().search_within(text, subset, k))

    # ----------------------------------------------------------------- loading
    def vector_index(self, space: str) -> VectorIndex:
        """The FAISS index of ``space``: the published one when it is current and sound, else one
        rebuilt from the database (published when this process may write, else kept in memory)."""
        from mmrank.index import VectorIndex

        if self.manifest.space(space).multi_vector is not None:  # CollectionError for a missing space
            raise CollectionError(f"{self.folder}: its {space} vectors are a late-interaction space (patch "
                                  "vectors per page), searched with search_patch_rows, not a FAISS index.")
        self._forget_if_stale()
        if space not in self._vectors:
            def load(folder: Path) -> VectorIndex:
                index = VectorIndex.load(folder, **self.placement)
                if index.nprobe is None and index.ef_search is None:  # saved before mmrank set breadths
                    index.use_default_breadth()
                return index

            loaded = self._load_published(space, load)
            if loaded is None and self._publish_rebuilt():
                loaded = self._vectors.get(space) or self._load_published(space, load)
            self._vectors[space] = loaded or self._build_vector_index(space)
        return self._vectors[space]

    def patch_index(self, space: str) -> PatchIndex:
        """The late-interaction index of ``space``, found as :meth:`vector_index` finds a vector
        index (published and current, else rebuilt)."""
        from mmrank.patch_index import PatchIndex

        files = self.store.bind_patch_space(space, self._patch_space(space).dim, self.manifest.space(space).multi_vector)
        self._forget_if_stale()
        if space not in self._patches:
            def load(folder: Path) -> PatchIndex:
                return PatchIndex.load(folder, files, device=self.placement["device"])

            loaded = self._load_published(space, load)
            if loaded is None and self._publish_rebuilt():
                loaded = self._patches.get(space) or self._load_published(space, load)
            self._patches[space] = loaded or self._build_patch_index(space)
        return self._patches[space]

    def bm25_index(self) -> BM25Index:
        """The BM25 index over item texts, found as :meth:`vector_index` finds a vector index."""
        from mmrank.lexical import BM25Index

        self._forget_if_stale()
        if self._bm25 is None and self.store.has_text:
            loaded = self._load_published(BM25, BM25Index.load)
            if loaded is None and self._publish_rebuilt():
                loaded = self._bm25 or self._load_published(BM25, BM25Index.load)
            self._bm25 = loaded or BM25Index.build(*self.store.texts(), self._bm25_settings())
        if self._bm25 is None:
            raise CollectionError(f"{self.folder}: no item has text, so there is nothing for BM25 to search.")
        return self._bm25

    def _load_published(self, name: str, load: Callable[[Path], Any]) -> Any:
        """The published index ``name`` when current and sound (re-reading the manifest first when it
        looks stale: another process may have published since), else None."""
        if self._published(name) is None:
            self.manifest.refresh()
        folder = self._published(name)
        if folder is None:
            return None
        try:
            return load(folder)
        except CollectionError as error:  # damaged: rebuilt from the database
            logger.warning("%s; rebuilding it from the database", error)
            return None

    def _publish_rebuilt(self) -> bool:
        """Rebuild and publish every index, when the folder is writable and no other process is
        writing; False (nothing done) otherwise."""
        if not self._writable or not self.lock.try_hold():
            return False
        try:
            self.manifest.refresh()
            self.build(repair=True)
        finally:
            self.lock.release()
        return True

    # ----------------------------------------------------------------- building
    def build(self, *, repair: bool = False, force: bool = False) -> list[str]:
        """Bring every index up to date with the database and publish them atomically; with
        ``repair``, also when a published index is missing or fails its checks (:meth:`damaged`);
        with ``force``, in any case. Returns what was (re)built. The caller holds the writer lock."""
        if self._writable:
            self._compact_patches()  # dead patch rows dropped: the revision moves on, the indexes follow
        revision = self.store.revision
        wanted = [*self.manifest.spaces, *([BM25] if self.store.has_text else [])]
        current = self.manifest.index_revision == revision and all(self._published(name) for name in wanted)
        if current and not force and not (repair and self.damaged()):
            return []
        (self.folder / "index").mkdir(exist_ok=True)
        previous = {space: self._previous_patch_index(space) for space, known in self.manifest.spaces.items()
                    if known.multi_vector is not None}
        self._vectors, self._patches, self._bm25, self._part_counts, self._revision = {}, {}, None, {}, revision
        self._table, self._label_row_cache = None, {}
        files: dict[str, str] = {}
        for space in self.manifest.spaces:
            files[space] = f"index/{space}.r{revision}"
            if space in previous:
                patches = self._build_patch_index(space, previous[space])
                patches.save(self.folder / files[space])
                self._patches[space] = patches
                continue
            index = self._build_vector_index(space, self.folder / files[space])
            index.save(self.folder / files[space])
            self._vectors[space] = index
        if self.store.has_text:
            from mmrank.lexical import BM25Index

            self._bm25 = BM25Index.build(*self.store.texts(), self._bm25_settings())
            files[BM25] = f"bm25.r{revision}"
            self._bm25.save(self.folder / files[BM25])
        self.manifest.publish(files, revision, self.store.counts())
        self._sweep(set(files.values()))
        return list(files)

    def forget(self) -> None:
        """Drop the loaded indexes (e.g. after the index type changed)."""
        self._vectors, self._patches, self._bm25, self._part_counts = {}, {}, None, {}
        self._table, self._label_row_cache = None, {}

    def damaged(self) -> list[str]:
        """The published indexes whose folder is missing or fails its own checks (files, checksum)."""
        from mmrank.index import verify_saved_index
        from mmrank.lexical import verify_saved_bm25
        from mmrank.patch_index import verify_saved_patch_index

        patch_spaces = {name for name, space in self.manifest.spaces.items() if space.multi_vector is not None}
        broken = []
        for name, relative in self.manifest.index_files.items():
            verify = verify_saved_bm25 if name == BM25 else \
                verify_saved_patch_index if name in patch_spaces else verify_saved_index
            try:
                verify(self.folder / relative)
            except CollectionError as error:
                logger.warning("%s; rebuilding it from the database", error)
                broken.append(name)
        return broken

    def _sweep(self, published: set[str]) -> None:
        """Delete index folders no manifest points to (earlier revisions, interrupted builds)."""
        candidates = [*(self.folder / "index").glob("*.r*"), *self.folder.glob("bm25.r*")]
        for folder in candidates:
            if folder.is_dir() and folder.relative_to(self.folder).as_posix() not in published:
                shutil.rmtree(folder, ignore_errors=True)

    def _bm25_settings(self) -> BM25Settings:
        from mmrank.lexical import BM25Settings

        return BM25Settings(**self.manifest.bm25)

    def _parts(self, space: str) -> int:
        """The most vectors one item owns in ``space``, at the current revision."""
        self._forget_if_stale()
        if space not in self._part_counts:
            self._part_counts[space] = max(1, self.store.parts_per_item(space))
        return self._part_counts[space]

    def _build_vector_index(self, space: str, folder: Path | None = None) -> VectorIndex:
        """A FAISS index of ``space``'s vectors, read from the database a batch at a time. Its keys
        are the item ids, or, when some item owns several vectors, :func:`vector_key` of each item
        id and part. A factory that learns (IVF, PQ) trains first on a random sample
        (:func:`~mmrank.index_plan.training_size`); ``auto`` picks the factory from the count and
        the collection's memory budget (:func:`~mmrank.index_plan.plan_index`). ``folder``: where
        the index will be saved, so that a vectors file it keeps is written there at once."""
        from mmrank.index import VectorIndex, new_vectors_name

        dim = self.manifest.space(space).dim
        count = self.store.vector_count(space)
        plan = self.plan(space, count)
        factory = plan.factory if plan else self.manifest.index_factory
        refine = plan.refine if plan and plan.refine else None
        vectors_file = folder / new_vectors_name() if refine and folder is not None else None
        if vectors_file is not None:
            folder.mkdir(parents=True, exist_ok=True)
        index = VectorIndex(dim, factory, refine=refine, vectors_file=vectors_file,
                            on_disk=bool(plan and plan.on_disk), **self.placement)
        index.use_default_breadth()
        several = self._parts(space) > 1
        try:
            if count and not index.is_trained:
                index.train(self._sample(space, dim, count, training_size(count, index.min_training_vectors)))
            for ids, parts, vectors in self.store.vector_batches(space, dim):
                index.add([vector_key(i, part) for i, part in zip(ids, parts)] if several else ids, vectors)
        except InputError as error:
            raise CollectionError(
                f"{self.folder}: cannot build its '{factory}' index over {count} {space} "
                f"vectors ({error}) The vectors are stored: choose another index type (e.g. "
                "--index-factory Flat, or auto) and only the index is rebuilt."
            ) from error
        return index

    def _build_patch_index(self, space: str, previous: PatchIndex | None = None) -> PatchIndex:
        """The late-interaction index of ``space`` over the patch rows the database records, at
        the current revision; ``previous`` lends its centroids and page assignments (see
        :meth:`~mmrank.patch_index.PatchIndex.build`)."""
        from mmrank.patch_index import PatchIndex

        known = self._patch_space(space)
        files = self.store.bind_patch_space(space, known.dim, known.multi_vector)
        ids, locations = self.store.patch_locations(space)
        return PatchIndex.build(known.dim, ids, locations, files, previous=previous,
                                device=self.placement["device"])

    def _previous_patch_index(self, space: str) -> PatchIndex | None:
        """The patch index of ``space`` loaded now or published last (at any revision), if sound."""
        from mmrank.patch_index import PatchIndex

        if space in self._patches:
            return self._patches[space]
        relative = self.manifest.index_files.get(space)
        if relative is None or not (self.folder / relative).is_dir():
            return None
        known = self.manifest.space(space)
        try:
            return PatchIndex.load(self.folder / relative, self.store.bind_patch_space(space, known.dim,
                                                                                      known.multi_vector))
        except CollectionError:
            return None

    def _compact_patches(self) -> bool:
        """Rewrite the patch files whose dead rows (left by removed or replaced items, or by a
        killed build) outnumber the live ones and are more than 65,536 (a few dozen pages);
        whether any was. The caller holds the writer lock."""
        compacted = False
        for name, space in self.manifest.spaces.items():
            if space.multi_vector is None:
                continue
            files = self.store.bind_patch_space(name, space.dim, space.multi_vector)
            dead = sum(files.rows(segment) for segment in files.segments()) - self.store.patch_rows_stored(name)
            if dead > max(self.store.patch_rows_stored(name), 1 << 16):
                compacted = bool(self.store.compact_patches(name)) or compacted
        return compacted

    def plan(self, space: str, count: int | None = None) -> IndexPlan | None:
        """What ``--index-factory auto`` chooses for ``space`` (None for a fixed factory, and for a
        late-interaction space, which plans its own: :func:`~mmrank.patch_index.plan_lists`)."""
        if self.manifest.index_factory != AUTO or self.manifest.space(space).multi_vector is not None:
            return None
        if count is None:
            count = self.store.vector_count(space)
        return plan_index(count, self.manifest.space(space).dim, self.manifest.memory_budget)

    def _sample(self, space: str, dim: int, count: int, size: int) -> np.ndarray:
        """``size`` of ``space``'s ``count`` vectors drawn at random (the same draw for the same
        count), read in one pass over the database."""
        chosen = np.sort(np.random.default_rng(count).choice(count, size=min(size, count), replace=False))
        sample, seen = [], 0
        for _, _, vectors in self.store.vector_batches(space, dim):
            inside = chosen[(chosen >= seen) & (chosen < seen + len(vectors))] - seen
            sample.append(vectors[inside])
            seen += len(vectors)
        return np.vstack(sample)

    def _forget_if_stale(self) -> None:
        revision = self.store.revision
        if revision != self._revision:
            self.forget()
            self._revision = revision

    def _published(self, name: str) -> Path | None:
        """The folder of the published index ``name`` when it is current and on disk."""
        relative = self.manifest.index_files.get(name)
        if relative is None or self.manifest.index_revision != self.store.revision:
            return None
        folder = self.folder / relative
        return folder if folder.is_dir() else None

    @property
    def _writable(self) -> bool:
        return os.access(self.folder, os.W_OK)
