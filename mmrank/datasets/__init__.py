"""Benchmark loaders: ``load_dataset(kind, root, **options)`` returns a :class:`RetrievalDataset`.

Each loader lives in its own module, imported only when its kind is asked for.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrank.datasets.base import RetrievalDataset
from mmrank.errors import InputError

__all__ = ["RetrievalDataset", "load_dataset", "known_kinds"]

# kind -> (module, function); modules are imported lazily by load_dataset.
_LOADERS: dict[str, tuple[str, str]] = {
    "beir": ("mmrank.datasets.beir", "load_beir"),
    "mmdocir": ("mmrank.datasets.mmdocir", "load_mmdocir"),
    "vidore": ("mmrank.datasets.vidore", "load_vidore"),
    "roxford5k": ("mmrank.datasets.revisited", "load_roxford5k"),
    "rparis6k": ("mmrank.datasets.revisited", "load_rparis6k"),
    "cirr": ("mmrank.datasets.cirr", "load_cirr"),
    "circo": ("mmrank.datasets.circo", "load_circo"),
    "fashioniq": ("mmrank.datasets.fashioniq", "load_fashioniq"),
    "pdfqa": ("mmrank.datasets.pdfqa", "load_pdfqa"),
}


def known_kinds() -> list[str]:
    """The dataset kinds :func:`load_dataset` understands."""
    return sorted(_LOADERS)


def load_dataset(kind: str, root: str | Path, **options: Any) -> RetrievalDataset:
    """Load the benchmark of the given kind (e.g. ``"beir"``) from the folder ``root``.

    ``options`` go to the loader (e.g. ``split="dev"`` for BEIR).
    """
    loader = _loader(kind)
    try:
        inspect.signature(loader).bind(root, **options)
    except TypeError as error:
        raise InputError(f"Bad options for dataset kind {kind!r}: {error}.") from None
    return loader(root, **options)


def _loader(kind: str) -> Callable[..., RetrievalDataset]:
    key = kind.strip().lower()
    if key not in _LOADERS:
        known = ", ".join(known_kinds())
        raise InputError(f"Unknown dataset kind {kind!r}: known kinds are {known}.")
    module, function = _LOADERS[key]
    return getattr(importlib.import_module(module), function)
