"""Building a collection from files: resumable, idempotent, tolerant of bad files, bounded in memory.

Files are read, encoded and stored in batches; each batch of whole files is one database
transaction. Running the same command again skips files already stored unchanged, replaces the
items of changed files, removes the items of files that are gone, and picks up whatever an
interrupted run did not finish. The whole run holds the collection's writer lock.

Anything that goes wrong with one file or one page (it cannot be read, rendered or encoded)
skips that file or page with its path and the reason; only errors that concern the whole run
(the collection, a model that cannot be loaded, a missing package) stop it. Pictures are rendered
and encoded ``batch_size`` at a time, so memory does not grow with the pages of a PDF.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrank.collection import Collection, FileEntry
from mmrank.documents import DEFAULT_DPI
from mmrank.encoders.base import ImageEncoder, TextEncoder
from mmrank.errors import CollectionError, InputError, MissingDependencyError, ModelUnavailableError
from mmrank.images import item_image
from mmrank.ingest import Skipped, discover, fingerprint, printable, read_items
from mmrank.item_store import VectorBatch
from mmrank.text import split_passages
from mmrank.types import Item

ImageEncoderSource = Callable[[], ImageEncoder]
# Errors that concern the whole run, not one file: they stop it.
RUN_ERRORS = (CollectionError, ModelUnavailableError, MissingDependencyError, MemoryError)


@dataclass
class IndexReport:
    """What an indexing run did."""

    added_files: int = 0
    replaced_files: int = 0
    unchanged_files: int = 0
    removed_files: int = 0
    items_added: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def indexed_anything(self) -> bool:
        return self.added_files + self.replaced_files + self.unchanged_files > 0


@dataclass
class ItemEncoder:
    """Turns items into vectors: texts through the text encoder, images and (text-less, or all when
    ``pages_as_images``) page renders through the image encoder, loaded only when first needed.

    A text longer than the text model reads is split into overlapping passages of
    ``passage_words`` words (``passage_overlap`` shared with the next), one vector each; by default
    the passage length follows the model's window (:func:`default_passages`). A collection's text
    space keeps the split it was built with.
    """

    text_encoder: TextEncoder | None
    image_encoder: ImageEncoder | ImageEncoderSource | None = None
    pages_as_images: bool = False
    dpi: int = DEFAULT_DPI
    passage_words: int | None = None
    passage_overlap: int | None = None

    def spaces_for(self, item: Item) -> list[str]:
        spaces = []
        if item.has_text and self.text_encoder is not None:
            spaces.append("text")
        wants_image = item.kind == "image" or (item.kind == "page" and (self.pages_as_images or not item.has_text))
        if wants_image and self.image_encoder is not None:
            spaces.append("image")
        return spaces

    def image(self) -> ImageEncoder:
        if callable(self.image_encoder) and not isinstance(self.image_encoder, ImageEncoder):
            self.image_encoder = self.image_encoder()
        return self.image_encoder

    def encode(self, items: Sequence[Item], collection: Collection, *, batch_size: int = 32) -> VectorBatch:
        """Vectors per space for ``items`` (binding each encoder to the collection first). Pictures
        are rendered ``batch_size`` at a time and dropped once encoded."""
        wanted: dict[str, list[Item]] = {"text": [], "image": []}
        for item in items:
            for space in self.spaces_for(item):
                wanted[space].append(item)
        vectors = {}
        if wanted["text"]:
            space = collection.bind_encoder("text", self.text_encoder.name, self.text_encoder.dim, self.passages())
            passages = [(item.id, passage) for item in wanted["text"]
                        for passage in (split_passages(item.text, *space.passages) if space.passages else [item.text])]
            vectors["text"] = ([item_id for item_id, _ in passages],
                               self.text_encoder.encode_texts([passage for _, passage in passages]))
        if wanted["image"]:
            encoder = self.image()
            collection.bind_encoder("image", encoder.name, encoder.dim)
            chunks = [wanted["image"][start:start + batch_size]
                      for start in range(0, len(wanted["image"]), batch_size)]
            vectors["image"] = ([i.id for i in wanted["image"]],
                                np.concatenate([encoder.encode_images([self._image_of(i) for i in chunk])
                                                for chunk in chunks]))
        return vectors

    def passages(self) -> tuple[int, int]:
        """(words, overlap) of the passages texts are split into: the options, else the defaults
        for the text model's window."""
        words, overlap = default_passages(getattr(self.text_encoder, "max_tokens", None))
        words = self.passage_words or words
        return words, overlap if self.passage_overlap is None else self.passage_overlap

    def _image_of(self, item: Item):
        return item_image(item, self.dpi) if item.kind == "page" else item.source


def default_passages(max_tokens: int | None) -> tuple[int, int]:
    """(words, overlap) of passages that fit a text model reading ``max_tokens`` word pieces (about
    1.6 pieces a word in technical English, plus the model's two special tokens), a quarter of
    each shared with the next; (160, 40) when the window is unknown."""
    words = 160 if not max_tokens else max(16, int((max_tokens - 2) / 1.6))
    return words, words // 4


def index_paths(
    collection: Collection,
    paths: Iterable[str | Path],
    encoder: ItemEncoder,
    *,
    batch_size: int = 32,
    progress: bool = False,
    prune: bool = True,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> IndexReport:
    """Add the supported files under ``paths`` to ``collection``; see the module docstring. With
    ``prune``, files the collection holds from under ``paths`` that no longer exist are removed.
    ``wait`` / ``on_wait``: what to do when another process is writing (see ``Collection.writing``)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    paths = [Path(path) for path in paths]
    files, skipped = discover(paths)
    report = IndexReport(skipped=list(skipped))
    pending: list[FileEntry] = []

    def flush() -> None:
        if pending:
            entries, vectors = _encode_isolated(pending, encoder, collection, batch_size, report)
            if entries:
                collection.replace_files(entries, vectors)
                report.items_added += sum(len(entry.items) for entry in entries)
            pending.clear()

    with collection.writing(wait=wait, on_wait=on_wait):
        if prune:
            report.removed_files = collection.remove_missing_files(paths)
        for path in tqdm(files, desc="Indexing", unit="file", disable=not progress):
            entry, replaced = _prepare(path, collection, encoder, report)
            if entry is None:
                continue
            report.replaced_files += replaced
            report.added_files += not replaced
            pending.append(entry)
            if sum(len(e.items) for e in pending) >= batch_size:
                flush()
        flush()
        collection.build_indexes()
    report.seconds = time.perf_counter() - start
    return report


def _prepare(path: Path, collection: Collection, encoder: ItemEncoder,
             report: IndexReport) -> tuple[FileEntry | None, bool]:
    """Read one file unless it is stored unchanged; returns (entry or None, whether it replaces)."""
    key = str(path)
    try:
        current = fingerprint(path)
        stored = collection.file_fingerprint(key)
        if stored is not None and (stored.size, stored.mtime_ns) == (current.size, current.mtime_ns):
            report.unchanged_files += 1
            return None, False
        if stored is not None and stored.sha256 == current.sha256:
            collection.touch_file(key, current)
            report.unchanged_files += 1
            return None, False
        items, warning = read_items(path)
    except RUN_ERRORS:
        raise
    except Exception as error:  # anything about this one file: skip it, keep going
        report.skipped.append(Skipped(printable(key), _reason(error, key)))
        return None, False
    if warning:
        report.warnings.append(Skipped(key, warning))
    kept = []
    for item in items:
        if encoder.spaces_for(item):
            kept.append(item)
        else:
            report.skipped.append(Skipped(f"{key} (page {item.page})", _no_vector_reason(item)))
    if not kept:
        return None, False
    return FileEntry(path=key, items=kept, fingerprint=current), stored is not None


def _encode_isolated(entries: list[FileEntry], encoder: ItemEncoder, collection: Collection, batch_size: int,
                     report: IndexReport) -> tuple[list[FileEntry], VectorBatch]:
    """The entries' vectors, encoded together; when that fails, file by file and then item by item,
    so a page or image that cannot be rendered or encoded is skipped alone (and a file whose items
    all fail is left out, to be tried again next run)."""
    items = [item for entry in entries for item in entry.items]
    try:
        return entries, encoder.encode(items, collection, batch_size=batch_size)
    except RUN_ERRORS:
        raise
    except Exception:  # find the culprit below
        pass
    kept_entries, parts = [], []
    for entry in entries:
        kept = []
        for item in entry.items:
            try:
                parts.append(encoder.encode([item], collection, batch_size=batch_size))
                kept.append(item)
            except RUN_ERRORS:
                raise
            except Exception as error:
                where = f"{entry.path} (page {item.page})" if item.kind == "page" else entry.path
                report.skipped.append(Skipped(printable(where), _reason(error, entry.path)))
        if kept:
            kept_entries.append(FileEntry(path=entry.path, items=kept, fingerprint=entry.fingerprint))
    return kept_entries, _merged(parts)


def _merged(parts: list[VectorBatch]) -> VectorBatch:
    """Vector batches of the same spaces joined into one."""
    merged: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for part in parts:
        for space, (ids, matrix) in part.items():
            ids_so_far, matrices = merged.setdefault(space, ([], []))
            ids_so_far.extend(ids)
            matrices.append(matrix)
    return {space: (ids, np.concatenate(matrices)) for space, (ids, matrices) in merged.items()}


def _reason(error: Exception, path: str) -> str:
    """Why a file or page was skipped: the error's message without the path it starts with, and the
    error's type when it is not one of mmrank's own (which already say what is wrong)."""
    message = str(error).removeprefix(f"{path}: ") or type(error).__name__
    return printable(message if isinstance(error, InputError) else f"{message} ({type(error).__name__})")


def _no_vector_reason(item: Item) -> str:
    if item.kind == "page":
        return "the page has no text layer; index with an image model (--image-model) to include it"
    return "an image needs an image model, and none was given"
