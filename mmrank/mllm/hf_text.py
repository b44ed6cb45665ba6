"""Text-only causal language models (Qwen2.5, Qwen3, Llama, Mistral, ... families) through Hugging
Face transformers, with the same calls as the vision-language backend (see
:class:`~mmrank.mllm.hf_base.HFChatModel`): the LLM rerankers of :mod:`mmrank.rerankers` run on
either. Each model's own chat template renders the conversations (``chat_template_options`` reach
it, e.g. ``enable_thinking``); a conversation given as a string is a prompt already written out.
"""

from __future__ import annotations

from typing import Any

from mmrank.errors import InputError
from mmrank.mllm.base import Conversation
from mmrank.mllm.hf_base import HFChatModel


class HFLanguageModel(HFChatModel):
    """A text-only causal LM run locally with transformers (``AutoModelForCausalLM``).

    ``model`` is a Hugging Face Hub id, a local folder, or a model already loaded with transformers
    (then give its ``tokenizer`` too). A message whose content is a list of parts may hold text
    parts only: an image part is an InputError (ask a vision-language model about pictures).
    Tokenizers without a padding token pad with their end-of-sequence token.
    """

    kind = "language model"

    # ------------------------------------------------------------------ loading
    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return self._from_pretrained(AutoModelForCausalLM, AutoTokenizer)

    def _prepare(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        if not getattr(tokenizer, "chat_template", None):
            raise self._unavailable("its tokenizer has no chat template (is it a base model rather than a chat model?)")
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.to(self.device).eval(), tokenizer

    # ------------------------------------------------------------------- inputs
    def _template(self, conversation: list[dict[str, Any]]) -> str:
        return super()._template([_text_message(message) for message in conversation])

    def _encode(self, conversations: list[Conversation], prompts: list[str]) -> Any:
        # The prompts hold their special tokens already (the template wrote them).
        return self._companion(prompts, padding=True, add_special_tokens=False, return_tensors="pt")


def _text_message(message: dict[str, Any]) -> dict[str, Any]:
    """The message with a list of text parts joined into one string (what text chat templates read)."""
    content = message["content"]
    if isinstance(content, str):
        return message
    texts = []
    for part in content:
        if isinstance(part, dict) and (part.get("type") == "image" or "image" in part):
            raise InputError("A text-only language model cannot read an image part; use a vision-language "
                             "model (e.g. Qwen/Qwen2.5-VL-3B-Instruct) for page images, or the pages' text.")
        if not isinstance(part, dict) or "text" not in part:
            raise InputError(f"A message part is neither an image nor a text: {part!r}.")
        texts.append(part["text"])
    return {**message, "content": "".join(texts)}
