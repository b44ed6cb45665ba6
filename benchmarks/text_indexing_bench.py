"""Indexing throughput of the text fallback on CPU: pages/s with all-MiniLM-L6-v2.

Copies the bundled sample PDFs (16 realistic pages) into a scratch folder ``--copies`` times, then
times a full ``index_paths`` run (PDF text extraction, MiniLM encoding, SQLite writes, FAISS and
BM25 builds) per batch size, and the text extraction and the encoding alone.

    python benchmarks/text_indexing_bench.py --copies 20
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from mmrank.collection import Collection
from mmrank.demo import ASSETS_DIR
from mmrank.documents import read_pdf
from mmrank.encoders import load_text_encoder
from mmrank.indexing import ItemEncoder, index_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20, help="copies of the sample PDFs (16 pages each)")
    parser.add_argument("--batch-sizes", default="16,32,64")
    args = parser.parse_args()

    import torch

    encoder = load_text_encoder(device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "pdfs"
        folder.mkdir()
        for copy in range(args.copies):
            for pdf in sorted((ASSETS_DIR / "pdfs").glob("*.pdf")):
                shutil.copy(pdf, folder / f"{pdf.stem}-{copy:03d}.pdf")
        files = sorted(folder.glob("*.pdf"))

        started = time.perf_counter()
        texts = [page.text for path in files for page in read_pdf(path).pages]
        extract_s = time.perf_counter() - started
        pages = len(texts)
        encoder.encode_texts(texts[:32])  # warm-up
        started = time.perf_counter()
        encoder.encode_texts(texts)
        encode_s = time.perf_counter() - started

        rows = [("text extraction only (pymupdf)", "-", pages / extract_s),
                ("MiniLM encoding only", str(encoder.batch_size), pages / encode_s)]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            target = Path(scratch) / f"collection-{batch_size}"
            with Collection.create(target) as collection:
                started = time.perf_counter()
                report = index_paths(collection, [folder], ItemEncoder(encoder), batch_size=batch_size)
                elapsed = time.perf_counter() - started
                assert report.items_added == pages
            rows.append(("mmrank index (end to end)", str(batch_size), pages / elapsed))

    print(f"Text fallback indexing: {pages} pages ({len(files)} PDFs), torch threads {torch.get_num_threads()}")
    print(f"{'step':<34}{'batch':>7}{'pages/s':>10}")
    for step, batch, rate in rows:
        print(f"{step:<34}{batch:>7}{rate:>10.1f}")


if __name__ == "__main__":
    main()
