"""Every rule inside TRL's GRPOTrainer on the tiny model: a few steps each, and what only a real trainer can show
(TRL's batch scaling vs DLER's whitening, the dynamic-sampling filter, DRPO's group layout, saved rule state)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from metapo.reward.gates import RequireEOS
from metapo.reward.rules import (
    HAPO,
    SLPO,
    AnswerReward,
    ConstrainedReward,
    CurriculumLength,
    GRPOLambda,
    MaxMinReward,
    OrchestratedReward,
    training_defaults,
)
from metapo.reward.rules.config import RuleSettings
from metapo.reward.rules.drpo import DRPOLoss
from metapo.reward.rules.trainer import RuleGRPOTrainer
from tests.tiny_grpo import tiny_grpo_trainer

G = 4
EXTRA_EOS = list(range(10, 110))
PROMPTS = ("Add 2 and 3.", "Name a colour.", "Spell cat.", "Count to three.")


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with 100 more EOS ids, so its completions stop at varied lengths (length rules need spread)."""
    path = tmp_path_factory.mktemp("varied") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "generation_config.json").read_text())
    eos = config["eos_token_id"]
    config["eos_token_id"] = ([eos] if isinstance(eos, int) else list(eos)) + EXTRA_EOS
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


def dataset(rows: int = 32, template: str = "{}") -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": template.format(PROMPTS[i % 4])}],
                "gold_answer": "even",
                "pid": f"p{i % 4}",
                "weights": [0.5, 0.5],
            }
            for i in range(rows)
        ]
    )


def even_length(gold: str, text: str) -> bool:
    """A stand-in verifier with a ~50% hit rate on random text, so groups mix correct and incorrect samples."""
    return len(text) % 2 == 0


def brevity(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **kw: Any
) -> list[float]:
    return [1.0 - len(ids) / 12 for ids in completion_ids]


def answer() -> AnswerReward:
    return AnswerReward(even_length)


def logged(trainer: Any) -> dict[str, float]:
    """The last logged value of every metric."""
    out: dict[str, float] = {}
    for entry in trainer.state.log_history:
        out.update({k: float(v) for k, v in entry.items() if isinstance(v, int | float | str) and _num(v)})
    return out


def _num(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


@pytest.mark.slow
def test_reward_rules_plug_into_a_plain_grpo_trainer(policy: Path, tmp_path: Path) -> None:
    """The six rules that are reward functions only, side by side in one unmodified ``GRPOTrainer``."""
    rules = [
        GRPOLambda(answer(), num_generations=G),
        SLPO(answer(), num_generations=G, alpha=0.5),
        HAPO(answer(), key_column="pid"),
        ConstrainedReward(answer(), [(brevity, 0.5)]),
        MaxMinReward([answer(), brevity]),
        OrchestratedReward([answer(), brevity], "weights"),
    ]
    trainer = tiny_grpo_trainer(
        policy, tmp_path, rules, [], max_steps=2, batch=8, generations=G, dataset=dataset()
    )
    trainer.train()
    metrics = logged(trainer)
    assert trainer.state.global_step == 2 and math.isfinite(metrics["loss"])
    for name in ("grpo_lambda", "slpo", "hapo", "constrained", "maxmin", "orchestrator"):
        assert math.isfinite(metrics[f"rewards/{name}/mean"])
    for metric in (
        "grpo_lambda/selected_groups",
        "slpo/length_bonus",
        "hapo/with_history",
        "constrained/0/weight",
        "maxmin/worst_group",
        "orchestrator/brevity/weight",
    ):
        assert math.isfinite(metrics[metric]), metric
    assert metrics["hapo/with_history"] > 0  # the second step met problems the first one had solved


@pytest.mark.slow
def test_curriculum_states_the_current_budget_in_the_prompt(policy: Path, tmp_path: Path) -> None:
    rule = CurriculumLength(answer(), initial_budget=8, decay=0.5, period=1)
    data = dataset(template="{} Use {{budget}} tokens.")
    trainer = tiny_grpo_trainer(
        policy,
        tmp_path,
        rule,
        [],
        max_steps=2,
        batch=8,
        generations=G,
        dataset=data,
        trainer_cls=RuleGRPOTrainer,
    )
    trainer.train()
    metrics = logged(trainer)
    # The budget halves every step from 8, and the prompts of the last batch (step 1) stated it.
    assert metrics["curriculum/budget"] == 4.0 and math.isfinite(metrics["curriculum/length_reward"])
    assert all(p[-1]["content"].endswith("Use 4 tokens.") for p in trainer._logs["prompt"])


@pytest.mark.slow
def test_dler_trains_and_trl_batch_scaling_is_its_whitening_up_to_one_factor(
    policy: Path, tmp_path: Path
) -> None:
    """DLER: ``A = whiten_batch(r − mean_group r)``. TRL's ``scale_rewards="batch"`` divides the same centred
    rewards by the std of the *raw* rewards, so its advantages are DLER's times std(centred)/std(raw), one positive
    factor per batch: same signs, same order, equal exactly when every group has the same mean reward."""
    reward = AnswerReward(even_length, gates=(RequireEOS(penalty=0.0),), eos_token_ids=[2, *EXTRA_EOS])
    trainer = tiny_grpo_trainer(
        policy,
        tmp_path,
        reward,
        [],
        max_steps=1,
        batch=16,
        generations=G,
        dataset=dataset(),
        trainer_cls=RuleGRPOTrainer,
        trainer_kwargs={"dynamic_sampling": True},
        **training_defaults(RuleSettings("dler", base="answer")),
    )
    trainer.train()
    metrics = logged(trainer)
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["dynamic_sampling/kept_groups"] <= 1.0
    rewards = torch.tensor(list(trainer._logs["rewards"]["answer_reward"]))
    trl_adv = torch.tensor(list(trainer._logs["advantages"]))
    centred = rewards - rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    assert centred.mean().abs().item() < 1e-6  # equal group sizes: the batch mean of centred rewards is 0
    dler = (centred - centred.mean()) / centred.std()  # second method: DLER's whitening, written out
    factor = centred.std() / (rewards.std() + 1e-4)
    assert 0 < factor.item() <= 1.0
    torch.testing.assert_close(trl_adv, dler * factor, atol=1e-5, rtol=1e-5)
    # With equal group means (centring changes nothing) the factor is 1: TRL's batch scaling *is* the whitening.
    same_means = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    centred_same = same_means - same_means.view(-1, G).mean(dim=1).repeat_interleave(G)
    assert centred_same.std().item() == pytest.approx((same_means - same_means.mean()).std().item())


def _score_one_batch(trainer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


@pytest.mark.slow
def test_dynamic_sampling_drops_zero_variance_groups_from_the_loss(policy: Path, tmp_path: Path) -> None:
    def reward(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
        # Group 1 (first prompt) is all 1s; group 2 gets distinct rewards.
        return [1.0 if p[-1]["content"] == PROMPTS[0] else float(i) for i, p in enumerate(prompts)]

    from metapo.reward.rules import informative_groups

    trainer = tiny_grpo_trainer(
        policy,
        tmp_path,
        reward,
        [],
        max_steps=1,
        batch=8,
        generations=G,
        dataset=dataset(),
        trainer_cls=RuleGRPOTrainer,
        trainer_kwargs={"dynamic_sampling": True},
    )
    rows = [dict(dataset()[0]) for _ in range(G)] + [dict(dataset()[1]) for _ in range(G)]
    out = _score_one_batch(trainer, rows)
    mask = out["completion_mask"]
    assert mask[:G].sum().item() == 0 and mask[G:].sum().item() > 0
    assert out["num_items_in_batch"].item() == mask[G:].sum().item()
    assert trainer._metrics["train"]["dynamic_sampling/kept_groups"][-1] == 0.5
    # The filter itself: all-equal groups, and groups with fewer than two scored samples, are dropped.
    nan = float("nan")
    keep = informative_groups(
        torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, nan, 2, nan, nan, nan, nan, nan, nan]), 4
    )
    assert keep.view(-1, 4)[:, 0].tolist() == [False, True, False, False]


@pytest.mark.slow
def test_drpo_trains_on_whole_groups_with_their_rewards(policy: Path, tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "dataset": dataset(),
        "trainer_cls": RuleGRPOTrainer,
        "trainer_kwargs": {"drpo": DRPOLoss()},
    }
    trainer = tiny_grpo_trainer(
        policy,
        tmp_path,
        answer(),
        [],
        max_steps=2,
        batch=8,
        generations=G,
        **options,
        **training_defaults(RuleSettings("drpo")),
    )
    trainer.train()
    metrics = logged(trainer)
    assert math.isfinite(metrics["drpo/objective"]) and math.isfinite(metrics["loss"])
    rows = [dict(dataset()[0]) for _ in range(G)] + [dict(dataset()[1]) for _ in range(G)]
    out = _score_one_batch(trainer, rows)
    assert out["rule_group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert out["rule_reward"].tolist() == list(trainer._logs["rewards"]["answer_reward"])
    with pytest.raises(ValueError, match="beta=0"):
        tiny_grpo_trainer(
            policy, tmp_path, answer(), [], max_steps=1, batch=8, generations=G, beta=0.1, **options
        )


@pytest.mark.slow
def test_hapo_history_is_saved_with_checkpoints_and_restored_on_resume(policy: Path, tmp_path: Path) -> None:
    save = {"save_strategy": "steps", "save_steps": 1}
    rule = HAPO(answer(), key_column="pid")
    trainer = tiny_grpo_trainer(
        policy,
        tmp_path,
        rule,
        [],
        max_steps=1,
        batch=8,
        generations=G,
        dataset=dataset(),
        trainer_cls=RuleGRPOTrainer,
        **save,
    )
    trainer.train()
    saved = json.loads((tmp_path / "checkpoints" / "checkpoint-1" / "metapo_rules-0.json").read_text())
    assert saved == [{"rule": "HAPO", "state": {"history": rule.history}}] and rule.history
    fresh = HAPO(answer(), key_column="pid")
    seen: list[dict[str, int]] = []
    original = fresh.shape

    def spy(batch: Any) -> Any:
        if not seen:
            seen.append(dict(fresh.history))
        return original(batch)

    fresh.shape = spy  # type: ignore[method-assign]
    resumed = tiny_grpo_trainer(
        policy,
        tmp_path,
        fresh,
        [],
        max_steps=2,
        batch=8,
        generations=G,
        dataset=dataset(),
        trainer_cls=RuleGRPOTrainer,
        **save,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-1"))
    assert seen == [rule.history]  # the first batch after resuming was scored with the saved history


@pytest.mark.slow
def test_orchestrator_with_constant_weights_equals_trl_fixed_weights(policy: Path, tmp_path: Path) -> None:
    def advantages(reward: Any, weights: list[float] | None) -> list[float]:
        trainer = tiny_grpo_trainer(
            policy,
            tmp_path / str(weights),
            reward,
            [],
            max_steps=1,
            batch=8,
            generations=G,
            dataset=dataset(),
            **({"reward_weights": weights} if weights else {}),
        )
        trainer.train()
        return list(trainer._logs["advantages"])

    fixed = advantages([answer(), brevity], [0.3, 0.7])
    orchestrated = advantages(OrchestratedReward([answer(), brevity], [0.3, 0.7]), None)
    assert any(a != 0.0 for a in fixed)
    assert orchestrated == pytest.approx(fixed, abs=1e-6)


MATH = Path("/work/shared/data/math/test.jsonl")


@pytest.mark.slow
@pytest.mark.skipif(not MATH.exists(), reason="needs the MATH data at /work/shared/data/math")
def test_verifiable_reward_on_math() -> None:
    """math-verify as the checker on real MATH solutions (training on MATH-style data: test_rules_config)."""
    from metapo.tasks.math_answers import boxed_answer, check_response

    rows = [json.loads(line) for line in MATH.read_text().splitlines()[:8]]
    golds = [boxed_answer(r["solution"]) for r in rows]
    reward = AnswerReward(check_response)
    prompts = [[{"role": "user", "content": r["problem"]}] for r in rows]
    # The reference solutions are right; the same solutions with a wrong boxed answer are not.
    assert reward(prompts, [r["solution"] for r in rows], gold_answer=golds) == [1.0] * 8
    wrong = [
        r["solution"].replace(f"\\boxed{{{g}}}", "\\boxed{-12345}") for r, g in zip(rows, golds, strict=True)
    ]
    assert reward(prompts, wrong, gold_answer=golds) == [0.0] * 8
