"""Rule gates: cheap checks that run before any judge call.

A *replacing* gate (the paper's ethics verdict check, math's thin-reasoning floor) replaces the judge's score
when it fires, and no judge call is made. An *additive* gate (the paper's missing-EOS penalty) lets the judge
score the response as usual and adds its (negative) value to the reward, so a truncated good answer still ranks
above a truncated bad one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from metapo.untrusted import check_linear


@dataclass(frozen=True)
class Candidate:
    """What a gate inspects: one completion and its context.

    Attributes:
        prompt: Task input text.
        completion: Completion text.
        columns: The row's extra dataset columns.
        ended_with_eos: Whether generation stopped on EOS (``None`` when unknown).
    """

    prompt: str
    completion: str
    columns: Mapping[str, Any] = field(default_factory=dict)
    ended_with_eos: bool | None = None


@dataclass(frozen=True)
class GateResult:
    """A fired gate.

    Attributes:
        gate: The gate's name.
        reward: In normalised units (the judge's range is [0, 1]): the reward that replaces the judge's, or,
            for an additive gate, the amount added to it (negative for a penalty).
        reason: Why it fired.
        additive: Whether ``reward`` is added to the judge's reward instead of replacing it.
    """

    gate: str
    reward: float
    reason: str
    additive: bool = False


class Gate(Protocol):
    """A rule check: returns ``None`` when the candidate passes, else the reward that replaces the judge's."""

    name: str

    def __call__(self, candidate: Candidate) -> GateResult | None: ...


@dataclass(frozen=True)
class MinWords:
    """Fires when the completion (optionally with a pattern removed first) has fewer than ``min_words`` words."""

    min_words: int
    penalty: float = 0.0
    strip_pattern: str | None = None
    name: str = "min_words"

    def __post_init__(self) -> None:
        if self.strip_pattern:
            check_linear(self.strip_pattern, re.DOTALL)  # it runs on every completion

    def __call__(self, candidate: Candidate) -> GateResult | None:
        text = candidate.completion
        if self.strip_pattern:
            text = re.sub(self.strip_pattern, " ", text, flags=re.DOTALL)
        n = len(text.split())
        if n < self.min_words:
            return GateResult(self.name, self.penalty, f"{n} words < {self.min_words}")
        return None


@dataclass(frozen=True)
class RequiredPattern:
    """Fires when the completion does not match ``pattern`` (e.g. a required tag)."""

    pattern: str
    penalty: float = 0.0
    name: str = "required_pattern"

    def __post_init__(self) -> None:
        check_linear(self.pattern, re.DOTALL)  # it runs on every completion

    def __call__(self, candidate: Candidate) -> GateResult | None:
        if re.search(self.pattern, candidate.completion, flags=re.DOTALL) is None:
            return GateResult(self.name, self.penalty, f"no match for {self.pattern!r}")
        return None


@dataclass(frozen=True)
class RequireEOS:
    """Adds ``penalty`` when generation ran out of tokens instead of ending (the paper's missing-EOS penalty).

    Additive, as in the paper (stock PPO subtracts 1.0 from the judge's score): the judge still scores the
    truncated text. The default -0.2 is the paper's -1.0 on its initial 0-5 rubric.
    """

    penalty: float = -0.2
    name: str = "missing_eos"

    def __call__(self, candidate: Candidate) -> GateResult | None:
        if candidate.ended_with_eos is False:
            return GateResult(
                self.name, self.penalty, "completion hit the token limit without EOS", additive=True
            )
        return None


def check_gates(
    gates: tuple[Gate, ...] | list[Gate], candidate: Candidate
) -> tuple[GateResult | None, list[GateResult]]:
    """Run every gate: the first replacing gate that fires (or ``None``) and every additive gate that fires."""
    replacing: GateResult | None = None
    additive: list[GateResult] = []
    for gate in gates:
        result = gate(candidate)
        if result is None:
            continue
        if result.additive:
            additive.append(result)
        elif replacing is None:
            replacing = result
    return replacing, additive


def first_fired(gates: tuple[Gate, ...] | list[Gate], candidate: Candidate) -> GateResult | None:
    """The first gate (in order) that fires, replacing or additive, or ``None``."""
    for gate in gates:
        result = gate(candidate)
        if result is not None:
            return result
    return None
