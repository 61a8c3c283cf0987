"""DRPO's objective: its DisCO limit, its length weights, what it ignores, and its trust region."""

from __future__ import annotations

import math

import pytest
import torch

from metapo.reward.rules.drpo import DRPOLoss, drpo_objective, length_weights, trust_region

# One group with three positives and two negatives, one all-correct group, one all-wrong group.
SCORES = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5, -0.7, -0.9, -2.2, -1.1])
LENGTHS = torch.tensor([100.0, 400.0, 250.0, 80.0, 300.0, 50.0, 60.0, 70.0, 90.0])
REWARDS = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
GROUPS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2])


def objective(**kw: float) -> torch.Tensor:
    value, _ = drpo_objective(SCORES, LENGTHS, REWARDS, GROUPS, max_length=500, **kw)
    return value


def test_large_lambda_is_the_disco_objective() -> None:
    # λ → ∞: uniform positive weights. By hand for group 0 (τ = 10): mean(−1, −2, −0.5) − 10·log mean exp(s⁻/10),
    # divided by the three groups in the batch (the other two are not mixed and add nothing).
    tau = 10.0
    disco = (-1.0 - 2.0 - 0.5) / 3 - tau * math.log((math.exp(-3.0 / tau) + math.exp(-1.5 / tau)) / 2)
    assert objective(lam=1e9, tau=tau).item() == pytest.approx(disco / 3, abs=1e-6)
    _, mixed = drpo_objective(SCORES, LENGTHS, REWARDS, GROUPS, max_length=500)
    assert mixed == 1


def test_positive_weights_sum_to_one_and_fall_with_length() -> None:
    w = length_weights(torch.tensor([100.0, 400.0, 250.0]), 500, 0.1)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0] > w[2] > w[1]
    # exp((1 − L/500)/0.1) ratios: shorter by 150 tokens is e^3 times the weight.
    assert (w[0] / w[2]).item() == pytest.approx(math.exp(3.0), rel=1e-5)


def test_a_negative_samples_length_does_not_matter() -> None:
    before = objective()
    lengths = LENGTHS.clone()
    lengths[3] = 7.0  # a negative
    after, _ = drpo_objective(SCORES, lengths, REWARDS, GROUPS, max_length=500)
    assert after.item() == before.item()
    lengths[0] = 7.0  # a positive: now it matters
    moved, _ = drpo_objective(SCORES, lengths, REWARDS, GROUPS, max_length=500)
    assert moved.item() != before.item()


def test_the_negative_term_has_the_gradient_of_log_mean_exp() -> None:
    scores = SCORES.clone().requires_grad_(True)
    value, _ = drpo_objective(scores, LENGTHS, REWARDS, GROUPS, max_length=500, tau=10.0)
    value.backward()
    neg = torch.tensor([-3.0, -1.5])
    softmax = torch.softmax(neg / 10.0, dim=0)
    # dJ/ds⁻ = −τ · softmax(s⁻/τ)/τ, divided by the 3 groups.
    assert scores.grad[3:5].tolist() == pytest.approx((-softmax / 3).tolist(), abs=1e-6)
    assert scores.grad[5:].abs().sum().item() == 0.0  # groups without both outcomes give no gradient


def test_trust_region_gradient_is_beta_times_excess_kl() -> None:
    for kl_value, want in ((0.5, 1e3 * (0.5 - 1e-4)), (5e-5, 0.0)):
        kl = torch.tensor(kl_value, requires_grad=True)
        trust_region(kl, beta=1e3, delta=1e-4).backward()
        assert kl.grad.item() == pytest.approx(want)


def test_loss_on_token_logprobs() -> None:
    logps = torch.log(torch.tensor([[0.5, 0.5, 1.0], [0.25, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = DRPOLoss(tau=1.0, lam=1e9).loss(
        logps, logps.detach(), mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), max_length=3
    )
    # s(y+) = log 0.5 (mean over its two tokens), s(y−) = log 0.25; with τ = 1 the log-mean-exp of one negative is
    # its score, and KL_old = 0 adds nothing: loss = −(log 0.5 − log 0.25) = −log 2.
    assert loss.item() == pytest.approx(-math.log(2.0))
    assert stats["kl_old"] == 0.0 and stats["mixed_groups"] == 1.0
