"""SPO (minimax self-play): a TRL reward function whose reward is a completion's win rate against its siblings.

Swamy et al., "A Minimaximalist Approach to Reinforcement Learning from Human Feedback", arXiv 2401.04056: sample
several completions per prompt from the policy; each one's reward is its mean preference over the *other*
completions of the same prompt, ``r_i = (1/(N−1))·Σ_{j≠i} P(y_i ≻ y_j)``; any RL algorithm then maximises it.
Because the game is symmetric and zero-sum, single-agent self-play converges (on average) to the minimax winner,
with no reward model and no reference. Here the RL algorithm is TRL's ``GRPOTrainer`` with ``num_generations = N``.
Confidence: [R] (the rule is the paper's; its PPO/SAC settings are not reproduced).

Groups are found by prompt within the batch TRL hands the function. If TRL splits one prompt's completions across
processes, each part is still a set of independent samples of π, so the win rate stays unbiased (only noisier);
a completion left alone gets ½, which GRPO's group centring turns into zero advantage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from typing import Any

from metapo.reward.rubric_reward import completion_text

from .oracle import PreferenceOracle, win_rates

logger = logging.getLogger(__name__)


class SelfPlayWinRate:
    """Async TRL reward function ``await reward(prompts, completions, **columns) -> list[float]``.

    Args:
        oracle: The preference oracle (:mod:`metapo.online.oracle`).

    Attributes:
        lonely: Completions that had no sibling in their batch (rewarded ½).
    """

    __name__ = "self_play_win_rate"

    def __init__(self, oracle: PreferenceOracle) -> None:
        self.oracle = oracle
        self.lonely = 0

    async def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        del kwargs  # TRL passes dataset columns and trainer state; the reward needs neither
        groups: dict[str, list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            groups[json.dumps(prompt, sort_keys=True, default=str)].append(i)
        texts = [completion_text(c) for c in completions]
        rewards = [0.5] * len(completions)

        async def score(members: list[int]) -> None:
            if len(members) < 2:
                self.lonely += 1
                return
            matrix = await self.oracle.preferences(prompts[members[0]], [texts[i] for i in members])
            for i, value in zip(members, win_rates(matrix, self_play=True), strict=True):
                rewards[i] = float(value)

        await asyncio.gather(*(score(members) for members in groups.values()))
        return rewards
