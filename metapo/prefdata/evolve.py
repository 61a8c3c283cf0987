"""EVOLVE (earlier ARIES): self-refinement chains filtered into preference pairs, trained round after round.

Each round the current policy answers every prompt (``y⁽⁰⁾``) and then refines its own answer K times,
``y⁽ᵏ⁺¹⁾ ∼ π(· | x, y⁽ᵏ⁾, refine)``. A reward model (or a rule) scores every answer of the chain, and the chain
becomes two kinds of pairs for DPO:

- a **direct-answer pair** ``(x; best, worst)`` over the chain's answers, when the best scores strictly higher;
- a **refinement pair** for every step that improved: prompt ``x ⊕ y⁽ᵏ⁾ ⊕ refine``, chosen ``y⁽ᵏ⁺¹⁾``, rejected
  ``y⁽ᵏ⁾`` (keeping the old answer). A step that did not improve, or repeated the answer, yields nothing.

At inference, :func:`refinement_chains` is the refine-K-times procedure itself.

Source: "EVOLVE" / "ARIES: self-refinement via iterative preference optimization", arXiv 2502.05605.
Confidence: [S/R] — from a secondary summary and memory of the paper; the paper compares several weightings of
the two pair types, which are not reproduced (both kinds enter one DPO dataset with equal weight), and the
refinement prompt is metapo's own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.prefdata.common import Policy, Prompt, RewardFn, mean, score

logger = logging.getLogger(__name__)

REFINE_INSTRUCTION = (
    "Here is an earlier answer to the request above. Write an improved answer: fix its mistakes, keep what is "
    "right, and reply with the new answer only."
)


@dataclass
class EvolveOptions:
    """Settings of the EVOLVE builder."""

    refinements: int = field(default=2, metadata={"help": "Refinement steps K after the first answer."})
    chains_per_prompt: int = field(default=2, metadata={"help": "Independent chains sampled per prompt."})
    eval_samples: int = field(
        default=4, metadata={"help": "Direct answers per prompt when measuring a round."}
    )

    def __post_init__(self) -> None:
        if self.refinements < 1 or self.chains_per_prompt < 1 or self.eval_samples < 1:
            raise ValueError("evolve: refinements, chains_per_prompt and eval_samples must be >= 1")


def refine_prompt(prompt: Prompt, answer: str) -> Prompt:
    """``x ⊕ y ⊕ refine``: the prompt asking the policy to improve ``answer``.

    Chat prompts get the answer as an assistant turn and the request as a new user turn; strings get both as text.
    """
    if isinstance(prompt, str):
        return f"{prompt}\n\nEarlier answer:\n{answer}\n\n{REFINE_INSTRUCTION}\n\n"
    return [
        *prompt,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": REFINE_INSTRUCTION},
    ]


def refinement_chains(
    policy: Policy, prompts: Sequence[Prompt], refinements: int, n: int = 1
) -> list[list[str]]:
    """``n`` chains ``[y⁽⁰⁾, …, y⁽ᴷ⁾]`` per prompt (prompt-major), each refining the previous answer.

    Args:
        policy: The policy.
        prompts: Prompts.
        refinements: K.
        n: Chains per prompt.

    Returns:
        ``len(prompts)·n`` chains of ``K+1`` answers.
    """
    firsts = policy.generate(list(prompts), n)
    chains = [[s.text] for group in firsts for s in group]
    owners = [p for p in prompts for _ in range(n)]
    for _ in range(refinements):
        asks = [refine_prompt(p, chain[-1]) for p, chain in zip(owners, chains, strict=True)]
        for chain, (sample,) in zip(chains, policy.generate(asks, 1), strict=True):
            chain.append(sample.text)
    return chains


def chain_pairs(prompt: Prompt, chain: Sequence[str], scores: Sequence[float | None]) -> list[dict[str, Any]]:
    """The direct-answer pair and the improving refinement pairs of one scored chain.

    Args:
        prompt: The original prompt x.
        chain: ``[y⁽⁰⁾, …, y⁽ᴷ⁾]``.
        scores: Score of each answer (``None``: unscored, never paired).

    Returns:
        Rows with ``prompt``, ``chosen``, ``rejected``, their scores and ``kind`` (``"direct"`` or ``"refine"``).
    """
    rows: list[dict[str, Any]] = []
    for k in range(len(chain) - 1):
        before, after = scores[k], scores[k + 1]
        if before is None or after is None or after <= before or chain[k + 1] == chain[k]:
            continue
        rows.append(_row(refine_prompt(prompt, chain[k]), chain[k + 1], chain[k], after, before, "refine"))
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) >= 2:
        best = max(scored, key=lambda t: (t[0], -t[1]))
        worst = min(scored, key=lambda t: (t[0], t[1]))
        if best[0] > worst[0] and chain[best[1]] != chain[worst[1]]:
            rows.append(_row(prompt, chain[best[1]], chain[worst[1]], best[0], worst[0], "direct"))
    return rows


def _row(
    prompt: Prompt, chosen: str, rejected: str, chosen_score: float, rejected_score: float, kind: str
) -> dict:
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_reward": chosen_score,
        "rejected_reward": rejected_score,
        "kind": kind,
    }


def build_evolve(
    prompts: Sequence[Prompt], policy: Policy, reward: RewardFn, options: EvolveOptions | None = None
) -> list[dict[str, Any]]:
    """One EVOLVE round's preference rows.

    Args:
        prompts: Prompts.
        policy: The current policy.
        reward: Scores each answer against its original prompt (an RM or a rule).
        options: Settings.

    Returns:
        Direct-answer and refinement rows for ``metapo train-pref`` (objective ``dpo``).
    """
    opts = options or EvolveOptions()
    chains = refinement_chains(policy, prompts, opts.refinements, opts.chains_per_prompt)
    owners = [p for p in prompts for _ in range(opts.chains_per_prompt)]
    flat_prompts = [p for p, chain in zip(owners, chains, strict=True) for _ in chain]
    flat_answers = [a for chain in chains for a in chain]
    flat_scores = score(reward, flat_prompts, flat_answers)
    rows: list[dict[str, Any]] = []
    width = opts.refinements + 1
    for c, (prompt, chain) in enumerate(zip(owners, chains, strict=True)):
        rows.extend(chain_pairs(prompt, chain, flat_scores[c * width : (c + 1) * width]))
    logger.info(
        "evolve: %d pairs (%d refinement) from %d chains",
        len(rows),
        sum(r["kind"] == "refine" for r in rows),
        len(chains),
    )
    return rows


def measure_evolve(
    prompts: Sequence[Prompt], policy: Policy, reward: RewardFn, options: EvolveOptions | None = None
) -> dict[str, float]:
    """The loop's objective: mean reward of direct answers, of once-refined answers, and of both together
    (``reward/mean``: what EVOLVE's answer-then-refine inference produces)."""
    opts = options or EvolveOptions()
    chains = refinement_chains(policy, prompts, 1, opts.eval_samples)
    owners = [p for p in prompts for _ in range(opts.eval_samples)]
    direct = score(reward, owners, [c[0] for c in chains])
    refined = score(reward, owners, [c[1] for c in chains])
    return {
        "reward/direct": mean(direct),
        "reward/refined": mean(refined),
        "reward/mean": mean(direct + refined),
    }
