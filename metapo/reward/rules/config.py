"""The ``rules:`` block of a ``metapo train`` config, and building the rule it names.

A run has two rewards to build on: ``rubric`` (the judge scoring against the evolving rubric) and ``answer`` (a
verifier, for tasks with gold answers such as ``math``). ``base`` picks the one a length rule reshapes;
``options`` holds the rule's own settings, spelled as its constructor's keyword arguments. The multi-objective
rules name their components among ``rubric`` and ``answer``::

    rules: {name: slpo, base: answer, options: {alpha: 0.5}}
    rules: {name: constrained, options: {task: answer, constraints: {rubric: 0.6}, lr: 0.1}}
    rules: {name: maxmin, options: {groups: [answer, rubric]}}
    rules: {name: orchestrator, options: {rewards: [answer, rubric], weights: [0.7, 0.3]}}   # or weights: COLUMN
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.reward.rules.base import RewardFn

LENGTH_RULES = ("grpo_lambda", "slpo", "hapo", "curriculum")
RULES = (*LENGTH_RULES, "dler", "drpo", "constrained", "maxmin", "orchestrator")

#: GRPOConfig settings a rule brings; the run's own ``training`` keys override them.
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    # DLER [V-code]: REINFORCE++-baseline whitening over the batch, clip-higher, token-mean loss, small KL loss.
    "dler": {
        "scale_rewards": "batch",
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "loss_type": "dapo",
        "beta": 5e-4,
    },
    # DRPO: no reference KL; whole groups per micro-batch.
    "drpo": {"beta": 0.0, "steps_per_generation": 1},
}


@dataclass
class RuleSettings:
    """A GRPO reward or advantage rule on top of the run's reward (``metapo.reward.rules``)."""

    name: str = field(default="slpo", metadata={"help": "One of: " + ", ".join(RULES) + "."})
    base: str = field(
        default="rubric",
        metadata={
            "help": "Reward a length rule (and dler, drpo) builds on: rubric (the judge) or answer (verifier)."
        },
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "The rule's settings, e.g. {alpha: 0.5} for slpo."}
    )

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"rules.name={self.name!r}; choose one of {', '.join(RULES)}")
        if self.base not in ("rubric", "answer"):
            raise ValueError(f"rules.base={self.base!r}; choose rubric or answer")
        if self.name == "dler" and self.base != "answer":
            raise ValueError("rules.name=dler is a verifiable-reward recipe: set rules.base=answer")


def training_defaults(settings: RuleSettings) -> dict[str, Any]:
    """GRPOConfig keys the rule sets unless the run's ``training`` block sets them."""
    return dict(TRAINING_DEFAULTS.get(settings.name, {}))


def build_rule(
    settings: RuleSettings,
    *,
    rubric: RewardFn,
    check: Callable[[str, str], bool] | None,
    num_generations: int,
    eos_token_ids: Sequence[int] = (),
    answer_column: str = "gold_answer",
) -> tuple[RewardFn, dict[str, Any]]:
    """The reward function to hand to the trainer, and the ``RuleGRPOTrainer`` keyword arguments it needs.

    Args:
        settings: The ``rules`` block.
        rubric: The run's rubric reward.
        check: The task's answer checker (``None`` when the task has no gold answers).
        num_generations: The trainer's ``num_generations``.
        eos_token_ids: The policy's end-of-sequence ids (DLER's truncation rule).
        answer_column: Dataset column with the gold answers.
    """
    from metapo.reward.gates import RequireEOS
    from metapo.reward.rules import length, multi
    from metapo.reward.rules.verifiable import AnswerReward

    gates = (RequireEOS(penalty=0.0),) if settings.name == "dler" else ()
    rewards: dict[str, RewardFn] = {"rubric": rubric}
    if check is not None:
        rewards["answer"] = AnswerReward(
            check, answer_column=answer_column, gates=gates, eos_token_ids=eos_token_ids
        )
    opts = dict(settings.options)
    base = _pick(rewards, settings.base, settings.name)
    name = settings.name
    try:
        if name == "grpo_lambda":
            return length.GRPOLambda(base, num_generations=num_generations, **opts), {}
        if name == "slpo":
            return length.SLPO(base, num_generations=num_generations, **opts), {}
        if name == "hapo":
            return length.HAPO(base, **opts), {}
        if name == "curriculum":
            return length.CurriculumLength(base, **opts), {}
        if name == "dler":
            dynamic = bool(opts.pop("dynamic_sampling", True))
            _reject_unknown(name, opts)
            return base, {"dynamic_sampling": dynamic}
        if name == "drpo":
            from metapo.reward.rules.drpo import DRPOLoss

            return base, {"drpo": DRPOLoss(**opts)}
        if name == "constrained":
            task = _pick(rewards, opts.pop("task", "answer"), name)
            limits = opts.pop("constraints", {})
            if not isinstance(limits, Mapping) or not limits:
                raise ValueError("rules.options.constraints must map reward names to thresholds")
            pairs = [(_pick(rewards, k, name), float(v)) for k, v in limits.items()]
            return multi.ConstrainedReward(task, pairs, **opts), {}
        if name == "maxmin":
            groups = [_pick(rewards, k, name) for k in opts.pop("groups", ["answer", "rubric"])]
            return multi.MaxMinReward(groups, **opts), {}
        names = opts.pop("rewards", ["answer", "rubric"])
        weights = opts.pop("weights", [1.0 / len(names)] * len(names))
        return multi.OrchestratedReward([_pick(rewards, k, name) for k in names], weights, **opts), {}
    except TypeError as exc:  # an unknown option name
        raise ValueError(f"rules.options for {name}: {exc}") from exc


def _pick(rewards: Mapping[str, RewardFn], key: str, rule: str) -> RewardFn:
    if key in rewards:
        return rewards[key]
    if key == "answer":
        raise ValueError(
            f"rules {rule}: the answer reward needs a task with gold answers and an answer check (task: math); "
            "use rubric instead"
        )
    raise ValueError(f"rules {rule}: unknown reward {key!r}; available: {', '.join(sorted(rewards))}")


def _reject_unknown(rule: str, opts: dict[str, Any]) -> None:
    if opts:
        raise ValueError(f"rules.options for {rule}: unknown option(s) {', '.join(sorted(opts))}")
