"""The acceptance gate and the per-item signal, against a scripted judge on 127.0.0.1.

The judge reads the criterion it is asked about and grades the fenced response by a rule per criterion title,
so every expected score can be worked out by hand:

* ``Brevity``: the top of its range for a response of at most 10 words, else one point less;
* ``Sky``: the top of its range when the response mentions the sky, else 0;
* ``Development``: one point per 10 words, up to the top of its range;
* anything else (``Quality``): the number of distinct words, capped at the top of its range.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metapo.judges import JudgeClient, OpenAIHTTPBackend
from metapo.judges.client import JudgeStats
from metapo.judges.types import ChatResult
from metapo.meta.acceptance import AcceptanceConfig, AcceptanceGate, build_probes, gate_line, read_pairs
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.item_signal import item_signals, prune
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.reward.records import ScoredSample
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from metapo.rubric.model import RubricItem
from tests.scripted_judge import ScriptedJudge, chat_response, default_answer, digit_alternatives

_CRITERION = re.compile(r"Criterion: (.+?) \((-?\d+) to (-?\d+) points\)")
_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)
_WORD = re.compile(r"[a-z0-9']+")


def rule_score(title: str, hi: int, text: str) -> int:
    words = _WORD.findall(text.lower())
    if "brevity" in title.lower():
        return hi if len(words) <= 10 else hi - 1
    if "sky" in title.lower():
        return hi if "sky" in words else 0
    if "development" in title.lower():
        return min(hi, len(words) // 10)
    return min(hi, len(set(words)))


def handler(body: dict[str, Any]) -> Any:
    if not (body.get("logprobs") and body.get("top_logprobs")):
        return default_answer(body)
    user = body["messages"][-1]["content"]
    # The request lists the whole rubric; the question after the response names the item asked.
    asked = re.search(r"criterion \[([^\]]+)\]", user.rpartition("</response>")[2])
    criterion = (
        re.search(rf"\[{re.escape(asked.group(1))}\] {_CRITERION.pattern}", user) if asked else _CRITERION.search(user)
    )
    response = _RESPONSE.search(user)
    assert criterion and response, user[:300]
    score = rule_score(criterion.group(1), int(criterion.group(3)), response.group(1))
    return chat_response(str(score), alternatives=digit_alternatives(score), top_n=int(body["top_logprobs"]))


@pytest.fixture
def judge_url() -> Any:
    with ScriptedJudge(handler=handler) as server:
        yield server


SKY_PROMPT = "Explain why the sky is blue to a curious child."
PROMPTS = [SKY_PROMPT, "Describe a market on a rainy morning.", "Tell the story of a lost key."]
EXEMPLARS = {
    SKY_PROMPT: "Light and air\n\nSunlight looks white but it mixes every colour. When it enters the air, tiny "
    "molecules scatter the short blue waves far more than the red ones, so blue light reaches your eyes from "
    "every direction of the sky. At sunset the light crosses more air and the blue is scattered away, which "
    "is why the evening turns orange and red.",
    PROMPTS[1]: "Wet Stalls\n\nBefore dawn the traders pull canvas over their crates while rain drums on the "
    "tin roofs. Oranges glow under swinging lamps, a fishmonger shouts prices through the drizzle, and "
    "shoppers in hoods hurry between puddles, bargaining for bread that steams when the paper is torn open. "
    "By nine the clouds break and the whole street smells of coffee.",
    PROMPTS[2]: "The Key\n\nMara searched her coat, the drawer and the garden path before she remembered the "
    "bakery. The baker had hung it on a nail beside the till with a note that said simply yours? She laughed, "
    "bought two rolls she did not need, and walked home turning the cold brass over in her pocket as the "
    "streetlights came on one by one.",
}
QUALITY = Rubric((RubricItem("quality", "Quality", "Overall quality.", 0, 9),))


def _window() -> list[ScoredSample]:
    """Per prompt: its exemplar (best reward) and a weaker, shorter response."""
    out = []
    for i, prompt in enumerate(PROMPTS):
        out.append(
            ScoredSample(prompt, EXEMPLARS[prompt], 0.95, 9.0, {"quality": 9.0}, sample_id=f"good{i}")
        )
        out.append(
            ScoredSample(prompt, "A short and plain answer here.", 0.6, 5.0, {"quality": 5.0}, sample_id=f"weak{i}")
        )
    return out


def _reward(url: str) -> RubricReward:
    client = JudgeClient(OpenAIHTTPBackend([url]), model_id="scripted", max_concurrency=8, timeout_s=30)
    # logprob: the scripted judge's item scores are exact in that mode (and each item is one call).
    cfg = RubricRewardConfig(input_label="Prompt", scoring="logprob")
    return RubricReward(client, ActiveRubrics(RubricStore(Path("unused"), writable=False), QUALITY), cfg)


def _decide(gate: AcceptanceGate, candidate: Rubric, analysed: tuple[str, ...] = (SKY_PROMPT,)) -> Any:
    return asyncio.run(gate.decide("default", QUALITY, candidate, _window(), analysed))


def _failing(result: Any) -> set[str]:
    return {c.name for c in result.checks if not c.passed}


def _with(title: str, lo: int, hi: int) -> Rubric:
    return Rubric(QUALITY.items + (RubricItem(title.lower(), title, f"About {title}.", lo, hi),))


def test_a_candidate_that_rewards_brevity_is_rejected_by_the_title_only_canary(judge_url: Any) -> None:
    gate = AcceptanceGate(_reward(judge_url.url), AcceptanceConfig())
    result = _decide(gate, _with("Brevity", 0, 2))
    assert not result.accepted
    assert "canaries" in _failing(result)
    canaries = next(c for c in result.checks if c.name == "canaries")
    assert any(f.startswith("canary:title_only@") for f in canaries.failed)
    # The exemplars barely move (9 of 9 -> 10 of 11): it is the canaries that catch this rubric.
    assert "exemplars" not in _failing(result)
    assert "canaries failed" in result.reason and "title_only" in result.reason
    assert result.judge_calls > 0


def test_a_prompt_specific_candidate_is_rejected_by_the_other_prompt_check(judge_url: Any) -> None:
    gate = AcceptanceGate(_reward(judge_url.url), AcceptanceConfig())
    result = _decide(gate, _with("Sky", 0, 2))
    assert not result.accepted and "other_prompts" in _failing(result) and "exemplars" not in _failing(result)
    check = next(c for c in result.checks if c.name == "other_prompts")
    # The analysed sky prompt keeps 1.0; the other prompts' exemplars fall from 1.0 to 9/11.
    assert check.numbers["reference_change"] == pytest.approx(0.0, abs=0.02)
    assert len(check.failed) == 2


def test_a_sound_candidate_is_accepted_and_shared_items_are_asked_once(judge_url: Any) -> None:
    gate = AcceptanceGate(_reward(judge_url.url), AcceptanceConfig())
    result = _decide(gate, _with("Development", 0, 5))
    assert result.accepted, result.reason
    assert not _failing(result)
    probes = len(result.probes)
    # Quality once per probe (shared by both versions), Development once per probe.
    assert result.judge_calls == 2 * probes
    again = _decide(gate, _with("Development", 0, 5))
    assert again.accepted and again.judge_calls == 0


def _pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": p, "chosen": EXEMPLARS[p], "rejected": "Too short to say much."} for p in PROMPTS
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("drop, passes", [(0.0, False), (1.0, True)])
def test_pair_agreement_decides_as_configured(judge_url: Any, tmp_path: Path, drop: float, passes: bool) -> None:
    config = AcceptanceConfig(pairs=str(_pairs_file(tmp_path)), agreement_drop=drop, canary_slack=1.0, canary_max=1.0)
    gate = AcceptanceGate.from_config(_reward(judge_url.url), config)
    # Brevity worth 45 points (0-9, weight 5): the short rejected answers now outscore the chosen ones.
    result = _decide(gate, Rubric(QUALITY.items + (RubricItem("brevity", "Brevity", "Be short.", 0, 9, 5.0),)))
    check = next(c for c in result.checks if c.name == "pairs")
    assert check.numbers["agreement_current"] == 1.0 and check.numbers["agreement_candidate"] == 0.0
    assert check.passed is passes


def test_bad_pair_files_are_refused_with_the_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"mpo.acceptance.pairs file .* line 1 needs string fields"):
        read_pairs(path)


def test_probes_cover_every_canary_and_prefer_gold_text() -> None:
    window = _window()
    for s in window:
        s.columns["reference_summary"] = "The gold text for " + s.prompt
    probes = build_probes(
        "default", _with("Clarity", 0, 5), window, canary_prompts=1, reference_column="reference_summary"
    )
    assert {p.name for p in probes.exemplars} == {"gold"}
    assert [p.name for p in probes.canaries] == [
        "empty", "title_only", "prompt_echo", "cut", "repeat", "injection", "stuffing", "foreign", "off_topic"
    ]
    stuffing = next(p for p in probes.canaries if p.name == "stuffing")
    assert "Quality" in stuffing.text and "Clarity" in stuffing.text


def test_penalised_samples_serve_as_exemplars_only_when_no_clean_one_exists() -> None:
    window = _window()
    for s in window:
        if s.prompt != SKY_PROMPT:
            s.adjustments = {"missing_eos": -0.2}
    probes = build_probes("default", QUALITY, window)
    sources = {p.prompt: p.name for p in probes.exemplars}
    assert sources[SKY_PROMPT] == "window"
    assert sources[PROMPTS[1]] == sources[PROMPTS[2]] == "window-penalised"


# ----- per-item signal ---------------------------------------------------------------------------------------
TWO = Rubric(
    (
        RubricItem("clarity", "Clarity", "Easy to follow.", 0, 9),
        RubricItem("format", "Format", "Uses paragraphs.", 0, 5),
    )
)


def _signal_window() -> list[ScoredSample]:
    rows = {
        "A": [(2.0, 4.0), (5.0, 4.0), (8.0, 4.0)],
        "B": [(1.0, 1.0), (3.0, 1.0), (6.0, 1.0)],
    }
    out = []
    for prompt, scores in rows.items():
        for i, (clarity, fmt) in enumerate(scores):
            out.append(
                ScoredSample(
                    prompt,
                    f"Answer {prompt}{i}",
                    (clarity + fmt) / 14,
                    clarity + fmt,
                    {"clarity": clarity, "format": fmt},
                    sample_id=f"{prompt}{i}",
                )
            )
    return out


def test_a_constructed_window_yields_the_expected_saturated_items() -> None:
    signals = {s.item_id: s for s in item_signals(TWO, 0, _signal_window())}
    # Format never varies within a prompt's group (though it differs between groups): no training signal.
    assert signals["format"].saturated and signals["format"].within_std == 0.0 and signals["format"].groups == 2
    assert not signals["clarity"].saturated
    # pstdev(2, 5, 8) = sqrt(6), pstdev(1, 3, 6) = sqrt(38/9); the mean of the two.
    assert signals["clarity"].within_std == pytest.approx((6**0.5 + (38 / 9) ** 0.5) / 2)
    assert signals["clarity"].corr_total is not None and signals["clarity"].corr_total > 0.8
    pruned, dropped = prune(TWO, list(signals.values()))
    assert dropped == ["Format"] and [i.id for i in pruned.items] == ["clarity"]


class _MetaJudge:
    """Records prompts; answers analyses with a fixed text and every rubric request with ``answer``."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.prompts: list[str] = []
        self.stats = JudgeStats()

    async def chat(self, request: Any) -> ChatResult:
        self.prompts.append(request.messages[-1]["content"])
        return ChatResult("Format never changes; clarity does the work.")

    async def chat_json(self, messages: Any, schema: dict[str, Any], max_tokens: int = 1024) -> Any:
        self.prompts.append(messages[-1]["content"])
        return self.answer, ChatResult("")


def _items(*items: tuple[str, int, int]) -> dict[str, Any]:
    return {"items": [{"title": t, "description": f"About {t}.", "min_score": lo, "max_score": hi} for t, lo, hi in items]}


def _controller(tmp_path: Path, answer: dict[str, Any], gate_url: str | None, **mpo: Any) -> Any:
    active = ActiveRubrics(RubricStore(tmp_path / "rubrics"), TWO)
    active.get()
    config = MetaConfig(interval=1, samples=2, blocking=True, max_items=4, **mpo)
    meta = _MetaJudge(answer)
    gate = AcceptanceGate(_reward(gate_url), config.acceptance) if gate_url else None
    controller = MetaPolicyOptimizationCallback(MetaJudge(meta, config), active, config, tmp_path, acceptance=gate)
    return controller, active, meta


def _step(controller: Any, window: list[ScoredSample]) -> None:
    controller.record(window)
    controller.on_step_end(SimpleNamespace(), SimpleNamespace(global_step=1, max_steps=9), SimpleNamespace())


def test_saturated_items_are_told_logged_and_pruned(tmp_path: Path) -> None:
    answer = _items(("Clarity", 0, 9), ("Format", 0, 5), ("Evidence", 0, 5))
    controller, active, meta = _controller(tmp_path, answer, None, prune_saturated=True)
    _step(controller, _signal_window())
    analyses = [p for p in meta.prompts if "Review that grading" in p]
    assert analyses and all("- Format: spread within a prompt's responses 0.00 points" in p for p in analyses)
    assert all("SATURATED" in p.split("- Format:")[1].split("\n")[0] for p in analyses)
    assert "SATURATED" not in analyses[0].split("- Clarity:")[1].split("\n")[0]
    metrics = controller.metrics()
    assert metrics["rubric/item_std/format"] == 0.0 and metrics["rubric/item_std/clarity"] > 1.0
    assert [i.title for i in active.get().rubric.items] == ["Clarity", "Evidence"]
    record = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert record["pruned_saturated"] == ["Format"]


def test_the_gate_runs_in_the_meta_step_and_its_record_explains_the_rejection(
    tmp_path: Path, judge_url: Any
) -> None:
    answer = _items(("Quality", 0, 9), ("Brevity", 0, 2))
    controller, active, _ = _controller(tmp_path, answer, judge_url.url)
    active.publish(active.store.add(QUALITY, parents=(0,), creator="test"))
    window = _window()
    for s in window:
        s.rubric_version = 1
    _step(controller, window)
    assert active.get().version == 1 and controller.gate_rejected == 1 and controller.accepted == 0
    record = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert record["accepted"] is False and record["reason"].startswith("rejected by the acceptance gate: canaries")
    assert {c["name"] for c in record["acceptance"]["checks"]} == {"canaries", "exemplars", "other_prompts", "pairs"}
    assert record["acceptance"]["judge_calls"] > 0 and record["acceptance"]["probes"]
    assert "+ Brevity" in record["change"] or "Brevity" in record["change"]
    line = gate_line(record)
    assert "canaries FAIL" in line and "exemplars ok" in line and "kept v1" in line
    assert controller.metrics()["mpo/gate_judge_calls"] == record["acceptance"]["judge_calls"]

    # The run summary, the Markdown report and the HTML report all show the decision and the checks' numbers.
    from metapo.report.data import load_run
    from metapo.report.html import render_html
    from metapo.report.markdown import render_markdown
    from metapo.train.run import summarize

    assert "  " + line in summarize(tmp_path).splitlines()
    data = load_run(tmp_path)
    markdown = render_markdown(data)
    assert "## Meta steps" in markdown and "canaries FAIL" in markdown and "kept the current version" in markdown
    page = render_html(data)
    assert "acceptance gate probes at step 1" in page and "canary:title_only@" in page


def test_a_disabled_gate_adopts_the_candidate(tmp_path: Path, judge_url: Any) -> None:
    answer = _items(("Quality", 0, 9), ("Brevity", 0, 2))
    controller, active, _ = _controller(tmp_path, answer, judge_url.url, acceptance=AcceptanceConfig(enabled=False))
    active.publish(active.store.add(QUALITY, parents=(0,), creator="test"))
    window = _window()
    for s in window:
        s.rubric_version = 1
    _step(controller, window)
    assert active.get().version == 2 and judge_url.request_count == 0


def test_an_accepted_candidate_keeps_the_gate_record_in_its_evidence(tmp_path: Path, judge_url: Any) -> None:
    answer = _items(("Quality", 0, 9), ("Development", 0, 5))
    controller, active, _ = _controller(tmp_path, answer, judge_url.url)
    active.publish(active.store.add(QUALITY, parents=(0,), creator="test"))
    window = _window()
    for s in window:
        s.rubric_version = 1
    _step(controller, window)
    version = active.get()
    assert version.version == 2 and controller.gate_rejected == 0
    assert version.evidence["acceptance"]["accepted"] is True
    assert {c["name"] for c in version.evidence["acceptance"]["checks"] if c["passed"]} >= {"canaries", "exemplars"}
    record = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert "ACCEPTED as v2" in gate_line(record) and "acceptance gate (passed" in record["reason"]
