"""RubricReward: scoring modes through a real HTTP judge, normalisation, gates, and failures as None."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from metapo.judges import JudgeConfig, build_judge
from metapo.reward import MinWords, RubricReward, RubricRewardConfig, ScoredSample
from metapo.reward.rubric_reward import JudgeUnavailableError
from metapo.rubric import Rubric, RubricItem, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, text_score

PROMPT = [{"role": "user", "content": "Describe a storm at sea."}]


def _reward(
    tmp_path, judge: ScriptedJudge, rubric: Rubric, **cfg: Any
) -> tuple[RubricReward, list[ScoredSample]]:
    seen: list[ScoredSample] = []
    client = build_judge(
        JudgeConfig(backend="openai", model="scripted", base_urls=[judge.url], timeout_s=2, max_attempts=2)
    )
    gates = cfg.pop("gates", ())
    reward = RubricReward(
        client,
        ActiveRubrics(RubricStore(tmp_path / "rubrics"), rubric),
        # logprob unless a test names another mode: the scripted judge's scores are exact in that mode.
        RubricRewardConfig(**{"scoring": "logprob", **cfg}),
        gates=gates,
        on_scored=seen.extend,
    )
    return reward, seen


def _call(reward: RubricReward, completions: list[str], **columns: Any) -> list[float | None]:
    convo = [[{"role": "assistant", "content": c}] for c in completions]
    return asyncio.run(reward([PROMPT] * len(completions), convo, **columns))


def test_logprob_mode_reads_expected_item_scores(tmp_path) -> None:
    rubric = Rubric.from_items(
        [
            {"title": "Imagery", "description": "Vivid detail.", "min_score": 0, "max_score": 9},
            {
                "title": "Focus",
                "description": "Stays on the storm.",
                "min_score": 0,
                "max_score": 9,
                "weight": 3,
            },
        ]
    )
    text = "waves crash over the deck while thunder rolls"  # 8 distinct words -> scripted score 8
    with ScriptedJudge() as judge:
        reward, seen = _reward(tmp_path, judge, rubric)
        (value,) = _call(reward, [text])
        bodies = judge.requests
    assert text_score(text) == 8
    assert value == pytest.approx(8 / 9, abs=1e-6)
    assert seen[0].item_scores == pytest.approx({"imagery": 8.0, "focus": 8.0})
    assert seen[0].raw_score == pytest.approx(8.0 + 3 * 8.0) and seen[0].rubric_version == 0  # weighted total
    assert len(bodies) == 2 and all(b["logprobs"] and b["max_tokens"] == 1 for b in bodies)
    assert any("Criterion: Focus" in b["messages"][-1]["content"] for b in bodies)


def test_json_mode_one_call_with_bounded_schema(tmp_path) -> None:
    rubric = Rubric.from_items(
        [
            {"title": "Imagery", "description": "Vivid detail.", "min_score": 0, "max_score": 4},
            {"title": "Padding", "description": "Deduct for filler.", "min_score": -6, "max_score": 0},
        ]
    )
    with ScriptedJudge() as judge:
        reward, seen = _reward(tmp_path, judge, rubric, scoring="json")
        (value,) = _call(reward, ["A storm."])
        (body,) = judge.requests
    schema = body["response_format"]["json_schema"]["schema"]
    # A deduction is asked as the points to deduct, 0..6, never as a negative score.
    assert schema["properties"]["padding"]["properties"]["deduct"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 6,
    }
    # The scripted judge answers each bounded integer with its midpoint: 2 of 0..4, and deduct 3 of 0..6.
    assert seen[0].item_scores == {"imagery": 2.0, "padding": -3.0}
    assert value == pytest.approx((0.5 + 0.5) / 2) and seen[0].raw_score == -1.0
    assert set(seen[0].rationales) == {"imagery", "padding"}


def test_multiturn_mode_keeps_earlier_items_in_context(tmp_path) -> None:
    rubric = Rubric.from_items(
        [
            {"title": "Imagery", "description": "Vivid detail.", "min_score": 0, "max_score": 9},
            {"title": "Focus", "description": "On topic.", "min_score": 0, "max_score": 9},
        ]
    )
    with ScriptedJudge() as judge:
        reward, seen = _reward(tmp_path, judge, rubric, scoring="multiturn")
        (value,) = _call(reward, ["Rain hammers the hull."])
        bodies = judge.requests
    assert len(bodies) == 4  # rationale + score per item
    last = bodies[-1]["messages"]
    assert (
        any("Criterion: Imagery" in m["content"] for m in last) and "Criterion: Focus" in last[-3]["content"]
    )
    assert value is not None and seen[0].rationales["imagery"].startswith("echo:")


def test_reward_stays_in_unit_interval_across_rubric_versions() -> None:
    rng = random.Random(0)
    for _ in range(200):
        items = []
        for i in range(rng.randint(1, 9)):
            lo = rng.randint(-10, 5)
            items.append(RubricItem(f"i{i}", f"I{i}", "d", lo, lo + rng.randint(1, 12), rng.uniform(0.1, 4)))
        rubric = Rubric(tuple(items))
        reward = RubricReward(None, None)  # type: ignore[arg-type]  # only the arithmetic is used
        points = {it.id: rng.uniform(it.min_score, it.max_score) for it in items}
        value, raw = reward.reward(rubric, points)
        assert 0.0 <= value <= 1.0
        assert raw == pytest.approx(sum(it.weight * points[it.id] for it in items))
        best, _ = reward.reward(rubric, {it.id: float(it.max_score) for it in items})
        worst, _ = reward.reward(rubric, {it.id: float(it.min_score) for it in items})
        assert best == pytest.approx(1.0) and worst == pytest.approx(0.0)


def test_raw_scale_reproduces_the_paper_sum(tmp_path) -> None:
    rubric = Rubric.from_items([{"title": "A", "description": "a", "min_score": 0, "max_score": 9}] * 1)
    with ScriptedJudge() as judge:
        reward, _ = _reward(tmp_path, judge, rubric, reward_scale="raw")
        (value,) = _call(reward, ["one two three"])
    assert value == pytest.approx(3.0)


def test_gates_short_circuit_the_judge(tmp_path) -> None:
    with ScriptedJudge() as judge:
        reward, seen = _reward(
            tmp_path, judge, Rubric.single("Q", "q", 0, 9), gates=(MinWords(5, penalty=-0.5),)
        )
        values = _call(reward, ["too short", "this one has more than five words in it"])
        assert judge.request_count == 1  # only the long completion reached the judge
    assert values[0] == -0.5 and seen[0].gate == "min_words" and "2 words" in seen[0].gate_reason
    assert values[1] is not None and seen[1].gate is None


def test_judge_failures_give_none_never_zero(tmp_path) -> None:
    with ScriptedJudge(faults=lambda i, body: "500" if i < 2 else None) as judge:
        reward, seen = _reward(tmp_path, judge, Rubric.single("Q", "q", 0, 9))
        values = _call(reward, ["first answer here"])  # both attempts fail
        later = _call(reward, ["second answer here"])
    assert values == [None] and "500" in (seen[0].error or "")
    assert later[0] is not None
    assert reward.missing == 1 and reward.total == 2


def test_judge_down_stops_training_with_a_clear_error(tmp_path) -> None:
    with ScriptedJudge(faults=lambda i, body: "503") as judge:
        reward, _ = _reward(tmp_path, judge, Rubric.single("Q", "q", 0, 9), max_consecutive_failures=3)
        assert _call(reward, ["a b", "c d"]) == [None, None]
        with pytest.raises(JudgeUnavailableError, match="resume"):
            _call(reward, ["e f"])


def test_columns_reach_the_record_and_lineage_selects_the_rubric(tmp_path) -> None:
    with ScriptedJudge() as judge:
        reward, seen = _reward(tmp_path, judge, Rubric.single("Q", "q", 0, 9))
        _call(
            reward, ["x y z", "x y"], task_input=["storm", "calm"], lineage=["a/1", "b/2"], gold=["g1", "g2"]
        )
        body = judge.requests[0]
    assert [s.lineage for s in seen] == ["a/1", "b/2"]
    assert seen[0].columns["gold"] == "g1" and seen[0].prompt == "storm"
    assert set(RubricStore(tmp_path / "rubrics").lineages()) == {"a/1", "b/2"}
    assert json.dumps(body).count("<response>") == 1


def test_new_items_stay_in_the_range_the_scoring_mode_can_read() -> None:
    # One digit is read in logprob and multiturn scoring; json asks for an integer.
    bounds = {m: RubricRewardConfig(scoring=m).item_score_bound for m in ("logprob", "json", "multiturn")}
    assert bounds == {"logprob": 9, "json": 20, "multiturn": 9}
    assert RubricRewardConfig().scoring == "multiturn"  # the best-separating mode on hackbench (RESULTS.md)
