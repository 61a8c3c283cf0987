"""Tabular preference games: the exact solutions every Nash-family method is checked against.

A game has ``n`` actions (responses to one prompt), a preference matrix ``P`` with ``P[i, j] = P(i ≻ j)`` and
``P + Pᵀ = 1`` (so ``P[i, i] = ½``), a reference policy and a KL strength β. Its value for two policies is

    V(π₁, π₂) = π₁ᵀ P π₂ − β·KL(π₁ ‖ ref) + β·KL(π₂ ‖ ref),

a symmetric two-player zero-sum game (player 1 maximises, player 2 minimises). For β > 0 it is strongly
concave-convex, so it has one equilibrium, and that equilibrium is symmetric: the *regularised Nash equilibrium*
``π* ∝ ref·exp(Pπ*/β)``. For β = 0 its equilibria are the *minimax winners* of ``P``, the solutions of a linear
program. ``P(y ≻ π)`` is ``(Pπ)[y]``.

Everything here is closed form or a standard solver (``scipy.optimize.root``, ``scipy.optimize.linprog``); the
per-method updates that must converge to these solutions live in :mod:`metapo.online.tabular`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog, root
from scipy.special import expit, softmax

Array = np.ndarray


def kl(p: Array, q: Array) -> float:
    """``KL(p ‖ q) = Σ p·log(p/q)``, with ``0·log 0 = 0``."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def rock_paper_scissors(a: float = 1.0, b: float = 1.0, c: float = 1.0) -> Array:
    """Generalised rock-paper-scissors: ``P = ½ + ½A`` with ``A = [[0, −a, c], [a, 0, −b], [−c, b, 0]]``.

    Action 1 beats 0 by ``a``, 2 beats 1 by ``b`` and 0 beats 2 by ``c``: every action is beaten by another, so
    no Bradley–Terry model fits it. For positive ``a, b, c`` the minimax winner is ``(b, c, a)/(a + b + c)``: it
    makes every row of ``A`` average to zero.

    Args:
        a: Margin of action 1 over action 0, in ``(0, 1]``.
        b: Margin of action 2 over action 1, in ``(0, 1]``.
        c: Margin of action 0 over action 2, in ``(0, 1]``.

    Returns:
        The 3×3 preference matrix.
    """
    for name, value in (("a", a), ("b", b), ("c", c)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1] so that P is a probability, got {value}")
    skew = np.array([[0.0, -a, c], [a, 0.0, -b], [-c, b, 0.0]])
    return 0.5 + 0.5 * skew


def bradley_terry(scores: Array, temperature: float = 1.0) -> Array:
    """The preference matrix of a Bradley–Terry model, ``P[i, j] = σ((s_i − s_j)/T)``: transitive by construction.

    Args:
        scores: Scalar score (reward) of each action.
        temperature: T > 0.

    Returns:
        The n×n preference matrix.
    """
    s = np.asarray(scores, dtype=float)
    return expit((s[:, None] - s[None, :]) / temperature)


def minimax_winner(payoff: Array) -> tuple[Array, float]:
    """The maximin mixed strategy of the row player of a zero-sum matrix game, by linear programming.

    Solves ``max_π min_j (πᵀM)_j`` over the simplex: maximise ``v`` subject to ``Σ_i π_i M[i, j] ≥ v`` for every
    column ``j``. For a preference matrix the value is ½ and the strategy is a *minimax winner*: no action is
    preferred to it. For an antisymmetric score matrix (GPM scores) the value is 0.

    Args:
        payoff: ``M[i, j]``, the row player's payoff when it plays ``i`` against ``j``.

    Returns:
        ``(π, v)``: the strategy and the game's value.
    """
    m = np.asarray(payoff, dtype=float)
    n = m.shape[0]
    # Variables (π_1..π_n, v); linprog minimises, so the objective is −v.
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    a_ub = np.hstack([-m.T, np.ones((m.shape[1], 1))])
    a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(None, None)]
    result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(m.shape[1]), A_eq=a_eq, b_eq=[1.0], bounds=bounds)
    if not result.success:  # pragma: no cover - a finite matrix game always has a solution
        raise RuntimeError(f"linprog failed: {result.message}")
    pi = np.clip(result.x[:n], 0.0, None)
    return pi / pi.sum(), float(result.x[-1])


@dataclass(frozen=True)
class PreferenceGame:
    """A β-regularised symmetric preference game (see the module docstring).

    Attributes:
        P: Preference matrix, ``P[i, j] = P(i ≻ j)``; must satisfy ``P + Pᵀ = 1``.
        reference: Reference policy (full support); uniform when omitted.
        beta: KL strength β ≥ 0.
    """

    P: Array
    reference: Array | None = None
    beta: float = 0.1
    log_reference: Array = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.P, dtype=float)
        if p.ndim != 2 or p.shape[0] != p.shape[1]:
            raise ValueError(f"P must be a square matrix, got shape {p.shape}")
        if not np.allclose(p + p.T, 1.0, atol=1e-9) or p.min() < 0 or p.max() > 1:
            raise ValueError("P must hold probabilities with P[i, j] + P[j, i] = 1")
        n = p.shape[0]
        ref = np.full(n, 1.0 / n) if self.reference is None else np.asarray(self.reference, dtype=float)
        if ref.shape != (n,) or ref.min() <= 0 or not np.isclose(ref.sum(), 1.0):
            raise ValueError("reference must be a full-support distribution over the actions")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        object.__setattr__(self, "P", p)
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "log_reference", np.log(ref))

    @property
    def n(self) -> int:
        """Number of actions."""
        return self.P.shape[0]

    def preference(self, pi: Array) -> Array:
        """``P(y ≻ π)`` for every action ``y``."""
        return self.P @ pi

    def value(self, p1: Array, p2: Array) -> float:
        """``V(π₁, π₂) = π₁ᵀPπ₂ − β·KL(π₁‖ref) + β·KL(π₂‖ref)``."""
        return float(
            p1 @ self.P @ p2 - self.beta * kl(p1, self.reference) + self.beta * kl(p2, self.reference)
        )

    def best_response(self, pi: Array) -> Array:
        """The maximiser's best response to ``π``: ``softmax(log ref + Pπ/β)`` (uniform over the argmax if β = 0)."""
        return self._respond(self.P @ pi)

    def _respond(self, payoff: Array) -> Array:
        if self.beta > 0:
            return softmax(self.log_reference + payoff / self.beta)
        best = np.isclose(payoff, payoff.max(), rtol=0, atol=1e-12)
        return best / best.sum()

    def duality_gap(self, pi: Array) -> float:
        """``max_π₁ V(π₁, π) − min_π₂ V(π, π₂)`` ≥ 0, zero exactly at the equilibrium.

        The minimiser's best response to ``π`` maximises ``−πᵀPπ₂`` minus the same KL term, i.e. it is the
        maximiser's best response to the payoff ``−Pᵀπ``.
        """
        pi = np.asarray(pi, dtype=float)
        br_max = self._respond(self.P @ pi)
        br_min = self._respond(-self.P.T @ pi)
        return self.value(br_max, pi) - self.value(pi, br_min)

    def nash(self, *, tol: float = 1e-12) -> Array:
        """The exact β-regularised Nash equilibrium, the fixed point ``π = softmax(log ref + Pπ/β)``.

        Solved in logit space, ``z = log ref + P·softmax(z)/β`` (a smooth system with a unique root because the
        regularised game is strongly monotone), with ``scipy.optimize.root`` started from ``log ref``; the result
        is checked by its residual.

        Args:
            tol: Largest accepted residual ``max|z − log ref − P·softmax(z)/β|``.

        Returns:
            The equilibrium policy.

        Raises:
            ValueError: For β = 0 (use :func:`minimax_winner`).
            RuntimeError: When the solver does not reach ``tol``.
        """
        if self.beta <= 0:
            raise ValueError("the regularised equilibrium needs beta > 0; for beta = 0 use minimax_winner(P)")

        def residual(z: Array) -> Array:
            return z - self.log_reference - self.P @ softmax(z) / self.beta

        def jacobian(z: Array) -> Array:
            pi = softmax(z)
            return np.eye(self.n) - self.P @ (np.diag(pi) - np.outer(pi, pi)) / self.beta

        result = root(residual, self.log_reference.copy(), jac=jacobian, method="hybr", tol=1e-14)
        error = float(np.max(np.abs(residual(result.x))))
        if error > tol:
            raise RuntimeError(f"regularised Nash solver stopped at residual {error:.2e} ({result.message})")
        return softmax(result.x)
