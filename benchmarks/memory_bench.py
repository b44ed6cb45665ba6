"""Peak memory of an index run against the pages of one PDF, with page pictures.

For each page count, a PDF of that many letter-size pages (a line of text and a drawing each) is
indexed by ``mmrank index --pages-as-images`` in a fresh process; the table gives that process's
peak resident memory and time. Pictures are rendered at ``--dpi`` and encoded ``--batch-size`` at a
time by the tiny random-weight CLIP of the tests (the compute and vectors mean nothing; the point
is what a run holds in memory: a 144-dpi letter page is 1224 x 1584 RGB, 5.8 MB).

    python benchmarks/memory_bench.py                         # 100, 250, 500, 1000, 2000 pages
    python benchmarks/memory_bench.py --pages 100 400 --batch-size 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmrank.report import format_table  # noqa: E402
from tests.tiny_models import build_tiny_clip  # noqa: E402

CHILD = """
import resource, sys
from mmrank.cli import main
try:
    main()
finally:
    print(f"PEAK_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def make_pdf(path: Path, pages: int) -> None:
    import pymupdf

    document = pymupdf.open()
    for number in range(pages):
        page = document.new_page(width=612, height=792)
        page.insert_text((72, 72), f"Page {number + 1}: notes on cats, coffee and rockets.", fontsize=12)
        page.draw_rect(pymupdf.Rect(72, 100 + number % 300, 540, 400), color=(0.2, 0.4, 0.8), fill=(0.9, 0.9, 1))
    document.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dpi", type=int, default=144)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip = build_tiny_clip(scratch / "tiny-clip", seed=0)
        for pages in args.pages:
            pdf = scratch / f"doc-{pages}" / "long.pdf"
            pdf.parent.mkdir()
            make_pdf(pdf, pages)
            command = [sys.executable, "-c", CHILD, "index", str(pdf.parent), "-o", str(scratch / f"c-{pages}"),
                       "--pages-as-images", "--image-model", f"local-dir:{clip}", "--device", "cpu",
                       "--batch-size", str(args.batch_size), "--dpi", str(args.dpi), "-q"]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - start
            peak = next((int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("PEAK_KB")), 0)
            status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
            rows.append([str(pages), str(args.batch_size), f"{peak / 1024:.0f}", f"{seconds:.1f}", status])
            print(*rows[-1], flush=True)
    print(f"\nmmrank index --pages-as-images, {args.dpi} dpi, tiny CLIP on the CPU (speed and memory only)")
    print(format_table(["pages", "batch", "peak RSS MB", "seconds", "status"], rows))


if __name__ == "__main__":
    main()
