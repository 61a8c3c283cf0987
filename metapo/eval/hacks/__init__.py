"""The hack-repair benchmark (``metapo hackbench``): is the rubric reward hacked, and do meta steps repair it?

* :mod:`~metapo.eval.hacks.data` — hack sets (JSONL), built-in essay and math sets;
* :mod:`~metapo.eval.hacks.rules` — the rules that build hack variants from a good response;
* :mod:`~metapo.eval.hacks.book` — scores through ``RubricReward``, cached per rubric version;
* :mod:`~metapo.eval.hacks.static` / :mod:`~metapo.eval.hacks.dynamic` — the two protocols;
* :mod:`~metapo.eval.hacks.stats` — success rate, AUC, bootstrap intervals;
* :mod:`~metapo.eval.hacks.output` / :mod:`~metapo.eval.hacks.run` — files and the end-to-end run.
"""

from metapo.eval.hacks.data import HackItem, builtin_hackset, load_hackset
from metapo.eval.hacks.dynamic import Arm, DynamicConfig, default_arms, run_dynamic
from metapo.eval.hacks.run import HackbenchConfig, run_hackbench, write_outputs
from metapo.eval.hacks.static import StaticConfig, run_static

__all__ = [
    "Arm",
    "DynamicConfig",
    "HackItem",
    "HackbenchConfig",
    "StaticConfig",
    "builtin_hackset",
    "default_arms",
    "load_hackset",
    "run_dynamic",
    "run_hackbench",
    "run_static",
    "write_outputs",
]
