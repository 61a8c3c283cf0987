"""Preference and reward models: Bradley–Terry (TRL), GPM, the regret model, DPA's vector model and Themis.

See ``metapo train-rm --help``; trained models load with :meth:`RewardModel.load` and then score as TRL reward
functions, as pairwise judges, or directly.
"""

from metapo.prefmodels.model import HeadSpec, PreferenceNet
from metapo.prefmodels.scorer import RewardModel, load_reward_function
from metapo.prefmodels.tools import Calculator, CorpusLookup

__all__ = [
    "Calculator",
    "CorpusLookup",
    "HeadSpec",
    "PreferenceNet",
    "RewardModel",
    "load_reward_function",
]
