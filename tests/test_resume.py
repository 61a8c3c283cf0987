"""Crash and resume: a ``metapo train`` child killed with SIGKILL, and a run stopped by a judge that went down.

Resuming with ``--resume`` must restore the rubric history, the version in force and the meta-step window,
and no rubric version file may be left half-written. The judges are scripted servers in this process; the
policy is the tiny random model.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from metapo.cli import main
from metapo.files import read_jsonl
from metapo.meta.controller import STATE_FILE, MetaPolicyOptimizationCallback
from metapo.rubric import RubricStore
from tests.scripted_judge import ScriptedJudge, default_answer

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["the sea", "a storm", "rain", "a lighthouse", "winter", "a harbour", "the moon", "fog"]
# Requests of one meta step with samples=2: two analyses, two refinements, one merge.
META_STEP_REQUESTS = 5


def _write_config(tmp_path: Path, tiny_model_dir: Path, judge: str, meta: str, **extra: Any) -> Path:
    task = {
        "name": "tiny-topics",
        "instruction": "Write a few words about the topic.",
        "task_input": "{topic}",
        "judge_input_label": "Topic",
        "max_completion_tokens": 10,
        "data": {"rows": [{"topic": t} for t in TOPICS]},
    }
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    client = {"backend": "openai", "timeout_s": 30, "max_attempts": 2}
    config = {
        "model": str(tiny_model_dir),
        "task": str(tmp_path / "task.yaml"),
        "output_dir": str(tmp_path / "run"),
        "judge": {**client, "model": "scripted", "base_urls": [judge]},
        "meta_judge": {**client, "model": "scripted-meta", "base_urls": [meta]},
        # The gate (tests/test_acceptance.py) would judge the scripted rubrics; these tests pin resume mechanics.
        "mpo": {"interval": 2, "samples": 2, "blocking": True, "acceptance": {"enabled": False}},
        "training": {
            "max_steps": 30,
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_completion_length": 10,
            "learning_rate": 1e-4,
            "save_steps": 3,
            "disable_tqdm": True,
        },
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _new_rubric_each_time() -> Any:
    """Meta-judge answers: a different rubric at every request for one, so every meta step makes a version.

    Items are on 0..9, the range the scripted reward judge's digit answers cover.
    """
    count = itertools.count()

    def handler(body: dict[str, Any]) -> Any:
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        if "items" not in schema.get("properties", {}):
            return default_answer(body)
        n = next(count)
        item = {"title": f"Clarity {n}", "description": f"Revision {n}: reward clear prose.", "min_score": 0}
        return json.dumps({"items": [{**item, "max_score": 9}]})

    return handler


def _versions_on_disk(run: Path) -> list[dict[str, Any]]:
    """Every rubric version file, parsed: a half-written one would raise here."""
    paths = sorted((run / "rubrics" / "default").glob("v*.json"))
    return [json.loads(p.read_text()) for p in paths]


def _wait_for(predicate: Any, child: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if child.poll() is not None:
            raise AssertionError(f"the training child exited ({child.returncode}) before {what}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_meta_step_then_resume(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    hang = {"on": True}

    def meta_faults(index: int, body: dict[str, Any]) -> str | None:
        # The first meta step (step 2) answers; the second one (step 4) hangs until the child is killed.
        return "hang" if hang["on"] and index >= META_STEP_REQUESTS else None

    with (
        ScriptedJudge() as judge,
        ScriptedJudge(faults=meta_faults, handler=_new_rubric_each_time(), hang_s=120) as meta,
    ):
        config = _write_config(tmp_path, tiny_model_dir, judge.url, meta.url)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen(
            [sys.executable, "-m", "metapo.cli", "train", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            checkpoint = run / "checkpoints" / "checkpoint-3"
            _wait_for(lambda: (checkpoint / STATE_FILE).exists(), child, 240, "the first checkpoint")
            _wait_for(lambda: meta.request_count > META_STEP_REQUESTS, child, 60, "the second meta step")
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            assert child.stderr is not None
            child.stderr.close()

        # What the crash left: versions 0 and 1 whole, nothing of the interrupted meta step.
        versions = _versions_on_disk(run)
        assert [v["version"] for v in versions] == [0, 1]
        assert versions[1]["parents"] == [0] and versions[1]["step"] == 2
        state = json.loads((checkpoint / STATE_FILE).read_text())
        assert state["versions"] == {"default": 1} and state["meta_steps"] == 1
        saved_window = [s["sample_id"] for s in state["window"]]
        assert len(saved_window) == 4  # step 3's samples, gathered since the step-2 meta step

        restored: dict[str, Any] = {}
        load_state = MetaPolicyOptimizationCallback.load_state

        def spy(self: MetaPolicyOptimizationCallback, directory: Path) -> None:
            load_state(self, directory)
            restored.update(
                directory=Path(directory).name,
                versions=self.rubrics.versions(),
                active=self.rubrics.get().rubric.to_dict(),
                window=[s.sample_id for s in self.window],
                meta_steps=self.meta_steps,
            )

        monkeypatch.setattr(MetaPolicyOptimizationCallback, "load_state", spy)
        hang["on"] = False
        assert main(["train", "--config", str(config), "--resume", "training.max_steps=4"]) == 0

    assert restored["directory"] == "checkpoint-3"
    assert restored["versions"] == {"default": 1}
    assert restored["active"] == versions[1]["rubric"]
    assert restored["window"] == saved_window and restored["meta_steps"] == 1
    # The resumed run carried on from version 1 with the restored window plus step 4's samples.
    history = RubricStore(run / "rubrics").history()
    assert [v.version for v in history] == [0, 1, 2]
    assert history[2].parents == (1,) and history[2].step == 4
    step4 = json.loads((run / "meta" / "step-000004-default.json").read_text())
    assert step4["parent_version"] == 1 and step4["window_size"] == 8
    assert len(_versions_on_disk(run)) == 3
    final = json.loads((run / "final" / STATE_FILE).read_text())
    assert final["versions"] == {"default": 2} and final["meta_steps"] == 2


@pytest.mark.slow
def test_a_run_stopped_by_a_down_judge_resumes_from_a_fresh_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    down = {"on": False}

    def faults(index: int, body: dict[str, Any]) -> str | None:
        # Healthy for steps 1 and 2 (four one-item requests each), then down.
        return "503" if down["on"] or index >= 8 else None

    with ScriptedJudge(faults=faults) as judge:
        config = _write_config(
            tmp_path,
            tiny_model_dir,
            judge.url,
            judge.url,
            mpo={"interval": 0},
            reward={"max_consecutive_failures": 4, "scoring": "logprob"},  # one request per sample
            training={"max_steps": 4, "save_steps": 100},
        )
        assert main(["train", "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert "error: 4 samples in a row could not be scored" in err and "--resume" in err

        # The stop saved the last completed step, with the metapo state beside it.
        checkpoint = run / "checkpoints" / "checkpoint-2"
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
        assert json.loads((checkpoint / STATE_FILE).read_text())["versions"] == {"default": 0}
        assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
        stopped = read_jsonl(run / "samples.jsonl")
        assert len(stopped) == 12 and [s["reward"] is None for s in stopped] == [False] * 8 + [True] * 4

        judge.faults = None  # the judge is back
        assert main(["train", "--config", str(config), "--resume"]) == 0

    log = (run / "train.log").read_text()
    assert "resuming from" in log and "checkpoint-2" in log
    resumed = read_jsonl(run / "samples.jsonl")[12:]
    assert len(resumed) == 8 and all(s["reward"] is not None for s in resumed)
    assert (run / "final" / STATE_FILE).exists()
