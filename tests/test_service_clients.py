"""Engine clients of the reward service: verl's compute_score, OpenRLHF's reward_func file, TRL's picklable reward.

The engines themselves do not install on this CPU box (verl and OpenRLHF pull vLLM/Ray/DeepSpeed), so they are
driven through their documented contracts: verl's reward loop awaits ``compute_score(data_source=...,
solution_str=..., ground_truth=..., extra_info=..., reward_router_address=..., reward_model_tokenizer=...)``;
OpenRLHF loads a ``--remote_rm_url`` file with ``importlib`` and calls ``reward_func(queries, prompts, labels)``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from metapo.files import read_jsonl
from metapo.service.app import create_app
from tests.scripted_judge import ScriptedJudge
from tests.service_helpers import REPO, build_service, fresh_rubrics, serve_in_thread, write_config

ESSAY = "Rivers carve valleys slowly while patient water shapes stone"

# One verl reward worker: many samples in flight on its event loop, as the reward loop runs them.
WORKER = r"""
import asyncio, json, sys
from metapo.integrations.verl import compute_score

async def main(worker, n):
    async def one(i):
        return await compute_score(
            data_source="essay", solution_str=" ".join(f"w{worker}x{i}y{k}" for k in range(1 + i % 5)),
            ground_truth=None, extra_info={"prompt": f"Write {worker}-{i}"},
            reward_router_address=None, reward_model_tokenizer=None,
        )
    out = []
    for start in range(0, n, 8):
        out += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 8))))
    print(json.dumps(out))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


@pytest.mark.slow
def test_eight_verl_workers_score_while_meta_steps_run_and_publish(tmp_path: Path) -> None:
    with ScriptedJudge(latency_s=0.01) as judge, ScriptedJudge(handler=fresh_rubrics(delay_s=0.2)) as meta:
        # Publication under concurrent scoring is under test, not the acceptance gate (tests/test_acceptance.py),
        # which would judge the scripted meta judge's rubrics.
        config = write_config(
            tmp_path,
            judge.url,
            meta.url,
            service={"meta_every_samples": 40},
            mpo={"interval": 2, "samples": 3, "acceptance": {"enabled": False}},
        )
        with serve_in_thread(create_app(build_service(config))) as url:
            env = {**os.environ, "PYTHONPATH": str(REPO), "METAPO_REWARD_URL": url}
            workers = [
                subprocess.Popen([sys.executable, "-c", WORKER, str(w), "40"], stdout=subprocess.PIPE, text=True, env=env)
                for w in range(8)
            ]
            outputs = [json.loads(p.communicate(timeout=240)[0]) for p in workers]
            assert all(p.returncode == 0 for p in workers)
    results = [r for out in outputs for r in out]
    assert len(results) == 320 and not any(r["judge_failed"] for r in results)
    versions = {r["rubric_version"] for r in results}
    assert len(versions) >= 2, f"no rubric version published while the workers scored: {versions}"
    rows = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(rows) == 320 and len({r["prompt"] for r in rows}) == 320, "every sample logged once"
    # Each reward is that of its own text under its own version (one item 0..5: distinct words / 5).
    by_prompt = {r["prompt"]: r for r in rows}
    for w, out in enumerate(outputs):
        for i, result in enumerate(out):
            row = by_prompt[f"Write {w}-{i}"]
            assert result["score"] == pytest.approx(row["reward"]) and result["rubric_version"] == row["rubric_version"]


def test_the_openrlhf_reward_func_file_answers_with_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedJudge() as judge, ScriptedJudge() as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url))
        with serve_in_thread(create_app(service)) as url:
            monkeypatch.setenv("METAPO_REWARD_URL", url)
            spec = importlib.util.spec_from_file_location("reward_func_file", REPO / "examples/service/openrlhf_reward_func.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            prompt = "<|im_start|>user\nWrite about rivers<|im_end|>\n<|im_start|>assistant\n"
            out = module.reward_func([prompt + "one two three<|im_end|>", prompt + "a b"], [prompt, prompt], ["", ""])
    # The first response ended with its end token; the second was cut (special tokens kept, none closing it).
    assert out["rewards"][0].item() == pytest.approx(3 / 5) and out["rewards"][1].item() < 2 / 5
    assert out["rewards"].shape == out["scores"].shape == (2,)
    assert out["extra_logs"]["judge_failed"].tolist() == [0.0, 0.0]


def test_the_verl_client_sends_fallback_and_reads_extra_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metapo.integrations import verl

    with ScriptedJudge(faults=lambda i, body: "500") as judge, ScriptedJudge() as meta:
        config = write_config(tmp_path, judge.url, meta.url, service={"fallback_reward": -0.5})
        with serve_in_thread(create_app(build_service(config))) as url:
            out = verl.compute_score_sync(
                "essay", ESSAY, "gold", {"prompt": "Write", "lineage": "geo"}, metapo_url=url
            )
    assert out == {"score": -0.5, "rubric_version": 0, "judge_failed": 1}
    row = read_jsonl(tmp_path / "run" / "samples.jsonl")[0]
    assert row["lineage"] == "geo" and row["columns"]["ground_truth"] == "gold" and row["reward"] is None


SCORE_IN_CHILD = r"""
import asyncio, json, pickle, sys
reward = pickle.loads(open(sys.argv[1], "rb").read())
out = asyncio.run(reward(prompts=["Write", "Write"], completions=["one two three", "a b c d"], completion_ids=[[5, 2], [5, 7]], lineage=["default", "default"]))
print(json.dumps(out))
"""


def test_remote_rubric_reward_is_pickled_into_a_subprocess_and_scores_there(tmp_path: Path) -> None:
    from metapo.integrations.trl import RemoteRubricReward

    with ScriptedJudge() as judge, ScriptedJudge() as meta:
        service = build_service(write_config(tmp_path, judge.url, meta.url))
        with serve_in_thread(create_app(service)) as url:
            reward = RemoteRubricReward(url, eos_token_ids=[2])
            asyncio.run(reward(prompts=["warm"], completions=["up"]))  # a live connection pool must not block pickling
            blob = tmp_path / "reward.pkl"
            blob.write_bytes(pickle.dumps(reward))
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, "-c", SCORE_IN_CHILD, str(blob)], capture_output=True, text=True, env=env, timeout=120
            )
    assert done.returncode == 0, done.stderr
    ended_reward, cut_reward = json.loads(done.stdout)
    rows = read_jsonl(tmp_path / "run" / "samples.jsonl")[1:]
    assert [r["columns"]["ended"] for r in rows] == [True, False]  # eos id 2 ends the first completion only
    assert ended_reward == pytest.approx(3 / 5) and cut_reward == pytest.approx(rows[1]["reward"])
    assert "missing_eos" in rows[1]["adjustments"]


def test_remote_rubric_reward_stops_training_when_the_judge_is_down(tmp_path: Path) -> None:
    from metapo.integrations.trl import RemoteRubricReward
    from metapo.reward.rubric_reward import JudgeUnavailableError

    with ScriptedJudge(faults=lambda i, body: "500") as judge, ScriptedJudge() as meta:
        config = write_config(tmp_path, judge.url, meta.url, reward={"max_consecutive_failures": 2})
        with serve_in_thread(create_app(build_service(config))) as url:
            reward = RemoteRubricReward(url)
            assert reward.score(["p"], ["a b"]) == [None]  # one failure: masked (None), training goes on
            with pytest.raises(JudgeUnavailableError, match="2 samples in a row"):
                reward.score(["p"], ["a b"])


def test_a_client_waits_out_a_busy_service(tmp_path: Path) -> None:
    from metapo.integrations.trl import RemoteRubricReward

    with ScriptedJudge(latency_s=0.3) as judge, ScriptedJudge() as meta:
        config = write_config(tmp_path, judge.url, meta.url, service={"max_concurrent_requests": 1})
        with serve_in_thread(create_app(build_service(config))) as url:
            reward = RemoteRubricReward(url)
            reward.client.backoff_s = 0.05

            async def both() -> list:
                return await asyncio.gather(*(reward(prompts=["p"], completions=["a b c"]) for _ in range(3)))

            assert asyncio.run(both()) == [[pytest.approx(3 / 5)]] * 3


@pytest.mark.slow
def test_grpo_trains_on_the_service_and_its_steps_drive_meta_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    from metapo.integrations.trl import RemoteRubricReward, RemoteStepCallback
    from tests.tiny_grpo import tiny_grpo_trainer

    with ScriptedJudge() as judge, ScriptedJudge(handler=fresh_rubrics()) as meta:
        config = write_config(tmp_path, judge.url, meta.url, mpo={"interval": 2, "samples": 3, "blocking": False})
        with serve_in_thread(create_app(build_service(config))) as url:
            reward = RemoteRubricReward(url)
            trainer = tiny_grpo_trainer(
                tiny_model_dir, tmp_path, reward, [RemoteStepCallback(url, reward=reward)], max_steps=4
            )
            trainer.train()
            health = httpx.get(url + "/healthz").json()
            metrics = httpx.get(url + "/metrics").text
    rows = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(rows) == 4 * 4 and {r["step"] for r in rows} == {0, 1, 2, 3}
    assert health["meta_steps"] == 2  # after steps 2 and 4
    # Every step reported the versions of the 4 rewards it used: the service counted all 16 for staleness.
    assert "metapo_reward_staleness_versions_count 16.0" in metrics
