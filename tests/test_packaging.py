"""The wheel: every module, the bundled pipelines and demo assets inside the package, the console
script; and an installed copy that finds its own pipelines and assets and runs the demo offline."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pymupdf
import pytest
from tests.paths import ASSETS, REPO

from mmrank.collection import Collection

# What the build reads. The wheel is built from a copy of these: building in the checkout would
# reuse its build/ folder, whose stale build/lib can carry a subpackage that pyproject's
# ``packages`` list no longer names (and the build would write into the checkout).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "mmrank", "pipelines", "assets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from the sources, offline (setuptools comes from this environment)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("mmrank-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (no dependencies: this environment has them)."""
    target = tmp_path_factory.mktemp("installed")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_installed(installed: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` with only the installed copy of mmrank importable (run outside the checkout)."""
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_every_module_is_in_the_wheel(wheel_files: set[str]) -> None:
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "mmrank").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert {"mmrank/__init__.py", "mmrank/encoders/__init__.py", "mmrank/datasets/__init__.py"} <= modules
    assert sorted(modules - wheel_files) == []


def test_the_wheel_holds_only_the_package(wheel_files: set[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_files}
    assert tops == {"mmrank", "mmrank-0.1.0.dist-info"}


def test_pipelines_assets_and_the_page_are_inside_the_package(wheel_files: set[str]) -> None:
    pipelines = sorted((REPO / "pipelines").glob("*.yaml"))
    pdfs = sorted((ASSETS / "pdfs").glob("*.pdf"))
    images = sorted((ASSETS / "images").glob("*.jpg"))
    assert pipelines and pdfs and images
    expected = {f"mmrank/pipelines/{path.name}" for path in pipelines}
    expected |= {"mmrank/assets/questions.json"}
    expected |= {f"mmrank/assets/pdfs/{path.name}" for path in pdfs}
    expected |= {f"mmrank/assets/images/{path.name}" for path in images}
    expected |= {"mmrank/web/index.html", "mmrank/web/app.js", "mmrank/web/style.css"}  # the serve page
    assert sorted(expected - wheel_files) == []
    # and nowhere else: not as top-level folders of their own
    assert not any(name.startswith(("pipelines/", "assets/")) for name in wheel_files)


def test_the_console_script_is_declared(wheel: Path, wheel_files: set[str]) -> None:
    name = "mmrank-0.1.0.dist-info/entry_points.txt"
    assert name in wheel_files
    entry_points = configparser.ConfigParser()
    with zipfile.ZipFile(wheel) as archive:
        entry_points.read_string(archive.read(name).decode("utf-8"))
    assert dict(entry_points["console_scripts"]) == {"mmrank": "mmrank.cli:main"}


def test_the_installed_copy_finds_its_own_pipelines_and_assets(installed: Path, tmp_path: Path) -> None:
    code = (
        "import json, mmrank, mmrank.resources as r\n"
        "from mmrank.pipeline import Pipeline, resolve_pipeline_path\n"
        "print(json.dumps({'package': mmrank.__file__, 'pipeline': str(resolve_pipeline_path('docqa-text')),\n"
        "                  'assets': str(r.ASSETS_DIR), 'pipelines': str(r.PIPELINES_DIR),\n"
        "                  'bundled': r.bundled_pipelines(),\n"
        "                  'built': Pipeline.from_yaml('docqa-text', None).to_config()['name']}))\n"
    )
    found = json.loads(run_installed(installed, tmp_path, "-c", code).stdout)
    root = installed.resolve()
    assert Path(found["package"]).resolve() == root / "mmrank" / "__init__.py"
    assert Path(found["pipeline"]).resolve() == root / "mmrank" / "pipelines" / "docqa-text.yaml"
    assert Path(found["assets"]).resolve() == root / "mmrank" / "assets"
    assert Path(found["pipelines"]).resolve() == root / "mmrank" / "pipelines"
    assert found["bundled"] == sorted(path.stem for path in (REPO / "pipelines").glob("*.yaml"))
    assert found["built"] == "docqa-text"


@pytest.mark.slow
def test_the_installed_console_script_runs_the_demo(installed: Path, tmp_path: Path) -> None:
    script = installed / "bin" / "mmrank"
    assert script.is_file()
    work = tmp_path / "work"
    work.mkdir()
    result = run_installed(installed, work, str(script), "demo", "--out", str(tmp_path / "out"), timeout=240)
    questions = json.loads((ASSETS / "questions.json").read_text(encoding="utf-8"))
    n = len(questions)
    assert f"{n} of {n} questions have the expected page at rank 1." in result.stdout
    assert result.stdout.count("Q: ") == n
    pages = sum(len(pymupdf.open(path)) for path in sorted((ASSETS / "pdfs").glob("*.pdf")))
    assert f"Indexed {pages} pages (0 files unchanged)" in result.stdout
    sheet = (tmp_path / "out" / "results.html").read_text(encoding="utf-8")
    assert sheet.count("<h2>") == n
    # the demo indexed the installed copy's PDFs, not the checkout's
    with Collection.open(tmp_path / "out" / "collection", device="cpu") as collection:
        sources = {Path(item.source).parent for item in collection.items()}
    assert sources == {installed.resolve() / "mmrank" / "assets" / "pdfs"}
