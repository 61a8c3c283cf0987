"""Summarization of legislative bills (BillSum, paper §3.2), scored at evaluation time with ROUGE."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from metapo.rubric.model import Rubric
from metapo.tasks.base import Task, is_blank, length_stats, user_prompt, word_count

logger = logging.getLogger(__name__)

SUMMARY_JUDGE_PERSONA = (
    "You are a senior government official who reads legislation every day and relies on short summaries to brief "
    "colleagues. You judge a summary by whether it states what the bill actually does: who it affects, what it "
    "requires, permits, funds or prohibits, and from when, without inventing provisions or leaving out the main "
    "ones. You value brevity, but never at the cost of accuracy."
)

SUMMARY_META_PERSONA = (
    "You are a chief of staff who supervises the officials grading bill summaries. You audit how a grader applied "
    "a scoring rubric, find summaries whose scores are inflated (those that copy the bill's text, repeat "
    "themselves, pad, invent provisions, describe only the title, or stop unfinished) or unfairly low, and you "
    "rewrite the rubric so that faithful, complete and concise summaries score highest."
)

LEVELS_RUBRIC = """\
## Summary quality [0-5]
How well the summary tells a busy reader what the bill does.
5: accurate and complete on the main provisions (who, what, how, when), concise, in plain language, nothing invented.
4: accurate, covers most main provisions; minor omissions or some unnecessary detail.
3: mostly accurate but misses an important provision or is padded or hard to follow.
2: partly accurate; misses several main provisions, or includes a claim the bill does not make.
1: says little more than the title, or is mostly inaccurate.
0: empty, off-topic, copied wholesale from the bill, or not a summary.
"""

ANALYTIC_RUBRIC = """\
## Faithfulness [0-5]
Every statement in the summary is supported by the bill. Deduct heavily for invented provisions, wrong amounts, dates
or agencies, and for reversing what the bill requires or prohibits. 0 when the summary misstates the bill's purpose.

## Coverage [0-5]
The main provisions appear: what the bill changes, whom it affects, what it funds or requires, and key deadlines.
5 when nothing important is missing; 2 or less when only the title or one provision is described.

## Concision and clarity [0-5]
Short, plain and well organised; no copied legal boilerplate, repetition or filler; within the word limit. 0 for
text that is unfinished, not English, or mostly a copy of the bill.
"""


@dataclass
class SummarizationTask(Task):
    """Summarise a bill briefly and faithfully.

    Attributes:
        word_limit: Word limit stated in the instruction (400 in the paper).
        max_prompt_tokens: Rows whose rendered prompt exceeds this many tokens are dropped (4,000 in the paper);
            ``None`` keeps everything.
        tokenizer: Tokenizer used to count prompt tokens (an object with ``encode``, or a local path / model id
            for ``AutoTokenizer``). Without one, tokens are estimated as ``tokens_per_word`` × words.
        tokens_per_word: Ratio for the estimate; legal text runs above plain prose because of section numbers.
    """

    name: str = "summarization"
    description: str = "Bill summarization (BillSum, MPO paper §3.2); metric: ROUGE-1/2/L/Lsum"
    instruction: str = (
        "You are a government official preparing a briefing. Summarize the bill below, which is given in a code "
        "block, so that a colleague understands what it does. Be brief and faithful to the text: state its main "
        "provisions without adding anything it does not say, and stay under 400 words."
    )
    judge_persona: str = SUMMARY_JUDGE_PERSONA
    meta_persona: str = SUMMARY_META_PERSONA
    judge_input_label: str = "Bill"
    max_completion_tokens: int = 512
    # Whole bills: prompts over 4,000 tokens are dropped, i.e. about 17,000 characters of bill.
    judge_chars: int = 20000
    meta_chars: int = 20000
    meta_reference_column: str | None = "reference_summary"
    default_meta_interval: int = 20
    default_source: str | None = "duccd/billsum-clean"
    builtin_file: str | None = "bills.jsonl"
    word_limit: int = 400
    max_prompt_tokens: int | None = 4000
    tokenizer: Any = field(default=None, repr=False, compare=False)
    tokens_per_word: float = 1.4

    required_columns: ClassVar[tuple[str | tuple[str, ...], ...]] = (("clean_text", "text"),)
    extra_columns: ClassVar[tuple[str, ...]] = ("source_document", "reference_summary", "title")

    def __post_init__(self) -> None:
        self.instruction = self.instruction.replace("400 words", f"{self.word_limit} words")
        if isinstance(self.tokenizer, str):
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)

    def initial_rubric(self) -> Rubric:
        return Rubric.single(
            "Overall quality",
            "Rate how well the response summarizes the bill, from 0 (not at all) to 5 (excellent).",
        )

    def baseline_rubrics(self) -> dict[str, Rubric]:
        """``iter0``, ``levels`` (one item with level descriptions) and ``analytic`` (three items)."""
        return {
            **super().baseline_rubrics(),
            "levels": Rubric.parse(LEVELS_RUBRIC),
            "analytic": Rubric.parse(ANALYTIC_RUBRIC),
        }

    # ----- rows -------------------------------------------------------------------------------------
    @staticmethod
    def document_of(row: dict[str, Any]) -> Any:
        """The bill text (``clean_text`` preferred over ``text``)."""
        return row.get("clean_text") if not is_blank(row.get("clean_text")) else row.get("text")

    @staticmethod
    def reference_of(row: dict[str, Any]) -> str:
        """The reference summary (``clean_summary`` preferred over ``summary``), or ``""``."""
        for key in ("clean_summary", "summary", "reference_summary"):
            if not is_blank(row.get(key)):
                return str(row[key]).strip()
        return ""

    def user_text(self, document: str) -> str:
        """The policy's user turn for one bill."""
        return f"{self.instruction}\n\n```\n{document.strip()}\n```"

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the configured tokenizer, or the words-based estimate."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return math.ceil(word_count(text) * self.tokens_per_word)

    def drop_reason(self, row: dict[str, Any]) -> str | None:
        document = self.document_of(row)
        if is_blank(document) or not isinstance(document, str):
            return "empty bill text"
        if self.max_prompt_tokens is not None:
            n = self.count_tokens(self.user_text(document))
            if n > self.max_prompt_tokens:
                how = "tokens" if self.tokenizer is not None else "estimated tokens"
                return f"prompt over {self.max_prompt_tokens} {how}"
        return None

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        document = str(self.document_of(row)).strip()
        return {
            "prompt": user_prompt(self.user_text(document)),
            # The judge sees the bill fenced, as the policy does, and not the task text (paper §3.2).
            "task_input": f"```\n{document}\n```",
            "source_document": document,
            "reference_summary": self.reference_of(row),
            "title": str(row.get("title") or ""),
        }

    # ----- metric -----------------------------------------------------------------------------------
    def metric(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Mean ROUGE-1/2/L/Lsum F-measure × 100 with Porter stemming, over records with a reference summary.

        As in the paper's evaluation, text is not split into sentences on newlines, so ROUGE-Lsum ≈ ROUGE-L.
        """
        from rouge_score import rouge_scorer

        kinds = ("rouge1", "rouge2", "rougeL", "rougeLsum")
        scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
        totals = dict.fromkeys(kinds, 0.0)
        scored = 0
        for record in records:
            reference = self.reference_of(record)
            if not reference:
                continue
            result = scorer.score(reference, str(record.get("response") or ""))
            for kind in kinds:
                totals[kind] += result[kind].fmeasure
            scored += 1
        out: dict[str, Any] = {
            "n": len(records),
            "n_scored": scored,
            "n_without_reference": len(records) - scored,
        }
        if scored < len(records):
            logger.warning(
                "ROUGE: %d of %d records have no reference summary", len(records) - scored, len(records)
            )
        for kind in kinds:
            out[kind] = 100.0 * totals[kind] / scored if scored else None
        lengths = length_stats([str(r.get("response") or "") for r in records], long_words=self.word_limit)
        out["words_mean"] = lengths.get("words_mean")
        out[f"over_{self.word_limit}_words_fraction"] = lengths.get(f"over_{self.word_limit}_words_fraction")
        return out
