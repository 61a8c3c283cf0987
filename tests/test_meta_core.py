"""The meta step's evidence and arithmetic, pinned: what the meta-reward model sees, which cases it gets, how
candidates are merged, and what is stored, logged and restored.

An in-process meta judge records every prompt; answers are fixed rubrics, so every expectation is by hand.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metapo.files import atomic_write_text
from metapo.judges.client import JudgeStats
from metapo.judges.types import ChatResult, JudgeError
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.meta.selection import select_stratified
from metapo.reward.records import ScoredSample
from metapo.rubric import Rubric, RubricError, RubricStore
from metapo.rubric.active import ActiveRubrics
from metapo.rubric.model import RubricItem
from metapo.rubric.store import lineage_dirname
from tests.scripted_judge import ScriptedJudge, default_answer

V0 = Rubric.single("Quality", "Overall quality, 0 to 5.")
V1 = Rubric(
    (
        RubricItem("clarity", "Clarity", "Easy to follow.", 0, 9, 1.0),
        RubricItem("padding", "Padding", "Deduct for filler.", -4, 0, 1.0),
    )
)


def _rubric_json(*titles: str) -> dict[str, Any]:
    return {"items": [{"title": t, "description": f"About {t}.", "min_score": 0, "max_score": 5} for t in titles]}


class RecordingMetaJudge:
    """Answers analyses with a fixed text and rubric requests with ``rubrics`` in turn; records every prompt."""

    def __init__(self, rubrics: list[dict[str, Any]] | None = None, guidelines: str = "Check each step.") -> None:
        self.rubrics = list(rubrics or [_rubric_json("Clarity")])
        self.guidelines = guidelines
        self.prompts: list[str] = []
        self.schemas: list[dict[str, Any]] = []
        self.max_tokens: list[int] = []
        self.stats = JudgeStats()

    async def chat(self, request: Any) -> ChatResult:
        self.prompts.append(request.messages[-1]["content"])
        return ChatResult("The score looks inflated: the response is a bare title.")

    async def chat_json(self, messages: Any, schema: dict[str, Any], max_tokens: int = 1024) -> Any:
        self.prompts.append(messages[-1]["content"])
        self.schemas.append(schema)
        self.max_tokens.append(max_tokens)
        if "guidelines" in schema["properties"]:
            return {"guidelines": self.guidelines}, ChatResult("")
        answer = self.rubrics[0] if len(self.rubrics) == 1 else self.rubrics.pop(0)
        return answer, ChatResult("")


def _sample(i: int, version: int, items: dict[str, float], reward: float, **kw: Any) -> ScoredSample:
    return ScoredSample(
        prompt=f"Prompt {i}",
        completion=f"Response number {i}.",
        reward=reward,
        raw_score=sum(items.values()),
        item_scores=items,
        rubric_version=version,
        sample_id=f"s{i}",
        **kw,
    )


def _run(judge: MetaJudge, rubric: Rubric, window: list[ScoredSample], **kw: Any) -> Any:
    return asyncio.run(judge.run("default", rubric, window, random.Random(0), **kw))


# ----- A1: each sample against the version that scored it ----------------------------------------------------
def test_a_sample_is_shown_against_the_version_that_scored_it() -> None:
    old = _sample(1, 0, {"quality": 5.0}, 1.0)
    new = _sample(2, 1, {"clarity": 7.0, "padding": -2.0}, 0.69)
    recorder = RecordingMetaJudge()
    outcome = _run(
        MetaJudge(recorder, MetaConfig(samples=2, max_items=4)), V1, [old, new], version=1, scored_under={0: V0, 1: V1}
    )
    assert outcome.accepted and outcome.window_versions == {"0": 1, "1": 1}
    shown_old = next(p for p in recorder.prompts if "Response number 1." in p)
    shown_new = next(p for p in recorder.prompts if "Response number 2." in p)
    assert "earlier rubric, version 0 (the current rubric is version 1)" in shown_old
    assert "- Quality: 5 of 0..5" in shown_old and "Grader's total: 5 of 5 points" in shown_old
    assert "Clarity" not in shown_old.split("Grader's total")[1]
    assert "Scored under rubric version 1." in shown_new
    assert "- Clarity: 7 of 0..9" in shown_new and "- Padding: -2 of -4..0" in shown_new
    assert "5 of 9 points (possible range -4 to 9)" in shown_new


def test_samples_of_an_unknown_version_are_left_out_not_mislabelled() -> None:
    recorder = RecordingMetaJudge()
    window = [_sample(1, 0, {"quality": 5.0}, 1.0), _sample(2, 1, {"clarity": 3.0, "padding": 0.0}, 0.5)]
    outcome = _run(MetaJudge(recorder, MetaConfig(samples=5)), V1, window, version=1, scored_under={1: V1})
    assert outcome.selected == ["s2"] and outcome.window_versions == {"0": 1, "1": 1}
    assert not any("Response number 1." in p for p in recorder.prompts)


def test_the_controller_hands_each_version_to_the_meta_step(tmp_path: Path) -> None:
    store = RubricStore(tmp_path / "rubrics")
    active = ActiveRubrics(store, V0)
    active.get()
    active.publish(store.add(V1, parents=(0,), creator="meta-step"))
    recorder = RecordingMetaJudge()
    config = MetaConfig(interval=1, samples=5, blocking=True, max_items=4)
    controller = MetaPolicyOptimizationCallback(MetaJudge(recorder, config), active, config, tmp_path)
    controller.record([_sample(1, 0, {"quality": 4.0}, 0.8), _sample(2, 1, {"clarity": 2.0, "padding": -1.0}, 0.4)])
    controller.on_step_end(SimpleNamespace(), SimpleNamespace(global_step=1, max_steps=10), SimpleNamespace())
    assert any("- Quality: 4 of 0..5" in p and "version 0" in p for p in recorder.prompts)
    log = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert log["window_versions"] == {"0": 1, "1": 1} and log["parent_version"] == 1


# ----- A2: the math cases -----------------------------------------------------------------------------------
def _math(i: int, reward: float, mode: str, gate: str | None = None) -> ScoredSample:
    feedback = {"mode": mode, "score": reward * 5}
    if mode == "judge":
        feedback |= {"plan": f"PLAN-{i}: check the factorisation", "execution": f"EXEC-{i}: step 2 is wrong"}
    if mode == "answer":
        feedback |= {"predicted": "7", "gold": "7"}
    return ScoredSample(
        prompt=f"Problem {i}",
        completion=f"Solution {i} with enough words.",
        reward=reward,
        raw_score=None if gate else reward * 5,
        item_scores={} if gate else {"correctness": reward * 5},
        gate=gate,
        gate_reason="12 words of reasoning outside the box < 30" if gate else None,
        columns={"solution": f"REFSOL-{i}", "judge_feedback": feedback},
        sample_id=f"m{i}",
    )


def test_math_cases_show_reference_plan_execution_and_route() -> None:
    window = [_math(i, i / 10, "judge") for i in range(1, 10)]
    window += [_math(20, 1.0, "answer"), _math(21, 0.0, "judge", gate="thin_reasoning")]
    recorder = RecordingMetaJudge(guidelines="Check that the factorisation is verified.")
    judge = MetaJudge(recorder, MetaConfig(mode="guidelines"), reference_column="solution")
    rubric = Rubric.single("Correctness", "Check whether the solution is correct.")
    outcome = _run(judge, rubric, window)
    assert outcome.accepted and outcome.rubric.items[0].description == "Check that the factorisation is verified."
    analysis = recorder.prompts[0]
    for sid in outcome.selected:
        i = sid[1:]
        assert f"REFSOL-{i}" in analysis and f"PLAN-{i}" in analysis and f"EXEC-{i}" in analysis
    assert "Scored by: the grader, following its evaluation plan" in analysis
    assert "m20" not in outcome.selected and "m21" not in outcome.selected
    # Two turns, as in the paper: the analysis, then the guidelines.
    assert "Now write the improved guidelines" in recorder.prompts[1]

    everything = RecordingMetaJudge()
    all_cases = MetaJudge(everything, MetaConfig(mode="guidelines", guideline_cases="all"), reference_column="solution")
    outcome = _run(all_cases, rubric, [_math(20, 1.0, "answer"), _math(21, 0.0, "judge", gate="thin_reasoning")])
    assert set(outcome.selected) == {"m20", "m21"}
    assert "the exact answer check, not the grader" in everything.prompts[0]
    assert "a rule gate decided the score instead of the grader: thin_reasoning" in everything.prompts[0]


def test_math_selection_takes_two_from_each_third() -> None:
    window = [_math(i, i / 10, "judge") for i in range(1, 10)]  # rewards 0.1 .. 0.9
    for seed in range(20):
        picked = select_stratified(window, 6, random.Random(seed), per_third=2)
        rewards = sorted(round(s.reward, 1) for s in picked)
        assert len(picked) == 6
        assert sum(r <= 0.3 for r in rewards) == 2 and sum(r >= 0.7 for r in rewards) == 2


def test_no_judge_scored_case_keeps_the_guidelines() -> None:
    recorder = RecordingMetaJudge()
    outcome = _run(MetaJudge(recorder, MetaConfig(mode="guidelines")), V0, [_math(20, 1.0, "answer")])
    assert not outcome.accepted and "no samples scored by the plan/execute judge" in outcome.reason
    assert recorder.prompts == []


# ----- A5: token caps and the merge ----------------------------------------------------------------------------
def test_schema_limits_follow_the_token_cap() -> None:
    judge = MetaJudge(RecordingMetaJudge(), MetaConfig(max_items=4, rubric_tokens=1000))
    schema = judge._rubric_schema()
    assert schema["properties"]["items"]["items"]["properties"]["description"]["maxLength"] == 3000 // 4 - 200
    assert judge.limits.max_description_chars == 550
    with pytest.raises(ValueError, match="rubric_tokens"):
        MetaJudge(RecordingMetaJudge(), MetaConfig(max_items=10, rubric_tokens=600))
    logprob = MetaJudge(RecordingMetaJudge(), MetaConfig(), score_bound=9)._rubric_schema()
    ranges = logprob["properties"]["items"]["items"]["properties"]
    assert ranges["max_score"]["maximum"] == 9 and ranges["min_score"]["minimum"] == -9 and "weight" in ranges


def test_every_refinement_reaches_a_merge() -> None:
    titles = [f"Criterion {c}" for c in "ABCDE"]
    refinements = [_rubric_json(t) for t in titles]
    merged = [_rubric_json("Merged one"), _rubric_json("Merged two"), _rubric_json("Merged three")]
    recorder = RecordingMetaJudge(refinements + merged + [_rubric_json("Final")])
    # Each refinement is 7 words of Markdown, counted as 28 tokens: a 64-token budget holds two. Level 1 merges
    # A+B and C+D (E waits), level 2 the two results (E waits), level 3 that result and E.
    config = MetaConfig(samples=5, max_items=4, merge_budget_tokens=64)
    judge = MetaJudge(recorder, config, token_counter=lambda text: 4 * len(text.split()))
    window = [_sample(i, 0, {"quality": 1.0}, 0.2) for i in range(5)]
    outcome = _run(judge, V0, window)
    assert outcome.accepted and [i.title for i in outcome.rubric.items] == ["Final"]
    merges = [p for p in recorder.prompts if "Merge them into one rubric" in p]
    for title in titles:
        assert any(title in p for p in merges), f"{title} never reached a merge"
    assert outcome.merge_groups == [[2, 2, 1], [2, 1], [2]]
    assert any("Merged one" in p for p in merges)


def test_a_json_answer_cut_at_max_tokens_is_reported_not_retried(tmp_path: Path) -> None:
    from metapo.judges import JudgeClient, OpenAIHTTPBackend

    def handler(body: dict[str, Any]) -> Any:
        answer = default_answer(body)
        if body.get("response_format"):
            answer["choices"][0]["finish_reason"] = "length"
            answer["choices"][0]["message"]["content"] = '{"items": [{"title": "Cla'
        return answer

    with ScriptedJudge(handler=handler) as server:
        client = JudgeClient(OpenAIHTTPBackend([server.url]), model_id="m", max_attempts=3, backoff_base_s=0.01)
        outcome = _run(MetaJudge(client, MetaConfig(samples=1)), V0, [_sample(1, 0, {"quality": 1.0}, 0.2)])
        rubric_requests = [b for b in server.requests if b.get("response_format")]
    assert not outcome.accepted and "truncated at max_tokens" in outcome.reason
    assert len(rubric_requests) == 1


# ----- A6: one validation, and a store that cannot write ------------------------------------------------------
def _controller(tmp_path: Path, recorder: Any, config: MetaConfig) -> tuple[Any, ActiveRubrics]:
    active = ActiveRubrics(RubricStore(tmp_path / "rubrics"), V0)
    active.get()
    return MetaPolicyOptimizationCallback(MetaJudge(recorder, config), active, config, tmp_path), active


def _step(controller: Any, step: int) -> None:
    controller.record([_sample(step, 0, {"quality": 1.0}, 0.2)])
    controller.on_step_end(SimpleNamespace(), SimpleNamespace(global_step=step, max_steps=99), SimpleNamespace())


def test_more_than_twelve_items_are_stored_when_the_meta_step_allows_them(tmp_path: Path) -> None:
    many = _rubric_json(*(f"Criterion {i}" for i in range(13)))
    config = MetaConfig(interval=1, samples=1, blocking=True, max_items=15, rubric_tokens=8000)
    controller, active = _controller(tmp_path, RecordingMetaJudge([many]), config)
    _step(controller, 1)
    assert controller.accepted == 1 and len(active.get().rubric.items) == 13


def test_a_store_error_rejects_the_outcome_and_training_goes_on(tmp_path: Path, monkeypatch: Any) -> None:
    config = MetaConfig(interval=1, samples=1, blocking=True, max_items=4)
    controller, active = _controller(tmp_path, RecordingMetaJudge(), config)

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(active.store, "add", full_disk)
    _step(controller, 1)
    assert controller.rejected == 1 and controller.accepted == 0 and active.get().version == 0
    log = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert log["accepted"] is False and "No space left" in log["reason"]


def test_meta_logs_of_a_repeated_step_are_kept_side_by_side(tmp_path: Path) -> None:
    config = MetaConfig(interval=1, samples=1, blocking=True, max_items=4)
    controller, _ = _controller(tmp_path, RecordingMetaJudge(), config)
    _step(controller, 1)
    # A resumed run repeats step 1 with a fresh controller on the same run directory.
    again, _ = _controller(tmp_path, RecordingMetaJudge([_rubric_json("Other")]), config)
    _step(again, 1)
    names = sorted(p.name for p in (tmp_path / "meta").glob("*.json"))
    assert names == ["step-000001-default-attempt2.json", "step-000001-default.json"]


def test_a_crashed_meta_step_writes_its_meta_log(tmp_path: Path) -> None:
    class Broken(RecordingMetaJudge):
        async def chat(self, request: Any) -> ChatResult:
            raise KeyError("a bug in a stage")

    config = MetaConfig(interval=1, samples=1, blocking=True, max_items=4)
    controller, _ = _controller(tmp_path, Broken(), config)
    _step(controller, 1)
    log = json.loads((tmp_path / "meta" / "step-000001-default.json").read_text())
    assert log["accepted"] is False and "crashed: KeyError" in log["reason"]


# ----- A12: state --------------------------------------------------------------------------------------------
def test_state_keeps_the_detector_baseline_and_counters(tmp_path: Path) -> None:
    config = MetaConfig(interval=1, samples=1, blocking=True, max_items=4)
    controller, active = _controller(tmp_path, RecordingMetaJudge(), config)
    controller.detector = lambda window, baseline: SimpleNamespace(metrics=dict, signals={}, fired=[])
    _step(controller, 1)
    assert controller._baseline is not None
    controller.save_state(tmp_path)
    restored, _ = _controller(tmp_path, RecordingMetaJudge(), config)
    restored.load_state(tmp_path)
    assert [s.sample_id for s in restored._baseline] == [s.sample_id for s in controller._baseline]
    assert (restored.accepted, restored.rollouts, restored.rubrics.get().version) == (1, 1, 1)


# ----- C6: storage --------------------------------------------------------------------------------------------
def test_lineage_directories_never_collide(tmp_path: Path) -> None:
    names = {lineage_dirname(k) for k in ("en/us", "en us", "en__us", "en%2Fus", "algebra/1")}
    assert len(names) == 5 and all("/" not in n for n in names)
    store = RubricStore(tmp_path)
    store.add(V0, lineage="en/us")
    store.add(V1, lineage="en us")
    assert store.latest("en/us").rubric == V0 and store.latest("en us").rubric == V1
    assert sorted(store.lineages()) == ["en us", "en/us"]


def test_a_run_written_with_the_old_directory_names_still_reads(tmp_path: Path) -> None:
    legacy = tmp_path / "algebra__1"
    store = RubricStore(tmp_path)
    record = store.add(V0, lineage="algebra/1").to_dict()
    (tmp_path / lineage_dirname("algebra/1")).rename(legacy)
    assert json.loads((legacy / "v0000.json").read_text())["lineage"] == record["lineage"]
    assert store.latest("algebra/1").rubric == V0
    assert store.add(V1, lineage="algebra/1", creator="meta-step").version == 1
    assert (legacy / "v0001.json").exists()


def test_exclusive_writes_work_without_hard_links(tmp_path: Path, monkeypatch: Any) -> None:
    def no_links(src: Any, dst: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "v0000.json"
    atomic_write_text(path, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "second", exclusive=True)
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["v0000.json"]
    store = RubricStore(tmp_path / "rubrics")
    store.add(V0)
    (tmp_path / "rubrics" / "default" / "v0001.json").write_text("")  # a crash between claim and content
    assert store.latest().version == 0 and store.add(V1, creator="meta-step").version == 2


def test_a_rubric_needs_an_item_that_awards_points() -> None:
    only_deductions = Rubric((RubricItem("pad", "Padding", "Deduct for filler.", -5, 0),))
    with pytest.raises(RubricError, match="no item that awards points"):
        only_deductions.validate()


def test_failed_analyses_are_counted_not_fatal() -> None:
    class HalfBroken(RecordingMetaJudge):
        async def chat(self, request: Any) -> ChatResult:
            if "Response number 0." in request.messages[-1]["content"]:
                raise JudgeError("judge down for this one")
            return await super().chat(request)

    outcome = _run(MetaJudge(HalfBroken(), MetaConfig(samples=2)), V0, [_sample(i, 0, {"quality": 1.0}, 0.2) for i in range(2)])
    assert outcome.accepted and len(outcome.refinements) == 1


def test_the_context_check_counts_the_judges_own_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from metapo.judges import JudgeClient
    from metapo.judges.backends import TransformersBackend

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    client = JudgeClient(TransformersBackend(str(tiny_model_dir)), model_id="tiny")
    text = "Deduct points for filler, repetition and unsupported claims."
    assert client.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    long_sample = _sample(1, 0, {"quality": 1.0}, 0.2)
    long_sample.completion = "filler " * 100
    needed = client.count_tokens(V1.to_markdown()) + client.count_tokens(long_sample.prompt + long_sample.completion)
    fits = MetaJudge(RecordingMetaJudge(), MetaConfig(judge_context_tokens=needed + 256), token_counter=client.count_tokens)
    fits.check(V1, [long_sample])
    tight = MetaJudge(RecordingMetaJudge(), MetaConfig(judge_context_tokens=needed + 255), token_counter=client.count_tokens)
    with pytest.raises(RubricError, match=f"needs {needed + 256} tokens"):
        tight.check(V1, [long_sample])
