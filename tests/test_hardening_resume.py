"""Class 8 of the hardening issue: ``--resume`` survives a checkpoint torn by a crash or a full disk.

It falls back to the newest complete checkpoint, says so, and moves the torn one aside so that nothing mistakes
it for a checkpoint again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from metapo.cli import main
from metapo.meta.controller import STATE_FILE
from metapo.train.checkpoints import checkpoint_problem, last_complete_checkpoint
from tests.scripted_judge import ScriptedJudge


def _checkpoint(root: Path, step: int) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\x08" * 64)
    (path / "optimizer.pt").write_bytes(b"\x01" * 64)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / STATE_FILE).write_text(json.dumps({"versions": {"default": 0}, "window": []}))
    return path


def _tear(path: Path, how: str) -> None:
    if how == "callback-state-missing":  # the crash came before the Meta Policy Optimization state
        (path / STATE_FILE).unlink()
    elif how == "trainer-state-truncated":
        (path / "trainer_state.json").write_text('{"global_st')
    elif how == "trainer-state-missing":
        (path / "trainer_state.json").unlink()
    elif how == "weights-empty":  # the disk filled up while the weights were written
        (path / "model.safetensors").write_bytes(b"")
    elif how == "weights-missing":
        (path / "model.safetensors").unlink()
    elif how == "only-the-folder":
        for file in path.iterdir():
            file.unlink()
    elif how == "callback-state-not-json":
        (path / STATE_FILE).write_bytes(b"\x00" * 16)
    else:
        raise ValueError(how)


TEARS = [
    "callback-state-missing",
    "trainer-state-truncated",
    "trainer-state-missing",
    "weights-empty",
    "weights-missing",
    "only-the-folder",
    "callback-state-not-json",
]


@pytest.mark.parametrize("how", TEARS)
def test_the_newest_complete_checkpoint_is_chosen(how: str, tmp_path: Path, caplog) -> None:
    root = tmp_path / "checkpoints"
    _checkpoint(root, 2)
    _checkpoint(root, 10)  # numbered higher than 4 and 6 as text would sort lower: order is numeric
    for step in (12, 14):
        _tear(_checkpoint(root, step), how)
    assert checkpoint_problem(root / "checkpoint-14") is not None
    with caplog.at_level(logging.WARNING, logger="metapo"):
        chosen = last_complete_checkpoint(root)
    assert chosen == root / "checkpoint-10"
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint-10",
        "checkpoint-2",
        "incomplete-checkpoint-12",
        "incomplete-checkpoint-14",
    ]
    assert "falling back to checkpoint-10, the last complete checkpoint" in caplog.text
    assert "checkpoint-14 is incomplete" in caplog.text


def test_other_processes_leave_the_torn_checkpoint_where_it_is(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _checkpoint(root, 1)
    _tear(_checkpoint(root, 2), "callback-state-missing")
    assert last_complete_checkpoint(root, move_aside=False) == root / "checkpoint-1"
    assert (root / "checkpoint-2").is_dir()


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _tear(_checkpoint(root, 3), "weights-missing")
    (root / "incomplete-checkpoint-3").mkdir()  # left by an earlier fallback
    assert last_complete_checkpoint(root) is None
    assert (root / "incomplete-checkpoint-3.2").is_dir()
    assert last_complete_checkpoint(tmp_path / "nothing") is None


@pytest.mark.slow
def test_resume_after_a_crash_during_a_checkpoint_save(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    config: dict[str, Any] = {
        "model": str(tiny_model_dir),
        "task": "essay",
        "limit": 16,
        "output_dir": str(run),
        "judge": {"model": "scripted", "base_urls": ["http://127.0.0.1:9/v1"], "timeout_s": 10},
        "mpo": {"interval": 0},
        "training": {
            "max_steps": 2,
            "save_steps": 1,
            "per_device_train_batch_size": 2,
            "num_generations": 2,
            "max_completion_length": 8,
            "disable_tqdm": True,
        },
    }
    with ScriptedJudge() as judge:
        config["judge"]["base_urls"] = [judge.url]
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
        checkpoints = run / "checkpoints"
        assert (checkpoints / "checkpoint-1").is_dir() and (checkpoints / "checkpoint-2").is_dir()
        # The process died while checkpoint-2 was being written: the Trainer state is cut short and the
        # callback's state (written last) never came.
        _tear(checkpoints / "checkpoint-2", "trainer-state-truncated")
        _tear(checkpoints / "checkpoint-2", "callback-state-missing")
        capsys.readouterr()
        with caplog.at_level(logging.INFO, logger="metapo"):
            code = main(["train", "--resume", "--output-dir", str(run), "training.max_steps=3"])
        assert code == 0, capsys.readouterr().err
    assert "falling back to checkpoint-1, the last complete checkpoint" in caplog.text
    assert f"resuming from {checkpoints / 'checkpoint-1'}" in caplog.text
    assert (checkpoints / "incomplete-checkpoint-2").is_dir()
    state = json.loads((checkpoints / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert checkpoint_problem(checkpoints / "checkpoint-2") is None  # saved anew, complete, on the way to 3
