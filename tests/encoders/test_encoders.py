"""Encoders: open_clip on a tiny random-weight model, sentence-transformers on the real MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.tiny_models import TINY_CLIP_CONFIG

import mmrank.encoders
from mmrank.encoders import (
    ImageEncoder,
    OpenClipEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    load_encoder_by_name,
    load_image_encoder,
    load_text_encoder,
)
from mmrank.encoders.clip import open_clip_identity
from mmrank.encoders.text import length_batches, sentence_transformer_identity
from mmrank.errors import InputError, ModelUnavailableError

TEXTS = ["a red house", "a photo of a dog", "", "two people on a beach at sunset", "x " * 200]


def assert_unit_float32(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five lossless images of different sizes and modes (RGB, RGBA, grey), seeded noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    shapes = [((40, 50, 3), "RGB"), ((64, 64, 3), "RGB"), ((32, 80, 4), "RGBA"), ((48, 48), "L"), ((90, 30, 3), "RGB")]
    paths = []
    for i, (shape, mode) in enumerate(shapes):
        path = folder / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- open_clip: vectors
def test_clip_encodes_images_and_texts_into_one_unit_space(
    tiny_clip: OpenClipEncoder, image_paths: list[Path]
) -> None:
    assert isinstance(tiny_clip, ImageEncoder) and isinstance(tiny_clip, TextEncoder)
    assert tiny_clip.dim == TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]
    assert_unit_float32(tiny_clip.encode_images(image_paths), len(image_paths), tiny_clip.dim)
    texts = tiny_clip.encode_texts(TEXTS)  # includes an empty and an over-long (truncated) text
    assert_unit_float32(texts, len(TEXTS), tiny_clip.dim)
    assert len({row.tobytes() for row in texts}) == len(TEXTS)


def test_clip_empty_inputs_give_empty_arrays(tiny_clip: OpenClipEncoder) -> None:
    for vectors in (tiny_clip.encode_images([]), tiny_clip.encode_texts([])):
        assert vectors.shape == (0, tiny_clip.dim) and vectors.dtype == np.float32


def test_clip_is_deterministic(tiny_clip: OpenClipEncoder, tiny_clip_dir: Path, image_paths: list[Path]) -> None:
    first = tiny_clip.encode_images(image_paths)
    np.testing.assert_array_equal(first, tiny_clip.encode_images(image_paths))
    reloaded = OpenClipEncoder(f"local-dir:{tiny_clip_dir}", device="cpu")
    np.testing.assert_allclose(reloaded.encode_images(image_paths), first, atol=1e-6)
    np.testing.assert_allclose(reloaded.encode_texts(TEXTS), tiny_clip.encode_texts(TEXTS), atol=1e-6)


def test_clip_results_do_not_depend_on_batch_size(tiny_clip_dir: Path, image_paths: list[Path]) -> None:
    one, four = (OpenClipEncoder(f"local-dir:{tiny_clip_dir}", device="cpu", batch_size=b) for b in (1, 4))
    np.testing.assert_allclose(one.encode_images(image_paths), four.encode_images(image_paths), atol=1e-5)
    np.testing.assert_allclose(one.encode_texts(TEXTS), four.encode_texts(TEXTS), atol=1e-5)


def test_clip_pil_images_and_paths_agree(tiny_clip: OpenClipEncoder, image_paths: list[Path]) -> None:
    from PIL import Image

    pil_images = [Image.open(path) for path in image_paths]  # RGBA and grey ones are converted to RGB
    from_paths = tiny_clip.encode_images([str(path) for path in image_paths])
    np.testing.assert_allclose(tiny_clip.encode_images(pil_images), from_paths, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_clip_low_precision_still_returns_float32_close_to_fp32(
    dtype: str, tiny_clip: OpenClipEncoder, tiny_clip_dir: Path, image_paths: list[Path]
) -> None:
    low = OpenClipEncoder(f"local-dir:{tiny_clip_dir}", device="cpu", dtype=dtype)
    vectors = low.encode_images(image_paths)
    assert_unit_float32(vectors, len(image_paths), tiny_clip.dim)
    cosines = np.sum(vectors * tiny_clip.encode_images(image_paths), axis=1)
    assert cosines.min() > 0.98


def test_different_weights_give_different_vectors_and_names(
    tiny_clip: OpenClipEncoder, tiny_clip_dir_b: Path, image_paths: list[Path]
) -> None:
    other = OpenClipEncoder(f"local-dir:{tiny_clip_dir_b}", device="cpu")
    assert other.name != tiny_clip.name and other.dim == tiny_clip.dim
    cosines = np.sum(other.encode_images(image_paths) * tiny_clip.encode_images(image_paths), axis=1)
    assert cosines.max() < 0.99


# ---------------------------------------------------------------- open_clip: names
def test_clip_local_dir_name_is_the_resolved_absolute_path(
    tiny_clip: OpenClipEncoder, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny_clip.name == f"open_clip:local-dir:{tiny_clip_dir.resolve()}"
    monkeypatch.chdir(tiny_clip_dir.parent)
    relative = OpenClipEncoder(f"local-dir:./{tiny_clip_dir.name}", device="cpu")
    assert relative.name == tiny_clip.name


def test_clip_identity_forms() -> None:
    expected = "open_clip:ViT-B-32/laion2b_s34b_b79k"
    assert open_clip_identity("ViT-B-32", "laion2b_s34b_b79k") == expected
    assert open_clip_identity("ViT-B/32", "LAION2B-s34b-b79k") == expected  # open_clip's own aliases
    assert open_clip_identity("ViT-B-32", None) == "open_clip:ViT-B-32"
    assert open_clip_identity("hf-hub:org/repo", "ignored") == "open_clip:hf-hub:org/repo"


@pytest.fixture()
def builtin_tiny_clip(tiny_clip_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    """The tiny config registered as an open_clip built-in name, plus its weights file."""
    import open_clip

    name = "mmrank-tiny-clip"
    config_file = tmp_path / f"{name}.json"
    config_file.write_text(json.dumps(TINY_CLIP_CONFIG["model_cfg"]))
    open_clip.add_model_config(config_file)
    return name, tiny_clip_dir / "open_clip_model.safetensors"


def test_clip_builtin_name_with_weights_file_matches_local_dir_and_round_trips(
    builtin_tiny_clip: tuple[str, Path], tiny_clip: OpenClipEncoder, image_paths: list[Path]
) -> None:
    name, weights = builtin_tiny_clip
    builtin = OpenClipEncoder(name, str(weights), device="cpu")
    assert builtin.name == f"open_clip:{name}/{weights.resolve()}"
    np.testing.assert_allclose(builtin.encode_images(image_paths), tiny_clip.encode_images(image_paths), atol=1e-6)
    rebuilt = load_encoder_by_name(builtin.name, device="cpu")
    assert isinstance(rebuilt, OpenClipEncoder) and rebuilt.name == builtin.name
    np.testing.assert_allclose(rebuilt.encode_texts(TEXTS), builtin.encode_texts(TEXTS), atol=1e-6)


def test_clip_round_trips_through_its_name(tiny_clip: OpenClipEncoder, image_paths: list[Path]) -> None:
    rebuilt = load_encoder_by_name(tiny_clip.name, device="cpu", batch_size=2)
    assert isinstance(rebuilt, OpenClipEncoder) and rebuilt.name == tiny_clip.name
    np.testing.assert_allclose(rebuilt.encode_images(image_paths), tiny_clip.encode_images(image_paths), atol=1e-5)


def test_load_image_encoder_passes_schema_models_through(tiny_clip_dir: Path, tiny_clip: OpenClipEncoder) -> None:
    encoder = load_image_encoder(f"local-dir:{tiny_clip_dir}", device="cpu")
    assert encoder.name == tiny_clip.name and encoder.pretrained is None


# ---------------------------------------------------------------- open_clip: errors
def test_unreadable_image_raises_input_error_naming_it(
    tiny_clip: OpenClipEncoder, image_paths: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(InputError, match=r"missing\.jpg") as error:
        tiny_clip.encode_images([image_paths[0], missing])
    assert "No such file" in str(error.value)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    with pytest.raises(InputError, match=r"notes\.png.*cannot identify image"):
        tiny_clip.encode_images([not_an_image])


def test_a_single_string_is_refused(tiny_clip: OpenClipEncoder) -> None:
    with pytest.raises(InputError, match="single"):
        tiny_clip.encode_texts("a red house")
    with pytest.raises(InputError, match="single"):
        tiny_clip.encode_images("photo.jpg")


def test_missing_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    folder = tmp_path / "no_such_model"
    with pytest.raises(ModelUnavailableError, match="does not exist") as error:
        OpenClipEncoder(f"local-dir:{folder}")
    assert str(folder) in str(error.value) and "local-dir:" in str(error.value)


def test_local_folder_without_config_or_weights_is_model_unavailable(tiny_clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"no open_clip_config\.json"):
        OpenClipEncoder(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_bytes((tiny_clip_dir / "open_clip_config.json").read_bytes())
    with pytest.raises(ModelUnavailableError, match="no weights"):  # open_clip alone would use random weights
        OpenClipEncoder(f"local-dir:{tmp_path}")


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ModelUnavailableError, match="Unknown open_clip model 'ViT-B-99'") as error:
        OpenClipEncoder("ViT-B-99")
    message = str(error.value)
    assert "ViT-B-32" in message and "list_models()" in message and "local-dir:" in message


def test_unknown_pretrained_tag_lists_the_model_tags() -> None:
    with pytest.raises(ModelUnavailableError, match=r"'bogus'.*laion2b_s34b_b79k"):
        OpenClipEncoder("ViT-B-32", "bogus")


def test_default_model_offline_and_not_cached_explains_where_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    with pytest.raises(ModelUnavailableError) as error:
        load_image_encoder()
    message = str(error.value)
    for expected in ("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path), "local-dir:", "HF_HUB_OFFLINE=1"):
        assert expected in message


def test_unknown_encoder_name_kind_is_refused() -> None:
    with pytest.raises(ModelUnavailableError, match="'open_clip:.*'gem:"):
        load_encoder_by_name("word2vec:google-news")


# ---------------------------------------------------------------- sentence-transformers
@pytest.mark.slow
def test_minilm_gives_unit_384_dim_vectors(minilm: SentenceTransformerEncoder) -> None:
    assert isinstance(minilm, TextEncoder)
    assert minilm.dim == 384
    assert_unit_float32(minilm.encode_texts(TEXTS), len(TEXTS), 384)
    empty = minilm.encode_texts([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


@pytest.mark.slow
def test_minilm_scores_a_paraphrase_above_an_unrelated_sentence(minilm: SentenceTransformerEncoder) -> None:
    query, paraphrase, unrelated = minilm.encode_texts([
        "A man is playing the guitar.",
        "Someone plays a musical instrument.",
        "Quarterly revenue fell by ten percent.",
    ])
    assert query @ paraphrase > query @ unrelated + 0.3


@pytest.mark.slow
def test_minilm_vectors_do_not_depend_on_how_texts_are_batched(minilm: SentenceTransformerEncoder) -> None:
    one_at_a_time = np.stack([minilm.encode_texts([text])[0] for text in TEXTS])
    budgeted = SentenceTransformerEncoder(minilm.model_id, device="cpu", batch_tokens=300)
    assert budgeted.batch_tokens == 300
    np.testing.assert_allclose(budgeted.encode_texts(TEXTS), one_at_a_time, atol=1e-5)
    np.testing.assert_allclose(minilm.encode_texts(TEXTS), one_at_a_time, atol=1e-5)


def test_length_batches_go_longest_first_within_a_count_and_a_token_budget() -> None:
    lengths = [10, 200, 50, 50, 5, 120]
    as_lists = lambda batches: [b.tolist() for b in batches]  # noqa: E731
    # A pass is padded to its first (longest) text: 512 tokens hold 2 texts of 200, then 10 of 50.
    assert as_lists(length_batches(lengths, 64, 512)) == [[1, 5], [2, 3, 0, 4]]
    assert as_lists(length_batches(lengths, 64, 100)) == [[1], [5], [2, 3], [0, 4]]
    assert as_lists(length_batches(lengths, 2)) == [[1, 5], [2, 3], [0, 4]]
    assert as_lists(length_batches(lengths, 64, 150)) == [[1], [5], [2, 3, 0], [4]]
    assert length_batches([], 16, 2048) == []
    positions = np.concatenate(length_batches(lengths, 3, 256))
    assert sorted(positions.tolist()) == list(range(len(lengths)))


def test_text_encoder_batch_options_must_be_positive() -> None:
    for option in ("batch_size", "batch_tokens"):
        with pytest.raises(InputError, match=f"{option} must be at least 1; got 0"):
            SentenceTransformerEncoder("all-MiniLM-L6-v2", device="cpu", **{option: 0})


@pytest.mark.slow
def test_minilm_short_and_full_names_are_one_identity(minilm: SentenceTransformerEncoder) -> None:
    full = "sentence-transformers:sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.name == full
    assert sentence_transformer_identity("all-MiniLM-L6-v2") == full
    short = load_text_encoder("all-MiniLM-L6-v2", device="cpu")
    assert short.name == full
    np.testing.assert_allclose(short.encode_texts(TEXTS), minilm.encode_texts(TEXTS), atol=1e-6)


@pytest.mark.slow
def test_minilm_round_trips_through_its_name(minilm: SentenceTransformerEncoder) -> None:
    rebuilt = load_encoder_by_name(minilm.name, device="cpu")
    assert isinstance(rebuilt, SentenceTransformerEncoder) and rebuilt.name == minilm.name
    np.testing.assert_allclose(rebuilt.encode_texts(TEXTS), minilm.encode_texts(TEXTS), atol=1e-6)


def test_text_identity_of_a_local_folder_is_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert sentence_transformer_identity("my-model") == f"sentence-transformers:{(tmp_path / 'my-model').resolve()}"


@pytest.mark.slow
def test_missing_text_model_explains_where_and_how(tmp_path: Path) -> None:
    from huggingface_hub import constants

    with pytest.raises(ModelUnavailableError) as error:
        SentenceTransformerEncoder("sentence-transformers/not-in-this-cache", device="cpu")
    message = str(error.value)
    for expected in ("sentence-transformers/not-in-this-cache", constants.HF_HUB_CACHE, "offline"):
        assert expected in message
    with pytest.raises(ModelUnavailableError, match="folder"):
        SentenceTransformerEncoder(str(tmp_path / "absent" / "model"), device="cpu")


# ---------------------------------------------------------------- import cost
@pytest.mark.slow
def test_importing_encoders_does_not_import_torch() -> None:
    repo_root = Path(mmrank.encoders.__file__).resolve().parents[2]
    code = (
        "import sys, mmrank.encoders\n"
        "heavy = [m for m in ('torch', 'open_clip', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


# ---------------------------------------------------------------- the encoder registry
import zlib  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

from mmrank.encoders import (  # noqa: E402
    ENCODERS,
    GemEncoder,
    encoder_class,
    encodes_text,
    modalities,
    register_encoder,
)
from mmrank.encoders.base import l2_normalize  # noqa: E402


class HashTextEncoder:
    """A registry example: character trigrams hashed into ``dim`` buckets, L2-normalised.
    Its identity is ``hash:dim=<dim>``."""

    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    def __init__(self, dim: int = 64, **options: Any) -> None:
        self.dim = dim
        self.name = f"hash:dim={dim}"
        self.options = options

    @classmethod
    def from_identity(cls, reference: str, **options: Any) -> HashTextEncoder:
        key, _, value = reference.partition("=")
        if key != "dim" or not value.isdigit():
            raise InputError(f"hash:{reference}: expected 'hash:dim=<N>'.")
        return cls(int(value), **options)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for start in range(len(padded) - 2):
                vectors[row, zlib.crc32(padded[start:start + 3].encode("utf-8")) % self.dim] += 1.0
        return l2_normalize(vectors)


@pytest.fixture()
def hash_kind(monkeypatch: pytest.MonkeyPatch) -> str:
    """``hash`` registered for this test only."""
    monkeypatch.setitem(ENCODERS, "hash", ENCODERS.get("hash", ""))  # restored (or removed) afterwards
    register_encoder("hash", HashTextEncoder)
    return "hash"


@pytest.fixture()
def no_model_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building any bundled encoder fails the test."""
    def refuse(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{type(self).__name__} was built")

    for cls in (OpenClipEncoder, GemEncoder, SentenceTransformerEncoder):
        monkeypatch.setattr(cls, "__init__", refuse)


@pytest.mark.parametrize(("identity", "expected"), [
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", {"image", "text"}),
    ("open_clip:local-dir:/no/such/folder", {"image", "text"}),
    ("gem:resnet50/superglobal", {"image"}),
    ("gem:no-such-backbone/gem;random", {"image"}),
    ("sentence-transformers:sentence-transformers/all-MiniLM-L6-v2", {"text"}),
    ("sentence-transformers:/no/such/model", {"text"}),
])
def test_modalities_come_from_the_registered_class_without_a_model(
    identity: str, expected: set[str], no_model_builds: None
) -> None:
    assert modalities(identity) == frozenset(expected)
    assert encodes_text(identity) is ("text" in expected)


def test_every_bundled_kind_is_registered_to_its_class() -> None:
    assert encoder_class("open_clip") is OpenClipEncoder
    assert encoder_class("gem") is GemEncoder
    assert encoder_class("sentence-transformers") is SentenceTransformerEncoder
    with pytest.raises(ModelUnavailableError, match=r"'word2vec:'.*register_encoder"):
        modalities("word2vec:google-news")


@pytest.mark.parametrize("kind", ["kind:with:colon", "open_clip:", ""])
def test_an_encoder_kind_with_a_colon_or_empty_is_refused(kind: str) -> None:
    before = dict(ENCODERS)
    with pytest.raises(InputError, match="An encoder kind is a non-empty name without ':'"):
        register_encoder(kind, HashTextEncoder)
    assert ENCODERS == before


def test_a_registered_text_encoder_loads_by_its_name(hash_kind: str) -> None:
    assert encoder_class("hash") is HashTextEncoder
    assert modalities("hash:dim=64") == frozenset({"text"}) and encodes_text("hash:dim=64")
    encoder = load_encoder_by_name("hash:dim=64", batch_size=4)
    assert isinstance(encoder, HashTextEncoder) and isinstance(encoder, TextEncoder)
    assert (encoder.name, encoder.dim, encoder.options) == ("hash:dim=64", 64, {"batch_size": 4})
    assert load_encoder_by_name(encoder.name).name == encoder.name  # the name rebuilds it
    vectors = encoder.encode_texts(["a red house", "a red horse", "quarterly revenue fell"])
    assert_unit_float32(vectors, 3, 64)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_load_text_encoder_takes_a_registered_identity(hash_kind: str) -> None:
    encoder = load_text_encoder("hash:dim=32", device="cpu")
    assert isinstance(encoder, HashTextEncoder)
    assert (encoder.name, encoder.dim, encoder.options) == ("hash:dim=32", 32, {"device": "cpu"})


def test_load_image_encoder_refuses_a_text_only_identity(hash_kind: str, no_model_builds: None) -> None:
    with pytest.raises(InputError, match=r"^'hash:dim=64' does not encode images; choose a model that does\.$"):
        load_image_encoder("hash:dim=64")


def test_load_text_encoder_refuses_gem_without_building_it(no_model_builds: None) -> None:
    with pytest.raises(InputError, match=r"^'gem:resnet18/gem;random' does not encode texts"):
        load_text_encoder("gem:resnet18/gem;random")


def test_an_unregistered_kind_is_an_open_clip_or_sentence_transformers_name(hash_kind: str) -> None:
    # Only registered kinds go through the registry; other names keep their old meaning.
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_image_encoder("local-dir:/no/such/clip/folder")


def test_load_image_encoder_takes_an_open_clip_identity(tiny_clip_dir: Path, tiny_clip: OpenClipEncoder) -> None:
    encoder = load_image_encoder(f"open_clip:local-dir:{tiny_clip_dir}", device="cpu")
    assert isinstance(encoder, OpenClipEncoder)
    assert encoder.name == tiny_clip.name
    texts = ["a red house", "a dog"]
    np.testing.assert_allclose(encoder.encode_texts(texts), tiny_clip.encode_texts(texts), atol=1e-6)


def test_a_class_defined_in_a_function_loads_once_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not importable by "module:qualname" ("...<locals>.LocalEncoder"), so the class itself is kept.
    class LocalEncoder(HashTextEncoder):
        pass

    monkeypatch.setitem(ENCODERS, "local", "")
    register_encoder("local", LocalEncoder)
    assert encoder_class("local") is LocalEncoder and modalities("local:dim=8") == frozenset({"text"})
    encoder = load_text_encoder("local:dim=8")
    assert isinstance(encoder, LocalEncoder) and encoder.dim == 8
