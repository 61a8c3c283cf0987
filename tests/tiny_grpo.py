"""A short GRPOTrainer on the tiny random policy, shared by the training tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPTS = (
    "Write about a lighthouse keeper.",
    "Argue for or against homework.",
    "Explain how rain forms.",
    "Describe your favourite season.",
)


def prompt_dataset(rows: int, prompts: tuple[str, ...] = PROMPTS) -> Any:
    """Conversational prompt-only rows with a ``task_input`` column, cycling over ``prompts``."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "task_input": p} for p in (prompts * rows)[:rows]]
    )


def tiny_grpo_trainer(
    policy: Path,
    out: Path,
    reward: Any,
    callbacks: list[Any],
    *,
    max_steps: int,
    batch: int = 4,
    generations: int = 4,
    completion_tokens: int = 12,
    learning_rate: float = 1e-4,
    dataset: Any = None,
    trainer_cls: type | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    **config: Any,
) -> Any:
    """GRPOTrainer on CPU with no checkpoints, no trackers and no progress bar (``config``: more GRPOConfig).

    ``reward`` is one reward function or a list; ``trainer_cls`` (a GRPOTrainer subclass) gets ``trainer_kwargs``.
    """
    from trl import GRPOConfig, GRPOTrainer

    settings: dict[str, Any] = {
        "output_dir": str(out / "checkpoints"),
        "per_device_train_batch_size": batch,
        "num_generations": generations,
        "max_completion_length": completion_tokens,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
    }
    args = GRPOConfig(**(settings | config))  # config may override the defaults (e.g. save_strategy)
    return (trainer_cls or GRPOTrainer)(
        model=str(policy),
        reward_funcs=reward if isinstance(reward, list) else [reward],
        args=args,
        train_dataset=dataset if dataset is not None else prompt_dataset(max(16, max_steps * batch)),
        callbacks=callbacks,
        **(trainer_kwargs or {}),
    )
