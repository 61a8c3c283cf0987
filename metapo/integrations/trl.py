"""TRL clients of the reward service: a picklable reward function and a step-boundary callback.

``RemoteRubricReward`` holds only the service address (no judge, no rubric), so TRL's ``AsyncGRPOTrainer``, which
pickles reward functions into a separate rollout process, scores with the rubric the service evolves; ordinary
``GRPOTrainer``/``RLOOTrainer`` use it the same way. A sample the judge could not score comes back as ``None``:
TRL leaves it out of the group statistics (``GRPOTrainer`` when it is the only reward function; ``AsyncGRPOTrainer``
gives it advantage 0).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback

from metapo.integrations.client import ServiceClient
from metapo.reward.rubric_reward import JudgeUnavailableError

log = logging.getLogger(__name__)

#: Most reward versions kept per lineage between two step reports.
_KEEP_VERSIONS = 65536

# TRL hands these to every reward function; they are not dataset columns.
_TRL_KWARGS = {"trainer_state", "log_extra", "log_metric", "environments", "completion_ids", "completions", "prompts"}


class RemoteRubricReward:
    """An async TRL reward function that scores through ``metapo serve-reward``.

    Args:
        url: The service root, e.g. ``http://127.0.0.1:8765``.
        token_env: Environment variable with the service's bearer token (read in the scoring process).
        eos_token_ids: Token ids that end a completion; with them the service's EOS gate knows whether a
            completion finished (from ``completion_ids``).
        stop_when_judge_down: Raise :class:`JudgeUnavailableError` when the service reports the judge down
            (as the in-process reward does), instead of training on missing rewards.
        timeout_s: Timeout of one scoring request.
    """

    __name__ = "rubric_reward"

    def __init__(
        self,
        url: str,
        *,
        token_env: str | None = None,
        eos_token_ids: Sequence[int] = (),
        stop_when_judge_down: bool = True,
        timeout_s: float = 600.0,
    ) -> None:
        self.client = ServiceClient(url, token_env=token_env, timeout_s=timeout_s)
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.stop_when_judge_down = stop_when_judge_down
        # Bounded: under AsyncGRPOTrainer no callback in this process ever takes them.
        self._returned: dict[str, deque[int]] = {}

    def take_versions(self) -> dict[str, list[int]]:
        """Rubric versions (per lineage) of the rewards returned since the last call, for the step report."""
        out, self._returned = self._returned, {}
        return {lineage: list(versions) for lineage, versions in out.items()}

    def request(
        self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``/v1/score`` body for one TRL call."""
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS}
        eos = set(self.eos_token_ids)
        samples = []
        for i in range(len(prompts)):
            row = {k: v[i] for k, v in columns.items() if _jsonable(v[i])}
            if completion_ids is not None and eos:
                ids = completion_ids[i]
                row["ended"] = bool(ids) and ids[-1] in eos
            samples.append({"prompt": prompts[i], "completion": completions[i], "columns": row})
        return {"samples": samples, "step": step, "engine": "trl"}

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        answer = await self.client.apost("/v1/score", self.request(prompts, completions, completion_ids, kwargs))
        return self._rewards(answer, kwargs.get("log_metric"))

    def score(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        """Blocking form, for code that is not async."""
        answer = self.client.post("/v1/score", self.request(prompts, completions, None, columns))
        return self._rewards(answer, None)

    def _rewards(self, answer: dict[str, Any], log_metric: Any) -> list[float | None]:
        results = answer["results"]
        if log_metric is not None:
            n = max(len(results), 1)
            log_metric("rubric/missing_rate", sum(r["failed"] for r in results) / n)
            log_metric("mpo/rubric_version", sum(r["rubric_version"] for r in results) / n)
        if answer.get("judge_unavailable") and self.stop_when_judge_down:
            raise JudgeUnavailableError(
                f"the reward service reports the judge unavailable: {answer['judge_unavailable']}"
            )
        for r in results:
            self._returned.setdefault(r["lineage"], deque(maxlen=_KEEP_VERSIONS)).append(int(r["rubric_version"]))
        return [r["reward"] for r in results]


class RemoteStepCallback(TrainerCallback):
    """Tells the reward service about every optimizer step, so meta steps follow ``mpo.interval`` trainer steps.

    With ``reward`` (the :class:`RemoteRubricReward` of the same process: ``GRPOTrainer``/``RLOOTrainer``), each
    report carries the rubric versions of the rewards scored since the previous one, and the service logs how many
    versions behind the rubric in force they were when the update used them. ``AsyncGRPOTrainer`` scores in another
    process, so there the reward's versions stay in its rollout logs (``mpo/rubric_version``).

    Args:
        url: The service root.
        token_env: Environment variable with the bearer token.
        reward: The reward function whose returned versions to report.
    """

    def __init__(self, url: str, *, token_env: str | None = None, reward: RemoteRubricReward | None = None) -> None:
        self.client = ServiceClient(url, token_env=token_env, timeout_s=60.0)
        self.reward = reward

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            body: dict[str, Any] = {"step": int(state.global_step)}
            if self.reward is not None:
                body["rubric_versions"] = self.reward.take_versions()
            answer = self.client.post("/v1/step", body)
            if answer.get("meta_started"):
                log.info("step %d: the reward service started a meta step", state.global_step)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
