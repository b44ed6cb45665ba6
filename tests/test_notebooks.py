"""The tutorial notebooks (notebooks/*.ipynb): stored without outputs, and each one runs top to
bottom in a fresh kernel of this Python with the tiny offline models, printing what it should.

Every notebook in the folder is picked up; a notebook without an entry in ``EXPECTED`` is only
checked for running without error (and, when it prints ``models.banner()``, for the banner).
Also here: ``notebooks/demo_models.py``'s choice between the real models and the stand-ins.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.paths import REPO

ROOT = REPO
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# A table row such as "| docqa-text | retrieve | 1.00 | 1.00 | 12.3 | 12.3 |".
_ROW = re.compile(r"^\|(.*)\|$", re.MULTILINE)


def _rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in match.split("|")] for match in _ROW.findall(markdown)]


def _check_document_page_qa(text: str, tables: list[str], pictures: int) -> None:
    # The real MiniLM text fallback answers every sample question at rank 1 (as `mmrank demo` does).
    assert "Text fallback (docqa-text): hit@1 = 1.00, recall@3 = 1.00 over 12 questions" in text
    assert "Indexed 16 pages from 3 PDFs" in text
    [scores] = [t for t in tables if "| pipeline | after stage | hit@1 |" in t]
    stages = {(row[0], row[1]): row[2:] for row in _rows(scores)[2:]}
    assert set(stages) == {("docqa-text", "retrieve"), ("images-clip", "retrieve"),
                           ("docqa-ragllava", "retrieve"), ("docqa-ragllava", "pointwise")}
    for hit_at_1, recall_at_3, stage_ms, total_ms in stages.values():
        assert 0.0 <= float(hit_at_1) <= float(recall_at_3) <= 1.0 and float(total_ms) >= float(stage_ms) > 0
    [stage_record] = [t for t in tables if "pointwise: rank (score)" in t]
    assert len(_rows(stage_record)) == 2 + 5  # header, rule, the top 5 with every stage's record
    assert pictures >= 4  # three questions' thumbnails and the chart


def _check_landmark_retrieval(text: str, tables: list[str], pictures: int) -> None:
    assert "24 database images of 8 landmarks, 8 queries" in text
    assert "timm resnet18 with RANDOM weights" in text  # tiny models forced: no ImageNet weights
    [scores] = [t for t in tables if "| pooling | after stage | map |" in t]
    rows = {(row[0], row[1]): [float(value) for value in row[2:]] for row in _rows(scores)[2:]}
    assert set(rows) == {(p, s) for p in ("gem", "gem+", "scale-gem") for s in ("retrieve", "superglobal")}
    assert all(0.0 <= value <= 1.0 for values in rows.values() for value in values[:3])
    [movement] = [t for t in tables if "| rank before | rank after | move |" in t]
    moved = [row for row in _rows(movement)[2:] if row[4] != "="]
    assert moved, "SuperGlobal refinement should visibly change the ranking of the query shown"
    assert pictures >= 2  # the landmark set, and the ranking before and after refinement


def _check_composed_image_retrieval(text: str, tables: list[str], pictures: int) -> None:
    assert "Gallery: 24 images (8 photos x 3 versions)" in text
    assert "+ SQAF + EBR   retrieve " in text and " -> sqaf " in text and " -> grid " in text
    assert "target caption: " in text
    assert "grid: 1040 x 1040 pixels; the model answered: {\"ranking\": [" in text
    for name in ("CLIP fusion", "+ SQAF", "+ SQAF + EBR"):
        assert f"{name:<14} the right answer is at rank " in text
    assert "coffee--original" not in text.split("the model answered")[1]  # the reference is never a result
    assert "HTML sheet: " in text
    assert pictures >= 3  # the reference, the grid, the results per stage


EXPECTED = {
    "01_document_page_qa.ipynb": _check_document_page_qa,
    "02_composed_image_retrieval.ipynb": _check_composed_image_retrieval,
    "03_landmark_retrieval.ipynb": _check_landmark_retrieval,
}


def test_the_notebooks_are_found():
    assert {path.name for path in NOTEBOOKS} >= set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_without_outputs(path: Path):
    nbformat = pytest.importorskip("nbformat")

    copies = {"working tree": path.read_text(encoding="utf-8")}
    staged = subprocess.run(["git", "show", f":{path.relative_to(ROOT).as_posix()}"], cwd=ROOT,
                            capture_output=True, text=True)
    if staged.returncode == 0:  # tracked: the copy the next commit stores
        copies["git index"] = staged.stdout
    for where, text in copies.items():
        notebook = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
        nbformat.validate(notebook)
        assert notebook.nbformat == 4, where
        with_outputs = [cell.get("id") for cell in notebook.cells if cell.cell_type == "code"
                        and (cell.outputs or cell.execution_count is not None)]
        assert not with_outputs, f"{path.name} ({where}): clear the outputs of cells {with_outputs}"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the kernels, and a ``python3`` kernel spec that runs this very interpreter
    (first on JUPYTER_PATH, so a user-wide ``python3`` kernel elsewhere cannot take its place)."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mmrank tests)",
        "language": "python",
    }))
    # Under pytest-xdist another worker keeps the other core busy: one thread per kernel avoids
    # oversubscribing the CPU (measured on 2 cores: 22 s for both notebooks instead of 46 s).
    threads = {"OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}
    return {
        **os.environ,
        **threads,
        "JUPYTER_PATH": str(jupyter),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MMRANK_DEMO_MODELS": "tiny",  # fast, and the same results whatever this machine has cached
        "MMRANK_DEMO_CACHE": str(tmp_path_factory.mktemp("demo_cache")),
        # Figures become image/png outputs that the tests count (Agg would drop them).
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def _outputs(notebook) -> tuple[str, list[str], int]:
    """All printed text, the Markdown displays, and how many pictures the notebook showed."""
    text, tables, pictures = [], [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                tables += [output.data["text/markdown"]] if "text/markdown" in output.data else []
                pictures += "image/png" in output.data
                text.append(output.data.get("text/plain", ""))
    return "".join(text), tables, pictures


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_top_to_bottom(path: Path, kernel_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    monkeypatch.setenv("JUPYTER_PATH", kernel_env["JUPYTER_PATH"])  # read here, by the kernel manager
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    client.execute(env=kernel_env)  # CellExecutionError, with the cell and its traceback, on any error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

    assert all(cell.execution_count is not None for cell in notebook.cells if cell.cell_type == "code")
    text, tables, pictures = _outputs(notebook)
    if any("banner()" in cell.source for cell in notebook.cells if cell.cell_type == "code"):
        flat = " ".join(text.split())
        assert "Models for this notebook" in flat and "NOT meaningful" in flat
        assert "The text fallback (MiniLM + BM25) is real" in flat
    check = EXPECTED.get(path.name)
    if check is not None:
        check(text, tables, pictures)


# ------------------------------------------------------------------ demo_models


@pytest.fixture
def demo_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """notebooks/demo_models.py, over an empty Hugging Face cache in tmp_path."""
    from huggingface_hub import constants

    monkeypatch.syspath_prepend(str(NOTEBOOK_DIR))
    import demo_models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MMRANK_DEMO_CACHE", str(tmp_path / "demo_cache"))
    monkeypatch.delenv("MMRANK_DEMO_MODELS", raising=False)
    demo_models.pick_models.cache_clear()
    yield demo_models
    demo_models.pick_models.cache_clear()


def _fake_cached(hub: Path, repo: str, *files: str) -> None:
    """A Hugging Face cache entry for ``repo`` holding empty ``files``."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
    for name in files:
        (folder / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / ("0" * 40) / name).write_bytes(b"")


def test_demo_models_fall_back_to_the_tiny_models_when_nothing_is_cached(demo_models, tmp_path):
    models = demo_models.pick_models()
    assert not models.real and not models.real_landmark
    assert models.image_model.startswith("local-dir:") and models.image_pretrained is None
    assert Path(models.mllm) == demo_models.TINY_MLLM_DIR and (demo_models.TINY_MLLM_DIR / "config.json").is_file()
    assert models.gem_model("gem+", 256) == "gem:resnet18/gem+;random;size=256"
    banner = " ".join(models.banner().split())
    assert "NOT meaningful" in banner and "The text fallback (MiniLM + BM25) is real" in banner
    folder = Path(models.image_model.removeprefix("local-dir:"))
    assert folder.parent == tmp_path / "demo_cache" and (folder / "open_clip_config.json").is_file()
    assert demo_models.pick_models() is models  # decided once


def test_demo_models_use_the_real_models_found_in_the_cache(demo_models, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    _fake_cached(hub, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    _fake_cached(hub, "Qwen/Qwen2.5-VL-3B-Instruct", "config.json", "model-00001-of-00002.safetensors")
    _fake_cached(hub, "i2vec/MM-R5", "config.json")  # no weights: not usable
    _fake_cached(hub, "timm/resnet50.a1_in1k", "model.safetensors")
    models = demo_models.pick_models()
    assert (models.image_model, models.image_pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert models.mllm == "Qwen/Qwen2.5-VL-3B-Instruct" and models.real and models.real_landmark
    assert Path(models.reasoning_mllm) == demo_models.TINY_MLLM_DIR and not models.real_reasoning_mllm
    assert models.gem_model("scale-gem", 512) == "gem:resnet50/scale-gem;size=512"
    banner = " ".join(models.banner().split())
    assert "rankings from the MLLM (reason) models are NOT meaningful" in banner

    monkeypatch.setenv("MMRANK_DEMO_MODELS", "real")
    demo_models.pick_models.cache_clear()
    with pytest.raises(RuntimeError, match="not in the local cache: i2vec/MM-R5"):
        demo_models.pick_models()

    _fake_cached(hub, "i2vec/MM-R5", "model.safetensors")
    demo_models.pick_models.cache_clear()
    assert demo_models.pick_models().real_reasoning_mllm
    assert "NOT meaningful" not in " ".join(demo_models.pick_models().banner().split())

    monkeypatch.setenv("MMRANK_DEMO_MODELS", "tiny")
    demo_models.pick_models.cache_clear()
    assert not demo_models.pick_models().real
