"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def user_cache_dir() -> Path:
    """mmrank's folder in the user's cache: ``$XDG_CACHE_HOME/mmrank``, by default ``~/.cache/mmrank``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmrank"


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``; with
    ``sync``, the bytes reach the disk before the rename (skip it for caches that can be rebuilt)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any, **options: Any) -> None:
    """:func:`write_atomic` of ``data`` as UTF-8 JSON; ``options`` go to :func:`json.dumps` (e.g.
    ``indent``)."""
    write_atomic(path, json.dumps(data, **options).encode("utf-8"))
