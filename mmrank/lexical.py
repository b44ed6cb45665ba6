"""BM25 over item texts (bm25s), saved without pickles: bm25s's JSON + .npy files and an id list."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmrank.errors import CollectionError

_IDS_FILE = "ids.json"
_NO_TERMS_FILE = "no-terms"  # marks an index over texts without a single searchable word
_BM25S_FILES = ("params.index.json", "vocab.index.json", "data.csc.index.npy", "indices.csc.index.npy",
                "indptr.csc.index.npy")


def verify_saved_bm25(folder: str | Path) -> None:
    """Check a folder written by :meth:`BM25Index.save` without loading it: its id list reads, and
    bm25s's files are all there. CollectionError says what is wrong."""
    folder = Path(folder)
    try:
        ids = json.loads((folder / _IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CollectionError(f"{folder}: BM25 index missing or damaged ({error}).") from error
    missing = [] if (folder / _NO_TERMS_FILE).is_file() else [n for n in _BM25S_FILES if not (folder / n).is_file()]
    if not isinstance(ids, list) or missing:
        raise CollectionError(f"{folder}: BM25 index damaged ({'missing ' + ', '.join(missing) if missing else 'bad id list'}).")


def _bm25s():
    """The bm25s module, its logger quieted: bm25s sets it to DEBUG, so its "Building index" lines
    reach the terminal as soon as any library has configured the root logger."""
    import bm25s

    quiet = logging.getLogger("bm25s")
    if quiet.level == logging.DEBUG:
        quiet.setLevel(logging.WARNING)
    return bm25s


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    bm25s = _bm25s()
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class BM25Index:
    """A BM25 index whose results are item ids. Texts that hold no searchable word (only stopwords,
    numbers or one-letter words) give an index that finds nothing, rather than an error."""

    def __init__(self, ids: list[str], retriever) -> None:
        self._ids = np.asarray(ids, dtype=object)
        self._retriever = retriever
        self._rows: dict[str, int] | None = None  # item id -> row, built on first restricted search

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str]) -> BM25Index:
        tokens = _tokenize(texts)
        if not any(tokens):
            return cls(list(ids), None)
        retriever = _bm25s().BM25()
        retriever.index(tokens, show_progress=False)
        return cls(list(ids), retriever)

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The best ``k`` items of each query, best first; items sharing no term are left out."""
        if not len(self._ids) or k <= 0:
            return [[] for _ in queries]
        return [self._retrieve(tokens, min(k, len(self._ids))) for tokens in _tokenize(queries)]

    def search_within(self, query: str, ids: Iterable[str], k: int) -> list[tuple[str, float]]:
        """The best ``k`` of the items ``ids`` for one query, as :meth:`search` ranks them (the
        other items are masked out of the scoring, not filtered after it)."""
        if self._rows is None:
            self._rows = {item_id: row for row, item_id in enumerate(self._ids.tolist())}
        rows = sorted({self._rows[i] for i in ids if i in self._rows})
        if not rows or k <= 0:
            return []
        mask = np.zeros(len(self._ids), dtype=np.float32)
        mask[rows] = 1.0
        return self._retrieve(_tokenize([query])[0], min(k, len(rows)), mask)

    def _retrieve(self, tokens: list[str], k: int, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        if not tokens or self._retriever is None:
            return []
        rows, scores = self._retriever.retrieve([tokens], k=k, show_progress=False, n_threads=1, weight_mask=mask)
        keep = scores[0] > 0
        return list(zip(self._ids[rows[0][keep]].tolist(), scores[0][keep].astype(float).tolist()))

    def save(self, folder: Path) -> None:
        """Write the index into a new ``folder`` atomically (aside, then renamed)."""
        temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            if self._retriever is None:
                (temporary / _NO_TERMS_FILE).touch()
            else:
                self._retriever.save(str(temporary))
            (temporary / _IDS_FILE).write_text(json.dumps(self._ids.tolist()), encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(temporary, folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        bm25s = _bm25s()
        try:
            ids = json.loads((folder / _IDS_FILE).read_text(encoding="utf-8"))
            no_terms = (folder / _NO_TERMS_FILE).is_file()
            retriever = None if no_terms else bm25s.BM25.load(str(folder), allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CollectionError(f"{folder}: BM25 index missing or damaged ({error}).") from error
        return cls(ids, retriever)
