"""Crash-safe file writes: nothing a run has written is lost or half-written when the process dies."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` so readers see the old content or the new, never a mix.

    Args:
        path: Destination.
        text: Content.
        exclusive: Refuse to replace an existing file (append-only records); raises FileExistsError.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            _claim(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _claim(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless that name exists (then FileExistsError)."""
    try:
        # link() fails if the name exists, so two writers can never both claim one version number.
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # No hard links here (some network and FUSE filesystems): claim the name by exclusive creation, then
        # swap the content in atomically. A crash in between leaves an empty file, which readers skip.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_json(path: Path, data: Any, *, exclusive: bool = False) -> None:
    """JSON version of :func:`atomic_write_text`."""
    atomic_write_text(
        path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", exclusive=exclusive
    )


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines in one write and fsync, so a crash loses at most the last line."""
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a torn last line left by a crash."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
