"""Benchmark 7: the reward service's overhead over in-process ``RubricReward``, and its throughput vs judge capacity.

A scripted judge (own process) answers every request after a fixed latency L; the reward judge's concurrency cap is
C, so no client can exceed C / L judge requests per second. The same run config (essay task, K-item rubric in
logprob mode: one judge request per item, meta steps off so every variant does the same work) is scored three
ways, side by side and interleaved, each in fresh processes:

* ``in_process``: ``RubricReward`` built by ``RewardService.build`` and called as TRL calls it (one batch of N);
* ``service_trl``: ``metapo serve-reward`` in its own process, scored by ``RemoteRubricReward`` (one batch of N
  in one request);
* ``service_verl8``: the same service, scored by 8 worker processes (verl's reward-worker count) each sending its
  share of the N samples one request per sample through ``metapo.integrations.verl.compute_score``, all in flight.

Overhead = service seconds / in-process seconds (target <= 1.05); throughput = judge requests per second through
the service / (C / L) (target >= 0.95). A warm-up batch opens every connection pool first.

    .venv/bin/python benchmarks/service_overhead.py [--quick] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PYTHON,
    REPO,
    JudgeProcess,
    interleaved,
    machine,
    median_of,
    table,
    variant_main,
    write_result,
)

FULL = {"completions": 384, "items": 1, "latency_s": 1.0, "concurrency": 64, "workers": 8}
QUICK = {"completions": 64, "items": 1, "latency_s": 0.2, "concurrency": 16, "workers": 8}
OVERHEAD_TARGET = 1.05
THROUGHPUT_TARGET = 0.95


def _config(tmp: Path, judge_url: str, p: dict[str, Any]) -> Path:
    rubric = tmp / "rubric.md"
    rubric.write_text(
        "".join(f"## Criterion {k} [0-9]\nWhat earns points on aspect {k}.\n\n" for k in range(p["items"]))
    )
    cfg = {
        "task": "essay",
        "output_dir": str(tmp / "run"),
        "initial_rubric": str(rubric),
        "judge": {
            "backend": "openai",
            "model": "scripted",
            "base_urls": [judge_url],
            "max_concurrency": p["concurrency"],
            "timeout_s": 120,
            "max_attempts": 1,
        },
        "mpo": {"interval": 0},
        "service": {"port": 0},
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _batch(n: int, tag: str) -> tuple[list[str], list[str]]:
    prompts = [f"Write about the sea ({tag} {i})." for i in range(n)]
    completions = [f"Essay {tag} {i}. The sea changes with the light, and the keeper notes it. " * 3 for i in range(n)]
    return prompts, completions


def run_in_process(p: dict[str, Any]) -> dict[str, Any]:
    from metapo.service.config import load_serve_config
    from metapo.service.state import RewardService

    with JudgeProcess(p["latency_s"]) as server, tempfile.TemporaryDirectory() as tmp:
        service = RewardService.build(load_serve_config(_config(Path(tmp), server.url, p), []))
        # As a TRL run wires it: the reward logs each batch and feeds the window itself.
        service.reward.on_scored = service.controller.record
        warm = _batch(p["concurrency"], "warm")
        prompts, completions = _batch(p["completions"], "timed")

        async def go() -> tuple[float, list[Any]]:
            await service.reward(warm[0], warm[1])
            started = time.perf_counter()
            rewards = await service.reward(prompts, completions)
            return time.perf_counter() - started, rewards

        seconds, rewards = asyncio.run(go())
        stats = server.close()
    assert all(r is not None for r in rewards)
    return _result(p, seconds, stats)


def _serve(config: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [PYTHON, "-m", "metapo.cli", "--log-level", "WARNING", "serve-reward", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"serve-reward did not start: {line!r}")
    return proc, line.split("on ", 1)[1].split()[0]


def run_service_trl(p: dict[str, Any]) -> dict[str, Any]:
    from metapo.integrations.trl import RemoteRubricReward

    with JudgeProcess(p["latency_s"]) as server, tempfile.TemporaryDirectory() as tmp:
        proc, url = _serve(_config(Path(tmp), server.url, p))
        try:
            reward = RemoteRubricReward(url)
            warm = _batch(p["concurrency"], "warm")
            prompts, completions = _batch(p["completions"], "timed")

            async def go() -> tuple[float, list[Any]]:
                await reward(warm[0], warm[1])
                started = time.perf_counter()
                rewards = await reward(prompts, completions)
                return time.perf_counter() - started, rewards

            seconds, rewards = asyncio.run(go())
        finally:
            proc.terminate()
            proc.wait(120)
        stats = server.close()
    assert all(r is not None for r in rewards)
    return _result(p, seconds, stats)


# One verl reward worker: waits for "go" on stdin (so all start together), sends its samples one per request,
# all in flight, and prints its own start and end times.
_WORKER = r"""
import asyncio, json, sys, time
from metapo.integrations.verl import compute_score

async def score(tag, n, offset):
    return await asyncio.gather(*(
        compute_score(data_source="essay", solution_str=f"Essay {tag} {offset + i}. The sea changes with the light, and the keeper notes it. " * 3,
                      ground_truth=None, extra_info={"prompt": f"Write about the sea ({tag} {offset + i})."})
        for i in range(n)))

async def main(warm, n, offset):
    await score("warm" + str(offset), warm, 0)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    out = await score("timed", n, offset)
    print(json.dumps({"started": started, "ended": time.time(), "failed": sum(r["judge_failed"] for r in out)}), flush=True)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""


def run_service_verl8(p: dict[str, Any]) -> dict[str, Any]:
    with JudgeProcess(p["latency_s"]) as server, tempfile.TemporaryDirectory() as tmp:
        proc, url = _serve(_config(Path(tmp), server.url, p))
        workers = []
        try:
            env = {**os.environ, "PYTHONPATH": str(REPO), "METAPO_REWARD_URL": url}
            share = p["completions"] // p["workers"]
            warm = max(1, p["concurrency"] // p["workers"])
            for w in range(p["workers"]):
                workers.append(
                    subprocess.Popen(
                        [PYTHON, "-c", _WORKER, str(warm), str(share), str(w * share)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=env,
                    )
                )
            for worker in workers:
                assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            reports = [json.loads(w.communicate(timeout=600)[0].strip().splitlines()[-1]) for w in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            proc.terminate()
            proc.wait(120)
        stats = server.close()
    assert not any(r["failed"] for r in reports)
    seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return _result(p, seconds, stats, completions=share * p["workers"])


def _result(p: dict[str, Any], seconds: float, stats: dict[str, int], completions: int | None = None) -> dict[str, Any]:
    requests = (completions or p["completions"]) * p["items"]
    return {
        "requests": requests,
        "seconds": seconds,
        "throughput_rps": requests / seconds,
        "capacity_share": requests / seconds / (p["concurrency"] / p["latency_s"]),
        "judge_requests_total": stats.get("requests"),
        "max_in_flight": stats.get("max_in_flight"),
    }


VARIANTS = {"in_process": run_in_process, "service_trl": run_service_trl, "service_verl8": run_service_verl8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A small batch (for smoke runs).")
    parser.add_argument("--repeats", type=int, default=None, help="Rounds per variant (default 3, quick 1).")
    args = parser.parse_args()
    p = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    plan = [(name, name, p) for name in VARIANTS]
    load_before = os.getloadavg()
    print(f"service overhead: {p['completions']} completions x {p['items']} item(s), L={p['latency_s']}s, C={p['concurrency']}")
    runs = interleaved(plan, Path(__file__), repeats)
    base = median_of(runs["in_process"], "seconds")
    rows, summary = [], {}
    for label, _, _ in plan:
        results = runs[label]
        seconds = median_of(results, "seconds")
        share = median_of(results, "capacity_share")
        summary[label] = {
            "seconds": seconds,
            "vs_in_process": seconds / base,
            "capacity_share": share,
            "rounds_capacity_share": [r["capacity_share"] for r in results],
            "rounds_seconds": [r["seconds"] for r in results],
        }
        rows.append(
            [label, results[0]["requests"], seconds, seconds / base, share, ", ".join(f"{r['capacity_share']:.3f}" for r in results)]
        )
    print(table(["variant", "judge requests", "seconds (median)", "vs in-process", "achieved / (C/L)", "rounds"], rows))
    overhead = summary["service_trl"]["vs_in_process"]
    throughput = summary["service_verl8"]["capacity_share"]
    data = {
        "params": p,
        "repeats": repeats,
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "summary": summary,
        "overhead_service_vs_in_process": overhead,
        "overhead_target_met": overhead <= OVERHEAD_TARGET,
        "throughput_verl8_vs_capacity": throughput,
        "throughput_service_trl_vs_capacity": summary["service_trl"]["capacity_share"],
        "throughput_in_process_vs_capacity": summary["in_process"]["capacity_share"],
        "throughput_target_met": throughput >= THROUGHPUT_TARGET,
    }
    write_result("service_overhead", data)
    print(
        f"overhead service/in-process {overhead:.3f} (target <= {OVERHEAD_TARGET}: "
        f"{'met' if data['overhead_target_met'] else 'NOT met'}); 8 verl workers at {throughput:.3f} of C/L "
        f"(target >= {THROUGHPUT_TARGET}: {'met' if data['throughput_target_met'] else 'NOT met'}); "
        f"in-process {data['throughput_in_process_vs_capacity']:.3f}"
    )


if __name__ == "__main__":
    if not variant_main(VARIANTS):
        main()
