"""Structured PO: reasoning chains scored on several criteria into preference pairs, trained on a horizon curriculum.

For a long-horizon planning task the policy samples several reasoning-and-action chains. A judge scores each chain
on three criteria — task relevance, grounding in the observations, and consistency with the history of actions —
as the items of a rubric, and the chain's score is the rubric reward: the weighted mean of the item scores mapped
to [0, 1]. With positive weights that score rises whenever one criterion rises and the others stay, which is what
makes the best-versus-worst pair a fair preference. Pairs are then ordered by the task's horizon (its number of
steps) and cut into curriculum stages, from ultra-short to long tasks; train on the stages in order (one
``metapo train-pref`` run per stage file, each starting from the previous stage's model).

Source: "Structured Preference Optimization for Vision-Language Long-Horizon Task Planning", arXiv 2502.20742
(EMNLP 2025). Confidence: [abstract-level] — only the abstract was available. The three criteria are the
abstract's; their wording, the 0–9 scale, equal weights, the stage boundaries and the text-only setting are
metapo's reconstruction (the paper works with vision-language models and its ExtendaBench tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.prefdata.common import Policy, Prompt

logger = logging.getLogger(__name__)

# Per completion: (combined score, {criterion id: score in [0, 1]}), or None when it could not be scored.
CriteriaScorer = Callable[[Sequence[Prompt], Sequence[str]], list[tuple[float, dict[str, float]] | None]]

DEFAULT_CRITERIA: tuple[dict[str, Any], ...] = (
    {
        "title": "Task relevance",
        "description": "Every reasoning step and action serves the task's goal. 0: the plan ignores the goal; "
        "9: each step visibly advances it.",
    },
    {
        "title": "Grounding",
        "description": "Steps refer only to objects, places and facts present in the task's observations. "
        "0: the plan invents things; 9: everything it uses is in the observations.",
    },
    {
        "title": "Historical consistency",
        "description": "Each step agrees with the actions already taken and the state they produced, without "
        "repeating or undoing them. 0: contradicts its own history; 9: fully consistent.",
    },
)


@dataclass
class StructuredOptions:
    """Settings of the Structured PO builder."""

    samples_per_prompt: int = field(default=4, metadata={"help": "Reasoning chains sampled per task."})
    min_margin: float = field(
        default=0.0, metadata={"help": "Least score gap (in [0, 1]) between chosen and rejected chains."}
    )
    stage_bounds: list[int] = field(
        default_factory=lambda: [2, 5, 10],
        metadata={"help": "Upper horizons of the curriculum stages; longer tasks form the last stage."},
    )
    step_delimiter: str = field(
        default="\n", metadata={"help": "Separates steps when a task's horizon is read from its chain."}
    )

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("structured_po.samples_per_prompt must be >= 2")
        if list(self.stage_bounds) != sorted(set(self.stage_bounds)):
            raise ValueError(f"structured_po.stage_bounds={self.stage_bounds}: use increasing horizons")


def criteria_rubric(items: Sequence[dict[str, Any]] | None = None) -> Any:
    """The criteria rubric (0–9 per criterion, equal weights by default); weights must be positive.

    Raises:
        ValueError: A criterion with weight ≤ 0, which would make the score fall when that criterion improves.
    """
    from metapo.rubric.model import Rubric

    specs = [{"min_score": 0, "max_score": 9, **dict(item)} for item in (items or DEFAULT_CRITERIA)]
    return require_positive_weights(Rubric.from_items(specs))


def require_positive_weights(rubric: Any) -> Any:
    """``rubric`` itself, after checking that every criterion weighs positively (the score's monotonicity).

    Raises:
        ValueError: Naming the criteria with weight ≤ 0.
    """
    bad = [item.id for item in rubric.items if item.weight <= 0]
    if bad:
        raise ValueError(f"structured_po criteria need positive weights; fix {bad}")
    return rubric


def chain_horizon(chain: str, delimiter: str = "\n") -> int:
    """Number of non-empty steps in a reasoning chain."""
    return sum(1 for step in chain.split(delimiter) if step.strip())


def stage_of(horizon: int, bounds: Sequence[int]) -> int:
    """Curriculum stage of a horizon: the first bound it does not exceed, else the last stage."""
    for index, bound in enumerate(bounds):
        if horizon <= bound:
            return index
    return len(bounds)


def curriculum(rows: Sequence[dict[str, Any]], bounds: Sequence[int]) -> list[list[dict[str, Any]]]:
    """Rows grouped into stages by ``horizon`` and sorted within each stage (stable), so that the concatenated
    stages have a non-decreasing horizon. Empty stages are kept, one list per stage."""
    stages: list[list[dict[str, Any]]] = [[] for _ in range(len(bounds) + 1)]
    for row in sorted(rows, key=lambda r: int(r["horizon"])):
        stages[stage_of(int(row["horizon"]), bounds)].append(
            {**row, "stage": stage_of(int(row["horizon"]), bounds)}
        )
    return stages


def build_structured(
    tasks: Sequence[dict[str, Any]],
    policy: Policy,
    scorer: CriteriaScorer,
    options: StructuredOptions | None = None,
) -> list[list[dict[str, Any]]]:
    """Criteria-scored chain pairs, in curriculum stages.

    Args:
        tasks: Rows with ``prompt`` and optionally ``horizon`` (else read from the best chain's step count).
        policy: Samples the reasoning chains.
        scorer: Scores chains on the criteria (e.g. :class:`~metapo.prefdata.common.ItemScores` around a rubric
            reward with :func:`criteria_rubric`).
        options: Settings.

    Returns:
        One list of rows per curriculum stage; each row has ``prompt``, ``chosen``, ``rejected``, both scores,
        both per-criterion scores, ``horizon`` and ``stage``.
    """
    opts = options or StructuredOptions()
    prompts = [t["prompt"] for t in tasks]
    groups = policy.generate(prompts, opts.samples_per_prompt)
    n = opts.samples_per_prompt
    all_scores = scorer([p for p in prompts for _ in range(n)], [s.text for g in groups for s in g])
    rows: list[dict[str, Any]] = []
    for k, (task, group) in enumerate(zip(tasks, groups, strict=True)):
        chains = [s.text for s in group]
        scored = [(r, i) for i, r in enumerate(all_scores[k * n : (k + 1) * n]) if r is not None]
        if len(scored) < 2:
            continue
        (best, b), (worst, w) = (
            max(scored, key=lambda t: (t[0][0], -t[1])),
            min(scored, key=lambda t: (t[0][0], t[1])),
        )
        if best[0] - worst[0] <= opts.min_margin or chains[b] == chains[w]:
            continue
        horizon = task.get("horizon")
        rows.append(
            {
                "prompt": task["prompt"],
                "chosen": chains[b],
                "rejected": chains[w],
                "chosen_reward": best[0],
                "rejected_reward": worst[0],
                "chosen_criteria": best[1],
                "rejected_criteria": worst[1],
                "horizon": int(horizon)
                if horizon is not None
                else chain_horizon(chains[b], opts.step_delimiter),
            }
        )
    stages = curriculum(rows, opts.stage_bounds)
    logger.info("structured-po: %d pairs in stages of sizes %s", len(rows), [len(s) for s in stages])
    return stages
