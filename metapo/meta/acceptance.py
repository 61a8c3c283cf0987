"""The acceptance gate: a rubric the meta-reward model wrote must prove itself before it scores the policy.

A meta step's candidate rubric and the version in force both score one **probe set**
(:mod:`metapo.meta.probes`), built without a model from the window (and the task's or the user's gold text):

* **canaries**, responses that must score low whatever the rubric: empty, a title only, the prompt echoed back,
  an answer cut mid-sentence, one paragraph repeated, a grader-addressed injection, the candidate's own item
  titles stuffed as keywords, fluent text in another language, and a good answer to a *different* prompt;
* **exemplars**, responses that must keep scoring well: the task's gold text where the samples carry one
  (reference summary, reference solution), a user file (``mpo.acceptance.exemplars``), otherwise the best-scored,
  detector-clean, completed samples of this and earlier windows (one per prompt);
* optional labelled **pairs** (``mpo.acceptance.pairs``) for an agreement score.

Both versions are scored through the reward's own judge path (:meth:`RubricReward.judge_points`), with a cache
(per item in ``logprob`` scoring, where items are asked one by one, so an item both versions share is asked
once) and the judge calls counted. Scores are normalised to [0, 1] under each rubric.

The candidate is accepted only when every check passes:

* ``canaries``: no canary gets *worse* under the candidate than under the current version. A canary is worse
  when its score relative to its prompt's best exemplar (canary / exemplar, so a rubric that only rescales every
  score is not blamed) rises by more than ``canary_slack``, or when it rises to ``canary_max`` or above, or to its
  exemplar's score or above, where the current version kept it below. A canary the current version already
  scores high is not held against the candidate (otherwise, with a judge that cannot tell canaries apart, no
  rubric could ever replace one that already fails them) unless the candidate makes it worse still.
* ``exemplars``: the mean score of the exemplars drops by at most ``exemplar_drop``.
* ``other_prompts``: per prompt, the mean change of its exemplars is at most ``other_prompt_drop`` below the
  change on the prompts the meta step analysed (or, when none of those has an exemplar, below the best prompt's
  change). This catches a rubric written for one prompt's topic.
* ``pairs``: the share of pairs whose chosen response scores above the rejected one (ties count half) falls by
  at most ``agreement_drop``.

A rejection names each failing check and its probes; every check's numbers go into the meta-step record and,
for an accepted candidate, into the new version's evidence.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.meta.probes import (
    CANARIES,
    ExemplarPool,
    Probe,
    ProbeSet,
    build_probes,
    make_canaries,
    read_exemplars,
    read_pairs,
)
from metapo.reward.records import ScoredSample
from metapo.rubric.model import Rubric, RubricItem

__all__ = [
    "CANARIES",
    "AcceptanceConfig",
    "AcceptanceGate",
    "Check",
    "ExemplarPool",
    "GateResult",
    "Probe",
    "ProbeScorer",
    "ProbeSet",
    "build_probes",
    "gate_line",
    "make_canaries",
    "read_exemplars",
    "read_pairs",
]

log = logging.getLogger(__name__)

@dataclass
class AcceptanceConfig:
    """Settings of the acceptance gate (``mpo.acceptance``)."""

    enabled: bool = field(
        default=True,
        metadata={"help": "Score each new rubric on the probe set and publish it only if every check passes."},
    )
    canary_prompts: int = field(
        default=2, metadata={"help": "Prompts (with an exemplar) that get the full set of canaries."}
    )
    max_exemplars: int = field(
        default=6, metadata={"help": "Most exemplars scored per gate decision (one per prompt)."}
    )
    exemplars: str | None = field(
        default=None,
        metadata={
            "help": "JSONL file of exemplars: {prompt, response[, lineage]} per line; preferred over window samples."
        },
    )
    pairs: str | None = field(
        default=None,
        metadata={"help": "JSONL file of labelled pairs: {prompt, chosen, rejected[, lineage]} per line."},
    )
    max_pairs: int = field(default=32, metadata={"help": "Most pairs scored per gate decision."})
    canary_max: float = field(
        default=0.5, metadata={"help": "Normalised score a canary must stay below (where the current version keeps it)."}
    )
    canary_slack: float = field(
        default=0.1,
        metadata={
            "help": "How much a canary's score as a share of its prompt's exemplar score may rise under the candidate."
        },
    )
    exemplar_drop: float = field(
        default=0.15, metadata={"help": "Largest allowed drop of the exemplars' mean normalised score."}
    )
    other_prompt_drop: float = field(
        default=0.1,
        metadata={
            "help": "Largest allowed gap between one prompt's exemplar change and the analysed prompts' change."
        },
    )
    agreement_drop: float = field(
        default=0.0, metadata={"help": "Largest allowed fall of pair agreement (share of pairs ranked right)."}
    )

    def __post_init__(self) -> None:
        if self.canary_prompts < 0 or self.max_exemplars < 1 or self.max_pairs < 0:
            raise ValueError(
                "mpo.acceptance.canary_prompts and max_pairs must be >= 0 and mpo.acceptance.max_exemplars >= 1"
            )
        for name in ("canary_max", "canary_slack", "exemplar_drop", "other_prompt_drop", "agreement_drop"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"mpo.acceptance.{name}={value!r}; choose a value in [0, 1] (normalised scores)")


# ----- scoring -----------------------------------------------------------------------------------------------
class _CountingJudge:
    """Forwards to a judge client and counts the calls the gate makes (the client's own counters are shared
    with training, which keeps scoring while the gate runs)."""

    def __init__(self, judge: Any) -> None:
        self._judge = judge
        self.calls = 0

    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self._judge.chat(*args, **kwargs)

    async def chat_json(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self._judge.chat_json(*args, **kwargs)

    async def expected_score(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return await self._judge.expected_score(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._judge, name)


class ProbeScorer:
    """Scores probes under a rubric through the reward's judge path, with a cache.

    In ``logprob`` scoring each item is asked on its own, so the cache holds item points and an item that the
    current and the candidate version share is asked once; other modes cache whole-rubric scores.

    Args:
        reward: The run's :class:`~metapo.reward.rubric_reward.RubricReward` (judge, scorer, persona, limits).
        max_entries: Cache size; the oldest entries go first.
    """

    def __init__(self, reward: Any, max_entries: int = 50_000) -> None:
        from metapo.reward.scoring import LogprobScorer

        self.reward = reward
        self.per_item = isinstance(reward.scorer, LogprobScorer)
        self.max_entries = max_entries
        self._cache: dict[tuple[Any, ...], float] = {}
        self.failures = 0

    def _key(self, what: Any, probe: Probe) -> tuple[Any, ...]:
        return (what, probe.prompt, probe.text)

    def _put(self, key: tuple[Any, ...], value: float) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = value

    async def score(self, rubric: Rubric, probe: Probe, judge: Any) -> float | None:
        """The normalised score of ``probe`` under ``rubric``, or ``None`` when the judge failed."""
        from metapo.judges.types import JudgeError

        weighting = self.reward.config.item_weighting
        try:
            if not self.per_item:
                key = self._key(rubric.content_hash(), probe)
                if key not in self._cache:
                    points = await self.reward.judge_points(rubric, probe.prompt, probe.text, probe.columns, judge)
                    self._put(key, rubric.normalized(points, weighting))
                return self._cache[key]
            keys = {item.id: self._key(_item_key(item), probe) for item in rubric.items}
            missing = tuple(item for item in rubric.items if keys[item.id] not in self._cache)
            if missing:
                points = await self.reward.judge_points(
                    Rubric(missing), probe.prompt, probe.text, probe.columns, judge
                )
                for item in missing:
                    self._put(keys[item.id], points[item.id])
            return rubric.normalized({i: self._cache[k] for i, k in keys.items()}, weighting)
        except JudgeError as exc:
            self.failures += 1
            log.warning("acceptance gate: probe %s left unscored: %s", probe.label, exc)
            return None


def _item_key(item: RubricItem) -> tuple[Any, ...]:
    # The id and weight do not change what the judge is asked.
    return (item.title, item.description, item.min_score, item.max_score)


# ----- checks ------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One check of the gate: whether it passed, the probes that failed it, and its numbers."""

    name: str
    passed: bool
    summary: str
    failed: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "summary": self.summary,
            "failed": self.failed,
            "numbers": self.numbers,
        }


@dataclass
class GateResult:
    """The gate's decision on one candidate."""

    accepted: bool
    reason: str
    checks: list[Check] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    judge_calls: int = 0
    unscored: int = 0
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
            "probes": self.probes,
            "judge_calls": self.judge_calls,
            "unscored_probes": self.unscored,
            "duration_s": round(self.duration_s, 3),
        }


# Below this an exemplar's score says nothing to compare a canary with (the exemplar check reports it).
_TINY = 0.05


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def check_canaries(
    canaries: Sequence[Probe],
    exemplars: Sequence[Probe],
    cur: Mapping[Probe, float | None],
    cand: Mapping[Probe, float | None],
    config: AcceptanceConfig,
) -> Check:
    """No canary gets worse under the candidate (see the module docstring for the rule)."""
    best_cur: dict[str, float] = {}
    best_cand: dict[str, float] = {}
    for probe in exemplars:
        c, n = cur.get(probe), cand.get(probe)
        if c is not None and n is not None:
            best_cur[probe.prompt] = max(best_cur.get(probe.prompt, c), c)
            best_cand[probe.prompt] = max(best_cand.get(probe.prompt, n), n)
    failed, rows = [], {}
    for probe in canaries:
        c, n = cur.get(probe), cand.get(probe)
        if c is None or n is None or probe.prompt not in best_cur:
            continue
        ec, en = best_cur[probe.prompt], best_cand[probe.prompt]
        why = []
        if ec > _TINY and en > _TINY and n / en > c / ec + config.canary_slack:
            why.append(f"share of its exemplar's score {c / ec:.2f} -> {n / en:.2f}")
        if n >= config.canary_max > c:
            why.append(f"rose to {n:.2f} >= canary_max {config.canary_max:g}")
        if n >= en and c < ec:
            why.append(f"reached its exemplar ({n:.2f} >= {en:.2f})")
        rows[probe.label] = {"current": _r(c), "candidate": _r(n), "exemplar_current": _r(ec), "exemplar_candidate": _r(en)}
        if why:
            failed.append(f"{probe.label} ({c:.2f} -> {n:.2f}: {'; '.join(why)})")
    if not rows:
        return Check("canaries", True, "skipped: no canary with a scored exemplar", numbers={"canaries": 0})
    mean_c = _mean([v["current"] for v in rows.values()])
    mean_n = _mean([v["candidate"] for v in rows.values()])
    summary = (
        f"{len(failed)} of {len(rows)} canaries worse" if failed else f"{len(rows)} canaries, none worse"
    ) + f"; canary mean {mean_c:.2f} -> {mean_n:.2f} (slack {config.canary_slack:g}, canary_max {config.canary_max:g})"
    numbers = {"canaries": len(rows), "mean_current": _r(mean_c), "mean_candidate": _r(mean_n), "per_probe": rows}
    return Check("canaries", not failed, summary, failed, numbers)


def check_exemplars(
    exemplars: Sequence[Probe],
    cur: Mapping[Probe, float | None],
    cand: Mapping[Probe, float | None],
    config: AcceptanceConfig,
) -> Check:
    """The exemplars' mean score drops by at most ``exemplar_drop``."""
    both = [(p, cur[p], cand[p]) for p in exemplars if cur.get(p) is not None and cand.get(p) is not None]
    if not both:
        return Check("exemplars", True, "skipped: no scored exemplar", numbers={"exemplars": 0})
    mean_c = statistics.fmean(c for _, c, _ in both)  # type: ignore[misc]
    mean_n = statistics.fmean(n for _, _, n in both)  # type: ignore[misc]
    passed = mean_n >= mean_c - config.exemplar_drop
    failed = [] if passed else [f"{p.label} ({c:.2f} -> {n:.2f})" for p, c, n in both if n < c]  # type: ignore[operator]
    summary = f"mean {mean_c:.2f} -> {mean_n:.2f} (change {mean_n - mean_c:+.2f}, limit -{config.exemplar_drop:g})"
    numbers = {"exemplars": len(both), "mean_current": _r(mean_c), "mean_candidate": _r(mean_n)}
    return Check("exemplars", passed, summary, failed, numbers)


def check_other_prompts(
    exemplars: Sequence[Probe],
    cur: Mapping[Probe, float | None],
    cand: Mapping[Probe, float | None],
    analysed_prompts: Sequence[str],
    config: AcceptanceConfig,
) -> Check:
    """No prompt's exemplars lose more than ``other_prompt_drop`` relative to the prompts the meta step analysed."""
    changes: dict[str, list[float]] = {}
    ids: dict[str, str] = {}
    for p in exemplars:
        c, n = cur.get(p), cand.get(p)
        if c is not None and n is not None:
            changes.setdefault(p.prompt, []).append(n - c)
            ids[p.prompt] = p.prompt_id
    if len(changes) < 2:
        return Check("other_prompts", True, "skipped: fewer than two prompts with a scored exemplar")
    delta = {prompt: statistics.fmean(v) for prompt, v in changes.items()}
    analysed = [prompt for prompt in delta if prompt in set(analysed_prompts)]
    if analysed:
        reference, basis = statistics.fmean(delta[p] for p in analysed), "the analysed prompts"
    else:
        best = max(delta, key=lambda p: delta[p])
        analysed, reference, basis = [best], delta[best], f"the best prompt ({ids[best]})"
    others = {p: d for p, d in delta.items() if p not in analysed}
    failed = [
        f"exemplar@{ids[p]} change {d:+.2f} vs {reference:+.2f}"
        for p, d in sorted(others.items(), key=lambda kv: kv[1])
        if d < reference - config.other_prompt_drop
    ]
    worst = min(others.values()) if others else reference
    summary = (
        f"change on {basis} {reference:+.2f}, worst other prompt {worst:+.2f} "
        f"(limit {config.other_prompt_drop:g} below)"
    )
    numbers = {
        "reference_change": _r(reference),
        "per_prompt_change": {ids[p]: _r(d) for p, d in delta.items()},
        "analysed": [ids[p] for p in analysed],
    }
    return Check("other_prompts", not failed, summary, failed, numbers)


def agreement(pairs: Sequence[tuple[Probe, Probe]], scores: Mapping[Probe, float | None]) -> float | None:
    """Share of pairs whose chosen response scores above the rejected one (ties count half)."""
    votes = []
    for chosen, rejected in pairs:
        a, b = scores.get(chosen), scores.get(rejected)
        if a is not None and b is not None:
            votes.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return statistics.fmean(votes) if votes else None


def check_pairs(
    pairs: Sequence[tuple[Probe, Probe]],
    cur: Mapping[Probe, float | None],
    cand: Mapping[Probe, float | None],
    config: AcceptanceConfig,
) -> Check:
    """Pair agreement falls by at most ``agreement_drop``."""
    a_cur, a_cand = agreement(pairs, cur), agreement(pairs, cand)
    if a_cur is None or a_cand is None:
        return Check("pairs", True, "skipped: no scored pair", numbers={"pairs": 0})
    passed = a_cand >= a_cur - config.agreement_drop - 1e-9
    failed = []
    if not passed:
        for chosen, rejected in pairs:
            c1, r1, c2, r2 = cur.get(chosen), cur.get(rejected), cand.get(chosen), cand.get(rejected)
            if None not in (c1, r1, c2, r2) and c1 > r1 and not c2 > r2:  # type: ignore[operator]
                failed.append(f"pair {chosen.name}@{chosen.prompt_id} ({c1 - r1:+.2f} -> {c2 - r2:+.2f})")  # type: ignore[operator]
    summary = f"agreement {a_cur:.2f} -> {a_cand:.2f} (limit -{config.agreement_drop:g})"
    numbers = {"pairs": len(pairs), "agreement_current": _r(a_cur), "agreement_candidate": _r(a_cand)}
    return Check("pairs", passed, summary, failed, numbers)


# ----- the gate ----------------------------------------------------------------------------------------------
class AcceptanceGate:
    """Decides whether a meta step's candidate rubric may replace the version in force.

    Args:
        reward: The run's reward function (its judge path scores the probes).
        config: Gate settings.
        reference_column: Sample column with the task's gold text (reference summary, reference solution).
        user_exemplars: Rows read from ``config.exemplars``.
        pairs: Rows read from ``config.pairs``.
    """

    def __init__(
        self,
        reward: Any,
        config: AcceptanceConfig,
        *,
        reference_column: str | None = None,
        user_exemplars: Sequence[Mapping[str, str]] = (),
        pairs: Sequence[Mapping[str, str]] = (),
    ) -> None:
        self.reward = reward
        self.config = config
        self.reference_column = reference_column
        self.user_exemplars = list(user_exemplars)
        self.pairs = list(pairs)
        self.pool = ExemplarPool()
        self.scorer = ProbeScorer(reward)
        self.judge_calls = 0

    @classmethod
    def from_config(cls, reward: Any, config: AcceptanceConfig, reference_column: str | None = None) -> AcceptanceGate:
        """A gate with the user files of ``config`` read (one-line errors naming the key and the file)."""
        exemplars = read_exemplars(config.exemplars) if config.exemplars else []
        pairs = read_pairs(config.pairs) if config.pairs else []
        return cls(reward, config, reference_column=reference_column, user_exemplars=exemplars, pairs=pairs)

    async def decide(
        self,
        lineage: str,
        current: Rubric,
        candidate: Rubric,
        window: Sequence[ScoredSample],
        analysed_prompts: Sequence[str] = (),
    ) -> GateResult:
        """Score the probes under both versions and run the checks."""
        started = time.perf_counter()
        self.pool.update(lineage, window)
        probes = build_probes(
            lineage,
            candidate,
            window,
            canary_prompts=self.config.canary_prompts,
            max_exemplars=self.config.max_exemplars,
            max_pairs=self.config.max_pairs,
            pool=self.pool.get(lineage),
            reference_column=self.reference_column,
            user_exemplars=self.user_exemplars,
            pairs=self.pairs,
            analysed_prompts=analysed_prompts,
        )
        judge = _CountingJudge(self.reward.judge)
        unique = list(dict.fromkeys(probes.all()))
        # Current first: its item scores fill the cache that the candidate's shared items then read.
        cur_scores = await asyncio.gather(*(self.scorer.score(current, p, judge) for p in unique))
        cand_scores = await asyncio.gather(*(self.scorer.score(candidate, p, judge) for p in unique))
        cur = dict(zip(unique, cur_scores, strict=True))
        cand = dict(zip(unique, cand_scores, strict=True))
        checks = [
            check_canaries(probes.canaries, probes.exemplars, cur, cand, self.config),
            check_exemplars(probes.exemplars, cur, cand, self.config),
            check_other_prompts(probes.exemplars, cur, cand, analysed_prompts, self.config),
            check_pairs(probes.pairs, cur, cand, self.config),
        ]
        failing = [c for c in checks if not c.passed]
        if not probes.exemplars:
            reason = "no exemplar for this lineage (no clean sample, gold text or user exemplar): nothing to compare"
            accepted = False
        elif failing:
            accepted = False
            reason = "; ".join(
                f"{c.name} failed: {c.summary}" + (f" [{', '.join(c.failed[:4])}]" if c.failed else "")
                for c in failing
            )
        else:
            accepted, reason = True, "passed: " + ", ".join(c.name for c in checks if "skipped" not in c.summary)
        unscored = sum(v is None for v in cur_scores) + sum(v is None for v in cand_scores)
        self.judge_calls += judge.calls
        result = GateResult(
            accepted,
            reason,
            checks,
            probes=[
                {
                    "probe": p.label,
                    "kind": p.kind,
                    "name": p.name,
                    "prompt": p.prompt[:200],
                    "text": p.text[:300],
                    "current": _r(cur[p]),
                    "candidate": _r(cand[p]),
                }
                for p in unique
            ],
            judge_calls=judge.calls,
            unscored=unscored,
            duration_s=time.perf_counter() - started,
        )
        log.info(
            "acceptance gate %s: %s (%d probes, %d judge calls, %.1fs): %s",
            lineage,
            "accepted" if accepted else "rejected",
            len(unique),
            judge.calls,
            result.duration_s,
            reason,
        )
        return result


def gate_line(record: Mapping[str, Any]) -> str:
    """One line per meta-step record: what was proposed (and its change), each gate check's numbers, and the
    decision with the probes that failed."""
    step = record.get("step", "?")
    lineage = record.get("lineage", "default")
    rubric = record.get("rubric") or {}
    items = rubric.get("items") or []
    proposed = f"proposed {len(items)} item(s)" if items else "proposed nothing"
    if items:
        proposed += " [" + "; ".join(str(i.get("title", ""))[:40] for i in items[:8]) + "]"
    change = str(record.get("change") or "").strip()
    if change:
        proposed += " (" + "; ".join(ln.strip() for ln in change.splitlines()[:6]) + ")"
    gate = record.get("acceptance")
    if not isinstance(gate, Mapping):
        decision = (
            f"accepted as v{record.get('new_version', '?')}"
            if record.get("accepted")
            else f"kept v{record.get('parent_version', '?')}: {str(record.get('reason', ''))[:200]}"
        )
        return f"step {step} {lineage}: {proposed}; no gate decision; {decision}"
    checks = "; ".join(
        f"{c.get('name')} {'ok' if c.get('passed') else 'FAIL'} ({c.get('summary')})" for c in gate.get("checks", [])
    )
    if record.get("accepted"):
        decision = f"ACCEPTED as v{record.get('new_version', '?')}"
    else:
        failed = [
            str(f).split(" (")[0] for c in gate.get("checks", []) if not c.get("passed") for f in c.get("failed", [])
        ]
        decision = f"REJECTED, kept v{record.get('parent_version', '?')}" + (
            f" (failing: {', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})" if failed else ""
        )
    return f"step {step} {lineage}: {proposed}; gate ({gate.get('judge_calls', 0)} judge calls): {checks}; {decision}"
