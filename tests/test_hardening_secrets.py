"""Class 5 of the hardening issue: the judge API key never reaches disk, a log or an error message.

The key is read from the environment variable named by ``judge.api_key_env`` at every request. These servers
echo the ``Authorization`` header back, in an error body or in the answer itself, raw or JSON-escaped; the
key's value must still appear nowhere: not in exceptions, samples, logs, the response cache or a run directory.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from metapo.cli import main
from metapo.judges import JudgeClient, JudgeError, OpenAIHTTPBackend
from metapo.judges.backends import redact
from metapo.judges.cache import ScoreCache
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, chat_response, default_answer

KEYS = {
    "plain": "sk-live-4f7d9c2a1b8e6f3d0a5c",
    "with-slash-and-plus": "sk/AbC+dEf/123==xyz",
    "with-quote-and-backslash": 'sk-"quoted"\\back',
}


def _echo(judge: ScriptedJudge, status: int, escaped: bool = False) -> Any:
    """A handler that sends the request's Authorization header back with ``status``."""

    def handler(body: dict[str, Any]) -> Any:
        header = judge.request_headers[-1].get("authorization", "")
        text = json.dumps(header)[1:-1].replace("/", "\\/") if escaped else header
        if status != 200:
            return status, ('{"error": {"message": "bad credentials: ' + text + '"}}').encode()
        return status, json.dumps(chat_response("6")).replace('"6"', f'"6 ({text})"').encode()

    return handler


def _backend(judge: ScriptedJudge) -> OpenAIHTTPBackend:
    return OpenAIHTTPBackend([judge.url], "METAPO_TEST_KEY", timeout_s=10)


@pytest.mark.parametrize("key_case", sorted(KEYS))
@pytest.mark.parametrize(("status", "escaped"), [(401, False), (403, True), (500, False), (503, True)])
def test_an_echoed_key_is_redacted_from_error_messages(
    key_case: str,
    status: int,
    escaped: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = KEYS[key_case]
    monkeypatch.setenv("METAPO_TEST_KEY", key)
    with ScriptedJudge() as judge:
        judge.handler = _echo(judge, status, escaped)
        client = JudgeClient(_backend(judge), model_id="j", max_attempts=2, backoff_base_s=0.01)
        with pytest.raises(JudgeError) as caught:
            asyncio.run(client.chat(_request()))
        assert judge.request_headers[-1]["authorization"] == f"Bearer {key}"  # the key was really sent
    message = str(caught.value) + repr(caught.value.__cause__)
    assert "[REDACTED]" in message and key not in message
    assert key not in caplog.text


def _request() -> Any:
    from metapo.judges.types import ChatRequest

    return ChatRequest(messages=({"role": "user", "content": "hello"},))


@pytest.mark.parametrize("key_case", sorted(KEYS))
@pytest.mark.parametrize("escaped", [False, True])
def test_an_echoed_key_in_an_answer_is_redacted_before_it_is_read_or_cached(
    key_case: str, escaped: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = KEYS[key_case]
    monkeypatch.setenv("METAPO_TEST_KEY", key)
    with ScriptedJudge() as judge, ScoreCache(tmp_path / "cache.sqlite") as cache:
        judge.handler = _echo(judge, 200, escaped)
        client = JudgeClient(_backend(judge), model_id="j", cache=cache, max_attempts=1)
        result = asyncio.run(client.chat(_request()))
    assert result.text == "6 (Bearer [REDACTED])"
    assert key.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_samples_and_their_errors_never_hold_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = KEYS["plain"]
    monkeypatch.setenv("METAPO_TEST_KEY", key)
    from metapo.files import append_jsonl

    with ScriptedJudge() as judge:
        judge.handler = _echo(judge, 500)
        client = JudgeClient(_backend(judge), model_id="j", max_attempts=1)
        samples: list[ScoredSample] = []
        reward = RubricReward(
            client,
            ActiveRubrics(RubricStore(tmp_path / "r"), Rubric.single("Quality", "Overall.", 0, 9)),
            on_scored=lambda batch: (
                samples.extend(batch),
                append_jsonl(tmp_path / "s.jsonl", [s.to_dict() for s in batch]),
            ),
        )
        asyncio.run(reward([[{"role": "user", "content": "Write."}]], ["Words."], task_input=["Write."]))
    assert samples[0].reward is None and "[REDACTED]" in (samples[0].error or "")
    assert key not in (tmp_path / "s.jsonl").read_text() and key not in caplog.text


def test_redact_replaces_every_spelling_of_the_key() -> None:
    key = KEYS["with-slash-and-plus"]
    text = f"a {key} b {json.dumps(key)[1:-1]} c {key.replace('/', chr(92) + '/')} d"
    assert redact(text, key) == "a [REDACTED] b [REDACTED] c [REDACTED] d"
    assert redact(text, None) == text and redact(text, "") == text


@pytest.mark.slow
def test_a_training_run_against_an_echoing_judge_writes_the_key_nowhere(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = KEYS["plain"]
    monkeypatch.setenv("METAPO_TEST_KEY", key)
    with ScriptedJudge() as judge:
        echo = _echo(judge, 500)
        # Honest for the first two steps, then down, echoing the key in every error body.
        judge.handler = lambda body: default_answer(body) if judge.request_count <= 4 else echo(body)
        config = {
            "model": str(tiny_model_dir),
            "task": "essay",
            "limit": 8,
            "output_dir": str(tmp_path / "run"),
            "judge": {
                "model": "scripted",
                "base_urls": [judge.url],
                "api_key_env": "METAPO_TEST_KEY",
                "max_attempts": 2,
                "timeout_s": 10,
                "cache_path": str(tmp_path / "run" / "judge-cache.sqlite"),
            },
            "reward": {"max_consecutive_failures": 2},
            "mpo": {"interval": 0},
            "training": {
                "max_steps": 6,
                "per_device_train_batch_size": 2,
                "num_generations": 2,
                "max_completion_length": 8,
                "disable_tqdm": True,
            },
        }
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "[REDACTED]" in err and key not in err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "samples.jsonl" for p in files) and any(p.name == "train.log" for p in files)
    assert "[REDACTED]" in (tmp_path / "run" / "samples.jsonl").read_text()
    for file in files:
        assert key.encode() not in file.read_bytes(), file
