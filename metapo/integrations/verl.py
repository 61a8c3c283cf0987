"""verl's custom reward function, scoring through the reward service.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)`` once per sample: its
reward loop awaits an ``async def`` one (many in flight per worker), older reward managers call a plain function
(use :func:`compute_score_sync` there). Point verl at this module::

    custom_reward_function.path=<site-packages>/metapo/integrations/verl.py custom_reward_function.name=compute_score

and tell it where the service is with ``METAPO_REWARD_URL`` (and ``METAPO_REWARD_TOKEN_ENV`` naming the variable
that holds the token) in the workers' environment, or ``metapo_url`` in ``custom_reward_function.reward_kwargs``.

What the service needs travels in ``extra_info`` (verl keeps it per row from the dataset): ``prompt`` (or
``task_input``) — the task text the judge sees —, ``lineage`` for per-cluster rubrics, ``ended`` (whether the
response stopped at EOS), and ``columns`` (any other dataset columns the task reads; an object, or JSON text as
``examples/service/prepare_data.py`` writes it). ``ground_truth`` is passed as
the column ``ground_truth``.

verl has no per-sample mask for a missing reward, so a judge failure gets ``service.fallback_reward``, counted by
the service (``metapo_fallback_rewards_total{engine="verl"}``) and marked ``judge_failed=1`` in the result, which
verl logs with the other reward extras. ``rubric_version`` says which rubric produced each reward.
"""

from __future__ import annotations

import json
import os
from typing import Any

from metapo.integrations.client import ServiceClient

# One client (connection pool) per process and address: verl calls a plain function, so the pool cannot live
# in an object the engine owns.
_CLIENTS: dict[tuple[str, str | None], ServiceClient] = {}


def _client(url: str | None, token_env: str | None) -> ServiceClient:
    url = url or os.environ.get("METAPO_REWARD_URL")
    if not url:
        raise ValueError(
            "the reward service address is unknown: set METAPO_REWARD_URL in the workers' environment or "
            "custom_reward_function.reward_kwargs.metapo_url"
        )
    token_env = token_env or os.environ.get("METAPO_REWARD_TOKEN_ENV") or None
    key = (url, token_env)
    if key not in _CLIENTS:
        _CLIENTS[key] = ServiceClient(url, token_env=token_env)
    return _CLIENTS[key]


def request_body(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None) -> dict:
    """The ``/v1/score`` body for one verl sample."""
    info = dict(extra_info or {})
    columns = info.get("columns") or {}
    if isinstance(columns, str):  # parquet keeps rows with differing keys as JSON text
        columns = json.loads(columns)
    columns = dict(columns)
    for key in ("lineage", "task_input", "ended"):
        if info.get(key) is not None:
            columns[key] = info[key]
    if ground_truth is not None:
        columns["ground_truth"] = ground_truth
    if data_source is not None:
        columns["data_source"] = str(data_source)
    prompt = info.get("prompt") or info.get("task_input") or info.get("question") or ""
    return {
        "samples": [{"prompt": prompt, "completion": solution_str, "columns": columns}],
        "engine": "verl",
        "on_failure": "fallback",
    }


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    first = answer["results"][0]
    return {
        "score": float(first["reward"]),
        "rubric_version": int(first["rubric_version"]),
        "judge_failed": int(bool(first["failed"])),
    }


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    metapo_url: str | None = None,
    metapo_token_env: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl's async reward-loop contract: ``{"score", "rubric_version", "judge_failed"}`` for one sample."""
    client = _client(metapo_url, metapo_token_env)
    answer = await client.apost("/v1/score", request_body(data_source, solution_str, ground_truth, extra_info))
    return _result(answer)


def compute_score_sync(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    metapo_url: str | None = None,
    metapo_token_env: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The same for verl reward managers that call a plain function."""
    client = _client(metapo_url, metapo_token_env)
    return _result(client.post("/v1/score", request_body(data_source, solution_str, ground_truth, extra_info)))


def step(step: int, metapo_url: str | None = None, rubric_versions: list[int] | None = None) -> dict[str, Any]:
    """Report a trainer step to the service (meta steps every ``mpo.interval`` steps; staleness logging)."""
    body: dict[str, Any] = {"step": int(step)}
    if rubric_versions is not None:
        body["rubric_versions"] = [int(v) for v in rubric_versions]
    return _client(metapo_url, None).post("/v1/step", body)


__all__ = ["compute_score", "compute_score_sync", "request_body", "step"]
