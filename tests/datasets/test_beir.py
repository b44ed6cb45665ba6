"""The BEIR loader on tiny fixture folders in the official layout, well-formed and broken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmrank.datasets import RetrievalDataset, known_kinds, load_dataset
from mmrank.datasets.beir import load_beir
from mmrank.errors import InputError
from mmrank.types import Item, Query
from tests.paths import REPO

CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
    {"_id": "d2", "title": "", "text": "Berlin is the capital of Germany."},
    {"_id": "d3", "text": "Rome is in Italy."},
]
QUERIES = [
    {"_id": "q1", "text": "capital of france"},
    {"_id": "q2", "text": "unjudged query"},
    {"_id": "q3", "text": "capital of germany"},
]
QRELS = "query-id\tcorpus-id\tscore\nq3\td2\t1\nq1\td1\t2\nq1\td3\t0\n"


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_beir(
    root: Path,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: str | None = None,
    split: str = "test",
) -> Path:
    """Write a BEIR folder; each file defaults to the well-formed fixture above."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    files = {
        "corpus.jsonl": _jsonl(CORPUS) if corpus is None else corpus,
        "queries.jsonl": _jsonl(QUERIES) if queries is None else queries,
        f"qrels/{split}.tsv": QRELS if qrels is None else qrels,
    }
    for name, content in files.items():
        (root / name).write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def beir_root(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tinybeir")


def test_loads_the_official_layout(beir_root: Path) -> None:
    dataset = load_beir(beir_root)

    assert dataset.name == "tinybeir"
    assert dataset.split == "test"
    assert dataset.items == [
        Item(id="d1", kind="text", text="Paris\n\nParis is the capital of France.",
             metadata={"title": "Paris"}),
        Item(id="d2", kind="text", text="Berlin is the capital of Germany.",
             metadata={"title": ""}),
        Item(id="d3", kind="text", text="Rome is in Italy.", metadata={"title": ""}),
    ]
    # Only judged queries, in queries.jsonl order (q1 before q3 although qrels list q3 first).
    assert dataset.queries == [
        Query(id="q1", text="capital of france"),
        Query(id="q3", text="capital of germany"),
    ]
    assert dataset.qrels == {"q3": {"d2": 1}, "q1": {"d1": 2, "d3": 0}}
    assert repr(dataset) == (
        "RetrievalDataset(name='tinybeir', split='test', items=3, queries=2, judgements=3)"
    )


def test_load_dataset_dispatches_on_kind_and_passes_options(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\nq2\td1\t1\n", split="dev")
    dataset = load_dataset("BEIR", str(root), split="dev")
    assert isinstance(dataset, RetrievalDataset)
    assert dataset.split == "dev"
    assert [q.id for q in dataset.queries] == ["q2"]


def test_unknown_kind_lists_the_known_ones(beir_root: Path) -> None:
    assert "beir" in known_kinds() and known_kinds() == sorted(known_kinds())
    with pytest.raises(InputError, match=r"Unknown dataset kind 'msmarco'.*beir"):
        load_dataset("msmarco", beir_root)


def test_unknown_option_is_an_input_error(beir_root: Path) -> None:
    with pytest.raises(InputError, match="Bad options for dataset kind 'beir'.*splitt"):
        load_dataset("beir", beir_root, splitt="dev")


def test_loader_modules_are_imported_lazily() -> None:
    code = "import sys, mmrank.datasets; print('mmrank.datasets.beir' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=REPO,
    )
    assert out.stdout.strip() == "False"


def test_first_qrels_line_is_data_when_it_parses_as_a_row(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", qrels="q1\td1\t1\n\nq3\td2\t1\n")  # no header, a blank line
    assert load_beir(root).qrels == {"q1": {"d1": 1}, "q3": {"d2": 1}}


def test_tolerates_a_byte_order_mark_crlf_and_blank_lines(tmp_path: Path) -> None:
    corpus = '\ufeff{"_id": "d1", "text": "one"}\r\n\r\n{"_id": "d2", "text": "two"}\r\n'
    qrels = "query-id\tcorpus-id\tscore\r\nq1\td2\t1\r\n"
    root = write_beir(tmp_path / "ds", corpus=corpus, qrels=qrels)
    dataset = load_beir(root)
    assert [item.id for item in dataset.items] == ["d1", "d2"]
    assert dataset.qrels == {"q1": {"d2": 1}}


def test_identical_repeated_judgement_is_accepted(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n")
    assert load_beir(root).qrels == {"q1": {"d1": 1}}


def test_integer_ids_in_json_match_the_qrels(tmp_path: Path) -> None:
    corpus = '{"_id": 7, "title": "T", "text": "x"}\n'
    queries = '{"_id": 1, "text": "q"}\n'
    root = write_beir(tmp_path / "ds", corpus=corpus, queries=queries, qrels="q\tc\ts\n1\t7\t1\n")
    dataset = load_beir(root)
    assert dataset.items[0].id == "7"
    assert dataset.queries[0].id == "1"


# --- malformed folders -------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    expected = r"BEIR dataset folder not found: .*nowhere.*corpus\.jsonl"
    with pytest.raises(InputError, match=expected):
        load_beir(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file_is_named_with_the_expected_layout(beir_root: Path, missing: str) -> None:
    (beir_root / missing).unlink()
    with pytest.raises(InputError) as error:
        load_beir(beir_root)
    message = str(error.value)
    assert f"is missing {missing}" in message
    assert "Expected corpus.jsonl" in message and "qrels/<split>.tsv" in message


def test_missing_split_lists_the_splits_found(beir_root: Path) -> None:
    (beir_root / "qrels" / "dev.tsv").write_text(QRELS, encoding="utf-8")
    expected = r"missing qrels/train\.tsv.*Splits found in qrels/: dev, test"
    with pytest.raises(InputError, match=expected):
        load_beir(beir_root, split="train")


def _jsonl_with_line_3(line: str) -> str:
    return '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n' + line + "\n"


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl"])
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"_id": "d3", "text": ', "not valid JSON"),
        ('["d3", "text"]', "expected a JSON object, got list"),
        ('{"id": "d3", "text": "c"}', 'the object has no usable "_id"'),
        ('{"_id": "", "text": "c"}', 'the object has no usable "_id"'),
        ('{"_id": null, "text": "c"}', 'the object has no usable "_id"'),
        ('{"_id": "d1", "text": "c"}', "duplicate _id 'd1' \\(first on line 1\\)"),
        ('{"_id": "d3", "text": 5}', '"text" must be a string, got int'),
    ],
)
def test_malformed_json_line_names_file_and_line(
    tmp_path: Path, file: str, line: str, expected: str
) -> None:
    content = _jsonl_with_line_3(line)
    root = write_beir(tmp_path / "ds", **{file.split(".")[0]: content})
    with pytest.raises(InputError, match=rf"{re.escape(file)}:3: {expected}"):
        load_beir(root)


def test_non_string_title_names_file_and_line(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", corpus=_jsonl_with_line_3('{"_id": "d3", "title": ["x"]}'))
    with pytest.raises(InputError, match=r'corpus\.jsonl:3: "title" must be a string, got list'):
        load_beir(root)


def test_query_without_text_names_file_and_line(tmp_path: Path) -> None:
    queries = '{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "  "}\n'
    root = write_beir(tmp_path / "ds", queries=queries)
    with pytest.raises(InputError, match=r"queries\.jsonl:2: query 'q2' has no text"):
        load_beir(root)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds")
    bad = b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "\xff"}\n'
    (root / "corpus.jsonl").write_bytes(bad)
    with pytest.raises(InputError, match=r"corpus\.jsonl:2: not valid UTF-8"):
        load_beir(root)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("q1 d1 1", "expected 3 tab-separated fields .* got 1"),
        ("q1\td1", "expected 3 tab-separated fields .* got 2"),
        ("q1\td1\t1\textra", "expected 3 tab-separated fields .* got 4"),
        ("q1\td1\thigh", "the score must be an integer, got 'high'"),
        ("q1\td1\t1.5", "the score must be an integer, got '1.5'"),
        ("\td1\t1", "empty query-id or corpus-id"),
        ("q1\td1\t1", "query 'q1' and corpus id 'd1' were already judged with score 2, now 1"),
    ],
)
def test_malformed_qrels_line_names_file_and_line(tmp_path: Path, row: str, expected: str) -> None:
    root = write_beir(tmp_path / "ds", qrels=QRELS + row + "\n")  # QRELS has 4 lines
    with pytest.raises(InputError, match=rf"test\.tsv:5: {expected}"):
        load_beir(root)


def test_qrels_without_judgements(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match=r"test\.tsv holds no relevance judgements"):
        load_beir(root)


def test_qrels_with_unknown_query_ids(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "ds", qrels=QRELS + "qx\td1\t1\n")
    expected = r"test\.tsv references 1 query id\(s\) missing from queries\.jsonl: 'qx'\.$"
    with pytest.raises(InputError, match=expected):
        load_beir(root)


def test_qrels_with_unknown_corpus_ids_names_at_most_five(tmp_path: Path) -> None:
    rows = "".join(f"q1\tmissing{i}\t1\n" for i in range(7))
    root = write_beir(tmp_path / "ds", qrels=QRELS + rows)
    with pytest.raises(InputError) as error:
        load_beir(root)
    message = str(error.value)
    assert "test.tsv references 7 corpus id(s) missing from corpus.jsonl: " in message
    assert "'missing0', 'missing1', 'missing2', 'missing3', 'missing4' and 2 more." in message
    assert "missing5" not in message


# --- scored as BEIR scores: identical ids ignored, pytrec_eval's query averaging ----------------

ARGUANA_LIKE = {
    "corpus": _jsonl([{"_id": i, "text": f"document {i}"} for i in ("a", "b", "c", "q1", "q3")]),
    "queries": _jsonl([{"_id": q, "text": f"query {q}"} for q in ("q1", "q2", "q3")]),
    # q2 is judged, but only with a 0 grade: BEIR (pytrec_eval) averages it in as 0.
    "qrels": "query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\tb\t0\nq3\tc\t2\nq3\ta\t1\n",
}
RANKINGS = {"q1": ["q1", "a", "b"], "q2": ["b", "a", "c"], "q3": ["a", "q3", "c", "b"]}


def _beir_reference(metrics: dict[str, str], ignore_identical_ids: bool) -> dict[str, float]:
    """What BEIR's EvaluateRetrieval.evaluate computes: identical ids popped from the results,
    pytrec_eval per query, the mean over the queries pytrec_eval returns."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 2, "a": 1}}
    results = {qid: {doc: float(len(order) - rank) for rank, doc in enumerate(order)
                     if not (ignore_identical_ids and doc == qid)} for qid, order in RANKINGS.items()}
    scores = pytrec_eval.RelevanceEvaluator(qrels, set(metrics.values())).evaluate(results)
    return {ours: sum(s[theirs] for s in scores.values()) / len(scores) for ours, theirs in metrics.items()}


@pytest.mark.parametrize("ignore", [True, False])
def test_beir_scores_equal_beirs_own_evaluation(tmp_path: Path, ignore: bool) -> None:
    from mmrank.evaluation import score_judgements

    root = write_beir(tmp_path / "arguana", **ARGUANA_LIKE)
    options = {} if ignore else {"ignore_identical_ids": False}
    dataset = load_dataset("beir", root, **options)
    assert dataset.ignored == ({"q1": frozenset({"q1"}), "q3": frozenset({"q3"})} if ignore else {})
    metrics = {"ndcg@2": "ndcg_cut_2", "map@2": "map_cut_2", "recall@2": "recall_2", "mrr": "recip_rank"}
    scored = score_judgements(RANKINGS, dataset.judgements()[""], list(metrics))
    assert scored.pop("queries") == 3  # q2 counts, with 0
    reference = _beir_reference(metrics, ignore)
    for name in metrics:
        assert scored[name] == pytest.approx(reference[name], abs=1e-12), name
    # By hand, identical ids ignored: q1 -> [a, b]: RR 1; q2 -> 0; q3 -> [a, c, b]: RR 1.
    if ignore:
        assert scored["mrr"] == pytest.approx(2 / 3)


def test_beir_ignore_identical_ids_must_be_a_boolean(beir_root: Path) -> None:
    with pytest.raises(InputError, match="ignore_identical_ids must be true or false; got 'no'"):
        load_dataset("beir", beir_root, ignore_identical_ids="no")


def test_saved_runs_and_qrels_give_trec_evals_numbers(tmp_path: Path) -> None:
    from mmrank.evaluation import evaluate
    from tests.datasets.test_cir import _fixed_pipeline

    pytrec_eval = pytest.importorskip("pytrec_eval")
    dataset = load_dataset("beir", write_beir(tmp_path / "arguana", **ARGUANA_LIKE))
    metrics = {"ndcg@2": "ndcg_cut_2", "map@2": "map_cut_2", "recall@2": "recall_2", "mrr": "recip_rank"}
    [report] = evaluate(_fixed_pipeline(dataset, RANKINGS), dataset, list(metrics), save_runs=tmp_path / "runs")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["qrels.txt", "retrieve.run"]
    run_lines = (tmp_path / "runs" / "retrieve.run").read_text().splitlines()
    # The query's own id is not in the run (it was not scored); scores keep the order for sorting tools.
    assert run_lines[:2] == ["q1 Q0 a 1 4 fixed-retrieve", "q1 Q0 b 2 3 fixed-retrieve"]
    with open(tmp_path / "runs" / "qrels.txt") as qrels_file, open(tmp_path / "runs" / "retrieve.run") as run_file:
        qrels, run = pytrec_eval.parse_qrel(qrels_file), pytrec_eval.parse_run(run_file)
    scores = pytrec_eval.RelevanceEvaluator(qrels, set(metrics.values())).evaluate(run)
    assert len(scores) == report.metrics["queries"] == 3
    for ours, theirs in metrics.items():
        assert report.metrics[ours] == pytest.approx(sum(s[theirs] for s in scores.values()) / len(scores), abs=1e-12)
