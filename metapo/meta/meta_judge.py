"""The meta-reward model: reads scored samples, analyses the grading, and writes the next rubric version.

Stages (Meta Policy Optimization, arXiv 2504.20157): optional **prescreen**, sample **selection**,
**analyze** and **refine** per selected sample, then **merge** the refinements into one rubric. The math
variant refines each (subject, cluster) lineage's free-text guidelines from score-stratified cases with no
merge. Whatever goes wrong, the outcome says why and the current rubric stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from metapo.judges.client import background_requests
from metapo.judges.types import ChatRequest, JudgeError
from metapo.meta import prompts
from metapo.meta.acceptance import AcceptanceConfig
from metapo.meta.item_signal import ItemSignal, describe, prune
from metapo.meta.selection import (
    STRATEGIES,
    Selector,
    select_by_labels,
    select_high_score,
    select_random,
    select_stratified,
)
from metapo.reward.records import ScoredSample
from metapo.rubric.model import Rubric, RubricError, RubricItem, RubricLimits

log = logging.getLogger(__name__)


@dataclass
class MetaConfig:
    """Settings of the Meta Policy Optimization meta step."""

    interval: int | None = field(
        default=None,
        metadata={
            "help": "Run a meta step every this many optimizer steps; 0 = never (fixed-rubric baseline); "
            "empty = the task's paper value (10 without a task)."
        },
    )
    samples: int = field(
        default=20, metadata={"help": "Samples the meta-reward model analyses per meta step."}
    )
    selection: str = field(
        default="random",
        metadata={"help": f"Sample selection: one of {', '.join(STRATEGIES)}. 'random' is the paper's."},
    )
    blocking: bool = field(
        default=False,
        metadata={
            "help": "Pause training while the meta step runs (the paper's timing). Default: run it in the "
            "background and switch versions at the next step boundary."
        },
    )
    mode: Literal["merge", "guidelines"] | None = field(
        default=None,
        metadata={
            "help": "merge: analyze/refine per sample, then merge (essay, summarization, ethics); "
            "guidelines: per-lineage guideline rewrite from stratified cases, no merge (math); "
            "empty = the task's mode (merge without a task)."
        },
    )
    max_items: int = field(default=10, metadata={"help": "Most items a new rubric may have."})
    analysis_words: int = field(default=250, metadata={"help": "Word limit asked of each analysis."})
    analysis_tokens: int = field(default=512, metadata={"help": "Token cap of each analysis."})
    rubric_tokens: int = field(
        default=3000,
        metadata={
            "help": "Token cap of each refined or merged rubric (or math guidelines). The answer schema's text "
            "limits are derived from it (at 3 characters per token), so an answer within the schema always fits; "
            "paper-scale rubrics (9 items of ~300 words) need about 8000."
        },
    )
    merge_budget_tokens: int = field(
        default=6000,
        metadata={
            "help": "Most tokens of candidate rubrics in one merge prompt. More candidates are merged in groups, "
            "then the groups' results are merged, so no analysed refinement is left out."
        },
    )
    max_sample_chars: int | None = field(
        default=None,
        metadata={"help": "Longest input/response shown to the meta judge; empty = the task's limit (3000)."},
    )
    judge_context_tokens: int = field(
        default=8192,
        metadata={
            "help": "Reward judge's context size; a rubric that cannot fit with the longest input of the window "
            "is rejected."
        },
    )
    expected_input_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens reserved for the task input + response the judge will see; empty = measure the "
            "longest sample of the window (in the judge's own tokens where its tokenizer is available)."
        },
    )
    guideline_cases: Literal["judge", "all"] = field(
        default="judge",
        metadata={
            "help": "Math guidelines mode: refine from samples the plan/execute judge scored only (judge), or "
            "also from answer-check and gated ones (all)."
        },
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of sample selection; empty = the run's seed."}
    )
    acceptance: AcceptanceConfig = field(
        default_factory=AcceptanceConfig,
        metadata={"help": "The acceptance gate a new rubric must pass before it scores the policy."},
    )
    saturated_std: float = field(
        default=0.02,
        metadata={
            "help": "An item whose score spread within a prompt's group is at most this share of its range is "
            "saturated (told to the meta-reward model, logged as rubric/item_std/<item>)."
        },
    )
    prune_saturated: bool = field(
        default=False, metadata={"help": "Drop items that repeat a saturated item from the merged rubric."}
    )

    @property
    def every(self) -> int:
        """The interval in force (10, the paper's essay value, when unset)."""
        return 10 if self.interval is None else self.interval

    def __post_init__(self) -> None:
        if self.mode not in (None, "merge", "guidelines"):
            raise ValueError(f"mpo.mode={self.mode!r}; choose merge or guidelines")
        if self.selection not in STRATEGIES:
            raise ValueError(f"mpo.selection={self.selection!r}; choose one of {', '.join(STRATEGIES)}")
        if (self.interval is not None and self.interval < 0) or self.samples < 1:
            raise ValueError("mpo.interval must be >= 0 and mpo.samples >= 1")
        if self.guideline_cases not in ("judge", "all"):
            raise ValueError(f"mpo.guideline_cases={self.guideline_cases!r}; choose judge or all")
        if self.rubric_tokens < 64 or self.merge_budget_tokens < 64:
            raise ValueError("mpo.rubric_tokens and mpo.merge_budget_tokens must be >= 64")
        if not 0.0 <= self.saturated_std < 1.0:
            raise ValueError(f"mpo.saturated_std={self.saturated_std!r}; choose a share of the item range in [0, 1)")

    @property
    def sample_chars(self) -> int:
        """The meta judge's text limit in force (3000 when neither the run nor the task set one)."""
        return 3000 if self.max_sample_chars is None else self.max_sample_chars


@dataclass
class MetaOutcome:
    """What one meta step did, for the run log and the rubric version's evidence."""

    lineage: str
    accepted: bool
    reason: str
    rubric: Rubric | None = None
    window_size: int = 0
    selected: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    analyses: list[dict[str, str]] = field(default_factory=list)
    refinements: list[str] = field(default_factory=list)
    window_versions: dict[str, int] = field(default_factory=dict)
    merge_groups: list[list[int]] = field(default_factory=list)
    truncated_analyses: int = 0
    duration_s: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)
    item_signal: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    acceptance: dict[str, Any] | None = None

    def evidence(self) -> dict[str, Any]:
        """The part stored with the new rubric version."""
        return {
            "window_size": self.window_size,
            "window_versions": self.window_versions,
            "selected": self.selected,
            "labels": self.labels,
            "analyses": self.analyses,
            "refinements": self.refinements,
            "merge_groups": self.merge_groups,
            "truncated_analyses": self.truncated_analyses,
            "validation": self.reason,
            "item_signal": self.item_signal,
            "pruned_saturated": self.pruned,
            "acceptance": self.acceptance,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready log record."""
        data = self.evidence()
        data.update(
            lineage=self.lineage,
            accepted=self.accepted,
            reason=self.reason,
            rubric=self.rubric.to_dict() if self.rubric else None,
            duration_s=self.duration_s,
        )
        if self.usage:
            data["meta_judge"] = self.usage
        return data


#: Characters per token assumed when sizing schema limits from token caps and when no tokenizer is at hand
#: (conservative for English and JSON, so an answer within the schema fits its token cap).
CHARS_PER_TOKEN = 3
# JSON keys, a title of up to 100 characters, numbers and punctuation of one rubric item.
_ITEM_OVERHEAD_CHARS = 200


class MetaJudge:
    """Runs the meta step with a (usually stronger) judge.

    Args:
        judge: A :class:`~metapo.judges.client.JudgeClient`.
        config: Meta-step settings.
        persona: System prompt of the meta-reward model.
        task_description: The policy-facing task text (what the meta judge grades against).
        detector_selector: Selection hook for the ``detectors`` strategy (flagged samples first).
        token_counter: Counts the reward judge's tokens, for the context-fit check; may return ``None`` (then,
            as without a counter, a conservative 3 characters per token is assumed).
        score_bound: Largest absolute item score a new rubric may use (9 keeps every item readable from one
            digit in ``logprob`` and ``multiturn`` scoring; larger ranges are asked as integers).
        judge_chars: The reward judge's text limit per field (what it will see of the longest sample).
        reference_column: Sample column with a reference answer to show the meta judge (math: the solution).
    """

    def __init__(
        self,
        judge: Any,
        config: MetaConfig,
        *,
        persona: str = "You are a senior instructor who audits how rubrics grade student work.",
        task_description: str = "",
        detector_selector: Selector | None = None,
        token_counter: Callable[[str], int | None] | None = None,
        score_bound: int = 20,
        judge_chars: int = 6000,
        reference_column: str | None = None,
    ) -> None:
        self.judge = judge
        self.config = config
        self.persona = persona
        self.task = task_description
        self.detector_selector = detector_selector
        self._token_counter = token_counter
        self.score_bound = score_bound
        self.judge_chars = judge_chars
        self.reference_column = reference_column
        budget = CHARS_PER_TOKEN * config.rubric_tokens
        if config.mode == "guidelines":
            self.text_limit = budget - 40
        else:
            self.text_limit = budget // config.max_items - _ITEM_OVERHEAD_CHARS
        if self.text_limit < 150:
            raise ValueError(
                f"mpo.rubric_tokens={config.rubric_tokens} leaves {self.text_limit} characters per item for "
                f"{config.max_items} items; raise mpo.rubric_tokens or lower mpo.max_items"
            )
        self.limits = RubricLimits(
            max_items=config.max_items,
            max_description_chars=self.text_limit,
            max_total_chars=max(16000, budget),
            min_score=-score_bound,
            max_score=score_bound,
        )

    def count_tokens(self, text: str) -> int:
        """The reward judge's token count of ``text`` (estimated at 3 characters per token without a tokenizer)."""
        counted = self._token_counter(text) if self._token_counter is not None else None
        return counted if counted is not None else len(text) // CHARS_PER_TOKEN + 1

    # ----- public ---------------------------------------------------------------------------------
    async def run(
        self,
        lineage: str,
        rubric: Rubric,
        window: Sequence[ScoredSample],
        rng: random.Random,
        *,
        version: int = 0,
        scored_under: Mapping[int, Rubric] | None = None,
        item_signal: Sequence[ItemSignal] = (),
    ) -> MetaOutcome:
        """One meta step for one lineage; never raises for judge or validation failures.

        Args:
            lineage: The lineage key.
            rubric: The rubric now in force (``version``).
            window: Scored samples of this lineage, possibly under several versions.
            rng: Seeded generator for selection.
            version: The version number of ``rubric``.
            scored_under: The rubric of every version a window sample was scored under; each sample is shown
                against its own version. Samples of a version missing here are left out (never mislabelled).
            item_signal: Per-item signal of ``rubric`` over the window (see :mod:`metapo.meta.item_signal`): told
                to the meta-reward model in each analysis, and saturated items pruned from the merged rubric
                when ``config.prune_saturated`` is set.
        """
        started = time.perf_counter()
        known = dict(scored_under or {})
        known.setdefault(version, rubric)
        usable = [s for s in window if s.rubric_version in known]
        outcome = MetaOutcome(lineage, False, "", window_size=len(window))
        for sample in window:
            key = str(sample.rubric_version)
            outcome.window_versions[key] = outcome.window_versions.get(key, 0) + 1
        if len(usable) < len(window):
            log.warning(
                "meta step for %s: %d samples scored under unknown rubric versions left out",
                lineage,
                len(window) - len(usable),
            )
        shown = _Shown(known, version, self.config.sample_chars, self.reference_column, describe(item_signal))
        outcome.item_signal = [s.to_dict() for s in item_signal]
        # Meta work yields to rewards when it shares their judge: its calls wait behind queued reward calls.
        with background_requests():
            try:
                if self.config.mode == "guidelines":
                    candidate = await self._guidelines(rubric, usable, rng, outcome, shown)
                else:
                    candidate = await self._merge_mode(rubric, usable, rng, outcome, shown)
                    if self.config.prune_saturated:
                        candidate, outcome.pruned = prune(candidate, item_signal)
                        if outcome.pruned:
                            log.info("meta step for %s pruned saturated items: %s", lineage, outcome.pruned)
                self.check(candidate, usable)
                outcome.rubric, outcome.accepted, outcome.reason = candidate, True, "passed validation"
            except (JudgeError, RubricError, ValueError) as exc:
                outcome.reason = f"{type(exc).__name__}: {exc}"
                log.warning("meta step for %s kept the current rubric: %s", lineage, outcome.reason)
        outcome.duration_s = time.perf_counter() - started
        return outcome

    def check(self, candidate: Rubric, window: Sequence[ScoredSample] = ()) -> None:
        """Validate a candidate: structure, the meta step's limits, and fit in the reward judge's context.

        The context check adds the judge's tokens of the rubric to those of the longest sample of ``window``
        (as the judge will see it, cut to ``judge_chars`` per field), or ``expected_input_tokens`` when set.
        """
        candidate.validate(self.limits)
        reserved = self.config.expected_input_tokens
        if reserved is None:
            longest = max(
                window,
                key=lambda s: min(len(s.prompt), self.judge_chars) + min(len(s.completion), self.judge_chars),
                default=None,
            )
            reserved = (
                self.count_tokens(longest.prompt[: self.judge_chars] + longest.completion[: self.judge_chars])
                if longest is not None
                else 0
            )
        need = self.count_tokens(candidate.to_markdown()) + reserved + 256
        if need > self.config.judge_context_tokens:
            raise RubricError(
                f"rubric needs {need} tokens with the longest input, over the judge context of "
                f"{self.config.judge_context_tokens}; it is too long"
            )

    # ----- merge mode -----------------------------------------------------------------------------
    async def _merge_mode(
        self,
        rubric: Rubric,
        window: Sequence[ScoredSample],
        rng: random.Random,
        out: MetaOutcome,
        shown: _Shown,
    ) -> Rubric:
        usable = [s for s in window if s.reward is not None]
        if not usable:
            raise ValueError("window holds no scored samples")
        selected = await self._select(rubric, usable, rng, out, shown)
        if not selected:
            raise ValueError("selection picked no samples (prescreen found nothing to fix)")
        out.selected = [s.sample_id for s in selected]
        results = await asyncio.gather(
            *(self._analyze_refine(rubric, s, shown) for s in selected), return_exceptions=True
        )
        candidates: list[Rubric] = []
        failures: list[BaseException] = []
        for sample, result in zip(selected, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, JudgeError | RubricError):
                    raise result
                log.info("analysis of sample %s failed: %s", sample.sample_id, result)
                failures.append(result)
                continue
            analysis, refined, truncated = result
            out.analyses.append({"sample_id": sample.sample_id, "analysis": analysis})
            out.refinements.append(refined.to_markdown())
            out.truncated_analyses += truncated
            candidates.append(refined)
        if not candidates:
            # The cause goes into the outcome's reason, which is what the meta log keeps.
            raise JudgeError(f"every analysis/refinement failed ({len(failures)}); last: {failures[-1]}")
        return await self._merge_all(candidates, out)

    async def _select(
        self,
        rubric: Rubric,
        window: Sequence[ScoredSample],
        rng: random.Random,
        out: MetaOutcome,
        shown: _Shown,
    ) -> list[ScoredSample]:
        k, strategy = self.config.samples, self.config.selection
        if strategy == "stratified":
            return select_stratified(window, k, rng)
        if strategy == "high_score":
            return select_high_score(window, k, rng)
        if strategy == "detectors":
            if self.detector_selector is None:
                raise ValueError("selection 'detectors' needs a detector selector")
            return self.detector_selector(window, k, rng)
        if strategy == "prescreen":
            pool = select_random(window, 3 * k, rng)
            out.labels = await self._prescreen(rubric, pool, shown)
            return select_by_labels(pool, out.labels, k, rng)
        return select_random(window, k, rng)

    async def _prescreen(
        self, rubric: Rubric, pool: Sequence[ScoredSample], shown: _Shown
    ) -> dict[str, str]:
        async def label(sample: ScoredSample) -> tuple[str, str]:
            text = prompts.prescreen_prompt(self.task, shown.block(sample), rubric)
            answer, _ = await self.judge.chat_json(self._messages(text), prompts.PRESCREEN_SCHEMA, 16)
            return sample.sample_id, str(answer.get("label", "ok"))

        results = await asyncio.gather(*(label(s) for s in pool), return_exceptions=True)
        return dict(r for r in results if isinstance(r, tuple))

    async def _analyze_refine(
        self, rubric: Rubric, sample: ScoredSample, shown: _Shown
    ) -> tuple[str, Rubric, bool]:
        text = prompts.analyze_prompt(
            self.task, shown.block(sample), rubric, self.config.analysis_words, signal=shown.signal
        )
        messages = self._messages(text)
        reply = await self.judge.chat(
            ChatRequest(messages=tuple(messages), max_tokens=self.config.analysis_tokens)
        )
        analysis = reply.text.strip()
        if not analysis:
            raise JudgeError("empty analysis")
        truncated = getattr(reply, "finish_reason", None) == "length"
        messages += [
            {"role": "assistant", "content": analysis},
            {"role": "user", "content": prompts.refine_prompt(self.config.max_items, self.score_bound)},
        ]
        answer, _ = await self.judge.chat_json(messages, self._rubric_schema(), self.config.rubric_tokens)
        return analysis, self._to_rubric(answer), truncated

    async def _merge_all(self, candidates: list[Rubric], out: MetaOutcome) -> Rubric:
        """Merge every candidate: groups that fit the budget first, then the groups' results, and so on."""
        level = candidates
        while len(level) > 1:
            groups = self._groups(level)
            out.merge_groups.append([len(g) for g in groups])
            if len(groups) == len(level) and len(level) > 1:
                # Each candidate alone fills the budget: pair them up so the merge still converges.
                groups = [level[i : i + 2] for i in range(0, len(level), 2)]
                out.merge_groups[-1] = [len(g) for g in groups]
            merged = await asyncio.gather(*(self._merge(g) if len(g) > 1 else _same(g[0]) for g in groups))
            level = list(merged)
        return level[0]

    def _groups(self, candidates: list[Rubric]) -> list[list[Rubric]]:
        groups: list[list[Rubric]] = []
        used = 0
        for cand in candidates:
            tokens = self.count_tokens(cand.to_markdown())
            if groups and used + tokens <= self.config.merge_budget_tokens:
                groups[-1].append(cand)
                used += tokens
            else:
                groups.append([cand])
                used = tokens
        return groups

    async def _merge(self, group: list[Rubric]) -> Rubric:
        text = prompts.merge_prompt(self.task, [c.to_markdown() for c in group], self.config.max_items)
        answer, _ = await self.judge.chat_json(
            self._messages(text), self._rubric_schema(), self.config.rubric_tokens
        )
        return self._to_rubric(answer)

    # ----- guidelines mode (math) -----------------------------------------------------------------
    async def _guidelines(
        self,
        rubric: Rubric,
        window: Sequence[ScoredSample],
        rng: random.Random,
        out: MetaOutcome,
        shown: _Shown,
    ) -> Rubric:
        pool = [s for s in window if s.reward is not None]
        if self.config.guideline_cases == "judge":
            # An answer check or a gate says nothing about how the grader follows the guidelines.
            pool = [s for s in pool if s.gate is None and _route_mode(s) == "judge"]
        cases = select_stratified(pool, 6, rng, per_third=2)
        if not cases:
            raise ValueError(
                "no samples scored by the plan/execute judge for this lineage in the window"
                if self.config.guideline_cases == "judge"
                else "no scored samples for this lineage in the window"
            )
        out.selected = [s.sample_id for s in cases]
        current = rubric.items[0]
        text = prompts.guideline_prompt(
            self.task, current.description, [shown.block(s) for s in cases], self.config.analysis_words
        )
        messages = self._messages(text)
        reply = await self.judge.chat(
            ChatRequest(messages=tuple(messages), max_tokens=self.config.analysis_tokens)
        )
        analysis = reply.text.strip()
        if not analysis:
            raise JudgeError("empty analysis")
        out.truncated_analyses += getattr(reply, "finish_reason", None) == "length"
        messages += [
            {"role": "assistant", "content": analysis},
            {"role": "user", "content": prompts.guideline_refine_prompt()},
        ]
        answer, _ = await self.judge.chat_json(
            messages, prompts.guideline_schema(self.text_limit), self.config.rubric_tokens
        )
        guidelines = str(answer.get("guidelines", "")).strip()
        if not guidelines:
            raise RubricError("meta judge returned empty guidelines")
        out.analyses.append({"analysis": analysis})
        out.refinements.append(guidelines)
        return Rubric(
            (RubricItem(current.id, current.title, guidelines, current.min_score, current.max_score),)
        )

    # ----- helpers --------------------------------------------------------------------------------
    def _messages(self, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.persona}, {"role": "user", "content": user}]

    def _rubric_schema(self) -> dict:
        return prompts.rubric_schema(self.config.max_items, self.text_limit, self.score_bound)

    def _to_rubric(self, answer: Any) -> Rubric:
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not items:
            raise RubricError("meta judge answer has no items")
        return Rubric.from_items(items)


@dataclass(frozen=True)
class _Shown:
    """Renders samples for the meta judge, each against the version that scored it."""

    rubrics: Mapping[int, Rubric]
    current_version: int
    max_chars: int
    reference_column: str | None
    signal: str = ""

    def block(self, sample: ScoredSample) -> str:
        return prompts.sample_block(
            sample,
            self.rubrics[sample.rubric_version],
            self.max_chars,
            current_version=self.current_version,
            reference_column=self.reference_column,
        )


def _route_mode(sample: ScoredSample) -> str | None:
    feedback = sample.columns.get("judge_feedback")
    return feedback.get("mode") if isinstance(feedback, dict) else None


async def _same(rubric: Rubric) -> Rubric:
    return rubric
