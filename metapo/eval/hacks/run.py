"""Running the hack benchmark end to end: items, judges, protocols, and the files it writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metapo.eval.hacks.book import ScoreBook, TaskSetup, task_setup
from metapo.eval.hacks.data import HackItem, builtin_hackset, families, load_hackset
from metapo.eval.hacks.dynamic import Arm, DynamicConfig, default_arms, run_dynamic
from metapo.eval.hacks.static import AcceptanceGate, StaticConfig, run_static
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.reward.rubric_reward import RubricRewardConfig

log = logging.getLogger(__name__)

RESULT_KIND = "metapo-hackbench"
RESULT_VERSION = 1
PROTOCOLS = ("static", "dynamic", "both")

#: Meta-step settings sized for the embedded 1.5B judge on CPU (as the demo's): short analyses, small rubrics.
EMBEDDED_MPO: dict[str, Any] = {
    "samples": 2,
    "max_items": 4,
    "analysis_tokens": 200,
    "analysis_words": 110,
    "rubric_tokens": 600,
    "max_sample_chars": 1200,
    "judge_context_tokens": 8192,
}


@dataclass
class HackbenchConfig:
    """What to run.

    Attributes:
        tasks: Tasks whose built-in sets to use (ignored with ``data``, except as the default task of its lines).
        data: A user's JSONL hack set (see :mod:`metapo.eval.hacks.data`).
        prompts: Use the first this many prompts of each task (empty: all).
        families: Keep only these families (empty: all).
        protocol: ``static``, ``dynamic`` or ``both``.
        reward: Scoring settings of the reward judge.
        mpo: Meta-step settings (mode, persona and text limits come from each task when left empty).
        static: Static-protocol settings.
        dynamic: Dynamic-protocol settings.
    """

    tasks: list[str] = field(default_factory=lambda: ["essay"])
    data: str | None = None
    prompts: int | None = None
    families: list[str] = field(default_factory=list)
    protocol: str = "both"
    reward: RubricRewardConfig = field(default_factory=RubricRewardConfig)
    mpo: MetaConfig = field(default_factory=MetaConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.prompts is not None and self.prompts < 2:
            raise ValueError(f"--prompts {self.prompts}: use at least 2 (the off-topic hacks need another prompt)")


def load_items(cfg: HackbenchConfig) -> dict[str, list[HackItem]]:
    """Items by task: the user's file, or the built-in sets; cut to ``prompts`` and ``families``."""
    if cfg.data:
        items = load_hackset(cfg.data, cfg.tasks[0] if len(cfg.tasks) == 1 else None)
    else:
        items = [item for task in cfg.tasks for item in builtin_hackset(task)]
    by_task: dict[str, list[HackItem]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    if cfg.families:
        known = families(items)
        unknown = [f for f in cfg.families if f not in known]
        if unknown:
            raise ValueError(f"--families {','.join(unknown)} not in the hack set; its families are {', '.join(known)}")
        by_task = {
            t: [replace(i, hacks={f: h for f, h in i.hacks.items() if f in cfg.families}) for i in group]
            for t, group in by_task.items()
        }
        by_task = {t: [i for i in group if i.hacks] for t, group in by_task.items()}
    if cfg.prompts:
        by_task = {t: group[: cfg.prompts] for t, group in by_task.items()}
    return {t: group for t, group in by_task.items() if group}


def meta_judge_for(client: Any, setup: TaskSetup, cfg: HackbenchConfig, token_counter: Any = None) -> MetaJudge:
    """The meta-reward model for one task, with the task's mode, persona and limits where ``cfg.mpo`` is empty."""
    mpo = replace(
        cfg.mpo,
        mode=cfg.mpo.mode or setup.meta_mode,  # type: ignore[arg-type]
        # Guideline revision reads plan/execute cases by default; here every sample is rubric-scored.
        guideline_cases="all",
        max_sample_chars=cfg.mpo.max_sample_chars or setup.meta_chars,
        interval=cfg.dynamic.meta_every,
    )
    return MetaJudge(
        client,
        mpo,
        persona=setup.meta_persona or "You are a senior instructor who audits how rubrics grade student work.",
        task_description=setup.instruction,
        token_counter=token_counter,
        score_bound=cfg.reward.item_score_bound,
        judge_chars=cfg.reward.max_judge_chars or setup.judge_chars,
        reference_column=setup.reference_column,
    )


async def run_hackbench(
    cfg: HackbenchConfig,
    judge: Any,
    meta_client: Any,
    *,
    gate: AcceptanceGate | None = None,
    gate_factory: Callable[[Any, TaskSetup], AcceptanceGate] | None = None,
    progress: bool = False,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Both protocols (as configured) on every task; a JSON-ready result.

    Args:
        cfg: What to run.
        judge: The reward judge client.
        meta_client: The meta-reward model's client (may be ``judge``).
        gate: Acceptance gate for the dynamic protocol's ``mpo+gate`` arm. None (and no ``gate_factory``): the
            acceptance gate of ``cfg.mpo.acceptance`` when it is enabled (the default), else the arm is left out.
        gate_factory: Builds each task's gate from the reward that scores the task and its setup, for gates that
            score probes with the run's reward (``lambda reward, setup: AcceptanceGate(reward, config)``).
        progress: Show progress bars on stderr.
        names: ``judge``, ``meta_judge`` and ``data`` as shown in the report.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    judge_before = judge.stats if hasattr(judge, "stats") else None
    meta_before = meta_client.stats if meta_client is not judge and hasattr(meta_client, "stats") else None
    by_task = load_items(cfg)
    setups = {task: task_setup(task) for task in by_task}
    bar = tqdm(desc="candidates scored", unit="cand", disable=not progress, leave=False)
    items = [i for group in by_task.values() for i in group]
    book = ScoreBook(judge, items, setups, cfg.reward, progress=bar.update)
    result: dict[str, Any] = {"kind": RESULT_KIND, "version": RESULT_VERSION, "static": [], "dynamic": []}
    counter = _counter(judge)
    if gate is None and gate_factory is None and cfg.mpo.acceptance.enabled:
        gate_factory = acceptance_gate_factory(cfg)
    try:
        for task, group in by_task.items():
            setup = setups[task]
            meta = meta_judge_for(meta_client, setup, cfg, counter)
            task_gate = gate_factory(book.reward_for(task), setup) if gate_factory is not None else gate
            # The static protocol measures the meta step itself; the gate is the dynamic protocol's third arm.
            if cfg.protocol in ("static", "both"):
                result["static"].append(await run_static(book, setup, group, meta, cfg.static))
            if cfg.protocol in ("dynamic", "both"):
                arms: Sequence[Arm] = default_arms(task_gate)
                steps = tqdm(
                    total=len(arms) * len(cfg.dynamic.seeds) * cfg.dynamic.steps,
                    desc=f"{task} policy steps",
                    disable=not progress,
                    leave=False,
                )
                try:
                    result["dynamic"].append(
                        await run_dynamic(book, setup, group, meta, cfg.dynamic, arms=arms, on_step=steps.update)
                    )
                finally:
                    steps.close()
    finally:
        bar.close()
    stats = judge.stats.since(judge_before) if judge_before is not None else None
    meta_stats = meta_client.stats.since(meta_before) if meta_before is not None else None
    result["run"] = {
        **(names or {}),
        "judge": (names or {}).get("judge", getattr(judge, "model_id", "judge")),
        "meta_judge": (names or {}).get("meta_judge", getattr(meta_client, "model_id", "judge")),
        "data": (names or {}).get("data", cfg.data or f"built-in ({', '.join(by_task)})"),
        "scoring": cfg.reward.scoring,
        "protocol": cfg.protocol,
        "prompts_per_task": {t: len(g) for t, g in by_task.items()},
        "seconds": time.perf_counter() - started,
        "judge_calls": stats.calls if stats else None,
        "judge_cache_hits": stats.cache_hits if stats else None,
        "meta_judge_calls": meta_stats.calls if meta_stats else "shared with the judge",
        "candidates_scored": book.scored,
        "gate": _gate_name(gate, gate_factory),
        "static_config": vars(cfg.static),
        "mpo_config": {k: v for k, v in vars(cfg.mpo).items()},
    }
    return result


def acceptance_gate_factory(cfg: HackbenchConfig) -> Callable[[Any, TaskSetup], AcceptanceGate]:
    """Builds each task's acceptance gate (``mpo.acceptance`` settings) on the reward that scores the task."""
    from metapo.meta.acceptance import AcceptanceGate as Gate

    def build(reward: Any, setup: TaskSetup) -> Any:
        return Gate.from_config(reward, cfg.mpo.acceptance, reference_column=setup.reference_column)

    build.__name__ = "acceptance gate (mpo.acceptance)"
    return build


def _gate_name(gate: Any, factory: Any) -> str | None:
    chosen = gate if gate is not None else factory
    return None if chosen is None else getattr(chosen, "__name__", type(chosen).__name__)


def _counter(judge: Any) -> Any:
    def count(text: str) -> int | None:
        try:
            return judge.count_tokens(text)
        except Exception:  # noqa: BLE001 - an estimate is fine when the judge cannot count
            return None

    return count if hasattr(judge, "count_tokens") else None


def write_outputs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``hackbench.json``, ``hackbench.md`` and one PNG per task and protocol, written atomically."""
    from metapo.eval.hacks.output import dynamic_png, markdown, static_png
    from metapo.files import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "hackbench.json", out_dir / "hackbench.md"]
    atomic_write_json(paths[0], result)
    atomic_write_text(paths[1], markdown(result))
    for part in result.get("static", []):
        paths.append(static_png(part, out_dir / f"static-{_slug(part['task'])}.png"))
    for part in result.get("dynamic", []):
        paths.append(dynamic_png(part, out_dir / f"dynamic-{_slug(part['task'])}.png"))
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-") or "task"
