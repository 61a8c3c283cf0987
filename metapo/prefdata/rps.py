"""RPS: robust preference selection by consensus over neighbouring preference directions, at inference time.

A direction-conditioned policy (DPA-style: the prompt states how much the user weighs each objective) answers once
for each of k directions sampled within ``θ_max`` of the user's target direction ``v``, and a multi-objective
reward model scores every answer as a vector ``r(x, y)``. The answer returned is ``argmax_i vᵀ r(x, y_i)``: the
neighbours only propose, the target alone decides. The cost is that of best-of-k, and with ``θ_max = 0`` it is
best-of-k from the target direction.

Source: "Robust Preference Selection" (directional neighbourhood consensus), arXiv 2510.20498. Confidence: [S]
(from a secondary summary): k = 5 and θ_max = 30° are the summary's defaults; how the neighbours are drawn (here: a
uniform angle in [0, θ_max] towards a uniformly random orthogonal direction) and the direction prompt are metapo's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metapo.prefdata.common import Policy, Prompt

logger = logging.getLogger(__name__)

# Per completion: the reward vector (one value per objective, in the order of the objective names), or None.
VectorReward = Callable[[Sequence[Prompt], Sequence[str]], list[list[float] | None]]


@dataclass
class RPSOptions:
    """Settings of robust preference selection."""

    objectives: list[str] = field(
        default_factory=lambda: ["helpfulness", "verbosity"],
        metadata={
            "help": "Objective names, in the order of the reward vector (rubric item ids for a judge)."
        },
    )
    target: list[float] = field(default_factory=lambda: [1.0, 1.0], metadata={"help": "Target direction v."})
    k: int = field(default=5, metadata={"help": "Directions (and responses) per prompt."})
    theta_max: float = field(default=30.0, metadata={"help": "Largest angle to the target, in degrees."})
    seed: int = field(default=0, metadata={"help": "Seed of the neighbour directions."})

    def __post_init__(self) -> None:
        if len(self.target) != len(self.objectives) or not self.objectives:
            raise ValueError(f"rps: target {self.target} needs one weight per objective {self.objectives}")
        if self.k < 1 or not 0.0 <= self.theta_max <= 180.0:
            raise ValueError("rps: need k >= 1 and 0 <= theta_max <= 180")
        unit_vector(self.target)  # fails on a zero vector


def unit_vector(v: Sequence[float]) -> np.ndarray:
    """``v / ‖v‖``; a zero vector is an error."""
    arr = np.asarray(v, dtype=float)
    norm = float(np.linalg.norm(arr))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError(f"direction {list(v)} has no length")
    return arr / norm


def neighbour_directions(
    target: Sequence[float], k: int, theta_max_deg: float, rng: np.random.Generator
) -> np.ndarray:
    """``k`` unit directions, each at an angle drawn uniformly from ``[0, θ_max]`` to the target.

    Each is ``cos φ·v + sin φ·u`` with ``u`` a uniformly random unit vector orthogonal to ``v``; in one dimension
    only ``v`` itself exists.

    Returns:
        Shape ``(k, m)``.
    """
    v = unit_vector(target)
    out = np.empty((k, len(v)))
    for i in range(k):
        phi = math.radians(rng.uniform(0.0, theta_max_deg)) if theta_max_deg > 0 else 0.0
        u = rng.standard_normal(len(v))
        u -= (u @ v) * v
        norm = float(np.linalg.norm(u))
        out[i] = v if norm < 1e-12 or phi == 0.0 else math.cos(phi) * v + math.sin(phi) * (u / norm)
    return out


def direction_prompt(prompt: Prompt, direction: Sequence[float], names: Sequence[str]) -> Prompt:
    """The prompt with the user's weights stated first (a system message for chat prompts)."""
    weights = ", ".join(f"{name} {w:.2f}" for name, w in zip(names, direction, strict=True))
    note = f"Weigh these qualities in your response as follows: {weights}."
    if isinstance(prompt, str):
        return f"{note}\n\n{prompt}"
    return [{"role": "system", "content": note}, *prompt]


def select(target: Sequence[float], rewards: Sequence[Sequence[float] | None]) -> int | None:
    """Index of the response with the largest ``vᵀ r`` (first on ties); ``None`` when nothing was scored."""
    v = unit_vector(target)
    best, best_value = None, -math.inf
    for i, r in enumerate(rewards):
        if r is None:
            continue
        value = float(v @ np.asarray(r, dtype=float))
        if value > best_value:
            best, best_value = i, value
    return best


def _record(
    prompt: Prompt, target: np.ndarray, directions: np.ndarray, texts: list[str], rewards: list
) -> dict:
    chosen = select(target, rewards)
    return {
        "prompt": prompt,
        "response": None if chosen is None else texts[chosen],
        "selected": chosen,
        "target": target.tolist(),
        "directions": directions.tolist(),
        "candidates": texts,
        "rewards": rewards,
        "scores": [None if r is None else float(target @ np.asarray(r, dtype=float)) for r in rewards],
    }


def robust_select(
    prompt: Prompt,
    policy: Policy,
    reward: VectorReward,
    options: RPSOptions,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """RPS for one prompt: one response per neighbour direction, the target's best among them.

    Returns:
        A record with the selected ``response`` and index, the ``target``, every direction, candidate, reward
        vector and target score.
    """
    target = unit_vector(options.target)
    directions = neighbour_directions(options.target, options.k, options.theta_max, rng)
    asks = [direction_prompt(prompt, d, options.objectives) for d in directions]
    texts = [group[0].text for group in policy.generate(asks, 1)]
    return _record(prompt, target, directions, texts, reward([prompt] * len(texts), texts))


def best_of_k(prompt: Prompt, policy: Policy, reward: VectorReward, options: RPSOptions) -> dict[str, Any]:
    """The baseline RPS matches at ``θ_max = 0``: k samples for the target direction, the target's best."""
    target = unit_vector(options.target)
    ask = direction_prompt(prompt, target, options.objectives)
    texts = [s.text for s in policy.generate([ask], options.k)[0]]
    directions = np.tile(target, (options.k, 1))
    return _record(prompt, target, directions, texts, reward([prompt] * len(texts), texts))


def build_rps(
    prompts: Sequence[Prompt], policy: Policy, reward: VectorReward, options: RPSOptions | None = None
) -> list[dict[str, Any]]:
    """Robust preference selection for every prompt (one record per prompt, see :func:`robust_select`)."""
    opts = options or RPSOptions()
    rng = np.random.default_rng(opts.seed)
    records = [robust_select(p, policy, reward, opts, rng) for p in prompts]
    logger.info("rps: selected responses for %d prompts", sum(r["selected"] is not None for r in records))
    return records
