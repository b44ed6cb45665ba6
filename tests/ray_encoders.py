"""Encoder kinds for the Ray indexing tests, registered by :func:`register`; a Ray run forwards the
registration to its actors, which load them by the names the collection records.

- ``pixels:<dim>``: no model and nothing heavy to import (an actor that uses it starts in a couple
  of seconds, not the ten that importing torch and open_clip take on two cores): a picture's 8x8
  thumbnail and a text's hashed words, each through a fixed random projection, made unit length.
- ``flaky:{"inner": <name>, "crash_marker": <path>, "sleep": <seconds>}``: the encoder named
  ``inner`` (its vectors are that encoder's), misbehaving like a worker in trouble. The first time
  it encodes in a process while the file ``crash_marker`` does not exist, it creates the file and
  kills its own process (as a segfault or the OOM killer would); ``sleep`` slows every batch down.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {"pixels": "tests.ray_encoders:PixelEncoder", "flaky": "tests.ray_encoders:FlakyEncoder"}


def register() -> None:
    from mmrank.encoders import register_encoder

    for kind, target in KINDS.items():
        register_encoder(kind, target)


def unregister() -> None:
    from mmrank.encoders import ENCODERS

    for kind in KINDS:
        ENCODERS.pop(kind, None)


def flaky_identity(inner: str, *, crash_marker: str | Path | None = None, sleep: float = 0.0) -> str:
    settings = {"inner": inner, "crash_marker": str(crash_marker) if crash_marker else None, "sleep": sleep}
    return f"flaky:{json.dumps(settings, sort_keys=True)}"


def _projection(rows: int, dim: int) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, dim)).astype(np.float32)


class PixelEncoder:
    modalities = frozenset({"image", "text"})
    buckets = 64  # hashed words per text

    def __init__(self, dim: int = 16) -> None:
        self.dim, self.name = dim, f"pixels:{dim}"

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> PixelEncoder:
        return cls(int(reference))

    def encode_images(self, images):
        from mmrank.encoders.base import l2_normalize
        from mmrank.images import open_rgb

        thumbnails = np.stack([np.asarray(open_rgb(image).resize((8, 8)), dtype=np.float32).ravel() / 255
                               for image in images])
        return l2_normalize(thumbnails @ _projection(thumbnails.shape[1], self.dim))

    def encode_texts(self, texts):
        from mmrank.encoders.base import l2_normalize

        counts = np.zeros((len(texts), self.buckets), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                counts[row, zlib.crc32(word.encode()) % self.buckets] += 1
        return l2_normalize(counts @ _projection(self.buckets, self.dim))


class FlakyEncoder:
    modalities = frozenset({"image", "text"})

    def __init__(self, inner: str, crash_marker: str | None = None, sleep: float = 0.0, **options: Any) -> None:
        from mmrank.encoders import load_encoder_by_name

        options.pop("progress", None)
        self._inner = load_encoder_by_name(inner, **options)
        self.crash_marker, self.sleep = crash_marker, sleep
        self.name = flaky_identity(inner, crash_marker=crash_marker, sleep=sleep)
        self.dim = self._inner.dim

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> FlakyEncoder:
        return cls(**json.loads(reference), **options)

    def encode_images(self, images):
        self._misbehave()
        return self._inner.encode_images(images)

    def encode_texts(self, texts):
        self._misbehave()
        return self._inner.encode_texts(texts)

    def _misbehave(self) -> None:
        if self.crash_marker and not Path(self.crash_marker).exists():
            Path(self.crash_marker).touch()
            os._exit(1)
        time.sleep(self.sleep)
