"""The implicit-reward learning-rate recipe (Wang et al., arXiv 2507.00018) as a two-arm pipeline harness.

The paper finds that SFT's implicit KL term is constant in the policy, so nothing restrains the SFT update, and that
lowering the SFT learning rate before DPO improves the DPO model (up to 25 % relative win rate). This harness runs
the comparison on your data: for each arm (SFT learning rate ``lr`` and ``lr / k``) an SFT stage on the chosen
responses (objective ``implicit_sft``, plain SFT by default, or one of its f-divergence variants) and then an
*identical* DPO stage from that SFT model; both arms are evaluated on the same held-out pairs. It is a
configuration-level experiment, not a loss: the report gives, per arm, how far SFT moved the model from the base
(mean per-token log-ratio on held-out chosen and rejected responses) and the DPO model's held-out ranking accuracy,
implicit-reward accuracy and log-ratio margin (against its SFT reference), plus the differences between the arms. Every stage is resumable: a stage with its ``done.json``
and an arm with its ``eval.json`` are skipped on a rerun.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metapo.files import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class RecipeConfig:
    """Settings of ``metapo sft-recipe``."""

    model_name_or_path: str = field(default="tiny", metadata={"help": "Base model: path, hub id, or 'tiny'."})
    dataset_name: str = field(
        default="builtin", metadata={"help": "Preference pairs: 'builtin' or a .jsonl/.json file."}
    )
    eval_fraction: float = field(default=0.2, metadata={"help": "Held-out fraction for the evaluation."})
    output_dir: str = field(
        default="runs/sft-recipe", metadata={"help": "Run directory (one folder per arm)."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "SFT learning rate of the first arm."})
    lr_divisor: float = field(
        default=4.0, metadata={"help": "k: the second arm trains SFT at learning_rate / k."}
    )
    divergence: str = field(
        default="reverse_kl",
        metadata={"help": "SFT objective: reverse_kl (plain SFT), forward_kl, alpha or js."},
    )
    alpha: float = field(default=0.5, metadata={"help": "α of the alpha divergence."})
    sft: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Further PreferenceConfig arguments of the SFT stage (epochs, batch size, ...)."},
    )
    dpo: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "PreferenceConfig arguments of the DPO stage, the same in both arms (objective too)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split, the data order and the weights."})

    def __post_init__(self) -> None:
        if self.lr_divisor <= 0 or self.learning_rate <= 0:
            raise ValueError("learning_rate and lr_divisor must be > 0")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for stage in ("sft", "dpo"):
            clash = {"output_dir", "learning_rate" if stage == "sft" else "", "seed"} & set(
                getattr(self, stage)
            )
            if clash:
                raise ValueError(f"{stage}.{sorted(clash)[0]} is set by the recipe itself; remove it")


def _split(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(rows)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _train_stage(
    model_path: str, out: Path, rows: list[dict], objective: str, kwargs: dict[str, Any], args: dict[str, Any]
) -> str:
    """One PreferenceTrainer stage, skipped when ``out/done.json`` exists; returns the saved model's path."""
    if (out / "done.json").exists():
        logger.info("stage %s already done", out)
        return str(out)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.train.preference import PreferenceConfig, PreferenceTrainer

    cpu = not torch.cuda.is_available()
    settings = {
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": cpu,
        "bf16": False,
        "logging_steps": 10,
        "disable_tqdm": True,
        **args,
        "output_dir": str(out),
        "objective": objective,
        "objective_kwargs": kwargs,
    }
    config = PreferenceConfig(**settings)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **({"dtype": torch.float32} if cpu else {}))
    trainer = PreferenceTrainer(
        model, config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    atomic_write_json(out / "done.json", {"objective": objective, "objective_kwargs": kwargs, "args": args})
    return str(out)


def _logps(model_path: str, rows: list[dict]) -> dict[str, np.ndarray]:
    """Summed log-probabilities of the chosen and rejected responses, and their token counts, in one pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.eval.ranking import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [r["prompt"] for r in rows] * 2
    logps, counts = sequence_logprobs(
        model, tokenizer, prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    n = len(rows)
    return {"chosen": logps[:n], "rejected": logps[n:], "n_chosen": counts[:n], "n_rejected": counts[n:]}


def _evaluate(
    lr: float, base: dict[str, np.ndarray], sft: dict[str, np.ndarray], dpo: dict[str, np.ndarray]
) -> dict[str, float]:
    from metapo.eval.ranking import ranking_accuracy

    # DPO's implicit reward up to β: the log-ratio of the DPO model to its reference, the SFT model.
    margin = (dpo["chosen"] - sft["chosen"]) - (dpo["rejected"] - sft["rejected"])
    ranking = ranking_accuracy(dpo["chosen"], dpo["rejected"], dpo["n_chosen"], dpo["n_rejected"])
    return {
        "sft_learning_rate": lr,
        "sft_logratio_per_token_chosen": float(
            np.mean((sft["chosen"] - base["chosen"]) / np.maximum(base["n_chosen"], 1))
        ),
        "sft_logratio_per_token_rejected": float(
            np.mean((sft["rejected"] - base["rejected"]) / np.maximum(base["n_rejected"], 1))
        ),
        "dpo_ranking_accuracy": float(ranking["ranking_accuracy"]),
        "dpo_reward_accuracy": float(np.mean(margin > 0)),
        "dpo_logratio_margin": float(np.mean(margin)),
    }


def run_recipe(config: RecipeConfig) -> dict[str, Any]:
    """Run both arms and write ``report.json`` (see the module docstring).

    Returns:
        The report: the settings, one entry per arm, and ``delta`` (low-LR arm minus high-LR arm).
    """
    from metapo.prefmodels.data import load_rows

    root = Path(config.output_dir)
    base = config.model_name_or_path
    if base == "tiny":
        from metapo.models.tiny import build_tiny_model

        base = str(build_tiny_model(root / "tiny-init"))
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_rows(config.dataset_name)]
    train, held_out = _split(rows, config.eval_fraction, config.seed)
    base_logps = _logps(base, held_out)
    dpo_args = {k: v for k, v in config.dpo.items() if k not in ("objective", "objective_kwargs")}
    dpo_objective = config.dpo.get("objective", "dpo")
    dpo_kwargs = dict(config.dpo.get("objective_kwargs") or {})
    sft_kwargs = {"divergence": config.divergence}
    if config.divergence == "alpha":
        sft_kwargs["alpha"] = config.alpha
    arms: dict[str, Any] = {}
    for name, lr in (("lr", config.learning_rate), ("lr_over_k", config.learning_rate / config.lr_divisor)):
        evaluation = root / name / "eval.json"
        if evaluation.exists():
            arms[name] = json.loads(evaluation.read_text("utf-8"))
            continue
        sft_dir = _train_stage(
            base,
            root / name / "sft",
            train,
            "implicit_sft",
            sft_kwargs,
            {**config.sft, "learning_rate": lr, "seed": config.seed},
        )
        dpo_dir = _train_stage(
            sft_dir, root / name / "dpo", train, dpo_objective, dpo_kwargs, {**dpo_args, "seed": config.seed}
        )
        arms[name] = _evaluate(lr, base_logps, _logps(sft_dir, held_out), _logps(dpo_dir, held_out))
        atomic_write_json(evaluation, arms[name])
    delta = {k: arms["lr_over_k"][k] - arms["lr"][k] for k in arms["lr"]}
    report = {"config": asdict(config), "held_out": len(held_out), "arms": arms, "delta": delta}
    atomic_write_json(root / "report.json", report)
    return report
