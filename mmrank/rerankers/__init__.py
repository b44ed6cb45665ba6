"""Rerankers behind one interface, created by type name from pipeline configs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from mmrank.errors import InputError
from mmrank.rerankers.base import Reranker

# type name -> "module:Class"; modules are imported only when a pipeline asks for them.
RERANKERS: dict[str, str] = {
    "superglobal": "mmrank.rerankers.superglobal:SuperGlobalReranker",
    "alpha-qe": "mmrank.rerankers.expansion:AlphaQueryExpansion",
    "alpha-dba": "mmrank.rerankers.expansion:AlphaDatabaseAugmentation",
    "pointwise": "mmrank.rerankers.pointwise:PointwiseReranker",
    "reasoning": "mmrank.rerankers.reasoning:ReasoningReranker",
    "sqaf": "mmrank.rerankers.sqaf:CaptionFusion",
    "grid": "mmrank.rerankers.grid:GridReranker",
}


def create_reranker(config: Mapping[str, Any], *, mllm: str | None = None, mllm_url: str | None = None) -> Reranker:
    """Build a reranker from ``{"type": name, **options}``. ``mllm`` / ``mllm_url``, when given,
    replace the model (and server) of rerankers that ask a vision-language model."""
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in RERANKERS:
        known = ", ".join(sorted(RERANKERS)) or "none in this version"
        raise InputError(f"Unknown reranker type {kind!r}; known types: {known}.")
    module, _, class_name = RERANKERS[kind].partition(":")
    reranker_class = getattr(import_module(module), class_name)
    if getattr(reranker_class, "uses_mllm", False):
        if mllm is not None:
            options["model"] = mllm
        if mllm_url is not None:
            options["url"] = mllm_url
    try:
        inspect.signature(reranker_class).bind(**options)
    except TypeError as error:
        raise InputError(f"Bad options for reranker type {kind!r}: {error}.") from None
    return reranker_class(**options)


__all__ = ["RERANKERS", "Reranker", "create_reranker"]
