"""PreferenceTrainer and the train-pref CLI on a tiny local model: data, batching, every objective, reference
handling, PEFT, saving, and a short training run whose held-out margin must grow."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from metapo.objectives import REGISTRY, get_objective
from metapo.train.preference import (
    DataPlan,
    PreferenceCollator,
    PreferenceConfig,
    PreferenceTrainer,
    encode_pair_prompt,
    evaluate_margins,
    load_builtin_preferences,
    prepare_dataset,
    scalar_columns,
    step_ids_for,
)
from metapo.train.preference_cli import build_config, objectives_table, parse_overrides, register

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny model is latency-bound: one thread avoids oversubscribing a shared CPU (10x faster here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return SimpleNamespace(
        path=tiny_model_dir,
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        pairs=load_builtin_preferences("pairs"),
        lists=load_builtin_preferences("lists"),
    )


def _config(tmp_path, objective: str, **kwargs) -> PreferenceConfig:
    defaults = dict(
        output_dir=str(tmp_path / objective),
        objective=objective,
        report_to=[],
        use_cpu=True,
        max_length=96,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        max_new_tokens=6,
        seed=0,
    )
    defaults.update(kwargs)
    return PreferenceConfig(**defaults)


def _trainer(tiny, tmp_path, objective: str, data=None, **kwargs) -> PreferenceTrainer:
    spec = get_objective(objective)
    if data is None:
        data = (tiny.lists if spec.data == "list" else tiny.pairs).select(range(4))
        # Online objectives read per-example numbers an online trainer would supply (earlier-iterate log-probs,
        # preferences against an opponent); any distinct values exercise them.
        for k, name in enumerate(scalar_columns(spec)):
            data = data.add_column(name, [(-1.0) ** (i + k) * (0.2 + 0.1 * i) for i in range(len(data))])
    peft_config = kwargs.pop("peft_config", None)
    ref_model = kwargs.pop("ref_model", None)
    return PreferenceTrainer(
        copy.deepcopy(tiny.model),
        _config(tmp_path, objective, **kwargs),
        train_dataset=data,
        processing_class=tiny.tokenizer,
        peft_config=peft_config,
        ref_model=ref_model,
    )


def _batch(trainer: PreferenceTrainer, n: int = 4) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def test_builtin_preferences():
    pairs, lists = load_builtin_preferences("pairs"), load_builtin_preferences("lists")
    assert len(pairs) == 40 and len(lists) == 6
    assert {"prompt", "chosen", "rejected", "rationale", "gold", "user", "aux_rewards_chosen"} <= set(
        pairs.column_names
    )
    assert all(len(r["responses"]) == len(r["scores"]) >= 3 for r in lists)
    assert (
        len({r["prompt"] for r in pairs}) == 40
    )  # no duplicated prompts, so held-out pairs are really unseen
    with pytest.raises(ValueError):
        load_builtin_preferences("nope")


def test_encode_text_and_chat_prompts(tiny):
    tok = tiny.tokenizer
    prompt_ids, (chosen, rejected) = encode_pair_prompt(tok, "What is 2 + 2?", [" 4.", " 5."])
    assert tok.decode(prompt_ids + chosen) == "What is 2 + 2? 4." + tok.eos_token
    assert chosen[-1] == rejected[-1] == tok.eos_token_id
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    prompt_ids, (chosen,) = encode_pair_prompt(tok, chat, [[{"role": "assistant", "content": "4."}]])
    assert tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(chosen).startswith("4.") and tok.eos_token_id in chosen


def test_step_ids():
    class Whitespace:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split(" ") if text else []}

    ids = step_ids_for(Whitespace(), "a b\nc d e", 6, "\n")
    assert ids == [1, 1, 2, 2, 2, 2]


def test_collator_lists_and_prompts(tiny, tmp_path):
    spec = get_objective("tree_po")
    args = _config(tmp_path, "tree_po")
    plan = DataPlan.for_objective(spec, spec.defaults)
    assert plan.slots == ("list",) and plan.reference_slots == ("list",) and plan.needs_hidden
    data = prepare_dataset(tiny.lists.select(range(4, 6)), tiny.tokenizer, spec, spec.defaults, args, plan)
    batch = PreferenceCollator(tiny.tokenizer.pad_token_id, ("list",), max_length=96, with_prompts=True)(
        [data[0], data[1]]
    )
    assert batch["layout"] == (("list", 4),)
    assert batch["input_ids"].shape[0] == 8
    assert batch["list_valid"].tolist() == [[True] * 4, [True, True, True, False]]
    assert batch["list_scores"][1, 3].item() == -math.inf
    assert batch["list_scores"][0].tolist() == sorted(batch["list_scores"][0].tolist(), reverse=True)
    assert (
        int(batch["list_step_ids"][4].max()) == 3
    )  # three reasoning steps in the best answer of the second list
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()  # prompts are left-padded for generation


def test_listwise_rows_feed_pairwise_objectives_and_back(tiny, tmp_path):
    spec = get_objective("dpo")
    args = _config(tmp_path, "dpo")
    plan = DataPlan.for_objective(spec, {})
    data = prepare_dataset(tiny.lists.select(range(1)), tiny.tokenizer, spec, {}, args, plan)
    best, worst = tiny.lists[0]["responses"][0], tiny.lists[0]["responses"][-1]
    assert tiny.tokenizer.decode(data[0]["chosen_ids"]).startswith(best[:10])
    assert tiny.tokenizer.decode(data[0]["rejected_ids"]).startswith(worst[:10])
    pro = get_objective("pro")
    as_lists = prepare_dataset(tiny.pairs.select(range(2)), tiny.tokenizer, pro, pro.defaults, args,
                               DataPlan.for_objective(pro, pro.defaults))  # fmt: skip
    assert len(as_lists[0]["list_ids"]) == 2 and as_lists[0]["list_scores"] is None


def test_fspo_prompts_carry_other_preferences_of_the_same_user(tiny, tmp_path):
    spec = get_objective("fspo")
    args = _config(tmp_path, "fspo", num_shots=2, max_length=512)
    data = prepare_dataset(tiny.pairs.select(range(6)), tiny.tokenizer, spec, spec.defaults, args,
                           DataPlan.for_objective(spec, spec.defaults))  # fmt: skip
    prompt = tiny.tokenizer.decode(data[0]["prompt_ids"])
    assert tiny.pairs[2]["prompt"] in prompt and tiny.pairs[4]["prompt"] in prompt  # same user u1
    assert tiny.pairs[1]["prompt"] not in prompt  # user u2
    assert prompt.count(tiny.pairs[0]["prompt"]) == 1  # only as the question, never as a shot


# ---------------------------------------------------------------------------------------------------------------
# Every objective trains
# ---------------------------------------------------------------------------------------------------------------

CASES = [(name, {}) for name in sorted(REGISTRY)] + [
    ("vpo", {"mode": "online"}),
    ("spo_selfsup", {"base": "simpo", "base_kwargs": {"beta": 2.0}}),
    ("sparse_po", {"mask_mode": "independent"}),
    ("triple_po", {"variant": "tpo_l"}),
]


@pytest.mark.parametrize(
    ("objective", "kwargs"), CASES, ids=[f"{n}{'-' + str(k) if k else ''}" for n, k in CASES]
)
def test_every_objective_computes_a_loss_with_gradients(tiny, tmp_path, objective, kwargs):
    # Few-shot FSPO prompts are long.
    trainer = _trainer(
        tiny, tmp_path, objective, objective_kwargs=kwargs, max_length=512 if objective == "fspo" else 96
    )
    spec = get_objective(objective)
    needs_reference = (
        spec.requires_reference(spec.hyperparameters(kwargs)) or spec.online(kwargs) == "reference"
    )
    assert (trainer.ref_model is not None) == needs_reference
    trainer.model.train()
    batch = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:3])
    assert sum(g.abs().sum().item() for g in grads if g is not None) > 0
    if spec.head is not None:
        head = trainer.model.preference_head
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    metrics = trainer._metrics["train"]
    assert {"rewards/chosen", "rewards/margins", "rewards/accuracies"} <= set(metrics)


def test_reference_free_objectives_load_no_reference(tiny, tmp_path):
    for objective in ("simpo", "triple_po", "pro"):
        assert _trainer(tiny, tmp_path, objective).ref_model is None
    assert _trainer(tiny, tmp_path, "spo_selfsup", objective_kwargs={"base": "simpo"}).ref_model is None


def test_fresh_policy_has_zero_margin_and_log2_loss(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path, "dpo")
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, _batch(trainer))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)


@pytest.mark.parametrize("objective", ["dpo", "ld_dpo", "tree_po"])
def test_precomputed_reference_matches_live_reference(tiny, tmp_path, objective):
    reference = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    live = _trainer(tiny, tmp_path, objective, ref_model=copy.deepcopy(reference))
    pre = _trainer(
        tiny, tmp_path, objective, ref_model=copy.deepcopy(reference), precompute_ref_log_probs=True
    )
    assert pre.ref_model is None  # freed after the precompute
    assert any(c.startswith("ref_") for c in pre.train_dataset.column_names)
    with torch.no_grad():
        a = live.compute_loss(live.model, _batch(live))
        b = pre.compute_loss(pre.model, _batch(pre))
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    assert a.item() != pytest.approx(math.log(2.0), abs=1e-4)  # the reference really differs from the policy


def test_precompute_keeps_the_reference_for_online_samples(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path, "hypo", precompute_ref_log_probs=True)
    assert trainer.ref_model is not None  # the samples drawn during training still need reference log-probs
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, _batch(trainer))
    assert torch.isfinite(loss) and "objective/online_kl" in trainer._metrics["train"]


def test_user_supplied_reference_sums_are_used(tiny, tmp_path):
    data = tiny.pairs.select(range(4))
    data = data.add_column("ref_chosen_logps", [0.0] * 4).add_column("ref_rejected_logps", [0.0] * 4)
    trainer = _trainer(tiny, tmp_path, "dpo", data=data)
    batch = _batch(trainer)
    assert "ref_chosen_logps" in batch
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logps = trainer._last_policy_logps
    expected = -torch.nn.functional.logsigmoid(0.1 * (logps["chosen"] - logps["rejected"])).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_lora_uses_the_base_model_as_reference(tiny, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _trainer(tiny, tmp_path, "dpo", peft_config=lora, max_steps=3, learning_rate=1e-2,
                       objective_kwargs={"beta": 0.5})  # fmt: skip
    assert trainer.ref_model is None
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, _batch(trainer))
    assert loss.item() == pytest.approx(
        math.log(2.0), abs=1e-6
    )  # zero-initialised adapter: policy == reference
    trainer.train()
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, _batch(trainer)).item() < math.log(2.0)


def test_save_model_keeps_auxiliary_head_out_of_the_checkpoint(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = _trainer(tiny, tmp_path, "sparse_po")
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "preference_head.pt").exists()
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def test_parse_overrides():
    tokens = ["beta=0.2", "--learning_rate", "1e-5", "--bf16", "--max_steps=3", "objective_kwargs.gamma=0.5",
              "--lora_target_modules", "[q_proj, v_proj]"]  # fmt: skip
    assert parse_overrides(tokens) == {
        "beta": 0.2,
        "learning_rate": 1e-5,
        "bf16": True,
        "max_steps": 3,
        "objective_kwargs.gamma": 0.5,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    with pytest.raises(ValueError):
        parse_overrides(["oops"])


def test_build_config_merges_yaml_and_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "objective: simpo\nobjective_kwargs:\n  beta: 2.0\nmodel_name_or_path: tiny\ndataset_name: builtin\n"
        f"output_dir: {tmp_path / 'out'}\nreport_to: none\nuse_cpu: true\n"
    )
    script, training, model = build_config(
        config, ["gamma=0.9", "--learning_rate", "2e-6", "eval_fraction=0.25"]
    )
    assert training.objective == "simpo"
    assert training.objective_kwargs == {"beta": 2.0, "gamma": 0.9}
    assert training.learning_rate == 2e-6
    assert script.eval_fraction == 0.25 and model.model_name_or_path == "tiny"
    with pytest.raises(ValueError, match="unknown setting"):
        build_config(config, ["not_a_field=1"])
    with pytest.raises(ValueError, match="no hyperparameter"):
        build_config(config, ["objective_kwargs.alpha=1"])


def test_register_adds_both_subcommands(capsys):
    parser = argparse.ArgumentParser(prog="metapo")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-pref", "--learning_rate", "1e-5", "--config", "x.yaml", "beta=0.2"])
    assert args.config == "x.yaml" and args.overrides == ["--learning_rate", "1e-5", "beta=0.2"]
    args = parser.parse_args(["objectives", "--format", "json"])
    assert args.func(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in listed} == set(REGISTRY)
    assert all(row["paper"] for row in listed)
    markdown = objectives_table("markdown")
    assert "| simpo | 2405.14734 |" in markdown


def test_cli_train_pref_end_to_end(tiny, tmp_path):
    from metapo.train.preference_cli import main

    out = tmp_path / "cli"
    code = main(["train-pref", f"model_name_or_path={tiny.path}", "dataset_name=builtin", "eval_fraction=0.1",
                 "objective=ipo", "beta=0.5", "--max_steps", "2", "--per_device_train_batch_size", "4",
                 f"--output_dir={out}", "report_to=none", "use_cpu=true", "max_length=96", "save_strategy=no",
                 "disable_tqdm=true"])  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").exists()
    margins = json.loads((out / "margins.json").read_text())
    assert set(margins) == {"before", "after"}


# ---------------------------------------------------------------------------------------------------------------
# Training run: the chosen-vs-rejected margin grows on held-out pairs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_short_training_run_grows_held_out_margin(tiny, tmp_path, objective):
    data = tiny.pairs.shuffle(seed=0)
    train, held_out = data.select(range(32)), data.select(range(32, 40))
    kwargs = {"beta": 0.1} if objective == "dpo" else {"beta": 2.0, "gamma": 0.5}
    trainer = PreferenceTrainer(
        copy.deepcopy(tiny.model),
        _config(tmp_path, objective, objective_kwargs=kwargs, num_train_epochs=6, learning_rate=1e-3,
                lr_scheduler_type="constant", per_device_train_batch_size=8, per_device_eval_batch_size=8),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tiny.tokenizer,
    )  # fmt: skip
    before = evaluate_margins(trainer)
    trainer.train()
    after = evaluate_margins(trainer)
    logger.info("%s held-out margins before %s after %s", objective, before, after)
    assert after["logps/margin"] > before["logps/margin"] + 5.0, (before, after)
    assert after["rewards/margins"] > before["rewards/margins"], (before, after)
    assert after["rewards/accuracies"] >= 0.75, (before, after)
