"""``metapo train-pref`` and ``metapo objectives``: command-line access to the preference trainer and registry.

``register(subparsers)`` adds both subcommands to an ``argparse`` sub-parser set; heavy imports (torch,
transformers, TRL) happen inside the handlers so that ``metapo --help`` stays fast.

Configuration is one flat YAML mapping whose keys are fields of :class:`PreferenceScriptArguments`,
:class:`metapo.train.preference.PreferenceConfig` (``transformers.TrainingArguments`` plus the objective) and TRL's
``ModelConfig`` (``model_name_or_path``, ``dtype``, ``use_peft``, ``lora_*``...), plus ``objective_kwargs``. Command
line overrides follow the config file, as ``key=value``, ``--key value`` or ``--key=value``; dotted keys reach into
mappings (``objective_kwargs.beta=0.2``) and an objective's hyperparameter may be given by its bare name
(``beta=0.2``). Values are typed: numbers (``1e-5`` too), ``true``/``false``, ``null`` and ``[a, b]``; the rest
stays text.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class PreferenceScriptArguments:
    """Dataset options of ``metapo train-pref``."""

    dataset_name: str = field(
        default="builtin",
        metadata={
            "help": "'builtin' (40 built-in pairs), 'builtin:lists' (ranked lists), a .jsonl/.json/.parquet/.csv "
            "file, or a datasets hub id."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (hub datasets)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split to evaluate on, if any."})
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Without a test split, hold out this fraction of the training rows."}
    )


class _TrainPrefParser(argparse.ArgumentParser):
    """Sub-parser that passes every argument except ``--config`` and ``-h`` through as an override.

    Overrides name fields of three dataclasses and the objective's hyperparameters, too many to declare as
    argparse options; argparse would reject them as unknown or split ``--key value`` pairs apart.
    """

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse API
        tokens = list(sys.argv[1:] if args is None else args)
        if any(t in ("-h", "--help") for t in tokens):
            self.print_help()
            self.exit()
        namespace = namespace if namespace is not None else argparse.Namespace()
        for key, value in self._defaults.items():
            setattr(namespace, key, value)
        config, rest, i = None, [], 0
        while i < len(tokens):
            token = tokens[i]
            if token == "--config":
                if i + 1 >= len(tokens):
                    self.error("--config needs a file")
                config, i = tokens[i + 1], i + 2
                continue
            if token.startswith("--config="):
                config = token.split("=", 1)[1]
            else:
                rest.append(token)
            i += 1
        namespace.config = config
        namespace.overrides = rest
        return namespace, []


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-pref`` and ``objectives`` to a CLI's sub-parsers.

    Each sub-parser sets ``func`` to its handler, which takes the parsed namespace and returns an exit code.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.
    """
    train = subparsers.add_parser(
        "train-pref",
        help="train with a preference objective (DPO family, SimPO, PRO, Tree-PO, ...)",
        description=(
            "Train a causal LM with any objective from `metapo objectives`. Example: metapo train-pref --config "
            "examples/pref_dpo.yaml objective=simpo beta=2.5 --max_steps 50"
        ),
    )
    train.__class__ = _TrainPrefParser  # see _TrainPrefParser: overrides are not argparse options
    train.add_argument("--config", help="YAML file with the run's settings")
    train.add_argument("overrides", nargs="*", help="key=value, --key value or --key=value overrides")
    train.set_defaults(func=run_train_pref)

    objectives = subparsers.add_parser("objectives", help="list the registered preference objectives")
    objectives.add_argument(
        "--format",
        choices=("table", "markdown", "json", "taxonomy"),
        default="table",
        help="taxonomy: each objective on the axes of the DPO survey (arXiv 2503.11701), as Markdown",
    )
    objectives.set_defaults(func=run_list_objectives)


# ---------------------------------------------------------------------------------------------------------------
# Overrides and config
# ---------------------------------------------------------------------------------------------------------------


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(raw: str) -> Any:
    """Type a command-line value: numbers (``1e-5`` included), ``true``/``false``, ``null``, YAML lists and
    mappings; anything else stays a string (so ``no`` is the string ``"no"``, not YAML 1.1's ``False``).
    """
    from metapo.config import load_yaml_text

    text = raw.strip()
    if _NUMBER.match(text):
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):  # not "none": report_to=none means the string
        return None
    if text[:1] in ("[", "{"):
        return load_yaml_text(text, f"value {text[:40]!r}")
    return raw


def _coerce_numbers(value: Any) -> Any:
    # PyYAML follows YAML 1.1, which reads 1e-5 (no dot) as a string; configs mean the number.
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return parse_value(value)
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    return value


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``key=value``, ``--key value``, ``--key=value`` and bare ``--flag`` tokens into a mapping.

    Args:
        tokens: Command-line tokens after the subcommand (``--config`` already removed).

    Returns:
        ``{key: value}`` with YAML-typed values; dotted keys are not expanded here.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            key = token[2:]
            if "=" in key:
                key, raw = key.split("=", 1)
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--") and "=" not in tokens[i + 1]:
                raw, i = tokens[i + 1], i + 1
            else:
                raw = "true"
        elif "=" in token:
            key, raw = token.split("=", 1)
        else:
            raise ValueError(f"cannot read override {token!r}: use key=value or --key value")
        out[key.replace("-", "_") if "." not in key else key] = parse_value(raw)
        i += 1
    return out


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    node = target
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else json.loads(child) if isinstance(child, str) else dict(child)
            node[part] = child
        node = child
    node[parts[-1]] = value


def build_config(config_path: str | Path | None, overrides: Sequence[str] = ()):
    """Merge a YAML config and command-line overrides into the three argument dataclasses.

    Args:
        config_path: YAML file, or ``None``.
        overrides: Override tokens (see :func:`parse_overrides`).

    Returns:
        ``(script_args, training_args, model_args)``.
    """
    from metapo.config import check_value, load_yaml

    # Read (and reject) the file and the overrides before the heavy imports below.
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged.update(_coerce_numbers(load_yaml(config_path)))
    for key, value in parse_overrides(overrides).items():
        _set_dotted(merged, key, value)

    from transformers import HfArgumentParser
    from trl import ModelConfig

    from metapo.objectives import get_objective
    from metapo.train.preference import PreferenceConfig

    dataclass_types = (PreferenceScriptArguments, PreferenceConfig, ModelConfig)
    known = {f.name for cls in dataclass_types for f in fields(cls)}
    objective = merged.get("objective", "dpo")
    hyper = get_objective(objective).defaults
    kwargs = dict(merged.pop("objective_kwargs", None) or {})
    for key in list(merged):
        if key not in known and key in hyper:
            kwargs[key] = merged.pop(key)  # bare hyperparameter names, e.g. beta=0.2
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown}; see `metapo train-pref --help` and `metapo objectives`"
        )
    merged["objective_kwargs"] = kwargs
    merged.setdefault("output_dir", f"runs/pref-{objective}")
    # Every value against its field's type, before anything loads or is written (errors name the key).
    hints: dict[str, Any] = {}
    for cls in reversed(dataclass_types):
        try:
            hints.update(typing.get_type_hints(cls))
        except (NameError, TypeError):  # an annotation that does not resolve here: those keys go unchecked
            continue
    for key in list(merged):
        merged[key] = check_value(merged[key], hints.get(key, Any), key)
    script_args, training_args, model_args = HfArgumentParser(dataclass_types).parse_dict(merged)
    return script_args, training_args, model_args


# ---------------------------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------------------------


def _load_dataset(script_args: PreferenceScriptArguments, seed: int):
    from datasets import load_dataset

    from metapo.files import require_file
    from metapo.train.preference import load_builtin_preferences

    name = script_args.dataset_name
    test = None
    if name in ("builtin", "builtin:pairs", "builtin:lists"):
        train = load_builtin_preferences("lists" if name.endswith("lists") else "pairs")
    else:
        suffix = Path(name).suffix.lower()
        if suffix in (".jsonl", ".json", ".parquet", ".csv"):
            require_file(name, "dataset_name")
            loader = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[suffix]
            data = load_dataset(loader, data_files=name)
        else:
            data = load_dataset(name, script_args.dataset_config)
        train = data[script_args.dataset_train_split]
        if script_args.dataset_test_split:
            test = data[script_args.dataset_test_split]
    if test is None and script_args.eval_fraction > 0:
        split = train.train_test_split(test_size=script_args.eval_fraction, seed=seed)
        train, test = split["train"], split["test"]
    return train, test


def _load_model(model_args: Any, training_args: Any):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metapo.files import check_model_spec

    path = model_args.model_name_or_path
    if path is not None:
        check_model_spec(path, "model_name_or_path")
    if path is None:
        raise ValueError("set model_name_or_path (a local path, a hub id, or 'tiny' for a tiny random model)")
    if path == "tiny":
        # A tiny random model for smoke runs without any download.
        from metapo.models.tiny import build_tiny_model

        path = str(build_tiny_model(Path(training_args.output_dir) / "tiny-init"))
    kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.dtype not in (None, "auto"):
        kwargs.setdefault("dtype", getattr(torch, model_args.dtype))
    if model_args.attn_implementation is not None:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    kwargs.setdefault("revision", model_args.model_revision)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


def run_train_pref(args: argparse.Namespace) -> int:
    """Handler of ``metapo train-pref``: build the config, train, save, and report the held-out margins.

    Args:
        args: Parsed namespace with ``config`` and ``overrides``.

    Returns:
        Process exit code.
    """
    script_args, training_args, model_args = build_config(args.config, args.overrides)  # bad input fails fast

    from trl import get_peft_config

    from metapo.train.preference import PreferenceTrainer, evaluate_margins

    train, test = _load_dataset(script_args, training_args.seed)
    model, tokenizer = _load_model(model_args, training_args)
    trainer = PreferenceTrainer(
        model,
        training_args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    before = evaluate_margins(trainer) if test is not None else None
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if test is not None:
        after = evaluate_margins(trainer)
        logger.info("held-out margins before %s after %s", before, after)
        if trainer.is_world_process_zero():
            Path(training_args.output_dir, "margins.json").write_text(
                json.dumps({"before": before, "after": after}, indent=2), "utf-8"
            )
    return 0


def objectives_table(fmt: str = "table") -> str:
    """Render the registry as a text table, a Markdown table or JSON.

    Args:
        fmt: ``"table"``, ``"markdown"``, ``"json"`` or ``"taxonomy"`` (the DPO survey's axes).

    Returns:
        The rendered text.
    """
    from metapo.objectives import list_objectives

    if fmt == "taxonomy":
        from metapo.objectives.taxonomy import render_markdown

        return render_markdown()
    specs = list_objectives()
    rows = [
        {
            "name": s.name,
            "paper": s.paper,
            "arxiv": s.arxiv or "-",
            "data": s.data,
            "reference": "yes" if s.requires_reference(s.defaults) else "no",
            "confidence": s.confidence,
            "trl": s.trl or "-",
        }
        for s in specs
    ]
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    headers = ["name", "arxiv", "data", "reference", "confidence", "paper"]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(r[h]) for h in headers) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers[:-1]}
    lines = ["  ".join(h.ljust(widths.get(h, 0)) for h in headers)]
    lines += ["  ".join(str(r[h]).ljust(widths.get(h, 0)) for h in headers) for r in rows]
    return "\n".join(lines) + "\n"


def run_list_objectives(args: argparse.Namespace) -> int:
    """Handler of ``metapo objectives``: write the registry to stdout."""
    sys.stdout.write(objectives_table(getattr(args, "format", "table")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m metapo.train.preference_cli train-pref ...``."""
    parser = argparse.ArgumentParser(prog="metapo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
