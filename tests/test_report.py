"""The per-stage view of the HTML result sheet and the terminal stage table, on hand-built rankings."""

from __future__ import annotations

import re

from PIL import Image

from mmrank.report import PICTURE_PX, movement, stage_table, write_html_report
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.sample_files import make_image

REASONING = "<think>" + " ".join(f"step {i}: compare candidate {i % 5} with the request." for i in range(30)) + \
    "</think> ranking: [3] > [1] > [2]"


def _item(name: str) -> Item:
    if name == "d":
        return Item(id="d", kind="page", source="docs/report.pdf", page=2)
    return Item(id=name, kind="image", source=f"photos/{name}.jpg")


def _ranking(tmp_path) -> Ranking:
    """retrieve a b c d -> sqaf c a e b d -> mllm c a e d b (e is new after retrieve; a has a note)."""
    hits = {name: Hit(item=_item(name), score=score, found_by=("image",),
                      stages={"image": StageScore(score, rank), "retrieve": StageScore(score, rank)})
            for rank, (name, score) in enumerate([("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)], start=1)}
    hits["e"] = Hit(item=_item("e"), score=0.0)
    query = Query(image=make_image(tmp_path / "ref.png", size=300), modification="make it <blue>", id="q7")
    ranking = Ranking(query=query, hits=tuple(hits[n] for n in "abcd"), timings={"retrieve": 0.010})
    wide = Image.new("RGB", (1000, 500), (200, 30, 30))
    clear = Image.new("RGBA", (100, 50), (0, 0, 255, 128))
    ranking = ranking.with_stage(
        "sqaf", [(hits["c"], 0.95, None), (hits["a"], 0.9, None), (hits["e"], 0.5, None),
                 (hits["b"], 0.4, None), (hits["d"], 0.3, None)],
        0.25, explanations=["target caption: a <red> car & a dog"], pictures=[wide, clear])
    current = {hit.item.id: hit for hit in ranking.hits}
    return ranking.with_stage(
        "mllm", [(current["c"], 0.8, None), (current["a"], None, "fell back: unparsable <answer>"),
                 (current["e"], 0.6, None), (current["d"], 0.2, None), (current["b"], 0.1, None)],
        1.5, explanations=[REASONING])


def _rows(page: str) -> dict[str, str]:
    """Result-table rows by the source shown in them."""
    rows = re.findall(r"<tr><td>\d+</td>.*?</tr>", page)
    return {re.search(r"<td title='[^']*'>([^<]+)</td>", row).group(1): row for row in rows}


def test_movement_markers():
    assert [movement(3, 1), movement(1, 2), movement(4, 4), movement(None, 3)] == ["▲2", "▼1", "=", "new"]


def test_html_sheet_shows_every_stage_its_moves_explanations_pictures_and_notes(tmp_path):
    page = write_html_report([_ranking(tmp_path)], tmp_path / "sheet.html", title="stages").read_text()

    assert page.count("<h2>") == 1 and "<h2>make it &lt;blue&gt;</h2>" in page
    assert "<b>modification:</b> make it &lt;blue&gt;" in page and "alt='reference image'" in page
    assert "retrieve 10 ms, sqaf 250 ms, mllm 1500 ms (total 1760 ms)" in page
    assert re.search(r"<th>retrieve<br>.*<th>sqaf<br>.*<th>mllm<br>.*<th>move</th>", page)

    rows = _rows(page)
    assert list(rows) == ["c.jpg", "a.jpg", "e.jpg", "report.pdf", "b.jpg"]
    expected = {  # source: (retrieve cell, sqaf cell, mllm cell, move)
        "c.jpg": ("0.7000 · #3", "0.9500 · #1", "0.8000 · #1", "▲2"),
        "a.jpg": ("0.9000 · #1", "0.9000 · #2", "— · #2", "▼1"),
        "e.jpg": ("–", "0.5000 · #3", "0.6000 · #3", "new"),
        "report.pdf": ("0.6000 · #4", "0.3000 · #5", "0.2000 · #4", "="),
        "b.jpg": ("0.8000 · #2", "0.4000 · #4", "0.1000 · #5", "▼3"),
    }
    for source, (retrieve, sqaf, mllm, move) in expected.items():
        cells = re.findall(r"<td class='stage[^']*'>(.*?)</td>", rows[source])
        assert [re.sub(r" <span.*", "", c) for c in cells] == [retrieve, sqaf, mllm], source
        assert re.search(rf"<td( class='\w+')?>{move}</td>", rows[source]), source
    assert "<td class='up'>▲2</td>" in rows["c.jpg"] and "<td class='new'>new</td>" in rows["e.jpg"]
    assert "<td class='down'>▼3</td>" in rows["b.jpg"] and "<td>=</td>" in rows["report.pdf"]
    assert "report.pdf</td><td>2</td><td>0.2000</td>" in rows["report.pdf"]  # source, page, final score
    assert "image 0.600" in rows["report.pdf"]  # found by, with the path's score

    # the stage note: flagged in the stage cell and spelled out in the notes column, escaped
    assert "title='fell back: unparsable &lt;answer&gt;'>*</span>" in rows["a.jpg"]
    assert "<td class='note'>mllm: fell back: unparsable &lt;answer&gt;</td>" in rows["a.jpg"]
    assert "<td class='note'></td>" in rows["c.jpg"]

    # explanations: escaped; the long reasoning collapsed in <details>
    assert "<h3>sqaf <span class='muted'>250 ms</span></h3>" in page
    assert "<div class='explanation'>target caption: a &lt;red&gt; car &amp; a dog</div>" in page
    details = re.search(r"<details><summary>(.*?)</summary><div class='explanation'>(.*?)</div></details>", page)
    assert details and details.group(1).startswith("&lt;think&gt;step 0:")
    assert details.group(2) == REASONING.replace("<", "&lt;").replace(">", "&gt;")
    assert "<think>" not in page and "<red>" not in page

    # pictures: embedded, the wide one scaled to PICTURE_PX, the transparent one as PNG
    pictures = re.findall(r"<img class='picture' alt='([^']+)' width='(\d+)' src='data:image/(\w+);base64,", page)
    assert pictures == [("sqaf picture 1", str(PICTURE_PX), "jpeg"), ("sqaf picture 2", "100", "png")]
    assert page.index("sqaf picture 1") < page.index("<h3>mllm")  # under its own stage


def test_a_ranking_with_only_a_first_stage_moves_nothing(tmp_path):
    hits = tuple(Hit(item=Item(id=i, kind="text", text=i), score=1.0 / r, stages={"retrieve": StageScore(1.0 / r, r)})
                 for r, i in enumerate(["x", "y"], start=1))
    ranking = Ranking(query=Query(text="plain"), hits=hits, timings={"retrieve": 0.002})
    page = write_html_report([ranking], tmp_path / "one.html").read_text()
    assert page.count("<td>=</td>") == 2 and "<details>" not in page and "class='picture'" not in page
    assert stage_table(ranking).splitlines()[2:] == ["1  x       1         =", "2  y       2         ="]


def test_stage_table_lists_each_stage_rank_and_the_movement(tmp_path):
    assert stage_table(_ranking(tmp_path)) == "\n".join([
        "#  source          retrieve  sqaf  mllm  move",
        "-  --------------  --------  ----  ----  ----",
        "1  c.jpg           3         1     1     ▲2",
        "2  a.jpg           1         2     2     ▼1",
        "3  e.jpg           -         3     3     new",
        "4  report.pdf p.2  4         5     4     =",
        "5  b.jpg           2         4     5     ▼3",
    ])
