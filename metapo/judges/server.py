"""Serving any judge backend as an OpenAI-compatible HTTP server.

With an in-process model behind ``metapo serve-judge``, local and remote judges share one code path:
training always talks HTTP through :class:`~metapo.judges.backends.OpenAIHTTPBackend`, whether the
judge is a vLLM cluster or the 1.5B GGUF on the same laptop.

Endpoints: ``POST /v1/chat/completions`` (non-streaming), ``GET /v1/models`` and ``GET /health``
(the ``/v1`` prefix is optional). Requests are handled by the standard library's
``ThreadingHTTPServer``; the backend's coroutines all run on one asyncio loop in a worker thread, so
the backend sees a single event loop however many HTTP threads there are. There is no
authentication: bind to 127.0.0.1 unless the network is trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metapo.judges.backends import Backend
from metapo.judges.types import JudgeError, TransientJudgeError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024


class JudgeHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that forwards chat completions to ``backend`` on one event loop.

    Args:
        address: ``(host, port)``; port 0 picks a free port.
        backend: The judge to expose.
        model_id: The id listed by ``/v1/models``.
        request_timeout_s: Longest a request may take before the server answers 504.
        close_backend: Whether :meth:`close` also closes the backend (turn off when the backend is
            shared with other code that keeps using it).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        backend: Backend,
        model_id: str,
        request_timeout_s: float = 600.0,
        *,
        close_backend: bool = True,
    ) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_id = model_id
        self.request_timeout_s = request_timeout_s
        self.close_backend = close_backend
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="judge-server-loop", daemon=True
        )
        self._loop_thread.start()
        self._serve_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API root to give clients, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Runs the backend on the server's loop and waits for the answer (called by HTTP threads)."""
        future = asyncio.run_coroutine_threadsafe(self.backend.complete(body), self.loop)
        return future.result(timeout=self.request_timeout_s)

    def start(self) -> JudgeHTTPServer:
        """Serves in a background thread and returns at once."""
        # A short poll interval makes close() (and so tests) fast; the idle cost is negligible.
        self._serve_thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="judge-server", daemon=True
        )
        self._serve_thread.start()
        return self

    def close(self) -> None:
        """Stops serving, closes the backend on its loop (if ``close_backend``), and stops the loop."""
        if self._serve_thread is not None:
            self.shutdown()
            self._serve_thread.join()
            self._serve_thread = None
        self.server_close()
        if not self.loop.is_closed():
            try:
                if self.close_backend:
                    asyncio.run_coroutine_threadsafe(self.backend.aclose(), self.loop).result(timeout=30)
                # Finalises async generators of this loop, as asyncio.run would; a shared backend's
                # per-loop resources (e.g. an HTTP connection pool) are released this way.
                asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(timeout=30)
            except Exception as exc:  # closing must not hide the reason the server is going down
                logger.warning("closing the judge backend failed: %s", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join()
            self.loop.close()

    def __enter__(self) -> JudgeHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server: JudgeHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the judge clients pool connections

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _path(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[3:] if path.startswith("/v1/") else path

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self._path()
        if path in ("/health", ""):
            self._send_json(200, {"status": "ok"})
        elif path == "/models":
            model = {
                "id": self.server.model_id,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "metapo",
            }
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self._path() != "/chat/completions":
            self._error(404, f"no route {self.path}", "not_found_error")
            return
        try:
            length = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._error(
                411 if length < 0 else 413,
                "a JSON body with Content-Length is required",
                "invalid_request_error",
            )
            return
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond the parser's depth
            self._error(400, "request body is not JSON", "invalid_request_error")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "request needs a 'messages' list", "invalid_request_error")
            return
        if body.get("stream"):
            self._error(400, "streaming is not supported", "invalid_request_error")
            return
        try:
            response = self.server.complete(body)
        except TransientJudgeError as exc:
            self._error(503, str(exc), "server_error")
        except JudgeError as exc:
            self._error(400, str(exc), "invalid_request_error")
        except TimeoutError:
            self._error(504, "the judge did not answer in time", "timeout_error")
        except Exception as exc:
            logger.exception("judge backend failed")
            self._error(500, f"{type(exc).__name__}: {exc}", "server_error")
        else:
            self._send_json(200, response)


def start_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_id: str | None = None,
    close_backend: bool = True,
) -> JudgeHTTPServer:
    """Starts serving ``backend`` in background threads.

    Args:
        backend: The judge to expose.
        host: Interface to bind (the default accepts local connections only).
        port: TCP port; 0 picks a free one (read it back from ``server.url``).
        model_id: The id listed by ``/v1/models`` (default: the backend's name).
        close_backend: Whether closing the server also closes the backend.

    Returns:
        The running server; use it as a context manager or call ``close()``.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("the judge server has no authentication and is bound to %s", host)
    server = JudgeHTTPServer((host, port), backend, model_id or backend.name, close_backend=close_backend)
    return server.start()


def serve(
    backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, model_id: str | None = None
) -> None:
    """Serves ``backend`` over an OpenAI-compatible API until interrupted (Ctrl-C).

    Args:
        backend: The judge to expose.
        host: Interface to bind.
        port: TCP port.
        model_id: The id listed by ``/v1/models``.
    """
    server = start_server(backend, host, port, model_id=model_id)
    logger.info("judge %s serving at %s (Ctrl-C stops)", server.model_id, server.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping the judge server")
    finally:
        server.close()
