"""The objective registry: one name per method, mapping to its function, paper and data needs.

A config selects an objective by name and passes hyperparameters as keyword arguments. The function's keyword-only
parameters are the hyperparameters (their defaults are the method's defaults); its other parameters name the
tensors it needs, which tells the trainer what to compute (see ``metapo.objectives.pairwise`` for the naming
contract).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .base import ObjectiveOutput
from .implicit import implicit_sft
from .listwise import pro, tree_po
from .nash import apo, inpo, nash_mp, online_ipo, sppo, xpo
from .pairwise import (
    cdpo,
    dpo,
    fspo,
    hinge,
    hypo,
    ipo,
    ld_dpo,
    modpo,
    rationale_dpo,
    robust_dpo,
    rpo,
    simpo,
    triple_po,
    upo,
    vpo,
)
from .selfsup import DegreeClassifier, spo_selfsup
from .sparse import SparseTokenMasks, sparse_po

HeadFactory = Callable[[Any, Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything the trainer and the CLI need to know about one objective.

    Attributes:
        name: Registry name used in configs.
        fn: The pure loss function.
        paper: Paper title.
        arxiv: arXiv id, or ``""`` when the method has none.
        confidence: How far the formula was checked (``V-TRL``, ``V-code``, ``V-paper``, ``S``, ``R``).
        data: ``"pair"`` (prompt/chosen/rejected) or ``"list"`` (prompt/responses[/scores]).
        needs_reference: Whether a reference model (or precomputed reference log-probs) is needed; a callable
            receives the resolved hyperparameters when the answer depends on them.
        columns: Extra dataset columns the method reads when present.
        required_columns: Extra columns without which the method cannot run.
        online_source: Which model samples fresh responses during training (``"policy"``, ``"reference"``), as a
            function of the hyperparameters; ``None`` when the method is purely offline.
        head: Factory ``(model_config, hyperparameters) -> nn.Module`` for an auxiliary head trained with the
            policy (SparsePO masks, SPO's degree classifier).
        trl: The TRL 1.16 configuration that implements the same loss, when there is one.
        summary: One-line description.
    """

    name: str
    fn: Callable[..., ObjectiveOutput]
    paper: str
    arxiv: str
    confidence: str
    data: str
    needs_reference: bool | Callable[[Mapping[str, Any]], bool]
    summary: str
    columns: tuple[str, ...] = ()
    required_columns: tuple[str, ...] = ()
    online_source: Callable[[Mapping[str, Any]], str | None] | None = None
    head: HeadFactory | None = None
    trl: str | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The hyperparameters and their defaults (the function's keyword-only parameters)."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the tensors the function takes."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY)

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Tensor inputs that may be left out (they default to ``None``)."""
        params = inspect.signature(self.fn).parameters.values()
        return frozenset(
            p.name
            for p in params
            if p.kind is not inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
        )

    def hyperparameters(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``overrides``; unknown names raise so that typos do not pass silently.

        Args:
            overrides: Hyperparameters from the config.

        Returns:
            The complete hyperparameter dict.
        """
        params = self.defaults
        unknown = set(overrides or {}) - set(params)
        if unknown:
            raise ValueError(
                f"objective {self.name!r} has no hyperparameter(s) {sorted(unknown)}; known: {sorted(params)}"
            )
        params.update(overrides or {})
        return params

    def requires_reference(self, hyperparameters: Mapping[str, Any]) -> bool:
        """Whether this configuration needs reference log-probabilities."""
        if callable(self.needs_reference):
            return bool(self.needs_reference(hyperparameters))
        return self.needs_reference

    def online(self, hyperparameters: Mapping[str, Any]) -> str | None:
        """Which model generates online samples for this configuration, if any."""
        return None if self.online_source is None else self.online_source(hyperparameters)

    def __call__(self, **kwargs: Any) -> ObjectiveOutput:
        return self.fn(**kwargs)


def _sparse_head(config: Any, hp: Mapping[str, Any]) -> nn.Module:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return SparseTokenMasks(text.hidden_size, text.num_hidden_layers, mode=hp.get("mask_mode", "common"))


def _degree_head(config: Any, hp: Mapping[str, Any]) -> nn.Module:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return DegreeClassifier(text.hidden_size, int(hp["max_removed"]) + 1)


_SPECS = (
    ObjectiveSpec(
        "dpo",
        dpo,
        "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        "2305.18290",
        "V-TRL",
        "pair",
        True,
        "−log σ(βΔ)",
        trl='DPOConfig(loss_type=["sigmoid"])',
    ),
    ObjectiveSpec(
        "ipo",
        ipo,
        "A General Theoretical Paradigm to Understand Learning from Human Preferences",
        "2310.12036",
        "V-TRL",
        "pair",
        True,
        "(Δ − 1/(2β))², sequence-level by default",
        trl='DPOConfig(loss_type=["ipo"]) (per-token normalised: length_normalize=true)',
    ),
    ObjectiveSpec(
        "cdpo",
        cdpo,
        "A note on DPO with noisy preferences & relationship to IPO (Mitchell, 2023)",
        "",
        "V-TRL",
        "pair",
        True,
        "label-smoothed DPO: −(1−ε)log σ(βΔ) − ε log σ(−βΔ); per-pair ε from a pair_smoothing column",
        columns=("pair_smoothing",),
        trl='experimental CPOConfig(loss_type="sigmoid", label_smoothing=ε) on log-ratios',
    ),
    ObjectiveSpec(
        "hinge",
        hinge,
        "Statistical Rejection Sampling Improves Preference Optimization (RSO)",
        "2309.06657",
        "V-TRL",
        "pair",
        True,
        "max(0, 1 − βΔ)",
        trl='DPOConfig(loss_type=["hinge"])',
    ),
    ObjectiveSpec(
        "robust_dpo",
        robust_dpo,
        "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
        "2403.00409",
        "V-TRL",
        "pair",
        True,
        "[(1−ε)ℓ(Δ) − εℓ(−Δ)]/(1−2ε)",
        trl='DPOConfig(loss_type=["robust"], label_smoothing=ε)',
    ),
    ObjectiveSpec(
        "ld_dpo",
        ld_dpo,
        "Length Desensitization in Direct Preference Optimization",
        "2409.06411",
        "V-TRL",
        "pair",
        True,
        "DPO on prefix + α·tail log-probs",
        trl="DPOConfig(ld_alpha=α)",
    ),
    ObjectiveSpec(
        "rpo",
        rpo,
        "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer",
        "2405.16436",
        "V-TRL",
        "pair",
        True,
        "DPO + η·NLL(chosen)",
        trl='DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, η])',
    ),
    ObjectiveSpec(
        "simpo",
        simpo,
        "SimPO: Simple Preference Optimization with a Reference-Free Reward",
        "2405.14734",
        "V-TRL",
        "pair",
        False,
        "−log σ(βℓ̄_w − βℓ̄_l − γ), reference-free",
        trl='experimental CPOConfig(loss_type="simpo", cpo_alpha=0.0)',
    ),
    ObjectiveSpec(
        "triple_po",
        triple_po,
        "Triple Preference Optimization: Achieving Better Alignment using a Single Step Optimization",
        "2405.16681",
        "V-TRL",
        "pair",
        False,
        "reference-free pairwise + α·NLL(gold); TPO-L margin variant",
        columns=("gold",),
        trl='experimental TPOConfig(loss_type="sigmoid"|"tpo-l")',
    ),
    ObjectiveSpec(
        "modpo",
        modpo,
        "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct Preference Optimization",
        "2310.03708",
        "V-code",
        "pair",
        True,
        "−log σ((βΔ − w_{−0}ᵀΔr_{−0})/w_0)",
        columns=("aux_margins", "aux_rewards_chosen", "aux_rewards_rejected"),
    ),
    ObjectiveSpec(
        "rationale_dpo",
        rationale_dpo,
        "Data-Centric Human Preference Optimization with Rationales",
        "2407.14477",
        "V-code",
        "pair",
        True,
        "DPO − log σ(γ·ℓθ(rationale | x, y_w, y_l))",
        columns=("rationale",),
        required_columns=("rationale",),
    ),
    ObjectiveSpec(
        "vpo",
        vpo,
        "Value-Incentivized Preference Optimization: A Unified Approach to Online and Offline RLHF",
        "2405.19320",
        "R",
        "pair",
        True,
        "DPO ± α·E_{π_cal}[ℓθ] (optimism online, pessimism offline)",
        columns=("calibration",),
        online_source=lambda hp: "reference" if hp.get("mode") == "online" else None,
    ),
    ObjectiveSpec(
        "hypo",
        hypo,
        "The Importance of Online Data: Understanding Preference Fine-tuning via Coverage",
        "2406.01462",
        "R",
        "pair",
        True,
        "offline DPO + λ·KL(πθ‖πref) on on-policy samples",
        online_source=lambda hp: "policy",
    ),
    ObjectiveSpec(
        "fspo",
        fspo,
        "FSPO: Few-Shot Preference Optimization of Synthetic Preference Data in LLMs Elicits Effective "
        "Personalization to Real Users",
        "2502.19312",
        "S",
        "pair",
        True,
        "IPO on prompts carrying N few-shot user preferences",
        columns=("user_context", "user"),
        trl='DPOConfig(loss_type=["ipo"]) on the few-shot prompts',
    ),
    ObjectiveSpec(
        "upo",
        upo,
        "Self-Evolutionary Large Language Models through Uncertainty-Enhanced Preference Optimization",
        "2409.11212",
        "V-paper",
        "pair",
        True,
        "DPO vs the previous iterate with per-pair flip weight α (pair_smoothing column) + λ·NLL(y_w)",
        columns=("pair_smoothing",),
    ),
    ObjectiveSpec(
        "spo_selfsup",
        spo_selfsup,
        "Self-supervised Preference Optimization: Enhance Your Language Model with Preference Degree Awareness",
        "2409.17791",
        "S/R",
        "pair",
        lambda hp: hp.get("base", "dpo") == "dpo",
        "base PO loss + λ·CE(number of removed key items)",
        columns=("degree_variants",),
        head=_degree_head,
    ),
    ObjectiveSpec(
        "sparse_po",
        sparse_po,
        "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks",
        "2410.05102",
        "V-code",
        "pair",
        True,
        "−log σ(β(u − d)) with learned token masks + L1",
        head=_sparse_head,
    ),
    ObjectiveSpec(
        "pro",
        pro,
        "Preference Ranking Optimization for Human Alignment",
        "2306.17492",
        "V-code",
        "list",
        False,
        "Plackett–Luce over a ranking with score temperatures + SFT",
        columns=("scores",),
    ),
    ObjectiveSpec(
        "tree_po",
        tree_po,
        "TPO: Aligning Large Language Models with Multi-branch & Multi-step Preference Trees",
        "2410.12854",
        "V-code/R",
        "list",
        True,
        "LambdaRank over list rewards with adaptive step weights",
        columns=("scores",),
    ),
    ObjectiveSpec(
        "implicit_sft",
        implicit_sft,
        "Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections",
        "2507.00018",
        "R",
        "pair",
        lambda hp: hp.get("divergence", "reverse_kl") != "reverse_kl",
        "SFT on the chosen responses via an f-divergence implicit reward; reverse_kl = plain SFT",
        trl="SFTConfig on the chosen responses (divergence=reverse_kl only)",
    ),
    # Online and self-play methods (`metapo train-online`): the trainer samples the pairs from the current policy,
    # asks a preference oracle, and supplies the earlier-iterate log-probs and preferences as columns.
    ObjectiveSpec(
        "online_dpo",
        dpo,
        "Direct Language Model Alignment from Online AI Feedback",
        "2402.04792",
        "V-TRL",
        "pair",
        True,
        "DPO on pairs sampled from the current policy and labelled by the oracle",
        trl="experimental OnlineDPOConfig(loss_type='sigmoid')",
    ),
    ObjectiveSpec(
        "online_ipo",
        online_ipo,
        "Human Alignment of Large Language Models through Online Preference Optimisation",
        "2403.08635",
        "V-code",
        "pair",
        True,
        "((ρ(y) − ρ(y')) − (P(y≻π) − P(y'≻π))/β)², targets from self-play win rates",
        required_columns=("chosen_preference", "rejected_preference"),
    ),
    ObjectiveSpec(
        "egpo",
        online_ipo,
        "Extragradient Preference Optimization (EGPO): Beyond Last-Iterate Convergence for Nash Learning from "
        "Human Feedback",
        "2503.08942",
        "V-code",
        "pair",
        True,
        "online IPO with extragradient rounds (look-ahead opponent)",
        required_columns=("chosen_preference", "rejected_preference"),
    ),
    ObjectiveSpec(
        "inpo",
        inpo,
        "Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret Learning",
        "2407.00617",
        "V-paper",
        "pair",
        True,
        "(h − 1/(2η))², h against πref^{τ/η}·π_t^{1−τ/η}",
        required_columns=("previous_chosen_logps", "previous_rejected_logps"),
    ),
    ObjectiveSpec(
        "sppo",
        sppo,
        "Self-Play Preference Optimization for Language Model Alignment",
        "2405.00675",
        "V-code",
        "pair",
        True,
        "½Σ(ρ_t(y) − (P̂(y≻π_t) − ½)/β)², reference = π_t",
        required_columns=("chosen_preference", "rejected_preference"),
        trl='DPOConfig(loss_type=["sppo_hard"]) for hard labels (twice this loss)',
    ),
    ObjectiveSpec(
        "gpo",
        sppo,
        "Beyond Bradley-Terry Models: A General Preference Model for Language Model Alignment",
        "2410.02197",
        "V-code",
        "pair",
        True,
        "SPPO's loss on mean antisymmetric preference scores η·s̄(y)",
        required_columns=("chosen_preference", "rejected_preference"),
    ),
    ObjectiveSpec(
        "apo",
        apo,
        "Accelerated Preference Optimization for Large Language Model Alignment",
        "2410.06293",
        "R",
        "pair",
        False,
        "DPO against (1+α)·log π̂_t − α·log π̂_{t−1}",
        required_columns=("previous_chosen_logps", "previous_rejected_logps"),
    ),
    ObjectiveSpec(
        "xpo",
        xpo,
        "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for Sample-Efficient RLHF",
        "2405.21046",
        "V-TRL",
        "pair",
        True,
        "online DPO + α·ℓθ(ỹ), ỹ ∼ πref",
        columns=("calibration",),
        trl="experimental XPOConfig (TRL 1.10-dev; removed before 1.16)",
    ),
    ObjectiveSpec(
        "nash_mp",
        nash_mp,
        "Accelerating Nash Learning from Human Feedback via Mirror Prox",
        "2505.19731",
        "R",
        "pair",
        True,
        "two proximal steps vs π_k and π_{k+½}, each fitted to its closed form",
        required_columns=(
            "previous_chosen_logps",
            "previous_rejected_logps",
            "chosen_preference",
            "rejected_preference",
        ),
    ),
)

REGISTRY: dict[str, ObjectiveSpec] = {spec.name: spec for spec in _SPECS}


def get_objective(name: str) -> ObjectiveSpec:
    """Look up an objective by registry name.

    Args:
        name: Registry name, e.g. ``"dpo"`` or ``"simpo"``.

    Returns:
        Its :class:`ObjectiveSpec`.

    Raises:
        KeyError: With the list of known names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def list_objectives() -> list[ObjectiveSpec]:
    """All registered objectives, in registry order."""
    return list(REGISTRY.values())
