"""A collection's ``manifest.json``: its format, its vector spaces and the encoder of each, and the
derived index files published for a database revision. Every change is written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmrank.errors import CollectionError, EncoderMismatchError
from mmrank.files import write_json_atomic
from mmrank.text import PassageSplit

FORMAT = "mmrank.collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes an index chosen by ``auto`` may occupy


@dataclass(frozen=True)
class Space:
    """A vector space of the collection: which encoder made its vectors, their dimension, for a
    text space whose texts are split into passages, how (``passages``), and for a late-interaction
    space (one vector per page patch, pages scored by MaxSim), the type its vectors are stored as
    in patch files (``multi_vector``: ``float16`` or ``float32``; see :mod:`mmrank.patch_files`)."""

    name: str
    encoder: str
    dim: int
    passages: PassageSplit | None = None
    multi_vector: str | None = None


def _space(name: str, record: dict[str, Any]) -> Space:
    passages = record.get("passages")
    return Space(name, record["encoder"], record["dim"], None if passages is None else PassageSplit.from_dict(passages),
                 record.get("multi_vector"))


class Manifest:
    """The manifest of the collection in ``folder``; use :meth:`create` or :meth:`read`."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data

    @classmethod
    def create(cls, folder: Path, index_factory: str = "Flat", memory_budget: int | None = None) -> Manifest:
        now = _now()
        manifest = cls(folder, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": now,
            "updated": now,
            "spaces": {},
            "index": {"factory": index_factory, "files": {}, "revision": -1,
                      **({"memory_budget": memory_budget} if memory_budget is not None else {})},
            "counts": {"items": 0, "files": 0, "vectors": {}},
        })
        manifest.write()
        return manifest

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest in ``folder``; CollectionError when it is corrupted or of another version."""
        return cls(folder, _read(folder))

    def refresh(self) -> None:
        """Read the manifest again from disk: another process may have bound a space or published
        indexes since (writers call this when they take the writer lock)."""
        self.data = _read(self.folder)

    def write(self) -> None:
        self.data["updated"] = _now()
        write_json_atomic(self.folder / MANIFEST, self.data, indent=2, sort_keys=True)

    # ----------------------------------------------------------------- vector spaces
    @property
    def spaces(self) -> dict[str, Space]:
        return {name: _space(name, record) for name, record in self.data["spaces"].items()}

    def space(self, name: str) -> Space:
        """The space ``name``; CollectionError when the collection has none (after re-reading the
        manifest, in case another process has just bound it)."""
        if name not in self.data["spaces"]:
            self.refresh()
        known = self.data["spaces"].get(name)
        if known is None:
            raise CollectionError(f"{self.folder}: the collection has no {name} vectors.")
        return _space(name, known)

    def bind_encoder(self, space: str, encoder: str, dim: int, passages: PassageSplit | None = None,
                     multi_vector: str | None = None) -> Space:
        """Record which encoder fills ``space`` (and, for a new space, how its texts are split into
        ``passages``, or the type its patch vectors are stored as, ``multi_vector``); refuse an
        encoder other than the recorded one. Returns the space as recorded: an existing space keeps
        its own passage split and storage type."""
        if space in self.data["spaces"]:
            self.check_encoder(space, encoder, dim)
        else:
            record: dict[str, Any] = {"encoder": encoder, "dim": int(dim)}
            if passages is not None:
                record["passages"] = passages.to_dict()
            if multi_vector is not None:
                record["multi_vector"] = multi_vector
            self.data["spaces"][space] = record
            self.write()
        return self.space(space)

    def check_encoder(self, space: str, encoder: str, dim: int | None = None) -> None:
        """Raise EncoderMismatchError unless ``encoder`` is the one ``space`` was built with."""
        known = self.space(space)
        if known.encoder != encoder or (dim is not None and known.dim != dim):
            raise EncoderMismatchError(
                f"{self.folder}: its {space} vectors were made by '{known.encoder}' "
                f"({known.dim} dimensions), but the query was encoded by '{encoder}'. "
                f"Use the same model, or build a new collection with '{encoder}'."
            )

    # ----------------------------------------------------------------- published indexes
    @property
    def index_factory(self) -> str:
        return self.data["index"]["factory"]

    @property
    def index_revision(self) -> int:
        """The database revision the published indexes were built at (-1: none)."""
        return self.data["index"]["revision"]

    @property
    def index_files(self) -> dict[str, str]:
        """Published index folders, relative to the collection: per vector space, and ``bm25``."""
        return dict(self.data["index"]["files"])

    @property
    def bm25(self) -> dict[str, Any]:
        """The BM25 settings the collection's lexical index is built with (``{}``: the defaults of
        :class:`mmrank.lexical.BM25Settings`)."""
        return dict(self.data["index"].get("bm25") or {})

    @property
    def memory_budget(self) -> int:
        """Bytes an ``auto`` index may occupy while searching (see :mod:`mmrank.index_plan`)."""
        return int(self.data["index"].get("memory_budget") or DEFAULT_MEMORY_BUDGET)

    def set_index_factory(self, factory: str, memory_budget: int | None = None) -> None:
        """Change the FAISS index type (and for ``auto``, its memory budget in bytes); the published
        indexes no longer count."""
        self.data["index"].update(factory=factory, revision=-1)
        if memory_budget is not None:
            self.data["index"]["memory_budget"] = memory_budget
        self.write()

    def publish(self, files: dict[str, str], revision: int, counts: dict[str, Any]) -> None:
        """Point at new index files built at ``revision``, with the counts they were built from."""
        self.data["index"].update(files=files, revision=revision)
        self.data["counts"] = counts
        self.write()


def _read(folder: Path) -> dict[str, Any]:
    """The manifest data in ``folder``, checked: CollectionError when it is corrupted or of another
    version."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CollectionError(f"{path}: corrupted manifest, not valid JSON ({error}).") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CollectionError(f"{path}: not an mmrank collection manifest.")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CollectionError(
            f"{path}: collection format version {version!r} is not supported by this mmrank "
            f"(it reads version {FORMAT_VERSION}).")
    for key in ("spaces", "index", "counts", "created"):
        if key not in data:
            raise CollectionError(f"{path}: corrupted manifest, '{key}' is missing.")
    return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
