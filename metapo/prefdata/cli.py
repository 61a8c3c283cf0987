"""``metapo build-pref METHOD --config x.yaml``: build preference data, or run a self-improvement loop."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_DESCRIPTION = """\
Turn a policy, a judge (or verifier) and prompts into preference data that `metapo train-pref` trains on as it
is, or run a self-improvement loop over the preference trainer.

methods:
  rso            statistical rejection sampling from pi_sft * exp(r/beta); pairs for hinge or dpo
  evolve         loop: self-refinement chains -> direct and refinement pairs -> dpo, per round
  upo            loop: top/bottom-half pairs weighted by an MC-dropout estimator's BALD -> upo, per round
  mcts-dpo       loop: step-level tree search with math-verify -> step pairs with visit-count smoothing -> cdpo
  fspo           synthetic users judge one candidate set -> few-shot rows with leakage-free user contexts
  mapl           prompt-side pairs pi(y|x+) vs pi(y|x-) and multi-instruction pairs (rule-checked) -> dpo
  structured-po  criteria-scored chain pairs in horizon-curriculum stages -> dpo per stage
  rps            robust preference selection over neighbouring preference directions (inference time)

The config is one YAML mapping: model, prompts, output_dir, judge (JudgeConfig), rubric, generation, options
(the method's settings), and for loops rounds and train (PreferenceConfig fields, objective, objective_kwargs).
Overrides follow as key=value (dotted keys reach into sections: options.beta=0.5). A loop resumes from the rounds
its output_dir already holds. Examples: examples/prefdata_*.yaml."""


def register(subparsers: Any) -> None:
    """Add ``build-pref`` to a ``metapo`` argument parser."""
    from metapo.prefdata.run import METHODS

    parser = subparsers.add_parser(
        "build-pref",
        help="Build preference data (RSO, FSPO, MAPL, Structured PO, RPS) or run EVOLVE/UPO/MCTS-DPO loops.",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", choices=METHODS, help="The builder or loop to run.")
    parser.add_argument("--config", help="YAML file with the build settings.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. options.num_accept=4")
    parser.set_defaults(handler=_build)


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
