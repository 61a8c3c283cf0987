"""The reward service's state: one ``RubricReward``, window, rubric store and meta controller per run directory.

Durability without a home-made database: every scored batch is appended (and fsynced) to ``samples.jsonl``
before its answer leaves, rubric versions are immutable files in ``rubrics/``, and ``service/state.json`` (written
atomically after each meta step) says how many logged samples finished meta steps have used. So after a crash
(``kill -9``) the restarted service rebuilds the window as the samples logged since, and puts the newest
stored version of each lineage in force (the service publishes every version as soon as it is stored).
A graceful stop also writes ``service/mpo_state.json`` with the window and versions (the trainer's format).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metapo.config import to_dict
from metapo.files import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import JudgeUnavailableError, RubricReward
from metapo.service.config import ServeConfig

log = logging.getLogger(__name__)

STATE_DIR = "service"
STATE_FILE = "state.json"


class ServiceRunDirError(ValueError):
    """The run directory cannot be served (it holds a training run, or cannot be written)."""


class UnknownLineageError(ValueError):
    """A request names a new lineage beyond ``service.max_lineages``."""


@dataclass
class Counters:
    """Running totals exposed on ``/metrics`` (the service's own; judge counters come from the client)."""

    samples: int = 0
    failed: int = 0
    gated: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    staleness: list[int] = field(default_factory=list)


class SampleLog:
    """Appends scored batches to ``samples.jsonl`` with one fsync per burst (group commit), off the event loop.

    A batch's ``write`` returns once its lines are on disk; ``on_written`` then sees the batches in file order, in
    the event loop, so the window and the logged lines never disagree about order (a restart relies on it).
    Concurrent requests share a write: with one sample per request (verl), one fsync per request was the service's
    largest cost (a few ms each, blocking every other request).
    """

    def __init__(self, path: Path, on_written: Any) -> None:
        self.path = path
        self.on_written = on_written
        self._pending: list[tuple[list[ScoredSample], asyncio.Future]] = []
        self._flushing = False

    async def write(self, samples: list[ScoredSample]) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((samples, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                records = [s.to_dict() for samples, _ in batch for s in samples]
                try:
                    await asyncio.to_thread(append_jsonl, self.path, records)
                except Exception as exc:  # e.g. disk full: those requests fail, nothing is half-counted
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                for samples, future in batch:
                    self.on_written(samples)
                    future.set_result(None)
        finally:
            self._flushing = False


class RewardService:
    """Owns the reward, window, store and meta controller of one run directory; async, one event loop.

    Args:
        cfg: The run config and service settings.
        reward: The rubric reward (the service logs and records its samples itself).
        controller: The meta controller (window, store, meta steps); see :meth:`build`.
    """

    def __init__(self, cfg: ServeConfig, *, reward: RubricReward, controller: Any) -> None:
        self.cfg = cfg
        self.settings = cfg.service
        self.run_dir = cfg.run_dir
        self.reward = reward
        self.controller = controller
        self.counters = Counters()
        self.recorded = 0  # samples logged in samples.jsonl (valid lines)
        self.consumed = 0  # of those, how many finished meta steps have used
        self.baseline_end: int | None = None
        self.since_trigger = 0
        self.steps_since_meta = 0
        self.last_step = 0
        self.judge_down: str | None = None
        self.started = time.time()
        self._job_end = 0
        self._job_task: asyncio.Task | None = None
        # The service logs samples itself (group commit), then hands them to the window; the reward only scores.
        self.reward.on_scored = None
        self.log = SampleLog(self.run_dir / "samples.jsonl", self._written)

    # ----- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: ServeConfig) -> RewardService:
        """Assemble task, judges, store, reward and controller for ``cfg`` and restore what the run dir holds."""
        from metapo.rubric.active import ActiveRubrics
        from metapo.rubric.store import RubricStore
        from metapo.tasks import get_task
        from metapo.train.run import apply_task_defaults, build_mpo, read_gate_files, resolve_initial_rubric

        run = cfg.run
        task = get_task(run.task, **run.task_options)
        apply_task_defaults(run, task)
        initial = resolve_initial_rubric(run.initial_rubric, task)
        gate_files = read_gate_files(run) if run.mpo.every > 0 else ([], [])
        run_dir = prepare_service_dir(cfg)
        active = ActiveRubrics(RubricStore(run_dir / "rubrics"), initial)
        controller, reward = build_mpo(run, task, active, run_dir, gate_files)
        service = cls(cfg, reward=reward, controller=controller)
        service.restore()
        return service

    # ----- persistence -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_DIR / STATE_FILE

    def restore(self) -> None:
        """Rebuild the window from ``samples.jsonl`` and the counters from ``service/state.json``."""
        import json

        state: dict[str, Any] = {}
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
        rows = read_jsonl(self.run_dir / "samples.jsonl")
        self.recorded = len(rows)
        self.consumed = min(int(state.get("consumed", 0)), self.recorded)
        self.baseline_end = state.get("baseline_end")
        self.last_step = int(state.get("last_step", 0))
        ctl = self.controller
        for key in ("meta_steps", "accepted", "rejected", "unchanged"):
            setattr(ctl, key, int(state.get(key, 0)))
        rubrics = ctl.rubrics
        for lineage in rubrics.store.lineages():
            rubrics.get(lineage)  # the newest stored version is the one in force
        if ctl.enabled:
            window = [ScoredSample.from_dict(d) for d in rows[self.consumed :]]
            baseline = (
                [ScoredSample.from_dict(d) for d in rows[: self.baseline_end]] if self.baseline_end else None
            )
            ctl.restore_window(window, baseline)
            self.since_trigger = len(window)
        if state or rows:
            log.info(
                "resumed %s: %d samples logged, window of %d, rubric versions %s",
                self.run_dir,
                self.recorded,
                self.recorded - self.consumed,
                rubrics.versions(),
            )

    def save_state(self) -> None:
        """Write ``service/state.json`` (small; after every meta step and at shutdown)."""
        ctl = self.controller
        atomic_write_json(
            self.state_path,
            {
                "consumed": self.consumed,
                "recorded": self.recorded,
                "baseline_end": self.baseline_end,
                "last_step": self.last_step,
                "versions": ctl.rubrics.versions(),
                "meta_steps": ctl.meta_steps,
                "accepted": ctl.accepted,
                "rejected": ctl.rejected,
                "unchanged": ctl.unchanged,
                "saved": time.time(),
            },
        )

    # ----- scoring -----------------------------------------------------------------------------------
    def check_lineages(self, lineages: set[str]) -> None:
        """Refuse a request that would create lineages beyond ``service.max_lineages`` (each is a directory)."""
        known = self.controller.rubrics.versions()
        new = [k for k in lineages if k not in known]
        if new and len(known) + len(new) > self.settings.max_lineages:
            raise UnknownLineageError(
                f"lineage {new[0]!r} would be number {len(known) + len(new)}; at most "
                f"{self.settings.max_lineages} (service.max_lineages)"
            )

    async def score(self, items: list[Any], *, step: int | None, engine: str) -> list[ScoredSample]:
        """Score a batch, log it (durably) and count it; starts a meta step when ``meta_every_samples`` is due."""
        self.check_lineages({str(i.columns.get("lineage") or "default") for i in items})
        samples = await self.reward.score(
            [i.prompt for i in items],
            [i.completion for i in items],
            [i.columns for i in items],
            step=self.last_step if step is None else step,
        )
        await self.log.write(samples)  # on disk before the answer leaves; then in the window (_written)
        try:
            self.reward.finish(samples)  # failure accounting only (on_scored is None here)
            self.judge_down = None
        except JudgeUnavailableError as exc:
            # The samples are logged; the engine decides what to do (TRL's client stops the run).
            self.judge_down = str(exc)
            log.error("judge unavailable: %s", exc)
        c = self.counters
        c.samples += len(samples)
        c.failed += sum(s.reward is None for s in samples)
        c.gated += sum(s.gate is not None for s in samples)
        return samples

    def _written(self, samples: list[ScoredSample]) -> None:
        """A batch is on disk: into the window, counted, and a meta step when ``meta_every_samples`` is due."""
        self.controller.record(samples, log_samples=False)
        self.recorded += len(samples)
        self.since_trigger += len(samples)
        every = self.settings.meta_every_samples
        if every and self.since_trigger >= every:
            self.start_meta_step(self.last_step)

    def count_fallbacks(self, engine: str, samples: list[ScoredSample]) -> int:
        """Count (and log) the samples that get ``fallback_reward`` instead of a judge score."""
        n = sum(s.reward is None for s in samples)
        if n:
            self.counters.fallbacks[engine] = self.counters.fallbacks.get(engine, 0) + n
            last = next(s.error for s in reversed(samples) if s.reward is None)
            log.warning(
                "%d of %d %s samples could not be scored and get the fallback reward %g (total %d; last error: %s)",
                n,
                len(samples),
                engine,
                self.settings.fallback_reward,
                self.counters.fallbacks[engine],
                last,
            )
        return n

    # ----- meta steps --------------------------------------------------------------------------------
    def step(self, step: int | None, *, run_meta: bool, consumed_versions: dict[str, list[int]]) -> dict[str, Any]:
        """A trainer step boundary: log reward staleness, and start a meta step every ``mpo.interval`` steps."""
        if step is not None:
            self.last_step = max(self.last_step, step)
        self.steps_since_meta += 1
        current = self.controller.rubrics.versions()
        stale = []
        for lineage, used in consumed_versions.items():
            now = current.get(lineage)
            if now is None:
                continue
            stale += [now - v for v in used]
        if stale:
            self.counters.staleness += stale
            worst = max(stale)
            (log.warning if worst > 1 else log.info)(
                "step %s consumed %d rewards: %d scored under an older rubric version (up to %d versions behind)",
                step,
                len(stale),
                sum(s > 0 for s in stale),
                worst,
            )
        started = False
        if run_meta or (self.controller.enabled and self.steps_since_meta >= self.controller.config.every):
            started = self.start_meta_step(self.last_step)
        return {"meta_started": started, "staleness": stale}

    def start_meta_step(self, step: int) -> bool:
        """Start a meta step on the window if none is running; its result is published when it ends."""
        ctl = self.controller
        if not ctl.enabled or ctl.running:
            return False
        end = self.recorded
        job = ctl.start_meta_step(step)
        self.since_trigger = 0
        self.steps_since_meta = 0
        if job is None:
            return False
        if self.baseline_end is None:
            self.baseline_end = end
        self._job_end = end
        self._job_task = asyncio.get_running_loop().create_task(self._finish_job(job))
        return True

    async def _finish_job(self, job: Any) -> None:
        await asyncio.wrap_future(job)
        self.publish()

    def publish(self) -> None:
        """Apply a finished meta step and record that its samples are used (so a restart will not reuse them)."""
        ctl = self.controller
        if ctl.running:
            return
        before = ctl.rubrics.versions()
        ctl.publish_finished()
        self.consumed = max(self.consumed, self._job_end)
        self.save_state()
        after = ctl.rubrics.versions()
        if after != before:
            log.info("rubric versions now %s", after)

    async def wait_meta(self, timeout: float | None = None) -> bool:
        """Wait for a running meta step to end and be published; False when ``timeout`` ran out first."""
        task = self._job_task
        if task is None or task.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return False
        return True

    async def shutdown(self) -> None:
        """Graceful stop: let a running meta step finish (up to ``shutdown_wait_s``), then save everything."""
        finished = await self.wait_meta(self.settings.shutdown_wait_s)
        if not finished:
            log.warning(
                "a meta step was still running after %.0fs: its samples stay in the window for the next start",
                self.settings.shutdown_wait_s,
            )
        self.save_state()
        self.controller.save_state(self.run_dir / STATE_DIR)
        executor = getattr(self.controller, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        log.info("saved window and rubric versions %s in %s", self.controller.rubrics.versions(), self.run_dir)

    # ----- views -------------------------------------------------------------------------------------
    def rubric_view(self, lineage: str | None) -> dict[str, Any]:
        """The versions in force; with ``lineage``, that lineage's rubric in full."""
        rubrics = self.controller.rubrics
        versions = rubrics.versions()
        out: dict[str, Any] = {"versions": versions}
        if lineage is not None:
            if lineage not in versions:
                raise KeyError(lineage)
            current = rubrics.get(lineage)
            out |= {
                "lineage": lineage,
                "version": current.version,
                "hash": current.hash,
                "rubric": current.rubric.to_dict(),
                "markdown": current.rubric.to_markdown(),
            }
        return out

    def health(self) -> dict[str, Any]:
        ctl = self.controller
        return {
            "status": "judge_unavailable" if self.judge_down else "ok",
            "judge_unavailable": self.judge_down,
            "versions": ctl.rubrics.versions(),
            "samples": self.recorded,
            "window": ctl.pending_samples,
            "meta_running": ctl.running,
            "meta_steps": ctl.meta_steps,
            "uptime_s": round(time.time() - self.started, 1),
        }


def prepare_service_dir(cfg: ServeConfig) -> Path:
    """Create (or reopen) the run directory; refuse one holding a training run, or one that cannot be written."""
    from metapo.files import InputFileError, check_output_dir

    run_dir = cfg.run_dir
    try:
        check_output_dir(run_dir, "output_dir")
    except InputFileError as exc:
        raise ServiceRunDirError(str(exc)) from None
    state = run_dir / STATE_DIR
    if (run_dir / "config.yaml").exists() and not state.is_dir():
        raise ServiceRunDirError(
            f"{run_dir} holds a training run (config.yaml without service/); choose another output_dir"
        )
    if not state.is_dir():
        state.mkdir()
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg.run), sort_keys=False))
        atomic_write_text(state / "service.yaml", yaml.safe_dump(to_dict(cfg.service), sort_keys=False))
    return run_dir
