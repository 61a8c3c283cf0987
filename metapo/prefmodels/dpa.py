"""Directional Preference Alignment (DPA, arXiv 2402.18571): a direction in reward space, and rejection-sampling
fine-tuning conditioned on it.

A multi-objective reward model scores each response on several attributes, ``r(x, y) ∈ ℝᵏ`` (``kind: vector`` in
``metapo train-rm``). A user preference is a unit direction ``v`` (for two attributes ``v = (cos θ, sin θ)``) and the
reward is ``vᵀr(x, y)``. Training iterates: draw ``v`` per prompt and state its weights in the system prompt, sample
``N`` responses, keep ``argmax_y vᵀr(x, y)``, and fine-tune on the kept responses with TRL's ``SFTTrainer``. With one
fixed ``v`` this is best-of-N SFT on the scalar reward ``vᵀr``. Confidence: [R] (the angle range and the wording of
the system prompt are this implementation's choices).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from metapo.files import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

DIRECTION_SYSTEM_PROMPT = (
    "You are a helpful assistant. A reward model will rate your reply on each of these attributes, and your goal is "
    "to maximise the weighted sum {weights}. Negative weight means less of that attribute is better."
)


class AttributeScorer(Protocol):
    """Anything that rates responses on ``k`` attributes (a trained ``vector`` :class:`RewardModel`)."""

    def attribute_scores(self, prompts: Sequence[Any], responses: Sequence[Any]) -> torch.Tensor: ...


def direction(theta_degrees: float) -> tuple[float, float]:
    """The unit direction ``(cos θ, sin θ)`` over two attributes."""
    theta = math.radians(theta_degrees)
    return math.cos(theta), math.sin(theta)


def select(scores: torch.Tensor | Sequence[Sequence[float]], v: Sequence[float]) -> int:
    """Index of the response with the highest ``vᵀr`` (the first of equals).

    Args:
        scores: Attribute scores, shape ``(N, k)``.
        v: The direction, length ``k``.
    """
    table = torch.as_tensor(scores, dtype=torch.float64)
    weights = torch.as_tensor(list(v), dtype=torch.float64)
    if table.ndim != 2 or table.shape[1] != weights.shape[0]:
        raise ValueError(
            f"scores of shape {tuple(table.shape)} do not match a direction of length {len(weights)}"
        )
    return int(torch.argmax(table @ weights))


def weights_text(v: Sequence[float], attributes: Sequence[str]) -> str:
    """``"0.87 × helpfulness + 0.50 × verbosity"``."""
    terms = [f"{w:.2f} × {name}" for w, name in zip(v, attributes, strict=True)]
    return " + ".join(terms).replace("+ -", "- ")


def conditioned_prompt(prompt: Any, v: Sequence[float], attributes: Sequence[str]) -> list[dict[str, str]]:
    """The prompt as chat messages, with a system message stating the direction's weights.

    A prompt that is already a message list keeps its turns (an existing system message is replaced).
    """
    system = {
        "role": "system",
        "content": DIRECTION_SYSTEM_PROMPT.format(weights=weights_text(v, attributes)),
    }
    if isinstance(prompt, str):
        return [system, {"role": "user", "content": prompt}]
    return [system, *[dict(m) for m in prompt if m.get("role") != "system"]]


def sample_directions(
    n: int, rng: random.Random, low_degrees: float, high_degrees: float
) -> list[tuple[float, float]]:
    """``n`` two-attribute directions with angles uniform in ``[low, high]`` degrees."""
    return [direction(rng.uniform(low_degrees, high_degrees)) for _ in range(n)]


def rsft_rows(
    prompts: Sequence[Any],
    directions: Sequence[Sequence[float]],
    responses: Sequence[Sequence[str]],
    scores: Sequence[torch.Tensor],
    attributes: Sequence[str],
) -> list[dict[str, Any]]:
    """The fine-tuning rows of one round: for each prompt, the best response under its direction.

    Args:
        prompts: The prompts.
        directions: One direction per prompt.
        responses: The ``N`` sampled responses of each prompt.
        scores: Their attribute scores, ``(N, k)`` per prompt.
        attributes: Attribute names.

    Returns:
        Conversational prompt-completion rows (TRL's SFT format) that also record the direction, every candidate's
        scores and the index kept.
    """
    rows = []
    for prompt, v, candidates, table in zip(prompts, directions, responses, scores, strict=True):
        best = select(table, v)
        rows.append(
            {
                "prompt": conditioned_prompt(prompt, v, attributes),
                "completion": [{"role": "assistant", "content": candidates[best]}],
                "direction": [float(x) for x in v],
                "candidates": list(candidates),
                "scores": torch.as_tensor(table).tolist(),
                "best": best,
            }
        )
    return rows


@dataclass
class RSFTConfig:
    """Settings of ``metapo dpa-rsft``."""

    model: str = field(default="tiny", metadata={"help": "Policy: a local path, a hub id, or 'tiny'."})
    reward_model: str = field(
        default="", metadata={"help": "A vector reward model saved by metapo train-rm."}
    )
    prompts: str = field(
        default="builtin",
        metadata={"help": "'builtin' (the rating set's prompts) or a JSONL file with 'prompt'."},
    )
    output_dir: str = field(default="runs/dpa", metadata={"help": "Run directory (one folder per round)."})
    rounds: int = field(default=2, metadata={"help": "Rejection-sampling rounds."})
    samples: int = field(default=4, metadata={"help": "Responses sampled per prompt (N)."})
    angle_low: float = field(default=-45.0, metadata={"help": "Lowest direction angle θ in degrees."})
    angle_high: float = field(default=45.0, metadata={"help": "Highest direction angle θ in degrees."})
    max_new_tokens: int = field(default=64, metadata={"help": "Length of sampled responses."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    sft: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "TRL SFTConfig arguments for each round (learning_rate, ...)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of directions and sampling."})

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.samples < 1:
            raise ValueError("rounds and samples must be >= 1")
        if self.angle_low > self.angle_high:
            raise ValueError(f"angle_low ({self.angle_low}) must not exceed angle_high ({self.angle_high})")


def sample_responses(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[list[str]]:
    """``n`` sampled replies to each conversation (transformers generation, left padding)."""
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = side
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(
            **batch,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, batch["input_ids"].shape[1] :]
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [decoded[i * n : (i + 1) * n] for i in range(len(conversations))]


def run_rsft(
    config: RSFTConfig,
    scorer: AttributeScorer,
    attributes: Sequence[str],
    prompts: Sequence[Any],
    *,
    on_round: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> Path:
    """Directional rejection-sampling fine-tuning, resumable per round.

    Each round ``k`` writes ``round-k/data.jsonl`` (the kept responses with their directions and every candidate's
    scores) and ``round-k/model/``; a round whose ``round-k/done.json`` exists is skipped on a rerun.

    Args:
        config: The settings.
        scorer: Rates responses on ``attributes``.
        attributes: Attribute names, in the scorer's column order.
        prompts: Training prompts.
        on_round: Called with each round's rows (logging, tests).

    Returns:
        The directory of the final policy.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if len(attributes) != 2:
        raise ValueError(f"directions are drawn over two attributes, got {list(attributes)}")
    root = Path(config.output_dir)
    model_path = config.model
    if model_path == "tiny":
        from metapo.models.tiny import build_tiny_model

        model_path = str(build_tiny_model(root / "tiny-init"))
    atomic_write_json(root / "config.json", asdict(config))
    cpu = not torch.cuda.is_available()
    for k in range(1, config.rounds + 1):
        round_dir = root / f"round-{k}"
        if (round_dir / "done.json").exists():
            model_path = str(round_dir / "model")
            logger.info("round %d already done: %s", k, model_path)
            continue
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        policy = AutoModelForCausalLM.from_pretrained(model_path, **({"dtype": torch.float32} if cpu else {}))
        rng = random.Random(config.seed * 1000 + k)
        directions = sample_directions(len(prompts), rng, config.angle_low, config.angle_high)
        conversations = [
            conditioned_prompt(p, v, attributes) for p, v in zip(prompts, directions, strict=True)
        ]
        responses = sample_responses(
            policy,
            tokenizer,
            conversations,
            config.samples,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed * 1000 + k,
        )
        flat_prompts = [p for p, group in zip(prompts, responses, strict=True) for _ in group]
        flat_scores = scorer.attribute_scores(flat_prompts, [r for group in responses for r in group])
        scores = list(torch.as_tensor(flat_scores).split(config.samples))
        rows = rsft_rows(prompts, directions, responses, scores, attributes)
        atomic_write_text(
            round_dir / "data.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        if on_round is not None:
            on_round(k, rows)
        args = {
            "output_dir": str(round_dir / "checkpoints"),
            "report_to": "none",
            "save_strategy": "no",
            "use_cpu": cpu,
            "bf16": False,
            "seed": config.seed,
            "logging_steps": 10,
            **config.sft,
        }
        trainer = SFTTrainer(
            model=policy,
            args=SFTConfig(**args),
            train_dataset=Dataset.from_list(
                [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
            ),
            processing_class=tokenizer,
        )
        trainer.train()
        trainer.save_model(str(round_dir / "model"))
        tokenizer.save_pretrained(round_dir / "model")
        atomic_write_json(round_dir / "done.json", {"round": k, "rows": len(rows)})
        model_path = str(round_dir / "model")
    return Path(model_path)
