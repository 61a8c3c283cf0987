"""Rubrics: ordered, itemised scoring instructions for an LLM judge.

Three text forms are understood:

* **Markdown** (the form metapo writes and people edit)::

      ## Clarity [0-5]
      The argument can be followed on first reading. Deduct 2 points when ...

      ## Off-topic content [-5-0, weight 2]
      ...

  A level-1 to level-4 heading starts an item; the bracket states its score range and optional weight;
  an explicit id may follow as ``{#clarity}``. Text before the first heading is ignored.
* **JSON**: ``{"items": [{"id", "title", "description", "min_score", "max_score", "weight"}, ...]}``.
* The MPO reference's ``<rubric><item>...</item></rubric>`` form, free text per item with a stated range
  such as ``(0-5 points)`` (read only).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: How item scores combine into the normalised reward (see :meth:`Rubric.normalized`).
Weighting = Literal["points", "equal"]


class RubricError(ValueError):
    """A rubric failed to parse or validate; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class RubricLimits:
    """Bounds a rubric must respect; a meta step's output is rejected when it breaks them."""

    max_items: int = 12
    max_title_chars: int = 120
    max_description_chars: int = 2500
    max_total_chars: int = 16000
    min_score: int = -100
    max_score: int = 100


@dataclass(frozen=True)
class RubricItem:
    """One scoring criterion.

    Attributes:
        id: Stable slug used in scores and diffs.
        title: Short name of the criterion.
        description: What earns or loses points, level by level.
        min_score: Lowest integer score (negative for deduction items).
        max_score: Highest integer score.
        weight: Multiplier on the item's points (``weight 2``: its points count twice in the total). With the
            default point weighting an item's influence on the reward is ``weight * (max_score - min_score)``,
            so the normalised reward stays an affine map of the paper's plain sum of points.
    """

    id: str
    title: str
    description: str
    min_score: int = 0
    max_score: int = 5
    weight: float = 1.0

    def normalise(self, points: float) -> float:
        """Map points on this item's range to [0, 1]."""
        return (points - self.min_score) / (self.max_score - self.min_score)

    @property
    def span(self) -> int:
        """Width of the score range in points."""
        return self.max_score - self.min_score

    @property
    def is_deduction(self) -> bool:
        """True for an item that can only take points away (``max_score <= 0``)."""
        return self.max_score <= 0


@dataclass(frozen=True)
class Rubric:
    """An ordered tuple of items. Immutable: a change makes a new rubric (and a new version in a store)."""

    items: tuple[RubricItem, ...] = field(default_factory=tuple)

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls, title: str, description: str, min_score: int = 0, max_score: int = 5) -> Rubric:
        """A one-item rubric (MPO's starting point)."""
        return cls((RubricItem(slugify(title), title, description, min_score, max_score),))

    @classmethod
    def from_items(cls, items: list[dict[str, Any]] | list[RubricItem]) -> Rubric:
        """Build from item dicts (missing ids are derived from titles) or items, de-duplicating in order."""
        built: list[RubricItem] = []
        for i, raw in enumerate(items):
            if isinstance(raw, RubricItem):
                built.append(raw)
                continue
            try:
                # A title is one line: a newline in it would end the Markdown heading early.
                title = " ".join(str(raw.get("title") or raw.get("name") or "").split())
                built.append(
                    RubricItem(
                        id=str(raw.get("id") or slugify(title) or f"item-{i + 1}"),
                        title=title,
                        description=str(raw.get("description", "")).replace("\r\n", "\n").strip(),
                        min_score=_integer(raw.get("min_score", 0), "min_score"),
                        max_score=_integer(raw.get("max_score", 5), "max_score"),
                        weight=_number(raw.get("weight", 1.0), "weight"),
                    )
                )
            except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise RubricError(
                    f"item {i + 1}: {exc}; expected title, description, min_score, max_score"
                ) from exc
        return cls(tuple(built)).deduplicated()

    # ----- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Rubric:
        """Parse any supported text form (JSON, reference XML, Markdown), detected from the content."""
        stripped = text.strip()
        if not stripped:
            raise RubricError("rubric text is empty; write at least one '## Title [0-5]' item")
        if stripped.startswith("{"):
            return cls.from_json(stripped)
        if "<rubric" in stripped or "<item>" in stripped:
            return cls.from_reference_xml(stripped)
        return cls.from_markdown(stripped)

    @classmethod
    def from_json(cls, text: str) -> Rubric:
        """Parse the JSON form."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RubricError(f"rubric JSON does not parse: {exc}") from exc
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise RubricError('rubric JSON must be {"items": [...]} or a list of items')
        return cls.from_items(items)

    @classmethod
    def from_markdown(cls, text: str) -> Rubric:
        """Parse the Markdown form (see the module docstring)."""
        items: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        body: list[str] = []

        def close() -> None:
            if current is not None:
                current["description"] = "\n".join(body).strip()
                items.append(current)

        for lineno, line in enumerate(_lines(text), 1):
            if _HEADING_START.match(line):
                heading = _heading(line)
                if heading is None:
                    raise RubricError(
                        f"line {lineno}: heading {line.strip()[:120]!r} has no score range; "
                        "write it as '## Title [0-5]' or '## Title [0-5, weight 2]'"
                    )
                close()
                body = []
                current = heading
            elif current is not None:
                # A description line that would read as a heading was written with a backslash (see to_markdown).
                body.append(line[1:] if _ESCAPED_HEADING.match(line) else line)
        close()
        if not items:
            raise RubricError("no rubric items found; start each item with a heading like '## Clarity [0-5]'")
        return cls.from_items(items)

    @classmethod
    def from_reference_xml(cls, text: str) -> Rubric:
        """Parse the reference implementation's ``<item>`` free-text form.

        An item's range comes from a stated ``(a-b points)``, else from its level lines (``- 20: ...``,
        ``- (-15): ...``, ``* Score 5 - ...``): the lowest and highest level. A deduction item whose levels are all
        negative ends at 0 (no deduction). An item with neither raises :class:`RubricError`.
        """
        bodies = re.findall(r"<item>(.*?)</item>", text, flags=re.DOTALL)
        if not bodies:
            raise RubricError("found <rubric> but no <item>...</item> elements")
        items = []
        for i, raw in enumerate(bodies):
            body = raw.strip()
            lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
            title = re.sub(r"^[#*\s\d.)-]+|[*:]+$", "", lines[0]).strip() if lines else f"Item {i + 1}"
            lo, hi = _reference_range(body, title or f"item {i + 1}")
            items.append({"title": title[:120], "description": body, "min_score": lo, "max_score": hi})
        return cls.from_items(items)

    # ----- rendering ----------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """Render the Markdown form; :meth:`from_markdown` reads it back unchanged.

        A description line that would read as a heading (``## Notes``) gets a leading backslash, Markdown's
        escape, which :meth:`from_markdown` removes again.
        """
        parts = []
        for item in self.items:
            weight = "" if item.weight == 1.0 else f", weight {_plain_number(item.weight)}"
            ident = "" if item.id == slugify(item.title) else f" {{#{item.id}}}"
            description = "\n".join(
                "\\" + line if _ESCAPED_HEADING.match("\\" + line) else line
                for line in _lines(item.description)
            )
            parts.append(
                f"## {item.title} [{item.min_score}-{item.max_score}{weight}]{ident}\n{description}\n"
            )
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form as a dict."""
        return {"items": [asdict(item) for item in self.items]}

    def to_json(self) -> str:
        """The JSON form as text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    # ----- properties ---------------------------------------------------------------------------
    @property
    def max_points(self) -> float:
        """Best total: the weighted sum of item maxima (the paper's best raw score when weights are 1)."""
        return float(sum(item.weight * item.max_score for item in self.items))

    @property
    def min_points(self) -> float:
        """Worst total: the weighted sum of item minima."""
        return float(sum(item.weight * item.min_score for item in self.items))

    def total(self, points: Mapping[str, float]) -> float:
        """The raw reward: weighted sum of item points (the paper's plain sum when weights are 1)."""
        return float(sum(item.weight * points[item.id] for item in self.items))

    def normalized(self, points: Mapping[str, float], weighting: Weighting = "points") -> float:
        """The reward on [0, 1].

        Args:
            points: Item id to points on that item's range.
            weighting: ``"points"`` (default): ``(total - min_points) / (max_points - min_points)``, an affine map
                of the raw total, so an item worth 20 points moves the reward ten times as much as one worth 2,
                as the meta-reward model intended. ``"equal"``: every item counts by its ``weight`` alone,
                whatever its range (the weighted mean of per-item fractions).
        """
        if weighting == "equal":
            weight = sum(item.weight for item in self.items)
            return sum(item.weight * item.normalise(points[item.id]) for item in self.items) / weight
        return (self.total(points) - self.min_points) / (self.max_points - self.min_points)

    def content_hash(self) -> str:
        """A short hash of the items (part of judge cache keys and version records)."""
        payload = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def item(self, item_id: str) -> RubricItem:
        """The item with this id."""
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)

    # ----- checks -------------------------------------------------------------------------------
    def deduplicated(self) -> Rubric:
        """Drop items whose normalised text repeats an earlier one, keeping first occurrences in order.

        Ids are made unique too (``clarity``, ``clarity-2``) so scores never collide.
        """
        seen_text: set[str] = set()
        seen_ids: set[str] = set()
        kept = []
        for item in self.items:
            key = _normalise_text(item.title + " " + item.description)
            if key in seen_text:
                continue
            seen_text.add(key)
            ident, n = item.id, 2
            while ident in seen_ids:
                ident, n = f"{item.id}-{n}", n + 1
            seen_ids.add(ident)
            kept.append(item if ident == item.id else replace(item, id=ident))
        return Rubric(tuple(kept))

    def validate(self, limits: RubricLimits | None = None) -> Rubric:
        """Raise :class:`RubricError` naming the first problem; return ``self`` when valid."""
        limits = limits or RubricLimits()
        if not self.items:
            raise RubricError("rubric has no items; it needs at least one")
        if len(self.items) > limits.max_items:
            raise RubricError(f"rubric has {len(self.items)} items; at most {limits.max_items} are allowed")
        total = 0
        for n, item in enumerate(self.items, 1):
            where = f"item {n} ({item.title or item.id!r})"
            if not item.title:
                raise RubricError(f"{where}: title is empty")
            if not item.description:
                raise RubricError(f"{where}: description is empty; say what earns and loses points")
            if len(item.title) > limits.max_title_chars:
                raise RubricError(
                    f"{where}: title has {len(item.title)} chars, limit {limits.max_title_chars}"
                )
            if len(item.description) > limits.max_description_chars:
                raise RubricError(
                    f"{where}: description has {len(item.description)} chars, limit {limits.max_description_chars}"
                )
            if not item.min_score < item.max_score:
                raise RubricError(
                    f"{where}: range [{item.min_score}, {item.max_score}] is empty; need min < max"
                )
            if item.min_score < limits.min_score or item.max_score > limits.max_score:
                raise RubricError(
                    f"{where}: range [{item.min_score}, {item.max_score}] exceeds "
                    f"[{limits.min_score}, {limits.max_score}]"
                )
            if not (math.isfinite(item.weight) and item.weight > 0):
                raise RubricError(f"{where}: weight {item.weight} must be a finite positive number")
            total += len(item.title) + len(item.description)
        if not any(item.max_score > 0 for item in self.items):
            raise RubricError(
                "rubric has no item that awards points (every max_score <= 0), so every response without a "
                "deduction would get the full reward; add at least one item with a positive max_score"
            )
        if total > limits.max_total_chars:
            raise RubricError(f"rubric text has {total} chars, limit {limits.max_total_chars}")
        if len(self.deduplicated().items) != len(self.items):
            raise RubricError("rubric repeats an item; remove the duplicate")
        if len({item.id for item in self.items}) != len(self.items):
            raise RubricError("two items share an id; ids must be unique")
        return self


# A Markdown heading is "#" to "####" then whitespace; its range bracket (and optional {#id}) ends the line.
# Linear-time (metapo.untrusted.check_linear): a lazy title before the bracket made one long line cubic.
_HEADING_START = re.compile(r"#{1,4}\s")
_HEADING_MARKS = (re.compile(r"#{1,4}\s++\d++[.)]\s++"), re.compile(r"#{1,4}\s++"))
_HEADING_TAIL = re.compile(
    r"\[\s*+(?P<lo>-?\d++)\s*+(?:-|–|to|\.\.)\s*+(?P<hi>-?\d++)\s*+(?:,\s*+weight\s*+(?P<w>\d++(?:\.\d++)?))?\s*+\]"
    r"\s*+(?:\{#(?P<id>[a-z0-9][a-z0-9_-]*+)\})?\s*+\Z"
)
# A line that reads as a heading once one leading backslash is removed (Markdown's escape of "#").
_ESCAPED_HEADING = re.compile(r"\A\\++#{1,4}\s")


def _lines(text: str) -> list[str]:
    # Only "\n" (and "\r\n") end a line: str.splitlines() also splits at U+2028 and other characters that a
    # description may hold, which would break the Markdown round trip.
    return text.replace("\r\n", "\n").split("\n")


def _heading(line: str) -> dict[str, Any] | None:
    """The item a heading line starts (title, range, weight, id), or ``None`` when it has no range."""
    for marks in _HEADING_MARKS:  # "## 1. Title [0-5]": the numbering is not part of the title
        mark = marks.match(line)
        if mark is None:
            continue
        tail = _HEADING_TAIL.search(line, mark.end() + 1)
        title = line[mark.end() : tail.start()].strip() if tail else ""
        if tail is None or not title:
            continue
        item: dict[str, Any] = {
            "title": title,
            "min_score": int(tail["lo"]),
            "max_score": int(tail["hi"]),
            "weight": float(tail["w"]) if tail["w"] else 1.0,
        }
        if tail["id"]:
            item["id"] = tail["id"]
        return item
    return None


def _integer(value: Any, name: str) -> int:
    """A score bound: an integer, or a number or text that is exactly one (``5.0``, ``"5"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():  # also refuses NaN and the infinities
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return int(value)


def _number(value: Any, name: str) -> float:
    """A weight: a finite number (whether it is positive is checked by :meth:`Rubric.validate`)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _plain_number(value: float) -> str:
    """``value`` without an exponent (``1e-05`` -> ``0.00001``), as the heading's weight syntax needs."""
    text = format(decimal.Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_RANGE_IN_TEXT = re.compile(r"\(?\s*(?P<lo>-?\d+)\s*(?:-|–|to)\s*(?P<hi>-?\d+)\s*points?", re.IGNORECASE)
# A level line of the reference layout: "- 20: ...", "* (-15) ...", "- Score 5 - ...", "- 3 points: ...".
_LEVEL_LINE = re.compile(
    r"^[ \t]*[-*•][ \t]*(?:score[ \t]*)?\(?[ \t]*(?P<v>[-+−]?\d{1,3})[ \t]*\)?[ \t]*(?:points?|pts)?[ \t]*[:.)–-]",
    re.IGNORECASE | re.MULTILINE,
)


def _reference_range(body: str, where: str) -> tuple[int, int]:
    """Score range of one reference-format item: a stated ``a-b points``, else the span of its level lines."""
    stated = _RANGE_IN_TEXT.search(body)
    if stated:
        return int(stated["lo"]), int(stated["hi"])
    levels = [int(m["v"].replace("−", "-")) for m in _LEVEL_LINE.finditer(body)]
    if not levels:
        raise RubricError(
            f"{where}: no score range found; state one as '(0-5 points)' or give level lines such as '- 5: ...'"
        )
    lo, hi = min(levels), max(levels)
    if hi <= 0:
        hi = 0  # a deduction item: its best level is "no deduction"
    elif lo > 0 and len(levels) == 1:
        lo = 0
    if lo == hi:
        raise RubricError(f"{where}: its level lines give only the score {lo}; give at least two levels")
    return lo, hi


def slugify(title: str) -> str:
    """Lower-case, ASCII, hyphen-separated id from a title."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:48].strip("-")


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()
