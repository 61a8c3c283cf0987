"""RSO's statistical rejection sampler: preference pairs drawn from the optimal policy, not from the SFT policy.

The policy that maximises ``E[r] − β·KL(π‖π_sft)`` is ``π_r(y|x) ∝ π_sft(y|x)·exp(r(x, y)/β)``. RSO samples it
by rejection: draw candidates from π_sft (64 in the paper), accept each with probability
``exp((r(x, y) − r_max)/β)``, where ``r_max`` is the largest reward among the candidates, until enough are accepted
(8), then pair the accepted responses and label each pair by the reward model (or a pairwise judge). The pairs
train with the existing ``hinge`` (RSO's hinge-norm, γ = 0.05) or ``dpo`` (sigmoid-norm) objectives.

Source: Liu et al., "Statistical Rejection Sampling Improves Preference Optimization", arXiv 2309.06657.
Confidence: [V-TRL] for the losses, [R] for the sampler (from memory of the paper: the candidate and acceptance
counts, the sampling β ≈ 0.5, drawing without replacement, and pairing the accepted responses two by two are not
checked against the paper).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metapo.prefdata.common import Policy, Prompt, RewardFn, score

logger = logging.getLogger(__name__)


@dataclass
class RSOOptions:
    """Settings of the RSO builder."""

    num_candidates: int = field(
        default=64, metadata={"help": "Responses drawn from the SFT policy per prompt."}
    )
    num_accept: int = field(
        default=8, metadata={"help": "Responses to accept per prompt (pairs: half of it)."}
    )
    beta: float = field(default=0.5, metadata={"help": "Sampling β of the target π_sft·exp(r/β)."})
    seed: int = field(default=0, metadata={"help": "Seed of the acceptance draws."})

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"rso.beta={self.beta}: β must be positive")
        if self.num_accept < 2 or self.num_candidates < self.num_accept:
            raise ValueError(
                f"rso: need 2 <= num_accept <= num_candidates, got {self.num_accept} and {self.num_candidates}"
            )


def acceptance_probabilities(rewards: Sequence[float], beta: float, r_max: float | None = None) -> np.ndarray:
    """``exp((r − r_max)/β)`` per candidate; ``r_max`` defaults to the largest reward given.

    Args:
        rewards: Reward of each candidate.
        beta: Sampling β (> 0).
        r_max: An upper bound on the reward (the maximum over the candidates when omitted).

    Returns:
        Probabilities in ``(0, 1]``.
    """
    r = np.asarray(rewards, dtype=float)
    top = float(r.max()) if r_max is None else float(r_max)
    if (r > top).any():
        raise ValueError("r_max is below a candidate's reward")
    return np.exp((r - top) / beta)


def rejection_sample(
    rewards: Sequence[float],
    *,
    beta: float,
    num_accept: int,
    rng: np.random.Generator,
    replacement: bool = False,
    r_max: float | None = None,
    max_draws: int | None = None,
) -> list[int]:
    """RSO's sampler: pick a candidate at random, accept it with probability ``exp((r − r_max)/β)``, repeat.

    Without replacement (the builder's mode) an accepted candidate leaves the pool, so the accepted responses are
    distinct; with replacement every draw comes from the whole pool, which makes each accepted index an exact draw
    from ``p_i ∝ exp(r_i/β)`` over the pool, i.e. from ``π_sft·exp(r/β)`` when the pool was drawn from π_sft.

    Args:
        rewards: Reward of each candidate.
        beta: Sampling β.
        num_accept: How many to accept.
        rng: Random generator.
        replacement: Draw from the whole pool every time.
        r_max: Reward upper bound (default: the largest candidate reward).
        max_draws: Give up after this many draws (default ``100·len(rewards) + 10·num_accept``); small β makes
            every candidate but the best almost never accepted, so the last acceptances can take very long.

    Returns:
        Accepted candidate indices in acceptance order (fewer than ``num_accept`` if ``max_draws`` ran out, or if
        the pool ran dry without replacement).
    """
    accept = acceptance_probabilities(rewards, beta, r_max)
    n = len(accept)
    limit = max_draws if max_draws is not None else 100 * n + 10 * num_accept
    pool = list(range(n))
    accepted: list[int] = []
    draws = 0
    while len(accepted) < num_accept and draws < limit and pool:
        draws += 1
        pick = int(rng.integers(len(pool)))
        if rng.random() < accept[pool[pick]]:
            accepted.append(pool[pick])
            if not replacement:
                pool.pop(pick)
    if len(accepted) < num_accept:
        logger.debug("rejection sampling accepted %d of %d after %d draws", len(accepted), num_accept, draws)
    return accepted


def accepted_pairs(
    prompt: Prompt,
    responses: Sequence[str],
    rewards: Sequence[float],
    accepted: Sequence[int],
    labels: Sequence[float | None] | None = None,
) -> list[dict[str, Any]]:
    """Pair accepted responses two by two (1st with 2nd, 3rd with 4th, ...) and orient each pair.

    Args:
        prompt: The prompt.
        responses: All candidates.
        rewards: Their rewards.
        accepted: Accepted indices, in acceptance order.
        labels: Optional pairwise verdicts, one per pair: 1 when the first response of the pair wins, 0 when the
            second does, 0.5 or ``None`` for a tie or no verdict (the pair is dropped). Without labels the reward
            orients the pair and equal rewards drop it.

    Returns:
        Rows with ``prompt``, ``chosen``, ``rejected`` and both rewards.
    """
    rows = []
    for k in range(len(accepted) // 2):
        i, j = accepted[2 * k], accepted[2 * k + 1]
        if labels is not None:
            verdict = labels[k]
            if verdict is None or verdict == 0.5:
                continue
            first_wins = verdict > 0.5
        else:
            if rewards[i] == rewards[j]:
                continue
            first_wins = rewards[i] > rewards[j]
        w, lose = (i, j) if first_wins else (j, i)
        if responses[w] == responses[lose]:
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": responses[w],
                "rejected": responses[lose],
                "chosen_reward": float(rewards[w]),
                "rejected_reward": float(rewards[lose]),
            }
        )
    return rows


def build_rso(
    prompts: Sequence[Prompt],
    policy: Policy,
    reward: RewardFn,
    options: RSOOptions | None = None,
    pairwise: Any | None = None,
) -> list[dict[str, Any]]:
    """Build RSO preference pairs for every prompt.

    Args:
        prompts: Prompts (strings or chat lists).
        policy: The SFT policy π_sft.
        reward: Reward function scoring each candidate.
        options: Sampler settings.
        pairwise: Optional :class:`~metapo.eval.pairwise.PairwiseJudge` that labels each accepted pair (the
            paper's pairwise reward-ranking model); without it the reward orients the pairs.

    Returns:
        Preference rows for ``metapo train-pref`` (objective ``hinge`` or ``dpo``).
    """
    opts = options or RSOOptions()
    rng = np.random.default_rng(opts.seed)
    samples = policy.generate(list(prompts), opts.num_candidates)
    n = opts.num_candidates
    # One scoring call for every candidate, so the judge sees them concurrently.
    all_scores = score(reward, [p for p in prompts for _ in range(n)], [s.text for g in samples for s in g])
    rows: list[dict[str, Any]] = []
    for k, (prompt, group) in enumerate(zip(prompts, samples, strict=True)):
        responses = [s.text for s in group]
        scored = all_scores[k * n : (k + 1) * n]
        keep = [i for i, r in enumerate(scored) if r is not None and math.isfinite(r)]
        if len(keep) < 2:
            continue
        kept = [responses[i] for i in keep]
        rewards = [float(scored[i]) for i in keep]  # type: ignore[arg-type]
        accepted = rejection_sample(rewards, beta=opts.beta, num_accept=opts.num_accept, rng=rng)
        labels = None
        if pairwise is not None:
            labels = asyncio.run(_judge_pairs(pairwise, prompt, kept, accepted))
        rows.extend(accepted_pairs(prompt, kept, rewards, accepted, labels))
    logger.info("rso: %d pairs from %d prompts", len(rows), len(prompts))
    return rows


async def _judge_pairs(pairwise: Any, prompt: Prompt, responses: list[str], accepted: list[int]) -> list[Any]:
    from metapo.reward.rubric_reward import prompt_text

    pairs = [(accepted[2 * k], accepted[2 * k + 1]) for k in range(len(accepted) // 2)]
    outcomes = await asyncio.gather(
        *(pairwise.compare(prompt_text(prompt), responses[i], responses[j]) for i, j in pairs)
    )
    return [o.score for o in outcomes]
