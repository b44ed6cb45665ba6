"""The late-interaction page encoder (mmrank.encoders.colvision) on tiny random-weight ColQwen2 and
ColPali checkpoints (tests/fixtures/tiny-colqwen2, tiny-colpali; rebuilt by tests/tiny_colvision.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmrank.encoders import encodes_text, load_encoder_by_name, modalities
from mmrank.encoders.colvision import (
    ALIASES,
    ColVisionEncoder,
    _default_max_tokens,
    colvision_identity,
    resolve_model_id,
    unpadded_rows,
)
from mmrank.encoders.token_pooling import pool_tokens
from mmrank.errors import InputError, ModelUnavailableError
from tests.tiny_colvision import COLPALI_DIR, COLQWEN2_DIR, EMBEDDING_DIM, build_tiny_colqwen2
from tests.tiny_mllm import FIXTURE_DIR as TINY_QWEN2_VL_DIR

QUERIES = ["what is shown in the picture?", "a red house", "Which page shows the operating margin of the company?"]
# (height, width): ColQwen2 resizes to multiples of 28 pixels, one vector per 28x28 (2x2 patches).
SIZES = [(56, 56), (112, 84), (30, 200), (84, 56)]


def noise_page(height: int, width: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def colqwen2() -> ColVisionEncoder:
    return ColVisionEncoder(str(COLQWEN2_DIR), device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def colpali() -> ColVisionEncoder:
    return ColVisionEncoder(str(COLPALI_DIR), device="cpu", batch_size=3)


@pytest.fixture(params=["colqwen2", "colpali"])
def encoder(request: pytest.FixtureRequest) -> ColVisionEncoder:
    return request.getfixturevalue(request.param)


def raw_embeddings(encoder: ColVisionEncoder, batch: Any) -> Any:
    """The model's own output on a processor batch, as transformers' docs run it."""
    import torch

    with torch.inference_mode():
        return encoder._model(**batch).embeddings


def maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """For each query vector its best dot product over the page's vectors, summed."""
    return float((query @ page.T).max(axis=1).sum())


# ------------------------------------------------------------------------------------- parity
def test_maxsim_of_outputs_equals_the_processors_score_retrieval_on_raw_outputs(encoder):
    pages = [noise_page(56, 56, seed) for seed in range(3)]  # one size: no padding among pages
    processor = encoder._processor
    expected = processor.score_retrieval(
        raw_embeddings(encoder, processor.process_queries(QUERIES)),
        raw_embeddings(encoder, processor.process_images(pages)),
    ).numpy()

    page_rows, query_rows = encoder.encode_pages(pages), encoder.encode_queries(QUERIES)
    scores = np.array([[maxsim(query, page) for page in page_rows] for query in query_rows])

    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(scores, axis=1).min() > 1e-3  # the pages score differently: a meaningful check


# ------------------------------------------------------------------------------ page vectors
def test_each_page_gets_what_the_model_gives_it_alone_whatever_the_batch(colqwen2):
    pages = [noise_page(*size, seed) for seed, size in enumerate(SIZES)]
    batched = colqwen2.encode_pages(pages)  # batches of 3 and 1, padded to their longest page

    processor = colqwen2._processor
    for page, rows in zip(pages, batched):
        alone = processor.process_images([page])
        expected = raw_embeddings(colqwen2, alone)[0].numpy()
        assert rows.shape == (int(alone["attention_mask"].sum()), EMBEDDING_DIM) == expected.shape
        np.testing.assert_allclose(rows, expected, atol=1e-5)


def test_page_rows_are_unpadded_unit_float32_and_count_patches_plus_prompt(colqwen2):
    pages = [noise_page(*size, seed) for seed, size in enumerate(SIZES)]
    rows = colqwen2.encode_pages(pages)

    prompt = len(colqwen2._processor.tokenizer(colqwen2._processor.visual_prompt_prefix)["input_ids"]) - 1
    # Resized to (56, 56), (112, 84), (28, 196), (84, 56): 2x2, 4x3, 1x7, 3x2 vectors of 28x28 pixels.
    assert [len(page) for page in rows] == [prompt + patches for patches in (4, 12, 7, 6)]
    for page in rows:
        assert page.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(page, axis=1), 1.0, atol=1e-5)  # no zeroed padding rows


def test_colpali_pages_all_have_image_seq_length_plus_prompt_rows(colpali):
    rows = colpali.encode_pages([noise_page(*size, seed) for seed, size in enumerate(SIZES)])

    image_tokens = colpali._processor.image_seq_length
    assert image_tokens == 16
    prompt = len(colpali._processor.tokenizer(f"<bos>{colpali._processor.visual_prompt_prefix}\n")["input_ids"])
    assert {page.shape for page in rows} == {(image_tokens + prompt, EMBEDDING_DIM)}


def test_pages_from_paths_equal_pages_from_pil_images(colqwen2, tmp_path: Path):
    page = noise_page(84, 56, seed=7)
    page.save(tmp_path / "page.png")

    from_path, = colqwen2.encode_pages([tmp_path / "page.png"])
    np.testing.assert_array_equal(from_path, colqwen2.encode_pages([page])[0])


def test_query_rows_include_the_prefix_and_ten_augmentation_tokens(encoder):
    processor = encoder._processor
    for query, rows in zip(QUERIES, encoder.encode_queries(QUERIES)):
        alone = processor.process_queries([query])
        ids = alone["input_ids"][0].tolist()
        # The augmentation tokens are the pad token, yet attended (attention_mask 1): they are rows.
        assert ids[-11:] == [processor.tokenizer.pad_token_id] * 10 + [processor.tokenizer.convert_tokens_to_ids(
            processor.tokenizer.tokenize("\n")[0])]
        assert int(alone["attention_mask"].sum()) == len(ids) == len(rows)
        np.testing.assert_allclose(rows, raw_embeddings(encoder, alone)[0].numpy(), atol=1e-5)


def test_empty_inputs_give_empty_lists_and_single_strings_are_refused(colqwen2):
    assert colqwen2.encode_pages([]) == []
    assert colqwen2.encode_queries([]) == []
    with pytest.raises(InputError):
        colqwen2.encode_queries("a query")
    with pytest.raises(InputError):
        colqwen2.encode_pages("page.png")


def test_the_encoder_describes_itself(colqwen2):
    assert colqwen2.dim == EMBEDDING_DIM
    assert colqwen2.multi_vector is True
    assert colqwen2.dtype == "float32"  # the CPU default
    assert modalities(colqwen2.name) == {"image", "text"} and encodes_text(colqwen2.name)
    assert repr(colqwen2) == f"ColVisionEncoder('colvision:{COLQWEN2_DIR.resolve()}', device='cpu', dtype='float32')"


# ---------------------------------------------------------------------------------- identity
def test_name_round_trips_to_an_identical_encoder(encoder):
    assert encoder.name == f"colvision:{Path(encoder.model_id).resolve()}"
    rebuilt = load_encoder_by_name(encoder.name, device="cpu")

    assert rebuilt.name == encoder.name
    pages = [noise_page(56, 84, seed) for seed in range(2)]
    for ours, theirs in zip(encoder.encode_pages(pages) + encoder.encode_queries(QUERIES),
                            rebuilt.encode_pages(pages) + rebuilt.encode_queries(QUERIES)):
        np.testing.assert_array_equal(ours, theirs)


def test_pool_in_the_name_pools_pages_but_not_queries(colqwen2):
    pooled = load_encoder_by_name(f"{colqwen2.name};pool=3", device="cpu")

    assert pooled.pool_factor == 3 and pooled.name == f"{colqwen2.name};pool=3"
    pages = [noise_page(*size, seed) for seed, size in enumerate(SIZES)]
    for full, fewer in zip(colqwen2.encode_pages(pages), pooled.encode_pages(pages)):
        assert len(fewer) == len(full) // 3
        np.testing.assert_allclose(fewer, pool_tokens(full, 3), atol=1e-6)
    for full, same in zip(colqwen2.encode_queries(QUERIES), pooled.encode_queries(QUERIES)):
        np.testing.assert_array_equal(full, same)


def test_identities_are_canonical():
    assert colvision_identity(str(COLQWEN2_DIR / ".." / "tiny-colqwen2")) == f"colvision:{COLQWEN2_DIR.resolve()}"
    assert colvision_identity("colqwen2", 1) == "colvision:vidore/colqwen2-v1.0-hf"
    assert colvision_identity("colpali", 2) == "colvision:vidore/colpali-v1.3-hf;pool=2"
    assert resolve_model_id("colpali") == ALIASES["colpali"]
    assert resolve_model_id("org/some-colqwen2-hf") == "org/some-colqwen2-hf"


def test_a_pool_given_twice_must_agree():
    with pytest.raises(InputError, match="pool factor 3"):
        ColVisionEncoder.from_identity(f"{COLQWEN2_DIR};pool=3", pool_factor=2)
    with pytest.raises(ModelUnavailableError, match="whole number"):
        ColVisionEncoder.from_identity(f"{COLQWEN2_DIR};pool=x")


# ------------------------------------------------------------------------------- truncation
def test_long_queries_are_cut_to_max_query_tokens_with_a_warning(caplog: pytest.LogCaptureFixture):
    encoder = ColVisionEncoder(str(COLQWEN2_DIR), device="cpu", max_query_tokens=8)
    long_query = "Which page of the annual report shows the operating margin of the company in 2023?"
    tokenizer = encoder._processor.tokenizer
    tokens = tokenizer(long_query, add_special_tokens=False)["input_ids"]
    cut = tokenizer.decode(tokens[:8])
    assert len(tokens) > 8 and long_query.startswith(cut)

    with caplog.at_level(logging.WARNING, logger="mmrank"):
        rows, short = encoder.encode_queries([long_query, "a red house"])
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1  # the short query is left alone
    assert long_query[:60] in warnings[0] and f"from {len(tokens)} to 8 tokens" in warnings[0]

    caplog.clear()
    direct, = encoder.encode_queries([cut])
    np.testing.assert_array_equal(rows, direct)
    assert not caplog.records


def test_default_max_query_tokens_is_the_tokenizers_limit_when_it_has_one(colqwen2, colpali):
    class Unlimited:
        model_max_length = int(1e30)

    assert colqwen2.max_query_tokens == 4096 and colpali.max_query_tokens == 512
    assert _default_max_tokens(Unlimited()) == 512


# ----------------------------------------------------------------------------------- errors
def test_a_missing_model_says_which_where_and_how_to_get_it():
    with pytest.raises(ModelUnavailableError) as raised:
        ColVisionEncoder("mmrank-tests/no-such-colqwen2-hf", device="cpu")
    message = str(raised.value)
    assert "'mmrank-tests/no-such-colqwen2-hf'" in message
    assert "Hugging Face cache" in message and "hf download mmrank-tests/no-such-colqwen2-hf" in message


def test_a_missing_folder_says_which_folder(tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="Looked in the folder .*absent"):
        ColVisionEncoder(str(tmp_path / "absent"), device="cpu")


def test_a_plain_qwen2_vl_is_refused_as_not_a_transformers_colvision_checkpoint():
    with pytest.raises(ModelUnavailableError) as raised:
        ColVisionEncoder(str(TINY_QWEN2_VL_DIR), device="cpu")
    message = str(raised.value)
    assert "not a transformers ColPali/ColQwen2 checkpoint" in message and "'qwen2_vl'" in message
    assert "colpali-engine" in message and "vidore/colqwen2-v1.0-hf" in message


def test_a_colpali_engine_adapter_folder_is_refused(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "vidore/colqwen2-base"}))

    with pytest.raises(ModelUnavailableError, match="transformers cannot load colpali-engine checkpoints"):
        ColVisionEncoder(str(tmp_path), device="cpu")


def test_another_model_type_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))

    with pytest.raises(ModelUnavailableError, match="not a transformers ColPali/ColQwen2 checkpoint.*'bert'"):
        ColVisionEncoder(str(tmp_path), device="cpu")


@pytest.mark.parametrize("options", [{"pool_factor": 0}, {"batch_size": 0}, {"max_query_tokens": 0},
                                     {"dtype": "int8"}])
def test_bad_options_are_refused_before_loading(options):
    with pytest.raises(InputError):
        ColVisionEncoder("mmrank-tests/never-loaded", **options)


# ----------------------------------------------------------------------- unusable model output
def test_unpadded_rows_drops_padding_and_empties_broken_sequences():
    embeddings = np.ones((3, 4, 2), dtype=np.float32)
    embeddings[1, 2] = np.nan
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])

    kept, broken, empty = unpadded_rows(embeddings, mask)

    np.testing.assert_allclose(kept, np.full((3, 2), 2 ** -0.5), atol=1e-7)  # padding dropped, unit norm
    assert broken.shape == empty.shape == (0, 2) and broken.dtype == np.float32


def test_a_page_with_non_finite_output_comes_back_empty(colqwen2, monkeypatch: pytest.MonkeyPatch):
    model = colqwen2._model

    def broken_second_page(**features):
        output = model(**features)
        output.embeddings = output.embeddings.clone()
        output.embeddings[1, 0] = float("nan")
        return output

    monkeypatch.setattr(colqwen2, "_model", broken_second_page)
    pages = colqwen2.encode_pages([noise_page(56, 56, seed) for seed in range(3)])

    assert [page.shape for page in pages] == [(18, EMBEDDING_DIM), (0, EMBEDDING_DIM), (18, EMBEDDING_DIM)]


# ------------------------------------------------------------------------------ Qwen2.5-VL
def test_a_colqwen2_over_qwen2_5_vl_loads_and_encodes(tmp_path: Path):
    folder = build_tiny_colqwen2(tmp_path / "tiny-colqwen2.5", vlm="qwen2_5_vl")
    encoder = ColVisionEncoder(str(folder), device="cpu")
    assert encoder._model.config.vlm_config.model_type == "qwen2_5_vl"

    pages = [noise_page(*size, seed) for seed, size in enumerate(SIZES[:3])]
    rows = encoder.encode_pages(pages)
    prompt = len(encoder._processor.tokenizer(encoder._processor.visual_prompt_prefix)["input_ids"]) - 1
    assert [len(page) for page in rows] == [prompt + patches for patches in (4, 12, 7)]
    for page, page_rows in zip(pages, rows):
        np.testing.assert_allclose(
            page_rows, raw_embeddings(encoder, encoder._processor.process_images([page]))[0].numpy(), atol=1e-5)
    queries = encoder.encode_queries(QUERIES[:2])
    assert all(query.shape[1] == EMBEDDING_DIM and np.isfinite(query).all() for query in queries)
    assert maxsim(queries[0], rows[0]) != pytest.approx(maxsim(queries[0], rows[1]))
