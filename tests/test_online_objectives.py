"""The online (Nash-family) losses as functions: identities between them, their optima, and agreement with the
formulas TRL 1.16 still ships (``sppo_hard`` in ``DPOTrainer``, ``trl.experimental.online_dpo``).

XPO and Nash-MD are gone from TRL 1.16, so XPO is checked against identities (α = 0 is DPO, the bonus lowers the
reference samples' log-probs, the same formula as online VPO), not against a run of TRL's trainer.
"""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch

from metapo.objectives import apo, dpo, inpo, ipo, nash_mp, online_ipo, sppo, vpo, xpo
from metapo.train.preference import PreferenceConfig, PreferenceTrainer

logger = logging.getLogger(__name__)
B = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _logps(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-3.0 - torch.rand(B, generator=g, dtype=torch.float64) for _ in range(n)]


# ----- identities ----------------------------------------------------------------------------------------------


def test_inpo_limits_are_ipo_against_the_reference_and_against_the_last_iterate():
    pc, pr, rc, rr, qc, qr = _logps(0)
    lengths = torch.ones(B)
    eta = 0.2
    # τ = η: the mixture is the reference alone; τ = 0: the last iterate alone.
    at_reference = inpo(pc, pr, rc, rr, qc, qr, eta=eta, tau=eta).losses
    at_iterate = inpo(pc, pr, rc, rr, qc, qr, eta=eta, tau=0.0).losses
    torch.testing.assert_close(at_reference, ipo(pc, pr, rc, rr, lengths, lengths, beta=eta).losses)
    torch.testing.assert_close(at_iterate, ipo(pc, pr, qc, qr, lengths, lengths, beta=eta).losses)
    with pytest.raises(ValueError, match="tau"):
        inpo(pc, pr, rc, rr, qc, qr, eta=0.1, tau=0.2)


def test_sppo_hard_label_optimum_is_plus_minus_one_over_two_beta():
    beta = 0.05
    reference_c, reference_r = _logps(1, 2)
    policy_c = (reference_c + 1 / (2 * beta)).requires_grad_()
    policy_r = (reference_r - 1 / (2 * beta)).requires_grad_()
    out = sppo(
        policy_c, policy_r, reference_c, reference_r, torch.full((B,), 0.5), torch.full((B,), -0.5), beta=beta
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert policy_c.grad.abs().max() < 1e-12 and policy_r.grad.abs().max() < 1e-12


def test_apo_without_momentum_is_dpo_against_the_latest_iterate_and_extrapolates_otherwise():
    pc, pr, qc, qr, oc, orr = _logps(2)
    torch.testing.assert_close(apo(pc, pr, qc, qr, oc, orr, alpha=0.0).losses, dpo(pc, pr, qc, qr).losses)
    torch.testing.assert_close(apo(pc, pr, qc, qr).losses, dpo(pc, pr, qc, qr).losses)
    alpha = 0.4
    expected = dpo(pc, pr, (1 + alpha) * qc - alpha * oc, (1 + alpha) * qr - alpha * orr).losses
    torch.testing.assert_close(apo(pc, pr, qc, qr, oc, orr, alpha=alpha).losses, expected)


def test_xpo_alpha_zero_is_dpo_and_sigmoid_xpo_is_online_vpo():
    pc, pr, rc, rr, cal, _ = _logps(3)
    lengths = torch.full((B,), 7)
    plain = xpo(pc, pr, rc, rr, lengths, lengths, cal, alpha=0.0)
    assert plain.loss.item() == pytest.approx(dpo(pc, pr, rc, rr).loss.item(), abs=1e-12)
    ipo_form = xpo(pc, pr, rc, rr, lengths, lengths, cal, alpha=0.0, loss="ipo")
    torch.testing.assert_close(ipo_form.losses, ipo(pc, pr, rc, rr, lengths, lengths).losses)
    assert xpo(pc, pr, rc, rr, lengths, lengths, cal, alpha=0.3).loss.item() == pytest.approx(
        vpo(pc, pr, rc, rr, cal, alpha=0.3, mode="online").loss.item(), abs=1e-12
    )


def test_xpo_bonus_gradient_lowers_the_log_probability_of_reference_samples():
    pc, pr, rc, rr, cal, _ = _logps(4)
    cal.requires_grad_()
    lengths = torch.ones(B)
    xpo(pc, pr, rc, rr, lengths, lengths, cal, alpha=0.01).loss.backward()
    # d loss / d ℓθ(ỹ) = α/B > 0: gradient descent lowers every reference sample's log-probability.
    torch.testing.assert_close(cal.grad, torch.full((B,), 0.01 / B, dtype=torch.float64))


def test_online_ipo_is_symmetric_in_the_pair_and_zero_at_its_target():
    pc, pr, rc, rr, _, _ = _logps(5)
    c_w, c_l = torch.full((B,), 0.2), torch.full((B,), -0.1)
    one = online_ipo(pc, pr, rc, rr, c_w, c_l, beta=0.1).losses
    swapped = online_ipo(pr, pc, rr, rc, c_l, c_w, beta=0.1).losses
    torch.testing.assert_close(one, swapped)
    at_target = online_ipo(rc + 3.0, rr, rc, rr, c_w, c_l, beta=0.1).losses  # margin (0.2 + 0.1)/0.1 = 3
    assert at_target.abs().max() < 1e-12


def test_nash_mp_with_beta_zero_regresses_onto_the_last_iterate_plus_eta_times_preference():
    pc, pr, rc, rr, qc, qr = _logps(6)
    c_w, c_l = torch.full((B,), 0.25), torch.full((B,), -0.25)
    eta = 2.0
    expected = ((pc - qc) - (pr - qr) - eta * (c_w - c_l)) ** 2
    torch.testing.assert_close(nash_mp(pc, pr, rc, rr, qc, qr, c_w, c_l, eta=eta, beta=0.0).losses, expected)


# ----- TRL agreement -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.train.preference import load_builtin_preferences

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = copy.deepcopy(policy)
    with torch.no_grad():  # a reference that differs from the policy, so that log-ratios are not all zero
        g = torch.Generator().manual_seed(0)
        for p in reference.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return SimpleNamespace(
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
        policy=policy,
        reference=reference,
        pairs=load_builtin_preferences("pairs")
        .select_columns(["prompt", "chosen", "rejected"])
        .select(range(B)),
        tmp=tmp_path_factory.mktemp("online-objectives"),
    )


def _ours(tiny, objective: str, data, **kwargs) -> tuple[PreferenceTrainer, dict]:
    args = PreferenceConfig(output_dir=str(tiny.tmp / objective), objective=objective, objective_kwargs=kwargs,
                            report_to=[], use_cpu=True, max_length=128)  # fmt: skip
    trainer = PreferenceTrainer(copy.deepcopy(tiny.policy), args, train_dataset=data, processing_class=tiny.tokenizer,
                                ref_model=copy.deepcopy(tiny.reference))  # fmt: skip
    return trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(B)])


def test_sppo_with_hard_labels_is_half_of_trl_sppo_hard(tiny):
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=str(tiny.tmp / "trl-sppo"), loss_type=["sppo_hard"], beta=0.1, bf16=False,
                       gradient_checkpointing=False, report_to=[], use_cpu=True, max_length=128)  # fmt: skip
    trl = DPOTrainer(model=copy.deepcopy(tiny.policy), ref_model=copy.deepcopy(tiny.reference), args=config,
                     train_dataset=tiny.pairs, processing_class=tiny.tokenizer)  # fmt: skip
    with torch.no_grad():
        expected = trl.compute_loss(
            trl.model, trl.data_collator([trl.train_dataset[i] for i in range(B)])
        ).item()
    hard = tiny.pairs.add_column("chosen_preference", [0.5] * B).add_column("rejected_preference", [-0.5] * B)
    ours, batch = _ours(tiny, "sppo", hard, beta=0.1)
    assert torch.equal(batch["chosen_preference"], torch.full((B,), 0.5))  # the columns reach the loss
    with torch.no_grad():
        got = ours.compute_loss(ours.model, batch).item()
    logger.info("TRL agreement sppo (hard) vs DPOTrainer sppo_hard: ours×2 %.8f TRL %.8f", 2 * got, expected)
    assert 2 * got == pytest.approx(expected, abs=2e-5)
    # Not a vacuous comparison: the targets ±1/(2β) are far from the current log-ratios.
    assert expected > 10.0


def test_online_dpo_matches_trl_experimental_online_dpo_on_the_same_samples(tiny):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from metapo.train.preference import encode_pair_prompt

    prompt = [{"role": "user", "content": "Describe the sea."}]
    texts = ["The sea is wide and blue.", "Waves!", "Deep water, quiet boats, and a lighthouse.", "Blue."]

    def reward(prompts, completions, **_):  # longer answers win
        return [float(len(c[-1]["content"] if isinstance(c, list) else c)) for c in completions]

    prompt_ids, completions = encode_pair_prompt(tiny.tokenizer, prompt, texts)
    width = max(len(c) for c in completions)
    completion_ids = torch.full((4, width), tiny.tokenizer.pad_token_id)
    completion_mask = torch.zeros((4, width), dtype=torch.long)
    for i, ids in enumerate(completions):
        completion_ids[i, : len(ids)] = torch.tensor(ids)
        completion_mask[i, : len(ids)] = 1
    prompts = torch.tensor([prompt_ids] * 4)

    config = OnlineDPOConfig(output_dir=str(tiny.tmp / "trl-online"), beta=0.1, loss_type="sigmoid", bf16=False,
                             report_to=[], use_cpu=True, max_length=256, per_device_train_batch_size=2)  # fmt: skip
    trl = OnlineDPOTrainer(model=copy.deepcopy(tiny.policy), ref_model=copy.deepcopy(tiny.reference),
                           reward_funcs=[reward], args=config, train_dataset=tiny.pairs.select(range(2)),
                           processing_class=tiny.tokenizer)  # fmt: skip
    # TRL generates two completions per prompt ([first of each prompt; second of each prompt]); hand it ours.
    trl._generate = lambda model, prompts_, images=None: (prompts, torch.ones_like(prompts), completion_ids,
                                                          completion_mask, None)  # fmt: skip
    expected = trl.training_step(trl.model, {"prompt": [prompt, prompt]}).item()

    # TRL pairs completion i with completion i + 2 and prefers the higher reward.
    scores = reward(None, texts)
    rows = []
    for i in range(2):
        a, b = (i, i + 2) if scores[i] >= scores[i + 2] else (i + 2, i)
        rows.append({"prompt": prompt, "chosen": texts[a], "rejected": texts[b]})
    from datasets import Dataset

    ours, batch = _ours(tiny, "online_dpo", Dataset.from_list(rows + rows), beta=0.1)
    with torch.no_grad():
        got = ours.compute_loss(ours.model, batch).item()
    logger.info("TRL agreement online_dpo vs OnlineDPOTrainer: ours %.8f TRL %.8f", got, expected)
    assert got == pytest.approx(expected, abs=2e-5)
    assert (
        abs(expected - 0.6931471805599453) > 1e-4
    )  # the reference differs from the policy: not log 2 by default


def test_supplied_reference_sums_replace_the_reference_model(tiny):
    from datasets import Dataset

    rows = [dict(r) for r in tiny.pairs]
    for r in rows:
        r["ref_chosen_logps"], r["ref_rejected_logps"] = -40.0, -35.0
        r["previous_chosen_logps"], r["previous_rejected_logps"] = -38.0, -36.0
    args = PreferenceConfig(output_dir=str(tiny.tmp / "inpo"), objective="inpo", objective_kwargs={"eta": 0.5,
                            "tau": 0.25}, report_to=[], use_cpu=True, max_length=128)  # fmt: skip
    trainer = PreferenceTrainer(copy.deepcopy(tiny.policy), args, train_dataset=Dataset.from_list(rows),
                                processing_class=tiny.tokenizer)  # fmt: skip
    assert trainer.ref_model is None and trainer.reference_supplied
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        policy = trainer._run(trainer.model, batch["input_ids"], batch["attention_mask"]).token_logps
    sums = (policy * batch["completion_mask"][:, 1:]).sum(-1)
    pc, pr = sums[:B], sums[B:]
    mixed_c, mixed_r = 0.5 * -40.0 + 0.5 * -38.0, 0.5 * -35.0 + 0.5 * -36.0
    expected = (((pc - mixed_c) - (pr - mixed_r) - 1.0) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
