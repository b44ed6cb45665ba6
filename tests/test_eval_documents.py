"""`mmrank eval` on document-page benchmarks: MMDocIR (per-document candidates, macro over
domains) with the text fallback, and ViDoRe pages through an image model."""

from __future__ import annotations

import json

from tests.datasets.test_mmdocir import write_mmdocir
from tests.datasets.test_vidore import write_qa


def test_mmdocir_reports_micro_and_macro_recall(tmp_path, run_cli, minilm):
    root = write_mmdocir(tmp_path / "MMDocIR")
    code, out, err = run_cli("eval", root, "--format", "mmdocir", "--pipeline", "docqa-text", "--json")
    assert code == 0, err
    result = json.loads(out)
    [stage] = result["stages"]
    # The same figures as the loader's own end-to-end test: one News question is labelled with the
    # page the text model does not put first.
    assert {k: stage["metrics"][k] for k in ("recall@1", "macro/recall@1", "recall@5")} == {
        "recall@1": 0.75, "macro/recall@1": 0.5, "recall@5": 1.0}


def test_vidore_pages_are_searched_through_the_image_model(tmp_path, run_cli, tiny_clip_dir):
    from mmrank.collection import Collection

    root = write_qa(tmp_path / "vidore")
    code, out, err = run_cli("eval", root, "--format", "vidore", "--pipeline", "images-clip", "--collection",
                             tmp_path / "c", "--image-model", f"local-dir:{tiny_clip_dir}", "--json")
    assert code == 0, err
    [stage] = json.loads(out)["stages"]
    assert stage["metrics"]["queries"] == 2 and 0.0 <= stage["metrics"]["ndcg@5"] <= 1.0
    spaces = Collection.open(tmp_path / "c").info()["spaces"]
    assert list(spaces) == ["image"] and spaces["image"]["vectors"] == 4  # the four distinct pages
