"""TREC run and qrels files as trec_eval reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrank.errors import InputError
from mmrank.trec_files import file_name, write_qrels, write_run


def test_run_lines_keep_the_order_for_tools_that_sort_by_score(tmp_path: Path) -> None:
    path = write_run(tmp_path / "x.run", {"q1": ["b", "a", "c"], "q2": [], "q3": ["a"]}, tag="t")
    assert path.read_text().splitlines() == ["q1 Q0 b 1 3 t", "q1 Q0 a 2 2 t", "q1 Q0 c 3 1 t", "q3 Q0 a 1 1 t"]
    pytrec_eval = pytest.importorskip("pytrec_eval")
    with open(path) as file:
        run = pytrec_eval.parse_run(file)
    assert sorted(run["q1"], key=run["q1"].get, reverse=True) == ["b", "a", "c"]


def test_qrels_lines_hold_every_grade(tmp_path: Path) -> None:
    path = write_qrels(tmp_path / "qrels.txt", {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}})
    assert path.read_text() == "q1 0 a 2\nq1 0 b 0\nq2 0 c 1\n"


def test_ids_with_whitespace_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"x.run: the id 'a b' is empty or holds whitespace"):
        write_run(tmp_path / "x.run", {"q1": ["ok", "a b"]}, tag="t")
    assert list(tmp_path.iterdir()) == []


def test_file_names_keep_only_safe_characters() -> None:
    assert file_name("retrieve") == "retrieve"
    assert file_name("easy") == "easy"
    assert file_name("../my stage/x") == ".._my_stage_x"
    assert file_name("") == "_"
