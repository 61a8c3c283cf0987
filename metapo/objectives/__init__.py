"""Preference-optimization objectives as pure functions, and a registry that selects them by name.

Example:
    >>> from metapo.objectives import get_objective
    >>> spec = get_objective("dpo")
    >>> out = spec(policy_chosen_logps=pc, policy_rejected_logps=pr,
    ...            reference_chosen_logps=rc, reference_rejected_logps=rr, beta=0.1)  # doctest: +SKIP
    >>> out.loss.backward()  # doctest: +SKIP
"""

from .base import (
    ObjectiveOutput,
    batch_token_mean_nll,
    length_desensitized_weights,
    masked_mean,
    masked_sum,
    sequence_logps,
)
from .fewshot import build_user_contexts, format_fewshot_prompt
from .implicit import implicit_sft
from .listwise import adaptive_step_weights, lambda_weights, pro, tree_po
from .nash import apo, extrapolate, geometric_mixture, inpo, nash_mp, online_ipo, sppo, xpo
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
from .registry import REGISTRY, ObjectiveSpec, get_objective, list_objectives
from .selfsup import DegreeClassifier, make_degree_variants, spo_selfsup
from .sparse import SparseTokenMasks, sparse_po, token_kl

__all__ = [
    "REGISTRY",
    "DegreeClassifier",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "SparseTokenMasks",
    "adaptive_step_weights",
    "apo",
    "batch_token_mean_nll",
    "build_user_contexts",
    "cdpo",
    "dpo",
    "extrapolate",
    "format_fewshot_prompt",
    "fspo",
    "geometric_mixture",
    "get_objective",
    "hinge",
    "hypo",
    "implicit_sft",
    "inpo",
    "ipo",
    "lambda_weights",
    "ld_dpo",
    "length_desensitized_weights",
    "list_objectives",
    "make_degree_variants",
    "masked_mean",
    "masked_sum",
    "modpo",
    "nash_mp",
    "online_ipo",
    "pro",
    "rationale_dpo",
    "robust_dpo",
    "rpo",
    "sequence_logps",
    "simpo",
    "sparse_po",
    "spo_selfsup",
    "sppo",
    "token_kl",
    "tree_po",
    "triple_po",
    "upo",
    "vpo",
    "xpo",
]
