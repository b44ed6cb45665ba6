"""Language model backends for the rerankers: vision-language and text-only chat models, run locally
with Hugging Face transformers or behind a vLLM/SGLang server.

Importing this package is cheap: torch, transformers, qwen-vl-utils and openai load only when a
backend is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError
from mmrank.mllm.base import Conversation, Generation, ScoringLanguageModel, Usage, VisionLanguageModel

if TYPE_CHECKING:
    from mmrank.mllm.hf import HFVisionLanguageModel
    from mmrank.mllm.hf_text import HFLanguageModel
    from mmrank.mllm.openai import OpenAICompatibleModel

DEFAULT_MLLM = "Qwen/Qwen2.5-VL-3B-Instruct"

_LAZY_CLASSES = {
    "HFVisionLanguageModel": "mmrank.mllm.hf",
    "HFLanguageModel": "mmrank.mllm.hf_text",
    "OpenAICompatibleModel": "mmrank.mllm.openai",
}


def __getattr__(name: str) -> Any:
    """The backend classes, imported on first use."""
    if name in _LAZY_CLASSES:
        return getattr(import_module(_LAZY_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


KINDS = ("vision", "text")


def load_mllm(model: str | None = None, *, url: str | None = None, kind: str = "vision",
              **options: Any) -> VisionLanguageModel:
    """A chat model: the server at ``url`` (OpenAI-compatible, e.g. vLLM) when given, else ``model``
    (default Qwen/Qwen2.5-VL-3B-Instruct, a Hub id or a local folder) run locally with transformers:
    a vision-language model (HFVisionLanguageModel) when its config has a vision tower, a text-only
    causal LM (HFLanguageModel) otherwise. ``kind`` (``vision`` or ``text``) is what to assume when
    the config cannot be read (a model not downloaded yet: it decides which error explains that).
    ``options`` go to the backend."""
    if kind not in KINDS:
        raise InputError(f"kind must be 'vision' or 'text'; got {kind!r}.")
    if url is not None:
        from mmrank.mllm.openai import OpenAICompatibleModel

        return OpenAICompatibleModel(url, model, **options)
    source = model or DEFAULT_MLLM
    if _has_vision_tower(source, default=kind == "vision"):
        from mmrank.mllm.hf import HFVisionLanguageModel

        return HFVisionLanguageModel(source, **options)
    from mmrank.mllm.hf_text import HFLanguageModel

    options = {key: value for key, value in options.items() if key not in ("min_pixels", "max_pixels")}
    return HFLanguageModel(source, **options)


def _has_vision_tower(model: str, *, default: bool) -> bool:
    """Whether the config.json of ``model`` (a local folder, or a Hub id in the local cache) names
    a vision tower; ``default`` when it cannot be read."""
    import json
    from pathlib import Path

    folder = Path(model).expanduser()
    path: Any = folder / "config.json" if folder.is_dir() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(model, "config.json")
        except Exception:  # noqa: BLE001 - a malformed id: the backend explains it
            path = None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return default
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return isinstance(config, dict) and "vision_config" in config


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
    "HFLanguageModel",
    "HFVisionLanguageModel",
    "OpenAICompatibleModel",
    "ScoringLanguageModel",
    "Usage",
    "VisionLanguageModel",
    "load_mllm",
    "shared_mllm",
]
