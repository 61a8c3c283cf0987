"""``metapo train``, ``metapo demo`` and ``metapo rubric`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the training and rubric commands."""
    train = subparsers.add_parser(
        "train",
        help="Train a policy with Meta Policy Optimization (GRPO or RLOO + an evolving rubric).",
        description="Train with Meta Policy Optimization. Settings come from --config YAML, then key=value "
        "overrides (dotted keys: mpo.interval=5 training.max_steps=20 judge.base_urls=[http://h:8000/v1]).",
    )
    train.add_argument("--config", type=Path, help="YAML run config (see examples/).")
    train.add_argument("--task", help="Shortcut for task=...")
    train.add_argument("--output-dir", help="Shortcut for output_dir=...")
    train.add_argument(
        "--resume", action="store_true", help="Continue the run in output_dir from its last checkpoint."
    )
    train.add_argument("overrides", nargs="*", help="key=value settings that override the YAML.")
    train.set_defaults(handler=_train)

    demo = subparsers.add_parser(
        "demo",
        help="Essay-writing Meta Policy Optimization on the embedded models (SmolLM2 policy, Qwen2.5-1.5B judge).",
    )
    demo.add_argument(
        "--preset",
        choices=("full", "quick"),
        default="full",
        help="full ~20 min, quick ~5 min on 2 CPU cores.",
    )
    demo.add_argument(
        "--output-dir", default=None, help="Run directory (default: runs/demo-<preset>-<time>)."
    )
    demo.add_argument("overrides", nargs="*", help="key=value settings that override the preset.")
    demo.set_defaults(handler=_demo)

    tasks = subparsers.add_parser("tasks", help="List the built-in tasks.")
    tasks.set_defaults(handler=_tasks)

    rubric = subparsers.add_parser("rubric", help="Inspect rubric histories and rubric files.")
    sub = rubric.add_subparsers(dest="rubric_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="Show a run's rubric versions (the latest in full).")
    show.add_argument("run_dir", type=Path)
    show.add_argument("--lineage", default=None, help="Lineage (default: all).")
    show.add_argument("--version", type=int, default=None, help="Show this version in full.")
    show.set_defaults(handler=_rubric_show)
    dif = sub.add_parser("diff", help="Diff two versions of a lineage (default: the last two).")
    dif.add_argument("run_dir", type=Path)
    dif.add_argument("old", type=int, nargs="?")
    dif.add_argument("new", type=int, nargs="?")
    dif.add_argument("--lineage", default="default")
    dif.set_defaults(handler=_rubric_diff)
    val = sub.add_parser("validate", help="Check a rubric file (Markdown, JSON or <rubric><item> form).")
    val.add_argument("path", type=Path)
    val.add_argument("--max-items", type=int, default=12)
    val.set_defaults(handler=_rubric_validate)


def load_run_config(config: Path | None, overrides: list[str], extra: dict[str, Any] | None = None) -> Any:
    """YAML, then shortcut flags, then key=value overrides, into a :class:`RunConfig`."""
    from metapo.config import deep_merge, from_dict, load_yaml, parse_overrides
    from metapo.train.config import RunConfig

    data = load_yaml(config) if config else {}
    data = deep_merge(data, extra or {})
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(RunConfig, data)


def _train(args: argparse.Namespace) -> int:
    # Bad input (config, run directory, data, rubric files) raises ValueError or OSError subclasses naming
    # the culprit; metapo.cli.main prints them as one line. The config is checked before the heavy imports.
    extra = {k: v for k, v in {"task": args.task, "output_dir": args.output_dir}.items() if v}
    cfg = load_run_config(args.config, args.overrides, extra)
    if args.resume:
        # The saved config is the truth for a resumed run; command-line overrides still apply on top.
        cfg = load_run_config(Path(cfg.output_dir) / "config.yaml", args.overrides, extra)

    from metapo.reward.rubric_reward import JudgeUnavailableError
    from metapo.train.run import summarize, train

    try:
        built = train(cfg, resume=args.resume)
    except JudgeUnavailableError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    print(summarize(built.run_dir))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from metapo.train.demo import run_demo

    return run_demo(args.preset, args.output_dir, args.overrides)


def _tasks(args: argparse.Namespace) -> int:
    from metapo.tasks import list_tasks

    for name, description in list_tasks().items():
        print(f"{name:<15} {description}")
    print("\nAlso accepted: a task YAML file (see examples/task_custom.yaml) or module:Class.")
    return 0


def _run_store(run_dir: Path) -> Any:
    from metapo.files import InputFileError, require_dir
    from metapo.rubric.store import RubricStore

    require_dir(run_dir, "run directory")
    if not (run_dir / "rubrics").is_dir():
        raise InputFileError(f"{run_dir} has no rubric history (no rubrics/ directory); pass a run directory")
    return RubricStore(run_dir / "rubrics")


def _history(store: Any, run_dir: Path, lineage: str) -> list[Any]:
    from metapo.files import InputFileError

    history = store.history(lineage)
    if not history:
        raise InputFileError(
            f"{run_dir} has no rubric lineage {lineage!r}; its lineages: {', '.join(store.lineages()) or 'none'}"
        )
    return history


def _rubric_show(args: argparse.Namespace) -> int:
    store = _run_store(args.run_dir)
    lineages = [args.lineage] if args.lineage else store.lineages()
    if not lineages:
        sys.stderr.write(f"error: {args.run_dir} has no rubric versions in rubrics/\n")
        return 2
    for lineage in lineages:
        history = _history(store, args.run_dir, lineage)
        chosen = store.get(lineage, args.version) if args.version is not None else history[-1]
        print(f"# lineage {lineage}: {len(history)} version(s)")
        for v in history:
            parents = ",".join(map(str, v.parents)) or "-"
            print(
                f"v{v.version}  step {v.step}  {v.creator}  parents {parents}  {len(v.rubric.items)} items  {v.hash}"
            )
        print(f"\n## v{chosen.version}\n\n{chosen.rubric.to_markdown()}")
    return 0


def _rubric_diff(args: argparse.Namespace) -> int:
    store = _run_store(args.run_dir)
    history = _history(store, args.run_dir, args.lineage)
    if len(history) < 2 and (args.old is None or args.new is None):
        sys.stderr.write(f"error: lineage {args.lineage!r} has {len(history)} version(s); nothing to diff\n")
        return 2
    old = args.old if args.old is not None else history[-2].version
    new = args.new if args.new is not None else history[-1].version
    print(f"v{old} -> v{new}\n{store.diff(args.lineage, old, new).render()}")
    return 0


def _rubric_validate(args: argparse.Namespace) -> int:
    from metapo.files import read_user_text
    from metapo.rubric.model import Rubric, RubricError, RubricLimits

    text = read_user_text(args.path, "rubric file")  # a missing or binary file is an error, not "invalid"
    try:
        rubric = Rubric.parse(text).validate(RubricLimits(max_items=args.max_items))
    except RubricError as exc:
        sys.stderr.write(f"invalid: {exc}\n")
        return 1
    print(f"valid: {len(rubric.items)} items, {rubric.min_points:g}..{rubric.max_points:g} points")
    return 0
