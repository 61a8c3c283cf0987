"""Helpers for the reward-service tests: configs, an in-thread uvicorn server, a subprocess server."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.scripted_judge import default_answer

REPO = Path(__file__).resolve().parents[1]


def fresh_rubrics(delay_s: float = 0.0) -> Any:
    """A meta judge whose every structured answer is a different valid rubric (after ``delay_s``)."""
    counter = itertools.count()

    def handler(body: dict[str, Any]) -> Any:
        if body.get("response_format"):
            time.sleep(delay_s)
            n = next(counter)
            item = {"title": f"Criterion {n}", "description": f"Rule {n}.", "min_score": 0, "max_score": 9}
            return json.dumps({"items": [item]})
        return default_answer(body)

    return handler


def write_config(tmp_path: Path, judge_url: str, meta_url: str, *, service: dict | None = None, **run: Any) -> Path:
    """A serve-reward config for the essay task on scripted judges; returns its path."""
    data: dict[str, Any] = {
        "task": "essay",
        "output_dir": str(tmp_path / "run"),
        "judge": {"backend": "openai", "model": "s", "base_urls": [judge_url], "timeout_s": 5, "max_attempts": 1},
        "meta_judge": {"backend": "openai", "model": "m", "base_urls": [meta_url], "timeout_s": 30, "max_attempts": 1},
        "mpo": {"interval": 2, "samples": 3},
        "service": {"port": 0, **(service or {})},
        # logprob: the scripted judge's item scores are exact in that mode, and each item is one call.
        "reward": {"scoring": "logprob", **run.pop("reward", {})},
    }
    data.update(run)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def build_service(config: Path, overrides: list[str] | None = None) -> Any:
    from metapo.service.config import load_serve_config
    from metapo.service.state import RewardService

    return RewardService.build(load_serve_config(config, overrides or []))


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the URL; stops gracefully."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def serve_in_subprocess(config: Path, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``metapo serve-reward`` as a real process; yields (process, URL); kills it at the end if still alive."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metapo.cli", "serve-reward", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(config.parent),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "http://" not in line:
            proc.kill()
            raise RuntimeError(f"the service did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        url = line.split("on ", 1)[1].split()[0]
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
