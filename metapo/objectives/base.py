"""Shared pieces of every preference objective: the output type and the log-probability aggregation.

Conventions used by every objective in this package:

- Per-token tensors have shape ``(B, T)`` (or ``(B, N, T)`` for lists) and hold the log-probability of each
  response token; positions outside the response carry an arbitrary value and a 0 in the matching mask.
- Per-sequence log-probabilities are sums over the response tokens, ``ℓ(y) = Σ_t log π(y_t | x, y_<t)``, unless a
  function says it uses the length-normalised mean ``ℓ̄(y) = ℓ(y) / |y|``.
- ``ρ(y) = ℓθ(y) − ℓref(y)`` is the log-ratio to the reference; the DPO margin is ``Δ = ρ(y_w) − ρ(y_l)``.
- Every objective returns an :class:`ObjectiveOutput` whose ``loss`` is the scalar batch loss (what the trainer
  back-propagates). Per-example quantities are kept alongside for logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class ObjectiveOutput:
    """What an objective returns.

    Attributes:
        loss: Scalar batch loss; the trainer back-propagates exactly this.
        losses: Per-example loss of the preference term, shape ``(B,)``, before any batch-level extra terms
            (NLL, KL, penalties) are added. Useful for tests and for per-example weighting.
        chosen_rewards: Detached implicit reward of the preferred (or top-ranked) response, shape ``(B,)``.
        rejected_rewards: Detached implicit reward of the dispreferred (or bottom-ranked) response, shape ``(B,)``.
        metrics: Further detached scalars to log (extra loss terms, KL estimates, mask densities, ...).
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def margins(self) -> Tensor:
        """Chosen minus rejected implicit reward, per example."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> Tensor:
        """1.0 where the chosen reward beats the rejected one, per example."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def make_output(
    losses: Tensor,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    extra_loss: Tensor | None = None,
    metrics: dict[str, Tensor] | None = None,
) -> ObjectiveOutput:
    """Build an :class:`ObjectiveOutput` from per-example losses and an optional batch-level extra term.

    Args:
        losses: Per-example preference losses, shape ``(B,)``.
        chosen_rewards: Implicit rewards of the preferred responses, shape ``(B,)``; detached here.
        rejected_rewards: Implicit rewards of the dispreferred responses, shape ``(B,)``; detached here.
        extra_loss: Scalar added to the batch mean (NLL, KL, penalties), or ``None``.
        metrics: Extra scalars to log; detached here.

    Returns:
        The assembled output; ``loss = losses.mean() + extra_loss``.
    """
    loss = losses.mean()
    if extra_loss is not None:
        loss = loss + extra_loss
    return ObjectiveOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
        metrics={k: v.detach() for k, v in (metrics or {}).items()},
    )


def masked_sum(values: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Sum ``values`` over the last dimension where ``mask`` is set, optionally weighting each position.

    Args:
        values: Per-token values, shape ``(..., T)``.
        mask: 0/1 (or bool) mask of the same shape.
        weights: Optional per-token weights of the same shape.

    Returns:
        Shape ``(...)``.
    """
    # where() rather than a product: masked positions may hold -inf or NaN (e.g. padding logits).
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    if weights is not None:
        kept = kept * weights
    return kept.sum(dim=-1)


def token_counts(mask: Tensor) -> Tensor:
    """Number of response tokens per sequence, clamped to at least 1 so that means never divide by zero."""
    return mask.sum(dim=-1).clamp(min=1).to(torch.get_default_dtype())


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the masked positions of the last dimension (the length-normalised ``ℓ̄``)."""
    return masked_sum(values, mask) / token_counts(mask).to(values.dtype)


def batch_token_mean_nll(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood averaged over every response token of the batch (not per sequence first).

    This is the normalisation of TRL's ``"sft"`` DPO loss term and of the NLL term of TRL's Triple-PO trainer, so
    long responses weigh more than short ones.

    Args:
        token_logps: Per-token log-probabilities, shape ``(B, T)``.
        mask: Response-token mask, shape ``(B, T)``.

    Returns:
        Scalar.
    """
    total = mask.sum().clamp(min=1).to(token_logps.dtype)
    return -masked_sum(token_logps, mask).sum() / total


def length_desensitized_weights(
    chosen_mask: Tensor, rejected_mask: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """Per-token weights of LD-DPO (arXiv 2409.06411): 1 on the common-length prefix, ``alpha`` beyond it.

    With ``l_p = min(|y_w|, |y_l|)``, the first ``l_p`` response tokens of each response get weight 1 and the rest
    weight ``alpha``; the weighted sum is the paper's desensitised log-probability. The same weights apply to the
    policy and the reference. ``alpha = 1`` leaves plain sums; ``alpha = 0`` keeps only the common-length prefix.

    Args:
        chosen_mask: Response mask of the preferred responses, shape ``(B, T)``.
        rejected_mask: Response mask of the dispreferred responses, shape ``(B, T')``.
        alpha: Tail weight in ``[0, 1]``.

    Returns:
        ``(chosen_weights, rejected_weights)`` with the shapes of the masks (0 outside the response).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"LD-DPO alpha must lie in [0, 1], got {alpha}")
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(-1)

    def _weights(mask: Tensor) -> Tensor:
        # Position of each response token inside the response (1-based); padding and prompt positions stay 0.
        position = mask.long().cumsum(-1) * mask.long()
        head = (position > 0) & (position <= shared)
        tail = position > shared
        return head.to(torch.get_default_dtype()) + alpha * tail.to(torch.get_default_dtype())

    return _weights(chosen_mask), _weights(rejected_mask)


def sequence_logps(
    token_logps: Tensor,
    mask: Tensor,
    *,
    weights: Tensor | None = None,
    average: bool = False,
) -> Tensor:
    """Aggregate per-token log-probabilities into one number per sequence.

    Args:
        token_logps: Per-token log-probabilities, shape ``(..., T)``.
        mask: Response-token mask of the same shape.
        weights: Optional per-token weights (LD-DPO tail weights, SparsePO masks, step weights).
        average: Divide by the number of response tokens (SimPO/PRO-style ``ℓ̄``).

    Returns:
        Shape ``(...)``.
    """
    total = masked_sum(token_logps, mask, weights)
    if average:
        total = total / token_counts(mask).to(total.dtype)
    return total


def sigmoid_loss(logits: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
    """``−(1−ε)·log σ(z) − ε·log σ(−z)``: the Bradley–Terry loss, conservative when ``ε > 0``.

    ``label_smoothing`` is one ε for the batch or a tensor of per-example values shaped like ``logits``.
    """
    loss = -F.logsigmoid(logits)
    if isinstance(label_smoothing, Tensor) or label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss
