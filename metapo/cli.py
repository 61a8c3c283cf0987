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
    "metapo.eval.hacks.cli",
    "metapo.report.cli",
    "metapo.judges.cli",
    "metapo.models.cli",
    "metapo.prefmodels.cli",
    "metapo.service.cli",
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
    except Exception as exc:  # the last line of defence: one line on stderr, never a traceback
        logging.getLogger("metapo").debug("traceback of the error below", exc_info=True)
        message, code = error_line(exc)
        sys.stderr.write(f"error: {message}\n")
        return code


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception that reached the command line.

    Bad input (``ValueError``, ``OSError``, ``LookupError`` and their subclasses, which every check of
    user input raises) exits with 2; anything else is a bug or an outside failure and exits with 1, with a
    hint where the traceback is.
    """
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])  # str(KeyError) would quote the message
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    if isinstance(exc, ValueError | OSError | LookupError):
        return text, 2
    return f"{type(exc).__name__}: {text} (run with --log-level DEBUG to see the traceback)", 1


if __name__ == "__main__":
    sys.exit(main())
