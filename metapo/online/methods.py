"""The online methods: for each, which loss, which pairs, which reference, and which outer loop.

A round of :class:`metapo.online.trainer.OnlineTrainer` samples K responses per prompt from the current policy
π_t, asks the oracle for their preference matrix, builds pairs, attaches the columns the loss reads, and fits the
next policy with :class:`metapo.train.preference.PreferenceTrainer`. A method fixes each of those choices:

- ``pairs``: ``"disjoint"`` (samples 2i, 2i+1, hard label: online DPO's two-sample pairs), ``"best_worst"`` (the
  samples with the highest and lowest win rate, as in SPPO, INPO and APO), ``"all"`` (every pair of distinct
  samples, for losses whose soft targets carry the preference), ``"policy_vs_reference"`` (one policy sample
  against one reference sample, XPO);
- ``targets``: ``None`` (hard labels), ``"win_rate"`` (``P̂(y ≻ π_t) − ½`` per response) or ``"score"`` (GPO's mean
  antisymmetric score ``mean_j logit P(y ≻ y_j)``);
- ``reference``: whose log-probs fill the loss's ``reference_*`` inputs, the initial policy or the last iterate;
- ``previous`` / ``older``: supply ``previous_*_logps`` (the policy π_t the round starts from) and
  ``older_*_logps`` (the one before it, for APO's extrapolated reference);
- ``extragradient``: EGPO and Nash-MP fit a look-ahead policy first, sample opponents from it, and fit again from
  π_t against those opponents;
- ``grpo``: SPO has no loss of its own: it runs TRL's ``GRPOTrainer`` with the self-play win-rate reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pairs = Literal["disjoint", "best_worst", "all", "policy_vs_reference"]


@dataclass(frozen=True)
class OnlineMethod:
    """How one online method turns samples and preferences into an update (see the module docstring)."""

    name: str
    objective: str | None
    pairs: Pairs = "best_worst"
    targets: Literal["win_rate", "score"] | None = None
    reference: Literal["initial", "previous"] | None = "initial"
    previous: bool = False
    older: bool = False
    confirm: bool = False  # keep a best/worst pair only when the oracle prefers the best one to the worst
    extragradient: bool = False
    grpo: bool = False
    summary: str = ""


METHODS: dict[str, OnlineMethod] = {
    m.name: m
    for m in (
        OnlineMethod(
            "online_dpo",
            "online_dpo",
            pairs="disjoint",
            summary="DPO on fresh two-sample pairs labelled by the oracle (baseline)",
        ),
        OnlineMethod(
            "online_ipo",
            "online_ipo",
            pairs="all",
            targets="win_rate",
            summary="online IPO: log-ratio margins regressed on win-rate differences (baseline)",
        ),
        OnlineMethod(
            "egpo",
            "egpo",
            pairs="all",
            targets="win_rate",
            extragradient=True,
            summary="online IPO with an extragradient round: targets from a look-ahead policy's samples",
        ),
        OnlineMethod(
            "inpo",
            "inpo",
            previous=True,
            confirm=True,
            summary="IPO against the geometric mixture of the reference and the last iterate",
        ),
        OnlineMethod(
            "sppo",
            "sppo",
            targets="win_rate",
            reference="previous",
            summary="best/worst samples regressed onto their win rates against the last iterate",
        ),
        OnlineMethod(
            "gpo",
            "gpo",
            targets="score",
            reference="previous",
            summary="SPPO's step on mean antisymmetric preference scores",
        ),
        OnlineMethod(
            "apo",
            "apo",
            reference=None,
            previous=True,
            older=True,
            confirm=True,
            summary="iterative DPO against the extrapolated reference (1+α)·log π̂_t − α·log π̂_{t−1}",
        ),
        OnlineMethod(
            "xpo",
            "xpo",
            pairs="policy_vs_reference",
            summary="online DPO on policy-vs-reference pairs plus α·log πθ of the reference sample",
        ),
        OnlineMethod(
            "nash_mp",
            "nash_mp",
            pairs="all",
            targets="win_rate",
            previous=True,
            extragradient=True,
            summary="two proximal steps (against π_k, then against π_{k+½}), each anchored at π_k",
        ),
        OnlineMethod(
            "spo",
            None,
            reference=None,
            grpo=True,
            summary="GRPO with each completion's win rate against its siblings as the reward",
        ),
    )
}


def get_method(name: str) -> OnlineMethod:
    """Look up an online method by name; the error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown online method {name!r}; known: {', '.join(METHODS)}") from None
