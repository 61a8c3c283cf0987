"""Rubric parsing, rendering, validation, diffs and the append-only version store."""

from __future__ import annotations

import json
import os
import threading

import pytest

from metapo.rubric import Rubric, RubricError, RubricItem, RubricLimits, RubricStore, diff

MARKDOWN = """Notes before the first item are ignored.

## Clarity [0-5]
The argument can be followed on first reading.

## Evidence [0-10, weight 2]
Claims are supported by examples.
Award 10 for specific, relevant examples.

## Off-topic content [-5-0] {#offtopic}
Deduct up to 5 points for text unrelated to the prompt.
"""


def test_markdown_parse_and_round_trip() -> None:
    rubric = Rubric.parse(MARKDOWN)
    assert [i.id for i in rubric.items] == ["clarity", "evidence", "offtopic"]
    evidence = rubric.item("evidence")
    assert (evidence.min_score, evidence.max_score, evidence.weight) == (0, 10, 2.0)
    assert "Award 10" in evidence.description
    assert rubric.item("offtopic").min_score == -5
    assert Rubric.parse(rubric.to_markdown()) == rubric
    assert Rubric.parse(rubric.to_json()) == rubric
    # Weighted totals: evidence's weight 2 doubles its points.
    assert rubric.max_points == 5 + 2 * 10 and rubric.min_points == -5


def test_reference_xml_form_keeps_order_and_reads_ranges() -> None:
    text = (
        "<rubric><item>Flow (0-5 points)\nIdeas connect.</item>"
        "<item>Length penalty (-3-0 points)\nToo short essays lose points.</item>"
        "<item>Flow (0-5 points)\nIdeas connect.</item></rubric>"
    )
    rubric = Rubric.parse(text)
    assert len(rubric.items) == 2  # exact duplicate dropped, first occurrence kept
    assert rubric.items[0].title.startswith("Flow")
    assert (rubric.items[1].min_score, rubric.items[1].max_score) == (-3, 0)


def test_deduplication_preserves_order_and_makes_ids_unique() -> None:
    items = [
        {"title": "Clarity", "description": "Clear."},
        {"title": "Depth", "description": "Deep."},
        {"title": "clarity", "description": "clear"},  # same text up to case/punctuation
        {"title": "Clarity", "description": "A different clarity criterion."},
    ]
    rubric = Rubric.from_items(items)
    assert [i.title for i in rubric.items] == ["Clarity", "Depth", "Clarity"]
    assert [i.id for i in rubric.items] == ["clarity", "depth", "clarity-2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("just prose, no items", "no rubric items"),
        ("## Clarity\nno range", "no score range"),
        ("## Clarity [5-5]\nx", "is empty; need min < max"),
        ("## Clarity [0-5]\n", "description is empty"),
        ('{"items": 3}', "must be"),
        ("{not json", "does not parse"),
    ],
)
def test_invalid_rubrics_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(RubricError, match=message):
        Rubric.parse(text).validate()


def test_limits_bound_items_and_text() -> None:
    many = Rubric.from_items([{"title": f"Item {i}", "description": f"criterion {i}"} for i in range(5)])
    with pytest.raises(RubricError, match="at most 4"):
        many.validate(RubricLimits(max_items=4))
    long = Rubric.single("Clarity", "x" * 50)
    with pytest.raises(RubricError, match="limit 10"):
        long.validate(RubricLimits(max_description_chars=10))
    many.validate(RubricLimits(max_items=5))


def test_diff_reports_added_removed_changed() -> None:
    old = Rubric.parse(MARKDOWN)
    new = Rubric.from_items(
        [
            {
                "id": "clarity",
                "title": "Clarity",
                "description": "Stricter: every paragraph has one point.",
                "min_score": 0,
                "max_score": 5,
            },
            {
                "title": "Evidence",
                "description": "Claims are supported by examples.\nAward 10 for specific, relevant examples.",
                "min_score": 0,
                "max_score": 10,
                "weight": 2,
            },
            {
                "title": "Title-only answers",
                "description": "Score -5 when only a title is given.",
                "min_score": -5,
                "max_score": 0,
            },
        ]
    )
    d = diff(old, new)
    assert [i.title for i in d.added] == ["Title-only answers"]
    assert [i.id for i in d.removed] == ["offtopic"]
    assert [(a.id, b.id) for a, b in d.changed] == [("clarity", "clarity")]
    text = d.render()
    assert "+ Title-only answers" in text and "- Off-topic content" in text and "~ Clarity" in text
    assert diff(old, old).empty


def test_store_is_append_only_and_versions_lineages(tmp_path) -> None:
    store = RubricStore(tmp_path / "rubrics")
    v0 = store.ensure_initial(Rubric.single("Quality", "Overall quality."))
    assert v0.version == 0 and store.ensure_initial(Rubric.single("Other", "x")).version == 0
    v1 = store.add(
        Rubric.parse(MARKDOWN), parents=(0,), creator="meta-step", step=10, evidence={"analyses": ["a"]}
    )
    assert v1.version == 1 and store.latest().rubric == Rubric.parse(MARKDOWN)
    store.add(Rubric.single("Guidelines", "Check the answer."), lineage="algebra/1")
    assert set(store.lineages()) == {"default", "algebra/1"}
    record = json.loads((tmp_path / "rubrics" / "default" / "v0001.json").read_text())
    assert (
        record["parents"] == [0]
        and record["creator"] == "meta-step"
        and record["evidence"] == {"analyses": ["a"]}
    )
    assert record["hash"] == Rubric.parse(MARKDOWN).content_hash()
    assert store.diff("default", 0, 1).added
    with pytest.raises(KeyError, match="available"):
        store.get("default", 7)
    # An invalid rubric is never stored.
    with pytest.raises(RubricError):
        store.add(Rubric(()), creator="meta-step")
    assert [v.version for v in store.history()] == [0, 1]


def test_store_concurrent_adds_never_overwrite(tmp_path) -> None:
    store = RubricStore(tmp_path)
    store.add(Rubric.single("Base", "base"))
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            RubricStore(tmp_path).add(Rubric.single(f"Item {i}", f"text {i}"), creator="manual")
        except FileExistsError:
            pass  # a concurrent writer claimed that number first: refused, not overwritten
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = store.history()
    titles = [v.rubric.items[0].title for v in versions]
    assert len(titles) == len(set(titles))  # no version file holds a mix or was replaced
    assert not [p for p in os.listdir(tmp_path / "default") if p.endswith(".tmp")]


def test_item_normalisation() -> None:
    item = RubricItem("x", "X", "d", -5, 5)
    assert item.normalise(-5) == 0 and item.normalise(5) == 1 and item.normalise(0) == 0.5
