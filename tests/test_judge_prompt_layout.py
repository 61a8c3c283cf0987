"""Judge prompts keep everything that is the same for every sample (persona, rules, rubric) ahead of the sample, so
judge servers with prefix caching (vLLM, SGLang's cache-aware router) share it across samples and workers."""

from __future__ import annotations

import asyncio
import os

from metapo.judges import JudgeConfig, build_judge
from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
from metapo.rubric import Rubric, RubricStore
from metapo.rubric.active import ActiveRubrics
from tests.scripted_judge import ScriptedJudge


def _user_messages(tmp_path, scoring: str) -> list[str]:
    rubric = Rubric.from_items(
        [
            {"title": "Imagery", "description": "Concrete sensory detail.", "min_score": 0, "max_score": 9},
            {"title": "Focus", "description": "Stays on the prompt.", "min_score": 0, "max_score": 9},
        ]
    )
    with ScriptedJudge() as judge:
        client = build_judge(JudgeConfig(backend="openai", model="s", base_urls=[judge.url], timeout_s=5, max_attempts=1))
        reward = RubricReward(client, ActiveRubrics(RubricStore(tmp_path / "r"), rubric), RubricRewardConfig(scoring=scoring))
        asyncio.run(reward(["Write about the sea.", "Describe a harbour."], ["Waves fold grey light.", "A gull argues."]))
        return [b["messages"][-1]["content"] for b in judge.requests]


def test_logprob_prompts_share_everything_up_to_the_sample(tmp_path) -> None:
    messages = _user_messages(tmp_path, "logprob")
    for title, description in (("Imagery", "Concrete sensory detail."), ("Focus", "Stays on the prompt.")):
        # Every request shows the whole rubric; the question after the response names the item asked.
        same_item = [m for m in messages if f"criterion [{title.lower()}]" in m.rpartition("</response>")[2]]
        assert len(same_item) == 2
        prefix = os.path.commonprefix(same_item)
        # The criterion is inside the shared prefix; the sample (task input and response) comes after it.
        assert title in prefix and description in prefix
        assert "Write about the sea." not in prefix and "<response>" not in prefix and "Waves" not in prefix


def test_json_prompts_share_the_whole_rubric(tmp_path) -> None:
    first, second = _user_messages(tmp_path, "json")
    prefix = os.path.commonprefix([first, second])
    assert "Concrete sensory detail." in prefix and "Stays on the prompt." in prefix
    assert "<response>" not in prefix
