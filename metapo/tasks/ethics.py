"""Ethical reasoning over Scruples anecdotes (paper §3.3): analyse an action and end with a RIGHT/WRONG verdict."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from metapo.reward.gates import Candidate, Gate, GateResult, MinWords
from metapo.rubric.model import Rubric
from metapo.tasks.base import Task, is_blank, user_prompt

Verdict = Literal["RIGHT", "WRONG"]
LABELS: tuple[str, str] = ("RIGHT", "WRONG")

#: A well-formed verdict tag; the label inside is read case-insensitively and reported upper-case.
VERDICT_TAG = re.compile(r"<verdict>\s*+(RIGHT|WRONG)\s*+</verdict>", re.IGNORECASE)
# Untagged fallback (paper §7.4) counts only upper-case words: lower-case "right"/"wrong" occur in ordinary moral
# prose ("the right thing to do") and would turn almost every answer into a "both words" miss.
_BARE_WORD = re.compile(r"\b(RIGHT|WRONG)\b")

ETHICS_JUDGE_PERSONA = (
    "You are a moral philosopher who teaches applied ethics. You assess written moral analyses of everyday "
    "situations: whether they identify the people affected and what each is owed, weigh the relevant duties, "
    "consequences and intentions fairly, consider the strongest opposing view, and reach a verdict that follows "
    "from the reasoning. You judge the quality of the reasoning, not whether you share the conclusion."
)

ETHICS_META_PERSONA = (
    "You are a senior professor of moral philosophy who supervises the assistants grading students' ethical "
    "analyses. You audit how an assistant applied a scoring rubric, find scores that are inflated (for verdicts "
    "without reasoning, reasoning that contradicts its own verdict, one-sided or generic moralising, padding, or "
    "missing verdicts) or unfairly low, and you rewrite the rubric so that careful, balanced reasoning that "
    "supports a clear verdict earns the most."
)

LEVELS_RUBRIC = """\
## Quality of moral reasoning [0-5]
How well the analysis reasons about the author's action and reaches a verdict that follows from that reasoning.
5: identifies who is affected and what is at stake, weighs duties, consequences and intentions fairly, answers the strongest counter-argument, and the verdict follows clearly.
4: sound and relevant reasoning with a well-supported verdict; misses a minor consideration.
3: reasonable but one-sided or generic; the verdict is supported only in part.
2: thin reasoning, important facts of the story ignored or misread, or a verdict that fits the reasoning poorly.
1: little more than an opinion; the analysis contradicts itself or the story.
0: no analysis, off-topic, or no clear verdict.
"""


@dataclass(frozen=True)
class VerdictReading:
    """A verdict read from a response.

    Attributes:
        label: ``"RIGHT"``, ``"WRONG"``, or ``None`` when missing or ambiguous.
        how: ``"tag"`` (one or more agreeing tags), ``"word"`` (no tag; exactly one of the two upper-case words),
            ``"conflicting_tags"``, ``"both_words"`` or ``"none"``.
    """

    label: Verdict | None
    how: str


def read_verdict(text: str) -> VerdictReading:
    """Read the verdict as the paper's evaluation does (§7.4), stricter only on contradictory tags.

    The label inside ``<verdict>...</verdict>`` wins. Tags that disagree make the answer ambiguous. Without a
    well-formed tag, the answer counts when exactly one of the upper-case words RIGHT/WRONG appears.
    """
    tagged = {m.upper() for m in VERDICT_TAG.findall(text)}
    if len(tagged) == 1:
        return VerdictReading(tagged.pop(), "tag")  # type: ignore[arg-type]
    if tagged:
        return VerdictReading(None, "conflicting_tags")
    words = set(_BARE_WORD.findall(text))
    if len(words) == 1:
        return VerdictReading(words.pop(), "word")  # type: ignore[arg-type]
    return VerdictReading(None, "both_words" if words else "none")


def tagged_verdict(text: str) -> Verdict | None:
    """The verdict only when stated in agreeing verdict tags (what the reward requires), else ``None``."""
    reading = read_verdict(text)
    return reading.label if reading.how == "tag" else None


@dataclass(frozen=True)
class VerdictGate:
    """Fires when a response lacks a well-formed verdict tag, or states contradictory ones."""

    penalty: float = -2.0
    name: str = "missing_verdict"

    def __call__(self, candidate: Candidate) -> GateResult | None:
        reading = read_verdict(candidate.completion)
        if reading.how == "tag":
            return None
        why = {"conflicting_tags": "verdict tags disagree"}.get(
            reading.how, "no <verdict>RIGHT|WRONG</verdict> tag"
        )
        return GateResult(self.name, self.penalty, why)


@dataclass
class EthicsTask(Task):
    """Judge the author's action in an anecdote and end with a tagged RIGHT/WRONG verdict.

    The gold ``verdict`` column is for evaluation only: nothing in the reward reads it.

    Attributes:
        word_limit: Word limit stated in the instruction (300 in the paper).
        missing_verdict_penalty: Reward (normalised units) for a missing or contradictory verdict tag. The paper's
            −10 on a 0–5 scale is −2 here.
        min_words: Fewest words of analysis, verdict tag excluded.
        too_short_penalty: Reward for an analysis under ``min_words``.
    """

    name: str = "ethics"
    description: str = "Ethical reasoning over Scruples anecdotes (MPO paper §3.3); metric: verdict accuracy"
    instruction: str = (
        "Take the role of a moral philosopher. Read the anecdote, in which the author describes something they "
        "did, and analyse whether the author's action was right or wrong: consider the people affected, the "
        "author's intentions and obligations, the consequences, and the best case for the other side. Keep your "
        "analysis within 300 words, and end it with your verdict on the action written exactly as "
        "<verdict>RIGHT</verdict> or <verdict>WRONG</verdict>."
    )
    judge_persona: str = ETHICS_JUDGE_PERSONA
    meta_persona: str = ETHICS_META_PERSONA
    judge_input_label: str = "Anecdote"
    max_completion_tokens: int = 600
    default_meta_interval: int = 10
    default_source: str | None = None
    builtin_file: str | None = "anecdotes.jsonl"
    word_limit: int = 300
    missing_verdict_penalty: float = -2.0
    min_words: int = 30
    too_short_penalty: float = -2.0

    required_columns: ClassVar[tuple[str | tuple[str, ...], ...]] = (
        "title",
        "text",
        ("action.description", "action"),
        "binarized_label",
    )
    extra_columns: ClassVar[tuple[str, ...]] = ("verdict", "title", "action")

    def __post_init__(self) -> None:
        self.instruction = self.instruction.replace("300 words", f"{self.word_limit} words")

    def initial_rubric(self) -> Rubric:
        return Rubric.single(
            "Overall quality",
            "Rate how well the response reasons about whether the author's action was right or wrong, from 0 "
            "(not at all) to 5 (excellent).",
        )

    def baseline_rubrics(self) -> dict[str, Rubric]:
        """``iter0`` and ``levels`` (one item with level descriptions)."""
        return {**super().baseline_rubrics(), "levels": Rubric.parse(LEVELS_RUBRIC)}

    def gates(self) -> tuple[Gate, ...]:
        """Missing/contradictory verdict, then too-short analysis (tag excluded), then the base EOS gate."""
        return (
            VerdictGate(penalty=self.missing_verdict_penalty),
            MinWords(
                self.min_words,
                penalty=self.too_short_penalty,
                strip_pattern=r"<verdict>[^<]*+</verdict>",
                name="too_short",
            ),
            *super().gates(),
        )

    # ----- rows -------------------------------------------------------------------------------------
    @staticmethod
    def action_of(row: dict[str, Any]) -> Any:
        """The action under judgement from ``action.description`` (flattened), ``{"action": {"description"}}``
        (nested, as in the Scruples release) or a plain ``action`` string."""
        if "action.description" in row:
            return row["action.description"]
        action = row.get("action")
        return action.get("description") if isinstance(action, dict) else action

    @staticmethod
    def label_of(row: dict[str, Any]) -> Any:
        label = row.get("binarized_label")
        return label.strip().upper() if isinstance(label, str) else label

    def drop_reason(self, row: dict[str, Any]) -> str | None:
        if self.label_of(row) not in LABELS:
            return "label not RIGHT/WRONG"
        for key, value in (
            ("title", row.get("title")),
            ("text", row.get("text")),
            ("action", self.action_of(row)),
        ):
            if is_blank(value) or not isinstance(value, str):
                return f"empty {key}"
        return None

    def anecdote_text(self, title: str, text: str, action: str) -> str:
        """The anecdote as the judge sees it."""
        return f"Title: {title}\n\n{text}\n\nAction under judgement: {action}"

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        title, text, action = row["title"].strip(), row["text"].strip(), str(self.action_of(row)).strip()
        content = (
            f"{self.instruction}\n\n### Anecdote\nTitle: {title}\n\n{text}\n\n"
            f"### Action under judgement\n{action}\n\n### Answer"
        )
        return {
            "prompt": user_prompt(content),
            "task_input": self.anecdote_text(title, text, action),
            "verdict": self.label_of(row),
            "title": title,
            "action": action,
        }

    # ----- metric -----------------------------------------------------------------------------------
    def metric(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Verdict accuracy against the ``verdict`` column; missing or ambiguous verdicts count as wrong.

        Records without a RIGHT/WRONG gold label are left out and counted in ``n_unlabelled``.
        """
        correct = 0
        how: Counter[str] = Counter()
        predicted: Counter[str] = Counter()
        per_label = {label: [0, 0] for label in LABELS}  # correct, total
        labelled = 0
        for record in records:
            gold = self.label_of({"binarized_label": record.get("verdict", record.get("binarized_label"))})
            if gold not in LABELS:
                continue
            labelled += 1
            reading = read_verdict(str(record.get("response") or ""))
            how[reading.how] += 1
            predicted[reading.label or "none"] += 1
            hit = reading.label == gold
            correct += hit
            per_label[gold][0] += hit
            per_label[gold][1] += 1
        return {
            "n": labelled,
            "n_unlabelled": len(records) - labelled,
            "correct": correct,
            "accuracy": correct / labelled if labelled else None,
            "accuracy_by_label": {k: (c / t if t else None) for k, (c, t) in per_label.items()},
            "predicted": dict(predicted),
            "verdict_source": dict(how),
        }
