"""Runs every benchmark in turn (``make bench``) and prints a summary of the targets.

Each benchmark is its own script (runnable alone) that prints a table and writes
``benchmarks/results/<name>.json``; this runner starts them one after another, so they never compete for the
CPU, and reads their JSON back for the summary. ``--quick`` runs each at smoke-test size (about two
minutes in all, without the embedded demo); its figures are not the ones to quote, and it overwrites the
result files.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--demo-preset quick|full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
BENCHMARKS = (
    "judge_throughput",
    "meta_step_cost",
    "overhead_vs_trl",
    "score_cache",
    "embedded_demo",
    "adversarial_text",
    "service_overhead",
    "embedded_prefix",
)
# Minutes of the embedded 1.5B judge even at small sizes: left out of --quick unless named with --only.
EMBEDDED = ("embedded_demo", "embedded_prefix")


def _summary(name: str, quick: bool) -> str:
    folder = RESULTS / "quick" if quick else RESULTS  # where _common.write_result puts --quick runs
    path = folder / f"{name}.json"
    if name == "embedded_demo":
        candidates = sorted(folder.glob("embedded_demo_*.json"), key=lambda p: p.stat().st_mtime)
        path = candidates[-1] if candidates else path
    if not path.exists():
        return f"{name}: no result file"
    data = json.loads(path.read_text())
    if name == "judge_throughput":
        return "judge throughput, achieved/ideal (target >= 0.95): " + "; ".join(
            f"{label} {s['achieved_over_ideal']:.3f}"
            for label, s in data["summary"].items()
            if s["variant"] == "rubric_reward"
        )
    if name == "meta_step_cost":
        return (
            f"meta step cost, non-blocking/no-meta {data['non_blocking_vs_no_meta']:.3f} (target <= 1.05: "
            f"{'met' if data['target_met'] else 'NOT met'}); blocking/no-meta "
            f"{data['summary']['blocking']['vs_no_meta']:.3f}"
        )
    if name == "overhead_vs_trl":
        return (
            f"overhead vs plain TRL {data['metapo_vs_plain_trl']:.3f} (target <= 1.05: "
            f"{'met' if data['target_met'] else 'NOT met'})"
        )
    if name == "score_cache":
        return (
            f"score cache speed-up {data['speedup_median']:.1f}x, all hits {data['all_hits']} (target >= 50x: "
            f"{'met' if data['target_met'] else 'NOT met'})"
        )
    if name == "embedded_prefix":
        parts = []
        for rubric, row in (data.get("prefix") or {}).get("summary", {}).items():
            parts.append(
                f"{rubric}: judge s/sample x{row['ratio_s_per_sample']:.2f}, prompt tokens "
                f"{row['before']['tokens_per_sample']:.0f} -> {row['after']['tokens_per_sample']:.0f} per sample, "
                f"rewards r = {row['rewards']['pearson']:.3f}"
            )
        for mode, row in (data.get("priority") or {}).items():
            parts.append(f"step while a meta step runs ({mode}) x{row['ratio']:.2f}")
        return "embedded judge prefix reuse and priority: " + "; ".join(parts)
    if name == "adversarial_text":
        worst = max(stage["growth"] for stage in data["stages"])
        return (
            f"adversarial text: worst time growth per doubling of the input {worst:.2f} over "
            f"{len(data['stages'])} stages (linear ~2, quadratic ~4)"
        )
    if name == "service_overhead":
        return (
            f"reward service: overhead vs in-process {data['overhead_service_vs_in_process']:.3f} (target <= 1.05: "
            f"{'met' if data['overhead_target_met'] else 'NOT met'}); 8 verl workers at "
            f"{data['throughput_verl8_vs_capacity']:.3f} of judge capacity (target >= 0.95: "
            f"{'met' if data['throughput_target_met'] else 'NOT met'}; in-process "
            f"{data['throughput_in_process_vs_capacity']:.3f})"
        )
    result = data["result"]
    return (
        f"embedded demo ({data['preset']}): {result['process_wall_s']:.0f} s wall, training "
        f"{result['train_runtime']:.0f} s (generation {result['generation_seconds']:.0f}, judge "
        f"{result['judge_seconds']:.0f}, update {result['update_seconds']:.0f}, blocked on meta "
        f"{result['blocked_on_meta_seconds']:.0f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke-test sizes (figures not to be quoted).")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="Run only these benchmarks.")
    parser.add_argument(
        "--demo-preset",
        choices=("quick", "full"),
        default="quick",
        help="Preset of the embedded demo benchmark (default quick; full takes ~20 min).",
    )
    args = parser.parse_args()
    chosen = args.only or list(BENCHMARKS)
    if args.quick and not args.only:
        # Even at their smallest these run the real models for minutes: ask for them with --only.
        for name in EMBEDDED:
            chosen.remove(name)
        print(f"--quick: skipping {', '.join(EMBEDDED)} (minutes even at their quick sizes; --only runs them)")
    print(f"load average before: {os.getloadavg()}")
    failed = []
    for name in chosen:
        cmd = [sys.executable, str(BENCH_DIR / f"{name}.py")]
        if args.quick:
            cmd.append("--quick")
        if name == "embedded_demo" and not args.quick:
            cmd += ["--preset", args.demo_preset]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(cmd)
        print(f"=== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    print(f"\nload average after: {os.getloadavg()}")
    print("\nsummary" + (" (--quick: smoke-test sizes, not for quoting)" if args.quick else ""))
    for name in chosen:
        print(f"- {name} failed" if name in failed else f"- {_summary(name, args.quick)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
