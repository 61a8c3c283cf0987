"""Benchmark 1: judge throughput of RubricReward against the ideal, and against a naive synchronous reward.

A scripted OpenAI-compatible judge answers every request after a fixed latency L. N completions are scored on
a K-item rubric in logprob mode (one request per item), with the client's concurrency cap C, so the best any
client can do is C / L requests per second. The naive reward is what many TRL users write: a plain function
that posts one request at a time with ``httpx`` and waits for each answer. It runs on a subset of the batch
(at one request per L seconds the full batch would take minutes) and its full-batch time is projected from
its measured rate. RubricReward's requests go through the lean HTTP/1.1 client (``metapo.judges.lean_http``, the
default for plain-http servers); the "via httpx" rows run the same client through httpx, side by side.

    .venv/bin/python benchmarks/judge_throughput.py [--quick] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import JudgeProcess, interleaved, median_of, table, variant_main, write_result  # noqa: E402

# (latency L in seconds, concurrency cap C) pairs; 1 s is the low end of remote-judge latency in practice
# (1-40 s per sample), 0.2 s a stress case where client overhead weighs five times more.
FULL = {
    "completions": 96,
    "items": 4,
    "grid": [[0.2, 16], [1.0, 16], [1.0, 64], [1.0, 128]],
    # The same client through httpx instead of the lean HTTP/1.1 path, side by side.
    "httpx_grid": [[0.2, 16], [1.0, 128]],
    "naive_latency_s": 1.0,
    "naive_completions": 2,
}
QUICK = {
    "completions": 16,
    "items": 4,
    "grid": [[0.1, 8]],
    "httpx_grid": [[0.1, 8]],
    "naive_latency_s": 0.1,
    "naive_completions": 2,
}
TARGET = 0.95


def batch(n: int) -> tuple[list[Any], list[str], list[str]]:
    """N distinct prompts and completions of a few dozen words each."""
    topics = ["the sea", "a storm", "rain", "a lighthouse", "winter", "a harbour", "the moon", "fog"]
    prompts, inputs, completions = [], [], []
    for i in range(n):
        topic = topics[i % len(topics)]
        text = f"Write about {topic} (prompt {i})."
        prompts.append([{"role": "user", "content": text}])
        inputs.append(text)
        completions.append(
            f"Essay {i}. " + f"The {topic} changes with the light, and the keeper notes it. " * 4
        )
    return prompts, inputs, completions


def rubric(items: int) -> Any:
    from metapo.rubric import Rubric

    return Rubric.from_items(
        [
            {
                "title": f"Criterion {k}",
                "description": f"What earns points on aspect {k}.",
                "min_score": 0,
                "max_score": 9,
            }
            for k in range(items)
        ]
    )


def run_rubric_reward(p: dict[str, Any]) -> dict[str, Any]:
    from metapo.judges import JudgeClient, OpenAIHTTPBackend
    from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
    from metapo.rubric import RubricStore
    from metapo.rubric.active import ActiveRubrics

    with JudgeProcess(p["latency_s"]) as server, tempfile.TemporaryDirectory() as tmp:
        client = JudgeClient(
            OpenAIHTTPBackend([server.url], timeout_s=60, lean_http=p.get("lean_http", True)),
            model_id="scripted",
            max_concurrency=p["concurrency"],
            timeout_s=60,
            max_attempts=1,
        )
        reward = RubricReward(
            client,
            ActiveRubrics(RubricStore(Path(tmp)), rubric(p["items"])),
            RubricRewardConfig(scoring="logprob"),
        )
        prompts, inputs, completions = batch(p["completions"])
        warm_prompts, warm_inputs, warm_completions = batch(p["concurrency"])

        async def go() -> tuple[float, list[float | None]]:
            # One warm-up batch opens the pooled connections, as the first training step would.
            await reward(warm_prompts, warm_completions, task_input=warm_inputs)
            started, cpu_started = time.perf_counter(), time.process_time()
            rewards = await reward(prompts, completions, task_input=inputs)
            cpu[0] = time.process_time() - cpu_started
            return time.perf_counter() - started, rewards

        cpu = [0.0]
        seconds, rewards = asyncio.run(go())
        stats = server.close()
    requests = p["completions"] * p["items"]
    assert all(r is not None for r in rewards), "the scripted judge never fails"
    assert stats["requests"] == requests + p["concurrency"] * p["items"], stats
    return {
        "requests": requests,
        "seconds": seconds,
        "throughput_rps": requests / seconds,
        "max_in_flight": stats["max_in_flight"],
        # The client process's own CPU per timed request (prompts, scoring, HTTP), whatever the wall clock did.
        "client_cpu_ms_per_request": cpu[0] * 1000 / requests,
    }


def run_naive(p: dict[str, Any]) -> dict[str, Any]:
    import httpx

    with JudgeProcess(p["latency_s"]) as server, httpx.Client(timeout=60) as http:
        url = server.url + "/chat/completions"

        def naive_reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
            scores = []
            for prompt, completion in zip(prompts, completions, strict=True):
                total = 0.0
                for k in range(p["items"]):
                    body = {
                        "model": "scripted",
                        "messages": [
                            {"role": "system", "content": "You are a strict grader."},
                            {
                                "role": "user",
                                "content": f"Task: {prompt[-1]['content']}\nCriterion {k}.\n"
                                f"<response>{completion}</response>\nScore 0-9. Reply with the integer.",
                            },
                        ],
                        "max_tokens": 1,
                        "logprobs": True,
                        "top_logprobs": 20,
                    }
                    answer = http.post(url, json=body).json()
                    top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                    probs = {
                        int(t["token"].strip()): math.exp(t["logprob"])
                        for t in top
                        if t["token"].strip().isdigit()
                    }
                    total += sum(d * q for d, q in probs.items()) / sum(probs.values())
                scores.append(total / p["items"] / 9)
            return scores

        prompts, _, completions = batch(p["completions"])
        naive_reward(prompts[:1], completions[:1])  # warm-up: opens the connection
        started = time.perf_counter()
        naive_reward(prompts, completions)
        seconds = time.perf_counter() - started
    requests = p["completions"] * p["items"]
    return {
        "requests": requests,
        "seconds": seconds,
        "throughput_rps": requests / seconds,
        "max_in_flight": 1,
    }


VARIANTS = {"rubric_reward": run_rubric_reward, "naive_sync": run_naive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A small batch (seconds, for smoke runs).")
    parser.add_argument("--repeats", type=int, default=None, help="Rounds per variant (default 3, quick 1).")
    args = parser.parse_args()
    params = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    n, k = params["completions"], params["items"]
    plan = [
        (
            f"RubricReward L={lat:g}s C={cap}",
            "rubric_reward",
            {"latency_s": lat, "concurrency": cap, "completions": n, "items": k},
        )
        for lat, cap in params["grid"]
    ] + [
        (
            f"RubricReward via httpx L={lat:g}s C={cap}",
            "rubric_reward",
            {"latency_s": lat, "concurrency": cap, "completions": n, "items": k, "lean_http": False},
        )
        for lat, cap in params["httpx_grid"]
    ]
    naive_l = params["naive_latency_s"]
    plan.append(
        (
            f"naive sync L={naive_l:g}s",
            "naive_sync",
            {"latency_s": naive_l, "concurrency": 1, "completions": params["naive_completions"], "items": k},
        )
    )
    print(f"judge throughput: {n} completions x {k} items, {repeats} round(s)")
    runs = interleaved(plan, Path(__file__), repeats)

    rows, summary = [], {}
    for label, variant, p in plan:
        results = runs[label]
        rps = median_of(results, "throughput_rps")
        ideal = p["concurrency"] / p["latency_s"]
        summary[label] = {
            "variant": variant,
            "latency_s": p["latency_s"],
            "concurrency": p["concurrency"],
            "requests_timed": results[0]["requests"],
            "seconds_median": median_of(results, "seconds"),
            "throughput_rps_median": rps,
            "ideal_rps": ideal,
            "achieved_over_ideal": rps / ideal,
            "achieved_over_ideal_all": [r["throughput_rps"] / ideal for r in results],
            "seconds_for_full_batch": n * k / rps,
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in results),
            "client_cpu_ms_per_request": median_of(results, "client_cpu_ms_per_request")
            if "client_cpu_ms_per_request" in results[0]
            else None,
        }
        rows.append(
            [
                label,
                results[0]["requests"],
                summary[label]["seconds_median"],
                rps,
                ideal,
                rps / ideal,
                n * k / rps,
                summary[label]["client_cpu_ms_per_request"] or "",
                summary[label]["peak_rss_mib_max"],
            ]
        )
    print()
    print(
        table(
            [
                "variant",
                "requests timed",
                "seconds",
                "req/s",
                "ideal req/s",
                "achieved/ideal",
                f"s for {n * k} req",
                "client CPU ms/req",
                "peak RSS MiB",
            ],
            rows,
        )
    )
    naive = summary[plan[-1][0]]
    verdicts = {}
    for label, _, p in plan[:-1]:
        ratio = summary[label]["achieved_over_ideal"]
        verdicts[label] = ratio >= TARGET
        same_l = (
            f" ({summary[label]['throughput_rps_median'] / naive['throughput_rps_median']:.1f}x naive)"
            if (p["latency_s"] == naive["latency_s"])
            else ""
        )
        print(
            f"{label}: achieved/ideal {ratio:.3f} (target >= {TARGET}: "
            f"{'met' if verdicts[label] else 'NOT met'}){same_l}"
        )
    path = write_result(
        "judge_throughput",
        {
            "params": params,
            "repeats": repeats,
            "runs": runs,
            "summary": summary,
            "target": TARGET,
            "target_met": verdicts,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    if not variant_main(VARIANTS):
        main()
