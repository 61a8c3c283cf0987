"""FSPO's data pipeline: synthetic per-user preferences, split into few-shot contexts and held-out pairs.

FSPO trains a policy to personalise from a handful of a user's past preferences placed in the prompt. The data
side, which this module builds:

1. **Synthetic users.** Each persona (a short description of a user) is a rubric of its own: the judge scores how
   well a response suits that user. The policy samples several responses per prompt once, and every persona
   judges the same responses (the "view-conditioned" comparison: one candidate set, many viewers), so two users
   with opposite tastes get opposite pairs on the same prompt.
2. **Few-shot rows.** Each user's pairs are split into held-out evaluation pairs and a training pool. Every row
   gets a ``user_context`` of up to N (4 or 8) other pairs of the same user, which ``metapo train-pref`` with
   the ``fspo`` objective places in the prompt. The context never holds the row's own pair, never a pair on
   the row's prompt, and never a held-out pair (so evaluation pairs are unseen in any context).

Source: Singh et al., "FSPO: Few-Shot Preference Optimization of Synthetic Preference Data in LLMs Elicits
Effective Personalization to Real Users", arXiv 2502.19312. Confidence: [S] (from a secondary summary). Not built:
the paper's user-description step (RAT), its >1M-preference scale and its iterative persona refinement.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metapo.prefdata.common import Policy, Prompt, RewardFn, score

logger = logging.getLogger(__name__)


@dataclass
class FSPOOptions:
    """Settings of the FSPO builder."""

    num_shots: int = field(default=4, metadata={"help": "Few-shot preferences N per context (4 or 8)."})
    heldout_per_user: int = field(default=1, metadata={"help": "Pairs per user kept out for evaluation."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Candidate responses per prompt."})
    seed: int = field(default=0, metadata={"help": "Seed of the splits and context draws."})

    def __post_init__(self) -> None:
        if self.num_shots < 0 or self.heldout_per_user < 0 or self.samples_per_prompt < 2:
            raise ValueError("fspo: need num_shots >= 0, heldout_per_user >= 0 and samples_per_prompt >= 2")


def persona_rubric(description: str) -> Any:
    """A one-item rubric that asks how well a response suits the user described."""
    from metapo.rubric.model import Rubric

    return Rubric.single(
        "Fit to this user",
        f"How well the response suits this user: {description} 0 means it ignores or contradicts what this user "
        "wants; 9 means it is exactly what this user would prefer.",
        min_score=0,
        max_score=9,
    )


def user_pairs(
    prompts: Sequence[Prompt],
    policy: Policy,
    personas: Mapping[str, RewardFn],
    samples_per_prompt: int,
) -> list[dict[str, Any]]:
    """Synthetic preferences: one candidate set per prompt, judged by every persona.

    Args:
        prompts: Prompts.
        policy: Samples the candidates.
        personas: User id to that user's reward function (e.g. a rubric reward with :func:`persona_rubric`).
        samples_per_prompt: Candidates per prompt.

    Returns:
        Rows with ``user``, ``prompt``, ``chosen`` (the user's best candidate) and ``rejected`` (their worst),
        for every user and prompt whose best strictly beats the worst.
    """
    groups = policy.generate(list(prompts), samples_per_prompt)
    n = samples_per_prompt
    owners, flat = [p for p in prompts for _ in range(n)], [s.text for g in groups for s in g]
    rows: list[dict[str, Any]] = []
    for user, reward in personas.items():
        all_scores = score(reward, owners, flat)
        for k, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
            texts = [s.text for s in group]
            scores = all_scores[k * n : (k + 1) * n]
            scored = [(s, i) for i, s in enumerate(scores) if s is not None]
            if len(scored) < 2:
                continue
            best, worst = max(scored, key=lambda t: (t[0], -t[1])), min(scored, key=lambda t: (t[0], t[1]))
            if best[0] > worst[0] and texts[best[1]] != texts[worst[1]]:
                rows.append(
                    {"user": user, "prompt": prompt, "chosen": texts[best[1]], "rejected": texts[worst[1]]}
                )
    return rows


def _triple(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}


def _key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def fewshot_rows(
    rows: Sequence[Mapping[str, Any]],
    num_shots: int = 4,
    heldout_per_user: int = 1,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split per-user pairs into training and held-out rows, each with a leakage-free ``user_context``.

    Args:
        rows: Pairs with ``user``, ``prompt``, ``chosen``, ``rejected``.
        num_shots: Context size N (fewer when the user has fewer eligible pairs).
        heldout_per_user: Pairs per user held out (a user keeps at least one training pair).
        seed: Seed of the split and the context draws.

    Returns:
        ``(train, heldout)`` rows. A context is drawn from the user's training pool only, and excludes the row's
        own pair and every pair on the same prompt.
    """
    rng = np.random.default_rng(seed)
    by_user: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("user") is None:
            raise ValueError("fspo rows need a 'user' column")
        by_user[row["user"]].append(dict(row))
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for user in sorted(by_user, key=str):
        mine = [by_user[user][i] for i in rng.permutation(len(by_user[user]))]
        held = min(heldout_per_user, max(len(mine) - 1, 0))
        pool = mine[held:]
        for split, members in ((heldout, mine[:held]), (train, pool)):
            for row in members:
                eligible = [p for p in pool if p is not row and _key(p["prompt"]) != _key(row["prompt"])]
                picks = rng.permutation(len(eligible))[:num_shots]
                split.append({**row, "user_context": [_triple(eligible[i]) for i in sorted(picks)]})
    return train, heldout


def build_fspo(
    prompts: Sequence[Prompt],
    policy: Policy,
    personas: Mapping[str, RewardFn],
    options: FSPOOptions | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Synthetic user preferences turned into FSPO training and held-out rows (see the module docstring)."""
    opts = options or FSPOOptions()
    pairs = user_pairs(prompts, policy, personas, opts.samples_per_prompt)
    train, heldout = fewshot_rows(pairs, opts.num_shots, opts.heldout_per_user, opts.seed)
    logger.info(
        "fspo: %d training and %d held-out rows from %d users", len(train), len(heldout), len(personas)
    )
    return train, heldout
