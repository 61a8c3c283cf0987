"""Append-only history of rubric versions, one or more lineages per run.

Layout: ``<root>/<lineage>/v0000.json``, one immutable JSON record per version. A version file is
written atomically and never replaced, so a crash leaves either the whole version or none of it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from metapo.files import atomic_write_json
from metapo.rubric.diff import RubricDiff, diff
from metapo.rubric.model import Rubric, RubricError, RubricLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RubricVersion:
    """One immutable rubric version with its provenance.

    Attributes:
        version: Number within its lineage, from 0.
        lineage: Lineage key (``"default"``, or e.g. ``"algebra/1"`` for math clusters).
        rubric: The rubric itself.
        parents: Versions it was derived from.
        creator: ``"initial"``, ``"meta-step"`` or ``"manual"``.
        step: Trainer step at which it was created (meta steps) or 0.
        created: Unix time.
        evidence: What produced it: the meta step's analyses, selection and validation outcome.
    """

    version: int
    lineage: str
    rubric: Rubric
    parents: tuple[int, ...] = ()
    creator: str = "initial"
    step: int = 0
    created: float = field(default_factory=time.time)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """Content hash of the rubric."""
        return self.rubric.content_hash()

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        data = asdict(self)
        data["rubric"] = self.rubric.to_dict()
        data["parents"] = list(self.parents)
        data["hash"] = self.hash
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RubricVersion:
        """Read a JSON record."""
        return cls(
            version=int(data["version"]),
            lineage=str(data["lineage"]),
            rubric=Rubric.from_items(data["rubric"]["items"]),
            parents=tuple(data.get("parents", ())),
            creator=data.get("creator", "initial"),
            step=int(data.get("step", 0)),
            created=float(data.get("created", 0.0)),
            evidence=data.get("evidence", {}),
        )


def lineage_dirname(lineage: str) -> str:
    """Filesystem-safe, injective directory name for a lineage key.

    Characters outside ``[A-Za-z0-9_-]`` are percent-encoded (``"algebra/1"`` -> ``"algebra%2F1"``), so two
    lineages never share a directory.
    """
    return quote(lineage, safe="-_") or "%00"


def _legacy_dirname(lineage: str) -> str:
    # The 0.1 layout, still read so that runs written by it resume.
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", lineage)


class RubricStore:
    """Rubric versions on disk under ``root``; thread-safe; never overwrites a version."""

    def __init__(self, root: Path, *, writable: bool = True) -> None:
        self.root = Path(root)
        # Only one process of a multi-process run writes; the others read and receive versions by broadcast.
        self.writable = writable
        self._lock = threading.Lock()

    def _dir(self, lineage: str) -> Path:
        path = self.root / lineage_dirname(lineage)
        if not path.exists():
            legacy = self.root / _legacy_dirname(lineage)
            first = next(iter(sorted(legacy.glob("v*.json"))), None) if legacy.is_dir() else None
            if first is not None and json.loads(first.read_text()).get("lineage") == lineage:
                return legacy
        return path

    def lineages(self) -> list[str]:
        """Lineage keys that have at least one version."""
        out = []
        if self.root.exists():
            for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
                first = next((v for v in map(_read, sorted(sub.glob("v*.json"))) if v is not None), None)
                if first is not None:
                    out.append(first.lineage)
        return out

    def history(self, lineage: str = "default") -> list[RubricVersion]:
        """All versions of a lineage, oldest first."""
        return [v for v in map(_read, sorted(self._dir(lineage).glob("v*.json"))) if v is not None]

    def get(self, lineage: str, version: int) -> RubricVersion:
        """One version; raises KeyError naming the available ones when absent."""
        path = self._dir(lineage) / f"v{version:04d}.json"
        found = _read(path) if path.exists() else None
        if found is None:
            have = [v.version for v in self.history(lineage)]
            raise KeyError(f"lineage {lineage!r} has no version {version}; available: {have}")
        return found

    def latest(self, lineage: str = "default") -> RubricVersion | None:
        """Newest version, or None when the lineage is empty."""
        history = self.history(lineage)
        return history[-1] if history else None

    def add(
        self,
        rubric: Rubric,
        *,
        lineage: str = "default",
        parents: tuple[int, ...] = (),
        creator: str = "initial",
        step: int = 0,
        evidence: dict[str, Any] | None = None,
        limits: RubricLimits | None = None,
    ) -> RubricVersion:
        """Validate (with ``limits``, e.g. the meta step's) and append a new version; returns it numbered."""
        if not self.writable:
            raise RuntimeError("this rubric store is read-only (not the main process)")
        rubric.validate(limits) if creator != "initial" else _validate_initial(rubric)
        with self._lock:
            # Numbered from the file names, so a version file left empty by a crash is never claimed twice.
            taken = [int(p.stem[1:]) for p in self._dir(lineage).glob("v*.json") if p.stem[1:].isdigit()]
            number = max(taken, default=-1) + 1
            record = RubricVersion(
                number, lineage, rubric, parents, creator, step, time.time(), evidence or {}
            )
            atomic_write_json(self._dir(lineage) / f"v{number:04d}.json", record.to_dict(), exclusive=True)
        log.info("rubric %s v%d saved (%d items, %s)", lineage, number, len(rubric.items), creator)
        return record

    def ensure_initial(self, rubric: Rubric, lineage: str = "default") -> RubricVersion:
        """The lineage's latest version, creating version 0 from ``rubric`` if the lineage is empty.

        A read-only store returns the same version 0 without writing it (the main process does).
        """
        latest = self.latest(lineage)
        if latest is not None:
            return latest
        if not self.writable:
            _validate_initial(rubric)
            return RubricVersion(0, lineage, rubric)
        return self.add(rubric, lineage=lineage)

    def diff(self, lineage: str, old: int, new: int) -> RubricDiff:
        """Diff two versions of a lineage."""
        return diff(self.get(lineage, old).rubric, self.get(lineage, new).rubric)


def _read(path: Path) -> RubricVersion | None:
    """One version file; ``None`` for the empty file a crash can leave where hard links are unsupported."""
    text = path.read_text()
    if not text.strip():
        log.warning("skipping empty rubric version file %s (left by an interrupted write)", path)
        return None
    try:
        return RubricVersion.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # edited by hand, or not ours
        raise RubricError(
            f"{path} is not a readable rubric version record ({type(exc).__name__}: {exc})"
        ) from None


def _validate_initial(rubric: Rubric) -> None:
    try:
        rubric.validate()
    except RubricError as exc:
        raise RubricError(f"initial rubric is invalid: {exc}") from exc
