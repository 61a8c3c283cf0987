"""Reading judge answers: JSON extraction, a small JSON-schema validator, score parsing.

Every reader raises ``ValueError`` when the answer cannot be read; the client turns that into a retry
and, finally, a :class:`~metapo.judges.types.JudgeError`. Nothing here ever falls back to a default
score, because a silent 0 would look like a real (terrible) reward.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Patterns are linear-time (metapo.untrusted.check_linear): answers come from a model or a server.
# Whole integers only: "3.5" and "v2" are not read as 3 or 2.
_INTEGER = re.compile(r"(?<![\w.])[-+]?\d++(?!\.?\d)")
# "Score: 7", "score = 7/10", "**Rating**: 7" -- the number that follows a score word wins over
# any number mentioned earlier (e.g. "on a scale of 1 to 9 ...").
_SCORE_AFTER_WORD = re.compile(r"(?:score|rating|grade)\W{0,6}?([-+]?\d++)", re.IGNORECASE)
# Characters that matter to the bracket scan of extract_json.
_JSON_SYNTAX = re.compile(r'[{}\[\]"\\]')

# An answer longer than this is not read at all: no judge writes a megabyte to give a score, and every
# reader below is linear, but a broken server could still send gigabytes.
MAX_ANSWER_CHARS = 1_000_000


def extract_json(text: str) -> Any:
    """Reads the JSON value in a judge's answer.

    Tries, in order: the whole text, the contents of each Markdown code fence, and the balanced
    ``{...}`` or ``[...]`` spans in order of their start. Linear in the answer's length: one scan finds
    every span, and the spans handed to the JSON parser are capped at twice the answer's length in all.

    Args:
        text: The judge's answer.

    Returns:
        The decoded JSON value.

    Raises:
        ValueError: When no JSON object or array can be found, the answer is over
            :data:`MAX_ANSWER_CHARS`, or the JSON nests deeper than the parser goes.
    """
    check_answer_size(text)
    candidates = [text.strip(), *_fenced_blocks(text)]
    budget = 2 * len(text) + 1024
    for candidate in candidates:
        value = _loads(candidate)
        if value is not _NOTHING:
            return value
    for start, end in _balanced_spans(text):
        budget -= end - start
        if budget < 0:
            break
        value = _loads(text[start:end])
        if value is not _NOTHING:
            return value
    raise ValueError(f"no JSON value found in answer: {_preview(text)}")


def check_answer_size(text: str) -> None:
    """Raise ``ValueError`` for an answer over :data:`MAX_ANSWER_CHARS` characters."""
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer of {len(text)} characters is too long to read (limit {MAX_ANSWER_CHARS})")


_NOTHING = object()


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # not JSON (NaN and Infinity included), or nested too deeply
        return _NOTHING


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} does not fit a float")
    return value


def _fenced_blocks(text: str) -> list[str]:
    """Contents of the Markdown code fences (a ``json`` language tag dropped), found with two finds each."""
    blocks = []
    pos = 0
    while (start := text.find("```", pos)) >= 0 and (end := text.find("```", start + 3)) >= 0:
        block = text[start + 3 : end]
        if block.startswith(("json", "JSON")):
            block = block[4:]
        blocks.append(block.strip())
        pos = end + 3
    return blocks


def _balanced_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every balanced bracket span, ordered by start, in one scan.

    Brackets inside strings are skipped (strings are tracked from the outermost open bracket); a
    mismatched closing bracket drops every span still open.
    """
    spans: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    in_string = False
    escaped_at = -1
    for match in _JSON_SYNTAX.finditer(text):
        i, char = match.start(), match.group()
        if in_string:
            if i == escaped_at:
                continue
            if char == "\\":
                escaped_at = i + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = bool(stack)
        elif char in "{[":
            stack.append(("}" if char == "{" else "]", i))
        elif stack:
            closing, start = stack.pop()
            if char != closing:
                stack.clear()
            else:
                spans.append((start, i + 1))
    spans.sort()
    return spans


_TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # bool is a subclass of int in Python but not an integer in JSON.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate_json(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Checks a value against the subset of JSON Schema that metapo's judge prompts use.

    Supported keywords: ``type`` (a name or a list), ``enum``, ``const``, ``properties``,
    ``required``, ``additionalProperties`` (boolean), ``items``, ``minItems``, ``maxItems``,
    ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``minLength``, ``maxLength``.
    Other keywords are ignored.

    Args:
        value: The decoded JSON value.
        schema: The schema.
        path: Where ``value`` sits in the document (used in messages).

    Returns:
        A list of human-readable violations; empty when the value conforms.
    """
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_TYPE_CHECKS.get(name, lambda v: True)(value) for name in names):
            return [f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not {schema['const']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than minLength {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than maxLength {schema['maxLength']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: {len(value)} items < minItems {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: {len(value)} items > maxItems {schema['maxItems']}")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors.extend(validate_json(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors.extend(
            f"{path}: missing required key {key!r}" for key in schema.get("required", ()) if key not in value
        )
        for key, item in value.items():
            if key in properties:
                errors.extend(validate_json(item, properties[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key {key!r}")
    return errors


def parse_score(text: str, lo: int, hi: int) -> int:
    """Reads one integer score in ``[lo, hi]`` from free text.

    A number right after "score", "rating" or "grade" is preferred; otherwise the first integer.

    Args:
        text: The judge's answer, e.g. ``"Score: 7"`` or ``"**7**/9"``.
        lo: Lowest allowed score.
        hi: Highest allowed score.

    Returns:
        The score.

    Raises:
        ValueError: When there is no integer or it is out of range.
    """
    check_answer_size(text)
    match = _SCORE_AFTER_WORD.search(text) or _INTEGER.search(text)
    if match is None:
        raise ValueError(f"no integer score in answer: {_preview(text)}")
    score = int(match.group(1) if match.re is _SCORE_AFTER_WORD else match.group(0))
    if not lo <= score <= hi:
        raise ValueError(f"score {score} outside [{lo}, {hi}] in answer: {_preview(text)}")
    return score


def digit_distribution(top_logprobs: dict[str, float], lo: int, hi: int) -> tuple[dict[int, float], float]:
    """Probability of each allowed single-digit score among one token's top alternatives.

    Token texts are compared after stripping whitespace and the punctuation that may close a number
    (``"7."``, ``" 7,"``, ``"(7)"``), so all of them count for 7 (their probabilities add up).

    Args:
        top_logprobs: Candidate token text -> log-probability, for the first answer token.
        lo: Lowest allowed score (0..8).
        hi: Highest allowed score (lo+1..9).

    Returns:
        ``(distribution, mass)``: the distribution renormalised over ``lo..hi`` (empty when the
        mass is 0) and the total probability that fell on allowed digits.
    """
    allowed = {str(d): d for d in range(lo, hi + 1)}
    raw = dict.fromkeys(range(lo, hi + 1), 0.0)
    for token, logprob in top_logprobs.items():
        digit = allowed.get(token.strip().strip("().,:;"))
        if digit is not None and logprob is not None and math.isfinite(logprob):
            raw[digit] += math.exp(logprob)
    mass = sum(raw.values())
    if mass <= 0.0:
        return {}, 0.0
    return {d: p / mass for d, p in raw.items()}, min(mass, 1.0)


def _preview(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
