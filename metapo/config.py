"""Loading dataclass configs from YAML with ``key.sub=value`` command-line overrides.

Everything is checked before a run writes anything: unknown keys, and the type of every value against its
dataclass field (nested sections included), with errors that name the dotted key. YAML is read with bounds
(size, nesting, alias expansion), so a hostile or broken file is refused instead of expanded.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Bounds of any YAML document metapo reads: generous for configs and task files with inline data rows,
# small enough that an alias bomb ("billion laughs") or a runaway file is refused at once.
MAX_YAML_BYTES = 16 * 1024 * 1024
MAX_YAML_NODES = 1_000_000

# Numbers as people write them; PyYAML (YAML 1.1) reads "1e-5" (no dot) as a string.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


# Settings whose value may be a secret (or a secret pasted where its variable's name belongs): never echoed.
_SECRET_KEY = re.compile(r"(?:^|[._])(?:api_key|key|token|secret|password)(?:_env)?\Z", re.IGNORECASE)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand past :data:`MAX_YAML_NODES` or loop."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    # Aliases make the node graph a DAG (or, with a recursive anchor, a cycle); count the values it stands
    # for, each distinct node once, without expanding anything.
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                raise yaml.YAMLError(
                    f"its aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); "
                    "write the values out instead"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise yaml.YAMLError("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document with bounds on size, nesting and alias expansion.

    Args:
        text: The YAML text.
        where: What the text is (``"config file run.yaml"``), for the error message.

    Raises:
        ConfigError: The text is not valid YAML, too big, nested too deeply, or its aliases explode.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_YAML_BYTES // 2**20} MiB; a config never is")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where} is not valid YAML: {detail}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["mpo.interval=5", "training.max_steps=20"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value, e.g. mpo.interval=5")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {pair!r} has an empty key; write it like mpo.interval=5")
        value = load_yaml_text(raw, f"override {key.strip()}") if raw.strip() else None
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, recursively for nested dicts."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, unreadable or malformed file."""
    from metapo.files import InputFileError, read_user_text

    path = Path(path)
    try:
        text = read_user_text(path, what)
    except InputFileError as exc:
        raise ConfigError(str(exc)) from None
    data = load_yaml_text(text, f"{what} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of settings at the top level")
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields.

    Every value is checked against its field's type first (see :func:`check_value`), and unknown keys are
    an error that lists the valid ones (a typo must not be silently ignored).
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{where.rstrip('.') or cls.__name__} must be a mapping of settings, got {_shown(data)}"
        )
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(where + str(k) for k in unknown)}; valid: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        target = _dataclass_in(hints[name])
        if target is not None and isinstance(value, dict):
            kwargs[name] = from_dict(target, value, f"{where}{name}.")
        else:
            kwargs[name] = check_value(value, hints[name], f"{where}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {exc}") from exc


def check_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` of setting ``key``, converted where that is lossless.

    Understood: ``Any``, ``None``, ``bool``, ``int``, ``float`` (ints are widened; numbers written as text,
    which YAML 1.1 produces for ``1e-5``, are read; NaN and infinities are refused), ``str``, ``Path``,
    ``Literal``, enums (a member or its value), unions, ``list``/``tuple``/``dict`` with their item types
    (a comma-separated string is read as a ``list[str]``), and dataclasses (a mapping of their settings).
    Other types are passed through unchecked.

    Raises:
        ConfigError: Naming ``key``, the value and what was expected.
    """
    ok, converted = _conforms(value, hint)
    if not ok:
        shown = "<not shown>" if _SECRET_KEY.search(key) else _shown(value)
        raise ConfigError(f"{key}={shown} is not valid: expected {_describe(hint)}")
    return converted


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True, value
    if hint is None or hint is type(None):
        return value is None, value
    if origin is typing.Union or isinstance(hint, types.UnionType):
        arms = typing.get_args(hint)
        # Exact types first, so "3" stays a string for `str | int` and 3 stays an int for `int | str`.
        for arm in sorted(arms, key=lambda a: not _exact(value, a)):
            ok, converted = _conforms(value, arm)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        number = _as_float(value)
        return number is not None, number
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        return isinstance(value, str | Path), value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return True, value
        return any(value == m.value for m in hint), value
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict), value
    if hint in (list, tuple) or origin in (list, tuple):
        return _sequence(value, hint, origin or hint)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False, value
        args = typing.get_args(hint)
        if len(args) != 2:
            return True, value
        out = {}
        for k, v in value.items():
            ok, converted = _conforms(v, args[1])
            if not ok:
                return False, value
            out[k] = converted
        return True, out
    return True, value


def _sequence(value: Any, hint: Any, kind: type) -> tuple[bool, Any]:
    args = typing.get_args(hint)
    item = args[0] if args and (kind is list or (len(args) == 2 and args[1] is Ellipsis)) else Any
    if isinstance(value, str) and item is str and kind is list:
        return True, [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        return False, value
    out = []
    for element in value:
        ok, converted = _conforms(element, item)
        if not ok:
            return False, value
        out.append(converted)
    return True, kind(out)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _exact(value: Any, arm: Any) -> bool:
    return isinstance(arm, type) and type(value) is arm


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arm) for arm in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is None or hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        Path: "a path",
    }
    if hint in names:
        return names[hint]
    if hint in (list, tuple) or origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0])} values" if args else "a list"
    if hint is dict or origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) to plain dict for writing ``config.yaml``."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None
