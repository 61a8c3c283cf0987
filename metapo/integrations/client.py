"""A small HTTP client of the reward service: bearer token from a named variable, retries, picklable."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Answers worth retrying: the service is busy (503 with Retry-After), restarting, or behind a proxy that is.
_RETRY_STATUS = {502, 503, 504}


class RewardServiceError(RuntimeError):
    """The reward service refused a request (4xx: the message says why) or stayed unreachable."""


@dataclass
class ServiceClient:
    """Talks to ``metapo serve-reward`` at ``url``; holds no connection when pickled.

    Args:
        url: The service root, e.g. ``http://127.0.0.1:8765``.
        token_env: Environment variable holding the bearer token (read when the first request is made, in
            the process that makes it, so the token itself is never pickled).
        timeout_s: Timeout of one request (a batch waits for the judge).
        max_attempts: Tries per request on connection errors and 502/503/504 (a restarting service included).
        backoff_s: First wait between tries (doubled each time, at most 10 s; a Retry-After header wins).
    """

    url: str
    token_env: str | None = None
    timeout_s: float = 600.0
    max_attempts: int = 8
    backoff_s: float = 0.5
    _sync: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)
    _async: dict[int, httpx.AsyncClient] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"reward service url {self.url!r} must start with http:// or https://")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sync"], state["_async"] = None, {}
        return state

    def headers(self) -> dict[str, str]:
        if not self.token_env:
            return {}
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise RewardServiceError(f"{self.token_env} is unset or empty; export the reward service's token in it")
        return {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON and return the decoded answer (blocking)."""
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout_s)
        return self._retry_sync(lambda: self._sync.post(self.url + path, json=body, headers=self.headers()))

    def get(self, path: str) -> Any:
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout_s)
        return self._retry_sync(lambda: self._sync.get(self.url + path, headers=self.headers()))

    async def apost(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON from async code (one connection pool per event loop)."""
        loop = id(asyncio.get_running_loop())
        client = self._async.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
            client = self._async[loop] = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
        headers = self.headers()
        last = "no attempt"
        for attempt in range(self.max_attempts):
            try:
                response = await client.post(self.url + path, json=body, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(self._wait(attempt, None))
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                await asyncio.sleep(self._wait(attempt, response))
                continue
            return _decoded(response, path)
        raise RewardServiceError(f"reward service {self.url}{path} failed {self.max_attempts} times (last: {last})")

    def _retry_sync(self, send: Any) -> Any:
        last = "no attempt"
        for attempt in range(self.max_attempts):
            try:
                response = send()
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(self._wait(attempt, None))
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                time.sleep(self._wait(attempt, response))
                continue
            return _decoded(response, "")
        raise RewardServiceError(f"reward service {self.url} failed {self.max_attempts} times (last: {last})")

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), 30.0)
        return min(self.backoff_s * 2**attempt, 10.0)


def _decoded(response: httpx.Response, path: str) -> Any:
    if response.status_code >= 400:
        try:
            reason = response.json().get("error", response.text)
        except ValueError:
            reason = response.text[:300]
        raise RewardServiceError(f"reward service answered {response.status_code} to {path or 'request'}: {reason}")
    return response.json()
