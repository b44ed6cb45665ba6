"""Rerankers behind one interface, created by type name from pipeline configs."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from mmrank.errors import InputError
from mmrank.rerankers.base import Reranker

# type name -> "module:Class"; modules are imported only when a pipeline asks for them.
RERANKERS: dict[str, str] = {}


def create_reranker(config: Mapping[str, Any]) -> Reranker:
    """Build a reranker from ``{"type": name, **options}``."""
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in RERANKERS:
        known = ", ".join(sorted(RERANKERS)) or "none in this version"
        raise InputError(f"Unknown reranker type {kind!r}; known types: {known}.")
    module, _, class_name = RERANKERS[kind].partition(":")
    return getattr(import_module(module), class_name)(**options)


__all__ = ["RERANKERS", "Reranker", "create_reranker"]
