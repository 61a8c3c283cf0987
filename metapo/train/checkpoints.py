"""Choosing the checkpoint a resumed run starts from, skipping ones a crash or a full disk left torn.

The Trainer writes a checkpoint's files one after another (weights, optimizer, RNG state, then
``trainer_state.json``); the Meta Policy Optimization callback writes its state last, atomically. A crash
in between leaves a ``checkpoint-N`` directory that cannot be resumed, and the Trainer's own
``get_last_checkpoint`` would still pick it by its number.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from metapo.meta.controller import STATE_FILE

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# The callback's state and the Trainer's, both written last.
_STATE_FILES = (STATE_FILE, "trainer_state.json")
_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
_SHARDED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be resumed from (a missing or unreadable file), or ``None`` when it can."""
    for name in _STATE_FILES:
        path = directory / name
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError, RecursionError):
            return f"{name} is unreadable"
    weights = any((directory / name).is_file() and (directory / name).stat().st_size > 0 for name in _WEIGHTS)
    if not weights and not any((directory / name).is_file() for name in _SHARDED):
        return "it holds no model weights"
    return None


def last_complete_checkpoint(root: Path, *, move_aside: bool = True) -> Path | None:
    """The newest ``checkpoint-N`` under ``root`` that can be resumed from, or ``None``.

    Each newer torn checkpoint is logged with the reason and, with ``move_aside`` (the main process only),
    renamed ``incomplete-checkpoint-N``, so that nothing (the Trainer's checkpoint rotation included)
    mistakes it for a checkpoint again.
    """
    if not root.is_dir():
        return None
    numbered = sorted(
        (int(match[1]), path)
        for path in root.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.fullmatch(path.name))
    )
    skipped = False
    for _, path in reversed(numbered):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                log.warning("falling back to %s, the last complete checkpoint", path.name)
            return path
        skipped = True
        where = ""
        if move_aside:
            aside = _free_name(root / f"incomplete-{path.name}")
            path.rename(aside)
            where = f"; moved aside to {aside.name}"
        log.warning("%s is incomplete (%s: a crash or a full disk during the save)%s", path, problem, where)
    if skipped:
        log.warning("no complete checkpoint in %s", root)
    return None


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
