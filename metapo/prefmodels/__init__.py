"""Preference and reward models: Bradley–Terry (TRL), GPM, the regret model, DPA's vector model and Themis.

See ``metapo train-rm --help``; trained models load with :meth:`RewardModel.load` and then score as TRL reward
functions, as pairwise judges, as preference oracles, or directly. Names are imported on first use, so that
``metapo --help`` (which imports this package's ``cli``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Calculator": "metapo.prefmodels.tools",
    "CorpusLookup": "metapo.prefmodels.tools",
    "HeadSpec": "metapo.prefmodels.model",
    "PreferenceNet": "metapo.prefmodels.model",
    "RewardModel": "metapo.prefmodels.scorer",
    "load_reward_function": "metapo.prefmodels.scorer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
