"""Tabular checks of the Nash-family methods: every update against an independently computed answer.

Expected values are derived here, never copied: minimax winners by hand (``(b, c, a)`` for generalised
rock-paper-scissors), regularised equilibria by a second solver (damped fixed-point iteration), population
minimisers of the registered losses by BFGS against each paper's closed form, APO's coefficients by a hand
recursion. The printed figures (``-s``) are the ones quoted in the README.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from metapo.online.games import PreferenceGame, bradley_terry, kl, minimax_winner, rock_paper_scissors
from metapo.online.spo import SelfPlayWinRate
from metapo.online.tabular import (
    GameOracle,
    apo_iterates,
    apo_loss,
    dpo_loss,
    inpo_loss,
    iterate,
    iterative_dpo_step,
    minimize_policy,
    nash_md_step,
    nash_mp_half_step,
    nash_mp_loss,
    nash_mp_step,
    omd_step,
    online_dpo_iterates,
    online_ipo_iterates,
    online_ipo_loss,
    running_average,
    spo_self_play,
    sppo_loss,
    sppo_step,
)

RPS = rock_paper_scissors(0.6, 0.3, 0.9)
REF = np.array([0.5, 0.3, 0.2])
WINNER = np.array([0.3, 0.9, 0.6]) / 1.8  # (b, c, a)/(a + b + c), by hand


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tensors of nine entries: torch's thread pool only adds latency on a shared CPU.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _dirichlet(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(2.0 * np.ones(3))


def _damped_nash(game: PreferenceGame, damping: float = 0.05, steps: int = 20000) -> np.ndarray:
    """A second, independent solver: damped iteration of ``π ← (1−λ)π + λ·softmax(log ref + Pπ/β)``."""
    pi = game.reference.copy()
    for _ in range(steps):
        pi = (1 - damping) * pi + damping * softmax(game.log_reference + game.P @ pi / game.beta)
    return pi


# ----- the game ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b,c", [(1.0, 1.0, 1.0), (0.6, 0.3, 0.9), (0.2, 1.0, 0.5)])
def test_minimax_winner_of_generalised_rps_is_b_c_a(a, b, c):
    P = rock_paper_scissors(a, b, c)
    pi, value = minimax_winner(P)
    np.testing.assert_allclose(pi, np.array([b, c, a]) / (a + b + c), atol=1e-9)
    assert value == pytest.approx(0.5, abs=1e-9)
    np.testing.assert_allclose(P @ pi, 0.5, atol=1e-9)  # no action is preferred to the winner


def test_minimax_winner_of_an_asymmetric_game_matches_the_hand_solution():
    # Row payoffs [[3, −1], [−2, 1]]: the row player makes the column player indifferent,
    # 3p − 2(1−p) = −p + (1−p), so p = 3/7 and the value is 1/7.
    pi, value = minimax_winner(np.array([[3.0, -1.0], [-2.0, 1.0]]))
    np.testing.assert_allclose(pi, [3 / 7, 4 / 7], atol=1e-9)
    assert value == pytest.approx(1 / 7, abs=1e-9)


def test_bradley_terry_matrix_is_transitive_and_its_winner_is_the_best_action():
    P = bradley_terry(np.array([0.2, 1.5, -0.3]))
    np.testing.assert_allclose(P + P.T, 1.0)
    pi, value = minimax_winner(P)
    np.testing.assert_allclose(pi, [0, 1, 0], atol=1e-9)  # a Condorcet winner is the minimax winner
    assert value == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.1])
def test_regularised_nash_agrees_with_damped_iteration_and_has_zero_gap(beta):
    game = PreferenceGame(RPS, REF, beta)
    nash = game.nash()
    np.testing.assert_allclose(nash, _damped_nash(game), atol=1e-9)
    np.testing.assert_allclose(nash, game.best_response(nash), atol=1e-12)
    assert abs(game.duality_gap(nash)) < 1e-12
    for seed in range(5):
        assert game.duality_gap(_dirichlet(seed)) > 1e-4


def test_regularised_nash_tends_to_the_minimax_winner_as_beta_vanishes():
    distances = [np.abs(PreferenceGame(RPS, REF, beta).nash() - WINNER).sum() for beta in (0.1, 0.01, 0.001)]
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 0.01


def test_duality_gap_matches_its_log_sum_exp_closed_form():
    # max_p pᵀr − βKL(p‖ref) = β·log Σ ref·e^{r/β}; the minimiser's side is the same with r = −Pᵀπ.
    game = PreferenceGame(RPS, REF, 0.2)
    for seed in range(5):
        pi = _dirichlet(seed)
        expected = (
            game.beta * logsumexp(game.P @ pi / game.beta, b=REF)
            + game.beta * logsumexp(-game.P.T @ pi / game.beta, b=REF)
            + 2 * game.beta * kl(pi, REF)
        )
        assert game.duality_gap(pi) == pytest.approx(expected, abs=1e-12)


def test_unregularised_gap_is_twice_the_best_advantage():
    game = PreferenceGame(RPS, None, 0.0)
    pi = _dirichlet(3)
    assert game.duality_gap(pi) == pytest.approx(2 * (np.max(RPS @ pi) - 0.5), abs=1e-12)
    assert game.duality_gap(WINNER) == pytest.approx(0.0, abs=1e-12)


# ----- INPO ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.2, 1.0])
def test_inpo_population_minimiser_is_the_closed_form_omd_step(eta):
    game = PreferenceGame(RPS, _dirichlet(10), 0.1)
    previous = _dirichlet(11)
    minimiser = minimize_policy(inpo_loss(game, previous, eta), previous)
    np.testing.assert_allclose(minimiser, omd_step(game, previous, eta), atol=1e-8)
    assert np.abs(minimiser - previous).max() > 0.01  # the step moved


# ----- SPPO and GPO ------------------------------------------------------------------------------------------


def test_sppo_minimax_winner_is_a_fixed_point_of_update_and_loss():
    game = PreferenceGame(RPS, REF, 0.1)
    np.testing.assert_allclose(sppo_step(game, WINNER, 1.0), WINNER, atol=1e-12)
    np.testing.assert_allclose(minimize_policy(sppo_loss(game, WINNER, 1.0), WINNER), WINNER, atol=1e-8)


def test_sppo_loss_minimiser_matches_the_multiplicative_weights_step_to_third_order():
    # The loss replaces log Z by η/2; the mismatch this leaves in the minimiser is O(η³) (derived by expanding
    # the constrained least squares), so halving η must cut it about eightfold.
    game = PreferenceGame(RPS, REF, 0.1)
    previous = _dirichlet(4)
    errors = []
    for eta in (0.5, 0.25):
        minimiser = minimize_policy(sppo_loss(game, previous, 1.0 / eta), previous)
        errors.append(np.abs(minimiser - sppo_step(game, previous, eta)).max())
    print(f"\nSPPO minimiser vs closed form: error {errors[0]:.2e} at η=0.5, {errors[1]:.2e} at η=0.25")
    assert 6.0 < errors[0] / errors[1] < 10.0
    assert errors[0] < 1e-4


def test_sppo_time_average_approaches_the_minimax_winner():
    unregularised = PreferenceGame(RPS, None, 0.0)
    policies = iterate(lambda pi: sppo_step(unregularised, pi, 1.0), REF, 1000)
    averages = running_average(policies)
    gaps = [unregularised.duality_gap(averages[t]) for t in (10, 100, 1000)]
    print(
        f"\nSPPO time-average gap at t=10/100/1000: {gaps}; last iterate {unregularised.duality_gap(policies[-1])}"
    )
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02
    assert (
        unregularised.duality_gap(policies[-1]) > 0.1
    )  # the last iterate cycles: only the average converges


def test_gpo_with_scores_2p_minus_1_is_sppo_at_half_the_beta():
    # s = 2P − 1 is antisymmetric, and s̄/β = (P(y≻π) − ½)/(β/2): the two losses have one minimiser.
    game = PreferenceGame(RPS, REF, 0.1)
    previous = _dirichlet(5)
    gpo = minimize_policy(sppo_loss(game, previous, 2.0, scores=2 * RPS - 1), previous)
    sppo = minimize_policy(sppo_loss(game, previous, 1.0), previous)
    np.testing.assert_allclose(gpo, sppo, atol=1e-8)


def test_gpo_fixed_point_is_the_minimax_winner_of_the_score_game():
    scores = np.log(RPS / RPS.T)  # logit P: antisymmetric, with a different winner than P itself
    winner, value = minimax_winner(scores)
    assert value == pytest.approx(0.0, abs=1e-9)
    assert np.abs(winner - WINNER).sum() > 0.05
    game = PreferenceGame(RPS, REF, 0.1)
    np.testing.assert_allclose(
        minimize_policy(sppo_loss(game, winner, 1.0, scores=scores), winner), winner, atol=1e-7
    )


# ----- APO -----------------------------------------------------------------------------------------------------


def _apo_coefficients(alpha: float, steps: int) -> list[float]:
    """By hand: with log π_t = log π_0 + c_t·r/β, a DPO step adds 1 (ĉ_{t+1} = c_t + 1) and the momentum gives
    c_{t+1} = (1+α)·ĉ_{t+1} − α·ĉ_t, with ĉ_0 = c_0 = 0."""
    c, hats = [0.0], [0.0]
    for _ in range(steps):
        hats.append(c[-1] + 1.0)
        c.append((1 + alpha) * hats[-1] - alpha * hats[-2])
    return c


def _fitted_coefficients(policies, pi0, direction):
    centred = direction - direction.mean()
    return [float((np.log(p) - np.log(pi0)) @ centred / (centred @ centred)) for p in policies]


def test_apo_coefficients_follow_the_hand_recursion_and_alpha_zero_is_iterative_dpo():
    rewards, beta = np.array([1.0, 0.0, -0.5]), 0.5
    game = PreferenceGame(bradley_terry(rewards), REF, beta)

    def dpo_step(pi):
        return iterative_dpo_step(game, pi, rewards, beta)

    plain, _ = apo_iterates(dpo_step, REF, 0.0, 4)
    for mine, theirs in zip(plain, iterate(dpo_step, REF, 4), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-12)
    np.testing.assert_allclose(_fitted_coefficients(plain, REF, rewards / beta), [0, 1, 2, 3, 4], atol=1e-9)

    accelerated, _ = apo_iterates(dpo_step, REF, 0.5, 4)
    coefficients = _fitted_coefficients(accelerated, REF, rewards / beta)
    np.testing.assert_allclose(coefficients, _apo_coefficients(0.5, 4), atol=1e-9)
    np.testing.assert_allclose(coefficients[:4], [0.0, 1.5, 3.25, 5.125], atol=1e-9)
    increments = np.diff(coefficients)
    assert np.all(np.diff(increments) > 0)  # faster than linear (towards slope 1/(1−α))
    print(f"\nAPO coefficient of r/β at α=0.5: {np.round(coefficients, 4).tolist()} (α=0: 0, 1, 2, 3, 4)")


def test_apo_loss_minimiser_is_the_dpo_step_from_the_extrapolated_reference():
    rewards, beta, alpha = np.array([1.0, 0.0, -0.5]), 0.5, 0.3
    game = PreferenceGame(bradley_terry(rewards), REF, beta)
    latest, earlier = _dirichlet(6), _dirichlet(7)
    extrapolated = softmax((1 + alpha) * np.log(latest) - alpha * np.log(earlier))
    minimiser = minimize_policy(apo_loss(game, latest, earlier, beta, alpha), latest)
    np.testing.assert_allclose(minimiser, iterative_dpo_step(game, extrapolated, rewards, beta), atol=1e-7)
    plain = minimize_policy(apo_loss(game, latest, earlier, beta, 0.0), latest)
    np.testing.assert_allclose(plain, iterative_dpo_step(game, latest, rewards, beta), atol=1e-7)


# ----- online DPO and XPO --------------------------------------------------------------------------------------


def test_online_dpo_converges_to_the_kl_regularised_optimum_of_a_bradley_terry_game():
    rewards, beta = np.array([1.0, 0.0, -0.5]), 0.5
    game = PreferenceGame(bradley_terry(rewards), REF, beta)
    policies = online_dpo_iterates(game, np.log(REF), beta, 30.0, 300)
    np.testing.assert_allclose(policies[-1], softmax(np.log(REF) + rewards / beta), atol=1e-6)


def test_xpo_with_alpha_zero_is_online_dpo_and_its_bonus_pushes_reference_actions_down():
    rewards, beta, lr, alpha = np.array([1.0, 0.0, -0.5]), 0.5, 2.0, 0.1
    game = PreferenceGame(bradley_terry(rewards), REF, beta)
    start = np.log(_dirichlet(8))
    dpo_run = online_dpo_iterates(game, start, beta, lr, 5)
    xpo_zero = online_dpo_iterates(game, start, beta, lr, 5, alpha=0.0)
    for a, b in zip(dpo_run, xpo_zero, strict=True):
        np.testing.assert_array_equal(a, b)
    # One step apart: d/dθ [α·Σ ref·log softmax(θ)] = α·(ref − π), so XPO's logits trail DPO's by lr·α·(ref − π).
    dpo_step, xpo_step = dpo_run[1], online_dpo_iterates(game, start, beta, lr, 1, alpha=alpha)[1]
    shift = np.log(xpo_step) - np.log(dpo_step)
    expected = -lr * alpha * (REF - softmax(start))
    np.testing.assert_allclose(shift - shift.mean(), expected - expected.mean(), atol=1e-10)
    assert dpo_loss(game, REF, REF, beta, alpha=alpha)(torch_log(REF)) < dpo_loss(game, REF, REF, beta)(
        torch_log(REF)
    )


def torch_log(pi):
    import torch

    return torch.log(torch.as_tensor(pi, dtype=torch.float64))


# ----- EGPO ----------------------------------------------------------------------------------------------------


def test_online_ipo_population_minimiser_is_the_regularised_best_response():
    game = PreferenceGame(RPS, REF, 0.1)
    sampler, opponent = _dirichlet(1), _dirichlet(2)
    minimiser = minimize_policy(online_ipo_loss(game, sampler, opponent), sampler)
    np.testing.assert_allclose(minimiser, game.best_response(opponent), atol=1e-8)


def test_egpo_last_iterate_reaches_the_regularised_equilibrium_where_online_ipo_cycles():
    game = PreferenceGame(RPS, REF, 0.01)
    nash = game.nash()
    egpo = online_ipo_iterates(game, np.log(REF), 0.04, 200, extragradient=True)
    plain = online_ipo_iterates(game, np.log(REF), 0.04, 200, extragradient=False)
    egpo_gaps = [game.duality_gap(p) for p in egpo]
    print(
        "\nEGPO (β=0.01, lr=0.04), every 40 iterations: gap "
        + ", ".join(f"{g:.1e}" for g in egpo_gaps[::40])
        + "; KL to NE "
        + ", ".join(f"{kl(nash, p):.1e}" for p in egpo[::40])
        + "\nonline IPO, same setting: gap "
        + ", ".join(f"{game.duality_gap(p):.1e}" for p in plain[::40])
    )
    assert egpo_gaps[-1] < 1e-10
    assert kl(nash, egpo[-1]) < 1e-10
    assert min(game.duality_gap(p) for p in plain[-50:]) > 0.01


# ----- Nash-MP -------------------------------------------------------------------------------------------------


def test_nash_mp_regression_loss_minimiser_is_the_proximal_step():
    game = PreferenceGame(RPS, REF, 0.1)
    anchor, opponent, eta = _dirichlet(12), _dirichlet(13), 1.5
    minimiser = minimize_policy(nash_mp_loss(game, anchor, opponent, eta), anchor)
    np.testing.assert_allclose(minimiser, nash_mp_half_step(game, anchor, opponent, eta), atol=1e-8)


@pytest.mark.parametrize("step", [omd_step, nash_mp_step], ids=["omd", "nash_mp"])
def test_regularised_nash_is_a_fixed_point_of_omd_and_nash_mp(step):
    game = PreferenceGame(RPS, REF, 0.1)
    nash = game.nash()
    eta = 2.0 if step is omd_step else 0.5  # OMD's η is an inverse step size (η ≥ β)
    np.testing.assert_allclose(step(game, nash, eta), nash, atol=1e-10)
    assert np.abs(step(game, REF, eta) - REF).max() > 1e-3


def test_nash_md_fixed_point_is_biased_by_its_mixture_and_the_bias_vanishes_with_eta():
    # At a fixed point, β·log π = β·log ref + P·μ + c with μ ∝ π^{1−ηβ}·ref^{ηβ} (from the update's closed form):
    # the regularised equilibrium only as η → 0.
    game = PreferenceGame(RPS, REF, 0.1)
    nash = game.nash()
    distances = []
    for eta in (1.0, 0.25):
        limit = iterate(lambda p, e=eta: nash_md_step(game, p, e), REF, 3000)[-1]
        mixture = softmax((1 - eta * game.beta) * np.log(limit) + eta * game.beta * np.log(REF))
        np.testing.assert_allclose(limit, softmax(np.log(REF) + RPS @ mixture / game.beta), atol=1e-9)
        distances.append(kl(nash, limit))
    assert distances[0] > distances[1] > 0


def test_nash_mp_kl_decays_geometrically_and_faster_than_omd_and_nash_md():
    game = PreferenceGame(RPS, REF, 0.1)
    nash = game.nash()
    for eta in (0.5, 1.0, 2.0):
        mp = np.array([kl(nash, p) for p in iterate(lambda p, e=eta: nash_mp_step(game, p, e), REF, 40)])
        ratios = mp[11:] / mp[10:-1]
        omd = kl(nash, iterate(lambda p, e=eta: omd_step(game, p, 1.0 / e), REF, 40)[-1])
        md = kl(nash, iterate(lambda p, e=eta: nash_md_step(game, p, e), REF, 40)[-1])
        print(
            f"\nNash-MP η={eta}: KL every 10 steps "
            + ", ".join(f"{k:.2e}" for k in mp[::10])
            + ", per-step ratio "
            f"{ratios.mean():.4f} (1/(1+ηβ)² = {(1 + eta * game.beta) ** -2:.4f}); at 40 steps OMD {omd:.2e}, "
            f"Nash-MD {md:.2e}"
        )
        assert ratios.max() < 1 and ratios.max() - ratios.min() < 0.02  # a constant ratio: geometric decay
        assert mp[40] < omd < md


# ----- SPO -----------------------------------------------------------------------------------------------------


def test_spo_reward_is_an_unbiased_win_rate_against_the_policy():
    # Enumerate every group of three samples exactly: E[r(y_1) | y_1 = a] must equal P(a ≻ π).
    pi = _dirichlet(9)
    reward = SelfPlayWinRate(GameOracle(RPS))
    expected = np.zeros(3)
    for group in itertools.product(range(3), repeat=3):
        weight = np.prod(pi[list(group)])
        r = asyncio.run(reward(["x"] * 3, [str(a) for a in group]))
        expected[group[0]] += weight * r[0]
    np.testing.assert_allclose(expected / pi, RPS @ pi, atol=1e-12)


def test_spo_reward_has_no_advantage_at_the_minimax_winner_only():
    assert np.allclose(RPS @ WINNER, 0.5)  # every action's expected reward is ½: a rest point of self-play
    for seed in range(5):
        assert np.ptp(RPS @ _dirichlet(seed)) > 0.01


def test_spo_self_play_time_average_approaches_the_minimax_winner():
    game = PreferenceGame(RPS, None, 0.0)
    policies = spo_self_play(game, np.zeros(3), lr=0.3, iterations=600, group_size=4, groups=16, seed=0)
    average = running_average(policies)[-1]
    start_gap = game.duality_gap(policies[0])
    print(
        f"\nSPO self-play: averaged policy {np.round(average, 3)} vs winner {np.round(WINNER, 3)}, gap "
        f"{game.duality_gap(average):.3f} (uniform start {start_gap:.3f})"
    )
    assert game.duality_gap(average) < 0.04 < start_gap
    assert np.abs(average - WINNER).sum() < 0.12


def test_spo_self_play_finds_a_condorcet_winner():
    # With transitive preferences the minimax winner is the best action: self-play must climb to it (a cycle
    # around an interior equilibrium, as in rock-paper-scissors, would not tell ascent from descent).
    game = PreferenceGame(bradley_terry(np.array([0.0, 1.0, -1.0]), temperature=0.5), None, 0.0)
    policies = spo_self_play(game, np.zeros(3), lr=0.3, iterations=150, group_size=4, groups=16, seed=0)
    assert policies[-1][1] > 0.9
