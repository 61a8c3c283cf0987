"""A persistent, content-addressed cache of judge responses (SQLite).

The key is the SHA-256 of the judge model id plus the complete request body as sent (messages,
decoding parameters, response format), serialised as canonical JSON. Anything that could change the
answer is therefore part of the key, and an identical request is never paid for twice: across
training steps, evaluation re-runs and the meta-judge's validation probes.

Several threads and several processes (e.g. one per training rank) may share one file: the database
runs in WAL mode with a busy timeout, every write is a single autocommitted statement, and each
process opens its own connection (re-opened after a fork).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def canonical_json(value: Any) -> str:
    """Serialises a JSON value the same way every time (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class ScoreCache:
    """Judge responses keyed by (model id, request body).

    Only successful, validated responses are stored; the client never calls :meth:`put` for a
    failure.

    Args:
        path: The SQLite file (parent directories are created).
        busy_timeout_s: How long a writer waits for another writer's lock before failing.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._connection()

    @staticmethod
    def key(model_id: str, body: dict[str, Any]) -> str:
        """The cache key of one request: hex SHA-256 of canonical ``{"model", "body"}`` JSON."""
        payload = canonical_json({"model": model_id, "body": body})
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork (e.g. dataloader workers), so each process opens its own.
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; losing the last cached
            # responses on power loss only costs a few repeated calls.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, model_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The stored response for this request, or ``None``."""
        key = self.key(model_id, body)
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT response FROM judge_responses WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (ValueError, RecursionError):
            logger.warning("ignoring unreadable cache entry %s in %s", key[:12], self.path)
            return None

    def put(self, model_id: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        """Stores a successful response (replacing any earlier one for the same request)."""
        key = self.key(model_id, body)
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO judge_responses (key, model, response, created_at) VALUES (?, ?, ?, ?)",
                (key, model_id, canonical_json(response), time.time()),
            )

    def delete(self, model_id: str, body: dict[str, Any]) -> None:
        """Removes the entry for this request, if any (used when a stored answer fails validation)."""
        key = self.key(model_id, body)
        with self._lock:
            self._connection().execute("DELETE FROM judge_responses WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM judge_responses").fetchone()[0])

    def close(self) -> None:
        """Closes this process's connection (a later call re-opens it)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScoreCache({str(self.path)!r})"
