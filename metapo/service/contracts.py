"""The request and response shapes the reward service speaks: native, OpenRLHF remote-RM, and generic.

Every contract is read into :class:`SampleInput` rows and answered from the scored samples; bad input raises
:class:`BadRequest` with a message naming the field and the fix (sent as a 4xx). No regular expressions run
on request text: the chat-template and special-token handling below is plain string scanning, linear in the
text's length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from metapo.reward.records import ScoredSample

#: Longest lineage key accepted (it becomes a directory name in the rubric store).
MAX_LINEAGE_CHARS = 200

# Tokens that end a generation (so the completion finished) versus pure padding.
_END_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<eos>",
    "<end_of_turn>",
    "<｜end▁of▁sentence｜>",
)
_PAD_TOKENS = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")
_SPECIAL_LITERALS = (
    *_END_TOKENS,
    *_PAD_TOKENS,
    "<s>",
    "<bos>",
    "<|begin_of_text|>",
    "<start_of_turn>",
    "[INST]",
    "[/INST]",
)
# (start of a user turn, end of a turn) in common chat templates: ChatML, Llama 3, Gemma, Mistral.
_USER_TURNS = (
    ("<|im_start|>user\n", "<|im_end|>"),
    ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    ("<start_of_turn>user\n", "<end_of_turn>"),
    ("[INST]", "[/INST]"),
)


class BadRequest(ValueError):
    """The request cannot be scored as sent; the message names the field and the fix. ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SampleInput:
    """One sample to score: the policy prompt, its completion and the dataset columns the task reads."""

    prompt: Any
    completion: Any
    columns: dict[str, Any] = field(default_factory=dict)


# ----- native ------------------------------------------------------------------------------------------
def parse_native(body: Any, max_batch: int) -> tuple[list[SampleInput], dict[str, Any]]:
    """``{"samples": [{"prompt", "completion", "columns"?}...], "step"?, "engine"?, "on_failure"?}``.

    Returns:
        The samples, and the request options (``step``, ``engine``, ``on_failure``).
    """
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"samples": [...]}')
    samples = body.get("samples")
    if not isinstance(samples, list) or not samples:
        raise BadRequest('"samples" must be a non-empty list of {"prompt", "completion", "columns"} objects')
    _check_batch(len(samples), max_batch)
    out = []
    for i, item in enumerate(samples):
        if not isinstance(item, dict):
            raise BadRequest(f"samples[{i}] must be an object with prompt and completion")
        for key in ("prompt", "completion"):
            if key not in item:
                raise BadRequest(f"samples[{i}].{key} is missing")
            _check_text(item[key], f"samples[{i}].{key}")
        columns = item.get("columns") or {}
        if not isinstance(columns, dict):
            raise BadRequest(f"samples[{i}].columns must be an object of column name to value")
        out.append(SampleInput(item["prompt"], item["completion"], _checked_columns(columns, f"samples[{i}]")))
    return out, _options(body)


def native_response(samples: list[ScoredSample], options: dict[str, Any], fallback: float) -> list[dict[str, Any]]:
    """One result per sample; a judge failure is ``reward: null`` unless ``on_failure`` is ``fallback``."""
    use_fallback = options.get("on_failure") == "fallback"
    return [
        {
            "reward": s.reward if s.reward is not None or not use_fallback else fallback,
            "failed": s.reward is None,
            "error": s.error,
            "rubric_version": s.rubric_version,
            "lineage": s.lineage,
            "raw_score": s.raw_score,
            "item_scores": s.item_scores,
            "gate": s.gate,
            "adjustments": s.adjustments,
            "sample_id": s.sample_id,
        }
        for s in samples
    ]


# ----- OpenRLHF ---------------------------------------------------------------------------------------
def parse_openrlhf(body: Any, max_batch: int) -> list[SampleInput]:
    """OpenRLHF's remote reward request ``{"query": [...], "prompts": [...], "labels": [...]}``.

    ``query`` is prompt plus response as the engine decoded it, special tokens possibly included. The response
    is what follows the prompt; trailing end-of-generation tokens are removed and tell the EOS gate that the
    generation finished (padding alone does not). A label that is a JSON object is read as the sample's columns
    (``task_input``, ``lineage``, a gold answer...); any other label becomes the column ``label``.
    """
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"query": [...], "prompts": [...], "labels": [...]}')
    queries = body.get("query")
    if not isinstance(queries, list) or not queries:
        raise BadRequest('"query" must be a non-empty list of strings (prompt + response)')
    _check_batch(len(queries), max_batch)
    prompts = body.get("prompts")
    labels = body.get("labels")
    for name, values in (("prompts", prompts), ("labels", labels)):
        if values is not None and (not isinstance(values, list) or len(values) != len(queries)):
            raise BadRequest(f'"{name}" must be a list as long as "query" ({len(queries)} items)')
    out = []
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise BadRequest(f"query[{i}] must be a string")
        prompt = prompts[i] if prompts is not None else ""
        if not isinstance(prompt, str):
            raise BadRequest(f"prompts[{i}] must be a string")
        response, ended = split_query(query, prompt)
        columns = _label_columns(labels[i] if labels is not None else None, f"labels[{i}]")
        if ended is not None:
            columns.setdefault("ended", ended)
        columns.setdefault("task_input", user_turn(prompt) if prompt else "")
        if not columns["task_input"]:
            del columns["task_input"]
        out.append(SampleInput(prompt, response, columns))
    return out


def openrlhf_response(samples: list[ScoredSample], fallback: float) -> dict[str, Any]:
    """``{"rewards", "scores", "extra_logs"}``: OpenRLHF has no per-sample mask, so a failure gets ``fallback``
    (counted by the caller), and ``extra_logs.judge_failed`` marks it in the engine's own logs."""
    rewards = [s.reward if s.reward is not None else fallback for s in samples]
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            "rubric_version": [float(s.rubric_version) for s in samples],
            "judge_failed": [1.0 if s.reward is None else 0.0 for s in samples],
        },
    }


# ----- generic ----------------------------------------------------------------------------------------
def parse_generic(body: Any, max_batch: int) -> tuple[list[SampleInput], bool]:
    """``{"prompt", "response", "label"?}`` or a list of them; returns the samples and whether it was a list."""
    many = isinstance(body, list)
    items = body if many else [body]
    if not items:
        raise BadRequest('the body must be {"prompt", "response", "label"} or a non-empty list of them')
    _check_batch(len(items), max_batch)
    out = []
    for i, item in enumerate(items):
        where = f"[{i}]" if many else "body"
        if not isinstance(item, dict) or "prompt" not in item or "response" not in item:
            raise BadRequest(f'{where} must be an object with "prompt" and "response" (and optionally "label")')
        _check_text(item["prompt"], f"{where}.prompt")
        _check_text(item["response"], f"{where}.response")
        out.append(SampleInput(item["prompt"], item["response"], _label_columns(item.get("label"), f"{where}.label")))
    return out, many


def generic_response(samples: list[ScoredSample], fallback: float | None) -> list[dict[str, Any]]:
    """``reward`` is ``null`` on a judge failure unless ``fallback`` is given (``?on_failure=fallback``)."""
    return [
        {
            "reward": s.reward if s.reward is not None else fallback,
            "failed": s.reward is None,
            "rubric_version": s.rubric_version,
            "error": s.error,
        }
        for s in samples
    ]


# ----- text handling ----------------------------------------------------------------------------------
def split_query(query: str, prompt: str) -> tuple[str, bool | None]:
    """(response, ended) from an OpenRLHF query: the text after the prompt, trailing special tokens removed.

    ``ended`` is True when an end-of-generation token closed the response, None when the text carries no
    special tokens at all (decoded with ``skip_special_tokens``: unknown), False otherwise.
    """
    if prompt and query.startswith(prompt):
        response = query[len(prompt) :]
    elif prompt and prompt in query:
        response = query[query.rfind(prompt) + len(prompt) :]
    else:
        stripped_prompt = strip_special(prompt).strip()
        stripped = strip_special(query)
        at = stripped.find(stripped_prompt) if stripped_prompt else -1
        response = stripped[at + len(stripped_prompt) :] if at >= 0 else stripped
    response, ended = _strip_trailing(response)
    if ended is None and any(tok in query for tok in _SPECIAL_LITERALS):
        ended = False  # the engine kept special tokens, and none closed this response: it was cut
    return response.strip(), ended


def _strip_trailing(text: str) -> tuple[str, bool | None]:
    ended: bool | None = None
    while True:
        trimmed = text.rstrip()
        token = next((t for t in _END_TOKENS + _PAD_TOKENS if trimmed.endswith(t)), None)
        if token is None:
            return trimmed, ended
        text = trimmed[: -len(token)]
        if token in _END_TOKENS:
            ended = True
        elif ended is None:
            ended = False


def user_turn(prompt: str) -> str:
    """The last user turn of a chat-templated prompt (ChatML, Llama 3, Gemma, Mistral), else the prompt with
    special tokens removed."""
    best = -1
    found = ""
    for start, end in _USER_TURNS:
        at = prompt.rfind(start)
        if at > best:
            stop = prompt.find(end, at + len(start))
            best = at
            found = prompt[at + len(start) : stop if stop >= 0 else len(prompt)]
    return (found if best >= 0 else strip_special(prompt)).strip()


def strip_special(text: str) -> str:
    """``text`` without the literal special tokens above or any ``<|...|>`` token (at most 64 characters)."""
    for token in _SPECIAL_LITERALS:
        text = text.replace(token, "")
    out = []
    i = 0
    while True:
        at = text.find("<|", i)
        if at < 0:
            out.append(text[i:])
            return "".join(out)
        close = text.find("|>", at + 2, at + 66)
        if close < 0:
            out.append(text[i : at + 2])
            i = at + 2
            continue
        out.append(text[i:at])
        i = close + 2


# ----- shared checks ----------------------------------------------------------------------------------
def _options(body: dict[str, Any]) -> dict[str, Any]:
    step = body.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise BadRequest(f'"step" must be a non-negative integer, got {json.dumps(step)[:40]}')
    on_failure = body.get("on_failure", "null")
    if on_failure not in ("null", "fallback"):
        raise BadRequest(f'"on_failure" must be "null" or "fallback", got {json.dumps(on_failure)[:40]}')
    engine = body.get("engine", "native")
    if not isinstance(engine, str) or not engine or len(engine) > 32:
        raise BadRequest('"engine" must be a short name such as "verl" or "trl"')
    return {"step": step, "on_failure": on_failure, "engine": engine}


def _check_batch(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise BadRequest(f"{n} samples in one request; at most {max_batch} (service.max_batch): split it", 413)


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in value
    ):
        return
    raise BadRequest(f"{where} must be a string or a list of chat messages with string content")


def _checked_columns(columns: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in columns.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"{where}.columns.{key} is {value}; send a finite number or a string")
    lineage = columns.get("lineage")
    if lineage is not None and (not isinstance(lineage, str) or not lineage or len(lineage) > MAX_LINEAGE_CHARS):
        raise BadRequest(f"{where}.columns.lineage must be a non-empty string of at most {MAX_LINEAGE_CHARS} characters")
    return dict(columns)


def _label_columns(label: Any, where: str) -> dict[str, Any]:
    if label is None or label == "":
        return {}
    if isinstance(label, dict):
        return _checked_columns(label, where)
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            parsed = json.loads(label)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return _checked_columns(parsed, where)
    return {"label": label}
