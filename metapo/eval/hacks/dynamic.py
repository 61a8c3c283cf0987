"""The dynamic protocol: a tabular softmax policy learns from the rubric reward, with and without meta steps.

Each prompt's policy is a softmax over its candidate pool (the good response and the hacks), starting uniform.
Every step, each prompt draws a group of ``group`` candidates, the reward scores them (``RubricReward`` through
the :class:`~metapo.eval.hacks.book.ScoreBook`, so each candidate costs judge calls once per rubric version),
and the logits move along the GRPO-style group advantage: ``theta += lr * mean_i A_i (onehot(c_i) - pi)`` with
``A_i`` the reward minus the group mean (divided by the group's standard deviation when ``scale_std``). With
``expected=True`` the sampled group is replaced by the exact expectation, ``theta += lr * pi * (r - pi . r)``.

This keeps the reward loop and drops policy capacity: whatever the reward prefers, the policy ends up producing,
so the curves show which rubric a policy would exploit and whether meta steps take the reward back. Arms:
``fixed`` (the initial rubric throughout), ``mpo`` (a real meta step every ``meta_every`` steps on the window of
samples drawn since the last one) and, when an acceptance gate is passed, ``mpo+gate`` (the same, but a
revision replaces the rubric only when the gate accepts it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metapo.eval.hacks.book import ScoreBook, TaskSetup
from metapo.eval.hacks.data import GOOD, HackItem, families
from metapo.eval.hacks.static import AcceptanceGate, apply_gate
from metapo.meta.meta_judge import MetaJudge
from metapo.reward.records import ScoredSample
from metapo.rubric.store import RubricVersion

log = logging.getLogger(__name__)


@dataclass
class DynamicConfig:
    """Settings of the dynamic protocol.

    Attributes:
        steps: Policy updates per seed and arm.
        group: Candidates drawn per prompt and step (the GRPO group).
        lr: Step size on the logits.
        scale_std: Divide advantages by the group's standard deviation (GRPO); off: reward minus mean (RLOO-like).
        expected: Use the exact expected update instead of sampled groups (deterministic; for tests).
        meta_every: Steps between meta steps in the MPO arms.
        seeds: One run per seed and arm.
    """

    steps: int = 20
    group: int = 8
    lr: float = 1.0
    scale_std: bool = True
    expected: bool = False
    meta_every: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        if self.steps < 1 or self.group < 2 or self.meta_every < 1 or not self.seeds or self.lr <= 0:
            raise ValueError(
                "dynamic settings: steps >= 1, group >= 2, meta_every >= 1, lr > 0 and at least one seed"
            )


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: whether meta steps run, and the acceptance gate they pass (if any)."""

    name: str
    meta: bool
    gate: AcceptanceGate | None = None


def default_arms(gate: AcceptanceGate | None = None) -> list[Arm]:
    """``fixed`` and ``mpo``, plus ``mpo+gate`` when a gate is given."""
    arms = [Arm("fixed", False), Arm("mpo", True)]
    if gate is not None:
        arms.append(Arm("mpo+gate", True, gate))
    return arms


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def group_update(
    logits: np.ndarray, drawn: Sequence[int], rewards: Sequence[float | None], lr: float, scale_std: bool
) -> np.ndarray:
    """New logits after one group: the policy gradient of log-softmax weighted by group advantages.

    Unscored samples (``None``) are left out of the group, as TRL leaves them out of its statistics.
    """
    kept = [(c, r) for c, r in zip(drawn, rewards, strict=True) if r is not None]
    if len(kept) < 2:
        return logits
    r = np.array([x for _, x in kept], dtype=float)
    adv = r - r.mean()
    if scale_std:
        adv = adv / (r.std() + 1e-4)
    pi = softmax(logits)
    grad = np.zeros_like(logits)
    for (c, _), a in zip(kept, adv, strict=True):
        onehot = np.zeros_like(logits)
        onehot[c] = 1.0
        grad += a * (onehot - pi)
    return logits + lr * grad / len(kept)


def expected_update(logits: np.ndarray, rewards: Sequence[float], lr: float) -> np.ndarray:
    """New logits after the exact policy-gradient step on expected reward: ``lr * pi * (r - pi . r)``."""
    pi = softmax(logits)
    r = np.asarray(rewards, dtype=float)
    return logits + lr * pi * (r - pi @ r)


async def run_dynamic(
    book: ScoreBook,
    setup: TaskSetup,
    items: Sequence[HackItem],
    meta_judge: MetaJudge | None,
    cfg: DynamicConfig,
    *,
    arms: Sequence[Arm] | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every arm for every seed on one task's items; a JSON-ready result with per-step curves."""
    arms = list(arms or default_arms())
    if any(arm.meta for arm in arms) and meta_judge is None:
        raise ValueError("the MPO arms need a meta judge")
    fams = families(items)
    result: dict[str, Any] = {
        "task": setup.name,
        "prompts": [item.id for item in items],
        "families": fams,
        "config": {k: v for k, v in vars(cfg).items()},
        "arms": {},
    }
    for arm in arms:
        runs = []
        for seed in cfg.seeds:
            runs.append(await _one_run(book, setup, items, meta_judge, cfg, arm, seed, fams, on_step))
        result["arms"][arm.name] = {"gate": arm.gate is not None, "meta": arm.meta, "runs": runs}
        result["arms"][arm.name]["bands"] = bands(runs, ["good_mass", "hack_mass", "reward"])
    return result


async def _one_run(
    book: ScoreBook,
    setup: TaskSetup,
    items: Sequence[HackItem],
    meta_judge: MetaJudge | None,
    cfg: DynamicConfig,
    arm: Arm,
    seed: int,
    fams: Sequence[str],
    on_step: Callable[[], None] | None,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    meta_rng = random.Random(seed)
    pools = [list(item.candidates()) for item in items]
    logits = [np.zeros(len(pool)) for pool in pools]
    version = RubricVersion(0, setup.name, setup.initial)
    history = {0: version.rubric}
    window: list[ScoredSample] = []
    curve: dict[str, list[Any]] = {"good_mass": [], "hack_mass": [], "reward": [], "version": []}
    curve.update({f"mass/{f}": [] for f in fams})
    meta_steps: list[dict[str, Any]] = []
    _record(curve, items, pools, logits, fams, version.version, None)
    for step in range(1, cfg.steps + 1):
        if cfg.expected:
            keys = [(item.id, name) for item, pool in zip(items, pools, strict=True) for name in pool]
            drawn = [list(range(len(pool))) for pool in pools]
        else:
            drawn = [list(rng.choice(len(pool), size=cfg.group, p=softmax(lg))) for pool, lg in zip(pools, logits, strict=True)]
            keys = [(item.id, pool[c]) for item, pool, cs in zip(items, pools, drawn, strict=True) for c in cs]
        scored = await book.score({setup.name: version}, keys)
        rewards_drawn = []
        for i, (item, pool, cs) in enumerate(zip(items, pools, drawn, strict=True)):
            rewards = [scored[(item.id, pool[c])].reward for c in cs]
            rewards_drawn.extend(r for r in rewards if r is not None)
            if cfg.expected:
                full = [r if r is not None else 0.0 for r in rewards]
                logits[i] = expected_update(logits[i], full, cfg.lr)
            else:
                logits[i] = group_update(logits[i], cs, rewards, cfg.lr, cfg.scale_std)
                window.extend(scored[(item.id, pool[c])] for c in cs)
        if cfg.expected:
            # The exact update weighs every candidate by its probability; the window gets a draw of the policy.
            for item, pool, lg in zip(items, pools, logits, strict=True):
                for c in rng.choice(len(pool), size=cfg.group, p=softmax(lg)):
                    window.append(scored[(item.id, pool[c])])
        mean_reward = float(np.mean(rewards_drawn)) if rewards_drawn else None
        if arm.meta and meta_judge is not None and step % cfg.meta_every == 0 and step < cfg.steps:
            usable = [s for s in window if s.reward is not None]
            outcome = await meta_judge.run(
                setup.name, version.rubric, usable, meta_rng, version=version.version, scored_under=history
            )
            accepted, why = outcome.accepted, outcome.reason
            if accepted and arm.gate is not None:
                accepted, why = await apply_gate(arm.gate, version, outcome, usable)
            if accepted and outcome.rubric is not None:
                version = RubricVersion(
                    version.version + 1, setup.name, outcome.rubric, (version.version,), "meta-step", step
                )
                history[version.version] = version.rubric
            meta_steps.append(
                {
                    "step": step,
                    "accepted": accepted,
                    "reason": why,
                    "version": version.version,
                    "rubric": version.rubric.to_markdown() if accepted else None,
                }
            )
            window = []
        _record(curve, items, pools, logits, fams, version.version, mean_reward)
        if on_step is not None:
            on_step()
    final = {
        item.id: {name: float(p) for name, p in zip(pool, softmax(lg), strict=True)}
        for item, pool, lg in zip(items, pools, logits, strict=True)
    }
    return {"seed": seed, "curve": curve, "meta_steps": meta_steps, "final_policy": final}


def _record(
    curve: dict[str, list[Any]],
    items: Sequence[HackItem],
    pools: Sequence[Sequence[str]],
    logits: Sequence[np.ndarray],
    fams: Sequence[str],
    version: int,
    reward: float | None,
) -> None:
    probs = [dict(zip(pool, softmax(lg), strict=True)) for pool, lg in zip(pools, logits, strict=True)]
    good = float(np.mean([p.get(GOOD, 0.0) for p in probs]))
    curve["good_mass"].append(good)
    curve["hack_mass"].append(1.0 - good)
    curve["reward"].append(reward)
    curve["version"].append(version)
    for f in fams:
        curve[f"mass/{f}"].append(float(np.mean([p.get(f, 0.0) for p in probs])))


def bands(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, list[float | None]]]:
    """Per step: mean, min and max over seeds of each curve (``None`` where no seed has a value)."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for key in keys:
        series = [run["curve"][key] for run in runs]
        length = min(len(s) for s in series)
        mean, low, high = [], [], []
        for t in range(length):
            values = [s[t] for s in series if s[t] is not None]
            mean.append(float(np.mean(values)) if values else None)
            low.append(float(np.min(values)) if values else None)
            high.append(float(np.max(values)) if values else None)
        out[key] = {"mean": mean, "min": low, "max": high}
    return out
