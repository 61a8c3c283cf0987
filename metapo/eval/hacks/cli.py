"""``metapo hackbench``: does the evolving rubric catch and repair reward hacks? (static and dynamic protocols)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``hackbench`` subcommand."""
    p = subparsers.add_parser(
        "hackbench",
        help="Measure whether the rubric reward is hacked and whether meta steps repair it.",
        description="Score good responses and reward-hack variants (padding, title-only, stuffing, flattery, "
        "injection, repetition, restating, format gaming, off-topic) with the task's rubric reward. Static "
        "protocol: hack success per family and AUC under the initial rubric, then meta steps on hack-dominated "
        "windows (repaired rate, collateral, held-out families). Dynamic protocol: a tabular softmax policy "
        "trained on the reward, with a fixed rubric and with MPO. Writes JSON, Markdown and PNG; rerunning with "
        "the same --out resumes through the judge cache.",
    )
    p.add_argument("--task", action="append", default=None, help="Built-in set: essay or math (repeatable; default essay).")
    p.add_argument("--data", default=None, help="Your own hack set (JSONL; format in the README).")
    p.add_argument(
        "--judge",
        default=None,
        help="'embedded' (the packaged 1.5B judge, as reward judge and meta judge), or a YAML file with judge "
        "settings or a run config (its judge: and meta_judge: sections). Default: the --run-dir's config.",
    )
    p.add_argument("--meta-judge", default=None, help="YAML with the meta judge's settings (default: the judge).")
    p.add_argument(
        "--scoring",
        choices=("logprob", "json", "multiturn"),
        default=None,
        help="Default: that of reward.scoring (multiturn).",
    )
    p.add_argument("--protocol", choices=("static", "dynamic", "both"), default="both", help="Default: %(default)s.")
    p.add_argument("--prompts", type=int, default=None, help="Use the first N prompts of each task (default: all).")
    p.add_argument("--families", default=None, help="Comma-separated families to keep (default: all).")
    p.add_argument(
        "--window-families",
        default=None,
        help="Comma-separated families that fill the static meta steps' window (default: every other one).",
    )
    p.add_argument("--meta-steps", type=int, default=2, help="Static protocol meta steps (default: %(default)s).")
    p.add_argument("--margin", type=float, default=0.1, help="Collateral margin in reward units (default: %(default)s).")
    p.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples (default: %(default)s).")
    p.add_argument("--steps", type=int, default=20, help="Dynamic protocol policy steps (default: %(default)s).")
    p.add_argument("--group", type=int, default=8, help="Candidates drawn per prompt and step (default: %(default)s).")
    p.add_argument("--lr", type=float, default=1.0, help="Policy step size (default: %(default)s).")
    p.add_argument("--meta-every", type=int, default=5, help="Steps between MPO meta steps (default: %(default)s).")
    p.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds of the dynamic protocol (default: %(default)s).")
    p.add_argument("--out", type=Path, default=None, help="Output folder (default: RUN/hackbench with --run-dir, else ./hackbench).")
    p.add_argument("--run-dir", type=Path, default=None, help="A run directory: write into RUN/hackbench (shown by metapo report).")
    p.add_argument("--cache", type=Path, default=None, help="Judge cache (SQLite; default: OUT/judge-cache.sqlite).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars.")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Settings of the meta step (mpo.samples=2, mpo.max_items=4, ...) and the reward (reward.reward_scale=raw).",
    )
    p.set_defaults(handler=_hackbench)


def _csv(text: str | None, what: str) -> list[str]:
    if text is None:
        return []
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"{what} {text!r} names nothing; give comma-separated names")
    return values


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in _csv(text, "--seeds")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _judge_configs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(judge settings, meta judge settings or None, a name for the report)."""
    from metapo.config import load_yaml
    from metapo.models.embedded import embedded_judge_settings

    spec = args.judge
    if spec is None and args.run_dir is not None:
        spec = str(args.run_dir / "config.yaml")
    if spec is None:
        raise ValueError("hackbench needs --judge: 'embedded', or a YAML file with judge settings or a run config")
    if spec == "embedded":
        return embedded_judge_settings(), None, "embedded qwen2.5-coder-1.5b (reward and meta judge)"
    data = load_yaml(spec, "judge config")
    if isinstance(data.get("judge"), dict):
        meta = data.get("meta_judge") if isinstance(data.get("meta_judge"), dict) else None
        return dict(data["judge"]), meta, f"judge of {spec}"
    return dict(data), None, f"judge of {spec}"


def _hackbench(args: argparse.Namespace) -> int:
    from metapo.config import from_dict, load_yaml, parse_overrides
    from metapo.eval.hacks.data import families
    from metapo.eval.hacks.dynamic import DynamicConfig
    from metapo.eval.hacks.run import EMBEDDED_MPO, HackbenchConfig, load_items, write_outputs
    from metapo.eval.hacks.static import StaticConfig, split_families
    from metapo.files import check_output_dir, require_dir
    from metapo.judges import JudgeConfig, build_judge
    from metapo.meta.meta_judge import MetaConfig
    from metapo.reward.rubric_reward import RubricRewardConfig

    if args.run_dir is not None:
        require_dir(args.run_dir, "--run-dir")
    overrides = parse_overrides(args.overrides)
    unknown = sorted(set(overrides) - {"mpo", "reward"})
    if unknown:
        raise ValueError(f"override {unknown[0]}=...: only mpo.* and reward.* settings can be overridden here")
    reward_settings = {**({"scoring": args.scoring} if args.scoring else {}), **overrides.get("reward", {})}
    mpo_data = {**(EMBEDDED_MPO if args.judge == "embedded" else {}), **overrides.get("mpo", {})}
    cfg = HackbenchConfig(
        tasks=args.task or ["essay"],
        data=args.data,
        prompts=args.prompts,
        families=_csv(args.families, "--families"),
        protocol=args.protocol,
        reward=from_dict(RubricRewardConfig, reward_settings, "reward."),
        mpo=from_dict(MetaConfig, mpo_data, "mpo."),
        static=StaticConfig(
            meta_steps=args.meta_steps,
            window_families=_csv(args.window_families, "--window-families"),
            margin=args.margin,
            resamples=args.bootstrap,
        ),
        dynamic=DynamicConfig(
            steps=args.steps, group=args.group, lr=args.lr, meta_every=args.meta_every, seeds=_seeds(args.seeds)
        ),
    )
    if args.meta_steps < 0 or args.bootstrap < 1 or args.margin < 0:
        raise ValueError("--meta-steps must be >= 0, --bootstrap >= 1 and --margin >= 0")
    # Bad data and family names fail here, before any model loads.
    by_task = load_items(cfg)
    split_families(families([i for group in by_task.values() for i in group]), cfg.static.window_families)
    judge_data, meta_data, judge_name = _judge_configs(args)
    if args.meta_judge is not None:
        meta_data = load_yaml(args.meta_judge, "meta judge config")
    out = args.out or (args.run_dir / "hackbench" if args.run_dir is not None else Path("hackbench"))
    check_output_dir(out, "--out")
    cache = args.cache or out / "judge-cache.sqlite"
    judge_cfg = from_dict(JudgeConfig, {"cache_path": str(cache), **judge_data}, "judge.")
    judge = build_judge(judge_cfg)
    meta_client = judge
    if meta_data is not None:
        meta_client = build_judge(from_dict(JudgeConfig, {"cache_path": str(cache), **meta_data}, "meta_judge."))
    from metapo.eval.hacks.run import run_hackbench

    names = {"judge": judge_name, "meta_judge": "the judge" if meta_client is judge else "meta_judge settings"}
    if cfg.data:
        names["data"] = str(cfg.data)

    async def main() -> dict[str, Any]:
        try:
            return await run_hackbench(cfg, judge, meta_client, progress=not args.no_progress, names=names)
        finally:
            await judge.aclose()
            if meta_client is not judge:
                await meta_client.aclose()

    result = asyncio.run(main())
    paths = write_outputs(result, out)
    sys.stdout.write((out / "hackbench.md").read_text(encoding="utf-8"))
    run = result["run"]
    sys.stdout.write(
        f"\nruntime {run['seconds']:.1f} s; judge calls {run['judge_calls']} "
        f"({run['judge_cache_hits']} from the cache); meta-judge calls {run['meta_judge_calls']}\n"
    )
    for path in paths:
        sys.stdout.write(f"wrote {path}\n")
    return 0
