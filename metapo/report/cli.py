"""``metapo report RUN_DIR``: the HTML run report and its Markdown summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to a ``metapo`` argument parser."""
    parser = subparsers.add_parser(
        "report",
        help="Write a run's HTML report and Markdown summary.",
        description="Read a run directory (curves, rubric versions, meta steps, samples, eval results) and write "
        "report.html (self-contained: figures embedded, no scripts) and report.md. The Markdown summary is also "
        "printed, for terminals and CI logs.",
    )
    parser.add_argument("run_dir", type=Path, help="The run directory.")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="Where to write (default: the run directory)."
    )
    parser.add_argument("--quiet", action="store_true", help="Do not print the Markdown summary.")
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from metapo.files import check_output_dir, require_dir
    from metapo.report import write_report

    require_dir(args.run_dir, "run directory")
    if args.out_dir is not None:
        check_output_dir(args.out_dir, "--out-dir")
    html_path, md_path = write_report(args.run_dir, args.out_dir)
    if not args.quiet:
        sys.stdout.write(md_path.read_text(encoding="utf-8"))
    sys.stdout.write(f"\nwrote {html_path}\nwrote {md_path}\n")
    return 0
