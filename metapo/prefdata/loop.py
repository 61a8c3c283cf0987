"""Rounds of self-improvement over the preference trainer: build data with the current policy, train, measure.

EVOLVE, UPO and MCTS-DPO share this loop. Round ``t`` starts from the policy round ``t−1`` saved, builds its
pairs with that policy, and trains a :class:`~metapo.train.preference.PreferenceTrainer` on them; the trainer's
reference is the round's starting policy, i.e. the previous iterate π⁽ᵗ⁻¹⁾, as iterative DPO and UPO prescribe.
Round 0 only measures the initial policy, so every later round can be compared with it.

The run directory holds one folder per round::

    round-0/metrics.json
    round-1/data.jsonl  round-1/model/  round-1/metrics.json
    summary.json

Each file is written atomically and in that order, and a round counts as done once its ``metrics.json`` exists.
A restarted run skips finished rounds, reuses a round's saved pairs or model, and continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapo.files import atomic_write_json
from metapo.prefdata.common import GenerationOptions, HFPolicy, read_rows, write_rows

logger = logging.getLogger(__name__)

BuildFn = Callable[[int, HFPolicy], list[dict[str, Any]]]
MeasureFn = Callable[[HFPolicy], dict[str, float]]

# Settings a loop's training rounds use unless the config says otherwise: no checkpoints inside a round (the
# round's model is the checkpoint), no tracker, no progress bars.
TRAIN_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "disable_tqdm": True,
    "logging_steps": 10,
}


class LoopError(RuntimeError):
    """A round cannot continue (e.g. it built no pairs); the message says why and what to change."""


@dataclass
class LoopConfig:
    """Settings of a round loop.

    Attributes:
        output_dir: Run directory.
        rounds: Training rounds after the initial measurement.
        objective: Registry name of the preference objective each round trains with.
        objective_kwargs: Its hyperparameters.
        train: Further :class:`~metapo.train.preference.PreferenceConfig` fields (learning rate, epochs, ...).
        generation: How the policy samples while building data and measuring.
    """

    output_dir: str
    rounds: int = 2
    objective: str = "dpo"
    objective_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    generation: GenerationOptions = field(default_factory=GenerationOptions)


def round_dir(output_dir: str | Path, index: int) -> Path:
    """The folder of round ``index``."""
    return Path(output_dir) / f"round-{index}"


def run_rounds(
    model_path: str | Path, config: LoopConfig, build: BuildFn, measure: MeasureFn
) -> list[dict[str, Any]]:
    """Run (or resume) the loop.

    Args:
        model_path: The initial policy (a model directory).
        config: Loop settings.
        build: ``build(round, policy) -> rows`` builds one round's preference rows with the current policy.
        measure: ``measure(policy) -> metrics`` evaluates a policy on the quantity the loop should improve.

    Returns:
        The metrics of rounds 0..T, each with ``round`` and (for t ≥ 1) ``pairs``.

    Raises:
        LoopError: A round built no pairs.
    """
    from metapo.objectives import get_objective

    if config.rounds < 1:
        raise LoopError(f"rounds={config.rounds}: set rounds to 1 or more")
    get_objective(config.objective).hyperparameters(config.objective_kwargs)  # fail before any work
    out = Path(config.output_dir)
    history: list[dict[str, Any]] = []
    current = Path(model_path)
    for index in range(config.rounds + 1):
        folder = round_dir(out, index)
        metrics_file = folder / "metrics.json"
        if index > 0 and (folder / "model").is_dir():
            current = folder / "model"
        if metrics_file.is_file():
            history.append(json.loads(metrics_file.read_text("utf-8")))
            logger.info("round %d already done: %s", index, history[-1])
            continue
        policy = HFPolicy.from_pretrained(current, config.generation)
        metrics: dict[str, Any] = {"round": index}
        if index > 0:
            if not (folder / "model").is_dir():
                rows = _round_rows(folder, index, policy, build)
                _train_round(current, folder, rows, config)
                current = folder / "model"
                policy = HFPolicy.from_pretrained(current, config.generation)
            metrics["pairs"] = len(read_rows(folder / "data.jsonl"))
        metrics.update(measure(policy))
        atomic_write_json(metrics_file, metrics)
        history.append(metrics)
        atomic_write_json(out / "summary.json", {"rounds": history})
        logger.info("round %d: %s", index, metrics)
    return history


def _round_rows(folder: Path, index: int, policy: HFPolicy, build: BuildFn) -> list[dict[str, Any]]:
    data = folder / "data.jsonl"
    if data.is_file():
        return read_rows(data)
    rows = build(index, policy)
    if not rows:
        raise LoopError(
            f"round {index} built no preference pairs: sample more responses per prompt, use more prompts, "
            "or check that the judge tells the responses apart"
        )
    write_rows(data, rows)
    return rows


def _train_round(start: Path, folder: Path, rows: list[dict[str, Any]], config: LoopConfig) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.train.preference import PreferenceConfig, PreferenceTrainer

    settings: dict[str, Any] = {**TRAIN_DEFAULTS, **config.train}
    settings.update(
        output_dir=str(folder / "trainer"),
        objective=config.objective,
        objective_kwargs=dict(config.objective_kwargs),
    )
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    model = AutoModelForCausalLM.from_pretrained(str(start))
    trainer = PreferenceTrainer(
        model, PreferenceConfig(**settings), train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    # Saved under a temporary name and renamed: a "model" folder is always complete.
    staging = folder / "model.partial"
    if staging.exists():
        shutil.rmtree(staging)
    trainer.save_model(str(staging))
    tokenizer.save_pretrained(str(staging))
    staging.rename(folder / "model")
    shutil.rmtree(folder / "trainer", ignore_errors=True)
