"""DRPO, Decoupled Reward Policy Optimization (arXiv 2510.04474) [V-code]: a discriminative objective, no advantages.

Per prompt whose group holds both correct and incorrect samples, with ``s(y)`` the policy's mean token
log-probability of ``y``:

    J = Σ_{y+} w(y+)·s(y+) − τ·log mean_{y−} exp(s(y−)/τ),    w(y) ∝ exp((1 − |y|/L_max)/λ) over the positives

summed over such groups and divided by the number of groups in the batch. The loss is ``−J`` plus a trust region
whose gradient is ``β·max(KL_old − δ, 0)·∇KL_old``, with ``KL_old`` the token mean of ``log π_old − log π_θ``. The
length weights, the official code's division by every group (not only the mixed ones) and ``L_max`` = the
configured maximum completion length follow the official code. Its log-mean-exp is written so that only its
gradient is right; here the value is the true log-mean-exp (same gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def length_weights(lengths: torch.Tensor, max_length: int, lam: float) -> torch.Tensor:
    """Self-normalised positive weights ``exp((1 − L/L_max)/λ)``; uniform as ``λ → ∞``."""
    return torch.softmax((1 - lengths.float() / max_length) / lam, dim=0)


def drpo_objective(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    rewards: torch.Tensor,
    groups: torch.Tensor,
    *,
    max_length: int,
    tau: float = 10.0,
    lam: float = 0.1,
    positive_threshold: float = 0.5,
) -> tuple[torch.Tensor, int]:
    """``(J, number of groups with both positives and negatives)``; rewards ``>= positive_threshold`` are positives.

    NaN rewards (unscored samples) are neither positive nor negative.
    """
    total = scores.sum() * 0.0
    ids = groups.unique()
    valid = 0
    for g in ids:
        idx = groups == g
        r, s, n = rewards[idx], scores[idx], lengths[idx]
        scored = ~torch.isnan(r)
        pos, neg = scored & (r >= positive_threshold), scored & (r < positive_threshold)
        if not pos.any() or not neg.any():
            continue
        valid += 1
        w = length_weights(n[pos], max_length, lam)
        neg_lme = torch.logsumexp(s[neg] / tau, dim=0) - math.log(int(neg.sum()))
        total = total + (w * s[pos]).sum() - tau * neg_lme
    return total / max(len(ids), 1), valid


def trust_region(kl: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """Penalty whose gradient is ``β·max(KL − δ, 0)·∇KL`` (the coefficient is held constant)."""
    return torch.clamp(beta * (kl - delta), min=0.0).detach() * kl


@dataclass
class DRPOLoss:
    """DRPO's settings (defaults: the official 1.5B launch script) and its loss on one micro-batch.

    Attributes:
        tau: Temperature of the negatives' log-mean-exp.
        lam: Length-weight temperature λ (larger = weaker preference for short positives).
        beta: Trust-region coefficient.
        delta: Trust-region radius on ``KL_old``.
        positive_threshold: Rewards at or above it are positives (correct), below it negatives.
    """

    tau: float = 10.0
    lam: float = 0.1
    beta: float = 1e3
    delta: float = 1e-4
    positive_threshold: float = 0.5

    def loss(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        mask: torch.Tensor,
        rewards: torch.Tensor,
        groups: torch.Tensor,
        max_length: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``−J + trust region`` from per-token log-probs (B, T) and the per-sample rewards and group ids."""
        mask = mask.to(logps.dtype)
        counts = mask.sum(-1)
        scores = (logps * mask).sum(-1) / counts.clamp(min=1.0)
        objective, valid = drpo_objective(
            scores,
            counts,
            rewards.to(logps.dtype),
            groups,
            max_length=max_length,
            tau=self.tau,
            lam=self.lam,
            positive_threshold=self.positive_threshold,
        )
        kl = ((old_logps - logps) * mask).sum() / mask.sum().clamp(min=1.0)
        loss = -objective + trust_region(kl, self.beta, self.delta)
        stats = {"objective": objective.item(), "kl_old": kl.item(), "mixed_groups": float(valid)}
        return loss, stats
