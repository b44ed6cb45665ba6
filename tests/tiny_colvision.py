"""Tiny random-weight ColQwen2 and ColPali checkpoints in transformers' format: the fixtures of the
late-interaction page encoder (mmrank.encoders.colvision).

``python tests/tiny_colvision.py`` rebuilds ``tests/fixtures/tiny-colqwen2/`` and
``tests/fixtures/tiny-colpali/`` (seeded, so the same files every time):

- tiny-colqwen2: ``ColQwen2ForRetrieval`` over the tiny Qwen2-VL of ``tests/fixtures/tiny-qwen2-vl``
  (its config, and the offline tokenizer of :mod:`tests.tiny_mllm`), 16-dimensional embeddings,
  with a ``ColQwen2Processor`` that resizes images to 28x28 .. 112x112 pixels (1 to 16 image tokens);
- tiny-colpali: ``ColPaliForRetrieval`` over a tiny PaliGemma (SigLIP vision, Gemma text) with a
  ``ColPaliProcessor``: a 56x56 SigLIP image processor (16 image tokens) and a small BPE wrapped as
  a ``GemmaTokenizer`` with ``<bos>``, ``<eos>``, ``<pad>`` and ``<image>``.

:func:`build_tiny_colqwen2` also builds a ColQwen2 over a tiny Qwen2.5-VL (``vlm="qwen2_5_vl"``),
which the tests build on the fly instead of committing.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if not __package__:  # run as `python tests/tiny_colvision.py`: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_mllm import FIXTURE_DIR as TINY_QWEN2_VL_DIR
from tests.tiny_mllm import INIT_RANGE, build_tiny_tokenizer

if TYPE_CHECKING:
    from transformers import GemmaTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
COLQWEN2_DIR = FIXTURES / "tiny-colqwen2"
COLPALI_DIR = FIXTURES / "tiny-colpali"
EMBEDDING_DIM = 16

# Keys of a saved config.json that describe the checkpoint it came from rather than the model.
_CHECKPOINT_KEYS = ("architectures", "dtype", "transformers_version", "_name_or_path")

GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<image>"]
# Gemma falls back to one token per byte for characters its vocabulary lacks.
GEMMA_BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
COLPALI_IMAGE_SIZE = 56  # pixels; 14-pixel patches give 16 image tokens

_COLPALI_CORPUS = [
    "Question: what is shown in the picture?",
    "Describe the image.",
    "Query: which page shows the operating margin of the company in 2023?",
    "a red house with a garden, a cat, a dog, a car, a tree, a building, a document page, a chart",
    "What is the total revenue? Where is the table of contents? How many figures are there?",
]


def _seeded_float_model(model_class: Any, config: Any, seed: int) -> Any:
    """``model_class(config)`` with weights drawn under ``seed``, in float32, in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).to(torch.float32).eval()


def _save(folder: Path, model: Any, processor: Any) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder)  # bfloat16 halves the files, like real checkpoints
    processor.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------- ColQwen2
def tiny_qwen2_vl_config() -> dict[str, Any]:
    """The Qwen2-VL config of ``tests/fixtures/tiny-qwen2-vl`` as a dict, less checkpoint details."""
    config = json.loads((TINY_QWEN2_VL_DIR / "config.json").read_text())
    return {key: value for key, value in config.items() if key not in _CHECKPOINT_KEYS}


def tiny_qwen2_5_vl_config() -> dict[str, Any]:
    """A Qwen2.5-VL config of the same size and tokens as the tiny Qwen2-VL (its vision tower has
    window attention, RMSNorm and a gated MLP; one full-attention block of two)."""
    config = tiny_qwen2_vl_config()
    text = {key: value for key, value in config["text_config"].items() if key != "model_type"}
    return {
        **config,
        "model_type": "qwen2_5_vl",
        "text_config": text,
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "initializer_range": INIT_RANGE,
        },
    }


def build_tiny_colqwen2(folder: Path, seed: int = 0, vlm: str = "qwen2_vl") -> Path:
    """Write a tiny ColQwen2 (over the tiny Qwen2-VL, or Qwen2.5-VL with ``vlm="qwen2_5_vl"``) and
    its processor into ``folder`` with save_pretrained; random weights seeded by ``seed``."""
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor, Qwen2VLImageProcessor

    vlm_config = {"qwen2_vl": tiny_qwen2_vl_config, "qwen2_5_vl": tiny_qwen2_5_vl_config}[vlm]()
    # INIT_RANGE for the projection too (transformers draws it at 0.02): outputs vary with input.
    config = ColQwen2Config(vlm_config=vlm_config, embedding_dim=EMBEDDING_DIM, initializer_range=INIT_RANGE)
    model = _seeded_float_model(ColQwen2ForRetrieval, config, seed)
    # The tiny tokenizer has what ColQwen2Processor needs: <|image_pad|> (its image token) and a
    # pad token, <|endoftext|>, which is also the query augmentation token.
    processor = ColQwen2Processor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 16),
        tokenizer=build_tiny_tokenizer(),
    )
    return _save(folder, model, processor)


# ---------------------------------------------------------------------------------------- ColPali
def build_tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A ``GemmaTokenizer`` over a small BPE trained on a few sentences: Gemma's special tokens
    (``<bos>``, ``<eos>``, ``<pad>``, ``<unk>``, ``<mask>``, ``<image>``), its 256 byte-fallback
    tokens, and every printable ASCII character, so any text encodes without ``<unk>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Gemma writes spaces as "▁"; splitting before each "▁" while training keeps merges inside words.
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=GEMMA_SPECIAL_TOKENS + GEMMA_BYTE_TOKENS,
        initial_alphabet=[c for c in string.printable if not c.isspace()] + ["▁"],
        show_progress=False,
    )
    bpe.train_from_iterator(_COLPALI_CORPUS * 3, trainer)
    trained = json.loads(bpe.to_str())["model"]
    return GemmaTokenizer(
        vocab=trained["vocab"],
        merges=[tuple(merge) for merge in trained["merges"]],
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
    )


def build_tiny_colpali(folder: Path, seed: int = 0) -> Path:
    """Write a tiny ColPali (PaliGemma: 2-layer SigLIP, 2-layer Gemma) and its processor into
    ``folder`` with save_pretrained; random weights seeded by ``seed``."""
    from transformers import (
        ColPaliConfig,
        ColPaliForRetrieval,
        ColPaliProcessor,
        PaliGemmaConfig,
        SiglipImageProcessor,
    )

    patch_size = 14
    image_tokens = (COLPALI_IMAGE_SIZE // patch_size) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": COLPALI_IMAGE_SIZE, "width": COLPALI_IMAGE_SIZE}, image_seq_length=image_tokens)
    # The processor adds PaliGemma's 1152 <locNNNN>/<segNNN> tokens to the tokenizer: build it
    # first, so the model's vocabulary covers every token the tokenizer can produce.
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=build_tiny_gemma_tokenizer())
    tokenizer = processor.tokenizer
    hidden = 32
    vlm_config = PaliGemmaConfig(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": COLPALI_IMAGE_SIZE,
            "patch_size": patch_size,
            "vision_use_head": False,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "initializer_range": INIT_RANGE,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_index=processor.image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=hidden,
        hidden_size=hidden,
        initializer_range=INIT_RANGE,
    )
    config = ColPaliConfig(vlm_config=vlm_config, embedding_dim=EMBEDDING_DIM, initializer_range=INIT_RANGE)
    model = _seeded_float_model(ColPaliForRetrieval, config, seed)
    return _save(folder, model, processor)


if __name__ == "__main__":
    print(build_tiny_colqwen2(COLQWEN2_DIR))
    print(build_tiny_colpali(COLPALI_DIR))
