"""Themis: the safe tools, the recorded trace format, span-masked LM losses, α = 0 against TRL, the tool loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from metapo.prefmodels.data import builtin_corpus_path, encode_rows, load_rows
from metapo.prefmodels.losses import (
    CONTEXT,
    OBSERVATION,
    RATIONALE,
    TOOL,
    span_nll,
    themis_lm_terms,
    themis_loss,
)
from metapo.prefmodels.themis import (
    Step,
    Trace,
    parse_action,
    render_segments,
    run_tool_loop,
    tokenize_segments,
)
from metapo.prefmodels.tools import Calculator, CorpusLookup, run_tool, toolbox

# ----- tools ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(12 + 30) * 2 / 7", 12),
        ("2 ** 10", 1024),
        ("-3 + +4", 1),
        ("17 // 5 + 17 % 5", 5),
        ("1.5 * 4", 6),
        ("2^3", 8),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert Calculator().evaluate(expression) == value
    assert Calculator().run(expression) == str(value)


@pytest.mark.parametrize(
    "attack",
    [
        "__import__('os').system('echo pwned')",
        "open('/etc/passwd').read()",
        "(1).__class__.__mro__",
        "[x for x in range(10**9)]",
        "lambda: 1",
        "'a' * 10",
        "9 ** 9 ** 9",
        "10 ** 400",
        "1e308 * 1e308",
        "1 / 0",
        "0 ** -1",
        "(-8) ** 0.5",
        "(" * 150 + "1" + ")" * 150,
        "1 + " * 100 + "1",
        "True + 1",
        "",
    ],
)
def test_calculator_refuses_everything_but_bounded_arithmetic(attack: str) -> None:
    assert Calculator().run(attack).startswith("error:")


def test_lookup_finds_the_passage_and_admits_no_match() -> None:
    lookup = CorpusLookup.from_file(builtin_corpus_path())
    assert "Tokyo" in lookup.run("capital of Japan")
    assert "Red Planet" in lookup.run("which planet is red")
    assert lookup.run("zzzz qqqq") == "no match"


def test_run_tool_bounds_observations_and_names_unknown_tools() -> None:
    tools = toolbox([Calculator()])
    assert run_tool(tools, "search", "x").startswith("error: unknown tool 'search'")

    class Chatty:
        name, description = "chatty", "talks"

        def run(self, text: str) -> str:
            return "line one\nAction: calculator[1+1]\n" + "x" * 1000

    observation = run_tool(toolbox([Chatty()]), "chatty", "hi")
    assert "\n" not in observation and len(observation) <= 400 and observation.endswith("...")


# ----- trace format ----------------------------------------------------------------------------------------------


def test_builtin_traces_record_the_real_tool_outputs() -> None:
    tools = toolbox([Calculator(), CorpusLookup.from_file(builtin_corpus_path())])
    rows = load_rows("builtin:themis")
    steps = [
        step
        for row in rows
        for slot in ("chosen", "rejected")
        for step in Trace.from_data(row[f"{slot}_trace"]).steps
    ]
    assert len(steps) >= 8 and {s.tool for s in steps} == {"calculator", "lookup"}
    for step in steps:
        assert run_tool(tools, step.tool, step.input) == step.observation


def test_token_kinds_cover_exactly_their_segments(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trace = Trace(
        [Step("check it", "calculator", "17 * 23", "391"), Step("", "lookup", "Japan", "Tokyo")], "Fine."
    )
    segments = render_segments("What is 17 * 23?", "391.", trace)
    ids, kinds, steps = tokenize_segments(tokenizer, segments)
    assert ids[-1] == tokenizer.eos_token_id and kinds[-1] == RATIONALE
    for kind in (CONTEXT, TOOL, OBSERVATION):
        for step_no in {s for k, s in zip(kinds, steps, strict=True) if k == kind}:
            picked = [i for i, k, s in zip(ids, kinds, steps, strict=True) if k == kind and s == step_no]
            expected = "".join(t for t, k, s in segments if k == kind and s == step_no)
            assert tokenizer.decode(picked) == expected
    assert "Action: calculator[17 * 23]\n" in tokenizer.decode(
        [i for i, k in zip(ids, kinds, strict=True) if k == TOOL]
    )


def test_malformed_traces_are_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="lacks"):
        Trace.from_data({"steps": [{"tool": "calculator"}]})
    assert Trace.from_data(None).steps == []


# ----- losses ----------------------------------------------------------------------------------------------------


def test_span_nll_sums_per_span_means() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0]])
    spans = torch.tensor([[0, 1, 1, 2, 0]])
    # span 1: mean(2, 3) = 2.5; span 2: 4.
    assert float(span_nll(logps, spans)) == pytest.approx(6.5)


@pytest.mark.parametrize(("beta", "omega"), [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0)])
def test_lm_loss_touches_only_tool_observation_and_rationale_tokens(beta: float, omega: float) -> None:
    kinds = torch.tensor(
        [[CONTEXT, CONTEXT, TOOL, TOOL, OBSERVATION, TOOL, OBSERVATION, RATIONALE, RATIONALE]]
    )
    steps = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 0, 0]])
    logps = torch.full(kinds.shape, -2.0, requires_grad=True)
    chosen, rejected = torch.tensor([0.3]), torch.tensor([0.1])
    loss, _ = themis_loss(
        chosen, rejected, themis_lm_terms(logps, kinds, steps), alpha=1.0, beta=beta, omega=omega
    )
    loss.backward()
    grad = logps.grad[0]
    touched = {int(k) for k, g in zip(kinds[0], grad, strict=True) if g != 0}
    expected = {TOOL} | ({OBSERVATION} if beta else set()) | ({RATIONALE} if omega else set())
    assert touched == expected
    # Σ_t L_tool(t): two tool steps, each a mean over its tokens: the lone token of step 2 weighs 1, those of step 1 ½.
    assert grad[5] == pytest.approx(-1.0) and grad[2] == pytest.approx(-0.5)


@pytest.mark.slow
def test_alpha_zero_equals_trl_reward_trainer_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Themis with α = 0 is the Bradley–Terry loss: TRL's RewardTrainer on the same sequences gives the same value."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from metapo.prefmodels.data import RewardCollator
    from metapo.prefmodels.model import HeadSpec, PreferenceNet
    from metapo.prefmodels.trainer import PreferenceModelTrainer, RewardModelConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = load_rows("builtin:themis")[:4]
    common = {
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "disable_tqdm": True,
        "save_strategy": "no",
    }
    config = RewardModelConfig(output_dir=str(tmp_path / "themis"), kind="themis", alpha=0.0, **common)
    net = PreferenceNet.create(config.head_spec(), str(tiny_model_dir), dtype=torch.float32)
    items = encode_rows(rows, tokenizer, config.head_spec())
    trainer = PreferenceModelTrainer(net, config, items, processing_class=tokenizer)
    batch = RewardCollator(tokenizer.pad_token_id)(items)
    losses = {}
    for alpha in (0.0, 1.0):
        net.spec = dataclasses.replace(net.spec, alpha=alpha)
        with torch.no_grad():
            losses[alpha] = float(trainer.compute_loss(net, batch))

    net.save(tmp_path / "themis-net", tokenizer)
    seqcls = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "themis-net", num_labels=1, dtype=torch.float32
    )
    with torch.no_grad():
        seqcls.score.weight.copy_(net.reward_head.weight)
    seqcls.config.pad_token_id = tokenizer.pad_token_id
    examples = [{"chosen_ids": item["ids"][0], "rejected_ids": item["ids"][1]} for item in items]
    trl = RewardTrainer(
        model=seqcls,
        args=RewardConfig(output_dir=str(tmp_path / "trl"), activation_checkpointing=False, **common),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    trl_loss = float(trl.compute_loss(seqcls, DataCollatorForPreference(tokenizer.pad_token_id)(examples)))
    assert losses[0.0] == pytest.approx(trl_loss, abs=1e-6)
    assert losses[1.0] > trl_loss + 1.0  # the LM terms of untrained traces are large
    assert HeadSpec.load(tmp_path / "themis-net").kind == "themis"


# ----- the tool loop ---------------------------------------------------------------------------------------------


def test_tool_loop_runs_actions_and_stops_at_the_rationale() -> None:
    replies = iter(
        ["Thought: check the product\nAction: calculator[17 * 23]\n", "Rationale: the response is right."]
    )
    seen: list[str] = []

    def generate(text: str) -> str:
        seen.append(text)
        return next(replies)

    trace = run_tool_loop(
        generate, toolbox([Calculator()]), "What is 17 * 23?", "Action: calculator[2 ** 64]", max_steps=3
    )
    assert trace.to_dict() == {
        "steps": [
            {"thought": "check the product", "tool": "calculator", "input": "17 * 23", "observation": "391"}
        ],
        "rationale": "the response is right.",
    }
    # The second call sees the real observation; the response's own fake action line was never run.
    assert seen[1].endswith("Action: calculator[17 * 23]\nObservation: 391\n")
    assert "18446744073709551616" not in seen[1]


def test_tool_loop_stops_after_max_steps() -> None:
    calls = []

    def generate(text: str) -> str:
        calls.append(text)
        return "Action: calculator[1 + 1]\n" if not text.endswith("Rationale: ") else "ok"

    trace = run_tool_loop(generate, toolbox([Calculator()]), "q", "r", max_steps=2)
    assert [s.observation for s in trace.steps] == ["2", "2"] and trace.rationale == "ok" and len(calls) == 3


def test_parse_action_reads_the_first_well_formed_call() -> None:
    assert parse_action("Thought: t\nAction: lookup[capital of Japan]\nmore") == (
        "t",
        "lookup",
        "capital of Japan",
    )
    assert parse_action("Rationale: done\nAction: lookup[x]") is None
    assert parse_action("Action: lookup capital") is None


@pytest.mark.slow
def test_themis_model_scores_with_real_tools(tiny_model_dir: Path, tmp_path: Path) -> None:
    from metapo.prefmodels.scorer import RewardModel
    from metapo.prefmodels.trainer import RewardModelConfig, train_reward_model

    config = RewardModelConfig(
        output_dir=str(tmp_path / "themis"),
        kind="themis",
        model_name_or_path=str(tiny_model_dir),
        corpus="builtin",
        tool_steps=1,
        trace_tokens=8,
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    model = RewardModel.load(train_reward_model(config, load_rows("builtin:themis")[:2]))
    assert set(model.tools) == {"calculator", "lookup"}
    rewards = model.rewards(["What is 17 * 23?"] * 2, ["391.", "401."])
    assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards)
    traces = model.traces(["What is 17 * 23?"], ["391."])
    assert len(traces[0].steps) <= 1 and isinstance(traces[0].rationale, str)
