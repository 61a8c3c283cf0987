"""``RubricReward``: a TRL reward function that has an LLM judge score completions against the active rubric."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from metapo.judges.types import JudgeError
from metapo.reward.gates import Candidate, Gate, check_gates
from metapo.reward.records import ScoredSample
from metapo.reward.scoring import JudgeView, Scorer, ScoringMode, make_scorer
from metapo.rubric.active import ActiveRubrics
from metapo.rubric.model import Rubric, Weighting

log = logging.getLogger(__name__)

# TRL hands these to every reward function; they are not dataset columns.
_TRL_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids"}


class JudgeUnavailableError(RuntimeError):
    """Too many samples could not be scored: the judge looks down, so training stops (on every process)."""

#: Share of judge inputs cut short above which a warning says the task's text limits are too small.
TRUNCATION_WARN_RATE = 0.05


@dataclass
class RubricRewardConfig:
    """Settings of :class:`RubricReward`."""

    scoring: ScoringMode = field(
        # multiturn separated good responses from hacks best with the embedded judge (hackbench, 12 essay
        # prompts: AUC 0.75 vs json 0.72 and logprob 0.50; benchmarks/RESULTS.md section 9).
        default="multiturn",
        metadata={
            "help": "multiturn: the paper's rationale-then-score per item (two calls per item); logprob: one call "
            "per item, expected score from digit logprobs; json: one structured call per sample."
        },
    )
    reward_scale: Literal["normalized", "raw"] = field(
        default="normalized",
        metadata={
            "help": "normalized: the total mapped to [0, 1] (stable across rubric versions); raw: the sum of "
            "item points (the paper's reward, for parity only)."
        },
    )
    item_weighting: Weighting = field(
        default="points",
        metadata={
            "help": "points: an item counts by its point span (x its weight), so the normalized reward is "
            "(raw - min_points) / (max_points - min_points), an affine map of the paper's sum; equal: every item "
            "counts the same (x its weight) whatever its range."
        },
    )
    judge_persona: str = field(
        default="You are a careful, strict grader.", metadata={"help": "System prompt."}
    )
    input_label: str = field(default="Task", metadata={"help": "Name of the task input shown to the judge."})
    max_judge_chars: int | None = field(
        default=None,
        metadata={
            "help": "Longest text shown to the judge per field; longer text is truncated (head and tail kept, "
            "with a note saying so) and counted in rubric/truncated_rate. Empty = the task's limit (6000 "
            "without a task; whole bills for summarization)."
        },
    )
    max_consecutive_failures: int = field(
        default=64,
        metadata={
            "help": "Stop training with an error after this many samples in a row that needed the judge could "
            "not be scored (samples decided by a rule gate neither count nor reset the count)."
        },
    )
    max_missing_rate: float = field(
        default=0.5,
        metadata={
            "help": "Also stop when more than this share of the last `missing_window` samples that needed the "
            "judge could not be scored (a judge failing every other call never fails twice in a row)."
        },
    )
    missing_window: int = field(
        default=128, metadata={"help": "How many recent judge-scored samples max_missing_rate looks at."}
    )

    def __post_init__(self) -> None:
        # A misspelt value must fail at load time: reward_scale="rwa" used to mean "normalized" silently.
        if self.scoring not in ("logprob", "json", "multiturn"):
            raise ValueError(f"reward.scoring={self.scoring!r}; choose logprob, json or multiturn")
        if self.reward_scale not in ("normalized", "raw"):
            raise ValueError(f"reward.reward_scale={self.reward_scale!r}; choose normalized or raw")
        if self.item_weighting not in ("points", "equal"):
            raise ValueError(f"reward.item_weighting={self.item_weighting!r}; choose points or equal")
        if (self.max_judge_chars is not None and self.max_judge_chars < 1) or self.max_consecutive_failures < 1:
            raise ValueError("reward.max_judge_chars and reward.max_consecutive_failures must be >= 1")
        if not 0.0 < self.max_missing_rate <= 1.0 or self.missing_window < 1:
            raise ValueError("reward.max_missing_rate must be in (0, 1] and reward.missing_window >= 1")

    @property
    def item_score_bound(self) -> int:
        """Largest absolute item score a new rubric may use: 9 where items are read from one digit's
        probabilities (logprob and multiturn scoring), 20 where they are asked as integers (json)."""
        return 20 if self.scoring == "json" else 9

    @property
    def judge_chars(self) -> int:
        """The text limit in force (6000 when neither the run nor the task set one)."""
        return 6000 if self.max_judge_chars is None else self.max_judge_chars


class RubricReward:
    """TRL-compatible async reward function: ``await reward(prompts, completions, **columns)``.

    For each completion: rule gates first (a replacing gate that fires stands in for the judge, and no call is
    made); otherwise the judge scores every item of the rubric currently in force for the sample's lineage, and
    the reward is the total mapped to [0, 1] (or the raw total), plus any additive gate's penalty (missing EOS).
    A sample the judge could not score gets ``None``: TRL leaves it out of the group statistics, but only when
    ``RubricReward`` is the *only* reward function (with others TRL adds a ``None`` as 0; a warning says so).
    Every sample is reported to ``on_scored`` (the Meta Policy Optimization window and the run log).

    When too many samples that needed the judge go unscored (``max_consecutive_failures`` in a row, or more than
    ``max_missing_rate`` of the last ``missing_window``), every process of the run raises
    :class:`JudgeUnavailableError` at the same batch, so a multi-GPU run stops instead of hanging.

    Args:
        judge: A :class:`~metapo.judges.client.JudgeClient` (or anything with the same async methods).
        rubrics: The rubric versions in force (swapped by the meta step between training steps).
        config: Scoring settings.
        gates: Rule checks run before the judge.
        on_scored: Called with the scored samples of each batch.
        eos_token_ids: Token ids that end a completion, to tell gates whether generation finished.
        scorer: Overrides the scorer chosen by ``config.scoring`` (e.g. the math plan/execute judge).
        extra_metrics: Called each batch; its values are logged through the trainer (e.g. rubric version).
    """

    __name__ = "rubric_reward"

    def __init__(
        self,
        judge: Any,
        rubrics: ActiveRubrics,
        config: RubricRewardConfig | None = None,
        *,
        gates: Sequence[Gate] = (),
        on_scored: Callable[[list[ScoredSample]], None] | None = None,
        eos_token_ids: Sequence[int] = (),
        scorer: Scorer | None = None,
        extra_metrics: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.judge = judge
        self.rubrics = rubrics
        self.config = config or RubricRewardConfig()
        self.gates = tuple(gates)
        self.on_scored = on_scored
        self.eos_token_ids = set(eos_token_ids)
        self.scorer = scorer or make_scorer(self.config.scoring)
        self.extra_metrics = extra_metrics
        self._lock = threading.Lock()
        self.consecutive_failures = 0
        self.total = 0
        self.missing = 0
        self.truncated = 0
        self._recent: deque[bool] = deque(maxlen=self.config.missing_window)
        self._warned_truncation = False
        self._checked_trainer = False

    def reward(self, rubric: Rubric, points: dict[str, float]) -> tuple[float, float]:
        """(reward, raw total) for item points under ``rubric``."""
        raw = rubric.total(points)
        if self.config.reward_scale == "raw":
            return raw, raw
        return rubric.normalized(points, self.config.item_weighting), raw

    async def judge_points(
        self,
        rubric: Rubric,
        task_input: str,
        completion: str,
        columns: dict[str, Any] | None = None,
        judge: Any | None = None,
    ) -> dict[str, float]:
        """Item points the judge gives ``completion`` under ``rubric``, through the same prompts, persona and text
        limits as training's scoring, without rule gates (the acceptance gate compares rubrics, and no gate
        depends on one). Raises :class:`~metapo.judges.types.JudgeError` when the judge fails.

        Args:
            judge: A stand-in for ``self.judge`` (e.g. one that counts calls); the reward's judge by default.
        """
        view = JudgeView(
            self.config.judge_persona, self.config.input_label, task_input, completion, self.config.judge_chars
        )
        scores = await self.scorer.score(judge or self.judge, rubric, view, dict(columns or {}))
        return scores.points

    def to_scale(self, rubric: Rubric, value: float, *, additive: bool) -> float:
        """A gate value (normalised units) on this reward's scale.

        In raw mode a replacing value ``u`` becomes ``min_points + u * (max_points - min_points)`` (0 is the
        worst total, not 0 points) and an additive one ``u * (max_points - min_points)``.
        """
        if self.config.reward_scale != "raw":
            return value
        span = rubric.max_points - rubric.min_points
        return value * span if additive else rubric.min_points + value * span

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        self._check_trainer(kwargs.get("log_metric"))
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS}
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(prompts))]
        started = time.perf_counter()
        samples = await self.score(prompts, completions, rows, completion_ids, step=step)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            n = max(len(samples), 1)
            scored = [s for s in samples if s.reward is not None]
            judged = [s for s in scored if s.raw_score is not None]
            log_metric("rubric/missing_rate", 1.0 - len(scored) / n)
            log_metric("rubric/gated_rate", sum(s.gate is not None for s in samples) / n)
            log_metric("rubric/truncated_rate", sum(s.truncated for s in samples) / n)
            log_metric("rubric/score_seconds", time.perf_counter() - started)
            if judged:
                # Judge totals only: a sample a replacing gate decided has no total.
                log_metric("rubric/raw_score", sum(s.raw_score or 0.0 for s in judged) / len(judged))
            for name, value in (self.extra_metrics() if self.extra_metrics else {}).items():
                log_metric(name, value)
        self.finish(samples)
        return [s.reward for s in samples]

    async def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        rows: Sequence[dict[str, Any]],
        completion_ids: Sequence[list[int] | None] | None = None,
        *,
        step: int = 0,
    ) -> list[ScoredSample]:
        """Score a batch without reporting it: one dict of dataset columns per sample (rows may differ in keys).

        The reward service calls this and then :meth:`finish`; ``__call__`` is the two together for TRL.
        """
        samples = await asyncio.gather(
            *(
                self._score_one(
                    prompts[i], completions[i], dict(rows[i]), completion_ids[i] if completion_ids else None, step
                )
                for i in range(len(prompts))
            )
        )
        return list(samples)

    def finish(self, samples: Sequence[ScoredSample]) -> None:
        """Report a scored batch to ``on_scored`` and count its failures.

        Raises:
            JudgeUnavailableError: Too many samples that needed the judge went unscored.
        """
        if self.on_scored is not None:
            self.on_scored(list(samples))
        # Counted after the samples are logged, so the batch that stops a run is in the run log too.
        self._stop_if_down(self._account(samples))

    def _check_trainer(self, log_metric: Any) -> None:
        """Warn once when TRL combines this reward with others: TRL then adds a ``None`` as 0."""
        if self._checked_trainer:
            return
        self._checked_trainer = True
        trainer = getattr(log_metric, "__self__", None)
        funcs = getattr(trainer, "reward_funcs", None)
        if isinstance(funcs, list) and len(funcs) > 1:
            log.warning(
                "RubricReward is one of %d reward functions. TRL leaves a sample out of the advantage only when "
                "every reward function returns None, so an unscored sample (judge failure) counts as 0 here. "
                "Give RubricReward its own trainer, or watch rubric/missing_rate.",
                len(funcs),
            )

    def _account(self, samples: Sequence[ScoredSample]) -> str | None:
        """Update the failure counters; the reason to stop, or ``None``."""
        cfg = self.config
        with self._lock:
            for sample in samples:
                self.total += 1
                self.truncated += sample.truncated
                if sample.reward is None:
                    self.missing += 1
                if sample.gate is not None:
                    continue  # decided by a rule: says nothing about the judge
                failed = sample.reward is None
                self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
                self._recent.append(failed)
            failures, recent = self.consecutive_failures, list(self._recent)
            truncated_rate = self.truncated / self.total
            warn = not self._warned_truncation and self.total >= 20 and truncated_rate > TRUNCATION_WARN_RATE
            self._warned_truncation |= warn
        if warn:
            log.warning(
                "%.0f%% of judge inputs so far were cut to %d characters (rubric/truncated_rate): the judge "
                "grades text it cannot fully see. Raise reward.max_judge_chars (within the judge's context).",
                100 * truncated_rate,
                cfg.judge_chars,
            )
        last = next((s.error for s in reversed(samples) if s.error), None)
        if failures >= cfg.max_consecutive_failures:
            return f"{failures} samples in a row could not be scored (last error: {last})"
        if len(recent) == cfg.missing_window and sum(recent) / len(recent) > cfg.max_missing_rate:
            return (
                f"{sum(recent)} of the last {len(recent)} samples that needed the judge could not be scored "
                f"(more than {cfg.max_missing_rate:.0%}; last error: {last})"
            )
        return None

    def _stop_if_down(self, reason: str | None) -> None:
        # Every process stops at the same batch: a rank raising alone would leave the others waiting in TRL's
        # gather of the rewards until the process-group timeout.
        if any_process(reason is not None) or reason is not None:
            raise JudgeUnavailableError(
                f"{reason or 'another process of this run could not reach its judge'}. The judge looks down or "
                "misconfigured: check its URL/process, then resume from the last checkpoint with --resume."
            )

    async def _score_one(
        self, prompt: Any, completion: Any, columns: dict[str, Any], ids: list[int] | None, step: int
    ) -> ScoredSample:
        text = completion_text(completion)
        task_input = str(columns.get("task_input") or prompt_text(prompt))
        lineage = str(columns.get("lineage") or "default")
        version = self.rubrics.get(lineage)
        rubric = version.rubric
        ended = None if ids is None or not self.eos_token_ids else bool(ids and ids[-1] in self.eos_token_ids)
        if ended is None and isinstance(columns.get("ended"), bool):
            # A remote engine that knows whether generation stopped at EOS says so in this column.
            ended = columns["ended"]
        sample = ScoredSample(
            prompt=task_input,
            completion=text,
            reward=None,
            rubric_version=version.version,
            lineage=lineage,
            step=step,
            columns={k: v for k, v in columns.items() if k not in ("prompt", "task_input") and _jsonable(v)},
        )
        replacing, additive = check_gates(self.gates, Candidate(task_input, text, columns, ended))
        if replacing is not None:
            sample.reward = self.to_scale(rubric, replacing.reward, additive=False)
            sample.gate, sample.gate_reason = replacing.gate, replacing.reason
            return sample
        limit = self.config.judge_chars
        sample.truncated = len(task_input) > limit or len(text) > limit
        view = JudgeView(self.config.judge_persona, self.config.input_label, task_input, text, limit)
        started = time.perf_counter()
        try:
            scores = await self.scorer.score(self.judge, rubric, view, columns)
            reward, sample.raw_score = self.reward(rubric, scores.points)
            sample.item_scores, sample.rationales = scores.points, scores.rationales
            if scores.extra:
                sample.columns["judge_feedback"] = scores.extra
            sample.adjustments = {
                g.gate: self.to_scale(rubric, g.reward, additive=True) for g in additive
            }
            sample.reward = reward + sum(sample.adjustments.values())
        except JudgeError as exc:
            sample.error = str(exc)
            log.warning("sample left unscored (reward None): %s", exc)
        sample.judge_latency_s = time.perf_counter() - started
        return sample


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process of a multi-process run (``flag`` itself otherwise)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return flag
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        # This runs on TRL's reward thread, whose current CUDA device is not the rank's own.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def completion_text(completion: Any) -> str:
    """Text of a completion in TRL's standard (str) or conversational (message list) form."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        return str(completion[-1].get("content", ""))
    return str(completion or "")


def prompt_text(prompt: Any) -> str:
    """The last user turn of a conversational prompt, or the prompt string."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1] if users else "")


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | list | dict)
