"""A pairwise judge: which of two responses to the same task input is better.

The judge sees the task input and two responses labelled only "A" and "B" (model names never reach it), each in
its own fence, because responses are untrusted policy output. Two ways of reading the verdict:

* ``"tag"`` (default, the paper's protocol): the judge may reason briefly and must end with exactly one
  ``<winner>A</winner>`` or ``<winner>B</winner>``. Parsing is strict: no tag, a malformed tag, or tags that
  disagree count as unreadable, and the judge is asked again (bounded by ``max_rejudge``) with a one-line
  reminder appended to the conversation, so a cached failure is not simply replayed.
* ``"logprobs"``: the judge answers with one letter and the verdict is read from the top log-probabilities of
  the "A" and "B" tokens, which also yields a preference probability. If neither letter appears among the
  alternatives the call falls back to the tag protocol.

Position bias: with ``both_orders=True`` (default) each comparison is judged as (X, Y) and (Y, X). X wins only
if both orders pick X; when the orders disagree the outcome is a tie. With ``both_orders=False`` one order is
judged (the paper's single-order protocol, no ties; the tournament randomises positions instead).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from metapo.judges.prompting import data_notice, fence
from metapo.judges.types import ChatRequest, ChatResult, JudgeError

logger = logging.getLogger(__name__)

Mode = Literal["tag", "logprobs"]

# Criteria the paper's GPT-4o judge weighed, by task; anything else gets the generic line.
TASK_CRITERIA = {
    "essay": "clarity, coherence, depth of argument and overall effectiveness",
    "summarization": "conciseness, accuracy and faithfulness to the bill",
    "ethics": "soundness of the moral reasoning, fairness to everyone involved, and a clear verdict",
    "math": "correctness of the final answer and validity of the reasoning",
}
GENERIC_CRITERIA = "helpfulness, correctness, clarity and how well the response does what the task asks"

# Linear-time (metapo.untrusted.check_linear): a tag's content never holds "<", so runs stop at the next tag.
_WINNER_TAG = re.compile(r"<\s*+winner\s*+>([^<]*+)<\s*+/\s*+winner\s*+>", re.IGNORECASE)
_ANY_WINNER_OPEN = re.compile(r"<\s*+winner\s*+>", re.IGNORECASE)


class ChatClient(Protocol):
    """The part of :class:`metapo.judges.JudgeClient` the pairwise judge uses."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Send one chat request."""
        ...


@dataclass
class Verdict:
    """The judge's answer for one ordering.

    Attributes:
        winner: ``"A"``, ``"B"``, or ``None`` when unreadable (or an exact 50/50 in logprob mode).
        p_a: Probability that A is better: from logprobs, or 1.0/0.0 for a parsed tag; ``None`` if unreadable.
        text: The judge's final answer text.
        attempts: Judge calls spent on this ordering.
        method: ``"tag"`` or ``"logprobs"``.
        error: Why the verdict is unreadable.
    """

    winner: str | None
    p_a: float | None
    text: str = ""
    attempts: int = 1
    method: str = "tag"
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class PairOutcome:
    """The result of comparing the first response (X) with the second (Y).

    Attributes:
        score: X's result: 1 win, 0.5 tie, 0 loss; ``None`` when a verdict stayed unreadable.
        prob: Averaged preference probability for X over the orderings judged (``None`` if unreadable).
        consistent: Whether both orderings agreed (always true for a single ordering).
        verdicts: The per-ordering verdicts, (X, Y) first.
    """

    score: float | None
    prob: float | None
    consistent: bool
    verdicts: list[Verdict] = field(default_factory=list)


def parse_winner_tag(text: str) -> str:
    """Read ``"A"`` or ``"B"`` from ``<winner>…</winner>``; raise ``ValueError`` unless exactly unambiguous.

    Every winner tag in the text must hold exactly ``A`` or ``B`` (case-insensitive, surrounding spaces allowed)
    and all tags must agree; an opening tag without a matching close counts as malformed.
    """
    tags = _WINNER_TAG.findall(text)
    if not tags:
        raise ValueError("no <winner>...</winner> tag")
    if len(_ANY_WINNER_OPEN.findall(text)) != len(tags):
        raise ValueError("unclosed <winner> tag")
    values = {t.strip().upper() for t in tags}
    if not values <= {"A", "B"}:
        raise ValueError(f"winner tag must hold A or B, got {sorted(values)}")
    if len(values) != 1:
        raise ValueError("winner tags disagree")
    return values.pop()


def letter_probability(token_logprobs: Sequence[dict[str, float]]) -> float | None:
    """P(A) / (P(A) + P(B)) from the first generated position whose alternatives include either letter.

    Token texts are compared after stripping whitespace and case, so ``" A"`` and ``"a"`` both count for A.
    Returns ``None`` when no position offers either letter.
    """
    for position in token_logprobs:
        mass = {"A": 0.0, "B": 0.0}
        for token, logprob in position.items():
            key = token.strip().upper()
            if key in mass:
                mass[key] += math.exp(logprob)
        if mass["A"] + mass["B"] > 0:
            return mass["A"] / (mass["A"] + mass["B"])
    return None


@dataclass
class PairwiseJudge:
    """Compares two responses through any client with an async ``chat`` (a :class:`~metapo.judges.JudgeClient`).

    Attributes:
        client: The judge client (retries, rate limits and the response cache live there).
        task: Task name, used to pick the criteria (``TASK_CRITERIA``).
        criteria: Override of the criteria sentence.
        input_label: How the prompt names the task input ("Writing prompt", "Bill", ...).
        mode: ``"tag"`` or ``"logprobs"`` (see the module docstring).
        both_orders: Judge both orderings and call disagreements ties.
        max_rejudge: Extra calls allowed per ordering when the answer is unreadable.
        max_tokens: Generation budget of a tag-mode answer.
        top_logprobs: Alternatives requested per token in logprob mode.
        max_chars: Per-response character budget inside the prompt (head and tail kept).
        temperature: Judge temperature (the paper uses 0).
    """

    client: ChatClient
    task: str = ""
    criteria: str | None = None
    input_label: str = "Task"
    mode: Mode = "tag"
    both_orders: bool = True
    max_rejudge: int = 2
    max_tokens: int = 384
    top_logprobs: int = 10
    max_chars: int | None = 12000
    temperature: float = 0.0

    # ----- prompts ------------------------------------------------------------------------------------------
    def messages(
        self, task_input: str, response_a: str, response_b: str, *, mode: Mode | None = None
    ) -> list[dict[str, str]]:
        """The judge conversation for one ordering (``mode`` overrides the judge's own)."""
        criteria = self.criteria or TASK_CRITERIA.get(self.task, GENERIC_CRITERIA)
        if (mode or self.mode) == "logprobs":
            answer = "Reply with a single letter, A or B, and nothing else."
        else:
            answer = (
                "First explain your comparison in at most three sentences. Then, on the last line, write "
                "<winner>A</winner> or <winner>B</winner>. Ties are not allowed: pick the better one."
            )
        system = (
            "You are an impartial expert evaluator. You compare two anonymous responses to the same task and "
            f"decide which one is better, judging {criteria}. The order in which the responses appear and "
            "their length are not evidence of quality. " + data_notice("task", "response_a", "response_b")
        )
        labels = ("task", "response_a", "response_b")
        user = "\n\n".join(
            [
                f"{self.input_label}:",
                fence("task", task_input, max_chars=self.max_chars, reserved=labels),
                "Response A:",
                fence("response_a", response_a, max_chars=self.max_chars, reserved=labels),
                "Response B:",
                fence("response_b", response_b, max_chars=self.max_chars, reserved=labels),
                f"Which response is better? {answer}",
            ]
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    # ----- one ordering -------------------------------------------------------------------------------------
    async def judge_once(self, task_input: str, response_a: str, response_b: str) -> Verdict:
        """Judge one ordering, re-asking at most ``max_rejudge`` times when the answer cannot be read."""
        messages = self.messages(task_input, response_a, response_b)
        tokens = [0, 0]
        if self.mode == "logprobs":
            request = ChatRequest(
                messages=tuple(messages),
                max_tokens=3,
                temperature=self.temperature,
                top_logprobs=self.top_logprobs,
            )
            try:
                result = await self.client.chat(request)
            except JudgeError as exc:
                return Verdict(None, None, attempts=1, method="logprobs", error=f"judge call failed: {exc}")
            p_a = letter_probability(result.token_logprobs)
            if p_a is not None:
                winner = "A" if p_a > 0.5 else "B" if p_a < 0.5 else None
                return Verdict(
                    winner,
                    p_a,
                    result.text,
                    1,
                    "logprobs",
                    None if winner else "A and B equally likely",
                    result.prompt_tokens,
                    result.completion_tokens,
                )
            logger.debug("no A/B token among the judge's alternatives; falling back to the winner tag")
            tokens = [result.prompt_tokens, result.completion_tokens]
            messages = self.messages(task_input, response_a, response_b, mode="tag")
        verdict = await self._judge_tag(messages)
        verdict.prompt_tokens += tokens[0]
        verdict.completion_tokens += tokens[1]
        return verdict

    async def _judge_tag(self, messages: list[dict[str, str]]) -> Verdict:
        conversation = list(messages)
        error = "no answer"
        text = ""
        used = [0, 0]
        for attempt in range(1, self.max_rejudge + 2):
            request = ChatRequest(
                messages=tuple(conversation), max_tokens=self.max_tokens, temperature=self.temperature
            )
            try:
                result = await self.client.chat(request)
            except JudgeError as exc:
                return Verdict(None, None, text, attempt, "tag", f"judge call failed: {exc}", *used)
            used[0] += result.prompt_tokens
            used[1] += result.completion_tokens
            text = result.text
            try:
                winner = parse_winner_tag(text)
            except ValueError as exc:
                error = str(exc)
                # Show the judge its own answer and ask again; a changed conversation also bypasses the cache.
                conversation += [
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": f"Your answer could not be read ({error}). End with exactly one "
                        "<winner>A</winner> or <winner>B</winner>.",
                    },
                ]
                continue
            return Verdict(winner, 1.0 if winner == "A" else 0.0, text, attempt, "tag", None, *used)
        return Verdict(None, None, text, self.max_rejudge + 1, "tag", f"unreadable verdict: {error}", *used)

    # ----- a comparison -------------------------------------------------------------------------------------
    async def compare(self, task_input: str, response_x: str, response_y: str) -> PairOutcome:
        """Compare X (first) with Y; see the module docstring for how both orderings combine."""
        if not self.both_orders:
            v = await self.judge_once(task_input, response_x, response_y)
            score = None if v.winner is None else (1.0 if v.winner == "A" else 0.0)
            return PairOutcome(score, v.p_a, True, [v])
        first, second = await asyncio.gather(
            self.judge_once(task_input, response_x, response_y),
            self.judge_once(task_input, response_y, response_x),
        )
        return combine_orders(first, second)


def combine_orders(first: Verdict, second: Verdict) -> PairOutcome:
    """Combine the (X, Y) verdict with the (Y, X) verdict into X's outcome.

    X wins when it wins in both positions, loses when it loses in both, and ties when the positions disagree
    (a judge that always picks the same position therefore produces only ties). An unreadable verdict makes the
    whole outcome unreadable.
    """
    verdicts = [first, second]
    if first.winner is None or second.winner is None:
        if first.p_a == 0.5 and second.p_a is not None or second.p_a == 0.5 and first.p_a is not None:
            # An exact 50/50 in logprob mode is a real (if rare) opinion: it can only produce a tie.
            prob = (first.p_a + 1.0 - second.p_a) / 2  # type: ignore[operator]
            return PairOutcome(0.5, prob, False, verdicts)
        return PairOutcome(None, None, False, verdicts)
    x_first = first.winner == "A"
    x_second = second.winner == "B"
    prob = (first.p_a + 1.0 - second.p_a) / 2  # type: ignore[operator]
    if x_first == x_second:
        return PairOutcome(1.0 if x_first else 0.0, prob, True, verdicts)
    return PairOutcome(0.5, prob, False, verdicts)
