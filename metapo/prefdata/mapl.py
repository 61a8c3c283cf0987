"""MAPL: prompt-side preference pairs (same response, edited instruction) and multi-instruction pairs.

**Intra-sample pairs.** The policy answers a task with its list of checkable instructions. Keeping that answer y
fixed, the builder writes two prompts: x⁺ holds only instructions y satisfies, and x⁻ is x⁺ with exactly one of
them replaced by an edited instruction y violates ("at most 50 words" → "at most 12 words", "use the word X" →
"do not use the word X"). The row compares ``π(y | x⁺)`` with ``π(y | x⁻)``: ``prompt`` = x⁺, ``rejected_prompt``
= x⁻ and ``chosen`` = ``rejected`` = y, which the preference trainer encodes against each prompt and DPO turns
into ``−log σ(β[ρ(y | x⁺) − ρ(y | x⁻)])``.

**Inter-sample pairs.** Response-level pairs (two answers to the same full prompt, ranked by the number of
instructions each satisfies) are combined k at a time into one multi-instruction prompt; the chosen answer
concatenates every winner, and each rejected answer swaps exactly one winner for its loser.

Instructions are checked by rules (word limits, required or banned words, letter case, endings), so the builder's
verifier is exact. Source: "MAPL: Multi-level Aware Preference Learning", arXiv 2505.12845. Confidence:
[abstract-level] — only the abstract was available; the pair construction above and the DPO form are a plausible
reconstruction, not the paper's verified procedure, and the paper's reward-model objectives are not built.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.prefdata.common import Policy

logger = logging.getLogger(__name__)

INSTRUCTION_HEADER = "Follow these instructions:"


@dataclass(frozen=True)
class Constraint:
    """One checkable instruction.

    Attributes:
        kind: ``max_words``, ``min_words``, ``include``, ``exclude``, ``lowercase``, ``uppercase`` or
            ``ends_with``.
        value: Its parameter (a word count, a word, an ending); ``None`` for the case rules.
    """

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in _RULES:
            raise ValueError(f"unknown instruction kind {self.kind!r}; known: {', '.join(sorted(_RULES))}")
        if self.kind in ("max_words", "min_words") and (not isinstance(self.value, int) or self.value < 0):
            raise ValueError(f"{self.kind} needs a non-negative integer value, got {self.value!r}")
        if self.kind in ("include", "exclude", "ends_with") and not (
            isinstance(self.value, str) and self.value
        ):
            raise ValueError(f"{self.kind} needs a non-empty text value, got {self.value!r}")

    @classmethod
    def parse(cls, spec: Any) -> Constraint:
        """From ``{"kind": ..., "value": ...}`` or ``"kind"`` / ``"kind:value"`` text."""
        if isinstance(spec, Constraint):
            return spec
        if isinstance(spec, dict):
            return cls(str(spec.get("kind")), spec.get("value"))
        kind, _, value = str(spec).partition(":")
        if kind in ("max_words", "min_words"):
            return cls(kind, int(value))
        return cls(kind, value or None)

    def text(self) -> str:
        """The instruction as the prompt states it."""
        return _RULES[self.kind][0](self.value)

    def check(self, response: str) -> bool:
        """Whether ``response`` satisfies the instruction."""
        return bool(_RULES[self.kind][1](response, self.value))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9']){re.escape(word)}(?![A-Za-z0-9'])", text, re.IGNORECASE) is not None


_RULES = {
    "max_words": (lambda v: f"Answer in at most {v} words.", lambda r, v: len(_words(r)) <= v),
    "min_words": (lambda v: f"Answer in at least {v} words.", lambda r, v: len(_words(r)) >= v),
    "include": (lambda v: f'Use the word "{v}".', lambda r, v: _has_word(r, v)),
    "exclude": (lambda v: f'Do not use the word "{v}".', lambda r, v: not _has_word(r, v)),
    "lowercase": (
        lambda v: "Write only lowercase letters.",
        lambda r, v: any(c.isalpha() for c in r) and r == r.lower(),
    ),
    "uppercase": (
        lambda v: "Write only capital letters.",
        lambda r, v: any(c.isalpha() for c in r) and r == r.upper(),
    ),
    "ends_with": (lambda v: f'End your answer with "{v}".', lambda r, v: r.rstrip().endswith(v)),
}


def violating_edits(constraint: Constraint, response: str) -> list[Constraint]:
    """Edits of ``constraint`` that ``response`` violates (empty when none of the candidate edits does)."""
    n, kind, value = len(_words(response)), constraint.kind, constraint.value
    if kind == "max_words":
        candidates = [Constraint("max_words", max(0, n // 2)), Constraint("max_words", max(0, n - 1))]
    elif kind == "min_words":
        candidates = [Constraint("min_words", 2 * n + 1), Constraint("min_words", n + 1)]
    elif kind in ("include", "exclude"):
        candidates = [Constraint("exclude" if kind == "include" else "include", value)]
    elif kind in ("lowercase", "uppercase"):
        candidates = [Constraint("uppercase" if kind == "lowercase" else "lowercase")]
    else:  # ends_with
        candidates = [Constraint("ends_with", "!" if str(value).endswith("?") else "?")]
    return [c for c in candidates if c != constraint and not c.check(response)]


def render(task: str, constraints: Sequence[Constraint]) -> str:
    """The task followed by one instruction per line (so an edit changes exactly one line)."""
    if not constraints:
        return task
    return "\n".join([task, "", INSTRUCTION_HEADER, *(f"- {c.text()}" for c in constraints)])


def intra_pairs(task: str, response: str, constraints: Sequence[Constraint]) -> list[dict[str, Any]]:
    """Prompt-side pairs for one response: one per satisfied instruction that has a violating edit.

    Args:
        task: The task text without instructions.
        response: The policy's answer y (to the prompt with every instruction).
        constraints: The task's instructions.

    Returns:
        Rows with ``prompt`` = x⁺, ``rejected_prompt`` = x⁻, ``chosen`` = ``rejected`` = y, and the edit.
    """
    kept = [c for c in constraints if c.check(response)]
    rows = []
    for position, original in enumerate(kept):
        edits = violating_edits(original, response)
        if not edits:
            continue
        edited = [*kept[:position], edits[0], *kept[position + 1 :]]
        rows.append(
            {
                "prompt": render(task, kept),
                "rejected_prompt": render(task, edited),
                "chosen": response,
                "rejected": response,
                "kind": "intra",
                "edited": {"from": original.text(), "to": edits[0].text()},
                "swapped": None,
            }
        )
    return rows


ANSWER_JOIN = "\n\n"


def inter_pairs(pairs: Sequence[dict[str, Any]], group: int = 2) -> list[dict[str, Any]]:
    """Multi-instruction pairs from consecutive groups of ``group`` response-level pairs.

    Args:
        pairs: Rows with string ``prompt``, ``chosen`` and ``rejected``.
        group: Pairs combined per prompt (the last incomplete group is dropped).

    Returns:
        ``group`` rows per group: a numbered multi-task prompt, the winners' answers as ``chosen``, and as
        ``rejected`` the same answers with exactly one winner replaced by its loser.
    """
    rows = []
    for start in range(0, len(pairs) - group + 1, group):
        members = pairs[start : start + group]
        prompt = "Answer every task below, in order, with one answer per task.\n\n" + ANSWER_JOIN.join(
            f"Task {i + 1}:\n{m['prompt']}" for i, m in enumerate(members)
        )
        winners = [f"Answer {i + 1}:\n{m['chosen']}" for i, m in enumerate(members)]
        for i, member in enumerate(members):
            losers = list(winners)
            losers[i] = f"Answer {i + 1}:\n{member['rejected']}"
            rows.append(
                {
                    "prompt": prompt,
                    "rejected_prompt": None,  # same keys as intra rows: one schema for the whole file
                    "chosen": ANSWER_JOIN.join(winners),
                    "rejected": ANSWER_JOIN.join(losers),
                    "kind": "inter",
                    "edited": None,
                    "swapped": i,
                }
            )
    return rows


@dataclass
class MAPLOptions:
    """Settings of the MAPL builder."""

    samples_per_prompt: int = field(default=2, metadata={"help": "Answers sampled per task."})
    group: int = field(
        default=2, metadata={"help": "Response-level pairs combined per multi-instruction prompt."}
    )
    inter: bool = field(default=True, metadata={"help": "Also build multi-instruction (inter-sample) pairs."})

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.group < 2:
            raise ValueError("mapl: need samples_per_prompt >= 1 and group >= 2")


def build_mapl(
    tasks: Sequence[dict[str, Any]], policy: Policy, options: MAPLOptions | None = None
) -> list[dict[str, Any]]:
    """MAPL rows for tasks given as ``{"prompt": task text, "constraints": [instruction specs]}``.

    Args:
        tasks: Tasks with their instructions (see :meth:`Constraint.parse` for the spec forms).
        policy: Answers each task with all its instructions.
        options: Settings.

    Returns:
        Intra-sample rows (with ``rejected_prompt``) and, when enabled, inter-sample rows, for ``dpo``.
    """
    opts = options or MAPLOptions()
    parsed = []
    for i, task in enumerate(tasks):
        if not isinstance(task.get("prompt"), str) or not task.get("constraints"):
            raise ValueError(f"mapl task {i} needs a text 'prompt' and a non-empty 'constraints' list")
        parsed.append((task["prompt"], [Constraint.parse(c) for c in task["constraints"]]))
    full_prompts = [render(text, constraints) for text, constraints in parsed]
    groups = policy.generate(full_prompts, opts.samples_per_prompt)
    rows: list[dict[str, Any]] = []
    response_pairs: list[dict[str, Any]] = []
    for (text, constraints), prompt, group in zip(parsed, full_prompts, groups, strict=True):
        answers = [s.text for s in group]
        for answer in answers:
            rows.extend(intra_pairs(text, answer, constraints))
        met = [sum(c.check(a) for c in constraints) for a in answers]
        best, worst = (
            max(range(len(answers)), key=met.__getitem__),
            min(range(len(answers)), key=met.__getitem__),
        )
        if met[best] > met[worst] and answers[best] != answers[worst]:
            response_pairs.append({"prompt": prompt, "chosen": answers[best], "rejected": answers[worst]})
    if opts.inter:
        rows.extend(inter_pairs(response_pairs, opts.group))
    logger.info("mapl: %d rows (%d inter-sample)", len(rows), sum(r["kind"] == "inter" for r in rows))
    return rows
