"""Pairwise preference objectives: DPO and the methods that build on its margin.

Every function here is pure: tensors in, :class:`~metapo.objectives.base.ObjectiveOutput` out. Argument names are
the contract with the trainer, which computes exactly the tensors a function asks for (see
``metapo.objectives.registry``):

- ``policy_{slot}_logps`` / ``reference_{slot}_logps``: summed response log-probabilities, shape ``(B,)``;
- ``policy_{slot}_token_logps`` / ``reference_{slot}_token_logps`` and ``{slot}_mask``: per-token values, ``(B, T)``;
- ``{slot}_lengths``: response lengths in tokens, ``(B,)``;

where ``slot`` is ``chosen``, ``rejected``, ``gold`` (Triple PO), ``rationale`` (RDPO), ``calibration`` (VPO) or
``online`` (samples drawn from the policy during training, HyPO).

Each docstring states where the formula comes from and how far it was checked:
``[V-TRL]`` checked against TRL 1.16's code, ``[V-code]`` against the authors' code, ``[V-paper]`` against the paper,
``[S]`` a secondary summary, ``[R]`` reconstructed from memory of the paper (structure right, constants unverified).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    ObjectiveOutput,
    Tensor,
    batch_token_mean_nll,
    length_desensitized_weights,
    make_output,
    sequence_logps,
    sigmoid_loss,
)


def _margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    return chosen_ratio, rejected_ratio, chosen_ratio - rejected_ratio


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> ObjectiveOutput:
    """DPO with the sigmoid (Bradley–Terry) loss: ``−log σ(β·Δ)``.

    Source: Rafailov et al., arXiv 2305.18290, Eq. 7; TRL ``DPOConfig(loss_type=["sigmoid"])``. Confidence: [V-TRL].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        beta: KL strength β (TRL and paper default 0.1).

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    return make_output(sigmoid_loss(beta * delta), beta * chosen, beta * rejected)


def cdpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    pair_smoothing: Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> ObjectiveOutput:
    """Conservative DPO (label smoothing): ``−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)``.

    The labels are trusted with probability ``1−ε``. Unlike :func:`robust_dpo` the loss is biased (it is the
    expected loss under flipped labels, not its de-biased inverse) and never drives Δ to infinity. A
    ``pair_smoothing`` column gives every pair its own ε (MCTS-DPO's confidence from visit counts, see
    :func:`metapo.prefdata.mcts.visit_smoothing`) and then replaces ``label_smoothing``; ε = ½ makes a pair's
    gradient vanish at Δ = 0.

    Source: E. Mitchell, "A note on DPO with noisy preferences & relationship to IPO" (2023, no arXiv id); the same
    form is TRL's CPO/TPO ``sigmoid`` loss with ``label_smoothing``. TRL 1.16's ``DPOTrainer`` no longer applies
    ``label_smoothing`` to ``sigmoid``. Confidence: [V-TRL] (through ``CPOTrainer.cpo_loss``).

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        beta: KL strength β.
        pair_smoothing: Optional per-pair ε in ``[0, 0.5]``, shape ``(B,)``.
        beta: KL strength β.
        label_smoothing: Assumed label-flip probability ε in ``[0, 0.5)``.

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    eps = label_smoothing if pair_smoothing is None else _checked_smoothing(pair_smoothing, delta)
    return make_output(sigmoid_loss(beta * delta, eps), beta * chosen, beta * rejected)


def _checked_smoothing(pair_smoothing: Tensor, like: Tensor) -> Tensor:
    eps = pair_smoothing.to(like.dtype)
    if bool(((eps < 0.0) | (eps > 0.5)).any()):
        raise ValueError(f"pair_smoothing values must lie in [0, 0.5], got {eps.tolist()}")
    return eps


def upo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    pair_smoothing: Tensor | None = None,
    *,
    beta: float = 0.1,
    nll_weight: float = 0.0,
) -> ObjectiveOutput:
    """UPO: DPO against the previous iterate with a per-pair flip weight αⱼ, plus an NLL term on ``y_w``.

    ``L = −mean[(1−αⱼ)·log σ(βh) + αⱼ·log σ(−βh)] − λ·mean[ℓθ(y_w)/|y_w|]``, where h is the DPO margin whose reference is
    the previous iterate π⁽ⁱ⁻¹⁾ (in a :mod:`metapo.prefdata.loop` round the trainer's reference is the round's
    starting policy, which is exactly that iterate). αⱼ comes from the pair's BALD uncertainty
    (:func:`metapo.prefdata.upo.flip_weights`) through the ``pair_smoothing`` column; without the column αⱼ = 0.
    With αⱼ = 0 and λ = 0 this is DPO; αⱼ = ½ gives a zero gradient at h = 0.

    Source: Wang et al., "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference
    Optimization", arXiv 2409.11212. Confidence: [V-paper] for the loss shape. Two choices are metapo's: the paper
    divides the NLL by a quantity printed as ``|r_φ(x, y_w)|`` (ambiguous); here it is the response length, so the
    term is a per-token NLL. And the paper's ``αⱼ = 1/(Pⱼ + 1)`` is at least ½ for every pair, which would flip
    most labels, so the builder maps BALD to αⱼ ∈ [0, ½] instead (see ``flip_weights``). The paper's λ is not
    reproduced here; the default 0 leaves the NLL term out.

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓ_{π⁽ⁱ⁻¹⁾}(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓ_{π⁽ⁱ⁻¹⁾}(y_l)``, shape ``(B,)``.
        chosen_lengths: ``|y_w|`` in tokens, shape ``(B,)``.
        pair_smoothing: Per-pair αⱼ in ``[0, 0.5]``, shape ``(B,)``, or ``None`` (all 0).
        beta: KL strength β.
        nll_weight: Weight λ of the NLL term.

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    eps = 0.0 if pair_smoothing is None else _checked_smoothing(pair_smoothing, delta)
    nll = -(policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)).mean()
    return make_output(
        sigmoid_loss(beta * delta, eps),
        beta * chosen,
        beta * rejected,
        extra_loss=nll_weight * nll if nll_weight else None,
        metrics={"nll": nll},
    )


def robust_dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_flip_rate: float = 0.1,
) -> ObjectiveOutput:
    """Robust DPO (rDPO): the de-biased loss ``[(1−ε)·ℓ(Δ) − ε·ℓ(−Δ)] / (1−2ε)`` with ``ℓ(Δ) = −log σ(βΔ)``.

    It is unbiased: ``(1−ε)·L_ε(Δ) + ε·L_ε(−Δ) = ℓ(Δ)``, so its expectation under labels flipped with probability ε
    is the clean DPO loss.

    Source: Chowdhury et al., "Provably Robust DPO", arXiv 2403.00409, Eq. 8; TRL ``loss_type="robust"`` with
    ``label_smoothing=ε``. Defaults ε = 0.1, β = 0.1 (TRL paper index). Confidence: [V-TRL].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        beta: KL strength β.
        label_flip_rate: Label-flip probability ε in ``[0, 0.5)``.

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    eps = label_flip_rate
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_flip_rate must lie in [0, 0.5), got {eps}")
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    losses = ((1.0 - eps) * sigmoid_loss(beta * delta) - eps * sigmoid_loss(-beta * delta)) / (
        1.0 - 2.0 * eps
    )
    return make_output(losses, beta * chosen, beta * rejected)


def hinge(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.05,
) -> ObjectiveOutput:
    """Hinge loss of RSO (SLiC-style, "hinge-norm"): ``max(0, 1 − β·Δ)``.

    RSO's other contribution, the statistical rejection sampler that builds the pairs, is data preparation and not
    part of this loss.

    Source: Liu et al., "Statistical Rejection Sampling Improves Preference Optimization", arXiv 2309.06657;
    TRL ``loss_type="hinge"``. β = γ = 0.05 as in TRL's paper index. Confidence: [V-TRL] for the loss.

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        beta: Scale γ of the margin (the hinge sits at ``Δ = 1/γ``).

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    return make_output(torch.relu(1.0 - beta * delta), beta * chosen, beta * rejected)


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 0.1,
    length_normalize: bool = False,
) -> ObjectiveOutput:
    """IPO: the squared loss ``(Δ − 1/(2β))²``, minimised exactly at the target margin ``Δ* = 1/(2β)``.

    With ``length_normalize=False`` (default) Δ uses sequence-level log-ratios, as in the paper. TRL 1.16's
    ``loss_type="ipo"`` divides each log-ratio by its response length first (``ρ_w/|y_w| − ρ_l/|y_l|``), a choice TRL
    says it confirmed with the IPO authors; ``length_normalize=True`` reproduces that form.

    Source: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv 2310.12036, Eq. 17 (β is the paper's τ). Confidence: [V-TRL] (normalised form), [V-paper] (target).

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        chosen_lengths: ``|y_w|`` in tokens, shape ``(B,)``.
        rejected_lengths: ``|y_l|`` in tokens, shape ``(B,)``.
        beta: Regularisation τ; the target margin is ``1/(2β)``.
        length_normalize: Use per-token log-ratios (TRL's form) instead of sequence sums (the paper's form).

    Returns:
        Loss and implicit rewards ``β·ρ`` (per token when normalised).
    """
    chosen, rejected, _ = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    if length_normalize:
        chosen = chosen / chosen_lengths.clamp(min=1).to(chosen.dtype)
        rejected = rejected / rejected_lengths.clamp(min=1).to(rejected.dtype)
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return make_output(losses, beta * chosen, beta * rejected)


def ld_dpo(
    policy_chosen_token_logps: Tensor,
    policy_rejected_token_logps: Tensor,
    reference_chosen_token_logps: Tensor,
    reference_rejected_token_logps: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> ObjectiveOutput:
    """LD-DPO: DPO on length-desensitised log-probabilities.

    With ``l_p = min(|y_w|, |y_l|)``, ``ℓ̃(y) = Σ_{t≤l_p} log π(y_t|·) + α·Σ_{t>l_p} log π(y_t|·)`` for both the policy
    and the reference; the loss is DPO on ``ℓ̃``. ``alpha = 1`` is DPO; ``alpha = 0`` ignores the longer response's
    tail entirely.

    Source: Liu et al., "Length Desensitization in Direct Preference Optimization", arXiv 2409.06411; TRL
    ``DPOConfig(ld_alpha=α)``. The paper tunes α per model; TRL's docs suggest starting at 0.5.
    Confidence: [V-TRL].

    Args:
        policy_chosen_token_logps: Per-token ``log πθ`` of ``y_w``, shape ``(B, T)``.
        policy_rejected_token_logps: Per-token ``log πθ`` of ``y_l``, shape ``(B, T)``.
        reference_chosen_token_logps: Per-token ``log πref`` of ``y_w``, shape ``(B, T)``.
        reference_rejected_token_logps: Per-token ``log πref`` of ``y_l``, shape ``(B, T)``.
        chosen_mask: Response mask of ``y_w``, shape ``(B, T)``.
        rejected_mask: Response mask of ``y_l``, shape ``(B, T)``.
        beta: KL strength β.
        alpha: Weight of the tokens beyond the common length, in ``[0, 1]``.

    Returns:
        Loss and implicit rewards ``β·ρ̃``.
    """
    w_chosen, w_rejected = length_desensitized_weights(chosen_mask, rejected_mask, alpha)
    w_chosen = w_chosen.to(policy_chosen_token_logps.dtype)
    w_rejected = w_rejected.to(policy_rejected_token_logps.dtype)
    return dpo(
        sequence_logps(policy_chosen_token_logps, chosen_mask, weights=w_chosen),
        sequence_logps(policy_rejected_token_logps, rejected_mask, weights=w_rejected),
        sequence_logps(reference_chosen_token_logps, chosen_mask, weights=w_chosen),
        sequence_logps(reference_rejected_token_logps, rejected_mask, weights=w_rejected),
        beta=beta,
    )


def rpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    policy_chosen_token_logps: Tensor,
    chosen_mask: Tensor,
    *,
    beta: float = 0.01,
    sft_weight: float = 0.005,
) -> ObjectiveOutput:
    """RPO: DPO plus an SFT (NLL) term on the preferred responses, ``L_DPO(β) + η·NLL(y_w)``.

    The NLL is averaged over all preferred-response tokens of the batch, as TRL's ``"sft"`` loss term does. The
    paper's baseline distribution for the SFT term is the preferred responses; its exact normalisation may differ.

    Source: Liu et al., "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial
    Regularizer", arXiv 2405.16436; TRL ``DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, η])``.
    Defaults η = 0.005, β = 0.01 from TRL's paper index. Confidence: [V-TRL].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        policy_chosen_token_logps: Per-token ``log πθ`` of ``y_w``, shape ``(B, T)``.
        chosen_mask: Response mask of ``y_w``, shape ``(B, T)``.
        beta: KL strength β.
        sft_weight: Weight η of the NLL term.

    Returns:
        Loss (DPO mean plus ``η·NLL``) and implicit rewards ``β·ρ``.
    """
    base = dpo(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    nll = batch_token_mean_nll(policy_chosen_token_logps, chosen_mask)
    return make_output(
        base.losses,
        base.chosen_rewards,
        base.rejected_rewards,
        extra_loss=sft_weight * nll,
        metrics={"nll": nll},
    )


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.5,
    gamma: float = 1.375,
    label_smoothing: float = 0.0,
) -> ObjectiveOutput:
    """SimPO: reference-free, length-normalised, with a target margin: ``−log σ(β·ℓ̄θ(y_w) − β·ℓ̄θ(y_l) − γ)``.

    With equal average log-probabilities the loss is ``log(1 + e^γ)``.

    Source: Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward", arXiv 2405.14734,
    Eq. 6; TRL ``trl.experimental.cpo.CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=γ)``. Defaults
    β = 2.5, γ = 1.375 (γ/β = 0.55) are TRL's documented setting; the paper sweeps β ∈ [2, 2.5], γ/β ∈ [0.3, 0.8].
    Confidence: [V-TRL].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)`` (sum), shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)`` (sum), shape ``(B,)``.
        chosen_lengths: ``|y_w|`` in tokens, shape ``(B,)``.
        rejected_lengths: ``|y_l|`` in tokens, shape ``(B,)``.
        beta: Reward scale β.
        gamma: Target reward margin γ.
        label_smoothing: Optional conservative smoothing ε, as in TRL's CPO trainer (0 in the paper).

    Returns:
        Loss and rewards ``β·ℓ̄θ``.
    """
    chosen = beta * policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
    rejected = beta * policy_rejected_logps / rejected_lengths.clamp(min=1).to(policy_rejected_logps.dtype)
    return make_output(sigmoid_loss(chosen - rejected - gamma, label_smoothing), chosen, rejected)


def triple_po(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    policy_gold_token_logps: Tensor,
    gold_mask: Tensor,
    *,
    beta: float = 0.01,
    alpha: float = 1.0,
    variant: str = "sigmoid",
    gamma: float = 0.5,
) -> ObjectiveOutput:
    """Triple Preference Optimization: a reference-free preference term plus an NLL term on a gold response.

    ``variant="sigmoid"``: ``−log σ(β·(ℓθ(y_w) − ℓθ(y_l))) + α·NLL(y_gold)``;
    ``variant="tpo_l"`` (TPO-L): ``−log σ(β·(ℓ̄θ(y_w) − ℓ̄θ(y_l)) − γ) + α·NLL(y_gold)``.
    The NLL is averaged over every gold token of the batch (TRL's convention). With ``alpha=0`` the sigmoid variant
    is reference-free DPO and TPO-L is SimPO(β, γ).

    Source: Saeidi et al., "Triple Preference Optimization", arXiv 2405.16681; TRL
    ``trl.experimental.tpo.TPOConfig(loss_type="sigmoid"|"tpo-l", tpo_alpha=α, tpo_l_gamma=γ)``. Defaults β = 0.01,
    α = 1, γ = 0.5. Confidence: [V-TRL].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        chosen_lengths: ``|y_w|`` in tokens, shape ``(B,)``.
        rejected_lengths: ``|y_l|`` in tokens, shape ``(B,)``.
        policy_gold_token_logps: Per-token ``log πθ`` of the gold response, shape ``(B, T)``.
        gold_mask: Response mask of the gold response, shape ``(B, T)``.
        beta: Temperature β of the preference term.
        alpha: Weight α of the gold NLL term.
        variant: ``"sigmoid"`` or ``"tpo_l"``.
        gamma: Target margin γ of TPO-L.

    Returns:
        Loss and rewards ``β·ℓθ`` (``β·ℓ̄θ`` for TPO-L).
    """
    if variant == "sigmoid":
        chosen, rejected = beta * policy_chosen_logps, beta * policy_rejected_logps
        losses = sigmoid_loss(chosen - rejected)
    elif variant == "tpo_l":
        chosen = beta * policy_chosen_logps / chosen_lengths.clamp(min=1).to(policy_chosen_logps.dtype)
        rejected = (
            beta * policy_rejected_logps / rejected_lengths.clamp(min=1).to(policy_rejected_logps.dtype)
        )
        losses = sigmoid_loss(chosen - rejected - gamma)
    else:
        raise ValueError(f"variant must be 'sigmoid' or 'tpo_l', got {variant!r}")
    nll = batch_token_mean_nll(policy_gold_token_logps, gold_mask)
    extra = alpha * nll if alpha else None
    return make_output(losses, chosen, rejected, extra_loss=extra, metrics={"nll": nll})


def modpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    aux_margins: Tensor,
    *,
    beta: float = 0.1,
    weights: tuple[float, ...] = (0.5, 0.5),
) -> ObjectiveOutput:
    """MODPO: DPO for objective 0 with the other objectives' reward margins folded in as a per-pair offset.

    ``L = −log σ((1/w_0)·[β·Δ − w_{−0}ᵀ(r_{−0}(x, y_w) − r_{−0}(x, y_l))])``, with ``w`` on the simplex, the
    preferences labelled for objective 0 and ``r_{−0}`` pre-trained reward models for the other objectives (their
    margins can be precomputed). ``w = (1, 0, …)`` is DPO.

    Source: Zhou et al., "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct Preference Optimization",
    arXiv 2310.03708, Eq. 8; checked against the authors' ``modpo_trainer.py`` as summarised in the catalog.
    β = 0.1; the paper sweeps w. Confidence: [V-code].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        aux_margins: ``r_k(y_w) − r_k(y_l)`` for the K auxiliary objectives, shape ``(B, K)``.
        beta: KL strength β.
        weights: ``(w_0, w_1, …, w_K)``; must be non-negative, sum to 1 and have ``w_0 > 0``.

    Returns:
        Loss and implicit rewards ``β·ρ`` (the objective-0 reward, before the offset).
    """
    w = torch.as_tensor(weights, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device)
    if w.ndim != 1 or w[0] <= 0 or bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise ValueError(f"MODPO weights must be a simplex vector with w_0 > 0, got {weights}")
    margins = aux_margins.to(policy_chosen_logps.dtype)
    if margins.ndim == 1:
        margins = margins.unsqueeze(-1)
    if margins.shape[-1] != w.numel() - 1:
        raise ValueError(f"{w.numel() - 1} auxiliary weights but aux_margins has {margins.shape[-1]} columns")
    chosen, rejected, delta = _margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    offset = margins @ w[1:]
    losses = sigmoid_loss((beta * delta - offset) / w[0])
    return make_output(losses, beta * chosen, beta * rejected, metrics={"aux_offset": offset.mean()})


def rationale_dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    policy_rationale_logps: Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.1,
) -> ObjectiveOutput:
    """Rationale-enriched DPO (RDPO): ``−log σ(βΔ) − log σ(γ·ℓθ(r | x, y_w, y_l))``.

    ``r`` is a machine-written rationale explaining the preference; ``ℓθ(r)`` is its summed log-probability under the
    policy, conditioned on a prompt that shows x and both responses. The rationale term always pushes ``ℓθ(r)`` up;
    its gradient magnitude ``γ·(1 − σ(γℓ))`` falls from γ (very unlikely rationale) to γ/2 as ``ℓθ(r) → 0``.
    With ``γ = 0`` the loss is DPO plus the constant ``log 2``.

    Source: Just et al., "Data-Centric Human Preference Optimization with Rationales", arXiv 2407.14477; the
    log-sigmoid form follows the authors' trainer (reds-lab/preference-learning-with-rationales) as summarised in the
    catalog; the paper may write the term as a plain ``−γ·log π(r)``. Defaults β = 0.1, γ = 0.1. Confidence: [V-code].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        policy_rationale_logps: ``ℓθ(r | x, y_w, y_l)``, shape ``(B,)``.
        beta: KL strength β.
        gamma: Scale γ of the rationale term.

    Returns:
        Loss (per example: both terms) and implicit rewards ``β·ρ``.
    """
    base = dpo(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    rationale_term = -F.logsigmoid(gamma * policy_rationale_logps)
    return make_output(
        base.losses + rationale_term,
        base.chosen_rewards,
        base.rejected_rewards,
        metrics={"rationale_loss": rationale_term.mean(), "rationale_logps": policy_rationale_logps.mean()},
    )


def vpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    policy_calibration_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.01,
    mode: str = "offline",
) -> ObjectiveOutput:
    """VPO: DPO plus a value regulariser, ``L_DPO + sign·α·E_{x∼D, y∼π_cal}[ℓθ(y|x)]``.

    The sign follows from regularising the reward MLE with the optimal value ``J*(r) = β·E_x log Z_r(x)`` under
    the calibration ``E_{y∼π_cal} r(x, y) = 0``, which gives ``J* = −β·E_{π_cal}[ρθ(y)]``:

    - ``mode="online"`` (optimism, maximise the value): ``sign = +1``, which pushes the log-probability of
      ``π_cal = πref`` samples down, the same form as XPO's exploration bonus;
    - ``mode="offline"`` (pessimism, minimise the value): ``sign = −1``, which pushes the log-probability of
      ``π_cal`` samples up, a conservative (behaviour-cloning-like) term. With the preferred responses as the
      ``π_cal`` samples this is DPO plus a scaled NLL on ``y_w``.

    β is absorbed into α. Source: Cen et al., "Value-Incentivized Preference Optimization", arXiv 2405.19320; sign
    and calibration derived as above from the paper's objective. α and the offline choice of ``π_cal`` are not
    verified against the paper's experiments. Confidence: [R].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        policy_calibration_logps: ``ℓθ(y)`` for ``y ∼ π_cal``, shape ``(B,)``.
        beta: KL strength β.
        alpha: Regulariser weight α.
        mode: ``"offline"`` (pessimism) or ``"online"`` (optimism).

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    if mode not in ("offline", "online"):
        raise ValueError(f"mode must be 'offline' or 'online', got {mode!r}")
    sign = 1.0 if mode == "online" else -1.0
    base = dpo(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    value_term = sign * alpha * policy_calibration_logps.mean()
    return make_output(
        base.losses,
        base.chosen_rewards,
        base.rejected_rewards,
        extra_loss=value_term,
        metrics={"calibration_logps": policy_calibration_logps.mean()},
    )


def hypo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    policy_online_logps: Tensor,
    reference_online_logps: Tensor,
    *,
    beta: float = 0.1,
    kl_coef: float = 0.01,
) -> ObjectiveOutput:
    """HyPO: offline DPO plus a reverse-KL penalty estimated on the policy's own samples.

    ``L = L_DPO(θ; D_offline) + λ·KL(πθ ‖ πref)`` with ``KL ≈ mean_i ρθ(y_i)``, ``y_i ∼ πθ(·|x_i)`` sampled during
    training. The samples are not differentiable, so the KL gradient uses the score-function form
    ``E[(ρθ(y) − b)·∇ℓθ(y)]`` with a leave-one-out baseline ``b``; the term added to the loss is the matching
    surrogate ``mean_i (ρ_i − b_i)·ℓθ(y_i)`` (its value is not the KL; the KL estimate is logged as ``online_kl``).

    Source: Song et al., "The Importance of Online Data: Understanding Preference Fine-tuning via Coverage",
    arXiv 2406.01462 (Algorithm HyPO). λ is tuned in the paper; 0.01 here is a placeholder. Confidence: [R].

    Args:
        policy_chosen_logps: ``ℓθ(y_w)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l)``, shape ``(B,)``.
        policy_online_logps: ``ℓθ(y)`` of on-policy samples, shape ``(M,)`` (gradients flow through it).
        reference_online_logps: ``ℓref(y)`` of the same samples, shape ``(M,)``.
        beta: KL strength β of the DPO term.
        kl_coef: Weight λ of the online KL term.

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    base = dpo(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta=beta,
    )
    ratio = (policy_online_logps - reference_online_logps).detach()
    n = ratio.numel()
    # Leave-one-out baseline: unbiased, and it removes most of the variance of the score-function estimator.
    baseline = (ratio.sum() - ratio) / (n - 1) if n > 1 else torch.zeros_like(ratio)
    surrogate = ((ratio - baseline) * policy_online_logps).mean()
    return make_output(
        base.losses,
        base.chosen_rewards,
        base.rejected_rewards,
        extra_loss=kl_coef * surrogate,
        metrics={"online_kl": ratio.mean()},
    )


def fspo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 0.1,
    loss: str = "ipo",
    length_normalize: bool = False,
) -> ObjectiveOutput:
    """FSPO: IPO (or DPO) on a held-out pair whose prompt carries N few-shot preferences of the same user.

    The objective is IPO's ``(ρθ(y_w | x, C_u) − ρθ(y_l | x, C_u) − 1/(2β))²``; what makes it FSPO is the data: the
    prompt is prefixed by the user's context ``C_u = {(x_i, y_w,i, y_l,i)}_{i≤N}``, never containing the held-out pair
    (see :func:`metapo.objectives.fewshot.format_fewshot_prompt`). With N = 0 it is plain IPO. The paper's
    user-description step (RAT) is a data-generation procedure and is not part of this loss.

    Source: Singh et al., "FSPO: Few-Shot Preference Optimization of Synthetic Preference Data in LLMs Elicits
    Effective Personalization to Real Users", arXiv 2502.19312, from a secondary summary. Confidence: [S].

    Args:
        policy_chosen_logps: ``ℓθ(y_w | x, C_u)``, shape ``(B,)``.
        policy_rejected_logps: ``ℓθ(y_l | x, C_u)``, shape ``(B,)``.
        reference_chosen_logps: ``ℓref(y_w | x, C_u)``, shape ``(B,)``.
        reference_rejected_logps: ``ℓref(y_l | x, C_u)``, shape ``(B,)``.
        chosen_lengths: ``|y_w|`` in tokens, shape ``(B,)``.
        rejected_lengths: ``|y_l|`` in tokens, shape ``(B,)``.
        beta: Regularisation β (IPO's τ, or DPO's β).
        loss: ``"ipo"`` (the paper's main loss) or ``"dpo"`` (its DPO variant).
        length_normalize: For IPO, use TRL's per-token log-ratios.

    Returns:
        Loss and implicit rewards ``β·ρ``.
    """
    if loss == "ipo":
        return ipo(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            chosen_lengths,
            rejected_lengths,
            beta=beta,
            length_normalize=length_normalize,
        )
    if loss == "dpo":
        return dpo(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            beta=beta,
        )
    raise ValueError(f"loss must be 'ipo' or 'dpo', got {loss!r}")
