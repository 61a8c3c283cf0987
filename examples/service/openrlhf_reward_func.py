"""OpenRLHF reward function file: scores through ``metapo serve-reward``.

Pass it as ``--remote_rm_url examples/service/openrlhf_reward_func.py`` (``--reward.remote_url`` in newer
OpenRLHF) and export ``METAPO_REWARD_URL=http://HOST:PORT`` (and ``METAPO_REWARD_TOKEN_ENV=METAPO_REWARD_TOKEN``
with the token in ``METAPO_REWARD_TOKEN`` when the service has one) to the Ray workers' environment.
"""

from metapo.integrations.openrlhf import reward_func

__all__ = ["reward_func"]
