"""`metapo train-rm`, `score-rm`, `dpa-rsft` and `sft-recipe` on the command line, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metapo.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_train_then_score_from_the_command_line(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpm"
    code = main(
        [
            "train-rm",
            "--config",
            str(EXAMPLES / "rm_gpm.yaml"),
            f"model_name_or_path={tiny_model_dir}",
            f"output_dir={out}",
            "max_steps=2",
            "disable_tqdm=true",
        ]
    )
    assert code == 0 and (out / "metapo_rm.json").exists()
    capsys.readouterr()
    code = main(
        ["score-rm", "--model", str(out), "--prompt", "Pick one.", "--responses", "Rock.", "Paper.", "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "gpm" and len(result["rewards"]) == 2
    p = result["preference"]
    assert p[0][1] + p[1][0] == pytest.approx(1.0, abs=1e-6) and p[0][0] is None
    # DPA needs a vector model: a GPM is refused in one line, before anything runs.
    assert main(["dpa-rsft", f"reward_model={out}", f"output_dir={tmp_path / 'dpa'}"]) == 2
    assert "is a gpm model; DPA needs a vector one" in capsys.readouterr().err
    assert not (tmp_path / "dpa").exists()


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["train-rm", "kind=banana"], "kind='banana'"),
        (["train-rm", "gpm_dim=3", "kind=gpm"], "gpm_dim"),
        (["train-rm", "no_such_setting=1"], "unknown setting(s) no_such_setting"),
        (["train-rm", "--config", "/nonexistent/rm.yaml"], "/nonexistent/rm.yaml"),
        (["score-rm", "--model", "/nonexistent", "--prompt", "p", "--responses", "a"], "/nonexistent"),
        (["dpa-rsft", "rounds=0"], "rounds"),
        (["sft-recipe", "lr_divisor=0"], "lr_divisor"),
        (["sft-recipe", "sft.learning_rate=1"], "sft.learning_rate"),
        (["sft-recipe", "lr_divisor=abc"], "lr_divisor='abc' is not valid"),
        (["train-rm", "learning_rate=fast"], "learning_rate='fast' is not valid"),
        (
            [
                "score-rm",
                "--model",
                "/nonexistent",
                "--prompt",
                "p",
                "--responses",
                "a",
                "--direction",
                "x,1",
            ],
            "/nonexistent",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_culprit(argv: list[str], culprit: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and culprit in errors[0] and "Traceback" not in err
