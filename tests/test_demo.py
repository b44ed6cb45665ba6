"""The HTML result sheet and the offline demo on the bundled assets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmrank.demo import ASSETS_DIR, run_demo
from mmrank.report import thumbnail, write_html_report
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.sample_files import make_image, make_pdf


def test_report_embeds_thumbnails_sources_and_scores(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", ["Page one.", "Page two."])
    image = make_image(tmp_path / "pic.png", size=400)
    items = [Item(id="p2", kind="page", source=str(pdf), page=2), Item(id="i", kind="image", source=str(image)),
             Item(id="t", kind="text", text="no picture")]
    hits = tuple(Hit(item=it, score=s, stages={"retrieve": StageScore(s, r)}, found_by=("text",))
                 for r, (it, s) in enumerate(zip(items, [0.9, 0.5, 0.25]), start=1))
    ranking = Ranking(query=Query(text="what <is> this?"), hits=hits, timings={"retrieve": 0.0123})
    page = write_html_report([ranking], tmp_path / "out" / "r.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 and "no preview" in page
    assert "what &lt;is&gt; this?" in page and "retrieve 12 ms" in page
    assert re.search(r"doc\.pdf</td><td>2</td><td>0\.9000</td>", page)
    assert max(thumbnail(items[1]).size) == 220


def test_demo_answers_every_sample_question_with_the_expected_page(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", echo=lines.append)
    questions = json.loads((ASSETS_DIR / "questions.json").read_text())
    assert result == {"recall@1": 1.0}
    assert f"{len(questions)} of {len(questions)} questions have the expected page at rank 1." in lines
    sheet = (tmp_path / "demo" / "results.html").read_text()
    assert sheet.count("<h2>") == len(questions) and sheet.count("data:image/jpeg") == 3 * len(questions)

    again: list[str] = []
    run_demo(tmp_path / "demo", echo=again.append)
    assert any("Indexed 0 pages (3 files unchanged)" in line for line in again)
    assert Path(tmp_path / "demo" / "collection" / "manifest.json").exists()
