"""GPM: the skew-symmetric preference score, the cyclic triple that Bradley–Terry cannot fit, and the trainer."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from metapo.prefmodels.losses import gpm_gates, gpm_loss, skew_symmetric_score

Q = 0.8
CYCLE = ((0, 1), (1, 2), (2, 0))  # A ≻ B, B ≻ C, C ≻ A, each with probability Q


def _entropy(q: float) -> float:
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def _block_matrix(gates: np.ndarray) -> np.ndarray:
    """R^≻ written out entry by entry, as the authors' code builds it (R[2b, 2b+1] = −λ_b, R[2b+1, 2b] = λ_b)."""
    dim = 2 * len(gates)
    matrix = np.zeros((dim, dim))
    for b, lam in enumerate(gates):
        matrix[2 * b, 2 * b + 1] = -lam
        matrix[2 * b + 1, 2 * b] = lam
    return matrix


def test_score_is_the_bilinear_form_of_the_skew_symmetric_block_matrix() -> None:
    rng = np.random.default_rng(0)
    v_i, v_j = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    gates = rng.uniform(0.1, 2.0, size=(5, 3))
    expected = [v_i[n] @ _block_matrix(gates[n]).T @ v_j[n] for n in range(5)]
    got = skew_symmetric_score(torch.tensor(v_i), torch.tensor(v_j), torch.tensor(gates))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # Antisymmetry gives P(i ≻ j) + P(j ≻ i) = 1 and s(i, i) = 0.
    back = skew_symmetric_score(torch.tensor(v_j), torch.tensor(v_i), torch.tensor(gates))
    np.testing.assert_allclose(back.numpy(), -got.numpy(), rtol=1e-12)
    assert torch.all(skew_symmetric_score(torch.tensor(v_i), torch.tensor(v_i)) == 0)


def test_gates_are_nonnegative_with_mean_one() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, -3.0, 1.0]])
    gates = gpm_gates(logits, hidden_size=16)
    assert torch.allclose(gates[0], torch.ones(3))
    assert torch.all(gates >= 0) and torch.allclose(gates.mean(-1), torch.ones(2))


def test_bradley_terry_cannot_fit_a_cyclic_triple() -> None:
    """By symmetry the BT maximum-likelihood fit is indifferent on every pair; scipy finds exactly that."""

    def nll(r: np.ndarray) -> float:
        return -sum(
            Q * np.log(expit(r[w] - r[lo])) + (1 - Q) * np.log(expit(r[lo] - r[w])) for w, lo in CYCLE
        )

    fit = minimize(nll, np.random.default_rng(1).normal(size=3), method="BFGS", options={"gtol": 1e-10})
    probs = [expit(fit.x[w] - fit.x[lo]) for w, lo in CYCLE]
    np.testing.assert_allclose(probs, 0.5, atol=1e-6)
    # Its best likelihood stays at log 2 per pair, above the data's entropy H(q) that an exact model reaches.
    assert fit.fun == pytest.approx(3 * math.log(2), abs=1e-8)
    assert fit.fun > 3 * _entropy(Q) + 0.5


def test_gpm_fits_the_cyclic_triple_exactly() -> None:
    """Unit embeddings 120° apart with τ = sin 120° / logit(q) give P = q on every pair of the cycle."""
    angles = np.radians([0.0, 120.0, 240.0])
    v = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    tau = math.sin(math.radians(120)) / math.log(Q / (1 - Q))
    winners, losers = zip(*CYCLE, strict=True)
    probs = torch.sigmoid(skew_symmetric_score(v[list(winners)], v[list(losers)]) / tau)
    np.testing.assert_allclose(probs.numpy(), Q, rtol=1e-12)
    nll = Q * gpm_loss(v[list(winners)], v[list(losers)], tau=tau) + (1 - Q) * gpm_loss(
        v[list(losers)], v[list(winners)], tau=tau
    )
    assert float(nll.sum()) == pytest.approx(3 * _entropy(Q), rel=1e-12)


def test_gpm_learns_the_cycle_from_free_embeddings() -> None:
    torch.manual_seed(0)
    v = torch.nn.Parameter(0.5 * torch.randn(3, 2, dtype=torch.float64))
    optimizer = torch.optim.Adam([v], lr=0.1)
    winners, losers = (list(x) for x in zip(*CYCLE, strict=True))
    for _ in range(250):
        optimizer.zero_grad()
        loss = (
            Q * gpm_loss(v[winners], v[losers], tau=1.0) + (1 - Q) * gpm_loss(v[losers], v[winners], tau=1.0)
        ).sum()
        loss.backward()
        optimizer.step()
    probs = torch.sigmoid(skew_symmetric_score(v[winners], v[losers])).detach()
    np.testing.assert_allclose(probs.numpy(), Q, atol=1e-3)


@pytest.mark.slow
def test_gpm_trainer_learns_rock_paper_scissors(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A tiny LM with a GPM head, trained on the built-in cyclic rows (each preference at q = 0.8)."""
    from metapo.prefmodels.data import cyclic_pairs
    from metapo.prefmodels.scorer import RewardModel
    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    rows = cyclic_pairs(Q, repeats=5)
    config = RewardModelConfig(
        output_dir=str(tmp_path / "gpm"),
        kind="gpm",
        model_name_or_path=str(tiny_model_dir),
        per_device_train_batch_size=len(rows),
        num_train_epochs=20,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    saved = train_reward_model(config, rows)
    model = RewardModel.load(saved)
    names = ["Paper.", "Rock.", "Scissors."]
    probs = [model.preference("Pick one.", names[w], names[lo]) for w, lo in CYCLE]
    np.testing.assert_allclose(probs, Q, atol=0.03)
    reverse = model.preference("Pick one.", names[1], names[0])
    assert probs[0] + reverse == pytest.approx(1.0, abs=1e-6)
    # The oracle matrix embeds each response once and keeps the cycle: M + Mᵀ = 1, M[i, j] = P(i ≻ j).
    matrix = asyncio.run(model.preferences("Pick one.", names))
    np.testing.assert_allclose(matrix + matrix.T, 1.0, atol=1e-6)
    np.testing.assert_allclose([matrix[w, lo] for w, lo in CYCLE], probs, atol=1e-6)
    # `metapo train-online` with oracle.kind=reward_model uses exactly this oracle for a saved GPM.
    from metapo.online.trainer import OracleConfig, build_oracle

    oracle = build_oracle(OracleConfig(kind="reward_model", reward_model=str(saved)), None, tmp_path)
    np.testing.assert_allclose(asyncio.run(oracle.preferences("Pick one.", names)), matrix, atol=1e-6)
    # As a reward function, each response's centred score against the other two is 0 on a perfect cycle.
    rewards = model.rewards(["Pick one."] * 3, names)
    np.testing.assert_allclose(rewards, 0.0, atol=0.1)


def test_zero_gate_weights_give_unit_gates(tiny_model_dir: Path) -> None:
    from metapo.prefmodels.model import HeadSpec, PreferenceNet

    gated = PreferenceNet.create(
        HeadSpec(kind="gpm", gpm_dim=4, gate=True), str(tiny_model_dir), dtype=torch.float32
    )
    with torch.no_grad():
        gated.backbone.score.weight[4:] = 0.0
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = gated(ids, mask, torch.tensor([2, 2]))
    assert out.values.shape == (2, 4) and torch.allclose(out.gates, torch.ones(2, 2))


@pytest.mark.slow
def test_resumed_training_ends_where_an_uninterrupted_run_ends(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    def config(out: Path, steps: int) -> RewardModelConfig:
        return RewardModelConfig(
            output_dir=str(out),
            kind="gpm",
            gate=True,
            gpm_dim=4,
            model_name_or_path=str(tiny_model_dir),
            dataset_name="builtin:cyclic",
            per_device_train_batch_size=5,
            max_steps=steps,
            save_strategy="steps",
            save_steps=1,
            learning_rate=1e-3,
            lr_scheduler_type="constant",  # the same schedule whatever max_steps is
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )

    straight = train_reward_model(config(tmp_path / "straight", 3))
    train_reward_model(config(tmp_path / "resumed", 2))
    resumed = train_reward_model(config(tmp_path / "resumed", 3), resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["score.weight"],
        load_file(str(tmp_path / "resumed" / "checkpoint-2" / "model.safetensors"))["score.weight"],
    )
