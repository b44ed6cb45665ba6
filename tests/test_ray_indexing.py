"""Indexing on Ray Data (``mmrank index --ray``): the same collection as one process builds, bad files
reported by path, a second run that adds nothing, a SIGKILLed driver resumed without duplicates, an
encoder actor that dies restarted by Ray.

One local Ray for the module (2 CPUs: one encoder actor and one reading task at a time, a 200 MB
object store). Every Ray run starts a fresh actor, which takes about ten seconds on two cores to
import torch and open_clip; so the runs are few, the tiny CLIP encodes texts as well as pictures
(MiniLM would add sentence-transformers' imports), and the tests of killed processes use the
model-free ``pixels`` encoder of tests/ray_encoders.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.errors import InputError, MissingDependencyError
from mmrank.indexing import EncoderChoice, index_paths
from tests.conftest import OFFLINE_ENV
from tests.paths import ASSETS, REPO
from tests import ray_encoders
from tests.ray_encoders import flaky_identity
from tests.sample_files import make_image, make_messy_folder, make_pdf

pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def empty_hf_home(tmp_path_factory) -> Path:
    """A Hugging Face cache with nothing in it, for the actors (and a test that wants the same)."""
    return tmp_path_factory.mktemp("empty-hf-home")


@pytest.fixture(scope="module")
def ray_address(empty_hf_home):
    """A local Ray for the module's runs (they find it initialised and use it); its GCS address
    for a driver in another process."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 << 20, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {**OFFLINE_ENV, "HF_HOME": str(empty_hf_home)}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def test_encoders():
    """The ``pixels`` and ``flaky`` encoder kinds (tests/ray_encoders.py), registered here and so
    on the actors."""
    ray_encoders.register()
    yield
    ray_encoders.unregister()


@pytest.fixture(scope="module")
def clip_text(tiny_clip_dir: Path) -> str:
    """The tiny CLIP as the text model too (MiniLM would cost every actor seconds of imports)."""
    return f"open_clip:local-dir:{tiny_clip_dir}"


def _run_on_ray(folder: Path, out: Path, choice: EncoderChoice, **options):
    from mmrank.ray_indexing import index_paths_on_ray

    with Collection.open_or_create(out) as collection:
        return index_paths_on_ray(collection, [folder], choice, workers=1, device="cpu", **options)


def _run_here(folder: Path, out: Path, choice: EncoderChoice, **options):
    with Collection.open_or_create(out) as collection:
        return index_paths(collection, [folder], choice.item_encoder(collection.spaces, "cpu"), **options)


def _assert_same_collection(got: Path, expected: Path) -> None:
    """Same items (ids, kinds, sources, pages, texts, metadata), vectors within float tolerance,
    skipped-page records, spaces and encoders; no duplicates."""
    with Collection.open(got) as a, Collection.open(expected) as b:
        items_a, items_b = list(a.items()), list(b.items())
        assert len(items_a) == len({i.id for i in items_a})
        assert sorted(items_a, key=lambda i: i.id) == sorted(items_b, key=lambda i: i.id)
        assert a.spaces == b.spaces
        ids = sorted(i.id for i in items_b)
        for space in b.spaces:
            rows_a, vectors_a = a.item_vectors(ids, space)
            rows_b, vectors_b = b.item_vectors(ids, space)
            assert rows_a == rows_b
            np.testing.assert_allclose(vectors_a, vectors_b, atol=1e-5)
        assert a.info()["skipped_pages"] == b.info()["skipped_pages"]
        for path in a.store.file_paths():
            assert a.store.skipped_pages(path) == b.store.skipped_pages(path)
        assert a.store.file_paths() == b.store.file_paths()


def _counts(report) -> tuple:
    return (report.added_files, report.replaced_files, report.unchanged_files, report.removed_files,
            report.items_added, report.skipped_pages)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_address, tiny_clip_dir, clip_text):
    """The bundled PDFs and images, a page with no text, and every kind of bad file, indexed on
    Ray and in one process with the same choice (reports and collections)."""
    root = tmp_path_factory.mktemp("ray_built")
    folder = root / "in"
    shutil.copytree(ASSETS / "pdfs", folder / "pdfs")
    shutil.copytree(ASSETS / "images", folder / "images")
    messy = make_messy_folder(folder / "messy")
    make_pdf(folder / "scan.pdf", ["The violin has four strings.", None])
    choice = EncoderChoice(text_model=clip_text, image_model=f"local-dir:{tiny_clip_dir}", pages_as_images=True,
                           dpi=72)
    expected = _run_here(folder, root / "expected", choice, batch_size=4)
    got = _run_on_ray(folder, root / "ray", choice, batch_size=4)
    return {"root": root, "folder": folder, "messy": messy, "choice": choice, "got": got, "expected": expected}


def test_ray_builds_the_same_collection_as_one_process(built):
    _assert_same_collection(built["root"] / "ray", built["root"] / "expected")
    got, expected = built["got"], built["expected"]
    assert _counts(got) == _counts(expected)
    assert got.added_files == 3 + 8 + 2 + 1 and got.items_added == 16 + 8 + 3 + 2
    with Collection.open(built["root"] / "ray") as collection:
        assert collection.info()["spaces"]["image"]["vectors"] == 16 + 8 + 3 + 2  # pages_as_images


def test_bad_files_are_reported_by_path_and_the_rest_indexed(built):
    got, messy = built["got"], built["messy"]
    reasons = {s.path: s.reason for s in got.skipped}
    assert set(reasons) == {str(messy[k].resolve()) for k in ("corrupt_image", "truncated_pdf", "encrypted_pdf",
                                                               "empty_file")} | {str(messy["unsupported"])}
    assert "not a readable image" in reasons[str(messy["corrupt_image"].resolve())]
    assert "encrypted" in reasons[str(messy["encrypted_pdf"].resolve())]
    assert sorted(got.skipped, key=str) == sorted(built["expected"].skipped, key=str)
    assert sorted(got.warnings, key=str) == sorted(built["expected"].warnings, key=str)
    with Collection.open(built["root"] / "ray") as collection:
        stored = set(collection.store.file_paths())
        assert {str(messy["good_pdf"].resolve()), str(messy["good_image"].resolve())} <= stored


def test_a_second_run_adds_nothing(built):
    with Collection.open(built["root"] / "ray") as collection:
        revision = collection.revision
    again = _run_on_ray(built["folder"], built["root"] / "ray", built["choice"])
    assert _counts(again) == (0, 0, 3 + 8 + 2 + 1, 0, 0, 0)
    with Collection.open(built["root"] / "ray") as collection:
        assert collection.revision == revision
    _assert_same_collection(built["root"] / "ray", built["root"] / "expected")


def test_pages_left_out_are_recorded_as_one_process_records_them(tmp_path, ray_address, clip_text, monkeypatch,
                                                                  empty_hf_home):
    """No image model can be loaded for a page without text (the default CLIP is not in the empty
    cache): the page is left out, with the same reason, on the actors as in one process."""
    monkeypatch.setenv("HF_HOME", str(empty_hf_home))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(empty_hf_home / "hub"))
    make_pdf(tmp_path / "in" / "scan.pdf", ["The violin has four strings.", None, "Cellos are larger."])
    choice = EncoderChoice(text_model=clip_text, ocr="off")
    expected = _run_here(tmp_path / "in", tmp_path / "expected", choice)
    got = _run_on_ray(tmp_path / "in", tmp_path / "ray", choice)
    assert got.skipped_pages == expected.skipped_pages == 1
    assert got.warnings == expected.warnings and "page 2 left out: no text layer" in got.warnings[0].reason
    assert "could not be loaded" in got.warnings[0].reason
    _assert_same_collection(tmp_path / "ray", tmp_path / "expected")


def test_a_killed_driver_resumes_through_the_cli_without_duplicates(tmp_path, ray_address, test_encoders, run_cli):
    """``mmrank index --ray-address`` in another process, SIGKILLed once two files are stored; a
    file it stored is then deleted and another changed, and ``mmrank index --ray`` finishes the job."""
    for n in range(20):
        make_image(tmp_path / "in" / f"img{n:02d}.png", seed=n, size=32)
    slow = flaky_identity("pixels:16", sleep=0.05)
    code = ("import sys; from tests import ray_encoders; ray_encoders.register(); "
            "from mmrank.cli import main; sys.argv[0] = 'mmrank'; main()")
    args = [sys.executable, "-c", code, "index", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
            "--ray-address", ray_address, "--image-model", slow, "--text-model", "pixels:16", "--batch-size", "1",
            "--quiet"]
    process = subprocess.Popen(args, cwd=REPO, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _wait_for_files(tmp_path / "c" / "items.sqlite", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = _wait_for_files(tmp_path / "c" / "items.sqlite", 0, process)  # all it stored before it died
    assert 2 <= len(stored) < 20, process.stderr.read().decode()[-3000:]

    Path(stored[0]).unlink()
    make_image(Path(stored[1]), seed=99, size=32)
    code, out, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--ray", "--ray-workers", "1",
                             "--text-model", "pixels:16", "--quiet")
    assert code == 0, err
    unchanged = len(stored) - 2
    assert (f"Indexed {18 - unchanged} new and 1 changed files ({19 - unchanged} items)" in out
            and f"{unchanged} unchanged; removed 1 that no longer exist" in out and "now holds 19 items" in out), out
    _run_here(tmp_path / "in", tmp_path / "expected", EncoderChoice(text_model="pixels:16", image_model=slow))
    _assert_same_collection(tmp_path / "c", tmp_path / "expected")


def _wait_for_files(database: Path, count: int, process: subprocess.Popen) -> list[str]:
    """The paths of the files stored in ``database`` once there are ``count`` (or when the process
    ends, or after two minutes)."""
    deadline, stored = time.monotonic() + 120, None
    while stored is None or (len(stored) < count and time.monotonic() < deadline and process.poll() is None):
        time.sleep(0.02)
        if database.exists():
            try:
                with sqlite3.connect(database, timeout=0.1) as db:
                    stored = [row[0] for row in db.execute("SELECT path FROM files ORDER BY path")]
            except sqlite3.OperationalError:
                pass
        elif process.poll() is not None or time.monotonic() > deadline:
            return []
    return stored


def test_an_encoder_actor_that_dies_is_restarted_and_nothing_is_lost_or_doubled(tmp_path, ray_address,
                                                                               test_encoders):
    for n in range(6):
        make_image(tmp_path / "in" / f"img{n}.png", seed=n, size=32)
    make_pdf(tmp_path / "in" / "doc.pdf", ["Cats sleep a lot.", None, "Rockets burn oxygen."])
    marker = tmp_path / "crashed"
    dying = flaky_identity("pixels:16", crash_marker=marker)
    choice = EncoderChoice(text_model="pixels:16", image_model=dying)
    report = _run_on_ray(tmp_path / "in", tmp_path / "c", choice, batch_size=4)
    assert marker.exists(), "the actor must have killed its process"
    assert report.skipped == [] and (report.added_files, report.items_added) == (7, 9)
    _run_here(tmp_path / "in", tmp_path / "expected", choice, batch_size=4)  # the marker exists: no crash here
    _assert_same_collection(tmp_path / "c", tmp_path / "expected")


# ----------------------------------------------------------------------------- no Ray needed
def test_a_missing_ray_names_the_extra(monkeypatch):
    from mmrank.ray_indexing import require_ray_data

    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmrank\[ray\]'"):
        require_ray_data()


def test_actors_get_one_gpu_each_only_on_a_cluster_with_gpus():
    from mmrank.ray_indexing import _placement

    assert _placement({"CPU": 16}, None, "auto") == (8, 0, "cpu")
    assert _placement({"CPU": 16, "GPU": 4}, None, "auto") == (4, 1, "cuda")
    assert _placement({"CPU": 16, "GPU": 4}, 2, "cpu") == (2, 0, "cpu")
    with pytest.raises(InputError, match="4 GPUs"):
        _placement({"CPU": 16, "GPU": 4}, 5, "auto")
    with pytest.raises(InputError, match="at least one more for reading"):
        _placement({"CPU": 2}, 2, "auto")
    with pytest.raises(InputError, match="no GPUs"):
        _placement({"CPU": 2}, None, "cuda")


def test_ray_options_are_checked_before_anything_is_written(tmp_path, run_cli):
    make_image(tmp_path / "in" / "a.png")
    code, _, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--ray-workers", "2")
    assert code == 2 and "--ray-workers needs --ray" in err
    code, _, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--ray", "--ray-workers", "0")
    assert code == 2 and "--ray-workers must be at least 1" in err
    assert not (tmp_path / "c").exists()


def test_index_help_lists_the_ray_options(run_cli):
    code, out, err = run_cli("index", "--help")
    assert code == 0, err
    assert all(option in out for option in ("--ray ", "--ray-address", "--ray-workers"))
