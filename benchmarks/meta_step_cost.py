"""Benchmark 2: what a slow meta step costs training. Non-blocking vs ``blocking=True`` vs no meta step.

The same short GRPO + Meta Policy Optimization run (tiny random policy, scripted reward judge) with a
deliberately slow scripted meta judge: every meta-judge call takes ``meta_latency_s``, and a meta step makes
three rounds of calls (analyses, refinements, merge), so one meta step lasts several training steps. The
no-meta run is the baseline (``interval=0``). Target: non-blocking total time <= 1.05x no-meta.

    .venv/bin/python benchmarks/meta_step_cost.py [--quick] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import JudgeProcess, interleaved, median_of, table, variant_main, write_result  # noqa: E402

# A meta step makes three sequential rounds of meta-judge calls (analyses, refinements, merge), so at
# 0.5 s per call it lasts ~1.5 s: seven or eight training steps of the tiny policy, within one interval, so
# a trigger normally finds the previous meta step done and starts a new one.
FULL = {
    "steps": 40,
    "interval": 10,
    "batch": 4,
    "generations": 4,
    "completion_tokens": 32,
    "reward_latency_s": 0.05,
    "meta_latency_s": 0.5,
    "meta_samples": 2,
}
QUICK = {**FULL, "steps": 6, "interval": 2, "meta_latency_s": 0.2}
TARGET = 1.05
# "non_blocking_last_step" starts a meta step at the last step too, as the callback did before it stopped
# doing so; the run then waits for a rubric nothing uses (kept to show what that change saved).
# "non_blocking_gate" runs the acceptance gate (mpo.acceptance, on by default in real runs) inside each
# background meta step, scoring its probes with the reward judge; the other meta variants run without it, so
# the gate's own cost is the difference between the two non-blocking rows.
VARIANT_NAMES = ("no_meta", "non_blocking", "non_blocking_gate", "blocking", "non_blocking_last_step")


def run(p: dict[str, Any]) -> dict[str, Any]:
    from _grpo import StepClock, timed_train, trainer

    from metapo.judges import JudgeClient, OpenAIHTTPBackend
    from metapo.meta.acceptance import AcceptanceGate
    from metapo.meta.controller import MetaPolicyOptimizationCallback
    from metapo.meta.meta_judge import MetaConfig, MetaJudge
    from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
    from metapo.rubric import Rubric, RubricStore
    from metapo.rubric.active import ActiveRubrics

    variant = p["variant"]
    with (
        JudgeProcess(p["reward_latency_s"]) as judge,
        JudgeProcess(p["meta_latency_s"], new_rubric_each_time=True) as meta,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out_dir = Path(tmp)
        active = ActiveRubrics(
            RubricStore(out_dir / "rubrics"), Rubric.single("Quality", "Overall quality of the answer.", 0, 9)
        )
        interval = 0 if variant == "no_meta" else p["interval"]
        mpo = MetaConfig(interval=interval, samples=p["meta_samples"], blocking=variant == "blocking")
        mpo.acceptance.enabled = variant == "non_blocking_gate"
        meta_judge = None
        if interval:
            meta_client = JudgeClient(OpenAIHTTPBackend([meta.url]), model_id="scripted-meta", timeout_s=60)
            meta_judge = MetaJudge(meta_client, mpo, task_description="Answer the prompt well.")
        controller = MetaPolicyOptimizationCallback(meta_judge, active, mpo, out_dir)
        if variant == "non_blocking_last_step":
            trigger = controller._trigger
            controller._trigger = lambda step, start_job=True: trigger(step)  # type: ignore[method-assign]
        reward = RubricReward(
            JudgeClient(
                OpenAIHTTPBackend([judge.url]), model_id="scripted", max_concurrency=16, timeout_s=60
            ),
            active,
            RubricRewardConfig(input_label="Prompt"),
            on_scored=controller.record,
            extra_metrics=controller.metrics,
        )
        if mpo.acceptance.enabled:
            controller.acceptance = AcceptanceGate(reward, mpo.acceptance)
        # Time the training loop spends blocked on meta steps (blocking mode, and the drain at the end).
        waited = [0.0]
        wait = controller.wait

        def timed_wait(timeout: float | None = None) -> None:
            started = time.perf_counter()
            wait(timeout)
            waited[0] += time.perf_counter() - started

        controller.wait = timed_wait  # type: ignore[method-assign]
        clock = StepClock()
        run_ = trainer(Path(p["policy"]), out_dir, reward, [controller, clock], p)
        out = timed_train(run_, clock)
        meta_seconds = sum(e.get("duration_s", 0.0) for e in controller.events if "accepted" in e)
        out.update(
            seconds=out["train_seconds"],
            meta_steps=controller.meta_steps,
            meta_accepted=controller.accepted,
            steps_during_meta=controller.steps_during_meta,
            blocked_on_meta_s=waited[0],
            meta_step_seconds_total=meta_seconds,
            rubric_version=active.get().version,
            gate_judge_calls=controller.acceptance.judge_calls if controller.acceptance else 0,
            gate_rejected=controller.gate_rejected,
            gate_seconds_total=sum(
                (e.get("acceptance") or {}).get("duration_s", 0.0) for e in controller.events if "accepted" in e
            ),
        )
    return out


VARIANTS = {"run": run}


def main() -> None:
    from _grpo import build_policy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A 6-step run (for smoke runs).")
    parser.add_argument("--repeats", type=int, default=None, help="Rounds per variant (default 5, quick 1).")
    args = parser.parse_args()
    params = dict(QUICK if args.quick else FULL)
    repeats = args.repeats or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        params["policy"] = str(build_policy(Path(tmp) / "policy"))
        print(f"meta step cost: {params}, {repeats} round(s)")
        plan = [(name, "run", {**params, "variant": name}) for name in VARIANT_NAMES]
        runs = interleaved(plan, Path(__file__), repeats)

    base = median_of(runs["no_meta"], "train_seconds")
    rows, summary = [], {}
    for name in VARIANT_NAMES:
        results = runs[name]
        total = median_of(results, "train_seconds")
        summary[name] = {
            "train_seconds_median": total,
            "loop_seconds_median": median_of(results, "loop_seconds"),
            "vs_no_meta": total / base,
            "vs_no_meta_per_round": [
                r["train_seconds"] / n["train_seconds"] for r, n in zip(results, runs["no_meta"], strict=True)
            ],
            "blocked_on_meta_s_median": median_of(results, "blocked_on_meta_s"),
            "meta_steps": [r["meta_steps"] for r in results],
            "meta_accepted": [r["meta_accepted"] for r in results],
            "steps_during_meta": [r["steps_during_meta"] for r in results],
            "meta_step_seconds_total_median": median_of(results, "meta_step_seconds_total"),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in results),
            "gate_judge_calls": [r.get("gate_judge_calls", 0) for r in results],
            "gate_rejected": [r.get("gate_rejected", 0) for r in results],
            "gate_seconds_total_median": median_of(results, "gate_seconds_total"),
        }
        s = summary[name]
        rows.append(
            [
                name,
                total,
                total / base,
                s["loop_seconds_median"],
                s["blocked_on_meta_s_median"],
                f"{results[0]['meta_steps']} ({results[0]['meta_accepted']} accepted)",
                s["meta_step_seconds_total_median"],
                results[0]["steps_during_meta"],
                s["peak_rss_mib_max"],
            ]
        )
    print()
    print(
        table(
            [
                "variant",
                "train s",
                "x no-meta",
                "to last step s",
                "blocked on meta s",
                "meta steps",
                "meta work s",
                "steps during meta",
                "peak RSS MiB",
            ],
            rows,
        )
    )
    ratio = summary["non_blocking"]["vs_no_meta"]
    gated = summary["non_blocking_gate"]["vs_no_meta"]
    met = ratio <= TARGET
    print(
        f"\nnon-blocking / no-meta: {ratio:.3f} (target <= {TARGET}: {'met' if met else 'NOT met'}); "
        f"with the acceptance gate: {gated:.3f} ({'met' if gated <= TARGET else 'NOT met'}; gate judge calls "
        f"{summary['non_blocking_gate']['gate_judge_calls']}, gate seconds "
        f"{summary['non_blocking_gate']['gate_seconds_total_median']:.2f}); "
        f"blocking / no-meta: {summary['blocking']['vs_no_meta']:.3f}"
    )
    params.pop("policy")
    path = write_result(
        "meta_step_cost",
        {
            "params": params,
            "repeats": repeats,
            "runs": runs,
            "summary": summary,
            "target": TARGET,
            "non_blocking_vs_no_meta": ratio,
            "non_blocking_gate_vs_no_meta": gated,
            "target_met": met,
            "target_met_with_gate": gated <= TARGET,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    if not variant_main(VARIANTS):
        main()
