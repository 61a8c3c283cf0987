"""Class 2 of the hardening issue: the whole config is type-checked before anything is written, YAML loading is
bounded, and a run that fails at start-up leaves nothing that blocks the corrected command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import metapo.config
from metapo.cli import main
from metapo.config import ConfigError, from_dict, load_yaml, load_yaml_text, parse_overrides
from metapo.train.config import RunConfig
from tests.scripted_judge import ScriptedJudge

UNREACHABLE = "http://127.0.0.1:9/v1"

# (settings merged into a valid config, what the error must say)
BAD_TYPES: dict[str, tuple[dict[str, Any], str]] = {
    "section-is-a-number": ({"judge": 5}, "judge=5 is not valid: expected a mapping of JudgeConfig settings"),
    "section-is-null": ({"mpo": None}, "mpo=None is not valid: expected a mapping of MetaConfig settings"),
    "optional-section-is-a-list": ({"meta_judge": [1]}, "meta_judge=[1] is not valid"),
    "limit-all": ({"limit": "all"}, "limit='all' is not valid: expected an integer or null"),
    "nested-int-as-word": ({"mpo": {"interval": "ten"}}, "mpo.interval='ten' is not valid"),
    "bool-for-int": ({"seed": True}, "seed=True is not valid: expected an integer"),
    "float-for-int": ({"reward": {"max_judge_chars": 1.5}}, "reward.max_judge_chars=1.5"),
    "nan-timeout": (
        {"judge": {"timeout_s": float("nan")}},
        "judge.timeout_s=nan is not valid: expected a finite",
    ),
    "infinite-timeout": ({"judge": {"timeout_s": float("inf")}}, "judge.timeout_s=inf"),
    "word-for-rank": ({"lora": {"r": "8x"}}, "lora.r='8x' is not valid"),
    "list-for-mapping": ({"task_options": ["a"]}, "task_options=['a'] is not valid: expected a mapping"),
    "number-for-url-list": ({"judge": {"base_urls": 5}}, "judge.base_urls=5 is not valid"),
    "numbers-in-url-list": ({"judge": {"base_urls": [1, 2]}}, "judge.base_urls=[1, 2] is not valid"),
    "unknown-literal": ({"mpo": {"mode": "mergee"}}, "mpo.mode='mergee' is not valid: expected one of"),
    "acceptance-is-a-number": (
        {"mpo": {"acceptance": 5}},
        "mpo.acceptance=5 is not valid: expected a mapping of AcceptanceConfig settings",
    ),
    "acceptance-word-for-number": (
        {"mpo": {"acceptance": {"canary_max": "low"}}},
        "mpo.acceptance.canary_max='low' is not valid",
    ),
    "acceptance-out-of-range": (
        {"mpo": {"acceptance": {"exemplar_drop": 1.5}}},
        "mpo.acceptance.exemplar_drop=1.5; choose a value in [0, 1]",
    ),
    "acceptance-typo": ({"mpo": {"acceptance": {"canary_maxx": 0.4}}}, "canary_maxx"),
    "acceptance-missing-exemplars": (
        {"mpo": {"acceptance": {"exemplars": "/nonexistent/exemplars.jsonl"}}},
        "mpo.acceptance.exemplars file /nonexistent/exemplars.jsonl does not exist",
    ),
    "saturated-std-out-of-range": ({"mpo": {"saturated_std": 2}}, "mpo.saturated_std=2"),
    "number-for-string": ({"model": 123}, "model=123 is not valid: expected a string"),
    "training-not-a-mapping": ({"training": 5}, "training=5 is not valid: expected a mapping"),
    "training-value": ({"training": {"max_steps": "many"}}, "training.max_steps='many' is not valid"),
    "training-typo": (
        {"training": {"lerning_rate": 0.1}},
        "training.lerning_rate is not a GRPOConfig setting",
    ),
    "url-with-credentials": (
        {"judge": {"base_urls": ["https://user:sk-hidden-1@host/v1"]}},
        "judge base URL must not hold credentials",
    ),
    "key-pasted-as-its-name": ({"judge": {"api_key_env": "sk-hidden-2.x"}}, "api_key_env must be the NAME"),
    "key-pasted-as-a-list": ({"judge": {"api_key_env": ["sk-hidden-3"]}}, "judge.api_key_env=<not shown>"),
}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("case", sorted(BAD_TYPES))
def test_a_wrong_type_stops_the_run_before_anything_is_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, message = BAD_TYPES[case]
    config = {"output_dir": str(tmp_path / "run"), "judge": {"model": "j", "base_urls": [UNREACHABLE]}}
    config.update(bad)
    assert main(["train", "--config", str(_write(tmp_path, config))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "sk-hidden" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mpo.interval=ten", "mpo.interval='ten'"),
        ("limit=all", "limit='all'"),
        ("judge=5", "judge=5"),
        ("judge.max_attempts=2.5", "judge.max_attempts=2.5"),
        ("reward.scoring=[logprob]", "reward.scoring=['logprob']"),
    ],
)
def test_a_wrong_type_on_the_command_line(override: str, message: str, tmp_path: Path, capsys) -> None:
    assert main(["train", "--output-dir", str(tmp_path / "run"), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_lossless_conversions_are_kept() -> None:
    cfg = from_dict(
        RunConfig,
        {
            "judge": {"base_urls": "http://a:1/v1, http://b:2/v1", "timeout_s": 30},
            "mpo": {"interval": 3},
            "lora": {"target_modules": ["q_proj", "v_proj"], "dropout": "5e-2"},
        },
    )
    assert cfg.judge.base_urls == ["http://a:1/v1", "http://b:2/v1"]
    assert cfg.judge.timeout_s == 30.0 and isinstance(cfg.judge.timeout_s, float)
    assert (
        cfg.lora is not None and cfg.lora.dropout == 0.05 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    )


def test_preference_settings_are_type_checked_too() -> None:
    from metapo.train.preference_cli import build_config

    with pytest.raises(ConfigError, match="learning_rate='fast' is not valid"):
        build_config(None, ["learning_rate=fast"])
    with pytest.raises(ConfigError, match="max_steps=2.5 is not valid: expected an integer"):
        build_config(None, ["max_steps=2.5"])
    _, training, _ = build_config(None, ["learning_rate=1e-5", "output_dir=/tmp/unused"])
    assert training.learning_rate == 1e-5


# ----- bounded YAML ------------------------------------------------------------------------------------
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)

BAD_YAML = {
    "alias-bomb": (ALIAS_BOMB, "aliases expand to more than"),
    "recursive-alias": ("a: &a [x, *a]\n", "refers to a node that contains it"),
    "deep-nesting": ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    "not-yaml": ("a: [unclosed\n", "is not valid YAML"),
    "tab-indent": ("a:\n\tb: 1\n", "is not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_hostile_yaml_is_refused_not_expanded(case: str, tmp_path: Path, capsys) -> None:
    text, message = BAD_YAML[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)
    assert main(["train", "--config", str(path), f"output_dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_alias_bomb_in_an_override_or_a_task_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="aliases expand"):
        parse_overrides(["task_options=" + "{" + ALIAS_BOMB.replace("\n", ", ") + "}"])
    task = tmp_path / "task.yaml"
    task.write_text(ALIAS_BOMB)
    from metapo.tasks import get_task
    from metapo.tasks.yaml_task import TaskSpecError

    with pytest.raises(TaskSpecError, match="aliases expand"):
        get_task(str(task))


def test_honest_aliases_still_work() -> None:
    data = load_yaml_text("base: &b {lr: 1, steps: 2}\nrun: {<<: *b, steps: 3}\n", "x")
    assert data["run"] == {"lr": 1, "steps": 3}


def test_an_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metapo.config, "MAX_YAML_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(ConfigError, match="is larger than"):
        load_yaml(path)


# ----- a failed start leaves nothing behind ---------------------------------------------------------------
def _run_config(tmp_path: Path, model: Path, judge_url: str, **extra: Any) -> Path:
    config: dict[str, Any] = {
        "model": str(model),
        "task": "essay",
        "limit": 8,
        "output_dir": str(tmp_path / "out" / "run"),
        "judge": {"model": "scripted", "base_urls": [judge_url], "max_attempts": 1, "timeout_s": 5},
        "reward": {"max_consecutive_failures": 2},
        "mpo": {"interval": 0},
        "training": {
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "num_generations": 2,
            "max_completion_length": 8,
            "disable_tqdm": True,
        },
    }
    config.update(extra)
    return _write(tmp_path, config)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["bad-initial-rubric", "judge-down-from-the-start"])
def test_the_corrected_command_just_runs(
    failure: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("a file of the user's, next to the run")
    with ScriptedJudge() as judge:
        if failure == "bad-initial-rubric":
            bad = _run_config(tmp_path, tiny_model_dir, judge.url, initial_rubric=str(tmp_path))
            expected = 2
        else:
            bad = _run_config(tmp_path, tiny_model_dir, UNREACHABLE)
            expected = 1
        assert main(["train", "--config", str(bad)]) == expected
        capsys.readouterr()
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # nothing of the failed run is left

        fixed = _run_config(tmp_path, tiny_model_dir, judge.url)
        assert main(["train", "--config", str(fixed)]) == 0, capsys.readouterr().err
    assert (out / "run" / "config.yaml").exists() and (out / "run" / "final").is_dir()
    assert (out / "mine.txt").read_text() == "a file of the user's, next to the run"
