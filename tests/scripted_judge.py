"""A scripted OpenAI-compatible judge server on 127.0.0.1, for tests and benchmarks.

It is a real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread, one thread per
connection), so clients are tested through real sockets, connection pools, timeouts and dropped
connections. It records every request and lets a test set the latency and a fault schedule.

Default answers (used when no ``handler`` is given) are deterministic and depend on the request:

* **Score requests** (``logprobs`` with ``top_logprobs`` > 0): the *judged text* is the content
  between the first ``<response>`` and the first ``</response>`` after it in the last user message
  (the whole last user message when there is no such pair). Its score ``m`` is the number of distinct
  lower-case words (runs of ``[a-z0-9']``), capped at 9. The first answer token is ``str(m)`` and its
  top alternatives are ``str(m)`` (p=0.5), ``" " + str(m)`` (0.1), ``str(m-1)`` and ``str(m+1)``
  (0.15 each, when they are digits), ``"The"`` (0.05) and ``"\\n"`` (the rest). So for
  ``1 <= m <= 8`` and a score range containing ``m-1..m+1`` the expected score is exactly ``m``.
  When the last user message asks for "an integer from LO ... to HI", ``m`` is first clamped into
  ``LO..HI``, as a judge that reads the question would.
* **JSON-schema requests** (``response_format.type == "json_schema"``): :func:`schema_instance`
  of the schema: every property present, enums take their first value, integers the midpoint of
  their bounds (else the bound, else 0), strings ``"ok"`` padded/cut to their length limits, arrays
  ``max(minItems, 1)`` items (at most ``maxItems``), booleans ``true``.
* **Anything else**: ``"echo: "`` plus the first 60 characters of the last user message.

Faults, chosen per request index (0-based, in arrival order) by a list or a callable:

* ``"500"``, ``"503"``, ``"429"`` (with ``Retry-After: 0``), ``"400"``: that HTTP status.
* ``"hang"``: no answer for ``hang_s`` seconds, then the connection is dropped.
* ``"close"``: the connection is dropped without an answer.
* ``"garbage"``: HTTP 200 with a body that is not JSON.
* ``"irrelevant"``: a well-formed completion whose text is off-topic and whose top logprobs
  contain no digit.
* ``"nologprobs"``: the default answer with ``logprobs`` set to null.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Fault = str | None
FaultSchedule = list[Fault] | Callable[[int, dict[str, Any]], Fault] | None
Handler = Callable[[dict[str, Any]], "str | dict[str, Any] | tuple[int, bytes]"]

FAULTS = ("500", "503", "429", "400", "hang", "close", "garbage", "irrelevant", "nologprobs")

_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)
_WORD = re.compile(r"[a-z0-9']+")
_ASKED_RANGE = re.compile(r"integer from (\d)(?: \([^()]{0,40}\))? to (\d)")


def judged_text(body: dict[str, Any]) -> str:
    """The text a score request is about (see the module docstring)."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = str(users[-1].get("content", "")) if users else ""
    match = _RESPONSE.search(content)
    return match.group(1) if match else content


def text_score(text: str) -> int:
    """The scripted score of a text: its number of distinct lower-case words, at most 9."""
    return min(9, len(set(_WORD.findall(text.lower()))))


def digit_alternatives(mode: int) -> list[tuple[str, float]]:
    """The first-token alternatives for a score ``mode`` (0..9), as ``(token, probability)``."""
    alternatives = [(str(mode), 0.5), (f" {mode}", 0.1)]
    if mode > 0:
        alternatives.append((str(mode - 1), 0.15))
    if mode < 9:
        alternatives.append((str(mode + 1), 0.15))
    alternatives.append(("The", 0.05))
    alternatives.append(("\n", 1.0 - sum(p for _, p in alternatives)))
    return sorted(alternatives, key=lambda tp: -tp[1])


def chat_response(
    content: str,
    *,
    alternatives: list[tuple[str, float]] | None = None,
    top_n: int = 20,
    model: str = "scripted-judge",
    prompt_tokens: int = 0,
) -> dict[str, Any]:
    """An OpenAI chat-completions response; with ``alternatives``, first-token top logprobs too."""
    logprobs = None
    if alternatives is not None:
        top = [
            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in alternatives[:top_n]
        ]
        logprobs = {"content": [{**top[0], "top_logprobs": top}]}
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max(1, len(content.split())),
            "total_tokens": prompt_tokens + max(1, len(content.split())),
        },
    }


def schema_instance(schema: dict[str, Any]) -> Any:
    """A deterministic instance of a JSON schema (the subset metapo emits; see the module docstring)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return {key: schema_instance(sub) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(schema.get("minItems", 0), 1)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        return [schema_instance(schema.get("items", {})) for _ in range(count)]
    if kind == "string":
        text = "ok"
        if len(text) < schema.get("minLength", 0):
            text += "x" * (schema["minLength"] - len(text))
        return text[: schema["maxLength"]] if "maxLength" in schema else text
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            lo = lo + 1
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            hi = hi - 1
        value = (lo + hi) / 2 if lo is not None and hi is not None else lo if lo is not None else hi or 0
        return int(math.floor(value)) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def default_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted answer to a request (see the module docstring)."""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    if body.get("logprobs") and int(body.get("top_logprobs") or 0) > 0:
        mode = text_score(judged_text(body))
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        asked = _ASKED_RANGE.search(str(users[-1].get("content", ""))) if users else None
        if asked:
            mode = min(max(mode, int(asked.group(1))), int(asked.group(2)))
        return chat_response(
            str(mode),
            alternatives=digit_alternatives(mode),
            top_n=int(body["top_logprobs"]),
            prompt_tokens=prompt_tokens,
        )
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", {}).get("schema", {})
        return chat_response(json.dumps(schema_instance(schema)), prompt_tokens=prompt_tokens)
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    last = str(users[-1].get("content", "")) if users else ""
    return chat_response("echo: " + last[:60], prompt_tokens=prompt_tokens)


class _Server(ThreadingHTTPServer):
    # The stdlib default listen backlog of 5 overflowed when a client opened its whole connection pool
    # at once: dropped SYNs came back after a 1 s retransmit, or as reset connections.
    request_queue_size = 256


class ScriptedJudge:
    """The scripted judge server; use as a context manager.

    Args:
        latency_s: Delay before every answer (settable while running).
        faults: Fault schedule: a list indexed by request number, or ``f(index, body) -> fault``.
        handler: Custom answers: ``handler(body)`` returns the content text (str), a full response
            dict, or ``(status, raw body bytes)`` sent as is. Faults still apply first.
        hang_s: How long a ``"hang"`` fault keeps the request open.

    Attributes:
        url: API root, ``http://127.0.0.1:<port>/v1``.
        base_url: Server address without ``/v1``.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        faults: FaultSchedule = None,
        handler: Handler | None = None,
        hang_s: float = 5.0,
    ) -> None:
        self.latency_s = latency_s
        self.faults = faults
        self.handler = handler
        self.hang_s = hang_s
        self._lock = threading.Lock()
        self._bodies: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- records -------------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of all chat-completion requests received, in arrival order."""
        with self._lock:
            return list(self._bodies)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """Lower-cased headers of those requests."""
        with self._lock:
            return list(self._headers)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._bodies)

    @property
    def max_in_flight(self) -> int:
        """Most requests being handled at the same time so far."""
        with self._lock:
            return self._max_in_flight

    def reset(self) -> None:
        """Forgets recorded requests and the in-flight maximum."""
        with self._lock:
            self._bodies.clear()
            self._headers.clear()
            self._max_in_flight = self._in_flight

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ScriptedJudge:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the client's delayed ACK held the
            # body back ~40 ms per response, which dwarfed the latencies the tests and benchmarks set.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _raw(
                self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._json(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "scripted-judge", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(raw)
                with judge._lock:
                    index = len(judge._bodies)
                    judge._bodies.append(body)
                    judge._headers.append({k.lower(): v for k, v in self.headers.items()})
                    judge._in_flight += 1
                    judge._max_in_flight = max(judge._max_in_flight, judge._in_flight)
                try:
                    self._answer(index, body)
                finally:
                    with judge._lock:
                        judge._in_flight -= 1

            def _answer(self, index: int, body: dict[str, Any]) -> None:
                fault = judge._fault(index, body)
                if fault == "hang":
                    judge._stop.wait(judge.hang_s)
                    self.close_connection = True
                    return
                if judge.latency_s > 0:
                    judge._stop.wait(judge.latency_s)
                if fault == "close":
                    self.close_connection = True
                    return
                if fault in ("500", "503", "429", "400"):
                    headers = {"Retry-After": "0"} if fault == "429" else None
                    self._json(
                        int(fault), {"error": {"message": f"scripted {fault}", "code": int(fault)}}, headers
                    )
                    return
                if fault == "garbage":
                    self._raw(200, b"<html>definitely not json", "text/html")
                    return
                if fault == "irrelevant":
                    alternatives = [("I", 0.6), ("Sure", 0.3), ("Well", 0.1)]
                    self._json(
                        200,
                        chat_response("I would rather talk about the weather.", alternatives=alternatives),
                    )
                    return
                if judge.handler is not None:
                    answer = judge.handler(body)
                    if isinstance(answer, tuple):  # (status, raw bytes): anything a broken server could send
                        self._raw(answer[0], answer[1], "application/json")
                        return
                    response = chat_response(answer) if isinstance(answer, str) else answer
                else:
                    response = default_answer(body)
                if fault == "nologprobs":
                    response["choices"][0]["logprobs"] = None
                self._json(200, response)

        self._stop.clear()
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="scripted-judge",
            daemon=True,
        )
        self._thread.start()
        return self

    def _fault(self, index: int, body: dict[str, Any]) -> Fault:
        schedule = self.faults
        if schedule is None:
            return None
        fault = (
            schedule(index, body)
            if callable(schedule)
            else (schedule[index] if index < len(schedule) else None)
        )
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown scripted fault {fault!r}")
        return fault

    def close(self) -> None:
        """Stops the server; hanging requests are released at once."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    def __enter__(self) -> ScriptedJudge:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Waits until no request is being handled (e.g. after client-side timeouts)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    return
            time.sleep(0.01)
