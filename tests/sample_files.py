"""Small files made on the fly for tests: PDFs, images, and the bad inputs users send."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_pdf(path: Path, pages: Sequence[str | None]) -> Path:
    """A PDF with one page per entry: the text, or an image-only page for None."""
    import pymupdf

    document = pymupdf.open()
    for index, text in enumerate(pages):
        page = document.new_page(width=400, height=300)
        if text is None:
            picture = make_image(path.parent / f".page{index}.png", seed=index)
            page.insert_image(pymupdf.Rect(50, 50, 350, 250), filename=str(picture))
            picture.unlink()
        else:
            page.insert_textbox(pymupdf.Rect(30, 30, 370, 270), text, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    document.close()
    return path


def make_image(path: Path, seed: int = 0, size: int = 64) -> Path:
    """A deterministic random-pattern RGB image."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(path)
    return path


def make_messy_folder(root: Path) -> dict[str, Path]:
    """Good files next to every kind of bad one the indexer must survive."""
    import pymupdf

    files = {
        "good_pdf": make_pdf(root / "good.pdf", ["Cats sleep sixteen hours a day.", "Rockets burn liquid oxygen."]),
        "good_image": make_image(root / "photos" / "good.png", seed=1),
    }
    corrupt = root / "photos" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    files["corrupt_image"] = corrupt

    whole = (root / "good.pdf").read_bytes()
    truncated = root / "truncated.pdf"
    truncated.write_bytes(whole[: len(whole) // 8])
    files["truncated_pdf"] = truncated

    encrypted = root / "encrypted.pdf"
    document = pymupdf.open()
    document.new_page().insert_text((72, 72), "Secret launch codes.")
    document.save(encrypted, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw="user")
    document.close()
    files["encrypted_pdf"] = encrypted

    empty = root / "empty.png"
    empty.write_bytes(b"")
    files["empty_file"] = empty

    unsupported = root / "notes.docx"
    unsupported.write_text("not supported")
    files["unsupported"] = unsupported
    return files
