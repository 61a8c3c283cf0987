"""Scores of every candidate under every rubric version, through the real ``RubricReward`` and cached per version.

The benchmark scores text the way training does: the task's rule gates first, then the judge on the rubric in
force, with the task's persona and input label. A (rubric content, prompt, candidate) triple is scored once per
process; across processes the judge's own SQLite cache makes an interrupted run resume without new calls.
Each task of a hack set is its own rubric lineage (named after the task).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from metapo.eval.hacks.data import HackItem
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric.store import RubricVersion

log = logging.getLogger(__name__)

#: One candidate: (item id, candidate name: "good" or a family).
Key = tuple[str, str]


class _InForce:
    """The rubric version the reward reads, per lineage; the book sets it before each batch."""

    def __init__(self) -> None:
        self.current: dict[str, RubricVersion] = {}

    def get(self, lineage: str = "default") -> RubricVersion:
        return self.current[lineage]


@dataclass
class TaskSetup:
    """What scoring one task's candidates needs: the task's starting rubric, gates and judge wording."""

    name: str
    initial: Any
    gates: tuple[Any, ...]
    persona: str
    input_label: str
    judge_chars: int
    meta_persona: str
    instruction: str
    meta_mode: str
    meta_chars: int
    reference_column: str | None


def task_setup(name: str) -> TaskSetup:
    """The :class:`TaskSetup` of a registered task (or YAML task file / import path)."""
    from metapo.tasks import get_task

    task = get_task(name)
    return TaskSetup(
        name=name,
        initial=task.initial_rubric(),
        gates=tuple(task.gates()),
        persona=task.judge_persona,
        input_label=task.judge_input_label,
        judge_chars=task.judge_chars,
        meta_persona=task.meta_persona,
        instruction=task.instruction,
        meta_mode=task.meta_mode,
        meta_chars=task.meta_chars,
        reference_column=task.meta_reference_column,
    )


class ScoreBook:
    """Scores candidates of hack items under rubric versions, once per (version content, candidate).

    Args:
        judge: The reward judge client.
        items: The hack items (any mix of tasks).
        setups: Task name to :class:`TaskSetup`.
        config: Scoring settings (mode, scale); persona, input label and text limit come from each task.
        progress: Called with the number of candidates scored after each batch (progress bars).
        batch: Candidates handed to the reward per call (they are scored concurrently, up to the judge's limit).
    """

    def __init__(
        self,
        judge: Any,
        items: Sequence[HackItem],
        setups: dict[str, TaskSetup],
        config: RubricRewardConfig,
        *,
        progress: Callable[[int], None] | None = None,
        batch: int = 8,
    ) -> None:
        self.items = {item.id: item for item in items}
        self.setups = setups
        self.progress = progress
        self.batch = batch
        self._in_force = _InForce()
        self._rewards: dict[str, RubricReward] = {}
        self._captured: list[ScoredSample] = []
        for name, setup in setups.items():
            cfg = replace(
                config,
                judge_persona=setup.persona or config.judge_persona,
                input_label=setup.input_label or config.input_label,
                max_judge_chars=config.max_judge_chars or setup.judge_chars,
            )
            self._rewards[name] = RubricReward(
                judge, self._in_force, cfg, gates=setup.gates, on_scored=self._captured.extend
            )
        self._cache: dict[tuple[str, str, str], ScoredSample] = {}
        self.scored = 0

    def reward_for(self, task: str) -> RubricReward:
        """The reward that scores ``task``'s candidates (what an acceptance gate scores its probes with)."""
        return self._rewards[task]

    def cached(self, version: RubricVersion, key: Key) -> ScoredSample | None:
        """The sample of ``key`` under ``version`` when already scored."""
        return self._cache.get((version.rubric.content_hash(), *key))

    async def score(self, versions: dict[str, RubricVersion], keys: Sequence[Key]) -> dict[Key, ScoredSample]:
        """Samples of ``keys``, each under its task's version in ``versions`` (task name to version).

        A sample the judge could not score has ``reward is None``; it is not cached, so a rerun retries it.
        """
        out: dict[Key, ScoredSample] = {}
        todo: dict[str, list[Key]] = {}
        for key in dict.fromkeys(keys):
            task = self.items[key[0]].task
            hit = self.cached(versions[task], key)
            if hit is not None:
                out[key] = hit
            else:
                todo.setdefault(task, []).append(key)
        for task, pending in todo.items():
            version = versions[task]
            self._in_force.current[task] = version
            for start in range(0, len(pending), self.batch):
                chunk = pending[start : start + self.batch]
                for key, sample in zip(chunk, await self._call(task, chunk), strict=True):
                    sample.sample_id = f"{key[0]}/{key[1]}"
                    out[key] = sample
                    if sample.reward is not None:
                        self._cache[(version.rubric.content_hash(), *key)] = sample
                self.scored += len(chunk)
                if self.progress is not None:
                    self.progress(len(chunk))
        return out

    async def _call(self, task: str, keys: Sequence[Key]) -> list[ScoredSample]:
        items = [self.items[k[0]] for k in keys]
        names = sorted({c for item in items for c in item.columns})
        columns = {name: [item.columns.get(name) for item in items] for name in names}
        self._captured.clear()
        await self._rewards[task](
            [item.prompt for item in items],
            [item.candidates()[k[1]] for item, k in zip(items, keys, strict=True)],
            task_input=[item.prompt for item in items],
            lineage=[task] * len(items),
            **columns,
        )
        return list(self._captured)
