"""Plumbing shared by the rules: calling a wrapped reward function, the group layout of a batch, lengths, logging.

Every rule is a TRL reward function (``await rule(prompts=..., completions=..., completion_ids=..., **columns)``)
that wraps other reward functions and calls each of them once. Wrapping, rather than listing a length term beside
the base reward in ``reward_funcs``, matters for ``None``: TRL *sums* the reward functions with ``nansum``, so a
sample the judge could not score (``None`` from :class:`~metapo.reward.RubricReward`) would silently get the length
term alone, as if its judge score were 0. A rule returns ``None`` wherever its base does, and TRL then leaves the
sample out of the group statistics and the loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

RewardFn = Callable[..., "list[float | None] | Awaitable[list[float | None]]"]
Reward = float | None


async def call_reward(
    fn: RewardFn,
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]] | None,
    **kwargs: Any,
) -> list[Reward]:
    """Call a sync or async TRL reward function; NaN becomes ``None`` and the length is checked."""
    out = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
    if inspect.isawaitable(out):
        out = await out
    values = [None if v is None or math.isnan(float(v)) else float(v) for v in out]
    if len(values) != len(prompts):
        raise ValueError(
            f"reward {reward_name(fn)} returned {len(values)} values for {len(prompts)} completions"
        )
    return values


async def call_all(
    fns: Sequence[RewardFn],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]] | None,
    **kwargs: Any,
) -> list[list[Reward]]:
    """Call several reward functions on the same batch concurrently (async ones overlap their judge calls)."""
    return list(
        await asyncio.gather(*(call_reward(fn, prompts, completions, completion_ids, **kwargs) for fn in fns))
    )


def reward_name(fn: Any) -> str:
    """The name TRL logs a reward function under."""
    return str(getattr(fn, "__name__", type(fn).__name__))


def group_starts(prompts: Sequence[Any], num_generations: int) -> range:
    """Start index of each group of ``num_generations`` consecutive completions of one prompt.

    TRL's sampler lays a batch out as whole groups, one prompt repeated ``num_generations`` times, but a reward
    function only sees its own process's slice (catalog §1.3). A rule that needs the group must therefore get
    whole groups: run one process, or make ``per_device_train_batch_size * steps_per_generation`` a multiple of
    ``num_generations``. A batch that is not laid out that way is an error, not a silently wrong reward.
    """
    n = len(prompts)
    if num_generations < 1 or n % num_generations:
        raise ValueError(
            f"{n} completions are not whole groups of num_generations={num_generations}; give the rule the "
            "trainer's num_generations, and keep each group on one process (per_device_train_batch_size x "
            "steps_per_generation a multiple of num_generations, or a single process)"
        )
    starts = range(0, n, num_generations)
    for start in starts:
        first = prompts[start]
        if any(prompts[i] != first for i in range(start + 1, start + num_generations)):
            raise ValueError(
                f"completions {start}..{start + num_generations - 1} mix prompts: num_generations="
                f"{num_generations} does not match the trainer's, or a group is split across processes"
            )
    return starts


def lengths_of(completion_ids: list[list[int]] | None) -> list[int]:
    """Completion lengths in tokens as TRL hands them over (the EOS token included when generation ended)."""
    if completion_ids is None:
        raise ValueError("length rules need completion_ids (TRL passes them to every reward function)")
    return [len(ids) for ids in completion_ids]


def is_correct(reward: Reward, threshold: float) -> bool | None:
    """Correctness read off a base reward: ``None`` when the base could not score the sample."""
    return None if reward is None else reward >= threshold


def prompt_key(prompt: Any) -> str:
    """A short stable key for a prompt (string or message list), for per-problem state."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def log_metrics(kwargs: dict[str, Any], metrics: dict[str, float]) -> None:
    """Send metrics through TRL's ``log_metric`` hook (absent when a rule is called outside a trainer)."""
    log_metric = kwargs.get("log_metric")
    if log_metric is None:
        return
    for name, value in metrics.items():
        if value is not None and not math.isnan(value):
            log_metric(name, float(value))


def nanmean(values: Sequence[Reward]) -> float:
    """Mean of the scored values; NaN when none was scored."""
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else math.nan
