"""Preference-data builders without a language model: the statistical and structural facts each one promises.

Policies here are small scripted stand-ins (the builders only see the ``Policy`` protocol); the loops, the CLI and
the trainer integration run on the tiny model in ``test_prefdata_loops.py``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from metapo.objectives import dpo, get_objective, upo
from metapo.prefdata.common import Sample
from metapo.prefdata.evolve import chain_pairs, refine_prompt
from metapo.prefdata.fspo import fewshot_rows, user_pairs
from metapo.prefdata.mapl import Constraint, inter_pairs, intra_pairs, render, violating_edits
from metapo.prefdata.mcts import MCTSOptions, StepSearch, step_rows, visit_smoothing
from metapo.prefdata.rps import RPSOptions, neighbour_directions, robust_select, select
from metapo.prefdata.rso import accepted_pairs, build_rso, rejection_sample
from metapo.prefdata.structured import (
    StructuredOptions,
    build_structured,
    criteria_rubric,
    curriculum,
    require_positive_weights,
)
from metapo.prefdata.upo import (
    UPOOptions,
    bald,
    flip_weights,
    sampling_weights,
    top_bottom_pairs,
    weigh_pairs,
)


class ScriptedPolicy:
    """A policy whose samples come from ``respond(rendered_text, index) -> Sample``; it records every call."""

    eos_text = "<eos>"

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[tuple[str, int]] = []

    def render(self, prompt, prefix: str = "") -> str:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return text + prefix

    def generate(self, prompts, n=1, *, prefixes=None, stop=None, max_new_tokens=None):
        out = []
        for i, prompt in enumerate(prompts):
            text = self.render(prompt, prefixes[i] if prefixes else "")
            group = []
            for j in range(n):
                self.calls.append((text, j))
                group.append(self.respond(text, len(self.calls) - 1, stop))
            out.append(group)
        return out


# ---------------------------------------------------------------------------------------------------------------
# RSO
# ---------------------------------------------------------------------------------------------------------------

PI_SFT = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
REWARDS = np.array([0.0, 0.4, 0.9, 0.2, 1.3])


def _accepted_outcomes(beta: float, rng: np.random.Generator, accepts: int = 3000) -> np.ndarray:
    pool = rng.choice(len(PI_SFT), size=40_000, p=PI_SFT)  # candidates drawn from π_sft
    picked = rejection_sample(REWARDS[pool], beta=beta, num_accept=accepts, rng=rng, replacement=True)
    assert len(picked) == accepts
    return np.bincount(pool[picked], minlength=len(PI_SFT))


def test_rso_accepted_samples_follow_the_tilted_policy():
    beta = 0.5
    counts = _accepted_outcomes(beta, np.random.default_rng(0))
    tilted = PI_SFT * np.exp(REWARDS / beta)
    tilted /= tilted.sum()
    fit = stats.chisquare(counts, counts.sum() * tilted)
    assert fit.pvalue > 1e-3, (counts, tilted)
    # The test has power: the same counts are far from the untilted SFT policy.
    assert stats.chisquare(counts, counts.sum() * PI_SFT).pvalue < 1e-12


def test_rso_beta_limits():
    counts = _accepted_outcomes(1e6, np.random.default_rng(1))  # β → ∞: nothing is rejected
    assert stats.chisquare(counts, counts.sum() * PI_SFT).pvalue > 1e-3
    counts = _accepted_outcomes(1e-3, np.random.default_rng(2), accepts=200)  # β → 0: the argmax only
    assert counts[np.argmax(REWARDS)] == 200


def test_rso_without_replacement_accepts_distinct_candidates_and_stops():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=64)
    picked = rejection_sample(rewards, beta=0.5, num_accept=8, rng=rng)
    assert len(picked) == 8 == len(set(picked))
    assert rejection_sample(rewards, beta=1e-9, num_accept=1, rng=rng) == [int(np.argmax(rewards))]
    # A tiny β leaves everything but the best unacceptable: the draw budget ends the search.
    few = rejection_sample(rewards, beta=1e-9, num_accept=8, rng=rng, max_draws=500)
    assert few == [int(np.argmax(rewards))]


def test_rso_pairs_are_oriented_by_reward_or_by_the_pairwise_label():
    responses = ["a", "b", "c", "d", "e", "f"]
    rewards = [0.1, 0.9, 0.5, 0.5, 0.7, 0.2]
    rows = accepted_pairs("x", responses, rewards, [0, 1, 2, 3, 4, 5])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("b", "a"),
        ("e", "f"),
    ]  # the 0.5/0.5 tie is dropped
    labelled = accepted_pairs("x", responses, rewards, [0, 1, 2, 3, 4, 5], labels=[1.0, 0.5, None])
    assert [(r["chosen"], r["rejected"]) for r in labelled] == [("a", "b")]  # the judge overrules the reward


def test_build_rso_pairs_come_from_accepted_candidates():
    def respond(text, index, stop):
        return Sample(f"answer {index % 16}", True)

    policy = ScriptedPolicy(respond)
    seen: list[str] = []

    def reward(prompts, completions):
        seen.extend(completions)
        return [float(c.split()[-1]) for c in completions]

    from metapo.prefdata.rso import RSOOptions

    rows = build_rso(["p1", "p2"], policy, reward, RSOOptions(num_candidates=16, num_accept=4, beta=4.0))
    assert len(seen) == 32 and rows
    for row in rows:
        assert row["chosen_reward"] > row["rejected_reward"] and row["chosen"] != row["rejected"]
        assert row["chosen_reward"] == float(row["chosen"].split()[-1])


# ---------------------------------------------------------------------------------------------------------------
# EVOLVE
# ---------------------------------------------------------------------------------------------------------------


def test_evolve_keeps_only_improving_refinements():
    chain = ["a", "bb", "c", "dddd"]
    rows = chain_pairs("Q", chain, [1.0, 3.0, 2.0, 5.0])
    refine = [(r["chosen"], r["rejected"]) for r in rows if r["kind"] == "refine"]
    assert refine == [("bb", "a"), ("dddd", "c")]  # bb→c got worse: no pair
    direct = [r for r in rows if r["kind"] == "direct"]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in direct] == [("Q", "dddd", "a")]
    first = next(r for r in rows if r["kind"] == "refine")
    assert first["prompt"] == refine_prompt("Q", "a")


def test_evolve_never_pairs_a_response_with_itself_or_unscored_answers():
    # A noisy judge may score the same text twice differently: still no pair.
    assert chain_pairs("Q", ["same", "same"], [1.0, 2.0]) == []
    assert chain_pairs("Q", ["a", "b", "c"], [None, 2.0, None]) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        chain = [str(v) for v in rng.integers(0, 4, size=4)]
        scores = [float(len(set(c)) + rng.integers(0, 3)) for c in chain]
        for row in chain_pairs("Q", chain, scores):
            assert row["chosen"] != row["rejected"] and row["chosen_reward"] > row["rejected_reward"]
            if row["kind"] == "refine":
                steps = {
                    (chain[k + 1], chain[k])
                    for k in range(3)
                    if refine_prompt("Q", chain[k]) == row["prompt"] and scores[k + 1] > scores[k]
                }
                assert (row["chosen"], row["rejected"]) in steps


def test_refine_prompt_keeps_chat_turns():
    chat = [{"role": "user", "content": "Q"}]
    turns = refine_prompt(chat, "first try")
    assert (
        turns[:2] == [chat[0], {"role": "assistant", "content": "first try"}] and turns[2]["role"] == "user"
    )


# ---------------------------------------------------------------------------------------------------------------
# UPO
# ---------------------------------------------------------------------------------------------------------------


def _pair_tensors(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    logps = [(-5.0 - torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(2)]
    refs = [-5.0 - torch.rand(n, generator=g, dtype=torch.float64) for _ in range(2)]
    lengths = torch.randint(1, 9, (n,), generator=g)
    return logps, refs, lengths


def test_upo_with_zero_weights_is_dpo():
    (pc, pr), (rc, rr), lengths = _pair_tensors()
    ours = upo(pc, pr, rc, rr, lengths, torch.zeros(6, dtype=torch.float64), beta=0.3, nll_weight=0.0)
    ours.loss.backward()
    grads = pc.grad.clone(), pr.grad.clone()
    pc.grad = pr.grad = None
    reference = dpo(pc, pr, rc, rr, beta=0.3)
    reference.loss.backward()
    assert torch.equal(ours.losses, reference.losses)
    assert torch.allclose(grads[0], pc.grad) and torch.allclose(grads[1], pr.grad)
    # The NLL term is the per-token NLL of the chosen response.
    with_nll = upo(pc, pr, rc, rr, lengths, None, beta=0.3, nll_weight=0.5)
    assert torch.isclose(with_nll.loss - reference.loss, 0.5 * -(pc / lengths).mean())


def test_upo_half_flip_weight_has_zero_gradient_at_zero_margin():
    pc = torch.full((4,), -3.0, dtype=torch.float64, requires_grad=True)
    pr = torch.full((4,), -3.0, dtype=torch.float64, requires_grad=True)
    ref = torch.full((4,), -3.0, dtype=torch.float64)
    lengths = torch.full((4,), 3)
    upo(pc, pr, ref, ref, lengths, torch.full((4,), 0.5, dtype=torch.float64)).loss.backward()
    assert torch.allclose(pc.grad, torch.zeros(4, dtype=torch.float64), atol=1e-15)
    pc.grad = None
    upo(pc, pr, ref, ref, lengths, torch.full((4,), 0.2, dtype=torch.float64)).loss.backward()
    assert bool((pc.grad < 0).all())  # below ½ the chosen response is still pushed up
    with pytest.raises(ValueError, match="pair_smoothing"):
        upo(pc, pr, ref, ref, lengths, torch.full((4,), 0.7, dtype=torch.float64))


def test_cdpo_reads_per_pair_smoothing():
    (pc, pr), (rc, rr), _ = _pair_tensors(1, 3)
    eps = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    per_pair = get_objective("cdpo")(
        policy_chosen_logps=pc, policy_rejected_logps=pr, reference_chosen_logps=rc, reference_rejected_logps=rr,
        pair_smoothing=eps, beta=0.1,
    )  # fmt: skip
    for i, e in enumerate(eps.tolist()):
        single = get_objective("cdpo")(
            policy_chosen_logps=pc[i : i + 1], policy_rejected_logps=pr[i : i + 1],
            reference_chosen_logps=rc[i : i + 1], reference_rejected_logps=rr[i : i + 1],
            beta=0.1, label_smoothing=min(e, 0.4999999),
        )  # fmt: skip
        assert torch.isclose(per_pair.losses[i], single.losses[0], atol=1e-6)


def test_bald_limits():
    assert np.allclose(bald(np.full((10, 3), 0.8)), 0.0)  # every pass agrees
    half = np.array([[1.0], [0.0]] * 5)
    assert np.isclose(bald(half)[0], math.log(2))
    rng = np.random.default_rng(0)
    values = bald(rng.random((10, 500)))
    assert (values >= 0).all() and (values <= math.log(2) + 1e-12).all()
    assert np.allclose(flip_weights(np.array([0.0, math.log(2), 2.0])), [0.0, 0.5, 0.5])


def test_sampling_weights_prefer_certain_pairs():
    weights = sampling_weights(np.array([0.0, 0.3, math.log(2)]), mu=2.0)
    assert np.isclose(weights.sum(), 1.0) and weights[0] > weights[1] > weights[2]
    expected = np.array([1.0, 0.7**2, (1 - math.log(2)) ** 2])
    assert np.allclose(weights, expected / expected.sum())
    assert np.allclose(sampling_weights(np.full(4, 0.2), mu=3.0), 0.25)


def test_top_bottom_pairs():
    assert sorted(top_bottom_pairs([0.1, 0.9, 0.5, 0.7])) == [(1, 0), (1, 2), (3, 0), (3, 2)]
    pairs = top_bottom_pairs([5.0, 1.0, 3.0, 4.0, 2.0])  # odd N: the median (3.0, index 2) is in neither half
    assert all(2 not in p for p in pairs) and sorted(pairs) == [(0, 1), (0, 4), (3, 1), (3, 4)]
    assert top_bottom_pairs([1.0, 1.0, 1.0, 1.0]) == []


def test_weigh_pairs_samples_by_certainty_and_attaches_flip_weights():
    rows = [{"prompt": "x", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(4)]

    class Fixed:
        def probabilities(self, rows, passes):  # pair 3 is maximally uncertain, the others certain
            out = np.full((passes, len(rows)), 0.9)
            out[::2, 3], out[1::2, 3] = 1.0, 0.0
            return out

    counts = Counter()
    for seed in range(300):
        picked = weigh_pairs(
            rows, Fixed(), UPOOptions(keep_fraction=0.5, mu=8.0), np.random.default_rng(seed)
        )
        assert len(picked) == 2
        counts.update(r["chosen"] for r in picked)
        for r in picked:
            assert r["pair_smoothing"] == (0.5 if r["chosen"] == "c3" else 0.0)
    assert counts["c3"] < min(counts["c0"], counts["c1"], counts["c2"]) / 5


# ---------------------------------------------------------------------------------------------------------------
# MCTS-DPO
# ---------------------------------------------------------------------------------------------------------------


def test_visit_smoothing_limits():
    assert visit_smoothing(10, 0) == 0.0
    assert visit_smoothing(7, 7) == 0.5
    assert visit_smoothing(2, 9) == 0.5  # capped
    assert visit_smoothing(0, 0) == 0.0
    values = [visit_smoothing(n, 3) for n in range(3, 40)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert visit_smoothing(9, 3) == pytest.approx(1 - 1 / (1 + 3 / 9))


def _step_policy(seed: int = 0):
    """Steps "k\\n" with k in 0..2; the third step ends the response. Rollouts continue with random steps."""
    rng = np.random.default_rng(seed)

    def respond(text: str, index: int, stop: str | None) -> Sample:
        depth = text.count("\n") - 1  # the prompt holds one newline
        if stop is None:  # a rollout: complete the response
            rest = "".join(f"{rng.integers(3)}\n" for _ in range(max(0, 2 - depth)))
            return Sample(rest + f"{rng.integers(3)}", True)
        step = str(rng.integers(3))
        return Sample(step, True) if depth >= 2 else Sample(step + "\n", False)

    return ScriptedPolicy(respond)


def _verifier(row, response: str) -> float:
    return 1.0 if response.startswith("2\n") and response.endswith("2") else 0.0


def test_mcts_step_pairs_share_the_prefix():
    policy = _step_policy()
    prompt = "Problem: say 2.\n"
    search = StepSearch(prompt, {}, policy, _verifier, MCTSOptions(children=3, max_depth=3, simulations=12))
    pairs = search.run()
    assert pairs, "the search found no step pair"
    rows = step_rows(prompt, pairs, policy)
    nodes = [search.root]
    index = {}
    while nodes:
        node = nodes.pop()
        index[node.text] = node
        nodes.extend(node.children)
    for pair, row in zip(pairs, rows, strict=True):
        parent = index[pair.prefix]
        siblings = {(c.step, c.ended): c for c in parent.children}
        assert (pair.chosen, pair.chosen_ended) in siblings and (
            pair.rejected,
            pair.rejected_ended,
        ) in siblings
        assert pair.chosen != pair.rejected and pair.chosen_value > pair.rejected_value
        assert row["prompt"] == policy.render(prompt, pair.prefix)  # the shared prefix is in the prompt
        assert row["partial"] is True
        assert row["chosen"] == pair.chosen + ("<eos>" if pair.chosen_ended else "")
        assert row["pair_smoothing"] == visit_smoothing(pair.chosen_visits, pair.rejected_visits)
        # Counts are taken when the pair is recorded; later simulations can only add visits.
        assert siblings[(pair.chosen, pair.chosen_ended)].visits >= pair.chosen_visits >= 1
    # The search moves along the best-supported path: the first pair prefers the step that can still win.
    assert pairs[0].prefix == "" and pairs[0].chosen == "2\n"
    assert all(p.prefix.startswith("2\n") for p in pairs[1:])


def test_mcts_visits_add_up():
    policy = _step_policy(1)
    search = StepSearch("P\n", {}, policy, _verifier, MCTSOptions(children=2, max_depth=3, simulations=5))
    search.run()
    nodes = [search.root]
    while nodes:
        node = nodes.pop()
        if node.children:
            # A node's visits are its own evaluation (if any) plus its children's.
            assert node.visits - sum(c.visits for c in node.children) in (0, 1)
        nodes.extend(node.children)


# ---------------------------------------------------------------------------------------------------------------
# FSPO
# ---------------------------------------------------------------------------------------------------------------


def _user_rows() -> list[dict]:
    rows = []
    for user in ("u1", "u2", "u3"):
        for k in range(7):
            rows.append({"user": user, "prompt": f"question {k % 5}", "chosen": f"{user} likes {k}",
                         "rejected": f"{user} dislikes {k}"})  # fmt: skip
    return rows


def _triple(row):
    return (row["prompt"], row["chosen"], row["rejected"])


def test_fspo_never_leaks_the_held_out_preference_into_a_context():
    train, heldout = fewshot_rows(_user_rows(), num_shots=4, heldout_per_user=2, seed=0)
    assert len(heldout) == 6 and len(train) == 15
    held = {_triple(r) for r in heldout}
    for row in train + heldout:
        shots = [_triple(s) for s in row["user_context"]]
        assert 0 < len(shots) <= 4
        assert _triple(row) not in shots  # never its own pair
        assert all(s[0] != row["prompt"] for s in shots)  # nor any pair on its prompt
        assert not held & set(shots)  # held-out pairs are in no context at all
        assert all(s[1].startswith(row["user"] + " ") for s in shots)  # only the same user's pairs
    assert fewshot_rows(_user_rows(), num_shots=0)[0][0]["user_context"] == []


def test_fspo_personas_judge_one_candidate_set():
    policy = ScriptedPolicy(lambda text, i, stop: Sample("word " * (1 + i % 4), True))

    def likes_long(prompts, completions):
        return [len(c.split()) for c in completions]

    def likes_short(prompts, completions):
        return [-len(c.split()) for c in completions]

    rows = user_pairs(["q1", "q2"], policy, {"long": likes_long, "short": likes_short}, samples_per_prompt=4)
    assert len(policy.calls) == 8  # sampled once, judged by both users
    by = {(r["user"], r["prompt"]): r for r in rows}
    for q in ("q1", "q2"):
        assert (by[("long", q)]["chosen"], by[("long", q)]["rejected"]) == (
            by[("short", q)]["rejected"],
            by[("short", q)]["chosen"],
        )


# ---------------------------------------------------------------------------------------------------------------
# MAPL
# ---------------------------------------------------------------------------------------------------------------

CONSTRAINTS = [
    Constraint("max_words", 40),
    Constraint("include", "sea"),
    Constraint("exclude", "boat"),
    Constraint("lowercase"),
    Constraint("ends_with", "."),
    Constraint("min_words", 3),
]


def test_constraint_rules():
    assert Constraint.parse("max_words:3").check("one two three") and not Constraint("max_words", 2).check(
        "a b c"
    )
    assert Constraint("include", "sea").check("The Sea is wide") and not Constraint("include", "sea").check(
        "seal"
    )
    assert Constraint("lowercase").check("all lower.") and not Constraint("lowercase").check("123")
    with pytest.raises(ValueError, match="unknown instruction"):
        Constraint("rhyme")
    for c in CONSTRAINTS:
        for edit in violating_edits(c, "the sea is calm today."):
            assert not edit.check("the sea is calm today.")


def test_mapl_intra_pairs_differ_only_in_the_edited_instruction():
    for response in ["the sea is calm and blue today.", "A Boat on the sea", "sea sea sea", "x"]:
        rows = intra_pairs("Describe the sea.", response, CONSTRAINTS)
        kept = [c for c in CONSTRAINTS if c.check(response)]
        assert len(rows) == sum(bool(violating_edits(c, response)) for c in kept)
        for row in rows:
            assert row["chosen"] == row["rejected"] == response
            plus, minus = row["prompt"].split("\n"), row["rejected_prompt"].split("\n")
            assert len(plus) == len(minus)
            changed = [i for i, (a, b) in enumerate(zip(plus, minus, strict=True)) if a != b]
            assert len(changed) == 1
            instructions = {f"- {c.text()}": c for c in kept}
            assert all(line in instructions for line in plus[3:])  # x⁺ holds only satisfied instructions
            assert (
                plus[changed[0]] == f"- {row['edited']['from']}"
                and minus[changed[0]] == f"- {row['edited']['to']}"
            )
            edited = next(
                e for c in kept for e in violating_edits(c, response) if f"- {e.text()}" == minus[changed[0]]
            )
            assert not edited.check(response)


def test_mapl_inter_pairs_swap_exactly_one_answer():
    pairs = [{"prompt": f"task {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    rows = inter_pairs(pairs, group=2)
    assert len(rows) == 4  # two groups of two; the fifth pair is left over
    for row in rows:
        chosen, rejected = row["chosen"].split("\n\n"), row["rejected"].split("\n\n")
        diff = [i for i, (a, b) in enumerate(zip(chosen, rejected, strict=True)) if a != b]
        assert diff == [row["swapped"]] and "bad" in rejected[diff[0]] and "good" in chosen[diff[0]]
        assert row["rejected_prompt"] is None


def test_render_puts_one_instruction_per_line():
    text = render("Task.", CONSTRAINTS[:2])
    assert text.split("\n")[3:] == ["- Answer in at most 40 words.", '- Use the word "sea".']


# ---------------------------------------------------------------------------------------------------------------
# Structured PO
# ---------------------------------------------------------------------------------------------------------------


def test_structured_score_is_monotone_in_each_criterion(tmp_path):
    from metapo.reward.rubric_reward import RubricReward
    from metapo.rubric.active import ActiveRubrics
    from metapo.rubric.store import RubricStore

    rubric = criteria_rubric([
        {"title": "Task relevance", "description": "d", "weight": 2.0},
        {"title": "Grounding", "description": "d", "weight": 1.0},
        {"title": "Historical consistency", "description": "d", "weight": 0.5},
    ])  # fmt: skip
    reward = RubricReward(None, ActiveRubrics(RubricStore(tmp_path), rubric))
    rng = np.random.default_rng(0)
    for _ in range(100):
        points = {item.id: float(rng.integers(0, 10)) for item in rubric.items}
        base = reward.reward(rubric, points)[0]
        for item in rubric.items:
            if points[item.id] < 9:
                assert reward.reward(rubric, {**points, item.id: points[item.id] + 1})[0] > base
    with pytest.raises(ValueError, match="positive weights"):
        criteria_rubric([{"title": "Grounding", "description": "d", "weight": 0.0}])
    with pytest.raises(ValueError, match="positive weights"):
        require_positive_weights(criteria_rubric().__class__.from_items([{"title": "t", "weight": -1.0}]))


def test_curriculum_has_non_decreasing_horizon():
    rng = np.random.default_rng(0)
    rows = [{"id": i, "horizon": int(h)} for i, h in enumerate(rng.integers(1, 20, size=60))]
    stages = curriculum(rows, [2, 5, 10])
    flat = [r for stage in stages for r in stage]
    assert sorted(r["id"] for r in flat) == list(range(60))
    horizons = [r["horizon"] for r in flat]
    assert horizons == sorted(horizons)
    bounds = [0, 2, 5, 10, math.inf]
    for index, stage in enumerate(stages):
        assert all(bounds[index] < r["horizon"] <= bounds[index + 1] and r["stage"] == index for r in stage)


def test_build_structured_pairs_best_against_worst():
    policy = ScriptedPolicy(lambda text, i, stop: Sample("\n".join(["step"] * (1 + i % 3)), True))

    def scorer(prompts, completions):
        return [(len(c) / 100, {"task-relevance": len(c) / 100}) for c in completions]

    tasks = [{"prompt": "short task", "horizon": 7}, {"prompt": "no horizon given"}]
    stages = build_structured(
        tasks, policy, scorer, StructuredOptions(samples_per_prompt=3, stage_bounds=[3])
    )
    flat = [r for s in stages for r in s]
    assert len(flat) == 2 and [r["horizon"] for r in flat] == [3, 7]  # read from the best chain, then given
    for row in flat:
        assert row["chosen_reward"] > row["rejected_reward"] and row["chosen"].count("\n") == 2


# ---------------------------------------------------------------------------------------------------------------
# RPS
# ---------------------------------------------------------------------------------------------------------------


def _angle(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a) / np.linalg.norm(a), np.asarray(b) / np.linalg.norm(b)
    return math.degrees(math.acos(float(np.clip(a @ b, -1, 1))))


def test_neighbour_directions_stay_within_the_angle():
    rng = np.random.default_rng(0)
    target = [1.0, 2.0, 0.5]
    dirs = neighbour_directions(target, 200, 30.0, rng)
    angles = [_angle(target, d) for d in dirs]
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1.0)
    assert max(angles) <= 30.0 + 1e-9 and max(angles) > 25.0
    assert all(_angle(target, d) < 1e-6 for d in neighbour_directions(target, 5, 0.0, rng))


_WEIGHTS = re.compile(r"helpfulness (-?\d+\.\d+), verbosity (-?\d+\.\d+)")


def test_rps_selects_with_the_target_direction_only():
    # Each response is scored by the direction that produced it, so every neighbour rates its own response
    # equally (vᵢᵀvᵢ = 1); only the target direction can tell them apart, preferring the closest neighbour.
    policy = ScriptedPolicy(lambda text, i, stop: Sample(_WEIGHTS.search(text).group(0), True))

    def reward(prompts, completions):
        vectors = [np.array([float(x) for x in _WEIGHTS.search(c).groups()]) for c in completions]
        return [(v / np.linalg.norm(v)).tolist() for v in vectors]

    options = RPSOptions(target=[1.0, 0.2], k=5, theta_max=40.0)
    for seed in range(20):
        record = robust_select("Say something.", policy, reward, options, np.random.default_rng(seed))
        angles = [_angle(record["target"], r) for r in record["rewards"]]
        assert record["selected"] == int(np.argmin(angles))
        target = np.array(record["target"])
        assert np.allclose(record["scores"], [target @ np.array(r) for r in record["rewards"]])
    assert select([1.0, 0.0], [[0.0, 5.0], None, [1.0, 0.0]]) == 2
    assert select([1.0, 0.0], [None]) is None


# ---------------------------------------------------------------------------------------------------------------
# Example configs
# ---------------------------------------------------------------------------------------------------------------

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("prefdata_*.yaml"))


def test_every_method_has_an_example_config():
    from metapo.prefdata.run import METHODS

    assert {p.stem.removeprefix("prefdata_").replace("_", "-") for p in EXAMPLES} == set(METHODS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_are_valid(path):
    from metapo.prefdata.run import check_config, load_config

    check_config(path.stem.removeprefix("prefdata_").replace("_", "-"), load_config(path, []))
