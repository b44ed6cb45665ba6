"""Vision-language model backends: local Hugging Face transformers, or a vLLM/SGLang server.

Importing this package is cheap: torch, transformers, qwen-vl-utils and openai load only when a
backend is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mmrank.mllm.base import Conversation, Generation, Usage, VisionLanguageModel

if TYPE_CHECKING:
    from mmrank.mllm.hf import HFVisionLanguageModel
    from mmrank.mllm.openai import OpenAICompatibleModel

DEFAULT_MLLM = "Qwen/Qwen2.5-VL-3B-Instruct"

_LAZY_CLASSES = {
    "HFVisionLanguageModel": "mmrank.mllm.hf",
    "OpenAICompatibleModel": "mmrank.mllm.openai",
}


def __getattr__(name: str) -> Any:
    """The backend classes, imported on first use."""
    if name in _LAZY_CLASSES:
        return getattr(import_module(_LAZY_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_mllm(model: str | None = None, *, url: str | None = None, **options: Any) -> VisionLanguageModel:
    """A vision-language model: the server at ``url`` (OpenAI-compatible, e.g. vLLM) when given,
    else ``model`` (default Qwen/Qwen2.5-VL-3B-Instruct, a Hub id or a local folder) run locally
    with transformers. ``options`` go to OpenAICompatibleModel or HFVisionLanguageModel."""
    if url is not None:
        from mmrank.mllm.openai import OpenAICompatibleModel

        return OpenAICompatibleModel(url, model, **options)
    from mmrank.mllm.hf import HFVisionLanguageModel

    return HFVisionLanguageModel(model or DEFAULT_MLLM, **options)


_SHARED: dict[tuple, VisionLanguageModel] = {}


def shared_mllm(model: str | None = None, *, url: str | None = None, **options: Any) -> VisionLanguageModel:
    """Like :func:`load_mllm`, but one instance per distinct (model, url, options) per process, so
    that every stage of a pipeline asking for the same model shares its weights."""
    key = (model, url, tuple(sorted((name, repr(value)) for name, value in options.items())))
    if key not in _SHARED:
        _SHARED[key] = load_mllm(model, url=url, **options)
    return _SHARED[key]


__all__ = [
    "DEFAULT_MLLM",
    "Conversation",
    "Generation",
    "HFVisionLanguageModel",
    "OpenAICompatibleModel",
    "Usage",
    "VisionLanguageModel",
    "load_mllm",
    "shared_mllm",
]
