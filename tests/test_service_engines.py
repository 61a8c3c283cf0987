"""The engines' own client code driving the reward service, where they import on this machine.

verl's reward-loop ``NaiveRewardManager`` scores a ``DataProto`` with ``metapo.integrations.verl.compute_score``,
loaded by verl's own ``get_custom_reward_fn`` from the config the recipe sets;
OpenRLHF's ``SingleTurnAgentExecutor`` posts its remote-RM request to ``/get_reward`` and calls the ``reward_func``
file. Neither engine is a metapo dependency (they pull Ray, vLLM, DeepSpeed): these tests skip unless ``verl`` /
``openrlhf`` import, e.g. with ``pip install --no-deps --target DIR verl openrlhf`` plus their light imports on
``PYTHONPATH``. ``tests/test_service_clients.py`` covers the same contracts without the engines.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from metapo.files import read_jsonl
from metapo.service.app import create_app
from tests.scripted_judge import ScriptedJudge
from tests.service_helpers import REPO, build_service, serve_in_thread, write_config


def test_verls_reward_loop_manager_scores_a_dataproto_through_the_service(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("verl.experimental.reward_loop.reward_manager.naive", exc_type=ImportError)
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import metapo.integrations.verl

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer("Write about rivers", return_tensors="pt")["input_ids"][0]
    response = tokenizer(" rivers carve deep valleys", return_tensors="pt")["input_ids"][0]
    pad = 4
    responses = torch.cat([response, torch.full((pad,), tokenizer.pad_token_id or 0)])
    data = DataProto.from_dict(
        tensors={
            "prompts": prompt[None],
            "responses": responses[None],
            "attention_mask": torch.cat([torch.ones(len(prompt) + len(response)), torch.zeros(pad)])[None].long(),
        },
        non_tensors={
            "data_source": np.array(["metapo/essay"], dtype=object),
            "reward_model": np.array([{"style": "model", "ground_truth": ""}], dtype=object),
            "extra_info": np.array(
                [{"prompt": "Write about rivers", "lineage": "geo", "columns": json.dumps({"topic": "rivers"})}],
                dtype=object,
            ),
        },
    )
    with ScriptedJudge() as judge, ScriptedJudge() as meta, serve_in_thread(
        create_app(build_service(write_config(tmp_path, judge.url, meta.url)))
    ) as url:
        # As the recipe configures it: verl loads the function from its file, with the address in reward_kwargs.
        config = OmegaConf.create(
            {
                "reward": {
                    "custom_reward_function": {
                        "path": metapo.integrations.verl.__file__,
                        "name": "compute_score",
                        "reward_kwargs": {"metapo_url": url},
                    }
                }
            }
        )
        monkeypatch.delenv("METAPO_REWARD_URL", raising=False)
        manager = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
        assert manager.is_async_reward_score, "verl awaits our compute_score on its loop"
        out = manager.loop.run_until_complete(manager.run_single(data))
    assert out["reward_score"] == pytest.approx(4 / 5)  # four distinct words on the 0..5 essay rubric
    assert out["reward_extra_info"] == {"score": pytest.approx(0.8), "rubric_version": 0, "judge_failed": 0}
    row = read_jsonl(tmp_path / "run" / "samples.jsonl")[0]
    assert row["completion"].strip() == "rivers carve deep valleys" and row["lineage"] == "geo"
    assert row["columns"]["topic"] == "rivers"


def test_openrlhfs_executor_posts_to_the_service_and_loads_the_reward_func_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openrlhf.utils.agent", exc_type=ImportError)
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    prompt = "<|im_start|>user\nWrite about rivers<|im_end|>\n<|im_start|>assistant\n"
    query = prompt + "one two three<|im_end|>"
    with ScriptedJudge() as judge, ScriptedJudge() as meta, serve_in_thread(
        create_app(build_service(write_config(tmp_path, judge.url, meta.url)))
    ) as url:
        over_http = SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")
        (answer,) = asyncio.run(over_http._fetch_rewards_via_http([query], [prompt], ['{"lineage": "geo"}']))
        monkeypatch.setenv("METAPO_REWARD_URL", url)
        by_file = SingleTurnAgentExecutor(remote_rm_url=str(REPO / "examples/service/openrlhf_reward_func.py"))
        (from_file,) = asyncio.run(by_file._fetch_rewards_via_func([query], [prompt], [""]))
    assert answer["rewards"] == [pytest.approx(0.6)] and answer["extra_logs"]["judge_failed"] == [0.0]
    assert from_file["rewards"].tolist() == [pytest.approx(0.6)]
    rows = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [r["lineage"] for r in rows] == ["geo", "default"] and rows[0]["completion"] == "one two three"
