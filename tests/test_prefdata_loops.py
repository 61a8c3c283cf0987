"""Preference-data builders on the tiny model: the loops improve what they measure, resume, feed the trainer as
they are, and ``metapo build-pref`` runs end to end with a scripted judge."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from scripted_judge import ScriptedJudge, chat_response, digit_alternatives, judged_text

from metapo.judges import JudgeConfig, build_judge
from metapo.models.tiny import build_tiny_model
from metapo.prefdata.common import GenerationOptions, HFPolicy, Sample, read_rows, rubric_reward
from metapo.prefdata.loop import LoopConfig, run_rounds
from metapo.rubric.model import Rubric
from metapo.train.preference import PreferenceConfig, PreferenceTrainer

MATH_DIR = Path("/work/shared/data/math")
PROMPTS = [
    "What is 2 + 2?",
    "Name a colour.",
    "Say hello.",
    "What is the capital of France?",
    "Describe the sea.",
    "Count to three.",
    "Name a fruit.",
    "Write a short poem.",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny model is latency-bound: one thread avoids oversubscribing a shared CPU.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def letter_e_judge(body):
    """A scripted rubric judge whose score is the number of letters "e" in the judged response (at most 9).

    The tiny model's tokens either contain an "e" or not, so a preference for it is learnable in two rounds.
    """
    m = min(9, judged_text(body).lower().count("e"))
    return chat_response(
        str(m), alternatives=digit_alternatives(m), top_n=int(body.get("top_logprobs") or 20)
    )


@pytest.fixture(scope="module")
def judge():
    with ScriptedJudge(handler=letter_e_judge) as server:
        client = build_judge(
            JudgeConfig(backend="openai", model="scripted", base_urls=[server.url], max_attempts=2)
        )
        yield SimpleNamespace(server=server, client=client)


def _reward(judge, tmp_path):
    return rubric_reward(
        judge.client, Rubric.single("Letters", "How many letters e.", 0, 9), tmp_path / "rubrics", scoring="logprob"
    )


def _loop(tmp_path, objective, objective_kwargs, **train) -> LoopConfig:
    settings = dict(use_cpu=True, learning_rate=1e-2, num_train_epochs=3, per_device_train_batch_size=8,
                    lr_scheduler_type="constant", max_length=256)  # fmt: skip
    settings.update(train)
    return LoopConfig(
        output_dir=str(tmp_path / "loop"),
        rounds=2,
        objective=objective,
        objective_kwargs=objective_kwargs,
        train=settings,
        generation=GenerationOptions(max_new_tokens=6, batch_size=64, seed=0),
    )


def _trains(tiny_model_dir, tmp_path, rows, objective, **kwargs) -> float:
    """One loss-and-backward step of the preference trainer on builder rows; returns the loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = PreferenceTrainer(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PreferenceConfig(output_dir=str(tmp_path / f"t-{objective}"), objective=objective, objective_kwargs=kwargs,
                         report_to=[], use_cpu=True, max_length=512, per_device_train_batch_size=len(rows)),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )  # fmt: skip
    batch = trainer._prepare_inputs(
        trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    )
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------------------------
# Loops: two rounds on the tiny model, the measured objective moves the right way
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evolve_loop_raises_the_judged_reward(tiny_model_dir, tmp_path, judge):
    from metapo.prefdata.evolve import EvolveOptions, build_evolve, measure_evolve

    reward = _reward(judge, tmp_path)
    opts = EvolveOptions(refinements=2, chains_per_prompt=2, eval_samples=8)
    built = []

    def build(index, policy):
        rows = build_evolve(PROMPTS, policy, reward, opts)
        built.append(rows)
        return rows

    history = run_rounds(tiny_model_dir, _loop(tmp_path, "dpo", {"beta": 0.1}), build,
                         lambda policy: measure_evolve(PROMPTS, policy, reward, opts))  # fmt: skip
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(r["chosen_reward"] > r["rejected_reward"] for rows in built for r in rows)
    assert {r["kind"] for rows in built for r in rows} == {"direct", "refine"}
    start, end = history[0]["reward/mean"], history[2]["reward/mean"]
    assert end > start + 0.05, history

    # Resume: a finished run does no more work; a run stopped before a round's measurement finishes only that.
    requests = judge.server.request_count
    again = run_rounds(tiny_model_dir, _loop(tmp_path, "dpo", {"beta": 0.1}), build, lambda p: {"x": 1.0})
    assert again == history and len(built) == 2 and judge.server.request_count == requests
    (tmp_path / "loop" / "round-2" / "metrics.json").unlink()
    measured = []
    resumed = run_rounds(tiny_model_dir, _loop(tmp_path, "dpo", {"beta": 0.1}), build,
                         lambda p: measured.append(1) or {"x": 1.0})  # fmt: skip
    assert (
        len(built) == 2
        and measured == [1]
        and resumed[2] == {"round": 2, "pairs": history[2]["pairs"], "x": 1.0}
    )
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]


@pytest.mark.slow
def test_upo_loop_raises_the_judged_reward(tiny_model_dir, tmp_path, judge):
    from metapo.prefdata.upo import DropoutEstimator, UPOOptions, build_upo, measure_upo

    reward = _reward(judge, tmp_path)
    opts = UPOOptions(samples_per_prompt=6, keep_fraction=1.0, eval_samples=8)
    estimator = DropoutEstimator(str(tiny_model_dir), dropout=0.3, epochs=100)
    built = []

    def build(index, policy):
        rows = build_upo(PROMPTS, policy, reward, estimator, opts, round_index=index)
        built.append(rows)
        return rows

    config = _loop(tmp_path, "upo", {"beta": 0.1, "nll_weight": 1.0})
    history = run_rounds(tiny_model_dir, config, build, lambda p: measure_upo(PROMPTS, p, reward, 8))
    rows = [r for round_rows in built for r in round_rows]
    assert rows and all(0.0 <= r["pair_smoothing"] <= 0.5 and r["bald"] >= 0.0 for r in rows)
    assert any(r["bald"] > 0 for r in rows)  # the estimator's dropout passes disagree somewhere
    assert history[2]["reward/mean"] > history[0]["reward/mean"] + 0.05, history


@pytest.mark.slow
def test_mcts_dpo_loop_raises_the_verifier_pass_rate(tiny_model_dir, tmp_path):
    from metapo.prefdata.mcts import MCTSOptions, build_mcts, measure_mcts

    problems = [{"prompt": p} for p in PROMPTS]

    def verifier(row, response):  # graded: each "e" is a third of a correct answer
        return min(1.0, response.lower().count("e") / 3)

    opts = MCTSOptions(
        children=3, max_depth=3, simulations=4, step_tokens=2, rollout_tokens=4, eval_samples=8
    )
    built = []

    def build(index, policy):
        rows = build_mcts(problems, policy, verifier, opts)
        built.append(rows)
        return rows

    history = run_rounds(tiny_model_dir, _loop(tmp_path, "cdpo", {"beta": 0.1}), build,
                         lambda p: measure_mcts(problems, p, verifier, opts.eval_samples))  # fmt: skip
    rows = [r for round_rows in built for r in round_rows]
    assert rows and all(r["partial"] and r["chosen_value"] > r["rejected_value"] for r in rows)
    assert {r["depth"] for r in rows} >= {0, 1}  # pairs deeper than the first step
    assert history[2]["verifier/pass_rate"] > history[0]["verifier/pass_rate"] + 0.05, history


# ---------------------------------------------------------------------------------------------------------------
# Trainer integration: builder rows train unchanged, and the new columns mean what they say
# ---------------------------------------------------------------------------------------------------------------


def _margin(tiny_model_dir, reference_dir, rows, objective="dpo") -> torch.Tensor:
    """Per-row DPO margin Δ of a policy (the tiny model) against a different reference model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = PreferenceTrainer(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        PreferenceConfig(output_dir=str(reference_dir / "t"), objective=objective, report_to=[], use_cpu=True,
                         max_length=512, per_device_train_batch_size=len(rows)),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        ref_model=AutoModelForCausalLM.from_pretrained(reference_dir),
    )  # fmt: skip
    batch = trainer._prepare_inputs(
        trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    )
    with torch.no_grad():
        out = trainer.spec.fn(**trainer._objective_inputs(trainer.model, batch), **trainer.hparams)
    return out.margins / trainer.hparams["beta"]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("other-tiny"), seed=1)


def test_mapl_rows_condition_each_response_on_its_own_prompt(tiny_model_dir, other_model):
    from metapo.prefdata.mapl import Constraint, intra_pairs

    rows = intra_pairs(
        "Describe the sea.", "the sea is calm.", [Constraint("include", "sea"), Constraint("max_words", 9)]
    )
    assert len(rows) == 2
    swapped = [{**r, "prompt": r["rejected_prompt"], "rejected_prompt": r["prompt"]} for r in rows]
    delta, delta_swapped = (
        _margin(tiny_model_dir, other_model, rows),
        _margin(tiny_model_dir, other_model, swapped),
    )
    # Same response under two prompts: a shared prompt would give exactly 0; swapping the prompts negates Δ.
    assert bool((delta.abs() > 1e-4).all())
    assert torch.allclose(delta, -delta_swapped, atol=1e-5)


def test_mcts_step_pairs_keep_the_margin_of_the_whole_sequences(tiny_model_dir, other_model):
    from transformers import AutoTokenizer

    from metapo.train.preference import encode_pair_prompt

    prompt, prefix = "Solve 3 + 4.\n", "Step 1: 3 + 4 is 4 more than 3.\n"
    chosen, rejected = "Step 2: so it is 7.\n", "Step 2: so it is 8.\n"
    step_row = {"prompt": prompt + prefix, "chosen": chosen, "rejected": rejected, "partial": True}
    whole_row = {"prompt": prompt, "chosen": prefix + chosen, "rejected": prefix + rejected, "partial": True}
    step, whole = (
        _margin(tiny_model_dir, other_model, [step_row]),
        _margin(tiny_model_dir, other_model, [whole_row]),
    )
    # Prepending the shared prefix to both responses leaves Δ unchanged: only the divergent suffix counts.
    assert abs(float(step[0])) > 1e-3 and torch.allclose(step, whole, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    _, (ids,) = encode_pair_prompt(tokenizer, prompt + prefix, [chosen], add_eos=False)
    assert tokenizer.eos_token_id not in ids  # a partial step is not a finished response


def test_builder_rows_train_with_the_existing_objectives(tiny_model_dir, tmp_path):
    from metapo.prefdata.fspo import fewshot_rows
    from metapo.prefdata.mapl import Constraint, inter_pairs, intra_pairs
    from metapo.prefdata.mcts import visit_smoothing

    mapl = intra_pairs("Describe the sea.", "the sea is calm.", [Constraint("include", "sea")]) + inter_pairs(
        [
            {"prompt": "a", "chosen": "good a", "rejected": "bad a"},
            {"prompt": "b", "chosen": "good b", "rejected": "bad b"},
        ]
    )
    assert _trains(tiny_model_dir, tmp_path, mapl, "dpo") > 0
    steps = [{"prompt": "Q\nStep 1.\n", "chosen": "Step 2.\n", "rejected": "Nope.\n", "partial": True,
              "pair_smoothing": visit_smoothing(n, 2)} for n in (2, 6)]  # fmt: skip
    assert _trains(tiny_model_dir, tmp_path, steps, "cdpo") > 0
    upo_rows = [{"prompt": "Q", "chosen": "yes", "rejected": "no", "pair_smoothing": a} for a in (0.0, 0.3)]
    assert _trains(tiny_model_dir, tmp_path, upo_rows, "upo", nll_weight=0.5) > 0
    users = [{"user": u, "prompt": f"q{k}", "chosen": f"{u} yes {k}", "rejected": f"{u} no {k}"}
             for u in ("a", "b") for k in range(4)]  # fmt: skip
    train, _ = fewshot_rows(users, num_shots=2)
    assert _trains(tiny_model_dir, tmp_path, train[:4], "fspo") > 0
    with pytest.raises(ValueError, match="pair_smoothing"):
        _trains(tiny_model_dir, tmp_path, [upo_rows[0], {**upo_rows[1], "pair_smoothing": None}], "upo")


# ---------------------------------------------------------------------------------------------------------------
# UPO estimator and RPS on the tiny model
# ---------------------------------------------------------------------------------------------------------------


def test_dropout_estimator_learns_and_its_passes_disagree_only_with_dropout(tiny_model_dir):
    from metapo.prefdata.upo import DropoutEstimator, bald

    rows = [{"prompt": f"Question {i}", "chosen": "Good, correct and kind answer.", "rejected": f"bad {i} !!"}
            for i in range(6)]  # fmt: skip
    certain = DropoutEstimator(str(tiny_model_dir), dropout=0.0, epochs=150)
    certain.fit(rows)
    probs = certain.probabilities(rows, passes=5)
    assert np.allclose(bald(probs), 0.0) and probs.mean() > 0.8
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    assert certain.probabilities(swapped, passes=1).mean() < 0.2
    noisy = DropoutEstimator(str(tiny_model_dir), dropout=0.5, epochs=150)
    noisy.fit(rows)
    assert bald(noisy.probabilities(rows, passes=10)).max() > 1e-3


def test_rps_with_zero_angle_is_best_of_k(tiny_model_dir):
    from metapo.prefdata.rps import RPSOptions, best_of_k, robust_select

    def reward(prompts, completions):
        return [[len(c) / 10.0, c.count(" ") / 3.0] for c in completions]

    options = RPSOptions(target=[0.3, 1.0], k=4, theta_max=0.0)
    gen = GenerationOptions(max_new_tokens=8, seed=5)
    rps = robust_select("Tell me about rivers.", HFPolicy.from_pretrained(tiny_model_dir, gen), reward, options,
                        np.random.default_rng(0))  # fmt: skip
    baseline = best_of_k(
        "Tell me about rivers.", HFPolicy.from_pretrained(tiny_model_dir, gen), reward, options
    )
    assert len(set(rps["candidates"])) > 1
    assert rps == baseline
    wide = robust_select("Tell me about rivers.", HFPolicy.from_pretrained(tiny_model_dir, gen), reward,
                         RPSOptions(target=[0.3, 1.0], k=4, theta_max=30.0), np.random.default_rng(0))  # fmt: skip
    assert wide["directions"] != baseline["directions"]


# ---------------------------------------------------------------------------------------------------------------
# MCTS-DPO on real MATH problems with math-verify (skipped without the data)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (MATH_DIR / "test.jsonl").is_file(), reason="needs the MATH data in /work/shared/data/math"
)
def test_mcts_finds_verified_steps_on_math_problems():
    from metapo.prefdata.mcts import MCTSOptions, StepSearch, math_verifier, problem_rows
    from metapo.tasks.math_answers import boxed_answer

    with open(MATH_DIR / "test.jsonl", encoding="utf-8") as handle:
        raw = [json.loads(next(handle)) for _ in range(40)]
    picked = [r for r in raw if len(r["solution"].split(". ")) >= 3][:3]
    problems = problem_rows(picked)

    class SolutionSteps:
        """Proposes the solution's next sentence or a confident wrong answer (a different boxed value)."""

        eos_text = ""

        def __init__(self, solution: str, gold: str):
            self.steps = [s.strip() + ".\n" for s in solution.split(". ")][:-1] + [
                f"So the answer is \\boxed{{{gold}}}."
            ]
            self.wrong = f"So the answer is \\boxed{{({gold})+1}}."
            self.rng = np.random.default_rng(0)

        def render(self, prompt, prefix=""):
            return str(prompt) + prefix

        def _next(self, prefix: str) -> tuple[str, bool]:
            done = sum(1 for s in self.steps[:-1] if s in prefix)
            if self.rng.random() < 0.5:
                return self.wrong, True
            return self.steps[done], done == len(self.steps) - 1

        def generate(self, prompts, n=1, *, prefixes=None, stop=None, max_new_tokens=None):
            prefix = prefixes[0] if prefixes else ""
            out = []
            for _ in range(n):
                if stop is not None:
                    out.append(Sample(*self._next(prefix)))
                    continue
                # Rollouts finish the solution correctly, so a correct step is worth more than a wrong answer.
                done = sum(1 for s in self.steps[:-1] if s in prefix)
                out.append(Sample("".join(self.steps[done:]), True))
            return [out]

    for problem, raw_row in zip(problems, picked, strict=True):
        gold = boxed_answer(raw_row["solution"])
        assert problem["answer"] == gold and math_verifier(problem, f"\\boxed{{{gold}}}") == 1.0
        policy = SolutionSteps(raw_row["solution"], gold)
        pairs = StepSearch(
            problem["prompt"], problem, policy, math_verifier, MCTSOptions(simulations=6, max_depth=8)
        ).run()
        assert pairs
        for pair in pairs:
            assert pair.rejected == policy.wrong and pair.chosen in policy.steps
            assert pair.prefix == "".join(policy.steps[: policy.steps.index(pair.chosen)])
            assert pair.chosen_value > pair.rejected_value == 0.0


# ---------------------------------------------------------------------------------------------------------------
# metapo build-pref
# ---------------------------------------------------------------------------------------------------------------


def _config(tmp_path, judge_url: str, **extra) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    config = {
        "model": str(extra.pop("model")),
        "prompts": str(prompts),
        "output_dir": str(tmp_path / "out"),
        "judge": {"backend": "openai", "model": "scripted", "base_urls": [judge_url], "max_attempts": 2},
        "reward": {"scoring": "logprob"},  # the scripted judge's scores are exact in this mode
        "generation": {"max_new_tokens": 6, "batch_size": 64},
        **extra,
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_build_pref_rso_end_to_end(tiny_model_dir, tmp_path, judge, capsys):
    from metapo.cli import main

    config = _config(
        tmp_path, judge.server.url, model=tiny_model_dir, options={"num_candidates": 8, "num_accept": 4}
    )
    assert main(["build-pref", "rso", "--config", str(config), "options.beta=0.25"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_rows(summary["data"])
    assert summary["rows"] == len(rows) > 0
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in rows)
    assert _trains(tiny_model_dir, tmp_path, rows, "hinge") > 0


def test_cli_build_pref_reports_bad_settings_in_one_line(tiny_model_dir, tmp_path, judge, capsys):
    from metapo.cli import main

    config = _config(tmp_path, judge.server.url, model=tiny_model_dir, options={"num_acept": 4})
    assert main(["build-pref", "rso", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown setting(s) options.num_acept") and err.count("\n") == 1
    no_judge = yaml.safe_load(config.read_text())
    no_judge.pop("judge"), no_judge.pop("options")
    config.write_text(yaml.safe_dump(no_judge))
    assert main(["build-pref", "fspo", "--config", str(config), "personas={a: x, b: y}"]) == 2
    assert "needs a judge" in capsys.readouterr().err
    assert main(["build-pref", "upo", "--config", str(config), "train.learning_rat=1"]) == 2
    assert "unknown train setting(s) ['learning_rat']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build-pref", "--help"])
    assert "mcts-dpo" in capsys.readouterr().out


def test_cli_build_pref_mapl_needs_no_judge(tiny_model_dir, tmp_path, capsys):
    from metapo.cli import main

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"prompt": "Describe the sea.", "constraints": ["max_words:40", "min_words:1"]}) + "\n"
    )
    config = tmp_path / "mapl.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "prompts": str(tasks),
                                      "output_dir": str(tmp_path / "mapl"), "generation": {"max_new_tokens": 6}}))  # fmt: skip
    assert main(["build-pref", "mapl", "--config", str(config), "options.samples_per_prompt=3"]) == 0
    rows = read_rows(json.loads(capsys.readouterr().out)["data"])
    assert rows and all(r["kind"] == "intra" and r["chosen"] == r["rejected"] for r in rows)
