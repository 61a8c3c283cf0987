"""Pure losses and scores of the preference and reward models: tensors in, tensors out.

- Bradley–Terry: ``−log σ(r_w − r_l − m)``, the loss of TRL's ``RewardTrainer``.
- GPM (arXiv 2410.02197), general preference model: each response gets an embedding ``v ∈ ℝ^{2k}``; the preference
  score ``s(i, j) = ⟨R^≻ v_i, v_j⟩`` with ``R^≻ = blockdiag(λ_b·[[0, −1], [1, 0]])`` is antisymmetric, so
  ``P(i ≻ j) = σ(s/τ)`` satisfies ``P(i ≻ j) + P(j ≻ i) = 1`` and can be intransitive. Checked against the authors'
  code (``general_preference/models/loss.py``, ``rw_model_general_preference.py``): per 2-D block the score is
  ``v_i[0]·v_j[1] − v_i[1]·v_j[0]``, and the prompt gate is ``λ = k·softmax(W h_x / √d)``. [V-code]
- Themis (arXiv 2310.01045), tool-augmented reward modelling:
  ``L = L_RM + α·(Σ_t (L_tool(t) + β·L_obs(t)) + ω·L_rationale)``, with ``L_RM`` the pairwise BT loss and the other
  terms autoregressive LM losses on their spans (thought and action of step t; its observation; the rationale).
  [V-paper, per the catalog]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Token kinds of a Themis sequence (see ``metapo.prefmodels.themis``).
CONTEXT, TOOL, OBSERVATION, RATIONALE = 0, 1, 2, 3


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None) -> Tensor:
    """Per-pair Bradley–Terry loss ``−log σ(r_w − r_l − m)``, shape ``(B,)``."""
    logits = chosen - rejected
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)


def skew_symmetric_score(v_i: Tensor, v_j: Tensor, gates: Tensor | None = None) -> Tensor:
    """GPM preference score ``s(i, j) = Σ_b λ_b (v_i[2b]·v_j[2b+1] − v_i[2b+1]·v_j[2b])``.

    Args:
        v_i: Embeddings of the first responses, shape ``(..., 2k)``.
        v_j: Embeddings of the second responses, same shape.
        gates: Non-negative block weights ``λ``, shape ``(..., k)``; ``None`` means 1.

    Returns:
        Shape ``(...)``; ``s(i, j) = −s(j, i)`` and ``s(i, i) = 0`` exactly.
    """
    if v_i.shape[-1] % 2:
        raise ValueError(f"GPM embeddings need an even dimension, got {v_i.shape[-1]}")
    a = v_i.unflatten(-1, (-1, 2))
    b = v_j.unflatten(-1, (-1, 2))
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if gates is not None:
        cross = cross * gates
    return cross.sum(-1)


def gpm_gates(gate_logits: Tensor, hidden_size: int) -> Tensor:
    """The prompt gate ``λ = k·softmax(logits/√d)``: non-negative, mean 1 (all ones when the logits are equal)."""
    k = gate_logits.shape[-1]
    return k * torch.softmax(gate_logits / math.sqrt(hidden_size), dim=-1)


def gpm_loss(
    v_chosen: Tensor,
    v_rejected: Tensor,
    *,
    tau: float,
    gates: Tensor | None = None,
    margin: Tensor | None = None,
) -> Tensor:
    """Per-pair GPM loss ``−log σ((s(y_w, y_l) − m)/τ)``, shape ``(B,)``."""
    score = skew_symmetric_score(v_chosen, v_rejected, gates)
    if margin is not None:
        score = score - margin
    return -F.logsigmoid(score / tau)


def span_nll(token_logps: Tensor, span_ids: Tensor) -> Tensor:
    """Sum over spans of each span's mean negative log-likelihood, per sequence.

    Args:
        token_logps: Log-probability of each token, shape ``(B, T)``.
        span_ids: ``0`` outside every span, ``1..K`` the span a token belongs to, shape ``(B, T)``.

    Returns:
        ``Σ_k mean_{t ∈ span k}(−log p_t)``, shape ``(B,)``; 0 for a sequence without spans.
    """
    n_spans = int(span_ids.max().item()) if span_ids.numel() else 0
    if n_spans == 0:
        return token_logps.new_zeros(token_logps.shape[0])
    member = F.one_hot(span_ids.long(), n_spans + 1)[..., 1:].to(token_logps.dtype)  # (B, T, K)
    # where() rather than a product: positions outside spans may hold -inf (masked logits).
    nll = torch.where(span_ids > 0, -token_logps, torch.zeros_like(token_logps))
    sums = torch.einsum("bt,btk->bk", nll, member)
    counts = member.sum(1)
    return (sums / counts.clamp(min=1)).sum(-1)


def themis_lm_terms(token_logps: Tensor, kinds: Tensor, steps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three LM terms of Themis per sequence: ``Σ_t L_tool(t)``, ``Σ_t L_obs(t)``, ``L_rationale``.

    Args:
        token_logps: Log-probability of each token given the ones before, shape ``(B, T)``.
        kinds: Token kind (``CONTEXT``, ``TOOL``, ``OBSERVATION``, ``RATIONALE``), shape ``(B, T)``.
        steps: 1-based tool step of each tool and observation token (0 elsewhere), shape ``(B, T)``.

    Returns:
        ``(tool, observation, rationale)``, each of shape ``(B,)``.
    """
    tool = span_nll(token_logps, torch.where(kinds == TOOL, steps, torch.zeros_like(steps)))
    obs = span_nll(token_logps, torch.where(kinds == OBSERVATION, steps, torch.zeros_like(steps)))
    rationale = span_nll(token_logps, (kinds == RATIONALE).long())
    return tool, obs, rationale


def themis_loss(
    chosen: Tensor,
    rejected: Tensor,
    lm_terms: tuple[Tensor, Tensor, Tensor] | None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    omega: float = 1.0,
    margin: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Batch Themis loss ``mean(L_RM) + α·mean(Σ_t (L_tool + β·L_obs) + ω·L_rationale)``.

    Args:
        chosen: Rewards of the preferred responses, shape ``(B,)``.
        rejected: Rewards of the dispreferred responses, shape ``(B,)``.
        lm_terms: ``(tool, observation, rationale)`` per pair, each shape ``(B,)`` (the traces of both responses
            of a pair summed); may be ``None`` when ``alpha == 0``.
        alpha: Weight of the LM terms; 0 gives the Bradley–Terry loss exactly.
        beta: Weight of the observation spans (the paper switches it between 0 and 1).
        omega: Weight of the rationale span (0 or 1 in the paper).
        margin: Optional per-pair BT margin.

    Returns:
        ``(loss, parts)`` where ``parts`` holds the detached BT and LM terms for logging.
    """
    rm = bradley_terry_loss(chosen, rejected, margin).mean()
    parts = {"rm_loss": rm.detach()}
    if alpha == 0:
        return rm, parts
    if lm_terms is None:
        raise ValueError("themis_loss needs the LM terms when alpha != 0")
    tool, obs, rationale = (t.mean() for t in lm_terms)
    parts.update(tool_nll=tool.detach(), observation_nll=obs.detach(), rationale_nll=rationale.detach())
    return rm + alpha * (tool + beta * obs + omega * rationale), parts
