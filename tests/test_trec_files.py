"""TREC run and qrels files as trec_eval reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mmrank.errors import InputError
from mmrank.trec_files import check_run, file_name, read_qrels, read_run, write_qrels, write_run


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


# Reading run and qrels files: trec_eval's order, bad input counted or named by file:line.

QRELS = "q1 0 a 2\nq1 0 b 0\nq1 0 c 1\nq2 0 d 1\nq2 0 g -1\nq3 0 e 1\nq4 0 h 0\n"
# q1: b and a tie at 3 (trec_eval puts b first: equal scores go by doc id, descending); q2: f and
# d tie at 5 (f first); q4 is judged with grade 0 only; q9 is not judged; q3 is judged, not ranked.
RUN = ("q1 Q0 b 1 3 t\nq1 Q0 a 2 3 t\nq1 Q0 x 3 2 t\nq1 Q0 c 4 1 t\n"
       "q2 Q0 f 1 5 t\nq2 Q0 d 2 5 t\nq2 Q0 g 3 4 t\nq4 Q0 h 1 1 t\nq9 Q0 z 1 1 t\n")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_written_run_and_qrels_read_back(tmp_path: Path) -> None:
    rankings = {"q1": ["b", "a", "c"], "q2": [], "q3": ["a"], "q5": [f"d{i}" for i in range(12)]}
    run = read_run(write_run(tmp_path / "x.run", rankings, tag="mm-retrieve"))
    assert run.rankings == {"q1": ["b", "a", "c"], "q3": ["a"], "q5": [f"d{i}" for i in range(12)]}
    assert run.tag == "mm-retrieve" and run.lines == 16 and not run.problems
    qrels = read_qrels(write_qrels(tmp_path / "qrels.txt", {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}}))
    assert qrels.judgements == {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}} and qrels.lines == 3 and not qrels.problems


def test_runs_are_ordered_by_score_then_doc_id_descending_as_trec_eval(tmp_path: Path) -> None:
    path = _write(tmp_path / "ties.run", "q1 Q0 a 1 1.0 t\nq1 Q0 d10 2 1 t\nq1 Q0 d9 3 1.0 t\nq1 Q0 b 4 1 t\n"
                                         "q1 Q0 z 5 0.5 t\nq1 Q0 top 6 2e0 t\n")
    run = read_run(path)
    # The rank field is not used; equal scores go by doc id, highest first ("d9" > "d10").
    assert run.rankings["q1"] == ["top", "d9", "d10", "b", "a", "z"]
    pytrec_eval = pytest.importorskip("pytrec_eval")
    for relevant, rank in (("a", 5), ("d9", 2), ("b", 4)):
        with open(path) as file:
            evaluator = pytrec_eval.RelevanceEvaluator({"q1": {relevant: 1}}, {"recip_rank"})
            assert evaluator.evaluate(pytrec_eval.parse_run(file))["q1"]["recip_rank"] == 1 / rank
        assert run.rankings["q1"].index(relevant) + 1 == rank


def test_blank_lines_and_crlf_are_read(tmp_path: Path) -> None:
    run = read_run(_write(tmp_path / "x.run", "\nq1 Q0 a 1 2 t\r\n   \n\tq1  Q0 b 2 1 t\n"))
    assert run.rankings == {"q1": ["a", "b"]} and run.lines == 2
    assert read_qrels(_write(tmp_path / "q.txt", "\n\nq1 0 a 1\r\n")).judgements == {"q1": {"a": 1}}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("q1 Q0 a 1 2 t\n\nq1 Q0 b 2\n", 3, "expected 6 fields 'qid Q0 docid rank score tag', got 4."),
    ("q1 Q0 a 1 2 t extra\n", 1, "expected 6 fields 'qid Q0 docid rank score tag', got 7."),
    ("q1 Q0 a 1 2 t\nq1 Q0 b 2 high t\n", 2, "the score 'high' is not a number; expected 'qid Q0 docid rank score tag'."),
    ("q1 Q0 a 1 nan t\n", 1, "the score 'nan' is not finite; expected 'qid Q0 docid rank score tag' with a finite score."),
    ("q1 Q0 a 1 -inf t\n", 1, "the score '-inf' is not finite"),
    ("q1 Q0 a first 2 t\n", 1, "the rank 'first' is not a number; expected 'qid Q0 docid rank score tag'."),
])
def test_a_malformed_run_line_names_its_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path / "bm25.run", text)
    with pytest.raises(InputError) as error:
        read_run(path)
    assert str(error.value).startswith(f"{path}:{line}: {message}")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("q1 0 a 1\nq1 0 b\n", 2, "expected 4 fields 'qid 0 docid grade', got 3."),
    ("q1 0 a 1\n\nq1 0 b 1 x\n", 3, "expected 4 fields 'qid 0 docid grade', got 5."),
    ("q1 0 a 1.5\n", 1, "the grade '1.5' is not an integer; expected 'qid 0 docid grade' with a whole-number grade"),
    ("q1 0 a relevant\n", 1, "the grade 'relevant' is not an integer"),
])
def test_a_malformed_qrels_line_names_its_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path / "qrels.txt", text)
    with pytest.raises(InputError) as error:
        read_qrels(path)
    assert str(error.value).startswith(f"{path}:{line}: {message}")


def test_a_line_that_is_not_utf8_or_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "x.run"
    path.write_bytes(b"q1 Q0 a 1 2 t\nq1 Q0 \xff 2 1 t\n")
    with pytest.raises(InputError, match=r"x\.run:2: the line is not UTF-8 text; expected a TREC run line"):
        read_run(path)
    with pytest.raises(InputError, match=r"missing\.txt: cannot read the qrels file"):
        read_qrels(tmp_path / "missing.txt")
    with pytest.raises(InputError, match=r": cannot read the run file"):
        read_run(tmp_path)


def test_duplicate_run_lines_are_counted_and_the_first_is_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.run", "q1 Q0 a 1 3 t\nq1 Q0 b 2 2 t\nq1 Q0 a 3 9 t\nq2 Q0 a 1 1 t\nq1 Q0 b 4 1 t\n")
    run = read_run(path)
    assert run.rankings == {"q1": ["a", "b"], "q2": ["a"]} and run.lines == 5
    assert run.problems.counts == {"duplicate_doc": 2}
    assert run.problems.examples["duplicate_doc"] == ["line 3: q1 a, first at line 1", "line 5: q1 b, first at line 2"]
    assert run.problems.describe() == [
        f"{path}: 2 repeated (query, doc) lines (e.g. line 3: q1 a, first at line 1; line 5: q1 b, first at line 2); "
        "the first of each is kept (trec_eval refuses such a file)"]


def test_duplicate_and_negative_judgements_are_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "qrels.txt", "q1 0 a 1\nq1 0 b -1\nq1 0 a 1\nq1 0 a 2\nq2 0 c -2\nq2 0 c 0\n")
    qrels = read_qrels(path)
    assert qrels.judgements == {"q1": {"a": 1, "b": -1}, "q2": {"c": -2}} and qrels.lines == 6
    assert qrels.problems.counts == {"negative_grade": 2, "duplicate_judgement": 1, "conflicting_grade": 2}
    assert qrels.problems.examples["conflicting_grade"] == ["line 4: q1 a grade 2, grade 1 at line 1",
                                                            "line 6: q2 c grade 0, grade -2 at line 5"]
    described = qrels.problems.describe()
    assert len(described) == 3 and described[0] == (
        f"{path}: 2 negative grades (e.g. line 2: q1 b -1; line 5: q2 c -2); kept, and never relevant, as in trec_eval")


def test_queries_only_the_run_or_only_the_qrels_has_are_counted(tmp_path: Path) -> None:
    run = read_run(_write(tmp_path / "x.run", RUN))
    qrels = read_qrels(_write(tmp_path / "qrels.txt", QRELS))
    problems = check_run(run, qrels)
    assert problems.counts == {"unknown_query": 1, "unranked_query": 1}
    assert problems.examples == {"unknown_query": ["q9"], "unranked_query": ["q3"]}
    assert not check_run(run, read_qrels(_write(tmp_path / "same.txt", "q1 0 a 1\nq2 0 d 1\nq4 0 h 0\nq9 0 z 0\n")))
    many = read_run(_write(tmp_path / "many.run", "".join(f"u{i} Q0 a 1 1 t\n" for i in range(5))))
    assert check_run(many, qrels).describe()[0] == (
        f"{many.path} vs {qrels.path}: 5 run queries not in the qrels (e.g. u0; u1; u2 ...); not scored, as in trec_eval")


def test_score_prints_trec_eval_values_and_the_problems(tmp_path: Path, run_cli) -> None:
    qrels = _write(tmp_path / "qrels.txt", QRELS)
    run = _write(tmp_path / "a.run", RUN)
    code, out, err = run_cli("score", qrels, run, "--metrics", "map,ndcg@10,mrr,recall@10", "--json")
    assert code == 0, err
    result = json.loads(out)
    # Counted: q1 (b a x c: AP (1/2 + 2/4) / 2), q2 (f d g: AP 1/2), q4 (no relevant item: 0).
    ndcg_q1 = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    expected = {"map": 1 / 3, "ndcg@10": (ndcg_q1 + 1 / math.log2(3)) / 3, "mrr": 1 / 3, "recall@10": 2 / 3}
    [scored] = result["runs"]
    assert scored["metrics"] == pytest.approx(expected) and scored["queries"] == 3 and scored["tag"] == "t"
    assert scored["problems"] == {"unknown_query": 1, "unranked_query": 1}
    assert result["qrels_problems"] == {"negative_grade": 1} and result["averaging"] == "trec_eval"
    assert err.splitlines() == [
        f"{qrels}: 1 negative grades (e.g. line 5: q2 g -1); kept, and never relevant, as in trec_eval",
        f"{run} vs {qrels}: 1 run queries not in the qrels (e.g. q9); not scored, as in trec_eval",
        f"{run} vs {qrels}: 1 judged queries not in the run (e.g. q3); trec_eval skips them (--averaging "
        "trec_eval); trec_eval -c and --averaging relevant score them 0"]

    pytrec_eval = pytest.importorskip("pytrec_eval")
    with open(qrels) as qrels_file, open(run) as run_file:
        evaluator = pytrec_eval.RelevanceEvaluator(pytrec_eval.parse_qrel(qrels_file), {"map", "ndcg_cut", "recip_rank", "recall"})
        per_query = evaluator.evaluate(pytrec_eval.parse_run(run_file))
    assert sorted(per_query) == ["q1", "q2", "q4"]
    for ours, theirs in (("map", "map"), ("ndcg@10", "ndcg_cut_10"), ("mrr", "recip_rank"), ("recall@10", "recall_10")):
        assert scored["metrics"][ours] == pytest.approx(sum(q[theirs] for q in per_query.values()) / len(per_query))

    # --averaging relevant counts q3 (judged, relevant item, not ranked) as 0, and not q4 (no relevant item).
    code, out, _ = run_cli("score", qrels, run, "--metrics", "map,mrr", "--averaging", "relevant", "--json")
    assert code == 0 and json.loads(out)["runs"][0]["metrics"] == pytest.approx({"map": 1 / 3, "mrr": 1 / 3})
    assert json.loads(out)["runs"][0]["queries"] == 3


def test_score_prints_one_row_per_run_and_scores_the_others_when_one_has_nothing_to_score(tmp_path: Path, run_cli) -> None:
    qrels = _write(tmp_path / "qrels.txt", QRELS)
    first = _write(tmp_path / "a.run", RUN)
    second = write_run(tmp_path / "b.run", {"q1": ["a", "c"], "q2": ["d"]}, tag="b")
    unjudged = _write(tmp_path / "c.run", "q9 Q0 z 1 1 t\nq9 Q0 z 2 1 t\n")
    code, out, err = run_cli("score", qrels, first, second, unjudged, "--metrics", "map,recall@1")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["run", "map", "recall@1", "queries"]
    assert lines[2].split() == [str(first), "0.3333", "0.0000", "3"]
    assert lines[3].split() == [str(second), "1.0000", "0.7500", "2"]
    assert lines[4].split() == [str(unjudged), "-", "-", "0"]
    assert f"{unjudged}: 1 repeated (query, doc) lines" in err
    assert f"{unjudged}: not scored: No judged query has a ranking" in err
    # Only the metrics' names are checked before reading; a malformed line stops with its file:line.
    code, _, err = run_cli("score", qrels, first, "--metrics", "map,ndcg")
    assert code == 2 and "Metric 'ndcg' needs a cutoff" in err
    code, _, err = run_cli("score", qrels, first, "--averaging", "all")
    assert code == 2 and "--averaging must be one of relevant, trec_eval; got 'all'" in err
    bad = _write(tmp_path / "bad.run", "q1 Q0 a 1 1 t\nq1 Q0 b 2\n")
    code, out, err = run_cli("score", qrels, bad)
    assert code == 2 and out == "" and f"Error: {bad}:2: expected 6 fields 'qid Q0 docid rank score tag', got 4." in err


def test_score_uses_the_eval_default_metrics(tmp_path: Path, run_cli) -> None:
    from mmrank.evaluation import DEFAULT_METRICS

    code, out, _ = run_cli("score", _write(tmp_path / "qrels.txt", QRELS), _write(tmp_path / "a.run", RUN))
    assert code == 0 and out.splitlines()[0].split() == ["run", *DEFAULT_METRICS, "queries"]
