"""Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) through Hugging Face transformers.

Images go through qwen-vl-utils (``process_vision_info``), which resizes each one to a multiple of
the model's patch grid within ``min_pixels``/``max_pixels`` (the patch size comes from the
processor: 14 pixels for Qwen2/2.5-VL, 16 for Qwen3-VL); the processor then only normalises and
patchifies them. The calls themselves (generation, choice probabilities, token and sequence log-probabilities) are
:class:`~mmrank.mllm.hf_base.HFChatModel`'s: batches are left-padded and each row's next token is
read at the last position. Rope positions skip the padding (the model derives the 3-D positions of
batches with images from the attention mask; text-only batches get positions counted from each
row's first token), so a conversation scores the same alone and in any batch.
"""

from __future__ import annotations

from typing import Any

from mmrank.errors import InputError
from mmrank.images import open_rgb
from mmrank.mllm import DEFAULT_MLLM
from mmrank.mllm.base import Conversation
from mmrank.mllm.hf_base import HFChatModel

DEFAULT_MAX_PIXELS = 1280 * 28 * 28


class HFVisionLanguageModel(HFChatModel):
    """A Qwen-VL chat model run locally with transformers.

    ``model`` is a Hugging Face Hub id (loaded from the cache, downloaded when online), a local
    folder, or a model already loaded with transformers (then give its ``processor`` too).
    ``min_pixels``/``max_pixels`` bound each image's size (an image part may set its own); the
    other options are :class:`~mmrank.mllm.hf_base.HFChatModel`'s.
    """

    accepts_images = True
    kind = "vision-language model"
    companion = "processor"
    how_to_save = ("config.json, the *.safetensors weights, the tokenizer and processor files and the chat "
                   "template (a Qwen-VL model: Qwen2-VL, Qwen2.5-VL, Qwen3-VL)")

    def __init__(
        self,
        model: str | Any = DEFAULT_MLLM,
        *,
        processor: Any = None,
        min_pixels: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        **options: Any,
    ) -> None:
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self._process_vision_info = _import_qwen_vl_utils()
        super().__init__(model, tokenizer=processor, **options)
        self._patch_size = int(self._companion.image_processor.patch_size)

    @property
    def processor(self) -> Any:
        """The model's processor (its tokenizer is ``processor.tokenizer``)."""
        return self._companion

    @property
    def tokenizer(self) -> Any:
        return self._companion.tokenizer

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return self._from_pretrained(AutoModelForImageTextToText, AutoProcessor)

    def _prepare(self, model: Any, processor: Any) -> tuple[Any, Any]:
        """The model on this backend's device in eval mode, and its processor set to pad on the left."""
        if not (getattr(processor, "image_processor", None) and getattr(processor, "chat_template", None)):
            raise self._unavailable("its processor has no image processor or no chat template")
        processor.tokenizer.padding_side = "left"
        return model.to(self.device).eval(), processor

    # ------------------------------------------------------------------- inputs
    def _template(self, conversation: list[dict[str, Any]]) -> str:
        return self._companion.apply_chat_template(
            self._with_pixel_bounds(conversation), tokenize=False, add_generation_prompt=True,
            **self.chat_template_options)

    def _encode(self, conversations: list[Conversation], prompts: list[str]) -> Any:
        messages = [self._with_pixel_bounds(conversation) for conversation in conversations
                    if not isinstance(conversation, str)]
        try:
            images, _ = self._process_vision_info(messages, image_patch_size=self._patch_size)
        except ValueError as exc:  # e.g. an aspect ratio beyond 200:1
            raise InputError(f"Cannot prepare the images for {self.name}: {exc}") from exc
        # The images are already sized by qwen-vl-utils: the processor must not resize them again.
        return self._companion(text=prompts, images=images, padding=True, do_resize=False, return_tensors="pt")

    def _with_pixel_bounds(self, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _import_qwen_vl_utils() -> Any:
    from mmrank.optional import require

    return require("qwen_vl_utils", "Running a vision-language model locally").process_vision_info
