"""Length-aware rewards for reasoning RL: GRPO-λ, SLPO (ORION), HAPO and the curriculum of "Train Long, Think Short".

Each rule wraps a *base* reward (a verifier such as :class:`~metapo.reward.rules.AnswerReward`, or
:class:`~metapo.reward.RubricReward` in a Meta Policy Optimization run) and reads correctness off it as
``base >= correct_threshold``. GRPO-λ, SLPO and HAPO return ``base + length term``; with a 0/1 verifier as the base
this is exactly each paper's reward, and with a rubric score as the base it makes an MPO run length-aware. The
length of a completion is its token count as TRL hands it over (including the EOS token when generation ended).

Samples whose base reward is ``None`` get ``None`` and count neither as correct nor as incorrect.

How far each formula was checked (catalog tags): GRPO-λ is from memory of the paper [R] (the λ fraction, the
rounding of the top-λ count and the length weight are unverified); SLPO is from a secondary summary [S] (α is
unverified); HAPO was checked against the official code [V-code]; the curriculum against the paper [V-paper].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metapo.reward.rules.base import (
    Reward,
    RewardFn,
    call_reward,
    group_starts,
    is_correct,
    lengths_of,
    log_metrics,
    nanmean,
    prompt_key,
)


# ----- pure rules (hand-checkable) -------------------------------------------------------------------------------
def kimi_length_reward(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Kimi-1.5 length reward over one group: ``λ = 0.5 − (L − L_min)/(L_max − L_min)``; incorrect get ``min(0, λ)``.

    L_min and L_max are taken over the whole group; a group of equal lengths gets 0 everywhere.
    """
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    lam = [0.5 - (n - lo) / (hi - lo) for n in lengths]
    return [x if ok else min(0.0, x) for x, ok in zip(lam, correct, strict=True)]


def top_fraction(ratios: Sequence[float], fraction: float) -> set[int]:
    """Indices of the ``ceil(fraction · n)`` highest ratios; ties keep batch order (GRPO-λ's group selection)."""
    k = math.ceil(fraction * len(ratios) - 1e-9)
    order = sorted(range(len(ratios)), key=lambda i: -ratios[i])
    return set(order[:k])


def slpo_bonus(lengths: Sequence[int], correct: Sequence[bool], alpha: float) -> list[float]:
    """SLPO's length bonus over one group: ``α·(L_max − L)/(L_max − L_min)`` for correct responses.

    L_min and L_max are taken over the correct responses only. Incorrect responses, a lone correct response, and
    correct responses of equal length get 0 (so their reward is the plain correctness reward).
    """
    right = [n for n, ok in zip(lengths, correct, strict=True) if ok]
    if len(right) < 2 or max(right) == min(right):
        return [0.0] * len(lengths)
    lo, hi = min(right), max(right)
    return [alpha * (hi - n) / (hi - lo) if ok else 0.0 for n, ok in zip(lengths, correct, strict=True)]


def hapo_length_reward(length: int, history: int | None, correct: bool, floor: float = -0.7) -> float:
    """HAPO's length reward against the shortest correct length ``history`` seen so far for the problem.

    ``f = cos(min(L/h, 2)·π/2)``: a correct response gets ``max(floor, f)``, an incorrect one ``min(0, f)``, and a
    problem with no correct response yet gives 0.
    """
    if history is None:
        return 0.0
    f = math.cos(min(length / history, 2.0) * math.pi / 2)
    return max(floor, f) if correct else min(0.0, f)


def budget_schedule(step: int, initial: int, decay: float, period: int) -> int:
    """The curriculum's token budget ``B(t) = max(1, ⌊B_0·γ^⌊t/T⌋⌋)``: constant within each block of T steps."""
    return max(1, math.floor(initial * decay ** (step // period)))


def triangular_length_reward(length: int, budget: int, peak: float = 1.0) -> float:
    """``R_len``: rises linearly to ``peak`` at the budget L, falls linearly to 0 at 2L, and is 0 beyond."""
    if length <= budget:
        return peak * length / budget
    if length <= 2 * budget:
        return peak * (1 - (length - budget) / budget)
    return 0.0


# ----- the rules as TRL reward functions --------------------------------------------------------------------------
@dataclass
class Batch:
    """What a length rule sees: the batch, its base rewards, correctness and lengths."""

    prompts: list[Any]
    base: list[Reward]
    correct: list[bool | None]
    lengths: list[int]
    kwargs: dict[str, Any]


class LengthRule:
    """Base of the length rules: calls the base reward once, then :meth:`shape` turns it into the final reward."""

    __name__ = "length_rule"

    def __init__(self, base: RewardFn, *, correct_threshold: float = 0.5) -> None:
        self.base = base
        self.correct_threshold = correct_threshold

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[Reward]:
        base = await call_reward(self.base, prompts, completions, completion_ids, **kwargs)
        batch = Batch(
            list(prompts),
            base,
            [is_correct(r, self.correct_threshold) for r in base],
            lengths_of(completion_ids),
            kwargs,
        )
        rewards, metrics = self.shape(batch)
        log_metrics(kwargs, metrics)
        return rewards

    def shape(self, batch: Batch) -> tuple[list[Reward], dict[str, float]]:
        raise NotImplementedError


def _add(base: Sequence[Reward], bonus: Sequence[float]) -> list[Reward]:
    return [None if b is None else b + x for b, x in zip(base, bonus, strict=True)]


class GRPOLambda(LengthRule):
    """GRPO-λ (arXiv 2505.18086) [R]: the most accurate ``fraction`` of groups in the batch get a length reward.

    Each group's correctness ratio is computed; the top ``ceil(fraction · groups)`` groups get
    ``weight · kimi_length_reward`` on top of the base reward, every other group the base reward alone. "The
    batch" is what one reward call sees: the whole generation batch on one process, the process's share of it
    otherwise (catalog §1.3).

    Args:
        base: Base (correctness) reward.
        num_generations: The trainer's ``num_generations``.
        fraction: λ, the fraction of groups that get the length reward (unverified default).
        weight: Weight of the length reward (unverified default).
    """

    __name__ = "grpo_lambda"

    def __init__(
        self,
        base: RewardFn,
        *,
        num_generations: int,
        fraction: float = 0.5,
        weight: float = 1.0,
        correct_threshold: float = 0.5,
    ) -> None:
        super().__init__(base, correct_threshold=correct_threshold)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"grpo_lambda: fraction={fraction} must lie in [0, 1]")
        self.num_generations, self.fraction, self.weight = num_generations, fraction, weight

    def shape(self, batch: Batch) -> tuple[list[Reward], dict[str, float]]:
        starts = group_starts(batch.prompts, self.num_generations)
        groups = [range(s, s + self.num_generations) for s in starts]
        scored = [[i for i in g if batch.correct[i] is not None] for g in groups]
        ratios = [sum(bool(batch.correct[i]) for i in g) / len(g) if g else 0.0 for g in scored]
        chosen = top_fraction(ratios, self.fraction)
        bonus = [0.0] * len(batch.base)
        for gi in chosen:
            idx = scored[gi]
            if idx:
                terms = kimi_length_reward(
                    [batch.lengths[i] for i in idx], [bool(batch.correct[i]) for i in idx]
                )
                for i, term in zip(idx, terms, strict=True):
                    bonus[i] = self.weight * term
        terms_chosen = [bonus[i] for gi in chosen for i in scored[gi]]
        metrics = {
            "grpo_lambda/selected_groups": len(chosen) / max(len(groups), 1),
            "grpo_lambda/length_term": nanmean(terms_chosen),
            "grpo_lambda/accuracy": nanmean([float(c) for c in batch.correct if c is not None]),
        }
        return _add(batch.base, bonus), metrics


class SLPO(LengthRule):
    """SLPO / ORION (arXiv 2511.22891) [S]: among a group's correct responses, shorter earns up to ``α`` more.

    With a 0/1 base: 0 when incorrect; 1 for a lone correct response or correct responses of equal length;
    otherwise ``1 + α·(L_max − L)/(L_max − L_min)`` over the correct responses.

    Args:
        base: Base (correctness) reward.
        num_generations: The trainer's ``num_generations``.
        alpha: Size of the length bonus (unverified default).
    """

    __name__ = "slpo"

    def __init__(
        self, base: RewardFn, *, num_generations: int, alpha: float = 1.0, correct_threshold: float = 0.5
    ) -> None:
        super().__init__(base, correct_threshold=correct_threshold)
        self.num_generations, self.alpha = num_generations, alpha

    def shape(self, batch: Batch) -> tuple[list[Reward], dict[str, float]]:
        bonus = [0.0] * len(batch.base)
        for start in group_starts(batch.prompts, self.num_generations):
            idx = [i for i in range(start, start + self.num_generations) if batch.correct[i] is not None]
            terms = slpo_bonus(
                [batch.lengths[i] for i in idx], [bool(batch.correct[i]) for i in idx], self.alpha
            )
            for i, term in zip(idx, terms, strict=True):
                bonus[i] = term
        right = [bonus[i] for i, c in enumerate(batch.correct) if c]
        metrics = {
            "slpo/length_bonus": nanmean(right),
            "slpo/correct_length": nanmean(
                [float(n) for n, c in zip(batch.lengths, batch.correct, strict=True) if c]
            ),
        }
        return _add(batch.base, bonus), metrics


class HAPO(LengthRule):
    """HAPO (arXiv 2505.11225) [V-code]: a cosine length reward against each problem's shortest correct answer so far.

    The reward is ``base + weight · hapo_length_reward(L, h, correct)``, scored with the history as it stood
    before the batch; then ``h ← min(h, shortest correct length in the batch)``. The history is keyed by the
    ``key_column`` column (e.g. a problem id) or, without one, by the prompt. It is this object's state: save it
    with :class:`~metapo.reward.rules.RuleStateCallback` so a resumed run keeps it. With several processes each
    keeps its own history of the problems it saw.

    Args:
        base: Base (correctness) reward.
        weight: Weight ``w`` of the length reward (the paper: 1).
        floor: Lowest length reward of a correct response (the paper: −0.7).
        key_column: Dataset column that identifies a problem; ``None`` keys by the prompt.
    """

    __name__ = "hapo"

    def __init__(
        self,
        base: RewardFn,
        *,
        weight: float = 1.0,
        floor: float = -0.7,
        key_column: str | None = None,
        correct_threshold: float = 0.5,
    ) -> None:
        super().__init__(base, correct_threshold=correct_threshold)
        self.weight, self.floor, self.key_column = weight, floor, key_column
        self.history: dict[str, int] = {}

    def _keys(self, batch: Batch) -> list[str]:
        if self.key_column is None:
            return [prompt_key(p) for p in batch.prompts]
        if self.key_column not in batch.kwargs:
            raise ValueError(f"hapo: the dataset has no {self.key_column!r} column (key_column)")
        return [str(k) for k in batch.kwargs[self.key_column]]

    def shape(self, batch: Batch) -> tuple[list[Reward], dict[str, float]]:
        keys = self._keys(batch)
        terms = [
            0.0 if ok is None else hapo_length_reward(n, self.history.get(k), ok, self.floor)
            for k, n, ok in zip(keys, batch.lengths, batch.correct, strict=True)
        ]
        known = sum(k in self.history for k in keys) / max(len(keys), 1)
        for k, n, ok in zip(keys, batch.lengths, batch.correct, strict=True):
            if ok:
                self.history[k] = min(self.history.get(k, n), n)
        metrics = {
            "hapo/length_reward": nanmean(terms),
            "hapo/with_history": known,
            "hapo/problems": float(len(self.history)),
        }
        return _add(batch.base, [self.weight * t for t in terms]), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {str(k): int(v) for k, v in state.get("history", {}).items()}


class CurriculumLength(LengthRule):
    """Curriculum GRPO, "Train Long, Think Short" (arXiv 2508.08940) [V-paper]: a triangular reward at a shrinking budget.

    ``r = correct_weight · base + length_weight · R_len(L; B(t))`` with ``B(t) = max(1, ⌊B_0·γ^⌊t/T⌋⌋)`` read from
    ``trainer_state.global_step``. The paper's format term is a separate reward function (e.g.
    ``trl.rewards.think_format_reward``) combined through ``GRPOConfig.reward_weights``. The paper also states
    the budget in the prompt: :class:`~metapo.reward.rules.RuleGRPOTrainer` replaces ``{budget}`` in the prompts
    with the current budget before generation (see :meth:`before_generation`).

    Args:
        base: Base (correctness) reward.
        initial_budget: ``B_0`` in tokens (the paper: 256).
        decay: ``γ`` (the paper's example: 0.7).
        period: ``T``, steps per budget level (the paper's example: 100).
        correct_weight, length_weight: ``λ_c`` and ``λ_ℓ`` (the paper: 0.6 and 0.3, or 0.3 and 0.6).
        peak: ``R_max``, the length reward at the budget.
    """

    __name__ = "curriculum"

    def __init__(
        self,
        base: RewardFn,
        *,
        initial_budget: int = 256,
        decay: float = 0.7,
        period: int = 100,
        correct_weight: float = 0.6,
        length_weight: float = 0.3,
        peak: float = 1.0,
    ) -> None:
        super().__init__(base)
        if initial_budget < 1 or period < 1 or not 0.0 < decay <= 1.0:
            raise ValueError("curriculum: initial_budget and period must be >= 1 and decay in (0, 1]")
        self.initial_budget, self.decay, self.period = initial_budget, decay, period
        self.correct_weight, self.length_weight, self.peak = correct_weight, length_weight, peak

    def budget(self, step: int) -> int:
        """The token budget at optimizer step ``step``."""
        return budget_schedule(step, self.initial_budget, self.decay, self.period)

    def before_generation(self, inputs: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """Rows with ``{budget}`` in their prompt replaced by the budget of ``step`` (other rows unchanged)."""
        token = "{budget}"
        value = str(self.budget(step))

        def fill(prompt: Any) -> Any:
            if isinstance(prompt, str):
                return prompt.replace(token, value)
            return [
                {**m, "content": m["content"].replace(token, value)}
                if isinstance(m.get("content"), str)
                else m
                for m in prompt
            ]

        return [{**row, "prompt": fill(row["prompt"])} if "prompt" in row else row for row in inputs]

    def shape(self, batch: Batch) -> tuple[list[Reward], dict[str, float]]:
        state = batch.kwargs.get("trainer_state")
        budget = self.budget(int(getattr(state, "global_step", 0) or 0))
        terms = [triangular_length_reward(n, budget, self.peak) for n in batch.lengths]
        rewards = [
            None if b is None else self.correct_weight * b + self.length_weight * t
            for b, t in zip(batch.base, terms, strict=True)
        ]
        return rewards, {"curriculum/budget": float(budget), "curriculum/length_reward": nanmean(terms)}
