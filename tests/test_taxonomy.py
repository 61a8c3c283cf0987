"""The DPO-survey taxonomy covers every registered objective."""

from __future__ import annotations

import pytest

from metapo.objectives import registry
from metapo.objectives.taxonomy import AXES, PLACEMENTS, Placement, missing_placements, render_markdown


def test_every_registered_objective_has_a_placement() -> None:
    missing = missing_placements()
    assert not missing, (
        f"objective(s) {missing} have no survey placement: add one line each to PLACEMENTS in "
        "metapo/objectives/taxonomy.py"
    )
    assert set(PLACEMENTS) <= set(registry.REGISTRY), "a placement names an objective that is not registered"


def test_a_new_objective_without_a_line_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.REGISTRY, "brand_new_po", registry.REGISTRY["dpo"])
    assert missing_placements() == ["brand_new_po"]
    with pytest.raises(ValueError, match="brand_new_po"):
        render_markdown()


def test_placements_use_only_survey_values() -> None:
    with pytest.raises(ValueError, match="feedback='pear'"):
        Placement("pear", "sentence", "offline", "fixed")
    with pytest.raises(ValueError, match="paradigm='batch'"):
        Placement("pair", "sentence", "offline+batch", "fixed")
    assert Placement("pair", "sentence", "offline+online", "fixed").paradigm == "offline+online"


def test_rendered_doc_lists_every_objective_under_each_dimension() -> None:
    text = render_markdown()
    for name in registry.REGISTRY:
        assert f"| `{name}` |" in text
    for heading in (
        "## Data strategy",
        "## Learning framework",
        "## Constraint mechanism",
        "## Model property",
    ):
        assert heading in text
    assert "  - list: `pro`, `tree_po`" in text
    assert set(AXES) == {f for f in Placement.__dataclass_fields__}
