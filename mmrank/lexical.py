"""BM25 over item texts (bm25s), saved without pickles: bm25s's JSON + .npy files, an id list and the
settings texts were tokenised with (so queries are tokenised the same way)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mmrank.errors import CollectionError, InputError
from mmrank.text import normalize_text

_IDS_FILE = "ids.json"
_SETTINGS_FILE = "settings.json"
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


@dataclass(frozen=True)
class BM25Settings:
    """How texts are tokenised and scored: words are lowercased, English stop words dropped, and,
    with ``stemmer`` (a Snowball language such as ``english``, through PyStemmer), stemmed;
    ``k1`` and ``b`` are BM25's term-frequency saturation and length normalisation."""

    stemmer: str | None = "english"
    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        if not self.k1 > 0 or not 0 <= self.b <= 1:
            raise InputError(f"BM25 needs k1 > 0 and 0 <= b <= 1; got k1={self.k1}, b={self.b}.")
        if self.stemmer is not None:
            _stemmer(self.stemmer)  # an unknown language fails now, not at the first search

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Texts (items' and queries' alike) normalised, then split into words as described above."""
        return _bm25s().tokenize([normalize_text(text) for text in texts], stopwords="en",
                                 stemmer=_stemmer(self.stemmer) if self.stemmer else None,
                                 return_ids=False, show_progress=False)


LEGACY_SETTINGS = BM25Settings(stemmer=None)  # indexes saved before settings were: no stemming


@lru_cache(maxsize=4)
def _stemmer(language: str):
    import Stemmer

    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise InputError(f"No Snowball stemmer for {language!r}; languages: "
                         f"{', '.join(Stemmer.algorithms())}.") from None


class BM25Index:
    """A BM25 index whose results are item ids. Texts that hold no searchable word (only stopwords,
    numbers or one-letter words) give an index that finds nothing, rather than an error."""

    def __init__(self, ids: list[str], retriever, settings: BM25Settings = BM25Settings()) -> None:
        self._ids = np.asarray(ids, dtype=object)
        self._retriever = retriever
        self.settings = settings
        self._rows: dict[str, int] | None = None  # item id -> row, built on first restricted search

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], settings: BM25Settings = BM25Settings()) -> BM25Index:
        tokens = settings.tokenize(texts)
        if not any(tokens):
            return cls(list(ids), None, settings)
        retriever = _bm25s().BM25(k1=settings.k1, b=settings.b)
        retriever.index(tokens, show_progress=False)
        return cls(list(ids), retriever, settings)

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The best ``k`` items of each query, best first; items sharing no term are left out."""
        if not len(self._ids) or k <= 0:
            return [[] for _ in queries]
        return [self._retrieve(tokens, min(k, len(self._ids))) for tokens in self.settings.tokenize(queries)]

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
        return self._retrieve(self.settings.tokenize([query])[0], min(k, len(rows)), mask)

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
            (temporary / _SETTINGS_FILE).write_text(json.dumps(asdict(self.settings)), encoding="utf-8")
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
            settings_file = folder / _SETTINGS_FILE
            settings = (BM25Settings(**json.loads(settings_file.read_text(encoding="utf-8")))
                        if settings_file.is_file() else LEGACY_SETTINGS)
            no_terms = (folder / _NO_TERMS_FILE).is_file()
            retriever = None if no_terms else bm25s.BM25.load(str(folder), allow_pickle=False)
        except (OSError, ValueError, TypeError) as error:
            raise CollectionError(f"{folder}: BM25 index missing or damaged ({error}).") from error
        return cls(ids, retriever, settings)
