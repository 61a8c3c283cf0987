"""The verifiable reward of RL with verifiable rewards (RLVR): 1 when a checker accepts the answer, else 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from metapo.reward.gates import Candidate, Gate, first_fired
from metapo.reward.rubric_reward import completion_text, prompt_text

#: ``check(gold, completion_text) -> bool``; e.g. ``metapo.tasks.math_answers.check_response`` for MATH.
Checker = Callable[[str, str], bool]


class AnswerReward:
    """TRL reward function: 1.0 when ``check(gold, completion)`` holds, 0.0 when not, ``None`` without a gold answer.

    The checker is passed in, so this module knows no task (``reward/`` never imports ``tasks/``). Gates run first
    and replace the check when they fire, as in :class:`~metapo.reward.RubricReward`; DLER's truncation rule
    ("a response that hit the token limit scores 0") is ``RequireEOS(penalty=0.0)`` with the policy's EOS ids.

    Args:
        check: The answer checker.
        answer_column: Dataset column holding the gold answer.
        gates: Rule checks run before the checker.
        eos_token_ids: Token ids that end a completion, so gates can tell a truncated completion.
    """

    __name__ = "answer_reward"

    def __init__(
        self,
        check: Checker,
        *,
        answer_column: str = "gold_answer",
        gates: Sequence[Gate] = (),
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        self.check = check
        self.answer_column = answer_column
        self.gates = tuple(gates)
        self.eos_token_ids = set(eos_token_ids)

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        golds = kwargs.get(self.answer_column)
        if golds is None:
            raise ValueError(
                f"answer_reward: the dataset has no {self.answer_column!r} column; set answer_column to the "
                "column that holds the gold answers"
            )
        out: list[float | None] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            text = completion_text(completion)
            ids = completion_ids[i] if completion_ids is not None else None
            ended = (
                None if ids is None or not self.eos_token_ids else bool(ids and ids[-1] in self.eos_token_ids)
            )
            fired = first_fired(self.gates, Candidate(prompt_text(prompt), text, {}, ended))
            if fired is not None:
                out.append(fired.reward)
            elif golds[i] is None or not str(golds[i]).strip():
                out.append(None)
            else:
                out.append(1.0 if self.check(str(golds[i]), text) else 0.0)
        log_metric = kwargs.get("log_metric")
        scored = [r for r in out if r is not None]
        if log_metric is not None and scored:
            log_metric("answer/accuracy", sum(r == 1.0 for r in scored) / len(scored))
        return out
