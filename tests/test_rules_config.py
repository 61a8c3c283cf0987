"""The ``rules`` block of ``metapo train``: validation, what each name builds, and two runs through ``train``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from metapo.config import ConfigError, from_dict
from metapo.reward.rules import (
    HAPO,
    SLPO,
    AnswerReward,
    ConstrainedReward,
    CurriculumLength,
    GRPOLambda,
    MaxMinReward,
    OrchestratedReward,
    RuleSettings,
    build_rule,
)
from metapo.train.config import RunConfig
from tests.scripted_judge import ScriptedJudge


def rubric(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
    return [0.5] * len(prompts)


def check(gold: str, text: str) -> bool:
    return gold in text


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"name": "slpo_typo"}, "rules.name='slpo_typo'; choose one of"),
        ({"name": "slpo", "base": "judge"}, "rules.base='judge'; choose rubric or answer"),
        ({"name": "dler"}, "set rules.base=answer"),
        ({"name": "slpo", "alpha": 1}, "unknown setting(s) rules.alpha"),
    ],
)
def test_bad_rules_fail_at_load_time_naming_the_key(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"rules": rules})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_rules_need_grpo() -> None:
    with pytest.raises(ConfigError, match="rules need algorithm=grpo"):
        from_dict(RunConfig, {"algorithm": "rloo", "rules": {"name": "slpo"}})


def build(name: str, base: str = "answer", **options: Any) -> tuple[Any, dict[str, Any]]:
    return build_rule(RuleSettings(name, base, options), rubric=rubric, check=check, num_generations=4)


def test_each_name_builds_its_rule_on_the_chosen_base() -> None:
    for name, cls in (
        ("grpo_lambda", GRPOLambda),
        ("slpo", SLPO),
        ("hapo", HAPO),
        ("curriculum", CurriculumLength),
    ):
        rule, extra = build(name)
        assert isinstance(rule, cls) and isinstance(rule.base, AnswerReward) and extra == {}
    assert build("slpo", "rubric")[0].base is rubric
    assert build("slpo", alpha=0.25)[0].alpha == 0.25
    dler, extra = build("dler")
    assert (
        isinstance(dler, AnswerReward)
        and dler.gates[0].penalty == 0.0
        and extra == {"dynamic_sampling": True}
    )
    drpo, extra = build("drpo", tau=5.0)
    assert isinstance(drpo, AnswerReward) and extra["drpo"].tau == 5.0
    constrained, _ = build("constrained", task="answer", constraints={"rubric": 0.7})
    assert isinstance(constrained, ConstrainedReward) and constrained.constraints == [rubric]
    assert constrained.thresholds == [0.7]
    maxmin, _ = build("maxmin", groups=["rubric", "answer"])
    assert isinstance(maxmin, MaxMinReward) and maxmin.groups[0] is rubric
    orchestrated, _ = build("orchestrator", rewards=["answer", "rubric"], weights=[0.2, 0.8])
    assert isinstance(orchestrated, OrchestratedReward) and orchestrated.weights == [0.2, 0.8]


def test_build_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown option.*alfa"):
        build("dler", alfa=1)
    with pytest.raises(ValueError, match=r"rules.options for slpo: .*alfa"):
        build("slpo", alfa=1)
    with pytest.raises(ValueError, match="answer reward needs a task with gold answers"):
        build_rule(RuleSettings("slpo", "answer"), rubric=rubric, check=None, num_generations=4)
    with pytest.raises(ValueError, match="unknown reward 'length'"):
        build("maxmin", groups=["length", "answer"])


def _math_run(tmp_path: Path, judge_url: str, rules: dict[str, Any], **training: Any) -> dict[str, Any]:
    return {
        "model": "",
        "task": "math",
        "limit": 8,
        "output_dir": str(tmp_path / "run"),
        "task_options": {"max_completion_tokens": 12},
        "judge": {"backend": "openai", "model": "scripted", "base_urls": [judge_url], "timeout_s": 5},
        "mpo": {"interval": 0},
        "rules": rules,
        "training": {
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_steps": 2,
            "disable_tqdm": True,
            **training,
        },
    }


MATH = Path("/work/shared/data/math/train.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rules", "data", "metric"),
    [
        # The verifiable-reward setting on real MATH problems: SLPO over the boxed-answer check (math-verify).
        pytest.param(
            {"name": "slpo", "base": "answer", "options": {"alpha": 0.5}},
            MATH,
            "rewards/slpo/mean",
            marks=pytest.mark.skipif(
                not MATH.exists(), reason="needs the MATH data at /work/shared/data/math"
            ),
        ),
        # Both of a run's rewards at once: correctness as the task, the judge's rubric score as a constraint.
        (
            {"name": "constrained", "options": {"task": "answer", "constraints": {"rubric": 0.5}}},
            None,
            "constrained/0/weight",
        ),
    ],
)
def test_metapo_train_runs_a_rule(
    rules: dict[str, Any], data: Path | None, metric: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from metapo.reward.rules.trainer import RuleGRPOTrainer
    from metapo.train.run import train

    with ScriptedJudge() as judge:
        cfg_dict = _math_run(tmp_path, judge.url, rules)
        cfg_dict["model"] = str(tiny_model_dir)
        if data is not None:
            cfg_dict["dataset"] = str(data)
            cfg_dict["task_options"]["clustering"] = "off"
        built = train(from_dict(RunConfig, cfg_dict))
    trainer = built.trainer
    assert isinstance(trainer, RuleGRPOTrainer) and trainer.state.global_step == 2
    values = [float(e[metric]) for e in trainer.state.log_history if metric in e]
    assert values and all(math.isfinite(v) for v in values)
    assert any("answer/accuracy" in e for e in trainer.state.log_history)
    assert (tmp_path / "run" / "final" / "config.json").exists()


@pytest.mark.slow
def test_dler_brings_its_trl_settings_unless_the_run_overrides_them(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from metapo.train.run import build_run, prepare_run_dir

    with ScriptedJudge() as judge:
        cfg_dict = _math_run(tmp_path, judge.url, {"name": "dler", "base": "answer"}, epsilon_high=0.3)
        cfg_dict["model"] = str(tiny_model_dir)
        cfg = from_dict(RunConfig, cfg_dict)
        built = build_run(cfg, prepare_run_dir(cfg, resume=False))
    args = built.trainer.args
    assert args.scale_rewards == "batch" and args.loss_type == "dapo" and args.beta == 5e-4
    assert args.epsilon_high == 0.3  # the run's own setting wins
    assert built.trainer.dynamic_sampling is True
