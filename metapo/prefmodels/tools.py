"""The offline tool set of the Themis reward model: a safe calculator and a lookup over a local corpus.

Tool inputs are untrusted text (a model writes them). The calculator parses arithmetic with ``ast`` and evaluates
only number literals, ``+ - * / // % **`` and unary signs, with bounds on input length, exponent and result size;
nothing is ever passed to ``eval``. The lookup only searches the documents it was given. Every failure becomes an
``error: ...`` observation for the model to read, never an exception out of the scoring loop.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MAX_INPUT_CHARS = 200
MAX_OBSERVATION_CHARS = 400


class Tool(Protocol):
    """A tool: a name, a one-line description for prompts, and ``run(text) -> observation``."""

    name: str
    description: str

    def run(self, text: str) -> str: ...


class CalculatorError(ValueError):
    """The expression is not plain arithmetic or exceeds the calculator's bounds."""


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


@dataclass(frozen=True)
class Calculator:
    """Arithmetic on int and float literals: ``+ - * / // % **``, unary signs and parentheses.

    Attributes:
        max_abs: Largest magnitude of any intermediate result.
        max_exponent: Largest magnitude of an exponent.
    """

    max_abs: float = 1e30
    max_exponent: int = 64
    name: str = "calculator"
    description: str = "evaluates arithmetic such as (12 + 30) * 2 / 7"

    def evaluate(self, text: str) -> int | float:
        """The value of an arithmetic expression.

        Raises:
            CalculatorError: Anything but bounded arithmetic on number literals.
        """
        text = text.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
        if not text:
            raise CalculatorError("empty expression")
        if len(text) > MAX_INPUT_CHARS:
            raise CalculatorError(f"expression longer than {MAX_INPUT_CHARS} characters")
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise CalculatorError(f"not an arithmetic expression ({type(exc).__name__})") from None
        return self._eval(tree.body)

    def _eval(self, node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self._bounded(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._bounded(_UNARY[type(node.op)](self._eval(node.operand)))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > self.max_exponent:
                    raise CalculatorError(f"exponent beyond ±{self.max_exponent}")
                if left == 0 and right < 0:
                    raise CalculatorError("division by zero")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise CalculatorError("division by zero") from None
            except OverflowError:
                raise CalculatorError("result too large") from None
            if isinstance(value, complex):
                raise CalculatorError("complex result")
            return self._bounded(value)
        raise CalculatorError(f"unsupported element {type(node).__name__}")

    def _bounded(self, value: int | float) -> int | float:
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > self.max_abs:
            raise CalculatorError("result too large")
        return value

    def run(self, text: str) -> str:
        """The value as text, or ``error: ...``."""
        try:
            value = self.evaluate(text)
        except CalculatorError as exc:
            return f"error: {exc}"
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            value = int(value)
        return f"{value:.10g}" if isinstance(value, float) else str(value)


@dataclass
class CorpusLookup:
    """Finds the passage of a local corpus that best matches a query (TF-IDF cosine similarity).

    Attributes:
        documents: Passages, each ``{"title": ..., "text": ...}`` (``title`` optional).
    """

    documents: list[dict[str, str]]
    name: str = "lookup"
    description: str = "finds the passage of the reference corpus that best matches a query"
    _index: Any = field(default=None, init=False, repr=False)
    _vectorizer: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.documents = [
            {"title": str(d.get("title", "")), "text": str(d.get("text", ""))} for d in self.documents
        ]
        if not self.documents:
            raise ValueError("the lookup tool needs at least one document")
        self._vectorizer = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True)
        self._index = self._vectorizer.fit_transform([f"{d['title']} {d['text']}" for d in self.documents])

    @classmethod
    def from_file(cls, path: str | Path) -> CorpusLookup:
        """Load a corpus from JSONL (one ``{"title", "text"}`` per line) or a plain-text file (one per line)."""
        path = Path(path)
        lines = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        if path.suffix == ".jsonl":
            return cls([json.loads(line) for line in lines])
        return cls([{"text": line} for line in lines])

    def search(self, query: str, k: int = 1) -> list[tuple[float, dict[str, str]]]:
        """The ``k`` best passages with their similarity, best first."""
        from sklearn.metrics.pairwise import linear_kernel

        scores = linear_kernel(self._vectorizer.transform([query[:MAX_INPUT_CHARS]]), self._index)[0]
        order = scores.argsort()[::-1][:k]
        return [(float(scores[i]), self.documents[i]) for i in order]

    def run(self, text: str) -> str:
        """The best passage, or ``no match`` when the query shares no term with the corpus."""
        if not text.strip():
            return "error: empty query"
        score, doc = self.search(text)[0]
        if score <= 0:
            return "no match"
        head = f"{doc['title']}: " if doc["title"] else ""
        return head + doc["text"]


def toolbox(tools: Iterable[Tool]) -> dict[str, Tool]:
    """Tools by name (names must be unique)."""
    out: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in out:
            raise ValueError(f"two tools are named {tool.name!r}")
        out[tool.name] = tool
    return out


def run_tool(tools: Mapping[str, Tool], name: str, text: str) -> str:
    """Run one tool call and return its observation, bounded in length; unknown tools give an error text."""
    tool = tools.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; available: {', '.join(sorted(tools)) or 'none'}"
    observation = tool.run(text[:MAX_INPUT_CHARS])
    # One line, bounded: an observation must not forge the next "Thought:"/"Action:" line of the trace.
    observation = " ".join(observation.split())
    if len(observation) > MAX_OBSERVATION_CHARS:
        observation = observation[: MAX_OBSERVATION_CHARS - 3] + "..."
    return observation
