"""Indexing on Ray Data vs one process: pages (and images) per second, and Ray's overhead.

    python benchmarks/ray_index_bench.py                  # the bundled PDFs and images x12 (288 items)
    python benchmarks/ray_index_bench.py --copies 40 --workers 1 2 4

The bundled PDFs and images (assets/) are copied ``--copies`` times into a temporary folder and
indexed three ways into fresh collections: by ``index_paths`` in this process, then by
``index_paths_on_ray`` on a local Ray with 1 and 2 encoder actors (``--workers``). Every page is
also rendered for the image model (``--pages-as-images``, as a visual-document collection does).
Ray's start is timed apart from the run; a run's time includes starting its actors (which import
torch and open_clip) and everything up to the published indexes. Each Ray collection is checked
against the one-process collection (same items, vectors within 1e-5).

The models are tiny random-weight ones (a CLIP with 32-pixel inputs for pictures and texts), so the
encoder costs almost nothing: the figures measure the plumbing (reading, rendering, moving pictures
through the object store, writing), not model throughput. With real models on GPUs the encoding
dominates and the actors scale it; on a 2-core machine Ray can only add overhead.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank.collection import Collection  # noqa: E402
from mmrank.indexing import EncoderChoice, index_paths  # noqa: E402
from mmrank.ray_indexing import LOCAL_OBJECT_STORE, index_paths_on_ray  # noqa: E402
from tests.paths import ASSETS  # noqa: E402
from tests.tiny_models import build_tiny_clip  # noqa: E402


def copies_of_assets(folder: Path, copies: int) -> int:
    """The bundled PDFs and images ``copies`` times under ``folder``; returns how many files."""
    files = [*sorted((ASSETS / "pdfs").glob("*.pdf")), *sorted((ASSETS / "images").glob("*.jpg"))]
    for n in range(copies):
        for file in files:
            target = folder / f"copy{n:03d}" / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return copies * len(files)


def same_collection(a: Path, b: Path) -> str:
    with Collection.open(a) as x, Collection.open(b) as y:
        ids = sorted(item.id for item in y.items())
        if sorted(item.id for item in x.items()) != ids or x.spaces != y.spaces:
            return "DIFFERENT"
        worst = max(float(np.abs(x.item_vectors(ids, s)[1] - y.item_vectors(ids, s)[1]).max()) for s in y.spaces)
        return f"same (max |dv| {worst:.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=12, help="copies of the bundled files")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="encoder actors per Ray run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--pages-as-images", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    with tempfile.TemporaryDirectory(prefix="mmrank-ray-bench-") as scratch:
        root = Path(scratch)
        files = copies_of_assets(root / "in", args.copies)
        clip = build_tiny_clip(root / "tiny-clip")
        choice = EncoderChoice(text_model=f"open_clip:local-dir:{clip}", image_model=f"local-dir:{clip}",
                               pages_as_images=args.pages_as_images, dpi=args.dpi)
        rows = []
        with Collection.create(root / "single") as collection:
            start = time.perf_counter()
            report = index_paths(collection, [root / "in"], choice.item_encoder(collection.spaces, "cpu"),
                                 batch_size=args.batch_size)
            single = time.perf_counter() - start
        items = report.items_added
        rows.append(["one process", "-", "-", f"{single:.1f}", f"{items / single:.1f}", "-", "reference"])
        for workers in args.workers:
            start = time.perf_counter()
            ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), object_store_memory=LOCAL_OBJECT_STORE,
                     include_dashboard=False, logging_level=logging.WARNING)
            started = time.perf_counter() - start
            out = root / f"ray{workers}"
            try:
                with Collection.create(out) as collection:
                    start = time.perf_counter()
                    report = index_paths_on_ray(collection, [root / "in"], choice, workers=workers, device="cpu",
                                                batch_size=args.batch_size)
                    seconds = time.perf_counter() - start
            finally:
                ray.shutdown()
            assert report.items_added == items, (report.items_added, items)
            rows.append(["Ray Data, local", str(workers), f"{started:.1f}", f"{seconds:.1f}", f"{items / seconds:.1f}",
                         f"{seconds / single - 1:+.0%}", same_collection(out, root / "single")])

    print(f"{files} files ({items} items: PDF pages and images), pages_as_images={args.pages_as_images}, "
          f"dpi={args.dpi}, batch size {args.batch_size}, {os.cpu_count()} CPUs")
    print("Tiny random-weight models (CLIP with 32-pixel inputs): a speed/plumbing figure, not model throughput.")
    header = ["run", "workers", "Ray start s", "index s", "items/s", "overhead", "collection vs one process"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
