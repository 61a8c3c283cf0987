"""The configuration of a Meta Policy Optimization training run (``metapo train --config run.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metapo.judges import JudgeConfig
from metapo.meta.meta_judge import MetaConfig
from metapo.reward.rubric_reward import RubricRewardConfig
from metapo.reward.rules.config import RuleSettings


@dataclass
class LoraSettings:
    """LoRA adapter on the policy (the paper: rank 64, alpha 128, all projections)."""

    r: int = field(default=16, metadata={"help": "Adapter rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: str | list[str] = field(default="all-linear", metadata={"help": "Modules to adapt."})


@dataclass
class RunConfig:
    """Everything a run needs. ``training`` is passed to TRL's GRPOConfig/RLOOConfig unchanged.

    Attributes mirror the YAML keys; see ``examples/essay_grpo.yaml``.
    """

    model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={"help": "Policy: a local path, a hub id, or embedded:smollm2-135m-instruct."},
    )
    task: str = field(
        default="essay", metadata={"help": "essay, summarization, ethics, math, or a task YAML."}
    )
    task_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Task field overrides, e.g. {word_limit: 60, max_completion_tokens: 96, eos_penalty: null}."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Data source: a hub dataset name, a local JSONL/Parquet file; "
            "empty = the task's built-in set."
        },
    )
    split: str = field(default="train", metadata={"help": "Dataset split."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many rows."})
    algorithm: str = field(default="grpo", metadata={"help": "grpo or rloo (TRL trainers)."})
    output_dir: str = field(default="runs/metapo", metadata={"help": "Run directory."})
    initial_rubric: str | None = field(
        default=None,
        metadata={
            "help": "Rubric file (Markdown/JSON), or a task baseline name such as 'expert'; "
            "empty = the task's one-item starting rubric."
        },
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Reward-model judge."})
    meta_judge: JudgeConfig | None = field(
        default=None, metadata={"help": "Meta-reward model; empty = reuse the reward judge."}
    )
    reward: RubricRewardConfig = field(default_factory=RubricRewardConfig, metadata={"help": "Scoring."})
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "A model saved by `metapo train-rm`, scored as a second TRL reward function beside the "
            "rubric reward (weights: training.reward_weights)."
        },
    )
    mpo: MetaConfig = field(
        default_factory=MetaConfig, metadata={"help": "Meta Policy Optimization settings."}
    )
    training: dict[str, Any] = field(default_factory=dict, metadata={"help": "TRL trainer arguments."})
    lora: LoraSettings | None = field(
        default=None, metadata={"help": "Train a LoRA adapter instead of all weights."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for data order, sampling and meta-step selection."})
    rules: RuleSettings | None = field(
        default=None,
        metadata={"help": "A GRPO reward/advantage rule (length shaping, multi-objective); grpo only."},
    )

    def __post_init__(self) -> None:
        if self.algorithm not in ("grpo", "rloo"):
            raise ValueError(f"algorithm={self.algorithm!r}; choose grpo or rloo")
        if self.rules is not None and self.algorithm != "grpo":
            raise ValueError(f"rules need algorithm=grpo (got {self.algorithm})")
        for key in ("output_dir", "model", "seed"):
            if key in self.training:
                raise ValueError(
                    f"training.{key} conflicts with the top-level '{key}' setting; set it there only"
                )


def check_training_args(training: dict[str, Any], config_cls: type) -> dict[str, Any]:
    """``training`` checked against the fields of TRL's trainer config ``config_cls`` (keys and value types).

    Runs before anything is written, so a typo such as ``training.lerning_rate`` stops the run at once with a
    suggestion instead of failing inside the trainer.

    Returns:
        The settings with lossless conversions applied (e.g. ``"1e-5"`` read as a number).
    """
    import dataclasses
    import difflib
    import typing

    from metapo.config import ConfigError, check_value

    fields = {f.name for f in dataclasses.fields(config_cls)}
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):  # an annotation that does not resolve here: check the names only
        hints = {}
    out = {}
    for key, value in training.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean training.{close[0]}?" if close else ""
            raise ConfigError(f"training.{key} is not a {config_cls.__name__} setting{hint}")
        out[key] = check_value(value, hints.get(key, Any), f"training.{key}")
    return out
