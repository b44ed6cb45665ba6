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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.collection import Collection, FileEntry
from mmrank.documents import DEFAULT_DPI, ocr_available
from mmrank.encoders.base import ImageEncoder, TextEncoder
from mmrank.errors import CollectionError, InputError, MissingDependencyError, ModelUnavailableError, listing
from mmrank.images import item_image
from mmrank.ingest import Fingerprint, Skipped, discover, fingerprint, printable, read_items
from mmrank.item_store import VectorBatch
from mmrank.text import PassageSplit
from mmrank.types import ImageInput, Item

if TYPE_CHECKING:
    from mmrank.manifest import Space

ImageEncoderSource = Callable[[], ImageEncoder]
PATCHES = "patches"  # the late-interaction space: a page model's patch vectors
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
    ``pages_as_images``) page renders through the image encoder, loaded only when first needed;
    and, with a ``page_encoder`` (a late-interaction model such as ColQwen, or a function that
    loads one), every page and image into its patch vectors, stored as ``patch_dtype``.

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
    page_encoder: Any = None
    patch_dtype: str = "float16"
    image_problem: str | None = field(default=None, init=False)

    def spaces_for(self, item: Item) -> list[str]:
        spaces = []
        if item.has_text and self.text_encoder is not None:
            spaces.append("text")
        if wants_picture(item, self.pages_as_images) and self.image_encoder is not None and self.image_problem is None:
            spaces.append("image")
        if self.page_encoder is not None and item.kind in ("page", "image") and item.source is not None:
            spaces.append(PATCHES)
        return spaces

    def ready_for(self, items: Sequence[Item]) -> None:
        """Load the image model now if ``items`` hold pages without text, or note why it cannot be
        loaded (:meth:`pictures_of_pages`), so that :meth:`spaces_for` knows about their pictures."""
        if any(item.kind == "page" and not item.has_text for item in items):
            self.pictures_of_pages()

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

    def new_passages(self) -> PassageSplit:
        """How a new text space splits texts into passages: ``passages``, else the default for the
        text model's window."""
        return self.passages or default_passages(getattr(self.text_encoder, "max_tokens", None))

    def wanted(self, items: Sequence[Item]) -> dict[str, list[Item]]:
        """The items each space encodes (by :meth:`spaces_for`)."""
        wanted: dict[str, list[Item]] = {"text": [], "image": [], PATCHES: []}
        for item in items:
            for space in self.spaces_for(item):
                wanted[space].append(item)
        return wanted

    def encode(self, items: Sequence[Item], collection: Collection, *, batch_size: int = 32) -> VectorBatch:
        """Vectors per space for ``items`` (binding each encoder to the collection first). Pictures
        are rendered ``batch_size`` at a time and dropped once encoded."""
        wanted = self.wanted(items)
        vectors = {}
        if wanted["text"]:
            space = collection.bind_encoder("text", self.text_encoder.name, self.text_encoder.dim, self.new_passages())
            vectors["text"] = self.text_vectors(wanted["text"], space.passages)
        if wanted["image"]:
            encoder = self.image()
            collection.bind_encoder("image", encoder.name, encoder.dim)
            vectors["image"] = self.image_vectors(wanted["image"], batch_size=batch_size)
        if wanted[PATCHES]:
            encoder = self.pages()
            space = collection.bind_encoder(PATCHES, encoder.name, encoder.dim, multi_vector=self.patch_dtype)
            if space.multi_vector is None:
                raise CollectionError(f"{collection.path}: its {PATCHES} space holds one vector per item, so page "
                                      "models cannot add patch vectors to it; build a new collection.")
            vectors[PATCHES] = self.patch_vectors(wanted[PATCHES], batch_size=batch_size)
        return vectors

    def pages(self) -> Any:
        """The page model (loaded now when ``page_encoder`` is a function that loads it)."""
        if callable(self.page_encoder) and not hasattr(self.page_encoder, "encode_pages"):
            self.page_encoder = self.page_encoder()
        return self.page_encoder

    def patch_vectors(self, items: Sequence[Item], *, batch_size: int = 32,
                      picture: Callable[[Item], ImageInput] | None = None) -> tuple[list[str], np.ndarray]:
        """The patch vectors of ``items`` (pages and images), ``batch_size`` pictures at a time: one
        row per patch, with the item id of each row. A picture the model gives no vector for (or
        only non-finite ones) is an InputError naming it, so the item is skipped alone."""
        encoder, picture = self.pages(), picture or self._image_of
        ids, matrices = [], []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            for item, matrix in zip(chunk, encoder.encode_pages([picture(item) for item in chunk])):
                if not len(matrix) or not np.isfinite(matrix).all():
                    where = f"{item.source} (page {item.page})" if item.kind == "page" else item.source
                    raise InputError(f"{where}: the page model {encoder.name} gave no usable vectors for it "
                                     f"({len(matrix)} rows{'' if not len(matrix) else ', not all finite'}).")
                ids.extend([item.id] * len(matrix))
                matrices.append(matrix)
        return ids, np.concatenate(matrices).astype(np.float32, copy=False)

    def text_vectors(self, items: Sequence[Item], passages: PassageSplit | None) -> tuple[list[str], np.ndarray]:
        """The text vectors of ``items``: one per passage of each text (split by ``passages``, the
        collection's text space's split; None: the whole text), with the item id of each row."""
        split = [(item.id, passage) for item in items
                 for passage in (passages.split(item.text) if passages else [item.text])]
        return [item_id for item_id, _ in split], self.text_encoder.encode_texts([passage for _, passage in split])

    def image_vectors(self, items: Sequence[Item], *, batch_size: int = 32,
                      picture: Callable[[Item], ImageInput] | None = None) -> tuple[list[str], np.ndarray]:
        """The picture vectors of ``items``, ``batch_size`` pictures at a time; ``picture`` gives an
        item's picture (by default the image file, or the page rendered at ``dpi``)."""
        encoder, picture = self.image(), picture or self._image_of
        chunks = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
        return [i.id for i in items], np.concatenate([encoder.encode_images([picture(i) for i in chunk])
                                                      for chunk in chunks])

    def _image_of(self, item: Item):
        return item_image(item, self.dpi) if item.kind == "page" else item.source


def wants_picture(item: Item, pages_as_images: bool) -> bool:
    """Whether an image model encodes ``item``'s picture: an image file, or a page without text (or
    any page, with ``pages_as_images``)."""
    return item.kind == "image" or (item.kind == "page" and (pages_as_images or not item.has_text))


@dataclass(frozen=True)
class EncoderChoice:
    """The models of an index run as the user named them (None: the model the collection records
    for that space, else the default) and how pages are read and pictured. Plain data, so a
    distributed run (:mod:`mmrank.ray_indexing`) sends it to its workers, which build the same
    encoders with :meth:`item_encoder`."""

    text_model: str | None = None
    image_model: str | None = None
    image_pretrained: str | None = None
    pages_as_images: bool = False
    dpi: int = DEFAULT_DPI
    ocr: str = "auto"
    page_model: str | None = None
    token_pooling: int = 1
    patch_dtype: str = "float16"

    def item_encoder(self, spaces: Mapping[str, Space], device: str = "auto") -> ItemEncoder:
        """The encoders for a collection whose vector spaces are ``spaces``: a space's recorded
        encoder (rebuilt from its name) unless a model is named. The text model loads now, the
        image model when first needed; pictures of pages without text use it when it loads, but a
        model the user asked for (or a collection's image space) must load, else the run stops."""
        from mmrank.encoders import load_encoder_by_name, load_image_encoder, load_text_encoder

        if self.text_model is None and "text" in spaces:
            text_encoder = load_encoder_by_name(spaces["text"].encoder, device=device)
        else:
            text_encoder = load_text_encoder(self.text_model, device=device)

        def image_encoder():
            if self.image_model is None and "image" in spaces:
                return load_encoder_by_name(spaces["image"].encoder, device=device, progress=False)
            tag = {} if self.image_pretrained is None else {"pretrained": self.image_pretrained}
            return load_image_encoder(self.image_model, device=device, **tag)

        required = self.image_model is not None or self.pages_as_images or "image" in spaces
        page_encoder = self.page_encoder(spaces, device)
        if page_encoder is not None and not required:  # pages without text get patch vectors instead
            image_encoder = None
        return ItemEncoder(text_encoder, image_encoder, pages_as_images=self.pages_as_images, dpi=self.dpi,
                           ocr=self.ocr, image_required=required, page_encoder=page_encoder,
                           patch_dtype=self.patch_dtype)

    def page_encoder(self, spaces: Mapping[str, Space], device: str = "auto") -> Any:
        """A function loading the late-interaction page model (the one named, else the one the
        collection's patch space records), or None when there is neither."""
        from mmrank.encoders import load_encoder_by_name, load_page_encoder

        if self.page_model is None and PATCHES not in spaces:
            return None
        if self.page_model is None:
            return lambda: load_encoder_by_name(spaces[PATCHES].encoder, device=device)
        return lambda: load_page_encoder(self.page_model, pool_factor=self.token_pooling, device=device)


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


@dataclass
class FileRead:
    """What reading one file gave: its fingerprint and items, and a warning when it was damaged but
    partly readable; or why it was skipped (``error``); or ``same_content``: its content is the
    stored version's (only its modification time changed), so it was not read."""

    path: str
    fingerprint: Fingerprint | None = None
    items: list[Item] = field(default_factory=list)
    warning: str | None = None
    error: str | None = None
    same_content: bool = False


def stored_version(collection: Collection, key: str) -> tuple[bool, Fingerprint | None]:
    """Whether ``collection`` stores the file ``key``, and the stored fingerprint when the file is
    kept as it is if unchanged (None for a file with left-out pages: it is read again, in case OCR
    or an image model is there now)."""
    stored = collection.file_fingerprint(key)
    return stored is not None, stored if stored is not None and not collection.store.skipped_pages(key) else None


def unchanged_on_disk(path: Path, stored: Fingerprint | None) -> bool:
    """Whether ``path`` has the ``stored`` size and modification time (then it is not read at all)."""
    if stored is None:
        return False
    stat = path.stat()
    return (stored.size, stored.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def read_file(path: Path, stored: Fingerprint | None, ocr: str = "auto") -> FileRead:
    """Fingerprint one file and read its items (``ocr`` as in :func:`mmrank.ingest.read_items`),
    unless its content is ``stored``'s. A problem with the file is returned as ``error``; only errors
    that concern the whole run are raised."""
    key = str(path)
    try:
        current = fingerprint(path)
        if stored is not None and stored.sha256 == current.sha256:
            return FileRead(key, current, same_content=True)
        items, warning = read_items(path, ocr=ocr)
    except RUN_ERRORS:
        raise
    except Exception as error:  # anything about this one file: skip it, keep going
        return FileRead(key, error=reason_for(error, key))
    return FileRead(key, current, items, warning)


def _prepare(path: Path, collection: Collection, encoder: ItemEncoder,
             report: IndexReport) -> tuple[FileEntry | None, bool]:
    """Read one file unless it is stored unchanged (see :func:`stored_version`); returns (entry or
    None, whether it replaces)."""
    key = str(path)
    try:
        known, stored = stored_version(collection, key)
        if unchanged_on_disk(path, stored):
            report.unchanged_files += 1
            return None, False
        read = read_file(path, stored, encoder.ocr)
        if read.same_content:
            collection.touch_file(key, read.fingerprint)
            report.unchanged_files += 1
            return None, False
    except RUN_ERRORS:
        raise
    except Exception as error:  # anything about this one file: skip it, keep going
        report.skipped.append(Skipped(printable(key), reason_for(error, key)))
        return None, False
    if read.error is not None:
        report.skipped.append(Skipped(printable(key), read.error))
        return None, False
    if read.warning:
        report.warnings.append(Skipped(key, read.warning))
    encoder.ready_for(read.items)
    reason = left_out_reason(encoder)
    left_out = [(item.page, reason) for item in read.items if not encoder.spaces_for(item)]
    note_left_out(key, left_out, report)
    if not read.items:
        return None, False
    kept = [item for item in read.items if encoder.spaces_for(item)]
    return FileEntry(path=key, items=kept, fingerprint=read.fingerprint, skipped_pages=left_out), known


def note_left_out(key: str, left_out: Sequence[tuple[int, str]], report: IndexReport) -> None:
    """Count a file's pages left out as (page, reason), with a warning per reason."""
    pages: dict[str, list[int]] = {}
    for page, reason in left_out:
        pages.setdefault(reason, []).append(page)
    for reason, numbers in pages.items():
        report.warnings.append(Skipped(key, f"{_pages(numbers)} left out: {reason}"))
    report.skipped_pages += len(left_out)


def _pages(numbers: list[int]) -> str:
    return f"page {numbers[0]}" if len(numbers) == 1 else f"pages {listing(numbers, 12, quote=False)}"


def left_out_reason(encoder: ItemEncoder) -> str:
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
        kept, vectors, skipped = encode_one_by_one(
            entry.items, lambda some: encoder.encode(some, collection, batch_size=batch_size))
        parts.extend(vectors)
        report.skipped.extend(skipped)
        if kept:
            kept_entries.append(replace(entry, items=kept))
    return kept_entries, merged(parts)


def encode_one_by_one(items: Sequence[Item], encode: Callable[[list[Item]], VectorBatch]
                      ) -> tuple[list[Item], list[VectorBatch], list[Skipped]]:
    """``items`` encoded one at a time by ``encode`` (after encoding them together failed), so one
    that cannot be rendered or encoded is skipped alone: the items that encoded, their vectors, and
    what was skipped. Errors that concern the whole run are raised."""
    kept, parts, skipped = [], [], []
    for item in items:
        try:
            parts.append(encode([item]))
            kept.append(item)
        except RUN_ERRORS:
            raise
        except Exception as error:
            skipped.append(skipped_item(item, reason_for(error, item.source)))
    return kept, parts, skipped


def skipped_item(item: Item, reason: str) -> Skipped:
    """An image, or a page of a PDF (``<path> (page N)``), skipped for ``reason``."""
    return Skipped(printable(f"{item.source} (page {item.page})" if item.kind == "page" else item.source), reason)


def merged(parts: list[VectorBatch]) -> VectorBatch:
    """Vector batches of the same spaces joined into one."""
    merged: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for part in parts:
        for space, (ids, matrix) in part.items():
            ids_so_far, matrices = merged.setdefault(space, ([], []))
            ids_so_far.extend(ids)
            matrices.append(matrix)
    return {space: (ids, np.concatenate(matrices)) for space, (ids, matrices) in merged.items()}


def reason_for(error: Exception, path: str) -> str:
    """Why a file or page was skipped: the error's message without the path it starts with, and the
    error's type when it is not one of mmrank's own (which already say what is wrong)."""
    message = str(error).removeprefix(f"{path}: ") or type(error).__name__
    return printable(message if isinstance(error, InputError) else f"{message} ({type(error).__name__})")
