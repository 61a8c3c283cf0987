"""The Meta Policy Optimization training callback: window, background meta steps, version swaps, checkpoints.

Works with any ``transformers.Trainer`` subclass whose reward comes from :class:`~metapo.reward.RubricReward`
(TRL's GRPOTrainer and RLOOTrainer). Training never waits for the meta-reward model unless
``MetaConfig.blocking`` is set: a meta step runs in a worker thread on the window gathered since the last one,
and its rubric takes effect at the first step boundary after it passes validation.

``MetaConfig.interval`` counts rollout batches (generation rounds: calls of the reward function), not optimizer
steps, so ``num_iterations`` and ``steps_per_generation`` do not change how often the rubric is revised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from metapo.files import append_jsonl, atomic_write_json, read_jsonl
from metapo.judges.client import background_requests
from metapo.meta.item_signal import ItemSignal, item_signals
from metapo.meta.meta_judge import MetaConfig, MetaJudge, MetaOutcome
from metapo.reward.records import ScoredSample
from metapo.rubric.active import ActiveRubrics
from metapo.rubric.diff import diff
from metapo.rubric.store import RubricVersion, lineage_dirname

log = logging.getLogger(__name__)

STATE_FILE = "mpo_state.json"


def _dist() -> Any | None:
    """torch.distributed when a multi-process group is running, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it, but keep the callback import-light
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class MetaPolicyOptimizationCallback(TrainerCallback):
    """Owns the window of scored samples and runs meta steps every ``config.interval`` optimizer steps.

    Args:
        meta_judge: The meta-reward model.
        rubrics: The versions in force (shared with the reward function).
        config: Meta-step settings.
        run_dir: Where samples, meta logs and metrics are written (``None``: nothing written).
        detector: Optional ``callable(window, baseline) -> report`` whose ``signals`` are logged per window.
        judges: Judge clients whose running counters are logged, by metric prefix
            (e.g. ``{"judge/": reward_judge, "meta_judge/": meta_judge}``).
        acceptance: The :class:`~metapo.meta.acceptance.AcceptanceGate` a changed rubric must pass, in the
            background meta step, before it is published (``None``: every valid rubric is adopted).
    """

    def __init__(
        self,
        meta_judge: MetaJudge | None,
        rubrics: ActiveRubrics,
        config: MetaConfig,
        run_dir: Path | None = None,
        detector: Any | None = None,
        judges: dict[str, Any] | None = None,
        acceptance: Any | None = None,
    ) -> None:
        self.meta_judge = meta_judge
        self.acceptance = acceptance
        self.rubrics = rubrics
        self.config = config
        self.run_dir = Path(run_dir) if run_dir else None
        self.detector = detector
        self.judges = judges or {}
        self._lock = threading.Lock()
        self.window: list[ScoredSample] = []
        self._in_flight: list[ScoredSample] = []
        self._baseline: list[ScoredSample] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpo-meta")
        self._job: Future | None = None
        self._job_step = 0
        self.meta_steps = 0
        self.accepted = 0
        self.rejected = 0
        self.gate_rejected = 0
        self.unchanged = 0
        self.steps_during_meta = 0
        self.rollouts = 0
        self._rollouts_at_trigger = 0
        self.last_signals: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self._broadcast: dict[str, int] = {}
        self._remote_running = False
        rank = int(os.environ.get("RANK", "0"))
        # Each process logs its own samples, so no two processes append to one file.
        self._samples_file = "samples.jsonl" if rank == 0 else f"samples.rank{rank}.jsonl"

    @property
    def enabled(self) -> bool:
        """False for fixed-rubric baselines: then nothing is collected (no window memory growth)."""
        return self.meta_judge is not None and self.config.every > 0

    # ----- fed by the reward function --------------------------------------------------------------
    def record(self, samples: list[ScoredSample], *, log_samples: bool = True) -> None:
        """Add one rollout batch of scored samples to the window and the run log (the reward calls this once per
        generation round). ``log_samples=False``: the caller has already logged them (the reward service)."""
        if self.run_dir is not None and log_samples:
            append_jsonl(self.run_dir / self._samples_file, (s.to_dict() for s in samples))
        with self._lock:
            self.rollouts += 1
            if self.enabled:
                self.window.extend(samples)

    def metrics(self) -> dict[str, float]:
        """Values the reward logs each batch through the trainer's own logging (``report_to``)."""
        versions = self.rubrics.versions()
        current = self.rubrics.get("default") if "default" in versions else None
        out = {
            "mpo/meta_steps": float(self.meta_steps),
            "mpo/meta_accepted": float(self.accepted),
            "mpo/meta_rejected": float(self.rejected),
            "mpo/meta_unchanged": float(self.unchanged),
            "mpo/meta_running": float((self._job is not None and not self._job.done()) or self._remote_running),
            "mpo/lineages": float(len(versions)),
            "mpo/rollouts": float(self.rollouts),
            "mpo/gate_rejected": float(self.gate_rejected),
        }
        if self.acceptance is not None:
            out["mpo/gate_judge_calls"] = float(self.acceptance.judge_calls)
        if current is not None:
            out["mpo/rubric_version"] = float(current.version)
            out["mpo/rubric_items"] = float(len(current.rubric.items))
            out["mpo/rubric_max_points"] = current.rubric.max_points
        else:
            out["mpo/rubric_version"] = float(sum(versions.values()) / max(len(versions), 1))
        out.update(self.last_signals)
        for prefix, client in self.judges.items():
            out.update(client.stats.as_metrics(prefix))
        return out

    # ----- trainer hooks ---------------------------------------------------------------------------
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        step = state.global_step
        if self._job is not None and not self._job.done():
            self.steps_during_meta += 1
        self._publish_finished()
        with self._lock:
            due = self.rollouts - self._rollouts_at_trigger >= self.config.every
            if due:
                self._rollouts_at_trigger = self.rollouts
        if due:
            # No update follows the last step, so a background meta step there would only make the run
            # wait for a rubric nothing uses; its window goes to the saved state instead.
            last = step >= (getattr(state, "max_steps", 0) or step + 1) and not self.config.blocking
            self._trigger(step, start_job=not last)
            if self.config.blocking:
                self.wait()
        self._sync_versions()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.run_dir is not None and logs and state.is_world_process_zero:
            record = {"step": state.global_step, **logs, **self.metrics()}
            append_jsonl(self.run_dir / "metrics.jsonl", [record])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.save_checkpoint_state(ckpt)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.enabled:
            self.wait()
            self._sync_versions()
        self._executor.shutdown(wait=True)

    # ----- driven from outside a trainer (the reward service) -------------------------------------
    @property
    def running(self) -> bool:
        """Whether a meta step is in flight."""
        return self._job is not None and not self._job.done()

    @property
    def pending_samples(self) -> int:
        """Samples waiting for a meta step or held by the running one."""
        with self._lock:
            return len(self.window) + len(self._in_flight)

    def start_meta_step(self, step: int) -> Future | None:
        """Publish a finished meta step, then start one on the window now (no trainer hooks needed).

        Returns:
            The running job (wait on it, then call :meth:`publish_finished`), or ``None`` when none started
            (one is still running, the window is empty, or meta steps are off).
        """
        if not self.enabled:
            return None
        self._publish_finished()
        before = self._job
        self._trigger(step)
        return self._job if self._job is not before else None

    def publish_finished(self) -> None:
        """Apply the result of a finished meta step: new versions are stored and put in force at once."""
        self._publish_finished()

    def restore_window(self, window: list[ScoredSample], baseline: list[ScoredSample] | None = None) -> None:
        """Put back the samples no finished meta step has used yet (and the detector baseline) after a restart."""
        with self._lock:
            self.window = list(window) + self.window
        if baseline is not None:
            self._baseline = list(baseline)

    # ----- meta steps ------------------------------------------------------------------------------
    def _trigger(self, step: int, start_job: bool = True) -> None:
        dist = _dist()
        with self._lock:
            local, self.window = self.window, []
        if dist is not None:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, [s.to_dict() for s in local])
            local = [ScoredSample.from_dict(d) for rank_samples in gathered for d in rank_samples]
            if dist.get_rank() != 0:
                return
        if self._baseline is None:
            self._baseline = list(local)
        signals = self._item_signals(local)
        if self.detector is not None and local:
            report = self.detector(local, baseline=self._baseline)
            self.last_signals = report.metrics()
            self.events.append({"step": step, "detectors": report.signals, "fired": report.fired})
        self.last_signals = {
            **{k: v for k, v in self.last_signals.items() if not k.startswith("rubric/item_")},
            **_signal_metrics(signals),
        }
        running = self._job is not None and not self._job.done()
        if running or not start_job:
            # At most one job in flight: this window joins the next one (or the saved state).
            with self._lock:
                self.window = local + self.window
            log.info(
                "step %d: %s; window of %d samples kept for the next meta step",
                step,
                "meta step still running" if running else "last step, no meta step started",
                len(local),
            )
            return
        if not local:
            log.info("step %d: empty window, no meta step", step)
            return
        self._in_flight = local
        self._job_step = step
        self.meta_steps += 1
        log.info("step %d: meta step %d started on %d samples", step, self.meta_steps, len(local))
        self._job = self._executor.submit(self._run_job, step, local, signals)

    def _scored_under(self, lineage: str, samples: list[ScoredSample]) -> dict[int, Any]:
        """The rubric of every version the samples were scored under (each is shown against its own)."""
        out = {}
        for number in sorted({s.rubric_version for s in samples}):
            try:
                out[number] = self.rubrics.store.get(lineage, number).rubric
            except KeyError:
                log.warning("rubric %s v%d is not in the store; its samples are left out", lineage, number)
        return out

    def _item_signals(self, window: list[ScoredSample]) -> dict[str, list[ItemSignal]]:
        """Per lineage, the signal of each item of the version in force over the window's samples scored under it."""
        lineages = sorted({s.lineage for s in window})
        out = {}
        for lineage in lineages:
            current = self.rubrics.get(lineage)
            samples = [s for s in window if s.lineage == lineage]
            out[lineage] = item_signals(current.rubric, current.version, samples, self.config.saturated_std)
            saturated = [s.title for s in out[lineage] if s.saturated]
            if saturated:
                log.info("rubric %s v%d: saturated items (no spread within a prompt): %s", lineage, current.version, saturated)
        return out

    def _run_job(
        self, step: int, window: list[ScoredSample], signals: dict[str, list[ItemSignal]] | None = None
    ) -> list[MetaOutcome]:
        assert self.meta_judge is not None
        by_lineage: dict[str, list[ScoredSample]] = defaultdict(list)
        for sample in window:
            by_lineage[sample.lineage].append(sample)
        signals = signals or {}

        async def one(lineage: str, samples: list[ScoredSample]) -> MetaOutcome:
            assert self.meta_judge is not None
            rng = random.Random(f"{self.config.seed or 0}:{step}:{lineage}")
            current = self.rubrics.get(lineage)
            outcome = await self.meta_judge.run(
                lineage,
                current.rubric,
                samples,
                rng,
                version=current.version,
                scored_under=self._scored_under(lineage, samples),
                item_signal=signals.get(lineage, ()),
            )
            if (
                self.acceptance is not None
                and self.config.acceptance.enabled
                and outcome.accepted
                and outcome.rubric is not None
                and outcome.rubric != current.rubric
            ):
                with background_requests():  # the gate's judge calls are meta-step work: rewards go first
                    await self._gate(outcome, current.rubric, samples)
            return outcome

        async def run_all() -> list[MetaOutcome]:
            return list(await asyncio.gather(*(one(k, v) for k, v in sorted(by_lineage.items()))))

        started = time.perf_counter()
        before = self.meta_judge.judge.stats
        outcomes = asyncio.run(run_all())
        if outcomes:
            # Judge usage is per job; recorded once so summing meta logs counts it once.
            outcomes[0].usage = dataclasses.asdict(self.meta_judge.judge.stats.since(before))
        log.info("meta step at step %d finished in %.1fs", step, time.perf_counter() - started)
        return outcomes

    async def _gate(self, outcome: MetaOutcome, current: Any, samples: list[ScoredSample]) -> None:
        """Run the acceptance gate on a changed, valid candidate; a rejection (or a crash of the gate) keeps the
        version in force."""
        assert self.acceptance is not None and outcome.rubric is not None
        chosen = set(outcome.selected)
        analysed = list(dict.fromkeys(s.prompt for s in samples if s.sample_id in chosen))
        try:
            result = await self.acceptance.decide(outcome.lineage, current, outcome.rubric, samples, analysed)
        except Exception as exc:  # a bug in the gate must not end training, nor let an untested rubric through
            log.exception("acceptance gate crashed; keeping the current rubric")
            outcome.accepted, outcome.reason = False, f"acceptance gate crashed: {type(exc).__name__}: {exc}"
            return
        outcome.acceptance = result.to_dict()
        if result.accepted:
            outcome.reason = f"passed validation and the acceptance gate ({result.reason})"
        else:
            outcome.accepted, outcome.reason = False, f"rejected by the acceptance gate: {result.reason}"

    def _publish_finished(self) -> None:
        job = self._job
        if job is None or not job.done():
            return
        self._job = None
        in_flight, self._in_flight = self._in_flight, []
        try:
            outcomes = job.result()
        except Exception as exc:  # a bug in a stage must not end training; the rubric stays
            log.exception("meta step crashed; keeping the current rubric")
            self.rejected += 1
            for lineage in sorted({s.lineage for s in in_flight}):
                reason = f"crashed: {type(exc).__name__}: {exc}"
                self._log_outcome(
                    {"lineage": lineage, "accepted": False, "reason": reason, "window_size": len(in_flight)}
                )
            return
        for outcome in outcomes:
            try:
                self._apply(outcome)
            except Exception as exc:  # e.g. the store cannot write: reject this outcome, keep training
                log.exception("rubric %s: the meta step's rubric could not be stored", outcome.lineage)
                self.rejected += 1
                outcome.accepted, outcome.reason = False, f"not stored: {type(exc).__name__}: {exc}"
                self._log_outcome(outcome.to_dict() | {"parent_version": self.rubrics.get(outcome.lineage).version})

    def _apply(self, outcome: MetaOutcome) -> None:
        current = self.rubrics.get(outcome.lineage)
        record = outcome.to_dict() | {"parent_version": current.version}
        if outcome.rubric is not None:
            record["change"] = diff(current.rubric, outcome.rubric).render()
        if outcome.acceptance is not None and not outcome.acceptance.get("accepted"):
            self.gate_rejected += 1
        if outcome.accepted and outcome.rubric is not None and outcome.rubric == current.rubric:
            # Same items as the version in force: a new version would only add noise to the history.
            self.unchanged += 1
            record["accepted"], record["reason"] = (
                False,
                "unchanged: the meta step proposed the current rubric",
            )
            log.info(
                "rubric %s stays at v%d: the meta step proposed no change", outcome.lineage, current.version
            )
        elif outcome.accepted and outcome.rubric is not None:
            limits = self.meta_judge.limits if self.meta_judge is not None else None
            version = self.rubrics.store.add(
                outcome.rubric,
                lineage=outcome.lineage,
                parents=(current.version,),
                creator="meta-step",
                step=self._job_step,
                evidence=outcome.evidence(),
                limits=limits,
            )
            self.accepted += 1
            self.rubrics.publish(version)
            record["new_version"] = version.version
            log.info(
                "rubric %s: v%d -> v%d (%d items) after meta step at step %d",
                outcome.lineage,
                current.version,
                version.version,
                len(version.rubric.items),
                self._job_step,
            )
        else:
            self.rejected += 1
            log.warning("rubric %s stays at v%d: %s", outcome.lineage, current.version, outcome.reason)
        self._log_outcome(record)

    def _log_outcome(self, record: dict[str, Any]) -> None:
        """Keep the record in ``events`` and write it to ``meta/``, never over an earlier one (a resumed run that
        repeats a meta step writes ``...-attempt2.json``)."""
        record = {"step": self._job_step, **record}
        self.events.append(record)
        if self.run_dir is None:
            return
        stem = f"step-{self._job_step:06d}-{lineage_dirname(str(record.get('lineage', 'default')))}"
        for attempt in range(1, 1000):
            name = f"{stem}.json" if attempt == 1 else f"{stem}-attempt{attempt}.json"
            try:
                atomic_write_json(self.run_dir / "meta" / name, record, exclusive=True)
                return
            except FileExistsError:
                continue

    def wait(self, timeout: float | None = None) -> None:
        """Block until the in-flight meta step (if any) finishes, then publish its result."""
        if self._job is not None:
            with contextlib.suppress(Exception):  # reported by _publish_finished
                self._job.result(timeout=timeout)
            self._publish_finished()

    def _sync_versions(self) -> None:
        """Every rank adopts rank 0's versions (and its meta-step counters) at the same step boundary.

        Only versions that changed since the last broadcast travel in full; the rest is a few numbers.
        """
        dist = _dist()
        if dist is None:
            return
        payload: list[Any] = [None]
        if dist.get_rank() == 0:
            versions = self.rubrics.versions()
            changed = [self.rubrics.get(k).to_dict() for k, v in versions.items() if self._broadcast.get(k) != v]
            self._broadcast = versions
            running = self._job is not None and not self._job.done()
            counters = [self.meta_steps, self.accepted, self.rejected, self.unchanged, running]
            payload = [{"changed": changed, "counters": counters}]
        dist.broadcast_object_list(payload, src=0)
        if dist.get_rank() != 0:
            for data in payload[0]["changed"]:
                self.rubrics.publish(RubricVersion.from_dict(data))
            # Trackers average logged values over processes: every rank reports rank 0's counters.
            self.meta_steps, self.accepted, self.rejected, self.unchanged, self._remote_running = payload[0][
                "counters"
            ]

    # ----- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint_state(self, directory: Path) -> None:
        """Gather every process's window and write the state on the main process. Call on every process."""
        with self._lock:
            window = self._in_flight + self.window
        dist = _dist()
        if dist is not None:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, [s.to_dict() for s in window])
            if dist.get_rank() != 0:
                return
            window = [ScoredSample.from_dict(d) for rank_samples in gathered for d in rank_samples]
        if Path(directory).exists():
            self.save_state(directory, window)

    def save_state(self, directory: Path, window: list[ScoredSample] | None = None) -> None:
        """Write the versions in force, the window (by default this process's, including samples a running meta
        step holds), the detector baseline, and a copy of the rubric history, so a checkpoint directory is
        self-contained."""
        if window is None:
            with self._lock:
                window = self._in_flight + self.window
        store = self.rubrics.store
        history = {lineage: [v.to_dict() for v in store.history(lineage)] for lineage in store.lineages()}
        atomic_write_json(Path(directory) / "rubrics.json", history)
        atomic_write_json(
            Path(directory) / STATE_FILE,
            {
                "versions": self.rubrics.versions(),
                "window": [s.to_dict() for s in window],
                "baseline": [s.to_dict() for s in self._baseline] if self._baseline is not None else None,
                "meta_steps": self.meta_steps,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "unchanged": self.unchanged,
                "rollouts": self.rollouts,
                "rollouts_at_trigger": self._rollouts_at_trigger,
            },
        )

    def load_state(self, directory: Path) -> None:
        """Restore what :meth:`save_state` wrote (on ``resume_from_checkpoint``), on every process.

        The window goes back to the main process only: the others' samples were gathered into it when it was
        saved, and each sample must reach the next meta step once.
        """
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by a metapo run")
        data = json.loads(path.read_text())
        versions = {k: int(v) for k, v in data["versions"].items()}
        saved = Path(directory) / "rubrics.json"
        if saved.exists():
            # The checkpoint's own copy of the history, so a process without the run directory can resume too.
            history = json.loads(saved.read_text())
            for lineage, number in versions.items():
                record = next((r for r in history.get(lineage, []) if int(r["version"]) == number), None)
                if record is not None:
                    self.rubrics.publish(RubricVersion.from_dict(record))
        self.rubrics.restore({k: v for k, v in versions.items() if self.rubrics.versions().get(k) != v})
        main = int(os.environ.get("RANK", "0")) == 0
        with self._lock:
            self.window = [ScoredSample.from_dict(d) for d in data.get("window", [])] if main else []
        if data.get("baseline") is not None:
            self._baseline = [ScoredSample.from_dict(d) for d in data["baseline"]]
        self.meta_steps = int(data.get("meta_steps", 0))
        self.accepted = int(data.get("accepted", 0))
        self.rejected = int(data.get("rejected", 0))
        self.unchanged = int(data.get("unchanged", 0))
        self.rollouts = int(data.get("rollouts", 0))
        self._rollouts_at_trigger = int(data.get("rollouts_at_trigger", self.rollouts))
        log.info("restored rubric versions %s and a window of %d samples", versions, len(self.window))


def load_samples(run_dir: Path) -> list[ScoredSample]:
    """All scored samples of a run."""
    return [ScoredSample.from_dict(d) for d in read_jsonl(Path(run_dir) / "samples.jsonl")]


def _signal_metrics(signals: dict[str, list[ItemSignal]]) -> dict[str, float]:
    """``rubric/item_std/<item>`` (and ``rubric/item_corr/<item>``) per item; other lineages than ``default`` are
    prefixed with their key."""
    out = {}
    for lineage, items in signals.items():
        prefix = "" if lineage == "default" else f"{lineage}/"
        for s in items:
            if s.within_std is not None:
                out[f"rubric/item_std/{prefix}{s.item_id}"] = s.within_std
            if s.corr_total is not None:
                out[f"rubric/item_corr/{prefix}{s.item_id}"] = s.corr_total
    return out
