"""The command line: index / search / info / eval, bad input, exit codes, a SIGKILLed build resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmrank.manifest import MANIFEST
from tests.sample_files import make_image, make_messy_folder, make_pdf
from tests.paths import ASSETS


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from mmrank.cli import app; "
            "import mmrank; heavy = {'torch', 'faiss', 'open_clip', 'fitz', 'pymupdf', 'transformers'} & set(sys.modules); "
            "print(sorted(heavy), time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]"
    started = time.perf_counter()
    result = subprocess.run([Path(sys.executable).parent / "mmrank", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "index" in result.stdout and "search" in result.stdout
    assert time.perf_counter() - started < 2.0


def test_index_search_info_on_pdfs(tmp_path, run_cli):
    collection = tmp_path / "docs"
    code, out, err = run_cli("index", ASSETS / "pdfs", "--out", collection, "--quiet")
    assert code == 0, err
    assert "16 items" in out

    code, out, _ = run_cli("search", collection, "What was the operating margin in 2016?", "-k", "3", "--json")
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert Path(hits[0]["source"]).name == "brightwater_annual_report_2017.pdf" and hits[0]["page"] == 3
    assert set(hits[0]) >= {"rank", "id", "source", "page", "score", "found_by", "stages"}

    code, out, _ = run_cli("search", collection, "How many hours a day do cats sleep?", "-k", "2")
    assert code == 0 and "slow_mornings_coffee_and_cats.pdf" in out.splitlines()[2]

    code, out, _ = run_cli("info", collection, "--json")
    info = json.loads(out)
    assert info["items"] == 16 and info["index"] == "Flat"
    # One of the 16 pages (196 words) is longer than MiniLM's window (166 words): it is two passages.
    assert info["spaces"]["text"] == {"encoder": "sentence-transformers:sentence-transformers/all-MiniLM-L6-v2",
                                      "dim": 384, "vectors": 17, "passages": {"words": 166, "overlap": 0, "limit": 2}}
    code, out, _ = run_cli("info", collection)
    assert "16 page" in out and "all-MiniLM-L6-v2" in out

    report = tmp_path / "report.html"
    code, _, _ = run_cli("search", collection, "cold brew", "--report", report, "--pipeline", "docqa-text")
    page = report.read_text()
    assert code == 0 and page.count("<img") == 10 and "slow_mornings_coffee_and_cats.pdf" in page


def test_messy_folder_exit_codes(tmp_path, run_cli, tiny_clip_dir):
    files = make_messy_folder(tmp_path / "in")
    code, out, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--quiet",
                             "--image-model", f"local-dir:{tiny_clip_dir}")
    assert code == 0
    for name in ("corrupt_image", "truncated_pdf", "encrypted_pdf", "empty_file", "unsupported"):
        assert str(files[name].name) in err
    assert err.count("skipped ") == 5 and "3 items" in out

    code, _, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "strict", "--quiet", "--strict",
                           "--image-model", f"local-dir:{tiny_clip_dir}")
    assert code == 1 and "5 files or pages were skipped (--strict)" in err

    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.pdf").write_bytes(b"")
    code, _, err = run_cli("index", bad_only, "--out", tmp_path / "none", "--quiet")
    assert code == 1 and "nothing could be indexed" in err


def test_image_collection_search_by_image_and_encoder_mismatch(tmp_path, run_cli, tiny_clip_dir, tiny_clip_dir_b):
    for n in range(4):
        make_image(tmp_path / "in" / f"img{n}.png", seed=20 + n)
    collection = tmp_path / "images"
    code, _, err = run_cli("index", tmp_path / "in", "--out", collection, "--quiet",
                           "--image-model", f"local-dir:{tiny_clip_dir}")
    assert code == 0, err
    code, out, _ = run_cli("search", collection, "--image", tmp_path / "in" / "img2.png", "--json", "-k", "2")
    hits = json.loads(out)
    assert hits[0]["id"] == str((tmp_path / "in" / "img2.png").resolve()) and hits[0]["page"] is None

    make_image(tmp_path / "more" / "new.png", seed=99)
    code, _, err = run_cli("index", tmp_path / "more", "--out", collection, "--quiet",
                           "--image-model", f"local-dir:{tiny_clip_dir_b}")
    assert code == 2 and "made by 'open_clip:local-dir:" in err and "Use the same model" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "{tmp}/missing", "--out", "{tmp}/c"], "missing: no such file or folder"),
        (["search", "{tmp}/plain", "cats"], "not an mmrank collection"),
        (["search", "{tmp}/nowhere", "cats"], "does not exist"),
        (["info", "{tmp}/plain"], "not an mmrank collection"),
        (["search", "{tmp}/docs", "  "], "The query is empty"),
        (["search", "{tmp}/docs", "--image", "{tmp}/nope.png"], "nope.png: no such image file"),
        (["search", "{tmp}/docs", "--image", "{tmp}/plain/pic.png"], "no image vectors"),
        (["search", "{tmp}/docs", "cats", "--pipeline", "{tmp}/nope.yaml"], "no such pipeline file"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, run_cli, minilm, args, message):
    (tmp_path / "plain").mkdir()
    make_image(tmp_path / "plain" / "pic.png")
    make_pdf(tmp_path / "pdfs" / "a.pdf", ["Cats sleep."])
    assert run_cli("index", tmp_path / "pdfs", "--out", tmp_path / "docs", "--quiet")[0] == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert code == 2
    assert message in err and err.startswith("Error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_corrupted_manifest_is_reported_and_kept(tmp_path, run_cli):
    make_pdf(tmp_path / "pdfs" / "a.pdf", ["Cats sleep."])
    run_cli("index", tmp_path / "pdfs", "--out", tmp_path / "c", "--quiet")
    manifest = tmp_path / "c" / MANIFEST
    manifest.write_text("{ not json")
    for args in (["search", tmp_path / "c", "cats"], ["index", tmp_path / "pdfs", "--out", tmp_path / "c"]):
        code, _, err = run_cli(*args)
        assert code == 2 and "corrupted manifest" in err
    assert manifest.read_text() == "{ not json"


def test_sigkilled_index_resumes_to_the_same_collection(tmp_path, tiny_clip_dir):
    """Kill `mmrank index` with SIGKILL mid-build, run it again: nothing lost, nothing doubled."""
    for n in range(150):
        make_image(tmp_path / "in" / f"img{n:03d}.png", seed=n, size=32)
    args = [str(Path(sys.executable).parent / "mmrank"), "index", str(tmp_path / "in"), "--out",
            str(tmp_path / "c"), "--image-model", f"local-dir:{tiny_clip_dir}", "--batch-size", "1", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    database = tmp_path / "c" / "items.sqlite"
    stored = 0
    deadline = time.monotonic() + 120
    while stored < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        if database.exists():
            try:
                with sqlite3.connect(database, timeout=0.1) as db:
                    stored = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 5 <= stored < 150, "the build must be killed part-way through"

    resumed = subprocess.run(args, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    with sqlite3.connect(database) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM items")]
        vectors = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert len(ids) == len(set(ids)) == 150 and vectors == 150
    info = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert info["counts"]["items"] == 150 and info["counts"]["vectors"] == {"image": 150}


def test_images_without_a_cached_default_model_get_one_clear_error(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    make_image(tmp_path / "in" / "a.png")
    code, _, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--quiet")
    assert code == 2
    message = err.splitlines()[-1]
    assert message.startswith("Error: ") and "ViT-B-32" in message and "local-dir:" in message


def test_index_type_too_big_for_the_collection_keeps_the_vectors(tmp_path, run_cli):
    make_pdf(tmp_path / "pdfs" / "a.pdf", ["Cats sleep.", "Rockets fly."])
    code, _, err = run_cli("index", tmp_path / "pdfs", "--out", tmp_path / "c", "-q", "--index-factory", "IVF64,Flat")
    assert code == 2 and "needs at least 64 vectors" in err and "--index-factory Flat" in err
    code, out, _ = run_cli("index", tmp_path / "pdfs", "--out", tmp_path / "c", "-q", "--index-factory", "Flat")
    assert code == 0 and "(0 items)" in out and "1 unchanged" in out
    code, out, _ = run_cli("search", tmp_path / "c", "rockets", "--json", "-k", "1")
    assert json.loads(out)[0]["page"] == 2


def test_a_text_less_page_offline_with_no_image_model_is_left_out_and_the_run_goes_on(tmp_path, run_cli, monkeypatch):
    """The default CLIP is not cached and there is no network: the text-less page is left out with
    one warning naming the page and why, the rest of the file and the run go on, info counts it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    make_pdf(tmp_path / "in" / "manual.pdf", ["Chapter one: the pump primes itself.", None, "Chapter three."])
    make_pdf(tmp_path / "in" / "other.pdf", ["Another ordinary page."])
    code, out, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--quiet", "--ocr", "off")
    assert code == 0, err
    assert "3 items" in out
    [warning] = [line for line in err.splitlines() if line.startswith("warning")]
    assert "manual.pdf: page 2 left out: no text layer (OCR is off" in warning
    assert "the image model for page pictures could not be loaded" in warning and "ViT-B-32" in warning
    code, out, _ = run_cli("info", tmp_path / "c", "--json")
    assert json.loads(out)["skipped_pages"] == 1
    code, out, _ = run_cli("info", tmp_path / "c")
    assert "1 pages left out" in out
    # the next run reads the file again (OCR or a model may be there now), and still leaves it out
    code, out, err = run_cli("index", tmp_path / "in", "--out", tmp_path / "c", "--quiet", "--ocr", "off")
    assert code == 0 and "1 unchanged" in out and "page 2 left out" in err


def test_hits_carry_snippets_in_json_the_table_and_the_report(tmp_path, run_cli):
    collection = tmp_path / "docs"
    assert run_cli("index", ASSETS / "pdfs", "--out", collection, "--quiet")[0] == 0
    question = "How many hours a day do cats sleep?"
    code, out, _ = run_cli("search", collection, question, "-k", "2", "--json")
    top = json.loads(out)[0]
    assert "sleeps between 12 and 16 hours a day" in top["snippet"] and len(top["snippet"]) <= 290
    code, out, _ = run_cli("search", collection, question, "-k", "2", "--report", tmp_path / "r.html")
    header, rule, first = out.splitlines()[:3]
    assert header.split()[-1] == "snippet" and "16 hours a day" in first
    assert "<mark>sleep" not in (tmp_path / "r.html").read_text()  # "sleeps" is its own word: not marked
    assert "<mark>hours</mark>" in (tmp_path / "r.html").read_text()
