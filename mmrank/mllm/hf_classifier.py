"""Sequence classifiers run locally with transformers: a language model with a classification head
that gives one relevance logit per (query, passage) pair, as DeAR's pointwise rerankers (Llama 3
with a one-logit head, ``LlamaForSequenceClassification``) and RankLLaMA do.

The pair is tokenized one of two ways (``encoding`` of :meth:`HFSequenceClassifier.score`):

- ``per-side`` (the tevatron-style reranker input of DeAR's inference pipeline,
  ``pointwise_reranker/data.py``): each side is tokenized without special tokens, the first cut to
  ``max_lengths[0]`` tokens, the second to ``max_lengths[1] - 3``; the row is BOS, first side, BOS,
  second side. (The reference joins them with transformers 4's ``prepare_for_model``, which for
  Llama 3's ``PreTrainedTokenizerFast`` adds no special token of its own; transformers 5 tokenizers
  no longer have that method, so the row is written out here.)
- ``pair``: the tokenizer's own pair encoding, cut longest-first to ``sum(max_lengths)`` tokens
  (``tokenizer(first, second, truncation=True, ...)``, as DeAR's ``simple_rerank.py``). For Llama 3
  tokenizers this is also BOS, first, BOS, second, so the two agree until a side is cut.

Every row is padded on the right to ``sum(max_lengths)`` tokens (with the tokenizer's padding
token, else its end-of-sequence token, as the references set it), so a pair scores the same alone
and in any batch. The head reads the rightmost position whose token is not the config's
``pad_token_id`` (transformers' rule): with a config that has none, the tokenizer's padding token
is set there, so it reads the last real token; a config whose ``pad_token_id`` is another token
(DeAR's training code sets 0) reads the last position of the padded row.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmrank.encoders.base import resolve_device
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm.base import Usage
from mmrank.mllm.hf_base import DTYPES, HFChatModel, chunks, default_attention, first_line, local_folder

PairEncoding = Literal["per-side", "pair"]
PAIR_ENCODINGS = ("per-side", "pair")
# What DeAR's data.py keeps free of the second side's budget ("text_max_length - 3").
SECOND_SIDE_RESERVE = 3


class PeftMissingError(ModelUnavailableError):
    """The model is a PEFT (LoRA) adapter and peft is not installed."""


def adapter_base(source: str) -> str | None:
    """The base model a PEFT adapter (a folder or Hub id holding ``adapter_config.json``) was
    trained on; None for a full model (or one that cannot be found: loading it then says so)."""
    from transformers.utils import find_adapter_config_file

    try:
        found = find_adapter_config_file(source)
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    base = json.loads(Path(found).read_text(encoding="utf-8")).get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


class HFSequenceClassifier:
    """A one-logit sequence classifier run locally with transformers
    (``AutoModelForSequenceClassification`` and its ``AutoTokenizer``).

    ``model``: a Hugging Face id or a local folder of a full model, or of a PEFT adapter (loaded on
    its base model with one label and merged, as DeAR's ``simple_rerank.py`` does; needs peft).
    ``dtype`` ``auto`` is bfloat16 on CUDA and float32 on the CPU; ``batch_size`` pairs per forward
    pass. ``pad_token_id``: the id the head treats as padding when it picks the position it reads
    (see the module docstring); None keeps the config's, or when it has none sets the tokenizer's
    padding token. ModelUnavailableError when the model cannot be loaded or gives more than one
    score per pair.
    """

    kind = "sequence classifier"
    how_to_save = "config.json, the *.safetensors weights and the tokenizer files"
    _unavailable = HFChatModel._unavailable  # the same advice as the chat backends (hf download, a folder)

    def __init__(self, model: str, *, device: str | None = "auto", dtype: str = "auto", batch_size: int = 32,
                 attn_implementation: str | None = None, pad_token_id: int | None = None,
                 trust_remote_code: bool = False) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1; got {batch_size}.")
        if dtype != "auto" and dtype not in DTYPES:
            raise InputError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}; got {dtype!r}.")
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"model must be a Hugging Face id or a local folder; got {model!r}.")
        self.model_name = model
        self.source = local_folder(model) or model
        self._is_local = Path(self.source).is_absolute()
        self.name = f"hf:{self.source}"
        self.device = resolve_device(device)
        self.dtype = ("bfloat16" if self.device.startswith("cuda") else "float32") if dtype == "auto" else dtype
        self.attn_implementation = attn_implementation or default_attention(self.device)
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.usage = Usage()
        self._model, self._tokenizer = self._load(pad_token_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device!r}, dtype={self.dtype!r})"

    @property
    def model(self) -> Any:
        """The transformers model."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (padding on the right)."""
        return self._tokenizer

    # ------------------------------------------------------------------ loading
    def _load(self, pad_token_id: int | None) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self._is_local and not Path(self.source).is_dir():
            raise self._unavailable("the folder does not exist")
        options = {"dtype": getattr(torch, self.dtype), "attn_implementation": self.attn_implementation,
                   "trust_remote_code": self.trust_remote_code}
        base = adapter_base(self.source)
        try:
            if base is None:
                model = AutoModelForSequenceClassification.from_pretrained(self.source, **options)
                tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
            else:
                model, tokenizer = self._load_adapter(base, options)
        except (OSError, ValueError, KeyError) as exc:
            raise self._unavailable(first_line(exc)) from exc
        labels = model.config.num_labels
        if labels != 1:
            raise self._unavailable(f"it gives {labels} scores per pair, and a reranker needs one (num_labels=1)")
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if pad_token_id is not None:
            model.config.pad_token_id = pad_token_id
        elif model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model.to(self.device).eval(), tokenizer

    def _load_adapter(self, base: str, options: dict[str, Any]) -> tuple[Any, Any]:
        """A PEFT adapter on its base model with one label, merged; the base model's tokenizer."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if importlib.util.find_spec("peft") is None:
            raise PeftMissingError(
                f"{self.kind[0].upper()}{self.kind[1:]} {self.model_name!r} is a PEFT (LoRA) adapter on {base!r}; "
                "loading it needs peft (pip install peft), which is not installed. Or use the adapter merged "
                "into its base model (a full model folder or Hub id).")
        from peft import PeftModel

        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, **options)
        model = PeftModel.from_pretrained(model, self.source).merge_and_unload()
        return model, AutoTokenizer.from_pretrained(base, trust_remote_code=self.trust_remote_code)

    # ------------------------------------------------------------------- inputs
    def encode(self, pairs: Sequence[tuple[str, str]], *, max_lengths: tuple[int, int] = (32, 196),
               encoding: PairEncoding = "per-side") -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` (torch tensors on the CPU) of ``pairs``, each row
        padded on the right to ``sum(max_lengths)`` tokens (see the module docstring)."""
        import torch

        first_max, second_max = check_max_lengths(max_lengths)
        if encoding not in PAIR_ENCODINGS:
            raise InputError(f"encoding must be one of {', '.join(PAIR_ENCODINGS)}; got {encoding!r}.")
        length = first_max + second_max
        tokenizer = self._tokenizer
        if encoding == "pair":
            firsts, seconds = [first for first, _ in pairs], [second for _, second in pairs]
            encoded = tokenizer(firsts, seconds, truncation=True, max_length=length, padding="max_length",
                                return_token_type_ids=False, return_tensors="pt")
            return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        bos = self._bos_id()
        rows = []
        for first, second in pairs:
            head = tokenizer.encode(first, add_special_tokens=False, max_length=first_max, truncation=True)
            tail = tokenizer.encode(second, add_special_tokens=False, max_length=second_max - SECOND_SIDE_RESERVE,
                                    truncation=True)
            rows.append(([bos, *head, bos, *tail])[:length])
        ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _bos_id(self) -> int:
        """The token put before each side: the tokenizer's BOS, else ``<|endoftext|>`` (what DeAR's
        inference.py sets for Qwen tokenizers, which have no BOS)."""
        tokenizer = self._tokenizer
        if tokenizer.bos_token_id is not None:
            return tokenizer.bos_token_id
        fallback = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(fallback, int) and fallback != tokenizer.unk_token_id:
            return fallback
        raise InputError(f"encoding: per-side puts the tokenizer's BOS token before each side, but the tokenizer "
                         f"of {self.model_name!r} has none; use encoding: pair.")

    # ------------------------------------------------------------------ scoring
    def score(self, pairs: Sequence[tuple[str, str]], *, max_lengths: tuple[int, int] = (32, 196),
              encoding: PairEncoding = "per-side") -> np.ndarray:
        """The head's logit for each (first, second) pair, float64, ``batch_size`` pairs per forward
        pass (the same alone and in any batch: rows have a fixed length)."""
        import torch

        pairs = list(pairs)
        self.usage.calls += 1
        self.usage.prompts += len(pairs)
        scores = []
        for chunk in chunks(pairs, self.batch_size):
            inputs = self.encode(chunk, max_lengths=max_lengths, encoding=encoding)
            with torch.inference_mode():
                logits = self._model(**{key: value.to(self.device) for key, value in inputs.items()}).logits
            self.usage.forward_passes += 1
            self.usage.input_tokens += int(inputs["attention_mask"].sum())
            scores.append(logits[:, 0].double().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64)


def check_max_lengths(max_lengths: Sequence[int]) -> tuple[int, int]:
    """``(first, second)`` token budgets after an InputError unless both are whole numbers and the
    second leaves room past DeAR's reserve of 3."""
    values = tuple(max_lengths)
    if len(values) != 2 or not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        raise InputError(f"max_lengths is two whole numbers (first side, second side); got {max_lengths!r}.")
    first, second = values
    if first < 1 or second <= SECOND_SIDE_RESERVE:
        raise InputError(f"The query side needs at least 1 token and the passage side more than "
                         f"{SECOND_SIDE_RESERVE}; got {first} and {second}.")
    return first, second
