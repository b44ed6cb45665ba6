"""Reading rankings out of model text: MM-R5 ``<answer>`` blocks and SQUARE ``{"ranking": [...]}``,
fuzzed with hypothesis and pinned with one case per tolerance."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmrank.errors import InputError
from mmrank.mllm.parsing import (
    ParsedRanking,
    complete_order,
    parse_answer_ranking,
    parse_json_ranking,
    usable_ids,
)

PARSERS = [parse_answer_ranking, parse_json_ranking]
FRAGMENTS = ["<answer>", "</answer>", "<ANSWER >", "< /answer>", "<think>", "</think>", "[", "]", "{", "}",
             '"ranking"', "'ranking'", ":", ",", " ", "\n", "Image ", "image", "-", ".", "```json", "```",
             "0", "1", "2", "3", "7", "12", "99", "x", "é", "\x00"]
# Any unicode text, and "tag soup" glued from the pieces the parsers look for.
texts = st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
counts = st.integers(min_value=1, max_value=25)
# Prose that holds no markup, bracket, brace, quote or digit.
prose = st.text(st.sampled_from("abcdefghij XYZ.;!?\n\t"), max_size=40)


@st.composite
def permutations(draw: st.DrawFn, max_count: int = 20) -> list[int]:
    """A permutation of the ids 1..count for some count."""
    count = draw(st.integers(min_value=1, max_value=max_count))
    return draw(st.permutations(list(range(1, count + 1))))


def assert_consistent(parsed: ParsedRanking, count: int) -> None:
    """The invariants every result keeps, whatever the text."""
    assert sorted(parsed.order) == list(range(count))
    assert len(set(parsed.parsed_ids)) == len(parsed.parsed_ids)
    assert all(1 <= identifier <= count for identifier in parsed.parsed_ids)
    given_positions = [identifier - 1 for identifier in parsed.parsed_ids]
    assert list(parsed.order[:len(given_positions)]) == given_positions
    rest = parsed.order[len(given_positions):]
    assert list(rest) == sorted(rest)
    assert parsed.complete == (len(parsed.parsed_ids) == count)
    assert (parsed.failure is None) == bool(parsed.parsed_ids)


# ------------------------------------------------------------------------------ core
def test_complete_order_by_hand() -> None:
    assert complete_order([3, 1], 4) == [2, 0, 1, 3]
    assert complete_order([4, 4, 0, 9, -1, 2], 4) == [3, 1, 0, 2]  # repeats, 0, 9 and -1 dropped
    assert complete_order([], 3) == [0, 1, 2]
    assert usable_ids([2, 5, 2, 1], 3) == [2, 1]


@given(st.lists(st.integers(min_value=-3, max_value=30)), counts)
def test_complete_order_is_a_permutation_led_by_the_usable_ids(ids: list[int], count: int) -> None:
    order = complete_order(ids, count)
    kept = usable_ids(ids, count)
    assert sorted(order) == list(range(count))
    assert order[:len(kept)] == [identifier - 1 for identifier in kept]
    assert kept == list(dict.fromkeys(i for i in ids if 1 <= i <= count))


@pytest.mark.parametrize("parse", PARSERS)
def test_count_must_be_positive(parse) -> None:
    with pytest.raises(InputError, match="count must be at least 1"):
        parse("<answer>[1]</answer>", 0)


# --------------------------------------------------------------------------- fuzzing
@pytest.mark.parametrize("parse", PARSERS)
@given(text=texts, count=counts)
def test_any_text_gives_a_full_order(parse, text: str, count: int) -> None:
    assert_consistent(parse(text, count), count)


@given(ids=permutations(), thinking=prose, separator=st.sampled_from([", ", ",", " ", ",\n", " , "]),
       label=st.sampled_from(["", "Image ", "image ", "Image"]), brackets=st.booleans(),
       opening=st.sampled_from(["<answer>", "<Answer>", "< answer >", "<ANSWER>"]),
       closing=st.sampled_from(["</answer>", "</ANSWER>", "< / answer >", ""]))
def test_well_formed_answers_round_trip(ids: list[int], thinking: str, separator: str, label: str,
                                        brackets: bool, opening: str, closing: str) -> None:
    listed = separator.join(f"{label}{identifier}" for identifier in ids)
    answer = f"[{listed}]" if brackets else listed
    text = f"<think>{thinking}</think>\n{opening}\n{answer}\n{closing}"
    parsed = parse_answer_ranking(text, len(ids))
    assert parsed == ParsedRanking(tuple(i - 1 for i in ids), tuple(ids), True, None, thinking.strip())


@given(ids=st.lists(st.integers(min_value=0, max_value=30), max_size=30), count=counts)
def test_duplicates_and_out_of_range_ids_are_dropped(ids: list[int], count: int) -> None:
    parsed = parse_answer_ranking(f"<answer>[{', '.join(map(str, ids))}]</answer>", count)
    assert parsed.parsed_ids == tuple(usable_ids(ids, count))
    assert parsed.order == tuple(complete_order(ids, count))
    expected_failure = None if parsed.parsed_ids else f"no id from 1 to {count} in the <answer> block"
    assert parsed.failure == expected_failure


@given(first=permutations(9), data=st.data())
def test_the_last_answer_block_wins(first: list[int], data: st.DataObject) -> None:
    last = data.draw(st.permutations(first))
    text = f"<answer>{first}</answer> on second thought <answer>{last}</answer>"
    assert parse_answer_ranking(text, len(first)).order == tuple(i - 1 for i in last)


@given(ids=permutations(9), data=st.data())
def test_a_cut_off_answer_keeps_the_ids_written_so_far(ids: list[int], data: st.DataObject) -> None:
    text = f"<think>hmm</think><answer>{ids}</answer>"
    cut = data.draw(st.integers(min_value=len("<think>hmm</think><answer>"), max_value=len(text)))
    written = [identifier for identifier in ids if f"{identifier}" in text[text.index("["):cut]]
    parsed = parse_answer_ranking(text[:cut], len(ids))
    assert parsed.parsed_ids == tuple(written)
    assert parsed.failure == (None if written else f"no id from 1 to {len(ids)} in the <answer> block")


@given(ids=permutations(), before=prose, after=prose, fenced=st.booleans(), single_quotes=st.booleans(),
       indent=st.sampled_from([None, 2]))
def test_json_rankings_round_trip(ids: list[int], before: str, after: str, fenced: bool, single_quotes: bool,
                                  indent: int | None) -> None:
    body = json.dumps({"ranking": ids}, indent=indent)
    if single_quotes:
        body = body.replace('"', "'")
    if fenced:
        body = f"```json\n{body}\n```"
    parsed = parse_json_ranking(f"{before}{body}{after}", len(ids))
    assert (parsed.order, parsed.parsed_ids, parsed.complete, parsed.failure) == (
        tuple(i - 1 for i in ids), tuple(ids), True, None)
    assert parsed.reasoning == " ".join(part.strip() for part in (before, after) if part.strip())


@given(first=permutations(9), data=st.data())
def test_the_last_json_ranking_wins(first: list[int], data: st.DataObject) -> None:
    last = data.draw(st.permutations(first))
    text = f'{{"ranking": {first}}} no, rather {{"ranking": {last}}}'
    assert parse_json_ranking(text, len(first)).order == tuple(i - 1 for i in last)


# ------------------------------------------------------------------- answer, by hand
@pytest.mark.parametrize(("text", "ids"), [
    ("<think>p1 is best</think><answer>[3, 1, 2]</answer>", (3, 1, 2)),   # canonical
    ("<answer>[3,1,2]</answer>", (3, 1, 2)),                                # no spaces
    ("<answer>\n[\n 3,\n 1,\n 2\n]\n</answer>", (3, 1, 2)),                # newlines
    ("<answer>3 1 2</answer>", (3, 1, 2)),                                  # no brackets, spaces
    ("<answer>Image 3, image 1, Image 2</answer>", (3, 1, 2)),             # "Image 3" forms
    ("<answer>[3], [1], [2]</answer>", (3, 1, 2)),                          # "[3]" forms
    ("<ANSWER> [3, 1, 2] </Answer>", (3, 1, 2)),                            # case
    ("< answer >[3, 1, 2]< / answer >", (3, 1, 2)),                         # spaces in the tags
    ("<think>x</think><answer>[3, 1, 2", (3, 1, 2)),                        # cut off, no closing tag
    ("<answer><answer>[2, 3]</answer></answer>", (2, 3)),                   # nested tags
    ("<answer>[1, 2]</answer><answer>[3, 2, 1]</answer>", (3, 2, 1)),       # the last block wins
    ("<answer>[2, 2, 3, 7, 0, 1]</answer>", (2, 3, 1)),                     # repeats, out of range
    ("<answer>[2.5, -1, 3]</answer>", (3,)),                                # not ids: 2.5 and -1
    ("<answer>[3, 1]</answer> then page 2 is third", (3, 1)),               # text after the block
    ("<answer>[" + "9" * 5000 + ", 2]</answer>", (2,)),                    # a huge number
])
def test_answer_tolerances(text: str, ids: tuple[int, ...]) -> None:
    parsed = parse_answer_ranking(text, 3)
    assert parsed.parsed_ids == ids
    assert parsed.order == tuple(complete_order(ids, 3))
    assert parsed.failure is None and parsed.complete == (len(ids) == 3)


@pytest.mark.parametrize(("text", "failure"), [
    ("I think page 2 is best: [2, 1, 3]", "no <answer> block in the output"),
    ("", "no <answer> block in the output"),
    ("<answer>[]</answer>", "no id from 1 to 3 in the <answer> block"),
    ("<answer>[4, 5]</answer>", "no id from 1 to 3 in the <answer> block"),
    ("<answer>[2, 1]</answer> and finally <answer>", "no id from 1 to 3 in the <answer> block"),
])
def test_answer_failures_keep_the_incoming_order(text: str, failure: str) -> None:
    parsed = parse_answer_ranking(text, 3)
    assert (parsed.order, parsed.parsed_ids, parsed.complete, parsed.failure) == ((0, 1, 2), (), False, failure)


@pytest.mark.parametrize(("text", "reasoning"), [
    ("<think> Image 2 shows the table. </think>\n<answer>[2, 1]</answer>", "Image 2 shows the table."),
    ("<think>first</think><think>second</think><answer>[1]</answer>", "second"),
    ("<think>cut off before answering", "cut off before answering"),
    ("<think>no closing tag<answer>[2]</answer>", "no closing tag"),
    ("Page 1 is about coffee.\n<answer>[2, 1]</answer>", "Page 1 is about coffee."),
    ("no answer at all", "no answer at all"),
])
def test_answer_reasoning(text: str, reasoning: str) -> None:
    assert parse_answer_ranking(text, 2).reasoning == reasoning


# --------------------------------------------------------------------- json, by hand
@pytest.mark.parametrize(("text", "ids"), [
    ('{"ranking": [3, 1, 2]}', (3, 1, 2)),
    ('```json\n{"ranking": [3, 1, 2]}\n```', (3, 1, 2)),                    # code fence
    ('{"ranking": [3, 1, 2]} because tile 3 shows a red roof', (3, 1, 2)),  # trailing text
    ("{'ranking': [3, 1, 2]}", (3, 1, 2)),                                   # single quotes
    ('{"ranking": ["3", "1", "2"]}', (3, 1, 2)),                             # quoted numbers
    ('{"Ranking" : [3,1,2], "why": "tile 3"}', (3, 1, 2)),                   # other keys, case
    ('{"ranking": [3, 1', (3, 1)),                                           # cut off
    ('{"ranking": [1, 2]} {"ranking": [2, 3, 1]}', (2, 3, 1)),               # the last object wins
    ("The order is [2, 3, 1].", (2, 3, 1)),                                  # a bare list
    ("Tiles [1] and [2] are close; final: [3, 2]", (3, 2)),                  # the last bare list
    ('{"ranking": [3, 3, 9, 0, 1]}', (3, 1)),                                # repeats, out of range
    ('{"ranking": [2, 1]} (note: [3] is a close call)', (2, 1)),             # the object beats a list
])
def test_json_tolerances(text: str, ids: tuple[int, ...]) -> None:
    parsed = parse_json_ranking(text, 3)
    assert parsed.parsed_ids == ids
    assert parsed.order == tuple(complete_order(ids, 3))
    assert parsed.failure is None and parsed.complete == (len(ids) == 3)


def test_json_primed_with_the_assistant_prefix() -> None:
    prefix, generated = '{"ranking": [', '2, 3, 1]}'
    assert parse_json_ranking(prefix + generated, 3).parsed_ids == (2, 3, 1)


@pytest.mark.parametrize(("text", "failure"), [
    ("Tile three is best.", "no ranking list in the output"),
    ("[]", "no ranking list in the output"),
    ('{"ranking": []}', "no number from 1 to 3 in the ranking list"),
    ('{"ranking": [4, 5.5]}', "no number from 1 to 3 in the ranking list"),
])
def test_json_failures_keep_the_incoming_order(text: str, failure: str) -> None:
    parsed = parse_json_ranking(text, 3)
    assert (parsed.order, parsed.parsed_ids, parsed.complete, parsed.failure) == ((0, 1, 2), (), False, failure)


def test_json_reasoning_is_the_text_around_the_ranking() -> None:
    text = 'Tile 3 shows the red roof.\n```json\n{"ranking": [3, 1, 2]}\n```\nTile 2 is a near miss.'
    assert parse_json_ranking(text, 3).reasoning == "Tile 3 shows the red roof. Tile 2 is a near miss."
