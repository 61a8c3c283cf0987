"""The reward service (``metapo serve-reward``): contracts, failures, limits, meta steps, persistence.

Everything runs on scripted judges on 127.0.0.1; the service runs in-process (Starlette's test client or uvicorn in
a thread), or as a real process where a crash is the point.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from metapo.files import read_jsonl
from metapo.service.app import create_app
from tests.scripted_judge import ScriptedJudge, text_score
from tests.service_helpers import build_service, fresh_rubrics, serve_in_subprocess, write_config

ESSAY = "Rivers carve valleys slowly while patient water shapes stone over countless years"


def _metric(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_the_three_contracts_score_with_the_rubric_and_carry_its_version(tmp_path: Path) -> None:
    with ScriptedJudge() as judge, ScriptedJudge(handler=fresh_rubrics()) as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url))
        # New rubrics pass the acceptance gate here too, as in metapo train.
        assert service.controller.acceptance is not None
        with TestClient(create_app(service)) as client:
            native = client.post(
                "/v1/score", json={"samples": [{"prompt": "Write about rivers", "completion": "rivers carve deep valleys"}]}
            ).json()
            first = native["results"][0]
            # The scripted judge scores the judged text by its distinct words: the response alone reached it.
            assert first["item_scores"] == {"overall-quality": float(text_score("rivers carve deep valleys"))} == {
                "overall-quality": 4.0
            }
            assert first["rubric_version"] == 0 and first["failed"] is False and native["rubric_versions"] == {"default": 0}

            prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWrite about rivers<|im_end|>\n<|im_start|>assistant\n"
            short = "Water runs"
            rlhf = client.post(
                "/get_reward",
                json={"query": [prompt + short + "<|im_end|>"], "prompts": [prompt], "labels": ['{"lineage": "geo"}']},
            ).json()
            assert set(rlhf) == {"rewards", "scores", "extra_logs"}
            assert rlhf["extra_logs"] == {"rubric_version": [0.0], "judge_failed": [0.0]}
            logged = read_jsonl(tmp_path / "run" / "samples.jsonl")[-1]
            # Special tokens and the chat template are gone: the judge saw the user turn and the bare response.
            assert logged["completion"] == short and logged["prompt"] == "Write about rivers"
            assert logged["lineage"] == "geo" and logged["columns"]["ended"] is True

            generic = client.post("/v1/reward", json={"prompt": "p", "response": "one two three"}).json()
            assert generic["reward"] == pytest.approx(3 / 5) and generic["rubric_version"] == 0
            many = client.post("/v1/reward", json=[{"prompt": "p", "response": "a b"}] * 2).json()
            assert [r["reward"] for r in many] == [pytest.approx(2 / 5)] * 2

            assert client.get("/v1/rubric").json()["versions"] == {"default": 0, "geo": 0}
            assert "overall" in client.get("/v1/rubric?lineage=default").json()["markdown"].lower()
            metrics = client.get("/metrics").text
            assert _metric(metrics, "metapo_samples_scored_total") == 5
            assert 'metapo_rubric_version{lineage="geo"} 0.0' in metrics
        assert len(read_jsonl(tmp_path / "run" / "samples.jsonl")) == 5


def test_a_cut_openrlhf_response_is_told_to_the_eos_gate(tmp_path: Path) -> None:
    with ScriptedJudge() as judge, ScriptedJudge() as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url))
        with TestClient(create_app(service)) as client:
            prompt = "<|im_start|>user\nWrite about rivers<|im_end|>\n<|im_start|>assistant\n"
            done, cut = client.post(
                "/v1/openrlhf",
                json={"query": [prompt + ESSAY + "<|im_end|>", prompt + ESSAY], "prompts": [prompt, prompt]},
            ).json()["rewards"]
    rows = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [r["columns"]["ended"] for r in rows] == [True, False]
    assert done > cut and "missing_eos" in rows[1]["adjustments"]


def test_a_judge_failure_is_null_or_a_counted_fallback_never_a_silent_zero(tmp_path: Path) -> None:
    with ScriptedJudge(faults=lambda i, body: "500") as judge, ScriptedJudge() as meta:
        config = write_config(tmp_path, judge.url, meta.url, service={"fallback_reward": -1.0})
        service = build_service(config)
        with TestClient(create_app(service)) as client:
            native = client.post("/v1/score", json={"samples": [{"prompt": "p", "completion": ESSAY}]}).json()
            assert native["results"][0]["reward"] is None and native["results"][0]["failed"] is True
            assert "500" in native["results"][0]["error"]
            rlhf = client.post("/v1/openrlhf", json={"query": ["p " + ESSAY] * 3, "prompts": ["p"] * 3}).json()
            assert rlhf["rewards"] == [-1.0] * 3 and rlhf["extra_logs"]["judge_failed"] == [1.0] * 3
            verl = client.post(
                "/v1/score",
                json={"samples": [{"prompt": "p", "completion": ESSAY}], "engine": "verl", "on_failure": "fallback"},
            ).json()
            assert verl["results"][0]["reward"] == -1.0 and verl["results"][0]["failed"] is True
            assert client.post("/v1/reward", json={"prompt": "p", "response": ESSAY}).json()["reward"] is None
            metrics = client.get("/metrics").text
            assert 'metapo_fallback_rewards_total{engine="openrlhf"} 3.0' in metrics
            assert 'metapo_fallback_rewards_total{engine="verl"} 1.0' in metrics
            assert _metric(metrics, "metapo_samples_failed_total") == 6


def test_a_judge_that_stays_down_is_reported_to_clients_and_health(tmp_path: Path) -> None:
    with ScriptedJudge(faults=lambda i, body: "500") as judge, ScriptedJudge() as meta:
        config = write_config(tmp_path, judge.url, meta.url, reward={"max_consecutive_failures": 2})
        with TestClient(create_app(build_service(config))) as client:
            answer = client.post("/v1/score", json={"samples": [{"prompt": "p", "completion": ESSAY}] * 2}).json()
            assert "2 samples in a row" in answer["judge_unavailable"]
            health = client.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "judge_unavailable"


def test_bad_requests_get_4xx_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAPO_TEST_TOKEN", "s3cret")
    with ScriptedJudge() as judge, ScriptedJudge() as meta:
        config = write_config(
            tmp_path,
            judge.url,
            meta.url,
            service={"token_env": "METAPO_TEST_TOKEN", "max_body_bytes": 2000, "max_batch": 3, "max_lineages": 2},
        )
        service = build_service(config)
        with TestClient(create_app(service, token=service.settings.token())) as client:
            assert client.get("/healthz").status_code == 200  # liveness needs no token
            assert client.get("/v1/rubric").status_code == 401
            wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
            client.headers["Authorization"] = "Bearer s3cret"
            cases = [
                ({"content": b"{not json"}, 400, "not valid JSON"),
                ({"json": {"samples": []}}, 422, "non-empty list"),
                ({"json": {"samples": [{"prompt": "p"}]}}, 422, "samples[0].completion is missing"),
                ({"json": {"samples": [{"prompt": 1, "completion": "c"}]}}, 422, "samples[0].prompt must be"),
                ({"json": {"samples": [{"prompt": "p", "completion": "c"}] * 4}}, 413, "at most 3"),
                ({"json": {"samples": [{"prompt": "p" * 3000, "completion": "c"}]}}, 413, "max_body_bytes"),
                ({"json": {"samples": [{"prompt": "p", "completion": "c"}], "step": -1}}, 422, '"step"'),
                ({"json": {"samples": [{"prompt": "p", "completion": "c"}], "on_failure": "zero"}}, 422, "on_failure"),
                (
                    {"json": {"samples": [{"prompt": "p", "completion": "c", "columns": {"lineage": ""}}]}},
                    422,
                    "lineage must be",
                ),
            ]
            for kwargs, status, reason in cases:
                answer = client.post("/v1/score", **kwargs)
                assert answer.status_code == status and reason in answer.json()["error"], (kwargs, answer.text)
            # A chunked body declares no length: it is cut off while streaming, not read whole first.
            chunked = client.post("/v1/score", content=(b" " * 1000 for _ in range(3)))
            assert chunked.status_code == 413 and "body over 2000 bytes" in chunked.json()["error"]
            rlhf = client.post("/v1/openrlhf", json={"query": ["a", "b"], "prompts": ["a"]})
            assert rlhf.status_code == 422 and '"prompts" must be a list as long as "query"' in rlhf.json()["error"]
            lineages = [{"prompt": "p", "completion": "c", "columns": {"lineage": f"l{i}"}} for i in range(3)]
            too_many = client.post("/v1/score", json={"samples": lineages})
            assert too_many.status_code == 400 and "service.max_lineages" in too_many.json()["error"]
            assert client.get("/v1/rubric?lineage=nope").status_code == 404
            assert client.post("/v1/step", json={"step": "x"}).status_code == 422
        assert read_jsonl(tmp_path / "run" / "samples.jsonl") == [], "nothing refused was scored or logged"


def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    with ScriptedJudge(latency_s=0.5) as judge, ScriptedJudge() as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url, service={"max_concurrent_requests": 1}))
        app = create_app(service)

        async def two_at_once() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                body = {"samples": [{"prompt": "p", "completion": ESSAY}]}
                return list(await asyncio.gather(*(client.post("/v1/score", json=body) for _ in range(2))))

        statuses = sorted(r.status_code for r in asyncio.run(two_at_once()))
        assert statuses == [200, 503]


def test_step_reports_start_meta_steps_and_log_staleness(tmp_path: Path) -> None:
    with ScriptedJudge() as judge, ScriptedJudge(handler=fresh_rubrics()) as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url))
        with TestClient(create_app(service)) as client:
            client.post("/v1/score", json={"samples": [{"prompt": "p", "completion": ESSAY}] * 4})
            assert client.post("/v1/step", json={"step": 1}).json()["meta_started"] is False  # interval is 2
            assert client.post("/v1/step", json={"step": 2}).json()["meta_started"] is True
            deadline = time.monotonic() + 30
            while client.get("/healthz").json()["versions"]["default"] != 1:
                assert time.monotonic() < deadline, "the meta step never published"
                time.sleep(0.05)
            scored = client.post("/v1/score", json={"samples": [{"prompt": "p", "completion": ESSAY}]}).json()
            assert scored["results"][0]["rubric_version"] == 1
            client.post("/v1/step", json={"step": 3, "rubric_versions": [0, 0, 1]})
            metrics = client.get("/metrics").text
            assert _metric(metrics, "metapo_reward_staleness_versions_count") == 3
            assert _metric(metrics, "metapo_reward_staleness_versions_sum") == 2
            assert _metric(metrics, "metapo_meta_accepted_total") == 1
        state = json.loads((tmp_path / "run" / "service" / "state.json").read_text())
        assert state["consumed"] == 4 and state["versions"] == {"default": 1}


def test_a_graceful_restart_resumes_window_versions_and_counters(tmp_path: Path) -> None:
    with ScriptedJudge() as judge, ScriptedJudge(handler=fresh_rubrics()) as meta:
        config = write_config(tmp_path, judge.url, meta.url, service={"meta_every_samples": 4})
        with TestClient(create_app(build_service(config))) as client:
            client.post("/v1/score", json={"samples": [{"prompt": "p", "completion": ESSAY}] * 4})
            client.post("/v1/score", json={"samples": [{"prompt": "q", "completion": ESSAY}] * 3})
        # Shutdown waited for the meta step: version 1 is in force and the 3 later samples form the window.
        saved = json.loads((tmp_path / "run" / "service" / "mpo_state.json").read_text())
        assert saved["versions"] == {"default": 1} and len(saved["window"]) == 3
        again = build_service(config)
        assert again.controller.rubrics.versions() == {"default": 1}
        assert [s.prompt for s in again.controller.window] == ["q"] * 3
        assert again.controller.meta_steps == 1 and again.recorded == 7


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing(tmp_path: Path) -> None:
    """A crash while a meta step runs: every answered sample is on disk, versions and window come back."""
    with ScriptedJudge() as judge, ScriptedJudge(handler=fresh_rubrics(delay_s=0.3)) as meta:
        config = write_config(tmp_path, judge.url, meta.url, service={"meta_every_samples": 6})
        run = tmp_path / "run"
        body = {"samples": [{"prompt": "p", "completion": ESSAY}] * 3}
        with serve_in_subprocess(config) as (proc, url):
            for _ in range(2):  # 6 samples: the first meta step starts and publishes v1
                assert httpx.post(url + "/v1/score", json=body, timeout=30).status_code == 200
            deadline = time.monotonic() + 60
            while httpx.get(url + "/healthz").json()["versions"]["default"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for _ in range(2):  # 6 more: the second meta step starts, and is slow
                assert httpx.post(url + "/v1/score", json=body, timeout=30).status_code == 200
            deadline = time.monotonic() + 30
            while not httpx.get(url + "/healthz").json()["meta_running"]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        answered = 12
        assert len(read_jsonl(run / "samples.jsonl")) == answered
        with serve_in_subprocess(config) as (proc, url):
            health = httpx.get(url + "/healthz").json()
            # v1 stays in force; the 6 samples the killed meta step held are back in the window.
            assert health["versions"] == {"default": 1} and health["samples"] == answered and health["window"] == 6
            scored = httpx.post(url + "/v1/score", json=body, timeout=30).json()
            assert {r["rubric_version"] for r in scored["results"]} == {1}
            proc.send_signal(signal.SIGTERM)  # graceful: waits for the meta step this batch started
            assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert json.loads((run / "service" / "state.json").read_text())["versions"] == {"default": 2}
        assert len(read_jsonl(run / "samples.jsonl")) == answered + 3
