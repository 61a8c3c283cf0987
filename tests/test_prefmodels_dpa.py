"""DPA: selection along a direction, the trained vector reward model, and directional rejection-sampling SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metapo.prefmodels.dpa import (
    RSFTConfig,
    conditioned_prompt,
    direction,
    rsft_rows,
    run_rsft,
    select,
    weights_text,
)

ATTRIBUTES = ["helpfulness", "verbosity"]


def test_direction_one_zero_selects_the_most_helpful() -> None:
    scores = [[3.0, 0.0], [4.0, 2.0], [0.5, 4.0], [0.0, 0.0]]
    assert select(scores, direction(0)) == 1
    assert select(scores, direction(90)) == 2
    assert select(scores, direction(-60)) == 0  # helpful and short: 1.5 beats 2 − 1.73 = 0.27


def test_rotating_the_direction_moves_the_selected_verbosity_monotonically() -> None:
    """As θ sweeps from −90° to 90°, the supporting point of the cloud moves along its hull towards more verbosity."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        cloud = rng.normal(size=(12, 2))
        picked = [cloud[select(cloud, direction(theta))][1] for theta in np.linspace(-89, 89, 60)]
        assert all(b >= a - 1e-12 for a, b in zip(picked, picked[1:], strict=False))
        assert picked[-1] == cloud[:, 1].max() and picked[0] == cloud[:, 1].min()


def test_a_fixed_direction_is_best_of_n_on_the_scalar_reward() -> None:
    rng = np.random.default_rng(1)
    v = direction(30)
    prompts = [f"p{i}" for i in range(6)]
    responses = [[f"r{i}-{j}" for j in range(5)] for i in range(6)]
    scores = [torch.tensor(rng.normal(size=(5, 2))) for _ in prompts]
    rows = rsft_rows(prompts, [v] * 6, responses, scores, ATTRIBUTES)
    for row, group, table in zip(rows, responses, scores, strict=True):
        scalar = [v[0] * h + v[1] * b for h, b in table.tolist()]
        assert row["completion"][0]["content"] == group[int(np.argmax(scalar))]
        assert (
            row["prompt"][0]["role"] == "system"
            and weights_text(v, ATTRIBUTES) in row["prompt"][0]["content"]
        )


def test_conditioned_prompt_states_negative_weights() -> None:
    messages = conditioned_prompt("Hi", direction(-45), ATTRIBUTES)
    assert "0.71 × helpfulness - 0.71 × verbosity" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "Hi"}


@pytest.mark.slow
def test_trained_vector_model_picks_along_the_direction(tiny_model_dir: Path, tmp_path: Path) -> None:
    from metapo.prefmodels.data import load_rows
    from metapo.prefmodels.scorer import RewardModel
    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    rows = load_rows("builtin:ratings")
    config = RewardModelConfig(
        output_dir=str(tmp_path / "vector"),
        kind="vector",
        model_name_or_path=str(tiny_model_dir),
        per_device_train_batch_size=8,
        num_train_epochs=20,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    model = RewardModel.load(train_reward_model(config, rows))
    for prompt in ("What is 12 + 30?", "What is the capital of France?"):
        group = [r for r in rows if r["prompt"] == prompt]
        scores = model.attribute_scores([prompt] * len(group), [r["response"] for r in group])
        truth = [[r["helpfulness"], r["verbosity"]] for r in group]
        for theta in (0, 90, -60):
            assert select(scores, direction(theta)) == select(truth, direction(theta)), (prompt, theta)
    # rewards() is vᵀr with the direction given.
    v = direction(20)
    rewards = model.rewards([prompt] * 2, ["Paris.", "Rome."], direction=v)
    scores = model.attribute_scores([prompt] * 2, ["Paris.", "Rome."])
    np.testing.assert_allclose(rewards, (scores @ torch.tensor(v, dtype=scores.dtype)).tolist(), rtol=1e-6)


class _LengthAndDigits:
    """Scripted attribute scorer: helpfulness = digits in the response, verbosity = its length in words."""

    def attribute_scores(self, prompts, responses):
        return torch.tensor(
            [[sum(c.isdigit() for c in r), len(r.split())] for r in responses], dtype=torch.float
        )


@pytest.mark.slow
def test_rsft_round_keeps_the_best_response_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[list[dict]] = []
    config = RSFTConfig(
        model=str(tiny_model_dir),
        output_dir=str(tmp_path / "dpa"),
        rounds=1,
        samples=3,
        max_new_tokens=12,
        sft={"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "disable_tqdm": True},
    )
    prompts = ["What is 12 + 30?", "Name a planet."]
    out = run_rsft(
        config, _LengthAndDigits(), ATTRIBUTES, prompts, on_round=lambda k, rows: seen.append(rows)
    )
    assert out == tmp_path / "dpa" / "round-1" / "model" and (out / "model.safetensors").exists()
    rows = [
        json.loads(line) for line in (tmp_path / "dpa" / "round-1" / "data.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and seen == [rows]
    for row in rows:
        v = row["direction"]
        assert -45 <= math.degrees(math.atan2(v[1], v[0])) <= 45
        scalar = [v[0] * h + v[1] * b for h, b in row["scores"]]
        assert row["best"] == int(np.argmax(scalar))
        assert row["completion"][0]["content"] == row["candidates"][row["best"]]
    # A rerun finds the round done and samples nothing.
    assert (
        run_rsft(config, _LengthAndDigits(), ATTRIBUTES, prompts, on_round=lambda k, rows: seen.append(rows))
        == out
    )
    assert len(seen) == 1
