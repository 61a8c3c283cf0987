"""A trained reward or preference model at work: rewards, preference probabilities, a TRL reward function and a
pairwise judge.

:class:`RewardModel` loads any directory written by ``metapo train-rm`` and offers:

- ``rewards(prompts, responses)``: one number per response. ``bt`` and ``themis``: the scalar reward; ``vector``:
  ``vᵀr(x, y)`` for a direction ``v`` (DPA); ``gpm``: the centred preference score of each response against the other
  responses to the same prompt in the call, ``mean_j s(y, y_j)/τ`` (GPO's target; it needs the whole group, so keep
  each prompt's group on one process, see the catalog's §1.3).
- ``preference(prompt, a, b)``: ``P(a ≻ b)``: ``σ(r_a − r_b)`` for scalar models, ``σ(s(a, b)/τ)`` for GPM.
- ``__call__(prompts, completions, **columns)``: TRL's reward-function signature, for ``GRPOTrainer``, ``RLOOTrainer``
  and ``metapo train`` (``reward_model:`` key).
- ``await compare(task_input, x, y)``: the interface of :class:`metapo.eval.pairwise.PairwiseJudge`, so the model can
  stand in for an LLM judge in tournaments (``run_tournament``).
- ``preference_matrix(prompt, responses, opponents)`` and ``await preferences(...)``: ``M[i, j] = P(y_i ≻ y_j)`` for
  online methods that need a preference oracle; each response is embedded once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metapo.prefmodels.data import RewardCollator, collator_item, encode_sequence, plain_text
from metapo.prefmodels.losses import skew_symmetric_score
from metapo.prefmodels.model import HeadSpec, PreferenceNet
from metapo.prefmodels.themis import Trace, run_tool_loop

logger = logging.getLogger(__name__)


def unit_direction(direction: Sequence[float]) -> list[float]:
    """``direction`` scaled to unit length (DPA's ``v``)."""
    norm = math.sqrt(sum(float(x) ** 2 for x in direction))
    if norm == 0:
        raise ValueError("a preference direction must not be the zero vector")
    return [float(x) / norm for x in direction]


class RewardModel:
    """A loaded reward or preference model (see the module docstring).

    Args:
        net: The network.
        tokenizer: Its tokenizer.
        device: Where to run (default: CUDA when available).
        batch_size: Sequences per forward pass.
        direction: DPA direction for a ``vector`` model (default: the saved one).
        tools: Themis tools by name (default: the calculator, plus the lookup over the saved corpus).
    """

    both_orders = True  # the model is order-free: P(a ≻ b) + P(b ≻ a) = 1 by construction

    def __init__(
        self,
        net: PreferenceNet,
        tokenizer: Any,
        *,
        device: str | None = None,
        batch_size: int = 16,
        direction: Sequence[float] | None = None,
        tools: dict[str, Any] | None = None,
    ) -> None:
        self.net = net
        self.spec: HeadSpec = net.spec
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net.to(self.device).eval()
        self.batch_size = batch_size
        self.direction = unit_direction(direction) if direction is not None else self.spec.direction
        self._tools = tools
        self.__name__ = f"reward_model_{self.spec.kind}"  # TRL logs reward functions by __name__

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        """Load a model directory written by ``metapo train-rm``."""
        from transformers import AutoTokenizer

        load_kwargs = {} if torch.cuda.is_available() else {"dtype": torch.float32}
        net = PreferenceNet.load(path, **load_kwargs)
        return cls(net, AutoTokenizer.from_pretrained(path), **kwargs)

    # ----- raw outputs ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def head_outputs(
        self, prompts: Sequence[Any], responses: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled head values ``(N, d)`` and GPM gates ``(N, k)`` (or ``None``) of each (prompt, response).

        Themis responses are scored on their tool-augmented traces (see :meth:`traces`).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        traces = self.traces(prompts, responses) if self.spec.kind == "themis" else [None] * len(prompts)
        items = [
            collator_item([encode_sequence(self.tokenizer, self.spec, p, r, t)])
            for p, r, t in zip(prompts, responses, traces, strict=True)
        ]
        collate = RewardCollator(self.tokenizer.pad_token_id)
        values, gates = [], []
        for start in range(0, len(items), self.batch_size):
            batch = {k: v.to(self.device) for k, v in collate(items[start : start + self.batch_size]).items()}
            out = self.net(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
            values.append(out.values.float().cpu())
            if out.gates is not None:
                gates.append(out.gates.float().cpu())
        return torch.cat(values), (torch.cat(gates) if gates else None)

    def traces(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[Trace]:
        """Themis: the tool-augmented evaluation trace the model writes for each response (tools really run)."""
        if self.spec.kind != "themis":
            raise ValueError(f"a {self.spec.kind} model writes no traces")
        generate = self._generator()
        return [
            run_tool_loop(generate, self.tools, plain_text(p), plain_text(r), max_steps=self.spec.max_steps)
            for p, r in zip(prompts, responses, strict=True)
        ]

    @property
    def tools(self) -> dict[str, Any]:
        """Themis tools: the calculator, and the lookup over the saved corpus when there is one."""
        if self._tools is None:
            from metapo.prefmodels.tools import Calculator, CorpusLookup, toolbox

            tools: list[Any] = [Calculator()]
            if self.spec.corpus:
                tools.append(CorpusLookup.from_file(self.spec.corpus))
            self._tools = toolbox(tools)
        return self._tools

    def _generator(self) -> Callable[[str], str]:
        lm = self.net.backbone
        tok = self.tokenizer

        @torch.no_grad()
        def generate(text: str) -> str:
            inputs = tok(text, return_tensors="pt").to(self.device)
            out = lm.generate(
                **inputs,
                max_new_tokens=self.spec.max_new_tokens,
                do_sample=False,
                stop_strings=["Observation:"],
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            cut = new.find("Observation:")
            return new[:cut] if cut >= 0 else new

        return generate

    # ----- rewards and preferences ----------------------------------------------------------------------------
    def rewards(
        self, prompts: Sequence[Any], responses: Sequence[Any], *, direction: Sequence[float] | None = None
    ) -> list[float]:
        """One reward per response (see the module docstring for what each kind returns).

        Args:
            prompts: Prompts (strings or chat messages), one per response.
            responses: Responses.
            direction: ``vector`` models: the direction ``v`` (default: the model's).
        """
        values, gates = self.head_outputs(prompts, responses)
        kind = self.spec.kind
        if kind in ("bt", "themis"):
            return values[:, 0].tolist()
        if kind == "vector":
            v = torch.tensor(self._direction(direction))
            return (values @ v).tolist()
        keys = [repr(p) for p in prompts]
        out = []
        for i, key in enumerate(keys):
            others = [j for j, other in enumerate(keys) if other == key and j != i]
            if not others:
                out.append(0.0)
                continue
            g = None if gates is None else gates[i].expand(len(others), -1)
            scores = skew_symmetric_score(values[i].expand(len(others), -1), values[others], g)
            out.append(float(scores.mean()) / self.spec.tau)
        return out

    def attribute_scores(self, prompts: Sequence[Any], responses: Sequence[Any]) -> torch.Tensor:
        """``vector`` models: the attribute scores ``(N, k)`` (columns in ``spec.attributes`` order)."""
        if self.spec.kind != "vector":
            raise ValueError(f"a {self.spec.kind} model has no attribute scores")
        return self.head_outputs(prompts, responses)[0]

    def _direction(self, direction: Sequence[float] | None) -> list[float]:
        chosen = unit_direction(direction) if direction is not None else self.direction
        if chosen is None:
            raise ValueError(
                f"a vector model over {self.spec.attributes} needs a direction (pass direction=..., or train with one)"
            )
        if len(chosen) != len(self.spec.attributes):
            raise ValueError(f"direction {list(chosen)} does not match attributes {self.spec.attributes}")
        return list(chosen)

    def preference(self, prompt: Any, a: Any, b: Any, *, direction: Sequence[float] | None = None) -> float:
        """``P(a ≻ b | prompt)``."""
        if self.spec.kind == "gpm":
            values, gates = self.head_outputs([prompt, prompt], [a, b])
            g = None if gates is None else gates[0]
            return float(torch.sigmoid(skew_symmetric_score(values[0], values[1], g) / self.spec.tau))
        ra, rb = self.rewards([prompt, prompt], [a, b], direction=direction)
        return 1.0 / (1.0 + math.exp(-(ra - rb)))

    def preference_matrix(
        self,
        prompt: Any,
        responses: Sequence[Any],
        opponents: Sequence[Any] | None = None,
        *,
        direction: Sequence[float] | None = None,
    ) -> np.ndarray:
        """``M[i, j] = P(responses[i] ≻ opponents[j])`` (opponents default to the responses; identical texts ½).

        Each text goes through the model once, so a GPM compares ``n`` responses at the cost of ``n`` forward
        passes, and keeps its intransitive preferences (unlike a score squeezed through Bradley–Terry).
        """
        cols = list(responses) if opponents is None else list(opponents)
        texts = [*responses, *cols]
        if self.spec.kind == "gpm":
            values, gates = self.head_outputs([prompt] * len(texts), texts)
            rows, others = values[: len(responses)], values[len(responses) :]
            g = None if gates is None else gates[0]
            scores = skew_symmetric_score(rows[:, None, :], others[None, :, :], g) / self.spec.tau
        else:
            rewards = torch.tensor(self.rewards([prompt] * len(texts), texts, direction=direction))
            scores = rewards[: len(responses), None] - rewards[None, len(responses) :]
        matrix = torch.sigmoid(scores).double().numpy()
        for i, a in enumerate(responses):
            for j, b in enumerate(cols):
                if a == b:
                    matrix[i, j] = 0.5
        return matrix

    async def preferences(
        self, prompt: Any, responses: Sequence[Any], opponents: Sequence[Any] | None = None
    ) -> np.ndarray:
        """The preference-oracle interface of the online trainer: :meth:`preference_matrix` off the event loop."""
        import asyncio

        return await asyncio.to_thread(self.preference_matrix, prompt, responses, opponents)

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        """TRL reward-function signature: one float per completion."""
        return self.rewards(prompts, completions)

    async def compare(self, task_input: str, response_x: str, response_y: str) -> Any:
        """X's outcome against Y, as :meth:`metapo.eval.pairwise.PairwiseJudge.compare` returns it."""
        import asyncio

        from metapo.eval.pairwise import PairOutcome, Verdict

        p = await asyncio.to_thread(self.preference, task_input, response_x, response_y)
        winner = "A" if p > 0.5 else "B" if p < 0.5 else None
        score = 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5
        verdict = Verdict(winner, p, method=f"reward_model_{self.spec.kind}", error=None if winner else "tie")
        return PairOutcome(score, p, True, [verdict])


def load_reward_function(path: str | Path, **kwargs: Any) -> RewardModel:
    """A saved model as a TRL reward function (what ``metapo train``'s ``reward_model`` key loads)."""
    return RewardModel.load(path, **kwargs)
