"""What the parquet-based loaders (MMDocIR, ViDoRe) share: rows streamed a batch at a time with
errors that name the file and row, Hugging Face split files, and page images written once into a
cache folder."""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError
from mmrank.files import user_cache_dir, write_atomic

if TYPE_CHECKING:
    import pyarrow.parquet as pq

BATCH_ROWS = 64
_READ_BUFFER = 1 << 20
CACHE_FOLDER = ".mmrank-pages"

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}\.parquet$")  # <split>-00000-of-00002.parquet
_CONVERTED = re.compile(r"^\d+\.parquet$")  # refs/convert/parquet: <split>/0000.parquet
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SIGNATURES = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def open_parquet(path: Path) -> pq.ParquetFile:
    """The parquet file at ``path``; InputError naming it when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Buffered, unprefetched column reads: one batch of images in memory, not a row group's.
        return pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise InputError(f"{path}: not a readable parquet file ({error}).") from None


def column_names(path: Path) -> list[str]:
    return list(open_parquet(path).schema_arrow.names)


def row_count(path: Path) -> int:
    return open_parquet(path).metadata.num_rows


def check_columns(path: Path, needed: Sequence[str], found: Sequence[str] | None = None) -> None:
    """InputError naming the file, the missing columns and the columns found (``found``: the
    file's columns when the caller has them already)."""
    found = column_names(path) if found is None else list(found)
    missing = [column for column in needed if column not in found]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}; "
            f"columns found: {', '.join(found) or 'none'}."
        )


def iter_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (0-based row number, {column: value}), reading :data:`BATCH_ROWS` rows at a time."""
    parquet = open_parquet(path)
    check_columns(path, columns, parquet.schema_arrow.names)
    import pyarrow as pa

    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(columns)):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: cannot read the rows from row {row} on ({error}).") from None


def split_of(path: Path) -> str | None:
    """The split a Hugging Face parquet file belongs to by its name, or None."""
    shard = _SHARD.match(path.name)
    if shard:
        return shard["split"]
    return path.parent.name if _CONVERTED.match(path.name) else None


def split_files(files: Sequence[Path], split: str, where: Path) -> list[Path]:
    """The files of ``split`` among ``files`` (``<split>-00000-of-00001.parquet`` or
    ``<split>/0000.parquet``); when no file is named after a split, all of them."""
    splits = {path: split_of(path) for path in files}
    if not any(splits.values()):
        return sorted(files)
    chosen = sorted(path for path, name in splits.items() if name == split)
    if not chosen:
        found = ", ".join(sorted({name for name in splits.values() if name}))
        raise InputError(f"{where} has no parquet files for split {split!r}; splits found: {found}.")
    return chosen


def image_suffix(data: bytes) -> str:
    """The file extension of encoded image bytes, by their signature (``.img`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _SIGNATURES if data.startswith(magic)), ".img")


class PageImages:
    """Page images a dataset ships as bytes, written once as files.

    A file is named after its item id and a hash of its bytes, written atomically and never
    rewritten, so a second load reuses it. The folder is ``folder`` when given, else
    ``<root>/.mmrank-pages`` when writable, else a folder under ``$XDG_CACHE_HOME/mmrank`` (by
    default ``~/.cache/mmrank``); it is created only when a first image is stored.
    """

    def __init__(self, root: Path, folder: str | Path | None = None) -> None:
        self._root = root
        self._requested = None if folder is None else Path(folder).expanduser().absolute()
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = self._choose_folder()
        return self._folder

    def store(self, data: bytes, name: str) -> Path:
        """The file holding ``data`` (written now unless an earlier load did)."""
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        target = self.folder / f"{_safe_name(name)}-{digest}{image_suffix(data)}"
        if not target.is_file():
            write_atomic(target, data, sync=False)  # a cache: rebuilt if lost
        return target

    def _choose_folder(self) -> Path:
        if self._requested is not None:
            if not _writable(self._requested):
                raise InputError(f"image_cache {str(self._requested)!r} is not a writable folder.")
            return self._requested
        beside = self._root / CACHE_FOLDER
        if _writable(beside):
            return beside
        fallback = _user_cache(self._root)
        if not _writable(fallback):
            raise InputError(
                f"Cannot write page images into {beside} nor {fallback}: "
                "name a writable folder with the image_cache option."
            )
        return fallback


def _user_cache(root: Path) -> Path:
    key = hashlib.blake2b(str(root.resolve()).encode(), digest_size=4).hexdigest()
    return user_cache_dir() / "pages" / f"{_safe_name(root.resolve().name)}-{key}"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _safe_name(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._")[:80] or "page"
