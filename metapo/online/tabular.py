"""Every Nash-family method on a tabular preference game, where its exact behaviour can be checked.

Two kinds of update live here:

- **closed forms**, the idealised update each paper derives (numpy, on policies): OMD/INPO, SPPO, Nash-MD,
  Nash-MP and APO's momentum;
- **population losses**, the registered objective functions of :mod:`metapo.objectives` evaluated on every pair of
  actions with its exact probability (torch, differentiable in the policy's logits). Minimising one of them is
  what a language-model round does with samples; on a table it can be done exactly, so a test can compare the
  minimiser with the closed form. EGPO, online DPO/IPO and XPO are gradient dynamics on these losses.

Sampling: pairs ``(y, y')`` are drawn independently from a sampling policy and ``y`` is labelled the winner with
probability ``P(y ≻ y')`` (:func:`labelled_pairs`); soft-target losses take every ordered pair with weight
``μ(y)μ(y')`` (:func:`all_pairs`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import softmax

from metapo.objectives import apo, dpo, inpo, nash_mp, online_ipo, sppo

from .games import Array, PreferenceGame

PopulationLoss = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Closed-form updates
# ---------------------------------------------------------------------------------------------------------------


def _normalise(log_pi: Array) -> Array:
    return softmax(log_pi)


def omd_step(game: PreferenceGame, pi: Array, eta: float) -> Array:
    """Online mirror descent on the regularised game: ``π' ∝ π^{1−τ/η}·ref^{τ/η}·exp(P(·≻π)/η)``, τ = β.

    This is INPO's update (η is INPO's inverse step size); it needs ``η ≥ β``.
    """
    weight = game.beta / eta
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"OMD needs eta >= beta, got eta={eta}, beta={game.beta}")
    return _normalise((1 - weight) * np.log(pi) + weight * game.log_reference + game.preference(pi) / eta)


def sppo_step(game: PreferenceGame, pi: Array, eta: float) -> Array:
    """SPPO's idealised update, multiplicative weights on the win rate: ``π' ∝ π·exp(η·P(·≻π))`` (no reference)."""
    return _normalise(np.log(pi) + eta * game.preference(pi))


def nash_md_step(game: PreferenceGame, pi: Array, eta: float) -> Array:
    """Nash-MD (Munos et al., arXiv 2312.00886): a step against the geometric mixture ``π^{1−ηβ}·ref^{ηβ}``.

    ``μ ∝ π^{1−ηβ}·ref^{ηβ}`` and ``π' ∝ μ·exp(η·P(·≻μ))``; needs ``ηβ ≤ 1``.
    """
    if not 0.0 <= eta * game.beta <= 1.0:
        raise ValueError(f"Nash-MD needs eta*beta <= 1, got {eta * game.beta}")
    mixture = _normalise((1 - eta * game.beta) * np.log(pi) + eta * game.beta * game.log_reference)
    return _normalise(np.log(mixture) + eta * game.preference(mixture))


def nash_mp_half_step(game: PreferenceGame, anchor: Array, opponent: Array, eta: float) -> Array:
    """``argmax_π η·P(π ≻ opponent) − ηβ·KL(π‖ref) − KL(π‖anchor)``, in closed form.

    ``log π = [log anchor + ηβ·log ref + η·P(·≻opponent)]/(1+ηβ) + c``.
    """
    numerator = np.log(anchor) + eta * game.beta * game.log_reference + eta * game.preference(opponent)
    return _normalise(numerator / (1.0 + eta * game.beta))


def nash_mp_step(game: PreferenceGame, pi: Array, eta: float) -> Array:
    """Nash-MP (mirror prox): a half step against ``π_k``, then a full step from ``π_k`` against the half step."""
    half = nash_mp_half_step(game, pi, pi, eta)
    return nash_mp_half_step(game, pi, half, eta)


def iterative_dpo_step(game: PreferenceGame, pi: Array, rewards: Array, beta: float) -> Array:
    """The DPO population optimum against reference ``π`` when ``P`` is Bradley–Terry in ``rewards``: ``π·e^{r/β}``.

    ``game`` is unused but kept so every closed form has the same call shape.
    """
    del game
    return _normalise(np.log(pi) + np.asarray(rewards, dtype=float) / beta)


def apo_iterates(
    proximal: Callable[[Array], Array], pi0: Array, alpha: float, iterations: int
) -> tuple[list[Array], list[Array]]:
    """APO's outer loop: a proximal step from the extrapolated policy, then Nesterov extrapolation.

    ``π̂_{t+1} = proximal(π_t)`` and ``log π_{t+1} = (1+α)·log π̂_{t+1} − α·log π̂_t + c``, with ``π̂_0 = π_0``.

    Args:
        proximal: One proximal step, e.g. ``lambda pi: iterative_dpo_step(game, pi, r, beta)``.
        pi0: Initial policy.
        alpha: Momentum α (0 is the plain iteration).
        iterations: Number of steps.

    Returns:
        ``(policies π_0..π_T, proximal iterates π̂_0..π̂_T)``.
    """
    policies, hats = [np.asarray(pi0, dtype=float)], [np.asarray(pi0, dtype=float)]
    for _ in range(iterations):
        hat = proximal(policies[-1])
        policies.append(_normalise((1 + alpha) * np.log(hat) - alpha * np.log(hats[-1])))
        hats.append(hat)
    return policies, hats


def iterate(step: Callable[[Array], Array], pi0: Array, iterations: int) -> list[Array]:
    """``[π_0, step(π_0), step(step(π_0)), …]`` (``iterations + 1`` policies)."""
    out = [np.asarray(pi0, dtype=float)]
    for _ in range(iterations):
        out.append(step(out[-1]))
    return out


def running_average(policies: list[Array]) -> list[Array]:
    """Time averages ``(1/t)·Σ_{s<t} π_s`` for ``t = 1..T``: what no-regret dynamics converge in."""
    stacked = np.cumsum(np.asarray(policies), axis=0)
    return [row / (i + 1) for i, row in enumerate(stacked)]


# ---------------------------------------------------------------------------------------------------------------
# Population losses: the registered objectives on every pair, weighted by its probability
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Ordered action pairs ``(chosen[k], rejected[k])`` with probability ``weight[k]``."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    weight: torch.Tensor


def labelled_pairs(sampler: Array, P: Array) -> Pairs:
    """``y, y' ∼ sampler`` independently, ``y`` labelled the winner with probability ``P(y ≻ y')``.

    Every ordered pair ``(i, j)`` appears as (chosen ``i``, rejected ``j``) with weight ``μ_i·μ_j·P_ij``.
    """
    n = len(sampler)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    weight = np.outer(sampler, sampler) * P
    return Pairs(
        torch.as_tensor(i.ravel()),
        torch.as_tensor(j.ravel()),
        torch.as_tensor(weight.ravel(), dtype=torch.float64),
    )


def all_pairs(sampler: Array) -> Pairs:
    """Every ordered pair ``(i, j)`` with weight ``μ_i·μ_j`` (for losses whose targets carry the preference)."""
    return labelled_pairs(sampler, np.ones((len(sampler), len(sampler))))


def _t(values: Array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=float), dtype=torch.float64)


def inpo_loss(game: PreferenceGame, previous: Array, eta: float) -> PopulationLoss:
    """INPO's population loss at iterate ``previous`` (pairs from it, labelled by ``P``), τ = β."""
    pairs = labelled_pairs(previous, game.P)
    ref, prev = _t(game.log_reference), _t(np.log(previous))

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = inpo(log_pi[w], log_pi[r], ref[w], ref[r], prev[w], prev[r], eta=eta, tau=game.beta)
        return (pairs.weight * out.losses).sum()

    return loss


def sppo_loss(
    game: PreferenceGame, previous: Array, beta: float, scores: Array | None = None
) -> PopulationLoss:
    """SPPO's (or, with antisymmetric ``scores``, GPO's) population loss at iterate ``previous``.

    Each sample ``y ∼ π_t`` gets the target ``P(y ≻ π_t) − ½`` (GPO: ``Σ_j π_t(j)·s(y, j)``); pairing samples two
    at a time, as the loss does, leaves the population loss ``E_y[(ρ(y) − target(y)/β)²]``.
    """
    pairs = all_pairs(previous)
    prev = _t(np.log(previous))
    centred = game.preference(previous) - 0.5 if scores is None else np.asarray(scores) @ previous
    target = _t(centred)

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = sppo(log_pi[w], log_pi[r], prev[w], prev[r], target[w], target[r], beta=beta)
        return (pairs.weight * out.losses).sum()

    return loss


def dpo_loss(
    game: PreferenceGame, sampler: Array, reference: Array, beta: float, *, alpha: float = 0.0
) -> PopulationLoss:
    """DPO's population loss (pairs from ``sampler``, labelled by ``P``) against ``reference``.

    With ``alpha > 0`` it is XPO's: the exploration bonus ``α·E_{ỹ∼ref}[log π(ỹ)]`` is added, ``ỹ`` drawn from the
    game's reference.
    """
    pairs = labelled_pairs(sampler, game.P)
    ref = _t(np.log(reference))
    explore = _t(game.reference)

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = dpo(log_pi[w], log_pi[r], ref[w], ref[r], beta=beta)
        # XPO's bonus α·mean ℓθ(ỹ) over reference samples has the expectation α·Σ_y ref(y)·log π(y).
        return (pairs.weight * out.losses).sum() + alpha * (explore * log_pi).sum()

    return loss


def apo_loss(
    game: PreferenceGame, latest: Array, earlier: Array, beta: float, alpha: float
) -> PopulationLoss:
    """APO's population loss: DPO against ``(1+α)·log latest − α·log earlier``, with pairs sampled from ``latest``.

    The language-model trainer samples from the last fitted iterate ``π̂_t`` too (sampling the extrapolated policy
    would need logit mixing at every decoding step); for Bradley–Terry preferences the DPO minimiser does not
    depend on the sampling distribution, which the tests check against the closed form.
    """
    pairs = labelled_pairs(latest, game.P)
    prev, older = _t(np.log(latest)), _t(np.log(earlier))

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = apo(log_pi[w], log_pi[r], prev[w], prev[r], older[w], older[r], beta=beta, alpha=alpha)
        return (pairs.weight * out.losses).sum()

    return loss


def online_ipo_loss(game: PreferenceGame, sampler: Array, opponent: Array) -> PopulationLoss:
    """Online IPO (EGPO's loss): pairs from ``sampler``, targets ``(P(y≻opponent) − P(y'≻opponent))/β``."""
    pairs = all_pairs(sampler)
    ref = _t(game.log_reference)
    centred = _t(game.preference(opponent) - 0.5)

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = online_ipo(log_pi[w], log_pi[r], ref[w], ref[r], centred[w], centred[r], beta=game.beta)
        return (pairs.weight * out.losses).sum()

    return loss


def nash_mp_loss(game: PreferenceGame, anchor: Array, opponent: Array, eta: float) -> PopulationLoss:
    """Nash-MP's regression loss for one proximal step (pairs from ``anchor``, opponent ``opponent``)."""
    pairs = all_pairs(anchor)
    ref, prev = _t(game.log_reference), _t(np.log(anchor))
    centred = _t(game.preference(opponent) - 0.5)

    def loss(log_pi: torch.Tensor) -> torch.Tensor:
        w, r = pairs.chosen, pairs.rejected
        out = nash_mp(
            log_pi[w],
            log_pi[r],
            ref[w],
            ref[r],
            prev[w],
            prev[r],
            centred[w],
            centred[r],
            eta=eta,
            beta=game.beta,
        )
        return (pairs.weight * out.losses).sum()

    return loss


def minimize_policy(loss: PopulationLoss, start: Array, *, tol: float = 1e-13) -> Array:
    """The policy ``softmax(θ)`` minimising ``loss(log_softmax(θ))``, by BFGS from ``log start``.

    Args:
        loss: A population loss (see the ``*_loss`` builders).
        start: Initial policy.
        tol: Gradient tolerance.

    Returns:
        The minimising policy.
    """

    def value_and_grad(theta: Array) -> tuple[float, Array]:
        logits = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        value = loss(torch.log_softmax(logits, dim=0))
        (grad,) = torch.autograd.grad(value, logits)
        return float(value.detach()), grad.numpy()

    result = minimize(
        value_and_grad, np.log(start), jac=True, method="BFGS", options={"gtol": tol, "maxiter": 5000}
    )
    return softmax(result.x)


def gradient_step(loss_at: Callable[[Array], PopulationLoss], logits: Array, at: Array, lr: float) -> Array:
    """``θ − lr·∇_θ L(θ; at)``: one step on the population loss built for the policy ``softmax(at)``."""
    theta = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    value = loss_at(softmax(at))(torch.log_softmax(theta, dim=0))
    (grad,) = torch.autograd.grad(value, theta)
    return logits - lr * grad.numpy()


def online_ipo_iterates(
    game: PreferenceGame, logits0: Array, lr: float, iterations: int, *, extragradient: bool
) -> list[Array]:
    """Gradient dynamics on the online IPO loss with on-policy pairs and opponent ``sg(πθ)``.

    ``extragradient=True`` is EGPO: a half step ``θ½ = θ − lr·∇L(θ; πθ)``, then a full step from θ with the targets
    (and samples) of the look-ahead policy, ``θ' = θ − lr·∇L(θ; πθ½)``. ``False`` is plain online IPO.

    Returns:
        The policies ``π_0..π_T``.
    """

    def loss_at(policy: Array) -> PopulationLoss:
        return online_ipo_loss(game, policy, policy)

    theta = np.asarray(logits0, dtype=float)
    out = [softmax(theta)]
    for _ in range(iterations):
        at = theta
        if extragradient:
            at = gradient_step(loss_at, theta, theta, lr)
        theta = gradient_step(loss_at, theta, at, lr)
        out.append(softmax(theta))
    return out


def online_dpo_iterates(
    game: PreferenceGame, logits0: Array, beta: float, lr: float, iterations: int, *, alpha: float = 0.0
) -> list[Array]:
    """Gradient descent on the online DPO loss (pairs from ``sg(πθ)``, fixed reference); ``alpha > 0`` is XPO."""

    def loss_at(policy: Array) -> PopulationLoss:
        return dpo_loss(game, policy, game.reference, beta, alpha=alpha)

    theta = np.asarray(logits0, dtype=float)
    out = [softmax(theta)]
    for _ in range(iterations):
        theta = gradient_step(loss_at, theta, theta, lr)
        out.append(softmax(theta))
    return out


# ---------------------------------------------------------------------------------------------------------------
# SPO: stochastic self-play through the same reward function the language-model trainer uses
# ---------------------------------------------------------------------------------------------------------------


class GameOracle:
    """An exact :class:`~metapo.online.oracle.PreferenceOracle` for a tabular game: responses are action indices
    written as text (``"0"``, ``"1"``, …) and ``P(a ≻ b)`` is read from the matrix."""

    def __init__(self, P: Array) -> None:
        self.P = np.asarray(P, dtype=float)

    async def preferences(self, prompt: Any, responses: Any, opponents: Any = None) -> Array:
        """``P[responses, opponents]``."""
        del prompt
        rows = [int(r) for r in responses]
        cols = rows if opponents is None else [int(c) for c in opponents]
        return self.P[np.ix_(rows, cols)]


def spo_self_play(
    game: PreferenceGame,
    logits0: Array,
    *,
    lr: float,
    iterations: int,
    group_size: int,
    groups: int,
    seed: int = 0,
) -> list[Array]:
    """SPO on the table: sample groups, reward each sample by :class:`~metapo.online.spo.SelfPlayWinRate`, step.

    Each iteration draws ``groups`` groups of ``group_size`` actions from ``π = softmax(θ)``, rewards every action
    by its win rate against the rest of its group, centres the rewards within the group (GRPO's advantage without
    the standard-deviation scaling) and takes the REINFORCE step ``θ += lr·mean Σ_i A_i·(e_{y_i} − π)``. The KL term
    of the game is not used (SPO has none), so the target is the minimax winner of ``P``.

    Returns:
        The policies ``π_0..π_T``.
    """
    from .spo import SelfPlayWinRate

    reward = SelfPlayWinRate(GameOracle(game.P))
    rng = np.random.default_rng(seed)
    theta = np.asarray(logits0, dtype=float).copy()
    out = [softmax(theta)]

    async def rewards_for(actions: Array) -> list[float]:
        prompts = [g for g in range(groups) for _ in range(group_size)]
        return await reward(prompts, [str(a) for a in actions.ravel()])

    for _ in range(iterations):
        pi = softmax(theta)
        actions = rng.choice(game.n, size=(groups, group_size), p=pi)
        r = np.asarray(asyncio.run(rewards_for(actions))).reshape(groups, group_size)
        advantages = r - r.mean(axis=1, keepdims=True)
        grad = np.zeros(game.n)
        for a, adv in zip(actions.ravel(), advantages.ravel(), strict=True):
            grad[a] += adv
        grad -= advantages.sum() * pi  # Σ_i A_i·(e_{y_i} − π); the second term is ~0 after centring
        theta = theta + lr * grad / groups
        out.append(softmax(theta))
    return out
