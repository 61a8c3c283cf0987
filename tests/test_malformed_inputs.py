"""Malformed inputs get a clear error or a documented skip, never a crash deep inside training.

Covers missing dataset columns, empty prompts, empty and enormous completions (truncated for the judge,
with a note saying so), rubric files that do not parse, and invalid or contradictory run settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from metapo.cli import main
from metapo.judges import JudgeClient, OpenAIHTTPBackend
from metapo.meta.prompts import analyze_prompt, sample_block
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from metapo.tasks import TaskDataError, get_task
from tests.scripted_judge import ScriptedJudge

UNREACHABLE = "http://127.0.0.1:9/v1"  # never contacted: every case fails before the first judge call


def _config(tmp_path: Path, model: str = "unused-model", **extra: Any) -> Path:
    config: dict[str, Any] = {
        "model": model,
        "task": "essay",
        "output_dir": str(tmp_path / "run"),
        "judge": {"backend": "openai", "model": "scripted", "base_urls": [UNREACHABLE]},
        "mpo": {"interval": 0},
        "training": {"max_steps": 1},
    }
    config.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["train", *argv])
    return code, capsys.readouterr().err


# ----- run settings ------------------------------------------------------------------------------------
BAD_SETTINGS = {
    "unknown-top-level-key": (["epochs=3"], "unknown setting(s) epochs"),
    "unknown-nested-key": (["mpo.intervall=3"], "unknown setting(s) mpo.intervall"),
    "unknown-algorithm": (["algorithm=ppo"], "algorithm='ppo'; choose grpo or rloo"),
    "output-dir-twice": (["training.output_dir=/tmp/x"], "training.output_dir conflicts with the top-level"),
    "seed-twice": (["training.seed=3"], "training.seed conflicts with the top-level"),
    "unknown-judge-backend": (["judge.backend=vllm"], "judge backend must be one of"),
    "no-concurrency": (
        ["judge.max_concurrency=0"],
        "max_concurrency, max_attempts and n_parallel must be >= 1",
    ),
    "negative-timeout": (["judge.timeout_s=-1"], "timeout_s must be > 0"),
    "unknown-selection": (["mpo.selection=best"], "mpo.selection='best'"),
    "negative-interval": (["mpo.interval=-2"], "mpo.interval must be >= 0"),
    "unknown-scoring": (["reward.scoring=telepathy"], "reward.scoring='telepathy'"),
    "unknown-reward-scale": (["reward.reward_scale=rwa"], "reward.reward_scale='rwa'"),
    "not-key-value": (["mpo.interval"], "must look like key=value"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_invalid_settings_stop_before_anything_is_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, message = BAD_SETTINGS[case]
    code, err = _train(capsys, "--config", str(_config(tmp_path)), *overrides)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_is_not_yaml_or_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    code, err = _train(capsys, "--config", str(broken))
    assert code == 2 and "is not valid YAML" in err
    broken.write_text("- just\n- a list\n")
    code, err = _train(capsys, "--config", str(broken))
    assert code == 2 and "must hold a mapping" in err
    code, err = _train(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


def test_a_finished_run_directory_is_never_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code, err = _train(capsys, "--config", str(config), "--resume")
    assert code == 2 and f"{tmp_path / 'run' / 'config.yaml'} does not exist" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("task: essay\n")
    code, err = _train(capsys, "--config", str(config))
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == "task: essay\n"


# ----- data ----------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_dataset_column_names_the_column_and_the_fix(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(tmp_path / "essays.jsonl", [{"title": "The sea"}, {"title": "Rain"}])
    config = _config(tmp_path, model=str(tiny_model_dir), dataset=str(data))
    code, err = _train(capsys, "--config", str(config))
    assert code == 2
    assert "has no column 'prompt'" in err and "['title']" in err and "columns=" in err


def test_yaml_task_template_field_missing_from_the_data(tmp_path: Path) -> None:
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        yaml.safe_dump(
            {
                "name": "topics",
                "instruction": "Write about the topic.",
                "task_input": "{topic}",
                "data": {"rows": [{"subject": "rain"}]},
            }
        )
    )
    with pytest.raises(TaskDataError, match="has no column 'topic'"):
        get_task(str(task_file)).load()


def test_empty_prompts_are_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"prompt": "The sea at night"},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": None},
        {"prompt": "Rain"},
    ]
    task = get_task("essay")
    with caplog.at_level(logging.INFO, logger="metapo"):
        dataset = task.load(str(_jsonl(tmp_path / "train.jsonl", rows)))
    assert dataset["task_input"] == ["The sea at night", "Rain"]
    assert task.last_load_stats is not None and task.last_load_stats.dropped == {"empty prompt": 3}
    assert any("dropped: 3 empty prompt" in r.getMessage() for r in caplog.records)
    empty = _jsonl(tmp_path / "empty.jsonl", [{"prompt": ""}, {"prompt": " "}])
    with pytest.raises(TaskDataError, match="no usable rows.*empty prompt"):
        task.load(str(empty))


def test_a_data_file_that_is_not_jsonl(tmp_path: Path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(TaskDataError, match="line 2: not valid JSON"):
        get_task("essay").load(str(bad))


# ----- rubric files ---------------------------------------------------------------------------------------
BAD_RUBRIC_FILES = {
    "empty": ("", "rubric text is empty"),
    "heading-without-range": ("## Clarity\nEasy to follow.\n", "has no score range"),
    "no-items": ("Grade the essay fairly.\n", "no rubric items found"),
    "broken-json": ('{"items": [{"title": "Clarity",', "rubric JSON does not parse"),
    "empty-description": (
        "## Clarity [0-5]\n\n## Depth [0-5]\nGoes beyond the obvious.\n",
        "description is empty",
    ),
    "reversed-range": ("## Clarity [5-0]\nEasy to follow.\n", "range [5, 0] is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUBRIC_FILES))
def test_a_rubric_file_that_does_not_parse(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = BAD_RUBRIC_FILES[case]
    path = tmp_path / "rubric.md"
    path.write_text(text)
    assert main(["rubric", "validate", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_an_unparsable_initial_rubric_stops_the_run(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rubric.md"
    path.write_text("## Clarity\nEasy to follow.\n")
    config = _config(tmp_path, model=str(tiny_model_dir), initial_rubric=str(path), limit=4)
    code, err = _train(capsys, "--config", str(config))
    assert code == 2 and "has no score range" in err
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind: no --resume needed
    code, err = _train(capsys, "--config", str(config), "initial_rubric=no-such-rubric")
    assert code == 2 and "neither a file nor a baseline" in err and "expert" in err


# ----- completions ----------------------------------------------------------------------------------------
def _score(tmp_path: Path, completion: str, task_input: str = "Write about the sea.", **cfg: Any):
    rubric = Rubric.single("Quality", "Overall quality.", 0, 9)
    with ScriptedJudge() as judge:
        client = JudgeClient(OpenAIHTTPBackend([judge.url]), model_id="scripted", max_attempts=1)
        samples: list[ScoredSample] = []
        reward = RubricReward(
            client,
            ActiveRubrics(RubricStore(tmp_path / "rubrics"), rubric),
            RubricRewardConfig(**{"scoring": "logprob", **cfg}),  # one request, inspected below
            on_scored=samples.extend,
        )
        prompts = [[{"role": "user", "content": task_input}]]
        rewards = asyncio.run(reward(prompts, [completion], task_input=[task_input]))
        (body,) = judge.requests
    return rewards[0], samples[0], body["messages"][-1]["content"]


def test_an_empty_completion_is_judged_not_skipped(tmp_path: Path) -> None:
    reward, sample, user = _score(tmp_path, "")
    assert "<response>\n\n</response>" in user
    assert reward is not None and sample.error is None  # the judge gives it a (low) score


def test_an_enormous_completion_is_truncated_for_the_judge_with_a_note(tmp_path: Path) -> None:
    head, tail = "BEGINNING " * 100, " THE-END" * 100
    completion = head + "filler " * 150_000 + tail  # about a megabyte
    reward, sample, user = _score(tmp_path, completion, max_judge_chars=2000)

    fenced = re.search(r"<response>\n(.*)\n</response>", user, re.DOTALL)
    assert fenced is not None
    shown = fenced.group(1)
    assert f"[truncated {len(completion) - 2000} characters]" in shown
    assert shown.startswith(head[:1000]) and shown.endswith(tail[-1000:])  # final answers sit at the end
    assert len(user) < 5000
    assert reward is not None
    assert sample.completion == completion  # only the judge's view is cut; the run log keeps the text


def test_an_enormous_task_input_is_truncated_too(tmp_path: Path) -> None:
    task_input = "Explain. " * 20_000
    _, _, user = _score(tmp_path, "Short answer.", task_input=task_input, max_judge_chars=1000)
    assert f"[truncated {len(task_input) - 1000} characters]" in user
    assert len(user) < 3500


def test_the_meta_judge_sees_truncated_samples(tmp_path: Path) -> None:
    sample = ScoredSample(
        prompt="Write.", completion="word " * 50_000, reward=0.9, item_scores={"quality": 8.0}
    )
    rubric = Rubric.single("Quality", "Overall.", 0, 9)
    text = analyze_prompt("Write well.", sample_block(sample, rubric, 1500), rubric, 100)
    assert "[truncated 248500 characters]" in text and len(text) < 6000
