"""Class 6 of the hardening issue: data files survive crashes, and rubric files survive round trips.

A JSONL reader skips a torn last line and loses no record appended after it; rubric weights are finite and
positive and scores are integers; the Markdown form reads back every item even when a description holds
lines that look like headings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from metapo.eval.generate import done_rows
from metapo.files import append_jsonl, atomic_write_json, read_jsonl
from metapo.rubric.model import Rubric, RubricError

RECORDS = [{"i": i, "text": f"record {i} — naïve “quotes” 日本"} for i in range(5)]


def _tear(data: bytes, how: str) -> bytes:
    """The file as a crash could leave it after writing ``data``."""
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    if how == "mid-record":
        return data[: last + 7]
    if how == "mid-multibyte-character":
        cut = data.index("日".encode(), last) + 1  # the first byte of a three-byte character
        return data[:cut]
    if how == "no-final-newline":
        return data[:-1]  # complete JSON, only the newline lost: the record itself must survive
    if how == "zero-filled-tail":
        return data[:last] + b"\x00" * 40  # a filesystem that extended the file before writing it
    if how == "garbage-bytes":
        return data[:last] + b"\xff\xfe{\x80"
    if how == "lone-brace":
        return data[:last] + b"{"
    raise ValueError(how)


TEARS = [
    "mid-record",
    "mid-multibyte-character",
    "no-final-newline",
    "zero-filled-tail",
    "garbage-bytes",
    "lone-brace",
]


@pytest.mark.parametrize("how", TEARS)
def test_a_torn_last_line_is_skipped_and_the_next_record_is_kept(how: str, tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    append_jsonl(path, RECORDS)
    path.write_bytes(_tear(path.read_bytes(), how))
    survivors = RECORDS if how == "no-final-newline" else RECORDS[:-1]
    assert read_jsonl(path) == survivors

    later = [{"i": 100, "text": "written after the crash"}, {"i": 101, "text": "and another"}]
    append_jsonl(path, later)  # the resumed run appends
    assert read_jsonl(path) == survivors + later
    append_jsonl(path, [{"i": 102}])
    assert read_jsonl(path)[-1] == {"i": 102}


@pytest.mark.parametrize(
    "line",
    [b"[" * 100_000, b'{"a": ' * 50_000, b"42", b'"just a string"', b"null", b"\xff\xff\xff"],
    ids=["deeply-nested", "deeply-nested-object", "a-number", "a-string", "null", "not-utf8"],
)
def test_a_line_that_is_no_record_is_skipped_wherever_it_is(line: bytes, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"i": 0}\n' + line + b'\n{"i": 1}\n')
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}]


def test_resumed_generation_reads_past_a_broken_record(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    append_jsonl(path, [{"row": 0, "id": "a"}])
    with open(path, "ab") as handle:
        handle.write(b'{"row": 1, "id": "\xe6\x97')  # torn inside a character
    append_jsonl(path, [{"row": 2, "id": "c"}])
    assert done_rows(path) == {0: "a", 2: "c"}


def test_lone_surrogates_round_trip_through_both_writers(tmp_path: Path) -> None:
    record = {"completion": "a \ud800 b \udfff", "ok": "plain"}
    append_jsonl(tmp_path / "a.jsonl", [record])
    assert read_jsonl(tmp_path / "a.jsonl") == [record]
    atomic_write_json(tmp_path / "b.json", record)
    assert json.loads((tmp_path / "b.json").read_text()) == record


# ----- rubric weights and scores -------------------------------------------------------------------------------
BAD_ITEMS: dict[str, tuple[dict[str, Any], str]] = {
    "infinite-weight": ({"weight": math.inf}, "weight must be finite"),
    "negative-infinite-weight": ({"weight": -math.inf}, "weight must be finite"),
    "nan-weight": ({"weight": math.nan}, "weight must be finite"),
    "overflowing-weight": ({"weight": "1e999"}, "weight must be finite"),
    "zero-weight": ({"weight": 0}, "must be a finite positive number"),
    "negative-weight": ({"weight": -2}, "must be a finite positive number"),
    "word-weight": ({"weight": "heavy"}, "could not convert"),
    "bool-weight": ({"weight": True}, "weight must be a number"),
    "fractional-score": ({"max_score": 4.5}, "max_score must be an integer"),
    "infinite-score": ({"max_score": math.inf}, "max_score must be an integer"),
    "nan-score": ({"min_score": math.nan}, "min_score must be an integer"),
    "bool-score": ({"max_score": True}, "max_score must be an integer"),
    "word-score": ({"min_score": "low"}, "invalid literal"),
}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_rubric_weights_are_finite_and_positive_and_scores_integers(case: str) -> None:
    changes, message = BAD_ITEMS[case]
    item = {"title": "Clarity", "description": "Easy to follow.", "min_score": 0, "max_score": 5, **changes}
    with pytest.raises(RubricError, match=message):
        Rubric.from_items([item]).validate()
    with pytest.raises(RubricError, match=message):  # the JSON form (as the meta judge writes it)
        Rubric.parse(json.dumps({"items": [item]}, allow_nan=True)).validate()


def test_a_whole_number_given_as_float_or_text_is_accepted() -> None:
    rubric = Rubric.from_items(
        [{"title": "C", "description": "d", "min_score": "0", "max_score": 5.0, "weight": "2"}]
    )
    assert (rubric.items[0].min_score, rubric.items[0].max_score, rubric.items[0].weight) == (0, 5, 2.0)


# ----- the Markdown round trip ----------------------------------------------------------------------------------
HEADING_LIKE = {
    "item-heading": "Deduct for padding.\n## Padding [0-5]\nnot a new item",
    "plain-heading": "# Overview\nThe essay as a whole.",
    "deep-heading": "#### Notes\nsee above",
    "heading-with-trailing-space": "Levels:\n## \n5: best",
    "already-escaped": "\\## shown literally\n\\\\## with two backslashes",
    "numbered": "## 1. First [0-2]\n## 2) Second [0-2]",
    "line-separator": "one\u2028## Two [0-5]\u2029three",
    "hashtags-and-code": "#hashtag\n####### seven\n   ## indented\n```\n## in code\n```",
    "windows-newlines": "first line\r\n## Second [0-5]\r\nthird",
}


@pytest.mark.parametrize("case", sorted(HEADING_LIKE))
def test_markdown_round_trip_keeps_items_with_heading_like_descriptions(case: str) -> None:
    description = HEADING_LIKE[case]
    rubric = Rubric.from_items(
        [
            {"title": "Clarity [draft]", "description": description, "min_score": 0, "max_score": 5},
            {
                "title": "Padding",
                "description": "Deduct for filler.",
                "min_score": -3,
                "max_score": 0,
                "weight": 1e-5,
            },
            {
                "id": "x-2",
                "title": "Depth {#x}",
                "description": description[::-1],
                "max_score": 9,
                "weight": 250000.5,
            },
        ]
    )
    back = Rubric.parse(rubric.to_markdown())
    assert back == rubric
    assert back.content_hash() == rubric.content_hash()


def test_a_title_cannot_break_its_heading() -> None:
    rubric = Rubric.from_items([{"title": "Two\nlines  here", "description": "d", "max_score": 5}])
    assert rubric.items[0].title == "Two lines here"
    assert Rubric.parse(rubric.to_markdown()) == rubric
