"""What the local transformers backends share: device and dtype, left-padded batches, and the four
calls (generation, choice probabilities, next-token log-probabilities, teacher-forced sequence
log-probabilities) over whatever inputs a subclass builds.

A subclass (:class:`~mmrank.mllm.hf.HFVisionLanguageModel`, :class:`~mmrank.mllm.hf_text.HFLanguageModel`)
loads its model and tokenizer and turns a batch of prompts into model inputs (:meth:`HFChatModel._encode`);
everything else is here, so a conversation scores the same whichever backend reads it. Rows are
left-padded and each row's next token is read at the last position; rope positions of text-only
batches count from each row's first real token (:func:`text_positions`), so a conversation scores
the same alone and in any batch.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.encoders.base import resolve_device
from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache
from mmrank.mllm.base import (
    Conversation,
    Generation,
    TopTokens,
    Usage,
    check_conversations,
    check_generation_options,
    check_tokens,
    choice_variants,
    softmax_rows,
)

DTYPES = ("float32", "bfloat16", "float16")


class HFChatModel(ABC):
    """A chat model run locally with transformers (see the module docstring).

    ``dtype`` ``auto`` is bfloat16 on CUDA and float32 on the CPU; ``attn_implementation`` defaults
    to flash_attention_2 on CUDA when flash-attn is installed, else sdpa. ``batch_size``
    conversations share one forward pass. ``chat_template_options`` go to the chat template (e.g.
    ``{"enable_thinking": False}`` for Qwen3).
    """

    accepts_images = False
    kind = "language model"  # in error messages
    how_to_save = "config.json, the *.safetensors weights, the tokenizer files and the chat template"

    def __init__(
        self,
        model: str | Any,
        *,
        tokenizer: Any = None,
        device: str | None = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        chat_template_options: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}.")
        if dtype != "auto" and dtype not in DTYPES:
            raise InputError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}; got {dtype!r}.")
        loaded = not isinstance(model, str)
        if loaded and tokenizer is None:
            raise InputError(f"A loaded model needs its {self.companion}: {type(self).__name__}(model, "
                             f"{self.companion}=...).")
        self.model_name = model.config.name_or_path or type(model).__name__ if loaded else model
        self.source = self.model_name if loaded else local_folder(model) or model
        self._is_local = not loaded and Path(self.source).is_absolute()
        self.name = f"hf:{self.source}"
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.dtype = dtype
        self.attn_implementation = attn_implementation or default_attention(self.device)
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.chat_template_options = dict(chat_template_options or {})
        self.usage = Usage()
        self._token_ids: dict[tuple[tuple[str, ...], str], list[int]] = {}
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self._model, self._companion = self._prepare(model, tokenizer) if loaded else self._load()

    companion = "tokenizer"  # what a loaded model must come with

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._companion

    @property
    def model(self) -> Any:
        """The transformers model."""
        return self._model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device!r}, dtype={self.dtype!r})"

    # ------------------------------------------------------------------ loading
    @abstractmethod
    def _load(self) -> tuple[Any, Any]:
        """The model and its tokenizer (or processor), loaded from ``self.source``."""

    @abstractmethod
    def _prepare(self, model: Any, companion: Any) -> tuple[Any, Any]:
        """The model on this backend's device in eval mode, and its tokenizer set to pad on the left."""

    def _from_pretrained(self, model_class: Any, companion_class: Any) -> tuple[Any, Any]:
        """``model_class`` and ``companion_class`` from ``self.source`` (ModelUnavailableError when
        they cannot be loaded), prepared."""
        import torch

        if self._is_local and not Path(self.source).is_dir():
            raise self._unavailable("the folder does not exist")
        try:
            model = model_class.from_pretrained(
                self.source,
                dtype=getattr(torch, self.dtype),
                attn_implementation=self.attn_implementation,
                trust_remote_code=self.trust_remote_code,
            )
            companion = companion_class.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise self._unavailable(first_line(exc)) from exc
        return self._prepare(model, companion)

    def _unavailable(self, reason: str) -> ModelUnavailableError:
        if self._is_local:
            where = f"the folder {self.source}"
            how = (f"Give a folder that holds a {self.kind} as saved by save_pretrained: {self.how_to_save}, "
                   "e.g. a snapshot from the Hugging Face Hub")
        else:
            where = hugging_face_cache()
            how = (
                f"To use it offline, run `hf download {self.source}` (or `huggingface-cli download "
                f"{self.source}`) on a machine with network access, copy the cache over and point HF_HOME "
                "at it (and set HF_HUB_OFFLINE=1); or pass the path of a local folder holding the model"
            )
        return ModelUnavailableError(
            f"{self.kind[0].upper()}{self.kind[1:]} {self.model_name!r} is not available: "
            f"{reason.rstrip('.')}. Looked in {where}. {how}."
        )

    # ------------------------------------------------------------------- inputs
    def prompt_text(self, conversation: Conversation, assistant_prefix: str = "") -> str:
        """The text the model reads: the chat template with the generation prompt, then
        ``assistant_prefix``; a string conversation is the prompt already written out."""
        if isinstance(conversation, str):
            return conversation + assistant_prefix
        return self._template(conversation) + assistant_prefix

    def _template(self, conversation: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **self.chat_template_options)

    @abstractmethod
    def _encode(self, conversations: list[Conversation], prompts: list[str]) -> Any:
        """Left-padded model inputs for one batch: ``prompts`` are the conversations' texts."""

    def _inputs(self, conversations: list[Conversation], assistant_prefix: str, suffixes: Sequence[str] = ()) -> Any:
        """Left-padded model inputs (on the model's device) for one batch of conversations, each
        prompt followed by ``assistant_prefix`` (and by its entry of ``suffixes``, when given)."""
        prompts = [self.prompt_text(conversation, assistant_prefix) for conversation in conversations]
        if suffixes:
            prompts = [prompt + suffix for prompt, suffix in zip(prompts, suffixes, strict=True)]
        return self._encode(conversations, prompts).to(self.device)

    def _forward(self, inputs: Any, keep: int = 1) -> Any:
        """The logits of the last ``keep`` positions of every row, float64 on the CPU."""
        import torch

        if "pixel_values" not in inputs:
            inputs["position_ids"] = text_positions(inputs["attention_mask"])
        with torch.inference_mode():
            logits = self._model(**inputs, logits_to_keep=keep).logits[:, -keep:, :]
        self.usage.forward_passes += 1
        self.usage.input_tokens += int(inputs["attention_mask"].sum())
        return logits.double().cpu()

    # ------------------------------------------------------------------ scoring
    def choice_probability(
        self, conversations: Sequence[Conversation], choices: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray:
        """P(choice) from the next-token logits, softmaxed over the choices only.

        One forward pass per batch; a choice's logit is the log-sum-exp over its single-token
        spellings (with and without a leading space).
        """
        conversations = check_conversations(conversations)
        token_ids = self._resolve_choices(choices)
        self.usage.calls += 1
        self.usage.prompts += len(conversations)
        rows = []
        for chunk in chunks(conversations, self.batch_size):
            logits = self._forward(self._inputs(chunk, assistant_prefix))[:, -1, :].numpy()
            rows.append(np.stack([np.logaddexp.reduce(logits[:, ids], axis=1) for ids in token_ids], axis=1))
        if not rows:
            return np.zeros((0, len(token_ids)), dtype=np.float64)
        return softmax_rows(np.concatenate(rows))

    def token_logprobs(
        self, conversations: Sequence[Conversation], tokens: Sequence[str], *, assistant_prefix: str = "",
        top_k: int | None = None,
    ) -> np.ndarray:
        """Log P(token) of each of ``tokens`` as the next token, from the full softmax (one forward
        pass per batch); with ``top_k``, -inf for a token outside the top ``top_k``."""
        import torch

        conversations = check_conversations(conversations)
        ids = self.resolve_tokens(tokens, assistant_prefix)
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}.")
        self.usage.calls += 1
        self.usage.prompts += len(conversations)
        rows = []
        for chunk in chunks(conversations, self.batch_size):
            logprobs = torch.log_softmax(self._forward(self._inputs(chunk, assistant_prefix))[:, -1, :], dim=-1)
            picked = logprobs[:, ids]
            if top_k is not None:
                threshold = torch.topk(logprobs, min(top_k, logprobs.shape[-1]), dim=-1).values[:, -1:]
                picked = torch.where(picked >= threshold, picked, torch.full_like(picked, -np.inf))
            rows.append(picked.numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(ids)), dtype=np.float64)

    def sequence_logprob(
        self, conversations: Sequence[Conversation], continuations: Sequence[str], *, assistant_prefix: str = ""
    ) -> np.ndarray:
        """Sum of teacher-forced log P of each continuation's tokens after ``assistant_prefix``.

        Each (conversation, continuation) pair is one row of a batch; the continuation's tokens are
        the prompt-plus-continuation's tokens past the prompt's own (InputError when the prompt's
        tokens are not a prefix of them, i.e. the continuation would merge with the prompt's end).
        """
        import torch

        conversations = check_conversations(conversations)
        continuations = check_tokens(continuations, "continuations")
        pairs = [(conversation, text) for conversation in conversations for text in continuations]
        self.usage.calls += 1
        self.usage.prompts += len(pairs)
        totals = []
        for chunk in chunks(pairs, self.batch_size):
            chats = [conversation for conversation, _ in chunk]
            texts = [text for _, text in chunk]
            prompt_ids = self._inputs(chats, assistant_prefix)
            full = self._inputs(chats, assistant_prefix, texts)
            lengths = self._continuation_lengths(prompt_ids, full, texts)
            keep = max(lengths) + 1
            logprobs = torch.log_softmax(self._forward(full, keep), dim=-1)
            targets = full["input_ids"][:, -keep:].cpu()
            for row, length in enumerate(lengths):
                steps = torch.arange(keep - 1 - length, keep - 1)
                totals.append(float(logprobs[row, steps, targets[row, steps + 1]].sum()))
        return np.array(totals, dtype=np.float64).reshape(len(conversations), len(continuations))

    @staticmethod
    def _continuation_lengths(prompt: Any, full: Any, texts: Sequence[str]) -> list[int]:
        lengths = []
        for row, text in enumerate(texts):
            own = prompt["input_ids"][row][prompt["attention_mask"][row].bool()].tolist()
            whole = full["input_ids"][row][full["attention_mask"][row].bool()].tolist()
            if whole[:len(own)] != own or len(whole) == len(own):
                raise InputError(f"The continuation {text!r} merges with the end of the prompt when tokenized; "
                                 "end the assistant prefix where a token boundary is sure (e.g. after a space).")
            lengths.append(len(whole) - len(own))
        return lengths

    def resolve_tokens(self, tokens: Sequence[str], context: str = "") -> list[int]:
        """The one token id of each of ``tokens`` as it follows ``context`` (the assistant prefix).

        InputError when a token splits into several, or two tokens are the same id.
        """
        tokens = check_tokens(tokens)
        key = (tuple(tokens), context)
        if key not in self._token_ids:
            encode = self.tokenizer.encode
            before = encode(context, add_special_tokens=False) if context else []
            ids = []
            for token in tokens:
                after = encode(context + token, add_special_tokens=False)
                piece = after[len(before):] if after[:len(before)] == before else []
                if len(piece) != 1:
                    alone = self.tokenizer.convert_ids_to_tokens(encode(token, add_special_tokens=False))
                    raise InputError(
                        f"{token!r} is not one token after {context!r} for {self.name} (alone it is {alone}). "
                        "Score identifiers of several tokens with sequence_logprob, or use single-token ones.")
                ids.append(piece[0])
            if len(set(ids)) != len(ids):
                raise InputError(f"The tokens {tokens!r} are not different token ids for {self.name}: {ids}.")
            self._token_ids[key] = ids
        return self._token_ids[key]

    def _resolve_choices(self, choices: Sequence[str]) -> list[list[int]]:
        """Token ids of each choice's single-token spellings, resolved once per choices tuple."""
        key = tuple(choices)
        if key not in self._choice_ids:
            tokenizer = self.tokenizer
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
        top_logprobs: int = 0,
    ) -> list[Generation]:
        """Answers to each conversation: greedy at temperature 0, sampled above it. The text is
        what the model adds after ``assistant_prefix``, special tokens removed; ``top_logprobs``
        > 0 also records each step's token and its most likely alternatives (see Generation)."""
        import torch

        conversations = check_conversations(conversations)
        check_generation_options(max_new_tokens, temperature, top_logprobs)
        options: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens}
        if temperature > 0:
            options["temperature"] = temperature
        if top_logprobs:
            options.update(output_logits=True, return_dict_in_generate=True)
        stop_ids = self._stop_ids()
        tokenizer = self.tokenizer
        self.usage.calls += 1
        self.usage.prompts += len(conversations)
        results = []
        for chunk in chunks(conversations, self.batch_size):
            inputs = self._inputs(chunk, assistant_prefix)
            with torch.inference_mode():
                output = self._model.generate(**inputs, **options)
            sequences = output.sequences if top_logprobs else output
            new_tokens = sequences[:, inputs["input_ids"].shape[1]:].cpu()
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
            steps = _top_tokens(tokenizer, output.logits, top_logprobs) if top_logprobs else None
            for row, (text, prompt_length, tokens) in enumerate(
                    zip(texts, prompt_lengths, new_tokens.tolist(), strict=True)):
                length = generated_length(tokens, stop_ids)
                extra = {}
                if steps is not None:
                    extra = {"tokens": tuple(tokenizer.decode([token]) for token in tokens[:length]),
                             "top_logprobs": tuple(step[row] for step in steps[:length])}
                results.append(Generation(text, int(prompt_length), length, **extra))
            self.usage.forward_passes += new_tokens.shape[1]
        self.usage.input_tokens += sum(result.input_tokens for result in results)
        self.usage.generated_tokens += sum(result.generated_tokens for result in results)
        return results

    def _stop_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _top_tokens(tokenizer: Any, logits: Sequence[Any], k: int) -> list[list[TopTokens]]:
    """For each step, for each row: the ``k`` most likely tokens and their log-probabilities."""
    import torch

    steps = []
    for step_logits in logits:
        logprobs = torch.log_softmax(step_logits.double(), dim=-1)
        values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
        steps.append([tuple((tokenizer.decode([token]), float(value)) for token, value in zip(row_ids, row_values))
                      for row_ids, row_values in zip(ids.tolist(), values.tolist())])
    return steps


def text_positions(attention_mask: Any) -> Any:
    """Rope positions of a left-padded text-only batch: each row counts from its first real token.

    (Without them a model would number the padding too, shifting every row by its padding length.)
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def generated_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Tokens the model generated, up to and including the first stop token (padding excluded)."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return index + 1
    return len(tokens)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def local_folder(model: str) -> str | None:
    """The absolute path when ``model`` names a local folder (or looks like a path), else None."""
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or path.is_dir():
        return str(path.resolve())
    return None


def default_attention(device: str) -> str:
    import torch

    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
