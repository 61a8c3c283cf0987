"""Meta-judge faults: a bad rubric from the meta-reward model is rejected, the reason logged, the rubric kept.

The callback is driven through its real step hooks with ``blocking=True`` (no trainer needed), so each
case runs the whole path: selection, analyze, refine (and merge), validation, publish or reject, and the
meta log on disk.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metapo.judges import JudgeClient, OpenAIHTTPBackend
from metapo.meta.controller import MetaPolicyOptimizationCallback
from metapo.meta.meta_judge import MetaConfig, MetaJudge
from metapo.reward.records import ScoredSample
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge, default_answer

ATTEMPTS = 2
TASK = "Write an essay that answers the prompt."


def _item(title: str, description: str = "What earns points and what loses them.", lo: int = 0, hi: int = 5):
    return {"title": title, "description": description, "min_score": lo, "max_score": hi}


def _rubric(*items: dict[str, Any]) -> str:
    return json.dumps({"items": list(items)})


# name: (what the meta judge answers when asked for a rubric, a fragment of the logged reason, whether
# the answer is retried as unreadable)
BAD_RUBRICS: dict[str, tuple[str, str, bool]] = {
    "empty-answer": ("", "no JSON value found", True),
    "prose": ("Here is a better rubric: reward clarity.", "no JSON value found", True),
    "truncated": (
        '{"items": [{"title": "Clarity", "description": "The argument is easy to fol',
        "no JSON",
        True,
    ),
    "no-items": (_rubric(), "0 items < minItems 1", True),
    "items-not-a-list": ('{"items": "be stricter"}', "$.items: expected array", True),
    "missing-keys": ('{"items": [{"title": "Clarity"}]}', "missing required key 'description'", True),
    "unknown-key": (_rubric({**_item("Clarity"), "points": 3}), "unexpected key 'points'", True),
    "too-many-items": (_rubric(*(_item(f"Criterion {i}") for i in range(40))), "40 items > maxItems 4", True),
    "oversized-description": (_rubric(_item("Clarity", "x" * 50_000)), "longer than maxLength", True),
    "empty-range": (_rubric(_item("Clarity", lo=0, hi=0)), "range [0, 0] is empty", False),
    "blank-description": (_rubric(_item("Clarity", "   ")), "description is empty", False),
    "too-long-for-the-judge": (
        _rubric(*(_item(f"Criterion {i}", f"Detail {i}: " + "be precise. " * 150) for i in range(4))),
        "over the judge context of 2048",
        False,
    ),
}


def _window(n: int = 4) -> list[ScoredSample]:
    return [
        ScoredSample(
            prompt=f"Prompt {i}",
            completion=f"A short essay number {i} about the sea.",
            reward=0.2 * i,
            item_scores={"quality": float(i)},
            step=2,
        )
        for i in range(n)
    ]


def _run_meta_step(
    tmp_path: Path, handler: Any = None, faults: Any = None, samples: int = 1
) -> tuple[MetaPolicyOptimizationCallback, ActiveRubrics, list[dict[str, Any]]]:
    store = RubricStore(tmp_path / "rubrics")
    active = ActiveRubrics(store, Rubric.single("Quality", "Overall quality of the essay.", 0, 5))
    config = MetaConfig(interval=2, samples=samples, blocking=True, max_items=4, judge_context_tokens=2048)
    with ScriptedJudge(handler=handler, faults=faults) as meta:
        client = JudgeClient(
            OpenAIHTTPBackend([meta.url], timeout_s=10),
            model_id="scripted-meta",
            max_attempts=ATTEMPTS,
            timeout_s=10,
            backoff_base_s=0.01,
            backoff_max_s=0.02,
        )
        controller = MetaPolicyOptimizationCallback(
            MetaJudge(client, config, task_description=TASK), active, config, tmp_path
        )
        window = _window()
        args, control = SimpleNamespace(), SimpleNamespace()
        controller.record(window[:2])  # one rollout batch per step: interval=2 counts two of them
        controller.on_step_end(args, SimpleNamespace(global_step=1), control)
        controller.record(window[2:])
        controller.on_step_end(args, SimpleNamespace(global_step=2), control)  # triggers and waits
        controller.on_train_end(args, SimpleNamespace(global_step=2), control)
        return controller, active, meta.requests


def _is_rubric_request(body: dict[str, Any]) -> bool:
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    return "items" in schema.get("properties", {})


def _assert_kept(tmp_path: Path, controller: Any, active: ActiveRubrics, fragment: str) -> dict[str, Any]:
    assert controller.meta_steps == 1 and controller.rejected == 1 and controller.accepted == 0
    assert active.get().version == 0
    versions = sorted((tmp_path / "rubrics" / "default").glob("v*.json"))
    assert [p.name for p in versions] == ["v0000.json"]
    assert json.loads(versions[0].read_text())["creator"] == "initial"
    log = json.loads((tmp_path / "meta" / "step-000002-default.json").read_text())
    assert log["accepted"] is False and log["rubric"] is None
    assert fragment in log["reason"], log["reason"]
    return log


@pytest.mark.parametrize("case", sorted(BAD_RUBRICS))
def test_a_bad_rubric_is_rejected_and_the_current_one_stays(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answer, fragment, retried = BAD_RUBRICS[case]

    def handler(body: dict[str, Any]) -> Any:
        return answer if _is_rubric_request(body) else default_answer(body)

    with caplog.at_level(logging.INFO, logger="metapo"):
        controller, active, requests = _run_meta_step(tmp_path, handler)

    log = _assert_kept(tmp_path, controller, active, fragment)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(m.startswith("rubric default stays at v0:") and fragment in m for m in warnings), warnings
    # Unreadable answers are retried, at most ATTEMPTS times; a readable but invalid rubric is not.
    rubric_requests = [b for b in requests if _is_rubric_request(b)]
    assert len(rubric_requests) == (ATTEMPTS if retried else 1)
    assert log["selected"] and log["window_size"] == 4


def test_a_bad_merge_is_rejected_even_when_every_refinement_was_valid(tmp_path: Path) -> None:
    def handler(body: dict[str, Any]) -> Any:
        if "Merge them into one rubric" in body["messages"][-1]["content"]:
            return _rubric()
        return default_answer(body)

    controller, active, requests = _run_meta_step(tmp_path, handler, samples=2)

    log = _assert_kept(tmp_path, controller, active, "minItems")
    assert len(log["refinements"]) == 2  # the two valid refinements are kept as evidence
    assert sum("Merge them into one rubric" in b["messages"][-1]["content"] for b in requests) == ATTEMPTS


def test_a_meta_judge_that_is_down_keeps_the_rubric(tmp_path: Path) -> None:
    controller, active, requests = _run_meta_step(tmp_path, faults=lambda index, body: "503")

    _assert_kept(tmp_path, controller, active, "HTTP 503")
    assert len(requests) == ATTEMPTS  # the analysis fails for good; nothing further is asked


def test_a_valid_rubric_is_accepted(tmp_path: Path) -> None:
    """Guards the cases above: the same path publishes a good answer."""
    good = _rubric(_item("Clarity"), _item("Padding", "Deduct for filler and repetition.", lo=-3, hi=0))

    def handler(body: dict[str, Any]) -> Any:
        return good if _is_rubric_request(body) else default_answer(body)

    controller, active, _ = _run_meta_step(tmp_path, handler)

    assert controller.accepted == 1 and active.get().version == 1
    assert [item.title for item in active.get().rubric.items] == ["Clarity", "Padding"]
    assert json.loads((tmp_path / "meta" / "step-000002-default.json").read_text())["accepted"] is True


def test_a_slow_meta_judge_does_not_hold_up_the_end_of_a_non_blocking_run(tmp_path: Path) -> None:
    store = RubricStore(tmp_path / "rubrics")
    active = ActiveRubrics(store, Rubric.single("Quality", "Overall quality of the essay.", 0, 5))
    config = MetaConfig(interval=2, samples=1, blocking=False)
    with ScriptedJudge(latency_s=30) as meta:
        client = JudgeClient(OpenAIHTTPBackend([meta.url], timeout_s=60), model_id="slow-meta", timeout_s=60)
        controller = MetaPolicyOptimizationCallback(MetaJudge(client, config), active, config, tmp_path)
        controller.record(_window()[:2])
        controller.record(_window()[2:])  # two rollout batches: a meta step is due at this last step
        args, control = SimpleNamespace(), SimpleNamespace()
        last = SimpleNamespace(global_step=2, max_steps=2)
        controller.on_step_end(args, last, control)
        started = time.perf_counter()
        controller.on_train_end(args, last, control)
        assert time.perf_counter() - started < 5  # a job started here would hold the run for 30 s or more
        assert meta.request_count == 0
    # No update follows the last step: no meta step ran, and its window is kept for the saved state.
    assert controller.meta_steps == 0
    controller.save_state(tmp_path)
    assert len(json.loads((tmp_path / "mpo_state.json").read_text())["window"]) == 4
