"""Class 1 of the hardening issue: every CLI error is one line naming the culprit, with no traceback.

Each case is a careless or hostile invocation of a subcommand: a directory or a binary file where a file is
expected, a missing file, a file where a directory is expected, an unwritable location, an unknown version or
lineage. Most cases run in-process through ``metapo.cli.main`` (fast); a few run the real console entry in a
subprocess, since only there a traceback would reach the terminal unfiltered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metapo.cli import build_parser, main
from metapo.rubric import Rubric, RubricStore

REPO = Path(__file__).resolve().parents[1]

# (argv with {placeholders}, what the single error line must name)
CASES: dict[str, tuple[str, str]] = {
    # train
    "train-config-is-dir": ("train --config {dir}", "config file {dir} is a directory"),
    "train-config-is-binary": ("train --config {binary}", "config file {binary} is not UTF-8 text"),
    "train-config-missing": ("train --config {missing}", "config file {missing} does not exist"),
    "train-config-is-a-list": ("train --config {list_yaml}", "must hold a mapping"),
    "train-output-dir-is-file": ("train --output-dir {text} model={missing}", "output_dir {text} is a file"),
    "train-output-dir-unwritable": (
        "train --output-dir {text}/sub",
        "output_dir {text}/sub cannot be created",
    ),
    "train-resume-nothing": ("train --resume --output-dir {dir}/none", "config.yaml does not exist"),
    "train-model-missing-path": (
        "train --output-dir {dir}/r model={missing}",
        "model {missing} does not exist",
    ),
    "train-unknown-task": ("train --output-dir {dir}/r task=nope", "unknown task 'nope'"),
    "train-initial-rubric-is-dir": (
        "train --output-dir {dir}/r judge.model=j initial_rubric={dir}",
        "initial_rubric file {dir} is a directory",
    ),
    "train-bad-override": ("train judge.base_urls=[unclosed", "override judge.base_urls is not valid YAML"),
    "train-empty-override-key": ("train =5", "has an empty key"),
    "train-training-typo": (
        "train --output-dir {dir}/r training.lerning_rate=0.1",
        "did you mean training.learning_rate",
    ),
    # train-pref
    "pref-config-missing": ("train-pref --config {missing}", "config file {missing} does not exist"),
    "pref-config-is-dir": ("train-pref --config {dir}", "config file {dir} is a directory"),
    "pref-config-is-binary": ("train-pref --config {binary}", "is not UTF-8 text"),
    "pref-bad-value": ("train-pref learning_rate=abc", "learning_rate='abc' is not valid"),
    "pref-unknown-objective": (
        "train-pref objective=nope model_name_or_path=tiny",
        "unknown objective 'nope'",
    ),
    "pref-dataset-missing": (
        "train-pref model_name_or_path=tiny dataset_name={missing}.jsonl",
        "does not exist",
    ),
    # build-pref
    "build-pref-config-is-dir": ("build-pref rso --config {dir}", "config file {dir} is a directory"),
    "build-pref-alias-bomb": ("build-pref rso --config {bomb}", "aliases expand to more than"),
    "build-pref-bad-option": ("build-pref rso options.beta=abc", "options.beta='abc' is not valid"),
    "build-pref-no-method": ("build-pref", "the following arguments are required: METHOD"),
    # train-online
    "online-config-missing": ("train-online --config {missing}", "config file {missing} does not exist"),
    "online-config-is-dir": ("train-online --config {dir}", "config file {dir} is a directory"),
    "online-bad-rounds": ("train-online rounds=abc", "rounds='abc' is not valid"),
    "online-unknown-method": ("train-online method=nope", "unknown online method 'nope'"),
    # serve-reward
    "serve-config-missing": ("serve-reward --config {missing}", "config file {missing} does not exist"),
    "serve-config-is-dir": ("serve-reward --config {dir}", "config file {dir} is a directory"),
    "serve-unknown-setting": ("serve-reward service.prot=1", "unknown setting(s) service.prot"),
    "serve-bad-port": ("serve-reward --port 70000", "service.port=70000; choose 0..65535"),
    "serve-bad-limit": ("serve-reward service.max_batch=0", "service.max_batch=0; it must be >= 1"),
    "serve-token-env-not-a-name": (
        "serve-reward service.token_env=my-token",
        "service.token_env='my-token' is not an environment variable name",
    ),
    "serve-token-env-unset": (
        "serve-reward service.token_env=METAPO_TEST_SURELY_UNSET_TOKEN",
        "names METAPO_TEST_SURELY_UNSET_TOKEN, which is unset or empty",
    ),
    "serve-unknown-task": ("serve-reward --port 0 --output-dir {dir}/r task=nope", "unknown task 'nope'"),
    "serve-output-dir-is-file": ("serve-reward --port 0 --output-dir {text}", "output_dir {text} is a file"),
    "serve-output-dir-unwritable": (
        "serve-reward --port 0 --output-dir {text}/sub",
        "output_dir {text}/sub cannot be created",
    ),
    "serve-training-run-dir": ("serve-reward --port 0 --output-dir {trained}", "holds a training run"),
    "serve-bad-host": ("serve-reward --host no-such-host.invalid", "service.host='no-such-host.invalid' cannot be resolved"),
    # rubric
    "rubric-show-unknown-version": ("rubric show {run} --version 99", "has no version 99; available: [0, 1]"),
    "rubric-show-unknown-lineage": ("rubric show {run} --lineage nope", "no rubric lineage 'nope'"),
    "rubric-show-missing-run": ("rubric show {missing}", "run directory {missing} does not exist"),
    "rubric-show-file-as-run": ("rubric show {text}", "run directory {text} is a file"),
    "rubric-show-not-a-run": ("rubric show {dir}", "has no rubric history"),
    "rubric-show-corrupt-version": (
        "rubric show {broken_run}",
        "v0001.json is not a readable rubric version",
    ),
    "rubric-diff-unknown-version": ("rubric diff {run} 0 99", "has no version 99"),
    "rubric-diff-unknown-lineage": ("rubric diff {run} --lineage nope", "no rubric lineage 'nope'"),
    "rubric-validate-dir": ("rubric validate {dir}", "rubric file {dir} is a directory"),
    "rubric-validate-binary": ("rubric validate {binary}", "rubric file {binary} is not UTF-8 text"),
    "rubric-validate-missing": ("rubric validate {missing}", "rubric file {missing} does not exist"),
    "rubric-validate-bad-int": ("rubric validate {text} --max-items many", "invalid int value: 'many'"),
    # eval and generate
    "eval-generations-dir": (
        "eval --task essay --generations {dir}",
        "generations file {dir} is a directory",
    ),
    "eval-generations-missing": (
        "eval --task essay --generations {missing}",
        "generations file {missing} does not",
    ),
    "eval-generations-binary": (
        "eval --task essay --generations {binary}",
        "{binary} holds no generation records",
    ),
    "eval-out-is-dir": (
        "eval --task essay --generations {generations} --out {dir}",
        "--out {dir} is a directory",
    ),
    "eval-out-unwritable": (
        "eval --task essay --generations {generations} --out {text}/x.json",
        "{text} is a file",
    ),
    "eval-judge-config-dir": (
        "eval --task essay --generations {generations} --judge-config {dir}",
        "config file {dir} is a directory",
    ),
    "eval-lc-gamed-spec": ("eval --task essay --generations {generations} --lc-gamed verbose", "NAME=FILE"),
    "generate-model-missing": ("generate --model {missing} --task essay", "--model {missing} does not exist"),
    "generate-out-is-dir": ("generate --model {dir} --task essay --out {dir}", "--out {dir} is a directory"),
    # report, serve-judge, models, demo, and commands that take no files
    "report-missing-run": ("report {missing}", "run directory {missing} does not exist"),
    "report-file-as-run": ("report {text}", "run directory {text} is a file"),
    "report-out-dir-is-file": ("report {run} --out-dir {text}", "--out-dir {text} is a file"),
    "serve-judge-missing-gguf": ("serve-judge --gguf {missing}.gguf", "{missing}.gguf"),
    "models-unknown": ("models prepare nope", "unknown embedded model 'nope'"),
    "demo-bad-override": ("demo --preset quick mpo.interval=ten", "mpo.interval='ten' is not valid"),
    "tasks-unknown-option": ("tasks --verbose", "unrecognized arguments: --verbose"),
    "objectives-bad-format": ("objectives --format yaml", "invalid choice: 'yaml'"),
    # reward and preference models
    "train-rm-config-is-dir": ("train-rm --config {dir}", "config file {dir} is a directory"),
    "train-rm-config-is-binary": ("train-rm --config {binary}", "is not UTF-8 text"),
    "train-rm-bad-value": ("train-rm learning_rate=abc", "learning_rate='abc' is not valid"),
    "train-rm-dataset-missing": (
        "train-rm model_name_or_path=tiny dataset_name={missing}.jsonl output_dir={dir}/rm",
        "{missing}.jsonl does not exist",
    ),
    "score-rm-model-is-file": (
        "score-rm --model {text} --prompt p --responses a",
        "--model {text} is not a directory",
    ),
    "score-rm-not-a-model": ("score-rm --model {dir} --prompt p --responses a", "holds no metapo_rm.json"),
    "dpa-rsft-config-missing": ("dpa-rsft --config {missing}", "config file {missing} does not exist"),
    "dpa-rsft-no-reward-model": ("dpa-rsft output_dir={dir}/dpa", "set reward_model"),
    "sft-recipe-bad-value": ("sft-recipe lr_divisor=abc", "lr_divisor='abc' is not valid"),
    "sft-recipe-alias-bomb": ("sft-recipe --config {bomb}", "aliases expand to more than"),
    # hack-repair benchmark
    "hackbench-data-missing": ("hackbench --data {missing}", "hack set {missing} does not exist"),
    "hackbench-data-is-dir": ("hackbench --data {dir}", "hack set {dir} is a directory"),
    "hackbench-data-binary": ("hackbench --data {binary}", "hack set {binary} is not UTF-8 text"),
    "hackbench-data-not-jsonl": ("hackbench --data {text}", "{text} line 1: not valid JSON"),
    "hackbench-no-judge": ("hackbench --prompts 3", "hackbench needs --judge"),
    "hackbench-judge-missing": ("hackbench --judge {missing}.yaml", "judge config {missing}.yaml does not exist"),
    "hackbench-one-prompt": ("hackbench --judge embedded --prompts 1", "--prompts 1: use at least 2"),
    "hackbench-unknown-family": ("hackbench --judge embedded --families nope", "--families nope not in the hack set"),
    "hackbench-unknown-window-family": (
        "hackbench --judge embedded --window-families nope",
        "--window-families nope not in the hack set",
    ),
    "hackbench-bad-seeds": ("hackbench --judge embedded --seeds a,b", "--seeds 'a,b': give comma-separated integers"),
    "hackbench-no-builtin-set": ("hackbench --judge embedded --task ethics", "no built-in hack set for task 'ethics'"),
    "hackbench-run-dir-missing": ("hackbench --run-dir {missing}", "--run-dir {missing} does not exist"),
    "hackbench-bad-override": ("hackbench --judge embedded training.lr=1", "only mpo.* and reward.* settings"),
    "hackbench-mpo-typo": ("hackbench --judge embedded mpo.sampels=2", "unknown setting(s) mpo.sampels"),
    "hackbench-out-is-file": ("hackbench --judge embedded --out {text}", "--out {text} is a file"),
    "hackbench-bad-steps": ("hackbench --judge embedded --steps 0", "steps >= 1"),
}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Paths the cases refer to: a directory, a binary file, a text file, a run with two versions, ..."""
    run = tmp_path / "run"
    store = RubricStore(run / "rubrics")
    store.add(Rubric.single("Quality", "How good it is."))
    store.add(Rubric.single("Quality", "Stricter wording."), parents=(0,), creator="meta-step", step=2)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    list_yaml = tmp_path / "list.yaml"
    list_yaml.write_text("- a\n- b\n")
    generations = tmp_path / "gen.jsonl"
    generations.write_text('{"id": "1", "row": 0, "model": "m", "response": "hi"}\n')
    (tmp_path / "empty").mkdir()
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.yaml").write_text("task: essay\n")
    broken = tmp_path / "broken"
    RubricStore(broken / "rubrics").add(Rubric.single("Quality", "How good it is."))
    (broken / "rubrics" / "default" / "v0001.json").write_text('{"version": 1, "lineage": "default", "rub')
    return {
        "bomb": str(bomb),
        "broken_run": str(broken),
        "dir": str(tmp_path / "empty"),
        "binary": str(binary),
        "text": str(text),
        "missing": str(tmp_path / "missing"),
        "list_yaml": str(list_yaml),
        "run": str(run),
        "generations": str(generations),
        "trained": str(trained),
    }


def _assert_one_error_line(err: str, culprit: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert culprit in lines[0], err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line(
    case: str, inputs: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, culprit = CASES[case]
    monkeypatch.chdir(
        inputs["dir"]
    )  # commands that default to writing in the working directory write nowhere
    args = argv.format(**inputs).split()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out = capsys.readouterr()
    assert code == 2, (code, out)
    _assert_one_error_line(out.err, culprit.format(**inputs))
    assert not os.listdir(inputs["dir"]) or case.startswith("train-output-dir"), os.listdir(inputs["dir"])


def test_every_subcommand_has_a_case() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    covered = {argv.split()[0] for argv, _ in CASES.values()}
    assert set(commands) <= covered, set(commands) - covered


def test_an_unexpected_failure_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug (not bad input) still prints one line, exits 1 and says where the traceback is."""

    def broken(args: object) -> int:
        raise RuntimeError("something\ninside broke")

    from metapo.train import cli as train_cli

    monkeypatch.setattr(train_cli, "_tasks", broken)
    assert main(["tasks"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: RuntimeError: something inside broke (run with --log-level DEBUG to see the traceback)\n"
    )


SUBPROCESS_CASES = {
    "rubric-show-unknown-version": ("rubric show {run} --version 99", "has no version 99"),
    "train-config-is-dir": ("train --config {dir}/", "is a directory"),
    "train-pref-config-missing": ("train-pref --config {missing}", "does not exist"),
    "report-out-dir-unwritable": (
        "report {run} --out-dir {text}/sub",
        "--out-dir {text}/sub cannot be created",
    ),
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_the_console_entry_prints_no_traceback(case: str, inputs: dict[str, str]) -> None:
    argv, culprit = SUBPROCESS_CASES[case]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "metapo.cli", *argv.format(**inputs).split()],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=inputs["dir"],
    )
    assert done.returncode == 2, done
    _assert_one_error_line(done.stderr, culprit.format(**inputs))


def test_serve_reward_on_a_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve-reward", "--port", str(port), "--output-dir", str(tmp_path / "r")])
    assert code == 2
    _assert_one_error_line(capsys.readouterr().err, f"cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "r").exists(), "nothing is written when the port is taken"
