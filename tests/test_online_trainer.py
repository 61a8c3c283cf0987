"""The online trainer on a tiny local model with a deterministic scripted preference oracle.

The policy is a random byte-level model (every byte one token), so lower-case letters are 26 of its 260 tokens
and about a tenth of what it samples. The oracle prefers responses with more lower-case letters
(Bradley–Terry on the count, or a scripted pairwise judge over HTTP). Every method runs two rounds, the second
one resumed from the run directory in a fresh trainer, and its final policy must beat its round-0 self under the
same oracle. The win rates (``-s`` prints them) are the ones quoted in the README.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scripted_judge import ScriptedJudge

from metapo.online.methods import METHODS, get_method
from metapo.online.oracle import JudgeOracle, ScoreOracle, count_matches, win_rates
from metapo.online.trainer import OnlineConfig, OnlineTrainer, OracleConfig, build_oracle, build_pairs

LETTERS = "[a-z]"
TOPICS = [
    "sea",
    "rain",
    "homework",
    "lighthouse",
    "music",
    "chess",
    "cooking",
    "library",
    "trains",
    "forests",
]
TOPICS += ["moon", "bread", "rivers", "bikes", "clocks", "maps"]
PROMPTS = [[{"role": "user", "content": f"Write about {t}."}] for t in TOPICS]
EVAL_PROMPTS = [[{"role": "user", "content": f"Describe {t}."}] for t in TOPICS[:8]]

# Hyperparameters for a 260-token random model and 16 prompts: large steps, strong regularisation targets.
SETTINGS: dict[str, dict[str, Any]] = {
    "online_dpo": {},
    "online_ipo": {"objective_kwargs": {"beta": 0.1}, "training": {"num_train_epochs": 1}},
    "egpo": {"objective_kwargs": {"beta": 0.1}, "training": {"num_train_epochs": 1}},
    "inpo": {"objective_kwargs": {"eta": 0.1, "tau": 0.02}},
    "sppo": {"objective_kwargs": {"beta": 0.1}},
    "gpo": {"objective_kwargs": {"beta": 0.1}},
    "apo": {"objective_kwargs": {"alpha": 0.3}, "training": {"learning_rate": 6e-3}},
    "xpo": {},
    "nash_mp": {"objective_kwargs": {"eta": 10.0, "beta": 0.1}, "training": {"num_train_epochs": 1}},
    "spo": {"training": {"per_device_train_batch_size": 16}},
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory) -> Path:
    from metapo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("byte-model"), vocab_size=260)


def _config(method: str, model: Path, out: Path, rounds: int, **overrides: Any) -> OnlineConfig:
    settings = SETTINGS[method]
    training = {"learning_rate": 3e-3, "num_train_epochs": 3, "per_device_train_batch_size": 4}
    training.update(settings.get("training", {}))
    values: dict[str, Any] = dict(
        method=method,
        model=str(model),
        output_dir=str(out),
        rounds=rounds,
        samples_per_prompt=4,
        max_new_tokens=12,
        generation_batch_size=64,
        max_length=128,
        backend="hf",
        eval_samples=4,
        oracle=OracleConfig(kind="rule", pattern=LETTERS, temperature=0.5),
        training=training,
        objective_kwargs=settings.get("objective_kwargs", {}),
    )
    values.update(overrides)
    return OnlineConfig(**values)


def _letter_oracle() -> ScoreOracle:
    return ScoreOracle(count_matches(LETTERS), temperature=0.5)


# ----- every method, two rounds -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_two_rounds_beat_the_round_zero_policy(method, byte_model, tmp_path):
    out = tmp_path / method
    first = OnlineTrainer(_config(method, byte_model, out, 1), _letter_oracle(), prompts=PROMPTS)
    assert [m["round"] for m in first.train()] == [1]
    # A fresh trainer on the same directory resumes at round 2.
    second = OnlineTrainer(
        _config(method, byte_model, out, 2), _letter_oracle(), prompts=PROMPTS, eval_prompts=EVAL_PROMPTS
    )
    assert second.state["rounds_done"] == 1
    metrics = second.train()
    assert [m["round"] for m in metrics] == [1, 2]
    state = json.loads((out / "state.json").read_text())
    assert state["rounds_done"] == 2 and Path(state["policies"][-1]) == out / "round-0002"
    assert (out / "round-0002" / "config.json").is_file() and not list(out.glob("*-half"))

    final = metrics[-1]["win_rate_vs_initial"]  # evaluated by the trainer after round 2
    round_one = second.win_rate_vs_initial(str(out / "round-0001"))
    print(f"\n{method}: win rate vs round 0 after round 1 {round_one:.3f}, after round 2 {final:.3f}")
    assert final > 0.6
    if not get_method(method).grpo:
        assert all(m["pairs"] > 0 for m in metrics)
        rows = [json.loads(line) for line in (out / "pairs" / "round-0002.jsonl").read_text().splitlines()]
        expected = {"prompt", "chosen", "rejected"}
        if get_method(method).reference:
            expected |= {"ref_chosen_logps", "ref_rejected_logps"}
        if get_method(method).previous:
            expected |= {"previous_chosen_logps", "previous_rejected_logps"}
        if get_method(method).older:  # round 2 has an older iterate
            expected |= {"older_chosen_logps", "older_rejected_logps"}
        if get_method(method).targets:
            expected |= {"chosen_preference", "rejected_preference"}
        assert expected <= set(rows[0])
        _check_log_prob_columns(get_method(method), rows[:3], initial=byte_model, previous=out / "round-0001")


def _check_log_prob_columns(method, rows, *, initial: Path, previous: Path) -> None:
    """Round 2's columns hold the log-probs of the right models: the initial policy, π_1, and π_0 before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.train.preference import completion_logps

    def logps(path: Path) -> np.ndarray:
        model = AutoModelForCausalLM.from_pretrained(path)
        return np.array(completion_logps(model, AutoTokenizer.from_pretrained(path), rows, max_length=128))

    models = {"ref": {"initial": initial, "previous": previous}.get(method.reference or "")}
    models["previous"] = previous if method.previous else None
    models["older"] = initial if method.older else None
    for column, path in models.items():
        if path is None:
            continue
        got = np.array(
            [[r[f"{column}_chosen_logps"] for r in rows], [r[f"{column}_rejected_logps"] for r in rows]]
        )
        np.testing.assert_allclose(got, logps(path), atol=1e-4, err_msg=column)


def test_initial_policy_wins_half_against_itself(byte_model, tmp_path):
    trainer = OnlineTrainer(
        _config("sppo", byte_model, tmp_path / "w", 1),
        _letter_oracle(),
        prompts=PROMPTS,
        eval_prompts=EVAL_PROMPTS,
    )
    # Same model, same seed: identical samples, so every comparison is a tie.
    assert trainer.win_rate_vs_initial(trainer.state["initial"]) == pytest.approx(0.5)


def test_supplied_log_probs_are_the_ones_the_update_computes(byte_model, tmp_path):
    # At the start of an SPPO round the policy is π_t, so its log-ratio to the supplied π_t column is zero.
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.train.preference import PreferenceConfig, PreferenceTrainer, completion_logps

    tokenizer = AutoTokenizer.from_pretrained(byte_model)
    model = AutoModelForCausalLM.from_pretrained(byte_model)
    rows = [
        {"prompt": p, "chosen": f"answer {i} abc", "rejected": f"ANSWER {i}"}
        for i, p in enumerate(PROMPTS[:4])
    ]
    chosen, rejected = completion_logps(model, tokenizer, rows, max_length=128, batch_size=3)
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        row.update(ref_chosen_logps=c, ref_rejected_logps=r, chosen_preference=0.0, rejected_preference=0.0)
    args = PreferenceConfig(output_dir=str(tmp_path / "t"), objective="sppo", objective_kwargs={"beta": 0.1},
                            report_to=[], use_cpu=True, max_length=128)  # fmt: skip
    trainer = PreferenceTrainer(
        model, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    assert trainer.ref_model is None
    with torch.no_grad():
        loss = trainer.compute_loss(
            model, trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        )
    assert loss.item() < 1e-8  # zero targets and zero log-ratios


# ----- pairs ---------------------------------------------------------------------------------------------------


def test_pairs_follow_each_method():
    samples = ["a", "b", "c", "d"]
    # A transitive matrix: a > b > c > d, with d beating nobody.
    matrix = np.array(
        [[0.5, 0.9, 0.8, 0.9], [0.1, 0.5, 0.7, 0.8], [0.2, 0.3, 0.5, 0.6], [0.1, 0.2, 0.4, 0.5]]
    )
    dpo = build_pairs(get_method("online_dpo"), "x", samples, matrix)
    assert [(r["chosen"], r["rejected"]) for r in dpo] == [("a", "b"), ("c", "d")]
    sppo = build_pairs(get_method("sppo"), "x", samples, matrix)
    assert [(r["chosen"], r["rejected"]) for r in sppo] == [("a", "d")]
    rates = win_rates(matrix, self_play=True)
    assert sppo[0]["chosen_preference"] == pytest.approx(rates[0] - 0.5)
    assert sppo[0]["rejected_preference"] == pytest.approx(rates[3] - 0.5)
    everything = build_pairs(get_method("egpo"), "x", samples, matrix)
    assert len(everything) == 6 and all(r["chosen_preference"] > r["rejected_preference"] for r in everything)
    gpo = build_pairs(get_method("gpo"), "x", samples, matrix)
    logit = np.log(matrix[0, 1:] / (1 - matrix[0, 1:])).mean()
    assert gpo[0]["chosen_preference"] == pytest.approx(logit)
    # INPO keeps a best/worst pair only when the oracle itself prefers the best one: here a has the best win
    # rate (2/3) and d the worst (1/3), yet d beats a.
    cyclic = np.array([[0.5, 1, 1, 0], [0, 0.5, 0.5, 1], [0, 0.5, 0.5, 1], [1, 0, 0, 0.5]])
    assert build_pairs(get_method("inpo"), "x", samples, cyclic) == []
    assert [(r["chosen"], r["rejected"]) for r in build_pairs(get_method("sppo"), "x", samples, cyclic)] == [
        ("a", "d")
    ]
    xpo = build_pairs(
        get_method("xpo"), "x", ["p", "q"], np.empty((0, 0)), reference_samples=["r", "q"],
        cross=np.array([[0.2, 0.0], [0.0, 0.5]]),
    )  # fmt: skip
    assert xpo == [{"prompt": "x", "chosen": "r", "rejected": "p", "calibration": "r"}]


def test_extragradient_targets_are_win_rates_against_the_look_ahead_samples():
    from types import SimpleNamespace

    samples = [["a", "b", "c"]]
    cross = np.array([[0.9, 0.7, 0.5], [0.2, 0.4, 0.3], [0.5, 0.5, 0.5]])  # rows: samples; columns: opponents
    fake = SimpleNamespace(
        _preferences=lambda prompts, s, opponents: [cross] if opponents is not None else None
    )
    rows = [
        {"prompt": "x", "chosen": "a", "rejected": "b", "chosen_preference": 0.3, "rejected_preference": -0.3}
    ]
    (row,) = OnlineTrainer._retarget(fake, rows, ["x"], samples, [["o1", "o2", "o3"]])
    assert row["chosen_preference"] == pytest.approx(0.7 - 0.5)  # mean over all three opponents, centred
    assert row["rejected_preference"] == pytest.approx(0.3 - 0.5)


# ----- oracles -------------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"<(response_[ab])>\n(.*?)\n</\1>", re.DOTALL)


def _letters_judge(body: dict[str, Any]) -> str:
    user = [m for m in body["messages"] if m["role"] == "user"][0]["content"]
    pair = {label[-1].upper(): text for label, text in _BLOCK.findall(user)}
    a, b = (len(re.findall(LETTERS, pair[k])) for k in ("A", "B"))
    return "<winner>A</winner>" if a >= b else "<winner>B</winner>"


def test_judge_oracle_swaps_positions_and_fills_an_antisymmetric_matrix():
    from metapo.eval.pairwise import PairwiseJudge
    from metapo.judges import JudgeClient, OpenAIHTTPBackend

    texts = ["abc def", "ABC", "abcdefgh", "ABC"]
    with ScriptedJudge(handler=_letters_judge) as server:

        async def main():
            client = JudgeClient(
                OpenAIHTTPBackend([server.url], timeout_s=10.0), model_id="s", max_concurrency=4
            )
            try:
                return await JudgeOracle(PairwiseJudge(client)).preferences("Write.", texts)
            finally:
                await client.aclose()

        matrix = asyncio.run(main())
        # 5 distinct pairs (the two identical texts are ½ without asking), each judged in both orders.
        assert len(server.requests) == 10
    expected = np.array([[0.5, 1, 0, 1], [0, 0.5, 0, 0.5], [1, 1, 0.5, 1], [0, 0.5, 0, 0.5]])
    np.testing.assert_allclose(matrix, expected)
    with ScriptedJudge(
        handler=lambda body: "<winner>A</winner>"
    ) as server:  # a judge that only sees position

        async def biased():
            client = JudgeClient(OpenAIHTTPBackend([server.url], timeout_s=10.0), model_id="s")
            try:
                return await JudgeOracle(PairwiseJudge(client)).preferences("Write.", texts[:3])
            finally:
                await client.aclose()

        np.testing.assert_allclose(asyncio.run(biased()), 0.5)


def test_rubric_and_rule_oracles_from_config(tmp_path):
    from metapo.judges import JudgeConfig
    from metapo.reward import RubricRewardConfig
    from metapo.tasks import get_task

    task = get_task("essay")
    rule = build_oracle(OracleConfig(kind="rule", pattern="x", temperature=1.0), task, tmp_path)
    m = asyncio.run(rule.preferences("p", ["xx", "x", "xx"]))
    assert m[0, 1] == pytest.approx(1 / (1 + np.exp(-1.0))) and m[0, 2] == 0.5
    np.testing.assert_allclose(m + m.T, 1.0)
    # The default scripted judge scores a text by its number of distinct words (at most 9).
    with ScriptedJudge() as server:
        config = OracleConfig(
            kind="rubric",
            judge=JudgeConfig(base_urls=[server.url], model="s"),
            temperature=1.0,
            reward=RubricRewardConfig(scoring="logprob"),
        )
        oracle = build_oracle(config, task, tmp_path)
        m = asyncio.run(oracle.preferences("Write an essay.", ["one two three four five", "one"]))
    assert m[0, 1] > 0.5 and m[0, 1] + m[1, 0] == pytest.approx(1.0)


def test_reward_model_oracle_scores_with_a_sequence_classifier(byte_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(byte_model, num_labels=1)
    rm.save_pretrained(path)
    AutoTokenizer.from_pretrained(byte_model).save_pretrained(path)
    oracle = build_oracle(OracleConfig(kind="reward_model", reward_model=str(path)), None, tmp_path)
    scores = asyncio.run(oracle.scores(PROMPTS[0], ["abc", "xyz", "abc"]))
    assert scores[0] == pytest.approx(scores[2]) and scores[0] != pytest.approx(scores[1])
    m = asyncio.run(oracle.preferences(PROMPTS[0], ["abc", "xyz"]))
    assert m[0, 1] == pytest.approx(1 / (1 + np.exp(-(scores[0] - scores[1]))))


# ----- config and CLI ------------------------------------------------------------------------------------------


def test_config_rejects_bad_settings():
    with pytest.raises(KeyError, match="known"):
        OnlineConfig(method="nash")
    with pytest.raises(ValueError, match="at least 2"):
        OnlineConfig(method="sppo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="no hyperparameter"):
        OnlineConfig(method="sppo", objective_kwargs={"eta": 1.0})
    with pytest.raises(ValueError, match="training.objective"):
        OnlineConfig(method="sppo", training={"objective": "dpo"})
    with pytest.raises(ValueError, match="pattern"):
        OracleConfig(kind="rule")


def test_cli_trains_one_round_and_reports_bad_input(byte_model, tmp_path, capsys):
    from metapo.cli import main

    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"method: online_dpo\nmodel: {byte_model}\noutput_dir: {out}\ntask: essay\nlimit: 4\nrounds: 1\n"
        "samples_per_prompt: 2\nmax_new_tokens: 6\nbackend: hf\nmax_length: 1024\n"
        "oracle: {kind: rule, pattern: '[a-z]'}\ntraining: {learning_rate: 0.001, num_train_epochs: 1}\n"
    )
    assert main(["train-online", "--config", str(config)]) == 0
    assert (out / "round-0001" / "config.json").is_file()
    assert "round 1" in capsys.readouterr().out
    assert main(["train-online", "--config", str(config), "oracle.kind=magic"]) == 2
    assert "oracle.kind='magic'" in capsys.readouterr().err
    assert main(["train-online", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train-online", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in METHODS)
