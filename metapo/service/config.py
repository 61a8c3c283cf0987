"""Settings of ``metapo serve-reward``: a run config (task, judges, reward, mpo) plus a ``service`` section."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapo.config import ConfigError
from metapo.train.config import RunConfig

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ServiceSettings:
    """The ``service:`` section of a run config (ignored by ``metapo train``)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to bind. 127.0.0.1 keeps the service on this machine; 0.0.0.0 opens it."},
    )
    port: int = field(default=8765, metadata={"help": "TCP port (0 = any free port, printed at start)."})
    token_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of an environment variable holding a bearer token every request must carry "
            "(Authorization: Bearer ...); empty = no token (only sensible on 127.0.0.1)."
        },
    )
    meta_every_samples: int = field(
        default=0,
        metadata={
            "help": "Start a meta step every this many scored samples; 0 = only on POST /v1/step (every "
            "mpo.interval trainer steps, or at once with run_meta=true)."
        },
    )
    max_body_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"help": "Largest request body accepted, in bytes (413 above)."}
    )
    max_batch: int = field(default=4096, metadata={"help": "Most samples in one request (413 above)."})
    max_concurrent_requests: int = field(
        default=256,
        metadata={"help": "Requests scored at once; more get 503 with Retry-After (clients retry)."},
    )
    max_lineages: int = field(
        default=1024, metadata={"help": "Most rubric lineages; a request naming a new one beyond gets 400."}
    )
    fallback_reward: float = field(
        default=0.0,
        metadata={
            "help": "Reward sent to engines that cannot mask a sample (OpenRLHF, verl) when the judge failed; "
            "every use is counted (metapo_fallback_rewards_total) and logged. Native and TRL clients get null."
        },
    )
    shutdown_wait_s: float = field(
        default=120.0,
        metadata={"help": "On shutdown, how long to wait for a running meta step before saving without it."},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"service.port={self.port}; choose 0..65535")
        if not self.host.strip():
            raise ValueError("service.host is empty; use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
        if self.token_env is not None and not _ENV_NAME.match(self.token_env):
            raise ValueError(
                f"service.token_env={self.token_env!r} is not an environment variable name; put the token in "
                "a variable and name the variable here"
            )
        for key in ("max_body_bytes", "max_batch", "max_concurrent_requests", "max_lineages"):
            if getattr(self, key) < 1:
                raise ValueError(f"service.{key}={getattr(self, key)}; it must be >= 1")
        if self.meta_every_samples < 0 or self.shutdown_wait_s < 0:
            raise ValueError("service.meta_every_samples and service.shutdown_wait_s must be >= 0")

    def token(self) -> str | None:
        """The bearer token, read from ``token_env`` at start; a named but empty variable is an error."""
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env, "")
        if not value.strip():
            raise ConfigError(
                f"service.token_env names {self.token_env}, which is unset or empty; export the token in it "
                "or remove service.token_env"
            )
        return value.strip()


@dataclass
class ServeConfig:
    """A run config for the service: what the reward needs from :class:`RunConfig`, plus ``service``."""

    run: RunConfig
    service: ServiceSettings

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir)


def load_serve_config(path: Path | None, overrides: list[str], extra: dict[str, Any] | None = None) -> ServeConfig:
    """YAML, then shortcut flags (``service.host``...), then ``key=value`` overrides, checked in full."""
    from metapo.config import deep_merge, from_dict, load_yaml, parse_overrides

    data = load_yaml(path) if path else {}
    data = deep_merge(data, extra or {})
    data = deep_merge(data, parse_overrides(overrides))
    service = data.pop("service", None)
    run = from_dict(RunConfig, data)
    settings = from_dict(ServiceSettings, service, "service.")
    return ServeConfig(run, settings)
