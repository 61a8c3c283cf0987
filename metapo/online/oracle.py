"""Preference oracles: ``P(y_i ≻ y_j)`` for responses to one prompt, from metapo's judge layer or any scorer.

An oracle answers with a matrix: :meth:`PreferenceOracle.preferences` returns ``M[i, j] = P(responses[i] ≻
opponents[j])`` (opponents default to the responses themselves; the square matrix then satisfies
``M + Mᵀ = 1``). Identical texts are ½ without asking. Three sources:

- :class:`JudgeOracle`: the pairwise LLM judge (:class:`metapo.eval.pairwise.PairwiseJudge`), each pair judged in
  both orders so position bias turns into ties; a pair it cannot read counts as ½.
- :class:`ScoreOracle`: a scalar scorer through Bradley–Terry, ``σ((s_i − s_j)/T)``. The scorer is any TRL-style
  reward function ``f(prompts=..., completions=...) -> list[float | None]``, sync or async: a
  :class:`~metapo.reward.RubricReward` (an LLM judge grading against a rubric), a reward model wrapped as such a
  function, or a rule (:func:`count_matches`).

Tabular games have their own exact oracle, :class:`metapo.online.tabular.GameOracle`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from metapo.reward.rubric_reward import completion_text, prompt_text

logger = logging.getLogger(__name__)


class PreferenceOracle(Protocol):
    """Anything that returns a preference matrix for responses to one prompt."""

    async def preferences(
        self, prompt: Any, responses: Sequence[str], opponents: Sequence[str] | None = None
    ) -> np.ndarray:
        """``M[i, j] = P(responses[i] ≻ opponents[j])``; opponents default to the responses."""
        ...


def _fill(
    responses: Sequence[str], opponents: Sequence[str] | None
) -> tuple[np.ndarray, list[tuple[int, int]], bool]:
    """The matrix with its known entries (½ on identical texts) and the (i, j) pairs left to ask."""
    square = opponents is None
    cols = responses if square else opponents
    out = np.full((len(responses), len(cols)), np.nan)
    todo = []
    for i, a in enumerate(responses):
        for j, b in enumerate(cols):
            if a == b:
                out[i, j] = 0.5
            elif not square or i < j:
                todo.append((i, j))
    return out, todo, square


class JudgeOracle:
    """Preferences from the pairwise LLM judge, position-swapped.

    Args:
        judge: A :class:`metapo.eval.pairwise.PairwiseJudge`; ``both_orders=True`` (its default) judges each pair as
            (A, B) and (B, A) and calls a disagreement a tie.

    Attributes:
        asked: Comparisons sent so far.
        unreadable: Comparisons whose verdict could not be read (counted as ½).
    """

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.asked = 0
        self.unreadable = 0

    async def _pair(self, task_input: str, a: str, b: str) -> float:
        outcome = await self.judge.compare(task_input, a, b)
        self.asked += 1
        value = outcome.prob if outcome.prob is not None else outcome.score
        if value is None:
            self.unreadable += 1
            return 0.5
        return float(value)

    async def preferences(
        self, prompt: Any, responses: Sequence[str], opponents: Sequence[str] | None = None
    ) -> np.ndarray:
        """See :class:`PreferenceOracle`; pairs are judged concurrently (the judge client bounds concurrency)."""
        out, todo, square = _fill(responses, opponents)
        cols = responses if square else opponents
        task_input = prompt_text(prompt)
        values = await asyncio.gather(*(self._pair(task_input, responses[i], cols[j]) for i, j in todo))
        for (i, j), value in zip(todo, values, strict=True):
            out[i, j] = value
            if square:
                out[j, i] = 1.0 - value
        return out


class ScoreOracle:
    """Bradley–Terry preferences from a scalar score: ``P(a ≻ b) = σ((s_a − s_b)/T)``.

    Args:
        score: TRL-style reward function, ``score(prompts=[...], completions=[...])`` returning one float (or
            ``None`` when unscorable) per completion; may be a coroutine function or return an awaitable.
        temperature: T > 0; small T makes the oracle nearly deterministic.

    Attributes:
        unscored: Responses the scorer returned ``None`` for (such a response is ½ against everything).
    """

    def __init__(self, score: Callable[..., Any], temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.score = score
        self.temperature = temperature
        self.unscored = 0

    async def scores(self, prompt: Any, texts: Sequence[str]) -> list[float | None]:
        """The scorer's values for ``texts`` (each distinct text scored once)."""
        unique = list(dict.fromkeys(texts))
        result = self.score(prompts=[prompt] * len(unique), completions=unique)
        if inspect.isawaitable(result):
            result = await result
        values = dict(zip(unique, result, strict=True))
        return [None if values[t] is None else float(values[t]) for t in texts]

    async def preferences(
        self, prompt: Any, responses: Sequence[str], opponents: Sequence[str] | None = None
    ) -> np.ndarray:
        """See :class:`PreferenceOracle`."""
        cols = list(responses) if opponents is None else list(opponents)
        values = await self.scores(prompt, [*responses, *cols])
        self.unscored += sum(v is None for v in values)
        rows, others = values[: len(responses)], values[len(responses) :]
        out = np.full((len(rows), len(others)), 0.5)
        for i, a in enumerate(rows):
            for j, b in enumerate(others):
                if a is not None and b is not None and responses[i] != cols[j]:
                    out[i, j] = 1.0 / (1.0 + math.exp(-(a - b) / self.temperature))
        return out


def count_matches(pattern: str) -> Callable[..., list[float]]:
    """A rule scorer for smoke runs without a judge: the number of matches of a regex in each completion.

    Args:
        pattern: Regular expression (Python syntax).

    Returns:
        A TRL-style reward function.
    """
    compiled = re.compile(pattern)

    def score(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        del prompts
        return [float(len(compiled.findall(completion_text(c)))) for c in completions]

    score.__name__ = f"count_matches({pattern!r})"
    return score


def win_rates(matrix: np.ndarray, *, self_play: bool) -> np.ndarray:
    """Each response's mean preference over the columns: ``P̂(y_i ≻ π)``.

    Args:
        matrix: Output of :meth:`PreferenceOracle.preferences`.
        self_play: The matrix compares the responses with each other (opponents omitted): leave out each one's
            own ½, so that with independent samples of π the mean is an unbiased estimate of ``P(y ≻ π)``.

    Returns:
        One win rate per row (½ for a lone response with no opponent).
    """
    m = np.asarray(matrix, dtype=float)
    if not self_play:
        return m.mean(axis=1)
    n = m.shape[0]
    if n < 2:
        return np.full(n, 0.5)
    return (m.sum(axis=1) - np.diag(m)) / (n - 1)


class RewardModelScore:
    """A sequence-classification reward model as a TRL-style reward function (its first logit is the score).

    The prompt and completion are rendered as one conversation with the model's chat template when it has one
    (else concatenated), as reward models are usually trained.

    Args:
        model_path: Local path or hub id of an ``AutoModelForSequenceClassification`` checkpoint.
        batch_size: Texts per forward pass.
        max_length: Truncation length in tokens.
    """

    def __init__(self, model_path: str, *, batch_size: int = 8, max_length: int = 1024) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length

    def _text(self, prompt: Any, completion: Any) -> str:
        answer = completion_text(completion)
        if getattr(self.tokenizer, "chat_template", None):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
            conversation = [*messages, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return f"{prompt_text(prompt)}{answer}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        import torch

        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for begin in range(0, len(texts), self.batch_size):
                encoded = self.tokenizer(
                    texts[begin : begin + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=False,
                ).to(self.model.device)
                scores.extend(self.model(**encoded).logits[:, 0].float().cpu().tolist())
        return scores
