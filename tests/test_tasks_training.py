"""A few MPO steps per paper task through `metapo.train.run.train`, with the tiny model and a scripted judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metapo.config import from_dict
from metapo.train.config import RunConfig
from metapo.train.run import summarize, train
from tests.scripted_judge import ScriptedJudge


@pytest.mark.slow
@pytest.mark.parametrize("task", ["essay", "summarization", "ethics", "math"])
def test_each_task_trains_with_meta_steps(task: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    with ScriptedJudge() as judge:
        cfg = from_dict(
            RunConfig,
            {
                "model": str(tiny_model_dir),
                "task": task,
                "limit": 8,
                "seed": 3,
                "output_dir": str(tmp_path / "run"),
                "task_options": {"max_completion_tokens": 12},
                "judge": {"backend": "openai", "model": "scripted", "base_urls": [judge.url], "timeout_s": 5},
                "mpo": {"interval": 1, "samples": 2, "blocking": True},
                "training": {
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_steps": 2,
                    "disable_tqdm": True,
                },
            },
        )
        built = train(cfg)
    run = tmp_path / "run"
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    assert (run / "final" / "config.json").exists() and (run / "final" / "mpo_state.json").exists()
    assert built.controller.meta_steps == 2
    # The acceptance gate is on by default and sees the task's gold text column (summarization, math).
    assert built.controller.acceptance is not None
    assert built.controller.acceptance.reference_column == built.task.meta_reference_column
    # The run's seed seeds meta-step selection; the task sizes what the judges see.
    assert cfg.mpo.seed == 3 and cfg.reward.max_judge_chars == built.task.judge_chars
    assert cfg.mpo.max_sample_chars == built.task.meta_chars
    if task == "math":
        # Per-cluster guideline lineages, refined without a merge.
        assert cfg.mpo.mode == "guidelines"
        assert all("/" in s["lineage"] for s in samples)
        meta = [json.loads(p.read_text()) for p in (run / "meta").glob("*.json")]
        assert meta and all(m["lineage"] != "default" for m in meta)
    else:
        assert cfg.mpo.mode == "merge" and {s["lineage"] for s in samples} == {"default"}
    assert "rubric lineage" in summarize(run)


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["detectors", "prescreen", "stratified", "high_score"])
def test_every_selection_strategy_runs_in_training(
    selection: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with ScriptedJudge() as judge:
        cfg = from_dict(
            RunConfig,
            {
                "model": str(tiny_model_dir),
                "task": "essay",
                "limit": 8,
                "output_dir": str(tmp_path / "run"),
                "task_options": {"max_completion_tokens": 12},
                "judge": {"backend": "openai", "model": "scripted", "base_urls": [judge.url], "timeout_s": 5},
                # Selection is under test here, not the acceptance gate (tests/test_acceptance.py).
                "mpo": {
                    "interval": 1,
                    "samples": 2,
                    "blocking": True,
                    "selection": selection,
                    "acceptance": {"enabled": False},
                },
                "training": {
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_steps": 1,
                    "disable_tqdm": True,
                },
            },
        )
        built = train(cfg)
    (log,) = [json.loads(p.read_text()) for p in (tmp_path / "run" / "meta").glob("*.json")]
    assert built.controller.meta_steps == 1 and log["accepted"] is True
    assert 1 <= len(log["selected"]) <= 4
    if selection == "prescreen":
        assert log["labels"], "prescreen labels are recorded"
