"""Meta Policy Optimization inside TRL's GRPOTrainer: meta steps fire, versions change, training never waits.

Everything runs offline: a tiny random Llama, and scripted OpenAI-compatible judges on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from metapo.files import read_jsonl
from metapo.judges import JudgeConfig, build_judge
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, default_answer
from tests.tiny_grpo import tiny_grpo_trainer


def _client(judge: ScriptedJudge, **kw: Any):
    cfg = JudgeConfig(
        backend="openai", model="scripted", base_urls=[judge.url], timeout_s=5, max_attempts=2, **kw
    )
    return build_judge(cfg)


def _trainer(tiny_model_dir: Path, tmp_path: Path, reward: RubricReward, controller, max_steps: int):
    return tiny_grpo_trainer(tiny_model_dir, tmp_path, reward, [controller], max_steps=max_steps)


def _wire(tmp_path: Path, judge: ScriptedJudge, meta: ScriptedJudge, mpo: MetaConfig, meta_timeout_s: float = 5):
    store = RubricStore(tmp_path / "rubrics")
    active = ActiveRubrics(store, Rubric.single("Quality", "Overall quality of the answer.", 0, 9))
    meta_client = build_judge(
        JudgeConfig(backend="openai", model="scripted", base_urls=[meta.url], timeout_s=meta_timeout_s, max_attempts=2)
    )
    reward_client = _client(judge, max_concurrency=8)
    meta_judge = MetaJudge(meta_client, mpo, task_description="Answer the prompt well.")
    judges = {"judge/": reward_client, "meta_judge/": meta_client}
    controller = MetaPolicyOptimizationCallback(meta_judge, active, mpo, tmp_path, judges=judges)
    reward = RubricReward(
        reward_client,
        active,
        RubricRewardConfig(scoring="logprob", input_label="Prompt"),
        on_scored=controller.record,
        extra_metrics=controller.metrics,
    )
    return store, active, controller, reward


def _fresh_rubrics() -> Any:
    """A meta judge whose every structured answer is a different valid rubric."""
    counter = itertools.count()

    def handler(body: dict[str, Any]) -> Any:
        if body.get("response_format"):
            n = next(counter)
            item = {"title": f"Criterion {n}", "description": f"Rule {n}.", "min_score": 0, "max_score": 9}
            return json.dumps({"items": [item]})
        return default_answer(body)

    return handler


@pytest.mark.slow
def test_meta_steps_fire_and_change_the_rubric(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ScriptedJudge() as judge, ScriptedJudge(handler=_fresh_rubrics()) as meta:
        mpo = MetaConfig(interval=2, samples=3, blocking=True)
        store, active, controller, reward = _wire(tmp_path, judge, meta, mpo)
        trainer = _trainer(tiny_model_dir, tmp_path, reward, controller, max_steps=5)
        trainer.train()
        judge_calls = judge.request_count

    history = store.history()
    assert controller.meta_steps == 2 and controller.accepted == 2
    assert [v.version for v in history] == [0, 1, 2]
    assert history[1].parents == (0,) and history[1].creator == "meta-step" and history[1].step == 2
    assert history[1].evidence["analyses"], "the new version records the analyses behind it"
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 5 * 4
    # Samples scored after each swap carry the new version; every reward is in [0, 1].
    assert {s["rubric_version"] for s in samples} == {0, 1, 2}
    assert all(0.0 <= s["reward"] <= 1.0 for s in samples)
    # The meta-reward model saw per-item scores, not only the total.
    analyze = [b for b in meta.requests if "Review that grading" in b["messages"][-1]["content"]]
    assert analyze and "Grader's item scores" in analyze[0]["messages"][-1]["content"]
    logs = read_jsonl(tmp_path / "metrics.jsonl")
    assert any(r.get("mpo/rubric_version") == 2.0 for r in logs)
    assert logs[-1]["judge/calls"] == judge_calls and logs[-1]["meta_judge/calls"] > 0
    meta_logs = sorted((tmp_path / "meta").glob("*.json"))
    first = json.loads(meta_logs[0].read_text())
    assert len(meta_logs) == 2 and first["accepted"] is True and first["meta_judge"]["calls"] >= 3


@pytest.mark.slow
def test_training_continues_while_a_slow_meta_step_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The meta judge answers nothing until training has reached step 4: a run that waited for the meta step
    # would never get there (the judge gives up after 120 s and the assertions below fail).
    release = threading.Event()

    def held(body: dict[str, Any]) -> Any:
        release.wait(timeout=120)
        return default_answer(body)

    class ReleaseAtStep4(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= 4:
                release.set()

    with ScriptedJudge() as judge, ScriptedJudge(handler=held) as meta:
        mpo = MetaConfig(interval=1, samples=2, blocking=False)
        store, active, controller, reward = _wire(tmp_path, judge, meta, mpo, meta_timeout_s=300)
        trainer = tiny_grpo_trainer(tiny_model_dir, tmp_path, reward, [controller, ReleaseAtStep4()], max_steps=6)
        trainer.train()

    # The first meta step started at step 1 and was held until step 4: steps 2-4 completed meanwhile.
    assert controller.steps_during_meta >= 3
    assert controller.meta_steps >= 1 and controller.accepted >= 1
    # Triggers that arrived while a job ran were folded, not queued: fewer meta steps than triggers.
    assert controller.meta_steps < 6
    assert len(store.history()) == 1 + controller.accepted


@pytest.mark.slow
def test_invalid_meta_output_keeps_the_current_rubric(tiny_model_dir: Path, tmp_path: Path) -> None:
    def bad_rubric(body: dict[str, Any]) -> Any:
        if body.get("response_format"):
            # Schema-valid JSON whose rubric breaks validation: an empty description.
            return json.dumps(
                {"items": [{"title": "Vague", "description": "", "min_score": 0, "max_score": 5}]}
            )
        return default_answer(body)

    with ScriptedJudge() as judge, ScriptedJudge(handler=bad_rubric) as meta:
        mpo = MetaConfig(interval=2, samples=2, blocking=True)
        store, active, controller, reward = _wire(tmp_path, judge, meta, mpo)
        trainer = _trainer(tiny_model_dir, tmp_path, reward, controller, max_steps=2)
        trainer.train()

    assert controller.meta_steps == 1 and controller.rejected == 1 and controller.accepted == 0
    assert [v.version for v in store.history()] == [0]
    assert active.get().version == 0
    log = json.loads(next((tmp_path / "meta").glob("*.json")).read_text())
    assert log["accepted"] is False and "description is empty" in log["reason"]


@pytest.mark.slow
def test_an_unchanged_rubric_makes_no_new_version(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The default scripted meta judge proposes the same rubric every time.
    with ScriptedJudge() as judge, ScriptedJudge() as meta:
        mpo = MetaConfig(interval=1, samples=1, blocking=True)
        store, active, controller, reward = _wire(tmp_path, judge, meta, mpo)
        _trainer(tiny_model_dir, tmp_path, reward, controller, max_steps=3).train()

    assert controller.meta_steps == 3 and controller.accepted == 1 and controller.unchanged == 2
    assert [v.version for v in store.history()] == [0, 1]
    logs = [json.loads(p.read_text()) for p in sorted((tmp_path / "meta").glob("*.json"))]
    assert [m["accepted"] for m in logs] == [True, False, False] and "unchanged" in logs[-1]["reason"]


@pytest.mark.slow
def test_the_interval_counts_rollout_batches_not_optimizer_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    # TRL generates every steps_per_generation x num_iterations = 4 optimizer steps here (one generation
    # round serves four updates), so interval=1 means a meta step after the rounds of steps 1 and 5 only.
    with ScriptedJudge() as judge, ScriptedJudge(handler=_fresh_rubrics()) as meta:
        mpo = MetaConfig(interval=1, samples=2, blocking=True)
        store, _, controller, reward = _wire(tmp_path, judge, meta, mpo)
        trainer = tiny_grpo_trainer(
            tiny_model_dir,
            tmp_path,
            reward,
            [controller],
            max_steps=6,
            num_iterations=2,
            steps_per_generation=2,
            gradient_accumulation_steps=1,
        )
        trainer.train()

    assert controller.rollouts == 2 and controller.meta_steps == 2
    assert [v.step for v in store.history()] == [0, 1, 5]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 2 * 8 and {s["step"] for s in samples} == {0, 4}
