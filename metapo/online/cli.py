"""``metapo train-online``: online and self-play preference optimisation (the Nash family) from a YAML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``train-online`` to a CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "train-online",
        help="Online / self-play preference optimisation: SPPO, INPO, EGPO, Nash-MP, APO, XPO, GPO, SPO, online DPO/IPO.",
        description=(
            "Rounds of sampling from the current policy, preference labels from an oracle (pairwise LLM judge, "
            "rubric judge, reward model or a regex rule) and an update with the method's loss; a checkpoint per "
            "round, and a rerun of the same command resumes. Settings come from --config YAML (fields of "
            "OnlineConfig, see examples/online_sppo.yaml), then key=value overrides with dotted keys "
            "(rounds=2 oracle.kind=rule oracle.pattern='[a-z]' training.learning_rate=1e-5)."
        ),
    )
    parser.add_argument("--config", type=Path, help="YAML run config.")
    parser.add_argument("--list", action="store_true", help="List the online methods and exit.")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the YAML.")
    parser.set_defaults(handler=_train_online)


def methods_table() -> str:
    """One line per online method: name, loss, pairs, reference and what it does."""
    from metapo.online.methods import METHODS

    lines = [f"{'method':<11} {'loss':<11} {'pairs':<20} {'reference':<9} summary"]
    for m in METHODS.values():
        loss = m.objective or "GRPO"
        reference = m.reference or "-"
        lines.append(
            f"{m.name:<11} {loss:<11} {m.pairs if not m.grpo else '-':<20} {reference:<9} {m.summary}"
        )
    return "\n".join(lines) + "\n"


def _train_online(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(methods_table())
        return 0
    from metapo.config import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides
    from metapo.online.trainer import OnlineConfig, OnlineTrainer

    try:
        data = load_yaml(args.config) if args.config else {}
        config = from_dict(OnlineConfig, deep_merge(data, parse_overrides(args.overrides)))
        trainer = OnlineTrainer(config)
        for metrics in trainer.train():
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
            )
            print(f"round {metrics['round']}: {shown}")
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"error: {message}\n")
        return 2
    print(f"policy after round {trainer.state['rounds_done']}: {trainer.state['policies'][-1]}")
    return 0
