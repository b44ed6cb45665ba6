"""Text as the search paths see it: PDF text layers normalised, pages split into passages, and the
snippet of a page that best matches a query.

Normalisation (:func:`normalize_text`) is applied to page text when a PDF is read, and to queries
before BM25 tokenises them, so both sides agree: Unicode NFKC (the ligatures ``ﬁ``/``ﬂ`` of many
text layers become ``fi``/``fl``, full-width and compatibility forms their plain letters), words
broken by a hyphen at a line end joined again, soft hyphens dropped, and every run of whitespace
(line ends included) one space.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

_LINE_END_HYPHEN = re.compile(r"(\w)[-\u2010\u00ad][ \t]*\r?\n\s*([a-z])")
_LINE_END_DASH = re.compile(r"(\w)([-\u2010])[ \t]*\r?\n\s*(\S)")
_SOFT_HYPHEN = "\u00ad"
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """``text`` in NFKC with line-end hyphenation joined and whitespace collapsed (see the module
    docstring). A hyphen at a line end before a capital or a digit (``Hewlett-\\nPackard``) is kept,
    and the line end dropped."""
    text = unicodedata.normalize("NFKC", text)
    text = _LINE_END_HYPHEN.sub(r"\1\2", text)
    text = _LINE_END_DASH.sub(r"\1\2\3", text).replace(_SOFT_HYPHEN, "")
    return _SPACE.sub(" ", text).strip()


def split_passages(text: str, max_words: int, overlap: int) -> list[str]:
    """``text`` as passages of at most ``max_words`` words (split on whitespace, joined by one
    space), each starting ``max_words - overlap`` words after the previous one, so neighbours share
    ``overlap`` words; the last is the first that reaches the text's end (it may be shorter). A text
    of at most ``max_words`` words is one passage, an empty one none. InputError unless
    ``max_words >= 1`` and ``0 <= overlap < max_words``."""
    check_passage_split(max_words, overlap)
    tokens = (text or "").split()
    passages, start = [], 0
    while tokens:
        passages.append(" ".join(tokens[start:start + max_words]))
        if start + max_words >= len(tokens):
            break
        start += max_words - overlap
    return passages


@dataclass(frozen=True)
class PassageSplit:
    """How a text space splits texts into passages: ``words`` per passage, ``overlap`` shared with
    the next, and at most ``limit`` passages from the start of a text (None: all of them)."""

    words: int
    overlap: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        check_passage_split(self.words, self.overlap)
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            from mmrank.errors import InputError

            raise InputError(f"A passage limit must be at least 1 (or none); got {self.limit!r}.")

    def split(self, text: str) -> list[str]:
        """The text's passages (see :func:`split_passages`), the first ``limit`` of them."""
        return split_passages(text, self.words, self.overlap)[:self.limit]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PassageSplit:
        return cls(int(data["words"]), int(data.get("overlap", 0)), data.get("limit"))


def check_passage_split(max_words: int, overlap: int) -> None:
    """InputError unless passages of ``max_words`` words sharing ``overlap`` words move forward."""
    from mmrank.errors import InputError

    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise InputError(f"max_words must be at least 1, got {max_words!r}.")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_words:
        raise InputError(f"overlap must be at least 0 and less than max_words ({max_words}), so that each "
                         f"passage starts after the previous one; got {overlap!r}.")


def query_words(text: str) -> set[str]:
    """The lowercased words of a query or passage, for matching snippets."""
    return _word_set(normalize_text(text))


def _word_set(normalized: str) -> set[str]:
    return {word.lower() for word in _WORD.findall(normalized) if len(word) > 1}


@lru_cache(maxsize=4096)
def _passages(text: str, words: int, overlap: int) -> tuple[tuple[str, frozenset[str]], ...]:
    """The passages of a text and the words of each, kept for the texts shown most (a served
    collection's popular pages are cut into passages once)."""
    passages = split_passages(normalize_text(text), words, overlap) or [""]
    return tuple((passage, frozenset(_word_set(passage))) for passage in passages)  # passages are normalized


def snippet(text: str, query: str, *, words: int = 60, overlap: int = 20, width: int = 280) -> str:
    """The part of ``text`` that best matches ``query``: the passage of ``words`` words sharing the
    most distinct words with the query (the first on ties), cut to at most ``width`` characters
    from a little before its first match, at word boundaries, with ``…`` where it was cut."""
    wanted = query_words(query)
    best = max(_passages(text, words, overlap), key=lambda passage: len(wanted & passage[1]))[0]
    if len(best) <= width:
        return best
    first = next((match.start() for match in _WORD.finditer(best) if match.group().lower() in wanted), 0)
    start = best.rfind(" ", 0, max(0, first - width // 4)) + 1
    end = best.rfind(" ", start, start + width + 1)
    end = len(best) if start + width >= len(best) else (end if end > start else start + width)
    return ("… " if start else "") + best[start:end].strip() + (" …" if end < len(best) else "")
