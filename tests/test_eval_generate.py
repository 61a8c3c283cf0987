"""Test-set generation (batched, resumable) and ranking accuracy with the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metapo.eval.generate import (
    STYLE_SUFFIXES,
    generate,
    render_prompt,
    repair_jsonl_tail,
    resolve_model,
    sample_batch,
)
from metapo.eval.ranking import evaluate_ranking, sequence_logprobs


class ListTask:
    """A minimal task: fixed rows with a gold column, as ``Task.load`` returns them."""

    name = "toy"
    max_completion_tokens = 6

    def __init__(self, n: int = 5) -> None:
        self.rows = [
            {
                "prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
                "task_input": f"what is {i} + {i}?",
                "gold_answer": str(2 * i),
            }
            for i in range(n)
        ]
        self.loads = 0

    def load(self, source: Any = None, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
        self.loads += 1
        return self.rows[:limit] if limit else list(self.rows)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_generate_writes_records_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    task = ListTask(5)
    summary = generate(tiny_model_dir, task, "test", out, temperature=0.0, batch_size=2, backend="hf")
    assert (summary.generated, summary.skipped, summary.backend) == (5, 0, "hf")
    records = _lines(out)
    assert [r["row"] for r in records] == [0, 1, 2, 3, 4]
    first = records[0]
    assert first["query"] == "what is 0 + 0?" and first["gold_answer"] == "0"
    assert first["prompt"][0]["role"] == "user" and first["model"] == tiny_model_dir.name
    assert first["generation"] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": 6,
        "seed": 42,
        "backend": "hf",
        "batch_size": 2,
        "prompt_suffix": None,
    }
    assert first["finish_reason"] in ("stop", "length") and 0 <= first["completion_tokens"] <= 6
    assert len({r["id"] for r in records}) == 5

    # Simulate a crash: two complete records lost and a torn line left behind.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:20])
    again = generate(tiny_model_dir, task, "test", out, temperature=0.0, batch_size=2, backend="hf")
    assert (again.generated, again.skipped) == (2, 3)
    resumed = _lines(out)
    assert sorted(r["row"] for r in resumed) == [0, 1, 2, 3, 4]
    # Greedy decoding: the regenerated rows equal the originals.
    by_row = {r["row"]: r["response"] for r in resumed}
    assert by_row == {r["row"]: r["response"] for r in records}

    # Nothing left to do: the model is not even loaded.
    assert generate(tiny_model_dir, task, "test", out, backend="hf").generated == 0
    # Different data behind the same file is refused.
    other = ListTask(5)
    other.rows[1]["task_input"] = "something else"
    with pytest.raises(ValueError, match="different data"):
        generate(tiny_model_dir, other, "test", out, backend="hf")


def test_near_greedy_default_and_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    summary = generate(tiny_model_dir, ListTask(5), "test", out, limit=3, max_new_tokens=4, backend="hf")
    assert summary.generated == 3
    record = _lines(out)[0]
    assert record["generation"]["temperature"] == 0.01 and record["generation"]["max_new_tokens"] == 4


def test_sample_batch_stops_at_eos_and_says_whether_it_ended(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = [tokenizer("a short prompt")["input_ids"], tokenizer("and a much longer second prompt here")["input_ids"]]
    free = sample_batch(model, tokenizer, ids, eos_ids=[], max_new_tokens=5, temperature=0.0, top_p=1.0, seed=0)
    assert [(ended, n) for _, ended, n in free] == [(False, 5), (False, 5)]
    # Declare a token of the greedy continuation an EOS: the text stops right before its first occurrence.
    enc = tokenizer.pad({"input_ids": ids[:1]}, return_tensors="pt")
    seq = model.generate(**enc, max_new_tokens=5, do_sample=False)[0, enc["input_ids"].shape[1] :].tolist()
    k = next((i for i in range(1, len(seq)) if seq[i] not in seq[:i]), 0)
    cut = sample_batch(model, tokenizer, ids[:1], eos_ids=[seq[k]], max_new_tokens=5, temperature=0.0, top_p=1.0, seed=0)
    assert cut == [(tokenizer.decode(seq[:k], skip_special_tokens=True), True, k)]


def test_render_prompt_appends_a_style_suffix_to_the_last_user_turn() -> None:
    class Plain:
        chat_template = None

    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert render_prompt(Plain(), messages, "Be brief.") == "S\n\nQ\n\nBe brief.\n\nA\n\n"
    assert messages[1]["content"] == "Q"  # the caller's prompt is not modified
    assert render_prompt(Plain(), "Q", STYLE_SUFFIXES["concise"]).startswith("Q\n\nAnswer as briefly")


def test_repair_jsonl_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_jsonl_tail(path) > 0 and path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b": 2\n')
    repair_jsonl_tail(path)
    assert path.read_text() == '{"a": 1}\n'
    assert repair_jsonl_tail(path) == 0


def test_resolve_model_finds_a_run_directorys_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    ckpts = run / "checkpoints"
    (ckpts / "checkpoint-5").mkdir(parents=True)
    (ckpts / "checkpoint-20").mkdir()
    (run / "config.yaml").write_text("task: essay\n")
    (ckpts / "checkpoint-20" / "config.json").write_text("{}")
    (ckpts / "checkpoint-5" / "config.json").write_text("{}")
    assert resolve_model(run) == (str(ckpts / "checkpoint-20"), "run-1")
    assert resolve_model(ckpts / "checkpoint-5") == (str(ckpts / "checkpoint-5"), "run-1@checkpoint-5")
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    assert resolve_model(run) == (str(run / "final"), "run-1")
    assert resolve_model(tiny_model_dir) == (str(tiny_model_dir), tiny_model_dir.name)
    with pytest.raises(FileNotFoundError):
        resolve_model(tmp_path)


# ----- ranking accuracy on the tiny model ---------------------------------------------------------------------
def _naive_logprob(model: Any, tokenizer: Any, prompt: list[dict[str, str]], response: str) -> float:
    """Sequence log-probability token by token, one unpadded sequence at a time."""
    import torch

    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    p_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for k, tok in enumerate(r_ids):
        total += torch.log_softmax(logits[len(p_ids) + k - 1], -1)[tok].item()
    return total


def test_ranking_accuracy_on_a_constructed_preference_set(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "Tell me about France."}]
    base = ["The capital of France is Paris.", "Water boils at 100 degrees.", "Good morning, everyone."]
    extra = " It is a good answer, and a long one too."
    for text in base:  # extending a response only adds tokens (the tokenization of the prefix is unchanged)
        short = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer(text + extra, add_special_tokens=False)["input_ids"][: len(short)] == short

    # A response is always more likely than itself plus more tokens: the answer is known without the model.
    rows = [{"prompt": prompt, "chosen": t, "rejected": t + extra} for t in base]
    rows.append({"prompt": prompt, "chosen": base[0] + extra, "rejected": base[0]})  # the one wrong pair
    report = evaluate_ranking((model, tokenizer), rows, batch_size=3)
    assert report.n == 4 and report.ranking_accuracy == 0.75

    # Batched, padded scoring agrees with the naive unpadded computation.
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    logps, counts = sequence_logprobs(model, tokenizer, [prompt] * len(responses), responses, batch_size=3)
    naive = [_naive_logprob(model, tokenizer, prompt, r) for r in responses]
    assert np.allclose(logps, naive, atol=1e-4)
    assert counts[0] == len(tokenizer(base[0], add_special_tokens=False)["input_ids"])

    # The policy as its own reference: the reference accuracy equals the policy's, and with rater
    # probabilities of 0.5 the idealised accuracy equals it too.
    rows = [{**r, "rater_prob": 0.5} for r in rows]
    report = evaluate_ranking((model, tokenizer), rows, reference=(model, tokenizer), beta=0.1)
    assert report.reference_ranking_accuracy == report.ranking_accuracy == 0.75
    assert report.idealised_ranking_accuracy == 0.75
    unanimous = [{**r, "rater_prob": 1.0} for r in rows]
    assert (
        evaluate_ranking(
            (model, tokenizer), unanimous, reference=(model, tokenizer)
        ).idealised_ranking_accuracy
        == 1.0
    )
