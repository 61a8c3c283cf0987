"""Text metapo does not control (policy completions, dataset fields, judge answers): two guarantees.

* :func:`scrub` replaces lone surrogates, which JSON escapes such as ``"\\ud800"`` put into Python strings
  and which crash every UTF-8 encoder on the way out (HTTP bodies, cache keys, log files).
* :func:`check_linear` proves that a regular expression runs in time linear in the text's length, so an
  adversarial completion cannot stall the event loop with backtracking. Python's ``re`` backtracks; these
  rules bound the work at every start position and keep the scans of different start positions apart:

  1. A repeat of more than 64 characters, or an unbounded one, is possessive (``*+``, ``++``, ``{m,n}+``),
     repeats a single character class, sits inside no repeat of more than 8 iterations, and cannot run
     across another start of the pattern: its class misses a character of the pattern's literal prefix
     (or every character a match can start with), or a lookbehind / ``\\b`` / ``^`` at the start of the
     pattern rules out a start inside the run.
  2. Any other repeat of a group repeats it at most 8 times, nested repeats of groups at most 64 times.

  A pattern that is one greedy run of a character class (``\\w+``) is linear as it is. Each top-level
  alternative is checked on its own.
"""

from __future__ import annotations

import functools
import re
from re import _constants as sre  # the parser's node types; stable since 3.11
from re import _parser as sre_parse
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")

LONG_REPEAT = 64
MAX_GROUP_REPEAT = 8
MAX_GROUP_NESTING = 64

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_SINGLE = (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY)
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}
_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.DOTALL


class UnsafePatternError(ValueError):
    """A regular expression could take super-linear time on long untrusted text."""


def scrub(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (unchanged, and fast, when it has none)."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def check_linear(pattern: str | re.Pattern[str], flags: int = 0) -> None:
    """Raise :class:`UnsafePatternError` unless ``pattern`` runs in linear time (rules in the module docstring).

    Args:
        pattern: The pattern, as text (with ``flags``) or compiled.
        flags: ``re`` flags of a pattern given as text.
    """
    if isinstance(pattern, re.Pattern):
        text, flags = pattern.pattern, pattern.flags
    else:
        text = pattern
        flags = re.compile(text, flags).flags
    tree = list(sre_parse.parse(text, flags))
    branches = [tree]
    if len(tree) == 1 and tree[0][0] is sre.BRANCH:
        branches = [list(b) for b in tree[0][1][1]]
    for branch in branches:
        problem = _Branch(branch, flags).problem()
        if problem:
            raise UnsafePatternError(f"pattern {text!r} could take super-linear time on long text: {problem}")


class _Branch:
    """One top-level alternative of a pattern, with what is known about where its matches start."""

    def __init__(self, items: list[Any], flags: int) -> None:
        self.items = items
        self.flags = flags & _CHAR_FLAGS
        self.multiline = bool(flags & re.MULTILINE)
        self.anchored = False
        self.guards: list[tuple[str, str]] = []  # ("after", cls) / ("not-after", cls) / ("boundary", "")
        start = 0
        for op, av in items:
            if op is sre.AT:
                if av in (sre.AT_BEGINNING_STRING,) or (av is sre.AT_BEGINNING and not self.multiline):
                    self.anchored = True
                elif av is sre.AT_BEGINNING:
                    self.guards.append(("after", r"\n"))
                elif av is sre.AT_BOUNDARY:
                    self.guards.append(("boundary", ""))
            elif op in (sre.ASSERT, sre.ASSERT_NOT) and av[0] == -1 and _single(list(av[1])):
                kind = "after" if op is sre.ASSERT else "not-after"
                self.guards.append((kind, _char_regex(list(av[1])[0], flags)))
            elif op not in (sre.ASSERT, sre.ASSERT_NOT):
                break
            start += 1
        self.prefix = []
        for op, av in items[start:]:
            if op is not sre.LITERAL:
                break
            self.prefix.append(re.escape(chr(av)))
        self.first, _ = _first_set(items[start:], flags)

    def problem(self) -> str | None:
        if len(self.items) == 1 and self.items[0][0] in _REPEATS:
            lo, _, body = self.items[0][1]
            if lo >= 1 and _single(list(body)):
                return None  # one run of a class: every attempt matches at once or fails at once
        return self._walk(self.items, 1, 1)

    def _walk(self, items: list[Any], group_product: int, enclosing: int) -> str | None:
        for op, av in items:
            if op in _REPEATS:
                lo, hi, body = av
                body = list(body)
                single = _single(body)
                unbounded = hi is sre.MAXREPEAT
                shown = "unbounded" if unbounded else f"{{{lo},{hi}}}"
                if unbounded or hi > LONG_REPEAT:
                    if not single:
                        return f"a {shown} repeat of a group (bound it, or repeat a single character class)"
                    if op is not sre.POSSESSIVE_REPEAT:
                        return f"the {shown} repeat of {_char_regex(body[0], self.flags)} must be possessive (add +)"
                    if enclosing > MAX_GROUP_REPEAT:
                        return f"the {shown} repeat of {_char_regex(body[0], self.flags)} is nested in a long repeat"
                    if not self._separated(_char_regex(body[0], self.flags)):
                        return (
                            f"the {shown} repeat of {_char_regex(body[0], self.flags)} can run across the start "
                            "of another match (exclude a character of the pattern's start from it)"
                        )
                elif not single:
                    if hi > MAX_GROUP_REPEAT or group_product * max(hi, 1) > MAX_GROUP_NESTING:
                        return f"a {shown} repeat of a group (at most {MAX_GROUP_REPEAT} iterations)"
                    problem = self._walk(body, group_product * max(hi, 1), enclosing * max(hi, 1))
                    if problem:
                        return problem
            elif op is sre.BRANCH:
                for alternative in av[1]:
                    problem = self._walk(list(alternative), group_product, enclosing)
                    if problem:
                        return problem
            elif op is sre.SUBPATTERN:
                problem = self._walk(list(av[-1]), group_product, enclosing)
                if problem:
                    return problem
            elif op is sre.ATOMIC_GROUP or op in (sre.ASSERT, sre.ASSERT_NOT):
                problem = self._walk(list(av if op is sre.ATOMIC_GROUP else av[1]), group_product, enclosing)
                if problem:
                    return problem
        return None

    def _separated(self, run: str) -> bool:
        """Whether a run of class ``run`` can never contain another start position of this alternative."""
        if self.anchored:
            return True
        for kind, cls in self.guards:
            if kind == "after" and _disjoint(run, cls, self.flags):
                return True
            if kind == "not-after" and _subset(run, cls, self.flags):
                return True
            if kind == "boundary" and (_subset(run, r"\w", self.flags) or _disjoint(run, r"\w", self.flags)):
                return True
        if self.prefix:
            return any(_disjoint(run, char, self.flags) for char in self.prefix)
        return self.first is not None and all(_disjoint(run, char, self.flags) for char in self.first)


def _single(items: list[Any]) -> bool:
    return len(items) == 1 and items[0][0] in _SINGLE


def _first_set(items: list[Any], flags: int) -> tuple[list[str] | None, bool]:
    """Classes of the characters a match of ``items`` can start with (``None``: any), and whether it can be empty."""
    classes: list[str] = []
    for op, av in items:
        if op in _SINGLE:
            return classes + [_char_regex((op, av), flags)], False
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue
        if op in (sre.SUBPATTERN, sre.ATOMIC_GROUP):
            sub, nullable = _first_set(list(av[-1] if op is sre.SUBPATTERN else av), flags)
        elif op is sre.BRANCH:
            parts = [_first_set(list(b), flags) for b in av[1]]
            if any(p is None for p, _ in parts):
                return None, False
            sub = [c for p, _ in parts for c in p or []]
            nullable = any(n for _, n in parts)
        elif op in _REPEATS:
            sub, nullable = _first_set(list(av[2]), flags)
            nullable = nullable or av[0] == 0
        else:  # a back-reference or something new: it could start with anything
            return None, False
        if sub is None:
            return None, False
        classes += sub
        if not nullable:
            return classes, False
    return classes, True


def _char_regex(node: tuple[Any, Any], flags: int) -> str:
    op, av = node
    if op is sre.LITERAL:
        return re.escape(chr(av))
    if op is sre.NOT_LITERAL:
        return f"[^{re.escape(chr(av))}]"
    if op is sre.ANY:
        return "." if flags & re.DOTALL else r"[^\n]"
    parts = []
    for item, value in av:
        if item is sre.NEGATE:
            parts.append("^")
        elif item is sre.LITERAL:
            parts.append(re.escape(chr(value)))
        elif item is sre.RANGE:
            parts.append(f"{re.escape(chr(value[0]))}-{re.escape(chr(value[1]))}")
        elif item is sre.CATEGORY:
            parts.append(_CATEGORIES[value])
        else:
            raise UnsafePatternError(f"unsupported character class item {item}")
    return "[" + "".join(parts) + "]"


@functools.cache
def _every_character() -> str:
    return "".join(map(chr, range(0x110000)))


def _literal(regex: str) -> str | None:
    """The character a one-character regex from :func:`_char_regex` stands for, if it is a literal."""
    if len(regex) == 1 and regex not in ".":
        return regex
    if len(regex) == 2 and regex[0] == "\\" and not regex[1].isalnum():
        return regex[1]
    return None


@functools.cache
def _disjoint(a: str, b: str, flags: int) -> bool:
    for one, other in ((a, b), (b, a)):
        char = _literal(one)
        if char is not None:  # a literal against a class: one test, no scan of every character
            return re.compile(other, flags).fullmatch(char) is None
    return re.compile(f"(?={a}){b}", flags).search(_every_character()) is None


@functools.cache
def _subset(a: str, b: str, flags: int) -> bool:
    return re.compile(f"(?={a})(?!{b})", flags).search(_every_character()) is None
