"""Late-interaction page retrieval with ColPali / ColQwen2 (the "ColVision" family), through
transformers.

A page image becomes one unit vector per position of the model's input (image patches merged 2x2
for ColQwen2, plus the fixed prompt's tokens), a query one vector per token; a page's score for a
query is MaxSim: for each query vector its best dot product over the page's vectors, summed.

``model`` is a Hugging Face id or a folder of a *transformers-format* checkpoint: config.json with
model_type ``colqwen2`` (``ColQwen2ForRetrieval``; Qwen2-VL or Qwen2.5-VL inside) or ``colpali``
(``ColPaliForRetrieval``), such as ``vidore/colqwen2-v1.0-hf`` and ``vidore/colpali-v1.3-hf``
(short names ``colqwen2`` and ``colpali``). colpali-engine's own checkpoints (LoRA adapters over a
Qwen2-VL or PaliGemma base, e.g. ``vidore/colqwen2-v1.0``) do not load in transformers: they are
refused with a message that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmrank.encoders.base import l2_normalize, resolve_device
from mmrank.encoders.text import loading_bar
from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache
from mmrank.images import open_rgb
from mmrank.types import ImageInput

logger = logging.getLogger("mmrank")

# Short names -> the transformers-format checkpoints of the ColPali authors.
ALIASES: dict[str, str] = {
    "colpali": "vidore/colpali-v1.3-hf",
    "colqwen2": "vidore/colqwen2-v1.0-hf",
}
# config.json model_type -> (model class, processor class) in transformers.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "colqwen2": ("ColQwen2ForRetrieval", "ColQwen2Processor"),
    "colpali": ("ColPaliForRetrieval", "ColPaliProcessor"),
}
# model_type of the base models colpali-engine checkpoints are stored over.
ENGINE_BASE_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl", "paligemma"})
POOL_OPTION = ";pool="
DTYPES = ("float32", "bfloat16", "float16")
# Tokenizers without a real limit report a huge model_max_length (e.g. 1e30): then this one.
FALLBACK_MAX_QUERY_TOKENS = 512
_SANE_MAX_LENGTH = 100_000

_TRANSFORMERS_FORMAT = (
    "transformers-format checkpoint instead: the '-hf' ones such as vidore/colqwen2-v1.0-hf or "
    "vidore/colpali-v1.3-hf (short names 'colqwen2', 'colpali')"
)


def resolve_model_id(model: str) -> str:
    """The canonical form of a model reference: a short name as its hub id (:data:`ALIASES`), a
    local folder as its absolute path, anything else unchanged."""
    if model in ALIASES:
        return ALIASES[model]
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def colvision_identity(model: str, pool_factor: int = 1) -> str:
    """The stable name of a page encoder: ``colvision:<hub id or absolute folder>``, plus
    ``;pool=N`` when its pages are token-pooled by a factor N > 1 (pooled vectors are not
    interchangeable with unpooled ones)."""
    pool = f"{POOL_OPTION}{pool_factor}" if pool_factor > 1 else ""
    return f"colvision:{resolve_model_id(model)}{pool}"


def unpadded_rows(embeddings: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
    """Each sequence's vectors at its attended positions (``attention_mask`` 1), as unit-norm
    float32 arrays: the batch padding dropped.

    The model L2-normalises every position and zeroes padded ones; the rows are normalised again
    in float32 so that they are unit norm even when the model ran in bfloat16. A sequence with no
    attended position, or with any non-finite value (a broken forward pass), gives an empty
    ``(0, dim)`` array rather than vectors that would silently score wrong: callers skip it.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    dim = embeddings.shape[-1]
    rows = []
    for vectors, mask in zip(embeddings, np.asarray(attention_mask).astype(bool)):
        kept = vectors[mask]
        if len(kept) == 0 or not np.isfinite(kept).all():
            rows.append(np.zeros((0, dim), dtype=np.float32))
        else:
            rows.append(l2_normalize(kept))
    return rows


class ColVisionEncoder:
    """Page images and text queries through a ColPali / ColQwen2 model; one unit-norm float32
    vector per page position or query token out, for MaxSim scoring.

    - ``pool_factor`` > 1 merges each page's vectors into about ``n // pool_factor`` by
      hierarchical token pooling (:func:`mmrank.encoders.token_pooling.pool_tokens`); queries are
      never pooled.
    - ``dtype``: the compute precision, bfloat16 on CUDA and float32 on the CPU by default;
      outputs are float32 whatever it is.
    - ``batch_size``: pages (or queries) per forward pass.
    - ``max_query_tokens``: longer queries are cut (with a warning); default the tokenizer's
      ``model_max_length`` when it is a real limit, else 512.
    - ``progress``: show transformers' loading bar and an encoding bar.

    A model that cannot be loaded raises ModelUnavailableError saying where it was looked for and
    how to provide it offline.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    multi_vector: ClassVar[bool] = True  # one vector per patch / token, scored by MaxSim

    def __init__(
        self,
        model: str,
        *,
        pool_factor: int = 1,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int = 4,
        max_query_tokens: int | None = None,
        progress: bool = False,
    ) -> None:
        for option, value in (("pool_factor", pool_factor), ("batch_size", batch_size),
                              ("max_query_tokens", max_query_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"{option} must be a whole number of at least 1; got {value!r}.")
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
        self.model_id = resolve_model_id(model)
        self.pool_factor = pool_factor
        self.name = colvision_identity(self.model_id, pool_factor)
        self.device = resolve_device(device)
        self.dtype = dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")
        self.batch_size = batch_size
        self.progress = progress
        self._model, self._processor = self._load()
        self.dim = int(self._model.config.embedding_dim)
        self.max_query_tokens = max_query_tokens or _default_max_tokens(self._processor.tokenizer)

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> ColVisionEncoder:
        """The encoder named ``colvision:<reference>``: a hub id or absolute folder, optionally
        followed by ``;pool=N`` (see :func:`colvision_identity`)."""
        model, separator, pool = reference.rpartition(POOL_OPTION)
        if not separator:
            return cls(reference, **options)
        if not pool.isdigit() or int(pool) < 1:
            raise ModelUnavailableError(
                f"Cannot read the page encoder name 'colvision:{reference}': ';pool=' takes a whole "
                f"number of at least 1, got {pool!r}.")
        if options.get("pool_factor", int(pool)) != int(pool):
            raise InputError(
                f"The name 'colvision:{reference}' says pool factor {pool}, but pool_factor="
                f"{options['pool_factor']} was given as well; give one of them.")
        return cls(model, **{**options, "pool_factor": int(pool)})

    def __repr__(self) -> str:
        return f"ColVisionEncoder({self.name!r}, device={self.device!r}, dtype={self.dtype!r})"

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, Any]:
        """The model (on the device, in eval mode) and its processor, with classes picked from the
        checkpoint's config.json model_type."""
        import torch
        import transformers

        self._refuse_adapter()
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_id)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc
        if config.model_type not in MODEL_CLASSES:
            raise self._not_colvision(config.model_type)
        model_class, processor_class = (getattr(transformers, name) for name in MODEL_CLASSES[config.model_type])
        try:
            with loading_bar(self.progress):
                model = model_class.from_pretrained(self.model_id, config=config, dtype=getattr(torch, self.dtype))
                processor = processor_class.from_pretrained(self.model_id)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc
        return model.to(self.device).eval(), processor

    def _refuse_adapter(self) -> None:
        """colpali-engine checkpoints are LoRA adapters (adapter_config.json) over a base model:
        name that clearly instead of transformers' complaint about a missing config.json."""
        folder = Path(self.model_id)
        if folder.is_absolute():
            adapter = (folder / "adapter_config.json").is_file()
        else:
            from huggingface_hub import try_to_load_from_cache

            try:
                adapter = isinstance(try_to_load_from_cache(self.model_id, "adapter_config.json"), str)
            except ValueError:  # not a valid hub id: AutoConfig reports it
                adapter = False
        if adapter:
            raise ModelUnavailableError(
                f"{self.model_id!r} is a colpali-engine checkpoint (it has adapter_config.json: a LoRA "
                "adapter over its base model), not a transformers ColPali/ColQwen2 checkpoint; "
                f"transformers cannot load colpali-engine checkpoints. Use a {_TRANSFORMERS_FORMAT}.")

    def _not_colvision(self, model_type: str) -> ModelUnavailableError:
        if model_type in ENGINE_BASE_TYPES:
            what = (f"that is the base model of a colpali-engine checkpoint (or that base model itself), "
                    f"and transformers cannot load colpali-engine checkpoints; use a {_TRANSFORMERS_FORMAT}")
        else:
            what = f"this encoder loads model_type 'colqwen2' and 'colpali' checkpoints; use a {_TRANSFORMERS_FORMAT}"
        return ModelUnavailableError(
            f"{self.model_id!r} is not a transformers ColPali/ColQwen2 checkpoint: its config.json has "
            f"model_type {model_type!r}: {what}.")

    def _unavailable(self, exc: Exception) -> ModelUnavailableError:
        if Path(self.model_id).is_absolute():
            where = f"the folder {self.model_id}"
            how = ("give a folder that holds a transformers-format ColPali/ColQwen2 checkpoint (config.json "
                   "with model_type 'colqwen2' or 'colpali', the weights and the processor files), e.g. "
                   "`hf download vidore/colqwen2-v1.0-hf --local-dir FOLDER` on a machine with network access")
        else:
            where = hugging_face_cache(hub=True)
            how = (f"run `hf download {self.model_id}` on a machine with network access (it fills the "
                   "Hugging Face cache; copy the cache over and set HF_HUB_OFFLINE=1), or download it into "
                   "a folder (`--local-dir FOLDER`) and pass that folder as the model")
        return ModelUnavailableError(
            f"ColPali/ColQwen2 model {self.model_id!r} is not available: {str(exc).rstrip('.')}. "
            f"Looked in {where}. To use it offline, {how}.")

    # ----------------------------------------------------------------- encoding
    def encode_pages(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """One (n_i, dim) float32 array of unit vectors per page image (a path or a PIL image):
        every position the model attends (image patches and prompt tokens), pooled when
        ``pool_factor`` > 1. A page the model gives no usable vectors for (none, or non-finite
        ones) comes back as an empty (0, dim) array, never as vectors that would score wrong: the
        caller skips it, with a warning."""
        if isinstance(images, (str, Path)):
            raise InputError(f"encode_pages expects a list of images, got the single path {images!r}.")
        pages = self._encode(
            images, lambda batch: self._processor.process_images([open_rgb(image) for image in batch], **_RIGHT),
            unit="page")
        if self.pool_factor == 1:
            return pages
        from mmrank.encoders.token_pooling import pool_tokens

        return [pool_tokens(page, self.pool_factor) for page in pages]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (t_i, dim) float32 array of unit vectors per query: its tokens, the processor's
        prefix ("Query: " / "Question: ") and its query augmentation tokens. A query longer than
        ``max_query_tokens`` tokens is cut to them, with a warning naming it."""
        if isinstance(texts, str):
            raise InputError("encode_queries expects a list of texts, got a single string.")
        texts = [self._truncated(text) for text in texts]
        return self._encode(texts, lambda batch: self._processor.process_queries(list(batch), **_RIGHT),
                            unit="query")

    def _truncated(self, text: str) -> str:
        """``text``, or its first ``max_query_tokens`` tokens decoded back when it is longer."""
        tokenizer = self._processor.tokenizer
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # no length warning: ours follows
        if len(ids) <= self.max_query_tokens:
            return text
        logger.warning("Query %r cut from %d to %d tokens (max_query_tokens): the rest is not searched for.",
                       text[:60], len(ids), self.max_query_tokens)
        return tokenizer.decode(ids[:self.max_query_tokens])

    def _encode(self, inputs: Sequence[Any], process: Any, unit: str) -> list[np.ndarray]:
        """Batches of ``batch_size`` through ``process`` (the processor) and the model, under
        inference mode; the attended rows of each input."""
        import torch
        from tqdm.auto import tqdm

        rows: list[np.ndarray] = []
        with torch.inference_mode(), tqdm(
            total=len(inputs), disable=not self.progress, unit=unit, desc=f"Encoding {unit}s"
        ) as bar:
            for batch in _batches(inputs, self.batch_size):
                features = process(batch)
                features.pop("labels", None)  # training targets (ColPali adds them to images)
                features = features.to(self.device)
                embeddings = self._model(**features, use_cache=False).embeddings
                rows.extend(unpadded_rows(embeddings.float().cpu().numpy(), features["attention_mask"].cpu().numpy()))
                bar.update(len(batch))
        return rows


# Pad on the right. ColPali and ColQwen2 number positions from the start of the padded sequence
# (not from the attention mask), so right padding keeps every input's positions, and hence its
# vectors, what they are when it is encoded alone: batch composition changes nothing.
_RIGHT = {"padding_side": "right"}


def _default_max_tokens(tokenizer: Any) -> int:
    """The tokenizer's own limit when it has a real one, else :data:`FALLBACK_MAX_QUERY_TOKENS`."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, (int, float)) and 0 < limit < _SANE_MAX_LENGTH else FALLBACK_MAX_QUERY_TOKENS


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
