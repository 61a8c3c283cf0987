"""OpenRLHF clients of the reward service.

Two ways in, both documented OpenRLHF contracts:

* ``--remote_rm_url http://HOST:PORT/get_reward`` (``--reward.remote_url`` in newer releases): OpenRLHF posts
  ``{"query", "prompts", "labels"}`` itself and reads ``rewards`` (and ``scores``, ``extra_logs``) from the answer.
* ``--remote_rm_url examples/openrlhf_reward_func.py``: a file whose ``reward_func(queries, prompts, labels)``
  returns ``{"rewards", "scores", "extra_logs"}`` as tensors; :func:`reward_func` here does that through the
  service (address in ``METAPO_REWARD_URL``, token variable named by ``METAPO_REWARD_TOKEN_ENV``).

OpenRLHF has no per-sample mask, so a judge failure gets ``service.fallback_reward``, counted by the service
(``metapo_fallback_rewards_total{engine="openrlhf"}``) and logged by OpenRLHF as ``judge_failed`` in its extra logs.
"""

from __future__ import annotations

import os
from typing import Any

from metapo.integrations.client import ServiceClient

_CLIENTS: dict[tuple[str, str | None], ServiceClient] = {}


def _client() -> ServiceClient:
    url = os.environ.get("METAPO_REWARD_URL")
    if not url:
        raise ValueError("set METAPO_REWARD_URL to the reward service address (e.g. http://127.0.0.1:8765)")
    token_env = os.environ.get("METAPO_REWARD_TOKEN_ENV") or None
    key = (url, token_env)
    if key not in _CLIENTS:  # one connection pool per process (OpenRLHF calls a plain function)
        _CLIENTS[key] = ServiceClient(url, token_env=token_env)
    return _CLIENTS[key]


def reward_func(queries: list[str], prompts: list[str], labels: list[Any] | None = None, **kwargs: Any) -> dict:
    """OpenRLHF's ``reward_func`` file contract, answered by the reward service."""
    import torch

    body = {"query": list(queries), "prompts": list(prompts), "labels": list(labels) if labels is not None else None}
    if body["labels"] is None:
        del body["labels"]
    answer = _client().post("/v1/openrlhf", body)
    return {
        "rewards": torch.tensor(answer["rewards"], dtype=torch.float32),
        "scores": torch.tensor(answer["scores"], dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in answer["extra_logs"].items()},
    }
