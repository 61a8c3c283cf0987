"""Two processes (torchrun, gloo on CPU): the window is gathered from every rank, all ranks switch together, a
resumed run restores each sample once, and a judge outage on one rank stops both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.scripted_judge import ScriptedJudge


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(tiny_model_dir: Path, run_dir: Path, url: str, **sections: dict) -> dict:
    config = {
        "model": str(tiny_model_dir),
        "task": "essay",
        "limit": 32,
        "output_dir": str(run_dir),
        "task_options": {"max_completion_tokens": 10},
        "judge": {"backend": "openai", "model": "scripted", "base_urls": [url], "timeout_s": 5},
        "reward": {"scoring": "logprob"},  # one call per item: the fault schedules count calls
        "training": {"per_device_train_batch_size": 4, "num_generations": 4, "disable_tqdm": True},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def _torchrun(tmp_path: Path, target: list[str], timeout_s: float = 300) -> tuple[int, str]:
    """Run ``target`` (a ``-m module ...`` or a script and its arguments) on two gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), *target]
    # Own process group, so a hung rank can never outlive the test.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own: kill the workers first, then the launcher.
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        stderr += "\n[killed: the run hung]"
    return proc.returncode, stderr


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (empty where /proc has no such listing)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_two_ranks_share_window_and_versions(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with ScriptedJudge() as judge:
        config = _config(
            tiny_model_dir,
            run_dir,
            judge.url,
            mpo={"interval": 2, "samples": 2, "blocking": True, "acceptance": {"enabled": False}},
            training={"max_steps": 3},
        )
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        code, stderr = _torchrun(tmp_path, ["-m", "metapo.cli", "train", "--config", str(path)])
    assert code == 0, stderr[-3000:]

    per_rank = []
    for name in ("samples.jsonl", "samples.rank1.jsonl"):
        rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
        per_rank.append({(r["step"], r["rubric_version"]) for r in rows})
    # Both ranks scored under the same version at every step, and switched after the meta step at step 2.
    assert per_rank[0] == per_rank[1] == {(0, 0), (1, 0), (2, 1)}
    meta = json.loads(next((run_dir / "meta").glob("*.json")).read_text())
    assert meta["window_size"] == 2 * 2 * 4  # two steps x two ranks x four completions, gathered on rank 0
    assert [p.name for p in sorted((run_dir / "rubrics" / "default").glob("v*.json"))] == [
        "v0000.json",
        "v0001.json",
    ]


@pytest.mark.slow
def test_resume_restores_every_ranks_window_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with ScriptedJudge() as judge:
        config = _config(
            tiny_model_dir,
            run_dir,
            judge.url,
            mpo={"interval": 4, "samples": 2, "blocking": True},
            training={"max_steps": 2, "save_steps": 2},
        )
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        code, stderr = _torchrun(tmp_path, ["-m", "metapo.cli", "train", "--config", str(path)])
        assert code == 0, stderr[-3000:]
        # The checkpoint holds both ranks' samples of steps 1-2, each once (2 steps x 2 ranks x 4).
        state = json.loads((run_dir / "checkpoints" / "checkpoint-2" / "mpo_state.json").read_text())
        ids = [s["sample_id"] for s in state["window"]]
        assert len(ids) == 16 and len(set(ids)) == 16

        resume = ["-m", "metapo.cli", "train", "--config", str(path), "--resume", "training.max_steps=4"]
        code, stderr = _torchrun(tmp_path, resume)
        assert code == 0, stderr[-3000:]
    # The meta step at step 4 saw the restored 16 once, plus steps 3-4 of both ranks.
    meta = json.loads((run_dir / "meta" / "step-000004-default.json").read_text())
    assert meta["window_size"] == 16 + 16


_PER_RANK_JUDGE = """
import os, sys
from metapo.cli import main
url = sys.argv[1] if os.environ["RANK"] == "0" else sys.argv[2]
sys.exit(main(["train", "--config", sys.argv[3], f"judge.base_urls=[{url}]"]))
"""


@pytest.mark.slow
def test_a_judge_outage_on_one_rank_stops_both(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Rank 1's judge answers the four requests of step 1, then fails; rank 0's stays healthy.
    with ScriptedJudge() as healthy, ScriptedJudge(faults=lambda i, body: "503" if i >= 4 else None) as dying:
        config = _config(
            tiny_model_dir,
            run_dir,
            healthy.url,
            mpo={"interval": 0},
            judge={"max_attempts": 1},
            reward={"max_consecutive_failures": 4},
            training={"max_steps": 4, "save_steps": 100},
        )
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        script = tmp_path / "per_rank.py"
        script.write_text(_PER_RANK_JUDGE)
        code, stderr = _torchrun(tmp_path, [str(script), healthy.url, dying.url, str(path)], timeout_s=240)
    assert code != 0 and "[killed: the run hung]" not in stderr
    # Both ranks stopped with the judge error at the same batch: rank 1 for its own judge, rank 0 for rank 1's.
    assert "4 samples in a row could not be scored" in stderr
    assert "another process of this run could not reach its judge" in stderr
    # The last completed step was checkpointed with the metapo state beside it.
    assert (run_dir / "checkpoints" / "checkpoint-1" / "mpo_state.json").exists()
