"""Reading a run directory into plain summaries for the run report.

Every reader tolerates missing or partial parts (a run still in progress, a baseline without meta steps, a crash
that left a torn JSONL line): what is absent becomes an empty list or ``None``, and the report says so instead of
failing. The summaries are pure functions of the loaded records.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapo.files import read_jsonl

logger = logging.getLogger(__name__)

# Judge counters: cumulative snapshots or per-interval deltas are both possible in metrics.jsonl (see cost_summary).
COUNTER_FIELDS = (
    "calls",
    "cache_hits",
    "requests",
    "responses",
    "retries",
    "failures",
    "latency_s",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class RubricVersionRecord:
    """One rubric version as stored in ``RUN/rubrics/<lineage>/vNNNN.json`` (raw dict kept for extras)."""

    lineage: str
    version: int
    step: int
    creator: str
    items: list[dict[str, Any]]
    parents: list[int] = field(default_factory=list)
    hash: str = ""
    created: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def max_points(self) -> float:
        """Sum of item maxima."""
        return float(sum(_num(i.get("max_score"), 0.0) for i in self.items))

    @property
    def min_points(self) -> float:
        """Sum of item minima."""
        return float(sum(_num(i.get("min_score"), 0.0) for i in self.items))


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    rubrics: dict[str, list[RubricVersionRecord]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    meta_steps: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hackbench: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.run_dir.resolve().name


def _num(value: Any, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if out == out else default  # NaN counts as missing


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name}: unreadable ({exc.__class__.__name__})")
        return None


def load_run(run_dir: str | Path) -> RunData:
    """Read the parts of a run directory that exist.

    Args:
        run_dir: The run directory (``config.yaml``, ``rubrics/``, ``samples.jsonl``, ``meta/``, ``metrics.jsonl``,
            ``eval/*.json``, ``hackbench/hackbench.json``).

    Returns:
        The loaded records; unreadable files are listed in ``problems``.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass the run directory a training run wrote")
    data = RunData(run_dir=root)
    config_path = root / "config.yaml"
    if config_path.is_file():
        import yaml

        data.config_text = config_path.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(data.config_text)
            data.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            data.problems.append(f"config.yaml: unreadable ({exc.__class__.__name__})")

    rubric_root = root / "rubrics"
    if rubric_root.is_dir():
        for sub in sorted(p for p in rubric_root.iterdir() if p.is_dir()):
            versions = []
            for path in sorted(sub.glob("v*.json")):
                raw = _read_json(path, data.problems)
                if isinstance(raw, dict):
                    versions.append(_rubric_record(raw, sub.name))
            if versions:
                versions.sort(key=lambda v: v.version)
                data.rubrics[versions[0].lineage] = versions

    samples = [root / "samples.jsonl", *sorted(root.glob("samples.rank*.jsonl"))]
    for path in samples:
        data.samples += [s for s in read_jsonl(path) if isinstance(s, dict)]
    data.metrics = [m for m in read_jsonl(root / "metrics.jsonl") if isinstance(m, dict)]

    meta_dir = root / "meta"
    if meta_dir.is_dir():
        for path in sorted(meta_dir.glob("*.json")):
            raw = _read_json(path, data.problems)
            if isinstance(raw, dict):
                data.meta_steps.append(raw)
        data.meta_steps.sort(key=lambda m: (_num(m.get("step"), 0.0), str(m.get("lineage", ""))))

    eval_dir = root / "eval"
    if eval_dir.is_dir():
        for path in sorted(eval_dir.glob("*.json")):
            raw = _read_json(path, data.problems)
            if isinstance(raw, dict):
                data.evals.append((path.name, raw))

    bench = root / "hackbench" / "hackbench.json"
    if bench.is_file():
        raw = _read_json(bench, data.problems)
        if isinstance(raw, dict) and raw.get("kind") == "metapo-hackbench":
            data.hackbench = raw
    return data


def _rubric_record(raw: dict[str, Any], dirname: str) -> RubricVersionRecord:
    rubric = raw.get("rubric") if isinstance(raw.get("rubric"), dict) else {}
    items = rubric.get("items") if isinstance(rubric.get("items"), list) else []
    evidence = raw.get("evidence") if isinstance(raw.get("evidence"), dict) else {}
    if "validation" in raw and "validation" not in evidence:
        evidence = {**evidence, "validation": raw["validation"]}
    return RubricVersionRecord(
        lineage=str(raw.get("lineage", dirname)),
        version=int(_num(raw.get("version"), 0.0) or 0),
        step=int(_num(raw.get("step"), 0.0) or 0),
        creator=str(raw.get("creator", "")),
        items=[i for i in items if isinstance(i, dict)],
        parents=[int(p) for p in raw.get("parents", []) if _num(p) is not None],
        hash=str(raw.get("hash", "")),
        created=float(_num(raw.get("created"), 0.0) or 0.0),
        evidence=evidence,
    )


# ----- series ------------------------------------------------------------------------------------------------
@dataclass
class Series:
    """A per-step curve with the rubric version active at each step.

    Attributes:
        steps: Trainer steps.
        values: Values at those steps.
        versions: Active rubric version at each step (``None`` if unknown).
        source: Where the values came from, in words.
    """

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    versions: list[int | None] = field(default_factory=list)
    source: str = ""


def _metric_series(metrics: Sequence[dict[str, Any]], key: str) -> Series:
    steps, values, versions = [], [], []
    for record in metrics:
        value, step = _num(record.get(key)), _num(record.get("step"))
        if value is None or step is None:
            continue
        version = _num(record.get("mpo/rubric_version"))
        steps.append(int(step))
        values.append(value)
        versions.append(int(round(version)) if version is not None else None)
    return Series(steps, values, versions, f"metrics.jsonl: {key}")


def _sample_series(samples: Sequence[dict[str, Any]], value_of: Any, what: str) -> Series:
    by_step: dict[int, list[float]] = defaultdict(list)
    version_at: dict[int, Counter[int]] = defaultdict(Counter)
    for sample in samples:
        value, step = value_of(sample), _num(sample.get("step"))
        if value is None or step is None:
            continue
        by_step[int(step)].append(value)
        version = _num(sample.get("rubric_version"))
        if version is not None:
            version_at[int(step)][int(version)] += 1
    steps = sorted(by_step)
    return Series(
        steps,
        [statistics.fmean(by_step[s]) for s in steps],
        [version_at[s].most_common(1)[0][0] if version_at[s] else None for s in steps],
        f"samples.jsonl: mean {what} per step",
    )


def reward_series(data: RunData) -> Series:
    """Mean reward per step: the trainer's logged ``reward``, else the mean over scored samples."""
    series = _metric_series(data.metrics, "reward")
    if series.steps:
        return series
    return _sample_series(data.samples, lambda s: _num(s.get("reward")), "reward")


def length_series(data: RunData) -> Series:
    """Mean completion length per step: the trainer's ``completions/mean_length`` (tokens), else words."""
    series = _metric_series(data.metrics, "completions/mean_length")
    if series.steps:
        return series
    return _sample_series(data.samples, lambda s: float(len(str(s.get("completion", "")).split())), "words")


# ----- rubric evolution --------------------------------------------------------------------------------------
@dataclass
class ItemChange:
    """How one rubric item changed between two versions."""

    title: str
    details: list[str]
    old_description: str = ""
    new_description: str = ""


@dataclass
class VersionDiff:
    """Items added, removed and changed from a version's parent to the version."""

    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[ItemChange] = field(default_factory=list)
    reordered: bool = False

    @property
    def empty(self) -> bool:
        """No change at all."""
        return not (self.added or self.removed or self.changed or self.reordered)

    def summary(self) -> str:
        """One line: counts of added, removed and changed items."""
        if self.empty:
            return "no change"
        parts = []
        if self.added:
            parts.append(f"+{len(self.added)} added")
        if self.removed:
            parts.append(f"-{len(self.removed)} removed")
        if self.changed:
            parts.append(f"~{len(self.changed)} changed")
        if self.reordered:
            parts.append("reordered")
        return ", ".join(parts)


def rubric_diff(old_items: Sequence[dict[str, Any]], new_items: Sequence[dict[str, Any]]) -> VersionDiff:
    """Diff two rubrics given as item dicts, with :func:`metapo.rubric.diff.diff`'s matching (id, then title).

    The rubric module's diff is used when both sides parse as rubrics; hand-edited or damaged records that do
    not parse fall back to the same id-then-title matching here, so the report never fails on them.
    """
    try:
        from metapo.rubric.diff import diff
        from metapo.rubric.model import Rubric

        result = diff(Rubric.from_items(list(old_items)), Rubric.from_items(list(new_items)))
    except (ImportError, ValueError, TypeError, KeyError):
        return _fallback_diff(old_items, new_items)
    out = VersionDiff(
        added=[_item_dict(i) for i in result.added],
        removed=[_item_dict(i) for i in result.removed],
        reordered=bool(getattr(result, "reordered", False)),
    )
    for before, after in result.changed:
        out.changed.append(_change(_item_dict(before), _item_dict(after)))
    return out


def _item_dict(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "title": item.title,
        "description": item.description,
        "min_score": item.min_score,
        "max_score": item.max_score,
        "weight": item.weight,
    }


def _change(before: dict[str, Any], after: dict[str, Any]) -> ItemChange:
    details = []
    if before.get("title") != after.get("title"):
        details.append(f"renamed from “{before.get('title')}”")
    if (before.get("min_score"), before.get("max_score")) != (after.get("min_score"), after.get("max_score")):
        details.append(
            f"range {before.get('min_score')}–{before.get('max_score')} → {after.get('min_score')}–{after.get('max_score')}"
        )
    if _num(before.get("weight"), 1.0) != _num(after.get("weight"), 1.0):
        details.append(f"weight {before.get('weight', 1)} → {after.get('weight', 1)}")
    old_d, new_d = str(before.get("description", "")), str(after.get("description", ""))
    if old_d != new_d:
        details.append(f"description {len(old_d)} → {len(new_d)} chars")
    return ItemChange(str(after.get("title", "")), details, old_d, new_d)


def _fallback_diff(old_items: Sequence[dict[str, Any]], new_items: Sequence[dict[str, Any]]) -> VersionDiff:
    out = VersionDiff()
    by_id = {str(i.get("id")): i for i in old_items if i.get("id")}
    by_title = {str(i.get("title", "")).lower(): i for i in old_items}
    matched: list[int] = []
    for item in new_items:
        before = by_id.get(str(item.get("id"))) or by_title.get(str(item.get("title", "")).lower())
        if before is None or id(before) in matched:
            out.added.append(dict(item))
            continue
        matched.append(id(before))
        change = _change(before, item)
        if change.details:
            out.changed.append(change)
    out.removed = [dict(i) for i in old_items if id(i) not in matched]
    kept = [id(i) for i in old_items if id(i) in matched]
    out.reordered = kept != matched
    return out


@dataclass
class TimelineEntry:
    """One rubric version in the evolution timeline, with its diff from the parent and the meta step behind it."""

    lineage: str
    version: RubricVersionRecord
    parent: int | None
    diff: VersionDiff | None
    meta: dict[str, Any] | None


def rubric_timeline(data: RunData) -> list[TimelineEntry]:
    """Every rubric version of every lineage with its diff from its parent, oldest first per lineage."""
    meta_by_new = {
        (str(m.get("lineage", "default")), int(_num(m.get("new_version"), -1) or -1)): m
        for m in data.meta_steps
        if m.get("new_version") is not None
    }
    out = []
    for lineage, versions in data.rubrics.items():
        by_number = {v.version: v for v in versions}
        for record in versions:
            parent = (
                record.parents[-1] if record.parents else (record.version - 1 if record.version > 0 else None)
            )
            parent_record = by_number.get(parent) if parent is not None else None
            change = rubric_diff(parent_record.items, record.items) if parent_record is not None else None
            out.append(
                TimelineEntry(lineage, record, parent, change, meta_by_new.get((lineage, record.version)))
            )
    return out


# ----- costs and failures ------------------------------------------------------------------------------------
def _aggregate_counter(values: Sequence[float]) -> float:
    """Total of a logged counter: the last value of a never-decreasing series (a running total), else the sum."""
    if len(values) > 1 and all(b >= a for a, b in zip(values, values[1:], strict=False)):
        return float(values[-1])
    return float(sum(values))


def judge_costs(metrics: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Judge counters per prefix (``judge/``, ``meta_judge/``, ...) aggregated over ``metrics.jsonl``.

    Counters may be logged as running totals or as per-interval deltas; a series that never decreases is read as a
    running total (its last value), any other as deltas (summed).
    """
    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in metrics:
        for key, value in record.items():
            if "/" not in key:
                continue
            prefix, name = key.rsplit("/", 1)
            if "judge" not in prefix or name not in COUNTER_FIELDS:
                continue
            number = _num(value)
            if number is not None:
                series[prefix][name].append(number)
    out: dict[str, dict[str, float]] = {}
    for prefix, fields in series.items():
        totals = {name: _aggregate_counter(values) for name, values in fields.items()}
        calls = totals.get("calls", 0.0)
        if calls:
            totals["failure_rate"] = totals.get("failures", 0.0) / calls
            totals["cache_hit_rate"] = totals.get("cache_hits", 0.0) / calls
        if totals.get("responses"):
            totals["mean_latency_s"] = totals.get("latency_s", 0.0) / totals["responses"]
        out[prefix] = totals
    return out


@dataclass
class SampleHealth:
    """Failure counts over the logged samples."""

    total: int = 0
    scored: int = 0
    missing: int = 0
    gated: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, int]] = field(default_factory=list)
    judge_seconds: float = 0.0


def sample_health(samples: Iterable[dict[str, Any]]) -> SampleHealth:
    """How many samples were scored, gated or left without a score, and the commonest error messages."""
    health = SampleHealth()
    gates: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for sample in samples:
        health.total += 1
        health.judge_seconds += _num(sample.get("judge_latency_s"), 0.0) or 0.0
        if sample.get("gate"):
            gates[str(sample["gate"])] += 1
        if sample.get("reward") is None:
            health.missing += 1
            errors[str(sample.get("error") or "no reward recorded")[:200]] += 1
        elif not sample.get("gate"):
            health.scored += 1
    health.gated = dict(gates.most_common())
    health.errors = errors.most_common(5)
    return health


@dataclass
class MetaSummary:
    """Meta steps: how many ran, were accepted or rejected, what they cost."""

    total: int = 0
    accepted: int = 0
    rejected: int = 0
    seconds: float = 0.0
    reasons: list[tuple[str, int]] = field(default_factory=list)
    judge: dict[str, float] = field(default_factory=dict)


def meta_summary(meta_steps: Sequence[dict[str, Any]]) -> MetaSummary:
    """Counts and durations of meta steps, rejection reasons, and any judge statistics they logged."""
    out = MetaSummary(total=len(meta_steps))
    reasons: Counter[str] = Counter()
    judge: dict[str, float] = defaultdict(float)
    for step in meta_steps:
        if step.get("accepted"):
            out.accepted += 1
        else:
            out.rejected += 1
            reasons[str(step.get("reason") or "no reason logged")[:200]] += 1
        out.seconds += _num(step.get("duration_s"), 0.0) or 0.0
        for key, value in step.items():
            if "judge" in key and isinstance(value, dict):
                for name, number in value.items():
                    if name in COUNTER_FIELDS and _num(number) is not None:
                        judge[name] += float(number)
    out.reasons = reasons.most_common(5)
    out.judge = dict(judge)
    return out


# ----- sample completions ------------------------------------------------------------------------------------
def example_samples(
    samples: Sequence[dict[str, Any]], n: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Up to ``n`` samples from the first logged step and up to ``n`` from the last (first-logged order)."""
    stepped = [s for s in samples if _num(s.get("step")) is not None]
    if not stepped:
        return [], []
    first = min(int(_num(s["step"]) or 0) for s in stepped)
    last = max(int(_num(s["step"]) or 0) for s in stepped)
    start = [s for s in stepped if int(_num(s["step"]) or 0) == first][:n]
    end = [s for s in stepped if int(_num(s["step"]) or 0) == last][:n] if last != first else []
    return start, end


def item_titles(data: RunData, lineage: str, version: int) -> dict[str, dict[str, Any]]:
    """Item id to item dict for one rubric version (empty when the version is not on disk)."""
    for record in data.rubrics.get(lineage, []):
        if record.version == version:
            return {str(i.get("id")): i for i in record.items}
    return {}


def gate_checks(meta: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The acceptance gate's checks of one meta-step record as (name, passed, summary); empty without a gate."""
    gate = meta.get("acceptance")
    if not isinstance(gate, dict) or not isinstance(gate.get("checks"), list):
        return []
    return [
        (str(c.get("name", "?")), bool(c.get("passed")), str(c.get("summary", "")))
        for c in gate["checks"]
        if isinstance(c, dict)
    ]
