"""Reading a ranking out of a model's free text, robustly.

Two formats share one core: MM-R5's ``<think>...</think><answer>[3, 1, 2]</answer>`` and SQUARE's
``{"ranking": [3, 1, 2]}``. Ids are the 1-based labels the model was shown ("Image 3", tile 3);
positions are 0-based indices into the candidates in their incoming order. Whatever the text, the
result is a full order of the candidates: ids in range are kept once (first mention wins), the
ones the model left out follow in their incoming order, and when nothing usable is found the
incoming order stands and ``failure`` says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mmrank.errors import InputError

_ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
# A whole non-negative integer: not part of a decimal number, not after a minus sign.
_INTEGER = re.compile(r"(?<![0-9.\-])[0-9]+(?!\.[0-9]|[0-9])")
# "ranking": [ ... ]  (either quote; the list may be cut off at the end of the text)
_RANKING_LIST = re.compile(r"""(?:\{\s*)?["']ranking["']\s*:\s*\[([^\[\]]*)(?:\]\s*\}?|$)""", re.IGNORECASE)
# A bare list of numbers: [3, 1, 2] (numbers may be quoted; the list may be cut off at the end).
_BARE_LIST = re.compile(r"""\[([0-9\s,'"]*)(?:\]|$)""")
# The code fence that opens right before the ranking and the one that closes right after it.
_FENCE_BEFORE = re.compile(r"```[a-zA-Z]*\s*$")
_FENCE_AFTER = re.compile(r"^\s*```")


@dataclass(frozen=True)
class ParsedRanking:
    """What a model's ranking output amounted to.

    ``order``: 0-based positions of the candidates, best first (always a permutation of
    ``range(count)``). ``parsed_ids``: the 1-based ids the model gave, in range and without
    repeats, in its order. ``complete``: the model ranked every candidate. ``failure``: why no
    ranking could be read (then ``order`` is the incoming order), else None. ``reasoning``: what
    the model wrote to explain itself.
    """

    order: tuple[int, ...]
    parsed_ids: tuple[int, ...]
    complete: bool
    failure: str | None
    reasoning: str


def usable_ids(ids: Iterable[int], count: int) -> list[int]:
    """The 1-based ids from 1 to ``count``, each once (first mention wins), in the given order."""
    seen: dict[int, None] = {}
    for identifier in ids:
        if 1 <= identifier <= count and identifier not in seen:
            seen[identifier] = None
    return list(seen)


def complete_order(ids: Iterable[int], count: int) -> list[int]:
    """A full order of ``count`` candidates from a model's 1-based ``ids``: the usable ids (see
    :func:`usable_ids`), then the missing ones in ascending (incoming) order, as 0-based
    positions."""
    given = usable_ids(ids, count)
    missing = sorted(set(range(1, count + 1)) - set(given))
    return [identifier - 1 for identifier in given + missing]


def parse_answer_ranking(text: str, count: int) -> ParsedRanking:
    """The ranking in the last ``<answer>...</answer>`` block of MM-R5-style output.

    Tolerates a missing closing tag at the end (cut-off output), any case and spacing in the tags,
    brackets or none, and ids written as ``3``, ``[3]`` or ``Image 3``, separated by commas or
    spaces. ``reasoning`` is the text of the last ``<think>`` block, else the text before the
    answer.
    """
    _check_count(count)
    opening = _last_match(_ANSWER_OPEN, text)
    if opening is None:
        return _fallback(count, "no <answer> block in the output", _reasoning(text, len(text)))
    closing = _ANSWER_CLOSE.search(text, opening.end())
    block = text[opening.end():closing.start() if closing else len(text)]
    reasoning = _reasoning(text, opening.start())
    return _ranked(_integers(block), count, reasoning, f"no id from 1 to {count} in the <answer> block")


def parse_json_ranking(text: str, count: int) -> ParsedRanking:
    """The ranking in the last ``{"ranking": [...]}`` object of the text, else in its last bare
    list of numbers (``[3, 1, 2]``).

    Tolerates code fences, text around the JSON, single quotes, quoted numbers and a list cut off at
    the end. When the caller primed the answer with an assistant prefix (``{"ranking": [``), pass
    the prefix and the generated text together. ``reasoning`` is the text around the ranking.
    """
    _check_count(count)
    found = _last_match(_RANKING_LIST, text) or _last_match(_BARE_LIST, text, lambda match: _has_digit(match[1]))
    if found is None:
        return _fallback(count, "no ranking list in the output", _outside(text, len(text), len(text)))
    reasoning = _outside(text, found.start(), found.end())
    return _ranked(_integers(found[1]), count, reasoning, f"no number from 1 to {count} in the ranking list")


def _ranked(ids: list[int], count: int, reasoning: str, empty_reason: str) -> ParsedRanking:
    given = usable_ids(ids, count)
    if not given:
        return _fallback(count, empty_reason, reasoning)
    return ParsedRanking(tuple(complete_order(given, count)), tuple(given), len(given) == count, None, reasoning)


def _fallback(count: int, failure: str, reasoning: str) -> ParsedRanking:
    return ParsedRanking(tuple(range(count)), (), False, failure, reasoning)


def _check_count(count: int) -> None:
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}.")


def _last_match(pattern: re.Pattern[str], text: str,
                accept: Callable[[re.Match[str]], bool] = lambda match: True) -> re.Match[str] | None:
    last = None
    for match in pattern.finditer(text):
        if accept(match):
            last = match
    return last


def _has_digit(text: str) -> bool:
    return any("0" <= character <= "9" for character in text)


def _integers(text: str) -> list[int]:
    """The whole numbers in the text (those of more than 18 digits, never an id, left out)."""
    digits = (number.lstrip("0") or "0" for number in _INTEGER.findall(text))
    return [int(number) for number in digits if len(number) <= 18]


def _reasoning(text: str, answer_start: int) -> str:
    """The text of the last ``<think>`` block (up to its closing tag, the answer or the end),
    else the text before the answer."""
    opening = _last_match(_THINK_OPEN, text)
    if opening is None:
        return text[:answer_start].strip()
    closing = _THINK_CLOSE.search(text, opening.end())
    end = closing.start() if closing else (answer_start if answer_start >= opening.end() else len(text))
    return text[opening.end():end].strip()


def _outside(text: str, start: int, end: int) -> str:
    """The text before and after ``[start, end)``, less the code fence around it, joined by a space."""
    pieces = (_FENCE_BEFORE.sub("", text[:start]).strip(), _FENCE_AFTER.sub("", text[end:]).strip())
    return " ".join(piece for piece in pieces if piece)
