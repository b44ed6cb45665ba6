"""OpenCLIP: one model that encodes both images and texts into the same vector space.

``model`` is handed to open_clip unchanged, so all three of its spellings work:

- a built-in architecture plus a ``pretrained`` tag (``ViT-B-32`` / ``laion2b_s34b_b79k``),
  downloaded once into the Hugging Face cache;
- ``hf-hub:org/repo``: an open_clip repository on the Hub (``pretrained`` is ignored);
- ``local-dir:/path``: a folder holding ``open_clip_config.json`` and the weights.
"""

from __future__ import annotations

import difflib
import logging
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmrank.encoders import DEFAULT_IMAGE_MODEL, DEFAULT_IMAGE_PRETRAINED
from mmrank.encoders.base import l2_normalize, resolve_device
from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache
from mmrank.images import open_rgb
from mmrank.types import ImageInput

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # dtype -> open_clip precision
_CHECKPOINT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


def _schema(model: str) -> str | None:
    for prefix in (HF_HUB_PREFIX, LOCAL_DIR_PREFIX):
        if model.startswith(prefix):
            return prefix
    return None


def _clean_tag(tag: str) -> str:
    """open_clip's own tag normalisation, or an absolute path when the tag is a weights file."""
    path = Path(tag).expanduser()
    return str(path.resolve()) if path.is_file() else tag.lower().replace("-", "_")


def open_clip_identity(model: str, pretrained: str | None = None) -> str:
    """The stable name of an open_clip model, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``.

    Spellings open_clip treats as the same model give the same identity: ``ViT-B/32`` and
    ``ViT-B-32``, tag case and dashes, relative and absolute ``local-dir:`` paths. A built-in name
    without a tag (random weights) has no ``/`` part; a weights file as tag is an absolute path.
    """
    schema = _schema(model)
    if schema == LOCAL_DIR_PREFIX:
        folder = Path(model[len(schema):]).expanduser().resolve()
        return f"open_clip:{LOCAL_DIR_PREFIX}{folder}"
    if schema == HF_HUB_PREFIX:
        return f"open_clip:{model}"
    name = model.replace("/", "-")
    return f"open_clip:{name}/{_clean_tag(pretrained)}" if pretrained else f"open_clip:{name}"


class OpenClipEncoder:
    """Images and texts through one open_clip model; unit-norm float32 vectors out.

    ``dtype`` is the compute precision (``float32``, ``float16``, ``bfloat16``); outputs are
    float32 whatever it is. Weights must be available locally or downloadable: otherwise
    ModelUnavailableError says where they were looked for and how to provide them offline.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})

    def __init__(
        self,
        model: str = DEFAULT_IMAGE_MODEL,
        pretrained: str | None = DEFAULT_IMAGE_PRETRAINED,
        *,
        device: str | None = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        if dtype not in _PRECISIONS:
            raise InputError(f"dtype must be one of {', '.join(_PRECISIONS)}; got {dtype!r}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}.")
        if _schema(model):
            pretrained = None  # open_clip ignores it for hf-hub: and local-dir: (and warns)
        self.model_name = model
        self.pretrained = pretrained
        self.name = open_clip_identity(model, pretrained)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.progress = progress
        self._model, self._preprocess, self._tokenizer = self._load()
        self.dim = self._probe_dim()

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> OpenClipEncoder:
        """The encoder named ``open_clip:<reference>`` (see :func:`open_clip_identity`)."""
        if _schema(reference):
            return cls(reference, None, **options)
        model, _, pretrained = reference.partition("/")
        return cls(model, pretrained or None, **options)

    def __repr__(self) -> str:
        return f"OpenClipEncoder({self.name!r}, device={self.device!r}, dtype={self.dtype!r})"

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, Any, Any]:
        import open_clip

        self._check_available(open_clip)
        try:
            with _root_logger_silenced():  # open_clip logs each failure to the root logger too
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name,
                    pretrained=self.pretrained,
                    precision=_PRECISIONS[self.dtype],
                    device=self.device,
                    # open_clip silently falls back to random weights when a hub/local checkpoint is
                    # missing; refuse that unless the caller asked for random weights (no tag).
                    require_pretrained=self.pretrained is not None or _schema(self.model_name) is not None,
                )
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except (OSError, RuntimeError, ValueError) as exc:
            if "download" in str(exc).lower():
                raise self._unavailable("its weights are not in the cache and could not be downloaded") from exc
            raise self._unavailable(f"loading failed: {str(exc).rstrip('.')}") from exc
        model.eval()
        return model, preprocess, tokenizer

    def _check_available(self, open_clip: Any) -> None:
        """Fail early, with a precise message, on what open_clip would report vaguely."""
        schema = _schema(self.model_name)
        if schema == LOCAL_DIR_PREFIX:
            folder = Path(self.model_name[len(schema):]).expanduser()
            if not folder.is_dir():
                raise self._unavailable("the folder does not exist")
            if not (folder / "open_clip_config.json").is_file():
                raise self._unavailable("the folder has no open_clip_config.json")
            if not any(p for pattern in _CHECKPOINT_PATTERNS for p in folder.glob(pattern)):
                raise self._unavailable("the folder has no weights (.safetensors, .bin, .pth)")
        elif schema is None:
            name = self.model_name.replace("/", "-")
            known = open_clip.list_models()
            if name not in known:
                suggestions = difflib.get_close_matches(name, known, n=6, cutoff=0.4) or known[:6]
                raise ModelUnavailableError(
                    f"Unknown open_clip model {self.model_name!r}. Known names include "
                    f"{', '.join(suggestions)} (open_clip.list_models() lists all {len(known)}); "
                    f"a model of your own loads with 'local-dir:/path/to/folder' or 'hf-hub:org/repo'."
                )
            tag = self.pretrained
            if tag and not Path(tag).expanduser().is_file() and not open_clip.get_pretrained_cfg(name, tag):
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise ModelUnavailableError(
                    f"{tag!r} is neither a pretrained tag of open_clip model {name!r} nor a weights "
                    f"file. Its tags: {', '.join(tags) or 'none (pass pretrained=None for random weights)'}."
                )

    def _unavailable(self, reason: str) -> ModelUnavailableError:
        tag = f" (pretrained {self.pretrained!r})" if self.pretrained else ""
        schema = _schema(self.model_name)
        if schema == LOCAL_DIR_PREFIX:
            folder = Path(self.model_name[len(schema):]).expanduser().resolve()
            where = f"the folder {folder}"
            how = (
                "give 'local-dir:' a folder that contains open_clip_config.json and the weights "
                "(e.g. open_clip_model.safetensors), such as a copy of an open_clip repository from "
                "the Hugging Face Hub"
            )
        else:
            where = hugging_face_cache()
            how = (
                "load it once on a machine with network access (that fills the Hugging Face cache; "
                "copy the cache over and set HF_HUB_OFFLINE=1), then 'hf-hub:org/repo' and built-in "
                "names load from the cache; or point at a local copy with 'local-dir:/path/to/folder' "
                "(command line: --image-model local-dir:/path/to/folder), a folder containing "
                "open_clip_config.json and the weights (e.g. open_clip_model.safetensors)"
            )
        return ModelUnavailableError(
            f"open_clip model {self.model_name!r}{tag} is not available: {reason}. "
            f"Looked in {where}. To use it offline, {how}."
        )

    # ----------------------------------------------------------------- encoding
    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Encode image paths or PIL images into an (n, dim) float32 array of unit vectors."""
        if isinstance(images, (str, Path)):
            raise InputError(f"encode_images expects a list of images, got the single path {images!r}.")
        import torch

        def embed(batch: Sequence[ImageInput]) -> np.ndarray:
            pixels = torch.stack([self._preprocess(open_rgb(image)) for image in batch])
            pixels = pixels.to(device=self.device, dtype=getattr(torch, self.dtype))
            return self._model.encode_image(pixels).float().cpu().numpy()

        return self._encode(images, embed, unit="image")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into an (n, dim) float32 array of unit vectors (long texts are truncated)."""
        if isinstance(texts, str):
            raise InputError("encode_texts expects a list of texts, got a single string.")
        return self._encode(texts, self._embed_texts, unit="text")

    def _embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self._tokenizer(list(texts)).to(self.device)
        return self._model.encode_text(tokens).float().cpu().numpy()

    def _probe_dim(self) -> int:
        """The embedding dimension, read off one text embedding (the same for every model kind)."""
        import torch

        with torch.inference_mode():
            return int(self._embed_texts([""]).shape[1])

    def _encode(
        self, inputs: Sequence[Any], embed: Callable[[Sequence[Any]], np.ndarray], unit: str
    ) -> np.ndarray:
        """Batches through ``embed`` under inference mode, with a progress bar on request."""
        import torch
        from tqdm.auto import tqdm

        if len(inputs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        with torch.inference_mode(), tqdm(
            total=len(inputs), disable=not self.progress, unit=unit, desc=f"Encoding {unit}s"
        ) as bar:
            for batch in _batches(inputs, self.batch_size):
                parts.append(embed(batch))
                bar.update(len(batch))
        return l2_normalize(np.concatenate(parts))


@contextmanager
def _root_logger_silenced() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
