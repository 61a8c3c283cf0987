"""The self-contained HTML run report.

Everything that comes from the run (completions, prompts, rubric text, meta-judge analyses, error messages, file
names, config values) is untrusted and goes through :func:`esc` before it reaches the page. The page also carries a
Content-Security-Policy that allows no scripts and no network access at all (images only from inline ``data:``
URIs), so a mistake in escaping still could not run code or leak anything.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from metapo.report.data import (
    RunData,
    TimelineEntry,
    VersionDiff,
    example_samples,
    gate_checks,
    item_titles,
    judge_costs,
    length_series,
    meta_summary,
    reward_series,
    rubric_timeline,
    sample_health,
)
from metapo.report.figures import curve_png, timeline_png, version_colour

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_PROMPT_CHARS = 600
MAX_COMPLETION_CHARS = 2000

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9;
font-size:14px;line-height:1.45}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #dde1e6;
padding-bottom:4px}h3{font-size:15px;margin:20px 0 8px}
.sub{color:#5b6270;margin:0 0 16px}
nav{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 14px;margin:14px 0}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 14px;min-width:130px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#5b6270;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;background:#fff;border:1px solid #dde1e6;border-radius:6px}
.chip{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:5px;vertical-align:middle}
pre,.text{white-space:pre-wrap;word-break:break-word;background:#fff;border:1px solid #e3e6ea;border-radius:6px;
padding:8px 10px;margin:4px 0;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
max-height:420px;overflow:auto}
details{margin:6px 0}summary{cursor:pointer;color:#0b5cad}
.add{color:#0a7a3d}.del{color:#b3261e}.chg{color:#8a5a00}
.muted{color:#6b7280}.warn{background:#fff4e5;border:1px solid #f3c77b;border-radius:6px;padding:8px 12px}
.samples{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.sample{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 12px}
.sample h4{margin:0 0 6px;font-size:13px}
"""


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell (escaped); other values escaped as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "–"
        if abs(value) >= 1000 or value == int(value):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
        return f"{value:.{digits}g}"
    return esc(value)


def clip(text: Any, limit: int) -> str:
    """Shorten text for display, saying how much was cut."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else f"{text[:limit]}\n[… {len(text) - limit} more characters]"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells must already be escaped HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def chip(version: int | None) -> str:
    """A small colour square matching the version's colour in the figures."""
    return f'<span class="chip" style="background:{version_colour(version)}"></span>'


def img(png_b64: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_b64}">'


# ----- sections ----------------------------------------------------------------------------------------------
def _header(data: RunData) -> str:
    cfg = data.config
    judge = cfg.get("judge") if isinstance(cfg.get("judge"), dict) else {}
    meta = cfg.get("meta_judge") if isinstance(cfg.get("meta_judge"), dict) else None
    facts = [
        ("task", cfg.get("task")),
        ("policy", cfg.get("model")),
        ("algorithm", cfg.get("algorithm")),
        ("judge", judge.get("model") or judge.get("gguf")),
        (
            "meta-judge",
            (meta or {}).get("model") or (meta or {}).get("gguf") or ("same as judge" if judge else None),
        ),
    ]
    line = " · ".join(f"{esc(k)}: <b>{esc(v)}</b>" for k, v in facts if v)
    return (
        f"<h1>Meta Policy Optimization run report: {esc(data.name)}</h1>"
        f'<p class="sub">{line or "no config.yaml found"}<br>generated {esc(time.strftime("%Y-%m-%d %H:%M"))}'
        f" from <code>{esc(data.run_dir)}</code></p>"
    )


def _cards(data: RunData) -> str:
    rewards = reward_series(data)
    steps = max(
        [*rewards.steps, *(int(m.get("step", 0)) for m in data.metrics if isinstance(m.get("step"), int))],
        default=None,
    )
    health = sample_health(data.samples)
    meta = meta_summary(data.meta_steps)
    final_versions = ", ".join(f"{esc(k)} v{v[-1].version}" for k, v in data.rubrics.items()) or "–"
    cards = [
        ("steps logged", fmt(steps) if steps is not None else "–"),
        ("samples scored", f"{fmt(health.scored)} / {fmt(health.total)}"),
        ("missing scores", fmt(health.missing)),
        ("rubric", final_versions if len(data.rubrics) <= 3 else f"{len(data.rubrics)} lineages"),
        ("meta steps", f"{meta.accepted} accepted / {meta.rejected} rejected"),
        ("last reward", fmt(rewards.values[-1]) if rewards.values else "–"),
    ]
    body = "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>' for k, v in cards
    )
    return f'<div class="cards">{body}</div>'


def _curves(data: RunData) -> str:
    out = ['<h2 id="curves">Training curves</h2>']
    lineage = next(iter(data.rubrics), "default")
    for series, title, ylabel in (
        (reward_series(data), "Reward", "mean reward"),
        (length_series(data), "Completion length", "mean length"),
    ):
        if not series.steps:
            out.append(f'<p class="muted">{esc(title)}: nothing logged yet.</p>')
            continue
        out.append(
            img(curve_png(series, data.meta_steps, title=title, ylabel=ylabel, lineage=lineage), title)
        )
        out.append(
            f'<p class="muted">source: {esc(series.source)}; points coloured by the rubric version in force.</p>'
        )
    return "".join(out)


def _item_line(item: dict[str, Any]) -> str:
    weight = item.get("weight", 1)
    extra = f", weight {fmt(weight)}" if weight not in (1, 1.0, None) else ""
    return (
        f"<b>{esc(item.get('title'))}</b> [{fmt(item.get('min_score'))}–{fmt(item.get('max_score'))}{extra}]"
    )


def _diff_html(change: VersionDiff) -> str:
    parts = []
    for item in change.added:
        parts.append(
            f'<div class="add">+ added {_item_line(item)}</div><div class="text">{esc(item.get("description"))}</div>'
        )
    for item in change.removed:
        parts.append(f'<div class="del">− removed {_item_line(item)}</div>')
    for c in change.changed:
        parts.append(f'<div class="chg">~ changed <b>{esc(c.title)}</b>: {esc("; ".join(c.details))}</div>')
        if c.old_description != c.new_description:
            parts.append(
                table(
                    ["before", "after"],
                    [
                        [
                            f'<div class="text">{esc(c.old_description)}</div>',
                            f'<div class="text">{esc(c.new_description)}</div>',
                        ]
                    ],
                )
            )
    if change.reordered:
        parts.append('<div class="chg">~ items reordered</div>')
    return "".join(parts) or '<span class="muted">no change</span>'


def _meta_details(meta: dict[str, Any]) -> str:
    parts = []
    analyses = meta.get("analyses")
    if isinstance(analyses, list) and analyses:
        rows = []
        for a in analyses:
            if isinstance(a, dict):
                rows.append(
                    [
                        esc(a.get("sample_id") or a.get("id") or ""),
                        "<br>".join(
                            f"<b>{esc(k)}</b>: {esc(v)}" for k, v in a.items() if k not in ("sample_id", "id")
                        ),
                    ]
                )
            else:
                rows.append(["", esc(a)])
        parts.append(
            f"<details><summary>meta-judge analyses ({len(rows)})</summary>"
            + table(["sample", "analysis"], rows)
            + "</details>"
        )
    refinements = meta.get("refinements")
    if isinstance(refinements, list) and refinements:
        parts.append("<p>Refinements:</p><ol>" + "".join(f"<li>{esc(r)}</li>" for r in refinements) + "</ol>")
    if meta.get("reason"):
        parts.append(f"<p>validation: {esc(meta.get('reason'))}</p>")
    return "".join(parts)


def _rubrics(data: RunData, timeline: list[TimelineEntry]) -> str:
    out = ['<h2 id="rubrics">Rubric evolution</h2>']
    if not timeline:
        return out[0] + '<p class="muted">No rubric versions found under rubrics/.</p>'
    steps = [
        *reward_series(data).steps,
        *(int(s["step"]) for s in data.samples if isinstance(s.get("step"), int)),
    ]
    out.append(img(timeline_png(timeline, last_step=max(steps, default=None)), "rubric evolution"))
    for lineage, versions in data.rubrics.items():
        entries = [e for e in timeline if e.lineage == lineage]
        if len(data.rubrics) > 1:
            out.append(f"<h3>Lineage {esc(lineage)}</h3>")
        rows = []
        for e in entries:
            v = e.version
            rows.append(
                [
                    f"{chip(v.version)}v{v.version}",
                    fmt(v.step),
                    esc(v.creator),
                    fmt(len(v.items)),
                    f"{fmt(v.min_points)} … {fmt(v.max_points)}",
                    esc(e.diff.summary()) if e.diff is not None else "initial",
                    f"<code>{esc(v.hash)}</code>",
                ]
            )
        out.append(
            table(
                ["version", "step", "creator", "items", "points", "change from parent", "hash"], rows, (1, 3)
            )
        )
        for e in entries:
            if e.diff is None:
                continue
            label = f"v{e.parent} → v{e.version.version} at step {e.version.step}: {e.diff.summary()}"
            body = _diff_html(e.diff)
            if e.meta:
                body += _meta_details(e.meta)
            elif e.version.evidence:
                body += _meta_details(e.version.evidence)
            out.append(f"<details open><summary>{esc(label)}</summary>{body}</details>")
        final = versions[-1]
        items = "".join(
            f'<li>{_item_line(i)}<div class="text">{esc(i.get("description"))}</div></li>'
            for i in final.items
        )
        out.append(
            f"<details open><summary>Final rubric (v{final.version}, {len(final.items)} items)</summary><ol>{items}</ol></details>"
        )
    out.append('<h3 id="meta">Meta steps</h3>')
    if not data.meta_steps:
        out.append(
            '<p class="muted">No meta steps logged (a fixed-rubric baseline, or none reached yet).</p>'
        )
        return "".join(out)
    rows = []
    for m in data.meta_steps:
        selected = m.get("selected")
        rows.append(
            [
                fmt(m.get("step")),
                esc(m.get("lineage", "default")),
                fmt(m.get("window_size")),
                fmt(len(selected)) if isinstance(selected, list) else "",
                '<span class="add">accepted</span>'
                if m.get("accepted")
                else '<span class="del">rejected</span>',
                f"v{fmt(m.get('parent_version'))} → v{fmt(m.get('new_version'))}"
                if m.get("new_version") is not None
                else "",
                esc(clip(m.get("reason"), 300)),
                "<br>".join(
                    f'<span class="{"add" if ok else "del"}">{esc(name)} {"ok" if ok else "FAIL"}</span>: '
                    f"{esc(summary)}"
                    for name, ok, summary in gate_checks(m)
                )
                or '<span class="muted">no gate</span>',
                fmt(m.get("duration_s")),
            ]
        )
    out.append(
        table(
            ["step", "lineage", "window", "selected", "outcome", "version", "reason", "acceptance gate", "seconds"],
            rows,
            (0, 2, 3, 8),
        )
    )
    for m in data.meta_steps:
        gate = m.get("acceptance")
        probes = gate.get("probes") if isinstance(gate, dict) else None
        if isinstance(probes, list) and probes:
            prows = [
                [esc(p.get("probe")), fmt(p.get("current")), fmt(p.get("candidate")), esc(clip(p.get("text"), 160))]
                for p in probes
                if isinstance(p, dict)
            ]
            label = f"acceptance gate probes at step {m.get('step')} ({m.get('lineage', 'default')})"
            out.append(
                f"<details><summary>{esc(label)}</summary>"
                + table(["probe", "current", "candidate", "text"], prows, (1, 2))
                + "</details>"
            )
    for m in data.meta_steps:
        if not m.get("accepted"):
            details = _meta_details(m)
            if details:
                label = f"rejected meta step at step {m.get('step')}"
                out.append(f"<details><summary>{esc(label)}</summary>{details}</details>")
    return "".join(out)


def _costs(data: RunData) -> str:
    out = ['<h2 id="costs">Judge and meta-judge costs, failures</h2>']
    costs = judge_costs(data.metrics)
    names = [
        "calls",
        "requests",
        "cache_hits",
        "retries",
        "failures",
        "failure_rate",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
        "mean_latency_s",
    ]
    if costs:
        # Only the counters some judge actually logged.
        names = [n for n in names if any(n in values for values in costs.values())]
        rows = [
            [esc(prefix), *(fmt(values.get(n)) if n in values else "" for n in names)]
            for prefix, values in costs.items()
        ]
        out.append(table(["counter", *names], rows, tuple(range(1, len(names) + 1))))
    else:
        out.append('<p class="muted">No judge counters in metrics.jsonl.</p>')
    health = sample_health(data.samples)
    rows = [
        ["samples logged", fmt(health.total)],
        ["scored by the judge", fmt(health.scored)],
        ["missing score (masked out of the loss)", fmt(health.missing)],
        ["judge wall time summed over samples (s)", fmt(health.judge_seconds)],
    ]
    rows += [[f"gate fired: {esc(name)}", fmt(n)] for name, n in health.gated.items()]
    out.append(table(["reward model", "count"], rows, (1,)))
    if health.errors:
        out.append(
            "<h3>Commonest scoring errors</h3>"
            + table(["error", "samples"], [[esc(e), fmt(n)] for e, n in health.errors], (1,))
        )
    meta = meta_summary(data.meta_steps)
    rows = [
        ["meta steps", fmt(meta.total)],
        ["accepted", fmt(meta.accepted)],
        ["rejected (rubric kept)", fmt(meta.rejected)],
        ["meta-step wall time (s)", fmt(meta.seconds)],
    ]
    rows += [[f"meta-judge {esc(k)}", fmt(v)] for k, v in meta.judge.items()]
    out.append(table(["meta-reward model", "count"], rows, (1,)))
    if meta.reasons:
        out.append(
            "<h3>Rejection reasons</h3>"
            + table(["reason", "meta steps"], [[esc(r), fmt(n)] for r, n in meta.reasons], (1,))
        )
    return "".join(out)


def _sample_card(data: RunData, sample: dict[str, Any]) -> str:
    lineage = str(sample.get("lineage", "default"))
    version = sample.get("rubric_version")
    items = item_titles(data, lineage, int(version)) if isinstance(version, int) else {}
    scores = sample.get("item_scores") if isinstance(sample.get("item_scores"), dict) else {}
    rationales = sample.get("rationales") if isinstance(sample.get("rationales"), dict) else {}
    rows = []
    for item_id, score in scores.items():
        item = items.get(str(item_id), {})
        rng = f"{fmt(item.get('min_score'))}–{fmt(item.get('max_score'))}" if item else ""
        rows.append([esc(item.get("title") or item_id), fmt(score), rng, esc(rationales.get(item_id, ""))])
    head = (
        f"step {fmt(sample.get('step'))} · {chip(version if isinstance(version, int) else None)}rubric "
        f"v{fmt(version)} · reward <b>{fmt(sample.get('reward'))}</b> · raw {fmt(sample.get('raw_score'))}"
    )
    if sample.get("gate"):
        head += (
            f' · <span class="del">gate {esc(sample.get("gate"))}: {esc(sample.get("gate_reason"))}</span>'
        )
    if sample.get("error"):
        head += f' · <span class="del">error: {esc(clip(sample.get("error"), 200))}</span>'
    return (
        f'<div class="sample"><h4>{head}</h4>'
        f'<details><summary>prompt</summary><div class="text">{esc(clip(sample.get("prompt"), MAX_PROMPT_CHARS))}</div></details>'
        f'<div class="text">{esc(clip(sample.get("completion"), MAX_COMPLETION_CHARS))}</div>'
        + (
            table(["item", "score", "range", "rationale"], rows, (1,))
            if rows
            else '<p class="muted">no item scores</p>'
        )
        + "</div>"
    )


def _samples(data: RunData) -> str:
    out = ['<h2 id="samples">Sample completions</h2>']
    start, end = example_samples(data.samples)
    if not start:
        return out[0] + '<p class="muted">No samples.jsonl.</p>'
    out.append('<p class="muted">Policy output is shown as plain text exactly as generated (escaped).</p>')
    columns = [("At the start", start), ("At the end", end)]
    out.append('<div class="samples">')
    for title, samples in columns:
        cards = "".join(_sample_card(data, s) for s in samples) or '<p class="muted">only one step logged</p>'
        out.append(f"<div><h3>{esc(title)}</h3>{cards}</div>")
    out.append("</div>")
    return "".join(out)


def _eval_section(name: str, result: dict[str, Any]) -> str:
    out = [f"<h3>{esc(name)}</h3>"]
    if result.get("kind") != "metapo-eval":
        flat = [[esc(k), fmt(v)] for k, v in result.items() if isinstance(v, int | float | str | bool)]
        return out[0] + (table(["key", "value"], flat) if flat else '<p class="muted">no scalar values</p>')
    metrics = result.get("metrics") or {}
    lengths = result.get("lengths") or {}
    models = list(result.get("files") or lengths)
    keys: list[str] = []
    for values in metrics.values():
        if isinstance(values, dict):
            keys += [
                k
                for k, v in values.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in keys
            ]
    rows = [
        [
            esc(m),
            *(fmt((metrics.get(m) or {}).get(k)) for k in keys),
            fmt((lengths.get(m) or {}).get("words_mean")),
            fmt((lengths.get(m) or {}).get("truncated_fraction")),
        ]
        for m in models
    ]
    out.append(f"<p>task <b>{esc(result.get('task'))}</b>, created {esc(result.get('created'))}</p>")
    out.append(table(["model", *keys, "mean words", "truncated"], rows, tuple(range(1, len(keys) + 3))))
    tour = result.get("tournament")
    if isinstance(tour, dict) and tour.get("models"):
        settings = tour.get("settings", {})
        out.append(
            f"<p>Tournament: {fmt(settings.get('runs'))} runs × {fmt(settings.get('matches'))} matches, protocol "
            f"{esc(tour.get('protocol'))}, {fmt(tour.get('judged'))} comparisons judged "
            f"({fmt(tour.get('unreadable'))} unreadable, {fmt(tour.get('ties'))} ties, position consistency "
            f"{fmt(tour.get('position_consistency'))}).</p>"
        )
        order = sorted(tour["models"], key=lambda m: -float(tour["elo"][m]["mean"]))
        lc = tour.get("length_controlled") or {}
        rows = []
        for m in order:
            bt = tour["bradley_terry"][m]
            rows.append(
                [
                    esc(m),
                    f"{float(tour['elo'][m]['mean']):.0f} ± {float(tour['elo'][m]['std']):.0f}",
                    f"{float(bt['rating']):.0f} [{float(bt['ci_low']):.0f}, {float(bt['ci_high']):.0f}]",
                    fmt(lc[m]["win_rate"]) if m in lc else "",
                    fmt(lc[m]["lc_win_rate"]) if m in lc else "",
                ]
            )
        baseline = settings.get("lc_baseline") or "–"
        out.append(
            table(
                [
                    "model",
                    "Elo (mean ± pop. std)",
                    "Bradley–Terry [CI]",
                    f"win rate vs {baseline}",
                    "LC win rate",
                ],
                rows,
                (1, 2, 3, 4),
            )
        )
        matrix = tour.get("win_rates") or {}
        if matrix:
            rows = [
                [esc(a), *(fmt(matrix.get(a, {}).get(b)) if a != b else "–" for b in order)] for a in order
            ]
            out.append(
                '<p class="muted">Observed win rate of the row model against the column model (ties count half).</p>'
            )
            out.append(table(["", *order], rows, tuple(range(1, len(order) + 1))))
    return "".join(out)


def _evals(data: RunData) -> str:
    out = ['<h2 id="eval">Evaluation</h2>']
    if not data.evals:
        return (
            out[0]
            + '<p class="muted">No eval/*.json results (run <code>metapo eval … --out RUN/eval/NAME.json</code>).</p>'
        )
    return out[0] + "".join(_eval_section(name, result) for name, result in data.evals)


def _config(data: RunData) -> str:
    if not data.config_text:
        return ""
    return f'<h2 id="config">Configuration</h2><details><summary>config.yaml</summary><pre>{esc(data.config_text)}</pre></details>'


def _hackbench(data: RunData) -> str:
    """The hack-repair benchmark's headline numbers and figures, when ``metapo hackbench --run-dir`` ran."""
    result = data.hackbench
    if result is None:
        return ""
    rows = []
    for part in result.get("static", []):
        for v in part.get("versions", []):
            rows.append(
                [esc(part.get("task")), f"v{esc(v.get('version'))}", fmt((v.get("success") or {}).get("value")),
                 fmt((v.get("auc") or {}).get("value"))]
            )
    figures = []
    folder = data.run_dir / "hackbench"
    for path in sorted(folder.glob("*.png")):
        figures.append(img(base64.b64encode(path.read_bytes()).decode("ascii"), path.stem))
    return (
        '<section id="hackbench"><h2>Hack-repair benchmark</h2>'
        + table(["task", "rubric", "hack success", "AUC good vs hack"], rows, numeric=(2, 3))
        + "".join(figures)
        + "<p>Full tables: hackbench/hackbench.md.</p></section>"
    )


def render_html(data: RunData) -> str:
    """The full report page for a loaded run."""
    timeline = rubric_timeline(data)
    problems = ""
    if data.problems:
        problems = (
            '<div class="warn">Some files could not be read: '
            + "; ".join(esc(p) for p in data.problems)
            + "</div>"
        )
    nav = (
        '<nav><a href="#curves">Curves</a><a href="#rubrics">Rubrics</a><a href="#meta">Meta steps</a>'
        '<a href="#costs">Costs</a><a href="#samples">Samples</a><a href="#eval">Evaluation</a>'
        + ('<a href="#hackbench">Hack benchmark</a>' if data.hackbench is not None else "")
        + ('<a href="#config">Config</a>' if data.config_text else "")
        + "</nav>"
    )
    body = "".join(
        [
            _header(data),
            _cards(data),
            problems,
            nav,
            _curves(data),
            _rubrics(data, timeline),
            _costs(data),
            _samples(data),
            _evals(data),
            _hackbench(data),
            _config(data),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc('Meta Policy Optimization run report: ' + data.name)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
