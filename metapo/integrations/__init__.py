"""Clients of the reward service (``metapo serve-reward``) for verl, OpenRLHF and TRL.

Each module imports only what its engine already has: ``verl`` and ``openrlhf`` need httpx (and torch for
OpenRLHF's tensors), ``trl`` needs transformers.
"""

from metapo.integrations.client import RewardServiceError, ServiceClient

__all__ = ["RewardServiceError", "ServiceClient"]
