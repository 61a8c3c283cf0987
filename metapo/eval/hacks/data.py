"""Hack sets: prompts, each with a good response and reward-hack variants, read from JSONL.

Format (one JSON object per line; the built-in sets under ``metapo/eval/hacks/data`` use it too)::

    {"id": "essay-000", "task": "essay", "prompt": "Should schools ...", "good": "Schools should ...",
     "hacks": {"padding": "...", "title_only": "...", "my_family": "..."},
     "columns": {"gold_answer": "8"}}

* ``id`` (string, unique in the file), ``prompt`` (the task input the judge sees), ``good`` (a response that
  answers it well) and ``hacks`` (family name to text; at least one, names free) are required.
* ``task`` is the metapo task whose judge persona, starting rubric and rule gates score the line (default: the
  ``--task`` option); one file may mix tasks.
* ``columns`` (optional) are the row's extra columns handed to the gates and scorer (math: ``gold_answer``,
  ``solution``).

A family may be missing on some lines: every statistic counts the prompts that have it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from metapo.eval.hacks.rules import build_hacks

#: Tasks with a built-in hack set.
BUILTIN_TASKS = ("essay", "math")
GOOD = "good"


@dataclass(frozen=True)
class HackItem:
    """One prompt with its good response and hack variants."""

    id: str
    task: str
    prompt: str
    good: str
    hacks: dict[str, str]
    columns: dict[str, Any] = field(default_factory=dict)

    def candidates(self) -> dict[str, str]:
        """``{"good": ..., **hacks}``: the pool a policy chooses from."""
        return {GOOD: self.good, **self.hacks}

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record."""
        out: dict[str, Any] = {"id": self.id, "task": self.task, "prompt": self.prompt, "good": self.good}
        out["hacks"] = dict(self.hacks)
        if self.columns:
            out["columns"] = dict(self.columns)
        return out


def families(items: Sequence[HackItem]) -> list[str]:
    """Every hack family of ``items``, in first-seen order."""
    seen: dict[str, None] = {}
    for item in items:
        for name in item.hacks:
            seen.setdefault(name, None)
    return list(seen)


def _bad(where: str, what: str) -> ValueError:
    return ValueError(f"{where}: {what}; see the hack-set format in the README (metapo hackbench --data)")


def parse_items(lines: Sequence[str], where: str, default_task: str | None) -> list[HackItem]:
    """Validated items from JSONL lines (``where`` names the file in errors)."""
    items: list[HackItem] = []
    ids: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        here = f"{where} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(here, f"not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise _bad(here, "must be a JSON object")
        for key in ("id", "prompt", "good"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise _bad(here, f"needs a non-empty string {key!r}")
        hacks = row.get("hacks")
        if not isinstance(hacks, dict) or not hacks:
            raise _bad(here, "needs 'hacks', an object of family name to hack text (at least one)")
        for name, text in hacks.items():
            if not name.strip() or name == GOOD or not isinstance(text, str) or not text.strip():
                raise _bad(here, f"hack {name!r} needs a family name other than 'good' and a non-empty text")
        task = row.get("task", default_task)
        if not isinstance(task, str) or not task:
            raise _bad(here, "has no 'task' (or pass --task)")
        columns = row.get("columns", {})
        if not isinstance(columns, dict):
            raise _bad(here, "'columns' must be an object")
        if row["id"] in ids:
            raise _bad(here, f"id {row['id']!r} appears twice")
        ids.add(row["id"])
        items.append(HackItem(row["id"], task, row["prompt"], row["good"], dict(hacks), dict(columns)))
    if not items:
        raise _bad(where, "holds no items")
    return items


def load_hackset(path: str | Path, default_task: str | None = None) -> list[HackItem]:
    """Items from a user's JSONL file."""
    from metapo.files import read_user_text

    text = read_user_text(path, "hack set")
    return parse_items(text.splitlines(), str(path), default_task)


def builtin_hackset(task: str) -> list[HackItem]:
    """The built-in set of ``task`` (``essay`` or ``math``)."""
    if task not in BUILTIN_TASKS:
        raise ValueError(f"no built-in hack set for task {task!r}; use one of {BUILTIN_TASKS} or --data FILE")
    text = resources.files("metapo.eval.hacks").joinpath("data", f"{task}.jsonl").read_text(encoding="utf-8")
    return parse_items(text.splitlines(), f"built-in {task} hack set", task)


def rebuild(items: Sequence[HackItem]) -> list[HackItem]:
    """``items`` with their hacks rebuilt by the rules from ``prompt`` and ``good`` (same task for all)."""
    hacks = build_hacks(items[0].task, [i.prompt for i in items], [i.good for i in items])
    return [HackItem(i.id, i.task, i.prompt, i.good, h, i.columns) for i, h in zip(items, hacks, strict=True)]


def write_builtin(task: str, folder: Path) -> Path:
    """Regenerate ``folder/<task>.jsonl`` from its own prompts and good responses (after editing them)."""
    from metapo.files import atomic_write_text

    path = folder / f"{task}.jsonl"
    items = parse_items(
        [_with_placeholder(line) for line in path.read_text(encoding="utf-8").splitlines()], str(path), task
    )
    body = "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in rebuild(items))
    atomic_write_text(path, body)
    return path


def _with_placeholder(line: str) -> str:
    """A source line written before its hacks were built gets a placeholder so it parses."""
    if not line.strip():
        return line
    row = json.loads(line)
    row.setdefault("hacks", {"placeholder": "x"})
    return json.dumps(row)


if __name__ == "__main__":  # python -m metapo.eval.hacks.data: rebuild the shipped sets
    here = Path(__file__).resolve().parent / "data"
    for name in BUILTIN_TASKS:
        write_builtin(name, here)
