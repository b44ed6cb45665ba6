"""Document-page QA on real PDFs: how often each first-stage variant puts the answer page on top.

The set (``benchmarks/docqa_devset.json``) names PDFs shipped in Debian packages, none written in
this project (manuals, user guides, an IDL specification, a FAQ, a wiring reference: 470 pages, some
with ligatures, hyphenated line ends, running headers and pages without text), and questions
written by reading the pages before any ranking was run, each with the PDF page(s) that answer it.

All the PDFs go into ONE collection, as a user would index them, with the default text pipeline's
encoders (all-MiniLM-L6-v2 + BM25), kept in a cache folder so reruns skip indexing. Every variant in
``VARIANTS`` is built as a pipeline and answers every question (``Query(text=...)``, k=10). A hit is
correct when it is a page of the question's document whose number is one of the answer pages.

    python benchmarks/docqa_devset.py                        # every variant
    python benchmarks/docqa_devset.py --variants rrf,docqa-text --json results.json
    python benchmarks/docqa_devset.py --details              # per question: rank of the answer

Missing PDFs are installed with ``apt-get install -y`` when running as root; otherwise the script
says which packages to install. A PDF whose SHA-256 differs from the set's is an error (the
package changed, so the answer pages may have moved).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmrank.collection import Collection  # noqa: E402
from mmrank.encoders import DEFAULT_TEXT_MODEL, load_text_encoder  # noqa: E402
from mmrank.indexing import ItemEncoder, index_paths  # noqa: E402
from mmrank.pipeline import Pipeline  # noqa: E402
from mmrank.report import format_table  # noqa: E402
from mmrank.types import Query  # noqa: E402

SET_PATH = Path(__file__).resolve().with_name("docqa_devset.json")
K = 10

# name -> pipeline config (Pipeline.from_config), or the name of a pipeline file / bundled pipeline
# (Pipeline.from_yaml), so the bundled default is measured as it stands today.
VARIANTS: dict[str, dict[str, Any] | str] = {
    "dense": {"retriever": {"paths": ["text"]}, "rerankers": []},
    "bm25": {"retriever": {"paths": ["bm25"]}, "rerankers": []},
    "rrf": {"retriever": {"paths": ["text", "bm25"], "fusion": "rrf"}, "rerankers": []},
    "score": {"retriever": {"paths": ["text", "bm25"], "fusion": "score"}, "rerankers": []},
    "docqa-text": "docqa-text",
    "docqa-text+dense-passages": {
        "retriever": {"paths": ["text", "bm25"], "fusion": "score", "weights": {"text": 0.5, "bm25": 1.0}},
        "rerankers": [{"type": "dense-passages", "depth": 20}]},
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_set(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    documents = {doc["id"]: doc for doc in data["documents"]}
    for question in data["questions"]:
        if question["document"] not in documents:
            raise SystemExit(f"{path}: question {question['id']} names unknown document {question['document']!r}.")
    return data


def ensure_pdfs(documents: list[dict[str, Any]]) -> None:
    """Install the packages of missing PDFs (as root), then check every PDF's SHA-256."""
    missing = [doc for doc in documents if not Path(doc["path"]).is_file()]
    if missing:
        packages = sorted({doc["package"] for doc in missing})
        paths = ", ".join(doc["path"] for doc in missing)
        if os.geteuid() != 0:
            raise SystemExit(f"Missing PDFs: {paths}.\nInstall their Debian packages first: "
                             f"sudo apt-get install -y {' '.join(packages)}")
        print(f"Installing {' '.join(packages)} (missing: {paths})", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        result = subprocess.run(["apt-get", "install", "-y", *packages], env=env)
        still = [doc["path"] for doc in documents if not Path(doc["path"]).is_file()]
        if result.returncode != 0:
            raise SystemExit(f"apt-get install -y {' '.join(packages)} failed (exit {result.returncode}).")
        if still:
            raise SystemExit(f"Installed {' '.join(packages)}, but these PDFs are still missing: {', '.join(still)}; "
                             "the packages no longer ship them, so the set needs updating.")
    for doc in documents:
        actual = sha256(Path(doc["path"]))
        if actual != doc["sha256"]:
            raise SystemExit(f"{doc['path']}: SHA-256 {actual} differs from the set's {doc['sha256']}; the "
                             f"package {doc['package']} changed, so the answer pages may have moved. Check the "
                             "questions of this document against the new file before updating the hash.")


def default_collection(documents: list[dict[str, Any]]) -> Path:
    """A cache folder under the system temp dir, keyed by the PDFs and the text model."""
    key = hashlib.sha256("\n".join([DEFAULT_TEXT_MODEL, *sorted(d["sha256"] for d in documents)]).encode())
    return Path(tempfile.gettempdir()) / f"mmrank-docqa-devset-{key.hexdigest()[:12]}"


def build_pipeline(name: str, spec: dict[str, Any] | str, collection: Collection) -> Pipeline:
    if isinstance(spec, str):
        return Pipeline.from_yaml(spec, collection)
    return Pipeline.from_config({"name": name, **spec}, collection, source=name)


def first_correct(ranking, document_path: Path, pages: set[int]) -> int | None:
    """1-based rank of the first hit that is an answer page of the question's document."""
    for rank, hit in enumerate(ranking.hits, start=1):
        item = hit.item
        if item.source is not None and item.page in pages and Path(item.source).resolve() == document_path:
            return rank
    return None


def summarize(ranks: list[int | None]) -> dict[str, Any]:
    def within(n: int) -> int:
        return sum(r is not None and r <= n for r in ranks)

    return {"questions": len(ranks), "top1": within(1), "top3": within(3), "top5": within(5),
            "top10": within(10), "mrr10": sum(1 / r for r in ranks if r is not None) / max(1, len(ranks))}


def count(n: int, total: int) -> str:
    return f"{n}/{total} ({100 * n / max(1, total):.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, default=SET_PATH, help="the questions file")
    parser.add_argument("--collection", type=Path, default=None,
                        help="collection cache folder (default: under the temp dir, keyed by the set's PDFs)")
    parser.add_argument("--reindex", action="store_true", help="delete the cached collection and index again")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this file")
    parser.add_argument("--details", action="store_true", help="print the answer's rank per question and variant")
    args = parser.parse_args()

    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown or not chosen:
        raise SystemExit(f"Unknown variants {unknown}; choose from {', '.join(VARIANTS)}.")
    data = load_set(args.set)
    documents = data["documents"]
    questions = data["questions"]
    ensure_pdfs(documents)
    doc_paths = {doc["id"]: Path(doc["path"]).resolve() for doc in documents}

    folder = args.collection or default_collection(documents)
    if args.reindex and folder.exists():
        shutil.rmtree(folder)
    print(f"Set: {args.set.name}: {len(documents)} PDFs, {sum(d['pages'] for d in documents)} pages, "
          f"{len(questions)} questions; collection {folder}", flush=True)

    with Collection.open_or_create(folder, device="cpu") as collection:
        encoder = ItemEncoder(load_text_encoder(device="cpu"))
        started = time.perf_counter()
        report = index_paths(collection, [doc["path"] for doc in documents], encoder)
        seconds = time.perf_counter() - started
        collection.use_encoder("text", encoder.text_encoder)
        pages_indexed = report.items_added
        textless = report.skipped_pages  # pages left out: no text even by OCR, and no image model
        other_skips = report.skipped
        rate = f"{pages_indexed / seconds:.1f} pages/s" if pages_indexed else "nothing to index (cached)"
        vectors = collection.info()["spaces"].get("text", {}).get("vectors")
        print(f"Indexing: {pages_indexed} pages added, {report.unchanged_files} files unchanged, "
              f"{textless} pages without text left out, in {seconds:.1f} s ({rate}); "
              f"{len(collection)} items ({vectors} text vectors) in the collection.")
        for skipped in other_skips:
            print(f"  skipped {skipped.path}: {skipped.reason}")
        for warning in report.warnings:
            print(f"  warning {warning.path}: {warning.reason}")

        results: dict[str, dict[str, Any]] = {}
        for name in chosen:
            pipeline = build_pipeline(name, VARIANTS[name], collection)
            pipeline.search(Query(text="warm-up query"), k=K)  # load the indexes and the model once
            ranks: dict[str, int | None] = {}
            top_hits: dict[str, str] = {}
            latencies = []
            for question in questions:
                start = time.perf_counter()
                ranking = pipeline.search(Query(text=question["question"], id=question["id"]), k=K)
                latencies.append(time.perf_counter() - start)
                ranks[question["id"]] = first_correct(ranking, doc_paths[question["document"]],
                                                      set(question["pages"]))
                if ranking.hits:
                    item = ranking.hits[0].item
                    top_hits[question["id"]] = f"{Path(item.source).name if item.source else item.id} p{item.page}"
            per_doc: dict[str, list[int | None]] = defaultdict(list)
            per_type: dict[str, list[int | None]] = defaultdict(list)
            for question in questions:
                per_doc[question["document"]].append(ranks[question["id"]])
                per_type[question["type"]].append(ranks[question["id"]])
            spec = VARIANTS[name]
            results[name] = {
                "pipeline": spec if isinstance(spec, str) else pipeline.to_config(),
                **summarize(list(ranks.values())),
                "latency_ms_mean": 1000 * statistics.fmean(latencies),
                "latency_ms_median": 1000 * statistics.median(latencies),
                "per_document": {doc["id"]: summarize(per_doc[doc["id"]]) for doc in documents},
                "per_type": {kind: summarize(r) for kind, r in sorted(per_type.items())},
                "ranks": ranks,
                "top_hit": top_hits,
            }

    total = len(questions)
    print(f"\nFirst stage, k={K}, {total} questions, one collection of all {len(documents)} PDFs (CPU)")
    print(format_table(["variant", "top-1", "top-3", "top-5", "top-10", "MRR@10", "ms/query"],
                       [[name, count(r["top1"], total), count(r["top3"], total), count(r["top5"], total),
                         count(r["top10"], total), f"{r['mrr10']:.3f}", f"{r['latency_ms_mean']:.1f}"]
                        for name, r in results.items()]))
    for name, result in results.items():
        print(f"\n{name}: per document (top-1 / top-5)")
        rows = []
        for doc in documents:
            d = result["per_document"][doc["id"]]
            rows.append([doc["id"], str(doc["pages"]), str(d["questions"]), count(d["top1"], d["questions"]),
                         count(d["top5"], d["questions"]), f"{d['mrr10']:.3f}"])
        print(format_table(["document", "pages", "questions", "top-1", "top-5", "MRR@10"], rows))
    kinds = sorted({q["type"] for q in questions})
    print("\nPer question type: top-1 / top-5 (questions: "
          + ", ".join(f"{t} {sum(q['type'] == t for q in questions)}" for t in kinds) + ")")
    print(format_table(["variant", *kinds],
                       [[name, *(f"{r['per_type'][t]['top1']} / {r['per_type'][t]['top5']}" for t in kinds)]
                        for name, r in results.items()]))
    if args.details:
        print("\nRank of the first answer page per question (- : not in the top 10); top hit of the last variant")
        last = list(results)[-1]
        print(format_table(["id", "document", "answer", *results, f"top hit ({last})"],
                           [[q["id"], q["document"], ",".join(map(str, q["pages"])),
                             *(str(results[n]["ranks"][q["id"]] or "-") for n in results),
                             results[last]["top_hit"].get(q["id"], "")] for q in questions]))
    if args.json:
        payload = {"set": str(args.set), "set_sha256": sha256(args.set), "k": K, "collection": str(folder),
                   "indexing": {"pages_added": pages_indexed, "unchanged_files": report.unchanged_files,
                                "textless_pages_skipped": textless, "text_vectors": vectors, "seconds": seconds,
                                "pages_per_second": pages_indexed / seconds if pages_indexed else None},
                   "variants": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    main()
