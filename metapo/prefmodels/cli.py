"""``metapo train-rm``, ``score-rm``, ``dpa-rsft`` and ``sft-recipe``: reward and preference models on the command
line, and the SFT learning-rate recipe.

Each command reads one flat YAML file (``--config``) whose keys are the fields of its settings dataclass, followed by
``key=value`` overrides (``learning_rate=1e-4``, ``sft.num_train_epochs=2``). Every value is checked against its
field's type before anything loads; bad input raises ``ValueError``, which ``metapo``'s entry point prints as one
line. Heavy imports happen in the handlers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the commands to ``metapo``'s sub-parsers."""
    train = subparsers.add_parser(
        "train-rm",
        help="train a reward or preference model (Bradley-Terry, GPM, vector/DPA, Themis)",
        description="Train a reward model and save it for `score-rm`, `metapo train` (reward_model: DIR), "
        "evaluation and online methods. kind=bt uses TRL's RewardTrainer; gpm, vector and themis use metapo's "
        "trainer. Example: metapo train-rm --config examples/rm_gpm.yaml learning_rate=1e-3",
    )
    train.add_argument(
        "--config", type=Path, help="YAML with RewardModelConfig fields (TrainingArguments too)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in output_dir"
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides")
    train.set_defaults(handler=_train_rm)

    score = subparsers.add_parser(
        "score-rm",
        help="score responses with a trained reward model",
        description="Print each response's reward and the pairwise preference probabilities P(row beats column). "
        "Themis models also print the tool-use trace they wrote.",
    )
    score.add_argument("--model", required=True, type=Path, help="directory written by `metapo train-rm`")
    score.add_argument("--prompt", required=True, help="the prompt")
    score.add_argument("--responses", required=True, nargs="+", help="responses to score")
    score.add_argument(
        "--direction", default=None, help="vector models: weights such as 1,0 (helpfulness only)"
    )
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(handler=_score_rm)

    dpa = subparsers.add_parser(
        "dpa-rsft",
        help="directional rejection-sampling fine-tuning (DPA) with a vector reward model",
        description="Each round: draw a direction per prompt, state it in the system prompt, sample N responses, "
        "keep the best under the direction, and fine-tune on the kept ones (TRL SFTTrainer). Resumable per round.",
    )
    dpa.add_argument("--config", type=Path, help="YAML with RSFTConfig fields")
    dpa.add_argument("overrides", nargs="*", help="key=value overrides")
    dpa.set_defaults(handler=_dpa_rsft)

    recipe = subparsers.add_parser(
        "sft-recipe",
        help="SFT at lr and lr/k, then identical DPO: the implicit-reward learning-rate recipe",
        description="Runs two arms (SFT learning rate lr and lr/k, then the same DPO stage) on one preference set "
        "and writes report.json with how far SFT moved each model and the DPO models' held-out accuracy.",
    )
    recipe.add_argument("--config", type=Path, help="YAML with RecipeConfig fields")
    recipe.add_argument("overrides", nargs="*", help="key=value overrides")
    recipe.set_defaults(handler=_sft_recipe)


def load_config(
    cls: type, config: Path | None, overrides: Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> Any:
    """Settings dataclass ``cls`` from a YAML file and ``key=value`` overrides (dotted keys reach into mappings).

    Every value is checked against its field's type before the dataclass is built.

    Args:
        cls: The settings dataclass (a ``TrainingArguments`` subclass is built by ``HfArgumentParser``).
        config: YAML file with the dataclass's fields, or ``None``.
        overrides: Override tokens such as ``learning_rate=1e-4``.
        defaults: Values used where neither the file nor the overrides set the key.

    Raises:
        ValueError: An unreadable file, an unknown key, or a value of the wrong type, naming the key.
    """
    import dataclasses
    import typing

    from metapo.config import ConfigError, check_value, deep_merge, from_dict, load_yaml, parse_overrides

    data = deep_merge(load_yaml(config) if config is not None else {}, parse_overrides(list(overrides)))
    data = {**(defaults or {}), **data}
    from transformers import HfArgumentParser, TrainingArguments

    if not issubclass(cls, TrainingArguments):
        return from_dict(cls, data)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see `metapo train-rm --help`")
    hints = typing.get_type_hints(cls)
    checked = {key: check_value(value, hints.get(key, Any), key) for key, value in data.items()}
    return HfArgumentParser(cls).parse_dict(checked)[0]


def _train_rm(args: argparse.Namespace) -> int:
    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    config = load_config(RewardModelConfig, args.config, args.overrides, defaults={"output_dir": "runs/rm"})
    out = train_reward_model(config, resume=args.resume)
    print(f"saved {config.kind} model to {out}")
    return 0


def _parse_direction(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--direction {text!r}: give comma-separated numbers such as 1,0") from None


def _score_rm(args: argparse.Namespace) -> int:
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model} is not a directory written by `metapo train-rm`")
    direction = _parse_direction(args.direction)
    from metapo.prefmodels.scorer import RewardModel

    model = RewardModel.load(args.model, direction=direction)
    responses = list(args.responses)
    prompts = [args.prompt] * len(responses)
    result: dict[str, Any] = {"kind": model.spec.kind, "rewards": model.rewards(prompts, responses)}
    if model.spec.kind == "themis":
        result["traces"] = [t.to_dict() for t in model.traces(prompts, responses)]
    matrix = model.preference_matrix(args.prompt, responses)
    result["preference"] = [
        [None if i == j else float(matrix[i, j]) for j in range(len(responses))]
        for i in range(len(responses))
    ]
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"{model.spec.kind} model {args.model}")
    for i, (response, reward) in enumerate(zip(responses, result["rewards"], strict=True)):
        probs = " ".join("  -  " if p is None else f"{p:.3f}" for p in result["preference"][i])
        print(f"[{i}] reward {reward:+.4f}  P(beats j): {probs}  {response[:60]!r}")
    for i, trace in enumerate(result.get("traces", [])):
        print(f"[{i}] trace: {json.dumps(trace, ensure_ascii=False)}")
    return 0


def _dpa_rsft(args: argparse.Namespace) -> int:
    from metapo.prefmodels.dpa import RSFTConfig

    config = load_config(RSFTConfig, args.config, args.overrides)
    if not config.reward_model:
        raise ValueError("set reward_model: a vector model saved by `metapo train-rm` (kind: vector)")
    if not Path(config.reward_model).is_dir():
        raise ValueError(
            f"reward_model {config.reward_model} is not a directory written by `metapo train-rm`"
        )
    from metapo.prefmodels.data import load_rows
    from metapo.prefmodels.dpa import run_rsft
    from metapo.prefmodels.model import HeadSpec
    from metapo.prefmodels.scorer import RewardModel

    kind = HeadSpec.load(Path(config.reward_model)).kind  # before the weights load
    if kind != "vector":
        raise ValueError(f"reward_model {config.reward_model} is a {kind} model; DPA needs a vector one")
    scorer = RewardModel.load(config.reward_model)
    source = "builtin:ratings" if config.prompts == "builtin" else config.prompts
    prompts = list(dict.fromkeys(row["prompt"] for row in load_rows(source)))
    out = run_rsft(config, scorer, scorer.spec.attributes, prompts)
    print(f"final policy: {out}")
    return 0


def _sft_recipe(args: argparse.Namespace) -> int:
    from metapo.train.sft_recipe import RecipeConfig, run_recipe

    config = load_config(RecipeConfig, args.config, args.overrides)
    report = run_recipe(config)
    print(json.dumps({"arms": report["arms"], "delta": report["delta"]}, indent=2))
    print(f"wrote {Path(config.output_dir) / 'report.json'}")
    return 0
