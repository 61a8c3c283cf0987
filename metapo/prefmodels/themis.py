"""Themis (arXiv 2310.01045): the trace format of a tool-augmented reward model, and its tool-use loop.

A Themis reward model reads a prompt and a response, then writes an evaluation trace and ends with a rationale; its
scalar reward is read at the last token. The trace is recorded in the data format, one row per preference pair::

    {"prompt": "...", "chosen": "...", "rejected": "...",
     "chosen_trace": {"steps": [{"thought": "...", "tool": "calculator", "input": "12 * 7",
                                 "observation": "84"}],
                      "rationale": "..."},
     "rejected_trace": {...}}

Rows without traces are plain Bradley–Terry pairs. Rendered as text, a trace reads::

    {prompt}

    Response:
    {response}

    Thought: {thought}
    Action: {tool}[{input}]
    Observation: {observation}
    Rationale: {rationale}<eos>

Each line belongs to a span (context, tool = thought + action, observation, rationale) that the loss in
:mod:`metapo.prefmodels.losses` weights. At inference :func:`run_tool_loop` lets the model write thoughts and
actions, runs each action with a real tool and writes the observation itself (the model never writes observations
at inference), and stops at the rationale. :func:`trace_from_loop` returns the trace in the data format, so scored
traces can be kept as training data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metapo.prefmodels.losses import CONTEXT, OBSERVATION, RATIONALE, TOOL
from metapo.prefmodels.tools import Tool, run_tool

ACTION = re.compile(r"^Action:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[(.*)\]\s*$")
MAX_FIELD_CHARS = 2000


@dataclass
class Step:
    """One tool call of a trace."""

    thought: str
    tool: str
    input: str
    observation: str

    def to_dict(self) -> dict[str, str]:
        return {
            "thought": self.thought,
            "tool": self.tool,
            "input": self.input,
            "observation": self.observation,
        }


@dataclass
class Trace:
    """What a Themis reward model writes after the response: tool steps, then a rationale."""

    steps: list[Step] = field(default_factory=list)
    rationale: str = ""

    @classmethod
    def from_data(cls, data: Any) -> Trace:
        """Read the ``*_trace`` column of a row (``None`` or empty gives an empty trace).

        Raises:
            ValueError: A malformed trace, naming the missing field.
        """
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a trace must be a mapping with 'steps' and 'rationale', got {type(data).__name__}"
            )
        steps = []
        for i, raw in enumerate(data.get("steps") or []):
            if not isinstance(raw, Mapping):
                raise ValueError(f"trace step {i} must be a mapping")
            missing = [k for k in ("tool", "input", "observation") if k not in raw]
            if missing:
                raise ValueError(f"trace step {i} lacks {missing}")
            steps.append(
                Step(
                    str(raw.get("thought", "")), str(raw["tool"]), str(raw["input"]), str(raw["observation"])
                )
            )
        return cls(steps, str(data.get("rationale") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "rationale": self.rationale}


def _one_line(text: str) -> str:
    # Fields are single lines: a response or tool text must not forge a trace line of its own.
    return " ".join(str(text).split())[:MAX_FIELD_CHARS]


def context_text(prompt: str, response: str) -> str:
    """The text the reward model reads before its trace."""
    return f"{prompt}\n\nResponse:\n{response}\n\n"


def render_segments(prompt: str, response: str, trace: Trace) -> list[tuple[str, int, int]]:
    """The text of one scored response as ``(text, kind, step)`` segments, in order.

    ``kind`` is one of ``CONTEXT``, ``TOOL``, ``OBSERVATION``, ``RATIONALE``; ``step`` is the 1-based tool step of
    tool and observation segments (0 otherwise). The rationale segment is present even when empty, so the sequence
    always ends with ``"Rationale: ..."``: the reward is read after the model has written its rationale.
    """
    segments = [(context_text(prompt, response), CONTEXT, 0)]
    for step_no, step in enumerate(trace.steps, start=1):
        thought = f"Thought: {_one_line(step.thought)}\n" if step.thought else ""
        action = f"Action: {step.tool}[{_one_line(step.input)}]\n"
        segments.append((thought + action, TOOL, step_no))
        segments.append((f"Observation: {_one_line(step.observation)}\n", OBSERVATION, step_no))
    segments.append((f"Rationale: {_one_line(trace.rationale)}", RATIONALE, 0))
    return segments


def render_text(prompt: str, response: str, trace: Trace) -> str:
    """The whole sequence as one string (for reading and debugging)."""
    return "".join(text for text, _, _ in render_segments(prompt, response, trace))


def tokenize_segments(
    tokenizer: Any, segments: Sequence[tuple[str, int, int]]
) -> tuple[list[int], list[int], list[int]]:
    """Token ids with the kind and step of every token; EOS closes the last (rationale) segment.

    Segments are tokenised one by one (special tokens only on the first), so span boundaries are exact and the
    same at training and scoring time.
    """
    ids: list[int] = []
    kinds: list[int] = []
    steps: list[int] = []
    for i, (text, kind, step) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=i == 0)["input_ids"]
        if i == len(segments) - 1 and tokenizer.eos_token_id is not None:
            piece = [*piece, tokenizer.eos_token_id]
        ids += piece
        kinds += [kind] * len(piece)
        steps += [step] * len(piece)
    return ids, kinds, steps


def parse_action(text: str) -> tuple[str, str, str] | None:
    """Find the first ``Action: tool[input]`` line of generated text.

    Returns:
        ``(thought, tool, input)``, or ``None`` when there is no well-formed action line. The thought is the text of
        a ``Thought:`` line before the action (empty when absent).
    """
    thought = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Thought:"):
            thought = stripped[len("Thought:") :].strip()
            continue
        if stripped.startswith("Rationale:"):
            return None
        match = ACTION.match(stripped)
        if match:
            return thought, match.group(1), match.group(2).strip()
    return None


def parse_rationale(text: str) -> str:
    """The rationale in generated text: what follows ``Rationale:``, else the text itself."""
    marker = text.find("Rationale:")
    body = text[marker + len("Rationale:") :] if marker >= 0 else text
    return _one_line(body)


def run_tool_loop(
    generate: Callable[[str], str],
    tools: Mapping[str, Tool],
    prompt: str,
    response: str,
    *,
    max_steps: int = 4,
) -> Trace:
    """Let a model write its evaluation trace, running every tool call it makes.

    Args:
        generate: Continues a text and returns only the continuation; it should stop before writing an
            ``Observation:`` line (or at the end of the sequence).
        tools: Tools by name.
        prompt: The task.
        response: The response being scored.
        max_steps: Most tool calls; after that the model is asked for its rationale.

    Returns:
        The trace: every parsed tool step with the tool's real observation, and the rationale.
    """
    trace = Trace()
    for _ in range(max_steps):
        text = render_text(prompt, response, trace)
        text = text[: -len("Rationale: ")]  # the model writes the next line itself
        continuation = generate(text)
        action = parse_action(continuation)
        if action is None:
            trace.rationale = parse_rationale(continuation)
            return trace
        thought, name, argument = action
        trace.steps.append(Step(thought, name, argument, run_tool(tools, name, argument)))
    text = render_text(prompt, response, trace)
    trace.rationale = parse_rationale(generate(text))
    return trace
