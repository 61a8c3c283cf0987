"""Value types shared by every judge backend and by the code that asks judges for scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metapo.judges.prompting import neutralise


class JudgeError(RuntimeError):
    """A judge call failed for good: retries are exhausted or the answer could not be read."""


class TransientJudgeError(JudgeError):
    """A failure worth retrying: timeout, HTTP 429/5xx, dropped connection, unreadable answer.

    Args:
        message: What went wrong (never contains credentials).
        retry_after_s: A server's ``Retry-After`` hint in seconds, if it sent one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion request in OpenAI form, independent of the backend that serves it.

    ``json_schema`` asks for grammar-constrained JSON (``response_format`` of type ``json_schema``);
    ``top_logprobs`` asks for the top-N alternatives of every generated token.
    """

    messages: tuple[dict[str, str], ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_logprobs: int = 0
    json_schema: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def body(self, model: str) -> dict[str, Any]:
        """The OpenAI ``/v1/chat/completions`` request body for this request."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [_inert(m) for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if self.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": self.json_schema},
            }
        return body


@dataclass
class ChatResult:
    """What a judge returned for one request.

    ``token_logprobs`` holds, for each generated token, a mapping from candidate token text to its
    log-probability (the top-N alternatives), when the request asked for them. ``finish_reason`` is the
    server's (``"stop"``, or ``"length"`` when the answer hit ``max_tokens``).
    """

    text: str
    token_logprobs: list[dict[str, float]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    cached: bool = False


@dataclass
class ScoreReading:
    """An expected score read from a judge (G-Eval style).

    Attributes:
        expected: The probability-weighted mean over the allowed scores.
        distribution: Renormalised probability of each allowed score.
        mass: Probability the judge put on allowed score tokens before renormalising (1.0 when the
            score was parsed from generated text).
        method: ``"logprobs"`` (digit probabilities) or ``"generated"`` (one parsed integer).
        result: The judge call the reading came from.
    """

    expected: float
    distribution: dict[int, float]
    mass: float
    method: str
    result: ChatResult


def _inert(message: dict[str, str]) -> dict[str, str]:
    """A message whose text cannot act as chat-template structure once a server renders the conversation.

    Every request passes here, so chat-control tokens (``<|im_start|>``, ``<|im_end|>``, ``[INST]``, ...)
    and their look-alikes are neutralised wherever untrusted text sits in a prompt (a fenced completion, a
    judge rationale shown to the meta judge, rubric text a meta judge wrote), and lone surrogates, which no
    UTF-8 encoder accepts, become U+FFFD.
    """
    out = dict(message)
    if isinstance(out.get("content"), str):
        out["content"] = neutralise(out["content"])
    return out
