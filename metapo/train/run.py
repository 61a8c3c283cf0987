"""Build and run a Meta Policy Optimization training run on TRL's GRPOTrainer or RLOOTrainer."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metapo.config import to_dict
from metapo.files import NewEntries, atomic_write_text, check_model_spec, read_jsonl, read_user_text
from metapo.judges import build_judge
from metapo.meta.acceptance import AcceptanceGate, gate_line, read_exemplars, read_pairs
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.meta_judge import MetaJudge
from metapo.reward.rubric_reward import JudgeUnavailableError, RubricReward, any_process
from metapo.reward.rules.config import build_rule, training_defaults
from metapo.rubric.active import ActiveRubrics
from metapo.rubric.diff import diff
from metapo.rubric.model import Rubric, RubricError
from metapo.rubric.store import RubricStore
from metapo.train.checkpoints import last_complete_checkpoint
from metapo.train.config import RunConfig, check_training_args

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """The run directory cannot be used as asked (it would lose or mix earlier results)."""


@dataclass
class BuiltRun:
    """The assembled pieces of a run (exposed so tests and notebooks can drive them)."""

    trainer: Any
    controller: MetaPolicyOptimizationCallback
    reward: RubricReward
    store: RubricStore
    run_dir: Path
    task: Any


def resolve_initial_rubric(spec: str | None, task: Any) -> Rubric:
    """A rubric file path, a task baseline name, or the task's own starting rubric."""
    if not spec:
        return task.initial_rubric()
    baselines = task.baseline_rubrics()
    if spec in baselines:
        return baselines[spec]
    path = Path(spec)
    if not path.exists():
        raise RubricError(
            f"initial_rubric={spec!r} is neither a file nor a baseline of task {task.name} "
            f"({', '.join(sorted(baselines))})"
        )
    return Rubric.parse(read_user_text(path, "initial_rubric file")).validate()


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Create the run directory, refusing to reuse one that holds another run unless resuming."""
    run_dir = Path(cfg.output_dir)
    config_path = run_dir / "config.yaml"
    if not _is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    if config_path.exists() and not resume:
        raise RunDirError(
            f"{run_dir} already holds a run. Continue it with --resume, or choose another output_dir; "
            "nothing there is overwritten."
        )
    if resume and not config_path.exists():
        raise RunDirError(f"--resume: {run_dir} holds no run to resume (no config.yaml)")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file; choose a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(
            f"output_dir {run_dir} cannot be created ({exc.strerror or exc}); choose a writable location"
        ) from None
    if not resume:
        atomic_write_text(config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run_dir


def _trainer_classes(algorithm: str) -> tuple[type, type]:
    if algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOConfig, RLOOTrainer
    from trl import GRPOConfig, GRPOTrainer

    return GRPOConfig, GRPOTrainer


def _eos_ids(tokenizer: Any, model_path: str) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.update([gen] if isinstance(gen, int) else gen or [])
    except (OSError, ValueError):
        pass
    return sorted(ids)


def _rule_trainer() -> type:
    from metapo.reward.rules.trainer import RuleGRPOTrainer

    return RuleGRPOTrainer


def _answer_check(task: Any) -> Any:
    """The task's answer checker for the rules' ``answer`` reward, or ``None`` for tasks without gold answers."""
    if task.name != "math":
        return None
    from functools import partial

    from metapo.tasks.math_answers import check_response

    return partial(check_response, which=task.answer_extraction)


def build_run(cfg: RunConfig, run_dir: Path) -> BuiltRun:
    """Assemble task data, judges, rubric store, reward, callback and the TRL trainer."""
    import torch
    from transformers import AutoTokenizer

    from metapo.models.embedded import resolve_policy
    from metapo.tasks import get_task

    task = get_task(cfg.task, **cfg.task_options)
    gate_files = read_gate_files(cfg) if cfg.mpo.interval != 0 else ([], [])
    apply_task_defaults(cfg, task)
    dataset = task.load(cfg.dataset, split=cfg.split, limit=cfg.limit, seed=cfg.seed)
    if task.last_load_stats is not None:
        log.info(task.last_load_stats.summary())
    dataset = dataset.map(lambda row: {"lineage": task.lineage_key(row)})

    model_path = str(resolve_policy(check_model_spec(cfg.model, "model")))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    store = RubricStore(run_dir / "rubrics", writable=_is_main_process())
    active = ActiveRubrics(store, resolve_initial_rubric(cfg.initial_rubric, task))
    for lineage in sorted(set(dataset["lineage"])):
        active.get(lineage)
    controller, reward = build_mpo(
        cfg, task, active, run_dir, gate_files, eos_token_ids=_eos_ids(tokenizer, model_path)
    )

    config_cls, trainer_cls = _trainer_classes(cfg.algorithm)
    cpu = not torch.cuda.is_available()
    args: dict[str, Any] = {
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": max(cfg.mpo.every, 10),
        "max_completion_length": task.max_completion_tokens,
        "use_cpu": cpu,
        "bf16": False,
        "model_init_kwargs": {"dtype": "float32"} if cpu else {},
    }
    if cfg.rules is not None:
        args.update(training_defaults(cfg.rules))
    args.update(cfg.training)
    args.update(output_dir=str(run_dir / "checkpoints"), seed=cfg.seed)
    trainer_args = config_cls(**args)
    reward_funcs: list[Any] = [reward]
    rule_kwargs: dict[str, Any] = {}
    if cfg.rules is not None:
        reward_funcs[0], rule_kwargs = build_rule(
            cfg.rules,
            rubric=reward,
            check=_answer_check(task),
            num_generations=trainer_args.num_generations,
            eos_token_ids=_eos_ids(tokenizer, model_path),
        )
        trainer_cls = _rule_trainer()
    peft_config = None
    if cfg.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    if cfg.reward_model:
        from metapo.prefmodels.scorer import load_reward_function

        reward_funcs.append(load_reward_function(cfg.reward_model))
        log.warning(
            "reward_model is set: TRL sums the reward functions and counts a rubric reward the judge could not "
            "give as 0, so such a sample gets the reward model's score alone"
        )
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=reward_funcs,
        args=trainer_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[controller],
        peft_config=peft_config,
        **rule_kwargs,
    )
    return BuiltRun(trainer, controller, reward, store, run_dir, task)



def apply_task_defaults(cfg: RunConfig, task: Any) -> None:
    """Fill in what ``cfg`` leaves to its task: meta interval and mode, and the text sizes judges see.

    The run's seed also seeds meta-step selection unless ``mpo.seed`` is set.
    """
    if cfg.mpo.interval is None:
        cfg.mpo.interval = task.default_meta_interval
    if cfg.mpo.mode is None:
        cfg.mpo.mode = task.meta_mode
    if cfg.mpo.seed is None:
        cfg.mpo.seed = cfg.seed
    if cfg.mpo.max_sample_chars is None:
        cfg.mpo.max_sample_chars = task.meta_chars
    if cfg.reward.max_judge_chars is None:
        cfg.reward.max_judge_chars = task.judge_chars


def build_mpo(
    cfg: RunConfig,
    task: Any,
    active: ActiveRubrics,
    run_dir: Path,
    gate_files: tuple[list[dict[str, str]], list[dict[str, str]]] = ([], []),
    **reward_options: Any,
) -> tuple[MetaPolicyOptimizationCallback, RubricReward]:
    """The evolving-rubric reward of a run: judges, meta judge, controller, reward and acceptance gate.

    One assembly for ``metapo train`` and ``metapo serve-reward``. Call :func:`apply_task_defaults` first.

    Args:
        cfg: The run's settings (``judge``, ``meta_judge``, ``reward``, ``mpo``).
        task: The task, for its personas, gates, scorer and reference column.
        active: The rubric versions in force, per lineage.
        run_dir: Where meta logs go.
        gate_files: The acceptance gate's user exemplars and pairs (see :func:`read_gate_files`).
        **reward_options: More :class:`RubricReward` arguments (e.g. the policy's ``eos_token_ids``).

    Returns:
        The callback that runs meta steps, and the reward that records every scored sample into its window.
    """
    from metapo.meta.detectors import detect, select_flagged_first

    judge = build_judge(cfg.judge)
    meta_client = build_judge(cfg.meta_judge) if cfg.meta_judge is not None else judge

    def detector_selector(window: Any, k: int, rng: Any) -> list[Any]:
        return select_flagged_first(window, detect(window, baseline=controller._baseline), k, rng)

    meta_judge = None
    if cfg.mpo.every > 0:
        meta_judge = MetaJudge(
            meta_client,
            cfg.mpo,
            persona=task.meta_persona,
            task_description=task.instruction,
            detector_selector=detector_selector,
            token_counter=_token_counter(judge),
            score_bound=cfg.reward.item_score_bound,
            judge_chars=cfg.reward.judge_chars,
            reference_column=task.meta_reference_column,
        )
    judges = {"judge/": judge} | ({"meta_judge/": meta_client} if meta_client is not judge else {})
    controller = MetaPolicyOptimizationCallback(
        meta_judge, active, cfg.mpo, run_dir, detector=detect, judges=judges
    )
    reward_cfg = cfg.reward
    reward_cfg.judge_persona = task.judge_persona or reward_cfg.judge_persona
    reward_cfg.input_label = task.judge_input_label or reward_cfg.input_label
    scorer_factory = getattr(task, "make_scorer", None)
    reward = RubricReward(
        judge,
        active,
        reward_cfg,
        gates=task.gates(),
        on_scored=controller.record,
        scorer=scorer_factory(cfg.seed) if scorer_factory else None,
        extra_metrics=controller.metrics,
        **reward_options,
    )
    if meta_judge is not None and cfg.mpo.acceptance.enabled:
        controller.acceptance = AcceptanceGate(
            reward,
            cfg.mpo.acceptance,
            reference_column=task.meta_reference_column,
            user_exemplars=gate_files[0],
            pairs=gate_files[1],
        )
    return controller, reward


def read_gate_files(cfg: RunConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The acceptance gate's user exemplars and pairs, read before anything heavy loads (bad files fail fast)."""
    gate = cfg.mpo.acceptance
    if not gate.enabled:
        return [], []
    return (read_exemplars(gate.exemplars) if gate.exemplars else [], read_pairs(gate.pairs) if gate.pairs else [])


def _token_counter(judge: Any) -> Any:
    """The reward judge's exact token counter, degrading to ``None`` (an estimate) when it cannot count."""

    def count(text: str) -> int | None:
        try:
            return judge.count_tokens(text)
        except Exception as exc:  # a missing tokenizer must not fail a meta step
            log.warning("cannot count the judge's tokens (%s); estimating 3 characters per token", exc)
            return None

    return count


def train(cfg: RunConfig, *, resume: bool = False) -> BuiltRun:
    """Run training to the end (or resume the last checkpoint) and save the final policy beside the rubrics.

    A new run that fails before its first optimizer step (bad data, a model that does not load, a judge that
    is down from the start, Ctrl-C) removes everything it created, so the corrected command simply runs.
    """
    cfg.training = check_training_args(cfg.training, _trainer_classes(cfg.algorithm)[0])
    created = NewEntries(cfg.output_dir) if not resume and _is_main_process() else None
    log_handler = None
    built = None
    try:
        run_dir = prepare_run_dir(cfg, resume)
        log_handler = _attach_file_log(run_dir)
        built = build_run(cfg, run_dir)
        checkpoint = None
        if resume:
            checkpoint = last_complete_checkpoint(run_dir / "checkpoints", move_aside=_is_main_process())
            if checkpoint is None:
                log.warning(
                    "no checkpoint in %s: starting from step 0 with the saved rubric history",
                    run_dir / "checkpoints",
                )
            else:
                built.controller.load_state(checkpoint)
                log.info("resuming from %s", checkpoint)
        try:
            built.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except JudgeUnavailableError:
            _checkpoint_last_step(built)
            raise
    except BaseException:
        if created is not None and (built is None or built.trainer.state.global_step == 0):
            log.info("the run failed before its first step: removing what it created in %s", cfg.output_dir)
            if log_handler is not None:
                logging.getLogger("metapo").removeHandler(log_handler)
                log_handler.close()
            created.remove()
        raise
    built.trainer.save_model(str(run_dir / "final"))
    built.controller.save_checkpoint_state(run_dir / "final")
    return built


def _checkpoint_last_step(built: BuiltRun) -> None:
    """Checkpoint the last completed step after the judge went down, so ``--resume`` loses no steps.

    The judge fails while a step's completions are being scored, before that step's update, so the
    weights and optimizer are exactly those of ``global_step``.
    """
    trainer = built.trainer
    step = trainer.state.global_step
    ckpt = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    # Every process must take the same branch: saving is collective.
    if step == 0 or any_process(ckpt.exists()):
        return
    trainer._save_checkpoint(trainer.model, trial=None)
    built.controller.save_checkpoint_state(ckpt)
    log.error("the judge is unavailable: saved %s; resume with --resume once the judge is back", ckpt)


def _is_main_process() -> bool:
    # Launchers (torchrun, accelerate) set RANK before any process group exists.
    return int(os.environ.get("RANK", "0")) == 0


def _attach_file_log(run_dir: Path) -> logging.Handler | None:
    """Log to ``train.log`` in the run directory; returns the handler when this call added it."""
    root = logging.getLogger("metapo")
    path = str((run_dir / "train.log").resolve())
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in root.handlers):
        return None
    # backslashreplace: a lone surrogate in logged text must not turn into a logging error.
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return handler


def summarize(run_dir: Path) -> str:
    """Rubric history per lineage, the diff of the last change, and the reward trend, as text."""
    run_dir = Path(run_dir)
    store = RubricStore(run_dir / "rubrics")
    lines = [f"run directory: {run_dir.resolve()}"]
    for lineage in store.lineages():
        history = store.history(lineage)
        lines.append(f"rubric lineage {lineage!r}: {len(history)} version(s)")
        for v in history:
            lines.append(
                f"  v{v.version} step {v.step:>4} {v.creator:<10} {len(v.rubric.items)} items, "
                f"max {v.rubric.max_points:g} points"
            )
        if len(history) > 1:
            lines.append(f"  last change (v{history[-2].version} -> v{history[-1].version}):")
            lines += [
                "    " + ln for ln in diff(history[-2].rubric, history[-1].rubric).render().splitlines()
            ]
    samples = read_jsonl(run_dir / "samples.jsonl")
    rewards: dict[int, list[float]] = {}
    for sample in samples:
        if sample.get("reward") is not None:
            rewards.setdefault(int(sample.get("step", 0)), []).append(float(sample["reward"]))
    if rewards:
        steps = sorted(rewards)
        trend = ", ".join(f"{s}:{statistics.fmean(rewards[s]):.3f}" for s in steps)
        lines.append(f"mean reward by step (step:reward): {trend}")
    meta = sorted((run_dir / "meta").glob("*.json")) if (run_dir / "meta").exists() else []
    lines.append(f"meta steps logged: {len(meta)}")
    records = [json.loads(p.read_text()) for p in meta]
    for record in sorted(records, key=lambda r: (int(r.get("step", 0)), str(r.get("lineage", "")))):
        lines.append("  " + gate_line(record))
    meta_steps = sorted({int(r.get("step", 0)) for r in records})
    first, last = window_stats(samples, meta_steps)
    if first is not None and last is not None:
        lines.append(
            "first window vs last window (the steps before the first meta step vs as many steps at the end):"
        )
        for key, label in WINDOW_STATS:
            lines.append(f"  {label:<34} {_fmt(first[key])} -> {_fmt(last[key])}")
    return "\n".join(lines)


#: What :func:`window_stats` reports, with labels.
WINDOW_STATS = (
    ("samples", "samples"),
    ("mean_words", "mean completion words"),
    ("eos_truncated", "share cut at the token limit"),
    ("mean_judge_score", "mean judge score (normalised)"),
    ("gated", "share decided by a rule gate"),
)


def window_stats(
    samples: list[dict[str, Any]], meta_steps: list[int]
) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """Statistics of the first window (the steps before the first meta step) and of as many steps at the end.

    The last window has as many steps as the first, so that a meta step late in training does not leave a
    window of one step (one prompt's samples) to compare with. Without meta steps the first and last quarter
    of the steps are compared. The judge score is the judge's
    total mapped to [0, 1] (reward minus rule penalties), over samples the judge scored.
    """
    if not samples:
        return None, None
    steps = sorted({int(s.get("step", 0)) for s in samples})
    first_steps = [s for s in steps if s < meta_steps[0]] if meta_steps else []
    size = len(first_steps) if first_steps else max(1, len(steps) // 4)
    first_end = steps[size - 1] + 1
    last_start = max(steps[-size], first_end) if len(steps) > size else first_end

    def stats(rows: list[dict[str, Any]]) -> dict[str, float]:
        judged = [r for r in rows if r.get("raw_score") is not None and r.get("reward") is not None]
        return {
            "samples": float(len(rows)),
            "mean_words": statistics.fmean(len(str(r.get("completion", "")).split()) for r in rows)
            if rows
            else 0.0,
            "eos_truncated": _share(
                rows,
                lambda r: "missing_eos" in (r.get("adjustments") or {}) or r.get("gate") == "missing_eos",
            ),
            "mean_judge_score": statistics.fmean(
                float(r["reward"]) - sum((r.get("adjustments") or {}).values()) for r in judged
            )
            if judged
            else float("nan"),
            "gated": _share(rows, lambda r: r.get("gate") is not None),
        }

    first = [s for s in samples if int(s.get("step", 0)) < first_end]
    last = [s for s in samples if int(s.get("step", 0)) >= last_start]
    return (stats(first) if first else None), (stats(last) if last else None)


def _share(rows: list[dict[str, Any]], predicate: Any) -> float:
    return sum(bool(predicate(r)) for r in rows) / len(rows) if rows else 0.0


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"  # no sample in the window was scored by the judge (answer check or gate only)
    return f"{value:.0f}" if value == int(value) and value > 1 else f"{value:.3f}"
