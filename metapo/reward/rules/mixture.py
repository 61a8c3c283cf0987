"""Small fitted models behind the multi-objective rules: MaxMin's EM mixture of Bradley–Terry reward models and
the Preference Orchestrator's prompt-to-weights adapter.

Both are linear in features the caller provides (a response or prompt embedding, one-hot arms in a bandit), fitted
with ``scipy.optimize.minimize``: enough to recover user groups or prompt-dependent weights, and to hand the
result to :class:`~metapo.reward.rules.MaxMinReward` or :class:`~metapo.reward.rules.OrchestratedReward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def fit_bradley_terry(diffs: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Linear Bradley–Terry reward ``r(y) = θ·φ(y)`` from rows ``φ(y_w) − φ(y_l)``: MAP fit with an L2 prior.

    The L2 term also fixes the offset BT leaves free: along a direction every difference ignores (such as the
    all-ones direction with one-hot features) ``θ`` stays 0, so rewards come out centred.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    diffs = np.asarray(diffs, dtype=float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        m = diffs @ theta
        value = np.logaddexp(0.0, -m).sum() + 0.5 * l2 * theta @ theta
        grad = -(diffs.T @ expit(-m)) + l2 * theta
        return float(value), grad

    return minimize(loss, np.zeros(diffs.shape[1]), jac=True, method="L-BFGS-B").x


def bt_loglik(diffs: np.ndarray, theta: np.ndarray) -> float:
    """Bradley–Terry log-likelihood ``Σ log σ(θ·(φ_w − φ_l))`` of one user's comparisons."""
    return float(-np.logaddexp(0.0, -(np.asarray(diffs) @ theta)).sum())


@dataclass
class Mixture:
    """A fitted mixture: one reward vector per group and each user's group."""

    thetas: np.ndarray
    assignment: np.ndarray
    loglik: float


def maxmin_em(
    users: Sequence[np.ndarray], n_groups: int, *, iters: int = 50, l2: float = 1e-2, seed: int = 0
) -> Mixture:
    """MaxMin-RLHF's hard EM over user groups (arXiv 2402.08925) [R].

    E-step: each user joins the group whose reward explains their comparisons best,
    ``argmax_h Σ log σ(r_h(y_w) − r_h(y_l))``. M-step: each group's reward is refitted by Bradley–Terry on its
    users' comparisons. Starts from k-means over per-user fits, stops when no user moves.

    Args:
        users: Per user, an array of comparison rows ``φ(y_w) − φ(y_l)``.
        n_groups: Number of groups H.
    """
    from scipy.cluster.vq import kmeans2

    per_user = np.stack([fit_bradley_terry(d, l2) for d in users])
    _, assignment = kmeans2(per_user, n_groups, seed=seed, minit="++")
    thetas = np.zeros((n_groups, per_user.shape[1]))
    for _ in range(iters):
        for h in range(n_groups):
            members = [users[u] for u in np.flatnonzero(assignment == h)]
            thetas[h] = fit_bradley_terry(np.concatenate(members), l2) if members else thetas[h]
        ll = np.array([[bt_loglik(d, thetas[h]) for h in range(n_groups)] for d in users])
        new = ll.argmax(axis=1)
        if np.array_equal(new, assignment):
            break
        assignment = new
    total = float(sum(bt_loglik(d, thetas[h]) for d, h in zip(users, assignment, strict=True)))
    return Mixture(thetas, assignment, total)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class WeightAdapter:
    """The Preference Orchestrator's adapter ``g(x) → w(x) ∈ Δ^K`` [abstract-level reconstruction].

    Trained on the scores that K reward models give the *preferred* response of each prompt: every reward
    model's scores are standardised over the data, turned into a target on the simplex by a softmax at
    ``temperature`` (low = near one-hot on the model that best explains why the response was preferred), and a
    softmax-linear model of the prompt features is fitted to those targets by cross-entropy. The paper's own
    adapter loss is not known (only its abstract was available); this is a plausible reading of it.

    Args:
        featurize: Prompt to feature vector (e.g. a sentence embedding).
        temperature: Sharpness of the targets.
        l2: L2 penalty on the adapter's weights.
    """

    def __init__(
        self, featurize: Callable[[Any], Sequence[float]], *, temperature: float = 0.25, l2: float = 1e-3
    ) -> None:
        self.featurize = featurize
        self.temperature = temperature
        self.l2 = l2
        self.coef: np.ndarray | None = None

    def _features(self, prompts: Sequence[Any]) -> np.ndarray:
        x = np.asarray([list(self.featurize(p)) for p in prompts], dtype=float)
        return np.hstack([x, np.ones((len(x), 1))])

    def fit(self, prompts: Sequence[Any], preferred_scores: np.ndarray) -> WeightAdapter:
        """Fit on prompts and the (n, K) reward-model scores of their preferred responses."""
        from scipy.optimize import minimize

        scores = np.asarray(preferred_scores, dtype=float)
        z = (scores - scores.mean(axis=0)) / (scores.std(axis=0) + 1e-8)
        targets = _softmax(z / self.temperature)
        x = self._features(prompts)
        shape = (x.shape[1], scores.shape[1])

        def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
            coef = flat.reshape(shape)
            logits = x @ coef
            logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            value = -(targets * logp).sum() + 0.5 * self.l2 * (coef[:-1] ** 2).sum()
            grad = x.T @ (np.exp(logp) - targets)
            grad[:-1] += self.l2 * coef[:-1]
            return float(value), grad.ravel()

        self.coef = minimize(loss, np.zeros(shape).ravel(), jac=True, method="L-BFGS-B").x.reshape(shape)
        return self

    def __call__(self, prompt: Any, row: dict[str, Any] | None = None) -> list[float]:
        """Weights for one prompt (the signature :class:`~metapo.reward.rules.OrchestratedReward` calls)."""
        if self.coef is None:
            raise RuntimeError("WeightAdapter: call fit() before using it")
        return _softmax(self._features([prompt]) @ self.coef)[0].tolist()
