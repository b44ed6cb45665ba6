"""Indexing throughput of the text fallback on CPU: pages/s with all-MiniLM-L6-v2.

Times a full ``index_paths`` run (PDF text extraction, passage splitting, MiniLM encoding, SQLite
writes, FAISS and BM25 builds) per batch size, and the text extraction and the encoding of the
indexer's passages alone, on either copies of the bundled sample PDFs (16 short pages each) or the
real PDFs of the document-QA dev set (``benchmarks/docqa_devset.json``; run
``benchmarks/docqa_devset.py`` once to install them).

    python benchmarks/text_indexing_bench.py --copies 20
    python benchmarks/text_indexing_bench.py --pdfs devset --batch-sizes 32 --repeat 3

To compare with another version of mmrank, put its checkout first on the path:
``PYTHONPATH=/path/to/old/checkout python benchmarks/text_indexing_bench.py --pdfs devset``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmrank.collection import Collection
from mmrank.demo import ASSETS_DIR
from mmrank.documents import read_pdf
from mmrank.encoders import load_text_encoder
from mmrank.indexing import ItemEncoder, index_paths

try:
    from mmrank.indexing import default_passages
except ImportError:  # mmrank before passages: one vector a page
    default_passages = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdfs", choices=["samples", "devset"], default="samples",
                        help="copies of the bundled sample PDFs, or the real PDFs of the document-QA dev set")
    parser.add_argument("--copies", type=int, default=20, help="copies of the sample PDFs (16 pages each)")
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each step; the median is shown")
    args = parser.parse_args()

    import torch

    encoder = load_text_encoder(device="cpu")
    item_encoder = ItemEncoder(encoder)
    with tempfile.TemporaryDirectory() as scratch:
        files = _devset_pdfs() if args.pdfs == "devset" else _sample_copies(Path(scratch) / "pdfs", args.copies)

        extract_s, texts = _timed(lambda: [page.text for path in files for page in read_pdf(path).pages
                                           if page.text], args.repeat)
        pages = len(texts)
        split = default_passages(encoder.max_tokens) if default_passages else None
        passages = [p for text in texts for p in split.split(text)] if split else texts
        encoder.encode_texts(passages[:32])  # warm-up
        encode_s, _ = _timed(lambda: encoder.encode_texts(passages), args.repeat)

        rows = [("text extraction only (pymupdf)", "-", pages / extract_s),
                (f"MiniLM encoding only ({len(passages)} texts)", "-", pages / encode_s)]
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            def index_once() -> None:
                with tempfile.TemporaryDirectory() as target:
                    with Collection.create(Path(target) / "c") as collection:
                        index_paths(collection, files, item_encoder, batch_size=batch_size)
            rows.append(("mmrank index (end to end)", str(batch_size), pages / _timed(index_once, args.repeat)[0]))

    print(f"Text fallback indexing: {pages} pages with text ({len(files)} PDFs, {args.pdfs}), "
          f"torch threads {torch.get_num_threads()}, median of {args.repeat}")
    print(f"{'step':<40}{'batch':>7}{'pages/s':>10}")
    for step, batch, rate in rows:
        print(f"{step:<40}{batch:>7}{rate:>10.1f}")


def _timed(step: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median seconds of ``repeat`` runs of ``step``, and what its last run returned."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = step()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


def _sample_copies(folder: Path, copies: int) -> list[Path]:
    folder.mkdir()
    for copy in range(copies):
        for pdf in sorted((ASSETS_DIR / "pdfs").glob("*.pdf")):
            shutil.copy(pdf, folder / f"{pdf.stem}-{copy:03d}.pdf")
    return sorted(folder.glob("*.pdf"))


def _devset_pdfs() -> list[Path]:
    documents = json.loads(Path(__file__).with_name("docqa_devset.json").read_text())["documents"]
    missing = [d["package"] for d in documents if not Path(d["path"]).is_file()]
    if missing:
        raise SystemExit(f"missing dev-set PDFs from {', '.join(sorted(set(missing)))}: "
                         "run benchmarks/docqa_devset.py once (it installs them)")
    return [Path(d["path"]) for d in documents]


if __name__ == "__main__":
    main()
