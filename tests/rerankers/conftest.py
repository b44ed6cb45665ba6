"""Fixtures of the reranker tests: a tiny random-weight cross-encoder, built offline from a config."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

# Whole words the tests' texts use, on top of single characters (so that any lowercase word
# tokenizes, as ##-pieces): a WordPiece vocabulary small enough to write by hand.
TINY_WORDS = ("the a an of and to in on is was for with what how many page report revenue margin operating "
              "profit year cat dog sofa rocket launch coins table flower garden red blue green moon sun").split()
# BERT's layout, shrunk: 2 layers, hidden size 32, 2 heads, intermediate 37, one output (a relevance
# logit). Wider initial weights than BERT's 0.02 so that random scores are well apart.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
             "max_position_embeddings": 512, "num_labels": 1, "initializer_range": 0.2}
# What the ms-marco cross-encoders' configs say: predict returns the raw logit (sentence-transformers
# would otherwise apply a sigmoid to a one-label model).
IDENTITY_ACTIVATION = {"activation_fn": "torch.nn.modules.linear.Identity"}


def tiny_vocabulary() -> list[str]:
    """BERT's special tokens, punctuation, letters and digits (alone and as ##-pieces), then :data:`TINY_WORDS`."""
    characters = string.ascii_lowercase + string.digits
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *characters,
              *(f"##{c}" for c in characters), *TINY_WORDS]
    return list(dict.fromkeys(tokens))


def build_tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """Write a tiny BERT cross-encoder (``BertForSequenceClassification`` with one label, seeded
    random weights, and its WordPiece tokenizer) into ``folder``, which ``CrossEncoder(folder)``
    loads offline. The same seed always gives the same weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = tiny_vocabulary()
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    # From the folder: how the vocabulary file is passed to the constructor changed in transformers 5.
    BertTokenizerFast.from_pretrained(str(folder), model_max_length=512).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocabulary), **TINY_BERT)
    config.sentence_transformers = dict(IDENTITY_ACTIVATION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers 5 draws a bar while writing the weights
    try:
        model.save_pretrained(folder)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight cross-encoder folder (seed 0), for ``CrossEncoder(folder)`` or the
    ``cross-encoder`` stage's ``model``."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_cross_encoder"), seed=0)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_cross_encoder_dir: Path):
    """The tiny cross-encoder loaded once through sentence-transformers, on the CPU: the reference
    the stage's scores are checked against."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")
