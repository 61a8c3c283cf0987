"""The evolving-rubric reward as an HTTP service (``metapo serve-reward``) for verl, OpenRLHF and TRL workers.

One process owns the rubric reward, the window of scored samples, the rubric store and the Meta Policy
Optimization controller of one run directory; every worker of every engine scores through it, so the rubric
that evolves is the one all of them use. Clients are in :mod:`metapo.integrations`.
"""

from metapo.service.config import ServeConfig, ServiceSettings, load_serve_config
from metapo.service.state import RewardService

__all__ = ["RewardService", "ServeConfig", "ServiceSettings", "load_serve_config"]
