"""Text as the search paths see it: normalisation, passages, snippets."""

from __future__ import annotations

import pytest

from mmrank.errors import InputError
from mmrank.text import normalize_text, query_words, snippet, split_passages


# --------------------------------------------------------------- normalize_text
def test_ligatures_and_compatibility_forms_become_plain_letters() -> None:
    assert normalize_text("e\ufb03cient de\ufb01nition of \ufb02ow") == "efficient definition of flow"
    assert normalize_text("\uff21\uff22\uff23 2\u2075 \u00bd") == "ABC 25 1\u20442"  # full-width, superscript, fraction


def test_line_end_hyphenation_is_joined_but_real_hyphens_stay() -> None:
    assert normalize_text("infor-\nmation retrie-  \n  val") == "information retrieval"
    assert normalize_text("Hewlett-\nPackard and pages 3-\n4") == "Hewlett-Packard and pages 3-4"
    assert normalize_text("a well-known result") == "a well-known result"
    assert normalize_text("soft\u00adhyphen") == "softhyphen"


def test_whitespace_runs_and_line_ends_become_one_space() -> None:
    assert normalize_text("  one\ttwo\n\nthree \r\n four  ") == "one two three four"
    assert normalize_text("") == ""


# --------------------------------------------------------------- split_passages
def test_split_passages_short_text_is_one_passage_with_whitespace_collapsed() -> None:
    assert split_passages("  a cat\n\ton a   sofa ", max_words=5, overlap=2) == ["a cat on a sofa"]
    assert split_passages("one", max_words=1, overlap=0) == ["one"]
    assert split_passages("a b c", max_words=200, overlap=50) == ["a b c"]


def test_split_passages_exact_multiple_and_a_shorter_last_passage() -> None:
    text = " ".join(f"w{index}" for index in range(10))
    assert split_passages(text, max_words=4, overlap=1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert split_passages(text, max_words=5, overlap=0) == ["w0 w1 w2 w3 w4", "w5 w6 w7 w8 w9"]
    eleven = text + " w10"
    assert split_passages(eleven, max_words=4, overlap=1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9",
                                                              "w9 w10"]  # ends at the text's end
    assert split_passages(eleven, max_words=5, overlap=0)[-1] == "w10"


def test_split_passages_overlap_shares_words_between_neighbours() -> None:
    text = " ".join(str(index) for index in range(20))
    passages = split_passages(text, max_words=8, overlap=2)
    assert passages == [" ".join(map(str, range(0, 8))), " ".join(map(str, range(6, 14))),
                        " ".join(map(str, range(12, 20)))]
    for before, after in zip(passages, passages[1:]):
        assert before.split()[-2:] == after.split()[:2]
    assert all(len(passage.split()) == 8 for passage in passages)
    assert len(split_passages(" ".join(["w"] * 500), max_words=200, overlap=50)) == 3  # 0-200, 150-350, 300-500


def test_split_passages_of_an_empty_text_is_empty() -> None:
    assert split_passages("", max_words=4, overlap=1) == []
    assert split_passages(" \n\t ", max_words=4, overlap=1) == []


@pytest.mark.parametrize(("max_words", "overlap", "message"), [
    (4, 4, r"overlap must be at least 0 and less than max_words \(4\).*got 4"),
    (4, 9, r"less than max_words \(4\).*got 9"),
    (4, -1, "overlap must be at least 0"),
    (0, 0, "max_words must be at least 1, got 0"),
])
def test_split_passages_refuses_a_split_that_does_not_move_forward(max_words, overlap, message) -> None:
    with pytest.raises(InputError, match=message):
        split_passages("a b c", max_words=max_words, overlap=overlap)



# --------------------------------------------------------------- snippets
def test_query_words_are_lowercase_normalised_and_longer_than_one_letter() -> None:
    assert query_words("What is the de\ufb01nition of a Sparse matrix?") == {
        "what", "is", "the", "definition", "of", "sparse", "matrix"}


def test_the_snippet_is_the_passage_sharing_most_words_with_the_query() -> None:
    text = " ".join(f"filler{i}" for i in range(120)) + " the valve opens at 4.5 bar " + " ".join(
        f"tail{i}" for i in range(120))
    found = snippet(text, "At what pressure does the valve open?", width=80)
    assert "valve opens at 4.5 bar" in found and len(found) <= 80 + 4
    assert found.startswith("… ") and found.endswith(" …")


def test_a_short_text_is_its_own_snippet_and_no_match_gives_the_first_passage() -> None:
    assert snippet("Cats sleep a lot.", "dogs") == "Cats sleep a lot."
    long = " ".join(f"w{i}" for i in range(200))
    assert snippet(long, "nothing in common", width=40).startswith("w0 w1")
    assert snippet("", "anything") == ""
