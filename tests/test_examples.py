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


def test_the_service_example_loads() -> None:
    from metapo.service.config import load_serve_config

    cfg = load_serve_config(EXAMPLES / "service" / "essay_service.yaml", [])
    assert cfg.run.task == "essay" and cfg.service.host == "127.0.0.1" and cfg.service.token_env


def test_the_engine_data_layouts_carry_what_the_service_reads() -> None:
    import importlib.util
    import json

    from metapo.integrations.verl import request_body
    from metapo.service.contracts import parse_openrlhf

    spec = importlib.util.spec_from_file_location("prepare_data", EXAMPLES / "service" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    example = module.rows("essay", None, 2)[0]
    verl_row = module.for_verl(example, "essay")
    assert verl_row["prompt"] == example["prompt"] and verl_row["reward_model"]["style"] == "model"
    sample = request_body(verl_row["data_source"], "An essay.", None, verl_row["extra_info"])["samples"][0]
    assert sample["prompt"] == example["task_input"] and sample["columns"]["lineage"] == "default"
    assert sample["columns"]["writing_prompt"] == example["writing_prompt"]
    rlhf_row = module.for_openrlhf(example)
    assert json.loads(rlhf_row["label"])["task_input"] == example["task_input"]
    templated = "<|im_start|>user\n" + rlhf_row["prompt"][-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
    (parsed,) = parse_openrlhf({"query": [templated + "An essay.<|im_end|>"], "prompts": [templated], "labels": [rlhf_row["label"]]}, 8)
    # The label's task_input (the bare writing prompt) wins over the templated instruction.
    assert parsed.completion == "An essay." and parsed.columns["task_input"] == example["task_input"]
