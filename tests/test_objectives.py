"""Objective functions: hand-computed values, limiting cases and gradient signs, on small tensors only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metapo.objectives import (
    REGISTRY,
    DegreeClassifier,
    SparseTokenMasks,
    adaptive_step_weights,
    build_user_contexts,
    cdpo,
    dpo,
    format_fewshot_prompt,
    fspo,
    get_objective,
    hinge,
    hypo,
    ipo,
    lambda_weights,
    ld_dpo,
    length_desensitized_weights,
    make_degree_variants,
    modpo,
    pro,
    rationale_dpo,
    robust_dpo,
    rpo,
    simpo,
    sparse_po,
    spo_selfsup,
    token_kl,
    tree_po,
    triple_po,
    vpo,
)


@pytest.fixture(autouse=True)
def _float64():
    # Exact comparisons need double precision; restore the default so other test modules are unaffected.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# One pair with Δ = (−1 − (−1.5)) − (−2 − (−1.5)) = 1.
PAIR = {
    "policy_chosen_logps": t(-1.0),
    "policy_rejected_logps": t(-2.0),
    "reference_chosen_logps": t(-1.5),
    "reference_rejected_logps": t(-1.5),
}


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------------


def test_dpo_hand_value():
    out = dpo(**PAIR, beta=0.1)
    assert out.loss.item() == pytest.approx(softplus(-0.1))
    assert out.chosen_rewards.item() == pytest.approx(0.05)
    assert out.rejected_rewards.item() == pytest.approx(-0.05)
    assert out.accuracies.item() == 1.0


def test_cdpo_hand_value_and_zero_smoothing():
    out = cdpo(**PAIR, beta=0.1, label_smoothing=0.1)
    assert out.loss.item() == pytest.approx(0.9 * softplus(-0.1) + 0.1 * softplus(0.1))
    assert cdpo(**PAIR, beta=0.1, label_smoothing=0.0).loss.item() == pytest.approx(dpo(**PAIR).loss.item())
    with pytest.raises(ValueError):
        cdpo(**PAIR, label_smoothing=0.5)


def test_robust_dpo_hand_value():
    out = robust_dpo(**PAIR, beta=0.1, label_flip_rate=0.1)
    assert out.loss.item() == pytest.approx((0.9 * softplus(-0.1) - 0.1 * softplus(0.1)) / 0.8)


def test_hinge_hand_value_and_flat_region():
    assert hinge(**PAIR, beta=0.05).loss.item() == pytest.approx(0.95)
    chosen = t(30.0).requires_grad_()
    out = hinge(chosen, t(0.0), t(0.0), t(0.0), beta=0.05)
    out.loss.backward()
    assert out.loss.item() == 0.0 and chosen.grad.item() == 0.0


def test_ipo_hand_values_sequence_and_token_normalised():
    lengths = {"chosen_lengths": t(2.0), "rejected_lengths": t(4.0)}
    assert ipo(**PAIR, **lengths, beta=0.1).loss.item() == pytest.approx((1.0 - 5.0) ** 2)
    # ρ_w/|y_w| − ρ_l/|y_l| = 0.5/2 + 0.5/4 = 0.375
    assert ipo(**PAIR, **lengths, beta=0.1, length_normalize=True).loss.item() == pytest.approx(
        (0.375 - 5.0) ** 2
    )


def test_ld_dpo_hand_value():
    # chosen has 2 tokens, rejected 3: the third rejected token is the tail and counts with weight α.
    pc = t(-0.5, -0.5, 0.0).unsqueeze(0)
    pr = t(-1.0, -1.0, -2.0).unsqueeze(0)
    rc = t(-1.0, -1.0, 0.0).unsqueeze(0)
    rr = t(-1.0, -1.0, -1.0).unsqueeze(0)
    cm, rm = t(1, 1, 0).unsqueeze(0), t(1, 1, 1).unsqueeze(0)
    out = ld_dpo(pc, pr, rc, rr, cm, rm, beta=0.1, alpha=0.5)
    # ρ̃_w = −1 − (−2) = 1; ρ̃_l = (−2 − 0.5·2) − (−2 − 0.5·1) = −0.5; Δ = 1.5
    assert out.loss.item() == pytest.approx(softplus(-0.15))


def test_rpo_hand_value():
    tokens = t(-1.0, -3.0).unsqueeze(0)
    out = rpo(
        **PAIR, policy_chosen_token_logps=tokens, chosen_mask=t(1, 1).unsqueeze(0), beta=0.1, sft_weight=0.5
    )
    assert out.loss.item() == pytest.approx(softplus(-0.1) + 0.5 * 2.0)
    assert out.metrics["nll"].item() == pytest.approx(2.0)


def test_simpo_hand_value():
    out = simpo(t(-2.0), t(-6.0), t(2.0), t(3.0), beta=2.0, gamma=0.5)
    # β·ℓ̄_w − β·ℓ̄_l − γ = −2 + 4 − 0.5 = 1.5
    assert out.loss.item() == pytest.approx(softplus(-1.5))
    assert out.chosen_rewards.item() == pytest.approx(-2.0)


def test_triple_po_hand_values():
    gold = {"policy_gold_token_logps": t(-1.0, -2.0, -3.0).unsqueeze(0), "gold_mask": t(1, 1, 1).unsqueeze(0)}
    lengths = {"chosen_lengths": t(2.0), "rejected_lengths": t(4.0)}
    out = triple_po(t(-1.0), t(-2.0), **lengths, **gold, beta=1.0, alpha=0.5)
    assert out.loss.item() == pytest.approx(softplus(-1.0) + 0.5 * 2.0)
    out = triple_po(t(-1.0), t(-2.0), **lengths, **gold, beta=1.0, alpha=0.0, variant="tpo_l", gamma=0.25)
    assert out.loss.item() == pytest.approx(softplus(-(-0.5 + 0.5 - 0.25)))


def test_modpo_hand_value():
    out = modpo(**PAIR, aux_margins=t(2.0).view(1, 1), beta=0.1, weights=(0.8, 0.2))
    assert out.loss.item() == pytest.approx(softplus(-(0.1 - 0.2 * 2.0) / 0.8))


def test_rationale_dpo_hand_value():
    out = rationale_dpo(**PAIR, policy_rationale_logps=t(-10.0), beta=0.1, gamma=0.1)
    assert out.loss.item() == pytest.approx(softplus(-0.1) + softplus(1.0))


def test_vpo_hand_value():
    calibration = t(-4.0, -6.0)
    pair = {k: v.repeat(2) for k, v in PAIR.items()}
    offline = vpo(**pair, policy_calibration_logps=calibration, alpha=0.1, mode="offline")
    online = vpo(**pair, policy_calibration_logps=calibration, alpha=0.1, mode="online")
    assert offline.loss.item() == pytest.approx(softplus(-0.1) + 0.5)
    assert online.loss.item() == pytest.approx(softplus(-0.1) - 0.5)


def test_pro_hand_value_three_candidates():
    logps = t(-2.0, -3.0, -8.0).unsqueeze(0)
    lengths = t(2.0, 3.0, 4.0).unsqueeze(0)  # ℓ̄ = (−1, −1, −2)
    scores = t(3.0, 1.0, 0.0).unsqueeze(0)
    valid = torch.ones(1, 3, dtype=torch.bool)
    a, b, c = -1.0, -1.0, -2.0
    stage1 = math.log(math.exp(3 * a) + math.exp(2 * b) + math.exp(3 * c)) - 3 * a
    stage2 = math.log(math.exp(b) + math.exp(c)) - b
    out = pro(logps, lengths, valid, scores, sft_weight=0.1)
    assert out.losses.item() == pytest.approx(stage1 + stage2)
    assert out.loss.item() == pytest.approx(stage1 + stage2 + 0.1 * 4 * 2.0)


def test_tree_po_hand_value_uniform_three():
    # One step per response, sum aggregation: r̂ = β·ρ with ρ = (1, 0, −1) and scores ordering them.
    policy = t(1.0, 0.0, -1.0).view(1, 3, 1)
    reference = torch.zeros(1, 3, 1)
    mask = torch.ones(1, 3, 1)
    out = tree_po(
        policy, reference, mask, torch.ones(1, 3, dtype=torch.bool), t(2.0, 1.0, 0.0).unsqueeze(0),
        beta=1.0, weighting="uniform", aggregation="sum",
    )  # fmt: skip
    expected = (softplus(-1.0) + softplus(-2.0) + softplus(-1.0)) / 3
    assert out.loss.item() == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------------
# Limiting cases
# ---------------------------------------------------------------------------------------------------------------


def _random_tokens(batch: int = 4, length: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths_w = torch.randint(2, length + 1, (batch,), generator=g)
    lengths_l = torch.randint(2, length + 1, (batch,), generator=g)
    pos = torch.arange(length)
    return {
        "policy_chosen_token_logps": -torch.rand(batch, length, generator=g) * 3,
        "policy_rejected_token_logps": -torch.rand(batch, length, generator=g) * 3,
        "reference_chosen_token_logps": -torch.rand(batch, length, generator=g) * 3,
        "reference_rejected_token_logps": -torch.rand(batch, length, generator=g) * 3,
        "chosen_mask": (pos < lengths_w.unsqueeze(-1)).double(),
        "rejected_mask": (pos < lengths_l.unsqueeze(-1)).double(),
    }


def _sums(tokens):
    return {
        f"{who}_{slot}_logps": (tokens[f"{who}_{slot}_token_logps"] * tokens[f"{slot}_mask"]).sum(-1)
        for who in ("policy", "reference")
        for slot in ("chosen", "rejected")
    }


def test_ld_dpo_alpha_one_is_dpo_bit_identical():
    tokens = _random_tokens()
    assert torch.equal(ld_dpo(**tokens, alpha=1.0).losses, dpo(**_sums(tokens)).losses)


def test_ld_dpo_alpha_zero_ignores_tail_tokens_and_their_gradients():
    tokens = _random_tokens(batch=1, length=4)
    tokens["chosen_mask"] = t(1, 1, 0, 0).unsqueeze(0)
    tokens["rejected_mask"] = t(1, 1, 0, 0).unsqueeze(0)
    longer = {k: v.clone() for k, v in tokens.items()}
    longer["rejected_mask"] = t(1, 1, 1, 1).unsqueeze(0)  # two extra tokens appended to the rejected response
    grads = []
    for inputs in (tokens, longer):
        inputs = {k: v.clone().requires_grad_(k.startswith("policy")) for k, v in inputs.items()}
        out = ld_dpo(**inputs, alpha=0.0)
        out.loss.backward()
        grads.append((out.loss.item(), inputs["policy_rejected_token_logps"].grad[:, :2].clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1])


def test_length_desensitized_weights_layout():
    w_c, w_r = length_desensitized_weights(t(1, 1, 0).unsqueeze(0), t(1, 1, 1).unsqueeze(0), 0.25)
    assert w_c.tolist() == [[1.0, 1.0, 0.0]]
    assert w_r.tolist() == [[1.0, 1.0, 0.25]]


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.45])
def test_robust_dpo_is_unbiased_under_label_flips(eps):
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(50, generator=g) * 5
    zero = torch.zeros(50)
    flipped = robust_dpo(zero, delta, zero, zero, beta=0.7, label_flip_rate=eps).losses  # Δ' = −Δ
    clean = robust_dpo(delta, zero, zero, zero, beta=0.7, label_flip_rate=eps).losses
    expected = dpo(delta, zero, zero, zero, beta=0.7).losses
    assert torch.allclose((1 - eps) * clean + eps * flipped, expected)
    assert torch.allclose(robust_dpo(delta, zero, zero, zero, beta=0.7, label_flip_rate=0.0).losses, expected)


def test_simpo_initial_loss_and_reductions():
    lengths = {"chosen_lengths": t(3.0, 5.0), "rejected_lengths": t(6.0, 10.0)}
    # Equal average log-probs: the loss is log(1 + e^γ).
    out = simpo(t(-3.0, -5.0), t(-6.0, -10.0), **lengths, beta=2.5, gamma=1.375)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(1.375)))
    # γ = 0 without length normalisation is reference-free DPO.
    zero, ones = torch.zeros(2), torch.ones(2)
    ref_free = dpo(t(-3.0, -5.0), t(-6.0, -10.0), zero, zero, beta=2.5)
    assert torch.allclose(
        simpo(t(-3.0, -5.0), t(-6.0, -10.0), ones, ones, beta=2.5, gamma=0.0).losses, ref_free.losses
    )
    # Equal lengths L: SimPO(β, 0) is DPO(β/L) against a uniform per-token reference (−L·log V each).
    length, vocab = 4.0, 50.0
    uniform = torch.full((2,), -length * math.log(vocab))
    same = {"chosen_lengths": torch.full((2,), length), "rejected_lengths": torch.full((2,), length)}
    policy = (t(-3.0, -9.0), t(-7.0, -2.0))
    assert torch.allclose(
        simpo(*policy, **same, beta=2.0, gamma=0.0).losses,
        dpo(*policy, uniform, uniform, beta=2.0 / length).losses,
    )


def test_ipo_optimum_is_the_target_margin():
    beta = 0.25
    chosen = t(1.0 / (2 * beta)).requires_grad_()
    out = ipo(chosen, t(0.0), t(0.0), t(0.0), t(1.0), t(1.0), beta=beta)
    out.loss.backward()
    assert out.loss.item() == 0.0 and chosen.grad.item() == 0.0
    for margin in (0.0, 1.0, 3.0):
        assert ipo(t(margin), t(0.0), t(0.0), t(0.0), t(1.0), t(1.0), beta=beta).loss.item() > 0


def test_rpo_weight_zero_is_dpo():
    tokens = _random_tokens()
    sums = _sums(tokens)
    out = rpo(**sums, policy_chosen_token_logps=tokens["policy_chosen_token_logps"], chosen_mask=tokens["chosen_mask"],
              sft_weight=0.0)  # fmt: skip
    assert torch.allclose(out.loss, dpo(**sums, beta=0.01).loss)


def test_triple_po_reductions():
    pc, pr, lc, lr = t(-3.0, -4.0), t(-5.0, -4.5), t(3.0, 2.0), t(5.0, 3.0)
    gold = {"policy_gold_token_logps": -torch.ones(2, 2), "gold_mask": torch.ones(2, 2)}
    zero = torch.zeros(2)
    sigmoid = triple_po(pc, pr, lc, lr, **gold, beta=0.3, alpha=0.0)
    assert torch.allclose(sigmoid.loss, dpo(pc, pr, zero, zero, beta=0.3).loss)
    tpo_l = triple_po(pc, pr, lc, lr, **gold, beta=2.0, alpha=0.0, variant="tpo_l", gamma=0.7)
    assert torch.allclose(tpo_l.loss, simpo(pc, pr, lc, lr, beta=2.0, gamma=0.7).loss)


def test_modpo_reductions_and_invariances():
    g = torch.Generator().manual_seed(3)
    sums = _sums(_random_tokens(batch=5))
    aux_w, aux_l = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    assert torch.allclose(
        modpo(**sums, aux_margins=aux_w - aux_l, weights=(1.0, 0.0, 0.0)).loss, dpo(**sums).loss
    )
    # A constant added to an auxiliary reward model cancels in the margin.
    shifted = modpo(**sums, aux_margins=(aux_w + 7.0) - (aux_l + 7.0), weights=(0.5, 0.3, 0.2))
    assert torch.allclose(
        shifted.loss, modpo(**sums, aux_margins=aux_w - aux_l, weights=(0.5, 0.3, 0.2)).loss
    )
    # Scaling β and r_{−0} by c scales the logit by c.
    c, beta, w = 3.0, 0.1, (0.6, 0.4)
    margins = aux_w[:, :1] - aux_l[:, :1]
    delta = (sums["policy_chosen_logps"] - sums["reference_chosen_logps"]) - (
        sums["policy_rejected_logps"] - sums["reference_rejected_logps"]
    )
    logit = (beta * delta - w[1] * margins.squeeze(-1)) / w[0]
    scaled = modpo(**sums, aux_margins=c * margins, beta=c * beta, weights=w).losses
    assert torch.allclose(scaled, F.softplus(-c * logit))


def test_rationale_dpo_gamma_zero_and_gradient_saturation():
    assert rationale_dpo(**PAIR, policy_rationale_logps=t(-5.0), gamma=0.0).loss.item() == pytest.approx(
        dpo(**PAIR).loss.item() + math.log(2.0)
    )
    rationale = t(-40.0, -10.0, -3.0, -0.5, 0.0).requires_grad_()
    pair = {k: v.repeat(5) for k, v in PAIR.items()}
    rationale_dpo(**pair, policy_rationale_logps=rationale, gamma=0.1).losses.sum().backward()
    grads = rationale.grad
    assert bool((grads < 0).all()), "the rationale term must always raise ℓθ(r)"
    magnitudes = grads.abs()
    assert bool((magnitudes[1:] < magnitudes[:-1]).all())
    assert magnitudes[-1].item() == pytest.approx(0.05)  # γ/2 at ℓθ(r) = 0


def test_vpo_alpha_zero_and_sign_convention():
    pair = {k: v.repeat(2) for k, v in PAIR.items()}
    assert vpo(**pair, policy_calibration_logps=t(-3.0, -1.0), alpha=0.0).loss.item() == pytest.approx(
        dpo(**pair).loss.item()
    )
    for mode, sign in (("online", 1.0), ("offline", -1.0)):
        calibration = t(-3.0, -1.0).requires_grad_()
        vpo(**pair, policy_calibration_logps=calibration, alpha=0.2, mode=mode).loss.backward()
        # A gradient step moves ℓθ(π_cal samples) by −grad: down online (optimism), up offline (pessimism).
        assert torch.allclose(calibration.grad, torch.full((2,), sign * 0.1))


def test_hypo_kl_zero_is_dpo():
    pair = {k: v.repeat(3) for k, v in PAIR.items()}
    out = hypo(
        **pair,
        policy_online_logps=t(-1.0, -2.0, -3.0),
        reference_online_logps=t(-2.0, -2.0, -2.0),
        kl_coef=0.0,
    )
    assert out.loss.item() == pytest.approx(dpo(**pair).loss.item())
    assert out.metrics["online_kl"].item() == pytest.approx(0.0)


def test_hypo_kl_gradient_matches_exact_gradient_on_a_tabular_policy():
    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.5, -0.2, 1.0, 0.0, -1.0], requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.3, -0.4, 0.8, 0.1]), -1)
    exact = torch.autograd.grad(
        (torch.softmax(theta, -1) * (torch.log_softmax(theta, -1) - ref_logp)).sum(), theta
    )[0]
    samples = torch.multinomial(torch.softmax(theta, -1).detach(), 40000, replacement=True, generator=g)
    logp = torch.log_softmax(theta, -1)[samples]
    zeros = torch.zeros(1)
    out = hypo(zeros, zeros, zeros, zeros, policy_online_logps=logp, reference_online_logps=ref_logp[samples],
               kl_coef=1.0)  # fmt: skip
    estimate = torch.autograd.grad(out.loss, theta)[0]
    assert torch.allclose(estimate, exact, atol=0.03), (estimate, exact)


def test_fspo_without_shots_is_ipo_and_never_leaks():
    lengths = {"chosen_lengths": t(3.0), "rejected_lengths": t(2.0)}
    assert fspo(**PAIR, **lengths).loss.item() == pytest.approx(ipo(**PAIR, **lengths).loss.item())
    assert fspo(**PAIR, **lengths, loss="dpo").loss.item() == pytest.approx(dpo(**PAIR).loss.item())
    rows = [
        {"user": "a", "prompt": "p1", "chosen": "c1", "rejected": "r1"},
        {"user": "a", "prompt": "p2", "chosen": "c2", "rejected": "r2"},
        {"user": "b", "prompt": "p3", "chosen": "c3", "rejected": "r3"},
    ]
    contexts = build_user_contexts(rows)
    assert [len(c) for c in contexts] == [1, 1, 0]
    assert contexts[0][0]["prompt"] == "p2"
    assert format_fewshot_prompt(rows[0], contexts[0], num_shots=0) == "p1"
    assert format_fewshot_prompt(rows[2], contexts[2]) == "p3"
    # Even a context that contains the held-out pair never shows it.
    leaky = format_fewshot_prompt(rows[0], [rows[0], rows[1]], num_shots=4)
    assert "c1" not in leaky.replace("p1", "") and "c2" in leaky and leaky.endswith("p1")
    chat = format_fewshot_prompt({**rows[0], "prompt": [{"role": "user", "content": "p1"}]}, contexts[0])
    assert chat[0]["role"] == "system" and chat[-1]["content"] == "p1"


def test_spo_selfsup_weight_zero_is_base_loss_and_head_learns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 4, generator=g)
    valid = torch.ones(2, 4, dtype=torch.bool)
    pair = {k: v.repeat(2) for k, v in PAIR.items()}
    lengths = {"chosen_lengths": t(2.0, 2.0), "rejected_lengths": t(3.0, 3.0)}
    out = spo_selfsup(**pair, **lengths, variants_degree_logits=logits, variants_valid=valid, ssl_weight=0.0)
    assert out.loss.item() == pytest.approx(dpo(**pair).loss.item())
    base = simpo(pair["policy_chosen_logps"], pair["policy_rejected_logps"], **lengths)
    out = spo_selfsup(
        pair["policy_chosen_logps"], pair["policy_rejected_logps"], **lengths, variants_degree_logits=logits,
        variants_valid=valid, base="simpo", ssl_weight=0.0,
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(base.loss.item())

    # Synthetic backbone whose features encode the number of removed items: the head must beat chance and the
    # degree loss must send gradient into the backbone.
    torch.manual_seed(0)
    backbone = torch.nn.Linear(3, 8)
    head = DegreeClassifier(8, 4)
    optim = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.05)
    degrees = torch.arange(4).repeat(16)
    features = (
        torch.stack([degrees.double(), torch.randn(64), torch.randn(64)], -1).unsqueeze(1).repeat(1, 5, 1)
    )
    mask = torch.ones(64, 5)
    for _ in range(150):
        degree_logits = head((backbone(features),), mask)["degree_logits"].view(16, 4, 4)
        out = spo_selfsup(**{k: v.repeat(16) for k, v in pair.items()}, chosen_lengths=torch.ones(16),
                          rejected_lengths=torch.ones(16), variants_degree_logits=degree_logits,
                          variants_valid=torch.ones(16, 4, dtype=torch.bool), ssl_weight=1.0)  # fmt: skip
        optim.zero_grad()
        out.loss.backward()
        assert backbone.weight.grad.abs().sum() > 0
        optim.step()
    assert out.metrics["degree_accuracy"].item() > 0.5  # chance is 0.25


def test_make_degree_variants_removes_items_in_order():
    text = "First point is short. Second point is a lot longer than the first. Third. Fourth point here."
    variants = make_degree_variants(text, max_removed=3)
    assert len(variants) == 4 and variants[0] == text
    assert all(len(a) > len(b) for a, b in zip(variants, variants[1:], strict=False))
    assert "Second point" not in variants[1]
    assert len(make_degree_variants("one two", max_removed=3)) == 4


def test_sparse_po_fixed_masks_reduce_to_dpo_and_tdpo():
    tokens = _random_tokens()
    sums = _sums(tokens)
    assert torch.allclose(sparse_po(**tokens).losses, dpo(**sums).losses)
    ones_w, ones_l = torch.ones_like(tokens["chosen_mask"]), torch.ones_like(tokens["rejected_mask"])
    explicit = sparse_po(**tokens, chosen_reward_mask=ones_w, rejected_reward_mask=ones_l,
                         chosen_kl_mask=0 * ones_w, rejected_kl_mask=0 * ones_l,
                         chosen_token_kl=-ones_w, rejected_token_kl=-ones_l, reward_l1=0.0, kl_l1=0.0)  # fmt: skip
    assert torch.allclose(explicit.losses, dpo(**sums).losses)
    kl_w, kl_l = -0.1 * torch.rand_like(ones_w), -0.2 * torch.rand_like(ones_l)
    tdpo = sparse_po(**tokens, chosen_kl_mask=ones_w, rejected_kl_mask=ones_l, chosen_token_kl=kl_w,
                     rejected_token_kl=kl_l, kl_l1=0.0, beta=0.3)  # fmt: skip
    u = (sums["policy_chosen_logps"] - sums["reference_chosen_logps"]) - (
        sums["policy_rejected_logps"] - sums["reference_rejected_logps"]
    )
    d = (kl_w * tokens["chosen_mask"]).sum(-1) - (kl_l * tokens["rejected_mask"]).sum(-1)
    assert torch.allclose(tdpo.losses, F.softplus(-0.3 * (u - d)))


def test_token_kl_is_minus_forward_kl():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g)
    assert torch.allclose(token_kl(logits, logits), torch.zeros(2, 3), atol=1e-12)
    other = torch.randn(2, 3, 7, generator=g)
    expected = -F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(other, -1), log_target=True,
                         reduction="none").sum(-1)  # fmt: skip
    assert torch.allclose(token_kl(logits, other), expected, atol=1e-10)
    assert bool((token_kl(logits, other) <= 0).all())


def test_sparse_token_masks_shapes_and_sparsity():
    torch.manual_seed(0)
    hidden = tuple(torch.randn(3, 5, 8) for _ in range(3))  # embeddings + 2 layers
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    for mode in ("common", "independent"):
        out = SparseTokenMasks(8, 2, mode=mode)(hidden, mask)
        assert out["reward_mask"].shape == (3, 5)
        assert bool((out["reward_mask"] >= 0).all()) and bool((out["reward_mask"][0, 3:] == 0).all())
        assert (out["kl_mask"] is out["reward_mask"]) == (mode == "common")


def test_pro_two_candidates_is_pairwise_and_order_invariant_below_top():
    logps, lengths = t(-2.0, -6.0).unsqueeze(0), t(2.0, 3.0).unsqueeze(0)
    valid = torch.ones(1, 2, dtype=torch.bool)
    out = pro(logps, lengths, valid, sft_weight=0.0)
    assert out.loss.item() == pytest.approx(softplus(-(-1.0 + 2.0)))
    assert out.loss.item() == pytest.approx(
        simpo(t(-2.0), t(-6.0), t(2.0), t(3.0), beta=1.0, gamma=0.0).loss.item()
    )
    # With scores the function ranks by score, so permuting the input order changes nothing.
    logps3, lengths3, scores3 = t(-2.0, -3.0, -8.0), t(2.0, 3.0, 4.0), t(3.0, 1.0, 0.0)
    valid3 = torch.ones(1, 3, dtype=torch.bool)
    base = pro(logps3.unsqueeze(0), lengths3.unsqueeze(0), valid3, scores3.unsqueeze(0)).loss
    perm = torch.tensor([2, 0, 1])
    permuted = pro(
        logps3[perm].unsqueeze(0), lengths3[perm].unsqueeze(0), valid3, scores3[perm].unsqueeze(0)
    ).loss
    assert torch.allclose(base, permuted)
    # Without scores, swapping the two lower-ranked items leaves the first stage's denominator unchanged.
    stage1 = pro(t(-1.0, -2.0, -3.0).unsqueeze(0), torch.ones(1, 3), valid3, sft_weight=0.0).losses
    swapped = pro(t(-1.0, -3.0, -2.0).unsqueeze(0), torch.ones(1, 3), valid3, sft_weight=0.0).losses
    stage2, stage2_swapped = softplus(-(-2.0 + 3.0)), softplus(-(-3.0 + 2.0))
    assert (stage1 - stage2).item() == pytest.approx((swapped - stage2_swapped).item())


def test_pro_pads_short_lists():
    logps = t(-2.0, -6.0, 0.0).unsqueeze(0)
    lengths = t(2.0, 3.0, 1.0).unsqueeze(0)
    valid = torch.tensor([[True, True, False]])
    out = pro(logps, lengths, valid, t(1.0, 0.0, 5.0).unsqueeze(0), sft_weight=0.0)
    assert out.loss.item() == pytest.approx(softplus(-1.0))
    assert out.rejected_rewards.item() == pytest.approx(-2.0)


def test_tree_po_two_candidates_is_dpo_and_order_invariant_and_ties_weightless():
    tokens = _random_tokens(batch=3, length=5)
    policy = torch.stack([tokens["policy_chosen_token_logps"], tokens["policy_rejected_token_logps"]], 1)
    reference = torch.stack(
        [tokens["reference_chosen_token_logps"], tokens["reference_rejected_token_logps"]], 1
    )
    mask = torch.stack([tokens["chosen_mask"], tokens["rejected_mask"]], 1)
    valid = torch.ones(3, 2, dtype=torch.bool)
    expected = dpo(**_sums(tokens), beta=0.5).losses
    for weighting in ("lambda", "uniform"):
        out = tree_po(policy, reference, mask, valid, beta=0.5, weighting=weighting, aggregation="sum")
        assert torch.allclose(out.losses, expected)
    scores = t(4.0, 1.0).expand(3, 2)
    flip = torch.tensor([1, 0])
    a = tree_po(policy, reference, mask, valid, scores).losses
    b = tree_po(policy[:, flip], reference[:, flip], mask[:, flip], valid, scores[:, flip]).losses
    assert torch.allclose(a, b)
    tied = tree_po(policy, reference, mask, valid, t(2.0, 2.0).expand(3, 2))
    assert torch.allclose(tied.losses, torch.zeros(3))
    weights = lambda_weights(
        t(0.3, 0.1, 0.2).unsqueeze(0), t(1.0, 1.0, 0.0).unsqueeze(0), torch.ones(1, 3, dtype=bool)
    )
    assert weights[0, 0, 1].item() == 0.0 and weights[0, 0, 2].item() > 0.0


def test_adaptive_step_weights():
    hidden = torch.randn(1, 2, 4, 3)
    hidden[0, 1] = hidden[0, 0]  # identical states: cos = 1, weight 2
    steps = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2]]])
    weights = adaptive_step_weights(hidden, steps)
    assert torch.allclose(weights, torch.full((1, 2, 2), 2.0))
    steps_missing = torch.tensor([[[1, 1, 1, 1], [1, 1, 2, 2]]])  # the top response has no step 2
    assert adaptive_step_weights(hidden, steps_missing)[0, 1, 1].item() == 0.0
    # With identical per-step states the weights cancel in the step-mean aggregation.
    policy, reference = -torch.rand(1, 2, 4), -torch.rand(1, 2, 4)
    mask = (steps > 0).double()
    valid = torch.ones(1, 2, dtype=torch.bool)
    plain = tree_po(policy, reference, mask, valid, list_step_ids=steps)
    adaptive = tree_po(policy, reference, mask, valid, list_step_ids=steps, policy_list_hidden_states=hidden)
    assert torch.allclose(plain.loss, adaptive.loss)


# ---------------------------------------------------------------------------------------------------------------
# Gradient signs for every registered objective, from inputs built from the argument names
# ---------------------------------------------------------------------------------------------------------------

B, T, N, H = 3, 5, 3, 8


def _inputs_for(name: str) -> tuple[dict[str, torch.Tensor], list[tuple[str, float]]]:
    """Small valid inputs for every argument of an objective, and which tensors must get which gradient sign."""
    spec = get_objective(name)
    g = torch.Generator().manual_seed(7)
    pos = torch.arange(T)
    lengths = torch.tensor([3, 4, 5])
    mask = (pos < lengths.unsqueeze(-1)).double()
    list_mask = mask.unsqueeze(1).expand(B, N, T).clone()
    hp = spec.hyperparameters()
    inputs: dict[str, torch.Tensor] = {}
    for arg in spec.inputs:
        if arg.endswith("_token_logps") and "list" in arg:
            value = -0.5 - torch.rand(B, N, T, generator=g) * 0.1
        elif arg.endswith("_token_logps"):
            value = -0.5 - torch.rand(B, T, generator=g) * 0.1
        elif arg == "policy_list_logps":
            value = -2.0 - torch.rand(B, N, generator=g) * 0.1
        elif arg.endswith("_logps"):
            value = -2.0 - torch.rand(B, generator=g) * 0.1
        elif arg == "list_mask":
            value = list_mask
        elif arg.endswith("_mask") and ("reward" in arg or "kl" in arg):
            value = torch.rand(B, T, generator=g)
        elif arg.endswith("_mask"):
            value = mask
        elif arg == "list_lengths":
            value = list_mask.sum(-1)
        elif arg.endswith("_lengths"):
            value = mask.sum(-1)
        elif arg in ("list_valid", "variants_valid"):
            value = torch.ones(
                B, N if arg == "list_valid" else hp.get("max_removed", 3) + 1, dtype=torch.bool
            )
        elif arg == "list_scores":
            value = torch.tensor([3.0, 2.0, 0.0]).expand(B, N)
        elif arg == "list_step_ids":
            value = (list_mask > 0).long() + (pos >= 2).long() * (list_mask > 0).long()
        elif arg == "policy_list_hidden_states":
            value = torch.randn(B, N, T, H, generator=g)
        elif arg == "aux_margins":
            value = torch.randn(B, len(hp["weights"]) - 1, generator=g)
        elif arg.endswith("_token_kl"):
            value = -0.1 * torch.rand(B, T, generator=g)
        elif arg.endswith("_preference"):  # centred win rates: the chosen response beats the opponent
            value = torch.full((B,), 0.3 if arg.startswith("chosen") else -0.3)
        elif arg == "pair_smoothing":
            value = torch.full((B,), 0.1)
        elif arg == "variants_degree_logits":
            value = torch.randn(B, hp["max_removed"] + 1, hp["max_removed"] + 1, generator=g)
        else:
            raise AssertionError(f"no test input for {arg}")
        inputs[arg] = value.clone()
    if spec.data == "list":
        key = "policy_list_token_logps" if "policy_list_token_logps" in inputs else "policy_list_logps"
        return inputs, [(key, 0.0)]
    key = "policy_chosen_token_logps" if "policy_chosen_token_logps" in inputs else "policy_chosen_logps"
    other = key.replace("chosen", "rejected")
    if other not in inputs:  # RPO keeps the summed log-probs for the pair and tokens only for the NLL
        other = "policy_rejected_logps"
    if other not in inputs:  # SFT objectives (implicit_sft) have no rejected response
        return inputs, [(key, -1.0)]
    return inputs, [(key, -1.0), (other, 1.0)]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gradient_signs(name):
    inputs, checks = _inputs_for(name)
    for key, _ in checks:
        inputs[key].requires_grad_()
    out = get_objective(name)(**inputs)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.losses.shape == (B,) and out.chosen_rewards.shape == (B,)
    out.loss.backward()
    for key, sign in checks:
        grad = inputs[key].grad
        if sign:  # raising a chosen log-prob lowers the loss; raising a rejected one raises it
            assert grad.sum().item() * sign > 0, (key, grad)
        else:  # lists: the best candidate is pushed up, the worst down
            per_candidate = grad.sum(-1) if grad.ndim == 3 else grad
            assert bool((per_candidate[:, 0] < 0).all()) and bool((per_candidate[:, -1] > 0).all()), (
                per_candidate
            )


def test_registry_metadata_complete():
    expected = {
        "dpo", "ipo", "cdpo", "hinge", "robust_dpo", "ld_dpo", "rpo", "simpo", "triple_po", "modpo",
        "rationale_dpo", "vpo", "hypo", "fspo", "spo_selfsup", "sparse_po", "pro", "tree_po", "upo", "implicit_sft",
        "online_dpo", "online_ipo", "egpo", "inpo", "sppo", "gpo", "apo", "xpo", "nash_mp",
    }  # fmt: skip
    assert set(REGISTRY) == expected
    for spec in REGISTRY.values():
        assert spec.paper and spec.confidence and spec.summary
        assert spec.fn.__doc__ and "Source" in spec.fn.__doc__ and "Confidence" in spec.fn.__doc__
    with pytest.raises(ValueError, match="no hyperparameter"):
        get_objective("dpo").hyperparameters({"betta": 0.2})
    with pytest.raises(KeyError, match="known"):
        get_objective("nope")
    assert get_objective("spo_selfsup").requires_reference({"base": "simpo"}) is False
    assert get_objective("vpo").online({"mode": "online"}) == "reference"
    assert get_objective("vpo").online({"mode": "offline"}) is None
