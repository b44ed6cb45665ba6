"""Files on disk: writing them so that a crash never leaves a half-written one, hashing them, and
mmrank's folder in the user's cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO


def user_cache_dir() -> Path:
    """mmrank's folder in the user's cache: ``$XDG_CACHE_HOME/mmrank``, by default ``~/.cache/mmrank``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmrank"


def temporary_path(folder: Path, suffix: str = ".tmp", prefix: str = ".") -> Path:
    """A new, empty file in ``folder`` with a unique hidden name, to be written and renamed over
    its destination (a rename within one folder is atomic)."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.close(handle)
    return Path(name)


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``; with
    ``sync``, the bytes reach the disk before the rename (skip it for caches that can be rebuilt)."""
    _replace(path, lambda file: file.write(data), sync)


def write_lines_atomic(path: Path, lines: Iterable[str], *, sync: bool = True) -> None:
    """:func:`write_atomic` of ``lines`` as UTF-8, written as they come (for files too large to
    hold in memory at once)."""
    _replace(path, lambda file: file.writelines(line.encode("utf-8") for line in lines), sync)


def _replace(path: Path, write: Callable[[BinaryIO], object], sync: bool) -> None:
    temporary = temporary_path(path.parent, prefix=f".{path.name}.")
    try:
        with open(temporary, "wb") as file:
            write(file)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, **options: Any) -> None:
    """:func:`write_atomic` of ``data`` as UTF-8 JSON; ``options`` go to :func:`json.dumps` (e.g.
    ``indent``)."""
    write_atomic(path, json.dumps(data, **options).encode("utf-8"))


def fsync_file(path: Path) -> None:
    """Make a file's written bytes durable."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make the renames and deletions inside ``folder`` durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read ``block`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()
