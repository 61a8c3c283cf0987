"""The online trainer: rounds of sampling, preference labelling and a preference-objective update.

Round t turns the policy π_t into π_{t+1}:

1. sample K responses per prompt from π_t (transformers ``generate``, or vLLM when installed with a GPU);
2. ask the preference oracle for each prompt's K×K preference matrix;
3. build pairs and columns as the method says (:mod:`metapo.online.methods`): hard labels, win-rate targets, and
   the log-probabilities of the pair under the initial policy, π_t and earlier iterates, all computed by one
   function (:func:`metapo.train.preference.completion_logps`) with the tokenisation the trainer itself uses;
4. fit π_{t+1} with :class:`metapo.train.preference.PreferenceTrainer` and the method's registered loss (EGPO
   and Nash-MP fit twice: a look-ahead policy, then from π_t again against the look-ahead policy's samples); SPO
   instead runs TRL's ``GRPOTrainer`` with :class:`metapo.online.spo.SelfPlayWinRate`;
5. save π_{t+1} to ``round-XXXX/`` and the run state atomically, so an interrupted run resumes at the next round.

Optionally each round ends with a win rate against the initial policy, judged by the same oracle on held-out
prompts (``eval_prompts``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metapo.config import to_dict
from metapo.files import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from metapo.judges import JudgeConfig
from metapo.reward.rubric_reward import RubricRewardConfig

from .methods import OnlineMethod, get_method
from .oracle import PreferenceOracle, win_rates

logger = logging.getLogger(__name__)

# PreferenceConfig/GRPOConfig settings the trainer owns; a config may not set them in ``training``.
_OWNED = ("output_dir", "objective", "objective_kwargs", "seed", "max_length", "save_strategy", "report_to")


@dataclass
class OracleConfig:
    """Where preferences come from (see :mod:`metapo.online.oracle`)."""

    kind: str = field(
        default="pairwise",
        metadata={
            "help": "pairwise (LLM judge, both orders), rubric (LLM judge scores a rubric; Bradley-Terry), "
            "reward_model (a sequence-classification model, Bradley-Terry; a `metapo train-rm` model as it was "
            "trained, a GPM with its own preferences) or rule (regex count; smoke runs)."
        },
    )
    judge: JudgeConfig = field(
        default_factory=JudgeConfig, metadata={"help": "The LLM judge (pairwise, rubric)."}
    )
    mode: str = field(default="tag", metadata={"help": "Pairwise verdict reading: tag or logprobs."})
    both_orders: bool = field(default=True, metadata={"help": "Judge each pair in both orders (pairwise)."})
    rubric: str | None = field(
        default=None,
        metadata={"help": "kind=rubric: a rubric file or a task baseline name (default: the task's)."},
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "kind=reward_model: model path or hub id."}
    )
    pattern: str | None = field(
        default=None, metadata={"help": "kind=rule: regex whose match count is the score."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Bradley-Terry temperature of score-based kinds."}
    )
    reward: RubricRewardConfig = field(
        default_factory=RubricRewardConfig,
        metadata={"help": "kind=rubric: how the judge scores the rubric (the reward.* settings of metapo train)."},
    )

    def __post_init__(self) -> None:
        if self.kind not in ("pairwise", "rubric", "reward_model", "rule"):
            raise ValueError(f"oracle.kind={self.kind!r}; choose pairwise, rubric, reward_model or rule")
        if self.kind == "rule" and not self.pattern:
            raise ValueError("oracle.kind=rule needs oracle.pattern (a regex), e.g. pattern='[aeiou]'")
        if self.kind == "reward_model" and not self.reward_model:
            raise ValueError("oracle.kind=reward_model needs oracle.reward_model (a model path or hub id)")
        if self.mode not in ("tag", "logprobs"):
            raise ValueError(f"oracle.mode={self.mode!r}; choose tag or logprobs")


@dataclass
class OnlineConfig:
    """A ``metapo train-online`` run."""

    method: str = field(default="sppo", metadata={"help": "Online method (metapo train-online --list)."})
    model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={"help": "Initial policy and reference: a local path, hub id, embedded:NAME, or 'tiny'."},
    )
    output_dir: str = field(default="runs/online", metadata={"help": "Run directory."})
    task: str = field(default="essay", metadata={"help": "Task whose prompts are used (metapo tasks)."})
    dataset: str | None = field(
        default=None, metadata={"help": "Data source for the task (default: built-in)."}
    )
    split: str = field(default="train", metadata={"help": "Split of the training prompts."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})
    rounds: int = field(default=3, metadata={"help": "Number of rounds (policy updates)."})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "Prompts sampled per round (default: all, in a fixed order)."}
    )
    samples_per_prompt: int = field(default=4, metadata={"help": "K responses per prompt and round (>= 2)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Length cap of sampled responses."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    backend: str = field(default="auto", metadata={"help": "Sampling backend: auto, hf or vllm."})
    max_length: int = field(default=512, metadata={"help": "Prompt + response tokens seen by the update."})
    objective_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Hyperparameters of the method's loss (metapo objectives)."}
    )
    training: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Per-round PreferenceConfig fields (GRPOConfig for spo): learning_rate, num_train_epochs…"
        },
    )
    oracle: OracleConfig = field(default_factory=OracleConfig, metadata={"help": "The preference oracle."})
    eval_prompts: int = field(
        default=0,
        metadata={"help": "Held-out prompts (from the test split) for the win rate vs round 0; 0: off."},
    )
    eval_samples: int = field(default=4, metadata={"help": "Responses per eval prompt and policy."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and training."})

    def __post_init__(self) -> None:
        method = get_method(self.method)  # raises with the known names
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt={self.samples_per_prompt}; self-play needs at least 2")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}; run at least one round")
        owned = sorted(set(self.training) & set(_OWNED))
        if owned:
            raise ValueError(
                f"training.{owned[0]} is set by the online trainer; use the top-level setting instead"
            )
        if method.objective is not None:
            from metapo.objectives import get_objective

            get_objective(method.objective).hyperparameters(self.objective_kwargs)  # unknown names raise


# ---------------------------------------------------------------------------------------------------------------
# Oracles from config
# ---------------------------------------------------------------------------------------------------------------


def build_oracle(config: OracleConfig, task: Any, run_dir: Path) -> PreferenceOracle:
    """The oracle a config describes (the judge client is built here; in-process judges load now)."""
    from .oracle import JudgeOracle, ScoreOracle, count_matches

    if config.kind == "rule":
        return ScoreOracle(count_matches(config.pattern or ""), config.temperature)
    if config.kind == "reward_model":
        if (Path(config.reward_model or "") / "metapo_rm.json").is_file():
            # Saved by `metapo train-rm`: scored as it was trained; a GPM answers with its own (intransitive) P.
            from metapo.prefmodels.scorer import RewardModel

            model = RewardModel.load(config.reward_model or "")
            return model if model.spec.kind == "gpm" else ScoreOracle(model, config.temperature)
        from .oracle import RewardModelScore

        return ScoreOracle(RewardModelScore(config.reward_model or ""), config.temperature)
    from metapo.judges import build_judge

    client = build_judge(config.judge)
    if config.kind == "pairwise":
        from metapo.eval.pairwise import PairwiseJudge

        judge = PairwiseJudge(
            client,
            task=getattr(task, "name", ""),
            input_label=getattr(task, "judge_input_label", None) or "Task",
            mode=config.mode,  # type: ignore[arg-type]
            both_orders=config.both_orders,
        )
        return JudgeOracle(judge)
    from metapo.reward.rubric_reward import RubricReward
    from metapo.rubric.active import ActiveRubrics
    from metapo.rubric.store import RubricStore
    from metapo.train.run import resolve_initial_rubric

    rubrics = ActiveRubrics(RubricStore(run_dir / "rubrics"), resolve_initial_rubric(config.rubric, task))
    reward_config = dataclasses.replace(
        config.reward,
        judge_persona=task.judge_persona or config.reward.judge_persona,
        input_label=task.judge_input_label or config.reward.input_label,
    )
    return ScoreOracle(RubricReward(client, rubrics, reward_config), config.temperature)


# ---------------------------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------------------------


def _score_targets(matrix: np.ndarray) -> np.ndarray:
    # GPO's antisymmetric score from a probability: logit P, clipped so hard verdicts (0/1) stay finite.
    p = np.clip(matrix, 0.01, 0.99)
    logits = np.log(p / (1.0 - p))
    n = logits.shape[0]
    return (logits.sum(axis=1) - np.diag(logits)) / max(n - 1, 1)


def build_pairs(
    method: OnlineMethod,
    prompt: Any,
    samples: Sequence[str],
    matrix: np.ndarray,
    *,
    reference_samples: Sequence[str] = (),
    cross: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The training rows one prompt contributes, as ``{prompt, chosen, rejected, [columns]}`` dicts.

    Args:
        method: The online method.
        prompt: The prompt (text or chat messages).
        samples: K responses of the current policy.
        matrix: Their K×K preference matrix.
        reference_samples: XPO: responses of the reference, one per policy sample.
        cross: XPO: ``cross[i, j] = P(samples[i] ≻ reference_samples[j])``.

    Returns:
        Rows with ``chosen``/``rejected`` texts and, for soft-target methods, ``chosen_preference`` and
        ``rejected_preference``; pairs of identical texts and (for hard labels) ties are left out.
    """
    rows: list[dict[str, Any]] = []
    if method.pairs == "policy_vs_reference":
        for i, (mine, theirs) in enumerate(zip(samples, reference_samples, strict=True)):
            p = float(cross[i, i])  # type: ignore[index]
            if mine == theirs or p == 0.5:
                continue
            chosen, rejected = (mine, theirs) if p > 0.5 else (theirs, mine)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "calibration": theirs})
        return rows
    rates = win_rates(matrix, self_play=True)
    centred = _score_targets(matrix) if method.targets == "score" else rates - 0.5
    if method.pairs == "disjoint":
        candidates = [(i, i + 1) for i in range(0, len(samples) - 1, 2)]
    elif method.pairs == "best_worst":
        best, worst = int(np.argmax(rates)), int(np.argmin(rates))
        candidates = [] if rates[best] == rates[worst] else [(best, worst)]
    else:
        candidates = list(zip(*np.triu_indices(len(samples), k=1), strict=True))
    for i, j in candidates:
        i, j = int(i), int(j)
        if samples[i] == samples[j]:
            continue
        if method.targets is None:
            p = float(matrix[i, j])
            if p == 0.5 or (method.confirm and p < 0.5):
                continue  # a tie carries no label; INPO and APO keep only pairs the oracle confirms
            i, j = (i, j) if p > 0.5 else (j, i)
        elif centred[j] > centred[i]:
            i, j = j, i
        row = {"prompt": prompt, "chosen": samples[i], "rejected": samples[j]}
        if method.targets is not None:
            row["chosen_preference"], row["rejected_preference"] = float(centred[i]), float(centred[j])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------------


class OnlineTrainer:
    """Runs an online method for ``config.rounds`` rounds (see the module docstring).

    Args:
        config: The run configuration.
        oracle: The preference oracle; built from ``config.oracle`` when omitted.
        prompts: Training prompts (text or chat messages); loaded from ``config.task`` when omitted.
        eval_prompts: Held-out prompts for the win rate against the initial policy; by default
            ``config.eval_prompts`` prompts of the task's test split.
    """

    def __init__(
        self,
        config: OnlineConfig,
        oracle: PreferenceOracle | None = None,
        *,
        prompts: Sequence[Any] | None = None,
        eval_prompts: Sequence[Any] | None = None,
    ) -> None:
        from metapo.tasks import get_task

        self.config = config
        self.method = get_method(config.method)
        self.run_dir = Path(config.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.task = get_task(config.task)
        self.oracle = oracle if oracle is not None else build_oracle(config.oracle, self.task, self.run_dir)
        self.hparams: dict[str, Any] = {}
        if self.method.objective is not None:
            from metapo.objectives import get_objective

            self.hparams = get_objective(self.method.objective).hyperparameters(config.objective_kwargs)
        self.prompts = (
            list(prompts) if prompts is not None else self._load_prompts(config.split, config.limit)
        )
        if eval_prompts is not None:
            self.eval_prompts = list(eval_prompts)
        else:
            self.eval_prompts = self._load_prompts("test", config.eval_prompts) if config.eval_prompts else []
        self.state = self._load_state()
        self.prompts = self._fitting(self.prompts, "training")
        self.eval_prompts = self._fitting(self.eval_prompts, "eval") if self.eval_prompts else []

    # -- setup -----------------------------------------------------------------------------------------------

    def _load_prompts(self, split: str, limit: int | None) -> list[Any]:
        rows = self.task.load(self.config.dataset, split, limit, self.config.seed)
        return [row["prompt"] for row in rows]

    def _fitting(self, prompts: list[Any], kind: str) -> list[Any]:
        """The prompts that leave room for a response within ``max_length`` tokens (others are dropped)."""
        from transformers import AutoTokenizer

        from metapo.eval.generate import render_prompt

        tokenizer = AutoTokenizer.from_pretrained(self.state["initial"])
        limit = self.config.max_length - self.config.max_new_tokens
        kept = [
            p
            for p in prompts
            if len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) < limit
        ]
        if not kept:
            raise ValueError(
                f"every {kind} prompt is longer than max_length - max_new_tokens = {limit} tokens: raise max_length"
            )
        if len(kept) < len(prompts):
            logger.warning(
                "dropped %d %s prompt(s) longer than %d tokens", len(prompts) - len(kept), kind, limit
            )
        return kept

    def _load_state(self) -> dict[str, Any]:
        path = self.run_dir / "state.json"
        if path.exists():
            state = json.loads(path.read_text("utf-8"))
            if state.get("method") != self.config.method:
                raise ValueError(
                    f"{self.run_dir} holds a {state.get('method')} run; use a new output_dir for {self.config.method}"
                )
            logger.info("resuming %s after round %d", self.run_dir, state["rounds_done"])
            return state
        initial = self._initial_model()
        state = {"method": self.config.method, "rounds_done": 0, "initial": initial, "policies": [initial]}
        atomic_write_text(self.run_dir / "config.yaml", _yaml(to_dict(self.config)))
        atomic_write_json(self.run_dir / "state.json", state)
        return state

    def _initial_model(self) -> str:
        if self.config.model == "tiny":
            from metapo.models.tiny import build_tiny_model

            return str(build_tiny_model(self.run_dir / "initial", seed=self.config.seed))
        from metapo.eval.generate import resolve_model

        return resolve_model(self.config.model)[0]

    # -- the loop --------------------------------------------------------------------------------------------

    def train(self) -> list[dict[str, Any]]:
        """Run the remaining rounds; returns every round's metrics (also in ``metrics.jsonl``)."""
        while self.state["rounds_done"] < self.config.rounds:
            t = self.state["rounds_done"]
            metrics = self._round(t)
            if self.eval_prompts:
                metrics["win_rate_vs_initial"] = self.win_rate_vs_initial(self.state["policies"][-1])
            metrics["round"] = t + 1
            append_jsonl(self.run_dir / "metrics.jsonl", [metrics])
            logger.info("round %d: %s", t + 1, metrics)
        return read_jsonl(self.run_dir / "metrics.jsonl")

    def _round(self, t: int) -> dict[str, Any]:
        out = self.run_dir / f"round-{t + 1:04d}"
        policy = self.state["policies"][-1]
        prompts = self._round_prompts(t)
        if self.method.grpo:
            metrics = self._grpo_round(policy, prompts, out, t)
            self._commit(out, out)
            return metrics
        k = self.config.samples_per_prompt
        samples = self.sample(policy, prompts, k, seed=self._seed(t, 0))
        metrics: dict[str, Any] = {}
        if self.method.pairs == "policy_vs_reference":
            reference_samples = self.sample(self.state["initial"], prompts, k, seed=self._seed(t, 1))
            crosses = self._preferences(prompts, samples, reference_samples)
            rows = [
                row
                for prompt, s, r, c in zip(prompts, samples, reference_samples, crosses, strict=True)
                for row in build_pairs(self.method, prompt, s, np.empty((0, 0)), reference_samples=r, cross=c)
            ]
        else:
            matrices = self._preferences(prompts, samples)
            rows = [
                row
                for prompt, s, m in zip(prompts, samples, matrices, strict=True)
                for row in build_pairs(self.method, prompt, s, m)
            ]
            metrics["win_rate_spread"] = float(
                np.mean([np.ptp(win_rates(m, self_play=True)) for m in matrices])
            )
        metrics["pairs"] = len(rows)
        if not rows:
            logger.warning(
                "round %d: the oracle found no preference among the samples; the policy is kept", t + 1
            )
            self._commit(out, None)
            return metrics
        rows = self._attach_logps(rows, policy)
        if self.method.extragradient:
            look_ahead = out.with_name(out.name + "-half")
            metrics["half_loss"] = self._fit(policy, rows, look_ahead)
            opponents = self.sample(str(look_ahead), prompts, k, seed=self._seed(t, 2))
            rows = self._retarget(rows, prompts, samples, opponents)
        append_jsonl(self.run_dir / "pairs" / f"round-{t + 1:04d}.jsonl", rows)
        metrics["loss"] = self._fit(policy, rows, out)
        self._commit(out, out)
        return metrics

    def _round_prompts(self, t: int) -> list[Any]:
        n = self.config.prompts_per_round
        if n is None or n >= len(self.prompts):
            return list(self.prompts)
        start = (t * n) % len(self.prompts)
        return [self.prompts[(start + i) % len(self.prompts)] for i in range(n)]

    def _seed(self, t: int, stream: int) -> int:
        return self.config.seed * 1_000_003 + 1000 * t + 100 * stream

    def _commit(self, out: Path, trained: Path | None) -> None:
        """Record round t as done; the new policy is ``trained`` (or the old one when nothing was learned)."""
        state = dict(self.state)
        policy = str(trained) if trained is not None else state["policies"][-1]
        state["policies"] = [*state["policies"], policy]
        state["rounds_done"] = state["rounds_done"] + 1
        atomic_write_json(self.run_dir / "state.json", state)
        self.state = state
        for leftover in out.parent.glob(out.name + "-half"):
            shutil.rmtree(leftover, ignore_errors=True)

    # -- sampling and preferences ------------------------------------------------------------------------------

    def sample(self, model_path: str, prompts: Sequence[Any], n: int, *, seed: int) -> list[list[str]]:
        """``n`` responses per prompt from the model at ``model_path``."""
        from metapo.eval.generate import GenerationSettings, make_generator, render_prompt

        settings = GenerationSettings(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_new_tokens=self.config.max_new_tokens,
            seed=seed,
            backend=self.config.backend,
            batch_size=self.config.generation_batch_size,
        )
        generator = make_generator(model_path, settings)
        rendered = [render_prompt(generator.tokenizer, p) for p in prompts for _ in range(n)]
        texts: list[str] = []
        size = max(1, self.config.generation_batch_size)
        for begin in range(0, len(rendered), size):
            texts.extend(text for text, _, _ in generator(rendered[begin : begin + size], seed + begin))
        del generator
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _preferences(
        self,
        prompts: Sequence[Any],
        samples: Sequence[Sequence[str]],
        opponents: Sequence[Sequence[str]] | None = None,
    ) -> list[np.ndarray]:
        async def ask() -> list[np.ndarray]:
            return await asyncio.gather(
                *(
                    self.oracle.preferences(p, s, None if opponents is None else opponents[i])
                    for i, (p, s) in enumerate(zip(prompts, samples, strict=True))
                )
            )

        return list(asyncio.run(ask()))

    def win_rate_vs_initial(self, model_path: str) -> float:
        """Mean ``P(y ≻ y₀)`` over eval prompts, ``y`` from the model and ``y₀`` from the initial policy."""
        n = self.config.eval_samples
        cache = self.run_dir / "eval" / "initial_samples.json"
        if cache.exists():
            initial = json.loads(cache.read_text("utf-8"))
        else:
            initial = self.sample(self.state["initial"], self.eval_prompts, n, seed=self._seed(0, 9))
            atomic_write_json(cache, initial)
        mine = self.sample(model_path, self.eval_prompts, n, seed=self._seed(0, 9))
        matrices = self._preferences(self.eval_prompts, mine, initial)
        return float(np.mean([m.mean() for m in matrices]))

    # -- updates ---------------------------------------------------------------------------------------------

    def _preference_config(self, out: Path) -> Any:
        from metapo.train.preference import PreferenceConfig

        settings = {
            "learning_rate": 1e-6,
            "per_device_train_batch_size": 4,
            "num_train_epochs": 1,
            "logging_steps": 10,
            "disable_tqdm": True,
        }
        settings.update(self.config.training)
        return PreferenceConfig(
            output_dir=str(out / "trainer"),
            objective=self.method.objective,
            objective_kwargs=self.hparams,
            max_length=self.config.max_length,
            save_strategy="no",
            report_to="none",
            seed=self.config.seed,
            **settings,
        )

    def _attach_logps(self, rows: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
        """Add the reference, previous-iterate and older-iterate log-prob columns the method's loss reads."""
        needed: dict[str, str] = {}
        if self.method.reference == "initial":
            needed["ref"] = self.state["initial"]
        elif self.method.reference == "previous":
            needed["ref"] = policy
        if self.method.previous:
            needed["previous"] = policy
        if self.method.older and len(self.state["policies"]) > 1:
            needed["older"] = self.state["policies"][-2]
        cache: dict[str, tuple[list[float], list[float]]] = {}
        out = [dict(r) for r in rows]
        for column, path in needed.items():
            if path not in cache:
                cache[path] = self._logps(path, rows)
            chosen, rejected = cache[path]
            for row, c, r in zip(out, chosen, rejected, strict=True):
                row[f"{column}_chosen_logps"], row[f"{column}_rejected_logps"] = c, r
        return out

    def _logps(self, model_path: str, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from metapo.train.preference import completion_logps

        model = AutoModelForCausalLM.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        batch = int(self.config.training.get("per_device_train_batch_size", 4))
        return completion_logps(model, tokenizer, rows, max_length=self.config.max_length, batch_size=batch)

    def _retarget(
        self,
        rows: list[dict[str, Any]],
        prompts: Sequence[Any],
        samples: Sequence[Sequence[str]],
        opponents: Sequence[Sequence[str]],
    ) -> list[dict[str, Any]]:
        """Replace each row's preference targets by its responses' win rates against the look-ahead samples."""
        crosses = self._preferences(prompts, samples, opponents)
        rate: dict[tuple[str, str], float] = {}
        for prompt, s, matrix in zip(prompts, samples, crosses, strict=True):
            key = json.dumps(prompt, sort_keys=True)
            for text, value in zip(s, win_rates(matrix, self_play=False), strict=True):
                rate[(key, text)] = float(value) - 0.5
        out = []
        for row in rows:
            key = json.dumps(row["prompt"], sort_keys=True)
            new = dict(row)
            new["chosen_preference"] = rate[(key, row["chosen"])]
            new["rejected_preference"] = rate[(key, row["rejected"])]
            out.append(new)
        return out

    def _fit(self, start: str, rows: list[dict[str, Any]], out: Path) -> float:
        """Train from the model at ``start`` on ``rows`` and save the result to ``out``; returns the mean loss."""
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from metapo.train.preference import PreferenceTrainer

        model = AutoModelForCausalLM.from_pretrained(start)
        tokenizer = AutoTokenizer.from_pretrained(start)
        trainer = PreferenceTrainer(
            model,
            self._preference_config(out),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        result = trainer.train()
        _save(model, tokenizer, out)
        shutil.rmtree(out / "trainer", ignore_errors=True)
        return float(result.training_loss)

    def _grpo_round(self, policy: str, prompts: Sequence[Any], out: Path, t: int) -> dict[str, Any]:
        import torch
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from .spo import SelfPlayWinRate

        k = self.config.samples_per_prompt
        settings: dict[str, Any] = {
            "learning_rate": 1e-6,
            "per_device_train_batch_size": k,
            "num_train_epochs": 1,
            "logging_steps": 10,
            "disable_tqdm": True,
            "beta": 0.0,
        }
        if not torch.cuda.is_available():  # GRPOConfig defaults to bf16, which a CPU cannot run
            settings.update(use_cpu=True, bf16=False)
        settings.update(self.config.training)
        if settings["per_device_train_batch_size"] % k:
            raise ValueError(
                f"training.per_device_train_batch_size={settings['per_device_train_batch_size']} must be a multiple of "
                f"samples_per_prompt={k}, so that each prompt's completions are rewarded together"
            )
        args = GRPOConfig(
            output_dir=str(out / "trainer"),
            num_generations=k,
            max_completion_length=self.config.max_new_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            save_strategy="no",
            report_to="none",
            seed=self._seed(t, 0),
            **settings,
        )
        reward = SelfPlayWinRate(self.oracle)
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        )
        result = trainer.train()
        _save(trainer.model, trainer.processing_class, out)
        shutil.rmtree(out / "trainer", ignore_errors=True)
        return {"loss": float(result.training_loss), "lonely_completions": reward.lonely}


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    """Save a model and tokenizer so that ``out`` appears complete or not at all."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
