"""UPO: uncertainty-enhanced self-evolution — pairs from the previous iterate, weighted by an estimator's doubt.

Each round the previous iterate π⁽ⁱ⁻¹⁾ draws N ≥ 4 responses per prompt, the reward model ranks them, and every
(top-half winner, bottom-half loser) combination is a candidate pair. An estimator — a binary classifier
``f(T(x, y_w, y_l))`` that says whether the first response is the better one — is run T = 10 times with MC dropout
on every candidate, and its BALD information gain ``B̂ = H(mean_t p_t) − mean_t H(p_t)`` measures how unsure it is
about the reward model's label. Pairs are sampled with probability ``Pⱼ = (1−B̂ⱼ)^μ / Σₖ (1−B̂ₖ)^μ`` (reliable
feedback first), and each kept pair carries a flip weight αⱼ in its ``pair_smoothing`` column, which the ``upo``
objective turns into ``−(1−αⱼ)·log σ(βh) − αⱼ·log σ(−βh)`` with the previous iterate as the reference.

Source: Wang et al., "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference
Optimization", arXiv 2409.11212. Confidence: [V-paper] for BALD, the top/bottom-half pairing and the sampling
weights. Two parts are metapo's choices: (1) the paper's flip weight ``αⱼ = 1/(Pⱼ + 1)`` is at least ½ for every
pair (Pⱼ ≤ 1), so read literally it would flip most labels; :func:`flip_weights` maps BALD to αⱼ ∈ [0, ½]
instead (certain pairs train as DPO, maximally uncertain ones give no push at h = 0). (2) The estimator here is a
dropout MLP on a frozen language-model encoder (last-layer MC dropout), not a fine-tuned backbone, and without a
labelled seed set it is fitted on the round's own reward-ranked pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from metapo.prefdata.common import Policy, Prompt, RewardFn, mean, score

logger = logging.getLogger(__name__)

ESTIMATOR_TEMPLATE = "Request:\n{prompt}\n\nFirst response:\n{first}\n\nSecond response:\n{second}\n\nIs the first response better?"


@dataclass
class UPOOptions:
    """Settings of the UPO builder."""

    samples_per_prompt: int = field(default=4, metadata={"help": "Responses N drawn per prompt (N >= 4)."})
    mc_passes: int = field(default=10, metadata={"help": "MC-dropout passes T of the estimator."})
    mu: float = field(default=1.0, metadata={"help": "Sharpness μ of the sampling weights (1−B)^μ."})
    keep_fraction: float = field(
        default=0.5, metadata={"help": "Share of the candidate pairs sampled into the round's data."}
    )
    eval_samples: int = field(default=4, metadata={"help": "Responses per prompt when measuring a round."})
    seed: int = field(default=0, metadata={"help": "Seed of the pair sampling."})
    estimator: bool = field(default=True, metadata={"help": "Weigh pairs with the MC-dropout estimator."})
    estimator_dropout: float = field(
        default=0.1, metadata={"help": "Dropout probability of the estimator head."}
    )
    estimator_data: str | None = field(
        default=None,
        metadata={
            "help": "Labelled pairs (JSONL) to fit the estimator once; default: each round's own pairs."
        },
    )

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 4:
            raise ValueError(f"upo.samples_per_prompt={self.samples_per_prompt}: UPO needs N >= 4")
        if self.mu <= 0 or not 0 < self.keep_fraction <= 1 or self.mc_passes < 1:
            raise ValueError("upo: need mu > 0, 0 < keep_fraction <= 1 and mc_passes >= 1")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of a Bernoulli(p), with ``0·log 0 = 0``."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    out = np.zeros_like(p)
    inner = (p > 0) & (p < 1)
    q = p[inner]
    out[inner] = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    return out


def bald(probabilities: np.ndarray) -> np.ndarray:
    """BALD information gain per pair from MC-dropout passes: ``H(mean_t p_t) − mean_t H(p_t)``.

    Args:
        probabilities: Shape ``(T, N)``, the estimator's probability that the chosen response is better, one row
            per dropout pass.

    Returns:
        Shape ``(N,)``, in nats: 0 when every pass agrees, at most ``log 2``.
    """
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (passes, pairs), got {p.shape}")
    return np.maximum(binary_entropy(p.mean(axis=0)) - binary_entropy(p).mean(axis=0), 0.0)


def sampling_weights(uncertainty: np.ndarray, mu: float) -> np.ndarray:
    """``Pⱼ = (1 − B̂ⱼ)^μ / Σₖ (1 − B̂ₖ)^μ``: the paper's reliable-feedback sampling distribution."""
    certainty = np.clip(1.0 - np.asarray(uncertainty, dtype=float), 0.0, None) ** mu
    total = certainty.sum()
    if total <= 0:
        return np.full(len(certainty), 1.0 / len(certainty))
    return certainty / total


def flip_weights(uncertainty: np.ndarray) -> np.ndarray:
    """Flip weight ``αⱼ = ½·B̂ⱼ / log 2`` in ``[0, ½]``: 0 for a certain pair, ½ for a maximally uncertain one.

    This replaces the paper's ``1/(Pⱼ + 1)`` (see the module docstring).
    """
    return 0.5 * np.clip(np.asarray(uncertainty, dtype=float) / math.log(2.0), 0.0, 1.0)


def top_bottom_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """Every (winner in the top half, loser in the bottom half) with a strictly higher score.

    With an odd N the middle response belongs to neither half.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    half = len(scores) // 2
    top, bottom = order[:half], order[len(scores) - half :]
    return [(w, lose) for w in top for lose in bottom if scores[w] > scores[lose]]


class PairEstimator(Protocol):
    """A classifier of whether the first response of a pair is the better one, with MC-dropout passes."""

    def fit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Train on rows whose ``chosen`` is the better response."""
        ...

    def probabilities(self, rows: Sequence[dict[str, Any]], passes: int) -> np.ndarray:
        """Shape ``(passes, len(rows))``: P(chosen better) under ``passes`` independent dropout masks."""
        ...


class DropoutEstimator:
    """UPO's estimator as a dropout MLP head on a frozen causal-LM encoder (mean of the last hidden states).

    Both orders of every training pair are used (label 1 for ``(x, y_w, y_l)``, 0 for ``(x, y_l, y_w)``), so the
    classifier cannot prefer a position. At inference dropout stays on, and each pass draws a new mask.

    Args:
        model_path: Encoder model (a causal LM directory; the policy's initial checkpoint will do).
        dropout: Dropout probability of the head.
        hidden: Head width.
        epochs: Full-batch training epochs.
        learning_rate: Adam learning rate.
        seed: Seed of the head's initialisation, training and dropout masks.
        max_length: Truncation of the template text in tokens.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dropout: float = 0.1,
        hidden: int = 64,
        epochs: int = 200,
        learning_rate: float = 1e-2,
        seed: int = 0,
        max_length: int = 512,
    ) -> None:
        self.model_path = model_path
        self.dropout = dropout
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.seed = seed
        self.max_length = max_length
        self._encoder: Any = None
        self._tokenizer: Any = None
        self.head: Any = None

    def _features(self, texts: Sequence[str]):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._encoder is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._encoder = AutoModelForCausalLM.from_pretrained(self.model_path).eval()
        tok = self._tokenizer
        tok.padding_side = "right"
        features = []
        for start in range(0, len(texts), 16):
            enc = tok(
                list(texts[start : start + 16]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            with torch.inference_mode():
                hidden = self._encoder(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(features).float()

    @staticmethod
    def _text(row: dict[str, Any], swap: bool) -> str:
        from metapo.reward.rubric_reward import prompt_text

        first, second = (row["rejected"], row["chosen"]) if swap else (row["chosen"], row["rejected"])
        return ESTIMATOR_TEMPLATE.format(prompt=prompt_text(row["prompt"]), first=first, second=second)

    def fit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Train the head on both orders of ``rows``."""
        import torch
        from torch import nn

        if not rows:
            raise ValueError("the UPO estimator needs at least one labelled pair to fit")
        x = self._features([self._text(r, s) for r in rows for s in (False, True)])
        y = torch.tensor([1.0, 0.0] * len(rows))
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = nn.Sequential(
                nn.Dropout(self.dropout),
                nn.Linear(x.shape[1], self.hidden),
                nn.Tanh(),
                nn.Dropout(self.dropout),
                nn.Linear(self.hidden, 1),
            )
            optimizer = torch.optim.Adam(self.head.parameters(), lr=self.learning_rate)
            self.head.train()
            for _ in range(self.epochs):
                order = torch.randperm(len(y), generator=generator)
                loss = nn.functional.binary_cross_entropy_with_logits(
                    self.head(x[order]).squeeze(-1), y[order]
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    def probabilities(self, rows: Sequence[dict[str, Any]], passes: int) -> np.ndarray:
        """See :meth:`PairEstimator.probabilities`."""
        import torch

        if self.head is None:
            raise RuntimeError("fit the estimator before asking it for probabilities")
        x = self._features([self._text(r, False) for r in rows])
        self.head.train()  # MC dropout: masks stay on at inference
        out = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 1)
            for _ in range(passes):
                out.append(torch.sigmoid(self.head(x).squeeze(-1)).numpy())
        return np.stack(out)


def weigh_pairs(
    rows: list[dict[str, Any]],
    estimator: PairEstimator | None,
    options: UPOOptions,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Sample the round's pairs by certainty and attach each pair's BALD and flip weight.

    Args:
        rows: Candidate pairs.
        estimator: The fitted estimator, or ``None`` (every pair certain: plain iterative DPO data).
        options: Settings.
        rng: Random generator.

    Returns:
        ``ceil(keep_fraction·len(rows))`` rows drawn without replacement with probability ``Pⱼ``, each with
        ``bald`` and ``pair_smoothing`` (= αⱼ) columns.
    """
    if not rows:
        return []
    if estimator is None:
        uncertainty = np.zeros(len(rows))
    else:
        uncertainty = bald(estimator.probabilities(rows, options.mc_passes))
    weights = sampling_weights(uncertainty, options.mu)
    alpha = flip_weights(uncertainty)
    k = max(1, math.ceil(options.keep_fraction * len(rows)))
    # Pairs with zero weight cannot be drawn; never ask for more than the drawable ones.
    k = min(k, int((weights > 0).sum()))
    picked = rng.choice(len(rows), size=k, replace=False, p=weights)
    return [
        {**rows[i], "bald": float(uncertainty[i]), "pair_smoothing": float(alpha[i])} for i in sorted(picked)
    ]


def candidate_pairs(
    prompts: Sequence[Prompt], policy: Policy, reward: RewardFn, samples_per_prompt: int
) -> list[dict[str, Any]]:
    """Sample N responses per prompt, rank them by reward, and pair top-half winners with bottom-half losers."""
    groups = policy.generate(list(prompts), samples_per_prompt)
    n = samples_per_prompt
    all_scores = score(reward, [p for p in prompts for _ in range(n)], [s.text for g in groups for s in g])
    rows: list[dict[str, Any]] = []
    for k, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
        texts = [s.text for s in group]
        scores = all_scores[k * n : (k + 1) * n]
        kept = [i for i, s in enumerate(scores) if s is not None]
        ranked = [float(scores[i]) for i in kept]  # type: ignore[arg-type]
        for w, lose in top_bottom_pairs(ranked):
            if texts[kept[w]] == texts[kept[lose]]:
                continue
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": texts[kept[w]],
                    "rejected": texts[kept[lose]],
                    "chosen_reward": ranked[w],
                    "rejected_reward": ranked[lose],
                }
            )
    return rows


def build_upo(
    prompts: Sequence[Prompt],
    policy: Policy,
    reward: RewardFn,
    estimator: PairEstimator | None = None,
    options: UPOOptions | None = None,
    *,
    refit: bool = True,
    round_index: int = 0,
) -> list[dict[str, Any]]:
    """One UPO round's rows.

    Args:
        prompts: Prompts.
        policy: The previous iterate π⁽ⁱ⁻¹⁾.
        reward: The reward model ranking the N responses.
        estimator: The uncertainty estimator (``None``: no weighting).
        options: Settings.
        refit: Fit the estimator on this round's candidate pairs first (when there is no labelled seed set).
        round_index: Mixed into the sampling seed so that rounds draw differently.

    Returns:
        Rows for ``metapo train-pref`` with objective ``upo`` (``pair_smoothing`` = αⱼ, plus ``bald``).
    """
    opts = options or UPOOptions()
    rows = candidate_pairs(prompts, policy, reward, opts.samples_per_prompt)
    if estimator is not None and refit and rows:
        estimator.fit(rows)
    picked = weigh_pairs(rows, estimator, opts, np.random.default_rng([opts.seed, round_index]))
    logger.info(
        "upo: kept %d of %d candidate pairs (mean BALD %.3f)",
        len(picked),
        len(rows),
        float(np.mean([r["bald"] for r in picked])) if picked else float("nan"),
    )
    return picked


def measure_upo(
    prompts: Sequence[Prompt], policy: Policy, reward: RewardFn, samples: int
) -> dict[str, float]:
    """The loop's objective: mean reward of ``samples`` responses per prompt."""
    groups = policy.generate(list(prompts), samples)
    owners = [p for p in prompts for _ in range(samples)]
    return {"reward/mean": mean(score(reward, owners, [s.text for g in groups for s in g]))}
