"""Preference-data builders and self-improvement loops over the preference trainer.

One module per method, each turning a policy, a judge or verifier, and prompts into rows that
``metapo train-pref`` trains on unchanged: :mod:`~metapo.prefdata.rso` (rejection sampling),
:mod:`~metapo.prefdata.evolve`, :mod:`~metapo.prefdata.upo` and :mod:`~metapo.prefdata.mcts` (loops, run by
:mod:`~metapo.prefdata.loop`), :mod:`~metapo.prefdata.fspo`, :mod:`~metapo.prefdata.mapl`,
:mod:`~metapo.prefdata.structured`, and :mod:`~metapo.prefdata.rps` (inference-time selection). Shared pieces
(the policy, rewards, row files) are in :mod:`~metapo.prefdata.common`; ``metapo build-pref`` runs any of them
from a YAML config.
"""

from metapo.prefdata.common import (
    GenerationOptions,
    HFPolicy,
    ItemScores,
    Policy,
    Sample,
    read_rows,
    write_rows,
)

__all__ = ["GenerationOptions", "HFPolicy", "ItemScores", "Policy", "Sample", "read_rows", "write_rows"]
