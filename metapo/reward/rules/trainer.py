"""The few things a reward function cannot do, as one small ``GRPOTrainer`` subclass and one callback.

A TRL reward function sees its process's completions and the trainer state; it cannot change the prompt before
generation, drop groups from the loss, or replace the loss. :class:`RuleGRPOTrainer` adds exactly those three:

- **prompt hooks**: a reward function with ``before_generation(inputs, step)`` rewrites the rows before they are
  generated from (the curriculum states its token budget in the prompt);
- **dynamic sampling** (DAPO, used by DLER): groups whose rewards are all equal carry no advantage; they are taken
  out of the loss and of its token count. TRL gives them advantage 0 but keeps their tokens in the normaliser
  and in the KL term. The batch is not refilled with new groups as DAPO does, so it simply gets smaller. The
  token count is exact for the token-mean losses (``dapo``, DLER's, and ``bnpo``); with ``grpo`` and
  ``dr_grpo`` a dropped sample still counts in the per-sequence mean's denominator;
- **DRPO's objective** instead of the clipped surrogate.

Everything else, DLER's batch whitening (``scale_rewards="batch"``) and clip-higher (``epsilon_high``) included, is
TRL's own. :class:`RuleStateCallback` saves the state of stateful rules (HAPO's history, the constrained
multipliers) in each checkpoint and restores it on resume; ``RuleGRPOTrainer`` adds it by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from metapo.files import atomic_write_text
from metapo.reward.rules.drpo import DRPOLoss

log = logging.getLogger(__name__)

STATE_FILE = "metapo_rules-{rank}.json"


def informative_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per sample: whether its group's scored rewards differ (so at least two were scored)."""
    grouped = rewards.view(-1, num_generations)
    scored = ~torch.isnan(grouped)
    lo = torch.where(scored, grouped, torch.inf).min(dim=1).values
    hi = torch.where(scored, grouped, -torch.inf).max(dim=1).values
    keep = scored.any(dim=1) & ~torch.isclose(hi, lo)
    return keep.repeat_interleave(num_generations)


class RuleGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` plus prompt hooks, dynamic sampling and the DRPO objective (see the module docstring).

    Args:
        dynamic_sampling: Drop zero-variance groups from the loss (DAPO/DLER).
        drpo: DRPO's settings; replaces the GRPO loss. Needs ``beta=0`` (DRPO has no reference KL) and
            ``steps_per_generation=1`` (TRL shuffles a generation batch before splitting it, which would split
            groups), and with several processes a ``per_device_train_batch_size`` that holds whole groups.
        *args, **kwargs: As for ``trl.GRPOTrainer``.
    """

    def __init__(
        self, *args: Any, dynamic_sampling: bool = False, drpo: DRPOLoss | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.drpo = drpo
        self._gathered_rewards: torch.Tensor | None = None
        if drpo is not None:
            if self.beta != 0.0:
                raise ValueError(f"DRPO has no reference-model KL: set beta=0 (got beta={self.beta})")
            if self.args.steps_per_generation != 1:
                raise ValueError(
                    f"DRPO needs whole groups in each micro-batch: set steps_per_generation=1 "
                    f"(got {self.args.steps_per_generation}; it defaults to gradient_accumulation_steps)"
                )
            if (
                self.accelerator.num_processes > 1
                and self.args.per_device_train_batch_size % self.num_generations
            ):
                raise ValueError(
                    "DRPO with several processes needs per_device_train_batch_size to be a multiple of "
                    f"num_generations ({self.args.per_device_train_batch_size} vs {self.num_generations})"
                )
        stateful = [fn for fn in self.reward_funcs if hasattr(fn, "state_dict")]
        if stateful:
            self.add_callback(RuleStateCallback(stateful))

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> Any:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Every process's rows: TRL computes the advantages from these.
        self._gathered_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        for fn in self.reward_funcs:
            hook = getattr(fn, "before_generation", None)
            if hook is not None:
                inputs = hook(inputs, self.state.global_step)
        output = super()._generate_and_score_completions(inputs)
        if not self.dynamic_sampling and self.drpo is None:
            return output
        mode = "train" if self.model.training else "eval"
        per_func = self._gathered_rewards
        assert per_func is not None
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable everywhere, as TRL treats it
        start = self.accelerator.process_index * len(inputs)
        local = slice(start, start + len(inputs))
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        if self.dynamic_sampling and mode == "train":
            keep = informative_groups(rewards, num_generations)
            self._metrics[mode]["dynamic_sampling/kept_groups"].append(keep.float().mean().item())
            mask = output["completion_mask"] * keep[local].to(output["completion_mask"].dtype).unsqueeze(1)
            output["completion_mask"] = mask
            loss_mask = mask if "tool_mask" not in output else mask * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        if self.drpo is not None:
            output["rule_reward"] = rewards[local]
            groups = torch.arange(rewards.numel(), device=rewards.device) // num_generations
            output["rule_group"] = groups[local]
        return output

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if self.drpo is None:
            return super()._compute_loss(model, inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
        )
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        loss, stats = self.drpo.loss(
            logps,
            logps.detach() if old is None else old,
            mask,
            inputs["rule_reward"],
            inputs["rule_group"],
            self.max_completion_length,
        )
        mode = "train" if self.model.training else "eval"
        for name, value in stats.items():
            self._metrics[mode][f"drpo/{name}"].append(value)
        return loss / self.current_gradient_accumulation_steps if mode == "train" else loss


class RuleStateCallback(TrainerCallback):
    """Saves stateful rules (``state_dict``/``load_state_dict``) with each checkpoint and restores them on resume.

    Each process writes its own file (``metapo_rules-<rank>.json``), since each keeps the state of what it saw.
    """

    def __init__(self, rules: Sequence[Any]) -> None:
        self.rules = list(rules)

    def _path(self, args: Any, step: int) -> Path:
        return Path(args.output_dir) / f"checkpoint-{step}" / STATE_FILE.format(rank=args.process_index)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = [{"rule": type(r).__name__, "state": r.state_dict()} for r in self.rules]
        path = self._path(args, state.global_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(saved))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            return
        path = self._path(args, state.global_step)
        if not path.exists():
            log.warning("resuming at step %d without %s: rule state starts empty", state.global_step, path)
            return
        saved = json.loads(path.read_text())
        if [s["rule"] for s in saved] != [type(r).__name__ for r in self.rules]:
            raise ValueError(f"{path} holds the state of other rules ({[s['rule'] for s in saved]})")
        for rule, entry in zip(self.rules, saved, strict=True):
            rule.load_state_dict(entry["state"])
