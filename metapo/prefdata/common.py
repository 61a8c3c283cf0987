"""What every preference-data builder shares: the policy that samples, the rewards that score, the row files.

A builder turns prompts, a policy and a judge (or verifier) into rows that ``metapo train-pref`` trains on as they
are: ``prompt``/``chosen``/``rejected`` plus the columns the objectives read (see
:mod:`metapo.train.preference`). Prompts are strings or chat message lists, and the policy samples from exactly
the text the trainer will later condition on: strings as they are, chat lists through the chat template.

Rewards are TRL reward functions, ``f(prompts=..., completions=..., **columns) -> list[float | None]``, sync or
async: :class:`~metapo.reward.rubric_reward.RubricReward` (an LLM judge scoring a rubric), a task's answer checker,
or any plain function. ``None`` means the sample could not be scored; builders leave such samples out.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from metapo.files import atomic_write_text

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
RewardFn = Callable[..., Any]


@dataclass(frozen=True)
class Sample:
    """One sampled continuation.

    Attributes:
        text: The generated text (special tokens removed).
        ended: Whether the policy ended the response (end-of-sequence); false when the text was cut at a stop
            string or at the token limit.
    """

    text: str
    ended: bool


class Policy(Protocol):
    """What the builders need from a policy.

    Attributes:
        eos_text: The text of the end-of-sequence token (a step that ends a response carries it, see
            :mod:`metapo.prefdata.mcts`); empty when the policy has none.
    """

    eos_text: str

    def render(self, prompt: Prompt, prefix: str = "") -> str:
        """The text the policy continues: the rendered prompt followed by ``prefix``."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        *,
        prefixes: Sequence[str] | None = None,
        stop: str | None = None,
        max_new_tokens: int | None = None,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, each continuing the prompt's rendered text plus its prefix.

        Args:
            prompts: Strings or chat message lists.
            n: Samples per prompt.
            prefixes: Partial response text after each rendered prompt (reasoning steps so far).
            stop: Cut each sample after the first occurrence of this string (kept in the text).
            max_new_tokens: Token limit of this call (default: the policy's own).

        Returns:
            One list of ``n`` samples per prompt.
        """
        ...


@dataclass
class GenerationOptions:
    """How a Hugging Face policy samples."""

    max_new_tokens: int = field(default=128, metadata={"help": "Token limit of a response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    batch_size: int = field(default=16, metadata={"help": "Sequences generated at once."})
    seed: int = field(default=0, metadata={"help": "Seed of the first batch; each batch uses the next one."})


def render_prompt(tokenizer: Any, prompt: Prompt, prefix: str = "") -> str:
    """The text a prompt puts before the response: strings as they are, chat lists through the chat template.

    Args:
        tokenizer: The policy's tokenizer.
        prompt: A string or a chat message list.
        prefix: Partial response text appended after the prompt.

    Returns:
        The rendered text.
    """
    from metapo.eval.generate import render_prompt as render

    return render(tokenizer, prompt) + prefix


class HFPolicy:
    """A transformers causal LM as a :class:`Policy` (batched ``generate`` with left padding).

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        options: Sampling settings.
    """

    def __init__(self, model: Any, tokenizer: Any, options: GenerationOptions | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or GenerationOptions()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.eos_text = tokenizer.eos_token or ""
        self._batches = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, options: GenerationOptions | None = None) -> HFPolicy:
        """Load a model directory (or hub id) and its tokenizer."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path))
        return cls(model, AutoTokenizer.from_pretrained(str(path)), options)

    def render(self, prompt: Prompt, prefix: str = "") -> str:
        """See :meth:`Policy.render`."""
        return render_prompt(self.tokenizer, prompt, prefix)

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        *,
        prefixes: Sequence[str] | None = None,
        stop: str | None = None,
        max_new_tokens: int | None = None,
    ) -> list[list[Sample]]:
        """See :meth:`Policy.generate`."""
        from metapo.eval.generate import sample_batch

        texts = [
            self.render(p, prefixes[i] if prefixes else "") for i, p in enumerate(prompts) for _ in range(n)
        ]
        # Strings are encoded as the trainer encodes them (with the tokenizer's special tokens); rendered chat
        # templates already hold theirs.
        special = [isinstance(p, str) for p in prompts for _ in range(n)]
        out: list[Sample] = []
        opts = self.options
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(texts), opts.batch_size):
                ids = [
                    self.tokenizer(t, add_special_tokens=special[start + j])["input_ids"]
                    for j, t in enumerate(texts[start : start + opts.batch_size])
                ]
                # One seed per batch: a batch's samples do not depend on what other code drew before it.
                batch = sample_batch(
                    self.model, self.tokenizer, ids, eos_ids=self.eos_ids,
                    max_new_tokens=max_new_tokens or opts.max_new_tokens, temperature=opts.temperature,
                    top_p=opts.top_p, seed=opts.seed + self._batches,
                )
                self._batches += 1
                out.extend(cut_at_stop(text, ended, stop) for text, ended, _ in batch)
        finally:
            self.model.train(was_training)
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def cut_at_stop(text: str, ended: bool, stop: str | None) -> Sample:
    """Cut ``text`` after the first ``stop`` (kept); a cut sample has not ended."""
    if stop and stop in text:
        return Sample(text[: text.index(stop) + len(stop)], False)
    return Sample(text, ended)


# ---------------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------------


async def reward_async(
    reward: RewardFn, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Sequence[Any]
) -> list[float | None]:
    """Call a TRL-style reward function (sync or async) and return floats, ``None`` for unscored samples."""
    values = reward(
        prompts=list(prompts), completions=list(completions), **{k: list(v) for k, v in columns.items()}
    )
    if inspect.isawaitable(values):
        values = await values
    values = list(values)
    if len(values) != len(completions):
        raise ValueError(
            f"the reward function returned {len(values)} values for {len(completions)} completions"
        )
    return [None if v is None else float(v) for v in values]


def score(
    reward: RewardFn, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Sequence[Any]
) -> list[float | None]:
    """Synchronous :func:`reward_async` (one event loop per call, as the builders run outside any loop)."""
    if not completions:
        return []
    return asyncio.run(reward_async(reward, prompts, completions, **columns))


def rubric_reward(judge: Any, rubric: Any, store_dir: str | Path, **config: Any) -> Any:
    """A :class:`~metapo.reward.rubric_reward.RubricReward` scoring ``rubric`` with ``judge``.

    Args:
        judge: A :class:`~metapo.judges.JudgeClient`.
        rubric: A :class:`~metapo.rubric.model.Rubric` (data: the judge knows no rubric of its own).
        store_dir: Where its version store lives (the builder's output directory).
        **config: :class:`~metapo.reward.rubric_reward.RubricRewardConfig` fields.

    Returns:
        The reward function.
    """
    from metapo.reward.rubric_reward import RubricReward, RubricRewardConfig
    from metapo.rubric.active import ActiveRubrics
    from metapo.rubric.store import RubricStore

    return RubricReward(
        judge, ActiveRubrics(RubricStore(Path(store_dir)), rubric), RubricRewardConfig(**config)
    )


class ItemScores:
    """Per-criterion scores from a rubric judge: each item's points mapped to [0, 1], plus the combined reward.

    Wraps a :class:`~metapo.reward.rubric_reward.RubricReward`, whose reward is the weighted mean of the normalised
    item scores, and keeps the item scores it reports for each sample.

    Args:
        reward: The rubric reward (its ``on_scored`` hook is taken over).
    """

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self._seen: list[Any] = []
        reward.on_scored = self._seen.extend

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> list[tuple[float, dict[str, float]] | None]:
        """``(reward, {item id: normalised score})`` per completion, or ``None`` when it was not scored."""
        self._seen.clear()
        score(self.reward, prompts, completions)
        out: list[tuple[float, dict[str, float]] | None] = []
        for sample in self._seen:
            rubric = self.reward.rubrics.get(sample.lineage).rubric
            if sample.reward is None or sample.gate is not None:
                out.append(None)
                continue
            items = {it.id: it.normalise(sample.item_scores[it.id]) for it in rubric.items}
            out.append((float(sample.reward), items))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (a crash leaves the old file or the new one, never half of one)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file (or a JSON list); a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text("utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of rows")
        return [dict(r) for r in data]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number} must be a JSON object")
        rows.append(row)
    return rows


def mean(values: Sequence[float | None]) -> float:
    """Mean of the scored values (``nan`` when none was scored)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")
