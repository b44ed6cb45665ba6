"""The patch vectors of a late-interaction space, in append-only files read back a page at a time.

A late-interaction model (ColPali, ColQwen) gives each page about a thousand vectors: 50,000 pages
hold 50 million. They live beside the database, one file per space and segment,
``patches/<space>.<segment>.<f16|f32>`` (row-major, no header); the database records where each
item's rows lie (segment, first row, count) in the same transaction as the item itself.

- **Writing** appends at the end of the file and flushes it to disk before that transaction
  commits, so a build that is killed leaves at most rows nobody points to at the end of a file
  (counted by :meth:`PatchFiles.rows` minus the live rows, and dropped by compaction).
- **Reading** takes each page's rows with one ``pread``. The files are not memory-mapped on
  purpose: the kernel counts every mapped page a search touches as the process's resident memory
  until it is under pressure, so a search over 12 GB of patches would seem to hold 12 GB; with
  ``pread`` a search holds only the pages it is scoring.
- A file opened once stays readable through its descriptor even when compaction has replaced it,
  so a search that began on the old layout finishes on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mmrank.errors import CollectionError, InputError

FOLDER = "patches"
DTYPES = {"float16": "f16", "float32": "f32"}
DEFAULT_DTYPE = "float16"
_NAME = re.compile(r"(?P<space>[A-Za-z0-9_-]+)\.(?P<segment>\d+)\.(?P<suffix>f16|f32)")


def check_dtype(dtype: str) -> str:
    """``dtype`` when patch vectors can be stored in it (float16 or float32), else InputError."""
    if dtype not in DTYPES:
        raise InputError(f"Patch vectors are stored as {' or '.join(DTYPES)}; got {dtype!r}.")
    return dtype


class PatchFiles:
    """The patch files of one ``space`` of ``dim``-dimensional vectors stored as ``dtype``, in
    ``folder`` (created on the first append). Rows are addressed by (segment, row); new rows go
    to the end of the highest segment."""

    def __init__(self, folder: Path, space: str, dim: int, dtype: str = DEFAULT_DTYPE) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", space):
            raise InputError(f"A space name is letters, digits, '-' and '_'; got {space!r}.")
        self.folder, self.space, self.dim = folder, space, int(dim)
        self.dtype = np.dtype(check_dtype(dtype))
        self.row_bytes = self.dim * self.dtype.itemsize
        self._readers: dict[int, int] = {}  # segment -> open read-only descriptor

    def path(self, segment: int) -> Path:
        return self.folder / f"{self.space}.{segment}.{DTYPES[self.dtype.name]}"

    def segments(self) -> list[int]:
        """The segments on disk, in order."""
        if not self.folder.is_dir():
            return []
        found = (_NAME.fullmatch(path.name) for path in self.folder.iterdir())
        return sorted(int(match["segment"]) for match in found
                      if match and match["space"] == self.space and match["suffix"] == DTYPES[self.dtype.name])

    def rows(self, segment: int) -> int:
        """How many rows the file of ``segment`` holds (0 when it does not exist)."""
        path = self.path(segment)
        return path.stat().st_size // self.row_bytes if path.is_file() else 0

    def bytes_on_disk(self) -> int:
        return sum(self.path(segment).stat().st_size for segment in self.segments())

    # ----------------------------------------------------------------- writing
    def append(self, matrix: np.ndarray, segment: int | None = None) -> tuple[int, int]:
        """Write ``matrix`` ((n, dim), any float type: stored as this space's dtype) at the end of
        ``segment`` (by default the highest, or 0), flushed to disk; returns (segment, first row).
        Bytes past the last whole row (a write cut short) are overwritten."""
        matrix = np.ascontiguousarray(matrix, dtype=self.dtype)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise InputError(f"Patch vectors of shape {matrix.shape} for a space of {self.dim} dimensions.")
        if segment is None:
            segment = (self.segments() or [0])[-1]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(segment)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            start = os.fstat(descriptor).st_size // self.row_bytes
            data = memoryview(matrix.reshape(-1).view(np.uint8))
            written = 0
            while written < len(data):
                written += os.pwrite(descriptor, data[written:], start * self.row_bytes + written)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return segment, start

    # ----------------------------------------------------------------- reading
    def read(self, locations: np.ndarray, dtype: np.dtype | str | None = np.float32) -> np.ndarray:
        """The rows of every (segment, start, count) in ``locations`` (shape (n, 3)), one page after
        the other, as one (sum of counts, dim) matrix of ``dtype`` (None: as stored)."""
        locations = np.asarray(locations, dtype=np.int64).reshape(-1, 3)
        total = int(locations[:, 2].sum())
        out = np.empty((total, self.dim), dtype=self.dtype)
        flat = memoryview(out.reshape(-1).view(np.uint8))
        at = 0
        for segment, start, count in locations.tolist():  # straight into the array: no copy on the way
            size = count * self.row_bytes
            if os.preadv(self._reader(segment), [flat[at:at + size]], start * self.row_bytes) != size:
                raise CollectionError(
                    f"{self.path(segment)} is truncated: rows {start}..{start + count - 1} are not all there. "
                    "The collection's patch vectors are damaged: index its files again into a new folder.")
            at += size
        return out if dtype is None or out.dtype == np.dtype(dtype) else out.astype(dtype)

    def _reader(self, segment: int) -> int:
        if segment not in self._readers:
            try:
                self._readers[segment] = os.open(self.path(segment), os.O_RDONLY)
            except FileNotFoundError:
                raise CollectionError(f"{self.path(segment)} is missing: the collection's patch vectors are "
                                      "damaged; index its files again into a new folder.") from None
        return self._readers[segment]

    def forget_readers(self) -> None:
        """Close the open descriptors (the next read opens the files again, e.g. after compaction)."""
        for descriptor in self._readers.values():
            os.close(descriptor)
        self._readers.clear()

    def close(self) -> None:
        self.forget_readers()

    def __del__(self) -> None:  # descriptors are plain ints: close them with the object
        try:
            self.forget_readers()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
