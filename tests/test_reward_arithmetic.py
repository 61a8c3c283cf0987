"""The reward's arithmetic, pinned: point weighting, how items are asked, gates, truncation and the outage stop.

A stub judge in the process answers from the text it is shown, so every number below is computed by hand.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from metapo.judges.types import ChatResult, JudgeError, ScoreReading
from metapo.reward import MinWords, RequireEOS, RubricReward, RubricRewardConfig, ScoredSample
from metapo.reward.rubric_reward import JudgeUnavailableError
from metapo.reward.scoring import LogprobScorer, MultiTurnScorer, Question
from metapo.rubric import Rubric, RubricItem, RubricStore
from metapo.rubric.active import ActiveRubrics

PROMPT = [{"role": "user", "content": "Describe a storm at sea."}]


class StubJudge:
    """Answers every question with a fixed value per response text, and records what it was asked.

    ``answers`` maps a response text to the answer (a digit expectation or an integer); ``None`` fails the call.
    """

    def __init__(self, answers: dict[str, float | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, list[dict[str, str]], Any]] = []

    def _answer(self, messages: Any) -> float:
        shown = " ".join(m["content"] for m in messages)
        for text, value in self.answers.items():
            if f"\n{text}\n" in shown:
                if value is None:
                    raise JudgeError("scripted failure")
                return value
        raise AssertionError("no known response in the prompt")

    async def expected_score(self, messages: Any, lo: int, hi: int) -> ScoreReading:
        value = self._answer(messages)
        self.asked.append(("digits", list(messages), (lo, hi)))
        assert lo <= value <= hi, f"answer {value} outside the asked range {lo}..{hi}"
        return ScoreReading(value, {}, 1.0, "logprobs", ChatResult(""))

    async def chat_json(self, messages: Any, schema: dict[str, Any], max_tokens: int = 1024) -> Any:
        value = self._answer(messages)
        self.asked.append(("json", list(messages), schema))
        return {"score": int(value)}, ChatResult("")

    async def chat(self, request: Any) -> ChatResult:
        return ChatResult("one sentence of feedback")


def _reward(
    rubric: Rubric, judge: Any, tmp_path: Any, gates: tuple = (), **cfg: Any
) -> tuple[RubricReward, list[ScoredSample]]:
    seen: list[ScoredSample] = []
    reward = RubricReward(
        judge,
        ActiveRubrics(RubricStore(tmp_path / "rubrics"), rubric),
        RubricRewardConfig(**cfg),
        gates=gates,
        on_scored=seen.extend,
        eos_token_ids=[2],
    )
    return reward, seen


def _call(reward: RubricReward, texts: list[str], ids: list[list[int]] | None = None, **kw: Any) -> list:
    convo = [[{"role": "assistant", "content": t}] for t in texts]
    return asyncio.run(reward([PROMPT] * len(texts), convo, completion_ids=ids, **kw))


def _item(ident: str, lo: int, hi: int, weight: float = 1.0) -> RubricItem:
    return RubricItem(ident, ident.title(), f"what earns {ident} points", lo, hi, weight)


# ----- point weighting -------------------------------------------------------------------------------------
def test_default_reward_is_an_affine_map_of_the_raw_total() -> None:
    rng = random.Random(1)
    reward = RubricReward(None, None)  # type: ignore[arg-type]  # arithmetic only
    for _ in range(200):
        items = []
        for i in range(rng.randint(1, 8)):
            lo = rng.randint(-10, 5)
            items.append(_item(f"i{i}", lo, lo + rng.randint(1, 20)))
        rubric = Rubric(tuple(items))
        points = {it.id: rng.uniform(it.min_score, it.max_score) for it in items}
        value, raw = reward.reward(rubric, points)
        assert raw == pytest.approx(sum(points.values()))
        assert value == pytest.approx((raw - rubric.min_points) / (rubric.max_points - rubric.min_points))


def test_a_20_point_item_outweighs_a_2_point_item_unless_weighting_is_equal() -> None:
    rubric = Rubric((_item("content", 0, 20), _item("format", 0, 2)))
    strong = {"content": 20.0, "format": 0.0}
    weak = {"content": 0.0, "format": 2.0}
    points = RubricReward(None, None)  # type: ignore[arg-type]
    assert points.reward(rubric, strong) == pytest.approx((20 / 22, 20.0))
    assert points.reward(rubric, weak) == pytest.approx((2 / 22, 2.0))
    equal = RubricReward(None, None, RubricRewardConfig(item_weighting="equal"))  # type: ignore[arg-type]
    assert equal.reward(rubric, strong)[0] == pytest.approx(0.5) == equal.reward(rubric, weak)[0]


def test_item_weights_multiply_an_items_points() -> None:
    rubric = Rubric((_item("a", 0, 9), _item("b", 0, 9, weight=3.0)))
    reward = RubricReward(None, None)  # type: ignore[arg-type]
    assert reward.reward(rubric, {"a": 9.0, "b": 0.0}) == pytest.approx((9 / 36, 9.0))
    assert reward.reward(rubric, {"a": 0.0, "b": 9.0}) == pytest.approx((27 / 36, 27.0))
    raw = RubricReward(None, None, RubricRewardConfig(reward_scale="raw"))  # type: ignore[arg-type]
    assert raw.reward(rubric, {"a": 0.0, "b": 9.0}) == (27.0, 27.0)


# ----- how items are asked ---------------------------------------------------------------------------------
def test_each_range_is_asked_as_itself() -> None:
    assert Question.of(_item("a", 0, 5)) == Question("digit", 0, 5)
    assert Question.of(_item("a", 1, 6)) == Question("digit", 1, 6)
    assert Question.of(_item("a", -5, 0)) == Question("deduct", 0, 5)
    assert Question.of(_item("a", 0, 20)) == Question("integer", 0, 20)
    assert Question.of(_item("a", -3, 4)) == Question("integer", -3, 4)
    assert Question.of(_item("a", -15, 0)) == Question("integer", -15, 0)
    deduct = Question.of(_item("a", -5, 0))
    assert deduct.to_points(4.0) == -4.0 and deduct.to_points(0.0) == 0.0
    assert Question.of(_item("a", 0, 20)).to_points(17.0) == 17.0


@pytest.mark.parametrize("scorer", [LogprobScorer(), MultiTurnScorer()])
def test_wide_and_deduction_items_keep_their_points(scorer: Any, tmp_path: Any) -> None:
    rubric = Rubric((_item("depth", 0, 20), _item("title-only", -5, 0)))
    judge = StubJudge({"Car-Free Cities": 3.0})  # "3" = 3 of 20 points, or 3 points deducted
    reward, seen = _reward(rubric, judge, tmp_path)
    reward.scorer = scorer
    (value,) = _call(reward, ["Car-Free Cities"])
    assert seen[0].item_scores == {"depth": 3.0, "title-only": -3.0}
    assert value == pytest.approx((3 - 3 + 5) / 25)
    prompts = {kind: " ".join(x["content"] for x in m) for kind, m, _ in judge.asked}
    schema = next(s for kind, _, s in judge.asked if kind == "json")
    assert schema["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 20}
    assert "0 to 20 points" in prompts["json"] and "0 to 9" not in prompts["json"]
    deduction = next(m for kind, m, _ in judge.asked if kind == "digits")
    shown = " ".join(m["content"] for m in deduction)
    assert "deducted" in shown and "-5" not in shown and (0, 5) in [r for k, _, r in judge.asked if k == "digits"]


# ----- gates -----------------------------------------------------------------------------------------------
def test_missing_eos_subtracts_from_the_judges_score(tmp_path: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5),))
    judge = StubJudge({"a rich but unfinished essay": 4.0, "a poor unfinished essay": 1.0})
    reward, seen = _reward(rubric, judge, tmp_path, gates=(RequireEOS(-0.2),))
    good, poor = _call(reward, ["a rich but unfinished essay", "a poor unfinished essay"], ids=[[5, 6], [5, 6]])
    assert good == pytest.approx(4 / 5 - 0.2) and poor == pytest.approx(1 / 5 - 0.2)
    assert seen[0].adjustments == {"missing_eos": -0.2} and seen[0].gate is None
    assert seen[0].item_scores == {"quality": 4.0}  # the judge still read the truncated text
    (ended,) = _call(reward, ["a poor unfinished essay"], ids=[[5, 2]])
    assert ended == pytest.approx(1 / 5) and seen[-1].adjustments == {}


def test_raw_mode_maps_gate_values_onto_the_rubrics_point_range(tmp_path: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5), _item("padding", -5, 0)))
    judge = StubJudge({"long enough answer here": 2.0, "cut off answer text here": 2.0})
    gates = (MinWords(4, penalty=0.0), RequireEOS(-0.2))
    reward, seen = _reward(rubric, judge, tmp_path, gates=gates, reward_scale="raw")
    short, cut = _call(reward, ["two words", "cut off answer text here"], ids=[[5, 2], [5, 6]])
    # A replacing gate's 0 is the worst total (-5 points), not 0 points.
    assert short == pytest.approx(-5.0) and seen[0].gate == "min_words"
    # An additive -0.2 is -0.2 of the 10-point span; the judge gave 2 and deducted 2.
    assert cut == pytest.approx((2.0 - 2.0) - 0.2 * 10)


def test_raw_score_metric_leaves_gated_samples_out(tmp_path: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5),))
    judge = StubJudge({"a fine answer of words": 5.0})
    reward, _ = _reward(rubric, judge, tmp_path, gates=(MinWords(3),))
    logged: dict[str, float] = {}
    _call(reward, ["a fine answer of words", "no"], log_metric=logged.__setitem__)
    assert logged["rubric/raw_score"] == 5.0 and logged["rubric/gated_rate"] == 0.5


# ----- truncation ------------------------------------------------------------------------------------------
def test_truncated_judge_inputs_are_counted_and_warned_about(tmp_path: Any, caplog: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5),))
    long_text = "word " * 400

    class AnyText(StubJudge):
        def _answer(self, messages: Any) -> float:
            return 3.0

    judge = AnyText({})
    reward, seen = _reward(rubric, judge, tmp_path, max_judge_chars=1000)
    logged: dict[str, float] = {}
    with caplog.at_level(logging.WARNING, logger="metapo.reward.rubric_reward"):
        _call(reward, ["short answer"] * 19 + [long_text], log_metric=logged.__setitem__)
    assert logged["rubric/truncated_rate"] == pytest.approx(1 / 20)
    assert [s.truncated for s in seen].count(True) == 1
    assert "cut to 1000 characters" not in caplog.text  # 5 % is not more than 5 %
    with caplog.at_level(logging.WARNING, logger="metapo.reward.rubric_reward"):
        _call(reward, [long_text], log_metric=logged.__setitem__)
    assert "cut to 1000 characters" in caplog.text


# ----- the outage stop -------------------------------------------------------------------------------------
def test_gated_samples_neither_hide_nor_reset_a_dead_judge(tmp_path: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5),))
    judge = StubJudge({"needs the judge here": None})
    reward, _ = _reward(rubric, judge, tmp_path, gates=(MinWords(3),), max_consecutive_failures=4)
    _call(reward, ["needs the judge here", "short", "needs the judge here", "short"])
    assert reward.consecutive_failures == 2
    with pytest.raises(JudgeUnavailableError, match="4 samples in a row"):
        _call(reward, ["short", "needs the judge here", "short", "needs the judge here"])


def test_a_judge_failing_every_other_call_stops_the_run_by_rate(tmp_path: Any) -> None:
    rubric = Rubric((_item("quality", 0, 5),))
    judge = StubJudge({"this one fails": None, "this one works": 2.0})
    reward, _ = _reward(rubric, judge, tmp_path, missing_window=8, max_missing_rate=0.4)
    _call(reward, ["this one fails", "this one works"] * 3)  # 6 judged, window of 8 not full yet
    with pytest.raises(JudgeUnavailableError, match="4 of the last 8"):
        _call(reward, ["this one fails", "this one works"])
    assert reward.consecutive_failures == 0


def test_combining_with_another_reward_function_warns(tmp_path: Any, caplog: Any) -> None:
    class Trainer:
        def __init__(self) -> None:
            self.reward_funcs = [object(), object()]

        def _log_metric(self, name: str, value: float) -> None:
            pass

    rubric = Rubric((_item("quality", 0, 5),))
    reward, _ = _reward(rubric, StubJudge({"fine answer": 2.0}), tmp_path)
    with caplog.at_level(logging.WARNING, logger="metapo.reward.rubric_reward"):
        _call(reward, ["fine answer"], log_metric=Trainer()._log_metric)
    assert "one of 2 reward functions" in caplog.text
