"""Building collections from files: bad inputs skipped with reasons, idempotent re-runs, changed
files replaced, interrupted builds resumed, text-less pages found through their pictures."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.indexing import ItemEncoder, index_paths
from mmrank.pipeline import Pipeline
from mmrank.retrieval import HybridRetriever
from mmrank.text import PassageSplit
from mmrank.types import Query
from tests.sample_files import make_image, make_messy_folder, make_pdf


def _ids(collection: Collection) -> list[str]:
    return sorted(item.id for item in collection.items())


def test_messy_folder_indexes_the_good_files_and_names_every_bad_one(tmp_path, minilm, tiny_clip):
    files = make_messy_folder(tmp_path / "in")
    with Collection.create(tmp_path / "c") as collection:
        report = index_paths(collection, [tmp_path / "in"], ItemEncoder(minilm, tiny_clip))
        reasons = {s.path: s.reason for s in report.skipped}
        assert set(reasons) == {str(files[k].resolve()) for k in ("corrupt_image", "truncated_pdf",
                                                                  "encrypted_pdf", "empty_file")} | {
            str(files["unsupported"])}
        assert "encrypted" in reasons[str(files["encrypted_pdf"].resolve())]
        assert "empty file" in reasons[str(files["empty_file"].resolve())]
        assert report.added_files == 2 and report.items_added == 3
        pdf = str(files["good_pdf"].resolve())
        assert _ids(collection) == sorted([f"{pdf}#page=1", f"{pdf}#page=2", str(files["good_image"].resolve())])
        top = Pipeline(collection).search("How long do cats sleep?", k=1)[0]
        assert (top.item.source, top.item.page) == (pdf, 1)


def test_rerun_is_a_no_op_and_changed_files_replace_their_items(tmp_path, minilm):
    pdf = make_pdf(tmp_path / "in" / "doc.pdf", ["Cats sleep a lot.", "Dogs bark.", "Birds sing."])
    encoder = ItemEncoder(minilm)
    with Collection.create(tmp_path / "c") as collection:
        first = index_paths(collection, [tmp_path / "in"], encoder)
        assert (first.added_files, first.items_added) == (1, 3)
        revision = collection.revision

        again = index_paths(collection, [tmp_path / "in"], encoder)
        assert (again.added_files, again.unchanged_files, again.items_added) == (0, 1, 0)
        assert collection.revision == revision

        make_pdf(pdf, ["Only one page about violins now."])
        changed = index_paths(collection, [tmp_path / "in"], encoder)
        assert (changed.replaced_files, changed.items_added) == (1, 1)
        assert [i.text for i in collection.items()] == ["Only one page about violins now."]
        assert collection.info()["spaces"]["text"]["vectors"] == 1


class _FailingEncoder:
    """Wraps a real encoder and dies after a number of calls, like a process being stopped."""

    def __init__(self, encoder, calls_before_failure: int) -> None:
        self._encoder, self._left = encoder, calls_before_failure
        self.name, self.dim = encoder.name, encoder.dim

    def encode_images(self, images):
        if self._left == 0:
            raise KeyboardInterrupt
        self._left -= 1
        return self._encoder.encode_images(images)


def test_interrupted_build_resumes_without_duplicates_or_losses(tmp_path, tiny_clip):
    for n in range(12):
        make_image(tmp_path / "in" / f"img{n:02d}.png", seed=n)
    with Collection.create(tmp_path / "clean") as clean:
        index_paths(clean, [tmp_path / "in"], ItemEncoder(None, tiny_clip), batch_size=3)
        expected = _ids(clean)
        expected_vectors = clean.vectors(expected, "image")

    with Collection.create(tmp_path / "c") as collection:
        with pytest.raises(KeyboardInterrupt):
            index_paths(collection, [tmp_path / "in"], ItemEncoder(None, _FailingEncoder(tiny_clip, 2)), batch_size=3)
        assert len(collection) == 6  # two whole batches were stored before the failure
        report = index_paths(collection, [tmp_path / "in"], ItemEncoder(None, tiny_clip), batch_size=3)
        assert (report.unchanged_files, report.added_files) == (6, 6)
        assert _ids(collection) == expected
        assert abs(collection.vectors(expected, "image") - expected_vectors).max() < 1e-5


def test_image_search_finds_each_image_first(tmp_path, tiny_clip):
    paths = [make_image(tmp_path / "in" / f"img{n}.png", seed=10 + n) for n in range(6)]
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(None, tiny_clip))
        pipeline = Pipeline(collection)
        for path in paths:
            assert pipeline.search(Query(image=path), k=3)[0].item.id == str(path.resolve())
        by_text = pipeline.search("a photo", k=6)
        assert sorted(h.item.id for h in by_text) == sorted(str(p.resolve()) for p in paths)
        assert all(h.found_by == ("image",) for h in by_text)


def test_batched_image_queries_match_single_ones(tmp_path, tiny_clip):
    paths = [make_image(tmp_path / "in" / f"img{n}.png", seed=30 + n) for n in range(5)]
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(None, tiny_clip))
        pipeline = Pipeline(collection)
        queries = [Query(text="a red square"), Query(image=paths[1]),
                   Query(image=paths[2], modification="make it blue"), Query(image=paths[3])]
        batched = pipeline.search_batch(queries, k=5)
        for query, ranking in zip(queries, batched):
            single = pipeline.search(query, k=5)
            assert ranking.ids == single.ids
            assert [h.score for h in ranking] == pytest.approx([h.score for h in single], abs=1e-5)
        assert batched[1][0].item.id == str(paths[1].resolve())


def test_a_batch_encoded_item_by_item_keeps_its_files_left_out_pages(tmp_path, minilm):
    class Poisoned:  # fails on one text, so the batch is encoded again file by file, item by item
        name, dim = minilm.name, minilm.dim

        def encode_texts(self, texts):
            if any("POISON" in text for text in texts):
                raise ValueError("this text cannot be encoded")
            return minilm.encode_texts(texts)

    make_pdf(tmp_path / "in" / "a-scan.pdf", ["The violin has four strings.", None])
    bad = make_pdf(tmp_path / "in" / "b-poison.pdf", ["POISON"])
    with Collection.create(tmp_path / "c") as collection:
        report = index_paths(collection, [tmp_path / "in"], ItemEncoder(Poisoned(), ocr="off"))
        assert len(collection) == 1 and report.skipped_pages == 1
        assert [s.path for s in report.skipped] == [f"{bad.resolve()} (page 1)"]
        assert collection.info()["skipped_pages"] == 1  # the text-less page is still recorded


def test_text_less_pages_fall_back_to_their_picture(tmp_path, minilm, tiny_clip):
    pdf = make_pdf(tmp_path / "in" / "scan.pdf", ["The violin has four strings.", None])
    with Collection.create(tmp_path / "without") as collection:
        report = index_paths(collection, [tmp_path / "in"], ItemEncoder(minilm, ocr="off"))
        assert len(collection) == 1 and report.skipped == [] and report.skipped_pages == 1
        assert [(w.path, w.reason) for w in report.warnings] == [(str(pdf.resolve()), (
            "page 2 left out: no text layer (OCR is off: --ocr auto reads such pages when Tesseract is "
            "installed), and no image model was given for page pictures (--image-model)"))]
        assert collection.info()["skipped_pages"] == 1

    with Collection.create(tmp_path / "with") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(minilm, tiny_clip, ocr="off"))
        assert collection.info()["spaces"]["text"]["vectors"] == 1
        assert collection.info()["spaces"]["image"]["vectors"] == 1
        ranking = Pipeline(collection).search("violin strings", k=5)
        found_by = {hit.item.page: hit.found_by for hit in ranking}
        assert found_by[1] == ("text", "bm25") and found_by[2] == ("image",)
        assert ranking[0].item.page == 1


def test_pages_as_images_embeds_every_page(tmp_path, minilm, tiny_clip):
    make_pdf(tmp_path / "in" / "doc.pdf", ["Page one.", "Page two."])
    with Collection.create(tmp_path / "c") as collection:
        index_paths(collection, [tmp_path / "in"], ItemEncoder(minilm, tiny_clip, pages_as_images=True))
        assert collection.info()["spaces"]["image"]["vectors"] == 2
        ranking = HybridRetriever(paths=["image"]).retrieve(Query(text="page"), collection)
        assert len(ranking) == 2


def test_long_pages_are_split_into_passages_and_a_resumed_build_matches_a_clean_one(tmp_path, minilm):
    import pymupdf

    long_page = " ".join(f"w{n}" for n in range(400))  # longer than MiniLM's window
    for n in range(4):
        document = pymupdf.open()
        document.new_page(width=400, height=300).insert_text((20, 40), f"Short page {n}.", fontsize=11)
        assert document.new_page(width=600, height=800).insert_textbox(
            pymupdf.Rect(20, 20, 580, 780), long_page, fontsize=6) >= 0  # it all fits
        (tmp_path / "in").mkdir(exist_ok=True)
        document.save(tmp_path / "in" / f"doc{n}.pdf")
    encoder = ItemEncoder(minilm, passages=PassageSplit(150, 30))
    with Collection.create(tmp_path / "clean") as clean:
        index_paths(clean, [tmp_path / "in"], encoder, batch_size=2)
        expected_ids, expected = clean.item_vectors([item.id for item in clean.items()], "text")
    # 400 words in passages of 150 sharing 30: starts 0, 120, 240 and 360 (the last, shorter, ends the text)
    long_id = next(i for i in expected_ids if i.endswith("doc0.pdf#page=2"))
    assert expected_ids.count(long_id) == 4 and len(expected_ids) == 4 * (1 + 4)

    class _Interrupting:
        name, dim, max_tokens = minilm.name, minilm.dim, minilm.max_tokens

        def __init__(self) -> None:
            self.calls = 0

        def encode_texts(self, texts):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return minilm.encode_texts(texts)

    with Collection.create(tmp_path / "c") as collection:
        with pytest.raises(KeyboardInterrupt):
            index_paths(collection, [tmp_path / "in"], ItemEncoder(_Interrupting(),
                                                                   passages=PassageSplit(150, 30)), batch_size=2)
        assert 0 < len(collection) < 8
        report = index_paths(collection, [tmp_path / "in"], encoder, batch_size=2)
        assert report.unchanged_files + report.added_files == 4
        ids, vectors = collection.item_vectors(expected_ids, "text")
        assert ids == expected_ids and np.abs(vectors - expected).max() < 1e-5
