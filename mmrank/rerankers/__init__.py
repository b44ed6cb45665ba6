"""Rerankers behind one interface, created by type name from pipeline configs.

Adding a reranker is one module (a :class:`BaseReranker` dataclass) plus one line in
:data:`RERANKERS`; code outside mmrank registers its own with :func:`register_reranker`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from mmrank.errors import InputError
from mmrank.rerankers.base import BaseReranker, Reranker

# type name -> "module:Class" (imported only when a pipeline asks for it), or a registered class.
RERANKERS: dict[str, str | type] = {
    "superglobal": "mmrank.rerankers.superglobal:SuperGlobalReranker",
    "alpha-qe": "mmrank.rerankers.expansion:AlphaQueryExpansionReranker",
    "alpha-dba": "mmrank.rerankers.expansion:AlphaDatabaseAugmentationReranker",
    "pointwise": "mmrank.rerankers.pointwise:PointwiseReranker",
    "reasoning": "mmrank.rerankers.reasoning:ReasoningReranker",
    "sqaf": "mmrank.rerankers.sqaf:CaptionFusionReranker",
    "grid": "mmrank.rerankers.grid:GridReranker",
    "dense-passages": "mmrank.rerankers.passages:DensePassageReranker",
    "cross-encoder": "mmrank.rerankers.cross_encoder:CrossEncoderReranker",
    "first": "mmrank.rerankers.first:FirstReranker",
    "insertrank": "mmrank.rerankers.insertrank:InsertRankReranker",
    "setwise": "mmrank.rerankers.setwise:SetwiseReranker",
    "rebel": "mmrank.rerankers.rebel:RebelReranker",
    "erank": "mmrank.rerankers.erank:ERankReranker",
    "prorank": "mmrank.rerankers.prorank:ProRankReranker",
    "qwen3-reranker": "mmrank.rerankers.qwen3_reranker:Qwen3Reranker",
    "dear": "mmrank.rerankers.dear:DeARReranker",
    "dear-listwise": "mmrank.rerankers.dear:DeARListwiseReranker",
}


def register_reranker(kind: str, target: str | type) -> None:
    """Make ``{"type": kind, ...}`` build ``target``: a reranker class, or ``"module:Class"``
    imported when a pipeline first asks for it."""
    if not kind or not isinstance(kind, str):
        raise InputError(f"A reranker type is a non-empty name; got {kind!r}.")
    RERANKERS[kind] = target


def reranker_class(kind: str) -> type:
    """The class registered under the type name ``kind``."""
    if kind not in RERANKERS:
        known = ", ".join(sorted(RERANKERS)) or "none in this version"
        raise InputError(f"Unknown reranker type {kind!r}; known types: {known}.")
    target = RERANKERS[kind]
    if not isinstance(target, str):
        return target
    module, _, class_name = target.partition(":")
    return getattr(import_module(module), class_name)


def reranker_type(cls: type) -> str:
    """The type name ``cls`` is registered under (InputError when it is not registered)."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    for kind, registered in RERANKERS.items():
        if registered is cls or registered == target:
            return kind
    raise InputError(f"{cls.__qualname__} is not a registered reranker type, so a config cannot name it; "
                     "register it with mmrank.rerankers.register_reranker(type_name, class).")


def create_reranker(config: Mapping[str, Any], *, mllm: str | None = None, mllm_url: str | None = None,
                    trust_remote_code: bool = False) -> Reranker:
    """Build a reranker from ``{"type": name, **options}``. ``mllm`` / ``mllm_url``, when given,
    replace the model (and server) of rerankers that ask a vision-language model;
    ``trust_remote_code`` lets such a model run code of its own (locally loaded models only)."""
    if not isinstance(config, Mapping):
        raise InputError(f"A reranker is a mapping such as {{type: pointwise, depth: 20}}; got {config!r}.")
    options = dict(config)
    reranker = reranker_class(options.pop("type", None))
    if getattr(reranker, "uses_mllm", False):
        if mllm is not None:
            options["model"] = mllm
        if mllm_url is not None:
            options["url"] = mllm_url
        if trust_remote_code and options.get("url") is None:
            model_options = options.get("model_options")
            model_options = dict(reranker.default_model_options if model_options is None else model_options)
            options["model_options"] = {**model_options, "trust_remote_code": True}
    try:
        inspect.signature(reranker).bind(**options)
    except TypeError as error:
        raise InputError(f"Bad options for reranker type {config.get('type')!r}: {error}.") from None
    return reranker(**options)


__all__ = ["RERANKERS", "BaseReranker", "Reranker", "create_reranker", "register_reranker", "reranker_class",
           "reranker_type"]
