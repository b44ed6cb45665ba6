"""PDF pages and file discovery: text layers, renders, and every bad input named with its reason."""

from __future__ import annotations

import pytest

from mmrank.documents import read_pdf, render_page
from mmrank.errors import InputError
from mmrank.ingest import discover, fingerprint, read_items
from tests.sample_files import make_image, make_messy_folder, make_pdf


def test_read_pdf_gives_each_page_its_text(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", ["Alpha page about cats.", "Beta page about rockets.", None])
    text = read_pdf(pdf)
    assert [p.number for p in text.pages] == [1, 2, 3]
    assert "cats" in text.pages[0].text and "rockets" in text.pages[1].text
    assert text.pages[2].text == ""
    assert text.repaired is False


def test_render_page_scales_with_dpi(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", ["One", "Two"])
    # The page is 400 x 300 points; one point is 1/72 inch.
    assert render_page(pdf, 2, dpi=72).size == (400, 300)
    assert render_page(pdf, 1, dpi=144).size == (800, 600)
    with pytest.raises(InputError, match="page 3 does not exist"):
        render_page(pdf, 3)


def test_pdf_items_have_ids_pages_and_text(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", ["First.", None])
    items, warning = read_items(pdf.resolve())
    assert warning is None
    assert [(i.kind, i.page, i.text) for i in items] == [("page", 1, "First."), ("page", 2, None)]
    assert items[0].id == f"{pdf.resolve()}#page=1" and items[0].source == str(pdf.resolve())


def test_image_item(tmp_path):
    image = make_image(tmp_path / "a.png")
    items, warning = read_items(image)
    assert warning is None and [(i.kind, i.page, i.source) for i in items] == [("image", None, str(image))]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt_image", "not a readable image"),
        ("truncated_pdf", "not a readable PDF"),
        ("encrypted_pdf", "encrypted PDF"),
        ("empty_file", "empty file"),
    ],
)
def test_bad_files_raise_with_path_and_reason(tmp_path, name, reason):
    path = make_messy_folder(tmp_path)[name]
    with pytest.raises(InputError, match=reason) as caught:
        read_items(path)
    assert str(path) in str(caught.value)


def test_partly_truncated_pdf_is_read_with_a_warning(tmp_path):
    whole = make_pdf(tmp_path / "whole.pdf", ["Page one text.", "Page two text.", "Page three text."]).read_bytes()
    damaged = tmp_path / "damaged.pdf"
    damaged.write_bytes(whole[: int(len(whole) * 0.7)])
    items, warning = read_items(damaged)
    assert "repaired" in warning
    assert items[0].text == "Page one text."


def test_discover_finds_supported_files_and_reports_the_rest(tmp_path):
    files = make_messy_folder(tmp_path)
    (tmp_path / ".hidden").mkdir()
    make_image(tmp_path / ".hidden" / "secret.png")
    found, skipped = discover([tmp_path])
    assert files["good_image"].resolve() in found and files["good_pdf"].resolve() in found
    assert not any(".hidden" in str(p) for p in found)
    assert [(s.path, s.reason) for s in skipped] == [(str(files["unsupported"]), "unsupported file type '.docx'")]


def test_discover_deduplicates_and_rejects_missing_paths(tmp_path):
    image = make_image(tmp_path / "a.png")
    found, _ = discover([tmp_path, image])
    assert found == [image.resolve()]
    with pytest.raises(InputError, match="no such file or folder"):
        discover([tmp_path / "missing"])


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    first = fingerprint(path)
    path.write_text("two")
    assert fingerprint(path).sha256 != first.sha256
