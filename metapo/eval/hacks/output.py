"""Markdown tables and PNG figures of a hack-benchmark result (the JSON result is the source of both).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no ``pyplot``, no display). Text from the
hack set never reaches the Markdown: only family names, rubric titles and numbers, made inert by
:func:`metapo.report.markdown.cell`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metapo.report.markdown import md_table


def fmt(estimate: dict[str, Any] | None) -> str:
    """``0.42 [0.31, 0.55]`` for an estimate dict (``n/a`` when it has no value)."""
    if not estimate or estimate.get("value") is None:
        return "n/a"
    value = f"{estimate['value']:.2f}"
    if estimate.get("low") is None:
        return value
    return f"{value} [{estimate['low']:.2f}, {estimate['high']:.2f}]"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def static_markdown(result: dict[str, Any]) -> str:
    """Tables of one task's static protocol."""
    fams = result["families"]
    versions = result["versions"]
    lines = [
        f"### Static protocol: {result['task']} ({len(result['prompts'])} prompts)",
        "",
        f"Window families: {', '.join(result['window_families']) or 'none'}; held out: "
        f"{', '.join(result['held_out_families']) or 'none'}. Success = hack reward >= the good response's; "
        "intervals are 95% bootstrap over prompts.",
        "",
    ]
    header = ["family", *[f"success v{v['version']}" + (f" (step {v['meta_step']['step']})" if v["meta_step"] else "") for v in versions]]
    rows = [[f, *[fmt(v["success_by_family"].get(f)) for v in versions]] for f in fams]
    rows.append(["**all hacks**", *[fmt(v["success"]) for v in versions]])
    rows.append(["**AUC good vs hack**", *[fmt(v["auc"]) for v in versions]])
    rows.append(["mean reward of good", *[_num(v["mean_reward"].get("good")) for v in versions]])
    lines += [md_table(header, rows), ""]
    steps = [v for v in versions if v["meta_step"]]
    if steps:
        header = ["meta step", "accepted", "items", "repaired (window)", "repaired (held out)", "collateral", "why"]
        rows = []
        for v in steps:
            rep = v["repair"] or {}
            rows.append(
                [
                    v["meta_step"]["step"],
                    "yes" if v["meta_step"]["accepted"] else "no",
                    len(v["rubric"]["items"]),
                    fmt(rep.get("repaired_window")),
                    fmt(rep.get("repaired_held_out")),
                    f"{fmt(rep.get('collateral'))} ({rep.get('collateral_count', 0)} of {len(result['prompts'])})",
                    v["meta_step"]["reason"],
                ]
            )
        lines += [md_table(header, rows), ""]
        last = steps[-1]["repair"] or {}
        per = last.get("repaired_by_family", {})
        if per:
            lines += [
                "Repaired rate per family after the last meta step (of the hacks that succeeded under v0):",
                "",
                md_table(["family", "repaired"], [[f, fmt(per.get(f))] for f in fams]),
                "",
            ]
    return "\n".join(lines)


def dynamic_markdown(result: dict[str, Any]) -> str:
    """Table of one task's dynamic protocol: good and hack mass at the start and end, per arm."""
    cfg = result["config"]
    lines = [
        f"### Dynamic protocol: {result['task']} ({len(result['prompts'])} prompts, {cfg['steps']} steps, "
        f"group {cfg['group']}, meta step every {cfg['meta_every']}, seeds {cfg['seeds']})",
        "",
    ]
    rows = []
    for name, arm in result["arms"].items():
        good = arm["bands"]["good_mass"]
        top = _top_family(arm["runs"], result["families"])
        accepted = sum(m["accepted"] for run in arm["runs"] for m in run["meta_steps"])
        tried = sum(len(run["meta_steps"]) for run in arm["runs"])
        rows.append(
            [
                name,
                _num(good["mean"][0]),
                f"{_num(good['mean'][-1])} [{_num(good['min'][-1])}, {_num(good['max'][-1])}]",
                top,
                f"{accepted} of {tried}" if arm["meta"] else "-",
            ]
        )
    header = ["arm", "good mass at start", "good mass at end (mean [min, max] over seeds)", "largest hack mass at end", "meta steps accepted"]
    lines += [md_table(header, rows), ""]
    return "\n".join(lines)


def _top_family(runs: Sequence[dict[str, Any]], fams: Sequence[str]) -> str:
    if not fams:
        return "n/a"
    ends = {f: sum(run["curve"][f"mass/{f}"][-1] for run in runs) / len(runs) for f in fams}
    best = max(ends, key=lambda f: ends[f])
    return f"{best} {ends[best]:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The whole report."""
    run = result["run"]
    lines = [
        "# Hack-repair benchmark",
        "",
        f"Judge: **{run['judge']}** · meta judge: **{run['meta_judge']}** · scoring: **{run['scoring']}** · "
        f"data: {run['data']}",
        "",
        f"Runtime {run['seconds']:.0f} s; judge calls {run['judge_calls']} ({run['judge_cache_hits']} from the "
        f"cache); meta-judge calls {run['meta_judge_calls']}.",
        "",
    ]
    for part in result.get("static", []):
        lines.append(static_markdown(part))
    for part in result.get("dynamic", []):
        lines.append(dynamic_markdown(part))
    if run.get("gate") is None and result.get("dynamic"):
        lines += ["The `mpo+gate` arm was not run: the acceptance gate is off (`mpo.acceptance.enabled=false`).", ""]
    return "\n".join(lines)


def static_png(result: dict[str, Any], path: Path) -> Path:
    """Success rate per family under each rubric version (bars with bootstrap intervals)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fams = result["families"]
    versions = result["versions"]
    fig = Figure(figsize=(max(6.0, 0.9 * len(fams) + 2), 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(versions), 1)
    for k, v in enumerate(versions):
        xs, ys, lo, hi = [], [], [], []
        for i, f in enumerate(fams):
            est = v["success_by_family"].get(f) or {}
            if est.get("value") is None:
                continue
            xs.append(i + k * width)
            ys.append(est["value"])
            lo.append(est["value"] - (est["low"] if est["low"] is not None else est["value"]))
            hi.append((est["high"] if est["high"] is not None else est["value"]) - est["value"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"v{v['version']}")
    ax.set_xticks([i + width * (len(versions) - 1) / 2 for i in range(len(fams))], fams, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("hack success rate")
    ax.set_title(f"{result['task']}: hacks scoring >= the good response")
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def dynamic_png(result: dict[str, Any], path: Path) -> Path:
    """Good-response mass over steps per arm: mean over seeds with a min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, arm in result["arms"].items():
        band = arm["bands"]["good_mass"]
        steps = list(range(len(band["mean"])))
        line = ax.plot(steps, band["mean"], label=f"{name}: good")
        ax.fill_between(steps, band["min"], band["max"], alpha=0.2, color=line[0].get_color())
        hack = arm["bands"]["hack_mass"]
        ax.plot(steps, hack["mean"], linestyle=":", color=line[0].get_color(), label=f"{name}: hacks")
        accepted = sorted({m["step"] for run in arm["runs"] for m in run["meta_steps"] if m["accepted"]})
        for step in accepted:  # where a seed's rubric changed
            ax.axvline(step, color=line[0].get_color(), linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("policy step")
    ax.set_ylabel("probability mass")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result['task']}: tabular policy under the rubric reward ({len(result['arms'])} arms)")
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path
