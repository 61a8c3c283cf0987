"""``metapo train-rm``, ``score-rm``, ``dpa-rsft`` and ``sft-recipe``: reward and preference models on the command
line, and the SFT learning-rate recipe.

Each command reads one flat YAML file (``--config``) whose keys are the fields of its settings dataclass, followed by
``key=value`` overrides (``learning_rate=1e-4``, ``sft.num_train_epochs=2``). Heavy imports happen in the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CommandError(Exception):
    """A user error: reported as one line, exit status 2."""


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


def _settings(config: Path | None, overrides: Sequence[str]) -> dict[str, Any]:
    """A YAML mapping merged with ``key=value`` overrides (dotted keys reach into mappings)."""
    from metapo.config import ConfigError, deep_merge, load_yaml, parse_overrides
    from metapo.train.preference_cli import _coerce_numbers

    try:
        data = load_yaml(config) if config is not None else {}
        return _coerce_numbers(deep_merge(data, parse_overrides(list(overrides))))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _build(cls: type, data: dict[str, Any], what: str) -> Any:
    from transformers import HfArgumentParser, TrainingArguments

    from metapo.config import ConfigError, from_dict

    try:
        if issubclass(cls, TrainingArguments):  # HfArgumentParser knows its many fields and their types
            return HfArgumentParser(cls).parse_dict(data, allow_extra_keys=False)[0]
        return from_dict(cls, data)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CommandError(f"{what}: {exc}".replace("\n", " ")) from None


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except CommandError as exc:
        sys.stderr.write(f"metapo {args.command}: error: {exc}\n")
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        sys.stderr.write(f"metapo {args.command}: error: {exc}\n")
        return 2


def _train_rm(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

        data = _settings(args.config, args.overrides)
        data.setdefault("output_dir", "runs/rm")
        config = _build(RewardModelConfig, data, "train-rm config")
        out = train_reward_model(config, resume=args.resume)
        print(f"saved {config.kind} model to {out}")
        return 0

    return _run(go, args)


def _parse_direction(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise CommandError(f"--direction {text!r}: give comma-separated numbers such as 1,0") from None


def _score_rm(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from metapo.prefmodels.scorer import RewardModel

        if not args.model.is_dir():
            raise CommandError(f"--model {args.model} is not a directory written by `metapo train-rm`")
        model = RewardModel.load(args.model, direction=_parse_direction(args.direction))
        responses = list(args.responses)
        prompts = [args.prompt] * len(responses)
        result: dict[str, Any] = {"kind": model.spec.kind, "rewards": model.rewards(prompts, responses)}
        if model.spec.kind == "themis":
            result["traces"] = [t.to_dict() for t in model.traces(prompts, responses)]
        result["preference"] = [
            [None if i == j else model.preference(args.prompt, a, b) for j, b in enumerate(responses)]
            for i, a in enumerate(responses)
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

    return _run(go, args)


def _dpa_rsft(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from metapo.prefmodels.data import load_rows
        from metapo.prefmodels.dpa import RSFTConfig, run_rsft
        from metapo.prefmodels.scorer import RewardModel

        config = _build(RSFTConfig, _settings(args.config, args.overrides), "dpa-rsft config")
        if not config.reward_model:
            raise CommandError("set reward_model: a vector model saved by `metapo train-rm` (kind: vector)")
        scorer = RewardModel.load(config.reward_model)
        if scorer.spec.kind != "vector":
            raise CommandError(
                f"reward_model {config.reward_model} is a {scorer.spec.kind} model; DPA needs vector"
            )
        source = "builtin:ratings" if config.prompts == "builtin" else config.prompts
        prompts = list(dict.fromkeys(row["prompt"] for row in load_rows(source)))
        out = run_rsft(config, scorer, scorer.spec.attributes, prompts)
        print(f"final policy: {out}")
        return 0

    return _run(go, args)


def _sft_recipe(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from metapo.train.sft_recipe import RecipeConfig, run_recipe

        config = _build(RecipeConfig, _settings(args.config, args.overrides), "sft-recipe config")
        report = run_recipe(config)
        print(json.dumps({"arms": report["arms"], "delta": report["delta"]}, indent=2))
        print(f"wrote {Path(config.output_dir) / 'report.json'}")
        return 0

    return _run(go, args)
