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
from mmrank.documents import DEFAULT_DPI, ocr_available
from mmrank.encoders.base import ImageEncoder, TextEncoder
from mmrank.errors import CollectionError, InputError, MissingDependencyError, ModelUnavailableError, listing
from mmrank.images import item_image
from mmrank.ingest import Skipped, discover, fingerprint, printable, read_items
from mmrank.item_store import VectorBatch
from mmrank.text import PassageSplit
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
    skipped_pages: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def indexed_anything(self) -> bool:
        """Whether the collection holds something from these paths: items added now, or files
        stored unchanged."""
        return self.items_added > 0 or self.unchanged_files > 0


@dataclass
class ItemEncoder:
    """Turns items into vectors: texts through the text encoder, images and (text-less, or all when
    ``pages_as_images``) page renders through the image encoder, loaded only when first needed.

    A text longer than the text model reads is split into passages, one vector each
    (``passages``, by default :func:`default_passages` for the model's window). A collection's text
    space keeps the split it was built with.
    """

    text_encoder: TextEncoder | None
    image_encoder: ImageEncoder | ImageEncoderSource | None = None
    pages_as_images: bool = False
    dpi: int = DEFAULT_DPI
    passages: PassageSplit | None = None
    ocr: str = "auto"
    image_required: bool = True
    image_problem: str | None = field(default=None, init=False)

    def spaces_for(self, item: Item) -> list[str]:
        spaces = []
        if item.has_text and self.text_encoder is not None:
            spaces.append("text")
        wants_image = item.kind == "image" or (item.kind == "page" and (self.pages_as_images or not item.has_text))
        if wants_image and self.image_encoder is not None and self.image_problem is None:
            spaces.append("image")
        return spaces

    def image(self) -> ImageEncoder:
        if callable(self.image_encoder) and not isinstance(self.image_encoder, ImageEncoder):
            self.image_encoder = self.image_encoder()
        return self.image_encoder

    def pictures_of_pages(self) -> bool:
        """Whether the pictures of pages without text can be encoded: there is an image model, and
        it loads. Unless ``image_required``, a model that cannot be loaded is remembered in
        ``image_problem`` (its pages are then left out) instead of stopping the run."""
        if self.image_encoder is None or self.image_problem is not None:
            return False
        try:
            self.image()
        except ModelUnavailableError as error:
            if self.image_required:
                raise
            self.image_problem = str(error)
            return False
        return True

    def encode(self, items: Sequence[Item], collection: Collection, *, batch_size: int = 32) -> VectorBatch:
        """Vectors per space for ``items`` (binding each encoder to the collection first). Pictures
        are rendered ``batch_size`` at a time and dropped once encoded."""
        wanted: dict[str, list[Item]] = {"text": [], "image": []}
        for item in items:
            for space in self.spaces_for(item):
                wanted[space].append(item)
        vectors = {}
        if wanted["text"]:
            split = self.passages or default_passages(getattr(self.text_encoder, "max_tokens", None))
            space = collection.bind_encoder("text", self.text_encoder.name, self.text_encoder.dim, split)
            passages = [(item.id, passage) for item in wanted["text"]
                        for passage in (space.passages.split(item.text) if space.passages else [item.text])]
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

    def _image_of(self, item: Item):
        return item_image(item, self.dpi) if item.kind == "page" else item.source


def default_passages(max_tokens: int | None) -> PassageSplit:
    """Passages that fit a text model reading ``max_tokens`` word pieces (1.53 pieces a word, the
    median of the real-PDF dev set's pages, plus the model's two special tokens; 160 words when the
    window is unknown), side by side, the first two of a page.

    Measured on that dev set (benchmarks/docqa_devset.py, all-MiniLM-L6-v2): the default pipeline
    answered as many questions in the top 1 and 5 with the first two passages of a page as with all
    of them (BM25 still reads the whole page), while encoding 25% fewer passages; sharing 20 words
    between neighbours cost 23% more encoding for no change. Indexing those PDFs runs at about two
    thirds of the pages per second of one vector a page (benchmarks/text_indexing_bench.py)."""
    return PassageSplit(160 if not max_tokens else max(16, int((max_tokens - 2) / 1.53)), 0, 2)


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
    """Read one file unless it is stored unchanged (a file with left-out pages is read again, in
    case OCR or an image model is there now); returns (entry or None, whether it replaces)."""
    key = str(path)
    try:
        current = fingerprint(path)
        stored = collection.file_fingerprint(key)
        if stored is not None and not collection.store.skipped_pages(key):
            if (stored.size, stored.mtime_ns) == (current.size, current.mtime_ns):
                report.unchanged_files += 1
                return None, False
            if stored.sha256 == current.sha256:
                collection.touch_file(key, current)
                report.unchanged_files += 1
                return None, False
        items, warning = read_items(path, ocr=encoder.ocr)
    except RUN_ERRORS:
        raise
    except Exception as error:  # anything about this one file: skip it, keep going
        report.skipped.append(Skipped(printable(key), _reason(error, key)))
        return None, False
    if warning:
        report.warnings.append(Skipped(key, warning))
    if any(item.kind == "page" and not item.has_text for item in items):
        encoder.pictures_of_pages()  # loads the image model now, or notes why it cannot be
    kept = [item for item in items if encoder.spaces_for(item)]
    left_out = [item.page for item in items if not encoder.spaces_for(item)]
    reason = _left_out_reason(encoder)
    if left_out:
        report.warnings.append(Skipped(key, f"{_pages(left_out)} left out: {reason}"))
        report.skipped_pages += len(left_out)
    if not items:
        return None, False
    return (FileEntry(path=key, items=kept, fingerprint=current, skipped_pages=[(page, reason) for page in left_out]),
            stored is not None)


def _pages(numbers: list[int]) -> str:
    return f"page {numbers[0]}" if len(numbers) == 1 else f"pages {listing(numbers, 12, quote=False)}"


def _left_out_reason(encoder: ItemEncoder) -> str:
    """Why a page without text got no vector: how OCR went, and why its picture was not encoded."""
    if encoder.ocr == "off":
        ocr = "no text layer (OCR is off: --ocr auto reads such pages when Tesseract is installed)"
    elif ocr_available():
        ocr = "no text, even by OCR"
    else:
        ocr = "no text layer (Tesseract is not installed to read it by OCR: apt-get install tesseract-ocr)"
    if encoder.image_problem is not None:
        picture = f"the image model for page pictures could not be loaded ({encoder.image_problem})"
    else:
        picture = "no image model was given for page pictures (--image-model)"
    return f"{ocr}, and {picture}"


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
