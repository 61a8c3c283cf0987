"""MCTS-DPO: step-level Monte Carlo tree search with a verifier, turned into step pairs with a shared prefix.

For each problem a tree is grown over reasoning steps (a step is the policy's text up to the step delimiter,
``"\\n"`` by default, or up to ``step_tokens``). Every simulation descends from the current node by UCT, expands a
leaf into ``children`` sampled next steps, completes the leaf's response with one policy rollout, and backs the
outcome up the path; the outcome is the verifier's verdict on the completed response (``math-verify`` on the boxed
answer for MATH), optionally mixed with a self-evaluation score. After ``simulations`` simulations the search
records one **step pair** at the current node — its highest- and lowest-valued visited children, which share the
node's prefix — and moves to the most visited child, until the response ends or ``max_depth`` steps are taken.

A step pair becomes a row whose prompt is the problem's rendered prompt followed by the shared prefix and whose
chosen/rejected are the two next steps, so DPO compares only the divergent suffix (``partial: true`` keeps the
trainer from appending an end-of-sequence token to unfinished steps). Its ``pair_smoothing`` column carries the
conservative-mode confidence from the visit counts, ``ε = min(1 − c, ½)`` with ``c = 1/(1 + N_l/max(1, N_w))``,
which the ``cdpo`` objective turns into ``−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)`` (β = 0.1 as the official scripts).

Source: Xie et al., "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning",
arXiv 2405.00451. Confidence: [V-code] for the step pairs, the divergent-suffix loss and ε. Simplified here: the
selection rule is plain UCT rather than the official PUCT with policy priors, the self-evaluation is a reward
function instead of the policy grading itself, and the search's length penalty (1.25) is not applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.prefdata.common import Policy, Prompt, RewardFn, mean, score

logger = logging.getLogger(__name__)

Verifier = Callable[[Mapping[str, Any], str], float]

MATH_INSTRUCTION = (
    "Solve the problem below step by step, one step per line, and write the final answer as \\boxed{{answer}}."
    "\n\nProblem: {problem}"
)


@dataclass
class MCTSOptions:
    """Settings of the MCTS-DPO search."""

    children: int = field(default=3, metadata={"help": "Next steps sampled when a node is expanded (2-3)."})
    max_depth: int = field(default=4, metadata={"help": "Most steps in a searched response (3-4)."})
    simulations: int = field(default=8, metadata={"help": "Simulations before each move to the next step."})
    exploration: float = field(default=1.0, metadata={"help": "UCT exploration constant."})
    step_tokens: int = field(default=64, metadata={"help": "Token limit of one step."})
    rollout_tokens: int = field(
        default=256, metadata={"help": "Token limit of a rollout that completes a response."}
    )
    step_delimiter: str = field(default="\n", metadata={"help": "Text that ends a reasoning step."})
    self_eval_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the self-evaluation score in a node's value (0: verifier only)."},
    )
    eval_samples: int = field(default=4, metadata={"help": "Responses per problem when measuring a round."})

    def __post_init__(self) -> None:
        if self.children < 2 or self.max_depth < 1 or self.simulations < 1:
            raise ValueError("mcts_dpo: need children >= 2, max_depth >= 1 and simulations >= 1")
        if not 0.0 <= self.self_eval_weight <= 1.0:
            raise ValueError(f"mcts_dpo.self_eval_weight={self.self_eval_weight}: must lie in [0, 1]")


def visit_smoothing(chosen_visits: int, rejected_visits: int) -> float:
    """Conservative-mode label smoothing of a step pair: ``min(1 − c, ½)``, ``c = 1/(1 + N_l/max(1, N_w))``.

    A chosen step visited far more than the rejected one gives ε → 0 (plain DPO); equal visits give ε = ½ (no push
    at Δ = 0); a rejected step visited more than the chosen one is capped at ½.
    """
    if chosen_visits < 0 or rejected_visits < 0:
        raise ValueError("visit counts cannot be negative")
    confidence = 1.0 / (1.0 + rejected_visits / max(1, chosen_visits))
    return min(1.0 - confidence, 0.5)


@dataclass(eq=False)
class Node:
    """A search-tree node: the response text so far, ending with this node's own step."""

    text: str
    step: str
    ended: bool
    depth: int
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    outcome: float | None = None  # cached verdict of a finished response

    @property
    def q(self) -> float:
        """Mean backed-up value."""
        return self.value_sum / self.visits if self.visits else 0.0


@dataclass(frozen=True)
class StepPair:
    """Two sibling steps after a shared prefix, with their search statistics."""

    prefix: str
    chosen: str
    rejected: str
    chosen_value: float
    rejected_value: float
    chosen_visits: int
    rejected_visits: int
    chosen_ended: bool
    rejected_ended: bool
    depth: int


class StepSearch:
    """The tree search for one problem.

    Args:
        prompt: The problem's prompt.
        row: The problem row (handed to the verifier: it holds the gold answer).
        policy: The policy proposing steps and rollouts.
        verifier: ``verifier(row, response) -> value in [0, 1]``.
        options: Search settings.
        self_eval: Optional reward function scoring a partial response (mixed in with ``self_eval_weight``).
    """

    def __init__(
        self,
        prompt: Prompt,
        row: Mapping[str, Any],
        policy: Policy,
        verifier: Verifier,
        options: MCTSOptions,
        self_eval: RewardFn | None = None,
    ) -> None:
        self.prompt, self.row, self.policy, self.verifier = prompt, row, policy, verifier
        self.options, self.self_eval = options, self_eval
        self.root = Node(text="", step="", ended=False, depth=0)

    def run(self) -> list[StepPair]:
        """Search from the root to the end of one response; return the step pair recorded at each move."""
        pairs: list[StepPair] = []
        current = self.root
        while not current.ended and current.depth < self.options.max_depth:
            for _ in range(self.options.simulations):
                leaf = self._select(current)
                self._backup(leaf, self._evaluate(leaf))
            if not current.children:
                break
            pair = sibling_pair(current)
            if pair is not None:
                pairs.append(pair)
            current = max(current.children, key=lambda c: (c.visits, c.q))
        return pairs

    def _select(self, start: Node) -> Node:
        node = start
        while not node.ended and node.depth < self.options.max_depth:
            if not node.children:
                if node is not start and node.visits == 0:
                    return node  # an unvisited leaf is evaluated as it is
                self._expand(node)
                if not node.children:
                    return node
            unvisited = [c for c in node.children if c.visits == 0]
            if unvisited:
                return unvisited[0]
            c = self.options.exploration
            node = max(node.children, key=lambda ch: ch.q + c * math.sqrt(math.log(node.visits) / ch.visits))
        return node

    def _expand(self, node: Node) -> None:
        (samples,) = self.policy.generate(
            [self.prompt],
            self.options.children,
            prefixes=[node.text],
            stop=self.options.step_delimiter,
            max_new_tokens=self.options.step_tokens,
        )
        seen: set[tuple[str, bool]] = set()
        for s in samples:
            if (s.text, s.ended) in seen:
                continue  # identical siblings would only split one branch's visits
            seen.add((s.text, s.ended))
            node.children.append(Node(node.text + s.text, s.text, s.ended, node.depth + 1, node))

    def _evaluate(self, node: Node) -> float:
        if node.outcome is None:
            response = node.text
            if not node.ended:
                (rollout,) = self.policy.generate(
                    [self.prompt], 1, prefixes=[node.text], max_new_tokens=self.options.rollout_tokens
                )
                response += rollout[0].text
            outcome = float(self.verifier(self.row, response))
            if node.ended:
                node.outcome = outcome  # a finished response always gets the same verdict
        else:
            outcome = node.outcome
        weight = self.options.self_eval_weight
        if self.self_eval is None or weight == 0.0:
            return outcome
        (judged,) = score(self.self_eval, [self.prompt], [node.text])
        return outcome if judged is None else (1.0 - weight) * outcome + weight * judged

    @staticmethod
    def _backup(node: Node | None, value: float) -> None:
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node = node.parent


def sibling_pair(node: Node) -> StepPair | None:
    """The best- and worst-valued visited children of ``node`` as a step pair (``None`` if they tie)."""
    visited = [c for c in node.children if c.visits > 0]
    if len(visited) < 2:
        return None
    best = max(visited, key=lambda c: (c.q, c.visits))
    worst = min(visited, key=lambda c: (c.q, -c.visits))
    if best.q <= worst.q or (best.step, best.ended) == (worst.step, worst.ended):
        return None
    return StepPair(
        prefix=node.text,
        chosen=best.step,
        rejected=worst.step,
        chosen_value=best.q,
        rejected_value=worst.q,
        chosen_visits=best.visits,
        rejected_visits=worst.visits,
        chosen_ended=best.ended,
        rejected_ended=worst.ended,
        depth=node.depth,
    )


def step_rows(prompt: Prompt, pairs: Sequence[StepPair], policy: Policy) -> list[dict[str, Any]]:
    """Preference rows of one problem's step pairs (for ``cdpo``, which reads ``pair_smoothing``).

    The prompt of a row is the problem's rendered prompt followed by the shared prefix; a step that finished the
    response carries the policy's end-of-sequence text, the others carry none (``partial: true``).
    """
    rows = []
    for pair in pairs:
        rows.append(
            {
                "prompt": policy.render(prompt, pair.prefix),
                "chosen": pair.chosen + (policy.eos_text if pair.chosen_ended else ""),
                "rejected": pair.rejected + (policy.eos_text if pair.rejected_ended else ""),
                "partial": True,
                "pair_smoothing": visit_smoothing(pair.chosen_visits, pair.rejected_visits),
                "chosen_value": pair.chosen_value,
                "rejected_value": pair.rejected_value,
                "chosen_visits": pair.chosen_visits,
                "rejected_visits": pair.rejected_visits,
                "depth": pair.depth,
            }
        )
    return rows


def math_verifier(row: Mapping[str, Any], response: str) -> float:
    """1.0 when the response's last boxed answer equals the row's ``answer`` by ``math-verify``, else 0.0."""
    from metapo.tasks.math_answers import check_response

    return 1.0 if check_response(row.get("answer"), response) else 0.0


def problem_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Problems as ``{"prompt", "answer"}``: MATH rows (``problem``/``solution``) get an instruction prompt and
    the gold answer from the solution's boxed expression; rows with ``prompt`` and ``answer`` pass through.

    Raises:
        ValueError: A row without a readable gold answer (naming the row).
    """
    from metapo.tasks.math_answers import boxed_answer

    out = []
    for i, row in enumerate(rows):
        if row.get("problem") is not None:
            answer = row.get("answer") or boxed_answer(str(row.get("solution") or ""))
            prompt: Prompt = [{"role": "user", "content": MATH_INSTRUCTION.format(problem=row["problem"])}]
        else:
            answer, prompt = row.get("answer"), row.get("prompt")
        if not answer or prompt is None:
            raise ValueError(
                f"problem row {i} needs 'problem' and 'solution' (MATH) or 'prompt' and 'answer'; got {sorted(row)}"
            )
        out.append({**row, "prompt": prompt, "answer": str(answer)})
    return out


def build_mcts(
    problems: Sequence[Mapping[str, Any]],
    policy: Policy,
    verifier: Verifier = math_verifier,
    options: MCTSOptions | None = None,
    self_eval: RewardFn | None = None,
) -> list[dict[str, Any]]:
    """One MCTS-DPO round's step pairs over ``problems`` (rows with ``prompt`` and what the verifier needs)."""
    opts = options or MCTSOptions()
    rows: list[dict[str, Any]] = []
    for problem in problems:
        pairs = StepSearch(problem["prompt"], problem, policy, verifier, opts, self_eval).run()
        rows.extend(step_rows(problem["prompt"], pairs, policy))
    logger.info("mcts-dpo: %d step pairs from %d problems", len(rows), len(problems))
    return rows


def measure_mcts(
    problems: Sequence[Mapping[str, Any]],
    policy: Policy,
    verifier: Verifier,
    samples: int,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """The loop's objective: the verifier's mean verdict (the pass rate for a 0/1 verifier) over ``samples``
    responses per problem, each at most ``max_new_tokens`` long (default: the policy's limit)."""
    groups = policy.generate([p["prompt"] for p in problems], samples, max_new_tokens=max_new_tokens)
    values = [float(verifier(p, s.text)) for p, group in zip(problems, groups, strict=True) for s in group]
    return {"verifier/pass_rate": mean(values)}
