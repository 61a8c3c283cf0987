"""Class 4 of the hardening issue (judge side): a malformed judge answer is a missing score, never an exception.

Answers come from a scripted HTTP server sending raw bytes (so the HTTP reading path is exercised) and from an
in-process backend returning Python objects (the xllamacpp / transformers path). Every malformed answer must end
as :class:`JudgeError` in the client, ``None`` in the reward function and a rejected outcome in the meta step;
the response cache stores an answer only when it reads back exactly, and never a NaN or an Infinity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from metapo.judges import JudgeClient, JudgeError, OpenAIHTTPBackend
from metapo.judges import backends as backends_module
from metapo.judges import parsing as parsing_module
from metapo.judges.cache import ScoreCache
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, chat_response, digit_alternatives

MESSAGES = [{"role": "user", "content": "Score it from 0 to 9."}]
SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["score"],
}


def _score_answer(**changes: Any) -> dict[str, Any]:
    answer = chat_response("6", alternatives=digit_alternatives(6))
    answer.update(changes)
    return answer


def _raw(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _deep(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def _bad_logprobs(value: Any) -> dict[str, Any]:
    answer = _score_answer()
    entry = answer["choices"][0]["logprobs"]["content"][0]
    entry["logprob"] = value
    for alt in entry["top_logprobs"]:
        alt["logprob"] = value
    return answer


# Raw HTTP bodies (status 200) that are no readable chat completion.
UNREADABLE_BODIES: dict[str, bytes] = {
    "deeply-nested-body": b"[" * 100_000 + b"]" * 100_000,
    "deeply-nested-field": _raw({**_score_answer(), "extra": "@"}).replace(b'"@"', b"[" * 200 + b"]" * 200),
    "nan-logprobs": _raw(_bad_logprobs(float("nan"))),
    "infinite-logprobs": _raw(_bad_logprobs(float("inf"))),
    "overflowing-logprobs": _raw(_bad_logprobs(1.0)).replace(b"1.0", b"1e999"),
    "giant-integer": _raw(_score_answer(usage={"prompt_tokens": 1})).replace(
        b'"prompt_tokens": 1', b'"prompt_tokens": ' + b"9" * 5000
    ),
    "choices-is-a-string": _raw({"choices": "6"}),
    "message-is-null": _raw({"choices": [{"message": None}]}),
    "no-choices": _raw({"choices": []}),
    "logprob-types-wrong": _raw(_bad_logprobs("high")),
    "top-level-array": b"[1, 2, 3]",
    "not-utf8": b"\xff\xfe" + b"\x00" * 64,
    "error-object": _raw({"error": {"message": "x" * 100_000, "nested": _deep(100)}}),
}


def _client(url: str, cache: ScoreCache | None = None) -> JudgeClient:
    return JudgeClient(
        OpenAIHTTPBackend([url], timeout_s=10),
        model_id="scripted",
        cache=cache,
        max_attempts=2,
        backoff_base_s=0.01,
        timeout_s=10,
    )


@pytest.mark.parametrize("case", sorted(UNREADABLE_BODIES))
def test_an_unreadable_http_answer_is_a_judge_error_and_is_not_cached(case: str, tmp_path: Path) -> None:
    body = UNREADABLE_BODIES[case]
    with ScriptedJudge(handler=lambda _: (200, body)) as judge, ScoreCache(tmp_path / "c.sqlite") as cache:
        client = _client(judge.url, cache)
        with pytest.raises(JudgeError):
            asyncio.run(client.expected_score(MESSAGES, 0, 9))
        with pytest.raises(JudgeError):
            asyncio.run(client.chat_json(MESSAGES, SCHEMA, 32))
        assert len(cache) == 0
        assert client.stats.failures == 2


# Answers whose text (the judge's content) is malformed JSON for a structured request.
BAD_JSON_CONTENT = {
    "deeply-nested": "[" * 100_000,
    "deep-but-closed": "[" * 3000 + "]" * 3000,
    "nan-score": '{"score": NaN}',
    "infinite-score": '{"score": Infinity}',
    "overflowing-score": '{"score": 1e999}',
    "giant-integer-score": '{"score": ' + "9" * 5000 + "}",
    "score-as-text": '{"score": "9"}',
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_CONTENT))
def test_malformed_json_content_is_a_judge_error(case: str, tmp_path: Path) -> None:
    content = BAD_JSON_CONTENT[case]
    with ScriptedJudge(handler=lambda _: content) as judge, ScoreCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(JudgeError):
            asyncio.run(_client(judge.url, cache).chat_json(MESSAGES, SCHEMA, 32))
        assert len(cache) == 0


def test_an_enormous_body_is_refused_without_reading_it_all(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(backends_module, "MAX_RESPONSE_BYTES", 64 * 1024)
    big = _score_answer()
    big["choices"][0]["message"]["content"] = "6" + " " * 500_000
    with (
        ScriptedJudge(handler=lambda _: (200, _raw(big))) as judge,
        pytest.raises(JudgeError, match="over 65536"),
    ):
        asyncio.run(_client(judge.url).expected_score(MESSAGES, 0, 9))


def test_an_enormous_answer_text_is_not_parsed(monkeypatch) -> None:
    monkeypatch.setattr(parsing_module, "MAX_ANSWER_CHARS", 10_000)
    answer = '{"score": 3}' + " " * 20_000
    with (
        ScriptedJudge(handler=lambda _: answer) as judge,
        pytest.raises(JudgeError, match="too long to read"),
    ):
        asyncio.run(_client(judge.url).chat_json(MESSAGES, SCHEMA, 32))


@pytest.mark.parametrize("field", ["usage-nan", "usage-infinity", "usage-overflow"])
def test_a_readable_answer_with_nan_elsewhere_is_cached_safely(field: str, tmp_path: Path) -> None:
    answer = _raw(_score_answer(usage={"prompt_tokens": 7, "completion_tokens": 1}))
    bad = {"usage-nan": b"NaN", "usage-infinity": b"-Infinity", "usage-overflow": b"1e999"}[field]
    answer = answer.replace(b'"prompt_tokens": 7', b'"prompt_tokens": ' + bad)
    with ScriptedJudge(handler=lambda _: (200, answer)) as judge, ScoreCache(tmp_path / "c.sqlite") as cache:
        client = _client(judge.url, cache)
        first = asyncio.run(client.expected_score(MESSAGES, 0, 9))
        second = asyncio.run(client.expected_score(MESSAGES, 0, 9))
        assert judge.request_count == 1
    assert first.expected == pytest.approx(6.0) and second.expected == first.expected
    assert second.result.cached and second.result.prompt_tokens == 0
    stored = (tmp_path / "c.sqlite").read_bytes()
    assert b"NaN" not in stored and b"Infinity" not in stored


class ObjectBackend:
    """An in-process backend (as xllamacpp or transformers) that returns a fixed Python object."""

    name = "object"
    supports_json_schema = True
    supports_logprobs = True

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def complete(self, body: dict[str, Any]) -> Any:
        return self.answer

    async def aclose(self) -> None:
        pass


def _objects() -> dict[str, Any]:
    nan_alternatives = _score_answer()
    entry = nan_alternatives["choices"][0]["logprobs"]["content"][0]
    for alt in [entry, *entry["top_logprobs"]]:
        alt["logprob"] = float("nan") if alt["token"].strip().isdigit() else alt["logprob"]
    return {
        "nan-digit-logprobs": nan_alternatives,
        "minus-infinity-everywhere": _bad_logprobs(float("-inf")),
        "nested-ten-thousand-deep": {**_score_answer(), "extra": _deep(10_000)},
        "a-list": [_score_answer()],
        "none": None,
        "a-string": "6",
        "usage-as-infinity": {**_score_answer(), "usage": {"prompt_tokens": float("inf")}},
    }


@pytest.mark.parametrize("case", sorted(_objects()))
def test_an_in_process_backend_answer_never_escapes_as_another_exception(case: str, tmp_path: Path) -> None:
    answer = _objects()[case]
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        client = JudgeClient(ObjectBackend(answer), model_id="obj", cache=cache, max_attempts=1)
        if case != "usage-as-infinity":
            with pytest.raises(JudgeError):
                asyncio.run(client.expected_score(MESSAGES, 0, 9))
            assert len(cache) == 0
            return
        # Readable once the non-finite count is dropped: a real score, stored without an Infinity.
        reading = asyncio.run(client.expected_score(MESSAGES, 0, 9))
    assert reading.expected == pytest.approx(6.0) and reading.result.prompt_tokens == 0
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 1
    assert b"Infinity" not in (tmp_path / "c.sqlite").read_bytes()


def test_the_reward_function_turns_malformed_answers_into_missing_scores(tmp_path: Path) -> None:
    answers = iter([b"[" * 50_000, _raw(_bad_logprobs(float("nan"))), _raw({"choices": "x"})])
    with ScriptedJudge(handler=lambda _: (200, next(answers, _raw(_score_answer())))) as judge:
        client = JudgeClient(OpenAIHTTPBackend([judge.url], timeout_s=10), model_id="s", max_attempts=1)
        samples: list[ScoredSample] = []
        reward = RubricReward(
            client,
            ActiveRubrics(RubricStore(tmp_path / "r"), Rubric.single("Quality", "Overall.", 0, 9)),
            RubricRewardConfig(scoring="logprob"),  # one answer per sample, as the scripted answers assume
            on_scored=samples.extend,
        )
        prompts = [[{"role": "user", "content": "Write."}]] * 4
        rewards = asyncio.run(reward(prompts, ["a", "b", "c", "d"], task_input=["Write."] * 4))
    assert sum(r is None for r in rewards) == 3 and sum(r is not None for r in rewards) == 1
    assert all(s.error for s in samples if s.reward is None)


@pytest.mark.parametrize("case", ["deeply-nested", "nan-in-rubric", "huge-score"])
def test_a_malformed_meta_judge_answer_rejects_the_step_without_raising(case: str) -> None:
    def handler(body: dict[str, Any]) -> Any:
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        if "items" not in schema.get("properties", {}):
            return "An analysis of the grading."
        return {
            "deeply-nested": "[" * 100_000,
            "nan-in-rubric": '{"items": [{"title": "Q", "description": "d", "min_score": 0, "max_score": NaN}]}',
            "huge-score": '{"items": [{"title": "Q", "description": "d", "min_score": 0, "max_score": 1e999}]}',
        }[case]

    sample = ScoredSample(
        prompt="Write.", completion="Words.", reward=0.5, raw_score=4.5, item_scores={"quality": 4.5}
    )
    with ScriptedJudge(handler=handler) as meta:
        client = JudgeClient(OpenAIHTTPBackend([meta.url], timeout_s=10), model_id="m", max_attempts=1)
        meta_judge = MetaJudge(client, MetaConfig(samples=1), task_description="Write well.")
        outcome = asyncio.run(
            meta_judge.run("default", Rubric.single("Quality", "Overall.", 0, 9), [sample], random.Random(0))
        )
    assert not outcome.accepted and outcome.rubric is None
    assert "JudgeError" in outcome.reason


class RaisingBackend(ObjectBackend):
    """An in-process backend with a bug: it raises something no backend is meant to raise."""

    async def complete(self, body: dict[str, Any]) -> Any:
        raise self.answer


@pytest.mark.parametrize("error", [TypeError("bad"), KeyError("choices"), RecursionError(), OverflowError()])
def test_a_backend_bug_is_a_judge_error_too(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    client = JudgeClient(RaisingBackend(error), model_id="obj", max_attempts=1)
    with pytest.raises(JudgeError, match=type(error).__name__):
        asyncio.run(client.expected_score(MESSAGES, 0, 9))
    assert "raised unexpectedly" in caplog.text  # logged in full: it is a bug to fix, not a bad answer


def test_a_body_without_content_length_is_cut_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that streams until it closes the connection (no Content-Length) is stopped at the cap too."""
    import socket
    import threading

    monkeypatch.setattr(backends_module, "MAX_RESPONSE_BYTES", 64 * 1024)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(OSError):  # the client hangs up at the cap
                conn.sendall(b'{"choices": [{"message": {"content": "' + b"6" * 1_000_000 + b'"}}]}')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = JudgeClient(
        OpenAIHTTPBackend([f"http://127.0.0.1:{port}/v1"], timeout_s=10), model_id="s", max_attempts=1
    )
    with pytest.raises(JudgeError, match="over 65536 bytes"):
        asyncio.run(client.expected_score(MESSAGES, 0, 9))
    thread.join(5)
    server.close()
