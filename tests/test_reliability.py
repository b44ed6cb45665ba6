"""Faults a careless or hostile user meets: two writers at once, bad files in a build, memory on long
PDFs, configs that would run code, damaged indexes and databases, options that would break a
collection. Each test is one case of the reliability issue, run the way a user would hit it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.errors import CollectionError, InputError
from mmrank.indexing import ItemEncoder, index_paths
from mmrank.locking import WriterLock
from mmrank.manifest import MANIFEST
from mmrank.pipeline import Pipeline
from mmrank.types import Item
from tests.paths import REPO
from tests.sample_files import make_image, make_pdf

MMRANK = [sys.executable, "-c", "from mmrank.cli import main; main()"]


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds almost no data: decoding it
    would take gigabytes; its header alone is enough to refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def saved_faiss_file(collection: Path, space: str) -> Path:
    manifest = json.loads((collection / MANIFEST).read_text())
    return next((collection / manifest["index"]["files"][space]).glob("index-*.faiss"))


# ----------------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_two_index_runs_at_once_both_stay_searchable(tmp_path, tiny_clip_dir):
    make_pdf(tmp_path / "texts" / "notes.pdf", ["Cats sleep sixteen hours a day.", "Rockets need fuel."])
    for n in range(3):
        make_image(tmp_path / "photos" / f"p{n}.png", seed=n)
    out = tmp_path / "c"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([*MMRANK, "index", str(tmp_path / "texts"), "-o", str(out), "-q"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            subprocess.Popen([*MMRANK, "index", str(tmp_path / "photos"), "-o", str(out), "-q",
                              "--image-model", f"local-dir:{tiny_clip_dir}", "--device", "cpu"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    with Collection.open(out, device="cpu") as collection:
        assert set(collection.spaces) == {"text", "image"}
        assert collection.info()["spaces"]["image"]["vectors"] == 3
        assert collection.info()["spaces"]["text"]["vectors"] == 2
        image_hits = collection.search_vectors("image", np.ones((1, collection.spaces["image"].dim)), 5)
        assert len(image_hits[0]) == 3
        assert collection.search_bm25(["cats sleep"], 2)[0][0][0].endswith("notes.pdf#page=1")


def test_no_wait_stops_at_once_while_another_process_writes(tmp_path, run_cli):
    make_pdf(tmp_path / "in" / "a.pdf", ["Cats sleep a lot."])
    Collection.create(tmp_path / "c").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from mmrank.locking import WriterLock
            with WriterLock(Path({str(tmp_path / "c")!r})).hold():
                print("held", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        code, out, err = run_cli("index", tmp_path / "in", "-o", tmp_path / "c", "-q", "--no-wait")
        assert code == 2 and time.perf_counter() - started < 10
        assert "another mmrank process is writing to this collection" in err and "--no-wait" in err
        with Collection.open(tmp_path / "c") as collection:
            assert len(collection) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_never_publishes_while_a_writer_holds_the_lock(tmp_path, minilm):
    make_pdf(tmp_path / "in" / "a.pdf", ["Cats sleep a lot.", "Dogs bark."])
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(minilm))
        collection.use_encoder("text", minilm)
        collection.add([Item(id="extra", kind="text", text="Cats purr.")],
                       {"text": (["extra"], minilm.encode_texts(["Cats purr."]))})  # published indexes are stale now
        before = sorted(p.name for p in (tmp_path / "c" / "index").iterdir())
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from mmrank.locking import WriterLock
            with WriterLock(Path({str(tmp_path / "c")!r})).hold():
                print("held", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert holder.stdout.readline().strip() == "held"
            with Collection.open(tmp_path / "c", device="cpu") as reader:
                reader.use_encoder("text", minilm)
                hits = Pipeline(reader).search("cats purr", k=1)
                assert hits.ids == ["extra"]  # the stale index was rebuilt in memory for this search
            assert sorted(p.name for p in (tmp_path / "c" / "index").iterdir()) == before  # nothing published
        finally:
            holder.kill()
            holder.wait()


def test_a_writer_that_waited_keeps_what_the_other_wrote(tmp_path):
    """Two Collection objects (as two processes would have): the second binds a space after the first
    did; taking the lock re-reads the manifest, so neither space is lost."""
    first = Collection.create(tmp_path / "c")
    second = Collection.open(tmp_path / "c")
    first.bind_encoder("text", "test:text", 4)
    second.bind_encoder("image", "test:image", 8)
    assert set(Collection.open(tmp_path / "c").spaces) == {"text", "image"}


# ----------------------------------------------------------------------------------- bad files


def test_a_decompression_bomb_and_a_bad_file_name_are_skipped_and_the_rest_is_indexed(tmp_path, run_cli):
    folder = tmp_path / "in"
    make_pdf(folder / "good.pdf", ["Cats sleep sixteen hours a day."])
    bomb_png(folder / "bomb.png")
    made = make_pdf(tmp_path / "menu.pdf", ["Coffee menu."])
    os.rename(made, folder / os.fsdecode(b"caf\xe9-menu.pdf"))  # Latin-1 bytes: not valid UTF-8
    code, out, err = run_cli("index", folder, "-o", tmp_path / "c", "-q")
    assert code == 0, err
    assert "1 new" in out and "1 items" in out
    assert "bomb.png: too large to index, not decoded" in err
    assert "caf\\xe9-menu.pdf: its name is not valid UTF-8" in err
    with Collection.open(tmp_path / "c") as collection:
        assert [item.source for item in collection.items()] == [str((folder / "good.pdf").resolve())]


class _FailsOn:
    """A real image encoder that fails on one picture size, as a model would on a picture it cannot take."""

    def __init__(self, encoder, width: int) -> None:
        self._encoder, self._width = encoder, width
        self.name, self.dim, self.calls = encoder.name, encoder.dim, []

    def encode_images(self, images):
        from mmrank.images import open_rgb

        pictures = [open_rgb(image) for image in images]
        self.calls.append(len(pictures))
        if any(picture.width == self._width for picture in pictures):
            raise RuntimeError("the model cannot take this picture")
        return self._encoder.encode_images(pictures)


def test_an_item_that_fails_to_encode_is_skipped_alone(tmp_path, tiny_clip):
    for n in range(5):
        make_image(tmp_path / "in" / f"img{n}.png", seed=n, size=64 if n != 2 else 48)
    encoder = _FailsOn(tiny_clip, width=48)
    with Collection.create(tmp_path / "c") as collection:
        report = index_paths(collection, [tmp_path / "in"], ItemEncoder(None, encoder), batch_size=10)
        assert sorted(Path(item.source).name for item in collection.items()) == [
            "img0.png", "img1.png", "img3.png", "img4.png"]
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [
        ("img2.png", "the model cannot take this picture (RuntimeError)")]
    assert report.added_files == 5 - 0 and report.items_added == 4


def test_page_pictures_are_rendered_and_encoded_batch_size_at_a_time(tmp_path, tiny_clip):
    make_pdf(tmp_path / "in" / "long.pdf", [None] * 10)  # ten image-only pages, all rendered
    encoder = _FailsOn(tiny_clip, width=-1)
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(None, encoder), batch_size=3)
        assert len(collection) == 10
    assert encoder.calls == [3, 3, 3, 1]  # one PDF, yet never more than batch_size pictures at once


# ----------------------------------------------------------------------------------- untrusted configs


def test_a_pipeline_file_cannot_turn_on_trust_remote_code(tmp_path, docs):
    marker = tmp_path / "ran"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": {
        "AutoConfig": "evil.Config", "AutoModelForImageTextToText": "evil.Model"}}))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"rerankers:\n  - type: pointwise\n    model: {model}\n"
                        "    model_options: {trust_remote_code: true}\n")
    with pytest.raises(InputError, match=rf"{pipeline}: sets trust_remote_code.*--trust-remote-code"):
        Pipeline.from_yaml(pipeline, docs).search("cats", k=2)
    assert not marker.exists()
    allowed = Pipeline.from_yaml(pipeline, docs, trust_remote_code=True)
    assert allowed.rerankers[0].handle.options["trust_remote_code"] is True


def test_trust_remote_code_from_the_caller_reaches_local_models_only(docs):
    [local] = Pipeline.from_yaml("docqa-mmr5", docs, trust_remote_code=True).rerankers
    assert local.handle.options == {"max_pixels": 1003520, "trust_remote_code": True}
    [served] = Pipeline.from_yaml("docqa-mmr5", docs, mllm_url="http://gpu:8000", trust_remote_code=True).rerankers
    assert "trust_remote_code" not in served.handle.options


def test_cli_trust_remote_code_needs_an_mllm_stage(run_cli, tmp_path):
    make_pdf(tmp_path / "in" / "a.pdf", ["Cats sleep a lot."])
    assert run_cli("index", tmp_path / "in", "-o", tmp_path / "c", "-q")[0] == 0
    code, _, err = run_cli("search", tmp_path / "c", "cats", "--trust-remote-code")
    assert code == 2 and "--trust-remote-code need a pipeline with an MLLM reranker" in err


def test_a_pipeline_whose_rerankers_are_not_a_list_is_one_clear_error(tmp_path, docs):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("rerankers: pointwise\n")
    with pytest.raises(InputError, match=rf"{pipeline}: 'rerankers' must be a list of stages"):
        Pipeline.from_yaml(pipeline, docs)
    pipeline.write_text("retriever: [text]\n")
    with pytest.raises(InputError, match="'retriever' must be a mapping"):
        Pipeline.from_yaml(pipeline, docs)
    pipeline.write_text("rerankers: [pointwise]\n")
    with pytest.raises(InputError, match="A reranker is a mapping"):
        Pipeline.from_yaml(pipeline, docs)


# ----------------------------------------------------------------------------------- self-repair


@pytest.fixture
def built(tmp_path, run_cli) -> Path:
    make_pdf(tmp_path / "in" / "a.pdf", ["Cats sleep a lot.", "Dogs bark at night.", "Rockets need fuel."])
    code, _, err = run_cli("index", tmp_path / "in", "-o", tmp_path / "c", "-q")
    assert code == 0, err
    return tmp_path / "c"


def test_a_deleted_faiss_file_is_rebuilt_by_the_next_index_run(built, run_cli):
    saved_faiss_file(built, "text").unlink()
    code, out, err = run_cli("index", built.parent / "in", "-o", built, "-q")
    assert code == 0 and "1 unchanged" in out, err
    assert saved_faiss_file(built, "text").is_file()
    code, out, _ = run_cli("search", built, "cats sleep", "--json")
    assert code == 0 and json.loads(out)[0]["page"] == 1


def test_info_rebuilds_a_damaged_index_and_says_so(built, run_cli):
    damaged = saved_faiss_file(built, "text")
    damaged.write_bytes(damaged.read_bytes()[:-16])
    code, out, err = run_cli("info", built)
    assert code == 0 and "Rebuilt from the database: text (missing or damaged)." in err
    code, out, err = run_cli("info", built)
    assert code == 0 and "Rebuilt" not in err  # sound now
    assert run_cli("search", built, "rockets", "--json")[0] == 0


def test_a_search_rebuilds_a_missing_bm25_folder(built, run_cli):
    manifest = json.loads((built / MANIFEST).read_text())
    import shutil

    shutil.rmtree(built / manifest["index"]["files"]["bm25"])
    code, out, err = run_cli("search", built, "dogs bark", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["page"] == 2 and (built / manifest["index"]["files"]["bm25"]).is_dir()


def test_stray_index_folders_are_swept_by_the_next_build(built, run_cli):
    stray = built / "index" / "text.r999"
    stray.mkdir()
    (built / "bm25.r998").mkdir()
    make_pdf(built.parent / "in" / "b.pdf", ["Birds sing."])
    assert run_cli("index", built.parent / "in", "-o", built, "-q")[0] == 0
    assert not stray.exists() and not (built / "bm25.r998").exists()


@pytest.mark.parametrize("command", ["info", "search", "index"])
def test_a_damaged_database_is_one_clear_line(built, run_cli, command):
    (built / "items.sqlite").write_bytes(b"this is not a database" * 100)
    args = {"info": [built], "search": [built, "cats"], "index": [built.parent / "in", "-o", built, "-q"]}[command]
    code, out, err = run_cli(command, *args)
    assert code == 2
    assert err.count("\n") == 1 and "database items.sqlite is damaged or not an SQLite file" in err


# ----------------------------------------------------------------------------------- options checked first


def test_a_bad_index_factory_writes_nothing(tmp_path, run_cli, built):
    make_pdf(tmp_path / "new-in" / "a.pdf", ["Cats."])
    code, _, err = run_cli("index", tmp_path / "new-in", "-o", tmp_path / "new", "--index-factory", "Flaat")
    assert code == 2 and "'Flaat'" in err and "Nothing was changed" in err
    assert not (tmp_path / "new").exists()
    before = (built / MANIFEST).read_text()
    code, _, err = run_cli("index", built.parent / "in", "-o", built, "--index-factory", "Flaat")
    assert code == 2 and (built / MANIFEST).read_text() == before
    with pytest.raises(InputError, match="Flaat"):
        Collection.open(built).set_index_factory("Flaat")
    assert json.loads((built / MANIFEST).read_text())["index"]["factory"] == "Flat"


def test_an_out_of_range_dpi_is_refused_before_anything_is_written(tmp_path, run_cli):
    make_pdf(tmp_path / "in" / "a.pdf", ["Cats."])
    code, _, err = run_cli("index", tmp_path / "in", "-o", tmp_path / "c", "--dpi", "14400")
    assert code == 2 and "must be 18 to 600 dpi; got 14400" in err
    assert not (tmp_path / "c").exists()


def test_a_huge_page_is_rendered_at_a_lower_resolution(tmp_path):
    import pymupdf

    from mmrank.documents import MAX_RENDER_PIXELS, render_page

    document = pymupdf.open()
    document.new_page(width=14400, height=14400)  # 200 x 200 inches
    document.save(tmp_path / "huge.pdf")
    picture = render_page(tmp_path / "huge.pdf", 1, dpi=144)
    assert picture.width * picture.height <= MAX_RENDER_PIXELS and picture.width == picture.height


@pytest.mark.parametrize("command", ["search", "eval"])
def test_a_report_inside_a_collection_is_refused(built, run_cli, command, tmp_path):
    before = (built / MANIFEST).read_bytes()
    args = ([built, "cats"] if command == "search" else [tmp_path / "no-dataset"])
    code, _, err = run_cli(command, *args, "--report", built / MANIFEST)
    assert code == 2 and f"inside the collection {built}" in err
    assert (built / MANIFEST).read_bytes() == before


# ----------------------------------------------------------------------------------- deleted files


def test_deleted_files_are_removed_on_the_next_run_unless_kept(built, run_cli):
    make_pdf(built.parent / "in" / "b.pdf", ["Birds sing at dawn."])
    assert run_cli("index", built.parent / "in", "-o", built, "-q")[0] == 0
    (built.parent / "in" / "b.pdf").unlink()
    code, out, _ = run_cli("index", built.parent / "in", "-o", built, "-q", "--keep-missing")
    assert code == 0 and "that no longer exist" not in out and "now holds 4 items" in out
    code, out, _ = run_cli("index", built.parent / "in", "-o", built, "-q")
    assert code == 0 and "removed 1 that no longer exist" in out and "now holds 3 items" in out
    assert all(not item.source.endswith("b.pdf") for item in Collection.open(built).items())


def test_files_outside_the_given_paths_are_never_pruned(tmp_path, minilm):
    make_pdf(tmp_path / "a" / "x.pdf", ["Cats."])
    make_pdf(tmp_path / "b" / "y.pdf", ["Dogs."])
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "a", tmp_path / "b"], ItemEncoder(minilm))
        (tmp_path / "b" / "y.pdf").unlink()
        report = index_paths(collection, [tmp_path / "a"], ItemEncoder(minilm))
        assert report.removed_files == 0 and len(collection) == 2


# ----------------------------------------------------------------------------------- info


def test_info_lines_up_long_space_names(built, run_cli, tiny_clip_dir):
    make_image(built.parent / "in" / "p.png")
    assert run_cli("index", built.parent / "in", "-o", built, "-q", "--image-model",
                   f"local-dir:{tiny_clip_dir}", "--device", "cpu")[0] == 0
    code, out, _ = run_cli("info", built)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["image"].startswith("image vectors  1 x ") and lines["text"].startswith("text vectors   3 x 384")
    assert lines["collection"].index(str(built)) == lines["index"].index("Flat")


def test_lock_is_reentrant_within_a_process_and_named_in_errors(tmp_path):
    Collection.create(tmp_path / "c").close()
    lock = WriterLock(tmp_path / "c")
    with lock.hold() as outer, lock.hold() as inner:
        assert (outer, inner) == (True, False) and lock.held
    assert not lock.held
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(CollectionError, match="cannot take its writer lock .*Not a directory"):
        with WriterLock(tmp_path / "a-file" / "c").hold():
            pass
