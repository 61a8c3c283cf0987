"""``metapo build-pref``'s engine: one YAML config wired to a builder or a self-improvement loop.

The config is one mapping (see ``examples/prefdata_*.yaml``): the policy, the prompts file, the judge and its
rubric, sampling settings, and the method's own settings under ``options``. Loops (``evolve``, ``upo``,
``mcts-dpo``) also take ``rounds`` and ``train`` (preference-trainer settings, including ``objective`` and
``objective_kwargs``). Everything lands in ``output_dir``; a loop resumes from the rounds it finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from metapo.config import ConfigError, from_dict
from metapo.judges import JudgeConfig
from metapo.prefdata.common import (
    GenerationOptions,
    HFPolicy,
    ItemScores,
    read_rows,
    rubric_reward,
    write_rows,
)
from metapo.reward.rubric_reward import RubricRewardConfig

logger = logging.getLogger(__name__)

# Method name -> "module:options class".
METHODS = {
    "rso": "metapo.prefdata.rso:RSOOptions",
    "evolve": "metapo.prefdata.evolve:EvolveOptions",
    "upo": "metapo.prefdata.upo:UPOOptions",
    "mcts-dpo": "metapo.prefdata.mcts:MCTSOptions",
    "fspo": "metapo.prefdata.fspo:FSPOOptions",
    "mapl": "metapo.prefdata.mapl:MAPLOptions",
    "structured-po": "metapo.prefdata.structured:StructuredOptions",
    "rps": "metapo.prefdata.rps:RPSOptions",
}
# Loops and the objective each trains with by default.
LOOPS = {"evolve": "dpo", "upo": "upo", "mcts-dpo": "cdpo"}

DEFAULT_RUBRIC = (
    "Quality",
    "How well the response does what the request asks: correct, complete and clear. 0 means useless, 9 excellent.",
)


@dataclass
class BuildConfig:
    """Settings of ``metapo build-pref`` (YAML keys)."""

    model: str = field(default="", metadata={"help": "Policy: a model directory, a hub id, or 'tiny'."})
    prompts: str = field(
        default="", metadata={"help": "JSONL/JSON rows with a 'prompt' (MATH rows for mcts-dpo)."}
    )
    output_dir: str = field(default="runs/prefdata", metadata={"help": "Where data, rounds and models go."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many prompt rows."})
    eval_prompts: str | None = field(
        default=None,
        metadata={"help": "Loops: prompt rows each round is measured on (default: the prompts)."},
    )
    judge: JudgeConfig | None = field(default=None, metadata={"help": "The judge (JudgeConfig fields)."})
    reward: RubricRewardConfig = field(
        default_factory=RubricRewardConfig,
        metadata={"help": "How the judge scores a rubric (the reward.* settings of metapo train)."},
    )
    rubric: str | None = field(
        default=None, metadata={"help": "Rubric file the judge scores against (default: a one-item rubric)."}
    )
    pairwise: bool = field(
        default=False, metadata={"help": "rso: label accepted pairs with the pairwise judge."}
    )
    personas: dict[str, str] = field(
        default_factory=dict, metadata={"help": "fspo: user id -> description of that user's taste."}
    )
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    rounds: int = field(default=2, metadata={"help": "Loops: training rounds."})
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Loops: preference-trainer settings (objective, learning_rate, ...)."},
    )
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The method's own settings."})


def load_config(path: str | Path | None, overrides: list[str]) -> BuildConfig:
    """YAML file, then ``key=value`` overrides, into a :class:`BuildConfig`."""
    from metapo.config import deep_merge, load_yaml, parse_overrides

    data = load_yaml(Path(path)) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(BuildConfig, data)


def options_class(method: str) -> type:
    """The dataclass of a method's ``options``."""
    import importlib

    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def method_options(cls: type, cfg: BuildConfig) -> Any:
    """The method's options dataclass from ``cfg.options`` (unknown keys are an error naming the valid ones)."""
    return from_dict(cls, cfg.options, where="options.")


def check_config(method: str, cfg: BuildConfig) -> None:
    """Validate the method's options and, for loops, the training settings, before any model loads.

    Raises:
        ConfigError: Naming the bad key and the valid ones.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    method_options(options_class(method), cfg)
    if method in LOOPS:
        from metapo.train.preference import PreferenceConfig

        known = {f.name for f in fields(PreferenceConfig)}
        unknown = sorted(set(cfg.train) - known)
        if unknown:
            raise ConfigError(
                f"unknown train setting(s) {unknown}; use PreferenceConfig fields (see train-pref --help)"
            )


def _rubric(cfg: BuildConfig, default: Any = None) -> Any:
    from metapo.rubric.model import Rubric

    if cfg.rubric:
        path = Path(cfg.rubric)
        if not path.is_file():
            raise ConfigError(f"rubric file {path} does not exist")
        return Rubric.parse(path.read_text("utf-8"))
    return default if default is not None else Rubric.single(*DEFAULT_RUBRIC, min_score=0, max_score=9)


def _policy_path(cfg: BuildConfig) -> str:
    if not cfg.model:
        raise ConfigError("set model: a model directory, a hub id, or 'tiny' for a tiny random model")
    if cfg.model == "tiny":
        from metapo.models.tiny import build_tiny_model

        return str(build_tiny_model(Path(cfg.output_dir) / "tiny-init"))
    return cfg.model


def _prompt_rows(path: str | None, limit: int | None, what: str = "prompts") -> list[dict[str, Any]]:
    if not path:
        raise ConfigError(f"set {what}: a JSONL or JSON file of rows")
    rows = read_rows(path)[:limit] if limit else read_rows(path)
    if not rows:
        raise ConfigError(f"{what} file {path} has no rows")
    return rows


def _prompts(rows: list[dict[str, Any]], path: str) -> list[Any]:
    missing = [i for i, r in enumerate(rows) if r.get("prompt") is None]
    if missing:
        raise ConfigError(f"{path}: row {missing[0]} has no 'prompt'")
    return [r["prompt"] for r in rows]


class _Judge:
    """The judge client of a build, closed when the build ends."""

    def __init__(self, cfg: BuildConfig, method: str) -> None:
        if cfg.judge is None:
            raise ConfigError(f"{method} needs a judge: add a 'judge:' section (JudgeConfig fields)")
        from metapo.judges import build_judge

        self.client = build_judge(cfg.judge)
        self.store = Path(cfg.output_dir) / "rubrics"
        self.reward_config = cfg.reward

    def reward(self, rubric: Any, name: str = "default") -> Any:
        return rubric_reward(self.client, rubric, self.store / name, **asdict(self.reward_config))

    def close(self) -> None:
        asyncio.run(self.client.aclose())


def run_build(method: str, cfg: BuildConfig) -> dict[str, Any]:
    """Run one builder or loop.

    Args:
        method: One of :data:`METHODS`.
        cfg: The build settings.

    Returns:
        A summary: files written, row counts, per-round metrics for loops, and the objective to train with.

    Raises:
        ConfigError: Bad or missing settings (the message names the key and the fix).
    """
    check_config(method, cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if method in LOOPS:
        return _loop(cfg, method)
    runners: dict[str, Callable[[BuildConfig], dict[str, Any]]] = {
        "rso": _rso,
        "fspo": _fspo,
        "mapl": _mapl,
        "structured-po": _structured,
        "rps": _rps,
    }
    summary = runners[method](cfg)
    if not summary.get("rows"):
        logger.warning(
            "%s built no rows: check that the judge answers and tells the responses apart, or sample more",
            method,
        )
    return summary


def _rso(cfg: BuildConfig) -> dict[str, Any]:
    from metapo.eval.pairwise import PairwiseJudge
    from metapo.prefdata.rso import RSOOptions, build_rso

    opts = method_options(RSOOptions, cfg)
    rows = _prompt_rows(cfg.prompts, cfg.limit)
    judge = _Judge(cfg, "rso")
    try:
        policy = HFPolicy.from_pretrained(_policy_path(cfg), cfg.generation)
        pairwise = PairwiseJudge(judge.client) if cfg.pairwise else None
        built = build_rso(_prompts(rows, cfg.prompts), policy, judge.reward(_rubric(cfg)), opts, pairwise)
    finally:
        judge.close()
    path = write_rows(Path(cfg.output_dir) / "data.jsonl", built)
    return {"data": str(path), "rows": len(built), "objective": "hinge (beta=0.05) or dpo"}


def _mapl(cfg: BuildConfig) -> dict[str, Any]:
    from metapo.prefdata.mapl import MAPLOptions, build_mapl

    opts = method_options(MAPLOptions, cfg)
    policy = HFPolicy.from_pretrained(_policy_path(cfg), cfg.generation)
    built = build_mapl(_prompt_rows(cfg.prompts, cfg.limit), policy, opts)
    path = write_rows(Path(cfg.output_dir) / "data.jsonl", built)
    return {"data": str(path), "rows": len(built), "objective": "dpo"}


def _fspo(cfg: BuildConfig) -> dict[str, Any]:
    from metapo.prefdata.fspo import FSPOOptions, build_fspo, persona_rubric

    opts = method_options(FSPOOptions, cfg)
    if len(cfg.personas) < 2:
        raise ConfigError("fspo needs personas: a mapping of at least two user ids to descriptions")
    rows = _prompt_rows(cfg.prompts, cfg.limit)
    judge = _Judge(cfg, "fspo")
    try:
        policy = HFPolicy.from_pretrained(_policy_path(cfg), cfg.generation)
        personas = {u: judge.reward(persona_rubric(d), f"user-{u}") for u, d in cfg.personas.items()}
        train, heldout = build_fspo(_prompts(rows, cfg.prompts), policy, personas, opts)
    finally:
        judge.close()
    out = Path(cfg.output_dir)
    write_rows(out / "data.jsonl", train)
    write_rows(out / "heldout.jsonl", heldout)
    return {
        "data": str(out / "data.jsonl"),
        "heldout": str(out / "heldout.jsonl"),
        "rows": len(train),
        "heldout_rows": len(heldout),
        "objective": "fspo",
    }


def _structured(cfg: BuildConfig) -> dict[str, Any]:
    from metapo.prefdata.structured import (
        StructuredOptions,
        build_structured,
        criteria_rubric,
        require_positive_weights,
    )

    opts = method_options(StructuredOptions, cfg)
    rubric = require_positive_weights(_rubric(cfg, criteria_rubric()))
    rows = _prompt_rows(cfg.prompts, cfg.limit)
    judge = _Judge(cfg, "structured-po")
    try:
        policy = HFPolicy.from_pretrained(_policy_path(cfg), cfg.generation)
        stages = build_structured(rows, policy, ItemScores(judge.reward(rubric)), opts)
    finally:
        judge.close()
    out = Path(cfg.output_dir)
    files = [str(write_rows(out / f"stage-{i}.jsonl", stage)) for i, stage in enumerate(stages)]
    write_rows(out / "data.jsonl", [row for stage in stages for row in stage])
    return {
        "data": str(out / "data.jsonl"),
        "stages": files,
        "rows": sum(len(s) for s in stages),
        "objective": "dpo, one run per stage in order",
    }


def _rps(cfg: BuildConfig) -> dict[str, Any]:
    from metapo.prefdata.rps import RPSOptions, build_rps
    from metapo.rubric.model import Rubric

    opts = method_options(RPSOptions, cfg)
    default = Rubric.from_items(
        [
            {
                "id": name,
                "title": name,
                "description": f"How strongly the response shows {name}.",
                "max_score": 9,
            }
            for name in opts.objectives
        ]
    )
    rubric = _rubric(cfg, default)
    ids = [item.id for item in rubric.items]
    missing = [name for name in opts.objectives if name not in ids]
    if missing:
        raise ConfigError(f"rps objectives {missing} are not items of the rubric (its items: {ids})")
    rows = _prompt_rows(cfg.prompts, cfg.limit)
    judge = _Judge(cfg, "rps")
    try:
        policy = HFPolicy.from_pretrained(_policy_path(cfg), cfg.generation)
        items = ItemScores(judge.reward(rubric))

        def vector(prompts: Any, completions: Any) -> list[list[float] | None]:
            return [
                None if s is None else [s[1][name] for name in opts.objectives]
                for s in items(prompts, completions)
            ]

        records = build_rps(_prompts(rows, cfg.prompts), policy, vector, opts)
    finally:
        judge.close()
    path = write_rows(Path(cfg.output_dir) / "selections.jsonl", records)
    return {"selections": str(path), "rows": len(records)}


def _loop(cfg: BuildConfig, method: str) -> dict[str, Any]:
    from metapo.prefdata.loop import LoopConfig, run_rounds

    train = dict(cfg.train)
    loop = LoopConfig(
        output_dir=cfg.output_dir,
        rounds=cfg.rounds,
        objective=train.pop("objective", LOOPS[method]),
        objective_kwargs=dict(train.pop("objective_kwargs", None) or {}),
        train=train,
        generation=cfg.generation,
    )
    model = _policy_path(cfg)
    rows = _prompt_rows(cfg.prompts, cfg.limit)
    eval_rows = _prompt_rows(cfg.eval_prompts, None, "eval_prompts") if cfg.eval_prompts else rows
    if method == "mcts-dpo":
        build, measure, judge = _mcts_steps(cfg, rows, eval_rows)
    else:
        judge = _Judge(cfg, method)
        reward = judge.reward(_rubric(cfg))
        prompts, eval_prompts = (
            _prompts(rows, cfg.prompts),
            _prompts(eval_rows, cfg.eval_prompts or cfg.prompts),
        )
        build, measure = (_evolve_steps if method == "evolve" else _upo_steps)(
            cfg, model, prompts, eval_prompts, reward
        )
    try:
        history = run_rounds(model, loop, build, measure)
    finally:
        if judge is not None:
            judge.close()
    return {"rounds": history, "output_dir": cfg.output_dir, "objective": loop.objective}


def _evolve_steps(cfg: BuildConfig, model: str, prompts: list, eval_prompts: list, reward: Any):
    from metapo.prefdata.evolve import EvolveOptions, build_evolve, measure_evolve

    opts = method_options(EvolveOptions, cfg)
    return (
        lambda index, policy: build_evolve(prompts, policy, reward, opts),
        lambda policy: measure_evolve(eval_prompts, policy, reward, opts),
    )


def _upo_steps(cfg: BuildConfig, model: str, prompts: list, eval_prompts: list, reward: Any):
    from metapo.prefdata.upo import DropoutEstimator, UPOOptions, build_upo, measure_upo

    opts = method_options(UPOOptions, cfg)
    estimator = (
        DropoutEstimator(model, dropout=opts.estimator_dropout, seed=opts.seed) if opts.estimator else None
    )
    if estimator is not None and opts.estimator_data:
        estimator.fit(read_rows(opts.estimator_data))
    refit = estimator is not None and not opts.estimator_data
    return (
        lambda index, policy: build_upo(
            prompts, policy, reward, estimator, opts, refit=refit, round_index=index
        ),
        lambda policy: measure_upo(eval_prompts, policy, reward, opts.eval_samples),
    )


def _mcts_steps(cfg: BuildConfig, rows: list, eval_rows: list):
    from metapo.prefdata.mcts import MCTSOptions, build_mcts, math_verifier, measure_mcts, problem_rows

    opts = method_options(MCTSOptions, cfg)
    problems, eval_problems = problem_rows(rows), problem_rows(eval_rows)
    judge = _Judge(cfg, "mcts-dpo") if opts.self_eval_weight > 0 else None
    self_eval = judge.reward(_rubric(cfg)) if judge is not None else None
    return (
        lambda index, policy: build_mcts(problems, policy, math_verifier, opts, self_eval),
        lambda policy: measure_mcts(eval_problems, policy, math_verifier, opts.eval_samples),
        judge,
    )
