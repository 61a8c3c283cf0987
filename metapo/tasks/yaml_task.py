"""Tasks defined in a YAML file, for users who want their own task without writing Python.

See ``examples/task_custom.yaml`` for a complete, commented example. Keys:

``name``, ``description``, ``instruction`` (policy-facing task text), ``prompt`` (user-turn template; default
``"{instruction}\\n\\n{judge_input_label}: {task_input}"``), ``task_input`` (template of what the judge sees as the
task input), ``judge_input_label``, ``judge_persona``, ``meta_persona``, ``max_completion_tokens``,
``meta_interval``, ``word_limit`` (for the length metric), ``initial_rubric`` and ``baseline_rubrics`` (Markdown
rubrics: ``## Title [0-5]`` per item), ``gates`` (list of ``{type: min_words|required_pattern|require_eos, ...}``),
``columns`` (renames ``{expected: source_column}``), ``keep`` (row fields copied into every example for rewards and
metrics), and ``data`` with ``source`` (a file relative to the YAML file, a folder, or a Hub dataset name) and/or
inline ``rows`` (each with an optional ``split``).

Templates use ``{field}`` placeholders filled from each data row; write literal braces as ``{{`` and ``}}``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapo.reward.gates import Gate, MinWords, RequiredPattern, RequireEOS
from metapo.rubric.model import Rubric, RubricError
from metapo.tasks.base import (
    LOCAL_SUFFIXES,
    Task,
    TaskDataError,
    is_blank,
    length_stats,
    read_rows,
    user_prompt,
)

DEFAULT_PROMPT = "{instruction}\n\n{judge_input_label}: {task_input}"
DEFAULT_RUBRIC = """\
## Overall quality [0-5]
Rate how well the response completes the task, from 0 (not at all) to 5 (excellent).
"""

_TOP_KEYS = {
    "name",
    "description",
    "instruction",
    "prompt",
    "task_input",
    "judge_input_label",
    "judge_persona",
    "meta_persona",
    "max_completion_tokens",
    "meta_interval",
    "word_limit",
    "initial_rubric",
    "baseline_rubrics",
    "gates",
    "columns",
    "keep",
    "data",
}
_GATE_TYPES: dict[str, tuple[type, set[str]]] = {
    "min_words": (MinWords, {"min_words", "penalty", "strip_pattern", "name"}),
    "required_pattern": (RequiredPattern, {"pattern", "penalty", "name"}),
    "require_eos": (RequireEOS, {"penalty", "name"}),
}
# Placeholders filled by the task itself rather than from the data row.
_BUILTIN_FIELDS = {"instruction", "judge_input_label", "task_input"}


class TaskSpecError(ValueError):
    """A YAML task file is malformed; the message names the key and the fix."""


@dataclass
class YamlTask(Task):
    """A task built from a YAML specification (see the module docstring)."""

    name: str = "custom"
    prompt_template: str = DEFAULT_PROMPT
    input_template: str = ""
    initial_rubric_text: str = DEFAULT_RUBRIC
    baseline_texts: dict[str, str] = field(default_factory=dict)
    gate_specs: list[dict[str, Any]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    data_source: str | None = None
    data_rows: list[dict[str, Any]] = field(default_factory=list)
    word_limit: int | None = None
    spec_path: str | None = None
    eos_penalty: float | None = None

    def __post_init__(self) -> None:
        if not self.input_template:
            raise TaskSpecError(
                f"task {self.name!r}: 'task_input' is required (a template such as '{{question}}')"
            )
        self._gates = tuple(_build_gate(spec, i) for i, spec in enumerate(self.gate_specs))
        self._rubric = _parse_rubric(self.initial_rubric_text, "initial_rubric")
        self._baselines = {
            k: _parse_rubric(v, f"baseline_rubrics.{k}") for k, v in self.baseline_texts.items()
        }
        fields = _placeholders(self.prompt_template) | _placeholders(self.input_template)
        self._row_fields = tuple(sorted(fields - _BUILTIN_FIELDS))

    # ----- construction -----------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> YamlTask:
        """Read a YAML task file; relative data paths are resolved against the file's folder."""
        from metapo.config import ConfigError, load_yaml_text
        from metapo.files import InputFileError, read_user_text

        path = Path(path).expanduser()
        try:
            spec = load_yaml_text(read_user_text(path, "task file"), f"task file {path}")
        except (ConfigError, InputFileError) as exc:
            raise TaskSpecError(str(exc)) from None
        return cls.from_spec(spec, base_dir=path.parent, spec_path=str(path), **overrides)

    @classmethod
    def from_spec(
        cls, spec: Any, *, base_dir: str | Path = ".", spec_path: str | None = None, **overrides: Any
    ) -> YamlTask:
        """Build from an already-parsed specification mapping."""
        if not isinstance(spec, Mapping):
            raise TaskSpecError("a task specification must be a mapping of keys to values")
        unknown = set(spec) - _TOP_KEYS
        if unknown:
            raise TaskSpecError(f"unknown keys {sorted(unknown)}; allowed keys are {sorted(_TOP_KEYS)}")
        for key in ("name", "instruction"):
            if is_blank(spec.get(key)):
                raise TaskSpecError(f"key {key!r} is required")
        data = spec.get("data") or {}
        if not isinstance(data, Mapping) or set(data) - {"source", "rows"}:
            raise TaskSpecError("'data' must be a mapping with 'source' and/or 'rows'")
        source = data.get("source")
        if source is not None:
            local = Path(base_dir) / str(source)
            # A relative path next to the YAML file wins over a Hub name of the same spelling.
            source = (
                str(local) if local.exists() or Path(str(source)).suffix in LOCAL_SUFFIXES else str(source)
            )
        rows = data.get("rows") or []
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise TaskSpecError("'data.rows' must be a list of mappings (one per example)")
        gates = spec.get("gates") or []
        if not isinstance(gates, list):
            raise TaskSpecError("'gates' must be a list of {type: ..., ...} mappings")
        kwargs: dict[str, Any] = {
            "name": str(spec["name"]),
            "description": str(spec.get("description") or f"user task from {spec_path or 'a YAML spec'}"),
            "instruction": str(spec["instruction"]).strip(),
            "prompt_template": str(spec.get("prompt") or DEFAULT_PROMPT),
            "input_template": str(spec.get("task_input") or ""),
            "judge_input_label": str(spec.get("judge_input_label") or "Task input"),
            "judge_persona": str(spec.get("judge_persona") or "You are a careful, fair and strict grader."),
            "meta_persona": str(
                spec.get("meta_persona")
                or "You are a senior grader who audits how rubrics are applied and rewrites them to stop reward hacking."
            ),
            "max_completion_tokens": int(spec.get("max_completion_tokens", 512)),
            "default_meta_interval": int(spec.get("meta_interval", 10)),
            "initial_rubric_text": str(spec.get("initial_rubric") or DEFAULT_RUBRIC),
            "baseline_texts": {str(k): str(v) for k, v in (spec.get("baseline_rubrics") or {}).items()},
            "gate_specs": [dict(g) if isinstance(g, Mapping) else g for g in gates],
            "columns": {str(k): str(v) for k, v in (spec.get("columns") or {}).items()},
            "keep": [str(k) for k in (spec.get("keep") or [])],
            "data_source": source,
            "data_rows": [dict(r) for r in rows],
            "word_limit": spec.get("word_limit"),
            "spec_path": spec_path,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # ----- Task API ---------------------------------------------------------------------------------
    @property
    def required_columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys((*self._row_fields, *self.keep)))

    def initial_rubric(self) -> Rubric:
        return self._rubric

    def baseline_rubrics(self) -> dict[str, Rubric]:
        return {**super().baseline_rubrics(), **self._baselines}

    def gates(self) -> tuple[Gate, ...]:
        """Exactly the gates listed in the file, in order (no implicit EOS gate: list ``require_eos`` for one)."""
        return self._gates

    def read_source(self, source: str | Path | None, split: str) -> tuple[list[dict[str, Any]], str]:
        if source is None or str(source).lower() in ("builtin", "built-in"):
            if self.data_rows:
                has_split = any("split" in r for r in self.data_rows)
                rows = [r for r in self.data_rows if not has_split or r.get("split") == split]
                if not rows:
                    raise TaskDataError(f"task {self.name!r}: the inline rows have no split {split!r}")
                return rows, f"inline rows of {self.spec_path or 'the task spec'}"
            if self.data_source is None:
                raise TaskDataError(
                    f"task {self.name!r} has no data: add 'data: {{source: ...}}' or 'data: {{rows: [...]}}' to "
                    "the task file, or pass a dataset"
                )
            source = self.data_source
        return read_rows(source, split)

    def drop_reason(self, row: dict[str, Any]) -> str | None:
        for key in self._row_fields:
            if is_blank(row.get(key)):
                return f"empty {key}"
        return None

    def to_example(self, row: dict[str, Any]) -> dict[str, Any]:
        values = {k: str(row[k]).strip() for k in self._row_fields}
        task_input = self.input_template.format_map(values).strip()
        content = self.prompt_template.format_map(
            {
                **values,
                "instruction": self.instruction,
                "judge_input_label": self.judge_input_label,
                "task_input": task_input,
            }
        ).strip()
        return {
            "prompt": user_prompt(content),
            "task_input": task_input,
            **{k: row.get(k) for k in self.keep},
        }

    def metric(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Length statistics (write a Python task for a task-specific metric)."""
        return length_stats([str(r.get("response") or "") for r in records], long_words=self.word_limit)


def _placeholders(template: str) -> set[str]:
    hint = "write literal braces as '{{' and '}}'"
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise TaskSpecError(f"template {template[:60]!r}: {exc}; {hint}") from exc
    if any(not name or name.isdigit() for name in names):
        raise TaskSpecError(f"template {template[:60]!r} has an empty or numbered placeholder; {hint}")
    return {name.split(".")[0].split("[")[0] for name in names}


def _parse_rubric(text: str, key: str) -> Rubric:
    try:
        return Rubric.parse(text).validate()
    except RubricError as exc:
        raise TaskSpecError(f"'{key}': {exc}") from exc


def _build_gate(spec: Any, index: int) -> Gate:
    where = f"gates[{index}]"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise TaskSpecError(f"{where}: expected a mapping with a 'type' ({', '.join(_GATE_TYPES)})")
    kind = spec["type"]
    if kind not in _GATE_TYPES:
        raise TaskSpecError(f"{where}: unknown gate type {kind!r}; use one of {sorted(_GATE_TYPES)}")
    cls, allowed = _GATE_TYPES[kind]
    params = {k: v for k, v in spec.items() if k != "type"}
    if set(params) - allowed:
        raise TaskSpecError(
            f"{where} ({kind}): unknown keys {sorted(set(params) - allowed)}; allowed: {sorted(allowed)}"
        )
    for key in ("pattern", "strip_pattern"):
        if key in params:
            try:
                re.compile(str(params[key]))
            except re.error as exc:
                raise TaskSpecError(f"{where}: {key} is not a valid regular expression: {exc}") from exc
    if "penalty" in params:
        params["penalty"] = float(params["penalty"])
    if kind == "min_words" and "min_words" not in params:
        raise TaskSpecError(f"{where}: min_words gate needs 'min_words'")
    if kind == "required_pattern" and "pattern" not in params:
        raise TaskSpecError(f"{where}: required_pattern gate needs 'pattern'")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:  # e.g. a pattern that could stall on a long completion
        raise TaskSpecError(f"{where} ({kind}): {exc}") from None
