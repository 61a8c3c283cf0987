"""SFT as implicit-reward learning, and f-divergence variants of it (Wang et al., arXiv 2507.00018).

The paper shows that SFT on demonstrations is a special case of implicit-reward learning with ``r = β·log π/πref``:
the KL term of the distribution-matching objective is constant in π, so nothing holds the policy near the reference
(hence its practical advice: a lower SFT learning rate, see ``metapo.train.sft_recipe``). It also derives SFT
objectives from other f-divergences that keep such a term. Those objectives were not available here (catalog
entry 13 is tagged [S/R]); the ones below are this project's reconstruction [R], by the substitution f-DPO
(arXiv 2309.16240) makes for DPO: under an f-divergence constraint the implicit reward is ``β·f'(π/πref)``, so SFT
maximises ``E_demo[f'(u)]`` with ``u = π/πref``, here per token (``u_t = π(y_t|·)/πref(y_t|·)``, ``ρ_t = log u_t``):

==============  =================================  ==========================================================
divergence      per-token loss ``−f'(u_t)`` + c    gradient weight on ``−∇ log π(y_t)``
==============  =================================  ==========================================================
``reverse_kl``  ``−ρ_t``                           1: plain SFT; no reference needed
``forward_kl``  ``exp(−ρ_t)``                      ``πref/π``: fades as π rises above πref
``alpha``       ``(exp(−αρ_t) − 1)/α``             ``(πref/π)^α``; ``α → 0``: plain SFT, ``α = 1``: forward KL
``js``          ``−log σ(ρ_t)``                    ``σ(−ρ_t)``: 1 while π ≪ πref, 0 once π ≫ πref
==============  =================================  ==========================================================

Every variant has plain SFT's gradient up to the weight, so at ``π = πref`` all but ``js`` (weight ½) take exactly
the SFT step; they part ways as the policy moves away from the reference. The loss is averaged over every response
token of the batch, as TRL's ``SFTTrainer`` does. The objective trains on the ``chosen`` responses of preference
rows (the demonstrations of an SFT stage before DPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveOutput, Tensor, masked_sum, token_counts

DIVERGENCES = ("reverse_kl", "forward_kl", "alpha", "js")


def implicit_sft(
    policy_chosen_token_logps: Tensor,
    chosen_mask: Tensor,
    reference_chosen_token_logps: Tensor | None = None,
    *,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
) -> ObjectiveOutput:
    """SFT on the chosen responses through an f-divergence implicit reward (see the module docstring).

    Source: Wang et al., arXiv 2507.00018 (framework; [S]); the f-divergence variants are reconstructed here via
    f-DPO's reward mapping. Confidence: [R].

    Args:
        policy_chosen_token_logps: ``log π(y_t | x, y_<t)``, shape ``(B, T)``.
        chosen_mask: Response-token mask, shape ``(B, T)``.
        reference_chosen_token_logps: ``log πref(y_t | ·)``, shape ``(B, T)``; not needed for ``reverse_kl``.
        divergence: ``reverse_kl`` (plain SFT), ``forward_kl``, ``alpha`` or ``js``.
        alpha: The α of the ``alpha`` divergence, in ``(0, 1]``.

    Returns:
        ``loss`` is the mean over all response tokens of the batch; ``losses`` the per-sequence token means;
        ``chosen_rewards`` the per-sequence mean log-ratio ``mean_t ρ_t`` (0 without a reference) and
        ``rejected_rewards`` zeros (SFT has no rejected response).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "alpha" and not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    if divergence == "reverse_kl":
        ratio = policy_chosen_token_logps
        if reference_chosen_token_logps is not None:
            ratio = policy_chosen_token_logps - reference_chosen_token_logps
        per_token = -ratio
    else:
        if reference_chosen_token_logps is None:
            raise ValueError(f"the {divergence} variant needs reference log-probabilities")
        ratio = policy_chosen_token_logps - reference_chosen_token_logps
        if divergence == "forward_kl":
            per_token = torch.exp(-ratio)
        elif divergence == "alpha":
            per_token = torch.expm1(-alpha * ratio) / alpha
        else:
            per_token = -F.logsigmoid(ratio)
    sums = masked_sum(per_token, chosen_mask)
    counts = token_counts(chosen_mask).to(sums.dtype)
    loss = sums.sum() / chosen_mask.sum().clamp(min=1).to(sums.dtype)
    reward = masked_sum(ratio, chosen_mask) / counts if reference_chosen_token_logps is not None else sums * 0
    return ObjectiveOutput(
        loss=loss,
        losses=(sums / counts).detach(),
        chosen_rewards=reward.detach(),
        rejected_rewards=torch.zeros_like(reward).detach(),
    )
