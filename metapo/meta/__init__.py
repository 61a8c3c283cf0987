"""The meta-reward model (prescreen, analyze, refine, merge), sample selection, detectors, the acceptance gate,
and the callback."""

from metapo.meta.acceptance import AcceptanceConfig, AcceptanceGate
from metapo.meta.meta_judge import MetaConfig, MetaJudge, MetaOutcome

__all__ = [
    "AcceptanceConfig",
    "AcceptanceGate",
    "MetaConfig",
    "MetaJudge",
    "MetaOutcome",
    "MetaPolicyOptimizationCallback",
]


def __getattr__(name: str):
    # The callback imports transformers; load it only when asked for.
    if name == "MetaPolicyOptimizationCallback":
        from metapo.meta.controller import MetaPolicyOptimizationCallback

        return MetaPolicyOptimizationCallback
    raise AttributeError(name)
