"""What every encoder promises: batches in, L2-normalised float32 vectors out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from mmrank.types import ImageInput


@runtime_checkable
class Encoder(Protocol):
    """What every encoder has: its identity ``name`` (``<kind>:<reference>``, rebuilt by
    :func:`mmrank.encoders.load_encoder_by_name`), its output ``dim`` and the ``modalities`` it
    encodes (``image`` through ``encode_images``, ``text`` through ``encode_texts``)."""

    name: str
    dim: int
    modalities: ClassVar[frozenset[str]]


@runtime_checkable
class TextEncoder(Protocol):
    """Encodes texts into unit-norm float32 vectors of shape (len(texts), dim)."""

    name: str
    dim: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Encodes images (paths or PIL images) into unit-norm float32 vectors of shape (n, dim)."""

    name: str
    dim: int

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation to float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def resolve_device(device: str | None) -> str:
    """``auto``/None picks CUDA when torch sees a GPU, else the CPU; other values pass through."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
