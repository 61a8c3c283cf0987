"""GRPO reward and advantage rules: length shaping for reasoning RL and multi-objective rewards.

Every rule is a TRL reward function with the standard signature that wraps the reward it builds on (a verifier
such as :class:`AnswerReward`, or :class:`~metapo.reward.RubricReward`), so it plugs into ``trl.GRPOTrainer`` as
it is. :class:`RuleGRPOTrainer` adds what a reward function cannot do (prompt hooks, dynamic sampling, DRPO's
objective). The trainer pieces import torch and TRL, so they load on first use.
"""

from __future__ import annotations

from typing import Any

from metapo.reward.rules.config import RuleSettings, build_rule, training_defaults
from metapo.reward.rules.length import (
    HAPO,
    SLPO,
    CurriculumLength,
    GRPOLambda,
    budget_schedule,
    hapo_length_reward,
    kimi_length_reward,
    slpo_bonus,
    top_fraction,
    triangular_length_reward,
)
from metapo.reward.rules.multi import ConstrainedReward, MaxMinReward, OrchestratedReward
from metapo.reward.rules.verifiable import AnswerReward

_LAZY = {
    "RuleGRPOTrainer": "metapo.reward.rules.trainer",
    "RuleStateCallback": "metapo.reward.rules.trainer",
    "informative_groups": "metapo.reward.rules.trainer",
    "DRPOLoss": "metapo.reward.rules.drpo",
    "drpo_objective": "metapo.reward.rules.drpo",
    "maxmin_em": "metapo.reward.rules.mixture",
    "WeightAdapter": "metapo.reward.rules.mixture",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HAPO",
    "SLPO",
    "AnswerReward",
    "ConstrainedReward",
    "CurriculumLength",
    "GRPOLambda",
    "MaxMinReward",
    "OrchestratedReward",
    "RuleSettings",
    "budget_schedule",
    "build_rule",
    "hapo_length_reward",
    "kimi_length_reward",
    "slpo_bonus",
    "top_fraction",
    "training_defaults",
    "triangular_length_reward",
    *_LAZY,
]
