"""The implicit-reward bridge: f-divergence SFT variants at their limits, and the learning-rate recipe harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metapo.objectives import get_objective
from metapo.objectives.implicit import implicit_sft


def _logps(seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    policy = -scale * torch.rand(3, 6, generator=generator, dtype=torch.float64) - 0.1
    reference = -scale * torch.rand(3, 6, generator=generator, dtype=torch.float64) - 0.1
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    return policy, reference, mask


def _grad(policy: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | None, **kwargs) -> torch.Tensor:
    leaf = policy.clone().requires_grad_()
    implicit_sft(leaf, mask, reference, **kwargs).loss.backward()
    return leaf.grad


def test_reverse_kl_is_exactly_the_causal_lm_loss_trl_sft_trains_with() -> None:
    """Plain SFT: the model's own cross-entropy over completion tokens (labels −100 elsewhere), as SFTTrainer uses."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    generator = torch.Generator().manual_seed(0)
    vocab, batch, length = 11, 3, 7
    logits = torch.randn(batch, length, vocab, generator=generator)
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    completion = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0]])
    labels = torch.where(completion.bool(), input_ids, torch.full_like(input_ids, -100))
    expected = ForCausalLMLoss(logits, labels, vocab_size=vocab)
    token_logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    got = implicit_sft(token_logps, completion[:, 1:]).loss
    assert float(got) == pytest.approx(float(expected), abs=1e-6)


def test_alpha_variant_tends_to_plain_sft_as_alpha_goes_to_zero() -> None:
    policy, reference, mask = _logps(1, scale=3.0)
    sft = _grad(policy, mask, None)
    near = _grad(policy, mask, reference, divergence="alpha", alpha=1e-6)
    assert torch.allclose(near, sft, atol=1e-6)
    far = _grad(policy, mask, reference, divergence="alpha", alpha=0.5)
    assert not torch.allclose(far, sft, atol=1e-3)
    # The loss value tends to that of reverse KL with the reference, −mean ρ.
    value = implicit_sft(policy, mask, reference, divergence="alpha", alpha=1e-7).loss
    assert float(value) == pytest.approx(float(implicit_sft(policy, mask, reference).loss), abs=1e-5)


def test_alpha_one_is_forward_kl_and_js_tends_to_sft_far_below_the_reference() -> None:
    policy, reference, mask = _logps(2)
    alpha_one = implicit_sft(policy, mask, reference, divergence="alpha", alpha=1.0).loss
    forward = implicit_sft(policy, mask, reference, divergence="forward_kl").loss
    assert float(alpha_one) == pytest.approx(float(forward) - 1.0, abs=1e-12)
    # σ(−ρ) → 1 when π ≪ πref: the JS step becomes the SFT step.
    sft = _grad(policy, mask, None)
    assert torch.allclose(_grad(policy, mask, policy + 25.0, divergence="js"), sft, atol=1e-10)


def test_at_the_reference_every_variant_takes_the_sft_step() -> None:
    """At π = πref the gradient weight is ψ'(0): 1 for reverse/forward KL and α, ½ for JS."""
    policy, _, mask = _logps(3)
    sft = _grad(policy, mask, None)
    for divergence in ("forward_kl", "alpha"):
        assert torch.allclose(_grad(policy, mask, policy.clone(), divergence=divergence), sft, atol=1e-12)
    assert torch.allclose(_grad(policy, mask, policy.clone(), divergence="js"), sft / 2, atol=1e-12)


def test_only_plain_sft_ignores_the_reference() -> None:
    policy, reference, mask = _logps(4)
    assert torch.equal(_grad(policy, mask, reference), _grad(policy, mask, reference - 1.0))
    moved = _grad(policy, mask, reference - 1.0, divergence="forward_kl")
    assert not torch.allclose(_grad(policy, mask, reference, divergence="forward_kl"), moved)


def test_registry_entry_needs_a_reference_only_for_the_variants() -> None:
    spec = get_objective("implicit_sft")
    assert not spec.requires_reference(spec.hyperparameters())
    assert spec.requires_reference(spec.hyperparameters({"divergence": "js"}))
    with pytest.raises(ValueError, match="divergence"):
        implicit_sft(*_logps(5)[::2], divergence="chi2")


@pytest.mark.slow
def test_recipe_runs_both_arms_with_one_dpo_stage_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    from metapo.train.sft_recipe import RecipeConfig, run_recipe

    config = RecipeConfig(
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(tmp_path / "recipe"),
        eval_fraction=0.25,
        learning_rate=2e-3,
        lr_divisor=10.0,
        sft={"max_steps": 3, "per_device_train_batch_size": 8, "lr_scheduler_type": "constant"},
        dpo={"max_steps": 1, "per_device_train_batch_size": 8, "objective_kwargs": {"beta": 0.1}},
    )
    report = run_recipe(config)
    arms = report["arms"]
    assert arms["lr"]["sft_learning_rate"] == 2e-3 and arms["lr_over_k"][
        "sft_learning_rate"
    ] == pytest.approx(2e-4)
    # SFT on the chosen responses raises their likelihood, and ten times less so at a tenth of the learning rate.
    assert (
        arms["lr"]["sft_logratio_per_token_chosen"] > arms["lr_over_k"]["sft_logratio_per_token_chosen"] > 0
    )
    assert report["delta"]["sft_learning_rate"] == pytest.approx(2e-4 - 2e-3)
    stages = {arm: json.loads((tmp_path / "recipe" / arm / "dpo" / "done.json").read_text()) for arm in arms}
    assert stages["lr"] == stages["lr_over_k"]  # the DPO stage is the same in both arms
    # A rerun trains nothing and reports the same numbers.
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "recipe").glob("*/*/model.safetensors")}
    assert run_recipe(config)["arms"] == arms
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
