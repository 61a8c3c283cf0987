"""The ``metapo`` command line. Each area registers its own subcommands; heavy imports happen in handlers."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that define ``register(subparsers)``, in the order their commands appear in --help.
COMMAND_MODULES = (
    "metapo.train.cli",
    "metapo.train.preference_cli",
    "metapo.online.cli",
    "metapo.prefdata.cli",
    "metapo.eval.cli",
    "metapo.report.cli",
    "metapo.judges.cli",
    "metapo.models.cli",
    "metapo.prefmodels.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="metapo",
        description="Meta Policy Optimization: RL with an LLM judge whose rubric evolves with the policy, "
        "plus a catalog of preference-optimization objectives.",
    )
    parser.add_argument("--log-level", default="INFO", help="Logging level (DEBUG, INFO, WARNING).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # One INFO line per judge request drowns the training log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
