"""Final-answer extraction and equivalence for MATH-style solutions.

The gold answer of a MATH solution is the content of its boxed expression. Extraction is brace-matched by hand
(a regex cannot match nested braces); equivalence is decided by ``math_verify``, which parses both sides into
SymPy and compares them, so ``\\dfrac{1}{2}``, ``\\frac12``, ``0.5``, ``x = 3`` and ``3^\\circ`` need no
hand-written normaliser.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any, Literal

logger = logging.getLogger(__name__)

Which = Literal["first", "last"]

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The token of a brace-less box (\boxed 5), matched in place: slicing the text per box would be quadratic.
_BARE_TOKEN = re.compile(r"[^\s$]+")
_TIMEOUT_S = 5
# math_verify's parser slows down sharply with nesting (about 1 s at 8 levels of brackets on 2 cores) and
# runs without a timeout outside the main thread, so an answer a policy writes could stall scoring. MATH gold
# answers nest at most 3 levels deep and run to 159 characters; anything beyond these bounds is compared as
# plain text only.
MAX_VERIFY_CHARS = 400
MAX_VERIFY_DEPTH = 4


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, outermost only, in order.

    Braces are matched with escaped ``\\{``/``\\}`` treated as literal characters. The brace-less form
    ``\\boxed 5`` yields the next whitespace-delimited token. An unterminated box yields nothing.
    """
    found: list[str] = []
    pos = 0
    while (match := _BOX_COMMAND.search(text, pos)) is not None:
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _matching_brace(text, i)
            if end is None:
                break
            found.append(text[i + 1 : end].strip())
            pos = end + 1
        else:
            token = _BARE_TOKEN.match(text, i)
            if token is not None:
                found.append(token.group(0))
            pos = max(token.end() if token else i, match.end())
    return found


def _matching_brace(text: str, open_at: int) -> int | None:
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, including \{ and \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def boxed_answer(text: str, which: Which = "last") -> str | None:
    """The first or last boxed answer in ``text``, or ``None`` when there is none.

    MATH practice takes the last box; the MPO reference takes the first (kept for paper parity).
    """
    boxes = find_boxed(text)
    if not boxes:
        return None
    return boxes[0] if which == "first" else boxes[-1]


def strip_boxed(text: str) -> str:
    """``text`` with every boxed expression (command and content) removed."""
    out: list[str] = []
    pos = 0
    while (match := _BOX_COMMAND.search(text, pos)) is not None:
        out.append(text[pos : match.start()])
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _matching_brace(text, i)
            pos = len(text) if end is None else end + 1
        else:
            token = _BARE_TOKEN.match(text, i)
            pos = token.end() if token else i
    out.append(text[pos:])
    return "".join(out)


def reasoning_words(text: str) -> int:
    """Words of reasoning outside the boxed answer(s); the paper's thin-reasoning gate needs at least 30."""
    return len(strip_boxed(text).split())


# ----- equivalence --------------------------------------------------------------------------------------
def _timeout() -> int | None:
    # math_verify enforces its timeouts with SIGALRM, which only the main thread may use; elsewhere (reward
    # workers, asyncio executors) it would raise, so run without one there.
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parsed(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    # Wrapping in \boxed{} makes math_verify treat the whole string as the answer instead of searching it
    # for the last number or expression.
    return tuple(parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout()))


_PLAIN_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\$|\s+|\^\{?\\circ\}?|\\%|%")
# Bounded content: a possessive run could cross into the next command, whose "\" it does not exclude.
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]{0,64})\}")


def _plain(answer: str) -> str:
    """Light clean-up for answers ``math_verify`` cannot read as math (words, letter choices)."""
    return _PLAIN_DROP.sub("", _TEXT_CMD.sub(r"\1", answer)).rstrip(".").lower()


def answers_match(gold: str | None, predicted: str | None) -> bool:
    """Whether ``predicted`` is mathematically equivalent to ``gold``; both are answer strings, not solutions.

    ``math_verify`` decides whenever it can parse both sides; otherwise (text answers such as
    ``\\text{Devon}``) the answers are compared after stripping spacing, ``\\text{}``, ``\\left``/``\\right``,
    dollar signs and degree signs.
    """
    if gold is None or predicted is None or not gold.strip() or not predicted.strip():
        return False
    from math_verify import verify

    if not (_verifiable(gold) and _verifiable(predicted)):
        return _plain(gold) == _plain(predicted)
    try:
        gold_parsed, pred_parsed = _parsed(gold.strip()), _parsed(predicted.strip())
        if (
            gold_parsed
            and pred_parsed
            and verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_timeout())
        ):
            return True
    except Exception as exc:  # math_verify surfaces SymPy and timeout errors of many kinds
        logger.debug("math_verify failed on %r vs %r: %s", gold, predicted, exc)
    return _plain(gold) == _plain(predicted)


def _verifiable(answer: str) -> bool:
    """Whether ``answer`` is short and shallow enough to hand to ``math_verify`` (see MAX_VERIFY_DEPTH)."""
    if len(answer) > MAX_VERIFY_CHARS:
        return False
    depth = deepest = 0
    for char in answer:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth = max(depth - 1, 0)
    return deepest <= MAX_VERIFY_DEPTH


def check_response(gold: str | None, response: str, which: Which = "last") -> bool:
    """Whether the first/last boxed answer in ``response`` matches ``gold``."""
    return answers_match(gold, boxed_answer(response, which))
