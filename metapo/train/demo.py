"""The main job: essay-writing Meta Policy Optimization on the models embedded in PyPI packages."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from metapo.models.embedded import embedded_judge_settings

log = logging.getLogger(__name__)

# Sized for 2 CPU cores (benchmarks/RESULTS.md, sections 5 and 8): a GRPO step of 4 completions of up to 128 tokens
# takes ~35-45 s (generation ~19 s, judge ~10-15 s, update ~7 s), setup 30-70 s. Estimated: full (16 steps, 3 meta
# steps) ~14 min, limit 20; quick (4 steps, 1 meta step) ~4 min, limit 5.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "training": {"max_steps": 16, "max_completion_length": 128},
        "mpo": {
            "interval": 5,
            "samples": 2,
            "max_items": 4,
            "analysis_tokens": 200,
            "analysis_words": 110,
            "rubric_tokens": 600,
        },
    },
    "quick": {
        "training": {"max_steps": 4, "max_completion_length": 128},
        "mpo": {
            "interval": 2,
            "samples": 1,
            "max_items": 3,
            "analysis_tokens": 100,
            "analysis_words": 60,
            "rubric_tokens": 400,
        },
    },
}

BASE: dict[str, Any] = {
    "model": "embedded:smollm2-135m-instruct",
    "task": "essay",
    # Short essays, so a completion can end within the CPU-sized token budget (the missing-EOS gate stays on).
    "task_options": {"word_limit": 50},
    "limit": 64,
    "algorithm": "grpo",
    "judge": {
        # Reward calls one at a time (every call of a sample reuses the slot's cached prompt prefix); the meta
        # step gets a slot of its own, so a reward call never waits behind a meta-judge generation: llama.cpp
        # batches the two.
        **embedded_judge_settings(),
        "n_parallel": 2,
        "background_concurrency": 1,
    },
    # logprob, not the default multiturn: on 2 cores multiturn costs 2.6x the judge time per sample, which would
    # take the demo past its time budget; the hack benchmark measures what that costs in separation.
    "reward": {"scoring": "logprob", "max_judge_chars": 1500},
    "mpo": {
        "selection": "detectors",
        "max_items": 4,
        "max_sample_chars": 1200,
        "judge_context_tokens": 8192,
        # A small probe set keeps the gate affordable on 2 cores: the canaries of one prompt and three exemplars
        # (~12 probes; the version in force is scored once and cached across meta steps).
        "acceptance": {"canary_prompts": 1, "max_exemplars": 3},
    },
    "training": {
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-6,
        "temperature": 0.8,
        "beta": 0.0,
        "logging_steps": 1,
        "save_steps": 1000,
    },
}


def demo_config(preset: str, output_dir: str | None, overrides: list[str]) -> Any:
    """The demo's :class:`RunConfig` for a preset, with optional overrides."""
    from metapo.config import deep_merge, from_dict, parse_overrides
    from metapo.train.config import RunConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    data = deep_merge(BASE, PRESETS[preset])
    data["output_dir"] = output_dir or f"runs/demo-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(RunConfig, data)


def run_demo(preset: str, output_dir: str | None, overrides: list[str]) -> int:
    """Prepare the embedded models (first run only), train, and print where everything is."""
    cfg = demo_config(preset, output_dir, overrides)  # bad overrides fail before the heavy imports

    from metapo.models.embedded import prepare_smollm2, qwen_coder_1_5b_gguf
    from metapo.train.run import summarize, train

    started = time.perf_counter()
    log.info("preparing embedded models (converted and cached on first use)")
    prepare_smollm2()
    qwen_coder_1_5b_gguf()
    prepared = time.perf_counter()
    built = train(cfg)
    done = time.perf_counter()
    print(summarize(Path(cfg.output_dir)))
    c = built.controller
    print(
        f"\nwall time: {done - started:.0f} s (models {prepared - started:.0f} s, training {done - prepared:.0f} s); "
        f"meta steps: {c.meta_steps} ({c.accepted} accepted, {c.unchanged} unchanged, {c.rejected} rejected); "
        f"optimizer steps completed while a meta step ran: {c.steps_during_meta}; "
        f"rejected by the acceptance gate: {c.gate_rejected} "
        f"({c.acceptance.judge_calls if c.acceptance is not None else 0} judge calls spent by the gate)"
    )
    print(f"inspect: metapo rubric show {cfg.output_dir}   |   metapo report {cfg.output_dir}")
    return 0
