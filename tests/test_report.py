"""The run report on a small synthetic finished run (and on partial runs), plus a headless-Chromium render."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from metapo.cli import main
from metapo.eval.cli import run_eval
from metapo.eval.tournament import TournamentConfig
from metapo.files import atomic_write_json
from metapo.judges.types import ChatRequest, ChatResult
from metapo.report import write_report
from metapo.report.cli import register
from metapo.report.data import judge_costs, load_run, rubric_diff, rubric_timeline
from metapo.reward.records import ScoredSample
from metapo.rubric.model import Rubric
from metapo.rubric.store import RubricStore

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert('owned')</script></div><img src=x onerror=alert(1)>"

V0 = Rubric.single("Overall quality", "Rate the essay's overall quality from 0 to 5.")
V1 = Rubric.from_items(
    [
        {
            "id": "overall-quality",
            "title": "Overall quality",
            "description": "Rate overall quality; a title alone scores 0.",
            "min_score": 0,
            "max_score": 5,
        },
        {
            "title": "Structure <b>and</b> flow",
            "description": "Paragraphs follow from each other.",
            "min_score": 0,
            "max_score": 5,
        },
        {
            "title": "Off-topic content",
            "description": "Deduct for text unrelated to the prompt.",
            "min_score": -5,
            "max_score": 0,
            "weight": 2,
        },
    ]
)
V2 = Rubric.from_items(
    [
        {
            "id": "overall-quality",
            "title": "Overall quality",
            "description": "Rate overall quality; a title alone scores 0.",
            "min_score": 0,
            "max_score": 5,
        },
        {
            "id": "structure-b-and-b-flow",
            "title": "Structure <b>and</b> flow",
            "description": "Paragraphs follow from each other.",
            "min_score": 0,
            "max_score": 10,
        },
        {
            "title": "Completeness",
            "description": "The essay ends; it is not cut off.",
            "min_score": 0,
            "max_score": 3,
        },
    ]
)


class _Client:
    async def chat(self, request: ChatRequest) -> ChatResult:
        user = request.messages[-1]["content"]
        a, b = re.findall(r"<response_[ab]>\n(.*?)\n</response_[ab]>", user, re.DOTALL)
        return ChatResult(text="<winner>A</winner>" if len(a) >= len(b) else "<winner>B</winner>")


def _meta_record(
    step: int, accepted: bool, parent: int, new: int | None, rubric: Rubric | None, reason: str
) -> dict:
    record = {
        "window_size": 40,
        "selected": ["s1", "s2"],
        "labels": {},
        "refinements": ["Penalise title-only essays."],
        "analyses": [{"sample_id": "s1", "diagnosis": f"Scores too high for a title-only essay {HOSTILE}"}],
        "dropped_refinements": 0,
        "validation": reason,
        "lineage": "default",
        "accepted": accepted,
        "reason": reason,
        "rubric": rubric.to_dict() if rubric else None,
        "duration_s": 12.5,
        "step": step,
        "parent_version": parent,
        "meta_judge": {"calls": 3, "prompt_tokens": 1200, "completion_tokens": 300},
    }
    if new is not None:
        record["new_version"] = new
    return record


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "essay-demo"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": "embedded:smollm2-135m-instruct",
                "task": "essay",
                "algorithm": "grpo",
                "judge": {
                    "backend": "openai",
                    "model": "Qwen/Qwen2.5-32B-Instruct",
                    "api_key_env": "NOTE <b>",
                },
                "meta_judge": {"backend": "openai", "model": "Qwen/Qwen2.5-72B-Instruct"},
            }
        )
    )
    store = RubricStore(run / "rubrics")
    store.add(V0)
    store.add(V1, parents=(0,), creator="meta-step", step=10, evidence={"validation": "ok"})
    store.add(V2, parents=(1,), creator="meta-step", step=20, evidence={"validation": "ok"})
    for record in (
        _meta_record(10, True, 0, 1, V1, "ok"),
        _meta_record(20, True, 1, 2, V2, "ok"),
        _meta_record(30, False, 2, None, None, "candidate repeats an item <i>twice</i>"),
    ):
        atomic_write_json(run / "meta" / f"step-{record['step']:06d}-default.json", record)

    samples, metrics = [], []
    for step in range(1, 31):
        version = 0 if step <= 10 else 1 if step <= 20 else 2
        rubric = (V0, V1, V2)[version]
        for k in range(4):
            text = f"Essay {step}.{k}: " + "words " * (5 + step)
            if step == 30 and k == 0:
                text = HOSTILE
            samples.append(
                ScoredSample(
                    prompt=f"Write about rivers <{step}>",
                    completion=text,
                    reward=None if (step, k) == (5, 3) else min(1.0, 0.2 + step / 40 + k / 100),
                    raw_score=3.0,
                    item_scores={i.id: float(i.max_score) for i in rubric.items},
                    rationales={rubric.items[0].id: "Clear <b>thesis</b>."},
                    rubric_version=version,
                    step=step,
                    gate="require_eos" if (step, k) == (7, 2) else None,
                    gate_reason="no EOS",
                    error="judge timed out" if (step, k) == (5, 3) else None,
                    judge_latency_s=0.5,
                ).to_dict()
            )
        metrics.append(
            {
                "step": step,
                "reward": 0.2 + step / 40,
                "reward_std": 0.1,
                "completions/mean_length": 20.0 + step,
                "mpo/rubric_version": float(version),
                "judge/calls": 4.0 * step,
                "judge/failures": 1.0 if step >= 5 else 0.0,
                "judge/prompt_tokens": 400.0 * step,
                "judge/latency_s": 2.0 * step,
                "judge/responses": 4.0 * step,
            }
        )
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples) + '{"torn": ')
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))

    gens = []
    for name, words in (("base", 3), ("essay-demo", 12)):
        path = run / "eval" / f"generations-{name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            "".join(
                json.dumps(
                    {"id": f"p{i}", "model": name, "query": f"prompt {i}", "response": "word " * (words + i)}
                )
                + "\n"
                for i in range(6)
            )
        )
        gens.append(path)
    result = run_eval(
        "no-such-task",
        gens,
        judge_client=_Client(),
        tournament=TournamentConfig(matches=60, runs=2, n_bootstrap=20, lc_baseline="base"),
    )
    atomic_write_json(run / "eval" / "eval-essay.json", result)
    return run


@pytest.fixture(scope="module")
def written_report(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_report(finished_run, tmp_path_factory.mktemp("report"))


def test_report_has_every_section_and_escapes_run_text(written_report: tuple[Path, Path]) -> None:
    html_path, md_path = written_report
    page = html_path.read_text()
    for heading in (
        "Training curves",
        "Rubric evolution",
        "Meta steps",
        "Judge and meta-judge costs, failures",
        "Sample completions",
        "Evaluation",
        "Configuration",
    ):
        assert f">{heading}</h2>" in page or f">{heading}</h3>" in page, heading
    assert page.count('src="data:image/png;base64,') == 3  # reward, length, rubric timeline
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    # Untrusted text never becomes markup.
    assert "<script" not in page and "<img src=x" not in page and "<b>thesis" not in page
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
    assert "Clear &lt;b&gt;thesis&lt;/b&gt;." in page
    assert "Structure &lt;b&gt;and&lt;/b&gt; flow" in page
    assert "NOTE &lt;b&gt;" in page  # config text too
    # The rubric diff at every meta step.
    assert "v1 → v2 at step 20: +1 added, -1 removed, ~1 changed" in page
    assert "+ added <b>Completeness</b>" in page and "removed <b>Off-topic content</b>" in page
    assert "range 0–5 → 0–10" in page
    assert "candidate repeats an item &lt;i&gt;twice&lt;/i&gt;" in page
    # Costs, failures, samples at start and end, tournament tables.
    assert "judge timed out" in page and "gate fired: require_eos" in page
    assert "At the start" in page and "At the end" in page
    assert "Elo (mean ± pop. std)" in page and "LC win rate" in page
    md = md_path.read_text()
    assert "# Meta Policy Optimization run report: essay-demo" in md
    assert "| default | v2 | 20 | meta-step | 3 |" in md
    assert "<script" not in md and "<b>" not in md
    assert "Meta steps: 3 (2 accepted, 1 rejected)" in md
    assert "## Evaluation: eval-essay.json" in md


def test_report_reads_running_totals_and_diffs(finished_run: Path) -> None:
    data = load_run(finished_run)
    assert len(data.samples) == 120  # the torn last line is skipped
    costs = judge_costs(data.metrics)["judge"]
    assert costs["calls"] == 120 and costs["failures"] == 1 and costs["mean_latency_s"] == pytest.approx(0.5)
    timeline = rubric_timeline(data)
    assert [e.version.version for e in timeline] == [0, 1, 2]
    assert timeline[1].meta is not None and timeline[1].diff.summary() == "+2 added, ~1 changed"
    # The fallback diff (damaged records that do not parse as rubrics) matches the rubric module's.
    broken = [{"title": "A", "min_score": 0, "max_score": 5}, {"title": "B", "min_score": 5, "max_score": 0}]
    assert (
        rubric_diff(broken, [{"title": "A", "min_score": 0, "max_score": 9}]).summary()
        == "-1 removed, ~1 changed"
    )


def test_report_tolerates_partial_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    html_path, md_path = write_report(empty)
    page = html_path.read_text()
    assert "nothing logged yet" in page and "No rubric versions found" in page and "No samples.jsonl" in page
    assert "Nothing logged yet." in md_path.read_text()

    partial = tmp_path / "partial"
    (partial / "meta").mkdir(parents=True)
    (partial / "meta" / "step-000010-default.json").write_text("{not json")
    (partial / "samples.jsonl").write_text(json.dumps(ScoredSample("p", "c", 0.5, step=3).to_dict()) + "\n")
    out = tmp_path / "out"
    html_path, _ = write_report(partial, out)
    page = html_path.read_text()
    assert html_path.parent == out
    assert "Some files could not be read: step-000010-default.json" in page
    assert page.count("data:image/png;base64,") == 2  # curves from samples.jsonl alone
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "## Rubric evolution" in out and (tmp_path / "report.html").exists()
    # Bad input raises an error naming the culprit; metapo.cli.main turns it into one line and exit code 2.
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: run directory {tmp_path / 'missing'} does not exist; check the path\n"
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(written_report: tuple[Path, Path], tmp_path: Path) -> None:
    html_path, _ = written_report
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1280,3000",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(
        [str(CHROMIUM), *flags, html_path.as_uri()], check=True, timeout=120, env=env, capture_output=True
    )
    assert shot.exists() and shot.stat().st_size > 50_000  # a blank page is a few kB
    keep = os.environ.get("METAPO_REPORT_SCREENSHOT")
    if keep:  # lets a developer look at the rendered page
        shutil.copy(shot, keep)
