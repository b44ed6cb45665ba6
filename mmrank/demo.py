"""The offline demo: the bundled sample PDFs, the text fallback, sample questions, an HTML sheet."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mmrank.errors import InputError
from mmrank.resources import ASSETS_DIR

TOP_K = 3


def load_questions(assets: Path) -> list[dict]:
    """The sample questions, with expected pages as absolute sources."""
    path = assets / "questions.json"
    try:
        questions = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the sample questions ({error}).") from error
    for question in questions:
        question["expected"] = [((assets / e["source"]).resolve(), e["page"]) for e in question["expected"]]
    return questions


def run_demo(out: Path, echo: Callable[[str], None] = print, assets: Path = ASSETS_DIR) -> dict[str, float]:
    """Index ``assets/pdfs`` into ``out/collection``, answer the sample questions, print a table per
    question and write ``out/results.html``. Returns the share of questions answered at rank 1."""
    from mmrank.collection import Collection
    from mmrank.encoders import load_text_encoder
    from mmrank.indexing import ItemEncoder, index_paths
    from mmrank.pipeline import Pipeline
    from mmrank.report import format_table, write_html_report
    from mmrank.types import Query

    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(assets)
    echo("mmrank demo: offline document-page QA on the sample PDFs (text fallback: all-MiniLM-L6-v2 + BM25)")
    with Collection.open_or_create(out / "collection", device="cpu") as collection:
        encoder = ItemEncoder(load_text_encoder(device="cpu"))
        report = index_paths(collection, [assets / "pdfs"], encoder)
        collection.use_encoder("text", encoder.text_encoder)
        echo(f"Indexed {report.items_added} pages ({report.unchanged_files} files unchanged) "
             f"into {out / 'collection'} in {report.seconds:.1f} s.\n")
        pipeline = Pipeline.from_yaml("docqa-text", collection)
        rankings = []
        hits_at_1 = 0
        for question in questions:
            ranking = pipeline.search(Query(text=question["question"]), k=TOP_K)
            rankings.append(ranking)
            expected = set(question["expected"])
            rows = []
            for rank, hit in enumerate(ranking.hits, start=1):
                correct = (Path(hit.item.source), hit.item.page) in expected
                hits_at_1 += correct and rank == 1
                paths = ", ".join(f"{path} {hit.stages[path].score:.3f}" for path in hit.found_by)
                rows.append([str(rank), f"{hit.score:.4f}", Path(hit.item.source).name, str(hit.item.page),
                             paths, "expected" if correct else ""])
            echo(f"Q: {question['question']}")
            echo(format_table(["rank", "fused", "document", "page", "found by (score)", ""], rows) + "\n")
    sheet = write_html_report(rankings, out / "results.html", title="mmrank demo: sample questions")
    share = hits_at_1 / len(questions)
    echo(f"{hits_at_1} of {len(questions)} questions have the expected page at rank 1.")
    echo(f"HTML results with page thumbnails: {sheet}")
    return {"recall@1": share}
