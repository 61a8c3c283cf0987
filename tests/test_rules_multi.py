"""Multi-objective rules on small synthetic problems: constrained multipliers, MaxMin on a bandit, the orchestrator."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linprog

from metapo.reward.rules import ConstrainedReward, MaxMinReward, OrchestratedReward
from metapo.reward.rules.base import call_reward
from metapo.reward.rules.mixture import WeightAdapter, fit_bradley_terry, maxmin_em


def arm_reward(table: list[float] | np.ndarray) -> Any:
    """A reward function over a bandit: each completion is an arm index (as text)."""

    def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(table[int(c)]) for c in completions]

    return reward


def call(rule: Any, arms: np.ndarray | list[int], **kwargs: Any) -> np.ndarray:
    """Rewards of a sync or async reward function for a batch of arms."""
    out = asyncio.run(call_reward(rule, ["p"] * len(arms), [str(a) for a in arms], None, **kwargs))
    return np.asarray(out, dtype=float)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def train_bandit(rule: Any, arms: int, *, steps: int, beta: float, lr: float, batch: int = 128) -> np.ndarray:
    """REINFORCE with a batch-mean baseline and a β·KL(π‖uniform) penalty, rewards from ``rule``."""
    rng = np.random.default_rng(0)
    theta = np.zeros(arms)
    for _ in range(steps):
        pi = softmax(theta)
        drawn = rng.choice(arms, size=batch, p=pi)
        r = call(rule, drawn)
        grad = np.zeros(arms)
        np.add.at(grad, drawn, r - r.mean())
        grad = grad / batch - pi * (r - r.mean()).sum() / batch
        grad -= beta * pi * (np.log(pi) - (pi * np.log(pi)).sum())
        theta += lr * grad
    return softmax(theta)


# ----- constrained RLHF -------------------------------------------------------------------------------------------
TASK = np.array([1.0, 0.2, 0.0, 0.6])
COST = np.array([0.0, 1.0, 0.3, 0.5])  # the constrained reward: it trades off against the task reward


def test_constrained_multiplier_drives_the_constraint_to_its_threshold() -> None:
    rule = ConstrainedReward(arm_reward(TASK), [(arm_reward(COST), 0.6)], lr=0.1)
    history = []

    def logged(name: str, value: float) -> None:
        if name == "constrained/0/weight":
            history.append(value)

    pi = train_bandit(_Logged(rule, logged), 4, steps=600, beta=0.1, lr=2.0)
    assert abs(float(pi @ COST) - 0.6) < 0.03  # the constraint value sits at its threshold
    assert float(pi @ TASK) > 0.3  # and the task is still pursued (a pure-constraint policy would give 0.2)
    tail = np.array(history[-200:])
    assert tail.std() < 0.02 and 0.2 < tail.mean() < 0.8  # the multiplier settled at an interior value


def test_a_threshold_the_task_optimum_already_meets_leaves_the_task_unconstrained() -> None:
    rule = ConstrainedReward(arm_reward(TASK), [(arm_reward(COST), -1.0)], lr=0.1)
    pi = train_bandit(rule, 4, steps=600, beta=0.1, lr=2.0)
    assert rule.weights()[1] < 0.01  # the constraint weight decayed away
    # The unconstrained optimum of E[r] − β·KL(π‖uniform) is softmax(r/β).
    np.testing.assert_allclose(pi, softmax(TASK / 0.1), atol=0.03)


def test_constrained_state_round_trips_and_checks_its_size() -> None:
    rule = ConstrainedReward(arm_reward(TASK), [(arm_reward(COST), 0.6)])
    call(rule, [0, 0, 1])
    other = ConstrainedReward(arm_reward(TASK), [(arm_reward(COST), 0.6)])
    other.load_state_dict(rule.state_dict())
    assert other.logits == rule.logits != [0.0]
    with pytest.raises(ValueError, match="multipliers"):
        other.load_state_dict({"logits": [0.0, 0.0]})


class _Logged:
    """Calls a rule with a ``log_metric`` hook, as TRL does."""

    def __init__(self, rule: Any, hook: Any) -> None:
        self.rule, self.hook = rule, hook

    async def __call__(self, **kwargs: Any) -> list[float | None]:
        return await self.rule(log_metric=self.hook, **kwargs)


# ----- MaxMin-RLHF ------------------------------------------------------------------------------------------------
# Arms A, B, C. 80 users like A best, 20 like B best; C is decent for both.
UTILITY = {"majority": np.array([2.0, 0.0, 1.3]), "minority": np.array([0.0, 2.0, 1.3])}


def comparisons(utility: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows φ(y_w) − φ(y_l) over one-hot arms, labels drawn from Bradley–Terry with ``utility``."""
    pairs = np.array([rng.choice(3, size=2, replace=False) for _ in range(n)])
    a, b = pairs[:, 0], pairs[:, 1]
    a_wins = rng.random(n) < 1 / (1 + np.exp(utility[b] - utility[a]))
    winner, loser = np.where(a_wins, a, b), np.where(a_wins, b, a)
    rows = np.zeros((n, 3))
    rows[np.arange(n), winner], rows[np.arange(n), loser] = 1.0, -1.0
    return rows


@pytest.fixture(scope="module")
def users() -> tuple[list[np.ndarray], np.ndarray, Any]:
    """Comparisons of 80 majority and 20 minority users, their true groups, and the fitted mixture."""
    rng = np.random.default_rng(1)
    truth = np.array([0] * 80 + [1] * 20)
    data = [comparisons(UTILITY["majority" if t == 0 else "minority"], 40, rng) for t in truth]
    return data, truth, maxmin_em(data, 2)


def test_em_recovers_both_groups(users: tuple[list[np.ndarray], np.ndarray, Any]) -> None:
    _, truth, mix = users
    # Match fitted groups to true ones (labels are arbitrary), then compare centred reward vectors.
    if np.mean(mix.assignment == truth) < 0.5:
        mix.assignment, mix.thetas = 1 - mix.assignment, mix.thetas[::-1]
    assert np.mean(mix.assignment == truth) >= 0.95
    for h, name in enumerate(("majority", "minority")):
        true = UTILITY[name] - UTILITY[name].mean()
        cos = mix.thetas[h] @ true / np.linalg.norm(mix.thetas[h]) / np.linalg.norm(true)
        assert cos > 0.95


def test_pooled_reward_picks_the_majority_arm_and_maxmin_the_compromise(
    users: tuple[list[np.ndarray], np.ndarray, Any],
) -> None:
    data, _, mix = users
    pooled = fit_bradley_terry(np.concatenate(data))
    assert int(np.argmax(pooled)) == 0  # one BT model for everyone: the majority's favourite, A

    thetas = mix.thetas
    # The max-min policy as a linear program: maximise t subject to π·r_h >= t for every group, π on the simplex.
    res = linprog(
        c=[0, 0, 0, -1],
        A_ub=np.hstack([-thetas, np.ones((2, 1))]),
        b_ub=[0, 0],
        A_eq=[[1, 1, 1, 0]],
        b_eq=[1],
        bounds=[(0, 1)] * 3 + [(None, None)],
    )
    # Mostly C, the best for the worst-off group (the exact max-min policy may mix in a little of another arm).
    assert int(np.argmax(res.x[:3])) == 2 and res.x[2] > 0.9

    # The same answer from training a policy on MaxMinReward (each batch: the worst-off group's reward) ...
    maxmin = train_bandit(MaxMinReward([arm_reward(t) for t in thetas]), 3, steps=600, beta=0.02, lr=1.0)
    assert int(np.argmax(maxmin)) == 2 and maxmin[2] > 0.8
    # ... while the pooled reward trains towards A.
    single = train_bandit(arm_reward(pooled), 3, steps=600, beta=0.02, lr=1.0)
    assert int(np.argmax(single)) == 0


def test_maxmin_returns_the_worst_groups_rewards() -> None:
    rule = MaxMinReward([arm_reward([1.0, 0.0]), arm_reward([0.0, 0.5])])
    seen: dict[str, float] = {}
    out = call(rule, [0, 0, 1], log_metric=lambda k, v: seen.__setitem__(k, v))
    # Group means: 2/3 and 1/6 -> group 1 is worse off, and its rewards are returned.
    assert out.tolist() == [0.0, 0.0, 0.5] and seen["maxmin/worst_group"] == 1.0


# ----- Preference Orchestrator ------------------------------------------------------------------------------------
def test_orchestrator_weights_fixed_column_and_callable() -> None:
    r1, r2 = arm_reward([1.0, 2.0, 3.0]), arm_reward([10.0, 20.0, 30.0])
    fixed = call(OrchestratedReward([r1, r2], [0.25, 0.75]), [0, 1, 2])
    assert fixed.tolist() == pytest.approx([0.25 * 1 + 0.75 * 10, 0.25 * 2 + 0.75 * 20, 0.25 * 3 + 0.75 * 30])
    column = call(OrchestratedReward([r1, r2], "w"), [0, 1], w=[[1.0, 0.0], [0.5, 0.5]])
    assert column.tolist() == [1.0, 11.0]
    per_prompt = call(OrchestratedReward([r1, r2], lambda prompt, row: [0.0, 1.0]), [2])
    assert per_prompt.tolist() == [30.0]


def test_orchestrator_leaves_out_a_sample_a_weighted_component_could_not_score() -> None:
    def gappy(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float | None]:
        return [None if c == "1" else 1.0 for c in completions]

    out = asyncio.run(
        OrchestratedReward([gappy, arm_reward([5.0, 5.0])], [0.5, 0.5])(
            prompts=["p"] * 2, completions=["0", "1"]
        )
    )
    assert out == [3.0, None]  # TRL's own weighted sum (nansum) would have given 2.5 to the second sample


def test_adapter_learns_near_one_hot_weights_on_clustered_prompts() -> None:
    rng = np.random.default_rng(3)
    centres = {"code": np.array([3.0, 0.0]), "poetry": np.array([0.0, 3.0])}
    prompts, scores = [], []
    for kind, centre in centres.items():
        for _ in range(60):
            prompts.append(centre + rng.normal(scale=0.5, size=2))
            # Preferred responses to code prompts score high on RM 0 (correctness), to poetry prompts on RM 1 (style).
            good, other = rng.normal(2.0, 0.3), rng.normal(0.0, 0.3)
            scores.append([good, other] if kind == "code" else [other, good])
    adapter = WeightAdapter(lambda x: x).fit(prompts, np.array(scores))
    assert adapter(np.array([3.0, 0.0]))[0] > 0.9
    assert adapter(np.array([0.0, 3.0]))[1] > 0.9
    assert sum(adapter(np.array([1.5, 1.5]))) == pytest.approx(1.0)
