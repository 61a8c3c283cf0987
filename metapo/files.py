"""Crash-safe file writes: nothing a run has written is lost or half-written when the process dies.

Text is written as UTF-8 with ``backslashreplace`` for the lone surrogates that JSON escapes such as
``"\\ud800"`` can put into a Python string: inside a JSON string the replacement is that same escape again,
so such text round-trips instead of crashing the writer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class InputFileError(ValueError):
    """A file or directory named by the user cannot be used as asked; the message names it and the fix."""


def read_user_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of a file the user named, with a one-line error naming it when that is impossible.

    Args:
        path: The file.
        what: What the file is for, e.g. ``"config file"`` or ``"rubric file"`` (starts the message).

    Raises:
        InputFileError: The path is missing, a directory, unreadable or not UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory; pass a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{what} {path} is not UTF-8 text (a binary file?); pass a text file") from None
    except OSError as exc:
        raise InputFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` when it is an existing file, else :class:`InputFileError` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory; pass a file")
    return path


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Check before any work that ``path`` can be written as a file (its folder is created if needed).

    Raises:
        InputFileError: ``path`` is a directory, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{what} {path} is a directory; pass a file name")
    try:
        check_output_dir(path.parent, "folder")
    except InputFileError as exc:
        raise InputFileError(f"{what} {path}: {exc}") from None
    return path


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check it is a writable directory, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputFileError(f"{what} {path} is a file; pass a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(
            f"{what} {path} cannot be created ({exc.strerror or exc}); choose another"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputFileError(f"{what} {path} is not writable; choose another")
    return path


def check_model_spec(spec: str, what: str) -> str:
    """``spec`` unless it is written as a local path (``/``, ``.`` or ``~`` first) that does not exist.

    A Hugging Face id never starts with those characters, so such a spec would otherwise reach the Hub
    client and fail there with a message about repository names.
    """
    if str(spec).startswith(("/", ".", "~")) and not Path(spec).expanduser().exists():
        raise InputFileError(
            f"{what} {spec} does not exist; pass a model folder, a Hugging Face id or embedded:NAME"
        )
    return spec


def require_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` when it is an existing directory, else :class:`InputFileError` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise InputFileError(f"{what} {path} is a file; pass a directory")
    return path


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
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
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
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EMLINK,
            errno.ENOSYS,
        ):
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
    """Append records as JSON lines in one write and fsync, so a crash loses at most the last line.

    A record always starts on a fresh line: when a crash left the file ending in a torn line (no final
    newline), a newline is written first, so the torn line cannot swallow the next record.
    """
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    if not lines:
        return
    data = lines.encode("utf-8", "backslashreplace")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read the JSON-object lines of ``path``, skipping a torn last line left by a crash.

    Any other line that is not a JSON object (torn, cut in a multi-byte character, nested beyond the
    parser's depth, or not an object) is skipped too, with one warning that counts them.
    """
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    skipped = 0
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if isinstance(record, dict):
                out.append(record)
            else:
                skipped += 1
    if skipped:
        log.warning("%s: skipped %d unreadable line(s) (a torn last line is left by a crash)", path, skipped)
    return out


class NewEntries:
    """Remembers what ``directory`` holds now, so that :meth:`remove` can delete exactly what appeared since.

    Used to undo a failed start: entries that existed before are never touched, and when ``directory``
    itself (or some of its parents) did not exist, the highest directory created since is removed whole.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).absolute()
        self._top: Path | None = None
        if not self.directory.exists():
            top = self.directory
            while not top.parent.exists():
                top = top.parent
            self._top = top
        self._before = set(os.listdir(self.directory)) if self.directory.is_dir() else set()

    def remove(self) -> None:
        """Delete every entry created since this object was made."""
        if self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)
            return
        if not self.directory.is_dir():
            return
        for name in sorted(set(os.listdir(self.directory)) - self._before):
            entry = self.directory / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
