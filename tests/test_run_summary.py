"""The run summary's first-vs-last window statistics, on hand-made sample records."""

from __future__ import annotations

import math

import pytest

from metapo.train.run import window_stats


def _row(step: int, words: int, reward: float | None, **kw) -> dict:
    return {"step": step, "completion": " ".join(["w"] * words), "reward": reward, **kw}


def test_window_stats_compare_before_the_first_meta_step_with_as_many_steps_at_the_end() -> None:
    rows = [
        _row(0, 60, 0.5, raw_score=3.0, adjustments={"missing_eos": -0.2}),  # judge 0.7, cut at the limit
        _row(1, 40, 0.9, raw_score=4.5),
        _row(2, 10, 0.2, raw_score=1.0),  # neither the first two steps nor the last two: in neither window
        _row(4, 20, -0.2, gate="missing_eos"),  # an old-style replacing EOS gate counts as cut too
        _row(5, 30, 0.6, raw_score=3.0),
    ]
    # The last meta step is at 5: the last window still spans two steps, as the first does.
    first, last = window_stats(rows, meta_steps=[2, 5])
    assert first == pytest.approx(
        {"samples": 2, "mean_words": 50, "eos_truncated": 0.5, "mean_judge_score": 0.8, "gated": 0.0}
    )
    assert last == pytest.approx(
        {"samples": 2, "mean_words": 25, "eos_truncated": 0.5, "mean_judge_score": 0.6, "gated": 0.5}
    )


def test_without_meta_steps_quarters_are_compared() -> None:
    rows = [_row(step, 10 * (step + 1), None) for step in range(8)]
    first, last = window_stats(rows, meta_steps=[])
    assert first["mean_words"] == 15 and last["mean_words"] == 75 and math.isnan(first["mean_judge_score"])
    assert window_stats([], []) == (None, None)
