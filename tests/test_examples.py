"""Every shipped example config loads through its own command's config checker (no training is run).

GPU examples ask for bf16, which a CPU box refuses when the training arguments are built; that one setting is
overridden here, as a user on a CPU would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _cpu(path: Path) -> list[str]:
    return ["bf16=false"] if "bf16: true" in path.read_text() else []


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("pref_*.yaml")), ids=lambda p: p.name)
def test_preference_examples_load(path: Path) -> None:
    from metapo.train.preference_cli import build_config

    script, training, model = build_config(path, _cpu(path))
    assert script.dataset_name and training.objective and model.model_name_or_path


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("online_*.yaml")), ids=lambda p: p.name)
def test_online_examples_load(path: Path) -> None:
    from metapo.config import from_dict, load_yaml
    from metapo.online.trainer import OnlineConfig

    config = from_dict(OnlineConfig, load_yaml(path))
    assert config.method


def test_the_training_example_loads() -> None:
    from metapo.train.cli import load_run_config

    cfg = load_run_config(EXAMPLES / "essay_grpo.yaml", [])
    assert cfg.task == "essay" and cfg.judge.base_urls and cfg.mpo.interval == 10


def test_the_custom_task_example_loads() -> None:
    from metapo.tasks import get_task

    task = get_task(str(EXAMPLES / "task_custom.yaml"))
    assert task.initial_rubric().items and task.instruction


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("rm_*.yaml")), ids=lambda p: p.name)
def test_reward_model_examples_load(path: Path) -> None:
    from metapo.prefmodels.cli import load_config
    from metapo.prefmodels.trainer import RewardModelConfig

    config = load_config(RewardModelConfig, path)
    assert config.kind == path.stem.removeprefix("rm_") and config.dataset_name


def test_the_dpa_example_loads() -> None:
    from metapo.prefmodels.cli import load_config
    from metapo.prefmodels.dpa import RSFTConfig

    config = load_config(RSFTConfig, EXAMPLES / "dpa_rsft.yaml")
    assert config.reward_model and config.rounds == 2 and config.sft["learning_rate"] == 1e-4


def test_the_sft_recipe_example_loads() -> None:
    from metapo.prefmodels.cli import load_config
    from metapo.train.sft_recipe import RecipeConfig

    config = load_config(RecipeConfig, EXAMPLES / "sft_recipe.yaml")
    assert config.lr_divisor == 4 and config.divergence == "reverse_kl" and config.dpo["objective"] == "dpo"
