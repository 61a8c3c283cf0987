"""Shared plumbing of the benchmark scripts: scripted judge servers, variant processes, results, tables.

Every benchmark compares variants side by side in one invocation. Each variant runs in a fresh Python
process (so its peak RSS is its own and no variant inherits another's warm caches), and rounds are
interleaved (A B C, A B C, ...) so that load from other processes on the machine hits every variant alike.
The scripted judge runs in a process of its own, so its request handling does not compete for the
measured process's GIL.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ----- measurement -------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    for package in ("torch", "transformers", "trl", "httpx"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            pass
    return info


# ----- the scripted judge in its own process ----------------------------------------------------------------
_SERVER = """
import itertools, json, sys
sys.path.insert(0, {repo!r})
from tests.scripted_judge import ScriptedJudge, default_answer
count = itertools.count()

# Items on 0..9, the range the scripted reward judge's digit answers cover.
def new_rubric_each_time(body):
    schema = (body.get("response_format") or {{}}).get("json_schema", {{}}).get("schema", {{}})
    if "items" not in schema.get("properties", {{}}):
        return default_answer(body)
    n = next(count)
    item = {{"title": f"Clarity {{n}}", "description": f"Revision {{n}}: reward clear prose.", "min_score": 0}}
    return json.dumps({{"items": [dict(item, max_score=9)]}})

judge = ScriptedJudge(latency_s={latency!r}, handler=new_rubric_each_time if {vary!r} else None).start()
print(judge.url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
print(json.dumps({{"requests": judge.request_count, "max_in_flight": judge.max_in_flight}}), flush=True)
judge.close()
"""


class JudgeProcess:
    """A :class:`tests.scripted_judge.ScriptedJudge` with fixed latency, served by a child process.

    With ``new_rubric_each_time`` every request for a rubric gets a different one (a meta judge whose
    every meta step produces a new version); otherwise the scripted default answers apply.

    Attributes:
        url: API root (``http://127.0.0.1:<port>/v1``).
        stats: After :meth:`close`: requests served and the most in flight at once.
    """

    def __init__(self, latency_s: float, *, new_rubric_each_time: bool = False) -> None:
        self._proc = subprocess.Popen(
            [PYTHON, "-c", _SERVER.format(repo=str(REPO), latency=latency_s, vary=new_rubric_each_time)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("scripted judge process did not start")
        self.stats: dict[str, int] = {}

    def close(self) -> dict[str, int]:
        out, _ = self._proc.communicate(timeout=30)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        self.stats = json.loads(lines[-1]) if lines else {}
        return self.stats

    def __enter__(self) -> JudgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self.close()


# ----- variants in fresh processes, interleaved ----------------------------------------------------------
def run_variant(
    script: Path, variant: str, params: dict[str, Any], timeout_s: float = 1800
) -> dict[str, Any]:
    """Runs ``script --variant NAME --params JSON`` in a fresh process and returns the JSON it prints last."""
    cmd = [PYTHON, str(script), "--variant", variant, "--params", json.dumps(params)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"variant {variant} of {script.name} failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


def interleaved(
    runs: Sequence[tuple[str, str, dict[str, Any]]],
    script: Path,
    repeats: int,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """``repeats`` rounds of every ``(label, variant, params)``, in round-robin order; results per label."""
    out: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in runs}
    for r in range(repeats):
        for label, variant, params in runs:
            result = run_variant(script, variant, params)
            out[label].append(result)
            log(f"  round {r + 1}/{repeats} {label}: {summarise_run(result)}")
    return out


def summarise_run(result: dict[str, Any]) -> str:
    keys = [k for k in ("seconds", "train_seconds", "peak_rss_mib") if k in result]
    return ", ".join(
        f"{k}={result[k]:.3f}" if isinstance(result[k], float) else f"{k}={result[k]}" for k in keys
    )


def median_of(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def variant_main(variants: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """If this process was started as a variant (``--variant``), run it, print its JSON, and return True."""
    if "--variant" not in sys.argv:
        return False
    name = sys.argv[sys.argv.index("--variant") + 1]
    params = json.loads(sys.argv[sys.argv.index("--params") + 1])
    result = variants[name](params)
    result.setdefault("peak_rss_mib", peak_rss_mib())
    print(json.dumps(result), flush=True)
    return True


# ----- output -------------------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable on a terminal)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Writes ``benchmarks/results/<name>.json`` with the machine description added.

    A ``--quick`` run writes under ``results/quick/`` (not tracked), so a smoke run never replaces the figures
    that ``RESULTS.md`` quotes.
    """
    folder = RESULTS_DIR / "quick" if "--quick" in sys.argv[1:] else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "benchmark": name,
        "machine": machine(),
        "command": " ".join([Path(PYTHON).name, *sys.argv]),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - started
