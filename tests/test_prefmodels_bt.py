"""A Bradley–Terry reward model trained by TRL's RewardTrainer, used as a metapo reward function and judge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from metapo.prefmodels.data import load_rows


@pytest.fixture(scope="module")
def bt_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    config = RewardModelConfig(
        output_dir=str(tmp_path_factory.mktemp("bt")),
        kind="bt",
        model_name_or_path=str(tiny_model_dir),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return train_reward_model(config)


@pytest.mark.slow
def test_scores_match_trl_tokenisation_and_rank_the_pairs(bt_model: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metapo.prefmodels.scorer import RewardModel

    rows = load_rows("builtin")
    model = RewardModel.load(bt_model)
    chosen = model.rewards([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = model.rewards([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows) >= 0.9
    # The same numbers from the saved TRL model fed the way TRL tokenises: prompt + response + EOS in one string.
    tokenizer = AutoTokenizer.from_pretrained(bt_model)
    raw = AutoModelForSequenceClassification.from_pretrained(bt_model, dtype=torch.float32).eval()
    for row, expected in list(zip(rows, chosen, strict=True))[:5]:
        ids = tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token, return_tensors="pt")
        with torch.no_grad():
            assert float(raw(**ids).logits[0, 0]) == pytest.approx(expected, abs=1e-5)
    p = model.preference(rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"])
    assert p == pytest.approx(torch.sigmoid(torch.tensor(chosen[0] - rejected[0])).item(), abs=1e-6)
    matrix = model.preference_matrix(
        rows[0]["prompt"], [rows[0]["chosen"], rows[0]["rejected"], rows[0]["chosen"]]
    )
    assert (
        matrix[0, 1] == pytest.approx(p, abs=1e-6)
        and matrix[0, 2] == 0.5
        and matrix[1, 0] == pytest.approx(1 - p)
    )


@pytest.mark.slow
def test_reward_model_is_a_pairwise_judge_in_a_tournament(bt_model: Path) -> None:
    from metapo.eval.tournament import TournamentConfig, run_tournament
    from metapo.prefmodels.scorer import RewardModel

    rows = load_rows("builtin")[:10]
    pool = {
        name: {str(i): {"query": r["prompt"], "response": r[slot]} for i, r in enumerate(rows)}
        for name, slot in (("good", "chosen"), ("bad", "rejected"))
    }
    judge = RewardModel.load(bt_model)
    outcome = asyncio.run(run_tournament(pool, judge, TournamentConfig(matches=30, runs=1, n_bootstrap=0)))
    assert outcome.unreadable == 0 and outcome.win_rates["good"]["bad"] >= 0.9


@pytest.mark.slow
def test_reward_model_scores_in_metapo_train(bt_model: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`reward_model:` adds the saved model as a second TRL reward function beside the rubric reward."""
    from metapo.config import from_dict
    from metapo.train.config import RunConfig
    from metapo.train.run import train
    from tests.scripted_judge import ScriptedJudge

    with ScriptedJudge() as judge:
        cfg = from_dict(
            RunConfig,
            {
                "model": str(tiny_model_dir),
                "task": "essay",
                "limit": 4,
                "output_dir": str(tmp_path / "run"),
                "task_options": {"max_completion_tokens": 8},
                "judge": {"backend": "openai", "model": "scripted", "base_urls": [judge.url], "timeout_s": 5},
                "mpo": {"interval": 0},
                "reward_model": str(bt_model),
                "training": {
                    "per_device_train_batch_size": 4,
                    "num_generations": 4,
                    "max_steps": 1,
                    "disable_tqdm": True,
                },
            },
        )
        built = train(cfg)
    logged = [entry for entry in built.trainer.state.log_history if "rewards/reward_model_bt/mean" in entry]
    assert logged and all(isinstance(entry["rewards/reward_model_bt/mean"], float) for entry in logged)
