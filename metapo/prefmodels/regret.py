"""The regret preference model (Knox et al., arXiv 2206.02231) against the partial-return model, on a gridworld.

People who compare two trajectory segments seem to judge how *good the decisions* were, not only how much reward the
segment collected. With deterministic transitions, a segment ``σ = (s_0, a_0, …, s_T)`` under reward ``r`` has

- partial return ``Σ_t γ^t r(s_t, a_t)``, and the partial-return model ``P(σ1 ≻ σ2) = σ(Σr(σ1) − Σr(σ2))``;
- regret ``V*_r(s_0) − (Σ_t γ^t r(s_t, a_t) + γ^T V*_r(s_T)) = −Σ_t γ^t A*_r(s_t, a_t)``, and the regret model
  ``P(σ1 ≻ σ2) = σ(regret(σ2) − regret(σ1))``.

Two segments with the same partial return can differ in regret (one ends nearer the goal): the partial-return model
is indifferent, the regret model is not. Learning ``r`` by maximum likelihood under the regret model needs ``V*_r``,
computed here by value iteration, unrolled in torch so that gradients reach ``r``. Regret is invariant to
potential-based shaping, so the learned ``r`` is identified only up to shaping, which preserves the optimal policy.
Confidence: [R] (structure from the paper; the scale of the logistic is a parameter here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

ACTIONS = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right as (dx, dy)
ACTION_NAMES = ("up", "down", "left", "right")


@dataclass(frozen=True)
class GridWorld:
    """A deterministic gridworld with an absorbing goal.

    Moving into a border or a wall leaves the agent where it is. Every action outside the goal earns
    ``step_reward``; the goal is absorbing with reward 0.

    Attributes:
        width: Columns.
        height: Rows.
        goal: ``(x, y)`` of the goal.
        step_reward: Reward of each action outside the goal.
        walls: Blocked cells.
    """

    width: int = 4
    height: int = 4
    goal: tuple[int, int] = (3, 3)
    step_reward: float = -1.0
    walls: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    @property
    def n_states(self) -> int:
        return self.width * self.height

    def state(self, x: int, y: int) -> int:
        """State index of a cell."""
        return y * self.width + x

    def cell(self, s: int) -> tuple[int, int]:
        """Cell of a state index."""
        return s % self.width, s // self.width

    @property
    def goal_state(self) -> int:
        return self.state(*self.goal)

    def next_states(self) -> np.ndarray:
        """Deterministic transitions: ``next[s, a]``."""
        table = np.zeros((self.n_states, len(ACTIONS)), dtype=np.int64)
        for s in range(self.n_states):
            x, y = self.cell(s)
            for a, (dx, dy) in enumerate(ACTIONS):
                nx, ny = x + dx, y + dy
                blocked = not (0 <= nx < self.width and 0 <= ny < self.height) or (nx, ny) in self.walls
                table[s, a] = s if blocked or s == self.goal_state else self.state(nx, ny)
        return table

    def rewards(self) -> np.ndarray:
        """The true reward table ``r[s, a]``."""
        table = np.full((self.n_states, len(ACTIONS)), self.step_reward, dtype=np.float64)
        table[self.goal_state] = 0.0
        return table


def value_iteration(
    rewards: np.ndarray, next_states: np.ndarray, goal: int, *, gamma: float = 1.0, tol: float = 1e-12
) -> np.ndarray:
    """Optimal values ``V*`` by value iteration (to convergence, at most 100 000 sweeps).

    Args:
        rewards: ``r[s, a]``, shape ``(S, A)``.
        next_states: ``next[s, a]``, shape ``(S, A)``.
        goal: The absorbing goal state (value 0).
        gamma: Discount; 1 is fine when every state reaches the goal and rewards are negative.
        tol: Stop when no value moves by more than this.

    Returns:
        ``V*``, shape ``(S,)``.
    """
    values = np.zeros(rewards.shape[0])
    for _ in range(100_000):
        updated = (rewards + gamma * values[next_states]).max(axis=1)
        updated[goal] = 0.0
        if np.max(np.abs(updated - values)) <= tol:
            return updated
        values = updated
    return values


def _policy_values(rewards: np.ndarray, world: GridWorld, policy: np.ndarray, gamma: float) -> np.ndarray:
    n = world.n_states
    system = np.eye(n) - gamma * np.eye(n)[world.next_states()[np.arange(n), policy]]
    rhs = rewards[np.arange(n), policy].copy()
    system[world.goal_state] = np.eye(n)[world.goal_state]
    rhs[world.goal_state] = 0.0
    return np.linalg.solve(system, rhs)


def optimal_policy(rewards: np.ndarray, world: GridWorld, *, gamma: float = 1.0) -> np.ndarray:
    """An optimal deterministic policy (ties to the lowest action index).

    Policy iteration for ``γ < 1`` (a handful of exact linear solves); value iteration for ``γ = 1``.
    """
    next_states = world.next_states()
    if gamma >= 1:
        values = value_iteration(rewards, next_states, world.goal_state, gamma=gamma)
        return (rewards + gamma * values[next_states]).argmax(axis=1)
    policy = np.zeros(world.n_states, dtype=np.int64)
    for _ in range(1000):
        values = _policy_values(rewards, world, policy, gamma)
        q = rewards + gamma * values[next_states]
        best = q.argmax(axis=1)
        # Keep the current action unless another is strictly better: policy iteration then cannot cycle on ties.
        improved = np.where(
            q[np.arange(len(policy)), best] > q[np.arange(len(policy)), policy] + 1e-12, best, policy
        )
        if np.array_equal(improved, policy):
            return policy
        policy = improved
    return policy


def optimal_values(rewards: torch.Tensor, world: GridWorld, *, gamma: float = 1.0) -> torch.Tensor:
    """``V*_r`` as a differentiable function of ``r``.

    Value iteration finds an optimal policy π; then ``V* = (I − γP_π)^{-1} r_π`` is solved in torch. Its gradient is
    the gradient of ``V*`` wherever the optimal action is unique (the envelope theorem), without unrolling sweeps.
    """
    next_states = world.next_states()
    goal = world.goal_state
    policy = optimal_policy(rewards.detach().double().numpy(), world, gamma=gamma)
    n = world.n_states
    rows = torch.arange(n)
    transition = torch.zeros(n, n, dtype=rewards.dtype)
    transition[rows, torch.as_tensor(next_states[np.arange(n), policy])] = 1.0
    system = torch.eye(n, dtype=rewards.dtype) - gamma * transition
    rhs = rewards[rows, torch.as_tensor(policy)]
    system[goal] = 0.0
    system[goal, goal] = 1.0
    rhs = torch.where(rows == goal, torch.zeros_like(rhs), rhs)
    return torch.linalg.solve(system, rhs)


@dataclass(frozen=True)
class Segment:
    """A trajectory segment: a start state and the actions taken."""

    start: int
    actions: tuple[int, ...]


def rollout(segment: Segment, next_states: np.ndarray) -> list[int]:
    """The visited states ``s_0 … s_T``."""
    states = [segment.start]
    for a in segment.actions:
        states.append(int(next_states[states[-1], a]))
    return states


@dataclass(frozen=True)
class SegmentBatch:
    """Segments of one length as tensors, computed once: visited states, actions, first and last states."""

    states: torch.Tensor  # (N, T) states where each action is taken
    actions: torch.Tensor  # (N, T)
    starts: torch.Tensor  # (N,)
    ends: torch.Tensor  # (N,)

    @classmethod
    def of(cls, segments: Sequence[Segment], next_states: np.ndarray) -> SegmentBatch:
        if len({len(s.actions) for s in segments}) != 1:
            raise ValueError("segments compared in one batch must have the same length")
        paths = [rollout(s, next_states) for s in segments]
        return cls(
            states=torch.tensor([p[:-1] for p in paths], dtype=torch.long),
            actions=torch.tensor([list(s.actions) for s in segments], dtype=torch.long),
            starts=torch.tensor([p[0] for p in paths], dtype=torch.long),
            ends=torch.tensor([p[-1] for p in paths], dtype=torch.long),
        )


def partial_returns(rewards: torch.Tensor, batch: SegmentBatch, gamma: float = 1.0) -> torch.Tensor:
    """``Σ_t γ^t r(s_t, a_t)`` of each segment."""
    discounts = gamma ** torch.arange(batch.actions.shape[1], dtype=rewards.dtype)
    return (rewards[batch.states, batch.actions] * discounts).sum(-1)


def regrets(
    rewards: torch.Tensor, batch: SegmentBatch, values: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """``V*(s_0) − (Σ_t γ^t r(s_t, a_t) + γ^T V*(s_T))`` of each segment (0 for an optimal segment).

    Args:
        rewards: ``r[s, a]``.
        batch: The segments.
        values: ``V*_r`` (from :func:`value_iteration` on the same ``rewards``).
        gamma: Discount.
    """
    horizon = batch.actions.shape[1]
    return values[batch.starts] - (
        partial_returns(rewards, batch, gamma) + gamma**horizon * values[batch.ends]
    )


def preference_logits(
    rewards: torch.Tensor,
    first: SegmentBatch,
    second: SegmentBatch,
    world: GridWorld,
    *,
    model: str = "regret",
    gamma: float = 1.0,
) -> torch.Tensor:
    """Logit of ``P(first ≻ second)`` for each pair under the ``"regret"`` or ``"partial_return"`` model."""
    if model == "partial_return":
        return partial_returns(rewards, first, gamma) - partial_returns(rewards, second, gamma)
    if model != "regret":
        raise ValueError(f"model must be 'regret' or 'partial_return', got {model!r}")
    values = optimal_values(rewards, world, gamma=gamma)
    return regrets(rewards, second, values, gamma) - regrets(rewards, first, values, gamma)


def fit_rewards(
    world: GridWorld,
    first: Sequence[Segment],
    second: Sequence[Segment],
    labels: Sequence[float],
    *,
    model: str = "regret",
    gamma: float = 0.9,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """Maximum-likelihood reward table under a preference model.

    Args:
        world: The gridworld (its transitions; its rewards are not used).
        first: First segments of the pairs.
        second: Second segments.
        labels: ``P(first ≻ second)`` per pair: 0/1 labels, or probabilities (the infinite-data limit).
        model: ``"regret"`` or ``"partial_return"``.
        gamma: Discount of the value iteration (``< 1`` keeps ``V*`` finite while ``r`` is still wrong).
        steps: Adam steps.
        lr: Adam learning rate.
        seed: Seed of the small random initial rewards.

    Returns:
        The learned ``r[s, a]`` (the goal row fixed at 0).
    """
    first_batch = SegmentBatch.of(first, world.next_states())
    second_batch = SegmentBatch.of(second, world.next_states())
    generator = torch.Generator().manual_seed(seed)
    params = (
        0.01 * torch.randn(world.n_states, len(ACTIONS), generator=generator, dtype=torch.float64)
    ).requires_grad_()
    mask = torch.ones(world.n_states, 1, dtype=torch.float64)
    mask[world.goal_state] = 0.0
    target = torch.tensor(list(labels), dtype=torch.float64)
    optimizer = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = preference_logits(params * mask, first_batch, second_batch, world, model=model, gamma=gamma)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        optimizer.step()
    return (params * mask).detach()


def greedy_policy(rewards: torch.Tensor, world: GridWorld, gamma: float) -> np.ndarray:
    """The greedy action of every state under ``rewards`` (ties to the lowest action index)."""
    return optimal_policy(rewards.detach().double().numpy(), world, gamma=gamma)


def policy_values(policy: np.ndarray, world: GridWorld, gamma: float, *, horizon: int = 10_000) -> np.ndarray:
    """Value of a deterministic policy under the world's true rewards, by following it for ``horizon`` steps."""
    next_states = world.next_states()
    rewards = world.rewards()
    values = np.zeros(world.n_states)
    for _ in range(horizon):
        updated = np.array(
            [rewards[s, policy[s]] + gamma * values[next_states[s, policy[s]]] for s in range(world.n_states)]
        )
        updated[world.goal_state] = 0.0
        if np.allclose(updated, values, atol=0, rtol=0):
            break
        values = updated
    return values
