"""The record kept for every scored completion: meta-step evidence, run-directory log and report input."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScoredSample:
    """One completion as the reward model saw and scored it.

    Attributes:
        prompt: The task input shown to the judge (the last user turn of the policy prompt).
        completion: The policy's completion text.
        reward: The reward handed to the trainer, normalised to [0, 1] unless a gate fired or the
            run uses ``reward_scale="raw"``; ``None`` when the judge failed (TRL then ignores it).
        raw_score: Sum of item points on the rubric's own scale (the paper's reward), or ``None``.
        item_scores: Item id to points awarded (expected points when read from logprobs).
        rationales: Item id to the judge's one-sentence rationale, when the scoring mode asks for one.
        rubric_version: Version of the rubric the sample was scored under.
        lineage: Rubric lineage key (``"default"`` for single-rubric tasks; ``"<subject>/<cluster>"`` for math).
        step: Trainer global step at scoring time.
        gate: Name of the rule gate that replaced the judge score, if one fired.
        gate_reason: Why the gate fired.
        columns: The task's extra dataset columns for this row (gold answer, reference summary, ...).
        truncated: Whether the task input or the completion was cut short for the judge.
        judge_latency_s: Wall time spent in judge calls for this sample.
        error: Why the score is missing, when ``reward`` is ``None``.
    """

    prompt: str
    completion: str
    reward: float | None
    raw_score: float | None = None
    item_scores: dict[str, float] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    rubric_version: int = 0
    lineage: str = "default"
    step: int = 0
    gate: str | None = None
    gate_reason: str | None = None
    adjustments: dict[str, float] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    judge_latency_s: float = 0.0
    error: str | None = None
    sample_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of ``samples.jsonl``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoredSample:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so older logs stay readable."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
