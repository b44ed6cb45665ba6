"""PDF pages and file discovery: text layers, renders, and every bad input named with its reason."""

from __future__ import annotations

import pytest

from mmrank.documents import ocr_available, read_pdf, render_page
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


# ------------------------------------------------------------------------------ OCR and normalised text

needs_tesseract = pytest.mark.skipif(not ocr_available(), reason=(
    "Tesseract is not installed (apt-get install tesseract-ocr; .ci/run installs it): OCR is not tested"))


def scanned_pdf(path, lines: list[str]):
    """A PDF whose only page is a picture of ``lines`` of text (no text layer), as a scanner makes."""
    import io

    import pymupdf
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.new("RGB", (1400, 120 + 90 * len(lines)), "white")
    draw = ImageDraw.Draw(picture)
    for number, line in enumerate(lines):
        draw.text((50, 60 + 90 * number), line, fill="black", font=ImageFont.load_default(size=44))
    data = io.BytesIO()
    picture.save(data, "PNG")
    document = pymupdf.open()
    page = document.new_page(width=700, height=picture.height / 2)
    page.insert_image(page.rect, stream=data.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    return path


@needs_tesseract
def test_auto_ocr_reads_pages_without_a_text_layer(tmp_path):
    pdf = scanned_pdf(tmp_path / "scan.pdf", ["The pressure valve opens", "at 4.5 bar in winter."])
    [plain] = read_pdf(pdf, ocr="off").pages
    assert (plain.text, plain.ocr) == ("", False)
    [page] = read_pdf(pdf, ocr="auto").pages
    assert page.ocr and "pressure valve opens at 4.5 bar" in page.text
    [item], _ = read_items(pdf)
    assert "pressure valve" in item.text and item.metadata == {"ocr": True}


@needs_tesseract
def test_auto_ocr_leaves_text_layers_alone_and_force_reads_every_page(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", ["A page with a real text layer."])
    [page] = read_pdf(pdf, ocr="auto").pages
    assert (page.text, page.ocr) == ("A page with a real text layer.", False)
    [forced] = read_pdf(pdf, ocr="force").pages
    assert forced.ocr and "real text layer" in forced.text


def test_ocr_modes_are_checked():
    from mmrank.documents import check_ocr

    with pytest.raises(InputError, match="OCR mode must be one of auto, off, force; got 'always'"):
        check_ocr("always")
    assert check_ocr("off") == "off"


def test_force_without_tesseract_says_how_to_install_it(monkeypatch):
    import shutil

    from mmrank.documents import check_ocr, ocr_available

    monkeypatch.setattr(shutil, "which", lambda name: None)
    ocr_available.cache_clear()  # checked once per process: forget an earlier answer, and this one after
    try:
        with pytest.raises(InputError, match="--ocr force needs Tesseract.*apt-get install tesseract-ocr"):
            check_ocr("force")
    finally:
        ocr_available.cache_clear()


def test_page_text_is_normalised_when_read(tmp_path):
    import matplotlib
    import pymupdf

    font = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf"  # a font with the ligature glyphs
    document = pymupdf.open()
    page = document.new_page(width=400, height=300)
    page.insert_text((30, 50), "The e\ufb03cient algo-", fontsize=11, fontfile=font, fontname="dejavu")
    page.insert_text((30, 65), "rithm and its de\ufb01nition.", fontsize=11, fontfile=font, fontname="dejavu")
    document.save(tmp_path / "ligatures.pdf")
    [page] = read_pdf(tmp_path / "ligatures.pdf").pages
    assert page.text == "The efficient algorithm and its definition."
