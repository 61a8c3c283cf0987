"""The regret preference model against the partial-return model on gridworlds with hand-derivable values."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from metapo.prefmodels.regret import (
    GridWorld,
    Segment,
    SegmentBatch,
    fit_rewards,
    greedy_policy,
    optimal_values,
    policy_values,
    preference_logits,
    value_iteration,
)

UP, DOWN, LEFT, RIGHT = range(4)


def test_optimal_values_are_minus_the_manhattan_distance() -> None:
    world = GridWorld(5, 4, goal=(4, 3))
    values = value_iteration(world.rewards(), world.next_states(), world.goal_state)
    for s in range(world.n_states):
        x, y = world.cell(s)
        assert values[s] == -(abs(4 - x) + abs(3 - y))
    # The differentiable solve agrees with value iteration.
    np.testing.assert_allclose(optimal_values(torch.tensor(world.rewards()), world).numpy(), values)
    # The goal is terminal: a reward written on its row is never collected.
    rewards = world.rewards()
    rewards[world.goal_state] = 5.0
    np.testing.assert_array_equal(value_iteration(rewards, world.next_states(), world.goal_state), values)


def test_equal_partial_return_different_regret() -> None:
    """Two 2-step segments from the same cell, both with return −2: one walks to the goal, one away from it."""
    world = GridWorld(5, 5, goal=(4, 2))
    start = world.state(2, 2)
    toward = SegmentBatch.of([Segment(start, (RIGHT, RIGHT))], world.next_states())
    away = SegmentBatch.of([Segment(start, (LEFT, LEFT))], world.next_states())
    rewards = torch.tensor(world.rewards())
    partial = preference_logits(rewards, toward, away, world, model="partial_return")
    regret = preference_logits(rewards, toward, away, world, model="regret")
    assert float(torch.sigmoid(partial)) == 0.5
    # By hand: V*(2,2) = −2. Toward ends at the goal: regret −2 − (−2 + 0) = 0. Away ends at (0,2), V* = −4:
    # regret −2 − (−2 − 4) = 4. P(toward ≻ away) = σ(4 − 0).
    assert float(regret) == pytest.approx(4.0)
    assert float(torch.sigmoid(regret)) == pytest.approx(1 / (1 + math.exp(-4)))


def test_regret_is_invariant_to_potential_shaping() -> None:
    """Adding γΦ(s') − Φ(s) to every reward changes partial returns but not regrets."""
    world = GridWorld(3, 3, goal=(2, 2))
    gamma = 0.9
    rng = np.random.default_rng(0)
    potential = rng.normal(size=world.n_states)
    potential[world.goal_state] = 0.0
    shaped = world.rewards() + gamma * potential[world.next_states()] - potential[:, None]
    shaped[world.goal_state] = 0.0
    segments = [Segment(s, (RIGHT, DOWN)) for s in range(world.n_states) if s != world.goal_state]
    others = [Segment(s, (UP, LEFT)) for s in range(world.n_states) if s != world.goal_state]
    first, second = (
        SegmentBatch.of(segments, world.next_states()),
        SegmentBatch.of(others, world.next_states()),
    )
    kwargs = {"gamma": gamma}
    plain = preference_logits(torch.tensor(world.rewards()), first, second, world, **kwargs)
    moved = preference_logits(torch.tensor(shaped), first, second, world, **kwargs)
    np.testing.assert_allclose(moved.numpy(), plain.numpy(), atol=1e-9)
    partial_plain = preference_logits(
        torch.tensor(world.rewards()), first, second, world, model="partial_return", **kwargs
    )
    partial_moved = preference_logits(
        torch.tensor(shaped), first, second, world, model="partial_return", **kwargs
    )
    assert not np.allclose(partial_plain.numpy(), partial_moved.numpy())


@pytest.mark.slow
def test_rewards_learned_under_the_regret_model_give_an_optimal_policy() -> None:
    """Identifiability: fit r on regret preferences in the infinite-data limit (exact probabilities as labels)."""
    world = GridWorld(3, 3, goal=(2, 2))
    gamma = 0.9
    segments = [
        Segment(s, actions)
        for s in range(world.n_states)
        if s != world.goal_state
        for actions in itertools.product(range(4), repeat=2)
    ]
    rng = random.Random(0)
    pairs = [rng.sample(segments, 2) for _ in range(600)]
    first, second = [p[0] for p in pairs], [p[1] for p in pairs]
    batches = SegmentBatch.of(first, world.next_states()), SegmentBatch.of(second, world.next_states())
    true_logits = preference_logits(torch.tensor(world.rewards()), *batches, world, gamma=gamma)
    labels = torch.sigmoid(true_logits).tolist()

    learned = fit_rewards(world, first, second, labels, gamma=gamma, steps=150, lr=0.1)
    policy = greedy_policy(learned, world, gamma)
    optimal = value_iteration(world.rewards(), world.next_states(), world.goal_state, gamma=gamma)
    np.testing.assert_allclose(policy_values(policy, world, gamma), optimal, atol=1e-9)
    # The learned model reproduces the preference probabilities it was fitted to.
    fitted = torch.sigmoid(preference_logits(learned, *batches, world, gamma=gamma))
    assert float((fitted - torch.tensor(labels, dtype=fitted.dtype)).abs().max()) < 0.02
