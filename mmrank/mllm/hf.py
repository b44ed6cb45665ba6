"""Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) through Hugging Face transformers.

Images go through qwen-vl-utils (``process_vision_info``), which resizes each one to a multiple of
the model's patch grid within ``min_pixels``/``max_pixels`` (the patch size comes from the
processor: 14 pixels for Qwen2/2.5-VL, 16 for Qwen3-VL); the processor then only normalises and
patchifies them. Batches are left-padded and each row's next token is read at the last position.
Rope positions skip the padding (the model derives the 3-D positions of batches with images from
the attention mask; text-only batches get positions counted from each row's first token), so a
conversation scores the same alone and in any batch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.encoders.base import resolve_device
from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache
from mmrank.images import open_rgb
from mmrank.mllm import DEFAULT_MLLM
from mmrank.mllm.base import (
    Conversation,
    Generation,
    Usage,
    check_conversations,
    check_generation_options,
    choice_variants,
    softmax_rows,
)

DEFAULT_MAX_PIXELS = 1280 * 28 * 28
_DTYPES = ("float32", "bfloat16", "float16")


class HFVisionLanguageModel:
    """A Qwen-VL chat model run locally with transformers.

    ``model`` is a Hugging Face Hub id (loaded from the cache, downloaded when online), a local
    folder, or a model already loaded with transformers (then give its ``processor`` too). ``dtype`` ``auto`` is bfloat16 on CUDA and float32 on the CPU. ``attn_implementation``
    defaults to flash_attention_2 on CUDA when flash-attn is installed, else sdpa.
    ``min_pixels``/``max_pixels`` bound each image's size (an image part may set its own);
    ``batch_size`` conversations share one forward pass.
    """

    def __init__(
        self,
        model: str | Any = DEFAULT_MLLM,
        *,
        processor: Any = None,
        device: str | None = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}.")
        if dtype != "auto" and dtype not in _DTYPES:
            raise InputError(f"dtype must be 'auto' or one of {', '.join(_DTYPES)}; got {dtype!r}.")
        loaded = not isinstance(model, str)
        if loaded and processor is None:
            raise InputError("A loaded model needs its processor: HFVisionLanguageModel(model, processor=...).")
        self.model_name = model.config.name_or_path or type(model).__name__ if loaded else model
        self.source = self.model_name if loaded else _local_folder(model) or model
        self._is_local = not loaded and Path(self.source).is_absolute()
        self.name = f"hf:{self.source}"
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.dtype = dtype
        self.attn_implementation = attn_implementation or _default_attention(self.device)
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.usage = Usage()
        self._process_vision_info = _import_qwen_vl_utils()
        self._model, self._processor = self._prepare(model, processor) if loaded else self._load()
        self._patch_size = int(self._processor.image_processor.patch_size)
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}

    @property
    def processor(self) -> Any:
        """The model's processor (its tokenizer is ``processor.tokenizer``)."""
        return self._processor

    def __repr__(self) -> str:
        return f"HFVisionLanguageModel({self.name!r}, device={self.device!r}, dtype={self.dtype!r})"

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if self._is_local and not Path(self.source).is_dir():
            raise self._unavailable("the folder does not exist")
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                self.source,
                dtype=getattr(torch, self.dtype),
                attn_implementation=self.attn_implementation,
                trust_remote_code=self.trust_remote_code,
            )
            processor = AutoProcessor.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise self._unavailable(_first_line(exc)) from exc
        return self._prepare(model, processor)

    def _prepare(self, model: Any, processor: Any) -> tuple[Any, Any]:
        """The model on this backend's device in eval mode, and its processor set to pad on the left."""
        if not (getattr(processor, "image_processor", None) and getattr(processor, "chat_template", None)):
            raise self._unavailable("its processor has no image processor or no chat template")
        processor.tokenizer.padding_side = "left"
        return model.to(self.device).eval(), processor

    def _unavailable(self, reason: str) -> ModelUnavailableError:
        if self._is_local:
            where = f"the folder {self.source}"
            how = (
                "Give a folder that holds a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) as saved "
                "by save_pretrained: config.json, the *.safetensors weights, the tokenizer and "
                "processor files and the chat template, e.g. a snapshot from the Hugging Face Hub"
            )
        else:
            where = hugging_face_cache()
            how = (
                f"To use it offline, run `hf download {self.source}` (or `huggingface-cli download "
                f"{self.source}`) on a "
                "machine with network access, copy the cache over and point HF_HOME at it (and set "
                "HF_HUB_OFFLINE=1); or pass the path of a local folder holding the model"
            )
        return ModelUnavailableError(
            f"Vision-language model {self.model_name!r} is not available: {reason.rstrip('.')}. "
            f"Looked in {where}. {how}."
        )

    # ------------------------------------------------------------------ scoring
    def choice_probability(
        self, conversations: Sequence[Conversation], choices: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray:
        """P(choice) from the next-token logits, softmaxed over the choices only.

        One forward pass per batch; a choice's logit is the log-sum-exp over its single-token
        spellings (with and without a leading space).
        """
        import torch

        conversations = check_conversations(conversations)
        token_ids = self._resolve_choices(choices)
        self.usage.calls += 1
        rows = []
        for chunk in _chunks(conversations, self.batch_size):
            inputs = self._inputs(chunk, assistant_prefix)
            if "pixel_values" not in inputs:
                inputs["position_ids"] = _text_positions(inputs["attention_mask"])
            with torch.inference_mode():
                logits = self._model(**inputs, logits_to_keep=1).logits[:, -1, :]
            logits = logits.double().cpu().numpy()
            rows.append(np.stack([np.logaddexp.reduce(logits[:, ids], axis=1) for ids in token_ids], axis=1))
            self.usage.forward_passes += 1
            self.usage.input_tokens += int(inputs["attention_mask"].sum())
        if not rows:
            return np.zeros((0, len(token_ids)), dtype=np.float64)
        return softmax_rows(np.concatenate(rows))

    def _resolve_choices(self, choices: Sequence[str]) -> list[list[int]]:
        """Token ids of each choice's single-token spellings, resolved once per choices tuple."""
        key = tuple(choices)
        if key not in self._choice_ids:
            tokenizer = self._processor.tokenizer
            resolved = []
            for variants in choice_variants(choices):
                encoded = {text: tokenizer.encode(text, add_special_tokens=False) for text in variants}
                ids = sorted({pieces[0] for pieces in encoded.values() if len(pieces) == 1})
                if not ids:
                    pieces = {text: tokenizer.convert_ids_to_tokens(found) for text, found in encoded.items()}
                    raise InputError(
                        f"The choice {variants[0]!r} is not a single token for {self.name}: it splits into "
                        f"{pieces}. Choose words that the model's tokenizer keeps whole."
                    )
                resolved.append(ids)
            self._choice_ids[key] = resolved
        return self._choice_ids[key]

    # --------------------------------------------------------------- generation
    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        assistant_prefix: str = "",
    ) -> list[Generation]:
        """Answers to each conversation: greedy at temperature 0, sampled above it. The text is
        what the model adds after ``assistant_prefix``, special tokens removed."""
        import torch

        conversations = check_conversations(conversations)
        check_generation_options(max_new_tokens, temperature)
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
        stop_ids = self._stop_ids()
        self.usage.calls += 1
        results = []
        for chunk in _chunks(conversations, self.batch_size):
            inputs = self._inputs(chunk, assistant_prefix)
            with torch.inference_mode():
                output = self._model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
            new_tokens = output[:, inputs["input_ids"].shape[1]:].cpu()
            texts = self._processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
            for text, prompt_length, tokens in zip(texts, prompt_lengths, new_tokens.tolist(), strict=True):
                results.append(Generation(text, int(prompt_length), _generated_length(tokens, stop_ids)))
            self.usage.forward_passes += new_tokens.shape[1]
        self.usage.input_tokens += sum(result.input_tokens for result in results)
        self.usage.generated_tokens += sum(result.generated_tokens for result in results)
        return results

    def _stop_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    # ------------------------------------------------------------------- inputs
    def _inputs(self, conversations: list[Conversation], assistant_prefix: str) -> Any:
        """Left-padded model inputs (on the model's device) for one batch of conversations."""
        messages = [self._with_pixel_bounds(conversation) for conversation in conversations]
        prompts = [
            self._processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            + assistant_prefix
            for conversation in messages
        ]
        try:
            images, _ = self._process_vision_info(messages, image_patch_size=self._patch_size)
        except ValueError as exc:  # e.g. an aspect ratio beyond 200:1
            raise InputError(f"Cannot prepare the images for {self.name}: {exc}") from exc
        # The images are already sized by qwen-vl-utils: the processor must not resize them again.
        inputs = self._processor(
            text=prompts, images=images, padding=True, do_resize=False, return_tensors="pt"
        )
        return inputs.to(self.device)

    def _with_pixel_bounds(self, conversation: Conversation) -> Conversation:
        """A copy whose image parts carry this model's pixel bounds (unless they set their own)."""
        bounds = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        bounds = {key: value for key, value in bounds.items() if value is not None}
        copied = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, list):
                content = [_image_part(part, bounds) if _is_image(part) else part for part in content]
            copied.append({**message, "content": content})
        return copied


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and (part.get("type") == "image" or "image" in part)


def _image_part(part: dict[str, Any], bounds: dict[str, int]) -> dict[str, Any]:
    """The part with its image opened in RGB (InputError naming an unreadable path) and bounds set."""
    if part.get("image") is None:
        raise InputError(f"An image part has no 'image' (a PIL image or a path): {part!r}.")
    return {**bounds, **part, "type": "image", "image": open_rgb(part["image"])}


def _text_positions(attention_mask: Any) -> Any:
    """Rope positions of a left-padded text-only batch: each row counts from its first real token.

    (With images the model derives its 3-D positions from the attention mask itself; without any it
    would number the padding too, shifting every row by its padding length.)
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _generated_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Tokens the model generated, up to and including the first stop token (padding excluded)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def _chunks(items: list[Conversation], size: int) -> Iterator[list[Conversation]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _local_folder(model: str) -> str | None:
    """The absolute path when ``model`` names a local folder (or looks like a path), else None."""
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or path.is_dir():
        return str(path.resolve())
    return None


def _default_attention(device: str) -> str:
    import torch

    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"


def _import_qwen_vl_utils() -> Any:
    from mmrank.optional import require

    return require("qwen_vl_utils", "Running a vision-language model locally").process_vision_info


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
