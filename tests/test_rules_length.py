"""Length rules: hand-computed reward tables for GRPO-λ, SLPO, HAPO and the curriculum, how they wrap a base, and
the verifiable base reward."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import pytest

from metapo.judges import JudgeConfig, build_judge
from metapo.reward import RequireEOS, RubricReward, RubricRewardConfig
from metapo.reward.rules import (
    HAPO,
    SLPO,
    AnswerReward,
    CurriculumLength,
    GRPOLambda,
    budget_schedule,
    hapo_length_reward,
    triangular_length_reward,
)
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, judged_text


def fixed(values: list[float | None]) -> Any:
    """A sync base reward that returns ``values`` (one per completion)."""

    def base(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        assert len(completions) == len(values)
        return list(values)

    return base


def run(rule: Any, prompts: list[Any], lengths: list[int], **kwargs: Any) -> list[float | None]:
    ids = [[7] * n for n in lengths]
    return asyncio.run(rule(prompts=prompts, completions=["c"] * len(prompts), completion_ids=ids, **kwargs))


def close(got: list[float | None], want: list[float | None]) -> bool:
    return all(
        (g is None and w is None) or (g is not None and w is not None and math.isclose(g, w, abs_tol=1e-12))
        for g, w in zip(got, want, strict=True)
    )


# ----- GRPO-λ -----------------------------------------------------------------------------------------------------
def test_grpo_lambda_gives_length_terms_to_the_most_accurate_groups_only() -> None:
    # Four groups of four, laid out so that the two most accurate are not the first two.
    correct = [
        [1, 0, 0, 0],  # ratio 0.25
        [1, 1, 1, 1],  # ratio 1
        [0, 0, 0, 0],  # ratio 0
        [0, 1, 1, 1],  # ratio 0.75
    ]
    lengths = [10, 20, 30, 40] * 4
    prompts = [p for p in "ABCD" for _ in range(4)]
    base = [float(c) for group in correct for c in group]
    got = run(GRPOLambda(fixed(base), num_generations=4, fraction=0.5), prompts, lengths)
    # By hand: L_min = 10, L_max = 40, λ_i = 0.5 − (L − 10)/30 = 1/2, 1/6, −1/6, −1/2.
    # Correct: 1 + λ_i; incorrect: 0 + min(0, λ_i), so D's short wrong answer gets 0, not 1/2.
    # Groups B (ratio 1) and D (0.75) are the top half.
    want = [1, 0, 0, 0] + [3 / 2, 7 / 6, 5 / 6, 1 / 2] + [0, 0, 0, 0] + [0, 7 / 6, 5 / 6, 1 / 2]
    assert close(got, want)


def test_grpo_lambda_all_correct_equal_lengths_has_zero_advantage() -> None:
    got = run(GRPOLambda(fixed([1.0] * 4), num_generations=4, fraction=1.0), ["A"] * 4, [25] * 4)
    mean = sum(got) / 4  # type: ignore[arg-type]
    assert [g - mean for g in got] == [0.0] * 4  # type: ignore[operator]


def test_grpo_lambda_rejects_a_batch_that_is_not_whole_groups() -> None:
    with pytest.raises(ValueError, match="num_generations=4"):
        run(GRPOLambda(fixed([1.0] * 6), num_generations=4), ["A"] * 6, [5] * 6)
    with pytest.raises(ValueError, match="mix prompts"):
        run(GRPOLambda(fixed([1.0] * 4), num_generations=4), ["A", "A", "B", "B"], [5] * 4)


# ----- SLPO -------------------------------------------------------------------------------------------------------
def test_slpo_table() -> None:
    # Three correct responses of lengths 10, 20, 40 and an incorrect one, α = 0.5:
    # 1 + 0.5·(40 − L)/30 for the correct ones -> 1.5, 1 + 1/3, 1; the incorrect one gets 0.
    got = run(SLPO(fixed([1.0, 1.0, 0.0, 1.0]), num_generations=4, alpha=0.5), ["A"] * 4, [10, 20, 5, 40])
    assert close(got, [1.5, 1 + 1 / 3, 0.0, 1.0])
    # The middle one lies on the straight line between shortest (1 + α) and longest (1).
    assert math.isclose(got[1], 1.5 + (20 - 10) / (40 - 10) * (1.0 - 1.5))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "lengths", "want"),
    [
        ([1.0, 0.0, 0.0, 0.0], [30, 5, 6, 7], [1.0, 0.0, 0.0, 0.0]),  # lone correct: exactly 1
        ([1.0, 1.0, 0.0, 0.0], [12, 12, 3, 4], [1.0, 1.0, 0.0, 0.0]),  # equal correct lengths: 1
        ([0.0, 0.0, 0.0, 0.0], [1, 2, 3, 4], [0.0, 0.0, 0.0, 0.0]),  # no correct response: 0
    ],
)
def test_slpo_degenerate_groups(base: list[float], lengths: list[int], want: list[float]) -> None:
    assert close(run(SLPO(fixed(base), num_generations=4, alpha=0.5), ["A"] * 4, lengths), want)


# ----- HAPO -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "correct", "want"),
    [
        # f = cos(min(L/h, 2)·π/2) with h = 100; correct: max(−0.7, f); incorrect: min(0, f).
        (50, True, math.sqrt(2) / 2),  # cos(π/4)
        (50, False, 0.0),
        (100, True, 0.0),  # cos(π/2)
        (100, False, 0.0),
        (130, True, -math.sin(0.15 * math.pi)),  # cos(0.65π) = −sin(0.15π) ≈ −0.454, above the floor
        (130, False, -math.sin(0.15 * math.pi)),
        (150, True, -0.7),  # cos(3π/4) = −0.7071 is clipped to the floor
        (150, False, -math.sqrt(2) / 2),
        (300, True, -0.7),  # beyond 2h: cos(π) = −1, floored
        (300, False, -1.0),
    ],
)
def test_hapo_length_reward_table(length: int, correct: bool, want: float) -> None:
    assert math.isclose(hapo_length_reward(length, 100, correct), want, abs_tol=1e-12)


def test_hapo_properties_over_many_lengths() -> None:
    for n in range(1, 400):
        right, wrong = hapo_length_reward(n, 100, True), hapo_length_reward(n, 100, False)
        assert right >= -0.7 and wrong <= 0.0
        assert 1.0 + right > 0.0 + wrong  # a correct response always outscores an incorrect one (w = 1)
    assert hapo_length_reward(40, None, True) == 0.0  # no history yet


def test_hapo_scores_with_the_old_history_then_keeps_the_shortest_correct_length() -> None:
    rule = HAPO(fixed([1.0, 1.0, 0.0, 1.0]), key_column="pid")
    pid = {"pid": ["p1", "p1", "p1", "p2"]}
    first = run(rule, ["A"] * 4, [80, 60, 10, 50], **pid)
    assert first == [1.0, 1.0, 0.0, 1.0]  # no history yet: length reward 0
    assert rule.history == {"p1": 60, "p2": 50}
    second = run(rule, ["A"] * 4, [30, 90, 120, 200], **pid)
    # Against h(p1) = 60 and h(p2) = 50, by hand:
    want = [
        1 + math.cos(0.5 * math.pi / 2),  # 30/60
        1 + max(-0.7, math.cos(1.5 * math.pi / 2)),  # 90/60 -> −0.7071, floored
        0 + min(0.0, math.cos(2.0 * math.pi / 2)),  # 120/60 = 2, incorrect -> −1
        1 - 0.7,  # 200/50 capped at 2 -> −1, floored
    ]
    assert close(second, want)
    assert rule.history == {"p1": 30, "p2": 50}  # 90 and 200 were longer: the history never increases
    restored = HAPO(fixed([1.0]))
    restored.load_state_dict(rule.state_dict())
    assert restored.history == rule.history


# ----- curriculum -------------------------------------------------------------------------------------------------
def test_curriculum_budget_schedule() -> None:
    # B_0 = 256, γ = 0.7, T = 100: 256 for steps 0..99, then ⌊179.2⌋, ⌊125.44⌋, ⌊87.808⌋.
    assert [budget_schedule(t, 256, 0.7, 100) for t in (0, 99, 100, 199, 200, 299, 300)] == [
        256,
        256,
        179,
        179,
        125,
        125,
        87,
    ]
    assert budget_schedule(10_000, 3, 0.5, 10) == 1  # never below 1


def test_curriculum_triangular_length_reward() -> None:
    assert triangular_length_reward(100, 100) == 1.0
    assert triangular_length_reward(50, 100) == 0.5 == triangular_length_reward(150, 100)
    assert triangular_length_reward(200, 100) == 0.0 == triangular_length_reward(260, 100)
    assert triangular_length_reward(120, 100, peak=2.0) == pytest.approx(1.6)


def test_curriculum_reads_the_step_and_fills_the_prompt_budget() -> None:
    rule = CurriculumLength(fixed([1.0, 0.0]), initial_budget=100, decay=0.5, period=10)
    state = SimpleNamespace(global_step=15)  # budget ⌊100·0.5⌋ = 50
    got = run(rule, ["A", "A"], [50, 25], trainer_state=state)
    assert close(got, [0.6 * 1 + 0.3 * 1.0, 0.6 * 0 + 0.3 * 0.5])
    rows = [{"prompt": [{"role": "user", "content": "Answer in {budget} tokens."}], "x": 1}]
    assert rule.before_generation(rows, 15)[0]["prompt"][0]["content"] == "Answer in 50 tokens."
    assert rows[0]["prompt"][0]["content"] == "Answer in {budget} tokens."  # the dataset row is not mutated


# ----- composition with RubricReward ------------------------------------------------------------------------------
def test_slpo_over_rubric_reward_keeps_unscored_samples_out(tmp_path) -> None:
    """An MPO run made length-aware: the judge's score is the base; a judge failure stays None, never 0."""
    with ScriptedJudge(faults=lambda i, body: "500" if "broken" in judged_text(body) else None) as judge:
        client = build_judge(
            JudgeConfig(
                backend="openai", model="scripted", base_urls=[judge.url], timeout_s=2, max_attempts=1
            )
        )
        rubric = RubricReward(
            client,
            ActiveRubrics(RubricStore(tmp_path / "rubrics"), Rubric.single("Q", "q", 0, 9)),
            RubricRewardConfig(scoring="logprob"),  # the scripted scores below are exact in this mode
        )
        rule = SLPO(rubric, num_generations=4, alpha=0.5, correct_threshold=0.5)
        texts = ["alpha beta gamma delta epsilon", "one two three four five six seven", "broken here", "x y"]
        prompt = [{"role": "user", "content": "Write something."}]
        got = asyncio.run(
            rule(
                prompts=[prompt] * 4,
                completions=[[{"role": "assistant", "content": t}] for t in texts],
                completion_ids=[[1] * n for n in (10, 30, 5, 4)],
            )
        )
    # Scripted scores are distinct-word counts on 0..9: 5/9 and 7/9 pass the 0.5 threshold, 2/9 does not.
    assert close(got, [5 / 9 + 0.5, 7 / 9 + 0.0, None, 2 / 9])


# ----- the verifiable base ----------------------------------------------------------------------------------------
def test_answer_reward_checks_answers_and_scores_truncated_completions_zero() -> None:
    reward = AnswerReward(
        lambda gold, text: gold in text, gates=(RequireEOS(penalty=0.0),), eos_token_ids=[2]
    )
    got = reward(
        ["q"] * 4,
        ["it is 42", "it is 41", "it is 42 and then", "it is 42"],
        completion_ids=[[5, 2], [5, 2], [5, 6], [5, 2]],
        gold_answer=["42", "42", "42", None],
    )
    # Right, wrong, right but cut off at the token limit (DLER's truncation rule: 0), no gold answer (unscored).
    assert got == [1.0, 0.0, 0.0, None]
    with pytest.raises(ValueError, match="no 'answer' column"):
        AnswerReward(lambda g, t: True, answer_column="answer")(["q"], ["a"], gold_answer=["x"])
