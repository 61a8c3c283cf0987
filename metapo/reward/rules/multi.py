"""Rewards that combine several reward functions: constrained RLHF, MaxMin-RLHF and the Preference Orchestrator.

GRPO's ``reward_weights`` are fixed for the run. These rules choose the combination as training goes: Lagrange
multipliers that move with each batch's constraint values, the reward of the group currently worst off, or
weights that depend on the prompt. Each is one TRL reward function that calls its components once per batch. A
sample gets ``None`` (left out by TRL) when a component it needs could not score it, never a silent 0.

All three keep their state per process: with several processes each sees its own share of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from metapo.reward.rules.base import Reward, RewardFn, call_all, log_metrics, nanmean, reward_name

#: Bound on the constrained multipliers' logits: weights stay above about e^-10 of the task's.
LOGIT_LIMIT = 10.0


def _weighted(parts: Sequence[Sequence[Reward]], weights: Sequence[Sequence[float]]) -> list[Reward]:
    """Row-wise ``Σ_k w_k r_k``; ``None`` where any component with a non-zero weight is ``None``."""
    out: list[Reward] = []
    for i, w in enumerate(weights):
        terms = [(wk, part[i]) for wk, part in zip(w, parts, strict=True) if wk != 0.0]
        out.append(None if any(r is None for _, r in terms) else sum(wk * r for wk, r in terms))  # type: ignore[operator]
    return out


class ConstrainedReward:
    """Constrained RLHF (arXiv 2310.04373) [R; configuration V-code]: Lagrange weights steer constraint values to thresholds.

    The reward is a softmax-weighted mix of the task reward and the constraint rewards,
    ``r = w_0·r_task + Σ_i w_i·r_i`` with ``w = softmax(0, z_1, ..., z_K)``. With one constraint this is the
    official code's ``(1 − σ(z))·r_task + σ(z)·r_c`` (sigmoid-squashed multiplier). After each batch the logits
    take a dual step on the violation, ``z_i ← z_i − lr·(v_i − θ_i)`` (clipped to ±10), where ``v_i`` is the batch mean of
    ``r_i``: a constraint under its threshold gains weight, one over it loses weight. So ``θ_i`` is a lower bound
    that the policy is pushed up to (and, where the task pulls the other way, held at); a constraint the task
    optimum already satisfies decays to weight 0 and leaves the task unconstrained. For an upper bound (the
    paper's "proxy point" a reward should not exceed), pass the negated reward and threshold.

    The official code multiplies the step by ``σ'(z)`` and uses momentum 0.9; this dual step does neither, and
    the paper's μ-PPO / ξ-PPO variants and the Nelder–Mead threshold search are not built.

    Args:
        task: The reward being optimised.
        constraints: ``(reward, threshold)`` pairs.
        lr: Step size of the multiplier logits (the official config: 0.1).
    """

    __name__ = "constrained"

    def __init__(
        self, task: RewardFn, constraints: Sequence[tuple[RewardFn, float]], *, lr: float = 0.1
    ) -> None:
        if not constraints:
            raise ValueError("constrained: give at least one (reward, threshold) constraint")
        self.task = task
        self.constraints = [fn for fn, _ in constraints]
        self.thresholds = [float(t) for _, t in constraints]
        self.lr = lr
        self.logits = [0.0] * len(constraints)

    def weights(self) -> list[float]:
        """Current weights of the task reward and each constraint reward (they sum to 1)."""
        top = max(0.0, *self.logits)
        exp = [math.exp(0.0 - top)] + [math.exp(z - top) for z in self.logits]
        total = sum(exp)
        return [e / total for e in exp]

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[Reward]:
        parts = await call_all([self.task, *self.constraints], prompts, completions, completion_ids, **kwargs)
        w = self.weights()
        rewards = _weighted(parts, [w] * len(prompts))
        values = [nanmean(part) for part in parts[1:]]
        metrics = {"constrained/task_weight": w[0], "constrained/task_value": nanmean(parts[0])}
        for i, (v, theta) in enumerate(zip(values, self.thresholds, strict=True)):
            metrics[f"constrained/{i}/weight"] = w[i + 1]
            metrics[f"constrained/{i}/value"] = v
            metrics[f"constrained/{i}/violation"] = v - theta
            if not math.isnan(v):
                # Clipped so that a constraint satisfied for a long time can regain weight within a few steps.
                self.logits[i] = min(LOGIT_LIMIT, max(-LOGIT_LIMIT, self.logits[i] - self.lr * (v - theta)))
        log_metrics(kwargs, metrics)
        return rewards

    def state_dict(self) -> dict[str, Any]:
        return {"logits": list(self.logits)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        logits = [float(z) for z in state.get("logits", self.logits)]
        if len(logits) != len(self.logits):
            raise ValueError(
                f"constrained: saved state has {len(logits)} multipliers, this rule {len(self.logits)}"
            )
        self.logits = logits


class MaxMinReward:
    """MaxMin-RLHF (arXiv 2402.08925) [R]: each batch is rewarded by the group that is currently worst off.

    ``max_π min_h E_π[r_h]`` in practice: score the batch with every group's reward model ``r_h``, find the
    group with the lowest mean, and return that group's rewards. The group models should share one scale (for
    Bradley–Terry models, e.g. centred as :func:`~metapo.reward.rules.mixture.maxmin_em` returns them), since the
    minimum compares them directly. The KL term is the trainer's (``GRPOConfig.beta``).

    Args:
        groups: One reward function per user group (e.g. fitted by ``maxmin_em``).
    """

    __name__ = "maxmin"

    def __init__(self, groups: Sequence[RewardFn]) -> None:
        if len(groups) < 2:
            raise ValueError("maxmin: give at least two group rewards")
        self.groups = list(groups)

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[Reward]:
        parts = await call_all(self.groups, prompts, completions, completion_ids, **kwargs)
        means = [nanmean(part) for part in parts]
        scored = [h for h, m in enumerate(means) if not math.isnan(m)]
        if not scored:
            return [None] * len(prompts)
        worst = min(scored, key=lambda h: means[h])
        metrics = {"maxmin/worst_group": float(worst)}
        metrics.update({f"maxmin/{h}/mean": m for h, m in enumerate(means)})
        log_metrics(kwargs, metrics)
        return list(parts[worst])


#: Per-prompt weights: ``weights(prompt, row) -> one weight per reward``, ``row`` being the sample's columns.
WeightFn = Callable[[Any, dict[str, Any]], Sequence[float]]


class OrchestratedReward:
    """Preference Orchestrator (arXiv 2511.10656) [abstract-level]: ``r = Σ_k w_k(x)·r_k`` with prompt-aware weights.

    ``weights`` is a fixed vector (then this is fixed-weight aggregation, as ``GRPOConfig.reward_weights`` does,
    except that a ``None`` component gives ``None`` rather than counting as 0), the name of a dataset column that
    holds a weight vector per row, or a callable such as a fitted
    :class:`~metapo.reward.rules.mixture.WeightAdapter`.

    Args:
        rewards: The component reward functions.
        weights: Fixed weights, a column name, or ``weights(prompt, row)``.
    """

    __name__ = "orchestrator"

    def __init__(self, rewards: Sequence[RewardFn], weights: Sequence[float] | str | WeightFn) -> None:
        self.rewards = list(rewards)
        if not isinstance(weights, str) and not callable(weights) and len(weights) != len(self.rewards):
            raise ValueError(f"orchestrator: {len(weights)} weights for {len(self.rewards)} rewards")
        self.weights = weights

    def _weights(self, prompts: list[Any], kwargs: dict[str, Any]) -> list[list[float]]:
        if isinstance(self.weights, str):
            if self.weights not in kwargs:
                raise ValueError(f"orchestrator: the dataset has no {self.weights!r} weights column")
            rows = [list(map(float, w)) for w in kwargs[self.weights]]
        elif callable(self.weights):
            columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(prompts)}
            rows = [
                list(map(float, self.weights(p, {k: v[i] for k, v in columns.items()})))
                for i, p in enumerate(prompts)
            ]
        else:
            rows = [list(map(float, self.weights))] * len(prompts)
        for w in rows:
            if len(w) != len(self.rewards):
                raise ValueError(
                    f"orchestrator: a weight vector has {len(w)} entries for {len(self.rewards)} rewards"
                )
        return rows

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[Reward]:
        weights = self._weights(prompts, kwargs)
        parts = await call_all(self.rewards, prompts, completions, completion_ids, **kwargs)
        log_metrics(
            kwargs,
            {
                f"orchestrator/{reward_name(fn)}/weight": sum(w[k] for w in weights) / len(weights)
                for k, fn in enumerate(self.rewards)
            },
        )
        return _weighted(parts, weights)
