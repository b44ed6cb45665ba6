"""A persistent cache of MLLM-written captions, so re-running an evaluation asks the model nothing.

Entries live in one SQLite file, keyed by a hash of everything that decides the answer: the
image's content, the text, the model, the prompt and the decoding settings.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError
from mmrank.files import sha256_file, user_cache_dir
from mmrank.images import open_rgb

if TYPE_CHECKING:
    from mmrank.types import ImageInput

_SCHEMA = "CREATE TABLE IF NOT EXISTS captions (key TEXT PRIMARY KEY, caption TEXT NOT NULL)"


def default_caption_cache() -> Path:
    """``$XDG_CACHE_HOME/mmrank/captions.sqlite`` (by default under ``~/.cache``)."""
    return user_cache_dir() / "captions.sqlite"


def image_digest(image: ImageInput) -> str:
    """A hash of the picture's content: a file's bytes, or a PIL image's mode, size and pixels (so
    the same picture has the same digest wherever it is stored)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()
    try:
        return sha256_file(image)
    except OSError as error:
        open_rgb(image)  # an InputError naming the file, when it is not a readable image
        raise InputError(f"Cannot read image {str(image)!r}: {error}") from error


def caption_key(image: ImageInput, text: str, **settings: Any) -> str:
    """The cache key of a caption of ``image`` asked with ``text`` under ``settings`` (model, prompt,
    decoding options: anything that changes the answer)."""
    fields = {"image": image_digest(image), "text": text, **settings}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class CaptionCache:
    """Captions by key in a SQLite file (created on first write; ``path=None`` keeps them in memory
    for this process only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self._connection: sqlite3.Connection | None = None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The cached captions among ``keys``."""
        if not keys or (self._connection is None and self.path is not None and not self.path.is_file()):
            return {}
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._db().execute(f"SELECT key, caption FROM captions WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, captions: dict[str, str]) -> None:
        """Store captions (one transaction; an existing key is overwritten)."""
        if captions:
            with self._db() as connection:
                connection.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?)", captions.items())

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            target = ":memory:"
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise InputError(f"Cannot create the caption cache folder {self.path.parent}: {error}") from error
                target = str(self.path)
            try:
                self._connection = sqlite3.connect(target, timeout=30)
                self._connection.execute(_SCHEMA)
            except sqlite3.DatabaseError as error:
                raise InputError(f"{target}: not a usable caption cache ({error}); delete it or name "
                                 "another file with the cache option.") from error
        return self._connection
