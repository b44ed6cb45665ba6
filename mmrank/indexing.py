"""Building a collection from files: resumable, idempotent, and tolerant of bad files.

Files are read, encoded and stored in batches; each batch of whole files is one database
transaction. Running the same command again skips files already stored unchanged, replaces the
items of changed files, and picks up whatever an interrupted run did not finish.
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
from mmrank.errors import InputError
from mmrank.images import item_image
from mmrank.ingest import Skipped, discover, fingerprint, read_items
from mmrank.types import Item

ImageEncoderSource = Callable[[], ImageEncoder]


@dataclass
class IndexReport:
    """What an indexing run did."""

    added_files: int = 0
    replaced_files: int = 0
    unchanged_files: int = 0
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
    ``pages_as_images``) page renders through the image encoder, loaded only when first needed."""

    text_encoder: TextEncoder | None
    image_encoder: ImageEncoder | ImageEncoderSource | None = None
    pages_as_images: bool = False
    dpi: int = DEFAULT_DPI

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

    def encode(self, items: Sequence[Item], collection: Collection) -> dict[str, tuple[list[str], np.ndarray]]:
        """Vectors per space for ``items`` (binding each encoder to the collection first)."""
        wanted: dict[str, list[Item]] = {"text": [], "image": []}
        for item in items:
            for space in self.spaces_for(item):
                wanted[space].append(item)
        vectors = {}
        if wanted["text"]:
            collection.bind_encoder("text", self.text_encoder.name, self.text_encoder.dim)
            vectors["text"] = ([i.id for i in wanted["text"]],
                               self.text_encoder.encode_texts([i.text for i in wanted["text"]]))
        if wanted["image"]:
            encoder = self.image()
            collection.bind_encoder("image", encoder.name, encoder.dim)
            vectors["image"] = ([i.id for i in wanted["image"]],
                                encoder.encode_images([self._image_of(i) for i in wanted["image"]]))
        return vectors

    def _image_of(self, item: Item):
        return item_image(item, self.dpi) if item.kind == "page" else item.source


def index_paths(
    collection: Collection,
    paths: Iterable[str | Path],
    encoder: ItemEncoder,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> IndexReport:
    """Add the supported files under ``paths`` to ``collection``; see the module docstring."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    files, skipped = discover(paths)
    report = IndexReport(skipped=list(skipped))
    pending: list[FileEntry] = []

    def flush() -> None:
        if pending:
            items = [item for entry in pending for item in entry.items]
            collection.replace_files(pending, encoder.encode(items, collection))
            report.items_added += len(items)
            pending.clear()

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
    except (InputError, OSError) as error:
        report.skipped.append(Skipped(key, _reason(error, key)))
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


def _reason(error: Exception, path: str) -> str:
    message = str(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _no_vector_reason(item: Item) -> str:
    if item.kind == "page":
        return "the page has no text layer; index with an image model (--image-model) to include it"
    return "an image needs an image model, and none was given"
