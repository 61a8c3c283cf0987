"""``metapo generate`` and ``metapo eval``: test-set generations, task metrics and pairwise tournaments."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_KIND = "metapo-eval"
RESULT_VERSION = 1


def register(subparsers: Any) -> None:
    """Add the ``generate`` and ``eval`` subcommands to a ``metapo`` argument parser."""
    gen = subparsers.add_parser(
        "generate",
        help="Generate test-set responses for one model (one JSONL per model, resumable).",
        description="Generate one response per test row with near-greedy decoding (temperature 0.01, top-p 1, "
        "seed 42: the paper's settings). Rows already in --out are skipped, so an interrupted run resumes.",
    )
    gen.add_argument("--model", required=True, help="Model folder, run directory, or Hugging Face id.")
    gen.add_argument("--task", required=True, help="Task name (essay, summarization, ethics, math, ...).")
    gen.add_argument("--split", default="test", help="Dataset split (default: %(default)s).")
    gen.add_argument(
        "--source", default=None, help="Data source for the task (default: the task's built-in set)."
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Output JSONL (default: RUN/eval/generations-TASK-SPLIT.jsonl for a run directory, "
        "else generations-MODEL-TASK-SPLIT.jsonl).",
    )
    gen.add_argument("--name", default=None, help="Model name stored in the records (default: folder name).")
    gen.add_argument("--max-new-tokens", type=int, default=None, help="Default: the task's completion limit.")
    gen.add_argument("--temperature", type=float, default=0.01, help="0 = greedy (default: %(default)s).")
    gen.add_argument("--top-p", type=float, default=1.0, help="Default: %(default)s.")
    gen.add_argument("--seed", type=int, default=42, help="Default: %(default)s.")
    gen.add_argument("--batch-size", type=int, default=8, help="Default: %(default)s.")
    gen.add_argument("--limit", type=int, default=None, help="Use at most this many rows.")
    gen.add_argument(
        "--backend",
        choices=("auto", "hf", "vllm"),
        default="auto",
        help="auto: vLLM when installed and a GPU is present, else transformers (default).",
    )
    style = gen.add_mutually_exclusive_group()
    style.add_argument(
        "--style",
        choices=("verbose", "concise"),
        default=None,
        help="Ask for long or short answers: makes the gamed baseline variants for --lc-gamed.",
    )
    style.add_argument("--prompt-suffix", default=None, help="Text appended to the last user turn.")
    gen.set_defaults(handler=_generate)

    ev = subparsers.add_parser(
        "eval",
        help="Task metrics for generation files, and a pairwise tournament when a judge is given.",
        description="Score each generation file with the task's metric. With --judge-config and two or more "
        "files, also run a pairwise tournament: Elo as in the paper (5 runs x 2000 matches, K=4), "
        "Bradley-Terry ratings with bootstrap intervals, win-rate matrices and, against --baseline, "
        "length-controlled win rates. Writes a JSON result and prints tables.",
    )
    ev.add_argument("--task", required=True, help="Task name, for its metric and the judge's criteria.")
    ev.add_argument("--generations", nargs="+", type=Path, required=True, help="Generation JSONL files.")
    ev.add_argument(
        "--judge-config",
        type=Path,
        default=None,
        help="YAML with judge settings (JudgeConfig fields, or a run config with a 'judge:' section).",
    )
    ev.add_argument("--matches", type=int, default=2000, help="Matches per Elo run (default: %(default)s).")
    ev.add_argument("--runs", type=int, default=5, help="Elo runs (default: %(default)s).")
    ev.add_argument("--seed", type=int, default=42, help="Schedule seed (default: %(default)s).")
    ev.add_argument(
        "--protocol",
        choices=("swap", "paper"),
        default="swap",
        help="swap: judge both orders, disagreement = tie (default); paper: one order, no ties.",
    )
    ev.add_argument(
        "--mode",
        choices=("tag", "logprobs"),
        default="tag",
        help="Read the verdict from a <winner> tag (default) or from A/B token log-probabilities.",
    )
    ev.add_argument(
        "--baseline",
        default=None,
        help="Model name for length-controlled win rates (default: the first file's model).",
    )
    ev.add_argument("--no-lc", action="store_true", help="Skip the length-controlled win rates.")
    ev.add_argument("--lc-max-prompts", type=int, default=None, help="Cap on prompts for the LC comparisons.")
    ev.add_argument(
        "--lc-gamed",
        nargs="+",
        default=(),
        metavar="NAME=FILE",
        help="Generations of the baseline made with --style verbose / concise, for the published regularisation "
        "of the length-controlled GLM (e.g. verbose=base-verbose.jsonl concise=base-concise.jsonl).",
    )
    ev.add_argument("--bootstrap", type=int, default=200, help="Bradley-Terry bootstrap resamples.")
    ev.add_argument("--concurrency", type=int, default=8, help="Comparisons judged at once.")
    ev.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Result JSON (default: eval-TASK.json next to the first generations file).",
    )
    ev.set_defaults(handler=_eval)


# ----- generate ----------------------------------------------------------------------------------------------
def _generate(args: argparse.Namespace) -> int:
    from metapo.eval.generate import STYLE_SUFFIXES, generate, resolve_model
    from metapo.files import check_output_file

    out = args.out
    if out is None:
        path = Path(args.model)
        if (path / "config.yaml").is_file():
            out = path / "eval" / f"generations-{args.task}-{args.split}.jsonl"
        else:
            name = args.name or resolve_model(args.model)[1]
            out = Path(f"generations-{name}-{args.task}-{args.split}.jsonl")
    check_output_file(out, "--out")
    summary = generate(
        args.model,
        args.task,
        args.split,
        out,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        source=args.source,
        backend=args.backend,
        model_name=args.name,
        prompt_suffix=STYLE_SUFFIXES[args.style] if args.style else args.prompt_suffix,
    )
    sys.stdout.write(
        f"{summary.model}: {summary.generated} generated, {summary.skipped} already present "
        f"({summary.total} rows, {summary.backend}, {summary.seconds:.1f} s) -> {summary.out_path}\n"
    )
    return 0


# ----- eval --------------------------------------------------------------------------------------------------
def load_judge_config(path: Path) -> Any:
    """A :class:`~metapo.judges.JudgeConfig` from YAML: its fields, or a run config's ``judge:`` section."""
    from metapo.config import from_dict, load_yaml
    from metapo.judges import JudgeConfig

    data = load_yaml(path)
    if isinstance(data.get("judge"), dict):
        data = data["judge"]
    return from_dict(JudgeConfig, data, "judge.")


def task_metrics(task_name: str, pool: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The task's own metric for every model's records (empty when the task cannot be loaded)."""
    try:
        from metapo.tasks import get_task

        task = get_task(task_name)
    except (ImportError, KeyError, ValueError) as exc:
        logger.warning("no metric for task %r: %s", task_name, exc)
        return {}
    return {model: task.metric(list(records.values())) for model, records in pool.items()}


def length_summary(records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean response length in characters and words, and the share of responses cut by the token limit."""
    responses = [str(r.get("response", "")) for r in records.values()]
    n = max(len(responses), 1)
    return {
        "n": len(responses),
        "chars_mean": sum(len(r) for r in responses) / n,
        "words_mean": sum(len(r.split()) for r in responses) / n,
        "truncated_fraction": sum(r.get("finish_reason") == "length" for r in records.values()) / n,
    }


def run_eval(
    task: str,
    generation_files: list[Path],
    *,
    judge_config: Any | None = None,
    judge_client: Any | None = None,
    tournament: Any | None = None,
    protocol: str = "swap",
    mode: str = "tag",
    gamed_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Everything ``metapo eval`` computes, as the JSON-ready result dict.

    Args:
        task: Task name.
        generation_files: One JSONL per model.
        judge_config: A ``JudgeConfig``; a client is built from it (and closed afterwards).
        judge_client: An already built client (takes precedence; left open).
        tournament: A :class:`~metapo.eval.tournament.TournamentConfig`.
        protocol: ``"swap"`` or ``"paper"``.
        mode: ``"tag"`` or ``"logprobs"``.
        gamed_files: Variant name to the generations of the LC baseline prompted to be verbose or concise.
    """
    from metapo.eval.generate import load_generations

    pool: dict[str, dict[str, dict[str, Any]]] = {}
    files: dict[str, str] = {}
    for path in generation_files:
        name, records = load_generations(path)
        if name in pool:
            name = f"{name}@{path.stem}"
        pool[name] = records
        files[name] = str(path)
    result: dict[str, Any] = {
        "kind": RESULT_KIND,
        "version": RESULT_VERSION,
        "task": task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": files,
        "metrics": task_metrics(task, pool),
        "lengths": {m: length_summary(r) for m, r in pool.items()},
    }
    if len(pool) >= 2 and (judge_config is not None or judge_client is not None):
        import asyncio

        gamed = {name: load_generations(path)[1] for name, path in (gamed_files or {}).items()}
        result["tournament"] = asyncio.run(
            _tournament(task, pool, judge_config, judge_client, tournament, protocol, mode, gamed)
        )
        if gamed:
            result["tournament"]["lc_gamed_files"] = {k: str(v) for k, v in (gamed_files or {}).items()}
    elif len(pool) >= 2:
        logger.info("no judge given: skipping the tournament")
    return result


async def _tournament(
    task: str,
    pool: dict[str, dict[str, dict[str, Any]]],
    judge_config: Any | None,
    judge_client: Any | None,
    tournament: Any | None,
    protocol: str,
    mode: str,
    gamed: dict[str, dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    from metapo.eval.pairwise import PairwiseJudge
    from metapo.eval.tournament import TournamentConfig, run_tournament

    client = judge_client
    if client is None:
        from metapo.judges import build_judge

        client = build_judge(judge_config)
    input_label = "Task"
    try:
        from metapo.tasks import get_task

        input_label = get_task(task).judge_input_label or input_label
    except (ImportError, KeyError, ValueError):
        pass
    judge = PairwiseJudge(
        client,
        task=task,
        input_label=input_label,
        mode=mode,  # type: ignore[arg-type]
        both_orders=protocol == "swap",
    )
    try:
        outcome = await run_tournament(pool, judge, tournament or TournamentConfig(), gamed=gamed)
    finally:
        if judge_client is None and hasattr(client, "aclose"):
            await client.aclose()
    data = outcome.to_dict()
    data["protocol"] = protocol
    data["mode"] = mode
    return data


def format_tables(result: dict[str, Any]) -> str:
    """Plain-text tables of an eval result (task metrics, lengths, ratings, LC win rates)."""
    lines: list[str] = []
    metrics = result.get("metrics") or {}
    lengths = result.get("lengths") or {}
    models = list(result.get("files") or lengths)
    numeric_keys: list[str] = []
    for values in metrics.values():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in numeric_keys:
                numeric_keys.append(key)
    header = ["model", *numeric_keys, "words", "truncated"]
    rows = []
    for m in models:
        vals = metrics.get(m, {})
        length = lengths.get(m, {})
        rows.append(
            [
                m,
                *(_fmt(vals.get(k)) for k in numeric_keys),
                _fmt(length.get("words_mean")),
                _fmt(length.get("truncated_fraction")),
            ]
        )
    lines += [f"Task metrics ({result.get('task')})", _table(header, rows)]
    tour = result.get("tournament")
    if tour:
        rows = []
        order = sorted(tour["models"], key=lambda m: -tour["elo"][m]["mean"])
        for m in order:
            bt = tour["bradley_terry"][m]
            lc = tour.get("length_controlled", {}).get(m)
            rows.append(
                [
                    m,
                    f"{tour['elo'][m]['mean']:.0f} ± {tour['elo'][m]['std']:.0f}",
                    f"{bt['rating']:.0f} [{bt['ci_low']:.0f}, {bt['ci_high']:.0f}]",
                    f"{lc['win_rate']:.1f}" if lc else "",
                    f"{lc['lc_win_rate']:.1f}" if lc else "",
                ]
            )
        s = tour["settings"]
        lines += [
            "",
            f"Tournament: {s['runs']} runs x {s['matches']} matches, protocol {tour.get('protocol')}, "
            f"{tour['judged']} comparisons judged ({tour['unreadable']} unreadable, {tour['ties']} ties)",
            _table(
                [
                    "model",
                    "Elo (mean ± std)",
                    f"BT [{int(100 * tour['bt_confidence'])}% CI]",
                    f"WR vs {s.get('lc_baseline') or '-'}",
                    "LC WR",
                ],
                rows,
            ),
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), sep, *(fmt.format(*r) for r in rows)])


def _named_files(specs: Any) -> dict[str, Path]:
    out = {}
    for spec in specs or ():
        name, sep, path = str(spec).partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lc-gamed takes NAME=FILE pairs, got {spec!r}")
        out[name] = Path(path)
    return out


def _eval(args: argparse.Namespace) -> int:
    from metapo.eval.tournament import TournamentConfig
    from metapo.files import check_output_file, require_file

    # Every input and the output are checked before hours of judging, not after.
    for path in args.generations:
        require_file(path, "generations file")
    gamed_files = _named_files(args.lc_gamed)
    for path in gamed_files.values():
        require_file(path, "--lc-gamed file")
    out = check_output_file(args.out or args.generations[0].parent / f"eval-{args.task}.json", "--out")
    judge_config = load_judge_config(args.judge_config) if args.judge_config else None
    baseline = None
    if not args.no_lc and len(args.generations) >= 2:
        from metapo.eval.generate import load_generations

        baseline = args.baseline or load_generations(args.generations[0])[0]
    tournament = TournamentConfig(
        matches=args.matches,
        runs=args.runs,
        seed=args.seed,
        concurrency=args.concurrency,
        n_bootstrap=args.bootstrap,
        lc_baseline=baseline,
        lc_max_prompts=args.lc_max_prompts,
    )
    result = run_eval(
        args.task,
        list(args.generations),
        judge_config=judge_config,
        tournament=tournament,
        protocol=args.protocol,
        mode=args.mode,
        gamed_files=gamed_files,
    )
    from metapo.files import atomic_write_json

    atomic_write_json(out, result)
    sys.stdout.write(format_tables(result))
    sys.stdout.write(f"\nwrote {out}\n")
    return 0
