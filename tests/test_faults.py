"""Reward-judge faults: 5xx, 429, hangs, dropped connections and unreadable answers.

A sample the judge cannot score gets ``None`` (never 0) and is counted; every call makes at most
``max_attempts`` requests; a short GRPO run completes under a faulty judge; a judge that is down stops
the run with :class:`JudgeUnavailableError` after ``max_consecutive_failures`` samples.
"""

from __future__ import annotations

import asyncio
import html
import math
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from metapo.files import read_jsonl
from metapo.judges import JudgeClient, OpenAIHTTPBackend
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.meta_judge import MetaConfig
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import JudgeUnavailableError, RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, judged_text
from tests.tiny_grpo import prompt_dataset, tiny_grpo_trainer

ATTEMPTS = 3
# One call per item: the fault schedules pick a request by the response it judges.
LOGPROB = "logprob"
# Long enough that a healthy request on a busy machine never times out; hangs outlast it.
TIMEOUT_S = 1.0
TASK = "Write about a lighthouse keeper."
RUBRIC = Rubric.from_items(
    [
        {"title": "Quality", "description": "Overall quality.", "min_score": 0, "max_score": 9},
        {"title": "Clarity", "description": "Easy to follow.", "min_score": 0, "max_score": 9},
    ]
)
COMPLETIONS = [
    "The keeper climbs the stairs.",
    "DOOMED storm at night",
    "Waves hit the rocks below.",
    "A ship passes safely.",
    "DOOMED fog rolls in",
    "Morning light on the sea.",
]
# What RubricReward reports for each fault that persists through every attempt.
ERRORS = {
    "500": "HTTP 500",
    "503": "HTTP 503",
    "429": "HTTP 429",
    "hang": f"within {TIMEOUT_S:g} s",
    "close": "connection closed",
    "garbage": "not JSON",
    "irrelevant": "of the first token's probability",
    "nologprobs": "no logprobs",
}


def _client(judge: ScriptedJudge, max_attempts: int = ATTEMPTS) -> JudgeClient:
    # Short backoff keeps the test fast; the retry logic is the production one.
    return JudgeClient(
        OpenAIHTTPBackend([judge.url], timeout_s=TIMEOUT_S),
        model_id="scripted",
        max_concurrency=8,
        timeout_s=TIMEOUT_S,
        max_attempts=max_attempts,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )


def _item(body: dict[str, Any]) -> str:
    # Every request lists the whole rubric; the question after the response names the item asked.
    question = body["messages"][-1]["content"].rpartition("</response>")[2]
    return "Clarity" if "criterion [clarity]" in question else "Quality"


def _score(reward: RubricReward, completions: list[str]) -> tuple[list[float | None], dict[str, float]]:
    metrics: dict[str, float] = {}
    prompts = [[{"role": "user", "content": TASK}]] * len(completions)
    out = asyncio.run(
        reward(prompts, completions, task_input=[TASK] * len(completions), log_metric=metrics.__setitem__)
    )
    return out, metrics


@pytest.mark.parametrize("fault", sorted(ERRORS))
def test_persistent_fault_leaves_the_sample_unscored(fault: str, tmp_path: Path) -> None:
    # The Clarity item of the DOOMED completions fails on every attempt; everything else answers.
    def schedule(index: int, body: dict[str, Any]) -> str | None:
        return fault if "DOOMED" in judged_text(body) and _item(body) == "Clarity" else None

    recorded: list[ScoredSample] = []
    with ScriptedJudge(faults=schedule, hang_s=1.5) as judge:
        client = _client(judge)
        reward = RubricReward(
            client,
            ActiveRubrics(RubricStore(tmp_path / "rubrics"), RUBRIC),
            RubricRewardConfig(input_label="Writing prompt", scoring=LOGPROB),
            on_scored=recorded.extend,
        )
        rewards, metrics = _score(reward, COMPLETIONS)
        bodies = judge.requests

    doomed = [i for i, text in enumerate(COMPLETIONS) if "DOOMED" in text]
    assert [i for i, r in enumerate(rewards) if r is None] == doomed
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for i, r in enumerate(rewards) if i not in doomed)
    for i in doomed:
        assert recorded[i].reward is None and recorded[i].raw_score is None
        assert ERRORS[fault] in (recorded[i].error or "")
    assert reward.missing == len(doomed) and reward.total == len(COMPLETIONS)
    assert metrics["rubric/missing_rate"] == pytest.approx(len(doomed) / len(COMPLETIONS))
    # Bounded retries: a failing call makes exactly ATTEMPTS requests, a healthy one exactly one.
    per_call = Counter((judged_text(b), _item(b)) for b in bodies)
    for (text, item), count in per_call.items():
        failing = "DOOMED" in text and item == "Clarity"
        assert count == (ATTEMPTS if failing else 1), (text, item)
    assert client.stats.failures == len(doomed)


def test_a_transient_fault_is_retried_and_the_sample_scored(tmp_path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()
    faults = iter(["500", "429", "close", "garbage"] * 10)

    def first_attempt_fails(index: int, body: dict[str, Any]) -> str | None:
        key = (judged_text(body), _item(body))
        with lock:
            if key in seen:
                return None
            seen.add(key)
            return next(faults)

    with ScriptedJudge(faults=first_attempt_fails) as judge:
        client = _client(judge)
        config = RubricRewardConfig(scoring=LOGPROB)
        reward = RubricReward(client, ActiveRubrics(RubricStore(tmp_path / "rubrics"), RUBRIC), config)
        rewards, metrics = _score(reward, COMPLETIONS)
        requests = judge.request_count
        with ScriptedJudge() as healthy:
            clean = RubricReward(_client(healthy), ActiveRubrics(RubricStore(tmp_path / "r2"), RUBRIC), config)
            expected, _ = _score(clean, COMPLETIONS)

    calls = len(COMPLETIONS) * len(RUBRIC.items)
    assert rewards == pytest.approx(expected)  # the retried answers are the real ones
    assert metrics["rubric/missing_rate"] == 0.0
    assert requests == 2 * calls
    assert client.stats.failures == 0


def _trainer(tiny_model_dir: Path, out: Path, reward: RubricReward, callback: Any, max_steps: int) -> Any:
    prompts = ("Write about a lighthouse keeper.", "Explain how rain forms.", "Describe a storm.")
    return tiny_grpo_trainer(
        tiny_model_dir,
        out,
        reward,
        [callback],
        max_steps=max_steps,
        completion_tokens=10,
        dataset=prompt_dataset(12, prompts),
    )


def _wire(judge: ScriptedJudge, out: Path, **reward_cfg: Any) -> tuple[RubricReward, Any, JudgeClient]:
    active = ActiveRubrics(RubricStore(out / "rubrics"), Rubric.single("Quality", "Overall quality.", 0, 9))
    # No meta judge: the callback only writes samples.jsonl and metrics.jsonl.
    callback = MetaPolicyOptimizationCallback(None, active, MetaConfig(interval=0), out)
    client = _client(judge, max_attempts=2)
    reward = RubricReward(
        client,
        active,
        RubricRewardConfig(input_label="Prompt", scoring=LOGPROB, **reward_cfg),
        on_scored=callback.record,
        extra_metrics=callback.metrics,
    )
    return reward, callback, client


@pytest.mark.slow
def test_grpo_run_completes_with_a_faulty_judge(tiny_model_dir: Path, tmp_path: Path) -> None:
    kinds = ["500", "429", "hang", "close", "garbage", "irrelevant"]
    doomed: set[str] = set()
    lock = threading.Lock()

    def schedule(index: int, body: dict[str, Any]) -> str | None:
        # About a third of the completions fail for good, each with a fault chosen by its text.
        text = judged_text(body)
        crc = zlib.crc32(text.encode())
        if crc % 3:
            return None
        with lock:
            doomed.add(text)
        return kinds[(crc // 3) % len(kinds)]

    with ScriptedJudge(faults=schedule, hang_s=1.5) as judge:
        reward, callback, client = _wire(judge, tmp_path)
        trainer = _trainer(tiny_model_dir, tmp_path, reward, callback, max_steps=3)
        trainer.train()
        bodies = judge.requests

    assert trainer.state.global_step == 3
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 12
    # The fenced text the judge saw is the completion, HTML-escaped where it looked like markup.
    doomed_completions = {html.unescape(text[1:-1]) for text in doomed}
    missing = [s for s in samples if s["reward"] is None]
    assert 0 < len(missing) < len(samples), "the schedule must hit some samples and spare others"
    for s in samples:
        assert (s["reward"] is None) == (s["completion"] in doomed_completions)
        assert (s["error"] is not None) == (s["reward"] is None)  # a failure is never a score of 0
    # Counted per step in the trainer's logs, and the logged mean reward leaves the missing ones out.
    logs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "rubric/missing_rate" in r]
    assert len(logs) == 3
    assert sum(round(r["rubric/missing_rate"] * 4) for r in logs) == len(missing)
    assert all(math.isfinite(r["reward"]) for r in logs)
    # Bounded retries: max_attempts requests per failed call, one per healthy call.
    per_text = Counter(judged_text(b) for b in bodies)
    assert all(n == (2 if text in doomed else 1) for text, n in per_text.items())
    assert client.stats.failures == len(missing)


@pytest.mark.slow
def test_a_judge_that_is_down_stops_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ScriptedJudge(faults=lambda index, body: "503") as judge:
        reward, callback, _ = _wire(judge, tmp_path, max_consecutive_failures=6)
        trainer = _trainer(tiny_model_dir, tmp_path, reward, callback, max_steps=5)
        with pytest.raises(JudgeUnavailableError, match="8 samples in a row could not be scored") as info:
            trainer.train()
        requests = judge.request_count

    assert "HTTP 503" in str(info.value) and "--resume" in str(info.value)
    # Step 1's four failures stay under the limit; step 2's push the count to 8 and stop the run.
    assert trainer.state.global_step == 1
    assert requests == 8 * 2
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 8 and all(s["reward"] is None for s in samples)


def test_a_scored_sample_resets_the_failure_count(tmp_path: Path) -> None:
    # Failures that alternate with successes never reach the limit, however many there are.
    with ScriptedJudge(faults=lambda i, body: "500" if "DOOMED" in judged_text(body) else None) as judge:
        reward = RubricReward(
            _client(judge, max_attempts=1),
            ActiveRubrics(RubricStore(tmp_path / "rubrics"), RUBRIC),
            RubricRewardConfig(max_consecutive_failures=2, scoring=LOGPROB),
        )
        for _ in range(3):
            rewards, _ = _score(reward, ["fine text", "DOOMED"])
            assert rewards[0] is not None and rewards[1] is None
        with pytest.raises(JudgeUnavailableError, match="3 samples in a row"):
            _score(reward, ["DOOMED", "DOOMED"])
    assert reward.missing == 5 and reward.total == 8
