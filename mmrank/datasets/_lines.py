"""Reading line-based annotation files (JSON Lines, TSV) with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmrank.errors import InputError


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for the non-blank lines of a UTF-8 file, streaming."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{path}:{lineno}: not valid UTF-8 ({error.reason}).") from None
            if line.strip():
                yield lineno, line.rstrip("\r\n")


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each line of a JSON Lines file; anything but a JSON object
    on a line is an error naming the file and line."""
    for lineno, line in numbered_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{lineno}: not valid JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}.")
        yield lineno, record
