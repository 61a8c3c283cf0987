"""The Markdown run summary, for terminals and CI logs.

It holds numbers and rubric metadata only; completions and meta-judge prose stay in the HTML page, so nothing a
policy wrote can end up rendered as Markdown. Text that does appear (rubric titles, reasons, model names) is made
inert for tables: no pipes, no newlines, no HTML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from metapo.report.data import (
    RunData,
    gate_checks,
    judge_costs,
    length_series,
    meta_summary,
    reward_series,
    rubric_timeline,
    sample_health,
)


def cell(value: Any, limit: int = 80) -> str:
    """Text made safe for one Markdown table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = re.sub(r"\s+", " ", str(value)).strip()
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("`", "'").replace("[", "\\[").replace("]", "\\]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: RunData) -> str:
    """The summary for one loaded run."""
    cfg = data.config
    judge = cfg.get("judge") if isinstance(cfg.get("judge"), dict) else {}
    lines = [f"# Meta Policy Optimization run report: {cell(data.name)}", ""]
    facts = [
        ("task", cfg.get("task")),
        ("policy", cfg.get("model")),
        ("algorithm", cfg.get("algorithm")),
        ("judge", judge.get("model") or judge.get("gguf")),
    ]
    lines.append(" · ".join(f"{k}: **{cell(v)}**" for k, v in facts if v) or "no config.yaml found")
    if data.problems:
        lines += ["", "Unreadable files: " + "; ".join(cell(p) for p in data.problems)]

    rewards, lengths = reward_series(data), length_series(data)
    health = sample_health(data.samples)
    meta = meta_summary(data.meta_steps)
    rows = []
    if rewards.steps:
        rows.append(
            ["reward", rewards.values[0], rewards.values[-1], f"steps {rewards.steps[0]}–{rewards.steps[-1]}"]
        )
    if lengths.steps:
        rows.append(["completion length", lengths.values[0], lengths.values[-1], lengths.source])
    lines += ["", "## Training", ""]
    if rows:
        lines.append(md_table(["curve", "first", "last", "source"], rows))
    else:
        lines.append("Nothing logged yet.")
    lines += [
        "",
        f"Samples: {health.total} logged, {health.scored} scored, {health.missing} missing a score, "
        f"{sum(health.gated.values())} gated"
        + (f" ({cell(', '.join(f'{k}: {v}' for k, v in health.gated.items()))})" if health.gated else "")
        + ".",
        f"Meta steps: {meta.total} ({meta.accepted} accepted, {meta.rejected} rejected), {meta.seconds:.0f} s.",
    ]

    timeline = rubric_timeline(data)
    lines += ["", "## Rubric evolution", ""]
    if timeline:
        rows = [
            [
                e.lineage,
                f"v{e.version.version}",
                e.version.step,
                e.version.creator,
                len(e.version.items),
                e.version.max_points,
                e.diff.summary() if e.diff is not None else "initial",
            ]
            for e in timeline
        ]
        lines.append(
            md_table(["lineage", "version", "step", "creator", "items", "max points", "change"], rows)
        )
        for e in timeline:
            if e.diff is None or e.diff.empty:
                continue
            changes = [f"+ {cell(i.get('title'))}" for i in e.diff.added]
            changes += [f"- {cell(i.get('title'))}" for i in e.diff.removed]
            changes += [f"~ {cell(c.title)} ({cell('; '.join(c.details))})" for c in e.diff.changed]
            lines.append(f"\n{cell(e.lineage)} v{e.parent} → v{e.version.version}: " + "; ".join(changes))
    else:
        lines.append("No rubric versions found.")
    if meta.reasons:
        lines += ["", md_table(["rejection reason", "meta steps"], meta.reasons)]

    if data.meta_steps:
        lines += ["", "## Meta steps", ""]
        rows = []
        for m in data.meta_steps:
            rubric = m.get("rubric") if isinstance(m.get("rubric"), dict) else {}
            items = rubric.get("items") if isinstance(rubric.get("items"), list) else []
            checks = gate_checks(m)
            gate = m.get("acceptance") if isinstance(m.get("acceptance"), dict) else {}
            rows.append(
                [
                    m.get("step"),
                    m.get("lineage", "default"),
                    "; ".join(str(i.get("title", "")) for i in items if isinstance(i, dict)) or "none",
                    "; ".join(f"{n} {'ok' if ok else 'FAIL'}: {summary}" for n, ok, summary in checks)
                    or "no gate",
                    gate.get("judge_calls", ""),
                    f"accepted as v{m.get('new_version')}" if m.get("accepted") else "kept the current version",
                    m.get("reason"),
                ]
            )
        lines.append(
            md_table(["step", "lineage", "proposed items", "gate checks", "gate judge calls", "outcome", "reason"], rows)
        )

    costs = judge_costs(data.metrics)
    if costs:
        names = [
            "calls",
            "failures",
            "retries",
            "cache_hits",
            "prompt_tokens",
            "completion_tokens",
            "latency_s",
        ]
        lines += [
            "",
            "## Judge costs",
            "",
            md_table(["counter", *names], [[p, *(v.get(n) for n in names)] for p, v in costs.items()]),
        ]

    for name, result in data.evals:
        lines += ["", f"## Evaluation: {cell(name)}", ""]
        lines.append(_eval_markdown(result))
    if data.hackbench is not None:
        lines += ["", hackbench_markdown(data.hackbench)]
    lines.append("")
    return "\n".join(lines)


def hackbench_markdown(result: dict[str, Any]) -> str:
    """The hack-repair benchmark's tables (``metapo hackbench --run-dir``), as a report section."""
    from metapo.eval.hacks.output import markdown

    try:
        return markdown(result).replace("# Hack-repair benchmark", "## Hack-repair benchmark", 1)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        return f"## Hack-repair benchmark\n\nhackbench/hackbench.json is incomplete ({type(exc).__name__})."


def _eval_markdown(result: dict[str, Any]) -> str:
    if result.get("kind") != "metapo-eval":
        return md_table(
            ["key", "value"], [[k, v] for k, v in result.items() if isinstance(v, int | float | str)]
        )
    out = []
    metrics = result.get("metrics") or {}
    keys: list[str] = []
    for values in metrics.values():
        if isinstance(values, dict):
            keys += [
                k
                for k, v in values.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys
            ]
    models = list(result.get("files") or result.get("lengths") or {})
    if keys:
        out.append(
            md_table(["model", *keys], [[m, *((metrics.get(m) or {}).get(k) for k in keys)] for m in models])
        )
    tour = result.get("tournament")
    if isinstance(tour, dict) and tour.get("models"):
        lc = tour.get("length_controlled") or {}
        order = sorted(tour["models"], key=lambda m: -float(tour["elo"][m]["mean"]))
        rows = [
            [
                m,
                f"{tour['elo'][m]['mean']:.0f} ± {tour['elo'][m]['std']:.0f}",
                f"{tour['bradley_terry'][m]['rating']:.0f} [{tour['bradley_terry'][m]['ci_low']:.0f}, "
                f"{tour['bradley_terry'][m]['ci_high']:.0f}]",
                lc[m]["win_rate"] if m in lc else None,
                lc[m]["lc_win_rate"] if m in lc else None,
            ]
            for m in order
        ]
        out.append(md_table(["model", "Elo", "Bradley–Terry [CI]", "win rate", "LC win rate"], rows))
    return "\n\n".join(out) or "No numeric results."
