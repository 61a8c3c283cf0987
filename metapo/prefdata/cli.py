"""``metapo build-pref METHOD --config x.yaml``: build preference data, or run a self-improvement loop."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

_USAGE = (
    "The config is one YAML mapping: model, prompts, output_dir, judge (JudgeConfig fields), rubric, reward (how the "
    "judge scores it: the reward.* settings of metapo train), generation, "
    "options (the method's settings), and for loops rounds and train (PreferenceConfig fields, objective, "
    "objective_kwargs). Overrides follow as key=value; dotted keys reach into sections (options.beta=0.5). A loop "
    "resumes from the rounds its output_dir already holds. Examples: examples/prefdata_*.yaml."
)
_DESCRIPTION = (
    "Turn a policy, a judge (or verifier) and prompts into preference data that `metapo train-pref` trains on as "
    "it is, or run a self-improvement loop over the preference trainer. " + _USAGE
)


_METHODS = {
    "rso": "statistical rejection sampling from pi_sft * exp(r/beta): pairs for hinge or dpo",
    "evolve": "loop: self-refinement chains -> direct and refinement pairs -> dpo, per round",
    "upo": "loop: top/bottom-half pairs weighted by an MC-dropout estimator's BALD -> upo, per round",
    "mcts-dpo": "loop: step-level tree search with math-verify -> step pairs, visit-count smoothing -> cdpo",
    "fspo": "synthetic users judge one candidate set -> few-shot rows with leakage-free user contexts",
    "mapl": "prompt-side pairs pi(y|x+) vs pi(y|x-) and multi-instruction pairs (rule-checked) -> dpo",
    "structured-po": "criteria-scored chain pairs in horizon-curriculum stages -> dpo per stage",
    "rps": "robust preference selection over neighbouring preference directions (inference time)",
}


def register(subparsers: Any) -> None:
    """Add ``build-pref`` (with one sub-command per method) to a ``metapo`` argument parser."""
    parser = subparsers.add_parser(
        "build-pref",
        help="Build preference data (RSO, FSPO, MAPL, Structured PO, RPS) or run EVOLVE/UPO/MCTS-DPO loops.",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    methods = parser.add_subparsers(
        dest="method", metavar="METHOD", required=True, parser_class=_MethodParser
    )
    for name, summary in _METHODS.items():
        method = methods.add_parser(
            name,
            help=summary,
            description=f"{name}: {summary}. {_USAGE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        method.add_argument("--config", help="YAML file with the build settings.")
        method.add_argument("overrides", nargs="*", help="key=value overrides, e.g. options.seed=1")
        method.set_defaults(handler=_build)


class _MethodParser(argparse.ArgumentParser):
    """A method's parser; its ``--help`` lists the method's options, imported only when help is asked for."""

    def format_help(self) -> str:
        if self.epilog is None:
            self.epilog = _options_help(self.prog.split()[-1])
        return super().format_help()


def _options_help(method: str) -> str:
    """The method's ``options:`` keys with their defaults, from its options dataclass."""
    from metapo.prefdata.run import options_class

    cls = options_class(method)
    lines = ["options (under 'options:' in the config):"]
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _build(args: argparse.Namespace) -> int:
    from metapo.config import ConfigError
    from metapo.judges import JudgeError
    from metapo.prefdata.loop import LoopError
    from metapo.prefdata.run import load_config, run_build

    try:
        cfg = load_config(args.config, list(args.overrides))
        summary = run_build(args.method, cfg)
    except (ConfigError, LoopError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except JudgeError as exc:
        sys.stderr.write(f"error: the judge failed: {exc}\n")
        return 1
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return 0
